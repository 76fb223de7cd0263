//! Shared helpers for the trainer's integration tests.
#![allow(dead_code)]

use sen_core::config::{ModelConfig, TextConfig, TirConfig, VisionConfig};

/// 384x128 input (24x8 grid, as vit-b16) with width 8: the shapes of OpenAI's files at a
/// size that keeps import fixtures small.
pub fn micro_384() -> ModelConfig {
    ModelConfig {
        vision: VisionConfig {
            width: 8,
            layers: 1,
            heads: 2,
            patch_size: 16,
            image_height: 384,
            image_width: 128,
        },
        text: TextConfig {
            width: 8,
            layers: 1,
            heads: 2,
            context_length: 77,
            vocab_size: 49408,
        },
        embed_dim: 8,
        tir: TirConfig {
            width: 8,
            heads: 2,
            layers: 1,
            mlp_width: 16,
            mask_ratio: 0.7,
        },
    }
}

/// A very small config of the same architecture (fast on two cores).
pub fn micro() -> ModelConfig {
    ModelConfig {
        vision: VisionConfig {
            width: 32,
            layers: 1,
            heads: 2,
            patch_size: 16,
            image_height: 64,
            image_width: 32,
        },
        text: TextConfig {
            width: 32,
            layers: 1,
            heads: 2,
            context_length: 77,
            vocab_size: 49408,
        },
        embed_dim: 32,
        tir: TirConfig {
            width: 32,
            heads: 2,
            layers: 1,
            mlp_width: 64,
            mask_ratio: 0.7,
        },
    }
}
