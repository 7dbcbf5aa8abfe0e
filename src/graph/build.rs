//! The layer builders of [`Graph`]: one method per op, each checking shapes (errors name the layer and the shapes)
//! and creating the op's parameters, statistics and output.

use super::{kaiming_normal, Graph, Op, OpKind, TensorId, TensorKind};
use crate::error::{Error, Result};
use crate::ops::conv::{Conv2dConfig, ConvShape};
use crate::ops::layer_norm::ChannelAxis;
use crate::ops::loss::Loss;
use crate::ops::norm::BatchNormConfig;
use crate::ops::pool::{PoolConfig, PoolShape};

impl Graph {
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
        Ok(self.push(
            name,
            Op::BatchNorm { x, gamma, beta, running_mean, running_var, save_mean, save_var, y, cfg, residual: None },
        ))
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
}
