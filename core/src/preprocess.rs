//! Image preprocessing (SPEC §3) — the only copy in the workspace. Training
//! evaluation, export checks, calibration and the runtime all call this code.
//!
//! decode (JPEG/PNG/BMP/WebP; EXIF orientation applied) -> RGB8 (alpha dropped,
//! 16-bit scaled) -> resize to H x W with the model's filter (bicubic or bilinear),
//! computed exactly as Pillow 13 does (`Image.resize((W, H), BICUBIC | BILINEAR)`:
//! separable, support widened by the scale on downsampling, 22-bit fixed-point
//! coefficients, 8-bit intermediate between the passes) -> `/255` ->
//! `(x - mean) / std` -> NCHW f32.

use crate::config::ModelConfig;
use crate::error::CoreError;
use image::{DynamicImage, ImageDecoder, ImageReader};
use ndarray::{Array3, Array4, ArrayViewMut3, Axis};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::Path;

/// CLIP's normalisation constants.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// What the image encoder expects; stored in every bundle manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    pub height: usize,
    pub width: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Resize filter, Pillow's: `bicubic` or `bilinear` (see [`ResizeFilter`]).
    pub resize: String,
}

/// The preprocessing a store or an index file records beside the image encoder's
/// sha256 (SPEC §10 encoder identity): embeddings made with another block are not
/// comparable, even from the same ONNX file.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordedPreprocess {
    /// The bundle's whole `preprocess` block.
    Block(PreprocessSpec),
    /// Made before sen recorded the block (store formats up to 4, index files without
    /// `preprocess`): every bundle then resized with CLIP's bicubic and normalised with
    /// CLIP's mean and std, at the input size the encoder (pinned by its sha256) takes.
    LegacyBicubic,
}

impl RecordedPreprocess {
    /// How [`RecordedPreprocess::LegacyBicubic`] is written down.
    pub const LEGACY: &'static str = "legacy-bicubic";

    /// From its record: [`Self::LEGACY`] or a block's JSON.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == Self::LEGACY {
            return Ok(RecordedPreprocess::LegacyBicubic);
        }
        let spec: PreprocessSpec =
            serde_json::from_str(s).map_err(|e| format!("preprocess {s:?}: {e}"))?;
        spec.validate().map_err(|e| e.to_string())?;
        Ok(RecordedPreprocess::Block(spec))
    }

    /// The record: a block's canonical JSON, or [`Self::LEGACY`].
    pub fn record(&self) -> String {
        match self {
            RecordedPreprocess::Block(b) => b.canonical_json(),
            RecordedPreprocess::LegacyBicubic => Self::LEGACY.to_string(),
        }
    }

    /// Whether a bundle with this `preprocess` block makes comparable embeddings.
    pub fn matches(&self, spec: &PreprocessSpec) -> bool {
        match self {
            RecordedPreprocess::Block(b) => b == spec,
            RecordedPreprocess::LegacyBicubic => {
                spec.resize == "bicubic" && spec.mean == CLIP_MEAN && spec.std == CLIP_STD
            }
        }
    }

    /// Whether embeddings recorded with `self` and with `other` are comparable.
    pub fn compatible(&self, other: &RecordedPreprocess) -> bool {
        match (self, other) {
            (RecordedPreprocess::Block(a), r) | (r, RecordedPreprocess::Block(a)) => r.matches(a),
            (RecordedPreprocess::LegacyBicubic, RecordedPreprocess::LegacyBicubic) => true,
        }
    }

    /// For messages: the block's JSON, or what a legacy record means.
    pub fn describe(&self) -> String {
        match self {
            RecordedPreprocess::Block(b) => b.canonical_json(),
            RecordedPreprocess::LegacyBicubic => {
                "bicubic with CLIP's mean and std (recorded before sen kept the whole block)".into()
            }
        }
    }
}

impl Serialize for RecordedPreprocess {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RecordedPreprocess::Block(b) => b.serialize(s),
            RecordedPreprocess::LegacyBicubic => s.serialize_str(Self::LEGACY),
        }
    }
}

impl PreprocessSpec {
    /// OpenAI CLIP's preprocessing at the model's size (bicubic): what `import-clip`
    /// checkpoints, and checkpoints that record none, were trained with.
    pub fn for_model(cfg: &ModelConfig) -> Self {
        Self::for_model_with(cfg, ResizeFilter::Bicubic)
    }

    /// CLIP's normalisation at the model's size, resized with `filter`.
    pub fn for_model_with(cfg: &ModelConfig, filter: ResizeFilter) -> Self {
        PreprocessSpec {
            height: cfg.vision.image_height,
            width: cfg.vision.image_width,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            resize: filter.name().into(),
        }
    }

    /// The preprocessing a checkpoint directory's model was trained with: the
    /// `preprocess` block of its `train.json` (imports and training runs record it),
    /// checked against the model's size; a checkpoint that records none was made
    /// before sen had a choice, with CLIP's bicubic ([`Self::for_model`]).
    pub fn for_checkpoint(dir: &Path, cfg: &ModelConfig) -> Result<Self, CoreError> {
        Ok(Self::recorded_in_checkpoint(dir, cfg)?.unwrap_or_else(|| Self::for_model(cfg)))
    }

    /// The `preprocess` block a checkpoint's `train.json` records, if it records one.
    pub fn recorded_in_checkpoint(
        dir: &Path,
        cfg: &ModelConfig,
    ) -> Result<Option<Self>, CoreError> {
        let path = dir.join(crate::fsutil::CHECKPOINT_TRAIN_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CoreError::io(&path, e)),
        };
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| CoreError::format(&path, format!("not JSON: {e}")))?;
        let Some(block) = json.get("preprocess") else {
            return Ok(None);
        };
        let spec: PreprocessSpec = serde_json::from_value(block.clone())
            .map_err(|e| CoreError::format(&path, format!("preprocess: {e}")))?;
        spec.validate()
            .map_err(|e| CoreError::format(&path, e.to_string()))?;
        if (spec.height, spec.width) != (cfg.vision.image_height, cfg.vision.image_width) {
            return Err(CoreError::format(
                &path,
                format!(
                    "preprocess is {}x{} but config.json's model takes {}x{}",
                    spec.height, spec.width, cfg.vision.image_height, cfg.vision.image_width
                ),
            ));
        }
        Ok(Some(spec))
    }

    /// The canonical JSON of this block (SPEC §10 encoder identity): keys in a fixed
    /// order, numbers as serde writes f32.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).expect("a PreprocessSpec serialises")
    }

    pub fn validate(&self) -> Result<(), CoreError> {
        if self.height == 0 || self.width == 0 {
            return Err(CoreError::config(
                "preprocess.height/width",
                "must be greater than 0",
            ));
        }
        if self.std.iter().any(|&s| s.is_nan() || s <= 0.0) {
            return Err(CoreError::config(
                "preprocess.std",
                format!("{:?} must be positive", self.std),
            ));
        }
        self.filter()?;
        Ok(())
    }

    /// The resize filter `resize` names; an unknown name is an error naming the field.
    pub fn filter(&self) -> Result<ResizeFilter, CoreError> {
        self.resize.parse()
    }
}

/// A resampling filter, exactly as Pillow 13 defines it (`src/libImaging/Resample.c`).
/// The filter is part of the model: OpenAI CLIP was trained on bicubic, IRRA and SEN
/// on bilinear (torchvision's `Resize` on PIL images).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeFilter {
    /// `Image.BICUBIC`: Keys' cubic convolution with a = -0.5, support 2.
    Bicubic,
    /// `Image.BILINEAR`: the triangle filter `max(0, 1 - |x|)`, support 1.
    Bilinear,
}

impl ResizeFilter {
    /// Every filter, in the order its name is listed in errors.
    pub const ALL: [ResizeFilter; 2] = [ResizeFilter::Bicubic, ResizeFilter::Bilinear];

    /// The name `preprocess.resize` uses.
    pub fn name(self) -> &'static str {
        match self {
            ResizeFilter::Bicubic => "bicubic",
            ResizeFilter::Bilinear => "bilinear",
        }
    }

    /// Half-width of the filter at scale 1 (Pillow's `filter->support`); on
    /// downscaling it is widened by the scale.
    pub fn support(self) -> f64 {
        match self {
            ResizeFilter::Bicubic => 2.0,
            ResizeFilter::Bilinear => 1.0,
        }
    }

    /// The filter's weight at distance `x` (Pillow's `bicubic_filter` / `bilinear_filter`).
    pub fn eval(self, x: f64) -> f64 {
        match self {
            ResizeFilter::Bicubic => bicubic(x),
            ResizeFilter::Bilinear => bilinear(x),
        }
    }
}

impl std::fmt::Display for ResizeFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ResizeFilter {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, CoreError> {
        ResizeFilter::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                CoreError::config(
                    "preprocess.resize",
                    format!(
                        "{s:?} is not a resize filter sen knows; use \"bicubic\" or \"bilinear\" \
                         (Pillow's, whichever the model was trained with)"
                    ),
                )
            })
    }
}

/// A decoded 8-bit RGB image, row-major, 3 bytes a pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// The content type of image bytes from their magic number (`image/jpeg`,
/// `image/png`, `image/webp`, `image/bmp`), or None for anything else.
pub fn image_content_type(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => Some("image/jpeg"),
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some("image/png"),
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => Some("image/webp"),
        [b'B', b'M', ..] => Some("image/bmp"),
        _ => None,
    }
}

/// Whether a JPEG's entropy-coded data reaches an end-of-image marker. JPEG decoders
/// fill a truncated file's missing rows with grey instead of failing; this walks the
/// marker segments (skipping APPn payloads such as an EXIF thumbnail, whose own EOI
/// must not count) and the scan data (stuffed 0xFF00 bytes and restart markers are
/// data) to the EOI. Bytes after the EOI (camera trailers) are allowed.
pub fn jpeg_is_complete(b: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i + 1 < b.len() {
        if b[i] != 0xFF {
            return false;
        }
        let m = b[i + 1];
        match m {
            0xFF => i += 1, // fill byte
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                if i + 3 >= b.len() {
                    return false;
                }
                let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
                i += 2 + len;
                if m == 0xDA {
                    // Scan data up to the next marker that is not stuffing or a restart.
                    loop {
                        match b.get(i..).and_then(|r| r.iter().position(|&x| x == 0xFF)) {
                            None => return false,
                            Some(p) => {
                                i += p;
                                match b.get(i + 1) {
                                    None => return false,
                                    Some(0x00) | Some(0xD0..=0xD7) | Some(0xFF) => i += 1,
                                    Some(_) => break,
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    false
}

/// The largest image any entry point decodes (SPEC §11: a side of at most 8,192 px and
/// at most 40 megapixels), checked from the header before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    pub max_side: u32,
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_side: 8192,
            max_pixels: 40_000_000,
        }
    }
}

impl ImageLimits {
    /// Refuse `w` x `h` past a limit, naming the image and the limit.
    pub fn check(&self, w: u32, h: u32, name: &Path) -> Result<(), CoreError> {
        let too = |m: String| CoreError::ImageTooLarge {
            path: name.to_path_buf(),
            message: m,
        };
        if w.max(h) > self.max_side {
            return Err(too(format!(
                "{w}x{h}: a side of {} px is over the limit of {} px",
                w.max(h),
                self.max_side
            )));
        }
        if w as u64 * h as u64 > self.max_pixels {
            return Err(too(format!(
                "{w}x{h} is {} pixels, over the limit of {}",
                w as u64 * h as u64,
                self.max_pixels
            )));
        }
        Ok(())
    }

    /// What the decoder may allocate: the largest allowed image as 16-bit RGBA (the
    /// widest sample format decoded), plus 16 MiB for the decoder's own tables.
    fn decoder_limits(&self) -> image::Limits {
        let mut l = image::Limits::default();
        l.max_image_width = Some(self.max_side);
        l.max_image_height = Some(self.max_side);
        l.max_alloc = Some(self.max_pixels * 8 + (16 << 20));
        l
    }
}

/// Decode an image file to RGB8 (EXIF orientation applied, alpha dropped), within
/// the default [`ImageLimits`].
pub fn load_rgb8(path: &Path) -> Result<Rgb8, CoreError> {
    let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
    decode_rgb8(&bytes, path)
}

/// Decode image bytes within the default [`ImageLimits`]; `name` is used in errors.
pub fn decode_rgb8(bytes: &[u8], name: &Path) -> Result<Rgb8, CoreError> {
    decode_rgb8_limited(bytes, name, &ImageLimits::default())
}

/// An image's width and height from its header, checked against `limits` (nothing
/// is decoded).
pub fn image_size(
    bytes: &[u8],
    name: &Path,
    limits: &ImageLimits,
) -> Result<(u32, u32), CoreError> {
    let err = |m: String| CoreError::Image {
        path: name.to_path_buf(),
        message: m,
    };
    let (w, h) = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?
        .into_dimensions()
        .map_err(|e| err(format!("cannot read the image's size: {e}")))?;
    limits.check(w, h, name)?;
    Ok((w, h))
}

/// Decode image bytes; `name` is used in errors. The size is read from the header
/// and checked against `limits` before decoding, and the decoder may allocate no
/// more than the largest allowed image needs.
pub fn decode_rgb8_limited(
    bytes: &[u8],
    name: &Path,
    limits: &ImageLimits,
) -> Result<Rgb8, CoreError> {
    let err = |m: String| CoreError::Image {
        path: name.to_path_buf(),
        message: m,
    };
    if bytes.is_empty() {
        return Err(err("the file is empty".into()));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    match reader.format() {
        Some(image::ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
            return Err(err(
                "the JPEG is truncated (its data ends before the end-of-image marker)".into(),
            ));
        }
        Some(
            image::ImageFormat::Jpeg
            | image::ImageFormat::Png
            | image::ImageFormat::Bmp
            | image::ImageFormat::WebP,
        ) => {}
        Some(f) => {
            return Err(err(format!(
                "{f:?} is not supported (use JPEG, PNG, BMP or WebP)"
            )));
        }
        None => return Err(err("unknown format (not JPEG, PNG, BMP or WebP)".into())),
    }
    let mut decoder = reader.into_decoder().map_err(|e| err(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    limits.check(w, h, name)?;
    decoder
        .set_limits(limits.decoder_limits())
        .map_err(|e| err(e.to_string()))?;
    let orientation = decoder.orientation().map_err(|e| err(e.to_string()))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| err(e.to_string()))?;
    img.apply_orientation(orientation);
    if img.width() == 0 || img.height() == 0 {
        return Err(err("the image has no pixels".into()));
    }
    // to_rgb8 drops alpha without compositing (like PIL's convert("RGB")) and scales
    // 16-bit samples to 8 bits (PIL would clip them; scaling keeps the picture).
    let rgb = img.to_rgb8();
    Ok(Rgb8 {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
    })
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `bicubic_filter` (a = -0.5).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's `bilinear_filter`.
fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for `filter`.
/// Returns (kernel size, per-output (first input index, tap count), fixed-point taps).
fn coeffs(
    in_size: usize,
    out_size: usize,
    filter: ResizeFilter,
) -> (usize, Vec<(usize, usize)>, Vec<i32>) {
    let scale = in_size as f64 / out_size as f64;
    // Upscaling keeps the filter's own support; downscaling widens it (antialiasing).
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates toward zero; negatives are clamped to 0 right after.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax =
            (((center + support + 0.5) as i64).min(in_size as i64) as usize).saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for x in 0..xmax {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let f = w * (1u32 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if w < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    (ksize, bounds, kk)
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow-exact resize of an RGB8 image (`Image.resize((w, h), filter)`, Pillow 13).
///
/// Pillow resizes in two separable passes with an 8-bit image in between, so the
/// order matters. Since Pillow 13 (python-pillow/Pillow#9549) the vertical pass runs
/// first when the height shrinks by more than twice as many pixels as the width;
/// otherwise the horizontal pass runs first, over only the rows the vertical pass reads.
/// The rule is the same for every filter. (Checked against Pillow 13.0.0 on random
/// sizes, bicubic and bilinear; see the parity tests.) Earlier Pillow always ran the
/// horizontal pass first, which can differ by 1 in a few values.
pub fn resize(src: &Rgb8, out_w: usize, out_h: usize, filter: ResizeFilter) -> Rgb8 {
    let (w, h) = (src.width, src.height);
    let need_h = w != out_w;
    let need_v = h != out_h;
    match (need_h, need_v) {
        (false, false) => src.clone(),
        (true, false) => horizontal_pass(src, out_w, 0, h, filter),
        (false, true) => vertical_pass(src, out_h, filter),
        (true, true) if out_h < h && (h - out_h) as i64 > 2 * (w as i64 - out_w as i64) => {
            horizontal_pass(&vertical_pass(src, out_h, filter), out_w, 0, out_h, filter)
        }
        (true, true) => {
            // Only the source rows [first, last) feed the vertical pass.
            let (_, bv, _) = coeffs(h, out_h, filter);
            let first = bv[0].0;
            let last = bv[out_h - 1].0 + bv[out_h - 1].1;
            let mid = horizontal_pass(src, out_w, first, last - first, filter);
            vertical_pass_rows(&mid, out_h, first, h, filter)
        }
    }
}

/// Horizontal pass over source rows `[first, first + rows)`.
fn horizontal_pass(
    src: &Rgb8,
    out_w: usize,
    first: usize,
    rows: usize,
    filter: ResizeFilter,
) -> Rgb8 {
    let w = src.width;
    let (kh, bh, kkh) = coeffs(w, out_w, filter);
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; rows * out_w * 3];
    for (y, orow) in out.chunks_exact_mut(out_w * 3).enumerate() {
        let irow = &src.data[(y + first) * w * 3..(y + first + 1) * w * 3];
        for (xx, &(xmin, n)) in bh.iter().enumerate() {
            let k = &kkh[xx * kh..xx * kh + n];
            let (mut s0, mut s1, mut s2) = (half, half, half);
            for (px, &kx) in irow[xmin * 3..(xmin + n) * 3].chunks_exact(3).zip(k) {
                s0 += px[0] as i32 * kx;
                s1 += px[1] as i32 * kx;
                s2 += px[2] as i32 * kx;
            }
            orow[xx * 3] = clip8(s0);
            orow[xx * 3 + 1] = clip8(s1);
            orow[xx * 3 + 2] = clip8(s2);
        }
    }
    Rgb8 {
        width: out_w,
        height: rows,
        data: out,
    }
}

fn vertical_pass(src: &Rgb8, out_h: usize, filter: ResizeFilter) -> Rgb8 {
    vertical_pass_rows(src, out_h, 0, src.height, filter)
}

/// Vertical pass from `in_h` source rows to `out_h`, where `src` holds the source
/// rows starting at `first` (the horizontal pass may have skipped unused rows).
fn vertical_pass_rows(
    src: &Rgb8,
    out_h: usize,
    first: usize,
    in_h: usize,
    filter: ResizeFilter,
) -> Rgb8 {
    let (kv, bv, kkv) = coeffs(in_h, out_h, filter);
    let half = 1i32 << (PRECISION_BITS - 1);
    let stride = src.width * 3;
    let mut out = vec![0u8; out_h * stride];
    let mut acc = vec![0i32; stride];
    for (yy, &(ymin, n)) in bv.iter().enumerate() {
        acc.fill(half);
        for (y, &ky) in kkv[yy * kv..yy * kv + n].iter().enumerate() {
            let r = ymin + y - first;
            for (a, &p) in acc.iter_mut().zip(&src.data[r * stride..(r + 1) * stride]) {
                *a += p as i32 * ky;
            }
        }
        for (o, &a) in out[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    Rgb8 {
        width: src.width,
        height: out_h,
        data: out,
    }
}

/// The preprocessing of one bundle or config.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    spec: PreprocessSpec,
    /// `spec.resize`, parsed once.
    filter: ResizeFilter,
    /// `lut[c][v] = (v / 255 - mean[c]) / std[c]`, computed in f32 as torchvision does.
    lut: [[f32; 256]; 3],
}

impl Preprocessor {
    pub fn new(spec: PreprocessSpec) -> Result<Self, CoreError> {
        spec.validate()?;
        let filter = spec.filter()?;
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, x) in table.iter_mut().enumerate() {
                *x = (v as f32 / 255.0 - spec.mean[c]) / spec.std[c];
            }
        }
        Ok(Preprocessor { spec, filter, lut })
    }

    pub fn for_model(cfg: &ModelConfig) -> Self {
        Self::new(PreprocessSpec::for_model(cfg)).expect("CLIP constants are valid")
    }

    pub fn spec(&self) -> &PreprocessSpec {
        &self.spec
    }

    /// The resize filter the spec names.
    pub fn filter(&self) -> ResizeFilter {
        self.filter
    }

    /// Resize to the target size (RGB8) with the spec's filter, the step before
    /// normalisation.
    pub fn resize(&self, img: &Rgb8) -> Rgb8 {
        resize(img, self.spec.width, self.spec.height, self.filter)
    }

    /// Normalise an already-resized RGB8 image into a `[3, H, W]` view.
    pub fn normalize_into(&self, img: &Rgb8, mut out: ArrayViewMut3<f32>) {
        assert_eq!((img.width, img.height), (self.spec.width, self.spec.height));
        assert_eq!(out.shape(), &[3, self.spec.height, self.spec.width]);
        let plane = img.width * img.height;
        let dst = out.as_slice_mut().expect("standard layout");
        for (i, px) in img.data.chunks_exact(3).enumerate() {
            dst[i] = self.lut[0][px[0] as usize];
            dst[plane + i] = self.lut[1][px[1] as usize];
            dst[2 * plane + i] = self.lut[2][px[2] as usize];
        }
    }

    /// A decoded image to `[3, H, W]`.
    pub fn process(&self, img: &Rgb8) -> Array3<f32> {
        let mut out = Array3::zeros((3, self.spec.height, self.spec.width));
        self.normalize_into(&self.resize(img), out.view_mut());
        out
    }

    /// An image file to `[3, H, W]`.
    pub fn load(&self, path: &Path) -> Result<Array3<f32>, CoreError> {
        Ok(self.process(&load_rgb8(path)?))
    }

    /// Image files to `[N, 3, H, W]`, decoded in parallel; the first failure is returned.
    pub fn load_batch<P: AsRef<Path> + Sync>(&self, paths: &[P]) -> Result<Array4<f32>, CoreError> {
        use rayon::prelude::*;
        let mut out = Array4::zeros((paths.len(), 3, self.spec.height, self.spec.width));
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(paths.par_iter())
            .try_for_each(|(slot, p)| -> Result<(), CoreError> {
                let img = load_rgb8(p.as_ref())?;
                self.normalize_into(&self.resize(&img), slot);
                Ok(())
            })?;
        Ok(out)
    }
}

#[cfg(test)]
mod truncation_tests {
    use super::*;

    /// A truncated image of any supported format is an error, never a grey-filled picture.
    #[test]
    fn truncated_images_of_every_format_are_refused() {
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(40, 90, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 2) as u8, ((x + y) * 3) as u8])
        }));
        for f in [
            image::ImageFormat::Jpeg,
            image::ImageFormat::Png,
            image::ImageFormat::Bmp,
            image::ImageFormat::WebP,
        ] {
            let mut buf = Cursor::new(Vec::new());
            img.write_to(&mut buf, f).unwrap();
            let whole = buf.into_inner();
            decode_rgb8(&whole, Path::new("whole")).unwrap();
            // Cuts inside the pixel data (and, for JPEG, just before the end marker; a
            // PNG missing only its IEND chunk has every pixel and decodes).
            let mut cuts = vec![whole.len() / 3, whole.len() * 2 / 3];
            if f == image::ImageFormat::Jpeg {
                cuts.push(whole.len() - 2);
            }
            for cut in cuts {
                let e = decode_rgb8(&whole[..cut], Path::new("cut.img"));
                assert!(
                    e.is_err(),
                    "{f:?} cut to {cut} of {} bytes decoded",
                    whole.len()
                );
            }
        }
        // A JPEG with bytes after its end-of-image marker (a camera trailer) is fine.
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, image::ImageFormat::Jpeg).unwrap();
        let mut trailer = buf.into_inner();
        trailer.extend_from_slice(b"TRAILER DATA \xFF\xD8 more");
        decode_rgb8(&trailer, Path::new("t.jpg")).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> Rgb8 {
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                data.extend_from_slice(&[
                    (x * 255 / (w - 1)) as u8,
                    (y * 255 / (h - 1)) as u8,
                    128,
                ]);
            }
        }
        Rgb8 {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn bicubic_kernel_values() {
        // Keys' cubic with a = -0.5: k(0)=1, k(1)=0, k(0.5)=0.5625, k(1.5)=-0.0625.
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert!((bicubic(0.5) - 0.5625).abs() < 1e-12);
        assert!((bicubic(1.5) + 0.0625).abs() < 1e-12);
        assert_eq!(bicubic(2.0), 0.0);
    }

    #[test]
    fn downscale_coefficients_sum_to_one() {
        let (ksize, bounds, kk) = coeffs(500, 128, ResizeFilter::Bicubic);
        assert_eq!(ksize, (2.0f64 * 500.0 / 128.0).ceil() as usize * 2 + 1);
        for (i, &(_, n)) in bounds.iter().enumerate() {
            let s: i64 = kk[i * ksize..i * ksize + n].iter().map(|&v| v as i64).sum();
            assert!(
                (s - (1 << PRECISION_BITS)).abs() <= n as i64,
                "row {i}: {s}"
            );
        }
    }

    #[test]
    fn bilinear_kernel_values() {
        let f = ResizeFilter::Bilinear;
        assert_eq!(f.support(), 1.0);
        assert_eq!(ResizeFilter::Bicubic.support(), 2.0);
        assert_eq!(f.eval(0.0), 1.0);
        assert_eq!(f.eval(0.25), 0.75);
        assert_eq!(f.eval(-0.75), 0.25);
        assert_eq!(f.eval(1.0), 0.0);
        assert_eq!(f.eval(1.5), 0.0);
    }

    /// Every output's fixed-point taps sum to 1 << 22 (within rounding), for both
    /// filters, shrinking and growing; and the kernel size is Pillow's
    /// `ceil(support * max(scale, 1)) * 2 + 1`.
    #[test]
    fn coefficients_sum_to_one_for_both_filters() {
        for filter in ResizeFilter::ALL {
            for (n_in, n_out) in [(500, 128), (150, 31), (90, 384), (7, 3), (3, 7), (128, 128)] {
                let (ksize, bounds, kk) = coeffs(n_in, n_out, filter);
                let filterscale = (n_in as f64 / n_out as f64).max(1.0);
                assert_eq!(
                    ksize,
                    (filter.support() * filterscale).ceil() as usize * 2 + 1,
                    "{filter} {n_in}->{n_out}"
                );
                assert_eq!(bounds.len(), n_out);
                for (i, &(xmin, n)) in bounds.iter().enumerate() {
                    assert!(n >= 1 && n <= ksize && xmin + n <= n_in);
                    let s: i64 = kk[i * ksize..i * ksize + n].iter().map(|&v| v as i64).sum();
                    assert!(
                        (s - (1 << PRECISION_BITS)).abs() <= n as i64,
                        "{filter} {n_in}->{n_out} output {i}: {s}"
                    );
                }
            }
        }
    }

    /// Bilinear's support is 1, widened by the scale when shrinking: 500 -> 128 reads
    /// ceil(3.906) * 2 + 1 = 9 taps (bicubic's support would give 17, no widening 3).
    /// The window is checked here because the tent is 0 past |x| = 1: bicubic's
    /// support would only add zero taps and leave the pixels alone, so neither
    /// `bilinear_small_cases_by_hand`'s pixels nor the Pillow parity test would see it
    /// (they do see a missing widening).
    #[test]
    fn bilinear_support_is_one_widened_by_the_scale() {
        let (ksize, bounds, _) = coeffs(500, 128, ResizeFilter::Bilinear);
        assert_eq!(ksize, 9);
        // Output 64: center 64.5 * 500 / 128 = 251.953, support 3.906:
        // xmin = (int)(251.953 - 3.906 + 0.5) = 248, xmax = (int)(256.359) = 256.
        assert_eq!(bounds[64], (248, 8));
        // Upscaling keeps support 1: each output reads at most 2 inputs.
        let (ksize, bounds, _) = coeffs(2, 4, ResizeFilter::Bilinear);
        assert_eq!(ksize, 3);
        assert_eq!(bounds, vec![(0, 1), (0, 2), (0, 2), (1, 1)]);
    }

    fn row(px: &[u8]) -> Rgb8 {
        Rgb8 {
            width: px.len(),
            height: 1,
            data: px.iter().flat_map(|&v| [v, 255 - v, v / 2]).collect(),
        }
    }

    fn reds(img: &Rgb8) -> Vec<u8> {
        img.data.chunks_exact(3).map(|p| p[0]).collect()
    }

    /// Pillow's formulas by hand (precompute_coeffs, bilinear_filter):
    ///
    /// 4 -> 2: scale = filterscale = 2, support = 2, ss = 1/2.
    ///   out 0: center 1, xmin = (int)(-0.5) = 0, xmax = (int)(3.5) = 3;
    ///          w(x) = tent((x - 1 + 0.5) / 2) = 0.75, 0.75, 0.25 -> 3/7, 3/7, 1/7.
    ///   out 1: center 3, xmin = (int)(1.5) = 1, xmax = min((int)(5.5), 4) = 4;
    ///          w = 0.25, 0.75, 0.75 -> 1/7, 3/7, 3/7.
    ///   [0, 70, 140, 210] -> [(70*3 + 140) / 7, (70 + 140*3 + 210*3) / 7] = [50, 160].
    ///   (Support 1 unwidened would give [35, 175]; bicubic's support other values.)
    /// 2 -> 4: scale = 1/2, filterscale = 1, support = 1; centers 0.25, 0.75, 1.25, 1.75
    ///   read [x0], [0.75 x0 + 0.25 x1], [0.25 x0 + 0.75 x1], [x1]:
    ///   [0, 100] -> [0, 25, 75, 100] (the fixed-point 25.5 floors to 25).
    #[test]
    fn bilinear_small_cases_by_hand() {
        let f = ResizeFilter::Bilinear;
        let (ksize, bounds, kk) = coeffs(4, 2, f);
        assert_eq!(ksize, 5);
        assert_eq!(bounds, vec![(0, 3), (1, 3)]);
        // round(3/7 * 2^22) = 1797559, round(1/7 * 2^22) = 599186.
        assert_eq!(&kk[0..3], &[1797559, 1797559, 599186]);
        assert_eq!(&kk[5..8], &[599186, 1797559, 1797559]);

        let down = resize(&row(&[0, 70, 140, 210]), 2, 1, f);
        assert_eq!(reds(&down), vec![50, 160]);
        assert_eq!(down.data[1], 255 - 50, "green is 255 - red here");

        let up = resize(&row(&[0, 100]), 4, 1, f);
        assert_eq!(reds(&up), vec![0, 25, 75, 100]);

        // The same 4 -> 2 both ways at once: a 4x4 image whose rows are the row above.
        let sq = Rgb8 {
            width: 4,
            height: 4,
            data: row(&[0, 70, 140, 210]).data.repeat(4),
        };
        assert_eq!(reds(&resize(&sq, 2, 2, f)), vec![50, 160, 50, 160]);
        // Transposed: the vertical pass has the same coefficients.
        let col = Rgb8 {
            width: 1,
            height: 4,
            data: row(&[0, 70, 140, 210]).data,
        };
        assert_eq!(reds(&resize(&col, 1, 2, f)), vec![50, 160]);
        // Bicubic differs on the same input (the filter is really dispatched).
        assert_ne!(
            reds(&resize(
                &row(&[0, 70, 140, 210]),
                2,
                1,
                ResizeFilter::Bicubic
            )),
            vec![50, 160]
        );
    }

    #[test]
    fn filter_names_parse_and_unknown_names_are_refused() {
        for f in ResizeFilter::ALL {
            assert_eq!(f.name().parse::<ResizeFilter>().unwrap(), f);
            let spec = PreprocessSpec {
                resize: f.name().into(),
                ..PreprocessSpec::for_model(&ModelConfig::tiny())
            };
            spec.validate().unwrap();
            assert_eq!(Preprocessor::new(spec).unwrap().filter(), f);
        }
        for bad in ["lanczos", "Bilinear", ""] {
            let spec = PreprocessSpec {
                resize: bad.into(),
                ..PreprocessSpec::for_model(&ModelConfig::tiny())
            };
            let e = Preprocessor::new(spec).unwrap_err().to_string();
            assert!(
                e.contains("preprocess.resize")
                    && e.contains(&format!("{bad:?}"))
                    && e.contains("\"bicubic\"")
                    && e.contains("\"bilinear\""),
                "{e}"
            );
        }
    }

    #[test]
    fn preprocessor_dispatches_on_the_filter() {
        let img = ramp(37, 91);
        let spec = |f: ResizeFilter| PreprocessSpec {
            resize: f.name().into(),
            ..PreprocessSpec::for_model(&ModelConfig::tiny())
        };
        for f in ResizeFilter::ALL {
            let p = Preprocessor::new(spec(f)).unwrap();
            assert_eq!(p.resize(&img), resize(&img, 16, 48, f));
        }
        assert_ne!(
            resize(&img, 16, 48, ResizeFilter::Bilinear),
            resize(&img, 16, 48, ResizeFilter::Bicubic)
        );
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = Rgb8 {
            width: 37,
            height: 91,
            data: [10u8, 200, 77].repeat(37 * 91),
        };
        for filter in ResizeFilter::ALL {
            for (w, h) in [(128, 384), (16, 20), (37, 20), (64, 91), (5, 300), (200, 3)] {
                let r = resize(&img, w, h, filter);
                assert_eq!((r.width, r.height), (w, h));
                assert!(
                    r.data.chunks_exact(3).all(|p| p == [10, 200, 77]),
                    "{filter} {w}x{h}"
                );
            }
        }
    }

    #[test]
    fn same_size_is_identity_and_ramp_is_monotone() {
        let img = ramp(50, 40);
        for filter in ResizeFilter::ALL {
            assert_eq!(resize(&img, 50, 40, filter), img);
            let r = resize(&img, 20, 40, filter);
            let row: Vec<u8> = r.data.chunks_exact(3).take(20).map(|p| p[0]).collect();
            assert!(row.windows(2).all(|w| w[0] <= w[1]), "{filter}: {row:?}");
        }
    }

    #[test]
    #[allow(clippy::excessive_precision)]
    fn normalisation_matches_formula() {
        let p = Preprocessor::for_model(&ModelConfig::tiny());
        let img = Rgb8 {
            width: 64,
            height: 192,
            data: [255u8, 0, 128].repeat(64 * 192),
        };
        let t = p.process(&img);
        assert_eq!(t.shape(), &[3, 48, 16]);
        assert!((t[[0, 5, 5]] - (1.0 - 0.48145466) / 0.26862954).abs() < 1e-6);
        assert!((t[[1, 5, 5]] - (0.0 - 0.4578275) / 0.26130258).abs() < 1e-6);
        assert!((t[[2, 5, 5]] - (128.0 / 255.0 - 0.40821073) / 0.27577711).abs() < 1e-6);
    }

    #[test]
    fn bad_files_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("empty.jpg");
        std::fs::write(&empty, b"").unwrap();
        let e = load_rgb8(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.jpg") && e.contains("empty"), "{e}");

        let junk = d.path().join("junk.png");
        std::fs::write(&junk, b"this is not an image at all").unwrap();
        assert!(
            load_rgb8(&junk)
                .unwrap_err()
                .to_string()
                .contains("junk.png")
        );

        // A truncated PNG.
        let mut png = Vec::new();
        image::RgbImage::from_pixel(30, 30, image::Rgb([1, 2, 3]))
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let cut = d.path().join("cut.png");
        std::fs::write(&cut, &png[..png.len() / 2]).unwrap();
        assert!(load_rgb8(&cut).unwrap_err().to_string().contains("cut.png"));

        // GIF is decodable by nobody here: unsupported, named.
        let gif = d.path().join("a.gif");
        std::fs::write(&gif, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
        let e = load_rgb8(&gif).unwrap_err().to_string();
        assert!(e.contains("a.gif") && e.contains("not supported"), "{e}");

        let missing = d.path().join("nope.jpg");
        assert!(
            load_rgb8(&missing)
                .unwrap_err()
                .to_string()
                .contains("nope.jpg")
        );
    }

    #[test]
    fn grey_alpha_and_16_bit_decode_to_rgb() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("la16.png");
        let img = image::ImageBuffer::<image::LumaA<u16>, Vec<u16>>::from_pixel(
            4,
            3,
            image::LumaA([65535, 0]),
        );
        DynamicImage::ImageLumaA16(img).save(&p).unwrap();
        let rgb = load_rgb8(&p).unwrap();
        assert_eq!((rgb.width, rgb.height), (4, 3));
        assert!(
            rgb.data.iter().all(|&v| v == 255),
            "alpha dropped, not composited"
        );
    }
}
