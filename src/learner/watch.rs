//! fastai's SaveModelCallback and EarlyStoppingCallback: watch one epoch-end metric, remember the epoch where it
//! was best, and stop a phase after `patience` epochs without improvement. As fastai's (`reset_on_fit=True`), the
//! watch starts over with every phase (every `fit` of fine_tune), and at a phase's end the best epoch's weights are
//! loaded back — so the unfrozen phase starts from the frozen phase's best epoch, and the saved model is the
//! unfrozen phase's best epoch.

use super::EpochRecord;
use crate::error::{Error, Result};

/// The metric watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    /// Lower is better.
    ValidLoss,
    /// Higher is better.
    Accuracy,
}

impl Monitor {
    pub const ALL: [Monitor; 2] = [Monitor::ValidLoss, Monitor::Accuracy];

    pub fn name(self) -> &'static str {
        match self {
            Monitor::ValidLoss => "valid_loss",
            Monitor::Accuracy => "accuracy",
        }
    }

    pub fn parse(s: &str) -> Result<Monitor> {
        Monitor::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| Error::Invalid(format!("unknown metric '{s}' (expected valid_loss or accuracy)")))
    }

    /// The record's value of this metric.
    pub fn of(self, r: &EpochRecord) -> f64 {
        match self {
            Monitor::ValidLoss => r.valid_loss,
            Monitor::Accuracy => r.accuracy,
        }
    }

    /// Whether `value` beats `best` (anything finite beats nothing; a NaN never improves).
    fn improves(self, value: f64, best: Option<f64>) -> bool {
        value.is_finite()
            && best.is_none_or(|b| match self {
                Monitor::ValidLoss => value < b,
                Monitor::Accuracy => value > b,
            })
    }
}

/// The watch over the current phase; kept in checkpoints so that a resumed run decides as an uninterrupted one.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Watch {
    /// The phase watched; a record of another phase starts the watch over.
    pub phase: String,
    /// The best value so far in the phase.
    pub best: Option<f64>,
    /// The epoch (within the phase) of `best`.
    pub best_epoch: usize,
    /// Epochs since `best` (fastai's `wait`).
    pub since: usize,
}

/// What one epoch meant to the watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The epoch is the phase's best so far.
    pub improved: bool,
    /// `patience` epochs in a row did not improve: the phase ends here.
    pub stop: bool,
}

impl Watch {
    /// Take the epoch `r` into account.
    pub fn observe(&mut self, monitor: Monitor, patience: Option<usize>, r: &EpochRecord) -> Verdict {
        if self.phase != r.phase {
            *self = Watch { phase: r.phase.clone(), ..Watch::default() };
        }
        let value = monitor.of(r);
        let improved = monitor.improves(value, self.best);
        if improved {
            self.best = Some(value);
            self.best_epoch = r.epoch;
            self.since = 0;
        } else {
            self.since += 1;
        }
        Verdict { improved, stop: patience.is_some_and(|p| self.since >= p) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(phase: &str, epoch: usize, valid_loss: f64, accuracy: f64) -> EpochRecord {
        EpochRecord {
            phase: phase.into(),
            epoch,
            train_loss: 1.0,
            valid_loss,
            accuracy,
            error_rate: 1.0 - accuracy,
            fbeta: None,
            seconds: 0.0,
            improved: None,
            early_stop: false,
            kept_epoch: None,
            confusion: None,
        }
    }

    /// Runs a scripted phase; returns (improved epochs, the epoch it stopped after, best epoch).
    fn script(monitor: Monitor, patience: Option<usize>, values: &[(f64, f64)]) -> (Vec<usize>, Option<usize>, usize) {
        let mut w = Watch::default();
        let mut improved = vec![];
        for (e, &(loss, acc)) in values.iter().enumerate() {
            let v = w.observe(monitor, patience, &record("unfrozen", e, loss, acc));
            if v.improved {
                improved.push(e);
            }
            if v.stop {
                return (improved, Some(e), w.best_epoch);
            }
        }
        (improved, None, w.best_epoch)
    }

    #[test]
    fn best_epoch_by_valid_loss_and_by_accuracy() {
        let values = [(0.9, 0.50), (0.7, 0.60), (0.8, 0.70), (0.7, 0.65), (0.6, 0.60)];
        // Equal is no improvement (fastai compares with <).
        assert_eq!(script(Monitor::ValidLoss, None, &values), (vec![0, 1, 4], None, 4));
        assert_eq!(script(Monitor::Accuracy, None, &values), (vec![0, 1, 2], None, 2));
    }

    #[test]
    fn early_stop_after_patience_epochs_without_improvement() {
        let values = [(0.9, 0.5), (0.7, 0.6), (0.8, 0.6), (0.75, 0.6), (0.5, 0.9), (0.4, 0.9)];
        assert_eq!(script(Monitor::ValidLoss, Some(1), &values), (vec![0, 1], Some(2), 1));
        assert_eq!(script(Monitor::ValidLoss, Some(2), &values), (vec![0, 1], Some(3), 1));
        assert_eq!(script(Monitor::ValidLoss, Some(3), &values), (vec![0, 1, 4, 5], None, 5));
        // Accuracy flat from epoch 1 to 3: patience 2 stops after epoch 3.
        assert_eq!(script(Monitor::Accuracy, Some(2), &values), (vec![0, 1], Some(3), 1));
    }

    #[test]
    fn nan_never_improves_and_a_new_phase_starts_over() {
        assert_eq!(script(Monitor::ValidLoss, Some(2), &[(f64::NAN, 0.5), (f64::NAN, 0.5)]), (vec![], Some(1), 0));
        let mut w = Watch::default();
        w.observe(Monitor::ValidLoss, Some(1), &record("frozen", 0, 0.2, 0.9));
        assert!(w.observe(Monitor::ValidLoss, Some(1), &record("frozen", 1, 0.3, 0.9)).stop);
        let v = w.observe(Monitor::ValidLoss, Some(1), &record("unfrozen", 0, 0.5, 0.8));
        assert_eq!(v, Verdict { improved: true, stop: false }, "a worse value than the last phase's best still counts");
        assert_eq!((w.phase.as_str(), w.best, w.since), ("unfrozen", Some(0.5), 0));
    }

    #[test]
    fn monitor_names_round_trip() {
        for m in Monitor::ALL {
            assert_eq!(Monitor::parse(m.name()).unwrap(), m);
        }
        assert!(Monitor::parse("loss").unwrap_err().to_string().contains("valid_loss or accuracy"));
    }
}
