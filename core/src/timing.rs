//! Latency sampling and percentiles, shared by `sen bench` (ONNX Runtime) and
//! `sen-train bench` (libtorch eager) so both report the same statistics.

use serde::Serialize;
use std::time::{Duration, Instant};

/// Percentiles of one set of samples (milliseconds).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub runs: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
}

/// The `q`-quantile (0..=1) of sorted samples by the nearest-rank method: the
/// smallest sample with at least `q` of all samples at or below it.
pub fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "no samples");
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

impl Latency {
    /// From per-call durations in seconds (at least one).
    pub fn from_seconds(samples: &[f64]) -> Latency {
        let mut ms: Vec<f64> = samples.iter().map(|s| s * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        Latency {
            runs: ms.len(),
            p50_ms: nearest_rank(&ms, 0.50),
            p90_ms: nearest_rank(&ms, 0.90),
            p99_ms: nearest_rank(&ms, 0.99),
            mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
            min_ms: ms[0],
        }
    }

    /// Items per second at `batch` items per call (from the mean).
    pub fn per_second(&self, batch: usize) -> f64 {
        batch as f64 * 1e3 / self.mean_ms
    }
}

/// Run `f` for warm-up (at least 2 calls and `warmup`), then for at least `measure`
/// and `min_runs` calls; returns each measured call's seconds.
pub fn sample<E>(
    mut f: impl FnMut() -> Result<(), E>,
    warmup: Duration,
    measure: Duration,
    min_runs: usize,
) -> Result<Vec<f64>, E> {
    let t = Instant::now();
    let mut n = 0;
    while n < 2 || t.elapsed() < warmup {
        f()?;
        n += 1;
    }
    let mut out = vec![];
    let t = Instant::now();
    while out.len() < min_runs.max(1) || t.elapsed() < measure {
        let s = Instant::now();
        f()?;
        out.push(s.elapsed().as_secs_f64());
        if out.len() >= 1_000_000 {
            break;
        }
    }
    Ok(out)
}

/// The CPU model name (`/proc/cpuinfo`), or the architecture when unknown.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Logical cores this process may use.
pub fn logical_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 0.5), 50.0);
        assert_eq!(nearest_rank(&v, 0.9), 90.0);
        assert_eq!(nearest_rank(&v, 0.99), 99.0);
        assert_eq!(nearest_rank(&v, 1.0), 100.0);
        assert_eq!(nearest_rank(&[3.0], 0.99), 3.0);
        // 10 samples: p99 is the largest, p50 the 5th.
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 0.99), 10.0);
        assert_eq!(nearest_rank(&v, 0.5), 5.0);
        let l = Latency::from_seconds(&[0.004, 0.001, 0.002, 0.003]);
        assert_eq!((l.runs, l.p50_ms, l.min_ms, l.p99_ms), (4, 2.0, 1.0, 4.0));
        assert!((l.mean_ms - 2.5).abs() < 1e-12);
        assert!((l.per_second(8) - 3200.0).abs() < 1e-9);
    }

    #[test]
    fn sampling_warms_up_then_runs_at_least_min_runs() {
        let mut calls = 0;
        let s = sample::<()>(
            || {
                calls += 1;
                Ok(())
            },
            Duration::ZERO,
            Duration::ZERO,
            7,
        )
        .unwrap();
        assert_eq!(s.len(), 7);
        assert_eq!(calls, 9); // 2 warm-up calls
        let e = sample(|| Err("boom"), Duration::ZERO, Duration::ZERO, 1).unwrap_err();
        assert_eq!(e, "boom");
    }

    #[test]
    fn cpu_model_is_named() {
        assert!(!cpu_model().is_empty());
        assert!(logical_cores() >= 1);
    }
}
