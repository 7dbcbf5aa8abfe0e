//! The executor: compiles a [`Graph`] once into GPU work and runs training steps.
//!
//! - Parameters live in one storage buffer per (group, weight-decay) bucket, with their gradients and optimizer
//!   state in matching buffers: one optimizer dispatch per bucket updates all of them, and freezing a group skips
//!   its buckets. Batch-norm running statistics live in their own buffer. All of these stay on the GPU.
//! - A program (training or evaluation) is a list of layers, each a list of [`Dispatch`]es built once: the forward
//!   pass, then (training) the backward pass derived in reverse order — one `match` arm per [`Op`] — then the
//!   optimizer. Transient tensors (activations, their gradients, saved statistics) get buffers from the memory
//!   plan ([`plan`](super::plan)).
//! - A training step uploads the batch and labels, rewrites the few uniforms that change per step (learning rates,
//!   momenta, dropout step), encodes everything in one command encoder and submits ONCE; the loss and the
//!   correct-prediction count (8 bytes) are copied into a staging ring and read back asynchronously.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{DType, Dispatch, Gpu, ReadbackRing, Storage, Tensor, Ticket};
use crate::graph::plan::{assign_slots, Lifetime};
use crate::graph::{Graph, Op, TensorId, TensorKind};
use crate::ops::dropout::DropoutParams;
use crate::ops::optim::{optimizer_step, Hyper, Optimizer};

mod backward;
mod forward;

/// How the executor trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExecutorConfig {
    pub optimizer: Optimizer,
    /// Batch norm of frozen groups runs in eval mode with its parameters frozen too (nothing of a frozen body
    /// trains, and backward stops at the first trainable layer). Off: fastai's default, batch-norm parameters keep
    /// training and use batch statistics while their group is frozen.
    pub freeze_bn: bool,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig { optimizer: Optimizer::Adam, freeze_bn: false }
    }
}

/// A tensor copied to the CPU: name, shape, values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Loss and correct predictions of one training step, as read back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepMetrics {
    pub step: u64,
    pub loss: f32,
    pub correct: f32,
}

/// What crossed between CPU and GPU, and how often work was submitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub steps: u64,
    pub submits: u64,
    pub bytes_uploaded: u64,
    pub bytes_read_back: u64,
    /// CPU time spent encoding training steps (building the command buffer), nanoseconds.
    pub encode_ns: u64,
    /// Time spent inside the submit call, nanoseconds: the driver may block it while earlier steps run.
    pub submit_ns: u64,
}

/// A transient tensor of a program: a value, or the gradient of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Value(TensorId),
    Grad(TensorId),
}

struct Bucket {
    group: usize,
    decay: bool,
    len: usize,
    params: Storage,
    grads: Storage,
    grad_avg: Storage,
    sqr_avg: Storage,
    step: u64,
}

/// Dispatches of one layer, with the dropout dispatches whose per-step uniform must be rewritten.
struct Layer {
    name: String,
    dispatches: Vec<Dispatch>,
    dropout: Vec<DropoutSite>,
}

/// A dropout dispatch whose uniform gets this step's number before each submit.
#[derive(Clone, Copy, Debug)]
struct DropoutSite {
    dispatch: usize,
    p: f64,
    seed: u32,
    accumulate: bool,
    len: usize,
}

/// A compiled program.
struct Program {
    layers: Vec<Layer>,
    /// (bucket, dispatch)
    optim: Vec<(usize, Dispatch)>,
    input: Tensor,
    labels: Tensor,
    loss: Tensor,
    correct: Tensor,
    probs: Option<Tensor>,
    logits: Tensor,
    /// With a pixel input stage: the u8 batch (packed) and the per-image transforms the augment layer reads.
    pixels: Option<(Tensor, Tensor)>,
    transient_bytes: u64,
    _slots: Vec<Storage>,
}

/// Builds a layer's dispatches once the program's buffers exist.
type Build = Box<dyn Fn(&Views) -> Result<Vec<Dispatch>>>;

/// A program's layers and memory plan before its buffers exist.
struct Layout {
    layers: Vec<PendingLayer>,
    keys: Vec<Key>,
    plan: crate::graph::plan::SlotPlan,
    alias: HashMap<TensorId, TensorId>,
    /// Why the plan cannot run on this adapter (a tensor over the binding limit), if it cannot.
    oversized: Option<String>,
}

impl Program {
    /// The dispatches grouped by layer, as [`Gpu::submit_layers`] takes them.
    fn layer_groups(&self) -> Vec<(&str, Vec<&Dispatch>)> {
        self.layers.iter().map(|l| (l.name.as_str(), l.dispatches.iter().collect())).collect()
    }
}

/// A layer before its buffers exist: what it touches, and how to build its dispatches once they do.
struct PendingLayer {
    name: String,
    touches: Vec<Key>,
    dropout: Vec<DropoutSite>,
    build: Build,
}

/// Tensors by key while a program's dispatches are built.
struct Views<'a> {
    gpu: &'a Gpu,
    transient: HashMap<Key, Tensor>,
    values: &'a HashMap<TensorId, Tensor>,
    grads: &'a HashMap<TensorId, Tensor>,
}

impl Views<'_> {
    fn get(&self, key: Key) -> Result<&Tensor> {
        self.transient
            .get(&key)
            .or_else(|| match key {
                Key::Value(t) => self.values.get(&t),
                Key::Grad(t) => self.grads.get(&t),
            })
            .ok_or_else(|| Error::Invalid(format!("executor: no buffer for {key:?}")))
    }
    fn v(&self, t: TensorId) -> Result<&Tensor> {
        self.get(Key::Value(t))
    }
    fn g(&self, t: TensorId) -> Result<&Tensor> {
        self.get(Key::Grad(t))
    }
}

/// Runs a graph on the GPU: training steps, gradients, evaluation and prediction.
pub struct Executor {
    gpu: Arc<Gpu>,
    graph: Graph,
    cfg: ExecutorConfig,
    trainable: Vec<bool>,
    hyper: Vec<Hyper>,
    buckets: Vec<Bucket>,
    /// Parameters (views into bucket storage) and state (running statistics).
    values: HashMap<TensorId, Tensor>,
    /// Parameter gradients (views into bucket gradient storage).
    grads: HashMap<TensorId, Tensor>,
    persistent_bytes: u64,
    _state: Option<Storage>,
    train: Option<Program>,
    eval: Option<Program>,
    ring: ReadbackRing,
    pending: VecDeque<(u64, Ticket, Ticket)>,
    /// Metrics that arrived while waiting for ring space, not yet handed out.
    finished: Vec<StepMetrics>,
    counters: Counters,
    /// Time the next training step dispatch by dispatch ([`Executor::profile_next_step`]).
    profile_next: bool,
    last_profile: Option<StepProfile>,
    /// Wrap the next training step in a graphics-debugger capture ([`Executor::capture_next_step`]).
    capture_next: bool,
    step: u64,
    input: TensorId,
    labels: TensorId,
    loss_node: usize,
    pixel_input: Option<PixelInput>,
}

/// Batches arrive as presized u8 pixels and the GPU augments and normalizes them into the model's input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelInput {
    /// Side of the square u8 images uploaded.
    pub presize: usize,
    pub normalization: crate::nn::Normalization,
}

fn align(n: usize, to: usize) -> usize {
    n.next_multiple_of(to)
}

impl Executor {
    /// Allocate parameters, gradients, optimizer state and running statistics, and upload their initial values.
    pub fn new(gpu: Arc<Gpu>, graph: Graph, cfg: ExecutorConfig) -> Result<Self> {
        let find = |kind: &str, pred: &dyn Fn(&TensorKind) -> bool| {
            let ids: Vec<usize> = (0..graph.tensors.len()).filter(|&i| pred(&graph.tensors[i].kind)).collect();
            match ids.as_slice() {
                [one] => Ok(TensorId(*one)),
                _ => Err(Error::Invalid(format!("the graph needs exactly one {kind} tensor, it has {}", ids.len()))),
            }
        };
        let input = find("input", &|k| *k == TensorKind::Input)?;
        let labels = find("labels", &|k| *k == TensorKind::Labels)?;
        let losses: Vec<usize> =
            (0..graph.nodes.len()).filter(|&i| matches!(graph.nodes[i].op, Op::SoftmaxCrossEntropy { .. })).collect();
        let &[loss_node] = losses.as_slice() else {
            return Err(Error::Invalid(format!("the graph needs exactly one loss, it has {}", losses.len())));
        };
        if loss_node != graph.nodes.len() - 1 {
            return Err(Error::Invalid("the loss must be the last node of the graph".into()));
        }

        // Parameters into buckets by (group, decay); each view starts on a binding-aligned offset.
        let align_elems = (gpu.binding_alignment() / 4).max(1) as usize;
        // ((group, decay), [(parameter, offset in elements)], length in elements)
        type BucketLayout = ((usize, bool), Vec<(TensorId, usize)>, usize);
        let mut layout: Vec<BucketLayout> = Vec::new();
        for t in graph.params() {
            let TensorKind::Param { group, decay, .. } = graph.tensors[t.0].kind else { continue };
            let i = match layout.iter().position(|(k, _, _)| *k == (group, decay)) {
                Some(i) => i,
                None => {
                    layout.push(((group, decay), Vec::new(), 0));
                    layout.len() - 1
                }
            };
            let (_, members, len) = &mut layout[i];
            members.push((t, *len));
            *len = align(*len + graph.tensors[t.0].numel(), align_elems);
        }
        let mut values = HashMap::new();
        let mut grads = HashMap::new();
        let mut buckets = Vec::new();
        let mut persistent_bytes = 0;
        for ((group, decay), members, len) in layout {
            let name = format!("group {group}{}", if decay { "" } else { " no-decay" });
            let bytes = len as u64 * 4;
            let storage = |what: &str| gpu.storage(bytes, &format!("{name} {what}"));
            let bucket = Bucket {
                group,
                decay,
                len,
                params: storage("params")?,
                grads: storage("grads")?,
                grad_avg: storage("grad_avg")?,
                sqr_avg: storage("sqr_avg")?,
                step: 0,
            };
            persistent_bytes += 4 * bytes;
            for (t, offset) in members {
                let info = &graph.tensors[t.0];
                let off = offset as u64 * 4;
                let v = bucket.params.view(off, &info.shape, DType::F32, &info.name)?;
                if let Some(init) = &info.init {
                    gpu.write_f32(&v, init)?;
                }
                values.insert(t, v);
                grads.insert(t, bucket.grads.view(off, &info.shape, DType::F32, &format!("{}.grad", info.name))?);
            }
            buckets.push(bucket);
        }
        // Running statistics: one buffer.
        let states: Vec<usize> =
            (0..graph.tensors.len()).filter(|&i| graph.tensors[i].kind == TensorKind::State).collect();
        let mut offsets = Vec::new();
        let mut len = 0;
        for &i in &states {
            offsets.push(len);
            len = align(len + graph.tensors[i].numel(), align_elems);
        }
        let state = if states.is_empty() { None } else { Some(gpu.storage(len as u64 * 4, "running statistics")?) };
        if let Some(storage) = &state {
            persistent_bytes += storage.bytes();
            for (&i, &off) in states.iter().zip(&offsets) {
                let info = &graph.tensors[i];
                let v = storage.view(off as u64 * 4, &info.shape, DType::F32, &info.name)?;
                if let Some(init) = &info.init {
                    gpu.write_f32(&v, init)?;
                }
                values.insert(TensorId(i), v);
            }
        }
        let groups = graph.groups();
        let ring = ReadbackRing::new(&gpu, "step metrics", 64, 4)?;
        Ok(Executor {
            gpu,
            graph,
            cfg,
            trainable: vec![true; groups],
            hyper: vec![Hyper::default(); groups],
            buckets,
            values,
            grads,
            persistent_bytes,
            _state: state,
            train: None,
            eval: None,
            ring,
            pending: VecDeque::new(),
            finished: Vec::new(),
            profile_next: false,
            last_profile: None,
            capture_next: false,
            counters: Counters::default(),
            step: 0,
            input,
            labels,
            loss_node,
            pixel_input: None,
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Training steps run so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Whether parameter group `group` trains.
    pub fn is_trainable(&self, group: usize) -> bool {
        self.trainable[group]
    }

    /// Freeze or unfreeze a parameter group. A change recompiles the backward pass (so no gradient work is done
    /// for frozen layers) and resets the optimizer state, as fastai's freeze_to does.
    pub fn set_trainable(&mut self, group: usize, trainable: bool) -> Result<()> {
        if group >= self.trainable.len() {
            return Err(Error::Invalid(format!(
                "parameter group {group} does not exist ({} groups)",
                self.trainable.len()
            )));
        }
        if self.trainable[group] != trainable {
            self.trainable[group] = trainable;
            self.train = None;
            if self.cfg.freeze_bn {
                self.eval = None;
            }
            self.reset_optimizer()?;
        }
        Ok(())
    }

    /// Freeze groups [0, n) and unfreeze the rest (fastai's freeze_to).
    pub fn freeze_to(&mut self, n: usize) -> Result<()> {
        for g in 0..self.trainable.len() {
            self.set_trainable(g, g >= n)?;
        }
        Ok(())
    }

    /// Zero the optimizer's moments and step counts.
    pub fn reset_optimizer(&mut self) -> Result<()> {
        for b in &mut self.buckets {
            self.gpu.clear_storage(&b.grad_avg)?;
            self.gpu.clear_storage(&b.sqr_avg)?;
            b.step = 0;
        }
        Ok(())
    }

    /// Everything training changes, for a checkpoint: every parameter and running statistic by name, each
    /// optimizer bucket's moments (`optimizer.<bucket>.grad_avg` / `.sqr_avg`), and the counters (trainable
    /// flags, bucket step counts, the training step) as text.
    pub fn training_state(&self) -> Result<(Vec<NamedTensor>, String)> {
        let mut tensors = Vec::new();
        for info in &self.graph.tensors {
            if matches!(info.kind, TensorKind::Param { .. } | TensorKind::State) {
                tensors.push((info.name.clone(), info.shape.clone(), self.read_value(&info.name)?));
            }
        }
        for (i, b) in self.buckets.iter().enumerate() {
            for (what, storage) in [("grad_avg", &b.grad_avg), ("sqr_avg", &b.sqr_avg)] {
                let v = storage.view(0, &[b.len], DType::F32, what)?;
                tensors.push((format!("optimizer.{i}.{what}"), vec![b.len], self.gpu.read_f32(&v)?));
            }
        }
        let counters = serde_json::json!({
            "step": self.step,
            "trainable": self.trainable,
            "bucket_steps": self.buckets.iter().map(|b| b.step).collect::<Vec<_>>(),
        });
        Ok((tensors, counters.to_string()))
    }

    /// Restore what [`Executor::training_state`] saved (same model). `get` returns a saved tensor by name.
    pub fn restore_training_state(&mut self, get: &dyn Fn(&str) -> Result<Vec<f32>>, counters: &str) -> Result<()> {
        let bad = |why: String| Error::Invalid(format!("checkpoint does not match this model: {why}"));
        let c: serde_json::Value = serde_json::from_str(counters).map_err(|e| bad(e.to_string()))?;
        let trainable: Vec<bool> = serde_json::from_value(c["trainable"].clone()).map_err(|e| bad(e.to_string()))?;
        let bucket_steps: Vec<u64> =
            serde_json::from_value(c["bucket_steps"].clone()).map_err(|e| bad(e.to_string()))?;
        if trainable.len() != self.trainable.len() || bucket_steps.len() != self.buckets.len() {
            return Err(bad(format!("{} groups and {} buckets saved", trainable.len(), bucket_steps.len())));
        }
        for (g, &t) in trainable.iter().enumerate() {
            // Without the optimizer reset that set_trainable does on a change: the moments come next.
            if self.trainable[g] != t {
                self.trainable[g] = t;
                self.train = None;
                self.eval = None;
            }
        }
        let names: Vec<String> = self
            .graph
            .tensors
            .iter()
            .filter(|i| matches!(i.kind, TensorKind::Param { .. } | TensorKind::State))
            .map(|i| i.name.clone())
            .collect();
        for name in names {
            self.write_value(&name, &get(&name)?)?;
        }
        for (i, b) in self.buckets.iter_mut().enumerate() {
            for (what, storage) in [("grad_avg", &b.grad_avg), ("sqr_avg", &b.sqr_avg)] {
                let v = storage.view(0, &[b.len], DType::F32, what)?;
                self.gpu.write_f32(&v, &get(&format!("optimizer.{i}.{what}"))?)?;
            }
            b.step = bucket_steps[i];
        }
        self.step = c["step"].as_u64().ok_or_else(|| bad("no step count".into()))?;
        Ok(())
    }

    /// Hyper-parameters of a group for the next steps (written into the optimizer's uniform each step).
    pub fn set_hyper(&mut self, group: usize, hyper: Hyper) -> Result<()> {
        let slot = self.hyper.get_mut(group).ok_or_else(|| Error::Invalid(format!("no parameter group {group}")))?;
        *slot = hyper;
        Ok(())
    }

    pub fn hyper(&self, group: usize) -> Hyper {
        self.hyper[group]
    }

    /// The layer names of the training program in execution order (forward, then backward).
    pub fn train_layer_names(&mut self) -> Result<Vec<String>> {
        self.ensure_train()?;
        Ok(self.train.as_ref().map(|p| p.layers.iter().map(|l| l.name.clone()).collect()).unwrap_or_default())
    }

    /// GPU bytes of parameters, gradients, optimizer state and running statistics.
    pub fn persistent_bytes(&self) -> u64 {
        self.persistent_bytes
    }

    /// Planned GPU bytes of the training (or evaluation) program without allocating its buffers: persistent
    /// tensors plus the memory plan. Works even where a tensor exceeds this adapter's binding limit (the plan is
    /// then a figure for a larger GPU).
    pub fn plan_bytes(&self, training: bool) -> Result<u64> {
        Ok(self.persistent_bytes + self.layout(training)?.plan.total_bytes())
    }

    /// All planned GPU bytes of the training program: persistent tensors plus the memory plan's buffers.
    pub fn planned_bytes(&mut self) -> Result<u64> {
        self.ensure_train()?;
        Ok(self.persistent_bytes + self.train.as_ref().map_or(0, |p| p.transient_bytes))
    }

    fn tensor_id(&self, name: &str) -> Result<TensorId> {
        self.graph.find(name).ok_or_else(|| Error::Invalid(format!("the model has no tensor named '{name}'")))
    }

    /// Read a parameter or running statistic by name.
    pub fn read_value(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor_id(name)?;
        let v = self.values.get(&t).ok_or_else(|| Error::Invalid(format!("'{name}' is not a parameter or state")))?;
        self.gpu.read_f32(v)
    }

    /// Overwrite a parameter or running statistic (e.g. with pretrained weights).
    pub fn write_value(&self, name: &str, data: &[f32]) -> Result<()> {
        let t = self.tensor_id(name)?;
        let v = self.values.get(&t).ok_or_else(|| Error::Invalid(format!("'{name}' is not a parameter or state")))?;
        self.gpu.write_f32(v, data)
    }

    /// Read the gradient of a parameter from the last step that computed it.
    pub fn read_grad(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor_id(name)?;
        let g = self.grads.get(&t).ok_or_else(|| Error::Invalid(format!("'{name}' is not a parameter")))?;
        self.gpu.read_f32(g)
    }

    fn group_trains(&self, t: TensorId, training: bool) -> bool {
        match self.graph.tensors[t.0].kind {
            TensorKind::Param { group, is_bn, .. } => {
                training && (self.trainable[group] || (is_bn && !self.cfg.freeze_bn))
            }
            _ => false,
        }
    }

    fn bn_trains(&self, gamma: TensorId, training: bool) -> bool {
        match self.graph.tensors[gamma.0].kind {
            TensorKind::Param { group, .. } => training && (self.trainable[group] || !self.cfg.freeze_bn),
            _ => training,
        }
    }

    fn ensure_train(&mut self) -> Result<()> {
        if self.train.is_none() {
            self.train = Some(self.compile(true)?);
        }
        Ok(())
    }

    fn ensure_eval(&mut self) -> Result<()> {
        if self.eval.is_none() {
            self.eval = Some(self.compile(false)?);
        }
        Ok(())
    }

    /// The layers of a program and its memory plan, before any buffer exists.
    fn layout(&self, training: bool) -> Result<Layout> {
        let g = &self.graph;
        let nt = g.tensors.len();
        // Which tensors need a gradient: trainable parameters, and whatever is computed from one.
        let mut needs = vec![false; nt];
        for t in g.params() {
            needs[t.0] = self.group_trains(t, training);
        }
        // Flatten outputs are views of their inputs.
        let mut alias: HashMap<TensorId, TensorId> = HashMap::new();
        for node in &g.nodes {
            // Running statistics and labels carry no gradient.
            let data_inputs: Vec<TensorId> = match &node.op {
                Op::BatchNorm { x, gamma, beta, .. } => vec![*x, *gamma, *beta],
                Op::SoftmaxCrossEntropy { logits, .. } => vec![*logits],
                op => op.inputs(),
            };
            let y = node.op.outputs()[0];
            needs[y.0] = data_inputs.iter().any(|t| needs[t.0]);
            if let Op::Flatten { x, y } = &node.op {
                alias.insert(*y, *alias.get(x).unwrap_or(x));
            }
        }
        let mut layers: Vec<PendingLayer> = g.nodes.iter().map(|node| self.forward_layer(node, training)).collect();

        if training {
            self.derive_backward(&needs, &mut layers)?;
        }

        // Memory plan over the transient keys.
        let root = |k: Key| match k {
            Key::Value(t) => Key::Value(*alias.get(&t).unwrap_or(&t)),
            g => g,
        };
        let is_transient = |k: Key| match k {
            Key::Value(t) => !matches!(g.tensors[t.0].kind, TensorKind::Param { .. } | TensorKind::State),
            Key::Grad(t) => {
                !(matches!(g.tensors[t.0].kind, TensorKind::Param { .. }) && self.group_trains(t, training))
            }
        };
        let end = layers.len();
        let mut life: HashMap<Key, (usize, usize)> = HashMap::new();
        for (i, layer) in layers.iter().enumerate() {
            for &k in &layer.touches {
                if is_transient(k) {
                    let e = life.entry(root(k)).or_insert((i, i));
                    e.0 = e.0.min(i);
                    e.1 = e.1.max(i);
                }
            }
        }
        let SoftmaxCe { logits, loss, correct } = self.loss_tensors();
        for k in [Key::Value(self.input), Key::Value(self.labels)] {
            life.entry(k).or_insert((0, 0)).0 = 0;
        }
        for k in [Key::Value(loss), Key::Value(correct), Key::Grad(logits)] {
            if let Some(e) = life.get_mut(&k) {
                e.1 = end;
            }
        }
        let mut keys: Vec<Key> = life.keys().copied().collect();
        keys.sort_by_key(|k| match k {
            Key::Value(t) => (t.0, 0),
            Key::Grad(t) => (t.0, 1),
        });
        let limit = self.gpu.limits().max_storage_buffer_binding_size;
        let mut oversized = None;
        let mut lifetimes = Vec::new();
        for &k in &keys {
            let (Key::Value(t) | Key::Grad(t)) = k;
            let info = &g.tensors[t.0];
            let bytes = info.numel() as u64 * 4;
            if bytes > limit && oversized.is_none() {
                let batch = info.shape.first().copied().unwrap_or(1).max(1) as u64;
                let fits = limit / (bytes / batch).max(1);
                oversized = Some(format!(
                    "tensor '{}' {:?} needs {bytes} bytes, more than this adapter's {limit}-byte storage binding \
                     limit; a batch size of at most {fits} fits",
                    info.name, info.shape
                ));
            }
            let (first, last) = life[&k];
            lifetimes.push(Lifetime { bytes, first, last });
        }
        let plan = assign_slots(&lifetimes);
        Ok(Layout { layers, keys, plan, alias, oversized })
    }

    /// Compile the training program (forward, backward, optimizer) or the evaluation program (forward in eval
    /// mode, probabilities).
    fn compile(&self, training: bool) -> Result<Program> {
        let g = &self.graph;
        let Layout { layers, keys, plan, alias, oversized } = self.layout(training)?;
        if let Some(msg) = oversized {
            return Err(Error::Invalid(msg));
        }
        let SoftmaxCe { logits, loss, correct } = self.loss_tensors();
        let mode = if training { "train" } else { "eval" };
        let slots = plan
            .slot_bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| self.gpu.storage(b, &format!("{mode} slot {i}")))
            .collect::<Result<Vec<_>>>()?;
        let mut transient = HashMap::new();
        for (i, &k) in keys.iter().enumerate() {
            let (Key::Value(t) | Key::Grad(t)) = k;
            let info = &g.tensors[t.0];
            let int =
                matches!(info.kind, TensorKind::Labels | TensorKind::Saved { int: true }) && matches!(k, Key::Value(_));
            let dtype = if int { DType::U32 } else { DType::F32 };
            let label = match k {
                Key::Value(_) => info.name.clone(),
                Key::Grad(_) => format!("{}.grad", info.name),
            };
            transient.insert(k, slots[plan.slot_of[i]].view(0, &info.shape, dtype, &label)?);
        }
        for (&y, &x) in &alias {
            if let Some(base) = transient.get(&Key::Value(x)).cloned() {
                transient.insert(Key::Value(y), base.reshape(&g.tensors[y.0].shape)?);
            }
        }
        let views = Views { gpu: &self.gpu, transient, values: &self.values, grads: &self.grads };
        let mut built = Vec::new();
        for layer in &layers {
            let dispatches = (layer.build)(&views)?;
            built.push(Layer { name: layer.name.clone(), dispatches, dropout: layer.dropout.clone() });
        }
        let mut optim = Vec::new();
        if training {
            for (i, b) in self.buckets.iter().enumerate() {
                if !self.buckets_trains(b) {
                    continue;
                }
                let whole =
                    |s: &Storage, what: &str| s.view(0, &[b.len], DType::F32, &format!("group {} {what}", b.group));
                let (p, gr, m, v) = (
                    whole(&b.params, "params")?,
                    whole(&b.grads, "grads")?,
                    whole(&b.grad_avg, "grad_avg")?,
                    whole(&b.sqr_avg, "sqr_avg")?,
                );
                let d = optimizer_step(
                    &self.gpu,
                    self.cfg.optimizer,
                    &p,
                    &gr,
                    &m,
                    Some(&v),
                    &self.hyper[b.group],
                    1,
                    &format!("optimizer group {}", b.group),
                )?;
                optim.push((i, d));
            }
        }
        let get = |k: Key| views.get(k).cloned();
        let mut pixels = None;
        if let Some(stage) = self.pixel_input {
            let input = get(Key::Value(self.input))?;
            let n = input.shape()[0];
            let words = (n * stage.presize * stage.presize * 3).div_ceil(4);
            let px = self.gpu.tensor(&[words], DType::U32, &format!("{mode} pixels"))?;
            let tf = self.gpu.tensor(&[n, 8], DType::F32, &format!("{mode} transforms"))?;
            let d = crate::data::augment::augment(
                &self.gpu,
                &px,
                &tf,
                &input,
                stage.presize,
                &stage.normalization,
                training,
                "augment",
            )?;
            built.insert(0, Layer { name: "augment".into(), dispatches: vec![d], dropout: Vec::new() });
            pixels = Some((px, tf));
        }
        Ok(Program {
            layers: built,
            optim,
            input: get(Key::Value(self.input))?,
            labels: get(Key::Value(self.labels))?,
            loss: get(Key::Value(loss))?,
            correct: get(Key::Value(correct))?,
            probs: if training { None } else { Some(get(Key::Grad(logits))?) },
            logits: get(Key::Value(logits))?,
            pixels,
            transient_bytes: plan.total_bytes(),
            _slots: slots,
        })
    }

    fn buckets_trains(&self, b: &Bucket) -> bool {
        let members_train = self
            .grads
            .keys()
            .filter(|t| matches!(self.graph.tensors[t.0].kind, TensorKind::Param { group, decay, .. } if group == b.group && decay == b.decay))
            .any(|&t| self.group_trains(t, true));
        members_train
    }

    fn loss_tensors(&self) -> SoftmaxCe {
        match &self.graph.nodes[self.loss_node].op {
            Op::SoftmaxCrossEntropy { logits, loss, correct, .. } => {
                SoftmaxCe { logits: *logits, loss: *loss, correct: *correct }
            }
            _ => unreachable!("loss_node is checked in Executor::new"),
        }
    }

    fn check_images(&self, images: &[f32]) -> Result<()> {
        if self.pixel_input.is_some() {
            return Err(Error::Invalid(
                "this executor takes u8 pixel batches (set_pixel_input): use the *_pixels calls".into(),
            ));
        }
        let want = self.graph.tensors[self.input.0].numel();
        if images.len() != want {
            return Err(Error::Invalid(format!(
                "a batch must hold {want} values ({:?}), got {}",
                self.graph.tensors[self.input.0].shape,
                images.len()
            )));
        }
        Ok(())
    }

    fn check_labels(&self, labels: &[u32]) -> Result<()> {
        let n = self.graph.tensors[self.labels.0].numel();
        let classes = self.graph.shape(self.loss_tensors().logits)[1] as u32;
        if labels.len() != n {
            return Err(Error::Invalid(format!("a batch needs {n} labels, got {}", labels.len())));
        }
        if let Some(bad) = labels.iter().find(|&&l| l >= classes) {
            return Err(Error::Invalid(format!("label {bad} is out of range for {classes} classes")));
        }
        Ok(())
    }

    fn upload(&mut self, training: bool, images: &[f32], labels: &[u32]) -> Result<()> {
        let p = if training { self.train.as_ref() } else { self.eval.as_ref() }.expect("compiled before upload");
        self.gpu.write_f32(&p.input, images)?;
        self.gpu.write_bytes(&p.labels, bytemuck::cast_slice(labels))?;
        self.counters.bytes_uploaded += (images.len() * 4 + labels.len() * 4) as u64;
        Ok(())
    }

    /// Feed batches as presized u8 pixels from now on: the GPU augments (training) or just normalizes
    /// (evaluation) them into the model's input, in the same submission as the step.
    pub fn set_pixel_input(&mut self, stage: PixelInput) -> Result<()> {
        let shape = &self.graph.tensors[self.input.0].shape;
        if shape.len() != 4 || shape[1] != 3 {
            return Err(Error::Invalid(format!(
                "pixel input needs an (N, 3, H, W) model input, this one is {shape:?}"
            )));
        }
        self.pixel_input = Some(stage);
        self.train = None;
        self.eval = None;
        Ok(())
    }

    fn upload_pixels(
        &mut self,
        training: bool,
        pixels: &[u8],
        transforms: &[crate::data::augment::ImageTransform],
        labels: &[u32],
    ) -> Result<()> {
        let n = self.graph.tensors[self.labels.0].numel();
        let stage =
            self.pixel_input.ok_or_else(|| Error::Invalid("call set_pixel_input before feeding pixels".into()))?;
        if pixels.len() != n * stage.presize * stage.presize * 3 || transforms.len() != n || labels.len() != n {
            return Err(Error::Invalid(format!(
                "a pixel batch needs {n} images of {0}x{0}x3 bytes, {n} transforms and {n} labels; got {1} bytes, {2}, {3}",
                stage.presize,
                pixels.len(),
                transforms.len(),
                labels.len()
            )));
        }
        self.check_labels(labels)?;
        if training {
            self.ensure_train()?
        } else {
            self.ensure_eval()?
        }
        let p = if training { self.train.as_ref() } else { self.eval.as_ref() }.expect("compiled");
        let (px, tf) = p.pixels.as_ref().expect("compiled with a pixel stage");
        self.gpu.write_bytes(px, bytemuck::cast_slice(&crate::data::augment::pack_pixels(pixels)))?;
        let params: Vec<f32> = transforms.iter().flat_map(|t| t.to_params()).collect();
        self.gpu.write_f32(tf, &params)?;
        self.gpu.write_bytes(&p.labels, bytemuck::cast_slice(labels))?;
        self.counters.bytes_uploaded += px.bytes() + tf.bytes() + labels.len() as u64 * 4;
        Ok(())
    }

    /// A training step from u8 pixels (N, P, P, 3) and per-image augmentation transforms.
    pub fn train_step_pixels(
        &mut self,
        pixels: &[u8],
        transforms: &[crate::data::augment::ImageTransform],
        labels: &[u32],
    ) -> Result<()> {
        self.upload_pixels(true, pixels, transforms, labels)?;
        self.submit_training(true)
    }

    /// Loss and correct count of a pixel batch in eval mode (identity transform: the pixels are centre crops).
    pub fn evaluate_pixels(&mut self, pixels: &[u8], labels: &[u32]) -> Result<(f32, f32)> {
        let n = labels.len();
        self.upload_pixels(false, pixels, &vec![crate::data::augment::ImageTransform::IDENTITY; n], labels)?;
        self.submit_eval()
    }

    /// Class probabilities of a pixel batch in eval mode.
    pub fn predict_pixels(&mut self, pixels: &[u8]) -> Result<Vec<f32>> {
        let n = self.graph.tensors[self.labels.0].numel();
        self.upload_pixels(false, pixels, &vec![crate::data::augment::ImageTransform::IDENTITY; n], &vec![0; n])?;
        self.submit_infer(true)
    }

    /// Encode and submit one training step (forward, backward, optimizer) without waiting for it. Its loss and
    /// correct count arrive later through [`Executor::poll_metrics`] / [`Executor::wait_metrics`].
    pub fn train_step(&mut self, images: &[f32], labels: &[u32]) -> Result<()> {
        self.run_training(images, labels, true)
    }

    /// Forward and backward without the optimizer update, waiting for the result: gradients are then readable
    /// with [`Executor::read_grad`].
    pub fn compute_gradients(&mut self, images: &[f32], labels: &[u32]) -> Result<StepMetrics> {
        self.run_training(images, labels, false)?;
        self.wait_metrics()?.pop().ok_or_else(|| Error::Invalid("no metrics came back".into()))
    }

    fn run_training(&mut self, images: &[f32], labels: &[u32], update: bool) -> Result<()> {
        self.check_images(images)?;
        self.check_labels(labels)?;
        self.ensure_train()?;
        self.upload(true, images, labels)?;
        self.submit_training(update)
    }

    /// Submit the compiled training program on the batch already uploaded.
    fn submit_training(&mut self, update: bool) -> Result<()> {
        // Keep the staging ring from running out: wait for the oldest step when it is nearly full.
        if self.pending.len() >= 30 {
            let (step, loss, correct) = self.pending.pop_front().expect("non-empty");
            let m = self.read_metrics(step, loss, correct)?;
            self.finished.push(m);
        }
        self.step += 1;
        let step = self.step;
        let p = self.train.as_ref().expect("compiled");
        let mut uniform_bytes = 0u64;
        for layer in &p.layers {
            for site in &layer.dropout {
                let params = DropoutParams::new(site.len, site.p, site.seed, step as u32, site.accumulate)?;
                self.gpu.write_params(&layer.dispatches[site.dispatch], bytemuck::bytes_of(&params));
                uniform_bytes += size_of::<DropoutParams>() as u64;
            }
        }
        let mut optim: Vec<&Dispatch> = Vec::new();
        if update {
            for (bucket, d) in &p.optim {
                let b = &self.buckets[*bucket];
                let mut h = self.hyper[b.group];
                if !b.decay {
                    h.wd = 0.0;
                }
                let params = h.params(b.len as u32, b.step + 1);
                self.gpu.write_params(d, bytemuck::bytes_of(&params));
                uniform_bytes += size_of_val(&params) as u64;
                optim.push(d);
            }
        }
        let mut groups = p.layer_groups();
        if !optim.is_empty() {
            groups.push(("optimizer", optim));
        }
        let read = [&p.loss, &p.correct];
        let (submitted, profile) = if std::mem::take(&mut self.profile_next) {
            let (submitted, profile) = profiled(&self.gpu, "train step", &groups, &mut self.ring, &read)?;
            (submitted, Some(profile))
        } else if std::mem::take(&mut self.capture_next) {
            let ring = &mut self.ring;
            let label = format!("train step {step}");
            (self.gpu.capture(|| self.gpu.submit_layers(&label, &groups, ring, &read))?, None)
        } else {
            (self.gpu.submit_layers("train step", &groups, &mut self.ring, &read)?, None)
        };
        if let Some(profile) = profile {
            self.last_profile = Some(self.with_op_types(profile));
        }
        self.counters.encode_ns += submitted.encode.as_nanos() as u64;
        self.counters.submit_ns += submitted.submit.as_nanos() as u64;
        let tickets = submitted.tickets;
        if update {
            for (bucket, _) in &p.optim {
                self.buckets[*bucket].step += 1;
            }
        }
        let mut it = tickets.into_iter();
        let (Some(loss), Some(correct)) = (it.next(), it.next()) else { unreachable!("two tensors read back") };
        self.pending.push_back((step, loss, correct));
        self.counters.steps += 1;
        self.counters.submits += 1;
        self.counters.bytes_uploaded += uniform_bytes;
        Ok(())
    }
}

impl Executor {
    fn read_metrics(&mut self, step: u64, loss: Ticket, correct: Ticket) -> Result<StepMetrics> {
        let l = self.ring.read_blocking(&self.gpu, loss)?;
        let c = self.ring.read_blocking(&self.gpu, correct)?;
        self.counters.bytes_read_back += (l.len() + c.len()) as u64;
        Ok(StepMetrics { step, loss: scalar(&l), correct: scalar(&c) })
    }

    /// Metrics of the steps whose results have arrived, oldest first. Never blocks.
    pub fn poll_metrics(&mut self) -> Result<Vec<StepMetrics>> {
        let mut out = std::mem::take(&mut self.finished);
        self.gpu.poll()?;
        while let Some((step, loss, correct)) = self.pending.front() {
            let (step, loss_ready) = (*step, self.ring.try_read(&self.gpu, loss)?);
            let Some(l) = loss_ready else { break };
            let c = loop {
                if let Some(c) = self.ring.try_read(&self.gpu, correct)? {
                    break c;
                }
            };
            self.pending.pop_front();
            self.counters.bytes_read_back += (l.len() + c.len()) as u64;
            out.push(StepMetrics { step, loss: scalar(&l), correct: scalar(&c) });
        }
        Ok(out)
    }

    /// Wait for every submitted step and return the metrics not handed out yet, oldest first.
    pub fn wait_metrics(&mut self) -> Result<Vec<StepMetrics>> {
        let mut out = std::mem::take(&mut self.finished);
        while let Some((step, loss, correct)) = self.pending.pop_front() {
            out.push(self.read_metrics(step, loss, correct)?);
        }
        Ok(out)
    }

    /// Loss and correct count of one batch in eval mode (batch norm on running statistics, no dropout), waiting
    /// for the result.
    pub fn evaluate(&mut self, images: &[f32], labels: &[u32]) -> Result<(f32, f32)> {
        self.check_images(images)?;
        self.check_labels(labels)?;
        self.ensure_eval()?;
        self.upload(false, images, labels)?;
        self.submit_eval()
    }

    fn submit_eval(&mut self) -> Result<(f32, f32)> {
        let p = self.eval.as_ref().expect("compiled");
        let layers = p.layer_groups();
        let mut tickets =
            self.gpu.submit_layers("eval step", &layers, &mut self.ring, &[&p.loss, &p.correct])?.tickets.into_iter();
        self.counters.submits += 1;
        let (Some(loss), Some(correct)) = (tickets.next(), tickets.next()) else {
            unreachable!("two tensors read back")
        };
        let m = self.read_metrics(0, loss, correct)?;
        Ok((m.loss, m.correct))
    }

    /// Time the next training step dispatch by dispatch (GPU timestamps around every dispatch, each in a compute
    /// pass of its own), or as a whole where the adapter has no timestamps; the step waits for its timings and
    /// otherwise trains as usual. Collect the result with [`Executor::take_profile`].
    pub fn profile_next_step(&mut self) {
        self.profile_next = true;
    }

    /// Wrap the next training step in a graphics-debugger capture (RenderDoc when the process runs under it): the
    /// capture holds exactly that step's submission, one debug group per layer. The step waits for the GPU.
    pub fn capture_next_step(&mut self) {
        self.capture_next = true;
    }

    /// The profile of the last step profiled with [`Executor::profile_next_step`].
    pub fn take_profile(&mut self) -> Option<StepProfile> {
        self.last_profile.take()
    }

    /// Profile one training step (parameters are updated as in any step) or one evaluation batch.
    pub fn profile(&mut self, training: bool, images: &[f32], labels: &[u32]) -> Result<StepProfile> {
        self.check_images(images)?;
        self.check_labels(labels)?;
        if training {
            self.profile_next_step();
            self.run_training(images, labels, true)?;
            let metrics = self.wait_metrics()?;
            self.finished.extend(metrics);
            return self.take_profile().ok_or_else(|| Error::Invalid("the profiled step left no profile".into()));
        }
        self.ensure_eval()?;
        self.upload(false, images, labels)?;
        let p = self.eval.as_ref().expect("compiled");
        let layers = p.layer_groups();
        let (submitted, profile) = profiled(&self.gpu, "eval step", &layers, &mut self.ring, &[&p.loss, &p.correct])?;
        for t in submitted.tickets {
            self.ring.read_blocking(&self.gpu, t)?;
        }
        self.counters.submits += 1;
        Ok(self.with_op_types(profile))
    }

    /// Name each timed dispatch's op type after its layer: the graph op, convolutions by kernel size (depthwise
    /// apart), "backward" for the gradient layers.
    fn with_op_types(&self, mut profile: StepProfile) -> StepProfile {
        let kinds: HashMap<&str, String> = self
            .graph
            .nodes
            .iter()
            .map(|n| {
                let kind = match &n.op {
                    Op::Conv2d { shape, .. } if shape.is_depthwise() => {
                        format!("conv2d depthwise {}x{}", shape.kernel_h, shape.kernel_w)
                    }
                    Op::Conv2d { shape, .. } => format!("conv2d {}x{}", shape.kernel_h, shape.kernel_w),
                    op => op.kind().to_string(),
                };
                (n.name.as_str(), kind)
            })
            .collect();
        for d in &mut profile.dispatches {
            let (base, backward) = match d.layer.strip_suffix(" backward") {
                Some(base) => (base, " backward"),
                None => (d.layer.as_str(), ""),
            };
            d.op = match kinds.get(base) {
                Some(kind) => format!("{kind}{backward}"),
                None => d.layer.clone(),
            };
        }
        profile
    }

    /// Class probabilities (batch, classes) of one batch in eval mode.
    pub fn predict(&mut self, images: &[f32]) -> Result<Vec<f32>> {
        self.infer(images, true)
    }

    /// Logits (batch, classes) of one batch in eval mode.
    pub fn predict_logits(&mut self, images: &[f32]) -> Result<Vec<f32>> {
        self.infer(images, false)
    }

    fn infer(&mut self, images: &[f32], probabilities: bool) -> Result<Vec<f32>> {
        self.check_images(images)?;
        self.ensure_eval()?;
        let n = self.graph.tensors[self.labels.0].numel();
        self.upload(false, images, &vec![0; n])?;
        self.submit_infer(probabilities)
    }

    fn submit_infer(&mut self, probabilities: bool) -> Result<Vec<f32>> {
        let p = self.eval.as_ref().expect("compiled");
        let layers = p.layer_groups();
        let out =
            if probabilities { p.probs.as_ref().expect("eval programs compute probabilities") } else { &p.logits };
        let mut ring = ReadbackRing::new(&self.gpu, "predictions", 1, out.bytes())?;
        let mut tickets = self.gpu.submit_layers("predict", &layers, &mut ring, &[out])?.tickets.into_iter();
        self.counters.submits += 1;
        let bytes = ring.read_blocking(&self.gpu, tickets.next().expect("one ticket"))?;
        self.counters.bytes_read_back += bytes.len() as u64;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

fn scalar(bytes: &[u8]) -> f32 {
    bytemuck::pod_read_unaligned(&bytes[..4])
}

/// The three tensors of the loss node.
struct SoftmaxCe {
    logits: TensorId,
    loss: TensorId,
    correct: TensorId,
}

/// Where one step's GPU time went.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepProfile {
    /// GpuTimestamps: `dispatches` holds every dispatch's time; WallClock (no timestamp support): only the
    /// whole step was timed.
    pub clock: crate::gpu::Clock,
    /// Submit to results, measured on the CPU (includes the per-dispatch passes' overhead when profiled).
    pub wall_seconds: f64,
    pub dispatches: Vec<crate::gpu::DispatchTiming>,
}

/// Submit `layers` timed dispatch by dispatch where the adapter can, or as a whole (waiting for it) otherwise.
fn profiled(
    gpu: &Gpu,
    label: &str,
    layers: &[(&str, Vec<&Dispatch>)],
    ring: &mut ReadbackRing,
    read: &[&Tensor],
) -> Result<(crate::gpu::Submitted, StepProfile)> {
    let t0 = std::time::Instant::now();
    if gpu.has_timestamps() {
        let (submitted, dispatches) = gpu.submit_layers_timed(label, layers, ring, read)?;
        let profile = StepProfile {
            clock: crate::gpu::Clock::GpuTimestamps,
            wall_seconds: t0.elapsed().as_secs_f64(),
            dispatches,
        };
        return Ok((submitted, profile));
    }
    let submitted = gpu.submit_layers(label, layers, ring, read)?;
    gpu.wait_idle()?;
    let profile = StepProfile {
        clock: crate::gpu::Clock::WallClock,
        wall_seconds: t0.elapsed().as_secs_f64(),
        dispatches: vec![],
    };
    Ok((submitted, profile))
}
