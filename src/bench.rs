//! Measurements behind `wgtune bench`: each returns records that print as a table or as JSON lines.

use serde::Serialize;

use crate::error::Result;
use crate::gpu::{Clock, Gpu};
use crate::ops::matmul::{matmul, MatmulKernel, MatmulOptions};
use crate::reference::SplitMix;

/// How many timed runs and warm-ups.
#[derive(Clone, Copy, Debug)]
pub struct BenchConfig {
    /// Timed runs per case (the median is reported).
    pub runs: usize,
    /// Untimed runs first (pipeline compilation, caches).
    pub warmup: usize,
    /// Stop adding runs to a case once this many seconds were spent timing it (at least 3 runs are kept).
    pub max_seconds_per_case: f64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig { runs: 5, warmup: 1, max_seconds_per_case: 30.0 }
    }
}

/// One matmul measurement.
#[derive(Clone, Debug, Serialize)]
pub struct MatmulRecord {
    pub bench: &'static str,
    pub kernel: &'static str,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub gflops: f64,
    pub median_ms: f64,
    pub runs: usize,
    pub clock: Clock,
    pub adapter: String,
}

/// Median of a non-empty slice.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// Time every matmul kernel on square problems of each size: C (n, n) = A (n, n) · B (n, n).
pub fn bench_matmul(
    gpu: &Gpu,
    sizes: &[usize],
    kernels: &[MatmulKernel],
    cfg: BenchConfig,
    mut on_record: impl FnMut(&MatmulRecord),
) -> Result<Vec<MatmulRecord>> {
    let adapter = gpu.summary().name;
    let mut rng = SplitMix(42);
    let mut out = Vec::new();
    for &n in sizes {
        let a = gpu.upload_f32(&[n, n], &rng.vec_f32(n * n, -1.0, 1.0), "bench A")?;
        let b = gpu.upload_f32(&[n, n], &rng.vec_f32(n * n, -1.0, 1.0), "bench B")?;
        let c = gpu.tensor(&[n, n], crate::gpu::DType::F32, "bench C")?;
        for &kernel in kernels {
            let label = format!("matmul {} {n}x{n}x{n}", kernel.name());
            let d = matmul(gpu, kernel, &a, &b, None, &c, MatmulOptions::default(), &label)?;
            for _ in 0..cfg.warmup {
                gpu.run(&label, &[&d])?;
            }
            let mut times = Vec::new();
            let mut clock = Clock::WallClock;
            let mut spent = 0.0;
            while times.len() < cfg.runs && (times.len() < 3 || spent < cfg.max_seconds_per_case) {
                let (c, t) = gpu.time_dispatches(&label, &[&d], 1)?;
                clock = c;
                spent += t[0];
                times.push(t[0]);
            }
            let secs = median(&times);
            let rec = MatmulRecord {
                bench: "matmul",
                kernel: kernel.name(),
                m: n,
                n,
                k: n,
                gflops: 2.0 * (n as f64).powi(3) / secs / 1e9,
                median_ms: secs * 1e3,
                runs: times.len(),
                clock,
                adapter: adapter.clone(),
            };
            on_record(&rec);
            out.push(rec);
        }
    }
    Ok(out)
}
