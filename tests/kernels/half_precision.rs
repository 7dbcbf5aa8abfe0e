//! The f16 variants of the copy-like families (dropout, concat, permute, slice, expand; issue 14) against their
//! f32 kernels: each stores `act(v)` where the f32 kernel stores `v`, with the same f32 arithmetic before, so on
//! f16-rounded inputs the f16 result must be the f32 result rounded to f16: bit for bit where the driver rounds to
//! nearest (lavapipe does), within one f16 ulp anywhere (WGSL lets the f32-to-f16 conversion round either way).
//! (Element-wise and pooling kernels are checked against the f64 reference in their own files.)

use wgtune::data::augment::{augment, batch_params, pack_pixels, AugmentConfig, PARAMS_PER_IMAGE};
use wgtune::gpu::{Dispatch, Tensor};
use wgtune::nn::Normalization;
use wgtune::ops::concat::{concat_backward, concat_forward};
use wgtune::ops::dropout::{dropout_backward, dropout_forward, DropoutParams};
use wgtune::ops::layer_norm::{
    layer_norm_backward, layer_norm_forward, layer_scale_backward, layer_scale_forward, ChannelAxis,
};
use wgtune::ops::permute::permute;
use wgtune::ops::reduce::sum_reduce;
use wgtune::ops::slice::{expand_forward, slice_backward, slice_forward};
use wgtune::ops::softmax::{softmax_rows_backward, softmax_rows_forward};
use wgtune::reference::SplitMix;

use crate::common::*;

/// Run `launch` (inputs, output) once on f32 tensors and once on f16 tensors holding the same f16-rounded values
/// (the output starts from `start`, NaN when None); the f16 output must equal the f32 one rounded to f16.
fn twin(
    what: &str,
    inputs: &[(&[usize], Vec<f32>)],
    out_shape: &[usize],
    start: Option<Vec<f32>>,
    launch: impl Fn(&[Tensor], &Tensor) -> wgtune::Result<Vec<Dispatch>>,
) {
    let g = gpu();
    let n_out: usize = out_shape.iter().product();
    let start = to_f16(&start.unwrap_or_else(|| vec![f32::NAN; n_out]));
    let mut results = Vec::new();
    for half in [false, true] {
        let (up, get) = io(half);
        let ins: Vec<Tensor> = inputs.iter().map(|(shape, v)| up(shape, &to_f16(v), "in")).collect();
        let out = up(out_shape, &start, "out");
        let steps = launch(&ins, &out).unwrap_or_else(|e| panic!("{what} f16={half}: {e}"));
        g.run(what, &steps.iter().collect::<Vec<_>>()).expect("run");
        results.push(get(&out));
    }
    let want = to_f16(&results[0]);
    let got = &results[1];
    for (i, (&w, &h)) in want.iter().zip(got).enumerate() {
        // One f16 ulp at w: 2^(exponent - 10), and 2^-24 (the subnormal step) below f16's normal range.
        let ulp = (2f32.powi(w.abs().log2().floor() as i32 - 10)).max(2f32.powi(-24));
        assert!(w.to_bits() == h.to_bits() || (h - w).abs() <= ulp, "{what}: element {i}: f16 {h}, f32 rounded {w}");
    }
    assert!(!got.iter().any(|v| v.is_nan()), "{what}: an output element was not written");
}

#[test]
fn copy_families_in_f16_are_their_f32_kernels_rounded() {
    let mut rng = SplitMix(77);
    let mut data = |n: usize| rng.vec_f32(n, -3.0, 3.0);
    // Dropout (and drop path): forward, and backward accumulating; an odd length ends in half a word.
    let n = 1031;
    let (x, dx0) = (data(n), data(n));
    let fwd = DropoutParams::new(n, 0.3, 5, 2, false).expect("params");
    twin("dropout forward", &[(&[n], x.clone())], &[n], None, |t, out| {
        dropout_forward(gpu(), &t[0], out, fwd, "d").map(|d| vec![d])
    });
    let bwd = DropoutParams::new(n, 0.3, 5, 2, true).expect("params");
    twin("dropout backward", &[(&[n], x)], &[n], Some(dx0), |t, out| {
        dropout_backward(gpu(), &t[0], out, bwd, "d").map(|d| vec![d])
    });
    // Concat: a 3-channel slice into a 5-channel tensor at offset 2, and its backward accumulating.
    let (a, big, start) = (data(2 * 3 * 7), data(2 * 5 * 7), data(2 * 3 * 7));
    twin("concat forward", &[(&[2, 3, 7, 1], a)], &[2, 5, 7, 1], Some(data(2 * 5 * 7)), |t, out| {
        concat_forward(gpu(), &t[0], out, 2, "c").map(|d| vec![d])
    });
    twin("concat backward", &[(&[2, 5, 7, 1], big)], &[2, 3, 7, 1], Some(start), |t, out| {
        concat_backward(gpu(), &t[0], 2, out, true, "c").map(|d| vec![d])
    });
    // Permute (attention's head split), plain and accumulating.
    let x = data(2 * 3 * 5 * 7);
    for accumulate in [false, true] {
        twin("permute", &[(&[2, 3, 5, 7], x.clone())], &[2, 5, 3, 7], Some(data(210)), |t, out| {
            permute(gpu(), &t[0], &[0, 2, 1, 3], out, accumulate, "p").map(|d| vec![d])
        });
    }
    // Slice (q/k/v), its backward (zeros outside the range), and expand (the class token over the batch).
    let x = data(3 * 9 * 5);
    twin("slice forward", &[(&[3, 9, 5], x)], &[3, 4, 5], None, |t, out| {
        slice_forward(gpu(), &t[0], out, 3, "s").map(|d| vec![d])
    });
    let dy = data(3 * 4 * 5);
    twin("slice backward", &[(&[3, 4, 5], dy)], &[3, 9, 5], Some(data(135)), |t, out| {
        slice_backward(gpu(), &t[0], out, 3, true, "s").map(|d| vec![d])
    });
    let x = data(11);
    twin("expand", &[(&[1, 11], x)], &[4, 11], None, |t, out| expand_forward(gpu(), &t[0], out, "e").map(|d| vec![d]));
    // Expand of an f32 parameter (a class token, a position embedding) into f16 activations: each value rounded
    // once, to nearest (the half crate's rounding; within one f16 ulp where WGSL rounds the other way).
    let g = gpu();
    let x = data(13);
    let (param, out) = (upload(&[1, 13], &x, "token"), upload_f16(&[3, 13], &[f32::NAN; 39], "tokens"));
    g.run("expand f32", &[&expand_forward(g, &param, &out, "e").expect("f32 into f16")]).expect("run");
    let got = read_f16(&out);
    for (i, (&h, &v)) in got.iter().zip(x.iter().cycle()).enumerate() {
        let want = half::f16::from_f32(v).to_f32();
        let ulp = 2f32.powi(want.abs().log2().floor() as i32 - 10).max(2f32.powi(-24));
        assert!(h == want || (h - want).abs() <= ulp, "expand f32 into f16: element {i}: {h}, want {want}");
    }
}

/// Softmax of scaled rows and layer norm / layer scale (the transformer families): their f16 variants against their
/// f32 kernels, as above. Parameters (gamma, beta) and saved statistics are f32 in both runs.
#[test]
fn transformer_families_in_f16_are_their_f32_kernels_rounded() {
    let g = gpu();
    let mut rng = SplitMix(78);
    let mut data = |n: usize| rng.vec_f32(n, -3.0, 3.0);
    // Softmax over rows of 13 (attention's token count), scaled by 1/sqrt(8); backward from y, accumulating.
    let (rows, len) = (7, 13);
    let x = data(rows * len);
    twin("softmax forward", &[(&[rows, len], x)], &[rows, len], None, |t, out| {
        softmax_rows_forward(g, &t[0], out, 0.35, "sm").map(|d| vec![d])
    });
    let (y, dy) = (data(rows * len), data(rows * len));
    twin("softmax backward", &[(&[rows, len], y), (&[rows, len], dy)], &[rows, len], Some(data(91)), |t, out| {
        softmax_rows_backward(g, &t[0], &t[1], out, 0.35, true, "sm").map(|d| vec![d])
    });
    // Layer norm over the channels of (2, 5, 3x3) (ConvNeXt's LayerNorm2d), forward and backward (dx accumulating).
    let (shape, c) = ([2usize, 5, 3, 3], 5);
    let axis = ChannelAxis::second(&shape).expect("axis");
    let (gamma_v, beta_v) = (data(c), data(c));
    let params = || {
        let gamma = g.upload_f32(&[c], &gamma_v, "gamma").expect("gamma");
        let beta = g.upload_f32(&[c], &beta_v, "beta").expect("beta");
        let stats = (
            g.tensor(&[18], wgtune::gpu::DType::F32, "mean").unwrap(),
            g.tensor(&[18], wgtune::gpu::DType::F32, "rstd").unwrap(),
        );
        (gamma, beta, stats)
    };
    let x = data(90);
    twin("layer norm forward", &[(&shape, x.clone())], &shape, None, |t, out| {
        let (gamma, beta, (mean, rstd)) = params();
        layer_norm_forward(g, axis, &t[0], (&gamma, &beta), (&mean, &rstd), out, 1e-6, "ln").map(|d| vec![d])
    });
    twin("layer norm backward", &[(&shape, x.clone()), (&shape, data(90))], &shape, Some(data(90)), |t, out| {
        let (gamma, beta, (mean, rstd)) = params();
        let y = g.tensor(&shape, t[0].dtype(), "y").expect("y");
        let mut steps = vec![layer_norm_forward(g, axis, &t[0], (&gamma, &beta), (&mean, &rstd), &y, 1e-6, "ln")?];
        steps.extend(layer_norm_backward(g, axis, &t[1], &t[0], &gamma, (&mean, &rstd), None, Some(out), true, "ln")?);
        Ok(steps)
    });
    // The parameter gradients are f32 sums of the same (rounded) values at either precision: the same bits.
    let (x16, dy16) = (to_f16(&x), to_f16(&data(90)));
    let mut grads = Vec::new();
    for half in [false, true] {
        let (up, _) = io(half);
        let (xt, dyt, y) = (up(&shape, &x16, "x"), up(&shape, &dy16, "dy"), up(&shape, &[0.0; 90], "y"));
        let (gamma, beta, (mean, rstd)) = params();
        let (dgamma, dbeta) = (upload(&[c], &[f32::NAN; 5], "dgamma"), upload(&[c], &[f32::NAN; 5], "dbeta"));
        let mut steps =
            vec![layer_norm_forward(g, axis, &xt, (&gamma, &beta), (&mean, &rstd), &y, 1e-6, "ln").unwrap()];
        let params = Some((&dgamma, &dbeta));
        steps.extend(
            layer_norm_backward(g, axis, &dyt, &xt, &gamma, (&mean, &rstd), params, None, false, "ln").unwrap(),
        );
        g.run("ln params", &steps.iter().collect::<Vec<_>>()).expect("run");
        grads.push((read(&dgamma), read(&dbeta)));
    }
    assert_eq!(grads[0], grads[1], "layer norm dgamma/dbeta from f16 activations");
    twin("layer scale forward", &[(&shape, x.clone())], &shape, None, |t, out| {
        let (gamma, _, _) = params();
        layer_scale_forward(g, axis, &t[0], &gamma, out, "ls").map(|d| vec![d])
    });
    twin("layer scale backward", &[(&shape, x), (&shape, data(90))], &shape, None, |t, out| {
        let (gamma, _, _) = params();
        layer_scale_backward(g, axis, &t[1], &t[0], &gamma, None, Some(out), false, "ls")
    });
}

/// The augmentation's f16 variant writes the images (the model's first activation) as its f32 kernel's values
/// rounded; the pixels (u32) and the transforms (f32) are the same in both runs.
#[test]
fn augmented_images_in_f16_are_the_f32_images_rounded() {
    let g = gpu();
    let mut rng = SplitMix(79);
    let (n, in_size, out_size) = (3, 13, 9);
    let pixels: Vec<u8> = (0..n * in_size * in_size * 3).map(|_| rng.below(256) as u8).collect();
    let aug = AugmentConfig::default();
    let transforms: Vec<_> = (0..n).map(|_| aug.sample(&mut rng)).collect();
    let params = batch_params(&transforms);
    twin("augment", &[], &[n, 3, out_size, out_size], None, |_, out| {
        let packed = pack_pixels(&pixels);
        let px = g.upload_u32(&[packed.len()], &packed, "pixels")?;
        let tp = g.upload_f32(&[n, PARAMS_PER_IMAGE], &params, "transforms")?;
        augment(g, &px, &tp, out, in_size, &Normalization::imagenet(), true, "augment").map(|d| vec![d])
    });
}

/// sum_reduce (bias gradients) reads f16 gradients and sums in f32 into an f32 output: the same bits as the f32
/// kernel on the same (rounded) values. An f16 output is refused.
#[test]
fn sum_reduce_of_f16_gradients_is_the_f32_sum() {
    let g = gpu();
    let dy = to_f16(&SplitMix(80).vec_f32(4 * 7 * 300, -3.0, 3.0));
    // Short reductions (one invocation per output, 4 x 45 terms) and long ones (a workgroup each, 4 x 300).
    for inner in [45, 300] {
        let mut sums = Vec::new();
        for half in [false, true] {
            let x = io(half).0(&[4, 7, inner], &dy[..4 * 7 * inner], "dy");
            let out = upload(&[7], &[f32::NAN; 7], "db");
            let d = sum_reduce(g, &x, &out, (4, 7, inner), false, "db").expect("dispatch");
            g.run("sum_reduce f16", &[&d]).expect("run");
            sums.push(read(&out));
        }
        assert_eq!(sums[0], sums[1], "inner {inner}");
    }
    let x = upload_f16(&[4, 7], &dy[..28], "dy");
    let out16 = upload_f16(&[7], &[0.0; 7], "db16");
    let e = sum_reduce(g, &x, &out16, (4, 7, 1), false, "db").err().expect("refused").to_string();
    assert!(e.contains("db16") && e.contains("f32"), "{e}");
}

/// The loss scaler's kernels (the loss's backward applies the scale: tests/kernels/loss.rs): unscale_check divides
/// f32 gradients by it and raises the flag on inf or NaN only; update_scale halves on the flag (counting a skip),
/// grows after `interval` clean steps and clears the flag.
#[test]
fn loss_scaler_kernels() {
    use wgtune::ops::scaler::{unscale_check, update_scale, ScalerState};
    let g = gpu();
    let state = |s: ScalerState, flag: u32| {
        let mut w = s.words();
        w[3] = flag;
        upload_u32(&[4], &w, "scaler")
    };
    let words = |t: &wgtune::gpu::Tensor| -> Vec<u32> {
        bytemuck::pod_collect_to_vec(&g.read_bytes(&[t]).expect("read").remove(0))
    };
    let st = state(ScalerState::new(1024.0), 0);
    let mut grads = SplitMix(83).vec_f32(300, -100.0, 100.0);
    let gt = upload(&[300], &grads, "grads");
    g.run("scaler", &[&unscale_check(g, &gt, &st, "unscale").unwrap()]).expect("run");
    assert_eq!(read(&gt), grads.iter().map(|v| v / 1024.0).collect::<Vec<_>>(), "unscale_check");
    assert_eq!(words(&st)[3], 0, "finite gradients raise no flag");
    for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
        grads[123] = bad;
        let (gt, st) = (upload(&[300], &grads, "grads"), state(ScalerState::new(1024.0), 0));
        g.run("flag", &[&unscale_check(g, &gt, &st, "unscale").unwrap()]).expect("run");
        assert_eq!(words(&st)[3], 1, "{bad} raises the flag");
    }
    // update_scale: flag raised -> halve and count; 3 clean steps at interval 3 -> double.
    let st = state(ScalerState { scale: 1024.0, clean: 2, skipped: 4 }, 1);
    let d = update_scale(g, &st, 3, "update").unwrap();
    g.run("update", &[&d]).expect("run");
    assert_eq!(words(&st), ScalerState { scale: 512.0, clean: 0, skipped: 5 }.words().to_vec());
    let mut seen = Vec::new();
    for _ in 0..3 {
        g.run("update", &[&d]).expect("run");
        seen.push(ScalerState::from_words(&words(&st)));
    }
    let want = [(512.0, 1), (512.0, 2), (1024.0, 0)];
    assert_eq!(seen.iter().map(|s| (s.scale, s.clean)).collect::<Vec<_>>(), want);
    assert!(update_scale(g, &st, 0, "zero").is_err(), "an interval of 0 is refused");
}
