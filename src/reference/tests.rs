//! The oracle's own proof: every backward against central finite differences of its forward.
#![allow(clippy::needless_range_loop)] // index loops read like the math here

use super::*;

const H: f64 = 1e-6;

fn assert_fd(analytic: f64, numeric: f64, what: &str) {
    let tol = 1e-6 + 1e-6 * numeric.abs();
    assert!((analytic - numeric).abs() <= tol, "{what}: analytic {analytic} vs finite difference {numeric}");
}

/// L = sum(C ⊙ G) for C = A·B: dL/dA = G·Bᵀ, dL/dB = Aᵀ·G, dL/dbias = column sums of G.
#[test]
fn matmul_backward_matches_finite_differences() {
    let mut rng = SplitMix(1);
    let s = MatmulShape::new(2, 3, 5, 4);
    let a = widen(&rng.vec_f32(2 * 3 * 4, -1.0, 1.0));
    let b = widen(&rng.vec_f32(2 * 4 * 5, -1.0, 1.0));
    let bias = widen(&rng.vec_f32(5, -1.0, 1.0));
    let g = widen(&rng.vec_f32(2 * 3 * 5, -1.0, 1.0));
    let loss = |a: &[f64], b: &[f64], bias: &[f64]| {
        matmul(&s, a, b, Some(bias), None).iter().zip(&g).map(|(c, g)| c * g).sum::<f64>()
    };
    let (da, db, dbias) = matmul_backward(&s, &a, &b, &g);
    for i in 0..a.len() {
        assert_fd(da[i], finite_difference(&a, i, H, |x| loss(x, &b, &bias)), "dA");
    }
    for i in 0..b.len() {
        assert_fd(db[i], finite_difference(&b, i, H, |x| loss(&a, x, &bias)), "dB");
    }
    for i in 0..bias.len() {
        assert_fd(dbias[i], finite_difference(&bias, i, H, |x| loss(&a, &b, x)), "dbias");
    }
    // The transposed forms the GPU uses for backward give the same gradients.
    let da_t = matmul(&MatmulShape { n: 4, k: 5, trans_b: true, ..s }, &g, &b, None, None);
    let db_t = matmul(&MatmulShape { m: 4, k: 3, trans_a: true, ..s }, &a, &g, None, None);
    assert!(da.iter().zip(&da_t).all(|(x, y)| (x - y).abs() < 1e-12));
    assert!(db.iter().zip(&db_t).all(|(x, y)| (x - y).abs() < 1e-12));
}

/// Every backward rule of the element-wise table against the derivative of its forward rule, away from the kinks
/// of relu/relu6/leaky relu; add and scale are linear (their backward is a copy, or the same scale).
#[test]
fn elementwise_backward_matches_finite_differences() {
    use crate::ops::elementwise::Elementwise;
    let mut rng = SplitMix(2);
    let x: Vec<f64> =
        widen(&rng.vec_f32(64, -2.0, 8.0)).into_iter().filter(|v| v.abs() > 1e-3 && (v - 6.0).abs() > 1e-3).collect();
    let g = widen(&rng.vec_f32(x.len(), -1.0, 1.0));
    let mut checked = 0;
    for &op in Elementwise::ALL {
        let Some(forward) = op.gradient_of() else { continue };
        let (f, df) = (forward.reference(), op.reference());
        for alpha in [0.01, 0.3] {
            for i in 0..x.len() {
                let fd = finite_difference(&x, i, H, |v| f(v[i], 0.0, alpha) * g[i]);
                assert_fd(df(x[i], g[i], alpha), fd, &format!("{op:?} alpha={alpha}"));
            }
        }
        checked += 1;
    }
    assert!(checked >= 3, "relu, relu6 and leaky relu have backward rules");
    let y = widen(&rng.vec_f32(x.len(), -1.0, 1.0));
    let dot = |v: Vec<f64>| v.iter().zip(&g).map(|(a, b)| a * b).sum::<f64>();
    let scale_dx = elementwise(scale, &g, None, 0.75);
    for i in 0..x.len() {
        assert_fd(scale_dx[i], finite_difference(&x, i, H, |v| dot(elementwise(scale, v, None, 0.75))), "scale");
        // add: dL/dx = dL/dy = g
        assert_fd(g[i], finite_difference(&x, i, H, |v| dot(elementwise(add, v, Some(&y), 0.0))), "add");
    }
}

/// L = sum(conv2d(x, w) + bias) ⊙ G) over strided, dilated, asymmetrically padded and grouped geometries.
#[test]
fn conv2d_backward_matches_finite_differences() {
    use crate::ops::conv::{Conv2dConfig, Padding};
    let cases = [
        (
            [2, 4, 5, 6],
            [6, 2, 3, 2],
            Conv2dConfig {
                stride: (2, 1),
                padding: Padding { top: 0, bottom: 1, left: 1, right: 0 },
                dilation: (1, 2),
                groups: 2,
            },
        ),
        (
            [1, 3, 5, 5],
            [3, 1, 3, 3],
            Conv2dConfig {
                stride: (2, 2),
                padding: Padding::same(5, 5, (3, 3), (2, 2), (1, 1)),
                groups: 3,
                ..Default::default()
            },
        ),
    ];
    let mut rng = SplitMix(4);
    for (xs, ws, cfg) in cases {
        let s = ConvShape::new(&xs, &ws, cfg).unwrap();
        let x = widen(&rng.vec_f32(xs.iter().product(), -1.0, 1.0));
        let w = widen(&rng.vec_f32(ws.iter().product(), -1.0, 1.0));
        let b = widen(&rng.vec_f32(s.out_c, -1.0, 1.0));
        let g = widen(&rng.vec_f32(s.y_shape().iter().product(), -1.0, 1.0));
        let loss = |x: &[f64], w: &[f64], b: &[f64]| {
            conv2d_forward(&s, x, w, Some(b)).iter().zip(&g).map(|(y, g)| y * g).sum::<f64>()
        };
        let dx = conv2d_backward_data(&s, &g, &w);
        let dw = conv2d_backward_weight(&s, &g, &x);
        for i in 0..x.len() {
            assert_fd(dx[i], finite_difference(&x, i, H, |v| loss(v, &w, &b)), "conv dx");
        }
        for i in 0..w.len() {
            assert_fd(dw[i], finite_difference(&w, i, H, |v| loss(&x, v, &b)), "conv dw");
        }
        let db = sum_reduce(&g, s.batch, s.out_c, s.out_h * s.out_w);
        for i in 0..b.len() {
            assert_fd(db[i], finite_difference(&b, i, H, |v| loss(&x, &w, v)), "conv dbias");
        }
    }
}

/// TensorFlow "SAME": 224 -> 112 with a 3x3 stride-2 kernel pads 0 on top/left and 1 on bottom/right.
#[test]
fn same_padding_puts_the_extra_pixel_bottom_right() {
    use crate::ops::conv::Padding;
    assert_eq!(Padding::same(224, 224, (3, 3), (2, 2), (1, 1)), Padding { top: 0, bottom: 1, left: 0, right: 1 });
    assert_eq!(Padding::same(28, 28, (5, 5), (1, 1), (1, 1)), Padding::symmetric(2));
    assert_eq!(Padding::same(7, 7, (5, 5), (2, 2), (1, 1)), Padding { top: 2, bottom: 2, left: 2, right: 2 });
}

#[test]
fn pooling_backward_matches_finite_differences() {
    use crate::ops::conv::Padding;
    use crate::ops::pool::PoolConfig;
    let mut rng = SplitMix(5);
    let configs = [
        PoolConfig::square(3, 2, 1),
        PoolConfig { count_include_pad: false, ..PoolConfig::square(3, 2, 1) },
        PoolConfig {
            kernel: (2, 3),
            stride: (1, 2),
            padding: Padding { top: 1, bottom: 0, left: 0, right: 1 },
            count_include_pad: true,
        },
    ];
    for cfg in configs {
        let s = PoolShape::new(&[2, 2, 5, 6], cfg).unwrap();
        let x = widen(&rng.vec_f32(2 * 2 * 5 * 6, -1.0, 1.0));
        let g = widen(&rng.vec_f32(s.y_shape().iter().product(), -1.0, 1.0));
        let dot = |v: Vec<f64>| v.iter().zip(&g).map(|(a, b)| a * b).sum::<f64>();
        let (_, idx) = max_pool_forward(&s, &x);
        let dmax = max_pool_backward(&s, &g, &idx);
        let davg = avg_pool_backward(&s, &g);
        for i in 0..x.len() {
            assert_fd(dmax[i], finite_difference(&x, i, H, |v| dot(max_pool_forward(&s, v).0)), "max pool");
            assert_fd(davg[i], finite_difference(&x, i, H, |v| dot(avg_pool_forward(&s, v))), "avg pool");
        }
    }
    // Global pools: d mean / dx = 1/hw; d max / dx = 1 at the maximum.
    let x = widen(&rng.vec_f32(3 * 7, -1.0, 1.0));
    let g = widen(&rng.vec_f32(3, -1.0, 1.0));
    let dot = |v: Vec<f64>| v.iter().zip(&g).map(|(a, b)| a * b).sum::<f64>();
    let (_, idx) = global_max_pool_forward(&x, 7);
    for i in 0..x.len() {
        let want_avg = g[i / 7] / 7.0;
        let want_max = if idx[i / 7] as usize == i % 7 { g[i / 7] } else { 0.0 };
        assert_fd(want_avg, finite_difference(&x, i, H, |v| dot(global_avg_pool_forward(v, 7))), "global avg");
        assert_fd(want_max, finite_difference(&x, i, H, |v| dot(global_max_pool_forward(v, 7).0)), "global max");
    }
}

/// Training mode: y depends on x also through the batch statistics; eval mode: statistics are constants.
#[test]
fn batch_norm_backward_matches_finite_differences() {
    let mut rng = SplitMix(6);
    let (n, c, hw, eps) = (3, 2, 4, 1e-3);
    let x = widen(&rng.vec_f32(n * c * hw, -1.0, 2.0));
    let gamma = widen(&rng.vec_f32(c, 0.5, 1.5));
    let beta = widen(&rng.vec_f32(c, -0.5, 0.5));
    let g = widen(&rng.vec_f32(n * c * hw, -1.0, 1.0));
    let dot = |v: Vec<f64>| v.iter().zip(&g).map(|(a, b)| a * b).sum::<f64>();
    let train = |x: &[f64], gamma: &[f64], beta: &[f64]| {
        let (m, v) = batch_norm_statistics(x, n, c, hw);
        dot(batch_norm_forward(x, c, hw, (&m, &v), gamma, beta, eps))
    };
    let (m, v) = batch_norm_statistics(&x, n, c, hw);
    let (dx, dgamma, dbeta) = batch_norm_backward(&g, &x, (n, c, hw), &gamma, (&m, &v), eps, false);
    for i in 0..x.len() {
        assert_fd(dx[i], finite_difference(&x, i, H, |v| train(v, &gamma, &beta)), "bn train dx");
    }
    for i in 0..c {
        assert_fd(dgamma[i], finite_difference(&gamma, i, H, |v| train(&x, v, &beta)), "bn dgamma");
        assert_fd(dbeta[i], finite_difference(&beta, i, H, |v| train(&x, &gamma, v)), "bn dbeta");
    }
    let (rm, rv) = (widen(&rng.vec_f32(c, -0.5, 0.5)), widen(&rng.vec_f32(c, 0.5, 2.0)));
    let eval = |x: &[f64]| dot(batch_norm_forward(x, c, hw, (&rm, &rv), &gamma, &beta, eps));
    let (dx, _, _) = batch_norm_backward(&g, &x, (n, c, hw), &gamma, (&rm, &rv), eps, true);
    for i in 0..x.len() {
        assert_fd(dx[i], finite_difference(&x, i, H, eval), "bn eval dx");
    }
}

/// L = sum(layer_norm(x) ⊙ G) over the channels of NCHW (inner > 1) and over the last dimension (inner = 1),
/// and layer scale on the same layouts.
#[test]
fn layer_norm_and_layer_scale_backward_match_finite_differences() {
    let mut rng = SplitMix(8);
    for axis in [(2, 3, 4), (3, 5, 1), (1, 1, 2)] {
        let (outer, c, inner) = axis;
        let n = outer * c * inner;
        let eps = 1e-5;
        let x = widen(&rng.vec_f32(n, -1.0, 2.0));
        let gamma = widen(&rng.vec_f32(c, 0.5, 1.5));
        let beta = widen(&rng.vec_f32(c, -0.5, 0.5));
        let g = widen(&rng.vec_f32(n, -1.0, 1.0));
        let dot = |v: Vec<f64>| v.iter().zip(&g).map(|(a, b)| a * b).sum::<f64>();
        let loss = |x: &[f64], gamma: &[f64], beta: &[f64]| dot(layer_norm_forward(x, axis, gamma, beta, eps).0);
        let (dx, dgamma, dbeta) = layer_norm_backward(&g, &x, axis, &gamma, eps);
        for i in 0..n {
            assert_fd(dx[i], finite_difference(&x, i, H, |v| loss(v, &gamma, &beta)), &format!("ln dx {axis:?}"));
        }
        for i in 0..c {
            assert_fd(dgamma[i], finite_difference(&gamma, i, H, |v| loss(&x, v, &beta)), "ln dgamma");
            assert_fd(dbeta[i], finite_difference(&beta, i, H, |v| loss(&x, &gamma, v)), "ln dbeta");
        }
        let scaled = |x: &[f64], gamma: &[f64]| dot(layer_scale_forward(x, axis, gamma));
        let (dx, dgamma) = layer_scale_backward(&g, &x, axis, &gamma);
        for i in 0..n {
            assert_fd(dx[i], finite_difference(&x, i, H, |v| scaled(v, &gamma)), "layer scale dx");
        }
        for i in 0..c {
            assert_fd(dgamma[i], finite_difference(&gamma, i, H, |v| scaled(&x, v)), "layer scale dgamma");
        }
    }
}

/// With gamma 1, beta 0 and eps 0, every position of layer norm's output has mean 0 and variance 1 over the
/// channels.
#[test]
fn layer_norm_normalizes_each_position() {
    let mut rng = SplitMix(9);
    let axis = (2, 6, 5);
    let x = widen(&rng.vec_f32(60, -3.0, 5.0));
    let (y, _, _) = layer_norm_forward(&x, axis, &[1.0; 6], &[0.0; 6], 0.0);
    for o in 0..2 {
        for i in 0..5 {
            let v: Vec<f64> = (0..6).map(|c| y[(o * 6 + c) * 5 + i]).collect();
            let mean = v.iter().sum::<f64>() / 6.0;
            let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / 6.0;
            assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-12, "position ({o}, {i}): mean {mean}, var {var}");
        }
    }
}

/// Softmax of scaled rows: its backward against finite differences; a permutation and its inverse restore x.
#[test]
fn softmax_backward_matches_finite_differences_and_permute_inverts() {
    let mut rng = SplitMix(10);
    let (len, scale) = (5, 0.7);
    let x = widen(&rng.vec_f32(3 * len, -2.0, 2.0));
    let g = widen(&rng.vec_f32(3 * len, -1.0, 1.0));
    let loss = |x: &[f64]| softmax_rows(x, len, scale).iter().zip(&g).map(|(a, b)| a * b).sum::<f64>();
    let y = softmax_rows(&x, len, scale);
    let dx = softmax_rows_backward(&y, &g, len, scale);
    for i in 0..x.len() {
        assert_fd(dx[i], finite_difference(&x, i, H, loss), "softmax dx");
    }
    for row in y.chunks(len) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
    let shape = [2, 3, 4, 5];
    let x = widen(&rng.vec_f32(120, -1.0, 1.0));
    let perm = [2, 0, 3, 1];
    let y = permute(&x, &shape, &perm);
    // y[c][a][d][b] = x[a][b][c][d], y of shape (4, 2, 5, 3)
    let (a, b, c, d) = (1, 2, 3, 4);
    assert_eq!(y[((c * 2 + a) * 5 + d) * 3 + b], x[((a * 3 + b) * 4 + c) * 5 + d]);
    let permuted: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
    let inverse: Vec<usize> = (0..4).map(|a| perm.iter().position(|&p| p == a).unwrap()).collect();
    assert_eq!(permute(&y, &permuted, &inverse), x);
}

/// Slice's backward (the gradient placed at its channels, zeros elsewhere) and expand's (the sum over the batch)
/// against finite differences.
#[test]
fn slice_and_expand_backward_match_finite_differences() {
    let mut rng = SplitMix(11);
    let axis = (2, 5, 3);
    let x = widen(&rng.vec_f32(30, -1.0, 1.0));
    let g = widen(&rng.vec_f32(2 * 2 * 3, -1.0, 1.0));
    let dx = slice_backward(&g, axis, 1);
    for i in 0..x.len() {
        let fd = finite_difference(&x, i, H, |v| slice(v, axis, 1, 2).iter().zip(&g).map(|(a, b)| a * b).sum());
        assert_fd(dx[i], fd, "slice dx");
    }
    let x = widen(&rng.vec_f32(4, -1.0, 1.0));
    let g = widen(&rng.vec_f32(12, -1.0, 1.0));
    let dx = sum_reduce(&g, 3, 4, 1);
    for i in 0..x.len() {
        let fd = finite_difference(&x, i, H, |v| expand(v, 3).iter().zip(&g).map(|(a, b)| a * b).sum());
        assert_fd(dx[i], fd, "expand dx");
    }
}

/// The mask keeps a fraction 1 - p (within 4 standard deviations over 100k draws) and changes with the step.
#[test]
fn dropout_mask_keeps_one_minus_p_and_changes_per_step() {
    let n = 100_000u32;
    for p in [0.1f64, 0.25, 0.5] {
        let threshold = (p * 4294967296.0).round() as u32;
        let kept = (0..n).filter(|&i| dropout_keep(7, 3, i, threshold)).count() as f64 / n as f64;
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        assert!((kept - (1.0 - p)).abs() < 4.0 * sd, "p={p}: kept {kept}");
    }
    let same = (0..n).filter(|&i| dropout_keep(7, 3, i, 1 << 31) == dropout_keep(7, 4, i, 1 << 31)).count();
    assert!((same as f64 / n as f64 - 0.5).abs() < 0.02, "steps 3 and 4 agree on {same} of {n}");
}

#[test]
fn softmax_cross_entropy_backward_matches_finite_differences() {
    let mut rng = SplitMix(3);
    let (batch, classes) = (3, 7);
    let logits = widen(&rng.vec_f32(batch * classes, -3.0, 3.0));
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(classes as u32)).collect();
    for smoothing in [0.0, 0.1] {
        let d = softmax_cross_entropy_backward(&logits, &labels, classes, smoothing, 2.0);
        for i in 0..logits.len() {
            let fd = finite_difference(&logits, i, H, |x| {
                2.0 * softmax_cross_entropy_forward(x, &labels, classes, smoothing)
            });
            assert_fd(d[i], fd, "dlogits");
        }
    }
}

/// The forward loss itself against a hand computation: uniform logits give log(C).
#[test]
fn softmax_cross_entropy_of_uniform_logits_is_log_classes() {
    let loss = softmax_cross_entropy_forward(&[0.5; 10], &[3, 4], 5, 0.1);
    assert!((loss - 5f64.ln()).abs() < 1e-12);
}

/// Adam's first step moves each weight by lr * sign(g) (up to eps), whatever |g| is.
#[test]
fn adam_first_step_is_lr_times_sign() {
    let mut p = vec![1.0, -2.0, 3.0];
    let g = [0.5, -1e-2, 3.0];
    let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
    adam_step(&mut p, &g, &mut m, &mut v, 1, 0.1, 0.9, 0.99, 1e-12, 0.0, true);
    assert!((p[0] - 0.9).abs() < 1e-9 && (p[1] + 1.9).abs() < 1e-9 && (p[2] - 2.9).abs() < 1e-9, "{p:?}");
}

#[test]
fn sum_reduce_keeps_the_middle_axis() {
    let x: Vec<f64> = (0..24).map(|v| v as f64).collect();
    // (2, 3, 4): out[m] = sum_o sum_i x[o, m, i]
    assert_eq!(sum_reduce(&x, 2, 3, 4), vec![6.0 + 54.0, 22.0 + 70.0, 38.0 + 86.0]);
}
