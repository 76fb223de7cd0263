//! One module per `sen` command (cargo's `src/bin/cargo/commands/`): each has its
//! clap arguments and a `run`.

pub mod bench;
pub mod build_engines;
pub mod calibrate_scores;
pub mod dataset;
pub mod eval;
pub mod index;
pub mod info;
pub mod preprocess;
pub mod prune;
pub mod search;
pub mod serve;
pub mod store;
pub mod synth;
pub mod tokenize;
