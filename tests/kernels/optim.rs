//! sgd_step and adam_step against the reference over several steps, with the hyper-parameters rewritten into
//! the dispatch's uniform each step (as a schedule does) rather than rebuilding it. atol 1e-6, rtol 1e-5: a
//! handful of f32 roundings per step.

use wgtune::ops::optim::{optimizer_step, Hyper, Optimizer, StepCounts};
use wgtune::reference::{self, widen, SplitMix};

use crate::common::*;

const STEPS: u64 = 4;

fn schedule(step: u64, base: Hyper) -> Hyper {
    // Something that changes every step, like one-cycle: lr and momentum move.
    Hyper { lr: base.lr * (1.0 + 0.5 * step as f64), mom: base.mom - 0.02 * step as f64, ..base }
}

fn check(opt: Optimizer, n: usize, base: Hyper, seed: u64) {
    let g = gpu();
    let mut rng = SplitMix(seed);
    let p0 = rng.vec_f32(n, -1.0, 1.0);
    let grads: Vec<Vec<f32>> = (0..STEPS).map(|_| rng.vec_f32(n, -1.0, 1.0)).collect();
    let param = upload(&[n], &p0, "param");
    let grad = upload(&[n], &grads[0], "grad");
    let grad_avg = upload(&[n], &vec![0.0; n], "grad_avg");
    let sqr_avg = upload(&[n], &vec![0.0; n], "sqr_avg");
    let state: &[&_] = if opt == Optimizer::Adam { &[&grad_avg, &sqr_avg] } else { &[&grad_avg] };
    let scaler = upload_u32(&[4], &[1f32.to_bits(), 0, 0, 0], "scaler");
    let counts = upload_u32(&[2], &[0, 0], "counts");
    let counts = StepCounts { counts: &counts, bucket: 0 };
    let d = optimizer_step(g, opt, &param, &grad, state, &scaler, counts, &schedule(1, base), 1, "opt test")
        .expect("dispatch");

    let mut p = widen(&p0);
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    for step in 1..=STEPS {
        let h = schedule(step, base);
        g.write_f32(&grad, &grads[step as usize - 1]).expect("write grad");
        g.write_params(&d, bytemuck::bytes_of(&h.params(n as u32, step, 0)));
        g.run("opt test", &[&d]).expect("run");
        let gr = widen(&grads[step as usize - 1]);
        match opt {
            Optimizer::Sgd => reference::sgd_step(&mut p, &gr, &mut m, h.lr, h.mom, h.wd, h.decoupled_wd),
            Optimizer::Adam => reference::adam_step(
                &mut p,
                &gr,
                &mut m,
                &mut v,
                step as i32,
                h.lr,
                h.mom,
                h.sqr_mom,
                h.eps,
                h.wd,
                h.decoupled_wd,
            ),
        }
    }
    let what = format!("{opt:?} n={n} {base:?}");
    assert_close(&read(&param), &p, 1e-6, 1e-5, &format!("{what}: param"));
    assert_close(&read(&grad_avg), &m, 1e-6, 1e-5, &format!("{what}: grad_avg"));
    if opt == Optimizer::Adam {
        assert_close(&read(&sqr_avg), &v, 1e-6, 1e-5, &format!("{what}: sqr_avg"));
    }
}

#[test]
fn sgd_matches_reference() {
    let base = Hyper { lr: 0.1, mom: 0.9, wd: 0.01, ..Hyper::default() };
    for (i, n) in [1, 257, 1000].into_iter().enumerate() {
        check(Optimizer::Sgd, n, base, 90 + i as u64);
        check(Optimizer::Sgd, n, Hyper { decoupled_wd: false, ..base }, 95 + i as u64);
    }
    check(Optimizer::Sgd, 33, Hyper { mom: 0.0, ..base }, 99);
}

#[test]
fn adam_matches_reference() {
    let base = Hyper { lr: 0.01, ..Hyper::default() };
    for (i, n) in [1, 257, 1000].into_iter().enumerate() {
        check(Optimizer::Adam, n, base, 110 + i as u64);
        check(Optimizer::Adam, n, Hyper { decoupled_wd: false, ..base }, 115 + i as u64);
    }
}

/// Gradient accumulation over a cycle of `k` micro-batches against the reference: the sum after each middle step
/// and the gradient the optimizer reads after the last, with poisoned sums at the start (mode 0 overwrites them).
/// atol 1e-6, rtol 1e-6: one multiply and one add in f32 per element and step. (No backward: the kernel is not
/// part of the differentiated graph, so there is no finite-difference check to make.)
fn check_accumulation(n: usize, k: usize, seed: u64) {
    use wgtune::ops::accumulate::{accumulate_gradients, AccumulateMode};
    let g = gpu();
    let mut rng = SplitMix(seed);
    let scale = 1.0 / k as f32;
    let grad = upload(&[n], &vec![0.0; n], "grad");
    let sum = upload(&[n], &vec![f32::NAN; n], "sum");
    let d = accumulate_gradients(g, &grad, &sum, AccumulateMode::Start, scale, "acc test").expect("dispatch");
    let mut s = vec![f64::NAN; n];
    let mut last = vec![];
    for micro in 0..k {
        let gr = rng.vec_f32(n, -1.0, 1.0);
        g.write_f32(&grad, &gr).expect("write grad");
        let mode = AccumulateMode::of(micro, k);
        g.write_params(&d, bytemuck::bytes_of(&mode.params(n, scale)));
        g.run("acc test", &[&d]).expect("run");
        last = widen(&gr);
        reference::accumulate_gradients(&mut last, &mut s, mode as u32, scale as f64);
        if mode != AccumulateMode::Finish {
            assert_close(&read(&sum), &s, 1e-6, 1e-6, &format!("n={n} k={k} micro {micro}: sum"));
        }
    }
    assert_close(&read(&grad), &last, 1e-6, 1e-6, &format!("n={n} k={k}: the gradient the optimizer reads"));
}

#[test]
fn gradient_accumulation_matches_the_reference() {
    for (n, k, seed) in [(1, 2, 1), (257, 3, 2), (1031, 4, 3), (65_537, 5, 4)] {
        check_accumulation(n, k, seed);
    }
}

/// With the loss scaler's flag raised (an f16 step whose gradients overflowed), both optimizers leave the weights and
/// their state exactly as they were, even with a non-finite gradient.
#[test]
fn a_raised_overflow_flag_skips_the_update() {
    let g = gpu();
    for opt in [Optimizer::Sgd, Optimizer::Adam] {
        let p0 = SplitMix(5).vec_f32(300, -1.0, 1.0);
        let m0 = SplitMix(6).vec_f32(300, -1.0, 1.0);
        let mut grads = SplitMix(7).vec_f32(300, -1.0, 1.0);
        grads[17] = f32::INFINITY;
        let (param, grad) = (upload(&[300], &p0, "param"), upload(&[300], &grads, "grad"));
        let (grad_avg, sqr_avg) = (upload(&[300], &m0, "grad_avg"), upload(&[300], &m0, "sqr_avg"));
        let state: &[&_] = if opt == Optimizer::Adam { &[&grad_avg, &sqr_avg] } else { &[&grad_avg] };
        let scaler = upload_u32(&[4], &[1024f32.to_bits(), 5, 0, 1], "scaler");
        let counts = upload_u32(&[2], &[0, 0], "counts");
        let at = StepCounts { counts: &counts, bucket: 0 };
        let d =
            optimizer_step(g, opt, &param, &grad, state, &scaler, at, &Hyper::default(), 1, "skip").expect("dispatch");
        g.run("skip", &[&d]).expect("run");
        assert_eq!(read(&param), p0, "{opt:?} weights");
        assert_eq!(read(&grad_avg), m0, "{opt:?} state");
        // The flag down: the same dispatch updates.
        g.write_bytes(&scaler, bytemuck::cast_slice(&[1024f32.to_bits(), 5, 0, 0u32])).expect("write");
        g.write_f32(&grad, &vec![0.5; 300]).expect("write");
        g.run("update", &[&d]).expect("run");
        assert_ne!(read(&param), p0, "{opt:?} updates with the flag down");
    }
}

/// A skipped step does not count for Adam's debiasing (PyTorch's GradScaler skips `optimizer.step()`): bucket 2 of
/// a step-count buffer, steps 1 and 3 applied and step 2 skipped, so step 3 is Adam's second update and must equal
/// the reference's step 2 (debias 1 - beta^2, where the CPU's uniform says step 3), while the words of the other
/// buckets stay untouched and the bucket's applied count reads 2.
#[test]
fn adam_does_not_count_a_skipped_step() {
    let g = gpu();
    let n = 300;
    let p0 = SplitMix(8).vec_f32(n, -1.0, 1.0);
    let grads = [SplitMix(9).vec_f32(n, -1.0, 1.0), SplitMix(10).vec_f32(n, -1.0, 1.0)];
    let (param, grad) = (upload(&[n], &p0, "param"), upload(&[n], &grads[0], "grad"));
    let (grad_avg, sqr_avg) = (upload(&[n], &vec![0.0; n], "grad_avg"), upload(&[n], &vec![0.0; n], "sqr_avg"));
    let scaler = upload_u32(&[4], &[1024f32.to_bits(), 0, 0, 0], "scaler");
    let counts = upload_u32(&[8], &[7, 7, 7, 7, 0, 0, 7, 7], "counts");
    let h = Hyper { lr: 0.01, ..Hyper::default() };
    let at = StepCounts { counts: &counts, bucket: 2 };
    let d = optimizer_step(g, Optimizer::Adam, &param, &grad, &[&grad_avg, &sqr_avg], &scaler, at, &h, 1, "count")
        .expect("dispatch");
    let run = |step: u64, flag: u32, grads: &[f32]| {
        g.write_bytes(&scaler, bytemuck::cast_slice(&[1024f32.to_bits(), 0, 0, flag])).expect("write");
        g.write_f32(&grad, grads).expect("write");
        g.write_params(&d, bytemuck::bytes_of(&h.params(n as u32, step, 2)));
        g.run("count", &[&d]).expect("run");
    };
    run(1, 0, &grads[0]);
    run(2, 1, &vec![f32::NAN; n]);
    run(3, 0, &grads[1]);
    let mut p = widen(&p0);
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    for (t, gr) in [(1, &grads[0]), (2, &grads[1])] {
        let gr = widen(gr);
        reference::adam_step(&mut p, &gr, &mut m, &mut v, t, h.lr, h.mom, h.sqr_mom, h.eps, h.wd, h.decoupled_wd);
    }
    // pow on the GPU: a few ulp in the debiasing terms.
    assert_close(&read(&param), &p, 1e-6, 1e-5, "param after an applied, a skipped and an applied step");
    let words = g.read_bytes(&[&counts]).expect("read").remove(0);
    let words: Vec<u32> = bytemuck::pod_collect_to_vec(&words);
    // After step 3 the count lives in the word step 4 reads: 2 * bucket + (4 & 1).
    assert_eq!(words[4], 2, "{words:?}");
    assert_eq!([words[0], words[1], words[2], words[3], words[6], words[7]], [7; 6], "other buckets' words");
}
