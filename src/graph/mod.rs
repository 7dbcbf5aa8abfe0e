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

pub mod cpu;
pub mod executor;
pub mod plan;

use crate::error::{Error, Result};
use crate::ops::conv::{Conv2dConfig, ConvShape};
use crate::ops::layer_norm::ChannelAxis;
use crate::ops::loss::{Loss, Targets};
use crate::ops::norm::BatchNormConfig;
use crate::ops::pool::{PoolConfig, PoolShape};
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
            Op::BatchNorm { x, gamma, beta, running_mean, running_var, .. } => {
                (vec![*x, *gamma, *beta], vec![*running_mean, *running_var])
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
            | Op::Gelu { x, .. } => (vec![*x], vec![]),
            Op::LayerNorm { x, gamma, beta, .. } => (vec![*x, *gamma, *beta], vec![]),
            Op::LayerScale { x, gamma, .. } => (vec![*x, *gamma], vec![]),
            Op::View { x, .. }
            | Op::Permute { x, .. }
            | Op::Softmax { x, .. }
            | Op::Slice { x, .. }
            | Op::Expand { x, .. } => (vec![*x], vec![]),
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

    /// A fully connected layer on (N, in): weight (out, in) kaiming-normal, bias zeros.
    pub fn linear(&mut self, name: &str, x: TensorId, out: usize, bias: bool) -> Result<TensorId> {
        let &[n, inp] = self.shape(x) else {
            return Err(self.shape_err(name, "linear", format!("input {:?} must be (N, features)", self.shape(x))));
        };
        let mut rng = self.next_rng();
        let w =
            self.param(&format!("{name}.weight"), &[out, inp], kaiming_normal(&mut rng, out * inp, inp), true, false);
        let b = bias.then(|| self.param(&format!("{name}.bias"), &[out], vec![0.0; out], false, false));
        let y = self.activation(format!("{name}.out"), vec![n, out]);
        Ok(self.push(name, Op::Linear { x, w, b, y }))
    }

    /// A convolution with `out` channels: weight (out, Cin/groups, KH, KW) kaiming-normal, bias zeros.
    pub fn conv2d(
        &mut self,
        name: &str,
        x: TensorId,
        out: usize,
        kernel: (usize, usize),
        cfg: Conv2dConfig,
        bias: bool,
    ) -> Result<TensorId> {
        let xs = self.shape(x).to_vec();
        let cin = *xs.get(1).unwrap_or(&0);
        let w_shape = [out, cin / cfg.groups.max(1), kernel.0, kernel.1];
        let shape = ConvShape::new(&xs, &w_shape, cfg).map_err(|e| self.shape_err(name, "conv2d", e.to_string()))?;
        let fan_in = w_shape[1] * kernel.0 * kernel.1;
        let mut rng = self.next_rng();
        let w = self.param(
            &format!("{name}.weight"),
            &w_shape,
            kaiming_normal(&mut rng, out * fan_in, fan_in),
            true,
            false,
        );
        let b = bias.then(|| self.param(&format!("{name}.bias"), &[out], vec![0.0; out], false, false));
        let y = self.activation(format!("{name}.out"), shape.y_shape().to_vec());
        Ok(self.push(name, Op::Conv2d { x, w, b, y, shape }))
    }

    /// Batch norm over the channels of (N, C) or (N, C, H, W): gamma ones, beta zeros, running mean 0, var 1.
    pub fn batch_norm(&mut self, name: &str, x: TensorId, cfg: BatchNormConfig) -> Result<TensorId> {
        let xs = self.shape(x).to_vec();
        if xs.len() != 2 && xs.len() != 4 {
            return Err(self.shape_err(name, "batch_norm", format!("input {xs:?} must be (N, C) or (N, C, H, W)")));
        }
        let c = xs[1];
        let gamma = self.param(&format!("{name}.weight"), &[c], vec![1.0; c], false, true);
        let beta = self.param(&format!("{name}.bias"), &[c], vec![0.0; c], false, true);
        let running_mean =
            self.add_tensor(format!("{name}.running_mean"), vec![c], TensorKind::State, Some(vec![0.0; c]));
        let running_var =
            self.add_tensor(format!("{name}.running_var"), vec![c], TensorKind::State, Some(vec![1.0; c]));
        let save_mean = self.add_tensor(format!("{name}.save_mean"), vec![c], TensorKind::Saved { int: false }, None);
        let save_var = self.add_tensor(format!("{name}.save_var"), vec![c], TensorKind::Saved { int: false }, None);
        let y = self.activation(format!("{name}.out"), xs);
        Ok(self.push(name, Op::BatchNorm { x, gamma, beta, running_mean, running_var, save_mean, save_var, y, cfg }))
    }

    pub fn relu(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        let y = self.activation(format!("{name}.out"), self.shape(x).to_vec());
        Ok(self.push(name, Op::Relu { x, y }))
    }

    pub fn relu6(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        let y = self.activation(format!("{name}.out"), self.shape(x).to_vec());
        Ok(self.push(name, Op::Relu6 { x, y }))
    }

    /// LeakyReLU with negative slope `slope` (PyTorch's default is 0.01).
    pub fn leaky_relu(&mut self, name: &str, x: TensorId, slope: f32) -> Result<TensorId> {
        if !slope.is_finite() {
            return Err(Error::Invalid(format!("leaky_relu '{name}': slope {slope} must be finite")));
        }
        let y = self.activation(format!("{name}.out"), self.shape(x).to_vec());
        Ok(self.push(name, Op::LeakyRelu { x, y, slope }))
    }

    pub fn add(&mut self, name: &str, a: TensorId, b: TensorId) -> Result<TensorId> {
        if self.shape(a) != self.shape(b) {
            let detail = format!("{:?} + {:?}: shapes differ", self.shape(a), self.shape(b));
            return Err(self.shape_err(name, "add", detail));
        }
        let y = self.activation(format!("{name}.out"), self.shape(a).to_vec());
        Ok(self.push(name, Op::Add { a, b, y }))
    }

    pub fn max_pool(&mut self, name: &str, x: TensorId, cfg: PoolConfig) -> Result<TensorId> {
        let shape = PoolShape::new(self.shape(x), cfg).map_err(|e| self.shape_err(name, "max_pool", e.to_string()))?;
        let indices =
            self.add_tensor(format!("{name}.indices"), shape.y_shape().to_vec(), TensorKind::Saved { int: true }, None);
        let y = self.activation(format!("{name}.out"), shape.y_shape().to_vec());
        Ok(self.push(name, Op::MaxPool { x, y, indices, shape }))
    }

    pub fn avg_pool(&mut self, name: &str, x: TensorId, cfg: PoolConfig) -> Result<TensorId> {
        let shape = PoolShape::new(self.shape(x), cfg).map_err(|e| self.shape_err(name, "avg_pool", e.to_string()))?;
        let y = self.activation(format!("{name}.out"), shape.y_shape().to_vec());
        Ok(self.push(name, Op::AvgPool { x, y, shape }))
    }

    fn nchw(&self, name: &str, kind: &str, x: TensorId) -> Result<[usize; 4]> {
        match *self.shape(x) {
            [n, c, h, w] => Ok([n, c, h, w]),
            ref s => Err(self.shape_err(name, kind, format!("input {s:?} must be (N, C, H, W)"))),
        }
    }

    pub fn global_avg_pool(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        let [n, c, _, _] = self.nchw(name, "global_avg_pool", x)?;
        let indices = self.add_tensor(format!("{name}.indices"), vec![n, c], TensorKind::Saved { int: true }, None);
        let y = self.activation(format!("{name}.out"), vec![n, c]);
        Ok(self.push(name, Op::GlobalAvgPool { x, y, indices }))
    }

    /// fastai's AdaptiveConcatPool2d: global max and global mean side by side, (N, 2C).
    pub fn concat_pool(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        let [n, c, _, _] = self.nchw(name, "concat_pool", x)?;
        let indices = self.add_tensor(format!("{name}.indices"), vec![n, c], TensorKind::Saved { int: true }, None);
        let y = self.activation(format!("{name}.out"), vec![n, 2 * c]);
        Ok(self.push(name, Op::ConcatPool { x, y, indices }))
    }

    pub fn concat(&mut self, name: &str, xs: &[TensorId]) -> Result<TensorId> {
        let first = self.shape(*xs.first().ok_or_else(|| self.shape_err(name, "concat", "no inputs".into()))?).to_vec();
        let mut channels = 0;
        for &x in xs {
            let s = self.shape(x);
            if s.len() < 2 || s[0] != first[0] || s[2..] != first[2..] {
                return Err(self.shape_err(
                    name,
                    "concat",
                    format!("{:?} and {s:?} differ outside the channels", first),
                ));
            }
            channels += s[1];
        }
        let mut shape = first.clone();
        shape[1] = channels;
        let y = self.activation(format!("{name}.out"), shape);
        Ok(self.push(name, Op::Concat { xs: xs.to_vec(), y }))
    }

    pub fn flatten(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        let s = self.shape(x).to_vec();
        let y = self.activation(format!("{name}.out"), vec![s[0], s[1..].iter().product()]);
        Ok(self.push(name, Op::Flatten { x, y }))
    }

    pub fn dropout(&mut self, name: &str, x: TensorId, p: f64) -> Result<TensorId> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::Invalid(format!("dropout '{name}': probability {p} must be in [0, 1)")));
        }
        let seed = self.next_rng().next_u64() as u32;
        let y = self.activation(format!("{name}.out"), self.shape(x).to_vec());
        Ok(self.push(name, Op::Dropout { x, y, p, seed }))
    }

    /// Drop path (stochastic depth) with drop probability `p` per sample; `p` 0 adds no op and returns `x`.
    pub fn drop_path(&mut self, name: &str, x: TensorId, p: f64) -> Result<TensorId> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::Invalid(format!("drop_path '{name}': probability {p} must be in [0, 1)")));
        }
        if p == 0.0 {
            return Ok(x);
        }
        let seed = self.next_rng().next_u64() as u32;
        let y = self.activation(format!("{name}.out"), self.shape(x).to_vec());
        Ok(self.push(name, Op::DropPath { x, y, p, seed }))
    }

    /// GELU, exact (`tanh` false, PyTorch's default) or in its tanh approximation.
    pub fn gelu(&mut self, name: &str, x: TensorId, tanh: bool) -> Result<TensorId> {
        let y = self.activation(format!("{name}.out"), self.shape(x).to_vec());
        Ok(self.push(name, Op::Gelu { x, y, tanh }))
    }

    /// Layer norm over the channels of (N, C, ...) (`last` false: ConvNeXt's LayerNorm2d on NCHW) or over the last
    /// dimension (`last` true: a transformer's LayerNorm): weight ones, bias zeros, no weight decay; they train in
    /// the frozen phase as batch norm's do.
    pub fn layer_norm(&mut self, name: &str, x: TensorId, last: bool, eps: f32) -> Result<TensorId> {
        let xs = self.shape(x).to_vec();
        let axis = if last { ChannelAxis::last(&xs) } else { ChannelAxis::second(&xs) };
        let Some(axis) = axis.filter(|a| a.numel() > 0) else {
            let want = if last { "at least 1-D" } else { "(N, C, ...)" };
            return Err(self.shape_err(name, "layer_norm", format!("input {xs:?} must be {want} and not empty")));
        };
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(Error::Invalid(format!("layer_norm '{name}': eps {eps} must be positive")));
        }
        let c = axis.channels;
        let gamma = self.param(&format!("{name}.weight"), &[c], vec![1.0; c], false, true);
        let beta = self.param(&format!("{name}.bias"), &[c], vec![0.0; c], false, true);
        let saved = TensorKind::Saved { int: false };
        let mean = self.add_tensor(format!("{name}.save_mean"), vec![axis.positions()], saved.clone(), None);
        let rstd = self.add_tensor(format!("{name}.save_rstd"), vec![axis.positions()], saved, None);
        let y = self.activation(format!("{name}.out"), xs);
        Ok(self.push(name, Op::LayerNorm { x, gamma, beta, mean, rstd, y, axis, eps }))
    }

    /// Layer scale over the channels of (N, C, ...): y = gamma[c] * x, gamma (C) starting at `init` (ConvNeXt's
    /// 1e-6) and named `name` itself (timm's `blocks.M.gamma`); weight decay applies as to any weight.
    pub fn layer_scale(&mut self, name: &str, x: TensorId, init: f32) -> Result<TensorId> {
        let xs = self.shape(x).to_vec();
        let Some(axis) = ChannelAxis::second(&xs) else {
            return Err(self.shape_err(name, "layer_scale", format!("input {xs:?} must be (N, C, ...)")));
        };
        let gamma = self.param(name, &[axis.channels], vec![init; axis.channels], true, false);
        let y = self.activation(format!("{name}.out"), xs);
        Ok(self.push(name, Op::LayerScale { x, gamma, y, axis }))
    }

    /// `x` in the shape `shape` (the same number of elements): a view.
    pub fn view(&mut self, name: &str, x: TensorId, shape: &[usize]) -> Result<TensorId> {
        let xs = self.shape(x).to_vec();
        if xs.iter().product::<usize>() != shape.iter().product::<usize>() {
            return Err(self.shape_err(
                name,
                "view",
                format!("{xs:?} and {shape:?} hold different numbers of elements"),
            ));
        }
        let y = self.activation(format!("{name}.out"), shape.to_vec());
        Ok(self.push(name, Op::View { x, y }))
    }

    /// `x` with its axes reordered: output axis d is input axis `perm[d]` (PyTorch's `permute(...).contiguous()`).
    pub fn permute(&mut self, name: &str, x: TensorId, perm: &[usize]) -> Result<TensorId> {
        let shape = crate::ops::permute::permuted_shape(self.shape(x), perm)
            .map_err(|e| self.shape_err(name, "permute", e.to_string()))?;
        let y = self.activation(format!("{name}.out"), shape);
        Ok(self.push(name, Op::Permute { x, y, perm: perm.to_vec() }))
    }

    /// Batched matrix product of a (B, M, K) and b (B, K, N), or b (B, N, K) transposed when `trans_b`.
    pub fn matmul(&mut self, name: &str, a: TensorId, b: TensorId, trans_b: bool) -> Result<TensorId> {
        let (as_, bs) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        let (&[ba, m, k], &[bb, r, c]) = (as_.as_slice(), bs.as_slice()) else {
            return Err(self.shape_err(name, "matmul", format!("{as_:?} and {bs:?} must both be (batch, rows, cols)")));
        };
        let (kb, n) = if trans_b { (c, r) } else { (r, c) };
        if ba != bb || k != kb {
            let what = if trans_b { "· transposed" } else { "·" };
            return Err(self.shape_err(name, "matmul", format!("{as_:?} {what} {bs:?}: batch or inner sizes differ")));
        }
        let y = self.activation(format!("{name}.out"), vec![ba, m, n]);
        Ok(self.push(name, Op::MatMul { a, b, y, trans_b }))
    }

    /// softmax(scale * x) over the last axis.
    pub fn softmax(&mut self, name: &str, x: TensorId, scale: f32) -> Result<TensorId> {
        if !scale.is_finite() || self.shape(x).last().is_none_or(|&l| l == 0) {
            return Err(self.shape_err(name, "softmax", format!("input {:?}, scale {scale}", self.shape(x))));
        }
        let y = self.activation(format!("{name}.out"), self.shape(x).to_vec());
        Ok(self.push(name, Op::Softmax { x, y, scale }))
    }

    /// Channels `start` .. `start + len` of x along dimension 1.
    pub fn slice(&mut self, name: &str, x: TensorId, start: usize, len: usize) -> Result<TensorId> {
        let xs = self.shape(x).to_vec();
        if xs.len() < 2 || len == 0 || start + len > xs[1] {
            let detail = format!("channels {start}..{} of {xs:?}", start + len);
            return Err(self.shape_err(name, "slice", detail));
        }
        let mut shape = xs;
        shape[1] = len;
        let y = self.activation(format!("{name}.out"), shape);
        Ok(self.push(name, Op::Slice { x, y, start }))
    }

    /// x (1, ...) repeated `n` times along dimension 0.
    pub fn expand(&mut self, name: &str, x: TensorId, n: usize) -> Result<TensorId> {
        let xs = self.shape(x).to_vec();
        if xs.first() != Some(&1) || n == 0 {
            return Err(self.shape_err(
                name,
                "expand",
                format!("{xs:?} must have a first dimension of 1 to repeat {n} times"),
            ));
        }
        let mut shape = xs;
        shape[0] = n;
        let y = self.activation(format!("{name}.out"), shape);
        Ok(self.push(name, Op::Expand { x, y }))
    }

    /// Softmax cross-entropy (mean over the batch) with optional label smoothing; returns the loss (1).
    pub fn cross_entropy(
        &mut self,
        name: &str,
        logits: TensorId,
        labels: TensorId,
        smoothing: f32,
    ) -> Result<TensorId> {
        self.loss(name, logits, labels, Loss::SoftmaxCrossEntropy { smoothing })
    }

    /// Sigmoid binary cross-entropy with logits (mean over every sample and class), for several labels per
    /// sample; `correct` counts (sample, class) pairs right at `threshold`. Returns the loss (1).
    pub fn binary_cross_entropy(
        &mut self,
        name: &str,
        logits: TensorId,
        labels: TensorId,
        threshold: f32,
    ) -> Result<TensorId> {
        self.loss(name, logits, labels, Loss::SigmoidBinaryCrossEntropy { threshold })
    }

    /// The loss `f` of logits (N, classes) against target rows made by [`Graph::targets`] for it; returns the
    /// loss (1).
    pub fn loss(&mut self, name: &str, logits: TensorId, labels: TensorId, f: Loss) -> Result<TensorId> {
        let kind = if f.multi_label() { OpKind::SigmoidBinaryCrossEntropy } else { OpKind::SoftmaxCrossEntropy };
        let &[n, classes] = self.shape(logits) else {
            let detail = format!("logits {:?} must be (N, classes)", self.shape(logits));
            return Err(self.shape_err(name, kind.name(), detail));
        };
        let row = f.targets(classes).row();
        if self.shape(labels) != [n, row] {
            let made_by = if f.multi_label() { "Graph::multi_labels" } else { "Graph::labels" };
            let detail = format!(
                "labels {:?} must be ({n}, {row}) for logits {:?} (made by {made_by})",
                self.shape(labels),
                self.shape(logits)
            );
            return Err(self.shape_err(name, kind.name(), detail));
        }
        if let Loss::SigmoidBinaryCrossEntropy { threshold } = f {
            if !(0.0..=1.0).contains(&threshold) {
                return Err(Error::Invalid(format!("loss '{name}': threshold {threshold} must be in [0, 1]")));
            }
        }
        let loss = self.activation(format!("{name}.loss"), vec![1]);
        let correct = self.activation(format!("{name}.correct"), vec![1]);
        let op = match f {
            Loss::SoftmaxCrossEntropy { smoothing } => {
                Op::SoftmaxCrossEntropy { logits, labels, loss, correct, smoothing }
            }
            Loss::SigmoidBinaryCrossEntropy { threshold } => {
                Op::SigmoidBinaryCrossEntropy { logits, labels, loss, correct, threshold }
            }
        };
        Ok(self.push(name, op))
    }

    /// The node that produces `t`, if any.
    pub fn producer(&self, t: TensorId) -> Option<usize> {
        self.nodes.iter().position(|n| n.op.outputs().first() == Some(&t))
    }
}
