//! The CPU twin of every kernel: plain loops in f64, written for clarity, never for speed. This is the oracle
//! the GPU kernels are tested against, and each backward here is itself checked by central finite differences
//! (the tests at the bottom). Names match the WGSL entry points.

use crate::ops::conv::ConvShape;

/// Problem shape of a batched matmul C = op(A)·op(B), as the `matmul` kernel sees it.
#[derive(Clone, Copy, Debug)]
pub struct MatmulShape {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// A is stored (K, M) per batch instead of (M, K).
    pub trans_a: bool,
    /// B is stored (N, K) per batch instead of (K, N).
    pub trans_b: bool,
    /// A has its own matrix per batch (otherwise one matrix shared by all).
    pub a_batched: bool,
    pub b_batched: bool,
}

impl MatmulShape {
    pub fn new(batch: usize, m: usize, n: usize, k: usize) -> Self {
        MatmulShape { batch, m, n, k, trans_a: false, trans_b: false, a_batched: true, b_batched: true }
    }
    /// op(A)[batch][i][kk]
    pub fn a_at(&self, a: &[f64], batch: usize, i: usize, kk: usize) -> f64 {
        let base = if self.a_batched { batch * self.m * self.k } else { 0 };
        a[base + if self.trans_a { kk * self.m + i } else { i * self.k + kk }]
    }
    /// op(B)[batch][kk][j]
    pub fn b_at(&self, b: &[f64], batch: usize, kk: usize, j: usize) -> f64 {
        let base = if self.b_batched { batch * self.k * self.n } else { 0 };
        b[base + if self.trans_b { j * self.k + kk } else { kk * self.n + j }]
    }
}

/// C[b] = op(A)[b]·op(B)[b] + bias (broadcast over rows) + c0 (when accumulating). Returns (batch, M, N).
pub fn matmul(s: &MatmulShape, a: &[f64], b: &[f64], bias: Option<&[f64]>, c0: Option<&[f64]>) -> Vec<f64> {
    let mut c = vec![0.0; s.batch * s.m * s.n];
    for bt in 0..s.batch {
        for i in 0..s.m {
            for j in 0..s.n {
                let mut acc = 0.0;
                for kk in 0..s.k {
                    acc += s.a_at(a, bt, i, kk) * s.b_at(b, bt, kk, j);
                }
                let idx = (bt * s.m + i) * s.n + j;
                c[idx] = acc + bias.map_or(0.0, |v| v[j]) + c0.map_or(0.0, |v| v[idx]);
            }
        }
    }
    c
}

/// Gradients of a plain (untransposed, batched) matmul C = A·B given dC:
/// dA = dC·Bᵀ (batch, M, K) and dB = Aᵀ·dC (batch, K, N); dbias = sum of dC over batch and rows.
pub fn matmul_backward(s: &MatmulShape, a: &[f64], b: &[f64], dc: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (m, n, k) = (s.m, s.n, s.k);
    let mut da = vec![0.0; s.batch * m * k];
    let mut db = vec![0.0; s.batch * k * n];
    let mut dbias = vec![0.0; n];
    for bt in 0..s.batch {
        for i in 0..m {
            for j in 0..n {
                let g = dc[(bt * m + i) * n + j];
                dbias[j] += g;
                for kk in 0..k {
                    // dL/dA[i,kk] = sum_j dC[i,j] B[kk,j] ; dL/dB[kk,j] = sum_i A[i,kk] dC[i,j]
                    da[(bt * m + i) * k + kk] += g * b[(bt * k + kk) * n + j];
                    db[(bt * k + kk) * n + j] += g * a[(bt * m + i) * k + kk];
                }
            }
        }
    }
    (da, db, dbias)
}

/// Visit every (output element, weight tap, input element) triple of a convolution that lies inside the input:
/// `f(y_index, w_index, x_index)`. The forward and both backward references are this one loop nest, so they
/// agree on geometry by construction; the finite-difference tests check the calculus.
fn conv2d_for_each(s: &ConvShape, mut f: impl FnMut(usize, usize, usize)) {
    let g = s.cfg.groups;
    let (cin_g, cout_g) = (s.in_c / g, s.out_c / g);
    for n in 0..s.batch {
        for co in 0..s.out_c {
            let group = co / cout_g;
            for oh in 0..s.out_h {
                for ow in 0..s.out_w {
                    let y_i = ((n * s.out_c + co) * s.out_h + oh) * s.out_w + ow;
                    for ci in 0..cin_g {
                        for kh in 0..s.kernel_h {
                            for kw in 0..s.kernel_w {
                                let ih =
                                    (oh * s.cfg.stride.0 + kh * s.cfg.dilation.0) as isize - s.cfg.padding.top as isize;
                                let iw = (ow * s.cfg.stride.1 + kw * s.cfg.dilation.1) as isize
                                    - s.cfg.padding.left as isize;
                                if ih < 0 || iw < 0 || ih >= s.in_h as isize || iw >= s.in_w as isize {
                                    continue; // zero padding
                                }
                                let x_i =
                                    ((n * s.in_c + group * cin_g + ci) * s.in_h + ih as usize) * s.in_w + iw as usize;
                                let w_i = ((co * cin_g + ci) * s.kernel_h + kh) * s.kernel_w + kw;
                                f(y_i, w_i, x_i);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// y = conv2d(x, w) + bias, NCHW (`ConvShape` gives the geometry).
pub fn conv2d_forward(s: &ConvShape, x: &[f64], w: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
    let mut y = vec![0.0; s.y_shape().iter().product()];
    conv2d_for_each(s, |yi, wi, xi| y[yi] += w[wi] * x[xi]);
    if let Some(b) = bias {
        let plane = s.out_h * s.out_w;
        y.iter_mut().enumerate().for_each(|(i, v)| *v += b[(i / plane) % s.out_c]);
    }
    y
}

/// dx: every y element sends dy * w back to the x elements it read.
pub fn conv2d_backward_data(s: &ConvShape, dy: &[f64], w: &[f64]) -> Vec<f64> {
    let mut dx = vec![0.0; s.x_shape().iter().product()];
    conv2d_for_each(s, |yi, wi, xi| dx[xi] += dy[yi] * w[wi]);
    dx
}

/// dw: every tap collects dy * x over all the places it was used.
pub fn conv2d_backward_weight(s: &ConvShape, dy: &[f64], x: &[f64]) -> Vec<f64> {
    let mut dw = vec![0.0; s.w_shape().iter().product()];
    conv2d_for_each(s, |yi, wi, xi| dw[wi] += dy[yi] * x[xi]);
    dw
}

/// out = x + y
pub fn add(x: &[f64], y: &[f64]) -> Vec<f64> {
    x.iter().zip(y).map(|(a, b)| a + b).collect()
}

/// out = alpha * x (also its own backward: dx = alpha * dy)
pub fn scale(x: &[f64], alpha: f64) -> Vec<f64> {
    x.iter().map(|v| alpha * v).collect()
}

pub fn relu_forward(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| v.max(0.0)).collect()
}

/// dx = dy where x > 0 (x the forward input; the gradient at exactly 0 is 0, as in PyTorch)
pub fn relu_backward(x: &[f64], dy: &[f64]) -> Vec<f64> {
    x.iter().zip(dy).map(|(&v, &g)| if v > 0.0 { g } else { 0.0 }).collect()
}

pub fn relu6_forward(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| v.clamp(0.0, 6.0)).collect()
}

/// dx = dy where 0 < x < 6 (PyTorch's hardtanh backward)
pub fn relu6_backward(x: &[f64], dy: &[f64]) -> Vec<f64> {
    x.iter().zip(dy).map(|(&v, &g)| if v > 0.0 && v < 6.0 { g } else { 0.0 }).collect()
}

/// out[m] = sum over o, i of x[(o * mid + m) * inner + i]
pub fn sum_reduce(x: &[f64], outer: usize, mid: usize, inner: usize) -> Vec<f64> {
    let mut out = vec![0.0; mid];
    for o in 0..outer {
        for (m, slot) in out.iter_mut().enumerate() {
            for i in 0..inner {
                *slot += x[(o * mid + m) * inner + i];
            }
        }
    }
    out
}

fn log_softmax_row(row: &[f64]) -> Vec<f64> {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    row.iter().map(|v| v - lse).collect()
}

/// Mean over rows of -sum_c q_c log softmax(x)_c with q = (1 - eps) onehot + eps / C.
pub fn softmax_cross_entropy_forward(logits: &[f64], labels: &[u32], classes: usize, smoothing: f64) -> f64 {
    let batch = labels.len();
    let mut total = 0.0;
    for (r, &y) in labels.iter().enumerate() {
        let ls = log_softmax_row(&logits[r * classes..(r + 1) * classes]);
        for (c, l) in ls.iter().enumerate() {
            let q = smoothing / classes as f64 + if c == y as usize { 1.0 - smoothing } else { 0.0 };
            total -= q * l;
        }
    }
    total / batch as f64
}

/// d(scale * loss)/dlogits = scale * (softmax - q) / batch
pub fn softmax_cross_entropy_backward(
    logits: &[f64],
    labels: &[u32],
    classes: usize,
    smoothing: f64,
    scale: f64,
) -> Vec<f64> {
    let batch = labels.len();
    let mut d = vec![0.0; logits.len()];
    for (r, &y) in labels.iter().enumerate() {
        let ls = log_softmax_row(&logits[r * classes..(r + 1) * classes]);
        for (c, l) in ls.iter().enumerate() {
            let q = smoothing / classes as f64 + if c == y as usize { 1.0 - smoothing } else { 0.0 };
            d[r * classes + c] = scale * (l.exp() - q) / batch as f64;
        }
    }
    d
}

/// Rows whose first maximal logit equals the label.
pub fn correct_count(logits: &[f64], labels: &[u32], classes: usize) -> usize {
    labels
        .iter()
        .enumerate()
        .filter(|&(r, &y)| {
            let row = &logits[r * classes..(r + 1) * classes];
            let mut best = 0;
            for c in 1..classes {
                if row[c] > row[best] {
                    best = c;
                }
            }
            best == y as usize
        })
        .count()
}

/// fastai's SGD step, in place: weight decay (decoupled or L2), buf = mom * buf + g, p -= lr * buf.
pub fn sgd_step(p: &mut [f64], g: &[f64], buf: &mut [f64], lr: f64, mom: f64, wd: f64, decoupled: bool) {
    for i in 0..p.len() {
        let mut grad = g[i];
        if decoupled {
            p[i] *= 1.0 - lr * wd;
        } else {
            grad += wd * p[i];
        }
        buf[i] = mom * buf[i] + grad;
        p[i] -= lr * buf[i];
    }
}

/// fastai's Adam step at 1-based `step`, in place (moments debiased by 1 - beta^step).
#[allow(clippy::too_many_arguments)]
pub fn adam_step(
    p: &mut [f64],
    g: &[f64],
    grad_avg: &mut [f64],
    sqr_avg: &mut [f64],
    step: i32,
    lr: f64,
    mom: f64,
    sqr_mom: f64,
    eps: f64,
    wd: f64,
    decoupled: bool,
) {
    let debias1 = 1.0 - mom.powi(step);
    let debias2 = 1.0 - sqr_mom.powi(step);
    for i in 0..p.len() {
        let mut grad = g[i];
        if decoupled {
            p[i] *= 1.0 - lr * wd;
        } else {
            grad += wd * p[i];
        }
        grad_avg[i] = mom * grad_avg[i] + (1.0 - mom) * grad;
        sqr_avg[i] = sqr_mom * sqr_avg[i] + (1.0 - sqr_mom) * grad * grad;
        p[i] -= lr / debias1 * grad_avg[i] / ((sqr_avg[i] / debias2).sqrt() + eps);
    }
}

/// Central finite difference of `f` with respect to `x[i]`.
pub fn finite_difference(x: &[f64], i: usize, h: f64, f: impl Fn(&[f64]) -> f64) -> f64 {
    let mut xp = x.to_vec();
    xp[i] += h;
    let mut xm = x.to_vec();
    xm[i] -= h;
    (f(&xp) - f(&xm)) / (2.0 * h)
}

/// A small seeded generator (SplitMix64) so tests and tools draw the same numbers on every machine.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    /// `n` values uniform in [lo, hi), rounded to f32 (so CPU and GPU see the same inputs).
    pub fn vec_f32(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi) as f32).collect()
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

/// f32 -> f64 for feeding GPU inputs to the reference.
pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[cfg(test)]
mod tests {
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

    /// Elementwise backward rules against L = sum(f(x) ⊙ g), away from the kinks of relu/relu6.
    #[test]
    fn elementwise_backward_matches_finite_differences() {
        let mut rng = SplitMix(2);
        let x: Vec<f64> = widen(&rng.vec_f32(64, -2.0, 8.0))
            .into_iter()
            .filter(|v| v.abs() > 1e-3 && (v - 6.0).abs() > 1e-3)
            .collect();
        let g = widen(&rng.vec_f32(x.len(), -1.0, 1.0));
        let dot = |v: Vec<f64>| v.iter().zip(&g).map(|(a, b)| a * b).sum::<f64>();
        let relu_dx = relu_backward(&x, &g);
        let relu6_dx = relu6_backward(&x, &g);
        let scale_dx = scale(&g, 0.75);
        let y = widen(&rng.vec_f32(x.len(), -1.0, 1.0));
        for i in 0..x.len() {
            assert_fd(relu_dx[i], finite_difference(&x, i, H, |v| dot(relu_forward(v))), "relu");
            assert_fd(relu6_dx[i], finite_difference(&x, i, H, |v| dot(relu6_forward(v))), "relu6");
            assert_fd(scale_dx[i], finite_difference(&x, i, H, |v| dot(scale(v, 0.75))), "scale");
            // add: dL/dx = dL/dy = g
            assert_fd(g[i], finite_difference(&x, i, H, |v| dot(add(v, &y))), "add");
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
}
