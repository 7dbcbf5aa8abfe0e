//! The graph executor end to end on the GPU: whole-model gradients against finite differences of the CPU
//! reference, freezing, learning a synthetic task, one submit and 8 bytes back per step, the memory plan.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use wgtune::gpu::{AdapterRequest, Gpu, Precision};
use wgtune::graph::executor::{Executor, ExecutorConfig, PixelInput};
use wgtune::graph::{cpu, Graph, OpKind, TensorId, TensorKind};
use wgtune::nn::Arch;
use wgtune::ops::conv::{Conv2dConfig, Padding};
use wgtune::ops::loss::Targets;
use wgtune::ops::norm::BatchNormConfig;
use wgtune::ops::optim::{Hyper, Optimizer};
use wgtune::ops::pool::PoolConfig;
use wgtune::reference::{widen, SplitMix};

fn gpu() -> Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new(&AdapterRequest::from_env()) {
        Ok(g) => Arc::new(g),
        Err(e) => panic!("executor tests need an adapter and found none: {e}"),
    })
    .clone()
}

fn conv(stride: usize, pad: usize) -> Conv2dConfig {
    Conv2dConfig { stride: (stride, stride), padding: Padding::symmetric(pad), ..Default::default() }
}

/// conv-BN-relu, conv-BN, residual add, relu, max pool, global average pool, linear head (group 1).
fn residual_cnn(batch: usize, size: usize, classes: usize) -> Graph {
    let mut g = Graph::new();
    let x = g.input("image", &[batch, 3, size, size]);
    let labels = g.labels("label", batch);
    let h = g.conv2d("conv1", x, 4, (3, 3), conv(1, 1), false).unwrap();
    let h = g.batch_norm("bn1", h, BatchNormConfig::default()).unwrap();
    let skip = g.relu("relu1", h).unwrap();
    let h = g.conv2d("conv2", skip, 4, (3, 3), conv(1, 1), true).unwrap();
    let h = g.batch_norm("bn2", h, BatchNormConfig { eps: 1e-3, momentum: 0.01, ..Default::default() }).unwrap();
    let h = g.add("residual", h, skip).unwrap();
    let h = g.relu("relu2", h).unwrap();
    let h = g.max_pool("pool1", h, PoolConfig::square(2, 2, 0)).unwrap();
    let h = g.global_avg_pool("pool2", h).unwrap();
    g.set_group(1);
    let logits = g.linear("fc", h, classes, true).unwrap();
    g.cross_entropy("loss", logits, labels, 0.0).unwrap();
    g
}

/// Strided conv, batch norm + relu6 (fused by the executor), relu6 after a conv, avg pool, fastai's concat pool +
/// flatten + BatchNorm1d + linear head.
fn fastai_head_cnn(batch: usize, size: usize, classes: usize) -> Graph {
    let mut g = Graph::new();
    let x = g.input("image", &[batch, 2, size, size]);
    let labels = g.labels("label", batch);
    let h = g.conv2d("stem", x, 3, (3, 3), conv(2, 1), false).unwrap();
    let h = g.batch_norm("stem_bn", h, BatchNormConfig::default()).unwrap();
    let h = g.relu6("stem_act", h).unwrap();
    // 3x3, not 1x1: a 1x1 conv's output is exactly its bias (0) where ReLU6 zeroed all three inputs, which would
    // put the next ReLU6 on its kink, where finite differences see half a derivative.
    let h = g.conv2d("conv", h, 3, (3, 3), conv(1, 1), true).unwrap();
    let h = g.relu6("act", h).unwrap();
    let h = g.avg_pool("avg", h, PoolConfig::square(2, 1, 0)).unwrap();
    g.set_group(1);
    let h = g.concat_pool("concat_pool", h).unwrap();
    let h = g.flatten("flatten", h).unwrap();
    let h = g.batch_norm("head_bn", h, BatchNormConfig::default()).unwrap();
    let logits = g.linear("head_fc", h, classes, false).unwrap();
    g.cross_entropy("loss", logits, labels, 0.1).unwrap();
    g
}

/// Branches joined by a channel concat, leaky relu, dropout on a feature map, global average pool, linear head.
fn branchy_cnn(batch: usize, size: usize, classes: usize) -> Graph {
    let mut g = Graph::new();
    let x = g.input("image", &[batch, 2, size, size]);
    let labels = g.labels("label", batch);
    let stem = g.conv2d("stem", x, 3, (3, 3), conv(1, 1), true).unwrap();
    let stem = g.leaky_relu("leaky", stem, 0.1).unwrap();
    let a = g.conv2d("branch_a", stem, 2, (1, 1), conv(1, 0), false).unwrap();
    let b = g.conv2d("branch_b", stem, 3, (3, 3), conv(1, 1), false).unwrap();
    let h = g.concat("concat", &[a, stem, b]).unwrap();
    let h = g.dropout("drop", h, 0.3).unwrap();
    let h = g.global_avg_pool("pool", h).unwrap();
    g.set_group(1);
    let logits = g.linear("fc", h, classes, true).unwrap();
    g.cross_entropy("loss", logits, labels, 0.0).unwrap();
    g
}

/// Conv, relu, global average pool, linear, sigmoid binary cross-entropy: a multi-label model (`classes` past
/// one 32-bit word of label bits when over 32).
fn multi_label_cnn(batch: usize, size: usize, classes: usize) -> Graph {
    let mut g = Graph::new();
    let x = g.input("image", &[batch, 3, size, size]);
    let labels = g.multi_labels("label", batch, classes);
    let h = g.conv2d("conv", x, 4, (3, 3), conv(1, 1), true).unwrap();
    let h = g.relu("relu", h).unwrap();
    let h = g.global_avg_pool("pool", h).unwrap();
    g.set_group(1);
    let logits = g.linear("fc", h, classes, true).unwrap();
    g.binary_cross_entropy("loss", logits, labels, 0.5).unwrap();
    g
}

/// A ConvNeXt block and head in miniature: patchify stem conv + LayerNorm2d, depthwise 7x7, LayerNorm2d, 1x1 up,
/// exact GELU, 1x1 down, layer scale, drop path, residual add; global pool, LayerNorm over the last dimension,
/// linear, tanh GELU, linear.
fn convnext_like(batch: usize, size: usize, classes: usize) -> Graph {
    let mut g = Graph::new();
    let x = g.input("image", &[batch, 3, size, size]);
    let labels = g.labels("label", batch);
    let h = g.conv2d("stem.0", x, 4, (2, 2), conv(2, 0), true).unwrap();
    let skip = g.layer_norm("stem.1", h, false, 1e-6).unwrap();
    let dw = Conv2dConfig { groups: 4, ..conv(1, 3) };
    let h = g.conv2d("conv_dw", skip, 4, (7, 7), dw, true).unwrap();
    let h = g.layer_norm("norm", h, false, 1e-6).unwrap();
    let h = g.conv2d("fc1", h, 16, (1, 1), conv(1, 0), true).unwrap();
    let h = g.gelu("act", h, false).unwrap();
    let h = g.conv2d("fc2", h, 4, (1, 1), conv(1, 0), true).unwrap();
    let h = g.layer_scale("gamma", h, 0.5).unwrap();
    let h = g.drop_path("drop_path", h, 0.4).unwrap();
    let h = g.add("residual", h, skip).unwrap();
    let h = g.global_avg_pool("pool", h).unwrap();
    g.set_group(1);
    let h = g.layer_norm("head.norm", h, true, 1e-6).unwrap();
    let h = g.linear("head.fc1", h, 6, true).unwrap();
    let h = g.gelu("head.act", h, true).unwrap();
    let logits = g.linear("head.fc2", h, classes, true).unwrap();
    g.cross_entropy("loss", logits, labels, 0.0).unwrap();
    g
}

/// A whole ConvNeXt in miniature (timm's structure: stem, four stages with downsampling, one block each, drop path
/// rising to 0.3) with fastai's head, at 32 px (a 1x1 final map).
fn mini_convnext(batch: usize, classes: usize) -> Graph {
    use wgtune::nn::{convnext_body, fastai_head, ConvNextConfig};
    let mut g = Graph::new();
    let x = g.input("image", &[batch, 3, 32, 32]);
    let labels = g.labels("label", batch);
    let cfg = ConvNextConfig { depths: [1, 1, 1, 1], dims: [4, 6, 6, 8] };
    let features = convnext_body(&mut g, x, cfg, 0.3).unwrap();
    // Layer scale at 0.5 instead of timm's 1e-6, or every gradient inside a block would be ~1e-6 of its size and
    // pass the check by being small.
    for t in g.tensors.iter_mut().filter(|t| t.name.ends_with(".gamma")) {
        t.init = Some(vec![0.5; t.numel()]);
    }
    g.set_group(1);
    let logits = fastai_head(&mut g, features, classes, 0.1, 0.0).unwrap();
    g.cross_entropy("loss", logits, labels, 0.0).unwrap();
    g
}

/// Multi-head self-attention as a ViT block builds it, on token rows (N, T, D) = (2, 5, 8) with 2 heads: LayerNorm
/// over the last dimension, q/k/v linears, split into heads by view + permute, scores q·kᵀ (batched matmul), softmax
/// scaled by 1/sqrt(4), weighted values, heads merged back, output projection, residual; then a linear classifier
/// on the flattened tokens.
fn attention_block(classes: usize) -> Graph {
    let (n, t, d, heads) = (2, 5, 8, 2);
    let hd = d / heads;
    let mut g = Graph::new();
    let x = g.input("image", &[n, t, d]);
    let labels = g.labels("label", n);
    let h = g.layer_norm("norm1", x, true, 1e-6).unwrap();
    let rows = g.view("rows", h, &[n * t, d]).unwrap();
    let mut qkv = vec![];
    for name in ["q", "k", "v"] {
        let p = g.linear(name, rows, d, true).unwrap();
        let p = g.view(&format!("{name}.split"), p, &[n, t, heads, hd]).unwrap();
        let p = g.permute(&format!("{name}.heads"), p, &[0, 2, 1, 3]).unwrap();
        qkv.push(g.view(&format!("{name}.batched"), p, &[n * heads, t, hd]).unwrap());
    }
    let scores = g.matmul("scores", qkv[0], qkv[1], true).unwrap();
    let attn = g.softmax("attn", scores, 1.0 / (hd as f32).sqrt()).unwrap();
    let o = g.matmul("weighted", attn, qkv[2], false).unwrap();
    let o = g.view("o.split", o, &[n, heads, t, hd]).unwrap();
    let o = g.permute("o.merge", o, &[0, 2, 1, 3]).unwrap();
    let o = g.view("o.rows", o, &[n * t, d]).unwrap();
    let o = g.linear("proj", o, d, true).unwrap();
    let o = g.view("o.tokens", o, &[n, t, d]).unwrap();
    let h = g.add("residual", o, x).unwrap();
    let h = g.view("flat", h, &[n, t * d]).unwrap();
    g.set_group(1);
    let logits = g.linear("head", h, classes, true).unwrap();
    g.cross_entropy("loss", logits, labels, 0.0).unwrap();
    g
}

/// A whole ViT in miniature (timm's structure: 4x4 patches of an 8 px image, class token, position embedding, two
/// pre-norm blocks of 2-head attention and MLP with drop path, final LayerNorm, the class token) with fastai's
/// unpooled head.
fn mini_vit(batch: usize, classes: usize) -> Graph {
    use wgtune::nn::vit::{vit_body, VitConfig};
    let mut g = Graph::new();
    let x = g.input("image", &[batch, 3, 8, 8]);
    let labels = g.labels("label", batch);
    let features = vit_body(&mut g, x, VitConfig { dim: 8, depth: 2, heads: 2, patch: 4 }, 0.3).unwrap();
    // A class token of 1e-6 would leave its gradient unchecked in effect; start it (and the position embedding) at
    // the scale of the patch tokens.
    for t in g.tensors.iter_mut().filter(|t| t.name == "cls_token" || t.name == "pos_embed") {
        t.init = Some(SplitMix(31).vec_f32(t.numel(), -0.5, 0.5));
    }
    g.set_group(1);
    let logits = wgtune::nn::fastai_head(&mut g, features, classes, 0.1, 0.0).unwrap();
    g.cross_entropy("loss", logits, labels, 0.0).unwrap();
    g
}

/// The graphs whose gradients are checked against finite differences, with their class counts.
fn gradient_checked() -> Vec<(Graph, u32)> {
    vec![
        (residual_cnn(2, 6, 3), 3),
        (fastai_head_cnn(3, 7, 4), 4),
        (branchy_cnn(2, 5, 3), 3),
        (multi_label_cnn(3, 5, 35), 35),
        (convnext_like(5, 8, 3), 3),
        (mini_convnext(3, 3), 3),
        (attention_block(3), 3),
        (mini_vit(3, 3), 3),
    ]
}

/// How the graph's loss takes labels.
fn targets_of(g: &Graph) -> Targets {
    let node = g.nodes.last().expect("a loss node");
    let (logits, _, _, _, loss) = node.op.as_loss().expect("the last node is the loss");
    loss.targets(g.shape(logits)[1])
}

/// Seeded images in [-1, 1) and labels: one class per image, or for a multi-label graph each class with
/// probability 0.4 (as class bitmasks).
fn batch(g: &Graph, seed: u64, classes: u32) -> (Vec<f32>, Vec<u32>) {
    let mut rng = SplitMix(seed);
    let input = g.tensors.iter().find(|t| t.kind == TensorKind::Input).unwrap();
    let n = input.shape[0];
    let images = rng.vec_f32(input.numel(), -1.0, 1.0);
    let targets = targets_of(g);
    let labels = (0..n)
        .flat_map(|_| {
            let tags: Vec<u32> = if targets.multi_label {
                (0..classes).filter(|_| rng.uniform(0.0, 1.0) < 0.4).collect()
            } else {
                vec![rng.below(classes)]
            };
            targets.label_set(&tags)
        })
        .collect();
    (images, labels)
}

/// Every parameter's GPU gradient against central finite differences of the f64 CPU forward pass.
fn gradient_check(g: Graph, classes: u32) {
    let gpu = gpu();
    let (images, labels) = batch(&g, 11, classes);
    let mut ex = Executor::new(gpu, g.clone(), ExecutorConfig::default()).unwrap();
    ex.compute_gradients(&images, &labels).unwrap();
    let mut values: HashMap<TensorId, Vec<f64>> = HashMap::new();
    for (i, t) in g.tensors.iter().enumerate() {
        if matches!(t.kind, TensorKind::Param { .. } | TensorKind::State) {
            values.insert(TensorId(i), widen(&ex.read_value(&t.name).unwrap()));
        }
    }
    let x = widen(&images);
    let loss_id = g.find("loss.loss").unwrap();
    // The executor's first step is step 1: dropout masks are drawn for it.
    let loss = |values: &HashMap<TensorId, Vec<f64>>| cpu::forward(&g, values, &x, &labels, true, 1)[&loss_id][0];
    // The CPU's chain rule in f64 (the oracle of the PyTorch step check) on the same values.
    let analytic = cpu::backward(&g, &cpu::forward(&g, &values, &x, &labels, true, 1), &labels, true, 1);
    let largest_of = |v: &[f64]| v.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let model_largest = g.params().iter().map(|p| largest_of(&analytic[p])).fold(0.0, f64::max);
    let h = 1e-5;
    for p in g.params() {
        let name = &g.tensors[p.0].name;
        let got = ex.read_grad(name).unwrap();
        let exact = &analytic[&p];
        // A gradient that is zero in exact arithmetic (a bias before a batch norm, a key bias before softmax) is
        // measured against a hundredth of the model's largest gradient instead of its own rounding noise (f32's
        // error there is a cancellation of terms of the size of the other gradients).
        let largest = largest_of(exact).max(1e-2 * model_largest);
        let (mut worst, mut worst_cpu, mut worst_exact) = (0.0f64, 0.0f64, 0.0f64);
        for (i, &g_i) in got.iter().enumerate() {
            let mut plus = values.clone();
            plus.get_mut(&p).unwrap()[i] += h;
            let mut minus = values.clone();
            minus.get_mut(&p).unwrap()[i] -= h;
            let fd = (loss(&plus) - loss(&minus)) / (2.0 * h);
            let diff = (g_i as f64 - fd).abs();
            worst = worst.max(diff);
            // f32 forward and backward on the GPU against f64 differences: 2e-4 absolute plus 1% relative.
            assert!(diff <= 2e-4 + 1e-2 * fd.abs(), "{name}[{i}]: GPU {g_i} vs finite difference {fd}");
            // The f64 chain rule against f64 differences: central differences with h = 1e-5 are good to about
            // h^2 times the third derivative plus 1e-16 / h of rounding; 1e-7 absolute plus 1e-6 relative.
            let cpu_diff = (exact[i] - fd).abs();
            worst_cpu = worst_cpu.max(cpu_diff);
            assert!(
                cpu_diff <= 1e-7 + 1e-6 * fd.abs(),
                "{name}[{i}]: CPU chain rule {} vs finite difference {fd}",
                exact[i]
            );
            // The GPU's f32 gradient against the exact one, relative to the tensor's largest gradient.
            worst_exact = worst_exact.max((g_i as f64 - exact[i]).abs() / largest);
        }
        assert!(worst_exact <= 1e-4, "{name}: GPU gradient {worst_exact:.2e} (of the largest) from the f64 chain rule");
        eprintln!(
            "{name}: {} gradients, worst |GPU - fd| {worst:.2e}, |CPU - fd| {worst_cpu:.2e}, |GPU - CPU| / max \
             {worst_exact:.2e}",
            got.len()
        );
    }
}

/// The chunked batch-norm schedule (a big GPU's default for long channels; this software adapter runs the single
/// one) inside whole graphs: every batch norm chunked (chunks of 5 values, so channels of 4-D maps span many chunks
/// and the head's (N, C) features one), its scratch planned by the executor, gives the default schedule's loss,
/// gradients and running statistics to f32 rounding.
#[test]
fn chunked_batch_norm_in_a_whole_graph_matches_the_default_schedule() {
    use wgtune::graph::Op;
    use wgtune::ops::norm::NormSchedule;
    let gpu = gpu();
    for (g, classes) in [(residual_cnn(2, 6, 3), 3), (fastai_head_cnn(3, 7, 4), 4)] {
        let mut chunked = g.clone();
        let mut layers = 0;
        for node in &mut chunked.nodes {
            if let Op::BatchNorm { cfg, .. } = &mut node.op {
                cfg.schedule = NormSchedule::Chunked { len: 5 };
                layers += 1;
            }
        }
        assert!(layers >= 2, "the graph has batch norms");
        let (images, labels) = batch(&g, 13, classes);
        let run = |g: Graph| {
            let mut ex = Executor::new(gpu.clone(), g.clone(), ExecutorConfig::default()).unwrap();
            let m = ex.compute_gradients(&images, &labels).unwrap();
            let mut out = vec![("loss".to_string(), vec![m.loss])];
            for t in g.tensors.iter().filter(|t| matches!(t.kind, TensorKind::Param { .. })) {
                out.push((format!("{}.grad", t.name), ex.read_grad(&t.name).unwrap()));
            }
            for t in g.tensors.iter().filter(|t| t.kind == TensorKind::State) {
                out.push((t.name.clone(), ex.read_value(&t.name).unwrap()));
            }
            out
        };
        let (want_all, got_all) = (run(g), run(chunked));
        let largest_of = |v: &[f32]| v.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let model_largest = want_all.iter().map(|(_, v)| largest_of(v)).fold(0.0, f32::max);
        for ((name, want), (_, got)) in want_all.into_iter().zip(got_all) {
            // As in the gradient checks, a gradient that is zero in exact arithmetic (a bias before a batch norm)
            // is held to a hundredth of the model's largest value instead of its own rounding noise.
            let largest = largest_of(&want).max(1e-2 * model_largest);
            for (i, (w, c)) in want.iter().zip(&got).enumerate() {
                assert!((w - c).abs() <= 1e-4 * largest, "{name}[{i}]: default schedule {w}, chunked {c}");
            }
        }
    }
}

/// Linear layers over a batch of 512 rows: on a GPU adapter their weight gradients take the split-K product (8
/// parts; see `ops::matmul::split_k`, planned scratch included), here the plain one; either way every gradient
/// matches the f64 chain rule to f32 rounding (sums of 512 terms: 1e-5 of the largest gradient).
#[test]
fn long_linear_weight_gradients_match_the_chain_rule() {
    let gpu = gpu();
    let mut g = Graph::new();
    let x = g.input("image", &[512, 4, 2, 2]);
    let labels = g.labels("label", 512);
    let h = g.global_avg_pool("pool", x).unwrap();
    let h = g.linear("fc1", h, 16, true).unwrap();
    let h = g.relu("relu", h).unwrap();
    let logits = g.linear("fc2", h, 3, true).unwrap();
    g.cross_entropy("loss", logits, labels, 0.0).unwrap();
    let (images, labels) = batch(&g, 17, 3);
    let mut ex = Executor::new(gpu, g.clone(), ExecutorConfig::default()).unwrap();
    ex.compute_gradients(&images, &labels).unwrap();
    let values: HashMap<TensorId, Vec<f64>> =
        g.params().into_iter().map(|p| (p, widen(&ex.read_value(&g.tensors[p.0].name).unwrap()))).collect();
    let forward = cpu::forward(&g, &values, &widen(&images), &labels, true, 1);
    let exact = cpu::backward(&g, &forward, &labels, true, 1);
    let largest = g.params().iter().flat_map(|p| exact[p].iter()).fold(0.0f64, |m, v| m.max(v.abs()));
    for p in g.params() {
        let name = &g.tensors[p.0].name;
        let got = ex.read_grad(name).unwrap();
        for (i, (g_i, e)) in got.iter().zip(&exact[&p]).enumerate() {
            assert!((*g_i as f64 - e).abs() <= 1e-5 * largest, "{name}[{i}]: GPU {g_i}, f64 chain rule {e}");
        }
    }
}

#[test]
fn residual_cnn_gradients_match_finite_differences() {
    let (g, classes) = gradient_checked().swap_remove(0);
    gradient_check(g, classes);
}

#[test]
fn fastai_head_gradients_match_finite_differences() {
    let (g, classes) = gradient_checked().swap_remove(1);
    gradient_check(g, classes);
}

#[test]
fn concat_dropout_leaky_relu_gradients_match_finite_differences() {
    let (g, classes) = gradient_checked().swap_remove(2);
    gradient_check(g, classes);
}

#[test]
fn multi_label_gradients_match_finite_differences() {
    let (g, classes) = gradient_checked().swap_remove(3);
    gradient_check(g, classes);
}

#[test]
fn whole_vit_with_fastai_head_gradients_match_finite_differences() {
    let (g, classes) = gradient_checked().swap_remove(7);
    gradient_check(g, classes);
}

#[test]
fn attention_gradients_match_finite_differences() {
    let (g, classes) = gradient_checked().swap_remove(6);
    gradient_check(g, classes);
}

#[test]
fn whole_convnext_with_fastai_head_gradients_match_finite_differences() {
    let (g, classes) = gradient_checked().swap_remove(5);
    gradient_check(g, classes);
}

#[test]
fn convnext_block_gradients_match_finite_differences() {
    let (g, classes) = gradient_checked().swap_remove(4);
    // Drop path draws per sample: the first step (the one checked) keeps some samples and drops others, so the
    // check sees both.
    let Some(wgtune::graph::Op::DropPath { p, seed, .. }) =
        g.nodes.iter().map(|n| &n.op).find(|op| op.kind() == OpKind::DropPath)
    else {
        panic!("the graph has a drop path")
    };
    let threshold = wgtune::ops::dropout::DropoutParams::new(1, *p, *seed, 1, false).unwrap().threshold;
    let kept = (0..5).filter(|&n| wgtune::reference::dropout_keep(*seed, 1, n, threshold)).count();
    assert!(kept > 0 && kept < 5, "drop path keeps {kept} of 5 samples at step 1");
    gradient_check(g, classes);
}

/// A training step on MixUp and CutMix batches against the CPU: the reference augmentation of the pixels with the
/// partners blended in, the f64 forward pass, and the loss on the mixed targets (lam * own labels + (1 - lam) *
/// partner's), for a single-label and a multi-label model. The step's loss is computed before its update.
#[test]
fn mixed_pixel_batches_train_on_the_mixed_images_and_targets() {
    use wgtune::data::augment::{AugmentConfig, ImageTransform, Mixing};
    use wgtune::nn::Normalization;
    let (n, presize, size) = (5, 9, 6);
    for (g, classes) in [(residual_cnn(n, size, 3), 3u32), (multi_label_cnn(n, size, 35), 35)] {
        for mixing in [Mixing::MixUp { alpha: 0.4 }, Mixing::CutMix { alpha: 1.0 }] {
            let targets = targets_of(&g);
            let mut ex = Executor::new(gpu(), g.clone(), ExecutorConfig::default()).unwrap();
            let norm = Normalization::imagenet();
            ex.set_pixel_input(PixelInput { presize, normalization: norm }).unwrap();
            let mut rng = SplitMix(21);
            let pixels: Vec<u8> = (0..n * presize * presize * 3).map(|_| rng.below(256) as u8).collect();
            let (_, labels) = batch(&g, 22, classes);
            let aug = AugmentConfig::default();
            let mut transforms: Vec<ImageTransform> = (0..n).map(|_| aug.sample(&mut rng)).collect();
            // The last row pads the batch: not mixed.
            mixing.apply(&mut transforms, n - 1, size, &mut rng).unwrap();
            let mut values: HashMap<TensorId, Vec<f64>> = HashMap::new();
            for (i, t) in g.tensors.iter().enumerate() {
                if matches!(t.kind, TensorKind::Param { .. } | TensorKind::State) {
                    values.insert(TensorId(i), widen(&ex.read_value(&t.name).unwrap()));
                }
            }
            ex.train_step_pixels(&pixels, &transforms, &labels).unwrap();
            let got = ex.wait_metrics().unwrap()[0].loss as f64;

            let params: Vec<[f32; 16]> = transforms.iter().enumerate().map(|(r, t)| t.to_params(r)).collect();
            let x = wgtune::reference::augment(&pixels, (n, presize, size), &params, norm.scale, norm.shift, true);
            let out = cpu::forward(&g, &values, &x, &labels, true, 1);
            let logits = &out[&g.find("fc.out").unwrap()];
            let mix = wgtune::data::augment::label_mix(&transforms).expect("the batch is mixed");
            assert!(mix.iter().enumerate().any(|(r, m)| m.0 != r as u32), "some image has another partner");
            let rows = targets.encode(&labels, Some(&mix)).unwrap();
            let t = wgtune::reference::dense_targets(&rows, classes as usize, targets.multi_label);
            let want = if targets.multi_label {
                wgtune::reference::bce_with_logits_forward(logits, &t)
            } else {
                wgtune::reference::soft_cross_entropy_forward(logits, &t, classes as usize, 0.0)
            };
            eprintln!("{mixing:?} multi-label {}: GPU loss {got}, CPU {want}", targets.multi_label);
            assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{mixing:?}: GPU {got} vs CPU {want}");
        }
    }
}

/// Adding an op without putting it in a gradient-checked graph fails here.
#[test]
fn every_op_kind_is_in_a_gradient_check() {
    let checked: HashSet<OpKind> =
        gradient_checked().iter().flat_map(|(g, _)| g.nodes.iter().map(|n| n.op.kind())).collect();
    let missing: Vec<&str> = OpKind::ALL.iter().filter(|k| !checked.contains(k)).map(|k| k.name()).collect();
    assert!(missing.is_empty(), "op kinds in no whole-graph gradient check: {missing:?}");
}

/// Every storage byte the executor allocates for a training program is in its plan: parameters, gradients,
/// optimizer state, running statistics, activations, launchers' scratch, the pixel stage, an accumulation cycle's staging. On a device of its own,
/// so no other test's buffers are counted.
#[test]
fn allocated_bytes_equal_planned_bytes() {
    let gpu = Arc::new(Gpu::new(&AdapterRequest::from_env()).unwrap());
    for (arch, optimizer, pixels, accum, precision) in [
        (Arch::EffnetLite0, Optimizer::Adam, true, 1, Precision::F32),
        (Arch::Resnet50, Optimizer::Adam, false, 1, Precision::F32),
        (Arch::Resnet18, Optimizer::Sgd, false, 3, Precision::F32),
        (Arch::Resnet18, Optimizer::Adam, true, 2, Precision::F32),
        // f16: the f16 activations (odd-sized ones padded to 4 bytes) are planned too; the weights stay f32.
        (Arch::EffnetLite0, Optimizer::Adam, true, 1, Precision::F16),
        (Arch::Resnet18, Optimizer::Sgd, true, 2, Precision::F16),
    ] {
        let g = arch.with_fastai_head(4, 32, 5, 0.1, wgtune::nn::FASTAI_PS).unwrap();
        let before = gpu.storage_bytes_created();
        let cfg = ExecutorConfig { optimizer, accum, precision, ..Default::default() };
        let mut ex = Executor::new(gpu.clone(), g, cfg).unwrap();
        if pixels {
            let normalization = arch.normalization();
            ex.set_pixel_input(PixelInput { presize: 37, normalization }).unwrap();
        }
        let planned = ex.planned_bytes().unwrap();
        assert_eq!(ex.plan_bytes(true).unwrap(), planned, "{arch}: plan without compiling");
        let allocated = gpu.storage_bytes_created() - before;
        eprintln!("{arch}: planned {planned} bytes, allocated {allocated}");
        assert_eq!(allocated, planned, "{arch} ({optimizer:?}, pixel stage {pixels}, {precision:?})");
    }
}

/// SGD keeps one state buffer per bucket (its momentum), Adam two: persistent bytes are params + grads + state
/// (+ running statistics), so Adam's exceed SGD's by exactly one copy of the parameters.
#[test]
fn optimizer_state_is_sized_by_the_optimizer() {
    let g = residual_cnn(2, 6, 3);
    let param_bytes: u64 = g.params().iter().map(|p| g.tensors[p.0].numel() as u64 * 4).sum();
    let bytes = |optimizer| {
        Executor::new(gpu(), g.clone(), ExecutorConfig { optimizer, ..Default::default() }).unwrap().persistent_bytes()
    };
    let (sgd, adam) = (bytes(Optimizer::Sgd), bytes(Optimizer::Adam));
    let one_copy = adam - sgd;
    // Each parameter starts on a binding-aligned offset (at most 256 bytes of padding each).
    assert!(one_copy >= param_bytes && one_copy < param_bytes + 256 * g.params().len() as u64, "{sgd} {adam}");
    assert!(sgd > 3 * one_copy, "SGD: params, grads, momentum and the running statistics");
}

#[test]
fn frozen_parameters_stay_bit_identical() {
    let gpu = gpu();
    for freeze_bn in [false, true] {
        let g = residual_cnn(4, 8, 3);
        let mut ex = Executor::new(gpu.clone(), g.clone(), ExecutorConfig { freeze_bn, ..Default::default() }).unwrap();
        ex.freeze_to(1).unwrap();
        let before: Vec<(String, Vec<f32>)> = g
            .params()
            .iter()
            .map(|p| g.tensors[p.0].name.clone())
            .map(|n| (n.clone(), ex.read_value(&n).unwrap()))
            .collect();
        for s in 0..3 {
            let (x, y) = batch(&g, 100 + s, 3);
            ex.train_step(&x, &y).unwrap();
        }
        ex.wait_metrics().unwrap();
        for (name, old) in before {
            let new = ex.read_value(&name).unwrap();
            let is_bn = name.starts_with("bn");
            let should_train = name.starts_with("fc") || (is_bn && !freeze_bn);
            if should_train {
                assert_ne!(new, old, "{name} should have trained (freeze_bn = {freeze_bn})");
            } else {
                assert!(new.iter().zip(&old).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} changed while frozen");
            }
        }
        if freeze_bn {
            // Running statistics of an eval-mode body do not move either.
            assert_eq!(ex.read_value("bn1.running_mean").unwrap(), vec![0.0; 4]);
        }
    }
}

#[test]
fn backward_stops_at_the_head_when_the_body_is_fully_frozen() {
    let g = residual_cnn(2, 6, 3);
    let mut ex = Executor::new(gpu(), g, ExecutorConfig { freeze_bn: true, ..Default::default() }).unwrap();
    ex.freeze_to(1).unwrap();
    let names = ex.train_layer_names().unwrap();
    assert!(names.contains(&"fc backward".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("conv") && n.ends_with("backward")), "{names:?}");
    ex.freeze_to(0).unwrap();
    let names = ex.train_layer_names().unwrap();
    assert!(names.contains(&"conv1 backward".to_string()), "{names:?}");
}

/// Four classes, each a bright quadrant of a noisy 8x8 image: a tiny CNN (strided conv, BN, relu, flatten,
/// dropout, linear) must get the loss under 0.25 within
/// 60 Adam steps (fixed seeds), and the metrics must come back for every step.
#[test]
fn a_tiny_model_learns_a_synthetic_task() {
    tiny_model_learns(Precision::F32);
}

/// The same in f16 (activations, their gradients, the input), with dynamic loss scaling from 2^16.
#[test]
fn a_tiny_model_learns_a_synthetic_task_in_f16() {
    tiny_model_learns(Precision::F16);
}

fn tiny_model_learns(precision: Precision) {
    let (n, size) = (16, 8);
    let mut g = Graph::new();
    let x = g.input("image", &[n, 1, size, size]);
    let labels = g.labels("label", n);
    let h = g.conv2d("conv", x, 4, (3, 3), conv(2, 1), false).unwrap();
    let h = g.batch_norm("bn", h, BatchNormConfig::default()).unwrap();
    let h = g.relu("relu", h).unwrap();
    let h = g.flatten("flatten", h).unwrap();
    let h = g.dropout("drop", h, 0.1).unwrap();
    let logits = g.linear("fc", h, 4, true).unwrap();
    g.cross_entropy("loss", logits, labels, 0.0).unwrap();
    let mut ex = Executor::new(gpu(), g, ExecutorConfig { precision, ..Default::default() }).unwrap();
    ex.set_hyper(0, Hyper { lr: 1e-2, ..Hyper::default() }).unwrap();
    let mut rng = SplitMix(3);
    let make = |rng: &mut SplitMix| {
        let mut img = Vec::new();
        let mut lab = Vec::new();
        for _ in 0..n {
            let k = rng.below(4);
            for r in 0..size {
                for c in 0..size {
                    let quadrant = (r / (size / 2)) * 2 + c / (size / 2);
                    img.push(if quadrant as u32 == k { 1.0 } else { 0.0 } + rng.uniform(-0.3, 0.3) as f32);
                }
            }
            lab.push(k);
        }
        (img, lab)
    };
    let steps = 60;
    for _ in 0..steps {
        let (img, lab) = make(&mut rng);
        ex.train_step(&img, &lab).unwrap();
    }
    let metrics = ex.wait_metrics().unwrap();
    assert_eq!(metrics.len(), steps, "every step's loss comes back");
    let last: f32 = metrics[steps - 5..].iter().map(|m| m.loss).sum::<f32>() / 5.0;
    eprintln!(
        "{precision:?} loss: first {} last-5 mean {last}; scaler {:?}",
        metrics[0].loss,
        metrics[steps - 1].scaler
    );
    assert_eq!(metrics.iter().all(|m| m.scaler.is_some()), precision == Precision::F16, "the scaler comes back in f16");
    assert!(last < 0.25, "mean loss of the last 5 steps {last} (first step {})", metrics[0].loss);
    let (img, lab) = make(&mut rng);
    let (_, correct) = ex.evaluate(&img, &lab).unwrap();
    assert!(correct >= 14.0, "eval accuracy {correct}/16");
    let probs = ex.predict(&img).unwrap();
    assert_eq!(probs.len(), n * 4);
    // The probabilities are the softmax of the logits, row by row.
    let logits = ex.predict_logits(&img).unwrap();
    let want = wgtune::reference::softmax_forward(&widen(&logits), 4);
    // (f16 logits are read back widened; the probabilities are computed from them in f32.)
    for (i, (&p, &w)) in probs.iter().zip(&want).enumerate() {
        assert!((p as f64 - w).abs() < 1e-5, "probability {i}: {p} vs softmax of the logits {w}");
    }
}

#[test]
fn one_submit_and_eight_bytes_back_per_training_step() {
    let g = residual_cnn(2, 6, 3);
    let mut ex =
        Executor::new(gpu(), g.clone(), ExecutorConfig { optimizer: Optimizer::Sgd, ..Default::default() }).unwrap();
    ex.planned_bytes().unwrap(); // compile outside the counted steps
    let before = ex.counters();
    let steps = 5;
    for s in 0..steps {
        let (x, y) = batch(&g, 200 + s, 3);
        ex.train_step(&x, &y).unwrap();
    }
    let metrics = ex.wait_metrics().unwrap();
    assert_eq!(metrics.len(), steps as usize);
    let c = ex.counters();
    assert_eq!(c.submits - before.submits, steps, "one submit per step");
    assert_eq!(c.bytes_read_back - before.bytes_read_back, 8 * steps, "loss + correct count, 4 bytes each");
    assert!(metrics.iter().all(|m| m.loss.is_finite() && (0.0..=2.0).contains(&m.correct)));
    // In f16 the loss scaler's 16 bytes join them, still in one submission per step.
    let cfg = ExecutorConfig { precision: Precision::F16, ..Default::default() };
    let mut ex = Executor::new(gpu(), g.clone(), cfg).unwrap();
    ex.planned_bytes().unwrap();
    let before = ex.counters();
    for s in 0..steps {
        let (x, y) = batch(&g, 200 + s, 3);
        ex.train_step(&x, &y).unwrap();
    }
    assert_eq!(ex.wait_metrics().unwrap().len(), steps as usize);
    let c = ex.counters();
    assert_eq!(c.submits - before.submits, steps, "one submit per f16 step");
    assert_eq!(c.bytes_read_back - before.bytes_read_back, 24 * steps, "loss, count and the scaler's 16 bytes");
}

/// A batch kept on the GPU (`upload_input`, `train_step_resident`, what `bench train` feeds by default) trains
/// exactly as the same batch written from the host: bit-identical losses and weights after three steps, in f32 and
/// f16, one submission per step either way, and the images no longer counted as uploaded per step. A resident
/// tensor of another shape is an error naming both tensors.
#[test]
fn a_resident_batch_trains_as_the_host_batch() {
    let g = residual_cnn(3, 6, 3);
    for precision in [Precision::F32, Precision::F16] {
        let mut runs = Vec::new();
        for resident in [false, true] {
            let cfg = ExecutorConfig { precision, ..Default::default() };
            let mut ex = Executor::new(gpu(), g.clone(), cfg).unwrap();
            ex.planned_bytes().unwrap();
            let before = ex.counters();
            let mut losses = Vec::new();
            for s in 0..3 {
                let (x, y) = batch(&g, 400 + s, 3);
                if resident {
                    let t = ex.upload_input(&x).unwrap();
                    ex.train_step_resident(&t, &y).unwrap();
                } else {
                    ex.train_step(&x, &y).unwrap();
                }
                losses.extend(ex.wait_metrics().unwrap().iter().map(|m| m.loss));
            }
            let c = ex.counters();
            let weights: Vec<Vec<f32>> =
                g.params().iter().map(|p| ex.read_value(&g.tensors[p.0].name).unwrap()).collect();
            runs.push((losses, weights, c.submits - before.submits, c.bytes_uploaded - before.bytes_uploaded));
        }
        let ((loss0, w0, sub0, up0), (loss1, w1, sub1, up1)) = (&runs[0], &runs[1]);
        assert_eq!(loss0, loss1, "{precision:?}");
        assert_eq!(w0, w1, "{precision:?}");
        assert_eq!((*sub0, *sub1), (3, 3), "one submission per step either way");
        let image_bytes = (3 * 3 * 6 * 6 * if precision == Precision::F16 { 2 } else { 4 }) as u64;
        assert_eq!(up0 - up1, 3 * image_bytes, "{precision:?}: the images stay on the GPU");
    }
    let mut ex = Executor::new(gpu(), g.clone(), ExecutorConfig::default()).unwrap();
    let other = residual_cnn(2, 6, 3);
    let mut ex2 = Executor::new(gpu(), other.clone(), ExecutorConfig::default()).unwrap();
    let t = ex2.upload_input(&batch(&other, 1, 3).0).unwrap();
    let e = ex.train_step_resident(&t, &batch(&g, 1, 3).1).unwrap_err().to_string();
    assert!(e.contains("resident input") && e.contains("[2, 3, 6, 6]") && e.contains("[3, 3, 6, 6]"), "{e}");
}

/// Fusing into a batch norm the residual add or the ReLU or ReLU6 that alone reads its output (the executor's
/// default) changes which kernels run, not what they compute: three SGD steps with and without it give the same
/// losses and weights (f32; 1e-5 relative for rounding-contraction differences), and the fused program has a
/// forward and a backward layer fewer per op taken in (residual_cnn: bn1's ReLU and bn2's add;
/// fastai_head_cnn: the stem's ReLU6) and binds fewer bytes.
#[test]
fn fused_batch_norm_activations_train_as_the_unfused_graph() {
    for (g, classes, taken) in [(residual_cnn(3, 6, 3), 3, 2), (fastai_head_cnn(4, 7, 4), 4, 1)] {
        assert_eq!(g.nodes.len() - g.fuse_norm_activations().nodes.len(), taken);
        let mut runs = Vec::new();
        for fuse in [false, true] {
            let cfg = ExecutorConfig { optimizer: Optimizer::Sgd, fuse, ..Default::default() };
            let mut ex = Executor::new(gpu(), g.clone(), cfg).unwrap();
            let layers = ex.train_layer_names().unwrap().len();
            let bound = ex.step_bytes_bound().unwrap();
            let mut losses = Vec::new();
            for s in 0..3 {
                let (x, y) = batch(&g, 300 + s, classes);
                ex.train_step(&x, &y).unwrap();
                losses.extend(ex.wait_metrics().unwrap().iter().map(|m| m.loss));
            }
            let weights: Vec<Vec<f32>> =
                g.params().iter().map(|p| ex.read_value(&g.tensors[p.0].name).unwrap()).collect();
            runs.push((layers, bound, losses, weights));
        }
        let ((l0, b0, loss0, w0), (l1, b1, loss1, w1)) = (&runs[0], &runs[1]);
        assert_eq!(l0 - l1, 2 * taken, "a forward and a backward layer fewer per op taken in");
        assert!(b1 < b0, "fused binds fewer bytes: {b1} vs {b0}");
        for (a, b) in loss0.iter().zip(loss1) {
            assert!((a - b).abs() <= 1e-5 * a.abs(), "loss unfused {a}, fused {b}");
        }
        for (p, (a, b)) in g.params().iter().zip(w0.iter().zip(w1)) {
            let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs() / x.abs().max(1e-3)).fold(0f32, f32::max);
            assert!(worst <= 1e-5, "{}: relative difference {worst:e}", g.tensors[p.0].name);
        }
    }
}

/// Dynamic loss scaling (PyTorch's GradScaler): a step whose gradients are not finite (forced here by an image
/// beyond f16's range) is skipped — every weight and the optimizer state stay as they were, bit for bit — and
/// halves the scale; the next steps train, and after `scale_interval` clean steps the scale doubles. The scaler
/// travels with a checkpoint, so a resume continues it exactly.
#[test]
fn an_overflowing_f16_step_is_skipped_and_the_scale_adapts() {
    let g = plain_cnn(4);
    let cfg = ExecutorConfig { precision: Precision::F16, loss_scale: 1024.0, scale_interval: 3, ..Default::default() };
    let mut ex = Executor::new(gpu(), g.clone(), cfg).unwrap();
    let (x, y) = batch(&g, 300, 3);
    let weights =
        |ex: &Executor| -> Vec<Vec<f32>> { ex.model_tensors().unwrap().into_iter().map(|(_, _, v)| v).collect() };
    // One clean step, then the overflow.
    ex.train_step(&x, &y).unwrap();
    ex.wait_metrics().unwrap();
    let (before, state_before) = (weights(&ex), ex.training_state().unwrap().0);
    let mut bad = x.clone();
    bad[5] = 1e6; // inf in f16
    ex.train_step(&bad, &y).unwrap();
    let m = ex.wait_metrics().unwrap();
    assert_eq!(weights(&ex), before, "the overflowing step changed a weight");
    let optimizer_state = |s: &[(String, Vec<usize>, Vec<f32>)]| -> Vec<Vec<f32>> {
        s.iter().filter(|(n, _, _)| n.starts_with("optimizer.")).map(|(_, _, v)| v.clone()).collect()
    };
    assert_eq!(optimizer_state(&ex.training_state().unwrap().0), optimizer_state(&state_before), "optimizer state");
    let after_skip = m[0].scaler.expect("f16 reads the scaler back");
    assert_eq!((after_skip.scale, after_skip.clean, after_skip.skipped), (512.0, 0, 1), "{after_skip:?}");
    // Clean steps: the first two count, the third doubles the scale.
    let mut scales = Vec::new();
    for _ in 0..4 {
        ex.train_step(&x, &y).unwrap();
        scales.push(ex.wait_metrics().unwrap()[0].scaler.unwrap());
    }
    assert_ne!(weights(&ex), before, "clean steps train");
    let seen: Vec<(f32, u32, u32)> = scales.iter().map(|s| (s.scale, s.clean, s.skipped)).collect();
    assert_eq!(seen, [(512.0, 1, 1), (512.0, 2, 1), (1024.0, 0, 1), (1024.0, 1, 1)]);
    // A checkpoint carries the scaler: a fresh executor restored from it continues the same way, bit for bit.
    let (tensors, counters) = ex.training_state().unwrap();
    let mut resumed = Executor::new(gpu(), g.clone(), cfg).unwrap();
    let get = |name: &str| Ok(tensors.iter().find(|(n, _, _)| n == name).expect("saved").2.clone());
    resumed.restore_training_state(&get, &counters).unwrap();
    assert_eq!(resumed.loss_scaler().unwrap(), ex.loss_scaler().unwrap());
    for e in [&mut ex, &mut resumed] {
        e.train_step(&x, &y).unwrap();
        e.wait_metrics().unwrap();
    }
    assert_eq!(weights(&resumed), weights(&ex), "the resumed run trains exactly as the original");
    assert_eq!(resumed.loss_scaler().unwrap(), ex.loss_scaler().unwrap());
}

/// A skipped step does not count for Adam (PyTorch's GradScaler does not call `optimizer.step()` then): a clean
/// step, an overflowing one and a clean one end with the weights of the two clean steps alone (the halved scale
/// changes no f16 rounding: it is a power of two), and the checkpoint's counters say each trainable bucket applied
/// 2 updates in 3 steps. Counting the skipped step would debias the second update as a third (1 - 0.9^3 instead of
/// 1 - 0.9^2): 2.4e-4 of the largest weight here.
#[test]
fn a_skipped_f16_step_does_not_count_for_adam() {
    let g = plain_cnn(4);
    let cfg = ExecutorConfig { precision: Precision::F16, loss_scale: 1024.0, ..Default::default() };
    let ((x1, y1), (x2, y2)) = (batch(&g, 310, 3), batch(&g, 311, 3));
    let mut bad = x1.clone();
    bad[5] = 1e6; // inf in f16
    let mut skipped = Executor::new(gpu(), g.clone(), cfg).unwrap();
    let mut clean = Executor::new(gpu(), g.clone(), cfg).unwrap();
    for (x, y) in [(&x1, &y1), (&bad, &y1), (&x2, &y2)] {
        skipped.train_step(x, y).unwrap();
    }
    for (x, y) in [(&x1, &y1), (&x2, &y2)] {
        clean.train_step(x, y).unwrap();
    }
    skipped.wait_metrics().unwrap();
    clean.wait_metrics().unwrap();
    assert_eq!(skipped.loss_scaler().unwrap().skipped, 1);
    for ((name, _, a), (_, _, b)) in skipped.model_tensors().unwrap().iter().zip(&clean.model_tensors().unwrap()) {
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max) / scale;
        assert!(worst <= 1e-6, "{name}: {worst:.2e} (of the largest weight) from the run without the skipped step");
    }
    let counters: serde_json::Value = serde_json::from_str(&skipped.training_state().unwrap().1).unwrap();
    let (steps, applied) = (&counters["bucket_steps"], &counters["bucket_applied_steps"]);
    let pairs: Vec<(u64, u64)> = steps
        .as_array()
        .unwrap()
        .iter()
        .zip(applied.as_array().unwrap())
        .map(|(s, a)| (s.as_u64().unwrap(), a.as_u64().unwrap()))
        .collect();
    assert!(pairs.iter().all(|&(s, a)| (s, a) == (3, 2) || (s, a) == (0, 0)), "{pairs:?}");
}

#[test]
fn the_memory_plan_reuses_buffers() {
    let g = residual_cnn(8, 16, 3);
    let transient: u64 = g
        .tensors
        .iter()
        .filter(|t| !matches!(t.kind, TensorKind::Param { .. } | TensorKind::State))
        .map(|t| t.numel() as u64 * 4)
        .sum::<u64>();
    let mut ex = Executor::new(gpu(), g, ExecutorConfig::default()).unwrap();
    let planned = ex.planned_bytes().unwrap() - ex.persistent_bytes();
    // Values and their gradients, without reuse, would need about twice `transient`.
    eprintln!("planned transient bytes {planned}, values alone {transient}");
    assert!(planned < 2 * transient, "planned {planned} vs {transient} bytes of values");
}

#[test]
fn a_tensor_over_the_binding_limit_names_a_batch_size_that_fits() {
    let gpu = gpu();
    let limit = gpu.limits().max_storage_buffer_binding_size as usize;
    let per_sample = 3 * 64 * 64 * 4;
    let n = limit / per_sample + 1;
    let mut g = Graph::new();
    let x = g.input("image", &[n, 3, 64, 64]);
    let labels = g.labels("label", n);
    let h = g.global_avg_pool("pool", x).unwrap();
    let logits = g.linear("fc", h, 2, true).unwrap();
    g.cross_entropy("loss", logits, labels, 0.0).unwrap();
    let mut ex = Executor::new(gpu, g, ExecutorConfig::default()).unwrap();
    let err = ex.planned_bytes().unwrap_err().to_string();
    assert!(err.contains("'image'") && err.contains(&format!("at most {}", n - 1)), "{err}");
}

/// When even one image does not fit the binding limit, the message says so and names an input size that fits,
/// instead of "a batch size of at most 0".
#[test]
fn an_input_too_large_for_one_image_names_a_size_that_fits() {
    let gpu = gpu();
    let limit = gpu.limits().max_storage_buffer_binding_size;
    // A 4-channel image of side s takes 16 s^2 bytes: pick s just over the limit.
    let side = ((limit / 16) as f64).sqrt() as usize + 8;
    let mut g = Graph::new();
    let x = g.input("image", &[1, 4, side, side]);
    let labels = g.labels("label", 1);
    let h = g.global_avg_pool("pool", x).unwrap();
    let logits = g.linear("fc", h, 2, true).unwrap();
    g.cross_entropy("loss", logits, labels, 0.0).unwrap();
    let mut ex = Executor::new(gpu, g, ExecutorConfig::default()).unwrap();
    let err = ex.planned_bytes().unwrap_err().to_string();
    assert!(err.contains("even one image") && err.contains("smaller input size"), "{err}");
    assert!(!err.contains("at most 0"), "{err}");
}

/// conv, relu, global average pool, linear: no batch norm and no dropout, so a batch's gradient is the mean of its
/// images' and splitting the batch changes nothing but the rounding.
fn plain_cnn(batch: usize) -> Graph {
    let mut g = Graph::new();
    let x = g.input("image", &[batch, 3, 7, 7]);
    let labels = g.labels("label", batch);
    let h = g.conv2d("conv", x, 5, (3, 3), conv(1, 1), true).unwrap();
    let h = g.relu("relu", h).unwrap();
    let h = g.global_avg_pool("pool", h).unwrap();
    g.set_group(1);
    let logits = g.linear("fc", h, 3, true).unwrap();
    g.cross_entropy("loss", logits, labels, 0.0).unwrap();
    g
}

/// Gradient accumulation (fastai's GradientAccumulation): 4 micro-batches of 8 leave the weights untouched until
/// the 4th, then update them as one batch of 32 does (Adam and SGD, two cycles; atol 1e-6 on weights moved by
/// about 1e-3 a step: the sums round differently).
#[test]
fn accumulating_four_batches_of_8_equals_one_batch_of_32() {
    for optimizer in [Optimizer::Adam, Optimizer::Sgd] {
        let big = plain_cnn(32);
        let mut one = Executor::new(gpu(), big.clone(), ExecutorConfig { optimizer, ..Default::default() }).unwrap();
        let mut four =
            Executor::new(gpu(), plain_cnn(8), ExecutorConfig { optimizer, accum: 4, ..Default::default() }).unwrap();
        let names: Vec<String> = big.params().iter().map(|&t| big.tensors[t.0].name.clone()).collect();
        let read = |ex: &Executor| names.iter().map(|n| ex.read_value(n).unwrap()).collect::<Vec<_>>();
        let start = read(&four);
        assert_eq!(read(&one), start, "both start from the same weights");
        for cycle in 0..2 {
            let (x, y) = batch(&big, 300 + cycle, 3);
            one.train_step(&x, &y).unwrap();
            let per = x.len() / 4;
            let before = read(&four);
            for m in 0..4 {
                four.train_step(&x[m * per..(m + 1) * per], &y[m * 8..(m + 1) * 8]).unwrap();
                four.wait_metrics().unwrap();
                if m < 3 {
                    assert_eq!(read(&four), before, "{optimizer:?}: micro-batch {m} of cycle {cycle} updated weights");
                }
            }
            one.wait_metrics().unwrap();
            for ((name, a), b) in names.iter().zip(read(&one)).zip(read(&four)) {
                for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                    assert!((u - v).abs() <= 1e-6, "{optimizer:?} cycle {cycle}: {name}[{i}] {u} vs {v}");
                }
            }
        }
        assert_ne!(read(&four), start, "the weights moved");
    }
}

/// A checkpoint taken in the middle of an accumulation cycle (two of three micro-batches summed) restores the
/// sums and the cycle position: the resumed executor's update equals the uninterrupted one's, bit for bit.
#[test]
fn a_resume_inside_an_accumulation_cycle_continues_it() {
    let g = plain_cnn(4);
    let cfg = ExecutorConfig { accum: 3, ..Default::default() };
    let batches: Vec<_> = (0..3).map(|i| batch(&g, 400 + i, 3)).collect();
    let mut whole = Executor::new(gpu(), g.clone(), cfg).unwrap();
    for (x, y) in &batches[..2] {
        whole.train_step(x, y).unwrap();
    }
    whole.wait_metrics().unwrap();
    let (tensors, counters) = whole.training_state().unwrap();
    let mut resumed = Executor::new(gpu(), g.clone(), cfg).unwrap();
    let get = |name: &str| {
        tensors.iter().find(|t| t.0 == name).map(|t| t.2.clone()).ok_or_else(|| wgtune::Error::Invalid(name.into()))
    };
    resumed.restore_training_state(&get, &counters).unwrap();
    let (x, y) = &batches[2];
    for ex in [&mut whole, &mut resumed] {
        ex.train_step(x, y).unwrap();
        ex.wait_metrics().unwrap();
    }
    let (a, _) = whole.training_state().unwrap();
    let (b, _) = resumed.training_state().unwrap();
    assert!(a.iter().any(|t| t.0.ends_with("grad_sum")), "the sums are part of the state");
    for ((name, _, u), (_, _, v)) in a.iter().zip(&b) {
        assert!(u.iter().zip(v).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} differs after the resume");
    }
}

/// Gradient accumulation over pixel batches in one submission per optimizer step: 3 micro-batches staged on the
/// GPU, each copying its pixels, transforms, targets and its dropout and accumulate uniforms into place, give the
/// same weights (bit for bit), losses and running statistics as three submissions, two cycles long (Adam's step
/// count too), with a third of the submits; a MixUp batch and dropout ride along.
#[test]
fn an_accumulation_cycle_of_pixel_batches_is_one_submission() {
    use wgtune::data::augment::{AugmentConfig, ImageTransform, Mixing};
    use wgtune::graph::executor::PixelBatch;
    let (n, presize, size) = (4, 8, 6);
    let graph = || {
        let mut g = Graph::new();
        let x = g.input("image", &[n, 3, size, size]);
        let labels = g.labels("label", n);
        let h = g.conv2d("conv", x, 4, (3, 3), conv(1, 1), true).unwrap();
        let h = g.batch_norm("bn", h, BatchNormConfig::default()).unwrap();
        let h = g.relu("relu", h).unwrap();
        let h = g.dropout("drop", h, 0.3).unwrap();
        let h = g.global_avg_pool("pool", h).unwrap();
        g.set_group(1);
        let logits = g.linear("fc", h, 3, true).unwrap();
        g.cross_entropy("loss", logits, labels, 0.0).unwrap();
        g
    };
    let normalization = wgtune::nn::Normalization::imagenet();
    let make = || {
        let cfg = ExecutorConfig { accum: 3, ..Default::default() };
        let mut ex = Executor::new(gpu(), graph(), cfg).unwrap();
        ex.set_pixel_input(PixelInput { presize, normalization }).unwrap();
        ex
    };
    let (mut one, mut each) = (make(), make());
    let mut rng = SplitMix(31);
    let aug = AugmentConfig::default();
    let mut batches: Vec<(Vec<u8>, Vec<ImageTransform>, Vec<u32>)> = Vec::new();
    for b in 0..6 {
        let pixels: Vec<u8> = (0..n * presize * presize * 3).map(|_| rng.below(256) as u8).collect();
        let mut transforms: Vec<ImageTransform> = (0..n).map(|_| aug.sample(&mut rng)).collect();
        if b == 1 {
            Mixing::MixUp { alpha: 0.4 }.apply(&mut transforms, n, size, &mut rng).unwrap();
        }
        batches.push((pixels, transforms, (0..n).map(|_| rng.below(3)).collect()));
    }
    let before = (one.counters(), each.counters());
    for cycle in batches.chunks(3) {
        let micro: Vec<PixelBatch> =
            cycle.iter().map(|(p, t, l)| PixelBatch { pixels: p, transforms: t, labels: l }).collect();
        one.train_cycle_pixels(&micro).unwrap();
        for (p, t, l) in cycle {
            each.train_step_pixels(p, t, l).unwrap();
        }
    }
    let (a, b) = (one.wait_metrics().unwrap(), each.wait_metrics().unwrap());
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.step, x.loss.to_bits(), x.correct), (y.step, y.loss.to_bits(), y.correct), "{a:?} vs {b:?}");
    }
    for t in &graph().tensors {
        if matches!(t.kind, TensorKind::Param { .. } | TensorKind::State) {
            let (x, y) = (one.read_value(&t.name).unwrap(), each.read_value(&t.name).unwrap());
            assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{}: {x:?} vs {y:?}", t.name);
        }
    }
    let (c1, c3) = (one.counters(), each.counters());
    assert_eq!((c1.submits - before.0.submits, c3.submits - before.1.submits), (2, 6), "one submit per optimizer step");
    assert_eq!(c1.bytes_read_back - before.0.bytes_read_back, 6 * 8, "still every micro-step's loss and count");
    // Fewer batches than a cycle: one submission each, as before.
    let (p, t, l) = &batches[0];
    one.train_cycle_pixels(&[PixelBatch { pixels: p, transforms: t, labels: l }]).unwrap();
    assert_eq!(one.counters().submits - c1.submits, 1);
    one.wait_metrics().unwrap();
}

/// With f16 activations (issue 14) every parameter gradient of the gradient-checked graphs (CNNs with batch norm,
/// residuals, concat pooling, dropout; ConvNeXt with layer norm, layer scale and drop path; attention and a whole
/// ViT) stays within f16's precision of the f32 run on the same batch. Each activation and activation gradient is
/// rounded to f16 (relative error 2^-11) a few dozen times along the way, and a gradient's error comes from the
/// shared activation gradients upstream of it, so it scales with the model's gradients as much as with its own:
/// the bound is 3% of the tensor's largest gradient plus 1% of the model's largest (a bias feeding batch norm has
/// a true gradient of 0 and f32 and f16 leave different rounding noise there). Master weights, weight gradients and
/// the loss are f32 in both runs; the losses agree within 1%.
#[test]
fn f16_gradients_match_f32_within_f16_precision() {
    let gpu = gpu();
    // The gradient-checked graphs, the mini ConvNeXt and ViT at batch 12: at batch 3 the batch norm of fastai's head
    // normalizes three nearly equal feature vectors, which amplifies any rounding of its input (there, rounding just
    // the images to f16 moves an f32 run's stem gradients by 5%).
    let graphs = gradient_checked().into_iter().map(|(g, c)| match g.tensors[0].shape[0] {
        3 if g.find("stem.0.weight").is_some() => (mini_convnext(12, 3), c),
        3 if g.find("cls_token").is_some() => (mini_vit(12, 3), c),
        _ => (g, c),
    });
    for (g, classes) in graphs {
        // Both runs see the same (f16-rounded) images.
        let (images, labels) = batch(&g, 11, classes);
        let images: Vec<f32> = images.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        let mut grads = Vec::new();
        for precision in [Precision::F32, Precision::F16] {
            // A loss scale of 2^10: these small models' activation gradients overflow f16 at GradScaler's 2^16
            // (training would skip that step and halve the scale; here one step is compared).
            let cfg = ExecutorConfig { precision, loss_scale: 1024.0, ..Default::default() };
            let mut ex = Executor::new(gpu.clone(), g.clone(), cfg).unwrap();
            let loss = ex.compute_gradients(&images, &labels).unwrap().loss;
            let names = g.params().into_iter().map(|p| g.tensors[p.0].name.clone());
            let per_param: Vec<(String, Vec<f32>)> = names.map(|n| (n.clone(), ex.read_grad(&n).unwrap())).collect();
            grads.push((loss, per_param));
        }
        let ((loss32, g32), (loss16, g16)) = (&grads[0], &grads[1]);
        assert!((loss32 - loss16).abs() <= 1e-2 * loss32.abs(), "loss: f32 {loss32}, f16 {loss16}");
        let largest = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let model = g32.iter().map(|(_, a)| largest(a)).fold(0f32, f32::max);
        for ((name, a), (_, b)) in g32.iter().zip(g16) {
            let scale = largest(a);
            let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            let bound = 3e-2 * scale + 1e-2 * model;
            assert!(worst <= bound, "{name}: worst |f16 - f32| {worst:e}, largest gradient {scale:e}, bound {bound:e}");
            eprintln!("{name}: worst |f16 - f32| {worst:.2e} of {scale:.2e} (model {model:.2e})");
        }
    }
}
