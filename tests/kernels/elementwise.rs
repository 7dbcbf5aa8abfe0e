//! Every kernel of the element-wise table (add, scale, relu, relu6, leaky relu, forward and backward) against its
//! reference. These are exact in f32 (one rounding at most), so the tolerance is atol 1e-6, rtol 1e-6.

use wgtune::ops::elementwise::{elementwise, Elementwise};
use wgtune::reference::{widen, SplitMix};

use crate::common::*;

/// Inputs in [-3, 9] so both relu6 edges are crossed, with the kinks 0 and 6 themselves planted.
fn inputs(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = SplitMix(seed);
    let mut x = rng.vec_f32(n, -3.0, 9.0);
    for (i, v) in x.iter_mut().enumerate() {
        match i % 17 {
            3 => *v = 0.0,
            5 => *v = 6.0,
            _ => {}
        }
    }
    (x, rng.vec_f32(n, -1.0, 1.0), rng.vec_f32(n, -1.0, 1.0))
}

fn check(op: Elementwise, n: usize, accumulate: bool, seed: u64) {
    let g = gpu();
    let (x_data, y_data, out0) = inputs(n, seed);
    let x = upload(&[n], &x_data, "x");
    let y = upload(&[n], &y_data, "y");
    let out = if accumulate { upload(&[n], &out0, "out") } else { poisoned(&[n], "out") };
    let alpha = -0.75;
    let d = elementwise(g, op, &x, op.is_binary().then_some(&y), &out, alpha, accumulate, "elementwise test")
        .expect("dispatch");
    g.run("elementwise test", &[&d]).expect("run");
    let y_ref = widen(&y_data);
    let mut want = op.apply_reference(&widen(&x_data), op.is_binary().then_some(y_ref.as_slice()), alpha as f64);
    if accumulate {
        want.iter_mut().zip(&out0).for_each(|(w, &o)| *w += o as f64);
    }
    assert_close(&read(&out), &want, 1e-6, 1e-6, &format!("{op:?} n={n} accumulate={accumulate}"));
}

/// Every kernel of the table: lengths 1, a prime, one workgroup exactly, one past it, many workgroups; then the
/// accumulate mode. A kernel added to the table is tested here without another line.
#[test]
fn every_elementwise_kernel_matches_its_reference() {
    assert!(Elementwise::ALL.len() >= 8);
    for (k, &op) in Elementwise::ALL.iter().enumerate() {
        for (i, n) in [1, 7, 256, 257, 65537].into_iter().enumerate() {
            check(op, n, false, 10 + 10 * k as u64 + i as u64);
        }
        check(op, 1031, true, 20 + 10 * k as u64);
    }
}

/// More than 65535 workgroups of 256: the grid spills into y and every element is still written once.
#[test]
fn two_dimensional_grid_covers_large_tensors() {
    check(Elementwise::Scale, 65535 * 256 + 3, false, 30);
}
