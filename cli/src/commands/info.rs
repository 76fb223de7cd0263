//! `sen info`: a bundle's manifest, and which execution providers can start here.

use anyhow::Result;
use sen_core::Manifest;
use sen_runtime::providers::{self, ProviderKind};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Bundle directory (from sen-export or sen-calibrate).
    bundle: PathBuf,
    #[arg(long, default_value_t = 0)]
    device: i32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let m = Manifest::read_unverified(&a.bundle)?;
    let verified = m.verify_files(&a.bundle);
    let lib = sen_runtime::onnxruntime::init();
    let mut providers = serde_json::Map::new();
    for kind in ProviderKind::ALL {
        let v = match &lib {
            Err(e) => {
                serde_json::json!({"compiled_in": true, "can_start": false, "missing": [e.to_string()]})
            }
            Ok(lib) => {
                let p = providers::preflight(kind, &lib.path, a.device);
                serde_json::json!({
                    "compiled_in": true,
                    "can_start": p.ok(),
                    "missing": p.missing,
                    "gpu": p.gpu.as_ref().map(|g| serde_json::json!({
                        "name": g.name,
                        "compute_capability": format!("{}.{}", g.compute_capability.0, g.compute_capability.1),
                        "memory_mib": g.memory_bytes >> 20,
                        "driver_cuda": format!("{}.{}", g.driver_cuda_version / 1000, (g.driver_cuda_version % 1000) / 10),
                    })),
                    "tensorrt": p.tensorrt.map(|(x, y, z)| format!("{x}.{y}.{z}")),
                })
            }
        };
        providers.insert(kind.name().into(), v);
    }
    let simd = sen_runtime::search::SimdPath::active();
    let available: Vec<&str> = sen_runtime::search::SimdPath::available()
        .iter()
        .map(|p| p.name())
        .collect();
    let image_digest = m.encoder_digest(&m.io.image).ok();
    let text_digest = m.encoder_digest(&m.io.text).ok();
    if a.json {
        let v = serde_json::json!({
            "bundle": a.bundle,
            "verified": verified.is_ok(),
            "verify_error": verified.as_ref().err().map(|e| e.to_string()),
            "precision": m.precision.to_string(),
            "model": m.model,
            "preprocess": m.preprocess,
            "image_encoder_sha256": image_digest,
            "text_encoder_sha256": text_digest,
            "files": m.files,
            "tools": m.tools,
            "source_checkpoint_sha256": m.source_checkpoint_sha256,
            "calibration": m.calibration,
            "onnxruntime": lib.as_ref().ok().map(|l| serde_json::json!({"path": l.path, "version": l.version})),
            "providers": providers,
            "search_kernel": {
                "path": simd.as_ref().ok().map(|p| p.name()),
                "error": simd.as_ref().err().map(|e| e.to_string()),
                "available": available,
                "forced": std::env::var("SEN_SIMD").ok().filter(|v| !v.trim().is_empty()),
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("bundle     {}", a.bundle.display());
    match &verified {
        Ok(()) => println!(
            "files      {} files match the manifest (sha256)",
            m.files.len()
        ),
        Err(e) => println!("files      DO NOT MATCH: {e}"),
    }
    println!("precision  {}", m.precision);
    let v = &m.model.vision;
    let t = &m.model.text;
    println!(
        "image      {}x{} (HxW), ViT width {} x {} layers, patch {} -> {}-dim",
        v.image_height, v.image_width, v.width, v.layers, v.patch_size, m.model.embed_dim
    );
    println!(
        "text       {} tokens, width {} x {} layers, vocabulary {}",
        t.context_length, t.width, t.layers, t.vocab_size
    );
    println!(
        "preprocess resize {} to {}x{}, mean {:?}, std {:?}",
        m.preprocess.resize,
        m.preprocess.height,
        m.preprocess.width,
        m.preprocess.mean,
        m.preprocess.std
    );
    for (name, f) in &m.files {
        println!(
            "  {name:<24} {:>12} bytes  sha256 {}",
            f.bytes,
            &f.sha256[..16]
        );
    }
    if let Some(d) = image_digest {
        println!("image encoder digest {d} (indexes and engine caches are keyed by it)");
    }
    println!(
        "tools      {}",
        m.tools
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(c) = &m.calibration {
        println!(
            "calibration {} on {} samples (data sha256 {}), {}-bit weights{}",
            c.method,
            c.samples,
            &c.data_sha256[..16],
            c.weight_bits,
            c.weight_bits_why
                .as_deref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        );
    }
    match &simd {
        Ok(p) => println!(
            "search     {p} kernels ({}; this CPU runs {})",
            if std::env::var("SEN_SIMD").is_ok_and(|v| !v.trim().is_empty()) {
                "forced by SEN_SIMD"
            } else {
                "the fastest here; SEN_SIMD forces another"
            },
            available.join(", ")
        ),
        Err(e) => println!("search     {e}"),
    }
    match &lib {
        Ok(l) => println!("\nONNX Runtime {} from {}", l.version, l.path.display()),
        Err(e) => println!("\nONNX Runtime: {e}"),
    }
    println!("execution providers (all compiled in):");
    for kind in ProviderKind::ALL {
        let p = &providers[kind.name()];
        if p["can_start"].as_bool() == Some(true) {
            let gpu = p["gpu"]["name"]
                .as_str()
                .map(|g| format!(" on {g}"))
                .unwrap_or_default();
            let trt = p["tensorrt"]
                .as_str()
                .map(|t| format!(", TensorRT {t}"))
                .unwrap_or_default();
            println!("  {:<9} can start{gpu}{trt}", kind.name());
        } else {
            println!("  {:<9} cannot start here:", kind.name());
            for m in p["missing"].as_array().into_iter().flatten() {
                println!("              - {}", m.as_str().unwrap_or_default());
            }
        }
    }
    Ok(())
}
