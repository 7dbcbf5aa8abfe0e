//! Per-position and per-channel ops over one axis of a tensor seen as (outer, C, inner): layer norm (over C at
//! every (outer, inner) position: ConvNeXt's LayerNorm2d on NCHW with inner = H*W, a transformer's LayerNorm over
//! the last dimension with inner = 1), layer scale (y = gamma[c] * x) and drop path (one dropout draw per sample).

#![allow(clippy::needless_range_loop)] // index loops read like the math here

use super::dropout_keep;

/// A tensor as (outer, channels, inner): element (o, c, i) at (o * channels + c) * inner + i.
pub type Axis = (usize, usize, usize);

fn at(&(_, c, inner): &Axis, o: usize, ch: usize, i: usize) -> usize {
    (o * c + ch) * inner + i
}

/// Mean and 1 / sqrt(biased variance + eps) over the channels at each (outer, inner) position (position
/// o * inner + i).
pub fn layer_norm_statistics(x: &[f64], axis: Axis, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let (outer, c, inner) = axis;
    let mut mean = Vec::with_capacity(outer * inner);
    let mut rstd = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let m = (0..c).map(|ch| x[at(&axis, o, ch, i)]).sum::<f64>() / c as f64;
            let v = (0..c).map(|ch| (x[at(&axis, o, ch, i)] - m).powi(2)).sum::<f64>() / c as f64;
            mean.push(m);
            rstd.push(1.0 / (v + eps).sqrt());
        }
    }
    (mean, rstd)
}

/// y = gamma[c] * (x - mean) * rstd + beta[c], the statistics of x's own position. Returns (y, mean, rstd).
pub fn layer_norm_forward(
    x: &[f64],
    axis: Axis,
    gamma: &[f64],
    beta: &[f64],
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (outer, c, inner) = axis;
    let (mean, rstd) = layer_norm_statistics(x, axis, eps);
    let mut y = vec![0.0; x.len()];
    for o in 0..outer {
        for ch in 0..c {
            for i in 0..inner {
                let k = at(&axis, o, ch, i);
                let pos = o * inner + i;
                y[k] = gamma[ch] * (x[k] - mean[pos]) * rstd[pos] + beta[ch];
            }
        }
    }
    (y, mean, rstd)
}

/// Gradients of layer norm by the textbook chain rule through each position's mean and variance. Returns (dx,
/// dgamma, dbeta).
pub fn layer_norm_backward(
    dy: &[f64],
    x: &[f64],
    axis: Axis,
    gamma: &[f64],
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (outer, c, inner) = axis;
    let (mean, rstd) = layer_norm_statistics(x, axis, eps);
    let mut dx = vec![0.0; x.len()];
    let mut dgamma = vec![0.0; c];
    let mut dbeta = vec![0.0; c];
    for o in 0..outer {
        for i in 0..inner {
            let pos = o * inner + i;
            let (m, r) = (mean[pos], rstd[pos]);
            let mut dvar = 0.0;
            let mut dmean = 0.0;
            for ch in 0..c {
                let k = at(&axis, o, ch, i);
                dgamma[ch] += dy[k] * (x[k] - m) * r;
                dbeta[ch] += dy[k];
                let dxhat = dy[k] * gamma[ch];
                // var = mean over C of (x - mean)^2: d xhat / d var = -(x - mean) / 2 * rstd^3
                dvar += dxhat * (x[k] - m) * -0.5 * r.powi(3);
                dmean -= dxhat * r;
            }
            for ch in 0..c {
                let k = at(&axis, o, ch, i);
                dx[k] = dy[k] * gamma[ch] * r + dvar * 2.0 * (x[k] - m) / c as f64 + dmean / c as f64;
            }
        }
    }
    (dx, dgamma, dbeta)
}

/// y = gamma[c] * x (ConvNeXt's and CaiT's layer scale).
pub fn layer_scale_forward(x: &[f64], axis: Axis, gamma: &[f64]) -> Vec<f64> {
    x.iter().enumerate().map(|(k, &v)| gamma[(k / axis.2) % axis.1] * v).collect()
}

/// Returns (dx, dgamma): dx = gamma[c] * dy, dgamma[c] = sum of dy * x over the channel.
pub fn layer_scale_backward(dy: &[f64], x: &[f64], axis: Axis, gamma: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut dgamma = vec![0.0; axis.1];
    let dx = dy
        .iter()
        .enumerate()
        .map(|(k, &d)| {
            let ch = (k / axis.2) % axis.1;
            dgamma[ch] += d * x[k];
            gamma[ch] * d
        })
        .collect();
    (dx, dgamma)
}

/// Drop path (stochastic depth): sample n of x (each `per` elements long) is kept, scaled by 1 / (1 - p), when the
/// dropout hash of (seed, step, n) passes `threshold`, and zeroed otherwise; `per` 1 is dropout. Backward is the
/// same map on dy.
pub fn drop_path(x: &[f64], per: usize, seed: u32, step: u32, threshold: u32, scale: f64) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(k, &v)| if dropout_keep(seed, step, (k / per) as u32, threshold) { v * scale } else { 0.0 })
        .collect()
}
