//! Models as graphs: tensors are handles ([`TensorId`]), layers are values of one closed [`Op`] enum, and the
//! builder infers every shape as the graph is built (errors name the layer and both shapes).
//!
//! ```
//! use wgtune::graph::Graph;
//! use wgtune::ops::conv::{Conv2dConfig, Padding};
//! use wgtune::ops::norm::BatchNormConfig;
//!
//! let mut g = Graph::new();
//! let x = g.input("image", &[8, 3, 32, 32]);
//! let labels = g.labels("label", 8);
//! let conv = Conv2dConfig { stride: (2, 2), padding: Padding::symmetric(1), ..Default::default() };
//! let h = g.conv2d("conv1", x, 16, (3, 3), conv, false).unwrap();
//! let h = g.batch_norm("bn1", h, BatchNormConfig::default()).unwrap();
//! let h = g.relu("relu1", h).unwrap();
//! let h = g.global_avg_pool("pool", h).unwrap();
//! let logits = g.linear("fc", h, 10, true).unwrap();
//! let loss = g.cross_entropy("loss", logits, labels, 0.0).unwrap();
//! assert_eq!(g.shape(logits), &[8, 10]);
//! assert_eq!(g.shape(loss), &[1]);
//! ```
//!
//! [`executor::Executor`] compiles a graph into GPU work: forward, the derived backward pass and the optimizer.

mod build;
pub mod cpu;
pub mod executor;
mod fuse;
pub mod plan;

use crate::error::Error;
use crate::ops::conv::ConvShape;
use crate::ops::layer_norm::ChannelAxis;
use crate::ops::loss::{Loss, Targets};
use crate::ops::norm::BatchNormConfig;
use crate::ops::pool::PoolShape;
use crate::reference::SplitMix;

/// A tensor of a [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub usize);

/// What a tensor is for.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorKind {
    /// Data fed each step (images): f32.
    Input,
    /// Class indices fed each step: u32.
    Labels,
    /// A learned parameter of parameter group `group`; `decay` says whether weight decay applies (fastai applies
    /// none to normalization parameters and biases); `is_bn` marks a normalization layer's parameter (batch or
    /// layer norm), which trains in the frozen phase too (fastai's `train_bn`).
    Param { group: usize, decay: bool, is_bn: bool },
    /// Persistent non-learned state (batch-norm running statistics).
    State,
    /// Computed by an op.
    Activation,
    /// Computed by an op and only used by its own backward (batch-norm batch statistics, pooling argmax): u32
    /// when `int`.
    Saved { int: bool },
}

/// Shape, name, kind and initial value of a tensor.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: TensorKind,
    /// Initial value for parameters and state (None: zeros).
    pub init: Option<Vec<f32>>,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The closed set of layers. Each has forward and backward kernels, a CPU reference and tests.
#[derive(Clone, Debug)]
pub enum Op {
    /// y = x · wᵀ + b, x (N, in), w (out, in), b (out).
    Linear {
        x: TensorId,
        w: TensorId,
        b: Option<TensorId>,
        y: TensorId,
    },
    Conv2d {
        x: TensorId,
        w: TensorId,
        b: Option<TensorId>,
        y: TensorId,
        shape: ConvShape,
    },
    /// Training mode uses batch statistics (saved in `save_mean`/`save_var`) and updates the running ones.
    /// `residual` (a graph rewrite's, [`Graph::fuse_norm_activations`]; None from the builder) is added to the
    /// normalized value before `cfg.act`.
    BatchNorm {
        x: TensorId,
        gamma: TensorId,
        beta: TensorId,
        running_mean: TensorId,
        running_var: TensorId,
        save_mean: TensorId,
        save_var: TensorId,
        y: TensorId,
        cfg: BatchNormConfig,
        residual: Option<TensorId>,
    },
    Relu {
        x: TensorId,
        y: TensorId,
    },
    Relu6 {
        x: TensorId,
        y: TensorId,
    },
    /// y = x for x > 0, slope * x otherwise.
    LeakyRelu {
        x: TensorId,
        y: TensorId,
        slope: f32,
    },
    /// y = a + b (residual connections).
    Add {
        a: TensorId,
        b: TensorId,
        y: TensorId,
    },
    MaxPool {
        x: TensorId,
        y: TensorId,
        indices: TensorId,
        shape: PoolShape,
    },
    AvgPool {
        x: TensorId,
        y: TensorId,
        shape: PoolShape,
    },
    /// (N, C, H, W) -> (N, C). `indices` only fills the kernel's binding (global max and mean share one kernel).
    GlobalAvgPool {
        x: TensorId,
        y: TensorId,
        indices: TensorId,
    },
    /// fastai's AdaptiveConcatPool2d: (N, C, H, W) -> (N, 2C) = [max, mean].
    ConcatPool {
        x: TensorId,
        y: TensorId,
        indices: TensorId,
    },
    /// Channel concatenation of tensors with equal N and spatial size.
    Concat {
        xs: Vec<TensorId>,
        y: TensorId,
    },
    /// (N, ...) -> (N, product): a view, no data moves.
    Flatten {
        x: TensorId,
        y: TensorId,
    },
    /// Inverted dropout with drop probability `p`; the mask comes from (seed, step, element).
    Dropout {
        x: TensorId,
        y: TensorId,
        p: f64,
        seed: u32,
    },
    /// Drop path (stochastic depth): each sample of x is zeroed with probability `p` or scaled by 1 / (1 - p);
    /// the draw comes from (seed, step, sample). The identity in eval mode.
    DropPath {
        x: TensorId,
        y: TensorId,
        p: f64,
        seed: u32,
    },
    /// GELU: exact (x * Phi(x), PyTorch's default) or its tanh approximation.
    Gelu {
        x: TensorId,
        y: TensorId,
        tanh: bool,
    },
    /// Layer norm over the channel axis of `axis` at every position, the same in training and eval; `mean` and
    /// `rstd` (one per position) are saved for backward.
    LayerNorm {
        x: TensorId,
        gamma: TensorId,
        beta: TensorId,
        mean: TensorId,
        rstd: TensorId,
        y: TensorId,
        axis: ChannelAxis,
        eps: f32,
    },
    /// Layer scale: y = gamma[c] * x over the channel axis of `axis`.
    LayerScale {
        x: TensorId,
        gamma: TensorId,
        y: TensorId,
        axis: ChannelAxis,
    },
    /// The same elements in another shape: a view, no data moves.
    View {
        x: TensorId,
        y: TensorId,
    },
    /// Axes reordered into a new contiguous tensor: output axis d is input axis `perm[d]`.
    Permute {
        x: TensorId,
        y: TensorId,
        perm: Vec<usize>,
    },
    /// Batched matrix product y[i] = a[i] · b[i] (a (B, M, K); b (B, K, N), or (B, N, K) used transposed when
    /// `trans_b`; y (B, M, N)): attention's scores and weighted values.
    MatMul {
        a: TensorId,
        b: TensorId,
        y: TensorId,
        trans_b: bool,
    },
    /// softmax(scale * x) over the last axis (attention's 1 / sqrt(head_dim) as the scale).
    Softmax {
        x: TensorId,
        y: TensorId,
        scale: f32,
    },
    /// Channels `start` .. `start` + y's channels of x along dimension 1 (a class token taken out, q/k/v split).
    Slice {
        x: TensorId,
        y: TensorId,
        start: usize,
    },
    /// x (1, ...) repeated over the batch of y (N, ...): a class token or position embedding for every sample.
    Expand {
        x: TensorId,
        y: TensorId,
    },
    /// Mean softmax cross-entropy of logits (N, classes) against target rows (N, 3) (see
    /// [`crate::ops::loss::Targets`]): loss (1); `correct` (1) counts right top-1 predictions.
    SoftmaxCrossEntropy {
        logits: TensorId,
        labels: TensorId,
        loss: TensorId,
        correct: TensorId,
        smoothing: f32,
    },
    /// Mean sigmoid binary cross-entropy of logits (N, classes) against multi-label target rows: loss (1);
    /// `correct` (1) counts (image, class) pairs right at `threshold`.
    SigmoidBinaryCrossEntropy {
        logits: TensorId,
        labels: TensorId,
        loss: TensorId,
        correct: TensorId,
        threshold: f32,
    },
}

impl Op {
    /// Tensors the op reads: those a gradient flows back to, then the others (running statistics, labels).
    pub fn inputs(&self) -> Vec<TensorId> {
        let (mut grad, other) = self.operands();
        grad.extend(other);
        grad
    }

    /// The inputs a gradient flows back to: data inputs and parameters, not running statistics or labels. The
    /// executor derives which tensors need a gradient from this.
    pub fn grad_inputs(&self) -> Vec<TensorId> {
        self.operands().0
    }

    /// (inputs a gradient flows back to, inputs that carry none). Every op states both here, in one exhaustive
    /// match: no catch-all arm can silently give a new op's running statistics a gradient.
    fn operands(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        match self {
            Op::Linear { x, w, b, .. } | Op::Conv2d { x, w, b, .. } => {
                let mut v = vec![*x, *w];
                v.extend(b);
                (v, vec![])
            }
            Op::BatchNorm { x, gamma, beta, running_mean, running_var, residual, .. } => {
                let mut v = vec![*x, *gamma, *beta];
                v.extend(residual);
                (v, vec![*running_mean, *running_var])
            }
            Op::Relu { x, .. }
            | Op::Relu6 { x, .. }
            | Op::LeakyRelu { x, .. }
            | Op::MaxPool { x, .. }
            | Op::AvgPool { x, .. }
            | Op::GlobalAvgPool { x, .. }
            | Op::ConcatPool { x, .. }
            | Op::Flatten { x, .. }
            | Op::Dropout { x, .. }
            | Op::DropPath { x, .. }
            | Op::Gelu { x, .. }
            | Op::View { x, .. }
            | Op::Permute { x, .. }
            | Op::Softmax { x, .. }
            | Op::Slice { x, .. }
            | Op::Expand { x, .. } => (vec![*x], vec![]),
            Op::LayerNorm { x, gamma, beta, .. } => (vec![*x, *gamma, *beta], vec![]),
            Op::LayerScale { x, gamma, .. } => (vec![*x, *gamma], vec![]),
            Op::MatMul { a, b, .. } => (vec![*a, *b], vec![]),
            Op::Add { a, b, .. } => (vec![*a, *b], vec![]),
            Op::Concat { xs, .. } => (xs.clone(), vec![]),
            Op::SoftmaxCrossEntropy { logits, labels, .. } | Op::SigmoidBinaryCrossEntropy { logits, labels, .. } => {
                (vec![*logits], vec![*labels])
            }
        }
    }

    /// Tensors the op writes (its output first).
    pub fn outputs(&self) -> Vec<TensorId> {
        match self {
            Op::Linear { y, .. }
            | Op::Conv2d { y, .. }
            | Op::Relu { y, .. }
            | Op::Relu6 { y, .. }
            | Op::LeakyRelu { y, .. }
            | Op::Add { y, .. }
            | Op::AvgPool { y, .. }
            | Op::Concat { y, .. }
            | Op::Flatten { y, .. }
            | Op::Dropout { y, .. }
            | Op::DropPath { y, .. }
            | Op::Gelu { y, .. }
            | Op::LayerScale { y, .. }
            | Op::View { y, .. }
            | Op::Permute { y, .. }
            | Op::MatMul { y, .. }
            | Op::Softmax { y, .. }
            | Op::Slice { y, .. }
            | Op::Expand { y, .. } => vec![*y],
            Op::LayerNorm { y, mean, rstd, .. } => vec![*y, *mean, *rstd],
            Op::BatchNorm { y, save_mean, save_var, running_mean, running_var, .. } => {
                vec![*y, *save_mean, *save_var, *running_mean, *running_var]
            }
            Op::MaxPool { y, indices, .. }
            | Op::ConcatPool { y, indices, .. }
            | Op::GlobalAvgPool { y, indices, .. } => {
                vec![*y, *indices]
            }
            Op::SoftmaxCrossEntropy { loss, correct, .. } | Op::SigmoidBinaryCrossEntropy { loss, correct, .. } => {
                vec![*loss, *correct]
            }
        }
    }

    /// The op's kind, for profiles, error messages and the test that every kind is gradient-checked.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Linear { .. } => OpKind::Linear,
            Op::Conv2d { .. } => OpKind::Conv2d,
            Op::BatchNorm { .. } => OpKind::BatchNorm,
            Op::Relu { .. } => OpKind::Relu,
            Op::Relu6 { .. } => OpKind::Relu6,
            Op::LeakyRelu { .. } => OpKind::LeakyRelu,
            Op::Add { .. } => OpKind::Add,
            Op::MaxPool { .. } => OpKind::MaxPool,
            Op::AvgPool { .. } => OpKind::AvgPool,
            Op::GlobalAvgPool { .. } => OpKind::GlobalAvgPool,
            Op::ConcatPool { .. } => OpKind::ConcatPool,
            Op::Concat { .. } => OpKind::Concat,
            Op::Flatten { .. } => OpKind::Flatten,
            Op::Dropout { .. } => OpKind::Dropout,
            Op::DropPath { .. } => OpKind::DropPath,
            Op::Gelu { .. } => OpKind::Gelu,
            Op::LayerNorm { .. } => OpKind::LayerNorm,
            Op::LayerScale { .. } => OpKind::LayerScale,
            Op::View { .. } => OpKind::View,
            Op::Permute { .. } => OpKind::Permute,
            Op::MatMul { .. } => OpKind::MatMul,
            Op::Softmax { .. } => OpKind::Softmax,
            Op::Slice { .. } => OpKind::Slice,
            Op::Expand { .. } => OpKind::Expand,
            Op::SoftmaxCrossEntropy { .. } => OpKind::SoftmaxCrossEntropy,
            Op::SigmoidBinaryCrossEntropy { .. } => OpKind::SigmoidBinaryCrossEntropy,
        }
    }

    /// A dropout or drop path op's (x, y, p, seed, elements per random draw: 1 for dropout, one sample's elements
    /// for drop path); None for every other op. Both run the same kernels and mask.
    pub fn as_dropout(&self, g: &Graph) -> Option<(TensorId, TensorId, f64, u32, usize)> {
        match *self {
            Op::Dropout { x, y, p, seed } => Some((x, y, p, seed, 1)),
            Op::DropPath { x, y, p, seed } => Some((x, y, p, seed, g.info(x).numel() / g.shape(x)[0])),
            _ => None,
        }
    }

    /// A loss op's (logits, targets, loss, correct, loss function); None for every other op.
    pub fn as_loss(&self) -> Option<(TensorId, TensorId, TensorId, TensorId, Loss)> {
        match *self {
            Op::SoftmaxCrossEntropy { logits, labels, loss, correct, smoothing } => {
                Some((logits, labels, loss, correct, Loss::SoftmaxCrossEntropy { smoothing }))
            }
            Op::SigmoidBinaryCrossEntropy { logits, labels, loss, correct, threshold } => {
                Some((logits, labels, loss, correct, Loss::SigmoidBinaryCrossEntropy { threshold }))
            }
            _ => None,
        }
    }
}

/// Declares [`OpKind`] and its list of every kind from one table, so the two cannot disagree.
macro_rules! op_kinds {
    ($($kind:ident => $name:literal,)*) => {
        /// What an [`Op`] is, without its tensors. [`Op::kind`] is an exhaustive match, so a new op needs a kind.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum OpKind {
            $($kind,)*
        }

        impl OpKind {
            /// Every kind.
            pub const ALL: &'static [OpKind] = &[$(OpKind::$kind),*];

            pub fn name(self) -> &'static str {
                match self {
                    $(OpKind::$kind => $name,)*
                }
            }
        }
    };
}

op_kinds! {
    Linear => "linear",
    Conv2d => "conv2d",
    BatchNorm => "batch_norm",
    Relu => "relu",
    Relu6 => "relu6",
    LeakyRelu => "leaky_relu",
    Add => "add",
    MaxPool => "max_pool",
    AvgPool => "avg_pool",
    GlobalAvgPool => "global_avg_pool",
    ConcatPool => "concat_pool",
    Concat => "concat",
    Flatten => "flatten",
    Dropout => "dropout",
    DropPath => "drop_path",
    Gelu => "gelu",
    LayerNorm => "layer_norm",
    LayerScale => "layer_scale",
    View => "view",
    Permute => "permute",
    MatMul => "matmul",
    Softmax => "softmax",
    Slice => "slice",
    Expand => "expand",
    SoftmaxCrossEntropy => "softmax_cross_entropy",
    SigmoidBinaryCrossEntropy => "sigmoid_bce",
}

/// A layer: its op and its name (the debug group in a GPU capture, the prefix of its parameter names).
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op: Op,
}

/// A model under construction, or built: tensors and nodes in topological order (each node only reads tensors
/// made before it).
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub tensors: Vec<TensorInfo>,
    pub nodes: Vec<Node>,
    group: usize,
    groups: usize,
    seed: u64,
}

/// Kaiming-normal initial weights (fan-in, gain sqrt(2)), as PyTorch's `kaiming_normal_` and fastai's heads.
fn kaiming_normal(rng: &mut SplitMix, n: usize, fan_in: usize) -> Vec<f32> {
    normal(rng, n, (2.0 / fan_in.max(1) as f64).sqrt())
}

/// Normal(0, std) values.
fn normal(rng: &mut SplitMix, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            // Box-Muller
            let u1 = rng.uniform(f64::MIN_POSITIVE, 1.0);
            let u2 = rng.uniform(0.0, 1.0);
            (std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

impl Graph {
    pub fn new() -> Self {
        Graph { groups: 1, seed: 0x5eed, ..Default::default() }
    }

    /// Parameters created from now on belong to group `group` (fastai's layer groups: body parts, head).
    pub fn set_group(&mut self, group: usize) {
        self.group = group;
        self.groups = self.groups.max(group + 1);
    }

    /// Number of parameter groups.
    pub fn groups(&self) -> usize {
        self.groups
    }

    pub fn shape(&self, t: TensorId) -> &[usize] {
        &self.tensors[t.0].shape
    }

    pub fn info(&self, t: TensorId) -> &TensorInfo {
        &self.tensors[t.0]
    }

    /// The tensor called `name`.
    pub fn find(&self, name: &str) -> Option<TensorId> {
        self.tensors.iter().position(|t| t.name == name).map(TensorId)
    }

    /// Every parameter, in creation order.
    pub fn params(&self) -> Vec<TensorId> {
        (0..self.tensors.len())
            .filter(|&i| matches!(self.tensors[i].kind, TensorKind::Param { .. }))
            .map(TensorId)
            .collect()
    }

    fn add_tensor(&mut self, name: String, shape: Vec<usize>, kind: TensorKind, init: Option<Vec<f32>>) -> TensorId {
        self.tensors.push(TensorInfo { name, shape, kind, init });
        TensorId(self.tensors.len() - 1)
    }

    /// A per-step data input (images), f32.
    pub fn input(&mut self, name: &str, shape: &[usize]) -> TensorId {
        self.add_tensor(name.into(), shape.to_vec(), TensorKind::Input, None)
    }

    /// Per-step class labels, one per sample: target rows (batch, 3) u32 for [`Graph::cross_entropy`] (the
    /// executor takes one label per sample and lays the rows out).
    pub fn labels(&mut self, name: &str, batch: usize) -> TensorId {
        self.targets(name, batch, Targets { classes: 1, multi_label: false })
    }

    /// Per-step sets of labels out of `classes`, any number per sample: target rows u32 for
    /// [`Graph::binary_cross_entropy`] (the executor takes a class bitmask per sample).
    pub fn multi_labels(&mut self, name: &str, batch: usize, classes: usize) -> TensorId {
        self.targets(name, batch, Targets { classes, multi_label: true })
    }

    /// Per-step target rows laid out as `layout` says ([`Loss::targets`]), u32.
    pub fn targets(&mut self, name: &str, batch: usize, layout: Targets) -> TensorId {
        self.add_tensor(name.into(), vec![batch, layout.row()], TensorKind::Labels, None)
    }

    /// A parameter of the current group with an initial value.
    pub fn param(&mut self, name: &str, shape: &[usize], init: Vec<f32>, decay: bool, is_bn: bool) -> TensorId {
        let kind = TensorKind::Param { group: self.group, decay, is_bn };
        self.add_tensor(name.into(), shape.to_vec(), kind, Some(init))
    }

    /// A parameter of the current group drawn from Normal(0, `std`) (a transformer's class token and position
    /// embedding), without weight decay.
    pub fn normal_param(&mut self, name: &str, shape: &[usize], std: f64) -> TensorId {
        let mut rng = self.next_rng();
        let init = normal(&mut rng, shape.iter().product(), std);
        self.param(name, shape, init, false, false)
    }

    fn activation(&mut self, name: String, shape: Vec<usize>) -> TensorId {
        self.add_tensor(name, shape, TensorKind::Activation, None)
    }

    fn push(&mut self, name: &str, op: Op) -> TensorId {
        let y = op.outputs()[0];
        self.nodes.push(Node { name: name.into(), op });
        y
    }

    fn next_rng(&mut self) -> SplitMix {
        self.seed = self.seed.wrapping_add(1);
        SplitMix(self.seed)
    }

    fn shape_err(&self, layer: &str, kind: &str, detail: String) -> Error {
        Error::shape(format!("{kind} '{layer}'"), detail)
    }

    /// The node that produces `t`, if any.
    pub fn producer(&self, t: TensorId) -> Option<usize> {
        self.nodes.iter().position(|n| n.op.outputs().first() == Some(&t))
    }
}
