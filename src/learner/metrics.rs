//! What a run reports besides its losses: lr_find's curve and fastai's valley suggestion, the confusion matrix.

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
}
