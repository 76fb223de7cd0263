//! `sen bench`: latency percentiles and throughput of a bundle's encoders on this box,
//! with the machine described, so numbers from different boxes can be told apart.
//!
//! Each (encoder, batch) pair is warmed up, then run back to back for a fixed time;
//! every call's wall time is one sample. ONNX Runtime returns outputs in host
//! memory, so a GPU call's time includes the device finishing its work (the timed
//! region ends after the copy back).

use crate::encoders::{Encoders, start_provider};
use crate::error::RuntimeError;
use crate::providers::{Preflight, ProviderKind, ProviderOptions};
use ndarray::Array4;
use sen_core::timing::{Latency, cpu_model, logical_cores, sample};
use serde::Serialize;
use std::time::Duration;

/// One measured (encoder, batch).
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub encoder: &'static str,
    pub batch: usize,
    #[serde(flatten)]
    pub latency: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub texts_per_s: Option<f64>,
}

/// What the numbers were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub logical_cores: usize,
    pub os: String,
    pub gpu: Option<String>,
    pub provider: String,
    pub onnxruntime: String,
    pub onnxruntime_library: String,
    pub tensorrt: Option<String>,
    pub sen: String,
}

pub fn machine(
    kind: ProviderKind,
    pre: &Preflight,
    device_id: i32,
) -> Result<Machine, RuntimeError> {
    let lib = crate::onnxruntime::init()?;
    // The GPU, if the driver is there, even when benchmarking the CPU provider.
    let gpu = pre
        .gpu
        .clone()
        .or_else(|| crate::providers::preflight(ProviderKind::Cuda, &lib.path, device_id).gpu);
    Ok(Machine {
        cpu: cpu_model(),
        logical_cores: logical_cores(),
        os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        gpu: gpu.map(|g| {
            format!(
                "{} (sm{}{}, {} MiB, driver CUDA {}.{})",
                g.name,
                g.compute_capability.0,
                g.compute_capability.1,
                g.memory_bytes >> 20,
                g.driver_cuda_version / 1000,
                (g.driver_cuda_version % 1000) / 10
            )
        }),
        provider: kind.to_string(),
        onnxruntime: lib.version.clone(),
        onnxruntime_library: lib.path.display().to_string(),
        tensorrt: pre.tensorrt.map(|(a, b, c)| format!("{a}.{b}.{c}")),
        sen: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// The whole `sen bench` result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub bundle: String,
    pub precision: String,
    pub machine: Machine,
    pub seconds_per_entry: f64,
    pub results: Vec<Entry>,
}

/// Which encoders to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Image,
    Text,
    Both,
}

const CAPTIONS: [&str; 4] = [
    "a man in a grey hoodie with a red backpack",
    "the woman wears a long crimson coat over a white sweater and brown boots",
    "a young boy in a yellow t-shirt and blue shorts carrying a small green bag",
    "this pedestrian has a black jacket, light grey pants and black shoes",
];

/// Time `which` encoders of `bundle` at each of `batches` for `seconds` each.
/// The TensorRT profile spans the requested batches (its optimum the largest).
pub fn run(
    bundle: &std::path::Path,
    opts: &ProviderOptions,
    batches: &[usize],
    seconds: f64,
    which: Which,
    mut progress: impl FnMut(&str, usize),
) -> Result<Report, RuntimeError> {
    if batches.is_empty() || batches.contains(&0) {
        return Err(RuntimeError::Input(
            "--batch: give batch sizes of at least 1, such as 1,8,32".into(),
        ));
    }
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(RuntimeError::Input(format!(
            "--seconds {seconds}: must be a positive number"
        )));
    }
    let (lo, hi) = (
        *batches.iter().min().expect("non-empty"),
        *batches.iter().max().expect("non-empty"),
    );
    let mut opts = opts.clone();
    let profile = crate::providers::BatchProfile {
        min: lo,
        opt: hi,
        max: hi,
    };
    opts.tensorrt.image_profile = profile;
    opts.tensorrt.text_profile = profile;
    let pre = start_provider(&opts)?;
    let machine = machine(opts.kind, &pre, opts.device_id)?;
    let enc = Encoders::load(bundle, &opts)?;
    let measure = Duration::from_secs_f64(seconds);
    let warmup = Duration::from_secs_f64((seconds * 0.2).min(2.0));
    let mut results = vec![];
    let p = &enc.image.manifest.preprocess;
    let mut rng = sen_core::rng::Rng::new(11);
    if which != Which::Text {
        for &b in batches {
            progress("image", b);
            // Normalised-pixel-like values (speed does not depend on them).
            let x = Array4::from_shape_fn((b, 3, p.height, p.width), |_| rng.normal() as f32);
            let s = sample(
                || enc.image.encode(x.view()).map(|_| ()),
                warmup,
                measure,
                5,
            )?;
            let latency = Latency::from_seconds(&s);
            results.push(Entry {
                encoder: "image",
                batch: b,
                images_per_s: Some(latency.per_second(b)),
                texts_per_s: None,
                latency,
            });
        }
    }
    if which != Which::Image {
        for &b in batches {
            progress("text", b);
            let texts: Vec<&str> = CAPTIONS.iter().cycle().take(b).copied().collect();
            let (ids, eot) = enc.text.tokenizer.encode_arrays(&texts)?;
            let s = sample(
                || enc.text.encode_ids(ids.view(), eot.view()).map(|_| ()),
                warmup,
                measure,
                5,
            )?;
            let latency = Latency::from_seconds(&s);
            results.push(Entry {
                encoder: "text",
                batch: b,
                images_per_s: None,
                texts_per_s: Some(latency.per_second(b)),
                latency,
            });
        }
    }
    Ok(Report {
        bundle: bundle.display().to_string(),
        precision: enc.image.manifest.precision.to_string(),
        machine,
        seconds_per_entry: seconds,
        results,
    })
}
