//! What f16 storage and the loss scale do to one training step's gradients. The same batch of the default job's
//! images goes through the fastai-headed model four ways: on the GPU in f32; a second time in f32 (the control:
//! it must match the first exactly); in f64 on the CPU (`graph::cpu`), exactly and with every activation of the
//! forward pass rounded to f16 (what f16 storage does to the forward values alone); and on the GPU in f16 at each
//! loss scale given. Prints each parameter's gradient error (relative RMS against f64) for the f32 GPU run and
//! the rounded f64 pass; then per scale the parameters whose f16 gradient is not finite (backward runs from the
//! head, so the deepest of them is where the overflow starts) and each gradient's error against the f32 run, with
//! the share of entries that are zero where f32's are not (underflow).
//!
//!     cargo run --release --example grad_probe -- [--frozen] [--ps P] [--keep A,B,...] [--bs N] [--batch K] \
//!         MODEL.safetensors|imagenet [SCALE...]
//!
//! `imagenet`: the embedded EfficientNet-Lite0 with a new fastai head for the embedded data set's classes (its
//! random initialization, the same in every run), as at the first step of `wgtune finetune`. `--frozen`: the body
//! frozen as in fine_tune's first phase (its batch norms still train). `--ps P`: the head's dropout (fastai's 0.5;
//! 0 makes the step depend on nothing random). `--keep A,B`: the rounded f64 pass leaves the outputs of nodes whose
//! names contain A or B exact. `--batch K`: the K-th batch (from 0) of the training images in file order.
//! With GRAD_PROBE_ACTIVATIONS set, also each activation's error in the rounded f64 pass.
//! BENCHMARKS.md "Mixed precision" has what it found.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use wgtune::data::dataset::Dataset;
use wgtune::data::loader::decode_presized;
use wgtune::data::{center_square, normalize_into, presize_for};
use wgtune::gpu::{AdapterRequest, Gpu, Precision};
use wgtune::graph::executor::{Executor, ExecutorConfig};
use wgtune::graph::{cpu, TensorId, TensorKind};
use wgtune::nn::model::{Head, ModelSpec, EFFNET_LITE0_IMAGENET};
use wgtune::nn::weights::{load_into, Weights};
use wgtune::nn::TrainOptions;
use wgtune::reference::widen;
use wgtune::{Error, Result};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

struct Args {
    frozen: bool,
    ps: Option<f64>,
    keep: Vec<String>,
    bs: usize,
    batch: usize,
    model: PathBuf,
    scales: Vec<f32>,
}

fn parse() -> Result<Args> {
    let usage = || {
        Error::Invalid(
            "usage: grad_probe [--frozen] [--ps P] [--keep A,B] [--bs N] [--batch K] MODEL|imagenet SCALE...".into(),
        )
    };
    let mut it = std::env::args().skip(1);
    let (mut frozen, mut ps, mut bs, mut batch, mut rest) = (false, None, 32, 0, Vec::new());
    let mut keep = Vec::new();
    while let Some(a) = it.next() {
        let mut number = |what: &str| -> Result<usize> {
            let v = it.next().ok_or_else(usage)?;
            v.parse().map_err(|_| Error::Invalid(format!("{what} '{v}': expected a whole number")))
        };
        match a.as_str() {
            "--frozen" => frozen = true,
            "--keep" => keep = it.next().ok_or_else(usage)?.split(',').map(str::to_string).collect(),
            "--ps" => {
                let v = it.next().ok_or_else(usage)?;
                ps = Some(v.parse().map_err(|_| Error::Invalid(format!("--ps '{v}': expected a number")))?);
            }
            "--bs" => bs = number("--bs")?,
            "--batch" => batch = number("--batch")?,
            _ => rest.push(a),
        }
    }
    let (model, scales) = rest.split_first().ok_or_else(usage)?;
    let scales = scales
        .iter()
        .map(|s| s.parse::<f32>().map_err(|_| Error::Invalid(format!("scale '{s}': expected a number"))))
        .collect::<Result<Vec<_>>>()?;
    if bs == 0 {
        return Err(usage());
    }
    Ok(Args { frozen, ps, keep, bs, batch, model: PathBuf::from(model), scales })
}

/// Root-mean-square of `a - b` over that of `b`.
fn rel_rms(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut s) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        d += (x as f64 - y as f64).powi(2);
        s += (y as f64).powi(2);
    }
    (d / s.max(1e-300)).sqrt()
}

fn run() -> Result<()> {
    let a = parse()?;
    let data_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/fashion_mnist");
    let data = Dataset::from_folder(std::path::Path::new(data_dir), 0.2, 42)?;
    let (weights, spec) = if a.model.as_os_str() == "imagenet" {
        let w = Weights::from_static(EFFNET_LITE0_IMAGENET, "embedded EfficientNet-Lite0 (ImageNet)")?;
        let mut spec = ModelSpec::of_weights(&w, None)?;
        spec.head = Head::Fastai;
        spec.classes = data.classes.clone();
        spec.input_size = 64;
        (w, spec)
    } else {
        let w = Weights::open(&a.model)?;
        let spec = ModelSpec::of_weights(&w, None)?;
        (w, spec)
    };
    let size = spec.input_size;
    let presize = presize_for(size);
    let items = data.train.iter().skip(a.batch * a.bs).take(a.bs).collect::<Vec<_>>();
    if items.len() < a.bs {
        return Err(Error::Invalid(format!(
            "batch {} of {} is past the {} training images",
            a.batch,
            a.bs,
            data.train.len()
        )));
    }
    let mut images = Vec::new();
    for item in &items {
        normalize_into(
            &center_square(&decode_presized(item, presize)?, presize, size),
            &spec.normalization,
            &mut images,
        );
    }
    let labels: Vec<u32> = items.iter().map(|i| i.label()).collect();

    let gpu = Arc::new(Gpu::new(&AdapterRequest::from_env())?);
    eprintln!("adapter: {}; batch {} of {} images at {size} px", gpu.summary().name, a.batch, a.bs);
    let graph = match a.ps {
        Some(ps) => {
            let opts = TrainOptions { bn_momentum: 0.1, ps, loss: spec.loss, drop_path: 0.0 };
            spec.arch.with_fastai_head_and_loss(a.bs, size, spec.classes.len(), opts)?
        }
        None => spec.training_graph(a.bs, 0.1, 0.0)?,
    };
    let make = |precision, loss_scale| -> Result<Executor> {
        let cfg = ExecutorConfig { precision, loss_scale, ..Default::default() };
        let mut ex = Executor::new(gpu.clone(), graph.clone(), cfg)?;
        if a.frozen {
            ex.freeze_to(ex.graph().groups() - 1)?;
        }
        Ok(ex)
    };
    let mut ex32 = make(Precision::F32, 1.0)?;
    let fresh_head = spec.head == Head::Fastai && a.model.as_os_str() == "imagenet";
    let classifier = spec.arch.classifier_prefix();
    load_into(
        &ex32,
        &weights,
        |n| n.to_string(),
        |n| fresh_head && n.starts_with("head."),
        |n| (fresh_head && n.starts_with(classifier)) || n.ends_with("num_batches_tracked"),
    )?;
    let start = ex32.model_tensors()?;
    let m32 = ex32.compute_gradients(&images, &labels)?;
    println!("f32: loss {:.5}", m32.loss);
    let params: Vec<String> =
        graph.tensors.iter().filter(|t| matches!(t.kind, TensorKind::Param { .. })).map(|t| t.name.clone()).collect();
    let mut g32 = Vec::new();
    for name in &params {
        // A frozen parameter has no gradient buffer to read.
        g32.push(ex32.read_grad(name).ok());
    }
    // The control: a second f32 executor from the same weights must give the same gradients.
    let mut again = make(Precision::F32, 1.0)?;
    for (name, _, values) in &start {
        again.write_value(name, values)?;
    }
    again.compute_gradients(&images, &labels)?;
    let mut worst = 0f64;
    for (name, g) in params.iter().zip(&g32) {
        if let Some(g) = g {
            worst = worst.max(rel_rms(&again.read_grad(name)?, g));
        }
    }
    println!("f32 again: largest rel rms over the parameters {worst:.3e}");
    // The oracle: f64 on the CPU, exact and with every activation of the forward pass rounded to f16 (what f16
    // storage does to the forward values alone; the backward in f64).
    let mut values = HashMap::new();
    let by_name: HashMap<&str, &Vec<f32>> = start.iter().map(|(n, _, v)| (n.as_str(), v)).collect();
    for (i, t) in graph.tensors.iter().enumerate() {
        if let Some(v) = by_name.get(t.name.as_str()) {
            values.insert(TensorId(i), widen(v));
        }
    }
    let input = widen(&images);
    let narrow = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let exact_fwd = cpu::forward(&graph, &values, &input, &labels, true, 1);
    let exact = cpu::backward(&graph, &exact_fwd, &labels, true, 1);
    let halved: Vec<f64> = input.iter().map(|&x| half::f16::from_f64(x).to_f64()).collect();
    let rounded_fwd = cpu::forward_observed(&graph, &values, &halved, &labels, true, 1, &mut |node, t| {
        for y in node.op.outputs() {
            let kept = a.keep.iter().any(|k| node.name.contains(k.as_str()));
            if graph.tensors[y.0].kind == TensorKind::Activation && !kept {
                t.entry(y).and_modify(|v| v.iter_mut().for_each(|x| *x = half::f16::from_f64(*x).to_f64()));
            }
        }
    });
    let rounded = cpu::backward(&graph, &rounded_fwd, &labels, true, 1);
    let loss_of = |f: &HashMap<TensorId, Vec<f64>>| {
        let (_, _, loss, ..) = graph.nodes.iter().find_map(|n| n.op.as_loss()).expect("a loss node");
        f[&loss][0]
    };
    println!("f64: loss {:.6}; with f16-rounded activations {:.6}", loss_of(&exact_fwd), loss_of(&rounded_fwd));
    if std::env::var_os("GRAD_PROBE_ACTIVATIONS").is_some() {
        for node in &graph.nodes {
            for y in node.op.outputs() {
                if graph.tensors[y.0].kind == TensorKind::Activation {
                    let (r, e) = (narrow(&rounded_fwd[&y]), narrow(&exact_fwd[&y]));
                    println!("activation {:<40} {:>10.3e}", node.name, rel_rms(&r, &e));
                }
            }
        }
    }
    let id = |name: &str| graph.tensors.iter().position(|t| t.name == name).map(TensorId);
    println!("{:<44} {:>10} {:>10}", "parameter", "f32 GPU", "f64 f16-fwd");
    for (name, g) in params.iter().zip(&g32) {
        let (Some(g), Some(t)) = (g, id(name)) else { continue };
        let e = narrow(&exact[&t]);
        println!("{name:<44} {:>10.3e} {:>10.3e}", rel_rms(g, &e), rel_rms(&narrow(&rounded[&t]), &e));
    }
    for &scale in &a.scales {
        let mut ex16 = make(Precision::F16, scale)?;
        for (name, _, values) in &start {
            ex16.write_value(name, values)?;
        }
        let m = ex16.compute_gradients(&images, &labels)?;
        let s = ex16.loss_scaler()?;
        println!("\nf16 at scale {scale}: loss {:.5}, scaler after the check {s:?}", m.loss);
        let mut rows = Vec::new();
        for (name, g) in params.iter().zip(&g32) {
            let Some(g) = g else { continue };
            let h = ex16.read_grad(name)?;
            let bad = h.iter().filter(|v| !v.is_finite()).count();
            let zeroed = h.iter().zip(g).filter(|(x, y)| **x == 0.0 && **y != 0.0).count();
            let top = g.iter().fold(0f32, |m, v| m.max(v.abs()));
            rows.push((name, bad, zeroed as f64 / g.len() as f64, rel_rms(&h, g), top));
        }
        let overflowed: Vec<_> = rows.iter().filter(|r| r.1 > 0).map(|r| r.0.as_str()).collect();
        println!("non-finite in {} parameters' gradients: {}", overflowed.len(), overflowed.join(" "));
        println!("{:<44} {:>9} {:>10} {:>10}", "parameter", "zeroed", "rel rms", "f32 max");
        for (name, _, zeroed, rms, top) in &rows {
            println!("{name:<44} {:>8.2}% {rms:>10.3e} {top:>10.3e}", zeroed * 100.0);
        }
    }
    Ok(())
}
