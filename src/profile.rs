//! Tables of a profiled step: time per kernel and per op type, with calls, share, and GFLOP/s and GB/s where the
//! work is counted (FLOPs by the matmul and convolution launchers; bytes are the tensors each dispatch binds).

use std::collections::HashMap;

use crate::gpu::{Clock, DispatchTiming};
use crate::graph::executor::StepProfile;

/// One row of a profile table.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ProfileRow {
    pub name: String,
    pub calls: usize,
    pub ms: f64,
    /// Fraction of the step's summed dispatch time.
    pub share: f64,
    /// None where none of the row's dispatches count their FLOPs.
    pub gflops: Option<f64>,
    pub gbps: f64,
}

/// Group the dispatches by `key`, largest total time first.
pub fn rows(dispatches: &[DispatchTiming], key: impl Fn(&DispatchTiming) -> &str) -> Vec<ProfileRow> {
    let total: f64 = dispatches.iter().map(|d| d.seconds).sum();
    let mut groups: HashMap<&str, (usize, f64, u64, u64)> = HashMap::new();
    for d in dispatches {
        let g = groups.entry(key(d)).or_default();
        *g = (g.0 + 1, g.1 + d.seconds, g.2 + d.flops, g.3 + d.bytes);
    }
    let mut out: Vec<ProfileRow> = groups
        .into_iter()
        .map(|(name, (calls, secs, flops, bytes))| {
            let rate = |x: u64| if secs > 0.0 { x as f64 / secs / 1e9 } else { 0.0 };
            ProfileRow {
                name: name.to_string(),
                calls,
                ms: secs * 1e3,
                share: if total > 0.0 { secs / total } else { 0.0 },
                gflops: (flops > 0).then(|| rate(flops)),
                gbps: rate(bytes),
            }
        })
        .collect();
    out.sort_by(|a, b| b.ms.total_cmp(&a.ms).then_with(|| a.name.cmp(&b.name)));
    out
}

/// A profile reduced to its tables, for JSON output.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProfileSummary {
    pub clock: Clock,
    pub dispatches: usize,
    pub gpu_ms: f64,
    pub wall_ms: f64,
    pub by_op: Vec<ProfileRow>,
    pub by_kernel: Vec<ProfileRow>,
}

impl ProfileSummary {
    pub fn new(p: &StepProfile) -> ProfileSummary {
        ProfileSummary {
            clock: p.clock,
            dispatches: p.dispatches.len(),
            gpu_ms: p.dispatches.iter().map(|d| d.seconds).sum::<f64>() * 1e3,
            wall_ms: p.wall_seconds * 1e3,
            by_op: rows(&p.dispatches, |d| &d.op),
            by_kernel: rows(&p.dispatches, |d| d.kernel),
        }
    }
}

/// The profile as text: a header, then the tables per op type and per kernel (the `top` largest rows of each,
/// the rest summed in one line).
pub fn render(title: &str, p: &StepProfile, top: usize) -> String {
    let mut s = String::new();
    if p.clock == Clock::WallClock {
        s += &format!(
            "{title}: {:.1} ms for the whole step (wall clock). This adapter has no GPU timestamp queries, so \
             per-kernel times are not available.\n",
            p.wall_seconds * 1e3
        );
        return s;
    }
    let total: f64 = p.dispatches.iter().map(|d| d.seconds).sum();
    s += &format!(
        "{title}: {} dispatches, {:.1} ms of GPU time (GPU timestamps around each dispatch; {:.1} ms wall clock for \
         the profiled step)\n",
        p.dispatches.len(),
        total * 1e3,
        p.wall_seconds * 1e3
    );
    for (what, rows) in [("op type", rows(&p.dispatches, |d| &d.op)), ("kernel", rows(&p.dispatches, |d| d.kernel))] {
        let w = rows.iter().take(top).map(|r| r.name.len()).max().unwrap_or(8).max(what.len());
        s += &format!(
            "\n{what:<w$}  {:>6}  {:>10}  {:>6}  {:>9}  {:>8}\n",
            "calls", "total ms", "share", "GFLOP/s", "GB/s"
        );
        for r in rows.iter().take(top) {
            let gflops = r.gflops.map_or("-".to_string(), |g| format!("{g:.2}"));
            s += &format!(
                "{:<w$}  {:>6}  {:>10.2}  {:>5.1}%  {:>9}  {:>8.2}\n",
                r.name,
                r.calls,
                r.ms,
                r.share * 100.0,
                gflops,
                r.gbps
            );
        }
        if rows.len() > top {
            let rest = &rows[top..];
            let (calls, ms, share) =
                rest.iter().fold((0, 0.0, 0.0), |(c, m, f), r| (c + r.calls, m + r.ms, f + r.share));
            s +=
                &format!("{:<w$}  {calls:>6}  {ms:>10.2}  {:>5.1}%\n", format!("({} more)", rest.len()), share * 100.0);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(op: &str, kernel: &'static str, ms: f64, flops: u64, bytes: u64) -> DispatchTiming {
        DispatchTiming { layer: "l".into(), op: op.into(), label: "d".into(), kernel, seconds: ms / 1e3, flops, bytes }
    }

    #[test]
    fn rows_sum_calls_time_and_rates() {
        let d = [
            t("conv2d 3x3", "conv2d_forward", 2.0, 4_000_000, 1_000_000),
            t("conv2d 3x3", "conv2d_forward", 2.0, 4_000_000, 1_000_000),
            t("relu", "relu_forward", 1.0, 0, 2_000_000),
        ];
        let r = rows(&d, |x| &x.op);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].name.as_str(), r[0].calls), ("conv2d 3x3", 2));
        assert!((r[0].ms - 4.0).abs() < 1e-9 && (r[0].share - 0.8).abs() < 1e-9);
        // 8e6 FLOPs in 4 ms = 2 GFLOP/s; 2e6 bytes in 4 ms = 0.5 GB/s.
        assert!((r[0].gflops.unwrap() - 2.0).abs() < 1e-9 && (r[0].gbps - 0.5).abs() < 1e-9);
        assert_eq!(r[1].gflops, None);
        assert!((r[1].gbps - 2.0).abs() < 1e-9);
        let p = StepProfile { clock: Clock::GpuTimestamps, wall_seconds: 0.01, dispatches: d.to_vec() };
        let text = render("step", &p, 1);
        assert!(
            text.contains("3 dispatches") && text.contains("conv2d_forward") && text.contains("(1 more)"),
            "{text}"
        );
        let wall = StepProfile { clock: Clock::WallClock, wall_seconds: 0.01, dispatches: vec![] };
        assert!(render("step", &wall, 5).contains("no GPU timestamp queries"));
    }
}
