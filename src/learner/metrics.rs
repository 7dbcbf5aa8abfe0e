//! What a run reports besides its losses: lr_find's curve and fastai's valley suggestion, the confusion matrix.

use crate::ops::loss::Loss;

/// What lr_find recorded: the learning rate and smoothed loss of every step, and the suggested rate.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LrFind {
    pub lrs: Vec<f64>,
    pub losses: Vec<f64>,
    /// fastai's 'valley': a point inside the longest decreasing run of the curve.
    pub suggestion: Option<f64>,
    /// The loss diverged (over 4x the best) before the last iteration.
    pub stopped_early: bool,
}

/// fastai's `valley` suggestion: the index of the longest decreasing subsequence of `losses`, taken at about
/// half of the way through it (start + 1/3 + 1/6 of its span).
pub fn valley(losses: &[f64]) -> usize {
    let n = losses.len();
    let mut lds = vec![1usize; n];
    let (mut max_start, mut max_end) = (0isize, 0usize);
    for i in 1..n {
        for j in 0..i {
            if losses[i] < losses[j] && lds[i] < lds[j] + 1 {
                lds[i] = lds[j] + 1;
            }
            if lds[max_end] < lds[i] {
                max_end = i;
                max_start = max_end as isize - lds[max_end] as isize;
            }
        }
    }
    let sections = (max_end as isize - max_start) as f64 / 3.0;
    // fastai's start can be -1 (a run from the first point), where Python's indexing wraps; this clamps instead.
    (max_start + sections as isize + (sections / 2.0) as isize).clamp(0, n as isize - 1) as usize
}

/// Counts of (actual class, predicted class) over a validation pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Confusion {
    pub classes: Vec<String>,
    /// Row-major: `counts[actual * k + predicted]`.
    pub counts: Vec<u32>,
}

impl Confusion {
    pub fn new(classes: Vec<String>) -> Confusion {
        let k = classes.len();
        Confusion { classes, counts: vec![0; k * k] }
    }

    pub fn add(&mut self, actual: usize, predicted: usize) {
        let k = self.classes.len();
        self.counts[actual * k + predicted] += 1;
    }

    pub fn get(&self, actual: usize, predicted: usize) -> u32 {
        self.counts[actual * self.classes.len() + predicted]
    }

    /// Tally the first `real` rows of `probs` (rows of class probabilities) against `labels`; returns the rows'
    /// summed cross-entropy of the true class (probabilities floored at 1e-12).
    pub fn add_rows(&mut self, probs: &[f32], labels: &[u32], real: usize) -> f64 {
        let k = self.classes.len();
        let mut loss = 0.0;
        for (row, &y) in probs.chunks_exact(k).zip(labels).take(real) {
            let y = y as usize;
            loss -= (row[y].max(1e-12) as f64).ln();
            self.add(y, row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i));
        }
        loss
    }

    pub fn total(&self) -> usize {
        self.counts.iter().map(|&c| c as usize).sum()
    }

    pub fn accuracy(&self) -> f64 {
        let k = self.classes.len();
        let right: usize = (0..k).map(|i| self.get(i, i) as usize).sum();
        right as f64 / self.total().max(1) as f64
    }

    /// The off-diagonal cells, largest first (fastai's `most_confused`): (actual, predicted, count).
    pub fn most_confused(&self, min: u32) -> Vec<(&str, &str, u32)> {
        let k = self.classes.len();
        let mut out: Vec<_> = (0..k)
            .flat_map(|a| (0..k).map(move |p| (a, p)))
            .filter(|&(a, p)| a != p && self.get(a, p) >= min)
            .map(|(a, p)| (self.classes[a].as_str(), self.classes[p].as_str(), self.get(a, p)))
            .collect();
        out.sort_by_key(|x| std::cmp::Reverse(x.2));
        out
    }

    /// The matrix as text: one row per actual class, one column per predicted class.
    pub fn table(&self) -> String {
        let k = self.classes.len();
        let w = self.classes.iter().map(|c| c.len()).max().unwrap_or(1).max(6);
        let cw = self.counts.iter().max().map_or(1, |m| m.to_string().len()).max(3);
        let short = |c: &str| c.chars().take(cw).collect::<String>();
        let mut s = format!("rows: actual class, columns: predicted class\n{:>w$}", "");
        for c in &self.classes {
            s += &format!(" {:>cw$}", short(c));
        }
        s.push('\n');
        for a in 0..k {
            s += &format!("{:>w$}", self.classes[a]);
            for p in 0..k {
                s += &format!(" {:>cw$}", self.get(a, p));
            }
            s.push('\n');
        }
        s
    }
}

/// fastai's multi-label metrics over a validation pass at a threshold: accuracy_multi (the fraction of (image,
/// class) pairs where `probability > threshold` agrees with the label) and samples-averaged F-beta (F2 as fastai's
/// planet example: per image, from its true and false positives and false negatives; an image with neither
/// predicted nor true labels scores 0, as scikit-learn's default).
#[derive(Clone, Debug, PartialEq)]
pub struct MultiLabelScores {
    pub classes: usize,
    pub threshold: f32,
    pub beta: f64,
    rows: usize,
    right: usize,
    fbeta_sum: f64,
}

/// fastai's planet example scores F2.
pub const FBETA_BETA: f64 = 2.0;

impl MultiLabelScores {
    pub fn new(classes: usize, threshold: f32, beta: f64) -> MultiLabelScores {
        MultiLabelScores { classes, threshold, beta, rows: 0, right: 0, fbeta_sum: 0.0 }
    }

    /// Tally the first `real` rows of `probs` (sigmoid probabilities) against `labels` (class bitmasks of
    /// ceil(classes / 32) words per row); returns the rows' summed binary cross-entropy (the mean over classes of
    /// each row; probabilities kept within [1e-12, 1 - 1e-12]).
    pub fn add_rows(&mut self, probs: &[f32], labels: &[u32], real: usize) -> f64 {
        let (k, words) = (self.classes, self.classes.div_ceil(32));
        let b2 = self.beta * self.beta;
        let mut loss = 0.0;
        for (row, set) in probs.chunks_exact(k).zip(labels.chunks_exact(words)).take(real) {
            let (mut tp, mut fp, mut fn_, mut row_loss) = (0usize, 0usize, 0usize, 0.0);
            for (c, &p) in row.iter().enumerate() {
                let truth = set[c / 32] >> (c % 32) & 1 == 1;
                let q = (p as f64).clamp(1e-12, 1.0 - 1e-12);
                row_loss -= if truth { q.ln() } else { (1.0 - q).ln() };
                match (p > self.threshold, truth) {
                    (true, true) => tp += 1,
                    (true, false) => fp += 1,
                    (false, true) => fn_ += 1,
                    (false, false) => {}
                }
            }
            self.right += k - fp - fn_;
            let denominator = (1.0 + b2) * tp as f64 + b2 * fn_ as f64 + fp as f64;
            if denominator > 0.0 {
                self.fbeta_sum += (1.0 + b2) * tp as f64 / denominator;
            }
            self.rows += 1;
            loss += row_loss / k as f64;
        }
        loss
    }

    pub fn total(&self) -> usize {
        self.rows
    }

    pub fn accuracy(&self) -> f64 {
        self.right as f64 / (self.rows * self.classes).max(1) as f64
    }

    pub fn fbeta(&self) -> f64 {
        self.fbeta_sum / self.rows.max(1) as f64
    }
}

/// A validation pass's scores: the confusion matrix of a single-label model, or a multi-label model's.
#[derive(Clone, Debug, PartialEq)]
pub enum Scores {
    Single(Confusion),
    Multi(MultiLabelScores),
}

impl Scores {
    /// Empty scores for a model of `classes` with `loss`.
    pub fn new(classes: &[String], loss: Loss) -> Scores {
        match loss {
            Loss::SigmoidBinaryCrossEntropy { threshold } => {
                Scores::Multi(MultiLabelScores::new(classes.len(), threshold, FBETA_BETA))
            }
            Loss::SoftmaxCrossEntropy { .. } => Scores::Single(Confusion::new(classes.to_vec())),
        }
    }

    /// Tally the first `real` rows of a batch's probabilities against its labels; returns their summed loss.
    pub fn add_rows(&mut self, probs: &[f32], labels: &[u32], real: usize) -> f64 {
        match self {
            Scores::Single(c) => c.add_rows(probs, labels, real),
            Scores::Multi(m) => m.add_rows(probs, labels, real),
        }
    }

    /// Images scored.
    pub fn total(&self) -> usize {
        match self {
            Scores::Single(c) => c.total(),
            Scores::Multi(m) => m.total(),
        }
    }

    /// Accuracy (single-label) or accuracy_multi.
    pub fn accuracy(&self) -> f64 {
        match self {
            Scores::Single(c) => c.accuracy(),
            Scores::Multi(m) => m.accuracy(),
        }
    }

    /// Samples-averaged F-beta (multi-label only).
    pub fn fbeta(&self) -> Option<f64> {
        match self {
            Scores::Single(_) => None,
            Scores::Multi(m) => Some(m.fbeta()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fastai's valley on a curve that falls from index 1 to 11 and then rises: the longest decreasing run is
    /// 1..=11 (11 points), so max_start = 11 - 11 = 0 and the pick is 0 + 3 + 1 = index 4 (fastai's code gives 4).
    #[test]
    fn valley_picks_inside_the_longest_decrease() {
        let mut losses = vec![3.0, 3.1];
        losses.extend((0..10).map(|i| 3.0 - 0.2 * i as f64));
        losses.extend([2.0, 4.0, 9.0]);
        assert_eq!(valley(&losses), 4);
        assert_eq!(valley(&[1.0]), 0);
        assert_eq!(valley(&[2.0, 1.0]), 0);
    }

    #[test]
    fn confusion_counts_accuracy_and_most_confused() {
        let mut c = Confusion::new(vec!["cat".into(), "dog".into(), "fish".into()]);
        for (a, p) in [(0, 0), (0, 1), (0, 1), (1, 1), (2, 2), (2, 0)] {
            c.add(a, p);
        }
        assert_eq!(c.total(), 6);
        assert!((c.accuracy() - 0.5).abs() < 1e-12);
        assert_eq!(c.most_confused(1), vec![("cat", "dog", 2), ("fish", "cat", 1)]);
        let t = c.table();
        assert!(t.lines().nth(2).unwrap().ends_with("1   2   0") && t.contains("fish"), "{t}");
    }

    #[test]
    fn multi_label_scores_match_the_reference() {
        use crate::reference;
        let mut rng = reference::SplitMix(4);
        for classes in [1usize, 5, 33, 70] {
            let (rows, words) = (9, classes.div_ceil(32));
            let probs = rng.vec_f32(rows * classes, 0.0, 1.0);
            let mut labels = vec![0u32; rows * words];
            let mut dense = vec![0.0; rows * classes];
            for r in 0..rows {
                for c in 0..classes {
                    // Rows 0 and 1 have no labels (row 0 also no predictions at threshold 0.99 below).
                    if r > 1 && rng.uniform(0.0, 1.0) < 0.4 {
                        labels[r * words + c / 32] |= 1 << (c % 32);
                        dense[r * classes + c] = 1.0;
                    }
                }
            }
            for threshold in [0.5f32, 0.2, 0.99] {
                let mut m = MultiLabelScores::new(classes, threshold, 2.0);
                // The last two rows are padding.
                let loss = m.add_rows(&probs, &labels, rows - 2);
                let real = (rows - 2) * classes;
                let (p, t) = (reference::widen(&probs[..real]), &dense[..real]);
                let logits: Vec<f64> = p.iter().map(|&p| (p / (1.0 - p)).ln()).collect();
                let want_loss = reference::bce_with_logits_forward(&logits, t) * (rows - 2) as f64;
                assert!((loss - want_loss).abs() < 1e-6 * want_loss.abs(), "loss {loss} vs {want_loss}");
                let right = reference::multi_label_correct(&logits, t, threshold as f64) as f64 / real as f64;
                assert!((m.accuracy() - right).abs() < 1e-12, "accuracy {} vs {right}", m.accuracy());
                let f = reference::fbeta_samples(&p, t, classes, threshold as f64, 2.0);
                assert!((m.fbeta() - f).abs() < 1e-12, "fbeta {} vs {f} ({classes}, {threshold})", m.fbeta());
            }
        }
    }
}
