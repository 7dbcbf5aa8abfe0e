//! A model as `predict` and `finetune` see it: architecture, head, classes, input size and normalization, built
//! into a graph and loaded from safetensors (a wgtune file carries all of it in its metadata).

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::executor::{Executor, ExecutorConfig};
use crate::graph::Graph;
use crate::nn::weights::{load_into, LoadReport, Weights};
use crate::nn::{Arch, Normalization, TrainOptions, FASTAI_PS};
use crate::ops::loss::Loss;

/// The embedded ImageNet EfficientNet-Lite0 (assets/efficientnet_lite0.safetensors; see assets/README.md).
pub static EFFNET_LITE0_IMAGENET: &[u8] = include_bytes!("../../assets/efficientnet_lite0.safetensors");
/// The 1000 ImageNet class names, in class-index order (assets/imagenet_classes.txt).
pub static IMAGENET_CLASSES: &str = include_str!("../../assets/imagenet_classes.txt");

/// The ImageNet class names.
pub fn imagenet_classes() -> Vec<String> {
    IMAGENET_CLASSES.lines().map(str::to_string).collect()
}

/// Which head sits on the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// The architecture's own classifier: global average pool + linear (ImageNet models).
    Classifier,
    /// fastai's head (concat pool, BN, dropout, linear 512, ReLU, BN, dropout, linear).
    Fastai,
}

impl Head {
    pub fn name(self) -> &'static str {
        match self {
            Head::Classifier => "classifier",
            Head::Fastai => "fastai",
        }
    }
}

/// Everything needed to rebuild a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub arch: Arch,
    pub head: Head,
    pub classes: Vec<String>,
    pub input_size: usize,
    pub normalization: Normalization,
    /// Softmax cross-entropy (one class per image) or sigmoid binary cross-entropy with the threshold that
    /// predictions use (multi-label).
    pub loss: Loss,
}

/// The input sizes wgtune builds models for (square images).
pub const MIN_INPUT_SIZE: usize = 16;
pub const MAX_INPUT_SIZE: usize = 2048;

const KEY_ARCH: &str = "wgtune.architecture";
const KEY_HEAD: &str = "wgtune.head";
const KEY_CLASSES: &str = "wgtune.classes";
const KEY_SIZE: &str = "wgtune.input_size";
const KEY_NORM: &str = "wgtune.normalization";
/// "single_label" or "multi_label"; files without it are single-label.
const KEY_TASK: &str = "wgtune.task";
/// A multi-label model's prediction threshold.
const KEY_THRESHOLD: &str = "wgtune.threshold";

/// Softmax cross-entropy without label smoothing: the single-label loss.
pub const SINGLE_LABEL: Loss = Loss::SoftmaxCrossEntropy { smoothing: 0.0 };

impl ModelSpec {
    /// An architecture's ImageNet classifier with its standard preprocessing.
    pub fn imagenet(arch: Arch) -> ModelSpec {
        ModelSpec {
            arch,
            head: Head::Classifier,
            classes: imagenet_classes(),
            input_size: 224,
            normalization: arch.normalization(),
            loss: SINGLE_LABEL,
        }
    }

    pub fn multi_label(&self) -> bool {
        self.loss.multi_label()
    }

    /// The graph for `batch` images.
    pub fn graph(&self, batch: usize, bn_momentum: f32) -> Result<Graph> {
        self.training_graph(batch, bn_momentum, 0.0)
    }

    /// The graph for `batch` images with a timm model's drop path rate (timm's `drop_path_rate`; it acts in
    /// training only, so a model saved from it is the same as from [`ModelSpec::graph`]).
    pub fn training_graph(&self, batch: usize, bn_momentum: f32, drop_path: f64) -> Result<Graph> {
        match self.head {
            Head::Classifier => self.arch.classifier(batch, self.input_size, self.classes.len()),
            Head::Fastai => self.arch.with_fastai_head_and_loss(
                batch,
                self.input_size,
                self.classes.len(),
                TrainOptions { bn_momentum, ps: FASTAI_PS, loss: self.loss, drop_path },
            ),
        }
    }

    /// The metadata a saved model carries.
    pub fn metadata(&self) -> HashMap<String, String> {
        let mut meta = HashMap::from([
            (KEY_ARCH.into(), self.arch.name().into()),
            (KEY_HEAD.into(), self.head.name().into()),
            (KEY_CLASSES.into(), serde_json::to_string(&self.classes).unwrap_or_default()),
            (KEY_SIZE.into(), self.input_size.to_string()),
            (KEY_NORM.into(), self.normalization.describe()),
        ]);
        match self.loss {
            Loss::SoftmaxCrossEntropy { .. } => meta.insert(KEY_TASK.into(), "single_label".into()),
            Loss::SigmoidBinaryCrossEntropy { threshold } => {
                meta.insert(KEY_THRESHOLD.into(), threshold.to_string());
                meta.insert(KEY_TASK.into(), "multi_label".into())
            }
        };
        meta
    }

    /// The spec of a weights file: from wgtune's metadata, or, for a raw pretrained file, from `arch` (a
    /// 1000-class classifier means ImageNet labels and the architecture's standard preprocessing).
    pub fn of_weights(weights: &Weights, arch: Option<Arch>) -> Result<ModelSpec> {
        let meta = weights.metadata()?;
        let origin = weights.origin();
        if meta.contains_key("wgtune.checkpoint") {
            return Err(Error::Invalid(format!(
                "'{origin}' is a training checkpoint, not a saved model: continue its run with `wgtune finetune \
                 --resume --out {}` (the model is saved when the run finishes)",
                origin.strip_suffix(".checkpoint").unwrap_or(origin)
            )));
        }
        if let Some(a) = meta.get(KEY_ARCH) {
            let bad = |k: &str, why: &str| Error::Invalid(format!("'{origin}': metadata '{k}' {why}"));
            let get = |k: &str| meta.get(k).ok_or_else(|| bad(k, "is missing"));
            let arch = Arch::parse(a).map_err(|e| bad(KEY_ARCH, &format!("is invalid: {e}")))?;
            let head = match get(KEY_HEAD)?.as_str() {
                "fastai" => Head::Fastai,
                "classifier" => Head::Classifier,
                other => return Err(bad(KEY_HEAD, &format!("is '{other}', expected 'fastai' or 'classifier'"))),
            };
            let classes: Vec<String> = serde_json::from_str(get(KEY_CLASSES)?)
                .map_err(|e| bad(KEY_CLASSES, &format!("is not a JSON list of names: {e}")))?;
            if classes.len() < 2 {
                return Err(bad(
                    KEY_CLASSES,
                    &format!("lists {} classes, a classifier needs at least two", classes.len()),
                ));
            }
            let size = get(KEY_SIZE)?;
            let input_size = size
                .parse::<usize>()
                .ok()
                .filter(|s| (MIN_INPUT_SIZE..=MAX_INPUT_SIZE).contains(s))
                .ok_or_else(|| {
                    bad(KEY_SIZE, &format!("is '{size}', expected a size from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}"))
                })?;
            let normalization =
                Normalization::parse(get(KEY_NORM)?).map_err(|e| bad(KEY_NORM, &format!("is invalid: {e}")))?;
            let loss = match meta.get(KEY_TASK).map(String::as_str) {
                None | Some("single_label") => SINGLE_LABEL,
                Some("multi_label") => {
                    let t = get(KEY_THRESHOLD)?;
                    let threshold =
                        t.parse::<f32>().ok().filter(|t| (0.0..=1.0).contains(t)).ok_or_else(|| {
                            bad(KEY_THRESHOLD, &format!("is '{t}', expected a probability from 0 to 1"))
                        })?;
                    Loss::SigmoidBinaryCrossEntropy { threshold }
                }
                Some(other) => {
                    return Err(bad(KEY_TASK, &format!("is '{other}', expected 'single_label' or 'multi_label'")))
                }
            };
            return Ok(ModelSpec { arch, head, classes, input_size, normalization, loss });
        }
        let arch = match (arch, meta.get("architecture")) {
            (Some(a), _) => a,
            (None, Some(a)) => Arch::parse(a)?,
            (None, None) => match Arch::detect(&weights.shapes()?) {
                Some(a) => a,
                None => {
                    return Err(Error::Invalid(format!(
                        "'{}' has no wgtune metadata and its tensors match no known architecture: say which \
                         architecture it is with --arch ({})",
                        weights.origin(),
                        Arch::names()
                    )))
                }
            },
        };
        Ok(ModelSpec::imagenet(arch))
    }
}

/// Build the model for `batch` images on the GPU, its activations at `precision`, and load `weights` into it (all
/// tensors must match).
pub fn load_model(
    gpu: Arc<Gpu>,
    spec: &ModelSpec,
    weights: &Weights,
    batch: usize,
    precision: crate::gpu::Precision,
) -> Result<(Executor, LoadReport)> {
    let ex = Executor::new(gpu, spec.graph(batch, 0.1)?, ExecutorConfig { precision, ..Default::default() })?;
    let report = load_into(&ex, weights, |n| n.to_string(), |_| false, |n| n.ends_with("num_batches_tracked"))?;
    Ok((ex, report))
}

/// Save a model with its spec in the metadata (atomically).
#[cfg(not(target_arch = "wasm32"))]
pub fn save_model(ex: &Executor, spec: &ModelSpec, path: &std::path::Path) -> Result<()> {
    crate::nn::weights::save(ex, path, spec.metadata())
}
