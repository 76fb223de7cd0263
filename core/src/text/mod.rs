//! Text utilities for training: the offline part-of-speech tagger and caption pruning.

pub mod pos;

pub use pos::{Tagger, prune};
