//! Checkpoints of a run: the whole training state written atomically after every epoch (and on an interrupt), and
//! read back to resume, mid-epoch if need be. A checkpoint resumes only a run with the same settings.

use std::path::Path;

use super::{EpochRecord, Learner, Partial};
use crate::error::{Error, Result};
use crate::graph::TensorKind;
use crate::nn::weights::{write_atomically, Weights};
use crate::reference::SplitMix;

/// The prefix of the best epoch's weights in a checkpoint.
const BEST: &str = "best:";

impl Learner {
    /// The settings that must match for a checkpoint to resume: the configuration (less what does not change the
    /// training) and the classes.
    fn fingerprint(&self) -> String {
        serde_json::json!({ "config": self.cfg, "classes": self.spec.classes }).to_string()
    }

    blocking! {
        /// Write the training state after `epochs_done` epochs: weights, optimizer moments and steps, the
        /// augmentation RNG, the records so far.
        pub fn save_checkpoint(
            &self,
            path: &Path,
            epochs_done: u64,
            records: &[EpochRecord],
            partial: Option<Partial>
        ) -> Result<()> => save_checkpoint_async
    }

    pub async fn save_checkpoint_async(
        &self,
        path: &Path,
        epochs_done: u64,
        records: &[EpochRecord],
        partial: Option<Partial>,
    ) -> Result<()> {
        let (mut tensors, counters) = self.ex.training_state_async().await?;
        // The save-best watch and the best epoch's weights, so a resumed run keeps what it would have kept.
        tensors.extend(self.best_weights.iter().map(|(n, s, v)| (format!("{BEST}{n}"), s.clone(), v.clone())));
        let mut meta = self.spec.metadata();
        meta.insert("wgtune.checkpoint".into(), self.fingerprint());
        meta.insert("wgtune.counters".into(), counters);
        meta.insert("wgtune.epochs_done".into(), epochs_done.to_string());
        meta.insert("wgtune.rng".into(), self.rng.0.to_string());
        meta.insert("wgtune.records".into(), serde_json::to_string(records).unwrap_or_default());
        meta.insert("wgtune.smooth".into(), serde_json::to_string(&self.smooth).unwrap_or_default());
        meta.insert("wgtune.history".into(), serde_json::to_string(&self.history).unwrap_or_default());
        meta.insert("wgtune.watch".into(), serde_json::to_string(&self.watch).unwrap_or_default());
        if let Some(p) = partial {
            meta.insert("wgtune.partial".into(), serde_json::to_string(&p).unwrap_or_default());
        }
        write_atomically(path, &tensors, meta)
    }

    /// Restore a checkpoint of this same run: returns the epochs already done, their records, and where an
    /// interrupted epoch stopped.
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<(u64, Vec<EpochRecord>, Option<Partial>)> {
        let bad = |why: &str| Error::Invalid(format!("cannot resume from '{}': {why}", path.display()));
        if !path.exists() {
            return Err(bad(
                "there is no checkpoint there (one is written after every epoch and on Ctrl-C of a run with the same \
                 --out); start without --resume",
            ));
        }
        let w = Weights::open(path)?;
        let meta = w.metadata()?;
        let fingerprint = meta.get("wgtune.checkpoint").ok_or_else(|| bad("it is not a wgtune checkpoint"))?;
        if *fingerprint != self.fingerprint() {
            return Err(bad(&format!(
                "it was made with other settings ({fingerprint}); run with the same options, or without --resume"
            )));
        }
        // Weights::get refuses non-finite values, naming the file and the tensor.
        let get = |name: &str| -> Result<Vec<f32>> {
            w.get(name)?.map(|(_, v)| v).ok_or_else(|| bad(&format!("tensor '{name}' is missing")))
        };
        let counters = meta.get("wgtune.counters").ok_or_else(|| bad("no counters"))?;
        self.ex.restore_training_state(&get, counters).map_err(|e| match e {
            Error::Invalid(why) if !why.starts_with("cannot resume") => bad(&why),
            e => e,
        })?;
        self.rng = SplitMix(meta.get("wgtune.rng").and_then(|r| r.parse().ok()).ok_or_else(|| bad("no RNG state"))?);
        let done = meta.get("wgtune.epochs_done").and_then(|d| d.parse().ok()).ok_or_else(|| bad("no epoch count"))?;
        let records = serde_json::from_str(meta.get("wgtune.records").map_or("[]", String::as_str))
            .map_err(|e| bad(&e.to_string()))?;
        let json = |key: &str, default: &str| meta.get(key).map_or(default, String::as_str).to_string();
        self.smooth = serde_json::from_str(&json("wgtune.smooth", "{\"avg\":0.0,\"count\":0}"))
            .map_err(|e| bad(&e.to_string()))?;
        self.history = serde_json::from_str(&json("wgtune.history", "[]")).map_err(|e| bad(&e.to_string()))?;
        self.watch = serde_json::from_str(&json("wgtune.watch", "{}")).map_err(|e| bad(&e.to_string()))?;
        self.best_weights.clear();
        let model =
            self.ex.graph().tensors.iter().filter(|t| matches!(t.kind, TensorKind::Param { .. } | TensorKind::State));
        for info in model.clone() {
            if let Some((shape, values)) = w.get(&format!("{BEST}{}", info.name))? {
                self.best_weights.push((info.name.clone(), shape, values));
            }
        }
        if !self.best_weights.is_empty() && self.best_weights.len() != model.count() {
            return Err(bad("it holds only some of the best epoch's weights"));
        }
        let partial = match meta.get("wgtune.partial") {
            Some(p) => Some(serde_json::from_str(p).map_err(|e| bad(&e.to_string()))?),
            None => None,
        };
        Ok((done, records, partial))
    }
}
