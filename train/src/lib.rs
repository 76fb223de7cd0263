//! `sen-train`: SEN training in tch — the only library crate that links libtorch.
//!
//! - [`model`]: the encoders, TIR decoder and ID head with OpenAI CLIP's names;
//! - [`losses`]: SDM, ID, triplet and TIR objectives;
//! - [`optim`]: Adam with parameter groups and saved state, the lr schedule, recipes;
//! - [`checkpoint`], [`import`]: checkpoint directories and CLIP weight import;
//! - [`trainer`]: the training loop and evaluation.

pub mod checkpoint;
pub mod import;
pub mod losses;
pub mod model;
pub mod optim;
pub mod pth;
pub mod trainer;

use anyhow::{Context, Result};

/// Treat subnormal floats as zero on this thread and on every thread it starts from
/// now on (x86-64 MXCSR flush-to-zero and denormals-are-zero; threads inherit the
/// setting when created, so call this before libtorch starts its thread pool).
/// Training makes subnormals in bulk: Adam's second moment of a token-table row the
/// data never uses decays by beta2 every step, below 1.2e-38 after a few thousand
/// steps, and every pass over those rows then runs at the subnormal penalty. On the
/// tiny preset's late epochs a step took 212 ms (fp32) and 147 ms (`--amp` bf16)
/// instead of 176 and 120 with this set; values this small change no update
/// measurably (Adam's eps is 1e-8). No effect on other architectures.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: stmxcsr/ldmxcsr read and write only the SSE control register and
        // the 4 bytes of `csr`; bits 15 (FTZ) and 6 (DAZ) change rounding of
        // subnormals only.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
            csr |= 0x8040;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags));
        }
    }
}

/// What libtorch offers on this machine.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TorchInfo {
    /// libtorch build version, e.g. `2.11.0+cu130`.
    pub libtorch: String,
    pub cuda_available: bool,
    pub cuda_devices: i64,
    pub cudnn_available: bool,
    pub threads: i32,
}

/// Query libtorch (loads it, so this also proves the link set-up works).
pub fn torch_info() -> Result<TorchInfo> {
    // Recorded by build.rs from the libtorch this binary was linked against.
    let libtorch = match env!("SEN_LIBTORCH_VERSION") {
        "" => "unknown (no build-version file next to libtorch)".to_string(),
        v => v.to_string(),
    };
    Ok(TorchInfo {
        libtorch,
        cuda_available: tch::Cuda::is_available(),
        cuda_devices: tch::Cuda::device_count(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        threads: tch::get_num_threads(),
    })
}

/// Parse a `--device` value: `cpu`, `cuda` or `cuda:N`. A CUDA device that is not
/// there is an error, never a silent fall-back to the CPU.
pub fn parse_device(s: &str) -> Result<tch::Device> {
    let dev = match s {
        "cpu" => return Ok(tch::Device::Cpu),
        "cuda" => 0,
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .with_context(|| format!("--device {s:?}: expected cpu, cuda or cuda:N"))?,
    };
    let n = tch::Cuda::device_count();
    if (dev as i64) >= n {
        anyhow::bail!(
            "--device {s}: this machine has {n} CUDA device(s) visible to libtorch{}",
            if n == 0 {
                " (no GPU, or sen-train was built without the `cuda` feature)"
            } else {
                ""
            }
        );
    }
    Ok(tch::Device::Cuda(dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn flush_denormals_zeroes_subnormals_here_and_in_new_threads() {
        // Its own thread, so the rest of the test binary keeps IEEE subnormals.
        std::thread::spawn(|| {
            let tiny = std::hint::black_box(f32::MIN_POSITIVE);
            assert!(std::hint::black_box(tiny / 4.0) > 0.0, "subnormal before");
            flush_denormals();
            assert_eq!(std::hint::black_box(tiny / 4.0), 0.0);
            std::thread::spawn(move || {
                assert_eq!(std::hint::black_box(tiny / 4.0), 0.0, "inherited");
            })
            .join()
            .unwrap();
        })
        .join()
        .unwrap();
    }
    #[test]
    fn libtorch_links_and_computes() {
        // [[1, 2], [3, 4]] @ [[5], [6]] = [[17], [39]]
        let a = tch::Tensor::from_slice(&[1f32, 2., 3., 4.]).view([2, 2]);
        let b = tch::Tensor::from_slice(&[5f32, 6.]).view([2, 1]);
        let c = Vec::<f32>::try_from(a.matmul(&b).flatten(0, -1)).unwrap();
        assert_eq!(c, vec![17.0, 39.0]);
        let info = torch_info().unwrap();
        assert!(info.threads >= 1);
    }

    #[test]
    fn device_parsing() {
        assert_eq!(parse_device("cpu").unwrap(), tch::Device::Cpu);
        assert!(
            parse_device("gpu")
                .unwrap_err()
                .to_string()
                .contains("--device")
        );
        if tch::Cuda::device_count() == 0 {
            let e = parse_device("cuda").unwrap_err().to_string();
            assert!(e.contains("0 CUDA device"), "{e}");
        }
    }
}
