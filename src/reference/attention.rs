//! The pieces attention is built from: axis permutation and softmax over the last axis of scaled scores (the
//! batched products are [`super::matmul`]).

/// x (of `shape`) with its axes reordered: output axis d is input axis `perm[d]`.
pub fn permute(x: &[f64], shape: &[usize], perm: &[usize]) -> Vec<f64> {
    let out_shape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
    let mut in_strides = vec![1usize; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        in_strides[a] = in_strides[a + 1] * shape[a + 1];
    }
    (0..x.len())
        .map(|i| {
            let (mut rest, mut src) = (i, 0);
            for d in (0..perm.len()).rev() {
                src += (rest % out_shape[d]) * in_strides[perm[d]];
                rest /= out_shape[d];
            }
            x[src]
        })
        .collect()
}

/// softmax(scale * x) over consecutive rows of `len`.
pub fn softmax_rows(x: &[f64], len: usize, scale: f64) -> Vec<f64> {
    x.chunks(len)
        .flat_map(|row| {
            let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(scale * v));
            let e: Vec<f64> = row.iter().map(|&v| (scale * v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect()
}

/// dx of [`softmax_rows`] from its output y: scale * y * (dy - sum over the row of dy * y).
pub fn softmax_rows_backward(y: &[f64], dy: &[f64], len: usize, scale: f64) -> Vec<f64> {
    y.chunks(len)
        .zip(dy.chunks(len))
        .flat_map(|(y, dy)| {
            let dot: f64 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
            y.iter().zip(dy).map(move |(&y, &d)| scale * y * (d - dot)).collect::<Vec<_>>()
        })
        .collect()
}

/// Channels start .. start + len (dimension 1) of x seen as (outer, channels, inner).
pub fn slice(x: &[f64], (outer, channels, inner): (usize, usize, usize), start: usize, len: usize) -> Vec<f64> {
    (0..outer)
        .flat_map(|o| x[(o * channels + start) * inner..(o * channels + start + len) * inner].iter().copied())
        .collect()
}

/// dx of [`slice`]: dy placed at its channels, zeros elsewhere.
pub fn slice_backward(dy: &[f64], (outer, channels, inner): (usize, usize, usize), start: usize) -> Vec<f64> {
    let len = dy.len() / (outer * inner);
    let mut dx = vec![0.0; outer * channels * inner];
    for o in 0..outer {
        dx[(o * channels + start) * inner..(o * channels + start + len) * inner]
            .copy_from_slice(&dy[o * len * inner..(o + 1) * len * inner]);
    }
    dx
}

/// x (one sample) repeated `n` times.
pub fn expand(x: &[f64], n: usize) -> Vec<f64> {
    (0..n).flat_map(|_| x.iter().copied()).collect()
}
