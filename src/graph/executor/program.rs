//! Compiling a program: the layers of the forward pass (and, for training, the derived backward pass and the
//! optimizer), the memory plan that places every transient buffer they touch (activations, gradients, saved
//! statistics, launchers' scratch), and the dispatches built once those buffers exist.

use std::collections::HashMap;

use super::params::PARAM_DTYPE;
use super::{Executor, Key, Split};
use crate::error::{Error, Result};
use crate::gpu::{DType, Dispatch, Gpu, Storage, Tensor};
use crate::graph::plan::{assign_slots, Lifetime, SlotPlan};
use crate::graph::{Op, TensorId, TensorKind};
use crate::ops::loss::Loss;
use crate::ops::optim::optimizer_step;

/// Dispatches of one layer, with the dropout dispatches whose per-step uniform must be rewritten.
pub(super) struct Layer {
    pub name: String,
    pub dispatches: Vec<Dispatch>,
    pub dropout: Vec<DropoutSite>,
}

/// A dropout dispatch whose uniform gets this step's number before each submit.
#[derive(Clone, Copy, Debug)]
pub(super) struct DropoutSite {
    pub dispatch: usize,
    pub p: f64,
    pub seed: u32,
    pub accumulate: bool,
    pub len: usize,
    /// Elements per draw: 1 (dropout) or a sample's elements (drop path).
    pub per: usize,
}

/// A compiled program.
pub(super) struct Program {
    pub layers: Vec<Layer>,
    /// (bucket, dispatch)
    pub optim: Vec<(usize, Dispatch)>,
    /// With gradient accumulation: (bucket, dispatch adding its gradients into its sum).
    pub accumulate: Vec<(usize, Dispatch)>,
    /// With f16: each trainable bucket's gradients divided by the loss scale and checked for overflow, after the
    /// backward pass; and the scale's update, after the optimizer.
    pub unscale: Vec<Dispatch>,
    pub rescale: Option<Dispatch>,
    pub input: Tensor,
    pub labels: Tensor,
    pub loss: Tensor,
    pub correct: Tensor,
    pub probs: Option<Tensor>,
    pub logits: Tensor,
    /// With a pixel input stage: the u8 batch (packed) and the per-image transforms the augment layer reads.
    pub pixels: Option<(Tensor, Tensor)>,
    /// With gradient accumulation over pixel batches: where a whole optimizer step's micro-batches wait on the GPU.
    pub staging: Option<Staging>,
    pub transient_bytes: u64,
    _slots: Vec<Storage>,
}

/// A whole accumulation cycle's inputs on the GPU, so that its micro-batches train in one submission: per
/// micro-batch its packed pixels, transforms and target rows, and one buffer of every micro-batch's per-step
/// uniforms (`block` bytes each: the dropout sites' parameters, then the accumulate dispatches').
pub(super) struct Staging {
    pub pixels: Vec<Tensor>,
    pub transforms: Vec<Tensor>,
    pub labels: Vec<Tensor>,
    pub uniforms: Tensor,
    pub block: u64,
}

/// Bytes of one micro-batch's per-step uniforms: `dropout` dropout sites and `accumulate` accumulate dispatches.
fn uniform_block(dropout: usize, accumulate: usize) -> u64 {
    (dropout * size_of::<crate::ops::dropout::DropoutParams>()
        + accumulate * size_of::<crate::ops::accumulate::AccumulateParams>()) as u64
}

/// Builds a layer's dispatches once the program's buffers exist.
pub(super) type Build = Box<dyn Fn(&Views) -> Result<Vec<Dispatch>>>;

/// A program's layers and memory plan before its buffers exist.
pub(super) struct Layout {
    layers: Vec<PendingLayer>,
    /// Every planned tensor: key, name, shape, element type.
    keys: Vec<(Key, String, Vec<usize>, DType)>,
    plan: SlotPlan,
    alias: HashMap<TensorId, TensorId>,
    /// Why the plan cannot run on this adapter (a tensor over the binding limit), if it cannot, and the largest
    /// batch that would fit (0: not even one image).
    oversized: Option<(String, usize)>,
}

impl Layout {
    /// Dispatches whose dropout uniform is rewritten every step.
    fn dropout_sites(&self) -> usize {
        self.layers.iter().map(|l| l.dropout.len()).sum()
    }

    /// Bytes of the plan's buffers and of the pixel stage's upload buffers, if any.
    fn total_bytes(&self, pixel: Option<(usize, usize)>) -> u64 {
        self.plan.total_bytes() + pixel.map_or(0, |(n, presize)| pixel_stage_bytes(n, presize))
    }
}

/// Shapes of the pixel stage's buffers for `n` images of `presize`^2 pixels: the packed u8 batch (u32 words)
/// and eight transform parameters per image.
fn pixel_stage_shapes(n: usize, presize: usize) -> ([usize; 1], [usize; 2]) {
    ([(n * presize * presize * 3).div_ceil(4)], [n, crate::data::augment::PARAMS_PER_IMAGE])
}

fn pixel_stage_bytes(n: usize, presize: usize) -> u64 {
    let (px, tf) = pixel_stage_shapes(n, presize);
    px[0] as u64 * DType::U32.size() + (tf[0] * tf[1]) as u64 * DType::F32.size()
}

impl Program {
    /// The dispatches grouped by layer, as [`Gpu::submit_layers`] takes them.
    pub fn layer_groups(&self) -> Vec<(&str, Vec<&Dispatch>)> {
        self.layers.iter().map(|l| (l.name.as_str(), l.dispatches.iter().collect())).collect()
    }
}

/// A layer before its buffers exist: what it touches, and how to build its dispatches once they do.
pub(super) struct PendingLayer {
    pub name: String,
    pub touches: Vec<Key>,
    pub dropout: Vec<DropoutSite>,
    /// Scratch buffers the layer's launches need (key, shape, element type), planned like the tensors it touches.
    pub scratch: Vec<(Key, Vec<usize>, DType)>,
    pub build: Build,
}

/// Tensors by key while a program's dispatches are built.
pub(super) struct Views<'a> {
    pub gpu: &'a Gpu,
    transient: HashMap<Key, Tensor>,
    values: &'a HashMap<TensorId, Tensor>,
    grads: &'a HashMap<TensorId, Tensor>,
    /// The loss scaler's state (u32 [4]).
    pub scaler: &'a Tensor,
}

impl Views<'_> {
    pub fn get(&self, key: Key) -> Result<&Tensor> {
        self.transient
            .get(&key)
            .or_else(|| match key {
                Key::Value(t) => self.values.get(&t),
                Key::Grad(t) => self.grads.get(&t),
                Key::Scratch(_) | Key::Transposed(_) => None,
            })
            .ok_or_else(|| Error::Invalid(format!("executor: no buffer for {key:?}")))
    }
    pub fn v(&self, t: TensorId) -> Result<&Tensor> {
        self.get(Key::Value(t))
    }
    pub fn g(&self, t: TensorId) -> Result<&Tensor> {
        self.get(Key::Grad(t))
    }
}

impl Executor {
    /// The layer names of the training program in execution order (forward, then backward).
    pub fn train_layer_names(&mut self) -> Result<Vec<String>> {
        self.ensure_train()?;
        Ok(self.train.as_ref().map(|p| p.layers.iter().map(|l| l.name.clone()).collect()).unwrap_or_default())
    }

    /// Bytes bound by the dispatches of one training step (every tensor each dispatch binds, counted once per
    /// dispatch: forward, backward, loss scaling, accumulation and the optimizer): the memory traffic the step asks
    /// for, a count that carries over to any GPU.
    pub fn step_bytes_bound(&mut self) -> Result<u64> {
        self.ensure_train()?;
        let p = self.train.as_ref().expect("compiled");
        let layers = p.layers.iter().flat_map(|l| &l.dispatches);
        let rest = p.unscale.iter().chain(&p.rescale).chain(p.optim.iter().map(|(_, d)| d));
        let accumulate = p.accumulate.iter().map(|(_, d)| d).filter(|_| self.cfg.accum > 1);
        Ok(layers.chain(rest).chain(accumulate).map(|d| d.bytes()).sum())
    }

    /// Planned GPU bytes of the training (or evaluation) program without allocating its buffers: persistent
    /// tensors plus the memory plan. Works even where a tensor exceeds this adapter's binding limit (the plan is
    /// then a figure for a larger GPU).
    pub fn plan_bytes(&self, training: bool) -> Result<u64> {
        Ok(self.persistent_bytes() + self.transient_bytes(&self.layout(training)?, training))
    }

    /// Bytes a program allocates beyond the persistent tensors: its memory plan's buffers, the pixel stage's upload
    /// buffers and, with accumulation over pixel batches, the staging of a whole cycle.
    fn transient_bytes(&self, layout: &Layout, training: bool) -> u64 {
        layout.total_bytes(self.pixel_stage(training)) + self.staging_bytes(training, layout.dropout_sites())
    }

    /// (micro-batches, side) of the staging buffers a training program keeps for one-submission accumulation:
    /// with gradient accumulation over pixel batches only.
    fn staging_shape(&self, training: bool) -> Option<(usize, usize)> {
        let k = self.cfg.accum;
        (training && k > 1).then_some(()).and(self.pixel_stage(true)).map(|(_, side)| (k, side))
    }

    /// Accumulate dispatches a training program has: one per trainable bucket with a gradient sum.
    fn accumulate_count(&self) -> usize {
        self.params.buckets.iter().filter(|b| b.sum.is_some() && self.bucket_trains(b)).count()
    }

    fn staging_bytes(&self, training: bool, dropout: usize) -> u64 {
        let Some((k, side)) = self.staging_shape(training) else { return 0 };
        let n = self.batch_size();
        let labels = (n * self.targets().row()) as u64 * DType::U32.size();
        k as u64 * (pixel_stage_bytes(n, side) + labels + uniform_block(dropout, self.accumulate_count()))
    }

    /// When a tensor of the program would exceed the adapter's storage-binding limit: the largest batch size that
    /// fits (0 when not even one image does). None: the program fits.
    pub fn batch_that_fits(&self, training: bool) -> Result<Option<usize>> {
        Ok(self.layout(training)?.oversized.map(|(_, fits)| fits))
    }

    /// When the training program's batch does not fit the adapter: the fewest equal micro-batches that do (see
    /// [`Split::of`]). None: it fits, or not even one image does (compiling then says so).
    pub fn split_to_fit(&self) -> Result<Option<Split>> {
        let batch = self.graph.tensors[self.input.0].shape[0];
        Ok(self.batch_that_fits(true)?.and_then(|fits| Split::of(batch, fits)))
    }

    /// All planned GPU bytes of the training program: persistent tensors plus the memory plan's buffers. These are
    /// exactly the storage bytes the executor allocates (readback staging and uniforms apart).
    pub fn planned_bytes(&mut self) -> Result<u64> {
        self.ensure_train()?;
        Ok(self.persistent_bytes() + self.train.as_ref().map_or(0, |p| p.transient_bytes))
    }

    pub(super) fn ensure_train(&mut self) -> Result<()> {
        if self.train.is_none() {
            self.train = Some(self.compile(true)?);
        }
        Ok(())
    }

    pub(super) fn ensure_eval(&mut self) -> Result<()> {
        if self.eval.is_none() {
            self.eval = Some(self.compile(false)?);
        }
        Ok(())
    }

    /// (batch, side of the u8 images) of the training or evaluation program's pixel stage, if batches arrive as
    /// pixels: `presize` for training, the model's input size for evaluation.
    pub(super) fn pixel_stage(&self, training: bool) -> Option<(usize, usize)> {
        // Pixel input is only set on image models (N, 3, S, S); other inputs (token rows) have no pixel stage.
        let input_side = || self.graph.tensors[self.input.0].shape[3];
        self.pixel_input.map(|s| (self.batch_size(), if training { s.presize } else { input_side() }))
    }

    /// The layers of a program and its memory plan, before any buffer exists.
    fn layout(&self, training: bool) -> Result<Layout> {
        let g = &self.graph;
        // Which tensors need a gradient: trainable parameters, and whatever is computed from one.
        let mut needs = vec![false; g.tensors.len()];
        for t in g.params() {
            needs[t.0] = self.group_trains(t, training);
        }
        // Flatten and view outputs are views of their inputs.
        let mut alias: HashMap<TensorId, TensorId> = HashMap::new();
        for node in &g.nodes {
            let y = node.op.outputs()[0];
            needs[y.0] = node.op.grad_inputs().iter().any(|t| needs[t.0]);
            if let Op::Flatten { x, y } | Op::View { x, y } = &node.op {
                alias.insert(*y, *alias.get(x).unwrap_or(x));
            }
        }
        let mut layers: Vec<PendingLayer> =
            g.nodes.iter().enumerate().map(|(i, node)| self.forward_layer(i, node, training)).collect();
        if training {
            self.derive_backward(&needs, &mut layers)?;
        }

        // Memory plan over the transient keys.
        let root = |k: Key| match k {
            Key::Value(t) => Key::Value(*alias.get(&t).unwrap_or(&t)),
            other => other,
        };
        let is_transient = |k: Key| match k {
            Key::Value(t) => !matches!(g.tensors[t.0].kind, TensorKind::Param { .. } | TensorKind::State),
            Key::Grad(t) => {
                !(matches!(g.tensors[t.0].kind, TensorKind::Param { .. }) && self.group_trains(t, training))
            }
            Key::Scratch(_) | Key::Transposed(_) => true,
        };
        let scratch: HashMap<Key, (String, Vec<usize>, DType)> = layers
            .iter()
            .flat_map(|l| {
                l.scratch.iter().map(|(k, shape, dtype)| (*k, (format!("{} scratch", l.name), shape.clone(), *dtype)))
            })
            .collect();
        let end = layers.len();
        let mut life: HashMap<Key, (usize, usize)> = HashMap::new();
        for (i, layer) in layers.iter().enumerate() {
            for k in layer.touches.iter().copied().chain(layer.scratch.iter().map(|(k, _, _)| *k)) {
                if is_transient(k) {
                    let e = life.entry(root(k)).or_insert((i, i));
                    e.0 = e.0.min(i);
                    e.1 = e.1.max(i);
                }
            }
        }
        let LossNode { logits, loss, correct, .. } = self.loss_tensors();
        for k in [Key::Value(self.input), Key::Value(self.labels)] {
            life.entry(k).or_insert((0, 0)).0 = 0;
        }
        for k in [Key::Value(loss), Key::Value(correct), Key::Grad(logits)] {
            if let Some(e) = life.get_mut(&k) {
                e.1 = end;
            }
        }
        let mut order: Vec<Key> = life.keys().copied().collect();
        order.sort_by_key(|k| match k {
            Key::Value(t) => (t.0, 0),
            Key::Grad(t) => (t.0, 1),
            Key::Scratch(node) => (*node, 2),
            Key::Transposed(t) => (t.0, 3),
        });
        let limit = self.gpu.limits().max_storage_buffer_binding_size;
        let mut oversized = None;
        let mut lifetimes = Vec::new();
        let mut keys = Vec::new();
        for k in order {
            let (name, shape, dtype) = match k {
                Key::Value(t) | Key::Grad(t) => {
                    let info = &g.tensors[t.0];
                    let int = matches!(info.kind, TensorKind::Labels | TensorKind::Saved { int: true })
                        && matches!(k, Key::Value(_));
                    let dtype = if int {
                        DType::U32
                    } else if self.stores_act(k, training) {
                        self.act_dtype()
                    } else {
                        PARAM_DTYPE
                    };
                    let name =
                        if matches!(k, Key::Grad(_)) { format!("{}.grad", info.name) } else { info.name.clone() };
                    (name, info.shape.clone(), dtype)
                }
                Key::Scratch(_) | Key::Transposed(_) => scratch[&k].clone(),
            };
            let bytes = (shape.iter().product::<usize>() as u64 * dtype.size()).next_multiple_of(4);
            // Of the tensors over the limit, the one that allows the smallest batch speaks.
            let batch = shape.first().copied().unwrap_or(1).max(1) as u64;
            let per_image = (bytes / batch).max(1);
            let fits = limit / per_image;
            if bytes > limit && oversized.as_ref().is_none_or(|(_, f)| fits < *f as u64) {
                let advice = if fits > 0 {
                    format!("a batch size of at most {fits} fits")
                } else {
                    // Activations grow with the square of the input side.
                    let side = g.tensors[self.input.0].shape.last().copied().unwrap_or(0) as f64;
                    let largest = (side * (limit as f64 / per_image as f64).sqrt()).floor() as u64;
                    format!(
                        "even one image of this input size does not fit: use a smaller input size (about {largest} \
                         pixels at most)"
                    )
                };
                oversized = Some((
                    format!(
                        "tensor '{name}' {shape:?} needs {bytes} bytes, more than this adapter's {limit}-byte \
                         storage binding limit; {advice}"
                    ),
                    fits as usize,
                ));
            }
            let (first, last) = life[&k];
            lifetimes.push(Lifetime { bytes, first, last });
            keys.push((k, name, shape, dtype));
        }
        let plan = assign_slots(&lifetimes);
        Ok(Layout { layers, keys, plan, alias, oversized })
    }

    /// Compile the training program (forward, backward, optimizer) or the evaluation program (forward in eval
    /// mode, probabilities).
    pub(super) fn compile(&self, training: bool) -> Result<Program> {
        let g = &self.graph;
        let layout = self.layout(training)?;
        if let Some((msg, _)) = &layout.oversized {
            return Err(Error::Invalid(msg.clone()));
        }
        let transient_bytes = self.transient_bytes(&layout, training);
        let dropout_sites = layout.dropout_sites();
        let Layout { layers, keys, plan, alias, .. } = layout;
        let LossNode { logits, loss, correct, .. } = self.loss_tensors();
        let mode = if training { "train" } else { "eval" };
        let slots = plan
            .slot_bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| self.gpu.storage(b, &format!("{mode} slot {i}")))
            .collect::<Result<Vec<_>>>()?;
        let mut transient = HashMap::new();
        for (i, (k, name, shape, dtype)) in keys.iter().enumerate() {
            transient.insert(*k, slots[plan.slot_of[i]].view(0, shape, *dtype, name)?);
        }
        for (&y, &x) in &alias {
            if let Some(base) = transient.get(&Key::Value(x)).cloned() {
                transient.insert(Key::Value(y), base.reshape(&g.tensors[y.0].shape)?);
            }
        }
        let views = Views {
            gpu: &self.gpu,
            transient,
            values: &self.params.values,
            grads: &self.params.grads,
            scaler: &self.scaler,
        };
        let mut built = Vec::new();
        for layer in &layers {
            let dispatches = (layer.build)(&views)?;
            built.push(Layer { name: layer.name.clone(), dispatches, dropout: layer.dropout.clone() });
        }
        let mut optim = Vec::new();
        let mut accumulate = Vec::new();
        let mut unscale = Vec::new();
        let mut rescale = None;
        let f16 = self.cfg.precision == crate::gpu::Precision::F16;
        if training && f16 {
            for b in self.params.buckets.iter().filter(|b| self.bucket_trains(b)) {
                let label = format!("unscale group {} gradients", b.group);
                unscale.push(crate::ops::scaler::unscale_check(
                    &self.gpu,
                    &b.whole(&b.grads, "grads")?,
                    &self.scaler,
                    &label,
                )?);
            }
            rescale =
                Some(crate::ops::scaler::update_scale(&self.gpu, &self.scaler, self.cfg.scale_interval, "loss scale")?);
        }
        if training {
            for (i, b) in self.params.buckets.iter().enumerate() {
                if !self.bucket_trains(b) {
                    continue;
                }
                let state = b.state.iter().zip(self.cfg.optimizer.state_names()).map(|(s, what)| b.whole(s, what));
                let state = state.collect::<Result<Vec<_>>>()?;
                let d = optimizer_step(
                    &self.gpu,
                    self.cfg.optimizer,
                    &b.whole(&b.params, "params")?,
                    &b.whole(&b.grads, "grads")?,
                    &state.iter().collect::<Vec<_>>(),
                    &self.scaler,
                    crate::ops::optim::StepCounts { counts: &self.counts, bucket: i as u32 },
                    &self.hyper[b.group],
                    1,
                    &format!("optimizer group {}", b.group),
                )?;
                optim.push((i, d));
                if let Some(sum) = &b.sum {
                    let d = crate::ops::accumulate::accumulate_gradients(
                        &self.gpu,
                        &b.whole(&b.grads, "grads")?,
                        &b.whole(sum, "gradient sum")?,
                        crate::ops::accumulate::AccumulateMode::Start,
                        1.0,
                        &format!("accumulate group {}", b.group),
                    )?;
                    accumulate.push((i, d));
                }
            }
        }
        let get = |k: Key| views.get(k).cloned();
        let mut pixels = None;
        if let (Some(stage), Some((n, presize))) = (self.pixel_input, self.pixel_stage(training)) {
            let input = get(Key::Value(self.input))?;
            let (px_shape, tf_shape) = pixel_stage_shapes(n, presize);
            let px = self.gpu.tensor(&px_shape, DType::U32, &format!("{mode} pixels"))?;
            let tf = self.gpu.tensor(&tf_shape, DType::F32, &format!("{mode} transforms"))?;
            let d = crate::data::augment::augment(
                &self.gpu,
                &px,
                &tf,
                &input,
                presize,
                &stage.normalization,
                training,
                "augment",
            )?;
            built.insert(0, Layer { name: "augment".into(), dispatches: vec![d], dropout: Vec::new() });
            pixels = Some((px, tf));
        }
        let mut staging = None;
        if let Some((k, side)) = self.staging_shape(training) {
            let n = self.batch_size();
            let (px_shape, tf_shape) = pixel_stage_shapes(n, side);
            let tensors = |shape: &[usize], dtype, what: &str| -> Result<Vec<Tensor>> {
                (0..k).map(|j| self.gpu.tensor(shape, dtype, &format!("staged {what} {j}"))).collect()
            };
            let block = uniform_block(dropout_sites, accumulate.len());
            staging = Some(Staging {
                pixels: tensors(&px_shape, DType::U32, "pixels")?,
                transforms: tensors(&tf_shape, DType::F32, "transforms")?,
                labels: tensors(&[n, self.targets().row()], DType::U32, "targets")?,
                uniforms: self.gpu.tensor(
                    &[((k as u64 * block / 4) as usize).max(1)],
                    DType::U32,
                    "staged uniforms",
                )?,
                block,
            });
        }
        Ok(Program {
            layers: built,
            optim,
            accumulate,
            unscale,
            rescale,
            input: get(Key::Value(self.input))?,
            labels: get(Key::Value(self.labels))?,
            loss: get(Key::Value(loss))?,
            correct: get(Key::Value(correct))?,
            probs: if training { None } else { Some(get(Key::Grad(logits))?) },
            logits: get(Key::Value(logits))?,
            pixels,
            staging,
            transient_bytes,
            _slots: slots,
        })
    }

    /// The element type of activations and their gradients.
    pub(super) fn act_dtype(&self) -> DType {
        match self.cfg.precision {
            crate::gpu::Precision::F16 => DType::F16,
            _ => DType::F32,
        }
    }

    /// Whether the planned tensor `k` is an activation (or an activation's gradient), stored at the activations'
    /// precision: the input and what ops compute, apart from the loss, the count and the probabilities (f32), saved
    /// statistics and parameter gradients (f32).
    fn stores_act(&self, k: Key, training: bool) -> bool {
        let LossNode { logits, loss, correct, .. } = self.loss_tensors();
        match k {
            Key::Value(t) => {
                matches!(self.graph.tensors[t.0].kind, TensorKind::Activation | TensorKind::Input)
                    && t != loss
                    && t != correct
            }
            // In evaluation the logits' gradient buffer holds the probabilities.
            Key::Grad(t) => {
                matches!(self.graph.tensors[t.0].kind, TensorKind::Activation | TensorKind::Input)
                    && (training || t != logits)
            }
            Key::Scratch(_) | Key::Transposed(_) => false,
        }
    }

    pub(super) fn loss_tensors(&self) -> LossNode {
        let (logits, _, loss, correct, f) =
            self.graph.nodes[self.loss_node].op.as_loss().expect("loss_node is checked in Executor::new");
        LossNode { logits, loss, correct, f }
    }
}

/// The loss node's tensors and function.
pub(super) struct LossNode {
    pub logits: TensorId,
    pub loss: TensorId,
    pub correct: TensorId,
    pub f: Loss,
}
