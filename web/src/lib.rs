//! wgtune in a browser tab: the engine compiled to WebAssembly, running on the page's WebGPU adapter, with the
//! small API the page in `web/` drives (`scripts/web.sh build` makes `web/pkg/` from it with wasm-bindgen).
//!
//! The page hands over bytes (the pretrained weights it fetched, the image files the user chose); everything else
//! — decoding, fastai's fine_tune on the GPU, validation, prediction, the saved model — is the library's own code,
//! the same as the `wgtune` command runs. Results cross to JavaScript as JSON strings.
//!
//! Every method that waits for the GPU returns a promise. A method that needs the learner while another one holds
//! it (a prediction asked for during training) is refused with a message instead of waiting.

// In a browser wgpu's objects are neither Send nor Sync (one thread, the page's); the Arcs that share them
// natively are plain reference counts there.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use js_sys::{Function, Promise, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;
use wgtune::data::dataset::{random_split, Dataset, Item, Source};
use wgtune::data::{decode_rgb, eval_crop, normalize_into};
use wgtune::gpu::{AdapterRequest, Gpu};
use wgtune::graph::executor::Executor;
use wgtune::learner::{EpochRecord, FineTuneConfig, Learner, Scores};
use wgtune::nn::model::{load_model, ModelSpec};
use wgtune::nn::weights::{to_bytes, Weights};

mod checks;

/// Panics and the library's log lines go to the browser's console.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    let _ = console_log::init_with_level(log::Level::Info);
}

/// A library error as a JavaScript `Error` (its message is the library's).
fn js_error(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

fn json(v: &impl serde::Serialize) -> Result<JsValue, JsValue> {
    serde_json::to_string(v).map(JsValue::from).map_err(js_error)
}

/// One image the page added: its file's bytes and its class; `valid` puts it in the validation set (a data set
/// with train/valid folders), None leaves it to the random split.
struct Image {
    name: String,
    bytes: Arc<[u8]>,
    label: String,
    valid: Option<bool>,
}

/// What fine_tune takes from the page; anything left out is fastai's default (as `wgtune finetune`).
#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RunConfig {
    epochs: usize,
    freeze_epochs: usize,
    lr: f64,
    bs: usize,
    size: usize,
    seed: u64,
    augment: bool,
    /// The share of unflagged images held out for validation (fastai's `valid_pct`).
    valid_pct: f64,
}

impl Default for RunConfig {
    fn default() -> Self {
        let d = FineTuneConfig::default();
        RunConfig {
            epochs: d.epochs,
            freeze_epochs: d.freeze_epochs,
            lr: d.lr,
            bs: d.bs,
            size: d.size,
            seed: d.seed,
            augment: d.augment,
            valid_pct: 0.2,
        }
    }
}

#[derive(Default)]
struct State {
    /// The weights fine-tuning starts from (a pretrained body, or a saved wgtune model), or the model to predict
    /// with when nothing was trained here.
    weights: Option<Rc<Weights>>,
    images: Vec<Image>,
    /// The last fine-tuning run (None while one runs, or while another method holds it).
    learner: Option<Learner>,
    /// The model as `wgtune predict` runs it (eval graph of batch 1), made from the learner's weights or from a
    /// loaded wgtune model on the first prediction.
    model: Option<(ModelSpec, Executor)>,
    busy: Option<&'static str>,
}

/// The engine as the page sees it: one GPU device, the chosen weights and images, the last run.
#[wasm_bindgen]
pub struct Engine {
    gpu: Arc<Gpu>,
    state: Rc<RefCell<State>>,
    stop: Rc<AtomicBool>,
}

/// Marks the engine busy with `what` while alive, so a second long call is refused instead of interleaved.
struct Busy(Rc<RefCell<State>>);

impl Busy {
    fn take(state: &Rc<RefCell<State>>, what: &'static str) -> Result<Busy, JsValue> {
        let mut s = state.borrow_mut();
        if let Some(other) = s.busy {
            return Err(js_error(format!("cannot {what} while the engine is busy with {other}")));
        }
        s.busy = Some(what);
        Ok(Busy(state.clone()))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.borrow_mut().busy = None;
    }
}

/// Lowers the stop flag when a run ends, however it ends.
struct ResetOnDrop(Rc<AtomicBool>);

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

#[wasm_bindgen]
impl Engine {
    /// Open the page's WebGPU adapter. Fails with a clear message where the browser has no WebGPU.
    pub async fn create() -> Result<Engine, JsValue> {
        let gpu = Gpu::new_async(&AdapterRequest::default()).await.map_err(js_error)?;
        Ok(Engine { gpu: Arc::new(gpu), state: Rc::default(), stop: Rc::default() })
    }

    /// The adapter in use, as JSON: name, backend, driver, whether it is a software adapter, whether it has
    /// shader-f16 and its largest storage binding in bytes.
    pub fn adapter(&self) -> Result<JsValue, JsValue> {
        let s = self.gpu.summary();
        json(&serde_json::json!({
            "name": s.name,
            "backend": s.backend,
            "device_type": s.device_type,
            "driver": s.driver,
            "is_software": s.is_software,
            "shader_f16": self.gpu.has_shader_f16(),
            "max_storage_binding": self.gpu.limits().max_storage_buffer_binding_size,
        }))
    }

    /// Weights to fine-tune from (a pretrained body: EfficientNet-Lite0, ResNet, ConvNeXt; or a saved wgtune
    /// model, which `predict` can also use directly). `origin` names the file in messages. Returns the model's
    /// description as JSON: architecture, and the classes when the file is a wgtune model.
    pub fn set_weights(&self, bytes: Vec<u8>, origin: String) -> Result<JsValue, JsValue> {
        let weights = Weights::from_bytes(bytes, &origin).map_err(js_error)?;
        let spec = ModelSpec::of_weights(&weights, None).map_err(js_error)?;
        let trained = weights.metadata().map_err(js_error)?.contains_key("wgtune.classes");
        let mut s = self.state.borrow_mut();
        s.weights = Some(Rc::new(weights));
        if s.learner.is_none() {
            s.model = None;
        }
        json(&serde_json::json!({
            "origin": origin,
            "architecture": spec.arch.name(),
            "classes": if trained { spec.classes } else { vec![] },
        }))
    }

    /// Add one labelled image file (any format the `image` crate decodes: JPEG, PNG, WebP, BMP, GIF). `valid`:
    /// true for the validation set, false for training, absent for the random split.
    pub fn add_image(&self, bytes: Vec<u8>, name: String, label: String, valid: Option<bool>) -> Result<(), JsValue> {
        if label.trim().is_empty() {
            return Err(js_error(format!("image '{name}' has an empty class name")));
        }
        if bytes.is_empty() {
            return Err(js_error(format!("image '{name}' is an empty file")));
        }
        self.state.borrow_mut().images.push(Image { name, bytes: bytes.into(), label, valid });
        Ok(())
    }

    /// Forget every added image.
    pub fn clear_images(&self) {
        self.state.borrow_mut().images.clear();
    }

    /// The classes and how many images each has, as JSON `[{name, train, valid, unassigned}]`.
    pub fn classes(&self) -> Result<JsValue, JsValue> {
        let s = self.state.borrow();
        let mut counts: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
        for im in &s.images {
            counts.entry(&im.label).or_default()[match im.valid {
                Some(false) => 0,
                Some(true) => 1,
                None => 2,
            }] += 1;
        }
        let rows: Vec<_> = counts
            .iter()
            .map(|(name, c)| serde_json::json!({"name": name, "train": c[0], "valid": c[1], "unassigned": c[2]}))
            .collect();
        json(&rows)
    }

    /// Ask a running fine_tune to stop after its current step (it then fails with "interrupted ...").
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// fastai's fine_tune on the added images from the set weights. `config` is JSON with any of `epochs`,
    /// `freeze_epochs`, `lr`, `bs`, `size`, `seed`, `augment`, `valid_pct` (fastai's defaults otherwise).
    /// `on_progress(phase, epoch, batches_done, batches, smoothed_loss)` is called after every step,
    /// `on_epoch(json)` after every epoch with `{record, classes, confusion}` (the epoch table's row, and the
    /// validation confusion matrix: row-major counts, actual by predicted). Resolves to JSON `{records, losses}` (losses: every step's loss
    /// and smoothed loss).
    pub fn fine_tune(&self, config: String, on_progress: Function, on_epoch: Function) -> Promise {
        let (gpu, state, stop) = (self.gpu.clone(), self.state.clone(), self.stop.clone());
        future_to_promise(async move {
            let busy = Busy::take(&state, "fine-tuning")?;
            // A Stop pressed while the run sets up still stops it (at its first step); one pressed as it ends does
            // not carry over to the next run.
            let _stop_once = ResetOnDrop(stop.clone());
            let cfg: RunConfig =
                serde_json::from_str(&config).map_err(|e| js_error(format!("bad fine-tune settings: {e}")))?;
            let (weights, data) = {
                let s = state.borrow();
                let weights = s.weights.clone().ok_or_else(|| js_error("no weights set: call set_weights first"))?;
                (weights, dataset(&s.images, cfg.valid_pct, cfg.seed)?)
            };
            let arch = ModelSpec::of_weights(&weights, None).map_err(js_error)?.arch;
            let run = FineTuneConfig {
                arch,
                epochs: cfg.epochs,
                freeze_epochs: cfg.freeze_epochs,
                lr: cfg.lr,
                bs: cfg.bs,
                size: cfg.size,
                presize: wgtune::data::presize_for(cfg.size),
                seed: cfg.seed,
                augment: cfg.augment,
                workers: 1,
                ..FineTuneConfig::default()
            };
            {
                let mut s = state.borrow_mut();
                s.learner = None;
                s.model = None;
            }
            let mut learner = Learner::new(gpu, &data, Some(&weights), run).map_err(js_error)?;
            // The browser queues every submission at once: with two steps in flight the GPU always has the next one
            // while the progress bar stays within two steps of the truth and Stop takes effect promptly.
            learner.ex.set_max_in_flight(2);
            let mut progress = |phase: &str, epoch: usize, done: usize, total: usize, smooth: f64| {
                let args = js_sys::Array::of5(
                    &phase.into(),
                    &(epoch as u32).into(),
                    &(done as u32).into(),
                    &(total as u32).into(),
                    &smooth.into(),
                );
                let _ = on_progress.apply(&JsValue::NULL, &args);
            };
            let classes = data.classes.clone();
            let mut epoch_done = |r: &EpochRecord| {
                let payload = serde_json::json!({"record": r, "classes": classes, "confusion": r.confusion});
                let _ = on_epoch.call1(&JsValue::NULL, &payload.to_string().into());
            };
            let fitted = learner.fit_async(&mut progress, &mut epoch_done, None, None, &stop).await;
            let losses = learner.history.clone();
            // A stopped or failed run keeps what it trained: it can still be validated, exported and used.
            state.borrow_mut().learner = Some(learner);
            drop(busy);
            let records = fitted.map_err(js_error)?;
            json(&serde_json::json!({"records": records, "losses": losses}))
        })
    }

    /// The last run's model on its validation set, as JSON: `valid_loss`, `accuracy`, `classes`, the confusion
    /// matrix `counts` (row-major, actual by predicted) and `most_confused` ([actual, predicted, count], fastai's
    /// `most_confused(min_val=1)`).
    pub fn validate(&self) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let _busy = Busy::take(&state, "validation")?;
            let mut learner = take_learner(&state)?;
            let scored = learner.validate_scores_async().await;
            state.borrow_mut().learner = Some(learner);
            let (valid_loss, scores) = scored.map_err(js_error)?;
            let out = match scores {
                Scores::Single(c) => serde_json::json!({
                    "valid_loss": valid_loss,
                    "accuracy": c.accuracy(),
                    "classes": c.classes,
                    "counts": c.counts,
                    "most_confused": c.most_confused(1),
                }),
                Scores::Multi(m) => serde_json::json!({"valid_loss": valid_loss, "accuracy": m.accuracy()}),
            };
            json(&out)
        })
    }

    /// The last run's model as the bytes of a safetensors file with wgtune's metadata: what `wgtune finetune`
    /// saves and `wgtune predict --model` reads.
    pub fn export_model(&self) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let _busy = Busy::take(&state, "saving the model")?;
            let learner = take_learner(&state)?;
            let bytes = model_bytes(&learner).await;
            state.borrow_mut().learner = Some(learner);
            Ok(Uint8Array::from(&bytes.map_err(js_error)?[..]).into())
        })
    }

    /// Classify one image file with the trained model (or a loaded wgtune model when nothing was trained here),
    /// exactly as `wgtune predict` does: the centre crop, the eval graph, softmax. Resolves to JSON
    /// `{file, top: [{class_index, label, prob}] (five at most), probs}`.
    pub fn predict(&self, bytes: Vec<u8>, name: String) -> Promise {
        let (gpu, state) = (self.gpu.clone(), self.state.clone());
        future_to_promise(async move {
            let _busy = Busy::take(&state, "prediction")?;
            let img = decode_rgb(&bytes, &name).map_err(js_error)?;
            let cached = state.borrow_mut().model.take();
            let (spec, mut ex) = match cached {
                Some(m) => m,
                None => prediction_model(&state, gpu).await?,
            };
            let mut input = Vec::with_capacity(3 * spec.input_size * spec.input_size);
            normalize_into(&eval_crop(&img, spec.input_size), &spec.normalization, &mut input);
            let probs = ex.predict_async(&input).await;
            let classes = spec.classes.clone();
            state.borrow_mut().model = Some((spec, ex));
            let probs = probs.map_err(js_error)?;
            let mut order: Vec<usize> = (0..probs.len()).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
            let top: Vec<_> = order
                .iter()
                .take(5)
                .map(|&i| serde_json::json!({"class_index": i, "label": classes[i], "prob": probs[i]}))
                .collect();
            json(&serde_json::json!({"file": name, "top": top, "probs": probs}))
        })
    }

    /// `wgtune bench train` in the page: `steps` training steps (after a first, timed on its own) of `model`
    /// ("small_cnn" or an architecture with fastai's head over 10 classes) at batch `bs` and `size` px on random
    /// data, with Adam. Resolves to the same JSON record the native `wgtune bench train --json` prints.
    pub fn bench_train(&self, model: String, bs: usize, size: usize, steps: usize) -> Promise {
        let (gpu, state) = (self.gpu.clone(), self.state.clone());
        future_to_promise(async move {
            let _busy = Busy::take(&state, "a benchmark")?;
            let graph = |b: usize| wgtune::bench::train_graph(&model, b, size);
            let (f32, resident) = (wgtune::gpu::Precision::F32, wgtune::bench::StepInput::Resident);
            let (record, _, _) = wgtune::bench::bench_step(gpu, &model, graph, bs, steps, false, f32, resident)
                .await
                .map_err(js_error)?;
            json(&record)
        })
    }

    /// The page-run kernel checks: a subset of the kernel tests (matmul, convolution, depthwise convolution,
    /// pooling, batch norm, softmax cross-entropy, Adam), each on awkward shapes with seeded inputs against the
    /// f64 CPU reference. Resolves to JSON `[{kernel, shape, max_error, tolerance, ok}]`.
    pub fn kernel_checks(&self) -> Promise {
        let gpu = self.gpu.clone();
        future_to_promise(async move {
            let results = checks::run(&gpu).await.map_err(js_error)?;
            json(&results)
        })
    }
}

fn take_learner(state: &Rc<RefCell<State>>) -> Result<Learner, JsValue> {
    state.borrow_mut().learner.take().ok_or_else(|| js_error("nothing has been fine-tuned yet: run fine_tune first"))
}

async fn model_bytes(learner: &Learner) -> wgtune::Result<Vec<u8>> {
    let tensors = learner.ex.model_tensors_async().await?;
    to_bytes(&tensors, learner.spec.metadata(), "the fine-tuned model")
}

/// The model `predict` uses: the last run's weights through a saved-model round trip (so the page predicts with
/// exactly what it offers for download), else the loaded weights when they are a wgtune model.
async fn prediction_model(state: &Rc<RefCell<State>>, gpu: Arc<Gpu>) -> Result<(ModelSpec, Executor), JsValue> {
    let trained = state.borrow_mut().learner.take();
    let weights = match trained {
        Some(learner) => {
            let bytes = model_bytes(&learner).await;
            state.borrow_mut().learner = Some(learner);
            Rc::new(Weights::from_bytes(bytes.map_err(js_error)?, "the fine-tuned model").map_err(js_error)?)
        }
        None => state.borrow().weights.clone().ok_or_else(|| js_error("no model: fine-tune first or load a model"))?,
    };
    if !weights.metadata().map_err(js_error)?.contains_key("wgtune.classes") {
        return Err(js_error(format!(
            "'{}' is pretrained weights without a head for your classes: fine-tune first",
            weights.origin()
        )));
    }
    let spec = ModelSpec::of_weights(&weights, None).map_err(js_error)?;
    let (ex, _) = load_model(gpu, &spec, &weights, 1, wgtune::gpu::Precision::F32).map_err(js_error)?;
    Ok((spec, ex))
}

/// The added images as a checked data set: classes sorted by name; images flagged train/valid go there, the
/// unflagged ones are split at random (`valid_pct`, fastai's RandomSplitter) — into training alone when some
/// images were flagged for validation.
fn dataset(images: &[Image], valid_pct: f64, seed: u64) -> Result<Dataset, JsValue> {
    let classes: Vec<String> =
        images.iter().map(|im| im.label.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let item = |im: &Image| {
        let label = classes.binary_search(&im.label).unwrap_or(0) as u32;
        Item::new(Source::Encoded { name: im.name.clone(), bytes: im.bytes.clone() }, label)
    };
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    let mut unassigned = Vec::new();
    for im in images {
        match im.valid {
            Some(true) => valid.push(item(im)),
            Some(false) => train.push(item(im)),
            None => unassigned.push(item(im)),
        }
    }
    if valid.is_empty() {
        let (t, v) = random_split(unassigned, valid_pct, seed);
        train.extend(t);
        valid.extend(v);
    } else {
        train.extend(unassigned);
    }
    Dataset { classes, multi_label: false, train, valid, skipped: Vec::new() }
        .check("the chosen images")
        .map_err(js_error)
}
