//! The backward pass, derived from the forward graph: layers in reverse order, one `match` arm per [`Op`]. A
//! gradient's first contribution overwrites its buffer and later ones add (tensors used twice, residual
//! connections); a layer whose output gradient nothing produced, or whose inputs need none, is skipped, so with a
//! frozen body in eval mode backward ends at the head.

use std::collections::HashSet;

use super::program::{Build, DropoutSite, PendingLayer};
use super::{Executor, Key};
use crate::error::{Error, Result};
use crate::gpu::DType;
use crate::graph::{Op, TensorId};
use crate::ops::concat::concat_backward;
use crate::ops::conv::{
    conv2d_backward_bias, conv2d_backward_data, conv2d_backward_weight, conv2d_backward_weight_scratch,
};
use crate::ops::dropout::{dropout_backward, DropoutParams};
use crate::ops::elementwise::{elementwise, Elementwise};
use crate::ops::layer_norm::{layer_norm_backward, layer_scale_backward};
use crate::ops::matmul::{matmul, matmul_split_k, split_k_scratch, MatmulKernel, MatmulOptions};
use crate::ops::norm::{batch_norm_backward, BatchNormGrads};
use crate::ops::permute::permute;
use crate::ops::pool::{avg_pool_backward, global_pool_backward, max_pool_backward, GlobalPool};
use crate::ops::reduce::sum_reduce;
use crate::ops::slice::slice_backward;
use crate::ops::softmax::softmax_rows_backward;

/// Whether a gradient contribution to `t` adds to an earlier one (true) or is the first and overwrites (false).
fn accumulates(written: &mut HashSet<TensorId>, t: TensorId) -> bool {
    !written.insert(t)
}

/// What the backward pass of a layer with weights (x, w, optional b, output y) computes: whether dx is needed,
/// whether w and b train, and whether dx adds to an earlier contribution; the gradients it touches are added to
/// `touches`.
fn weighted_layer(
    needs: &[bool],
    trains: &dyn Fn(TensorId) -> bool,
    written: &mut HashSet<TensorId>,
    touches: &mut Vec<Key>,
    (x, w, b, y): (TensorId, TensorId, Option<TensorId>, TensorId),
) -> (bool, bool, bool, bool) {
    let (need_x, train_w, train_b) = (needs[x.0], trains(w), b.is_some_and(trains));
    let ax = need_x && accumulates(written, x);
    touches.push(Key::Grad(y));
    touches.extend(need_x.then_some(Key::Grad(x)));
    touches.extend([Key::Grad(w)].into_iter().filter(|_| train_w));
    touches.extend(b.filter(|_| train_b).map(Key::Grad));
    (need_x, train_w, train_b, ax)
}

/// For a layer with two data inputs `a` and `b` (output `y`): whether each needs a gradient and whether that
/// gradient adds to an earlier contribution; the gradients touched are added to `touches`.
fn two_inputs(
    needs: &[bool],
    written: &mut HashSet<TensorId>,
    touches: &mut Vec<Key>,
    (a, b, y): (TensorId, TensorId, TensorId),
) -> (bool, bool, bool, bool) {
    let (na, nb) = (needs[a.0], needs[b.0]);
    let aa = na && accumulates(written, a);
    let ab = nb && accumulates(written, b);
    touches.push(Key::Grad(y));
    touches.extend(na.then_some(Key::Grad(a)));
    touches.extend(nb.then_some(Key::Grad(b)));
    (na, nb, aa, ab)
}

impl Executor {
    /// Append the backward layers: reverse order, one arm per op, gradients of tensors used twice accumulate.
    pub(super) fn derive_backward(&self, needs: &[bool], layers: &mut Vec<PendingLayer>) -> Result<()> {
        let g = &self.graph;
        let mut written: HashSet<TensorId> = HashSet::new();
        let trains = |t: TensorId| self.group_trains(t, true);
        for (index, node) in g.nodes.iter().enumerate().rev() {
            let op = node.op.clone();
            let out = op.outputs()[0];
            let out_needed = match &op {
                Op::SoftmaxCrossEntropy { logits, .. } | Op::SigmoidBinaryCrossEntropy { logits, .. } => {
                    needs[logits.0]
                }
                _ => needs[out.0] && written.contains(&out),
            };
            if !out_needed {
                continue;
            }
            let label = format!("{} backward", node.name);
            let l2 = label.clone();
            let v = Key::Value;
            let gk = Key::Grad;
            let mut touches: Vec<Key> = op.inputs().into_iter().chain(op.outputs()).map(v).collect();
            let mut dropout = Vec::new();
            let mut scratch = Vec::new();
            let build: Build = match op {
                Op::SoftmaxCrossEntropy { .. } | Op::SigmoidBinaryCrossEntropy { .. } => {
                    let (logits, labels, _, _, f) = op.as_loss().expect("a loss op");
                    let a = accumulates(&mut written, logits);
                    touches.push(gk(logits));
                    if a {
                        return Err(Error::Invalid("the logits feed more than the loss".into()));
                    }
                    // With f16 the logits' gradient is multiplied by the loss scale before it is stored, so every
                    // activation gradient upstream is scaled too (the weight gradients are divided by it again
                    // before the optimizer).
                    let scaled = self.cfg.precision == crate::gpu::Precision::F16;
                    Box::new(move |v| {
                        let scaler = scaled.then_some(v.scaler);
                        Ok(vec![f.backward(v.gpu, v.v(logits)?, v.v(labels)?, v.g(logits)?, 1.0, scaler, &l2)?])
                    })
                }
                Op::Linear { x, w, b, y } => {
                    let (need_x, train_w, train_b, ax) =
                        weighted_layer(needs, &trains, &mut written, &mut touches, (x, w, b, y));
                    // dw sums over every row of the batch: split-K partial sums where this adapter splits it.
                    let (rows, outs, ins) = (g.shape(x)[0], g.shape(w)[0], g.shape(w)[1]);
                    let partial = train_w.then(|| split_k_scratch(&self.gpu, outs, ins, rows)).flatten();
                    let partial_key = partial.is_some().then_some(Key::Scratch(index));
                    scratch.extend(partial.map(|s| (Key::Scratch(index), s, DType::F32)));
                    Box::new(move |v| {
                        let mut out = Vec::new();
                        if need_x {
                            // dx = dy · w
                            let opts = MatmulOptions { accumulate: ax, ..Default::default() };
                            out.push(matmul(v.gpu, MatmulKernel::Auto, v.g(y)?, v.v(w)?, None, v.g(x)?, opts, &l2)?);
                        }
                        if train_w {
                            // dw = dyᵀ · x
                            let opts = MatmulOptions { trans_a: true, ..Default::default() };
                            let partial = partial_key.map(|k| v.get(k)).transpose()?;
                            let (dy, x, dw) = (v.g(y)?, v.v(x)?, v.g(w)?);
                            out.extend(matmul_split_k(v.gpu, MatmulKernel::Auto, dy, x, dw, opts, partial, &l2)?);
                        }
                        if let (Some(b), true) = (b, train_b) {
                            let [n, o] = *v.g(y)?.shape() else { unreachable!("linear output is 2-D") };
                            out.push(sum_reduce(v.gpu, v.g(y)?, v.g(b)?, (n, o, 1), false, &l2)?);
                        }
                        Ok(out)
                    })
                }
                Op::Conv2d { x, w, b, y, shape } => {
                    let (need_x, train_w, train_b, ax) =
                        weighted_layer(needs, &trains, &mut written, &mut touches, (x, w, b, y));
                    // The split-batch partial sums of dw, where this adapter splits the batch.
                    let partial = train_w.then(|| conv2d_backward_weight_scratch(&self.gpu, &shape)).flatten();
                    let partial_key = partial.is_some().then_some(Key::Scratch(index));
                    scratch.extend(partial.map(|s| (Key::Scratch(index), s, DType::F32)));
                    Box::new(move |v| {
                        let mut out = Vec::new();
                        if need_x {
                            out.extend(conv2d_backward_data(v.gpu, &shape, v.g(y)?, v.v(w)?, v.g(x)?, ax, &l2)?);
                        }
                        if train_w {
                            let partial = partial_key.map(|k| v.get(k)).transpose()?;
                            out.extend(conv2d_backward_weight(
                                v.gpu,
                                &shape,
                                v.g(y)?,
                                v.v(x)?,
                                v.g(w)?,
                                partial,
                                false,
                                &l2,
                            )?);
                        }
                        if let (Some(b), true) = (b, train_b) {
                            out.push(conv2d_backward_bias(v.gpu, &shape, v.g(y)?, v.g(b)?, false, &l2)?);
                        }
                        Ok(out)
                    })
                }
                Op::BatchNorm { x, gamma, beta, running_mean, running_var, save_mean, save_var, y, cfg, residual } => {
                    let bn_train = self.bn_trains(gamma, true);
                    let ax = needs[x.0] && accumulates(&mut written, x);
                    touches.extend([gk(y), gk(x), gk(gamma), gk(beta)]);
                    // A fused residual's gradient is dy.
                    let residual = residual.filter(|r| needs[r.0]).map(|r| (r, accumulates(&mut written, r)));
                    touches.extend(residual.map(|(r, _)| gk(r)));
                    let partials = bn_train.then(|| self.batch_norm_scratch(index, x, cfg)).flatten();
                    let partials_key = partials.as_ref().map(|(k, _, _)| *k);
                    scratch.extend(partials);
                    Box::new(move |v| {
                        let stats = if bn_train {
                            (v.v(save_mean)?, v.v(save_var)?)
                        } else {
                            (v.v(running_mean)?, v.v(running_var)?)
                        };
                        let grads = BatchNormGrads {
                            dgamma: v.g(gamma)?,
                            dbeta: v.g(beta)?,
                            dx: v.g(x)?,
                            accumulate_dx: ax,
                            residual: residual.map(|(r, ar)| Ok::<_, Error>((v.g(r)?, ar))).transpose()?,
                            partials: partials_key.map(|k| v.get(k)).transpose()?,
                        };
                        let (dy, x, params) = (v.g(y)?, v.v(x)?, (v.v(gamma)?, v.v(beta)?));
                        batch_norm_backward(v.gpu, dy, x, params, stats, !bn_train, &grads, cfg, &l2)
                    })
                }
                Op::Relu { x, y } | Op::Relu6 { x, y } | Op::LeakyRelu { x, y, .. } => {
                    // dx = dy * f'(x), x the forward input; alpha is leaky relu's slope.
                    let (kind, alpha) = match op {
                        Op::Relu { .. } => (Elementwise::ReluBackward, 1.0),
                        Op::Relu6 { .. } => (Elementwise::Relu6Backward, 1.0),
                        Op::LeakyRelu { slope, .. } => (Elementwise::LeakyReluBackward, slope),
                        _ => unreachable!("matched above"),
                    };
                    let ax = accumulates(&mut written, x);
                    touches.extend([gk(y), gk(x)]);
                    Box::new(move |v| {
                        Ok(vec![elementwise(v.gpu, kind, v.v(x)?, Some(v.g(y)?), v.g(x)?, alpha, ax, &l2)?])
                    })
                }
                Op::Add { a, b, y } => {
                    let (na, nb, aa, ab) = two_inputs(needs, &mut written, &mut touches, (a, b, y));
                    Box::new(move |v| {
                        let mut out = Vec::new();
                        if na {
                            out.push(elementwise(v.gpu, Elementwise::Scale, v.g(y)?, None, v.g(a)?, 1.0, aa, &l2)?);
                        }
                        if nb {
                            out.push(elementwise(v.gpu, Elementwise::Scale, v.g(y)?, None, v.g(b)?, 1.0, ab, &l2)?);
                        }
                        Ok(out)
                    })
                }
                Op::MaxPool { x, y, indices, shape } => {
                    let ax = accumulates(&mut written, x);
                    touches.extend([gk(y), gk(x)]);
                    Box::new(move |v| {
                        Ok(vec![max_pool_backward(v.gpu, &shape, v.g(y)?, v.v(indices)?, v.g(x)?, ax, &l2)?])
                    })
                }
                Op::AvgPool { x, y, shape } => {
                    let ax = accumulates(&mut written, x);
                    touches.extend([gk(y), gk(x)]);
                    Box::new(move |v| Ok(vec![avg_pool_backward(v.gpu, &shape, v.g(y)?, v.g(x)?, ax, &l2)?]))
                }
                Op::GlobalAvgPool { x, y, indices } => {
                    let ax = accumulates(&mut written, x);
                    touches.extend([gk(y), gk(x)]);
                    Box::new(move |v| {
                        Ok(vec![global_pool_backward(
                            v.gpu,
                            GlobalPool::Avg,
                            v.g(y)?,
                            0,
                            v.v(indices)?,
                            v.g(x)?,
                            ax,
                            &l2,
                        )?])
                    })
                }
                Op::ConcatPool { x, y, indices } => {
                    let ax = accumulates(&mut written, x);
                    touches.extend([gk(y), gk(x)]);
                    Box::new(move |v| {
                        let c = v.v(x)?.shape()[1];
                        Ok(vec![
                            global_pool_backward(v.gpu, GlobalPool::Max, v.g(y)?, 0, v.v(indices)?, v.g(x)?, ax, &l2)?,
                            global_pool_backward(
                                v.gpu,
                                GlobalPool::Avg,
                                v.g(y)?,
                                c,
                                v.v(indices)?,
                                v.g(x)?,
                                true,
                                &l2,
                            )?,
                        ])
                    })
                }
                Op::Concat { xs, y } => {
                    let flags: Vec<(TensorId, bool, bool)> =
                        xs.iter().map(|&x| (x, needs[x.0], needs[x.0] && accumulates(&mut written, x))).collect();
                    touches.push(gk(y));
                    touches.extend(flags.iter().filter(|f| f.1).map(|f| gk(f.0)));
                    Box::new(move |v| {
                        let mut offset = 0;
                        let mut out = Vec::new();
                        for &(x, need, a) in &flags {
                            if need {
                                out.push(concat_backward(v.gpu, v.g(y)?, offset, v.g(x)?, a, &l2)?);
                            }
                            offset += v.v(x)?.shape()[1];
                        }
                        Ok(out)
                    })
                }
                Op::Flatten { x, y } | Op::View { x, y } => {
                    let ax = accumulates(&mut written, x);
                    touches.extend([gk(y), gk(x)]);
                    Box::new(move |v| {
                        let dy = v.g(y)?.reshape(v.g(x)?.shape())?;
                        Ok(vec![elementwise(v.gpu, Elementwise::Scale, &dy, None, v.g(x)?, 1.0, ax, &l2)?])
                    })
                }
                Op::Dropout { .. } | Op::DropPath { .. } => {
                    let (x, y, p, seed, per) = op.as_dropout(g).expect("a dropout op");
                    let ax = accumulates(&mut written, x);
                    touches.extend([gk(y), gk(x)]);
                    let len = g.tensors[x.0].numel();
                    dropout.push(DropoutSite { dispatch: 0, p, seed, accumulate: ax, len, per });
                    Box::new(move |v| {
                        let params = DropoutParams::new(len, p, seed, 0, ax)?.per_sample(per)?;
                        Ok(vec![dropout_backward(v.gpu, v.g(y)?, v.g(x)?, params, &l2)?])
                    })
                }
                Op::Permute { x, y, perm } => {
                    let ax = accumulates(&mut written, x);
                    touches.extend([gk(y), gk(x)]);
                    let inv = crate::ops::permute::inverse(&perm);
                    Box::new(move |v| Ok(vec![permute(v.gpu, v.g(y)?, &inv, v.g(x)?, ax, &l2)?]))
                }
                Op::MatMul { a, b, y, trans_b } => {
                    let (na, nb, aa, ab) = two_inputs(needs, &mut written, &mut touches, (a, b, y));
                    Box::new(move |v| {
                        let mut out = Vec::new();
                        let t = MatmulKernel::Auto;
                        if na {
                            // dA = dY · op(B)ᵀ: B stored (K, N) is read transposed; stored (N, K) as it is.
                            let opts = MatmulOptions { trans_b: !trans_b, accumulate: aa, ..Default::default() };
                            out.push(matmul(v.gpu, t, v.g(y)?, v.v(b)?, None, v.g(a)?, opts, &l2)?);
                        }
                        if nb {
                            let opts = MatmulOptions { trans_a: true, accumulate: ab, ..Default::default() };
                            out.push(if trans_b {
                                // dB (N, K) = dYᵀ · A
                                matmul(v.gpu, t, v.g(y)?, v.v(a)?, None, v.g(b)?, opts, &l2)?
                            } else {
                                // dB (K, N) = Aᵀ · dY
                                matmul(v.gpu, t, v.v(a)?, v.g(y)?, None, v.g(b)?, opts, &l2)?
                            });
                        }
                        Ok(out)
                    })
                }
                Op::Slice { x, y, start } => {
                    let ax = accumulates(&mut written, x);
                    touches.extend([gk(y), gk(x)]);
                    Box::new(move |v| Ok(vec![slice_backward(v.gpu, v.g(y)?, v.g(x)?, start, ax, &l2)?]))
                }
                Op::Expand { x, y } => {
                    // dx = the sum of dy over the batch.
                    let ax = accumulates(&mut written, x);
                    touches.extend([gk(y), gk(x)]);
                    let (n, per) = (g.tensors[y.0].shape[0], g.tensors[x.0].numel());
                    Box::new(move |v| Ok(vec![sum_reduce(v.gpu, v.g(y)?, v.g(x)?, (n, per, 1), ax, &l2)?]))
                }
                Op::Softmax { x, y, scale } => {
                    let ax = accumulates(&mut written, x);
                    touches.extend([gk(y), gk(x)]);
                    Box::new(move |v| {
                        Ok(vec![softmax_rows_backward(v.gpu, v.v(y)?, v.g(y)?, v.g(x)?, scale, ax, &l2)?])
                    })
                }
                Op::Gelu { x, y, tanh } => {
                    let kind = if tanh { Elementwise::GeluTanhBackward } else { Elementwise::GeluBackward };
                    let ax = accumulates(&mut written, x);
                    touches.extend([gk(y), gk(x)]);
                    Box::new(move |v| {
                        Ok(vec![elementwise(v.gpu, kind, v.v(x)?, Some(v.g(y)?), v.g(x)?, 1.0, ax, &l2)?])
                    })
                }
                Op::LayerNorm { x, gamma, beta, mean, rstd, y, axis, .. } => {
                    // gamma and beta are in one group: both train or neither.
                    let (need_x, train, _, ax) =
                        weighted_layer(needs, &trains, &mut written, &mut touches, (x, gamma, Some(beta), y));
                    Box::new(move |v| {
                        let params = if train { Some((v.g(gamma)?, v.g(beta)?)) } else { None };
                        let dx = if need_x { Some(v.g(x)?) } else { None };
                        let stats = (v.v(mean)?, v.v(rstd)?);
                        layer_norm_backward(v.gpu, axis, v.g(y)?, v.v(x)?, v.v(gamma)?, stats, params, dx, ax, &l2)
                    })
                }
                Op::LayerScale { x, gamma, y, axis } => {
                    let (need_x, train, _, ax) =
                        weighted_layer(needs, &trains, &mut written, &mut touches, (x, gamma, None, y));
                    Box::new(move |v| {
                        let dgamma = if train { Some(v.g(gamma)?) } else { None };
                        let dx = if need_x { Some(v.g(x)?) } else { None };
                        layer_scale_backward(v.gpu, axis, v.g(y)?, v.v(x)?, v.v(gamma)?, dgamma, dx, ax, &l2)
                    })
                }
            };
            layers.push(PendingLayer { name: label, touches, dropout, scratch, build });
        }
        Ok(())
    }
}
