//! TensorRT's calibration cache for implicit INT8 (TensorRT <= 10; SPEC §9):
//!
//! ```text
//! TRT-<getInferLibVersion()>-EntropyCalibration2
//! <tensor name>: <8 hex digits of the float32 scale's bits>
//! ```
//!
//! The scale is amax / 127. ONNX Runtime's TensorRT provider reads this format with
//! `trt_int8_use_native_calibration_table` (it ignores the header line and sets each
//! named tensor's dynamic range to ±scale·127).

use crate::CalibrateError;

/// The calibrator name in the header.
pub const CALIBRATOR: &str = "EntropyCalibration2";

/// `getInferLibVersion()` for a TensorRT version: 10.3.0 is 100300, 8.6.1 is 8601.
pub fn tensorrt_version_number(v: (u32, u32, u32)) -> u32 {
    if v.0 >= 10 {
        v.0 * 10_000 + v.1 * 100 + v.2
    } else {
        v.0 * 1000 + v.1 * 100 + v.2
    }
}

/// The cache text for `scales` (tensor name, scale), in the given order.
pub fn write(trt: (u32, u32, u32), scales: &[(String, f32)]) -> Result<String, CalibrateError> {
    let mut s = format!("TRT-{}-{CALIBRATOR}\n", tensorrt_version_number(trt));
    for (name, scale) in scales {
        if name.contains(':') || name.contains('\n') || name.is_empty() {
            return Err(CalibrateError::Input(format!(
                "tensor {name:?}: a TensorRT calibration cache cannot hold a name with ':' or a line break"
            )));
        }
        if !(scale.is_finite() && *scale > 0.0) {
            return Err(CalibrateError::Input(format!(
                "tensor {name}: scale {scale} is not a positive finite number"
            )));
        }
        s.push_str(&format!("{name}: {:08x}\n", scale.to_bits()));
    }
    Ok(s)
}

/// A parsed cache: the header's version number and calibrator, and the scales.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationCache {
    pub version: u32,
    pub calibrator: String,
    pub scales: Vec<(String, f32)>,
}

/// Parse a cache written by TensorRT or by [`write`].
pub fn read(text: &str) -> Result<CalibrationCache, CalibrateError> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let bad = |line: usize, why: String| {
        CalibrateError::Input(format!("calibration cache line {line}: {why}"))
    };
    let rest = header.strip_prefix("TRT-").ok_or_else(|| {
        bad(
            1,
            format!("{header:?} is not a `TRT-<version>-<calibrator>` header"),
        )
    })?;
    let (version, calibrator) = rest
        .split_once('-')
        .ok_or_else(|| bad(1, format!("{header:?} has no calibrator name")))?;
    let version: u32 = version
        .parse()
        .map_err(|_| bad(1, format!("{version:?} is not a version number")))?;
    let mut scales = vec![];
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (name, hex) = line
            .rsplit_once(':')
            .ok_or_else(|| bad(i + 2, format!("{line:?} is not `name: hex`")))?;
        let bits = u32::from_str_radix(hex.trim(), 16)
            .map_err(|_| bad(i + 2, format!("{:?} is not 8 hex digits", hex.trim())))?;
        scales.push((name.to_string(), f32::from_bits(bits)));
    }
    Ok(CalibrationCache {
        version,
        calibrator: calibrator.to_string(),
        scales,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_matches_tensorrt_and_round_trips() {
        let scales = vec![
            ("pixel_values".to_string(), 1.0f32),
            ("visual.ln_pre/LayerNormalization_7".to_string(), 0.5),
            ("x".to_string(), 0.031_496_062),
        ];
        let text = write((10, 3, 0), &scales).unwrap();
        // IEEE-754 bits written out by hand: 1.0 = 0x3f800000, 0.5 = 0x3f000000.
        assert!(text.starts_with("TRT-100300-EntropyCalibration2\npixel_values: 3f800000\n"));
        assert!(text.contains("visual.ln_pre/LayerNormalization_7: 3f000000\n"));
        let back = read(&text).unwrap();
        assert_eq!(back.version, 100300);
        assert_eq!(back.calibrator, "EntropyCalibration2");
        assert_eq!(back.scales, scales);
        assert_eq!(tensorrt_version_number((8, 6, 1)), 8601);
        // A cache as TensorRT 8.6 writes it.
        let trt = read("TRT-8601-EntropyCalibration2\ninput: 3c010204\n").unwrap();
        assert_eq!(trt.scales[0].0, "input");
        assert!((trt.scales[0].1 - 0.007_874_016).abs() < 1e-9);
    }

    #[test]
    fn bad_names_scales_and_lines_are_refused() {
        assert!(write((10, 0, 0), &[("a:b".into(), 1.0)]).is_err());
        assert!(write((10, 0, 0), &[("a".into(), 0.0)]).is_err());
        assert!(write((10, 0, 0), &[("a".into(), f32::NAN)]).is_err());
        let e = read("TRT-1-X\nname 3f800000\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(read("hello\n").is_err());
    }
}
