//! Where f16 storage moves a saved model's evaluation: the same images through the model in f64 on the CPU
//! (`graph::cpu`), in f64 with every activation and GEMM weight rounded to f16 as the f16 executor stores them,
//! and on the GPU in f32 and in f16. Prints each layer's relative error of the rounded f64 pass against the exact
//! one (the cost of f16 storage itself, free of any kernel), then the logits of all four.
//!
//!     cargo run --release --example precision_probe -- MODEL.safetensors IMAGE...

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use wgtune::data::{eval_crop, load_rgb, normalize_into};
use wgtune::gpu::{AdapterRequest, Gpu, Precision};
use wgtune::graph::{cpu, Op, TensorId, TensorKind};
use wgtune::nn::model::{load_model, ModelSpec};
use wgtune::nn::weights::Weights;
use wgtune::reference::widen;
use wgtune::{Error, Result};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn half(v: f64) -> f64 {
    half::f16::from_f64(v).to_f64()
}

/// Root-mean-square of `a - b` over root-mean-square of `b`, and the largest |a - b| over b's largest |value|.
fn relative(a: &[f64], b: &[f64]) -> (f64, f64) {
    let rms = |v: &mut dyn Iterator<Item = f64>| {
        let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x * x, n + 1));
        (s / n.max(1) as f64).sqrt()
    };
    let diff = rms(&mut a.iter().zip(b).map(|(x, y)| x - y));
    let size = rms(&mut b.iter().copied());
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let top = b.iter().map(|x| x.abs()).fold(0.0, f64::max);
    (diff / size.max(1e-300), worst / top.max(1e-300))
}

fn run() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [model, images @ ..] = args.as_slice() else {
        return Err(Error::Invalid("usage: precision_probe MODEL.safetensors IMAGE...".into()));
    };
    if images.is_empty() {
        return Err(Error::Invalid("give at least one image".into()));
    }
    // "imagenet": the embedded pretrained EfficientNet-Lite0.
    let weights = if model.as_os_str() == "imagenet" {
        Weights::from_static(wgtune::nn::model::EFFNET_LITE0_IMAGENET, "embedded EfficientNet-Lite0")?
    } else {
        Weights::open(model)?
    };
    let spec = ModelSpec::of_weights(&weights, None)?;
    let n = images.len();
    let mut input = Vec::new();
    for path in images {
        normalize_into(&eval_crop(&load_rgb(path)?, spec.input_size), &spec.normalization, &mut input);
    }
    let gpu = Arc::new(Gpu::new(&AdapterRequest::from_env())?);
    eprintln!("adapter: {}; {n} images at {} px", gpu.summary().name, spec.input_size);
    let (mut ex32, _) = load_model(gpu.clone(), &spec, &weights, n, Precision::F32)?;
    let (mut ex16, _) = load_model(gpu, &spec, &weights, n, Precision::F16)?;
    let gpu32 = widen(&ex32.predict_logits(&input)?);
    let gpu16 = widen(&ex16.predict_logits(&input)?);

    let graph = ex32.graph().clone();
    let mut values = HashMap::new();
    for (i, t) in graph.tensors.iter().enumerate() {
        if matches!(t.kind, TensorKind::Param { .. } | TensorKind::State) {
            values.insert(TensorId(i), widen(&ex32.read_value(&t.name)?));
        }
    }
    let exact = cpu::forward(&graph, &values, &widen(&input), &vec![0; n], false, 1);
    // f16 storage: the GEMM weights' f16 copies, the input and every activation as stored.
    let mut rounded = values.clone();
    for node in &graph.nodes {
        if let Op::Conv2d { w, .. } | Op::Linear { w, .. } = &node.op {
            rounded.entry(*w).and_modify(|v| v.iter_mut().for_each(|x| *x = half(*x)));
        }
    }
    let mode = std::env::var("PROBE").unwrap_or_default();
    if mode == "weights-f32" || mode == "input-only" || mode.starts_with("only=") {
        rounded = values.clone();
    }
    // Each batch norm's input and running mean.
    let bn_of: HashMap<TensorId, TensorId> = graph
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::BatchNorm { x, running_mean, .. } => Some((*x, *running_mean)),
            _ => None,
        })
        .collect();
    let stored = |t: TensorId| graph.tensors[t.0].kind == TensorKind::Activation;
    let input16: Vec<f64> =
        input.iter().map(|&x| if mode.starts_with("only=") { x as f64 } else { half(x as f64) }).collect();
    eprintln!("input f16 rounding: {:?}", relative(&input16, &widen(&input)));
    let mut rows = Vec::new();
    let sim = cpu::forward_observed(&graph, &rounded, &input16, &vec![0; n], false, 1, &mut |node, t| {
        for y in node.op.outputs() {
            if stored(y) {
                match (mode.as_str(), bn_of.get(&y)) {
                    ("bn-f32", Some(_)) | ("input-only", _) | ("weights-only", _) => {}
                    (m, _) if m.starts_with("only=") && node.name != m[5..] => {}
                    (m, _) if m.starts_with("keep=") && m[5..].split(',').any(|k| node.name.contains(k)) => {}
                    ("centered", Some(rm)) => {
                        let rm = t[rm].clone();
                        let hw = t[&y].len() / n / rm.len();
                        t.entry(y).and_modify(|v| {
                            v.iter_mut().enumerate().for_each(|(i, x)| {
                                let c = rm[i / hw % rm.len()];
                                *x = half(*x - c) + c
                            })
                        });
                    }
                    _ => {
                        t.entry(y).and_modify(|v| v.iter_mut().for_each(|x| *x = half(*x)));
                    }
                }
                rows.push((node.name.clone(), node.op.kind().name(), y));
            }
        }
    });
    println!("{:<40} {:<12} {:>12} {:>12}", "node", "op", "rel rms", "rel max");
    for (name, kind, y) in &rows {
        let (rms, max) = relative(&sim[y], &exact[y]);
        println!("{name:<40} {kind:<12} {rms:>12.3e} {max:>12.3e}");
    }
    let (logits, ..) = graph.nodes.iter().find_map(|n| n.op.as_loss()).expect("a loss node");
    let e = &exact[&logits];
    for (what, v) in [("f64, f16 storage", &sim[&logits]), ("GPU f32", &gpu32), ("GPU f16", &gpu16)] {
        let (rms, max) = relative(v, e);
        let classes = e.len() / n;
        let argmax = |v: &[f64], i: usize| {
            (0..classes).max_by(|&a, &b| v[i * classes + a].total_cmp(&v[i * classes + b])).unwrap_or(0)
        };
        let flips = (0..n).filter(|&i| argmax(v, i) != argmax(e, i)).count();
        println!("logits {what:<18} vs f64: rel rms {rms:.3e}, rel max {max:.3e}, top-1 changed on {flips} of {n}");
    }
    Ok(())
}
