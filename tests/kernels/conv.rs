//! conv2d forward / backward_data / backward_weight / backward_bias (dense, grouped, depthwise, pointwise) against
//! the reference. Tolerance: each output is a sum of K products of values in [-1, 1]; atol = 2e-6 * K + 1e-6 and
//! rtol 1e-5, as for matmul.
//!
//! In f16 (issue 14; `check_f16`): x and dy are f16, w is the f32 master weight (read as it is by forward and
//! backward_data), y and dx are stored in f16, dw and db in f32. The reference runs in f64 on the same inputs (x and
//! dy f16-rounded, w not); the f32 sums keep the tolerance above and a stored f16 adds its rounding: one f16 ulp, at
//! most 2^-10 relative (WGSL may round either way), or 2^-24 in the subnormal range.

use wgtune::ops::conv::{
    conv2d_backward_bias, conv2d_backward_data, conv2d_backward_weight, conv2d_backward_weight_scratch,
    conv2d_backward_weight_scratch_split, conv2d_backward_weight_split, conv2d_forward, conv2d_forward_gemm,
    depthwise_backward_data, depthwise_forward, Conv2dConfig, ConvKernel, ConvShape, DepthwiseKernel, Padding,
};
use wgtune::reference::{self, widen, SplitMix};

use crate::common::*;

fn tol(terms: usize) -> f64 {
    2e-6 * terms as f64 + 1e-6
}

fn check(x_shape: [usize; 4], w_shape: [usize; 4], cfg: Conv2dConfig, accumulate: bool, seed: u64) {
    check_at(x_shape, w_shape, cfg, accumulate, seed, false);
}

fn check_f16(x_shape: [usize; 4], w_shape: [usize; 4], cfg: Conv2dConfig, accumulate: bool, seed: u64) {
    check_at(x_shape, w_shape, cfg, accumulate, seed, true);
}

fn check_at(x_shape: [usize; 4], w_shape: [usize; 4], cfg: Conv2dConfig, accumulate: bool, seed: u64, half: bool) {
    let g = gpu();
    let s = ConvShape::new(&x_shape, &w_shape, cfg).expect("valid geometry");
    let mut rng = SplitMix(seed);
    let n = |shape: [usize; 4]| shape.iter().product::<usize>();
    // Activations at the precision under test; the weight, the bias and their gradients are f32 parameters either
    // way.
    let (act_up, act_read) = io(half);
    let round = |v: Vec<f32>| if half { to_f16(&v) } else { v };
    let x_data = round(rng.vec_f32(n(s.x_shape()), -1.0, 1.0));
    let w_data = rng.vec_f32(n(s.w_shape()), -1.0, 1.0);
    let b_data = rng.vec_f32(s.out_c, -1.0, 1.0);
    let dy_data = round(rng.vec_f32(n(s.y_shape()), -1.0, 1.0));
    // Starting contents of the outputs: NaN poison, or random values to accumulate onto.
    let mut start = |shape: [usize; 4], label: &str, act: bool| {
        let (up, round): (Upload, bool) = if act { (act_up, half) } else { (upload, false) };
        if accumulate {
            let v = rng.vec_f32(n(shape), -1.0, 1.0);
            let v = if round { to_f16(&v) } else { v };
            (up(&shape, &v, label), widen(&v))
        } else {
            (up(&shape, &vec![f32::NAN; n(shape)], label), vec![0.0; n(shape)])
        }
    };
    let (y, y0) = start(s.y_shape(), "y", true);
    let (dx, dx0) = start(s.x_shape(), "dx", true);
    let (dw, dw0) = start(s.w_shape(), "dw", false);
    let (db, db0) = start([s.out_c, 1, 1, 1], "db", false);
    let x = act_up(&s.x_shape(), &x_data, "x");
    let w = upload(&s.w_shape(), &w_data, "w");
    let b = upload(&[s.out_c], &b_data, "bias");
    let dy = act_up(&s.y_shape(), &dy_data, "dy");

    let mut steps = conv2d_forward(g, &s, &x, &w, Some(&b), &y, accumulate, "conv fwd").expect("forward");
    steps.extend(conv2d_backward_data(g, &s, &dy, &w, &dx, accumulate, "conv bwd data").expect("backward_data"));
    // The split-batch partial sums, poisoned like every output.
    let partial = conv2d_backward_weight_scratch(g, &s).map(|shape| poisoned(&shape, "partial dw"));
    steps.extend(
        conv2d_backward_weight(g, &s, &dy, &x, &dw, partial.as_ref(), accumulate, "conv bwd weight")
            .expect("backward_weight"),
    );
    let db = db.reshape(&[s.out_c]).expect("reshape");
    steps.push(conv2d_backward_bias(g, &s, &dy, &db, accumulate, "conv bwd bias").expect("backward_bias"));
    g.run("conv test", &steps.iter().collect::<Vec<_>>()).expect("run");

    let plus = |a: Vec<f64>, b: &[f64]| a.iter().zip(b).map(|(a, b)| a + b).collect::<Vec<f64>>();
    let (xd, wd, dyd) = (widen(&x_data), widen(&w_data), widen(&dy_data));
    let what = format!("x {x_shape:?} w {w_shape:?} {cfg:?} accumulate={accumulate} f16={half}");
    let (store_atol, store_rtol) = if half { F16_STORE } else { (0.0, 0.0) };
    let k_fwd = s.in_c / cfg.groups * s.kernel_h * s.kernel_w;
    let y_want = plus(reference::conv2d_forward(&s, &xd, &wd, Some(&widen(&b_data))), &y0);
    let (atol, rtol) = (tol(k_fwd + 1) + store_atol, 1e-5 + store_rtol);
    assert_close(&act_read(&y), &y_want, atol, rtol, &format!("forward {what}"));
    // Every implicit-GEMM forward kernel (any geometry; conv2d_forward ran the autotuner's or another path), on
    // its own output.
    for k in ConvKernel::ALL {
        let begin: Vec<f32> =
            if accumulate { y0.iter().map(|&v| v as f32).collect() } else { vec![f32::NAN; n(s.y_shape())] };
        let yk = act_up(&s.y_shape(), &begin, "y of a gemm kernel");
        let d = conv2d_forward_gemm(g, k, &s, &x, &w, Some(&b), &yk, accumulate, "gemm kernel").expect("gemm kernel");
        g.run("conv2d forward kernel", &[&d]).expect("run gemm kernel");
        assert_close(&act_read(&yk), &y_want, atol, rtol, &format!("forward {} {what}", k.name()));
    }
    // Every depthwise forward variant that applies (conv2d_forward ran the autotuner's), on its own output.
    for k in DepthwiseKernel::ALL.into_iter().filter(|k| s.is_depthwise() && k.applies(&s)) {
        let begin: Vec<f32> =
            if accumulate { y0.iter().map(|&v| v as f32).collect() } else { vec![f32::NAN; n(s.y_shape())] };
        let yk = act_up(&s.y_shape(), &begin, "y of a variant");
        let d = depthwise_forward(g, k, &s, &x, &w, Some(&b), &yk, accumulate, "variant").expect("variant");
        g.run("depthwise variant", &[&d]).expect("run variant");
        assert_close(&act_read(&yk), &y_want, atol, rtol, &format!("forward {} {what}", k.name()));
    }
    let k_data = s.out_c / cfg.groups * s.kernel_h * s.kernel_w;
    let dx_want = plus(reference::conv2d_backward_data(&s, &dyd, &wd), &dx0);
    let (atol, rtol) = (tol(k_data) + store_atol, 1e-5 + store_rtol);
    assert_close(&act_read(&dx), &dx_want, atol, rtol, &format!("backward_data {what}"));
    for k in DepthwiseKernel::ALL.into_iter().filter(|k| s.is_depthwise() && k.applies_backward_data(&s)) {
        let begin: Vec<f32> =
            if accumulate { dx0.iter().map(|&v| v as f32).collect() } else { vec![f32::NAN; n(s.x_shape())] };
        let dxk = act_up(&s.x_shape(), &begin, "dx of a variant");
        let d = depthwise_backward_data(g, k, &s, &dy, &w, &dxk, accumulate, "variant").expect("variant");
        g.run("depthwise variant", &[&d]).expect("run variant");
        assert_close(&act_read(&dxk), &dx_want, atol, rtol, &format!("backward_data {} {what}", k.name()));
    }
    let k_weight = s.batch * s.out_h * s.out_w;
    let dw_want = plus(reference::conv2d_backward_weight(&s, &dyd, &xd), &dw0);
    assert_close(&read(&dw), &dw_want, tol(k_weight), 1e-5, &format!("backward_weight {what}"));
    let db_want = plus(reference::sum_reduce(&dyd, s.batch, s.out_c, s.out_h * s.out_w), &db0);
    assert_close(&read(&db), &db_want, tol(k_weight), 1e-5, &format!("backward_bias {what}"));
}

fn cfg(stride: usize, pad: usize) -> Conv2dConfig {
    Conv2dConfig { stride: (stride, stride), padding: Padding::symmetric(pad), ..Default::default() }
}

macro_rules! conv_tests {
    ($($name:ident: $x:expr, $w:expr, $cfg:expr;)*) => {$(
        #[test]
        fn $name() {
            check($x, $w, $cfg, false, line!() as u64);
        }
    )*};
}

conv_tests! {
    dense_3x3_odd_size: [2, 3, 7, 7], [5, 3, 3, 3], cfg(1, 1);
    dense_3x3_stride2_odd_size_two_row_tiles: [2, 4, 9, 11], [17, 4, 3, 3], cfg(2, 1);
    dense_5x5_batch1: [1, 2, 6, 5], [3, 2, 5, 5], cfg(1, 2);
    // Past the staged kernel's 128 x 128 tile both ways (131 channels, 2 x 11 x 13 = 286 pixels), 9 input
    // channels: the reduction's positions carry from channel into tap between slabs of 8 at every offset.
    dense_3x3_past_the_staged_tile: [2, 9, 11, 13], [131, 9, 3, 3], cfg(1, 1);
    pointwise_1x1_takes_the_matmul_path: [2, 5, 32, 17], [7, 5, 1, 1], cfg(1, 0);
    pointwise_1x1_small_plane_takes_the_gemm_path: [3, 5, 5, 3], [7, 5, 1, 1], cfg(1, 0);
    strided_1x1_takes_the_gemm_path: [2, 4, 7, 7], [6, 4, 1, 1], cfg(2, 0);
    grouped_2: [2, 4, 6, 6], [6, 2, 3, 3], Conv2dConfig { groups: 2, ..cfg(1, 1) };
    depthwise_3x3: [2, 5, 7, 7], [5, 1, 3, 3], Conv2dConfig { groups: 5, ..cfg(1, 1) };
    depthwise_3x3_long_weight_sum: [2, 3, 30, 31], [3, 1, 3, 3], Conv2dConfig { groups: 3, ..cfg(1, 1) };
    depthwise_5x5_stride2_tf_same: [2, 3, 9, 9], [3, 1, 5, 5],
        Conv2dConfig { groups: 3, stride: (2, 2), padding: Padding::same(9, 9, (5, 5), (2, 2), (1, 1)), ..Default::default() };
    dilated_3x3: [1, 3, 8, 8], [4, 3, 3, 3], Conv2dConfig { dilation: (2, 2), ..cfg(1, 2) };
    // Depthwise backward_data's undilated path walks only the taps in range: planes smaller than the kernel, even
    // sizes with asymmetric SAME padding, no padding with unequal strides; the dilated case takes the general path.
    depthwise_5x5_planes_smaller_than_the_kernel: [2, 4, 2, 2], [4, 1, 5, 5],
        Conv2dConfig { groups: 4, padding: Padding::same(2, 2, (5, 5), (1, 1), (1, 1)), ..Default::default() };
    depthwise_3x3_on_1x1: [3, 2, 1, 1], [2, 1, 3, 3], Conv2dConfig { groups: 2, ..cfg(1, 1) };
    depthwise_3x3_stride2_even_tf_same: [1, 3, 8, 10], [3, 1, 3, 3],
        Conv2dConfig { groups: 3, stride: (2, 2), padding: Padding::same(8, 10, (3, 3), (2, 2), (1, 1)), ..Default::default() };
    depthwise_3x3_unpadded_stride_2_by_1: [2, 3, 7, 9], [3, 1, 3, 3],
        Conv2dConfig { groups: 3, stride: (2, 1), ..Default::default() };
    depthwise_5x5_stride3_padded: [1, 2, 11, 13], [2, 1, 5, 5], Conv2dConfig { groups: 2, ..cfg(3, 2) };
    depthwise_3x3_dilated: [1, 2, 9, 9], [2, 1, 3, 3], Conv2dConfig { groups: 2, dilation: (2, 2), ..cfg(1, 2) };
    // backward_weight over at least 1024 positions: the all-taps kernel (3x3 above, 5x5 here) and, for a dilated
    // kernel, the one-workgroup-per-tap kernel.
    depthwise_5x5_long_weight_sum_stride2_tf_same: [2, 3, 48, 45], [3, 1, 5, 5],
        Conv2dConfig { groups: 3, stride: (2, 2), padding: Padding::same(48, 45, (5, 5), (2, 2), (1, 1)), ..Default::default() };
    // ConvNeXt's depthwise 7x7 (padding 3) over at least 1024 positions: the all-taps kernel with 49 taps; and on
    // planes smaller than the kernel.
    depthwise_7x7_long_weight_sum: [2, 5, 23, 29], [5, 1, 7, 7], Conv2dConfig { groups: 5, ..cfg(1, 3) };
    depthwise_7x7_on_3x3_planes: [3, 4, 3, 3], [4, 1, 7, 7], Conv2dConfig { groups: 4, ..cfg(1, 3) };
    // The four-output forward kernel at its widest input window (7x7, stride 2: 13 values a row) and rows of
    // 1 to 5 outputs.
    depthwise_7x7_stride2_odd: [1, 3, 17, 19], [3, 1, 7, 7], Conv2dConfig { groups: 3, ..cfg(2, 3) };
    depthwise_5x5_stride2_unpadded_one_column: [2, 2, 9, 5], [2, 1, 5, 5], Conv2dConfig { groups: 2, ..cfg(2, 0) };
    depthwise_3x3_stride2_rows_of_5: [1, 7, 4, 9], [7, 1, 3, 3], Conv2dConfig { groups: 7, ..cfg(2, 1) };
    depthwise_3x3_dilated_long_weight_sum: [2, 2, 30, 30], [2, 1, 3, 3],
        Conv2dConfig { groups: 2, dilation: (2, 2), ..cfg(1, 2) };
    tf_same_stride2_asymmetric: [2, 3, 8, 8], [4, 3, 3, 3],
        Conv2dConfig { stride: (2, 2), padding: Padding::same(8, 8, (3, 3), (2, 2), (1, 1)), ..Default::default() };
    many_column_tiles: [2, 3, 24, 24], [8, 3, 3, 3], cfg(1, 1);
    // 33 x 3 x 3 = 297 weight columns: the 512-column backward_weight kernel (up to 256 take the narrow one).
    wide_weight_gradient: [2, 33, 6, 5], [5, 33, 3, 3], cfg(1, 1);
    rectangular_kernel_and_stride: [1, 2, 9, 6], [3, 2, 3, 1],
        Conv2dConfig { stride: (2, 1), padding: Padding { top: 1, bottom: 0, left: 0, right: 2 }, ..Default::default() };
    // backward_data by stride phase: each phase (ih % stride, iw % stride) its own set of taps, with strides 2 and 3,
    // dilation making a tap skip phases, phases that no tap reaches (their dx is zero, written over the poison),
    // phases with no pixels (an image smaller than the stride), and groups times phases in the grid.
    dense_3x3_stride3_dilated2: [2, 3, 11, 10], [4, 3, 3, 3], Conv2dConfig { dilation: (2, 2), ..cfg(3, 2) };
    dense_2x2_stride3_phases_no_tap_reaches: [1, 3, 8, 7], [5, 3, 2, 2], cfg(3, 0);
    dense_3x3_stride2_on_1x1: [2, 3, 1, 1], [4, 3, 3, 3], cfg(2, 1);
    dense_3x3_stride_3_by_2_dilated_asymmetric: [1, 2, 10, 12], [3, 2, 3, 3],
        Conv2dConfig {
            stride: (3, 2),
            dilation: (2, 1),
            padding: Padding { top: 2, bottom: 1, left: 1, right: 0 },
            ..Default::default()
        };
    grouped_3_stride2: [2, 6, 9, 9], [9, 2, 3, 3], Conv2dConfig { groups: 3, ..cfg(2, 1) };
    // More than 512 pixels in every stride phase: several column tiles, and every invocation's eight columns live.
    dense_3x3_stride2_many_column_tiles: [2, 3, 40, 38], [5, 3, 3, 3], cfg(2, 1);
}

/// The f16 variants on the shapes that take each path: dense (both backward_weight kernels, with and without batch
/// splits), grouped, strided and dilated, pointwise through matmul, and every depthwise weight-gradient kernel.
macro_rules! conv_tests_f16 {
    ($($name:ident: $x:expr, $w:expr, $cfg:expr;)*) => {$(
        #[test]
        fn $name() {
            check_f16($x, $w, $cfg, false, line!() as u64);
        }
    )*};
}

conv_tests_f16! {
    f16_dense_3x3_stride2_odd_size: [2, 4, 9, 11], [17, 4, 3, 3], cfg(2, 1);
    f16_dense_5x5_batch1: [1, 2, 6, 5], [3, 2, 5, 5], cfg(1, 2);
    f16_wide_weight_gradient: [2, 33, 6, 5], [5, 33, 3, 3], cfg(1, 1);
    f16_pointwise_1x1_matmul_path: [2, 5, 32, 17], [7, 5, 1, 1], cfg(1, 0);
    f16_grouped_dilated: [2, 4, 8, 8], [6, 2, 3, 3], Conv2dConfig { groups: 2, dilation: (2, 2), ..cfg(1, 2) };
    f16_grouped_stride3: [2, 4, 10, 8], [6, 2, 3, 3], Conv2dConfig { groups: 2, ..cfg(3, 1) };
    f16_depthwise_3x3_long_weight_sum: [2, 3, 30, 31], [3, 1, 3, 3], Conv2dConfig { groups: 3, ..cfg(1, 1) };
    f16_depthwise_5x5_stride2_tf_same: [2, 3, 9, 9], [3, 1, 5, 5],
        Conv2dConfig { groups: 3, stride: (2, 2), padding: Padding::same(9, 9, (5, 5), (2, 2), (1, 1)), ..Default::default() };
    f16_depthwise_3x3_dilated_long_weight_sum: [2, 2, 30, 30], [2, 1, 3, 3],
        Conv2dConfig { groups: 2, dilation: (2, 2), ..cfg(1, 2) };
}

/// backward_weight's split-K for any split count (a GPU adapter picks hundreds, this software adapter a few): one
/// split, splits that divide the rows (n, oh) evenly, splits that cross image boundaries, one row per split and more
/// splits than rows (clamped), on the narrow and the wide kernel, strided, f32 and f16, overwriting and
/// accumulating; the partial sums poisoned. Depthwise (3x3, and 5x5 stride 2) splits over whole images. The sums are over K = N * OH * OW products: the tolerance above.
#[test]
fn weight_gradient_split_k_for_any_split_count() {
    let g = gpu();
    let mut rng = SplitMix(41);
    let shapes = [
        ([3, 4, 7, 5], [6, 4, 3, 3], cfg(2, 1)),    // narrow: 36 columns; 3 x 4 = 12 rows
        ([2, 33, 6, 5], [17, 33, 3, 3], cfg(1, 1)), // wide: 297 columns; 2 x 6 = 12 rows; 17 output channels
        // Depthwise, the tap-summing kernel (sums of at least 1024 positions): split over whole images (more splits
        // than images are clamped).
        ([5, 3, 17, 15], [3, 1, 3, 3], Conv2dConfig { groups: 3, ..cfg(1, 1) }),
        ([6, 2, 31, 29], [2, 1, 5, 5], Conv2dConfig { groups: 2, ..cfg(2, 2) }),
    ];
    for (x_shape, w_shape, cfg) in shapes {
        let s = ConvShape::new(&x_shape, &w_shape, cfg).expect("shape");
        let rows = s.batch * s.out_h;
        for half in [false, true] {
            let (act_up, _) = io(half);
            let round = |v: Vec<f32>| if half { to_f16(&v) } else { v };
            let x_data = round(rng.vec_f32(s.x_shape().iter().product(), -1.0, 1.0));
            let dy_data = round(rng.vec_f32(s.y_shape().iter().product(), -1.0, 1.0));
            let (x, dy) = (act_up(&s.x_shape(), &x_data, "x"), act_up(&s.y_shape(), &dy_data, "dy"));
            let want = reference::conv2d_backward_weight(&s, &widen(&dy_data), &widen(&x_data));
            for splits in [1, 2, 3, 5, rows - 1, rows, rows + 7] {
                for accumulate in [false, true] {
                    let n = want.len();
                    let start = if accumulate { rng.vec_f32(n, -1.0, 1.0) } else { vec![f32::NAN; n] };
                    let dw = upload(&s.w_shape(), &start, "dw");
                    let scratch = conv2d_backward_weight_scratch_split(&s, splits);
                    assert_eq!(scratch.is_some(), splits > 1, "{splits} splits of {rows} rows");
                    let partial = scratch.map(|shape| poisoned(&shape, "partial dw"));
                    let steps =
                        conv2d_backward_weight_split(g, &s, splits, &dy, &x, &dw, partial.as_ref(), accumulate, "dw")
                            .expect("backward_weight");
                    g.run("split-K test", &steps.iter().collect::<Vec<_>>()).expect("run");
                    let base: Vec<f64> = if accumulate { widen(&start) } else { vec![0.0; n] };
                    let want: Vec<f64> = want.iter().zip(&base).map(|(w, b)| w + b).collect();
                    let k = s.batch * s.out_h * s.out_w;
                    let what = format!("x {x_shape:?} w {w_shape:?} splits {splits} f16={half} acc={accumulate}");
                    assert_close(&read(&dw), &want, tol(k), 1e-5, &what);
                }
            }
            // A scratch tensor of the wrong shape is refused, naming what was needed.
            let dw = upload(&s.w_shape(), &vec![0.0; s.w_shape().iter().product()], "dw");
            let wrong = poisoned(&[2, 3], "wrong scratch");
            let e = conv2d_backward_weight_split(g, &s, 3, &dy, &x, &dw, Some(&wrong), false, "dw").err();
            assert!(e.expect("refused").to_string().contains("needed"));
        }
    }
}

#[test]
fn every_path_accumulates_in_f16() {
    check_f16([2, 3, 7, 7], [5, 3, 3, 3], cfg(1, 1), true, 11);
    check_f16([2, 3, 16, 33], [4, 3, 1, 1], cfg(1, 0), true, 12);
    check_f16([2, 5, 7, 7], [5, 1, 3, 3], Conv2dConfig { groups: 5, ..cfg(1, 1) }, true, 13);
    check_f16([2, 4, 9, 11], [17, 4, 3, 3], cfg(2, 1), true, 14);
}

/// The GEMMs' result precision follows the output tensor: f16 operands give an f16 activation or an f32 weight
/// gradient, f32 operands an f32 result, an f16 input with the f32 weight an f16 activation; an f16 result from f32
/// operands, an f16 weight with an f32 input and an f16 bias are refused, naming the tensors.
#[test]
fn mixed_precision_launches_are_checked() {
    let g = gpu();
    let s = ConvShape::new(&[1, 2, 5, 5], &[3, 2, 3, 3], cfg(1, 1)).expect("shape");
    let x16 = upload_f16(&s.x_shape(), &[0.5; 50], "x16");
    let x32 = upload(&s.x_shape(), &[0.5; 50], "x32");
    let w16 = upload_f16(&s.w_shape(), &[0.5; 54], "w16");
    let w32 = upload(&s.w_shape(), &[0.5; 54], "w32");
    let y16 = upload_f16(&s.y_shape(), &[0.0; 75], "y16");
    let y32 = upload(&s.y_shape(), &[0.0; 75], "y32");
    let b16 = upload_f16(&[3], &[0.0; 3], "b16");
    let err = |r: wgtune::Result<Vec<wgtune::gpu::Dispatch>>| r.err().expect("refused").to_string();
    let e = err(conv2d_forward(g, &s, &x32, &w32, None, &y16, false, "c"));
    assert!(e.contains("y16") && e.contains("F16"), "{e}");
    let e = err(conv2d_forward(g, &s, &x32, &w16, None, &y16, false, "c"));
    assert!(e.contains("x32") && e.contains("w16"), "{e}");
    let e = err(conv2d_backward_data(g, &s, &y32, &w16, &x16, false, "c"));
    assert!(e.contains("y32") && e.contains("w16"), "{e}");
    let e = err(conv2d_forward(g, &s, &x16, &w16, Some(&b16), &y16, false, "c"));
    assert!(e.contains("b16") && e.contains("f32"), "{e}");
    // An f32 result of f16 operands is a weight gradient's variant, an f16 result of an f16 input and an f32 weight
    // the f16 executor's forward: allowed (checked against the reference above).
    conv2d_forward(g, &s, &x16, &w16, None, &y32, false, "c").expect("f16 operands, f32 result");
    conv2d_forward(g, &s, &x16, &w32, None, &y16, false, "c").expect("f16 input, f32 weight");
    // Depthwise reads the weight as its right operand: the same rules.
    let d = ConvShape::new(&[1, 3, 5, 5], &[3, 1, 3, 3], Conv2dConfig { groups: 3, ..cfg(1, 1) }).expect("shape");
    let dx16 = upload_f16(&d.x_shape(), &[0.5; 75], "dx16");
    let dw32 = upload(&d.w_shape(), &[0.5; 27], "dw32");
    let dw16 = upload_f16(&d.w_shape(), &[0.5; 27], "dw16");
    let dy16 = upload_f16(&d.y_shape(), &[0.0; 75], "dy16");
    conv2d_forward(g, &d, &dx16, &dw32, None, &dy16, false, "d").expect("f16 input, f32 weight");
    let e = err(conv2d_forward(g, &d, &upload(&d.x_shape(), &[0.5; 75], "dx32"), &dw16, None, &dy16, false, "d"));
    assert!(e.contains("dx32") && e.contains("dw16"), "{e}");
}

#[test]
fn every_path_accumulates() {
    check([2, 3, 7, 7], [5, 3, 3, 3], cfg(1, 1), true, 1);
    check([2, 5, 5, 3], [7, 5, 1, 1], cfg(1, 0), true, 2);
    check([2, 3, 16, 33], [4, 3, 1, 1], cfg(1, 0), true, 4);
    check([2, 5, 7, 7], [5, 1, 3, 3], Conv2dConfig { groups: 5, ..cfg(1, 1) }, true, 3);
    // Stride phases that no tap reaches add nothing (their dx keeps its start).
    check([1, 3, 8, 7], [5, 3, 2, 2], cfg(3, 0), true, 5);
}

#[test]
fn pointwise_routing_follows_the_plane_size() {
    let s = |x: [usize; 4]| ConvShape::new(&x, &[7, x[1], 1, 1], Conv2dConfig::default()).unwrap().is_pointwise();
    assert!(s([2, 5, 32, 17]), "544-pixel planes take the matmul path");
    assert!(!s([3, 5, 5, 3]), "15-pixel planes take the implicit GEMM");
}

/// A depthwise variant asked for where it does not apply (the four-output kernel on a dilated or 4x4 kernel) is an
/// error naming it; `Auto` runs the direct kernel there.
#[test]
fn a_depthwise_variant_that_does_not_apply_is_refused() {
    for (w, cfg) in [
        ([2, 1, 3, 3], Conv2dConfig { groups: 2, dilation: (2, 2), ..cfg(1, 2) }),
        ([2, 1, 4, 4], Conv2dConfig { groups: 2, ..cfg(1, 1) }),
        ([2, 1, 3, 3], Conv2dConfig { groups: 2, ..cfg(3, 1) }),
    ] {
        let s = ConvShape::new(&[1, 2, 9, 9], &w, cfg).unwrap();
        let x = upload(&s.x_shape(), &vec![0.5; 2 * 81], "x");
        let wt = upload(&s.w_shape(), &vec![0.5; w.iter().product()], "w");
        let y = poisoned(&s.y_shape(), "y");
        assert!(!DepthwiseKernel::Rows4.applies(&s));
        let refused = depthwise_forward(gpu(), DepthwiseKernel::Rows4, &s, &x, &wt, None, &y, false, "dw");
        let e = refused.err().expect("refused").to_string();
        assert!(e.contains("the rows4 kernel does not compute"), "{e}");
        let d = depthwise_forward(gpu(), DepthwiseKernel::Auto, &s, &x, &wt, None, &y, false, "dw").unwrap();
        gpu().run("dw", &[&d]).unwrap();
        assert!(read(&y).iter().all(|v| v.is_finite()));
    }
    // backward_data: stride 1 only.
    let s = ConvShape::new(&[1, 2, 9, 9], &[2, 1, 3, 3], Conv2dConfig { groups: 2, ..cfg(2, 1) }).unwrap();
    assert!(DepthwiseKernel::Rows4.applies(&s) && !DepthwiseKernel::Rows4.applies_backward_data(&s));
    let (dy, w) = (upload(&s.y_shape(), &[0.5; 2 * 25], "dy"), upload(&s.w_shape(), &[0.5; 18], "w"));
    let dx = poisoned(&s.x_shape(), "dx");
    let refused = depthwise_backward_data(gpu(), DepthwiseKernel::Rows4, &s, &dy, &w, &dx, false, "dw");
    assert!(refused.err().expect("refused").to_string().contains("does not compute the backward_data"));
}

#[test]
fn shape_errors_name_the_tensors() {
    let err = ConvShape::new(&[1, 3, 8, 8], &[4, 2, 3, 3], Conv2dConfig::default()).unwrap_err().to_string();
    assert!(err.contains("[1, 3, 8, 8]") && err.contains("[4, 2, 3, 3]"), "{err}");
    let err = ConvShape::new(&[1, 3, 2, 2], &[4, 3, 5, 5], Conv2dConfig::default()).unwrap_err().to_string();
    assert!(err.contains("larger than the padded input"), "{err}");
    // No channels: refused here, before a kernel's reduction would walk zero channels per tap.
    for (x, w) in [([1, 0, 4, 4], [2, 0, 3, 3]), ([1, 2, 4, 4], [0, 2, 3, 3])] {
        let err = ConvShape::new(&x, &w, Conv2dConfig::default()).unwrap_err().to_string();
        assert!(err.contains("Cin and Cout must be at least 1"), "{err}");
    }
}
