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
//!
//! In parts: [`params`] (persistent buffers, checkpoints), [`program`] (layout, memory plan, compile),
//! [`forward`] and [`backward`] (one arm per op each), [`step`] (train / evaluate / predict / metrics / profile).
//! Every wait for the GPU is an `async fn`; the blocking forms are thin native-only wrappers.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Precision, ReadbackRing, Ticket};
use crate::graph::{Graph, TensorId, TensorKind};
use crate::ops::optim::{Hyper, Optimizer};

mod backward;
mod forward;
mod params;
mod profile;
mod program;
mod step;

use params::Params;
pub use profile::StepProfile;
use program::Program;
pub use step::PixelBatch;

/// How the executor trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExecutorConfig {
    pub optimizer: Optimizer,
    /// Batch norm of frozen groups runs in eval mode with its parameters frozen too (nothing of a frozen body
    /// trains, and backward stops at the first trainable layer). Off: fastai's default, batch-norm parameters keep
    /// training and use batch statistics while their group is frozen.
    pub freeze_bn: bool,
    /// Micro-batches per optimizer step (fastai's GradientAccumulation): each training step computes its batch's
    /// gradients and adds them, scaled by 1 / `accum`, into a sum; every `accum`-th step the optimizer applies the
    /// sum, the mean gradient over `accum` batches. 1: every step updates. Batch norm sees each micro-batch.
    pub accum: usize,
    /// The storage type of activations and their gradients (fastai's `to_fp16` with [`Precision::F16`]): master
    /// weights, weight gradients, optimizer state, normalization statistics and the loss stay f32 either way (the
    /// GEMMs read the f32 weights next to f16 activations).
    pub precision: Precision,
    /// With f16: the dynamic loss scale's start (PyTorch's GradScaler and fastai's MixedPrecision: 2^16) and the
    /// clean optimizer steps after which it doubles (2,000); it halves on every step whose gradients overflow, and
    /// that step's update is skipped.
    pub loss_scale: f32,
    pub scale_interval: u32,
    /// Fuse into each batch norm the residual add or else the ReLU or ReLU6 that alone reads its output
    /// ([`Graph::fuse_norm_activations`]): the same values in fewer dispatches and bytes. On by default; off
    /// compiles the graph as built (to compare the two).
    pub fuse: bool,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            optimizer: Optimizer::Adam,
            freeze_bn: false,
            accum: 1,
            precision: Precision::F32,
            loss_scale: crate::ops::scaler::DEFAULT_SCALE,
            scale_interval: 2000,
            fuse: true,
        }
    }
}

/// A tensor copied to the CPU: name, shape, values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// A batch too large for the adapter, trained as `parts` accumulated micro-batches of `micro` images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    pub batch: usize,
    pub parts: usize,
    pub micro: usize,
}

impl Split {
    /// The fewest equal micro-batches of at most `fits` images that make up `batch` (None when `fits` is 0: not
    /// even one image fits).
    pub fn of(batch: usize, fits: usize) -> Option<Split> {
        let parts = (1..=batch).find(|&p| batch.is_multiple_of(p) && batch / p <= fits)?;
        Some(Split { batch, parts, micro: batch / parts })
    }
}

/// Loss and correct predictions of one training step, as read back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepMetrics {
    pub step: u64,
    pub loss: f32,
    pub correct: f32,
    /// With f16: the loss scaler after the step (its scale, and how many steps it has skipped so far).
    pub scaler: Option<crate::ops::scaler::ScalerState>,
}

/// A submitted step's readback tickets: loss, count and, with f16, the scaler.
struct Pending {
    step: u64,
    loss: Ticket,
    correct: Ticket,
    scaler: Option<Ticket>,
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

/// A transient tensor of a program: a value, the gradient of a value, or the scratch buffer of node `usize`'s
/// launches (a conv's split-K partial sums in backward; a chunked batch norm's, shared by its forward and backward
/// layers), placed by the memory plan like any other tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Value(TensorId),
    Grad(TensorId),
    Scratch(usize),
    /// A weight transposed for a layer's forward product (a linear layer's (in, out) copy of its (out, in) weight:
    /// see the forward pass), rewritten by the layer that reads it.
    Transposed(TensorId),
}

pub struct Executor {
    gpu: Arc<Gpu>,
    graph: Graph,
    cfg: ExecutorConfig,
    trainable: Vec<bool>,
    hyper: Vec<Hyper>,
    params: Params,
    train: Option<Program>,
    eval: Option<Program>,
    ring: ReadbackRing,
    pending: VecDeque<Pending>,
    /// The loss scaler's state on the GPU (u32 [4], see shaders/scaler.wgsl): read by every optimizer dispatch,
    /// changed only with f16.
    scaler: crate::gpu::Tensor,
    /// Adam's applied-update counts, two u32 words per bucket (see shaders/optim.wgsl): a step the loss scaler
    /// skips does not count.
    counts: crate::gpu::Tensor,
    /// Steps allowed in flight (their metrics not yet read) before a new one waits: [`step::MAX_IN_FLIGHT`] unless
    /// [`Executor::set_max_in_flight`] lowered it.
    max_in_flight: usize,
    /// Metrics that arrived while waiting for ring space, not yet handed out.
    finished: Vec<StepMetrics>,
    counters: Counters,
    /// Time the next training step dispatch by dispatch ([`Executor::profile_next_step`]).
    profile_next: bool,
    last_profile: Option<StepProfile>,
    /// Wrap the next training step in a graphics-debugger capture ([`Executor::capture_next_step`]).
    capture_next: bool,
    step: u64,
    /// With gradient accumulation: the next training step's place in its cycle (0..accum).
    micro: usize,
    input: TensorId,
    labels: TensorId,
    loss_node: usize,
    pixel_input: Option<PixelInput>,
}

/// Batches arrive as presized u8 pixels and the GPU augments and normalizes them into the model's input.
/// Training batches are `presize` pixels square (the random crops take from the larger image); evaluation and
/// prediction batches are the model's input size, so that validation sees an image as `predict` and an exported
/// ONNX model do: resized and centre-cropped once, straight to the input size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelInput {
    /// Side of the square u8 images of training batches.
    pub presize: usize,
    pub normalization: crate::nn::Normalization,
}

impl Executor {
    /// Allocate parameters, gradients, optimizer state and running statistics, and upload their initial values.
    pub fn new(gpu: Arc<Gpu>, graph: Graph, cfg: ExecutorConfig) -> Result<Self> {
        let graph = if cfg.fuse { graph.fuse_norm_activations() } else { graph };
        let find = |kind: &str, pred: &dyn Fn(&TensorKind) -> bool| {
            let ids: Vec<usize> = (0..graph.tensors.len()).filter(|&i| pred(&graph.tensors[i].kind)).collect();
            match ids.as_slice() {
                [one] => Ok(TensorId(*one)),
                _ => Err(Error::Invalid(format!("the graph needs exactly one {kind} tensor, it has {}", ids.len()))),
            }
        };
        let input = find("input", &|k| *k == TensorKind::Input)?;
        let labels = find("labels", &|k| *k == TensorKind::Labels)?;
        let losses: Vec<usize> = (0..graph.nodes.len()).filter(|&i| graph.nodes[i].op.as_loss().is_some()).collect();
        let &[loss_node] = losses.as_slice() else {
            return Err(Error::Invalid(format!("the graph needs exactly one loss, it has {}", losses.len())));
        };
        if loss_node != graph.nodes.len() - 1 {
            return Err(Error::Invalid("the loss must be the last node of the graph".into()));
        }

        if cfg.accum == 0 {
            return Err(Error::Invalid("gradient accumulation needs at least 1 micro-batch per step".into()));
        }
        if cfg.precision != Precision::F32 && !gpu.has_shader_f16() {
            return Err(Error::Invalid(format!(
                "precision f16 needs the shader-f16 feature, which the adapter '{}' does not have (use f32)",
                gpu.summary().name
            )));
        }
        if !matches!(cfg.precision, Precision::F32 | Precision::F16) {
            return Err(Error::Invalid("the executor stores activations in f32 or f16".into()));
        }
        let params = Params::new(&gpu, &graph, cfg.optimizer, cfg.accum > 1)?;
        if !(cfg.loss_scale.is_finite() && cfg.loss_scale > 0.0) || cfg.scale_interval == 0 {
            return Err(Error::Invalid(format!(
                "the loss scale must start finite and positive ({}) and grow after at least 1 step ({})",
                cfg.loss_scale, cfg.scale_interval
            )));
        }
        let start = if cfg.precision == Precision::F16 { cfg.loss_scale } else { 1.0 };
        let words = crate::ops::scaler::ScalerState::new(start).words();
        let scaler = gpu.upload_u32(&[words.len()], &words, "loss scaler")?;
        let count_words = 2 * params.buckets.len().max(1);
        let counts = gpu.upload_u32(&[count_words], &vec![0; count_words], "optimizer step counts")?;
        let groups = graph.groups();
        // Each step in flight reads back its loss and count (4 bytes each) and, with f16, the scaler (16 bytes).
        let ring = ReadbackRing::new(&gpu, "step metrics", 3 * step::MAX_IN_FLIGHT + 4, 16)?;
        Ok(Executor {
            gpu,
            graph,
            cfg,
            trainable: vec![true; groups],
            hyper: vec![Hyper::default(); groups],
            params,
            train: None,
            eval: None,
            ring,
            pending: VecDeque::new(),
            scaler,
            counts,
            max_in_flight: step::MAX_IN_FLIGHT,
            finished: Vec::new(),
            profile_next: false,
            last_profile: None,
            capture_next: false,
            counters: Counters::default(),
            step: 0,
            micro: 0,
            input,
            labels,
            loss_node,
            pixel_input: None,
        })
    }

    /// With gradient accumulation: the next training step's place in its cycle (0: a cycle starts).
    pub fn accumulation_micro_step(&self) -> usize {
        self.micro
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
    /// for frozen layers) and resets the optimizer state, as fastai's freeze_to does, and starts a new gradient
    /// accumulation cycle (a partial one is dropped, as fastai's GradientAccumulation does at a new fit).
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
            self.micro = 0;
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

    /// Hyper-parameters of a group for the next steps (written into the optimizer's uniform each step).
    pub fn set_hyper(&mut self, group: usize, hyper: Hyper) -> Result<()> {
        let slot = self.hyper.get_mut(group).ok_or_else(|| Error::Invalid(format!("no parameter group {group}")))?;
        *slot = hyper;
        Ok(())
    }

    pub fn hyper(&self, group: usize) -> Hyper {
        self.hyper[group]
    }

    fn tensor_id(&self, name: &str) -> Result<TensorId> {
        self.graph.find(name).ok_or_else(|| Error::Invalid(format!("the model has no tensor named '{name}'")))
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
}
