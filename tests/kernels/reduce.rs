//! sum_reduce against reference::sum_reduce. A sum of T terms in [-1, 1] rounds to within ~T * 6e-8 in the
//! worst case (tree order is better); atol 1e-6 * T + 1e-6 bounds that.

use wgtune::ops::reduce::sum_reduce;
use wgtune::reference::{self, widen, SplitMix};

use crate::common::*;

fn check(outer: usize, mid: usize, inner: usize, accumulate: bool, seed: u64) {
    let g = gpu();
    let mut rng = SplitMix(seed);
    let x_data = rng.vec_f32(outer * mid * inner, -1.0, 1.0);
    let out0 = rng.vec_f32(mid, -1.0, 1.0);
    let x = upload(&[outer, mid, inner], &x_data, "x");
    let out = if accumulate { upload(&[mid], &out0, "out") } else { poisoned(&[mid], "out") };
    let d = sum_reduce(g, &x, &out, (outer, mid, inner), accumulate, "sum_reduce test").expect("dispatch");
    g.run("sum_reduce test", &[&d]).expect("run");
    let mut want = reference::sum_reduce(&widen(&x_data), outer, mid, inner);
    if accumulate {
        want.iter_mut().zip(&out0).for_each(|(w, &o)| *w += o as f64);
    }
    let terms = (outer * inner) as f64;
    assert_close(&read(&out), &want, 1e-6 * terms + 1e-6, 1e-6, &format!("sum_reduce ({outer}, {mid}, {inner})"));
}

#[test]
fn sum_reduce_matches_reference() {
    let cases = [
        (1, 1, 1),      // a single element
        (7, 1, 1),      // everything into one
        (1, 5, 1),      // nothing to sum
        (3, 4, 5),      // both sides
        (1000, 3, 1),   // a linear layer's bias gradient: (rows, N) -> (N)
        (2, 17, 300),   // a conv bias gradient: (N, C, H*W) -> (C)
        (1, 1, 100003), // a long prime-length sum
    ];
    for (i, &(o, m, n)) in cases.iter().enumerate() {
        check(o, m, n, false, 40 + i as u64);
    }
}

#[test]
fn sum_reduce_accumulates() {
    check(4, 9, 13, true, 50);
}
