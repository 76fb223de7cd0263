//! Shared by the store tests: deterministic rows from a tag, and brute-force ranking.

#![allow(dead_code)]

use sen_store::{Crop, NewRow, Storage, StoreConfig};

pub const DIM: usize = 16;
pub const T0: i64 = 1_795_961_002_120; // 2026-11-29T14:03:22.120Z

pub fn config(dtype: Storage, crops: bool) -> StoreConfig {
    StoreConfig {
        image_encoder_sha256: "ab".repeat(32),
        preprocess: preprocess(),
        dim: DIM,
        dtype,
        crops,
        bundle_precision: "fp32".into(),
    }
}

/// The bundle preprocessing the test stores are bound to (tiny, bicubic).
pub fn preprocess() -> sen_core::PreprocessSpec {
    sen_core::PreprocessSpec::for_model(&sen_core::ModelConfig::tiny())
}

/// SplitMix64, for values derived from a tag.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E3779B97F4A7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D049BB133111EB);
    x ^ (x >> 31)
}

pub fn unit(seed: u64) -> Vec<f32> {
    let mut v: Vec<f32> = (0..DIM as u64)
        .map(|i| {
            (mix(seed.wrapping_mul(31).wrapping_add(i)) >> 40) as f32 / (1u64 << 24) as f32 * 2.0
                - 1.0
        })
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

pub const CAMERAS: [&str; 4] = ["cam-1", "cam-2", "lobby \"north\"", "<b>dock</b>"];

/// The row a tag stands for: everything derived from the tag, so a reader can check
/// a row by its path alone.
pub fn row(tag: u64) -> NewRow {
    let h = mix(tag ^ 0xABCD);
    NewRow {
        camera: CAMERAS[(h % 4) as usize].to_string(),
        time_ms: T0 + (h % 1_000_000) as i64,
        path: format!("tag-{tag}.jpg"),
        pid: (!h.is_multiple_of(3)).then_some((h % 97) as i64),
        attrs: h.is_multiple_of(2).then(|| {
            let colour = ["red", "grey"][(h % 4 / 2) as usize];
            serde_json::json!({"tag": tag, "colour": colour})
                .as_object()
                .unwrap()
                .clone()
        }),
        embedding: unit(tag),
        crop: Some(Crop {
            content_type: "image/jpeg".into(),
            bytes: format!("crop bytes of tag {tag} {}", "x".repeat((h % 200) as usize))
                .into_bytes(),
        }),
        ..Default::default()
    }
}

pub fn tag_of(path: &str) -> u64 {
    path.trim_start_matches("tag-")
        .trim_end_matches(".jpg")
        .parse()
        .unwrap()
}

/// The embedding a store of `dtype` keeps for `v`.
pub fn stored(v: &[f32], dtype: Storage) -> Vec<f32> {
    match dtype {
        Storage::F32 => v.to_vec(),
        Storage::F16 => v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect(),
    }
}
