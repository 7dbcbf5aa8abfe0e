//! Layer norm and layer scale over the channel axis (dimension 1 of NCHW, or the last dimension) against the
//! reference, forward and backward, with accumulation. Statistics are f32 sums over at most 300 channels and the
//! parameter gradients sums over at most ~2,000 positions: atol 2e-5, rtol 1e-4.

use wgtune::ops::layer_norm::{
    layer_norm_backward, layer_norm_forward, layer_scale_backward, layer_scale_forward, ChannelAxis,
};
use wgtune::reference::{self, widen, SplitMix};

use crate::common::*;

const ATOL: f64 = 2e-5;
const RTOL: f64 = 1e-4;

/// (shape, channel axis is the last dimension): 1 channel, primes, C past a workgroup, positions past one
/// workgroup, and the transformer layout (N, T, D).
const SHAPES: &[(&[usize], bool)] = &[
    (&[1, 1, 1, 1], false),
    (&[3, 7, 5, 1], false),
    (&[2, 13, 11, 3], false),
    (&[1, 300, 2, 2], false),
    (&[2, 3, 16, 17], false),
    (&[5, 300], true),
    (&[2, 7, 13], true),
    (&[1, 1], true),
    // Contiguous channels (inner = 1) take the row kernels: 64 lanes per row, 4 rows per workgroup (9 rows: a last
    // workgroup with 3 idle rows), channels exactly 64, and 130 (two strides and a remainder).
    (&[9, 130, 1, 1], false),
    (&[6, 64], true),
];

fn axis_of(shape: &[usize], last: bool) -> ChannelAxis {
    if last { ChannelAxis::last(shape) } else { ChannelAxis::second(shape) }.expect("a valid shape")
}

#[test]
fn layer_norm_matches_the_reference() {
    let g = gpu();
    for (k, &(shape, last)) in SHAPES.iter().enumerate() {
        let axis = axis_of(shape, last);
        let (n, c, pos) = (axis.numel(), axis.channels, axis.positions());
        let mut rng = SplitMix(40 + k as u64);
        // Off zero (the two-pass variance must not cancel) with spread enough that a position of 3 channels is
        // not near-constant (its rstd would magnify f32 rounding in dx past any fixed tolerance).
        let x_data = rng.vec_f32(n, 0.5, 4.5);
        let dy_data = rng.vec_f32(n, -1.0, 1.0);
        let gamma_data = rng.vec_f32(c, 0.5, 1.5);
        let beta_data = rng.vec_f32(c, -0.5, 0.5);
        let dx0 = rng.vec_f32(n, -1.0, 1.0);
        let (x, dy) = (upload(shape, &x_data, "x"), upload(shape, &dy_data, "dy"));
        let (gamma, beta) = (upload(&[c], &gamma_data, "gamma"), upload(&[c], &beta_data, "beta"));
        let (mean, rstd) = (poisoned(&[pos], "mean"), poisoned(&[pos], "rstd"));
        let y = poisoned(shape, "y");
        let (dgamma, dbeta) = (poisoned(&[c], "dgamma"), poisoned(&[c], "dbeta"));
        let (dx, dx_acc) = (poisoned(shape, "dx"), upload(shape, &dx0, "dx accumulated"));
        let eps = 1e-6;
        let mut steps = vec![layer_norm_forward(g, axis, &x, (&gamma, &beta), (&mean, &rstd), &y, eps, "ln").unwrap()];
        let stats = (&mean, &rstd);
        steps.extend(
            layer_norm_backward(g, axis, &dy, &x, &gamma, stats, Some((&dgamma, &dbeta)), Some(&dx), false, "ln")
                .unwrap(),
        );
        steps.extend(layer_norm_backward(g, axis, &dy, &x, &gamma, stats, None, Some(&dx_acc), true, "ln").unwrap());
        g.run("layer norm", &steps.iter().collect::<Vec<_>>()).expect("run");

        let what = format!("{shape:?} last={last}");
        let (xd, dyd, gd, bd) = (widen(&x_data), widen(&dy_data), widen(&gamma_data), widen(&beta_data));
        let (want_y, want_mean, want_rstd) = reference::layer_norm_forward(&xd, axis.tuple(), &gd, &bd, eps as f64);
        assert_close(&read(&mean), &want_mean, ATOL, RTOL, &format!("mean {what}"));
        // rstd of a single channel is 1 / sqrt(eps) = 1000: relative tolerance carries it.
        assert_close(&read(&rstd), &want_rstd, ATOL, RTOL, &format!("rstd {what}"));
        assert_close(&read(&y), &want_y, ATOL, RTOL, &format!("y {what}"));
        let (want_dx, want_dgamma, want_dbeta) =
            reference::layer_norm_backward(&dyd, &xd, axis.tuple(), &gd, eps as f64);
        // dx carries rstd (up to ~1e2 on a position of 3 close values): absolute tolerance on its scale.
        let dx_atol = ATOL * want_dx.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        assert_close(&read(&dx), &want_dx, dx_atol, RTOL, &format!("dx {what}"));
        let acc: Vec<f64> = want_dx.iter().zip(&dx0).map(|(w, &o)| w + o as f64).collect();
        assert_close(&read(&dx_acc), &acc, dx_atol, RTOL, &format!("dx accumulated {what}"));
        assert_close(&read(&dgamma), &want_dgamma, ATOL, RTOL, &format!("dgamma {what}"));
        assert_close(&read(&dbeta), &want_dbeta, ATOL, RTOL, &format!("dbeta {what}"));
    }
}

#[test]
fn layer_scale_matches_the_reference() {
    let g = gpu();
    for (k, &(shape, last)) in SHAPES.iter().enumerate() {
        let axis = axis_of(shape, last);
        let (n, c) = (axis.numel(), axis.channels);
        let mut rng = SplitMix(60 + k as u64);
        let x_data = rng.vec_f32(n, -1.0, 1.0);
        let dy_data = rng.vec_f32(n, -1.0, 1.0);
        let gamma_data = rng.vec_f32(c, -1.0, 1.0);
        let dx0 = rng.vec_f32(n, -1.0, 1.0);
        let (x, dy, gamma) =
            (upload(shape, &x_data, "x"), upload(shape, &dy_data, "dy"), upload(&[c], &gamma_data, "gamma"));
        let (y, dgamma) = (poisoned(shape, "y"), poisoned(&[c], "dgamma"));
        let dx = upload(shape, &dx0, "dx");
        let mut steps = vec![layer_scale_forward(g, axis, &x, &gamma, &y, "scale").unwrap()];
        steps.extend(layer_scale_backward(g, axis, &dy, &x, &gamma, Some(&dgamma), Some(&dx), true, "scale").unwrap());
        g.run("layer scale", &steps.iter().collect::<Vec<_>>()).expect("run");
        let what = format!("{shape:?} last={last}");
        let (xd, dyd, gd) = (widen(&x_data), widen(&dy_data), widen(&gamma_data));
        assert_close(&read(&y), &reference::layer_scale_forward(&xd, axis.tuple(), &gd), 1e-7, 1e-6, &what);
        let (want_dx, want_dgamma) = reference::layer_scale_backward(&dyd, &xd, axis.tuple(), &gd);
        let acc: Vec<f64> = want_dx.iter().zip(&dx0).map(|(w, &o)| w + o as f64).collect();
        assert_close(&read(&dx), &acc, 1e-6, 1e-6, &format!("dx accumulated {what}"));
        assert_close(&read(&dgamma), &want_dgamma, ATOL, RTOL, &format!("dgamma {what}"));
    }
}

/// Mismatched per-channel and per-position tensors are refused with their names.
#[test]
fn layer_norm_refuses_wrong_sizes() {
    let g = gpu();
    let axis = ChannelAxis::second(&[2, 3, 4, 4]).unwrap();
    let x = upload(&[2, 3, 4, 4], &[0.0; 96], "x");
    let gamma = upload(&[4], &[1.0; 4], "gamma4");
    let beta = upload(&[3], &[0.0; 3], "beta");
    let (mean, rstd) = (poisoned(&[32], "mean"), poisoned(&[32], "rstd"));
    let y = poisoned(&[2, 3, 4, 4], "y");
    let e = layer_norm_forward(g, axis, &x, (&gamma, &beta), (&mean, &rstd), &y, 1e-6, "ln").err().unwrap().to_string();
    assert!(e.contains("gamma4") && e.contains("3 values"), "{e}");
    let short = poisoned(&[16], "mean16");
    let gamma = upload(&[3], &[1.0; 3], "gamma");
    let e =
        layer_norm_forward(g, axis, &x, (&gamma, &beta), (&short, &rstd), &y, 1e-6, "ln").err().unwrap().to_string();
    assert!(e.contains("mean16") && e.contains("32 values"), "{e}");
}
