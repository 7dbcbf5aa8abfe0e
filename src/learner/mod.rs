//! fastai's fine_tune on the GPU: a pretrained body with fastai's head, trained in the phases of
//! [`schedule::fine_tune`](crate::schedule::fine_tune) on batches from the data pipeline, with one epoch record
//! (smoothed train loss, valid loss, accuracy, error rate, time) per epoch.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::clock::{Instant, PageYield};
use crate::data::augment::{AugmentConfig, ImageTransform, Mixing};
use crate::data::dataset::Dataset;
use crate::data::loader::{Loader, LoaderConfig};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
pub use crate::graph::executor::Split;
use crate::graph::executor::{Executor, ExecutorConfig, PixelBatch, PixelInput, StepMetrics};
use crate::nn::model::{Head, ModelSpec};
use crate::nn::weights::{load_into, Weights};
use crate::nn::Arch;
use crate::ops::loss::{Loss, DEFAULT_THRESHOLD};
use crate::ops::optim::{Hyper, Optimizer};
use crate::reference::SplitMix;

mod checkpoint;
mod metrics;
mod tta;
mod watch;

use crate::schedule::{fine_tune, Phase};
pub use metrics::{valley, Confusion, LrFind, MultiLabelScores, Scores, FBETA_BETA};
pub use tta::{tta_blend, tta_transforms, Tta, TTA_BETA, TTA_VIEWS};
pub use watch::{Monitor, Verdict, Watch};

/// Everything `finetune` can be told; defaults are fastai's. Serialized, it is the fingerprint a checkpoint must
/// match to resume: the fields that do not change the training (`workers`, `profile`, `capture_step`) are left
/// out.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
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
    /// Side of the square images are decoded to: the GPU's random crops for training take from it, and
    /// validation (and training without augmentation) keeps its centre `size` square, as `predict` does
    /// ([`crate::data::presize_for`]: 256 for 224).
    pub presize: usize,
    pub seed: u64,
    pub optimizer: Optimizer,
    pub freeze_bn: bool,
    pub bn_momentum: f32,
    pub augment: bool,
    /// Micro-batches of `bs` per optimizer step (gradient accumulation; 1: none).
    pub accum: usize,
    /// Activations' storage type (fastai's `to_fp16` with f16; see [`ExecutorConfig::precision`]).
    pub precision: crate::gpu::Precision,
    /// With f16: the dynamic loss scale's start ([`ExecutorConfig::loss_scale`]; 2^16, GradScaler's `init_scale`).
    #[serde(skip_serializing_if = "is_default_loss_scale")]
    pub loss_scale: f32,
    /// fastai's SaveModelCallback: at the end of every phase, load the weights of its best epoch by this metric.
    pub save_best: Option<Monitor>,
    /// fastai's EarlyStoppingCallback: end a phase after this many epochs without improvement of `save_best`'s
    /// metric (valid loss without it).
    pub early_stop: Option<usize>,
    /// fastai's MixUp or CutMix callback on the training batches (None: off, fastai's default).
    pub mixing: Option<Mixing>,
    /// A multi-label model's prediction threshold (accuracy_multi, F-beta, `predict`; fastai's default 0.5).
    pub threshold: f32,
    /// A timm model's (ConvNeXt, ViT) stochastic depth (timm's `drop_path_rate`; 0, timm's default, is off).
    pub drop_path: f64,
    #[serde(skip)]
    pub workers: usize,
    /// Time the second step of each phase dispatch by dispatch (kept in [`Learner::profiles`]).
    #[serde(skip)]
    pub profile: bool,
    /// Wrap training step N (1-based, counted over the run) in a graphics-debugger capture.
    #[serde(skip)]
    pub capture_step: Option<u64>,
}

/// The default start is left out of the fingerprint, so checkpoints written before the option existed still match.
fn is_default_loss_scale(s: &f32) -> bool {
    *s == crate::ops::scaler::DEFAULT_SCALE
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
            presize: crate::data::presize_for(224),
            seed: 42,
            optimizer: Optimizer::Adam,
            freeze_bn: false,
            bn_momentum: 0.1,
            augment: true,
            accum: 1,
            precision: crate::gpu::Precision::F32,
            loss_scale: crate::ops::scaler::DEFAULT_SCALE,
            save_best: None,
            early_stop: None,
            mixing: None,
            threshold: DEFAULT_THRESHOLD,
            drop_path: 0.0,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            profile: false,
            capture_step: None,
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
    /// Top-1 accuracy, or accuracy_multi for a multi-label model.
    pub accuracy: f64,
    pub error_rate: f64,
    /// A multi-label model's samples-averaged F2 (fastai's FBetaMulti(2, average='samples')).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fbeta: Option<f64>,
    pub seconds: f64,
    /// With `save_best` or `early_stop`: the epoch is its phase's best so far by the watched metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub improved: Option<bool>,
    /// Early stopping ended the phase after this epoch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub early_stop: bool,
    /// With `save_best`, on the phase's last epoch: the epoch (of this phase) whose weights the model now holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_epoch: Option<usize>,
    /// A single-label model's validation confusion matrix after the epoch (row-major counts, actual by predicted),
    /// for live displays (the web page draws it every epoch); not written to logs or checkpoints.
    #[serde(skip)]
    pub confusion: Option<Vec<u32>>,
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
    /// The smoothed loss of the current fit (phase): fastai resets it when a fit begins, not every epoch.
    smooth: SmoothLoss,
    /// Every training step's loss so far, in order (kept in checkpoints, for the loss curve).
    pub history: Vec<StepLoss>,
    /// Profiled steps (with `profile`): the phase and what its step's dispatches took.
    pub profiles: Vec<(String, crate::graph::executor::StepProfile)>,
    /// The best-epoch and early-stopping watch over the current phase.
    watch: Watch,
    /// With `save_best`: the weights of the current phase's best epoch.
    best_weights: Vec<crate::graph::executor::NamedTensor>,
    /// The batch was split into micro-batches because it did not fit the adapter.
    pub split: Option<Split>,
}

/// One training step's loss, for the loss curve.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepLoss {
    pub loss: f32,
    pub smooth: f32,
    /// With f16: the loss scaler skipped this step's update (its gradients overflowed; the scale halved).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

impl Learner {
    /// Build the model (pretrained body + new fastai head for the data's classes) and the loaders. Without
    /// `pretrained` the body keeps its random initialization (kaiming-normal convolutions, batch norm 1 and 0):
    /// the from-scratch baseline transfer learning is measured against.
    ///
    /// When a batch of `cfg.bs` would not fit the adapter's storage-binding limit, the batch is split into the
    /// fewest equal micro-batches that fit, trained with gradient accumulation (`cfg.bs` becomes the micro-batch,
    /// `cfg.accum` is multiplied by the parts; [`Learner::split`] says so).
    pub fn new(gpu: Arc<Gpu>, data: &Dataset, pretrained: Option<&Weights>, cfg: FineTuneConfig) -> Result<Learner> {
        let mut cfg = cfg;
        let loss = if data.multi_label {
            Loss::SigmoidBinaryCrossEntropy { threshold: cfg.threshold }
        } else {
            Loss::SoftmaxCrossEntropy { smoothing: 0.0 }
        };
        let spec = ModelSpec {
            arch: cfg.arch,
            head: Head::Fastai,
            classes: data.classes.clone(),
            input_size: cfg.size,
            normalization: cfg.arch.normalization(),
            loss,
        };
        let build = |cfg: &FineTuneConfig| -> Result<Executor> {
            let ex_cfg = ExecutorConfig {
                optimizer: cfg.optimizer,
                freeze_bn: cfg.freeze_bn,
                accum: cfg.accum,
                precision: cfg.precision,
                loss_scale: cfg.loss_scale,
                ..Default::default()
            };
            let graph = spec.training_graph(cfg.bs, cfg.bn_momentum, cfg.drop_path)?;
            let mut ex = Executor::new(gpu.clone(), graph, ex_cfg)?;
            // Training batches: the presized squares the random crops take from, or without augmentation the centre
            // crops validation sees.
            let presize = if cfg.augment { cfg.presize } else { cfg.size };
            ex.set_pixel_input(PixelInput { presize, normalization: spec.normalization })?;
            Ok(ex)
        };
        let mut ex = build(&cfg)?;
        let mut split = None;
        if let Some(s) = ex.split_to_fit()? {
            split = Some(s);
            cfg.bs = s.micro;
            cfg.accum *= s.parts;
            drop(ex);
            ex = build(&cfg)?;
        }
        let groups = ex.graph().groups();
        let classifier = cfg.arch.classifier_prefix();
        if let Some(pretrained) = pretrained {
            load_into(
                &ex,
                pretrained,
                |n| n.to_string(),
                |n| n.starts_with("head."),
                |n| n.starts_with(classifier) || n.ends_with("num_batches_tracked"),
            )?;
        }
        for g in 0..groups {
            ex.set_hyper(g, Hyper { wd: cfg.wd, ..Hyper::default() })?;
        }
        let loader = |items, shuffle, drop_last, crop| {
            Loader::new(
                items,
                LoaderConfig {
                    batch: cfg.bs,
                    presize: cfg.presize,
                    crop,
                    shuffle,
                    drop_last,
                    seed: cfg.seed,
                    workers: cfg.workers,
                    prefetch: 2,
                    targets: spec.loss.targets(spec.classes.len()),
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
        let train = loader(data.train.clone(), true, true, (!cfg.augment).then_some(cfg.size))?;
        // Validation: the centre crop of the presized image, as `predict` decodes; the GPU only normalizes
        // (identity transform).
        let valid = loader(data.valid.clone(), false, false, Some(cfg.size))?;
        Ok(Learner {
            ex,
            spec,
            cfg: cfg.clone(),
            train,
            valid,
            aug: AugmentConfig::default(),
            rng: SplitMix(cfg.seed ^ 0xa11),
            smooth: SmoothLoss::default(),
            history: Vec::new(),
            profiles: Vec::new(),
            watch: Watch::default(),
            best_weights: Vec::new(),
            split,
        })
    }

    /// Training steps per epoch (the last partial batch is dropped).
    pub fn steps_per_epoch(&self) -> usize {
        self.train.batches()
    }

    /// The augmentation of each image of the next training batch (identity without augmentation), with its
    /// MixUp/CutMix partner when the run mixes.
    fn transforms(&mut self, real: usize) -> Result<Vec<ImageTransform>> {
        let mut t: Vec<ImageTransform> = (0..self.cfg.bs)
            .map(|_| if self.cfg.augment { self.aug.sample(&mut self.rng) } else { ImageTransform::IDENTITY })
            .collect();
        if let Some(m) = self.cfg.mixing {
            m.apply(&mut t, real, self.cfg.size, &mut self.rng)?;
        }
        Ok(t)
    }

    /// The phases `fit` will run.
    pub fn phases(&self) -> Vec<Phase> {
        let c = &self.cfg;
        fine_tune(self.ex.graph().groups(), c.epochs, c.lr, c.freeze_epochs, c.lr_mult, c.pct_start, c.div)
    }

    blocking! {
        /// Train one epoch of `phase` (epoch `epoch` of `epochs` in it) and validate; or, when `stop` is raised,
        /// stop after the current step. `from` resumes an epoch that stopped part-way.
        pub fn epoch(
            &mut self,
            phase: &Phase,
            epoch: usize,
            global_epoch: u64,
            progress: &mut Progress<'_>,
            from: Option<Partial>,
            stop: &AtomicBool
        ) -> Result<EpochEnd> => epoch_async
    }

    pub async fn epoch_async(
        &mut self,
        phase: &Phase,
        epoch: usize,
        global_epoch: u64,
        progress: &mut Progress<'_>,
        from: Option<Partial>,
        stop: &AtomicBool,
    ) -> Result<EpochEnd> {
        let t0 = Instant::now();
        let per_epoch = self.train.batches();
        let total = (per_epoch * phase.epochs) as f64;
        let first = from.map_or(0, |p| p.batches);
        let mut smooth = from.map_or(if epoch == 0 { SmoothLoss::default() } else { self.smooth }, |p| p.smooth);
        let groups = self.ex.graph().groups();
        let mut done = first;
        let mut submitted = first;
        // The scaler counts skips over the run; the history marks the steps where that count grew.
        let mut skips = self.history.iter().filter(|s| s.skipped).count() as u32;
        // Arrived step losses: checked, smoothed, kept for the loss curve, reported.
        let mut record = |metrics: Vec<StepMetrics>,
                          done: &mut usize,
                          smooth: &mut SmoothLoss,
                          history: &mut Vec<StepLoss>|
         -> Result<()> {
            for m in metrics {
                check_finite(m.loss, m.step)?;
                smooth.add(m.loss as f64);
                let skipped = m.scaler.is_some_and(|s| s.skipped > skips);
                skips = m.scaler.map_or(skips, |s| s.skipped.max(skips));
                history.push(StepLoss { loss: m.loss, smooth: smooth.value() as f32, skipped });
                *done += 1;
                progress(phase.name, epoch, *done, per_epoch, smooth.value());
            }
            Ok(())
        };
        // With gradient accumulation a whole cycle of batches trains in one submission (Executor::train_cycle_pixels)
        // when the cycle starts in this epoch; profiled and captured runs keep one submission per batch.
        let k = self.cfg.accum;
        let grouping = k > 1 && !self.cfg.profile && self.cfg.capture_step.is_none();
        let mut group: Vec<(crate::data::loader::Batch, Vec<ImageTransform>)> = Vec::new();
        let mut page = PageYield::default();
        for (i, batch) in self.train.epoch_from(global_epoch, first).enumerate() {
            let batch = batch?;
            let pos = (epoch * per_epoch + first + i) as f64 / total;
            for g in 0..groups {
                let h = Hyper { lr: phase.schedule.lr(g, pos), mom: phase.schedule.mom(pos), ..self.ex.hyper(g) };
                self.ex.set_hyper(g, h)?;
            }
            let transforms = self.transforms(batch.real)?;
            if grouping && (!group.is_empty() || self.ex.accumulation_micro_step() == 0) {
                // The optimizer runs once, after the cycle's last batch, with that batch's learning rates: as when
                // each batch is its own submission.
                group.push((batch, transforms));
                if group.len() < k {
                    continue;
                }
                let micro: Vec<PixelBatch> = group
                    .iter()
                    .map(|(b, t)| PixelBatch { pixels: &b.pixels, transforms: t, labels: &b.labels })
                    .collect();
                self.ex.train_cycle_pixels_async(&micro).await?;
                submitted += group.len();
                group.clear();
            } else {
                // The second step this process runs in the phase's first epoch: compiled and warm, as every later
                // step (after a resume too, wherever in the epoch it resumed).
                let profile = self.cfg.profile && epoch == 0 && i == 1.min(per_epoch.saturating_sub(first + 1));
                if profile {
                    self.ex.profile_next_step();
                }
                let step = self.history.len() as u64 + (submitted - done) as u64 + 1;
                if self.cfg.capture_step == Some(step) {
                    self.ex.capture_next_step();
                }
                self.ex.train_step_pixels_async(&batch.pixels, &transforms, &batch.labels).await?;
                if let Some(p) = profile.then(|| self.ex.take_profile()).flatten() {
                    self.profiles.push((phase.name.to_string(), p));
                }
                submitted += 1;
            }
            record(self.ex.poll_metrics()?, &mut done, &mut smooth, &mut self.history)?;
            page.now_and_then().await;
            if stop.load(Ordering::SeqCst) && submitted < per_epoch {
                break;
            }
        }
        // A cycle the epoch's end cut short: its batches train one by one, and the cycle goes on in the next epoch.
        for (batch, transforms) in group.drain(..) {
            self.ex.train_step_pixels_async(&batch.pixels, &transforms, &batch.labels).await?;
        }
        record(self.ex.wait_metrics_async().await?, &mut done, &mut smooth, &mut self.history)?;
        self.smooth = smooth;
        if done < per_epoch {
            return Ok(EpochEnd::Stopped(Partial { batches: done, smooth }));
        }
        let (valid_loss, scores) = self.validate_scores_async().await?;
        let accuracy = scores.accuracy();
        Ok(EpochEnd::Done(EpochRecord {
            phase: phase.name.to_string(),
            epoch,
            train_loss: smooth.value(),
            valid_loss,
            accuracy,
            error_rate: 1.0 - accuracy,
            fbeta: scores.fbeta(),
            seconds: t0.elapsed().as_secs_f64(),
            improved: None,
            early_stop: false,
            kept_epoch: None,
            confusion: match &scores {
                Scores::Single(c) => Some(c.counts.clone()),
                Scores::Multi(_) => None,
            },
        }))
    }

    blocking! {
        /// Mean loss and accuracy (accuracy_multi for a multi-label model) over the validation set (padding rows of
        /// the last batch excluded).
        pub fn validate(&mut self) -> Result<(f64, f64)> => validate_async
    }

    pub async fn validate_async(&mut self) -> Result<(f64, f64)> {
        let (loss, scores) = self.validate_scores_async().await?;
        Ok((loss, scores.accuracy()))
    }

    blocking! {
        /// Mean loss over the validation set and its scores: the confusion matrix (single-label) or accuracy_multi
        /// and F-beta (multi-label).
        pub fn validate_scores(&mut self) -> Result<(f64, Scores)> => validate_scores_async
    }

    pub async fn validate_scores_async(&mut self) -> Result<(f64, Scores)> {
        let mut scores = Scores::new(&self.spec.classes, self.spec.loss);
        let mut loss = 0.0;
        let mut page = PageYield::default();
        for batch in self.valid.epoch(0) {
            let batch = batch?;
            let probs = self.ex.predict_pixels_async(&batch.pixels).await?;
            loss += scores.add_rows(&probs, &batch.labels, batch.real);
            page.now_and_then().await;
        }
        Ok((loss / scores.total().max(1) as f64, scores))
    }

    blocking! {
        /// Run every phase, calling `on_epoch` after each epoch. With `checkpoint`, the whole training state is
        /// written there (atomically) after every epoch, and where `stop` interrupts the run; with `resume`,
        /// training continues from such a file, mid-epoch if it was interrupted.
        pub fn fit(
            &mut self,
            progress: &mut Progress<'_>,
            on_epoch: &mut dyn FnMut(&EpochRecord),
            checkpoint: Option<&Path>,
            resume: Option<&Path>,
            stop: &AtomicBool
        ) -> Result<Vec<EpochRecord>> => fit_async
    }

    pub async fn fit_async(
        &mut self,
        progress: &mut Progress<'_>,
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
                match self.epoch_async(&phase, e, global, progress, partial.take(), stop).await? {
                    EpochEnd::Done(mut r) => {
                        let phase_over = self.watch_epoch_async(&mut r, e + 1 == phase.epochs).await?;
                        // An early stop counts the phase's remaining epochs as done (a resume skips them too).
                        global += if phase_over { (phase.epochs - e) as u64 } else { 1 };
                        done = global;
                        records.push(r.clone());
                        if let Some(path) = checkpoint {
                            self.save_checkpoint_async(path, done, &records, None).await?;
                        }
                        on_epoch(&r);
                        if phase_over {
                            break;
                        }
                    }
                    EpochEnd::Stopped(p) => {
                        let saved = match checkpoint {
                            Some(path) => {
                                self.save_checkpoint_async(path, done, &records, Some(p)).await?;
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

    /// The save-best and early-stopping watch after an epoch: marks the record, keeps the weights of a best
    /// epoch, and at the phase's end (`last`, or an early stop) loads the best epoch's weights back. Returns
    /// whether the phase ends early.
    async fn watch_epoch_async(&mut self, r: &mut EpochRecord, last: bool) -> Result<bool> {
        let (save_best, patience) = (self.cfg.save_best, self.cfg.early_stop);
        if save_best.is_none() && patience.is_none() {
            return Ok(false);
        }
        if self.watch.phase != r.phase {
            self.best_weights.clear();
        }
        let v = self.watch.observe(save_best.unwrap_or(Monitor::ValidLoss), patience, r);
        r.improved = Some(v.improved);
        r.early_stop = v.stop && !last;
        if save_best.is_some() {
            if v.improved {
                self.best_weights = self.ex.model_tensors_async().await?;
            }
            if (v.stop || last) && !self.best_weights.is_empty() {
                for (name, _, values) in &self.best_weights {
                    self.ex.write_value(name, values)?;
                }
                r.kept_epoch = Some(self.watch.best_epoch);
            }
        }
        Ok(r.early_stop)
    }

    blocking! {
        /// fastai's lr_find: from the current weights, train with the body frozen (as a fresh learner is) while the
        /// learning rate of every group grows exponentially from `start` to `end` over `num_it` steps (momentum 0.9),
        /// recording the smoothed loss; stop early when it exceeds 4x the best so far (or is not finite). The weights,
        /// optimizer state and counters are restored afterwards.
        pub fn lr_find(&mut self, start: f64, end: f64, num_it: usize, progress: &mut Progress<'_>) -> Result<LrFind>
            => lr_find_async
    }

    pub async fn lr_find_async(
        &mut self,
        start: f64,
        end: f64,
        num_it: usize,
        progress: &mut Progress<'_>,
    ) -> Result<LrFind> {
        if !(start > 0.0 && end > start && num_it >= 2) {
            return Err(Error::Invalid(format!(
                "lr-find needs 0 < start < end and at least 2 iterations (got {start}, {end}, {num_it})"
            )));
        }
        let (saved, counters) = self.ex.training_state_async().await?;
        let groups = self.ex.graph().groups();
        self.ex.freeze_to(groups - 1)?;
        let lr_at = |i: usize| start * (end / start).powf(i as f64 / num_it as f64);
        let mut found = LrFind { lrs: Vec::new(), losses: Vec::new(), suggestion: None, stopped_early: false };
        let mut smooth = SmoothLoss::default();
        let mut best = f64::INFINITY;
        let mut submitted = 0usize;
        let mut epoch = 0u64;
        let mut record = |found: &mut LrFind, loss: f32| -> bool {
            smooth.add(loss as f64);
            let s = smooth.value();
            found.lrs.push(lr_at(found.lrs.len()));
            found.losses.push(s);
            progress("lr-find", 0, found.lrs.len(), num_it, s);
            best = best.min(s);
            let diverged = !s.is_finite() || s > 4.0 * best;
            found.stopped_early |= diverged;
            diverged || found.lrs.len() >= num_it
        };
        let mut finished = false;
        'outer: while !finished {
            for batch in self.train.epoch_from(1000 + epoch, 0) {
                let batch = batch?;
                for g in 0..groups {
                    let h = Hyper { lr: lr_at(submitted), mom: 0.9, ..self.ex.hyper(g) };
                    self.ex.set_hyper(g, h)?;
                }
                let transforms = self.transforms(batch.real)?;
                self.ex.train_step_pixels_async(&batch.pixels, &transforms, &batch.labels).await?;
                submitted += 1;
                for m in self.ex.poll_metrics()? {
                    finished |= !finished && record(&mut found, m.loss);
                }
                if finished || submitted >= num_it {
                    break 'outer;
                }
            }
            epoch += 1;
        }
        for m in self.ex.wait_metrics_async().await? {
            finished |= !finished && record(&mut found, m.loss);
        }
        let by_name: std::collections::HashMap<&str, &Vec<f32>> =
            saved.iter().map(|(name, _, v)| (name.as_str(), v)).collect();
        self.ex.restore_training_state(
            &|name| {
                by_name
                    .get(name)
                    .map(|v| v.to_vec())
                    .ok_or_else(|| Error::Invalid(format!("lr-find lost tensor '{name}'")))
            },
            &counters,
        )?;
        // fastai drops the first tenth and the last 5 points before looking for the valley.
        let (lo, hi) = (num_it / 10, found.losses.len().saturating_sub(5));
        if hi > lo + 1 {
            found.suggestion = Some(found.lrs[lo + valley(&found.losses[lo..hi])]);
        }
        Ok(found)
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
