//! What f16 storage costs a saved model's evaluation, layer by layer: the same images through the model in f64 on
//! the CPU (`graph::cpu`), again in f64 with chosen tensors rounded to f16 after the op that writes them, and on the
//! GPU in f32 and in f16. Prints each activation's relative error in the rounded f64 pass against the exact one
//! (the cost of the rounding itself, free of any kernel), then the logits of the rounded pass and of both GPU runs
//! against the exact logits.
//!
//!     cargo run --release --example precision_probe -- [--round WHAT] MODEL.safetensors|imagenet IMAGE...
//!
//! WHAT (default `activations`, what the f16 executor stores):
//!   activations    every activation (and the input image)
//!   weights        every convolution's and linear layer's weight, activations exact (what an f16 weight copy
//!                  would cost; the f16 executor reads f32 weights)
//!   all            both
//!   only=NODE      the output of node NODE alone
//!   keep=A,B,...   every activation but those of nodes whose names contain A, B, ...
//!
//! BENCHMARKS.md "Mixed precision" has what it found on the default job's models.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use wgtune::data::{eval_crop, load_rgb, normalize_into};
use wgtune::gpu::{AdapterRequest, Gpu, Precision};
use wgtune::graph::{cpu, Op, TensorId, TensorKind};
use wgtune::nn::model::{load_model, ModelSpec, EFFNET_LITE0_IMAGENET};
use wgtune::nn::weights::Weights;
use wgtune::reference::widen;
use wgtune::{Error, Result};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Which tensors the f64 pass rounds to f16.
enum Round {
    Activations,
    Weights,
    All,
    Only(String),
    Keep(Vec<String>),
}

impl Round {
    fn parse(s: &str) -> Result<Round> {
        Ok(match s {
            "activations" => Round::Activations,
            "weights" => Round::Weights,
            "all" => Round::All,
            _ if s.starts_with("only=") => Round::Only(s[5..].to_string()),
            _ if s.starts_with("keep=") => Round::Keep(s[5..].split(',').map(str::to_string).collect()),
            _ => {
                return Err(Error::Invalid(format!(
                    "--round '{s}': expected activations, weights, all, only=NODE or keep=A,B,..."
                )))
            }
        })
    }

    fn weights(&self) -> bool {
        matches!(self, Round::Weights | Round::All)
    }

    fn input(&self) -> bool {
        matches!(self, Round::Activations | Round::All | Round::Keep(_))
    }

    /// Whether the activations written by the node `name` are rounded.
    fn output_of(&self, name: &str) -> bool {
        match self {
            Round::Activations | Round::All => true,
            Round::Weights => false,
            Round::Only(node) => name == node,
            Round::Keep(kept) => !kept.iter().any(|k| name.contains(k.as_str())),
        }
    }
}

fn half(v: &mut [f64]) {
    v.iter_mut().for_each(|x| *x = half::f16::from_f64(*x).to_f64());
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
    let mut args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let mut round = Round::Activations;
    if args.first().is_some_and(|a| a.as_os_str() == "--round") {
        let what = args.get(1).ok_or_else(|| Error::Invalid("--round needs a value".into()))?;
        round = Round::parse(&what.to_string_lossy())?;
        args.drain(..2);
    }
    let [model, images @ ..] = args.as_slice() else {
        return Err(Error::Invalid("usage: precision_probe [--round WHAT] MODEL.safetensors|imagenet IMAGE...".into()));
    };
    if images.is_empty() {
        return Err(Error::Invalid("give at least one image".into()));
    }
    let weights = if model.as_os_str() == "imagenet" {
        Weights::from_static(EFFNET_LITE0_IMAGENET, "embedded EfficientNet-Lite0 (ImageNet)")?
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
    let labels = vec![0; n];
    let exact = cpu::forward(&graph, &values, &widen(&input), &labels, false, 1);
    let mut rounded = values.clone();
    if round.weights() {
        for node in &graph.nodes {
            if let Op::Conv2d { w, .. } | Op::Linear { w, .. } = &node.op {
                rounded.entry(*w).and_modify(|v| half(v));
            }
        }
    }
    let mut image = widen(&input);
    if round.input() {
        half(&mut image);
    }
    let mut rows = Vec::new();
    let sim = cpu::forward_observed(&graph, &rounded, &image, &labels, false, 1, &mut |node, t| {
        for y in node.op.outputs() {
            if graph.tensors[y.0].kind == TensorKind::Activation {
                if round.output_of(&node.name) {
                    t.entry(y).and_modify(|v| half(v));
                }
                rows.push((node.name.clone(), node.op.kind().name(), y));
            }
        }
    });
    println!("{:<40} {:<22} {:>10} {:>10}", "node", "op", "rel rms", "rel max");
    for (name, kind, y) in &rows {
        let (rms, max) = relative(&sim[y], &exact[y]);
        println!("{name:<40} {kind:<22} {rms:>10.3e} {max:>10.3e}");
    }
    let (logits, ..) = graph.nodes.iter().find_map(|n| n.op.as_loss()).expect("a model has a loss node");
    let e = &exact[&logits];
    let classes = e.len() / n;
    let argmax = |v: &[f64], i: usize| {
        (0..classes).max_by(|&a, &b| v[i * classes + a].total_cmp(&v[i * classes + b])).unwrap_or(0)
    };
    for (what, v) in [("f64, rounded", &sim[&logits]), ("GPU f32", &gpu32), ("GPU f16", &gpu16)] {
        let (rms, max) = relative(v, e);
        let flips = (0..n).filter(|&i| argmax(v, i) != argmax(e, i)).count();
        println!("logits {what:<13} vs f64: rel rms {rms:.3e}, rel max {max:.3e}, top-1 differs on {flips} of {n}");
    }
    Ok(())
}
