//! fastai's training schedules: one-cycle learning rate and momentum (fastai/callback/schedule.py), discriminative
//! learning rates over parameter groups (Learner.lr_range), and fine_tune's two phases (../shared/FASTAI.md).

use std::f64::consts::PI;

/// Cosine interpolation from `start` to `end` as `pos` goes 0 -> 1 (fastai's `sched_cos`).
pub fn sched_cos(start: f64, end: f64, pos: f64) -> f64 {
    start + (1.0 + (PI * (1.0 - pos)).cos()) * (end - start) / 2.0
}

/// Two cosine pieces: `start` -> `middle` over the first `pct` of training, then `middle` -> `end`
/// (fastai's `combined_cos`).
pub fn combined_cos(pct: f64, start: f64, middle: f64, end: f64, pos: f64) -> f64 {
    if pos < pct {
        sched_cos(start, middle, pos / pct)
    } else {
        sched_cos(middle, end, (pos - pct) / (1.0 - pct))
    }
}

/// Learning rates of the parameter groups, as fastai's `slice`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSpec {
    /// `slice(stop)`: the last group gets `stop`, the others `stop / 10`.
    Stop(f64),
    /// `slice(start, stop)`: geometric steps from the first group to the last.
    Range(f64, f64),
}

impl LrSpec {
    /// Per-group learning rates for `groups` groups.
    pub fn per_group(self, groups: usize) -> Vec<f64> {
        match self {
            LrSpec::Stop(stop) => (0..groups).map(|i| if i + 1 == groups { stop } else { stop / 10.0 }).collect(),
            LrSpec::Range(a, b) if groups > 1 => {
                (0..groups).map(|i| a * (b / a).powf(i as f64 / (groups - 1) as f64)).collect()
            }
            LrSpec::Range(_, b) => vec![b],
        }
    }
}

/// fit_one_cycle's schedule over one fit.
#[derive(Clone, Debug, PartialEq)]
pub struct OneCycle {
    /// Peak learning rate of each group.
    pub lr_max: Vec<f64>,
    pub div: f64,
    pub div_final: f64,
    pub pct_start: f64,
    /// (start, middle, end) momentum (Adam's beta1).
    pub moms: (f64, f64, f64),
}

impl OneCycle {
    /// fastai's defaults: div 25, div_final 1e5, pct_start 0.25, moms (0.95, 0.85, 0.95).
    pub fn new(lr_max: Vec<f64>) -> Self {
        OneCycle { lr_max, div: 25.0, div_final: 1e5, pct_start: 0.25, moms: (0.95, 0.85, 0.95) }
    }

    /// Learning rate of `group` at position `pos` (fraction of this fit's iterations done, 0..1).
    pub fn lr(&self, group: usize, pos: f64) -> f64 {
        let m = self.lr_max[group];
        combined_cos(self.pct_start, m / self.div, m, m / self.div_final, pos)
    }

    /// Momentum at position `pos`.
    pub fn mom(&self, pos: f64) -> f64 {
        let (a, b, c) = self.moms;
        combined_cos(self.pct_start, a, b, c, pos)
    }
}

/// One phase of fine_tune: train with groups below `frozen_to` frozen, for `epochs` epochs, on `schedule`.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    pub name: &'static str,
    pub frozen_to: usize,
    pub epochs: usize,
    pub schedule: OneCycle,
}

/// fastai's `fine_tune(epochs, base_lr, freeze_epochs, lr_mult, pct_start, div)` for a model with `groups`
/// parameter groups (the last one the head): phase 1 trains the head (batch norm stays trainable) with
/// fit_one_cycle(freeze_epochs, slice(base_lr), pct_start=0.99); phase 2 halves base_lr, unfreezes, and runs
/// fit_one_cycle(epochs, slice(base_lr / lr_mult, base_lr), pct_start, div).
pub fn fine_tune(
    groups: usize,
    epochs: usize,
    base_lr: f64,
    freeze_epochs: usize,
    lr_mult: f64,
    pct_start: f64,
    div: f64,
) -> Vec<Phase> {
    let mut phases = Vec::new();
    if freeze_epochs > 0 {
        let mut s = OneCycle::new(LrSpec::Stop(base_lr).per_group(groups));
        s.pct_start = 0.99;
        phases.push(Phase { name: "frozen", frozen_to: groups - 1, epochs: freeze_epochs, schedule: s });
    }
    let base_lr = base_lr / 2.0;
    let mut s = OneCycle::new(LrSpec::Range(base_lr / lr_mult, base_lr).per_group(groups));
    s.pct_start = pct_start;
    s.div = div;
    phases.push(Phase { name: "unfrozen", frozen_to: 0, epochs, schedule: s });
    phases
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal up to rounding: 1e-12 relative, or 1e-15 absolute (cosine ends cancel to tiny values).
    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= (1e-12 * b.abs()).max(1e-15)
    }

    #[test]
    fn cosine_pieces_hit_their_ends_and_middle() {
        assert!(close(sched_cos(1.0, 3.0, 0.0), 1.0) && close(sched_cos(1.0, 3.0, 1.0), 3.0));
        assert!(close(sched_cos(1.0, 3.0, 0.5), 2.0));
        let s = OneCycle::new(vec![1e-3]);
        assert!(close(s.lr(0, 0.0), 1e-3 / 25.0));
        assert!(close(s.lr(0, 0.25), 1e-3));
        assert!(close(s.lr(0, 1.0), 1e-3 / 1e5));
        // Halfway through the warm-up: the cosine midpoint of start and peak.
        assert!(close(s.lr(0, 0.125), (1e-3 / 25.0 + 1e-3) / 2.0));
        assert!(close(s.mom(0.0), 0.95) && close(s.mom(0.25), 0.85) && close(s.mom(1.0), 0.95));
        assert!(close(s.mom(0.625), 0.9));
    }

    /// FASTAI.md: with the defaults, phase 1 peaks [2e-4, 2e-4, 2e-3], phase 2 [1e-5, 1e-4, 1e-3].
    #[test]
    fn fine_tune_learning_rates_equal_fastai_for_three_groups() {
        let p = fine_tune(3, 4, 2e-3, 1, 100.0, 0.3, 5.0);
        assert_eq!(p.len(), 2);
        let want1 = [2e-4, 2e-4, 2e-3];
        let want2 = [1e-5, 1e-4, 1e-3];
        for g in 0..3 {
            assert!(close(p[0].schedule.lr_max[g], want1[g]), "{:?}", p[0].schedule.lr_max);
            assert!(close(p[1].schedule.lr_max[g], want2[g]), "{:?}", p[1].schedule.lr_max);
        }
        assert_eq!((p[0].frozen_to, p[0].epochs, p[0].schedule.pct_start, p[0].schedule.div), (2, 1, 0.99, 25.0));
        assert_eq!((p[1].frozen_to, p[1].epochs, p[1].schedule.pct_start, p[1].schedule.div), (0, 4, 0.3, 5.0));
    }

    #[test]
    fn slices_give_fastai_group_rates() {
        assert_eq!(LrSpec::Stop(1.0).per_group(1), vec![1.0]);
        let r = LrSpec::Range(1e-6, 1e-2).per_group(5);
        assert!(close(r[0], 1e-6) && close(r[2], 1e-4) && close(r[4], 1e-2), "{r:?}");
    }
}
