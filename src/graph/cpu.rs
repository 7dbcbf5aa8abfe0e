//! A graph's forward pass on the CPU in f64, op by op through [`crate::reference`]: the oracle for whole-model
//! tests (gradient checks by finite differences, GPU logits against the reference).

use std::collections::HashMap;

use crate::graph::{Graph, Op, TensorId, TensorKind};
use crate::ops::dropout::DropoutParams;
use crate::ops::elementwise::Elementwise;
use crate::ops::loss::Targets;
use crate::reference as r;

/// Run the forward pass. `values` holds every parameter and state tensor; `labels` one class per sample (softmax
/// cross-entropy) or one class bitmask per sample (binary cross-entropy, as the executor takes them); returns every
/// tensor computed (the loss node's `loss` holds the mean loss). Training mode normalizes with batch statistics,
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
            Op::BatchNorm { x, gamma, beta, running_mean, running_var, y, cfg, .. } => {
                let s = shape(*x);
                let (n, c, hw) = (s[0], s[1], s[2..].iter().product::<usize>());
                let (mean, var) = if training {
                    r::batch_norm_statistics(&t[x], n, c, hw)
                } else {
                    (t[running_mean].clone(), t[running_var].clone())
                };
                let out = r::batch_norm_forward(&t[x], c, hw, (&mean, &var), &t[gamma], &t[beta], cfg.eps as f64);
                t.insert(*y, out);
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
                let out = Elementwise::LeakyReluForward.apply_reference(&t[x], None, *slope as f64);
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
                // Training: the GPU's mask of (seed, step, element or sample), kept values scaled by 1 / (1 - p).
                let (x, y, p, seed, per) = node.op.as_dropout(graph).expect("a dropout op");
                let out = if training {
                    let threshold = DropoutParams::new(t[&x].len(), p, seed, step as u32, false)
                        .expect("the graph builder checked the probability")
                        .threshold;
                    r::drop_path(&t[&x], per, seed, step as u32, threshold, 1.0 / (1.0 - p))
                } else {
                    t[&x].clone()
                };
                t.insert(y, out);
            }
            Op::Gelu { x, y, tanh } => {
                let kind = if *tanh { Elementwise::GeluTanhForward } else { Elementwise::GeluForward };
                let out = kind.apply_reference(&t[x], None, 0.0);
                t.insert(*y, out);
            }
            Op::LayerNorm { x, gamma, beta, mean, rstd, y, axis, eps } => {
                let (out, m, s) = r::layer_norm_forward(&t[x], axis.tuple(), &t[gamma], &t[beta], *eps as f64);
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
                let l = r::softmax_cross_entropy_forward(&t[logits], labels, classes, *smoothing as f64);
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
    }
    t
}
