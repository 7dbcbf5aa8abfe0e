//! The classification losses in f64: softmax cross-entropy (hard, smoothed and soft targets), sigmoid binary
//! cross-entropy with logits, their counts, fastai's multi-label metrics, and the dense targets of the loss
//! kernels' target rows.

fn log_softmax_row(row: &[f64]) -> Vec<f64> {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    row.iter().map(|v| v - lse).collect()
}

/// One-hot targets (batch, classes) of class labels.
fn one_hot(labels: &[u32], classes: usize) -> Vec<f64> {
    labels.iter().flat_map(|&y| (0..classes).map(move |c| if c == y as usize { 1.0 } else { 0.0 })).collect()
}

/// Mean over rows of -sum_c q_c log softmax(x)_c with q = (1 - eps) onehot + eps / C.
pub fn softmax_cross_entropy_forward(logits: &[f64], labels: &[u32], classes: usize, smoothing: f64) -> f64 {
    soft_cross_entropy_forward(logits, &one_hot(labels, classes), classes, smoothing)
}

/// d(scale * loss)/dlogits = scale * (softmax - q) / batch
pub fn softmax_cross_entropy_backward(
    logits: &[f64],
    labels: &[u32],
    classes: usize,
    smoothing: f64,
    scale: f64,
) -> Vec<f64> {
    soft_cross_entropy_backward(logits, &one_hot(labels, classes), classes, smoothing, scale)
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

/// Dense targets (batch, classes) of target rows as [`crate::ops::loss::Targets`] lays them out:
/// lam * own labels + (1 - lam) * partner's labels, each a one-hot class or a multi-hot bitmask.
pub fn dense_targets(rows: &[u32], classes: usize, multi_label: bool) -> Vec<f64> {
    let w = if multi_label { classes.div_ceil(32) } else { 1 };
    let mut t = Vec::new();
    for row in rows.chunks_exact(2 * w + 1) {
        let lam = f32::from_bits(row[2 * w]) as f64;
        let set = |s: usize, c: usize| -> f64 {
            let words = &row[s * w..(s + 1) * w];
            let on = if multi_label { words[c / 32] >> (c % 32) & 1 == 1 } else { words[0] as usize == c };
            if on {
                1.0
            } else {
                0.0
            }
        };
        t.extend((0..classes).map(|c| lam * set(0, c) + (1.0 - lam) * set(1, c)));
    }
    t
}

/// Mean over rows of -sum_c q_c log softmax(x)_c with q = (1 - eps) t + eps / C, t (batch, C) dense targets.
pub fn soft_cross_entropy_forward(logits: &[f64], t: &[f64], classes: usize, smoothing: f64) -> f64 {
    let batch = t.len() / classes;
    let mut total = 0.0;
    for (x, t) in logits.chunks_exact(classes).zip(t.chunks_exact(classes)) {
        for (l, &tc) in log_softmax_row(x).iter().zip(t) {
            total -= ((1.0 - smoothing) * tc + smoothing / classes as f64) * l;
        }
    }
    total / batch as f64
}

/// d(scale * soft cross-entropy)/dlogits = scale * (softmax - q) / batch.
pub fn soft_cross_entropy_backward(logits: &[f64], t: &[f64], classes: usize, smoothing: f64, scale: f64) -> Vec<f64> {
    let batch = (t.len() / classes) as f64;
    let mut d = Vec::with_capacity(logits.len());
    for (x, t) in logits.chunks_exact(classes).zip(t.chunks_exact(classes)) {
        for (l, &tc) in log_softmax_row(x).iter().zip(t) {
            d.push(scale * (l.exp() - ((1.0 - smoothing) * tc + smoothing / classes as f64)) / batch);
        }
    }
    d
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Mean over every element of -(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))): binary cross-entropy with logits.
pub fn bce_with_logits_forward(logits: &[f64], t: &[f64]) -> f64 {
    let total: f64 = logits
        .iter()
        .zip(t)
        .map(|(&x, &t)| {
            let s = sigmoid(x);
            -(t * s.ln() + (1.0 - t) * (1.0 - s).ln())
        })
        .sum();
    total / logits.len() as f64
}

/// d(scale * bce)/dlogits = scale * (sigmoid(x) - t) / (batch * C).
pub fn bce_with_logits_backward(logits: &[f64], t: &[f64], scale: f64) -> Vec<f64> {
    let n = logits.len() as f64;
    logits.iter().zip(t).map(|(&x, &t)| scale * (sigmoid(x) - t) / n).collect()
}

pub fn sigmoid_forward(logits: &[f64]) -> Vec<f64> {
    logits.iter().map(|&x| sigmoid(x)).collect()
}

/// Elements where (sigmoid(x) > threshold) agrees with the 0/1 target: fastai's accuracy_multi times the count.
pub fn multi_label_correct(logits: &[f64], t: &[f64], threshold: f64) -> usize {
    logits.iter().zip(t).filter(|(&x, &t)| (sigmoid(x) > threshold) == (t > 0.5)).count()
}

/// Samples-averaged F-beta (scikit-learn's `fbeta_score(average='samples')`, which fastai's FBetaMulti calls) of
/// probabilities against 0/1 targets at `threshold`; a row with neither predicted nor true labels scores 0, as
/// scikit-learn's default `zero_division` gives.
pub fn fbeta_samples(probs: &[f64], t: &[f64], classes: usize, threshold: f64, beta: f64) -> f64 {
    let rows = probs.len() / classes;
    let b2 = beta * beta;
    let mut total = 0.0;
    for (p, t) in probs.chunks_exact(classes).zip(t.chunks_exact(classes)) {
        let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
        for (&p, &t) in p.iter().zip(t) {
            match (p > threshold, t > 0.5) {
                (true, true) => tp += 1.0,
                (true, false) => fp += 1.0,
                (false, true) => fn_ += 1.0,
                (false, false) => {}
            }
        }
        let denominator = (1.0 + b2) * tp + b2 * fn_ + fp;
        if denominator > 0.0 {
            total += (1.0 + b2) * tp / denominator;
        }
    }
    total / rows.max(1) as f64
}
