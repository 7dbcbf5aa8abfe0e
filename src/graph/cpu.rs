//! A graph's forward and backward pass on the CPU in f64, op by op through [`crate::reference`]: the oracle for
//! whole-model tests (gradient checks by finite differences, GPU logits and gradients against the reference) and
//! wgtune's side of the float64 comparison with PyTorch (`tools/torch_reference.py step-check`).

use std::collections::HashMap;

use crate::graph::{Graph, Node, Op, TensorId, TensorKind};
use crate::ops::dropout::DropoutParams;
use crate::ops::elementwise::Elementwise;
use crate::ops::loss::Targets;
use crate::ops::norm::NormAct;
use crate::reference as r;

/// A model constant stored as f32 (a batch norm's eps of 1e-3, a momentum of 0.1) as the decimal it was written
/// as: f32's shortest representation read as f64 (`1e-3_f32 as f64` is 1.00000005e-3), so the f64 pass computes
/// the model as specified, as PyTorch's float64 does.
fn decimal(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

/// A dropout or drop-path op applied to `v` (its input forward, its output's gradient backward: the same map).
/// Training: the GPU's mask of (seed, step, element or sample), kept values scaled by 1 / (1 - p); eval: the
/// identity.
fn dropped(graph: &Graph, op: &Op, v: &[f64], training: bool, step: u64) -> Vec<f64> {
    let (_, _, p, seed, per) = op.as_dropout(graph).expect("a dropout op");
    if !training {
        return v.to_vec();
    }
    let threshold = DropoutParams::new(v.len(), p, seed, step as u32, false)
        .expect("the graph builder checked the probability")
        .threshold;
    r::drop_path(v, per, seed, step as u32, threshold, 1.0 / (1.0 - p))
}

/// Run the forward pass. `values` holds every parameter and state tensor; `labels` one class per sample (softmax
/// cross-entropy) or one class bitmask per sample (binary cross-entropy, as the executor takes them); returns every
/// tensor computed (the loss node's `loss` holds the mean loss; a batch norm's `save_mean`/`save_var` the
/// statistics it normalized with). Training mode normalizes with batch statistics,
/// eval mode with the running ones; dropout and drop path are the identity in eval mode and in training mode drop
/// with the GPU's mask of training step `step` (the executor's 1-based step count).
pub fn forward(
    graph: &Graph,
    values: &HashMap<TensorId, Vec<f64>>,
    input: &[f64],
    labels: &[u32],
    training: bool,
    step: u64,
) -> HashMap<TensorId, Vec<f64>> {
    forward_observed(graph, values, input, labels, training, step, &mut |_, _| {})
}

/// What [`forward_observed`] calls after each node: the node, and every tensor computed so far.
pub type Observer<'a> = dyn FnMut(&Node, &mut HashMap<TensorId, Vec<f64>>) + 'a;

/// [`forward`], calling `after` with each node and the tensors so far once the node has run: it may read or
/// replace what the node wrote (rounding a node's outputs to a storage type, to see what that type costs).
pub fn forward_observed(
    graph: &Graph,
    values: &HashMap<TensorId, Vec<f64>>,
    input: &[f64],
    labels: &[u32],
    training: bool,
    step: u64,
    after: &mut Observer<'_>,
) -> HashMap<TensorId, Vec<f64>> {
    let mut t: HashMap<TensorId, Vec<f64>> = values.clone();
    for (i, info) in graph.tensors.iter().enumerate() {
        if info.kind == TensorKind::Input {
            t.insert(TensorId(i), input.to_vec());
        }
    }
    for node in &graph.nodes {
        let shape = |id: TensorId| graph.shape(id).to_vec();
        match &node.op {
            Op::Linear { x, w, b, y } => {
                let (n, o) = (shape(*y)[0], shape(*y)[1]);
                let k = shape(*x)[1];
                let s = r::MatmulShape { trans_b: true, ..r::MatmulShape::new(1, n, o, k) };
                let out = r::matmul(&s, &t[x], &t[w], b.map(|b| t[&b].clone()).as_deref(), None);
                t.insert(*y, out);
            }
            Op::Conv2d { x, w, b, y, shape } => {
                let out = r::conv2d_forward(shape, &t[x], &t[w], b.map(|b| t[&b].clone()).as_deref());
                t.insert(*y, out);
            }
            Op::BatchNorm { x, gamma, beta, running_mean, running_var, save_mean, save_var, y, cfg, residual } => {
                let s = shape(*x);
                let (n, c, hw) = (s[0], s[1], s[2..].iter().product::<usize>());
                let (mean, var) = if training {
                    r::batch_norm_statistics(&t[x], n, c, hw)
                } else {
                    (t[running_mean].clone(), t[running_var].clone())
                };
                let out = r::batch_norm_forward(&t[x], c, hw, (&mean, &var), &t[gamma], &t[beta], decimal(cfg.eps));
                // A fused residual adds to the normalized value, a fused activation takes the sum.
                let out = match residual {
                    Some(r) => out.iter().zip(&t[r]).map(|(v, r)| v + r).collect(),
                    None => out,
                };
                t.insert(*y, out.into_iter().map(|v| cfg.act.apply(v)).collect());
                // The statistics it normalized with, for the backward pass and the running update.
                t.insert(*save_mean, mean);
                t.insert(*save_var, var);
            }
            Op::Relu { x, y } => {
                let out = Elementwise::ReluForward.apply_reference(&t[x], None, 0.0);
                t.insert(*y, out);
            }
            Op::Relu6 { x, y } => {
                let out = Elementwise::Relu6Forward.apply_reference(&t[x], None, 0.0);
                t.insert(*y, out);
            }
            Op::LeakyRelu { x, y, slope } => {
                let out = Elementwise::LeakyReluForward.apply_reference(&t[x], None, decimal(*slope));
                t.insert(*y, out);
            }
            Op::Add { a, b, y } => {
                let out = Elementwise::Add.apply_reference(&t[a], Some(&t[b]), 0.0);
                t.insert(*y, out);
            }
            Op::MaxPool { x, y, shape, .. } => {
                let out = r::max_pool_forward(shape, &t[x]).0;
                t.insert(*y, out);
            }
            Op::AvgPool { x, y, shape } => {
                let out = r::avg_pool_forward(shape, &t[x]);
                t.insert(*y, out);
            }
            Op::GlobalAvgPool { x, y, .. } => {
                let s = shape(*x);
                let out = r::global_avg_pool_forward(&t[x], s[2] * s[3]);
                t.insert(*y, out);
            }
            Op::ConcatPool { x, y, .. } => {
                let s = shape(*x);
                let (n, c, hw) = (s[0], s[1], s[2] * s[3]);
                let (mx, _) = r::global_max_pool_forward(&t[x], hw);
                let avg = r::global_avg_pool_forward(&t[x], hw);
                let out = (0..n)
                    .flat_map(|b| {
                        mx[b * c..(b + 1) * c].iter().chain(&avg[b * c..(b + 1) * c]).copied().collect::<Vec<_>>()
                    })
                    .collect();
                t.insert(*y, out);
            }
            Op::Concat { xs, y } => {
                let n = shape(*y)[0];
                let mut out = Vec::new();
                for b in 0..n {
                    for x in xs {
                        let per = t[x].len() / n;
                        out.extend_from_slice(&t[x][b * per..(b + 1) * per]);
                    }
                }
                t.insert(*y, out);
            }
            Op::Flatten { x, y } => {
                let out = t[x].clone();
                t.insert(*y, out);
            }
            Op::Dropout { .. } | Op::DropPath { .. } => {
                let (x, y, ..) = node.op.as_dropout(graph).expect("a dropout op");
                let out = dropped(graph, &node.op, &t[&x], training, step);
                t.insert(y, out);
            }
            Op::Gelu { x, y, tanh } => {
                let kind = if *tanh { Elementwise::GeluTanhForward } else { Elementwise::GeluForward };
                let out = kind.apply_reference(&t[x], None, 0.0);
                t.insert(*y, out);
            }
            Op::LayerNorm { x, gamma, beta, mean, rstd, y, axis, eps } => {
                let (out, m, s) = r::layer_norm_forward(&t[x], axis.tuple(), &t[gamma], &t[beta], decimal(*eps));
                t.insert(*y, out);
                t.insert(*mean, m);
                t.insert(*rstd, s);
            }
            Op::LayerScale { x, gamma, y, axis } => {
                let out = r::layer_scale_forward(&t[x], axis.tuple(), &t[gamma]);
                t.insert(*y, out);
            }
            Op::View { x, y } => {
                let out = t[x].clone();
                t.insert(*y, out);
            }
            Op::Permute { x, y, perm } => {
                let out = r::permute(&t[x], &shape(*x), perm);
                t.insert(*y, out);
            }
            Op::MatMul { a, b, y, trans_b } => {
                let [batch, m, n] = shape(*y)[..] else { unreachable!("the builder made y (B, M, N)") };
                let k = shape(*a)[2];
                let s = r::MatmulShape { trans_b: *trans_b, ..r::MatmulShape::new(batch, m, n, k) };
                let out = r::matmul(&s, &t[a], &t[b], None, None);
                t.insert(*y, out);
            }
            Op::Softmax { x, y, scale } => {
                let len = *shape(*x).last().expect("the builder checked the shape");
                let out = r::softmax_rows(&t[x], len, *scale as f64);
                t.insert(*y, out);
            }
            Op::Slice { x, y, start } => {
                let (xs, len) = (shape(*x), shape(*y)[1]);
                let out = r::slice(&t[x], (xs[0], xs[1], xs[2..].iter().product()), *start, len);
                t.insert(*y, out);
            }
            Op::Expand { x, y } => {
                let out = r::expand(&t[x], shape(*y)[0]);
                t.insert(*y, out);
            }
            Op::SoftmaxCrossEntropy { logits, loss, correct, smoothing, .. } => {
                let classes = shape(*logits)[1];
                let l = r::softmax_cross_entropy_forward(&t[logits], labels, classes, decimal(*smoothing));
                let c = r::correct_count(&t[logits], labels, classes);
                t.insert(*loss, vec![l]);
                t.insert(*correct, vec![c as f64]);
            }
            Op::SigmoidBinaryCrossEntropy { logits, loss, correct, threshold, .. } => {
                let classes = shape(*logits)[1];
                let rows = Targets { classes, multi_label: true }.encode(labels, None).expect("no partners");
                let target = r::dense_targets(&rows, classes, true);
                let c = r::multi_label_correct(&t[logits], &target, *threshold as f64);
                t.insert(*loss, vec![r::bce_with_logits_forward(&t[logits], &target)]);
                t.insert(*correct, vec![c as f64]);
            }
        }
        after(node, &mut t);
    }
    t
}

/// The gradient of the loss (the loss node's mean) with respect to every tensor of the graph, by the chain rule
/// through [`crate::reference`]'s backward functions, in f64: the oracle for whole-model gradients where finite
/// differences would take too long (EfficientNet's 3.4 million parameters in the PyTorch step check). `forward`
/// is what [`forward`] returned for the same `labels`, `training` and `step`. A tensor read by several ops gets
/// the sum of their gradients.
pub fn backward(
    graph: &Graph,
    forward: &HashMap<TensorId, Vec<f64>>,
    labels: &[u32],
    training: bool,
    step: u64,
) -> HashMap<TensorId, Vec<f64>> {
    let t = forward;
    let mut grads: HashMap<TensorId, Vec<f64>> = HashMap::new();
    let add = |grads: &mut HashMap<TensorId, Vec<f64>>, id: TensorId, g: Vec<f64>| match grads.get_mut(&id) {
        Some(sum) => sum.iter_mut().zip(&g).for_each(|(s, v)| *s += v),
        None => {
            grads.insert(id, g);
        }
    };
    for node in graph.nodes.iter().rev() {
        let shape = |id: TensorId| graph.shape(id).to_vec();
        if let Some((logits, _, _, _, _)) = node.op.as_loss() {
            let classes = shape(logits)[1];
            let g = match &node.op {
                Op::SoftmaxCrossEntropy { smoothing, .. } => {
                    r::softmax_cross_entropy_backward(&t[&logits], labels, classes, decimal(*smoothing), 1.0)
                }
                _ => {
                    let rows = Targets { classes, multi_label: true }.encode(labels, None).expect("no partners");
                    r::bce_with_logits_backward(&t[&logits], &r::dense_targets(&rows, classes, true), 1.0)
                }
            };
            add(&mut grads, logits, g);
            continue;
        }
        // The op's output gradient; an output nothing downstream reads gets none, and neither do its inputs.
        let y = node.op.outputs()[0];
        let Some(dy) = grads.get(&y).cloned() else { continue };
        match &node.op {
            Op::Linear { x, w, b, .. } => {
                let (n, o, k) = (shape(y)[0], shape(y)[1], shape(*x)[1]);
                add(&mut grads, *x, r::matmul(&r::MatmulShape::new(1, n, k, o), &dy, &t[w], None, None));
                let dw = r::MatmulShape { trans_a: true, ..r::MatmulShape::new(1, o, k, n) };
                add(&mut grads, *w, r::matmul(&dw, &dy, &t[x], None, None));
                if let Some(b) = b {
                    add(&mut grads, *b, r::sum_reduce(&dy, n, o, 1));
                }
            }
            Op::Conv2d { x, w, b, shape: s, .. } => {
                add(&mut grads, *x, r::conv2d_backward_data(s, &dy, &t[w]));
                add(&mut grads, *w, r::conv2d_backward_weight(s, &dy, &t[x]));
                if let Some(b) = b {
                    add(&mut grads, *b, r::sum_reduce(&dy, s.batch, s.out_c, s.out_h * s.out_w));
                }
            }
            Op::BatchNorm { x, gamma, beta, save_mean, save_var, cfg, y, residual, .. } => {
                let s = shape(*x);
                let dims = (s[0], s[1], s[2..].iter().product::<usize>());
                let stats = (t[save_mean].as_slice(), t[save_var].as_slice());
                let eps = decimal(cfg.eps);
                // A fused activation: dy is its output's gradient, which passes where the output is strictly
                // inside the activation's linear range. A fused residual's gradient is what passes.
                let dy: Vec<f64> = if cfg.act == NormAct::None {
                    dy
                } else {
                    dy.iter().zip(&t[y]).map(|(&g, &v)| if cfg.act.passes(v) { g } else { 0.0 }).collect()
                };
                if let Some(r) = residual {
                    add(&mut grads, *r, dy.clone());
                }
                let (dx, dgamma, dbeta) = r::batch_norm_backward(&dy, &t[x], dims, &t[gamma], stats, eps, !training);
                add(&mut grads, *x, dx);
                add(&mut grads, *gamma, dgamma);
                add(&mut grads, *beta, dbeta);
            }
            Op::Relu { x, .. } => add(&mut grads, *x, Elementwise::ReluBackward.apply_reference(&t[x], Some(&dy), 0.0)),
            Op::Relu6 { x, .. } => {
                add(&mut grads, *x, Elementwise::Relu6Backward.apply_reference(&t[x], Some(&dy), 0.0))
            }
            Op::LeakyRelu { x, slope, .. } => {
                let g = Elementwise::LeakyReluBackward.apply_reference(&t[x], Some(&dy), decimal(*slope));
                add(&mut grads, *x, g)
            }
            Op::Gelu { x, tanh, .. } => {
                let kind = if *tanh { Elementwise::GeluTanhBackward } else { Elementwise::GeluBackward };
                add(&mut grads, *x, kind.apply_reference(&t[x], Some(&dy), 0.0))
            }
            Op::Add { a, b, .. } => {
                add(&mut grads, *a, dy.clone());
                add(&mut grads, *b, dy);
            }
            Op::MaxPool { x, shape: s, .. } => {
                let (_, indices) = r::max_pool_forward(s, &t[x]);
                add(&mut grads, *x, r::max_pool_backward(s, &dy, &indices));
            }
            Op::AvgPool { x, shape: s, .. } => add(&mut grads, *x, r::avg_pool_backward(s, &dy)),
            Op::GlobalAvgPool { x, .. } => {
                let s = shape(*x);
                let hw = s[2] * s[3];
                add(&mut grads, *x, dy.iter().flat_map(|&g| std::iter::repeat_n(g / hw as f64, hw)).collect());
            }
            Op::ConcatPool { x, .. } => {
                // y (N, 2C) = [max over each plane, mean over each plane].
                let s = shape(*x);
                let (c, hw) = (s[1], s[2] * s[3]);
                let (_, first_max) = r::global_max_pool_forward(&t[x], hw);
                let mut dx = vec![0.0; t[x].len()];
                for (plane, &at) in first_max.iter().enumerate() {
                    let (b, ch) = (plane / c, plane % c);
                    let (d_max, d_mean) = (dy[b * 2 * c + ch], dy[b * 2 * c + c + ch]);
                    dx[plane * hw..(plane + 1) * hw].iter_mut().for_each(|v| *v = d_mean / hw as f64);
                    dx[plane * hw + at as usize] += d_max;
                }
                add(&mut grads, *x, dx);
            }
            Op::Concat { xs, .. } => {
                let n = shape(y)[0];
                let per_y = dy.len() / n;
                let mut offset = 0;
                for x in xs {
                    let per = t[x].len() / n;
                    let dx = (0..n).flat_map(|b| dy[b * per_y + offset..b * per_y + offset + per].to_vec()).collect();
                    add(&mut grads, *x, dx);
                    offset += per;
                }
            }
            Op::Flatten { x, .. } | Op::View { x, .. } => add(&mut grads, *x, dy),
            Op::Dropout { .. } | Op::DropPath { .. } => {
                let (x, ..) = node.op.as_dropout(graph).expect("a dropout op");
                add(&mut grads, x, dropped(graph, &node.op, &dy, training, step));
            }
            Op::LayerNorm { x, gamma, beta, axis, eps, .. } => {
                let (dx, dgamma, dbeta) = r::layer_norm_backward(&dy, &t[x], axis.tuple(), &t[gamma], decimal(*eps));
                add(&mut grads, *x, dx);
                add(&mut grads, *gamma, dgamma);
                add(&mut grads, *beta, dbeta);
            }
            Op::LayerScale { x, gamma, axis, .. } => {
                let (dx, dgamma) = r::layer_scale_backward(&dy, &t[x], axis.tuple(), &t[gamma]);
                add(&mut grads, *x, dx);
                add(&mut grads, *gamma, dgamma);
            }
            Op::Permute { x, perm, .. } => {
                let x = *x;
                let mut inverse = vec![0; perm.len()];
                perm.iter().enumerate().for_each(|(d, &p)| inverse[p] = d);
                add(&mut grads, x, r::permute(&dy, &shape(y), &inverse));
            }
            Op::MatMul { a, b, trans_b, .. } => {
                // y = a · op(b): da = dy · op(b)ᵀ; db = aᵀ · dy, or dyᵀ · a when b is stored transposed.
                let [batch, m, n] = shape(y)[..] else { unreachable!("the builder made y (B, M, N)") };
                let k = shape(*a)[2];
                let da = r::MatmulShape { trans_b: !trans_b, ..r::MatmulShape::new(batch, m, k, n) };
                add(&mut grads, *a, r::matmul(&da, &dy, &t[b], None, None));
                let db = if *trans_b {
                    r::matmul(
                        &r::MatmulShape { trans_a: true, ..r::MatmulShape::new(batch, n, k, m) },
                        &dy,
                        &t[a],
                        None,
                        None,
                    )
                } else {
                    r::matmul(
                        &r::MatmulShape { trans_a: true, ..r::MatmulShape::new(batch, k, n, m) },
                        &t[a],
                        &dy,
                        None,
                        None,
                    )
                };
                add(&mut grads, *b, db);
            }
            Op::Softmax { x, scale, .. } => {
                let len = *shape(*x).last().expect("the builder checked the shape");
                add(&mut grads, *x, r::softmax_rows_backward(&t[&y], &dy, len, *scale as f64));
            }
            Op::Slice { x, start, .. } => {
                let xs = shape(*x);
                add(&mut grads, *x, r::slice_backward(&dy, (xs[0], xs[1], xs[2..].iter().product()), *start));
            }
            Op::Expand { x, .. } => {
                let per = t[x].len();
                let dx = (0..per).map(|i| dy.iter().skip(i).step_by(per).sum()).collect();
                add(&mut grads, *x, dx);
            }
            Op::SoftmaxCrossEntropy { .. } | Op::SigmoidBinaryCrossEntropy { .. } => unreachable!("handled above"),
        }
    }
    grads
}

/// Every running statistic after `forward`'s training-mode pass: (1 - momentum) * running + momentum * the
/// batch's statistic, the variance unbiased (as PyTorch and the GPU kernel update them).
pub fn running_statistics(graph: &Graph, forward: &HashMap<TensorId, Vec<f64>>) -> HashMap<TensorId, Vec<f64>> {
    let mut out = HashMap::new();
    for node in &graph.nodes {
        if let Op::BatchNorm { x, running_mean, running_var, save_mean, save_var, cfg, .. } = &node.op {
            let s = graph.shape(*x);
            let (mean, var) = (&forward[save_mean], &forward[save_var]);
            let m = (s[0] * s[2..].iter().product::<usize>()) as f64;
            let unbiased = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
            let momentum = decimal(cfg.momentum);
            let update = |old: &[f64], new: &[f64], factor: f64| -> Vec<f64> {
                old.iter().zip(new).map(|(o, v)| (1.0 - momentum) * o + momentum * v * factor).collect()
            };
            out.insert(*running_mean, update(&forward[running_mean], mean, 1.0));
            out.insert(*running_var, update(&forward[running_var], var, unbiased));
        }
    }
    out
}
