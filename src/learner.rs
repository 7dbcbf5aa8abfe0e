//! fastai's fine_tune on the GPU: a pretrained body with fastai's head, trained in the phases of
//! [`schedule::fine_tune`](crate::schedule::fine_tune) on batches from the data pipeline, with one epoch record
//! (smoothed train loss, valid loss, accuracy, error rate, time) per epoch.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::data::augment::{AugmentConfig, ImageTransform};
use crate::data::dataset::Dataset;
use crate::data::loader::{Loader, LoaderConfig};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::executor::{Executor, ExecutorConfig, PixelInput};
use crate::nn::model::{Head, ModelSpec};
use crate::nn::weights::{load_into, write_atomically, Weights};
use crate::nn::Arch;
use crate::ops::optim::{Hyper, Optimizer};
use crate::reference::SplitMix;
use crate::schedule::{fine_tune, Phase};

/// Everything `finetune` can be told; defaults are fastai's.
#[derive(Clone, Debug, PartialEq)]
pub struct FineTuneConfig {
    pub arch: Arch,
    pub epochs: usize,
    pub freeze_epochs: usize,
    pub lr: f64,
    pub lr_mult: f64,
    pub pct_start: f64,
    pub div: f64,
    pub wd: f64,
    pub bs: usize,
    pub size: usize,
    /// Side of the square images are decoded to before the GPU augments them to `size`.
    pub presize: usize,
    pub seed: u64,
    pub optimizer: Optimizer,
    pub freeze_bn: bool,
    pub bn_momentum: f32,
    pub augment: bool,
    pub workers: usize,
}

impl Default for FineTuneConfig {
    fn default() -> Self {
        FineTuneConfig {
            arch: Arch::EffnetLite0,
            epochs: 1,
            freeze_epochs: 1,
            lr: 2e-3,
            lr_mult: 100.0,
            pct_start: 0.3,
            div: 5.0,
            wd: 0.01,
            bs: 32,
            size: 224,
            presize: 256,
            seed: 42,
            optimizer: Optimizer::Adam,
            freeze_bn: false,
            bn_momentum: 0.1,
            augment: true,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// One row of fastai's epoch table.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    pub phase: String,
    pub epoch: usize,
    pub train_loss: f64,
    pub valid_loss: f64,
    pub accuracy: f64,
    pub error_rate: f64,
    pub seconds: f64,
}

/// fastai's smoothed loss: exponential moving average with beta 0.98, debiased.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SmoothLoss {
    avg: f64,
    count: i32,
}

/// Where an interrupted epoch stopped: batches done, the smoothed loss so far.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Partial {
    pub batches: usize,
    pub smooth: SmoothLoss,
}

/// How an epoch ended.
#[derive(Clone, Debug, PartialEq)]
pub enum EpochEnd {
    Done(EpochRecord),
    /// The stop flag was raised: the epoch stopped after `Partial::batches` batches.
    Stopped(Partial),
}

impl SmoothLoss {
    pub fn add(&mut self, loss: f64) {
        self.count += 1;
        self.avg = 0.98 * self.avg + 0.02 * loss;
    }
    pub fn value(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.avg / (1.0 - 0.98f64.powi(self.count))
        }
    }
}

/// Progress while an epoch runs: (phase, epoch, batches done, batches in the epoch, smoothed loss).
pub type Progress<'a> = dyn FnMut(&str, usize, usize, usize, f64) + 'a;

/// A fine-tuning run: the model, its data and the settings.
pub struct Learner {
    pub ex: Executor,
    pub spec: ModelSpec,
    pub cfg: FineTuneConfig,
    train: Loader,
    valid: Loader,
    aug: AugmentConfig,
    rng: SplitMix,
}

impl Learner {
    /// Build the model (pretrained body + new fastai head for the data's classes) and the loaders.
    pub fn new(gpu: Arc<Gpu>, data: &Dataset, pretrained: &Weights, cfg: FineTuneConfig) -> Result<Learner> {
        let spec = ModelSpec {
            arch: cfg.arch,
            head: Head::Fastai,
            classes: data.classes.clone(),
            input_size: cfg.size,
            normalization: cfg.arch.normalization(),
        };
        let graph = spec.graph(cfg.bs, cfg.bn_momentum)?;
        let groups = graph.groups();
        let mut ex = Executor::new(gpu, graph, ExecutorConfig { optimizer: cfg.optimizer, freeze_bn: cfg.freeze_bn })?;
        let classifier = cfg.arch.classifier_prefix();
        load_into(
            &ex,
            pretrained,
            |n| n.to_string(),
            |n| n.starts_with("head."),
            |n| n.starts_with(classifier) || n.ends_with("num_batches_tracked"),
        )?;
        ex.set_pixel_input(PixelInput { presize: cfg.presize, normalization: spec.normalization })?;
        for g in 0..groups {
            ex.set_hyper(g, Hyper { wd: cfg.wd, ..Hyper::default() })?;
        }
        let loader = |items, shuffle, drop_last, presize| {
            Loader::new(
                items,
                LoaderConfig {
                    batch: cfg.bs,
                    presize,
                    shuffle,
                    drop_last,
                    seed: cfg.seed,
                    workers: cfg.workers,
                    prefetch: 2,
                },
            )
        };
        if data.train.len() < cfg.bs {
            return Err(Error::Invalid(format!(
                "{} training images do not fill one batch of {}: lower --bs",
                data.train.len(),
                cfg.bs
            )));
        }
        let train = loader(data.train.clone(), true, true, cfg.presize)?;
        // Validation: decoded straight to the centre crop; the GPU only normalizes (identity transform).
        let valid = loader(data.valid.clone(), false, false, cfg.presize)?;
        Ok(Learner {
            ex,
            spec,
            cfg: cfg.clone(),
            train,
            valid,
            aug: AugmentConfig::default(),
            rng: SplitMix(cfg.seed ^ 0xa11),
        })
    }

    /// The phases `fit` will run.
    pub fn phases(&self) -> Vec<Phase> {
        let c = &self.cfg;
        fine_tune(self.ex.graph().groups(), c.epochs, c.lr, c.freeze_epochs, c.lr_mult, c.pct_start, c.div)
    }

    /// Train one epoch of `phase` (epoch `epoch` of `epochs` in it) and validate; or, when `stop` is raised,
    /// stop after the current step. `from` resumes an epoch that stopped part-way.
    pub fn epoch(
        &mut self,
        phase: &Phase,
        epoch: usize,
        global_epoch: u64,
        progress: &mut Progress,
        from: Option<Partial>,
        stop: &AtomicBool,
    ) -> Result<EpochEnd> {
        let t0 = Instant::now();
        let per_epoch = self.train.batches();
        let total = (per_epoch * phase.epochs) as f64;
        let first = from.map_or(0, |p| p.batches);
        let mut smooth = from.map_or(SmoothLoss::default(), |p| p.smooth);
        let groups = self.ex.graph().groups();
        let mut done = first;
        let mut submitted = first;
        for (i, batch) in self.train.epoch_from(global_epoch, first).enumerate() {
            let batch = batch?;
            let pos = (epoch * per_epoch + first + i) as f64 / total;
            for g in 0..groups {
                let h = Hyper { lr: phase.schedule.lr(g, pos), mom: phase.schedule.mom(pos), ..self.ex.hyper(g) };
                self.ex.set_hyper(g, h)?;
            }
            let transforms: Vec<ImageTransform> = (0..self.cfg.bs)
                .map(|_| if self.cfg.augment { self.aug.sample(&mut self.rng) } else { ImageTransform::IDENTITY })
                .collect();
            self.ex.train_step_pixels(&batch.pixels, &transforms, &batch.labels)?;
            submitted += 1;
            for m in self.ex.poll_metrics()? {
                check_finite(m.loss, m.step)?;
                smooth.add(m.loss as f64);
                done += 1;
                progress(phase.name, epoch, done, per_epoch, smooth.value());
            }
            if stop.load(Ordering::SeqCst) && submitted < per_epoch {
                break;
            }
        }
        for m in self.ex.wait_metrics()? {
            check_finite(m.loss, m.step)?;
            smooth.add(m.loss as f64);
            done += 1;
            progress(phase.name, epoch, done, per_epoch, smooth.value());
        }
        if done < per_epoch {
            return Ok(EpochEnd::Stopped(Partial { batches: done, smooth }));
        }
        let (valid_loss, accuracy) = self.validate()?;
        Ok(EpochEnd::Done(EpochRecord {
            phase: phase.name.to_string(),
            epoch,
            train_loss: smooth.value(),
            valid_loss,
            accuracy,
            error_rate: 1.0 - accuracy,
            seconds: t0.elapsed().as_secs_f64(),
        }))
    }

    /// Mean cross-entropy and accuracy over the validation set (padding rows of the last batch excluded).
    pub fn validate(&mut self) -> Result<(f64, f64)> {
        let k = self.spec.classes.len();
        let (mut loss, mut right, mut n) = (0.0, 0usize, 0usize);
        for batch in self.valid.epoch(0) {
            let batch = batch?;
            let probs = self.ex.predict_pixels(&batch.pixels)?;
            for r in 0..batch.real {
                let row = &probs[r * k..(r + 1) * k];
                let y = batch.labels[r] as usize;
                loss -= (row[y].max(1e-12) as f64).ln();
                let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
                right += usize::from(best == y);
                n += 1;
            }
        }
        Ok((loss / n.max(1) as f64, right as f64 / n.max(1) as f64))
    }

    /// Run every phase, calling `on_epoch` after each epoch. With `checkpoint`, the whole training state is
    /// written there (atomically) after every epoch, and where `stop` interrupts the run; with `resume`, training
    /// continues from such a file, mid-epoch if it was interrupted.
    pub fn fit(
        &mut self,
        progress: &mut Progress,
        on_epoch: &mut dyn FnMut(&EpochRecord),
        checkpoint: Option<&Path>,
        resume: Option<&Path>,
        stop: &AtomicBool,
    ) -> Result<Vec<EpochRecord>> {
        let (mut done, mut records, mut partial) = match resume {
            Some(path) => self.load_checkpoint(path)?,
            None => (0, Vec::new(), None),
        };
        for r in &records {
            on_epoch(r);
        }
        let mut global = 0u64;
        for phase in self.phases() {
            for e in 0..phase.epochs {
                if global < done {
                    global += 1;
                    continue;
                }
                if (e == 0 && partial.is_none()) || self.ex.is_trainable(0) != (phase.frozen_to == 0) {
                    self.ex.freeze_to(phase.frozen_to)?;
                }
                match self.epoch(&phase, e, global, progress, partial.take(), stop)? {
                    EpochEnd::Done(r) => {
                        global += 1;
                        done = global;
                        records.push(r.clone());
                        if let Some(path) = checkpoint {
                            self.save_checkpoint(path, done, &records, None)?;
                        }
                        on_epoch(&r);
                    }
                    EpochEnd::Stopped(p) => {
                        let saved = match checkpoint {
                            Some(path) => {
                                self.save_checkpoint(path, done, &records, Some(p))?;
                                format!("the checkpoint is {}; continue with --resume", path.display())
                            }
                            None => "no checkpoint was asked for".into(),
                        };
                        return Err(Error::Interrupted(format!(
                            "interrupted in {} epoch {e} after {} of {} batches: {saved}",
                            phase.name,
                            p.batches,
                            self.train.batches()
                        )));
                    }
                }
            }
        }
        Ok(records)
    }

    /// The settings that must match for a checkpoint to resume (everything but the worker count).
    fn fingerprint(&self) -> String {
        let c = &self.cfg;
        format!(
            "{} e{} f{} lr{} m{} p{} d{} wd{} bs{} s{} ps{} seed{} {:?} fbn{} bnm{} aug{} classes{:?}",
            c.arch.name(),
            c.epochs,
            c.freeze_epochs,
            c.lr,
            c.lr_mult,
            c.pct_start,
            c.div,
            c.wd,
            c.bs,
            c.size,
            c.presize,
            c.seed,
            c.optimizer,
            c.freeze_bn,
            c.bn_momentum,
            c.augment,
            self.spec.classes
        )
    }

    /// Write the training state after `epochs_done` epochs: weights, optimizer moments and steps, the
    /// augmentation RNG, the records so far.
    pub fn save_checkpoint(
        &self,
        path: &Path,
        epochs_done: u64,
        records: &[EpochRecord],
        partial: Option<Partial>,
    ) -> Result<()> {
        let (tensors, counters) = self.ex.training_state()?;
        let mut meta = self.spec.metadata();
        meta.insert("wgtune.checkpoint".into(), self.fingerprint());
        meta.insert("wgtune.counters".into(), counters);
        meta.insert("wgtune.epochs_done".into(), epochs_done.to_string());
        meta.insert("wgtune.rng".into(), self.rng.0.to_string());
        meta.insert("wgtune.records".into(), serde_json::to_string(records).unwrap_or_default());
        if let Some(p) = partial {
            meta.insert("wgtune.partial".into(), serde_json::to_string(&p).unwrap_or_default());
        }
        write_atomically(path, &tensors, meta)
    }

    /// Restore a checkpoint of this same run: returns the epochs already done, their records, and where an
    /// interrupted epoch stopped.
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<(u64, Vec<EpochRecord>, Option<Partial>)> {
        let w = Weights::open(path)?;
        let meta = w.metadata()?;
        let bad = |why: &str| Error::Invalid(format!("cannot resume from '{}': {why}", path.display()));
        let fingerprint = meta.get("wgtune.checkpoint").ok_or_else(|| bad("it is not a wgtune checkpoint"))?;
        if *fingerprint != self.fingerprint() {
            return Err(bad(&format!(
                "it was made with other settings ({fingerprint}); run with the same options, or without --resume"
            )));
        }
        let get = |name: &str| -> Result<Vec<f32>> {
            w.get(name)?.map(|(_, v)| v).ok_or_else(|| bad(&format!("tensor '{name}' is missing")))
        };
        self.ex.restore_training_state(&get, meta.get("wgtune.counters").ok_or_else(|| bad("no counters"))?)?;
        self.rng = SplitMix(meta.get("wgtune.rng").and_then(|r| r.parse().ok()).ok_or_else(|| bad("no RNG state"))?);
        let done = meta.get("wgtune.epochs_done").and_then(|d| d.parse().ok()).ok_or_else(|| bad("no epoch count"))?;
        let records = serde_json::from_str(meta.get("wgtune.records").map_or("[]", String::as_str))
            .map_err(|e| bad(&e.to_string()))?;
        let partial = match meta.get("wgtune.partial") {
            Some(p) => Some(serde_json::from_str(p).map_err(|e| bad(&e.to_string()))?),
            None => None,
        };
        Ok((done, records, partial))
    }
}

fn check_finite(loss: f32, step: u64) -> Result<()> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "the training loss became {loss} at step {step}: the learning rate is probably too high (try a lower --lr)"
        )))
    }
}
