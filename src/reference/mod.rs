//! The CPU twin of every kernel: plain loops in f64, written for clarity, never for speed. This is the oracle
//! the GPU kernels are tested against, and each backward here is itself checked by central finite differences
//! (the tests at the bottom). Names match the WGSL entry points.

use crate::ops::conv::ConvShape;
use crate::ops::pool::PoolShape;

mod attention;
mod layer_norm;
mod loss;
pub use attention::*;
pub use layer_norm::*;
pub use loss::*;

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
/// sample with reflection padding, fastai's lighting in logit space, the model's normalization, then MixUp/CutMix.
/// `pixels` (N, P, P, 3), `transforms` (N) of [m0..m5, contrast, brightness_logit, partner, pixel_lam, cut box x0
/// y0 x1 y1, _, _]; returns (N, 3, S, S). Mixing after the normalization equals mixing before it (the weights sum
/// to 1).
pub fn augment(
    pixels: &[u8],
    (n, in_size, out_size): (usize, usize, usize),
    transforms: &[[f32; 16]],
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
    let plane = out_size * out_size;
    let mut mixed = out.clone();
    for (img, t) in transforms.iter().enumerate().take(n) {
        let partner = t[8] as usize;
        for y in 0..out_size {
            for x in 0..out_size {
                let (fx, fy) = (x as f32, y as f32);
                let inside = fx >= t[10] && fx < t[12] && fy >= t[11] && fy < t[13];
                let w = if inside { 0.0 } else { t[9] as f64 };
                for c in 0..3 {
                    let at = |i: usize| out[(i * 3 + c) * plane + y * out_size + x];
                    mixed[(img * 3 + c) * plane + y * out_size + x] = w * at(img) + (1.0 - w) * at(partner);
                }
            }
        }
    }
    mixed
}

// The element-wise family, one element at a time: f(x, y, alpha) with y the second operand (or dy for a
// backward rule) and alpha the kernel's scalar. `crate::ops::elementwise` lists them beside their WGSL entry points.

/// out = x + y
pub fn add(x: f64, y: f64, _alpha: f64) -> f64 {
    x + y
}

/// out = alpha * x (also its own backward: dx = alpha * dy)
pub fn scale(x: f64, _y: f64, alpha: f64) -> f64 {
    alpha * x
}

pub fn relu_forward(x: f64, _y: f64, _alpha: f64) -> f64 {
    x.max(0.0)
}

/// dx = dy where x > 0 (x the forward input; the gradient at exactly 0 is 0, as in PyTorch)
pub fn relu_backward(x: f64, dy: f64, _alpha: f64) -> f64 {
    if x > 0.0 {
        dy
    } else {
        0.0
    }
}

pub fn relu6_forward(x: f64, _y: f64, _alpha: f64) -> f64 {
    x.clamp(0.0, 6.0)
}

/// dx = dy where 0 < x < 6 (PyTorch's hardtanh backward)
pub fn relu6_backward(x: f64, dy: f64, _alpha: f64) -> f64 {
    if x > 0.0 && x < 6.0 {
        dy
    } else {
        0.0
    }
}

/// out = x for x > 0, slope * x otherwise (slope = alpha; PyTorch's LeakyReLU)
pub fn leaky_relu_forward(x: f64, _y: f64, slope: f64) -> f64 {
    if x > 0.0 {
        x
    } else {
        slope * x
    }
}

/// dx = dy for x > 0, slope * dy otherwise (x the forward input; at exactly 0 the slope side, as in PyTorch)
pub fn leaky_relu_backward(x: f64, dy: f64, slope: f64) -> f64 {
    if x > 0.0 {
        dy
    } else {
        slope * dy
    }
}

/// GELU, exact form (PyTorch's default): x * Phi(x), Phi the standard normal CDF = (1 + erf(x / sqrt 2)) / 2
pub fn gelu_forward(x: f64, _y: f64, _alpha: f64) -> f64 {
    x * normal_cdf(x)
}

/// dx = dy * (Phi(x) + x * phi(x)), phi the standard normal density (x the forward input)
pub fn gelu_backward(x: f64, dy: f64, _alpha: f64) -> f64 {
    dy * (normal_cdf(x) + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt())
}

/// GELU, tanh form (PyTorch's `approximate="tanh"`): x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))
pub fn gelu_tanh_forward(x: f64, _y: f64, _alpha: f64) -> f64 {
    0.5 * x * (1.0 + gelu_tanh_inner(x).0.tanh())
}

/// dx = dy * d/dx of [`gelu_tanh_forward`] (x the forward input)
pub fn gelu_tanh_backward(x: f64, dy: f64, _alpha: f64) -> f64 {
    let (u, du) = gelu_tanh_inner(x);
    let t = u.tanh();
    dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
}

/// The tanh form's argument u(x) = sqrt(2 / pi) (x + 0.044715 x^3) and its derivative.
fn gelu_tanh_inner(x: f64) -> (f64, f64) {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    (k * (x + 0.044715 * x * x * x), k * (1.0 + 3.0 * 0.044715 * x * x))
}

/// The standard normal CDF.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// An element rule over whole tensors: out[i] = f(x[i], y[i] or 0, alpha).
pub fn elementwise(f: fn(f64, f64, f64) -> f64, x: &[f64], y: Option<&[f64]>, alpha: f64) -> Vec<f64> {
    match y {
        Some(y) => x.iter().zip(y).map(|(&a, &b)| f(a, b, alpha)).collect(),
        None => x.iter().map(|&a| f(a, 0.0, alpha)).collect(),
    }
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

/// Weight decay of one parameter, fastai's way: decoupled (p *= 1 - lr * wd, the gradient unchanged) or L2 (the
/// gradient gains wd * p). Returns the gradient the update uses.
fn weight_decay(p: &mut f64, grad: f64, lr: f64, wd: f64, decoupled: bool) -> f64 {
    if decoupled {
        *p *= 1.0 - lr * wd;
        grad
    } else {
        grad + wd * *p
    }
}

/// Gradient accumulation, `mode` as shaders/accumulate.wgsl: 0 `sum = g * scale`, 1 `sum += g * scale`, 2
/// `g = sum + g * scale`.
pub fn accumulate_gradients(grad: &mut [f64], sum: &mut [f64], mode: u32, scale: f64) {
    for (g, s) in grad.iter_mut().zip(sum.iter_mut()) {
        match mode {
            0 => *s = *g * scale,
            1 => *s += *g * scale,
            _ => *g = *s + *g * scale,
        }
    }
}

/// fastai's SGD step, in place: weight decay (decoupled or L2), buf = mom * buf + g, p -= lr * buf.
pub fn sgd_step(p: &mut [f64], g: &[f64], buf: &mut [f64], lr: f64, mom: f64, wd: f64, decoupled: bool) {
    for i in 0..p.len() {
        let grad = weight_decay(&mut p[i], g[i], lr, wd, decoupled);
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
        let grad = weight_decay(&mut p[i], g[i], lr, wd, decoupled);
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

/// rand_distr's samplers (MixUp's Beta distribution) draw from the same seeded stream.
impl rand_core::RngCore for SplitMix {
    fn next_u32(&mut self) -> u32 {
        (SplitMix::next_u64(self) >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        SplitMix::next_u64(self)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = SplitMix::next_u64(self).to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

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
mod tests;
