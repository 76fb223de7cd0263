//! Which integer kernels ONNX Runtime's CPU provider runs an int8 bundle with, and
//! whether they saturate.
//!
//! On x86-64 ONNX Runtime executes a Q/DQ model's MatMuls with u8 x s8 kernels (its
//! QDQ transformer turns signed activations into unsigned ones). Without VNNI those
//! kernels multiply with `vpmaddubsw`, which adds each pair of u8 x s8 products into a
//! **saturating 16-bit** sum: 2 x 255 x 127 = 64,770 does not fit in 32,767, so large
//! activations times large weights are clipped, silently. VNNI (`vpdpbusd`, AVX512-VNNI
//! or AVX-VNNI) accumulates straight into 32 bits and never saturates; ARM's kernels
//! (`sdot`/`udot`, or widening multiplies) do not either, nor does TensorRT. ONNX
//! Runtime's own quantization tools avoid the problem with `reduce_range`: 7-bit
//! weights, whose pair sums (2 x 255 x 63 = 32,130) always fit.

/// Weight precision of an int8 bundle's Q/DQ encoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WeightBits {
    /// Symmetric [-127, 127].
    #[serde(rename = "8")]
    Eight,
    /// Symmetric [-63, 63] (`reduce_range`).
    #[serde(rename = "7")]
    Seven,
}

impl WeightBits {
    /// The largest quantised magnitude.
    pub fn qmax(self) -> i32 {
        match self {
            WeightBits::Eight => 127,
            WeightBits::Seven => 63,
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            WeightBits::Eight => 8,
            WeightBits::Seven => 7,
        }
    }
}

/// The int8 features of a CPU that decide the kernel ONNX Runtime takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuInt8 {
    pub x86_64: bool,
    /// AVX512-VNNI or AVX-VNNI.
    pub vnni: bool,
}

impl CpuInt8 {
    /// This machine's.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            CpuInt8 {
                x86_64: true,
                vnni: std::arch::is_x86_feature_detected!("avx512vnni")
                    || std::arch::is_x86_feature_detected!("avxvnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuInt8 {
                x86_64: false,
                vnni: false,
            }
        }
    }

    /// Whether ONNX Runtime's u8 x s8 kernels here sum pairs into saturating 16 bits.
    pub fn saturates(self) -> bool {
        self.x86_64 && !self.vnni
    }

    /// In words, for reports and warnings.
    pub fn describe(self) -> &'static str {
        match (self.x86_64, self.vnni) {
            (true, true) => "x86-64 with VNNI (32-bit int8 sums)",
            (true, false) => "x86-64 without VNNI (u8 x s8 pair sums saturate at 16 bits)",
            (false, _) => "not x86-64 (int8 sums never saturate)",
        }
    }

    /// The weight precision a bundle for this CPU should have: 7 bits where the
    /// sums saturate, else 8.
    pub fn weight_bits(self) -> WeightBits {
        if self.saturates() {
            WeightBits::Seven
        } else {
            WeightBits::Eight
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVX2: CpuInt8 = CpuInt8 {
        x86_64: true,
        vnni: false,
    };
    const VNNI: CpuInt8 = CpuInt8 {
        x86_64: true,
        vnni: true,
    };

    #[test]
    fn only_x86_without_vnni_needs_seven_bits() {
        let (avx2, vnni) = (AVX2, VNNI);
        let arm = CpuInt8 {
            x86_64: false,
            vnni: false,
        };
        assert_eq!(avx2.weight_bits(), WeightBits::Seven);
        assert_eq!(vnni.weight_bits(), WeightBits::Eight);
        assert_eq!(arm.weight_bits(), WeightBits::Eight);
        // The reason 7 bits suffice: the worst pair sum fits in i16; 8 bits do not.
        let pair = |q: i32| 2 * 255 * q;
        assert!(pair(WeightBits::Seven.qmax()) <= i16::MAX as i32);
        assert!(pair(WeightBits::Eight.qmax()) > i16::MAX as i32);
    }

    /// The run-time warning: only an int8 bundle with 8-bit weights, on the CPU
    /// provider, on a CPU whose sums saturate.
    #[test]
    fn eight_bit_weights_on_a_saturating_cpu_are_warned_about() {
        use crate::encoders::int8_saturation_warning;
        use crate::providers::{ProviderKind, ProviderOptions};
        use sen_core::manifest::{CalibrationInfo, Manifest, Precision};
        let d = tempfile::tempdir().unwrap();
        let mut m = Manifest::example(d.path());
        let (avx2, vnni) = (AVX2, VNNI);
        let cpu = ProviderOptions::new(ProviderKind::Cpu);
        assert_eq!(int8_saturation_warning(&m, &cpu, avx2), None, "fp32");
        m.precision = Precision::Int8;
        m.calibration = Some(CalibrationInfo {
            method: "entropy".into(),
            samples: 8,
            data_sha256: "0".repeat(64),
            weight_bits: 8,
            weight_bits_why: None,
        });
        let w = int8_saturation_warning(&m, &cpu, avx2).expect("8-bit weights on AVX2");
        assert!(
            w.contains("--weight-bits 7") && w.contains("without VNNI"),
            "{w}"
        );
        assert_eq!(int8_saturation_warning(&m, &cpu, vnni), None);
        let trt = ProviderOptions::new(ProviderKind::TensorRt);
        assert_eq!(int8_saturation_warning(&m, &trt, avx2), None);
        m.calibration.as_mut().unwrap().weight_bits = 7;
        assert_eq!(int8_saturation_warning(&m, &cpu, avx2), None);
    }
}
