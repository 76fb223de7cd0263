//! What several commands share: where the encoders run (`ProviderArgs`), progress
//! bars, session logs, image listing.

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sen_runtime::encoders::SessionReport;
use sen_runtime::providers::{BatchProfile, ProviderKind, ProviderOptions, TensorRtOptions};
use std::path::{Path, PathBuf};

/// Where and how the encoders run.
#[derive(clap::Args, Debug, Clone)]
pub struct ProviderArgs {
    /// Execution provider: tensorrt, cuda or cpu (default cpu; build-engines: tensorrt).
    /// Nothing falls back to another provider unless --allow-fallback.
    #[arg(long)]
    pub(crate) provider: Option<ProviderKind>,
    /// GPU ordinal for cuda/tensorrt.
    #[arg(long, default_value_t = 0)]
    pub(crate) device: i32,
    /// Let nodes the provider cannot take run on CUDA or the CPU (logged).
    #[arg(long)]
    pub(crate) allow_fallback: bool,
    /// CPU provider: intra-op threads (default one per core).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Sessions per encoder, for concurrent callers (each holds its own engine on a GPU).
    #[arg(long, default_value_t = 1)]
    pub(crate) sessions: usize,
    /// TensorRT engine and timing caches (default $SEN_CACHE/tensorrt).
    #[arg(long, value_name = "DIR")]
    pub(crate) engine_cache: Option<PathBuf>,
    /// Image batch sizes MIN,OPT,MAX: the TensorRT profile; files are encoded in batches of OPT.
    #[arg(long, default_value = "1,16,64")]
    pub(crate) image_batch: BatchProfile,
    /// Text batch sizes MIN,OPT,MAX.
    #[arg(long, default_value = "1,8,64")]
    pub(crate) text_batch: BatchProfile,
    /// TensorRT, format-2 bundles: the text profile's sequence lengths MIN,OPT,MAX
    /// (MAX must be the context length; default 1,20,CONTEXT). Part of the engine key.
    #[arg(long, value_name = "MIN,OPT,MAX")]
    pub(crate) text_seq: Option<BatchProfile>,
    /// TensorRT: let LayerNorm run in fp16 inside fp16/int8 engines (default keeps it fp32).
    #[arg(long)]
    pub(crate) fp16_layer_norm: bool,
    /// TensorRT builder workspace limit in MiB.
    #[arg(long)]
    pub(crate) workspace_mib: Option<usize>,
    /// TensorRT, int8 bundles: `qdq` builds the Q/DQ models (explicit INT8, TensorRT
    /// 10 and 11); `implicit` builds the fp32 models under implicit/ with their
    /// calibration caches (TensorRT <= 10).
    #[arg(long, default_value = "qdq", value_parser = ["qdq", "implicit"])]
    pub(crate) int8_mode: String,
    /// ONNX Runtime I/O binding with reused (pinned, on GPUs) buffers: on or off
    /// (default: on for cuda and tensorrt, off for cpu).
    #[arg(long, value_parser = ["on", "off"])]
    pub(crate) io_binding: Option<String>,
}

impl ProviderArgs {
    pub(crate) fn kind(&self) -> ProviderKind {
        self.provider.unwrap_or(ProviderKind::Cpu)
    }

    pub(crate) fn options(&self) -> ProviderOptions {
        let mut o = ProviderOptions::new(self.kind());
        o.device_id = self.device;
        o.allow_fallback = self.allow_fallback;
        o.threads = self.threads;
        o.sessions = self.sessions;
        if let Some(b) = &self.io_binding {
            o.io_binding = b == "on";
        }
        o.tensorrt = TensorRtOptions {
            cache_root: self
                .engine_cache
                .clone()
                .unwrap_or_else(|| TensorRtOptions::default().cache_root),
            image_profile: self.image_batch,
            text_profile: self.text_batch,
            fp16_flag: false,
            layer_norm_fp32: !self.fp16_layer_norm,
            workspace_mib: self.workspace_mib,
            int8_implicit: self.int8_mode == "implicit",
            text_seq: self.text_seq,
        };
        o
    }
}

pub(crate) fn log_sessions(reports: &[SessionReport]) {
    for r in reports {
        tracing::info!(
            "{} on {} in {:.2} s{}",
            r.model.display(),
            r.provider,
            r.seconds,
            r.engine_dir
                .as_ref()
                .map(|d| format!(
                    " (engine {} {})",
                    if r.engine_was_cached {
                        "loaded from"
                    } else {
                        "built into"
                    },
                    d.display()
                ))
                .unwrap_or_default()
        );
    }
}

pub(crate) fn spinner(msg: String) -> ProgressBar {
    let b = ProgressBar::new_spinner().with_message(msg);
    b.enable_steady_tick(std::time::Duration::from_millis(120));
    b
}

pub(crate) fn bar(n: usize, what: &str) -> ProgressBar {
    let b = ProgressBar::new(n as u64);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
        ))
        .expect("template")
        .progress_chars("=> "),
    );
    b
}

pub(crate) fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?;
        for e in rd {
            let e = e.with_context(|| format!("reading {}", d.display()))?;
            let p = e.path();
            let ft = e
                .file_type()
                .with_context(|| format!("reading {}", p.display()))?;
            if ft.is_dir() {
                stack.push(p);
            } else if p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                matches!(
                    x.to_ascii_lowercase().as_str(),
                    "jpg" | "jpeg" | "png" | "bmp" | "webp"
                )
            }) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}
