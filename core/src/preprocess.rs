//! Image preprocessing (SPEC §3) — the only copy in the workspace. Training
//! evaluation, export checks, calibration and the runtime all call this code.
//!
//! decode (JPEG/PNG/BMP/WebP; EXIF orientation applied) -> RGB8 (alpha dropped,
//! 16-bit scaled) -> bicubic resize to H x W with Pillow's exact algorithm
//! (`Image.resize((W, H), BICUBIC)`: separable, support scaled on downsampling,
//! 22-bit fixed-point coefficients, horizontal pass first, 8-bit intermediate)
//! -> `/255` -> `(x - mean) / std` -> NCHW f32.

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
    /// Resize filter; `bicubic` (Pillow's) is the only one.
    pub resize: String,
}

impl PreprocessSpec {
    pub fn for_model(cfg: &ModelConfig) -> Self {
        PreprocessSpec {
            height: cfg.vision.image_height,
            width: cfg.vision.image_width,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            resize: "bicubic".into(),
        }
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
        if self.resize != "bicubic" {
            return Err(CoreError::config(
                "preprocess.resize",
                format!(
                    "{:?} is not supported; sen resizes with Pillow's \"bicubic\"",
                    self.resize
                ),
            ));
        }
        Ok(())
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

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bicubic filter.
/// Returns (kernel size, per-output (first input index, tap count), fixed-point taps).
fn coeffs(in_size: usize, out_size: usize) -> (usize, Vec<(usize, usize)>, Vec<i32>) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
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
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
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

/// Pillow-exact bicubic resize of an RGB8 image (`Image.resize((w, h), Image.BICUBIC)`).
///
/// Pillow resizes in two separable passes with an 8-bit image in between, so the
/// order matters. Since Pillow 13 (python-pillow/Pillow#9549) the vertical pass runs
/// first when the height shrinks by more than twice as many pixels as the width;
/// otherwise the horizontal pass runs first, over only the rows the vertical pass reads.
/// (Rule checked against Pillow 13.0.0 on random sizes; see the parity tests.)
pub fn resize_bicubic(src: &Rgb8, out_w: usize, out_h: usize) -> Rgb8 {
    let (w, h) = (src.width, src.height);
    let need_h = w != out_w;
    let need_v = h != out_h;
    match (need_h, need_v) {
        (false, false) => src.clone(),
        (true, false) => horizontal_pass(src, out_w, 0, h),
        (false, true) => vertical_pass(src, out_h),
        (true, true) if out_h < h && (h - out_h) as i64 > 2 * (w as i64 - out_w as i64) => {
            horizontal_pass(&vertical_pass(src, out_h), out_w, 0, out_h)
        }
        (true, true) => {
            // Only the source rows [first, last) feed the vertical pass.
            let (_, bv, _) = coeffs(h, out_h);
            let first = bv[0].0;
            let last = bv[out_h - 1].0 + bv[out_h - 1].1;
            let mid = horizontal_pass(src, out_w, first, last - first);
            vertical_pass_rows(&mid, out_h, first, h)
        }
    }
}

/// Horizontal pass over source rows `[first, first + rows)`.
fn horizontal_pass(src: &Rgb8, out_w: usize, first: usize, rows: usize) -> Rgb8 {
    let w = src.width;
    let (kh, bh, kkh) = coeffs(w, out_w);
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

fn vertical_pass(src: &Rgb8, out_h: usize) -> Rgb8 {
    vertical_pass_rows(src, out_h, 0, src.height)
}

/// Vertical pass from `in_h` source rows to `out_h`, where `src` holds the source
/// rows starting at `first` (the horizontal pass may have skipped unused rows).
fn vertical_pass_rows(src: &Rgb8, out_h: usize, first: usize, in_h: usize) -> Rgb8 {
    let (kv, bv, kkv) = coeffs(in_h, out_h);
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
    /// `lut[c][v] = (v / 255 - mean[c]) / std[c]`, computed in f32 as torchvision does.
    lut: [[f32; 256]; 3],
}

impl Preprocessor {
    pub fn new(spec: PreprocessSpec) -> Result<Self, CoreError> {
        spec.validate()?;
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, x) in table.iter_mut().enumerate() {
                *x = (v as f32 / 255.0 - spec.mean[c]) / spec.std[c];
            }
        }
        Ok(Preprocessor { spec, lut })
    }

    pub fn for_model(cfg: &ModelConfig) -> Self {
        Self::new(PreprocessSpec::for_model(cfg)).expect("CLIP constants are valid")
    }

    pub fn spec(&self) -> &PreprocessSpec {
        &self.spec
    }

    /// Resize to the target size (RGB8), the step before normalisation.
    pub fn resize(&self, img: &Rgb8) -> Rgb8 {
        resize_bicubic(img, self.spec.width, self.spec.height)
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
        let (ksize, bounds, kk) = coeffs(500, 128);
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
    fn constant_image_stays_constant() {
        let img = Rgb8 {
            width: 37,
            height: 91,
            data: [10u8, 200, 77].repeat(37 * 91),
        };
        for (w, h) in [(128, 384), (16, 20), (37, 20), (64, 91)] {
            let r = resize_bicubic(&img, w, h);
            assert_eq!((r.width, r.height), (w, h));
            assert!(
                r.data.chunks_exact(3).all(|p| p == [10, 200, 77]),
                "{w}x{h}"
            );
        }
    }

    #[test]
    fn same_size_is_identity_and_ramp_is_monotone() {
        let img = ramp(50, 40);
        assert_eq!(resize_bicubic(&img, 50, 40), img);
        let r = resize_bicubic(&img, 20, 40);
        let row: Vec<u8> = r.data.chunks_exact(3).take(20).map(|p| p[0]).collect();
        assert!(row.windows(2).all(|w| w[0] <= w[1]), "{row:?}");
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
