//! The CPU twin of every kernel: plain loops in f64, written for clarity, never for speed. This is the oracle
//! the GPU kernels are tested against, and each backward here is itself checked by central finite differences
//! (the tests at the bottom). Names match the WGSL entry points.

use crate::ops::conv::ConvShape;
use crate::ops::pool::PoolShape;

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

/// Visit the in-bounds input positions of every pooling window: `f(plane, y_index_in_plane, x_index_in_plane)`.
fn pool_for_each(s: &PoolShape, mut f: impl FnMut(usize, usize, usize)) {
    for plane in 0..s.batch * s.channels {
        for oh in 0..s.out_h {
            for ow in 0..s.out_w {
                for kh in 0..s.cfg.kernel.0 {
                    for kw in 0..s.cfg.kernel.1 {
                        let ih = (oh * s.cfg.stride.0 + kh) as isize - s.cfg.padding.top as isize;
                        let iw = (ow * s.cfg.stride.1 + kw) as isize - s.cfg.padding.left as isize;
                        if ih >= 0 && iw >= 0 && (ih as usize) < s.in_h && (iw as usize) < s.in_w {
                            f(plane, oh * s.out_w + ow, ih as usize * s.in_w + iw as usize);
                        }
                    }
                }
            }
        }
    }
}

/// Max pooling: values and the in-plane position of the first maximum of each window.
pub fn max_pool_forward(s: &PoolShape, x: &[f64]) -> (Vec<f64>, Vec<u32>) {
    let (yp, xp) = (s.out_h * s.out_w, s.in_h * s.in_w);
    let mut y = vec![f64::NEG_INFINITY; s.batch * s.channels * yp];
    let mut idx = vec![u32::MAX; y.len()];
    pool_for_each(s, |plane, yi, xi| {
        let (o, v) = (plane * yp + yi, x[plane * xp + xi]);
        if idx[o] == u32::MAX || v > y[o] {
            y[o] = v;
            idx[o] = xi as u32;
        }
    });
    (y, idx)
}

/// dx: each window's gradient goes to its maximum.
pub fn max_pool_backward(s: &PoolShape, dy: &[f64], indices: &[u32]) -> Vec<f64> {
    let (yp, xp) = (s.out_h * s.out_w, s.in_h * s.in_w);
    let mut dx = vec![0.0; s.batch * s.channels * xp];
    for (o, (&g, &i)) in dy.iter().zip(indices).enumerate() {
        dx[(o / yp) * xp + i as usize] += g;
    }
    dx
}

/// The divisor of output (oh, ow): the window clipped to the padded input (count_include_pad, PyTorch's default)
/// or to the real input.
fn avg_divisor(s: &PoolShape, oh: usize, ow: usize) -> f64 {
    let (kh, kw) = s.cfg.kernel;
    let h0 = (oh * s.cfg.stride.0) as isize - s.cfg.padding.top as isize;
    let w0 = (ow * s.cfg.stride.1) as isize - s.cfg.padding.left as isize;
    let (lo_h, hi_h, lo_w, hi_w) = if s.cfg.count_include_pad {
        (
            h0,
            (h0 + kh as isize).min((s.in_h + s.cfg.padding.bottom) as isize),
            w0,
            (w0 + kw as isize).min((s.in_w + s.cfg.padding.right) as isize),
        )
    } else {
        (h0.max(0), (h0 + kh as isize).min(s.in_h as isize), w0.max(0), (w0 + kw as isize).min(s.in_w as isize))
    };
    ((hi_h - lo_h) * (hi_w - lo_w)) as f64
}

pub fn avg_pool_forward(s: &PoolShape, x: &[f64]) -> Vec<f64> {
    let (yp, xp) = (s.out_h * s.out_w, s.in_h * s.in_w);
    let mut y = vec![0.0; s.batch * s.channels * yp];
    pool_for_each(s, |plane, yi, xi| {
        y[plane * yp + yi] += x[plane * xp + xi] / avg_divisor(s, yi / s.out_w, yi % s.out_w)
    });
    y
}

pub fn avg_pool_backward(s: &PoolShape, dy: &[f64]) -> Vec<f64> {
    let (yp, xp) = (s.out_h * s.out_w, s.in_h * s.in_w);
    let mut dx = vec![0.0; s.batch * s.channels * xp];
    pool_for_each(s, |plane, yi, xi| {
        dx[plane * xp + xi] += dy[plane * yp + yi] / avg_divisor(s, yi / s.out_w, yi % s.out_w)
    });
    dx
}

/// Mean over each (n, c) plane of `hw` values: (N*C).
pub fn global_avg_pool_forward(x: &[f64], hw: usize) -> Vec<f64> {
    x.chunks(hw).map(|plane| plane.iter().sum::<f64>() / hw as f64).collect()
}

/// Max over each plane and its first position.
pub fn global_max_pool_forward(x: &[f64], hw: usize) -> (Vec<f64>, Vec<u32>) {
    x.chunks(hw)
        .map(|plane| {
            let mut best = 0;
            for (i, &v) in plane.iter().enumerate() {
                if v > plane[best] {
                    best = i;
                }
            }
            (plane[best], best as u32)
        })
        .unzip()
}

/// Per-channel batch mean and biased variance of x (N, C, HW).
pub fn batch_norm_statistics(x: &[f64], n: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    let m = (n * hw) as f64;
    let at = |b: usize, ch: usize, i: usize| x[(b * c + ch) * hw + i];
    let mean: Vec<f64> = (0..c)
        .map(|ch| (0..n).flat_map(|b| (0..hw).map(move |i| (b, i))).map(|(b, i)| at(b, ch, i)).sum::<f64>() / m)
        .collect();
    let var = (0..c)
        .map(|ch| {
            (0..n)
                .flat_map(|b| (0..hw).map(move |i| (b, i)))
                .map(|(b, i)| (at(b, ch, i) - mean[ch]).powi(2))
                .sum::<f64>()
                / m
        })
        .collect();
    (mean, var)
}

/// y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel of x (N, C, HW).
pub fn batch_norm_forward(
    x: &[f64],
    c: usize,
    hw: usize,
    stats: (&[f64], &[f64]),
    gamma: &[f64],
    beta: &[f64],
    eps: f64,
) -> Vec<f64> {
    let (mean, var) = stats;
    x.iter()
        .enumerate()
        .map(|(k, &v)| {
            let ch = (k / hw) % c;
            gamma[ch] * (v - mean[ch]) / (var[ch] + eps).sqrt() + beta[ch]
        })
        .collect()
}

/// Gradients of batch norm, by the textbook chain rule through mean and variance (training) or with the
/// statistics held constant (eval). Returns (dx, dgamma, dbeta).
pub fn batch_norm_backward(
    dy: &[f64],
    x: &[f64],
    (n, c, hw): (usize, usize, usize),
    gamma: &[f64],
    stats: (&[f64], &[f64]),
    eps: f64,
    eval: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mean, var) = stats;
    let m = (n * hw) as f64;
    let ch_of = |k: usize| (k / hw) % c;
    let mut dgamma = vec![0.0; c];
    let mut dbeta = vec![0.0; c];
    let mut dvar = vec![0.0; c];
    let mut dmean = vec![0.0; c];
    for k in 0..x.len() {
        let ch = ch_of(k);
        let inv = 1.0 / (var[ch] + eps).sqrt();
        dgamma[ch] += dy[k] * (x[k] - mean[ch]) * inv;
        dbeta[ch] += dy[k];
        let dxhat = dy[k] * gamma[ch];
        // var = mean((x - mean)^2): d/dvar of xhat = -(x - mean) / 2 * (var + eps)^(-3/2)
        dvar[ch] += dxhat * (x[k] - mean[ch]) * -0.5 * inv.powi(3);
        dmean[ch] -= dxhat * inv;
    }
    let dx = (0..x.len())
        .map(|k| {
            let ch = ch_of(k);
            let inv = 1.0 / (var[ch] + eps).sqrt();
            let direct = dy[k] * gamma[ch] * inv;
            if eval {
                direct
            } else {
                // d mean/dx = 1/m; d var/dx = 2 (x - mean) / m (the mean's own dependence sums to zero)
                direct + dvar[ch] * 2.0 * (x[k] - mean[ch]) / m + dmean[ch] / m
            }
        })
        .collect();
    (dx, dgamma, dbeta)
}

/// PCG's output permutation: the hash behind dropout masks (shaders/dropout.wgsl).
pub fn pcg(v: u32) -> u32 {
    let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// Whether dropout keeps element `i` at (seed, step) for a given threshold (= round(p * 2^32)).
pub fn dropout_keep(seed: u32, step: u32, i: u32, threshold: u32) -> bool {
    pcg(i ^ pcg(step ^ pcg(seed))) >= threshold
}

/// The augmentation of shaders/augment.wgsl: per output pixel, an affine map into the input square, a bilinear
/// sample with reflection padding, fastai's lighting in logit space and the model's normalization.
/// `pixels` (N, P, P, 3), `transforms` (N) of [m0..m5, contrast, brightness_logit]; returns (N, 3, S, S).
pub fn augment(
    pixels: &[u8],
    (n, in_size, out_size): (usize, usize, usize),
    transforms: &[[f32; 8]],
    scale: [f32; 3],
    shift: [f32; 3],
    lighting: bool,
) -> Vec<f64> {
    let reflect = |c: f64| {
        let last = (in_size - 1) as f64;
        if last <= 0.0 {
            return 0.0;
        }
        let t = c.abs() % (2.0 * last);
        if t > last {
            2.0 * last - t
        } else {
            t
        }
    };
    let mut out = vec![0.0; n * 3 * out_size * out_size];
    for (img, t) in transforms.iter().enumerate().take(n) {
        let t = t.map(|v| v as f64);
        for y in 0..out_size {
            for x in 0..out_size {
                let u = (x as f64 + 0.5) / out_size as f64 * 2.0 - 1.0;
                let v = (y as f64 + 0.5) / out_size as f64 * 2.0 - 1.0;
                let sx = t[0] * u + t[1] * v + t[2];
                let sy = t[3] * u + t[4] * v + t[5];
                let px = reflect((sx + 1.0) * 0.5 * in_size as f64 - 0.5);
                let py = reflect((sy + 1.0) * 0.5 * in_size as f64 - 0.5);
                let (x0, y0) = (px.floor() as usize, py.floor() as usize);
                let (x1, y1) = ((x0 + 1).min(in_size - 1), (y0 + 1).min(in_size - 1));
                let (fx, fy) = (px - x0 as f64, py - y0 as f64);
                for c in 0..3 {
                    let at = |yy: usize, xx: usize| pixels[((img * in_size + yy) * in_size + xx) * 3 + c] as f64;
                    let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                    let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                    let mut q = (top * (1.0 - fy) + bottom * fy) / 255.0;
                    if lighting {
                        let qc = q.clamp(1e-6, 1.0 - 1e-6);
                        let l = (qc / (1.0 - qc)).ln() * t[6] + t[7];
                        q = 1.0 / (1.0 + (-l).exp());
                    }
                    out[((img * 3 + c) * out_size + y) * out_size + x] = q * 255.0 * scale[c] as f64 + shift[c] as f64;
                }
            }
        }
    }
    out
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

/// softmax of each row of `classes` logits.
pub fn softmax_forward(logits: &[f64], classes: usize) -> Vec<f64> {
    logits.chunks(classes).flat_map(|row| log_softmax_row(row).into_iter().map(f64::exp)).collect()
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
}
