//! The classification losses (forward: mean loss; backward: dlogits), their counts, and probabilities: softmax
//! cross-entropy for one label per image, sigmoid binary cross-entropy for several. Both read targets laid out by
//! [`Targets`], which carry MixUp/CutMix partners. See shaders/loss.wgsl.

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, Gpu, KernelSpec, Tensor};

use super::dim;

/// Mirrors `LossParams` in shaders/loss.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LossParams {
    pub batch: u32,
    pub classes: u32,
    pub smoothing: f32,
    pub scale: f32,
    pub words: u32,
    pub threshold: f32,
    pub _pad: [u32; 2],
}

const SIGNATURE: &[(u32, Access)] = &[(1, Access::Read), (2, Access::Read), (3, Access::ReadWrite)];
const PROBS: &[(u32, Access)] = &[(1, Access::Read), (3, Access::ReadWrite)];
pub const SOFTMAX_CROSS_ENTROPY_FORWARD: KernelSpec =
    KernelSpec::new("softmax_cross_entropy_forward", "loss", SIGNATURE);
pub const SOFTMAX_CROSS_ENTROPY_BACKWARD: KernelSpec =
    KernelSpec::new("softmax_cross_entropy_backward", "loss", SIGNATURE);
pub const CORRECT_COUNT: KernelSpec = KernelSpec::new("correct_count", "loss", SIGNATURE);
pub const SOFTMAX_FORWARD: KernelSpec = KernelSpec::new("softmax_forward", "loss", PROBS);
pub const SIGMOID_BCE_FORWARD: KernelSpec = KernelSpec::new("sigmoid_bce_forward", "loss", SIGNATURE);
pub const SIGMOID_BCE_BACKWARD: KernelSpec = KernelSpec::new("sigmoid_bce_backward", "loss", SIGNATURE);
/// The backwards of f16 training: the loss scaler's state (shaders/scaler.wgsl) as a fourth tensor.
const SCALED: &[(u32, Access)] = &[(1, Access::Read), (2, Access::Read), (3, Access::ReadWrite), (4, Access::Read)];
pub const SOFTMAX_CROSS_ENTROPY_BACKWARD_SCALED: KernelSpec =
    KernelSpec::new("softmax_cross_entropy_backward_scaled", "loss", SCALED);
pub const SIGMOID_BCE_BACKWARD_SCALED: KernelSpec = KernelSpec::new("sigmoid_bce_backward_scaled", "loss", SCALED);
pub const MULTI_LABEL_CORRECT: KernelSpec = KernelSpec::new("multi_label_correct", "loss", SIGNATURE);
pub const SIGMOID_FORWARD: KernelSpec = KernelSpec::new("sigmoid_forward", "loss", PROBS);

/// fastai's default threshold for multi-label predictions and accuracy_multi.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// A classification loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// One class per image: softmax cross-entropy with label smoothing `smoothing` (fastai's
    /// CrossEntropyLossFlat / LabelSmoothingCrossEntropy). Its count is of right top-1 predictions.
    SoftmaxCrossEntropy { smoothing: f32 },
    /// Any number of classes per image: sigmoid binary cross-entropy with logits, the mean over every (image,
    /// class) (fastai's BCEWithLogitsLossFlat). Its count is of (image, class) pairs where
    /// `sigmoid(logit) > threshold` agrees with the label (fastai's accuracy_multi, times batch * classes).
    SigmoidBinaryCrossEntropy { threshold: f32 },
}

impl Loss {
    pub fn multi_label(self) -> bool {
        matches!(self, Loss::SigmoidBinaryCrossEntropy { .. })
    }

    /// How this loss's targets are laid out for `classes` classes.
    pub fn targets(self, classes: usize) -> Targets {
        Targets { classes, multi_label: self.multi_label() }
    }

    /// How many counts [`Loss::correct`] can reach on `batch` rows of `classes`.
    pub fn count_of(self, batch: usize, classes: usize) -> usize {
        if self.multi_label() {
            batch * classes
        } else {
            batch
        }
    }

    fn params(self, logits: &Tensor, targets: &Tensor, scale: f32, what: &str) -> Result<LossParams> {
        let [batch, classes] = *logits.shape() else {
            return Err(Error::shape(what, format!("logits {:?} must be (batch, classes)", logits.shape())));
        };
        let layout = self.targets(classes);
        if targets.shape() != [batch, layout.row()] {
            return Err(Error::shape(
                what,
                format!(
                    "targets {:?} must be ({batch}, {}) for logits {:?}",
                    targets.shape(),
                    layout.row(),
                    logits.shape()
                ),
            ));
        }
        let (smoothing, threshold) = match self {
            Loss::SoftmaxCrossEntropy { smoothing } => (smoothing, 0.0),
            Loss::SigmoidBinaryCrossEntropy { threshold } => (0.0, threshold),
        };
        if !(0.0..1.0).contains(&smoothing) {
            return Err(Error::Invalid(format!("{what}: label smoothing {smoothing} must be in [0, 1)")));
        }
        if !(0.0..=1.0).contains(&threshold) {
            return Err(Error::Invalid(format!("{what}: threshold {threshold} must be in [0, 1]")));
        }
        Ok(LossParams {
            batch: dim(batch, "batch")?,
            classes: dim(classes, "classes")?,
            smoothing,
            scale,
            words: dim(layout.words(), "label words")?,
            threshold,
            _pad: [0; 2],
        })
    }

    /// The mean loss of `logits` (batch, C) against `targets` into `loss` (1).
    pub fn forward(self, gpu: &Gpu, logits: &Tensor, targets: &Tensor, loss: &Tensor, label: &str) -> Result<Dispatch> {
        let (spec, what) = match self {
            Loss::SoftmaxCrossEntropy { .. } => (&SOFTMAX_CROSS_ENTROPY_FORWARD, "softmax_cross_entropy_forward"),
            Loss::SigmoidBinaryCrossEntropy { .. } => (&SIGMOID_BCE_FORWARD, "sigmoid_bce_forward"),
        };
        let p = self.params(logits, targets, 1.0, what)?;
        if loss.numel() != 1 {
            return Err(Error::shape(what, format!("loss {:?} must hold 1", loss.shape())));
        }
        f32_result(what, loss)?;
        let params = bytemuck::bytes_of(&p);
        super::dispatch_to(gpu, spec, &[logits], loss, params, &[logits, targets, loss], [1, 1, 1], label)
    }

    /// dlogits = scale * d(loss)/d(logits). With f16 training's loss `scaler` (its state, [`crate::ops::scaler`]),
    /// dlogits = scale * S * d(loss)/d(logits), S the dynamic loss scale, applied before dlogits is stored: as
    /// PyTorch's GradScaler scales the loss before backward, no gradient is rounded to f16 unscaled (below 2^-14 it
    /// would lose precision as a subnormal, or be flushed to zero).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        self,
        gpu: &Gpu,
        logits: &Tensor,
        targets: &Tensor,
        dlogits: &Tensor,
        scale: f32,
        scaler: Option<&Tensor>,
        label: &str,
    ) -> Result<Dispatch> {
        let (spec, scaled, what) = match self {
            Loss::SoftmaxCrossEntropy { .. } => (
                &SOFTMAX_CROSS_ENTROPY_BACKWARD,
                &SOFTMAX_CROSS_ENTROPY_BACKWARD_SCALED,
                "softmax_cross_entropy_backward",
            ),
            Loss::SigmoidBinaryCrossEntropy { .. } => {
                (&SIGMOID_BCE_BACKWARD, &SIGMOID_BCE_BACKWARD_SCALED, "sigmoid_bce_backward")
            }
        };
        let p = self.params(logits, targets, scale, what)?;
        if dlogits.shape() != logits.shape() {
            return Err(Error::shape(
                what,
                format!("dlogits {:?} must match logits {:?}", dlogits.shape(), logits.shape()),
            ));
        }
        let grid = [p.batch.div_ceil(64), 1, 1];
        let params = bytemuck::bytes_of(&p);
        match scaler {
            None => super::dispatch_to(gpu, spec, &[logits], dlogits, params, &[logits, targets, dlogits], grid, label),
            Some(state) => {
                super::scaler::check_state(state, label)?;
                let tensors = [logits, targets, dlogits, state];
                super::dispatch_to(gpu, scaled, &[logits], dlogits, params, &tensors, grid, label)
            }
        }
    }

    /// The loss's count of right predictions into `count` (1), as f32: rows with the top-1 class right (softmax)
    /// or (row, class) pairs right at the threshold (sigmoid); against each row's own labels, not its partner's.
    pub fn correct(
        self,
        gpu: &Gpu,
        logits: &Tensor,
        targets: &Tensor,
        count: &Tensor,
        label: &str,
    ) -> Result<Dispatch> {
        let (spec, what) = match self {
            Loss::SoftmaxCrossEntropy { .. } => (&CORRECT_COUNT, "correct_count"),
            Loss::SigmoidBinaryCrossEntropy { .. } => (&MULTI_LABEL_CORRECT, "multi_label_correct"),
        };
        let p = self.params(logits, targets, 1.0, what)?;
        if count.numel() != 1 {
            return Err(Error::shape(what, format!("count {:?} must hold 1", count.shape())));
        }
        f32_result(what, count)?;
        let params = bytemuck::bytes_of(&p);
        super::dispatch_to(gpu, spec, &[logits], count, params, &[logits, targets, count], [1, 1, 1], label)
    }

    /// Probabilities (batch, C): softmax rows, or sigmoid of every logit.
    pub fn probabilities(self, gpu: &Gpu, logits: &Tensor, probs: &Tensor, label: &str) -> Result<Dispatch> {
        let (spec, what) = match self {
            Loss::SoftmaxCrossEntropy { .. } => (&SOFTMAX_FORWARD, "softmax_forward"),
            Loss::SigmoidBinaryCrossEntropy { .. } => (&SIGMOID_FORWARD, "sigmoid_forward"),
        };
        let [batch, classes] = *logits.shape() else {
            return Err(Error::shape(what, format!("logits {:?} must be (batch, classes)", logits.shape())));
        };
        if probs.shape() != logits.shape() {
            return Err(Error::shape(
                what,
                format!("probs {:?} must match logits {:?}", probs.shape(), logits.shape()),
            ));
        }
        let p = LossParams { batch: dim(batch, "batch")?, classes: dim(classes, "classes")?, ..Default::default() };
        let grid = [p.batch.div_ceil(64), 1, 1];
        super::dispatch_to(gpu, spec, &[logits], probs, bytemuck::bytes_of(&p), &[logits, probs], grid, label)
    }
}

/// A loss or a count is f32, whatever the logits' precision.
fn f32_result(what: &str, t: &Tensor) -> Result<()> {
    if t.dtype() != crate::gpu::DType::F32 {
        return Err(Error::Invalid(format!("{what}: '{}' is {:?}, expected f32", t.label(), t.dtype())));
    }
    Ok(())
}

/// The loss kernels' target rows. Each row is `2 * words + 1` u32: the image's own label set, its MixUp/CutMix
/// partner's label set, and the weight `lam` of its own (f32 bits). A label set is one class index (single-label,
/// `words` = 1) or a bitmask of the classes (multi-label, `words` = ceil(classes / 32)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Targets {
    pub classes: usize,
    pub multi_label: bool,
}

impl Targets {
    /// u32 words of one label set.
    pub fn words(self) -> usize {
        if self.multi_label {
            self.classes.div_ceil(32)
        } else {
            1
        }
    }

    /// u32 words of one target row.
    pub fn row(self) -> usize {
        2 * self.words() + 1
    }

    /// The label set of an image with classes `tags` (a class index, or a bitmask of them).
    pub fn label_set(self, tags: &[u32]) -> Vec<u32> {
        if !self.multi_label {
            return vec![tags.first().copied().unwrap_or(0)];
        }
        let mut words = vec![0u32; self.words()];
        for &c in tags {
            words[c as usize / 32] |= 1 << (c % 32);
        }
        words
    }

    /// Check label sets (`words` per image): class indices below `classes`, no bits past the last class.
    pub fn check(self, labels: &[u32], batch: usize) -> Result<()> {
        let w = self.words();
        if labels.len() != batch * w {
            let what = if self.multi_label { format!("{w}-word label bitmasks") } else { "labels".into() };
            return Err(Error::Invalid(format!("a batch of {batch} needs {} {what}, got {}", batch * w, labels.len())));
        }
        if !self.multi_label {
            if let Some(bad) = labels.iter().find(|&&l| l as usize >= self.classes) {
                return Err(Error::Invalid(format!("label {bad} is out of range for {} classes", self.classes)));
            }
            return Ok(());
        }
        let spare = w * 32 - self.classes;
        for (row, set) in labels.chunks_exact(w).enumerate() {
            if spare > 0 && set[w - 1] >> (32 - spare) != 0 {
                return Err(Error::Invalid(format!(
                    "row {row}'s label bitmask sets a class past the last of {}",
                    self.classes
                )));
            }
        }
        Ok(())
    }

    /// Target rows from label sets (`words` per image) and, per image, its (partner, lam); no mixing when `mix` is
    /// None. Partners must be rows of the same batch.
    pub fn encode(self, labels: &[u32], mix: Option<&[(u32, f32)]>) -> Result<Vec<u32>> {
        let w = self.words();
        let n = labels.len() / w;
        let mut rows = Vec::with_capacity(n * self.row());
        for i in 0..n {
            let (partner, lam) = match mix {
                Some(m) => m[i],
                None => (i as u32, 1.0),
            };
            let j = partner as usize;
            if j >= n {
                return Err(Error::Invalid(format!("row {i}'s mixing partner {j} is outside the batch of {n}")));
            }
            rows.extend_from_slice(&labels[i * w..(i + 1) * w]);
            rows.extend_from_slice(&labels[j * w..(j + 1) * w]);
            rows.push(lam.to_bits());
        }
        Ok(rows)
    }
}
