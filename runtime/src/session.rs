//! Session construction, in one place: the builder (graph optimisations, threads,
//! spinning), the execution provider registered with `error_on_failure` and its
//! TensorRT plan, and the report of what was built. Encoders ([`crate::encoders`])
//! and tools that run a rewritten graph ([`session_from_memory`]) both come here.

use crate::error::RuntimeError;
use crate::providers::{BatchProfile, Preflight, ProviderKind, ProviderOptions, TensorRtPlan};
use ort::ep::ExecutionProviderDispatch;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use sen_core::Manifest;
use sen_core::manifest::EncoderIo;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a session was built with and how long it took (for logs and `sen build-engines`).
#[derive(Debug, Clone)]
pub struct SessionReport {
    pub model: PathBuf,
    pub provider: ProviderKind,
    pub seconds: f64,
    /// TensorRT: the engine cache directory, and whether an engine was already there.
    pub engine_dir: Option<PathBuf>,
    pub engine_was_cached: bool,
}

pub(crate) fn ort_err(ctx: &Path, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::onnx(ctx.display(), e)
}

/// A session builder with every graph optimisation (`ORT_ENABLE_ALL`, which includes
/// the layout level and, unlike `Level3`, older ONNX Runtime releases accept) and the
/// configured CPU threads.
fn base_builder(
    ctx: &Path,
    opts: &ProviderOptions,
) -> Result<ort::session::builder::SessionBuilder, RuntimeError> {
    let lib = crate::onnxruntime::init()?;
    let mut b = Session::builder(&lib.env)
        .map_err(|e| ort_err(ctx, e))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| ort_err(ctx, ort::Error::<()>::from(e)))?;
    if let Some(t) = opts.threads {
        b = b
            .with_intra_threads(t)
            .map_err(|e| ort_err(ctx, ort::Error::<()>::from(e)))?;
    }
    if !opts.spin {
        b = b
            .with_intra_op_spinning(false)
            .map_err(|e| ort_err(ctx, ort::Error::<()>::from(e)))?;
    }
    Ok(b)
}

/// One ONNX Runtime session for `model` on the configured provider.
pub(crate) fn build_session(
    model: &Path,
    io: &EncoderIo,
    manifest: &Manifest,
    profile: &BatchProfile,
    opts: &ProviderOptions,
    pre: &Preflight,
    name: &str,
) -> Result<(Session, SessionReport), RuntimeError> {
    let mut b = base_builder(model, opts)?;
    if let Some(dir) = &opts.optimized_model_dir {
        b = b
            .with_optimized_model_path(dir.join(format!("{name}.optimized.onnx")))
            .map_err(|e| ort_err(model, ort::Error::<()>::from(e)))?;
    }
    let mut report = SessionReport {
        model: model.to_path_buf(),
        provider: opts.kind,
        seconds: 0.0,
        engine_dir: None,
        engine_was_cached: false,
    };
    let cuda = || {
        ort::ep::CUDA::default()
            .with_device_id(opts.device_id)
            .build()
            .error_on_failure()
    };
    let mut eps: Vec<ExecutionProviderDispatch> = vec![];
    match opts.kind {
        // ort's CPU provider turns ONNX Runtime's memory arena off unless asked; keep
        // ONNX Runtime's own default (and Python's), on. (Measured: no difference in
        // `--bench encoders` for the tiny preset, 0.43 vs 0.44 ms at batch 1.)
        ProviderKind::Cpu => eps.push(
            ort::ep::CPU::default()
                .with_arena_allocator(true)
                .build()
                .error_on_failure(),
        ),
        ProviderKind::Cuda => eps.push(cuda()),
        ProviderKind::TensorRt => {
            let (Some(trt), Some(gpu)) = (pre.tensorrt, pre.gpu.as_ref()) else {
                return Err(RuntimeError::Provider(
                    "TensorRT: the preflight found no TensorRT version or GPU".into(),
                ));
            };
            let plan = TensorRtPlan::new(
                manifest,
                io,
                profile,
                &opts.tensorrt,
                trt,
                gpu,
                opts.device_id,
            )?;
            for d in [&plan.engine_dir, &plan.timing_dir] {
                std::fs::create_dir_all(d).map_err(|e| {
                    RuntimeError::Provider(format!(
                        "cannot create the TensorRT cache folder {}: {e} (set --engine-cache to a writable folder)",
                        d.display()
                    ))
                })?;
            }
            plan.install_calibration_table(model)?;
            report.engine_was_cached = plan.engine_cached();
            if !report.engine_was_cached {
                tracing::warn!(
                    "building the TensorRT {} engine for {} (first use on this GPU: this can take minutes; \
                     `sen build-engines` does it ahead of serving) into {}",
                    plan.precision.name(),
                    model.display(),
                    plan.engine_dir.display()
                );
            }
            report.engine_dir = Some(plan.engine_dir.clone());
            eps.push(plan.provider().build().error_on_failure());
            if opts.allow_fallback {
                eps.push(cuda());
            }
        }
    }
    if opts.kind != ProviderKind::Cpu {
        if opts.allow_fallback {
            tracing::warn!(
                "--allow-fallback: nodes the {} provider cannot take will run on {}",
                opts.kind,
                if opts.kind == ProviderKind::TensorRt {
                    "CUDA, then the CPU"
                } else {
                    "the CPU"
                }
            );
        } else {
            b = b
                .with_disable_cpu_fallback()
                .map_err(|e| ort_err(model, ort::Error::<()>::from(e)))?;
        }
    }
    b = b
        .with_execution_providers(eps)
        .map_err(|e| ort_err(model, ort::Error::<()>::from(e)))?;
    let t = Instant::now();
    let session = b.commit_from_file(model).map_err(|e| {
        let hint = if opts.kind != ProviderKind::Cpu && !opts.allow_fallback {
            format!(
                " (CPU fallback is off: if the {} provider cannot take every node, rerun with --allow-fallback to let the rest run elsewhere, logged)",
                opts.kind
            )
        } else {
            String::new()
        };
        RuntimeError::Onnx {
            context: model.display().to_string(),
            message: format!("{e}{hint}"),
        }
    })?;
    report.seconds = t.elapsed().as_secs_f64();
    if opts.kind == ProviderKind::TensorRt && !report.engine_was_cached {
        tracing::warn!(
            "TensorRT engine for {} built in {:.1} s",
            model.display(),
            report.seconds
        );
    }
    Ok((session, report))
}

/// A session for an in-memory model on ONNX Runtime's CPU or CUDA provider (tools
/// that run a rewritten graph, such as calibration's range collection). `context`
/// names the model in errors. TensorRT is refused: it would build an engine for a
/// graph that is only run once.
pub fn session_from_memory(
    bytes: &[u8],
    context: &str,
    opts: &ProviderOptions,
) -> Result<Session, RuntimeError> {
    let ctx = Path::new(context);
    let mut b = base_builder(ctx, opts)?;
    let ep = match opts.kind {
        ProviderKind::Cpu => ort::ep::CPU::default()
            .with_arena_allocator(true)
            .build()
            .error_on_failure(),
        ProviderKind::Cuda => {
            if !opts.allow_fallback {
                b = b
                    .with_disable_cpu_fallback()
                    .map_err(|e| ort_err(ctx, ort::Error::<()>::from(e)))?;
            }
            ort::ep::CUDA::default()
                .with_device_id(opts.device_id)
                .build()
                .error_on_failure()
        }
        ProviderKind::TensorRt => {
            return Err(RuntimeError::Provider(format!(
                "{context}: runs on --provider cpu or cuda, not tensorrt"
            )));
        }
    };
    b = b
        .with_execution_providers([ep])
        .map_err(|e| ort_err(ctx, ort::Error::<()>::from(e)))?;
    b.commit_from_memory(bytes).map_err(|e| ort_err(ctx, e))
}

/// Check the provider can start here and load ONNX Runtime.
pub fn start_provider(opts: &ProviderOptions) -> Result<Preflight, RuntimeError> {
    let lib = crate::onnxruntime::init()?;
    crate::providers::preflight(opts.kind, &lib.path, opts.device_id).into_result()
}
