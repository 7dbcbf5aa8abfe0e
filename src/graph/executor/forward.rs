//! The forward pass: one layer per node, one `match` arm per [`Op`]. Training mode normalizes with batch
//! statistics (updating the running ones) and applies dropout; eval mode uses the running statistics, copies
//! through dropout and also computes class probabilities.

use super::program::{Build, DropoutSite, PendingLayer};
use super::{Executor, Key};
use crate::graph::{Node, Op, TensorId};
use crate::ops::concat::concat_forward;
use crate::ops::conv::conv2d_forward;
use crate::ops::dropout::{dropout_forward, DropoutParams};
use crate::ops::elementwise::{elementwise, Elementwise};
use crate::ops::layer_norm::{layer_norm_forward, layer_scale_forward};
use crate::ops::matmul::{matmul, MatmulKernel, MatmulOptions};
use crate::ops::norm::{batch_norm_forward, BatchNormState};
use crate::ops::permute::permute;
use crate::ops::pool::{avg_pool_forward, global_pool_forward, max_pool_forward, GlobalPool};
use crate::ops::slice::{expand_forward, slice_forward};
use crate::ops::softmax::softmax_rows_forward;

impl Executor {
    /// The layer of node `index` (which keys its scratch: see [`Key::Scratch`]).
    pub(super) fn forward_layer(&self, index: usize, node: &Node, training: bool) -> PendingLayer {
        let g = &self.graph;
        let value = |t: TensorId| Key::Value(t);
        let name = node.name.clone();
        let op = node.op.clone();
        let bn_train = match &op {
            Op::BatchNorm { gamma, .. } => self.bn_trains(*gamma, training),
            _ => false,
        };
        let mut touches: Vec<Key> = op.inputs().into_iter().chain(op.outputs()).map(value).collect();
        let mut dropout = Vec::new();
        let mut scratch = Vec::new();
        let gpu_label = name.clone();
        let build: Build = match op {
            Op::Linear { x, w, b, y } => {
                // y = x · wᵀ + b, with wᵀ written out first: the GEMMs read their right operand along N (neighbouring
                // invocations, neighbouring columns), and the (out, in) weight read as wᵀ is K-contiguous instead,
                // 3.3x slower on an H200 (ViT-S's 6304 x 1536 x 384: 1.22 ms against 0.37 ms). One pass over the
                // weight buys it; the transposed copy is a transient of this layer.
                let shape = &g.tensors[w.0].shape;
                let wt = Key::Transposed(w);
                scratch.push((wt, vec![shape[1], shape[0]], super::params::PARAM_DTYPE));
                Box::new(move |v| {
                    let bias = match b {
                        Some(b) => Some(v.v(b)?),
                        None => None,
                    };
                    let (w, wt) = (v.v(w)?, v.get(wt)?);
                    let transpose = permute(v.gpu, w, &[1, 0], wt, false, &format!("{gpu_label} weight transposed"))?;
                    let opts = MatmulOptions::default();
                    let product = matmul(v.gpu, MatmulKernel::Auto, v.v(x)?, wt, bias, v.v(y)?, opts, &gpu_label)?;
                    Ok(vec![transpose, product])
                })
            }
            Op::Conv2d { x, w, b, y, shape } => Box::new(move |v| {
                let bias = match b {
                    Some(b) => Some(v.v(b)?),
                    None => None,
                };
                conv2d_forward(v.gpu, &shape, v.v(x)?, v.v(w)?, bias, v.v(y)?, false, &gpu_label)
            }),
            Op::BatchNorm { x, gamma, beta, running_mean, running_var, save_mean, save_var, y, cfg, residual } => {
                // The chunked schedule's partial sums (the same key and shape as backward's: one tensor, live from
                // this layer to the backward one).
                let partials = bn_train.then(|| self.batch_norm_scratch(index, x, cfg)).flatten();
                let partials_key = partials.as_ref().map(|(k, _, _)| *k);
                scratch.extend(partials);
                Box::new(move |v| {
                    let state = BatchNormState {
                        gamma: v.v(gamma)?,
                        beta: v.v(beta)?,
                        running_mean: v.v(running_mean)?,
                        running_var: v.v(running_var)?,
                        partials: partials_key.map(|k| v.get(k)).transpose()?,
                    };
                    let save = if bn_train { Some((v.v(save_mean)?, v.v(save_var)?)) } else { None };
                    let residual = residual.map(|r| v.v(r)).transpose()?;
                    batch_norm_forward(v.gpu, v.v(x)?, &state, save, residual, v.v(y)?, cfg, &gpu_label)
                })
            }
            Op::Relu { x, y } => Box::new(move |v| {
                Ok(vec![elementwise(v.gpu, Elementwise::ReluForward, v.v(x)?, None, v.v(y)?, 1.0, false, &gpu_label)?])
            }),
            Op::Relu6 { x, y } => Box::new(move |v| {
                Ok(vec![elementwise(v.gpu, Elementwise::Relu6Forward, v.v(x)?, None, v.v(y)?, 1.0, false, &gpu_label)?])
            }),
            Op::LeakyRelu { x, y, slope } => Box::new(move |v| {
                let kind = Elementwise::LeakyReluForward;
                Ok(vec![elementwise(v.gpu, kind, v.v(x)?, None, v.v(y)?, slope, false, &gpu_label)?])
            }),
            Op::Add { a, b, y } => Box::new(move |v| {
                Ok(vec![elementwise(v.gpu, Elementwise::Add, v.v(a)?, Some(v.v(b)?), v.v(y)?, 1.0, false, &gpu_label)?])
            }),
            Op::MaxPool { x, y, indices, shape } => Box::new(move |v| {
                Ok(vec![max_pool_forward(v.gpu, &shape, v.v(x)?, v.v(y)?, v.v(indices)?, &gpu_label)?])
            }),
            Op::AvgPool { x, y, shape } => {
                Box::new(move |v| Ok(vec![avg_pool_forward(v.gpu, &shape, v.v(x)?, v.v(y)?, &gpu_label)?]))
            }
            Op::GlobalAvgPool { x, y, indices } => Box::new(move |v| {
                Ok(vec![global_pool_forward(v.gpu, GlobalPool::Avg, v.v(x)?, v.v(y)?, 0, v.v(indices)?, &gpu_label)?])
            }),
            Op::ConcatPool { x, y, indices } => Box::new(move |v| {
                let c = v.v(x)?.shape()[1];
                Ok(vec![
                    global_pool_forward(v.gpu, GlobalPool::Max, v.v(x)?, v.v(y)?, 0, v.v(indices)?, &gpu_label)?,
                    global_pool_forward(v.gpu, GlobalPool::Avg, v.v(x)?, v.v(y)?, c, v.v(indices)?, &gpu_label)?,
                ])
            }),
            Op::Concat { xs, y } => Box::new(move |v| {
                let mut offset = 0;
                let mut out = Vec::new();
                for &x in &xs {
                    out.push(concat_forward(v.gpu, v.v(x)?, v.v(y)?, offset, &gpu_label)?);
                    offset += v.v(x)?.shape()[1];
                }
                Ok(out)
            }),
            Op::Flatten { .. } | Op::View { .. } => Box::new(|_| Ok(Vec::new())),
            Op::Permute { x, y, perm } => {
                Box::new(move |v| Ok(vec![permute(v.gpu, v.v(x)?, &perm, v.v(y)?, false, &gpu_label)?]))
            }
            Op::MatMul { a, b, y, trans_b } => Box::new(move |v| {
                let opts = MatmulOptions { trans_b, ..Default::default() };
                Ok(vec![matmul(v.gpu, MatmulKernel::Auto, v.v(a)?, v.v(b)?, None, v.v(y)?, opts, &gpu_label)?])
            }),
            Op::Slice { x, y, start } => {
                Box::new(move |v| Ok(vec![slice_forward(v.gpu, v.v(x)?, v.v(y)?, start, &gpu_label)?]))
            }
            Op::Expand { x, y } => Box::new(move |v| Ok(vec![expand_forward(v.gpu, v.v(x)?, v.v(y)?, &gpu_label)?])),
            Op::Softmax { x, y, scale } => {
                Box::new(move |v| Ok(vec![softmax_rows_forward(v.gpu, v.v(x)?, v.v(y)?, scale, &gpu_label)?]))
            }
            Op::Dropout { .. } | Op::DropPath { .. } => {
                let (x, y, p, seed, per) = op.as_dropout(g).expect("a dropout op");
                if training {
                    let len = g.tensors[x.0].numel();
                    dropout.push(DropoutSite { dispatch: 0, p, seed, accumulate: false, len, per });
                    Box::new(move |v| {
                        let params = DropoutParams::new(len, p, seed, 0, false)?.per_sample(per)?;
                        Ok(vec![dropout_forward(v.gpu, v.v(x)?, v.v(y)?, params, &gpu_label)?])
                    })
                } else {
                    Box::new(move |v| {
                        let kind = Elementwise::Scale;
                        Ok(vec![elementwise(v.gpu, kind, v.v(x)?, None, v.v(y)?, 1.0, false, &gpu_label)?])
                    })
                }
            }
            Op::Gelu { x, y, tanh } => Box::new(move |v| {
                let kind = if tanh { Elementwise::GeluTanhForward } else { Elementwise::GeluForward };
                Ok(vec![elementwise(v.gpu, kind, v.v(x)?, None, v.v(y)?, 1.0, false, &gpu_label)?])
            }),
            Op::LayerNorm { x, gamma, beta, mean, rstd, y, axis, eps } => Box::new(move |v| {
                let params = (v.v(gamma)?, v.v(beta)?);
                let stats = (v.v(mean)?, v.v(rstd)?);
                Ok(vec![layer_norm_forward(v.gpu, axis, v.v(x)?, params, stats, v.v(y)?, eps, &gpu_label)?])
            }),
            Op::LayerScale { x, gamma, y, axis } => Box::new(move |v| {
                Ok(vec![layer_scale_forward(v.gpu, axis, v.v(x)?, v.v(gamma)?, v.v(y)?, &gpu_label)?])
            }),
            Op::SoftmaxCrossEntropy { .. } | Op::SigmoidBinaryCrossEntropy { .. } => {
                let (logits, labels, loss, correct, f) = op.as_loss().expect("a loss op");
                let probs = (!training).then_some(Key::Grad(logits));
                touches.extend(probs);
                Box::new(move |v| {
                    let mut out = vec![
                        f.forward(v.gpu, v.v(logits)?, v.v(labels)?, v.v(loss)?, &gpu_label)?,
                        f.correct(v.gpu, v.v(logits)?, v.v(labels)?, v.v(correct)?, &gpu_label)?,
                    ];
                    if let Some(p) = probs {
                        out.push(f.probabilities(v.gpu, v.v(logits)?, v.get(p)?, &gpu_label)?);
                    }
                    Ok(out)
                })
            }
        };
        PendingLayer { name, touches, dropout, scratch, build }
    }

    /// The scratch of node `index`'s batch norm (input `x`) where its schedule needs one on this device. A schedule
    /// the device refuses gets none here, and the layer's launch then says why.
    pub(super) fn batch_norm_scratch(
        &self,
        index: usize,
        x: TensorId,
        cfg: crate::ops::norm::BatchNormConfig,
    ) -> Option<(Key, Vec<usize>, crate::gpu::DType)> {
        let shape = &self.graph.tensors[x.0].shape;
        let (c, per_channel) = (shape[1], shape[0] * shape[2..].iter().product::<usize>());
        let partials = cfg.schedule.scratch(&self.gpu, c, per_channel).ok().flatten()?;
        Some((Key::Scratch(index), partials, crate::gpu::DType::F32))
    }
}
