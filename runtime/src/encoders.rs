//! A bundle's image and text encoders on a chosen execution provider.
//!
//! The bundle is loaded only after every file matches its manifest; inputs are
//! checked against the manifest's shapes before they reach ONNX Runtime.
//!
//! **Concurrency.** ort's `Session::run` takes `&mut self`, so each encoder owns a
//! small pool of sessions (`ProviderOptions::sessions`, default 1) behind a mutex
//! and condition variable: a caller takes a free session, runs, and puts it back;
//! with every session busy, callers wait. Both encoders are `Send + Sync` and take
//! `&self`. One session is the default because on a GPU each session holds its own
//! engine and activations while the GPU runs one kernel stream anyway, and on the
//! CPU ONNX Runtime already spreads each operator over every core; a server with
//! many concurrent clients on a big GPU can raise it.
//!
//! **Batching.** Files are encoded in batches of the provider profile's optimum
//! batch size; a worker thread decodes and preprocesses the next batch (itself in
//! parallel over rayon's pool) while the current one runs.

use crate::error::RuntimeError;
use crate::providers::{BatchProfile, Preflight, ProviderKind, ProviderOptions};
pub use crate::session::{SessionReport, session_from_memory, start_provider};
use crate::session::{build_session, ort_err};
use ndarray::{Array2, Array4, ArrayView1, ArrayView2, ArrayView4, Axis, Ix2};
use ort::session::Session;
use ort::value::TensorRef;
use sen_core::manifest::{EncoderIo, Precision};
use sen_core::{ClipTokenizer, Manifest, Preprocessor};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

/// CPU provider: a call runs at most as many rows at once as keep the largest
/// activation (the MLP's `tokens x 4 width` floats a row) within this many bytes;
/// larger batches run as consecutive sub-batches. Measured on vit-b16 (2.4 MB a row)
/// with two cores: 12.5 images/s at batch 4 against 11.3 at 8 and 10.2 at 32, since
/// larger batches spill the caches; the tiny preset gains nothing from splitting.
pub const CPU_ACTIVATION_BUDGET: usize = 10 << 20;

/// Rows per CPU sub-batch for rows of `tokens` tokens through blocks of `width`.
pub fn cpu_chunk_rows(tokens: usize, width: usize) -> usize {
    (CPU_ACTIVATION_BUDGET / (tokens * 4 * width * 4).max(1)).max(1)
}

/// Sessions of one model; see the module notes.
struct SessionPool {
    free: Mutex<Vec<Slot>>,
    ready: Condvar,
}

/// One session and, with I/O binding, its bound buffers.
struct Slot {
    session: Session,
    bound: Option<Bound>,
}

/// An input for [`run_session`]: a borrowed array of either element type.
enum Input<'a> {
    F32(ndarray::ArrayViewD<'a, f32>),
    I64(ndarray::ArrayViewD<'a, i64>),
}

impl Input<'_> {
    fn shape(&self) -> Vec<usize> {
        match self {
            Input::F32(a) => a.shape().to_vec(),
            Input::I64(a) => a.shape().to_vec(),
        }
    }
}

/// I/O binding state of one session (`ProviderOptions::io_binding`): host buffers in
/// the provider's transfer memory (CUDA pinned memory on CUDA and TensorRT, plain CPU
/// memory on the CPU provider), allocated once per input shape and reused while the
/// shapes repeat, and the output bound to a preallocated buffer, so a call allocates
/// nothing and copies through pinned memory.
struct Bound {
    binding: ort::session::IoBinding,
    input_alloc: ort::memory::Allocator,
    output_alloc: ort::memory::Allocator,
    shapes: Vec<Vec<usize>>,
    inputs: Vec<ort::value::DynTensor>,
    output: Option<ort::value::Tensor<f32>>,
    /// Times the buffers were (re)allocated, for tests and logs.
    allocations: u64,
}

impl Bound {
    fn new(session: &Session, kind: ProviderKind, device: i32) -> Result<Bound, ort::Error> {
        use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
        let mem = |t: MemoryType| match kind {
            ProviderKind::Cpu => {
                MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, t)
            }
            _ => MemoryInfo::new(
                AllocationDevice::CUDA_PINNED,
                device,
                AllocatorType::Device,
                t,
            ),
        };
        Ok(Bound {
            binding: session.create_binding()?,
            input_alloc: Allocator::new(session, mem(MemoryType::CPUInput)?)?,
            output_alloc: Allocator::new(session, mem(MemoryType::CPUOutput)?)?,
            shapes: vec![],
            inputs: vec![],
            output: None,
            allocations: 0,
        })
    }
}

/// Run `session` on `inputs` (named `names`) and return output `out` as `[B, D]`,
/// through the slot's I/O binding when it has one.
fn run_session(
    slot: &mut Slot,
    names: &[&str],
    inputs: &[Input<'_>],
    out: &str,
    out_cols: usize,
    model: &Path,
) -> Result<Array2<f32>, RuntimeError> {
    let err = |e: ort::Error| ort_err(model, e);
    let Some(b) = slot.bound.as_mut() else {
        let values: Vec<(String, ort::session::SessionInputValue)> = names
            .iter()
            .zip(inputs)
            .map(|(n, i)| {
                let v: ort::session::SessionInputValue = match i {
                    Input::F32(a) => TensorRef::from_array_view(a.view()).map_err(err)?.into(),
                    Input::I64(a) => TensorRef::from_array_view(a.view()).map_err(err)?.into(),
                };
                Ok((n.to_string(), v))
            })
            .collect::<Result<_, RuntimeError>>()?;
        let outputs = slot.session.run(values).map_err(err)?;
        return extract(&outputs[out], model);
    };
    let shapes: Vec<Vec<usize>> = inputs.iter().map(Input::shape).collect();
    if shapes != b.shapes {
        b.inputs.clear();
        for i in inputs {
            let t: ort::value::DynTensor = match i {
                Input::F32(a) => ort::value::Tensor::<f32>::new(&b.input_alloc, a.shape())
                    .map_err(err)?
                    .upcast(),
                Input::I64(a) => ort::value::Tensor::<i64>::new(&b.input_alloc, a.shape())
                    .map_err(err)?
                    .upcast(),
            };
            b.inputs.push(t);
        }
        let rows = shapes.first().and_then(|s| s.first()).copied().unwrap_or(0);
        let mut o =
            ort::value::Tensor::<f32>::new(&b.output_alloc, [rows, out_cols]).map_err(err)?;
        b.binding.bind_output(out, &mut o).map_err(err)?;
        b.output = Some(o);
        b.shapes = shapes;
        b.allocations += 1;
    }
    for ((name, i), t) in names.iter().zip(inputs).zip(&mut b.inputs) {
        match i {
            Input::F32(a) => {
                let (_, dst) = t.try_extract_tensor_mut::<f32>().map_err(err)?;
                copy_into(dst, a)?;
            }
            Input::I64(a) => {
                let (_, dst) = t.try_extract_tensor_mut::<i64>().map_err(err)?;
                copy_into(dst, a)?;
            }
        }
        // Binding copies the data to the device (or aliases it on the CPU).
        b.binding.bind_input(*name, &*t).map_err(err)?;
    }
    let outputs = slot.session.run_binding(&b.binding).map_err(err)?;
    extract(&outputs[out], model)
}

/// Copy a standard-layout view into a bound buffer of the same length.
fn copy_into<T: Copy>(dst: &mut [T], src: &ndarray::ArrayViewD<'_, T>) -> Result<(), RuntimeError> {
    let src = src
        .as_slice()
        .ok_or_else(|| RuntimeError::Input("input is not in standard layout".into()))?;
    if dst.len() != src.len() {
        return Err(RuntimeError::Input(format!(
            "bound buffer holds {} values, the input {}",
            dst.len(),
            src.len()
        )));
    }
    dst.copy_from_slice(src);
    Ok(())
}

impl SessionPool {
    fn new(slots: Vec<Slot>) -> Self {
        SessionPool {
            free: Mutex::new(slots),
            ready: Condvar::new(),
        }
    }

    fn run<R>(&self, f: impl FnOnce(&mut Slot) -> R) -> R {
        let s = {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(s) = free.pop() {
                    break s;
                }
                free = self.ready.wait(free).unwrap_or_else(|e| e.into_inner());
            }
        };
        // Put the session back even if `f` panics, so other callers do not wait forever.
        struct Back<'a>(&'a SessionPool, Option<Slot>);
        impl Drop for Back<'_> {
            fn drop(&mut self) {
                if let Some(s) = self.1.take() {
                    self.0
                        .free
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(s);
                    self.0.ready.notify_one();
                }
            }
        }
        let mut back = Back(self, Some(s));
        f(back.1.as_mut().expect("session held"))
    }

    /// Buffer allocations of the bound sessions so far (0 without I/O binding).
    fn bound_allocations(&self) -> u64 {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|s| s.bound.as_ref().map(|b| b.allocations))
            .sum()
    }
}

fn pool(
    dir: &Path,
    io: &EncoderIo,
    manifest: &Manifest,
    profile: &BatchProfile,
    opts: &ProviderOptions,
    pre: &Preflight,
    name: &str,
) -> Result<(SessionPool, Vec<SessionReport>), RuntimeError> {
    if opts.sessions == 0 {
        return Err(RuntimeError::Input("--sessions must be at least 1".into()));
    }
    profile.validate().map_err(RuntimeError::Input)?;
    warn_saturating_int8(dir, manifest, opts, crate::int8cpu::CpuInt8::detect());
    let model = dir.join(crate::providers::model_file(manifest, io, opts)?);
    let mut slots = vec![];
    let mut reports = vec![];
    for _ in 0..opts.sessions {
        let (session, r) = build_session(&model, io, manifest, profile, opts, pre, name)?;
        let bound = if opts.io_binding {
            Some(Bound::new(&session, opts.kind, opts.device_id).map_err(|e| ort_err(&model, e))?)
        } else {
            None
        };
        slots.push(Slot { session, bound });
        reports.push(r);
    }
    Ok((SessionPool::new(slots), reports))
}

/// Why an int8 bundle with 8-bit weights loses accuracy on this CPU's provider, when
/// it does: on ONNX Runtime's CPU provider, on x86-64 without VNNI (see `int8cpu`).
pub fn int8_saturation_warning(
    manifest: &Manifest,
    opts: &ProviderOptions,
    cpu: crate::int8cpu::CpuInt8,
) -> Option<String> {
    let c = manifest.calibration.as_ref()?;
    (manifest.precision == Precision::Int8
        && opts.kind == ProviderKind::Cpu
        && c.weight_bits == 8
        && cpu.saturates())
    .then(|| {
        format!(
            "this int8 bundle has 8-bit weights and runs on {}: ONNX Runtime's integer \
             kernels here clip large products, which costs accuracy; calibrate it for this CPU \
             (sen-calibrate picks 7-bit weights here by itself, or pass --weight-bits 7)",
            cpu.describe()
        )
    })
}

/// Log [`int8_saturation_warning`] once per bundle directory and process.
fn warn_saturating_int8(
    dir: &Path,
    manifest: &Manifest,
    opts: &ProviderOptions,
    cpu: crate::int8cpu::CpuInt8,
) {
    static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    if let Some(w) = int8_saturation_warning(manifest, opts, cpu) {
        let mut seen = WARNED.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.iter().any(|d| d == dir) {
            seen.push(dir.to_path_buf());
            tracing::warn!("{}: {w}", dir.display());
        }
    }
}

/// The image encoder of a bundle.
pub struct ImageEncoder {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub preprocessor: Preprocessor,
    pub profile: BatchProfile,
    pub reports: Vec<SessionReport>,
    /// CPU provider: rows per sub-batch ([`cpu_chunk_rows`]); None on GPUs.
    pub cpu_chunk: Option<usize>,
    pool: SessionPool,
}

/// The text encoder of a bundle, with the bundle's tokenizer.
///
/// A format-2 bundle's text encoder takes a dynamic sequence axis: every batch is cut
/// to its longest caption (last EOT + 1, at least the profile's minimum) before the
/// call, which is exact because the attention is causal. [`TextEncoder::fed`] counts
/// what the session was given.
pub struct TextEncoder {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub tokenizer: ClipTokenizer,
    pub profile: BatchProfile,
    /// Sequence lengths the session accepts (min, max); max = the context length.
    pub sequence: (usize, usize),
    pub reports: Vec<SessionReport>,
    pool: SessionPool,
    fed: FedCounters,
}

/// Calls, rows and token positions given to a text session (positions per row are
/// what trimming saves: a v1 bundle always gets the whole context).
#[derive(Debug, Default)]
struct FedCounters {
    calls: std::sync::atomic::AtomicU64,
    rows: std::sync::atomic::AtomicU64,
    positions: std::sync::atomic::AtomicU64,
    last_length: std::sync::atomic::AtomicU64,
}

/// A snapshot of [`TextEncoder::fed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fed {
    pub calls: u64,
    pub rows: u64,
    /// Sum over calls of batch x sequence length.
    pub positions: u64,
    /// The sequence length of the last call.
    pub last_length: u64,
}

/// Both encoders of one bundle (the manifest verified once).
pub struct Encoders {
    pub image: ImageEncoder,
    pub text: TextEncoder,
}

impl Encoders {
    pub fn load(dir: &Path, opts: &ProviderOptions) -> Result<Self, RuntimeError> {
        let manifest = Manifest::load(dir)?;
        let pre = start_provider(opts)?;
        Ok(Encoders {
            image: ImageEncoder::with_manifest(dir, manifest.clone(), opts, &pre)?,
            text: TextEncoder::with_manifest(dir, manifest, opts, &pre)?,
        })
    }

    /// Both encoders on ONNX Runtime's CPU provider with default options.
    pub fn load_cpu(dir: &Path) -> Result<Self, RuntimeError> {
        Self::load(dir, &ProviderOptions::cpu())
    }
}

/// Images encoded from files: rows for the files that decoded, failures for the rest.
#[derive(Debug)]
pub struct FileEmbeddings {
    /// `[ok.len(), D]` unit rows.
    pub embeds: Array2<f32>,
    /// Input positions of the rows of `embeds`, ascending.
    pub ok: Vec<usize>,
    /// Input position and reason of every file that could not be read.
    pub failures: Vec<(usize, String)>,
    /// Seconds spent inside ONNX Runtime.
    pub inference_seconds: f64,
}

impl ImageEncoder {
    pub fn load(dir: &Path, opts: &ProviderOptions) -> Result<Self, RuntimeError> {
        let manifest = Manifest::load(dir)?;
        let pre = start_provider(opts)?;
        Self::with_manifest(dir, manifest, opts, &pre)
    }

    fn with_manifest(
        dir: &Path,
        manifest: Manifest,
        opts: &ProviderOptions,
        pre: &Preflight,
    ) -> Result<Self, RuntimeError> {
        let profile = opts.tensorrt.image_profile;
        let (pool, reports) = pool(
            dir,
            &manifest.io.image,
            &manifest,
            &profile,
            opts,
            pre,
            "image_encoder",
        )?;
        let v = &manifest.model.vision;
        let cpu_chunk = (opts.kind == ProviderKind::Cpu).then(|| {
            opts.cpu_chunk
                .unwrap_or_else(|| cpu_chunk_rows(v.num_tokens(), v.width))
        });
        Ok(ImageEncoder {
            dir: dir.to_path_buf(),
            preprocessor: Preprocessor::new(manifest.preprocess.clone())?,
            manifest,
            profile,
            reports,
            cpu_chunk,
            pool,
        })
    }

    /// I/O binding: how many times the bound buffers were allocated (once per new
    /// input shape; 0 without binding).
    pub fn bound_allocations(&self) -> u64 {
        self.pool.bound_allocations()
    }

    /// The content hash recorded in gallery indexes made with this encoder.
    pub fn digest(&self) -> Result<String, RuntimeError> {
        Ok(self.manifest.encoder_digest(&self.manifest.io.image)?)
    }

    /// `[B, 3, H, W]` preprocessed images -> `[B, D]` unit rows (B up to the profile's max).
    pub fn encode(&self, pixels: ArrayView4<f32>) -> Result<Array2<f32>, RuntimeError> {
        let p = &self.manifest.preprocess;
        let s = pixels.shape();
        if s[1] != 3 || s[2] != p.height || s[3] != p.width || s[0] == 0 {
            return Err(RuntimeError::Input(format!(
                "pixel_values: shape {s:?}, but the bundle takes [batch >= 1, 3, {}, {}]; preprocess with the bundle's manifest",
                p.height, p.width
            )));
        }
        let io = &self.manifest.io.image;
        let model = self.dir.join(&io.file);
        let pixels = pixels.as_standard_layout();
        let run = |x: ArrayView4<f32>| {
            self.pool.run(|slot| {
                run_session(
                    slot,
                    &[io.inputs[0].name.as_str()],
                    &[Input::F32(x.into_dyn())],
                    io.outputs[0].name.as_str(),
                    self.manifest.model.embed_dim,
                    &model,
                )
            })
        };
        let chunk = self.cpu_chunk.unwrap_or(usize::MAX);
        if s[0] <= chunk {
            return run(pixels.view());
        }
        let parts = pixels
            .axis_chunks_iter(Axis(0), chunk)
            .map(run)
            .collect::<Result<Vec<_>, _>>()?;
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        Ok(ndarray::concatenate(Axis(0), &views).expect("rows share D"))
    }

    /// Encode image files in batches of the profile's optimum, preprocessing the next
    /// batch while the current one runs. Unreadable files are reported in `failures`
    /// (the caller decides whether that is fatal); `progress` gets the count done.
    pub fn encode_files<P: AsRef<Path> + Sync>(
        &self,
        paths: &[P],
        mut progress: impl FnMut(usize),
    ) -> Result<FileEmbeddings, RuntimeError> {
        use rayon::prelude::*;
        let batch = self.profile.opt.max(1);
        let d = self.manifest.model.embed_dim;
        let (h, w) = (
            self.manifest.preprocess.height,
            self.manifest.preprocess.width,
        );
        struct Prepared {
            start: usize,
            pixels: Array4<f32>,
            ok: Vec<usize>,
            failures: Vec<(usize, String)>,
        }
        let pre = &self.preprocessor;
        let prepare = |start: usize, chunk: &[P]| -> Prepared {
            let loaded: Vec<Result<ndarray::Array3<f32>, String>> = chunk
                .par_iter()
                .map(|p| pre.load(p.as_ref()).map_err(|e| e.to_string()))
                .collect();
            let n_ok = loaded.iter().filter(|r| r.is_ok()).count();
            let mut pixels = Array4::zeros((n_ok, 3, h, w));
            let (mut ok, mut failures) = (vec![], vec![]);
            for (i, r) in loaded.into_iter().enumerate() {
                match r {
                    Ok(t) => {
                        pixels.index_axis_mut(Axis(0), ok.len()).assign(&t);
                        ok.push(start + i);
                    }
                    Err(e) => failures.push((start + i, e)),
                }
            }
            Prepared {
                start,
                pixels,
                ok,
                failures,
            }
        };
        let mut embeds = Array2::zeros((0, d));
        let mut out = FileEmbeddings {
            embeds: Array2::zeros((0, d)),
            ok: vec![],
            failures: vec![],
            inference_seconds: 0.0,
        };
        let mut rows: Vec<Array2<f32>> = vec![];
        let result = std::thread::scope(|s| -> Result<(), RuntimeError> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Prepared>(1);
            s.spawn(move || {
                for (i, chunk) in paths.chunks(batch).enumerate() {
                    if tx.send(prepare(i * batch, chunk)).is_err() {
                        break;
                    }
                }
            });
            for p in rx {
                if !p.ok.is_empty() {
                    let t = Instant::now();
                    rows.push(self.encode(p.pixels.view())?);
                    out.inference_seconds += t.elapsed().as_secs_f64();
                }
                progress(p.start + p.ok.len() + p.failures.len());
                out.ok.extend(p.ok);
                out.failures.extend(p.failures);
            }
            Ok(())
        });
        result?;
        if !rows.is_empty() {
            let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
            embeds = ndarray::concatenate(Axis(0), &views).expect("rows share D");
        }
        out.embeds = embeds;
        Ok(out)
    }
}

impl TextEncoder {
    pub fn load(dir: &Path, opts: &ProviderOptions) -> Result<Self, RuntimeError> {
        let manifest = Manifest::load(dir)?;
        let pre = start_provider(opts)?;
        Self::with_manifest(dir, manifest, opts, &pre)
    }

    fn with_manifest(
        dir: &Path,
        manifest: Manifest,
        opts: &ProviderOptions,
        pre: &Preflight,
    ) -> Result<Self, RuntimeError> {
        let profile = opts.tensorrt.text_profile;
        let (pool, reports) = pool(
            dir,
            &manifest.io.text,
            &manifest,
            &profile,
            opts,
            pre,
            "text_encoder",
        )?;
        let tokenizer = ClipTokenizer::from_file(
            &dir.join(&manifest.tokenizer.file),
            manifest.tokenizer.context_length,
        )?;
        let ctx = manifest.tokenizer.context_length;
        let sequence = if manifest.text_sequence_is_dynamic() {
            let p = opts.tensorrt.text_sequence(ctx)?;
            (p.min, p.max)
        } else {
            (ctx, ctx)
        };
        Ok(TextEncoder {
            dir: dir.to_path_buf(),
            manifest,
            tokenizer,
            profile,
            sequence,
            reports,
            pool,
            fed: FedCounters::default(),
        })
    }

    /// I/O binding: how many times the bound buffers were allocated.
    pub fn bound_allocations(&self) -> u64 {
        self.pool.bound_allocations()
    }

    /// What the session has been given so far.
    pub fn fed(&self) -> Fed {
        use std::sync::atomic::Ordering::Relaxed;
        Fed {
            calls: self.fed.calls.load(Relaxed),
            rows: self.fed.rows.load(Relaxed),
            positions: self.fed.positions.load(Relaxed),
            last_length: self.fed.last_length.load(Relaxed),
        }
    }

    /// Token ids `[B, context]` and EOT positions `[B]` -> `[B, D]` unit rows. A
    /// format-2 bundle gets the ids cut to the batch's last EOT + 1.
    pub fn encode_ids(
        &self,
        ids: ArrayView2<i64>,
        eot: ArrayView1<i64>,
    ) -> Result<Array2<f32>, RuntimeError> {
        let t = &self.manifest.tokenizer;
        let (b, l) = ids.dim();
        if l != t.context_length || b == 0 || eot.len() != b {
            return Err(RuntimeError::Input(format!(
                "input_ids: shape [{b}, {l}] with {} eot_index values, but the bundle takes [batch >= 1, {}] and one eot_index per row",
                eot.len(),
                t.context_length
            )));
        }
        let vocab = self.manifest.model.text.vocab_size as i64;
        if let Some(bad) = ids.iter().position(|&v| v < 0 || v >= vocab) {
            return Err(RuntimeError::Input(format!(
                "input_ids: element {bad} is {}, outside the vocabulary [0, {vocab})",
                ids.iter().nth(bad).copied().unwrap_or_default()
            )));
        }
        if let Some(bad) = eot.iter().position(|&v| v < 0 || v >= l as i64) {
            return Err(RuntimeError::Input(format!(
                "eot_index: row {bad} is {}, outside [0, {l})",
                eot[bad]
            )));
        }
        let io = &self.manifest.io.text;
        let model = self.dir.join(&io.file);
        // Every position after the last EOT is padding the causal attention never lets
        // reach an EOT token: cut it (to at least the profile's minimum).
        let len = (eot.iter().copied().max().unwrap_or(0) as usize + 1)
            .clamp(self.sequence.0, self.sequence.1);
        let ids = ids.slice(ndarray::s![.., ..len]);
        let ids = ids.as_standard_layout();
        let eot = eot.as_standard_layout();
        {
            use std::sync::atomic::Ordering::Relaxed;
            self.fed.calls.fetch_add(1, Relaxed);
            self.fed.rows.fetch_add(b as u64, Relaxed);
            self.fed.positions.fetch_add((b * len) as u64, Relaxed);
            self.fed.last_length.store(len as u64, Relaxed);
        }
        self.pool.run(|slot| {
            run_session(
                slot,
                &[io.inputs[0].name.as_str(), io.inputs[1].name.as_str()],
                &[
                    Input::I64(ids.view().into_dyn()),
                    Input::I64(eot.view().into_dyn()),
                ],
                io.outputs[0].name.as_str(),
                self.manifest.model.embed_dim,
                &model,
            )
        })
    }

    /// Tokenise and encode texts in batches of the profile's optimum. An empty (or
    /// whitespace-only) text is an error naming its position: it has no content to match.
    pub fn encode<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Array2<f32>, RuntimeError> {
        if let Some(i) = texts.iter().position(|t| t.as_ref().trim().is_empty()) {
            return Err(RuntimeError::Input(format!(
                "query {} is empty: give a description such as \"a man in a grey hoodie with a red backpack\"",
                i + 1
            )));
        }
        let d = self.manifest.model.embed_dim;
        let mut out = Array2::zeros((texts.len(), d));
        let batch = self.profile.opt.max(1);
        for (c, chunk) in texts.chunks(batch).enumerate() {
            let (ids, eot) = self.tokenizer.encode_arrays(chunk)?;
            let rows = self.encode_ids(ids.view(), eot.view())?;
            out.slice_mut(ndarray::s![c * batch..c * batch + chunk.len(), ..])
                .assign(&rows);
        }
        Ok(out)
    }
}

fn extract(v: &ort::value::DynValue, model: &Path) -> Result<Array2<f32>, RuntimeError> {
    let a = v
        .try_extract_array::<f32>()
        .map_err(|e| ort_err(model, e))?;
    a.into_dimensionality::<Ix2>()
        .map(|a| a.to_owned())
        .map_err(|e| ort_err(model, e))
}
