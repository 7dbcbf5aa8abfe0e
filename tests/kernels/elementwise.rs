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

/// f16 storage (issue 14): the f16 variant of every kernel (the same WGSL with `alias act = f16;`) against the f64
/// reference evaluated on the f16-rounded inputs, as the GPU holds them.
///
/// Tolerance: one rounding of the result to f16, half an ulp or 2^-11 relative (4.9e-4), plus the f32 arithmetic
/// inside (1e-6, as above). Absolute 2^-14 (6.1e-5), f16's smallest normal: below it f16 is subnormal and WGSL lets a
/// driver flush subnormals to zero. With accumulate the start value is an f16 too and the sum is rounded once.
#[test]
fn every_elementwise_kernel_in_f16() {
    let g = gpu();
    assert!(g.has_shader_f16(), "the test adapter must have shader-f16 (lavapipe and GPUs do)");
    let rel = 2f64.powi(-11) + 1e-6;
    let abs = 2f64.powi(-14);
    for (k, &op) in Elementwise::ALL.iter().enumerate() {
        for (n, accumulate) in [(1, false), (7, false), (257, false), (65537, false), (1031, true)] {
            let (x_data, y_data, out0) = inputs(n, 40 + 10 * k as u64 + n as u64);
            let (x16, y16, out16) = (to_f16(&x_data), to_f16(&y_data), to_f16(&out0));
            let x = upload_f16(&[n], &x_data, "x");
            let y = upload_f16(&[n], &y_data, "y");
            let out = upload_f16(&[n], &if accumulate { out0.clone() } else { vec![f32::NAN; n] }, "out");
            let alpha = -0.75;
            let d = elementwise(g, op, &x, op.is_binary().then_some(&y), &out, alpha, accumulate, "f16 test")
                .expect("dispatch");
            g.run("f16 test", &[&d]).expect("run");
            let y_ref = widen(&y16);
            let mut want = op.apply_reference(&widen(&x16), op.is_binary().then_some(y_ref.as_slice()), alpha as f64);
            if accumulate {
                want.iter_mut().zip(&out16).for_each(|(w, &o)| *w += o as f64);
            }
            assert_close(&read_f16(&out), &want, abs, rel, &format!("f16 {op:?} n={n} accumulate={accumulate}"));
        }
    }
}

/// f16's range, as documented in shaders/elementwise.wgsl: results beyond +-65504 become +-inf (as PyTorch's half
/// tensors do), the largest finite value passes through exactly, and infinities propagate.
#[test]
fn f16_range_limits() {
    let g = gpu();
    let run = |op: Elementwise, x: &[f32], alpha: f32| {
        let xt = upload_f16(&[x.len()], x, "x");
        let out = upload_f16(&[x.len()], &vec![f32::NAN; x.len()], "out");
        let d = elementwise(g, op, &xt, None, &out, alpha, false, "f16 range").expect("dispatch");
        g.run("f16 range", &[&d]).expect("run");
        read_f16(&out)
    };
    let got = run(Elementwise::Scale, &[40000.0, -40000.0, 1000.0, 65504.0], 2.0);
    assert_eq!(got, [f32::INFINITY, f32::NEG_INFINITY, 2000.0, f32::INFINITY]);
    let got = run(Elementwise::ReluForward, &[65504.0, -65504.0, 70000.0, -0.5], 0.0);
    assert_eq!(got, [65504.0, 0.0, f32::INFINITY, 0.0], "70000 uploads as inf; relu keeps it");
}

/// A launch mixing f32 and f16 tensors is refused with both names, not run on reinterpreted bytes.
#[test]
fn mixed_precision_launch_is_an_error() {
    let g = gpu();
    let x = upload_f16(&[4], &[1.0; 4], "x16");
    let out = upload(&[4], &[0.0; 4], "out32");
    let e = elementwise(g, Elementwise::ReluForward, &x, None, &out, 0.0, false, "mixed").err().expect("refused");
    let msg = e.to_string();
    assert!(msg.contains("x16") && msg.contains("out32") && msg.contains("one precision"), "{msg}");
}
