//! wgtune's half of the step-level comparison with PyTorch (`python3 tools/torch_reference.py step-check`, which
//! runs this and compares): one training step of EfficientNet-Lite0 with fastai's head, dropout off, on a batch
//! and weights PyTorch wrote.
//!
//!     cargo run --release --example torch_step -- CASE.safetensors OUT.safetensors [EXACT.safetensors]
//!
//! CASE holds `image` (B, 3, S, S) already normalized, `label` (B) as float class indices, and every parameter and
//! running statistic under wgtune's names; its metadata holds `lrs` (one per parameter group, JSON), `mom` and
//! `wd`. OUT gets `loss` (1), `grad.NAME` for every parameter (forward and backward in training mode, before any
//! update), `running.NAME` for every running statistic after that forward pass, and `step.NAME` for every
//! parameter after one optimizer step (fastai's Adam, from fresh state) taken from the case's weights.
//!
//! EXACT, when given, gets the same `loss`, `grad.NAME` and `running.NAME` in f64 from wgtune's CPU graph
//! (`graph::cpu`: the same graph, op by op through the f64 reference functions each GPU kernel is tested
//! against): how wgtune's model compares with PyTorch's free of float32 rounding.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use safetensors::tensor::{Dtype, TensorView};

use wgtune::gpu::{AdapterRequest, Gpu};
use wgtune::graph::executor::{Executor, ExecutorConfig, NamedTensor};
use wgtune::graph::{cpu, Graph, TensorId, TensorKind};
use wgtune::nn::weights::{load_into, write_atomically, write_bytes_atomically, Weights};
use wgtune::nn::Arch;
use wgtune::ops::optim::Hyper;
use wgtune::reference::widen;
use wgtune::{Error, Result};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let (case, out, exact) = match args.as_slice() {
        [case, out] => (case, out, None),
        [case, out, exact] => (case, out, Some(exact)),
        _ => {
            return Err(Error::Invalid("usage: torch_step CASE.safetensors OUT.safetensors [EXACT.safetensors]".into()))
        }
    };
    let weights = Weights::open(case)?;
    let need = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
        weights.get(name)?.ok_or_else(|| Error::Invalid(format!("'{}' has no tensor '{name}'", case.display())))
    };
    let meta = weights.metadata()?;
    let number = |key: &str| -> Result<f64> {
        meta.get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::Invalid(format!("'{}': metadata '{key}' is missing or not a number", case.display())))
    };
    let lrs: Vec<f64> = meta.get("lrs").and_then(|v| serde_json::from_str(v).ok()).ok_or_else(|| {
        Error::Invalid(format!("'{}': metadata 'lrs' is missing or not a JSON list of numbers", case.display()))
    })?;
    let (mom, wd) = (number("mom")?, number("wd")?);
    let (image_shape, image) = need("image")?;
    let (_, label) = need("label")?;
    let labels: Vec<u32> = label.iter().map(|&l| l as u32).collect();
    let &[batch, 3, size, width] = image_shape.as_slice() else {
        return Err(Error::Invalid(format!("'image' has shape {image_shape:?}, expected (batch, 3, size, size)")));
    };
    if size != width || labels.len() != batch {
        return Err(Error::Invalid(format!("'image' {image_shape:?} and 'label' ({}) disagree", labels.len())));
    }
    let classes = match weights.shapes()?.get("head.8.weight").map(Vec::as_slice) {
        Some(&[classes, _]) => classes,
        _ => return Err(Error::Invalid(format!("'{}' has no 2-d tensor 'head.8.weight'", case.display()))),
    };

    let gpu = Arc::new(Gpu::new(&AdapterRequest::from_env())?);
    eprintln!("adapter: {}", gpu.summary().name);
    let graph = Arch::EffnetLite0.with_fastai_head(batch, size, classes, 0.1, 0.0)?;
    if lrs.len() != graph.groups() {
        return Err(Error::Invalid(format!("{} learning rates for {} parameter groups", lrs.len(), graph.groups())));
    }
    let mut ex = Executor::new(gpu, graph, ExecutorConfig::default())?;
    let ignore = |n: &str| n == "image" || n == "label";
    load_into(&ex, &weights, |n| n.to_string(), |_| false, ignore)?;

    let g = ex.graph();
    let of_kind = |state: bool| -> Vec<(String, Vec<usize>)> {
        g.tensors
            .iter()
            .filter(|t| match t.kind {
                TensorKind::Param { .. } => !state,
                TensorKind::State => state,
                _ => false,
            })
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect()
    };
    let (params, running) = (of_kind(false), of_kind(true));
    let mut tensors: Vec<NamedTensor> = Vec::new();
    let metrics = ex.compute_gradients(&image, &labels)?;
    tensors.push(("loss".into(), vec![1], vec![metrics.loss]));
    for (name, shape) in &params {
        tensors.push((format!("grad.{name}"), shape.clone(), ex.read_grad(name)?));
    }
    for (name, shape) in &running {
        tensors.push((format!("running.{name}"), shape.clone(), ex.read_value(name)?));
    }

    // One optimizer step from the case's weights and running statistics, with fresh optimizer state.
    load_into(&ex, &weights, |n| n.to_string(), |_| false, ignore)?;
    ex.reset_optimizer()?;
    for (g, &lr) in lrs.iter().enumerate() {
        ex.set_hyper(g, Hyper { lr, mom, wd, ..Hyper::default() })?;
    }
    ex.train_step(&image, &labels)?;
    ex.wait_metrics()?;
    for (name, shape) in &params {
        tensors.push((format!("step.{name}"), shape.clone(), ex.read_value(name)?));
    }
    write_atomically(out, &tensors, HashMap::new())?;
    eprintln!("loss {:.6}; wrote {} tensors to {}", metrics.loss, tensors.len(), out.display());
    if let Some(exact) = exact {
        exact_pass(ex.graph(), &weights, &image, &labels, exact)?;
    }
    Ok(())
}

/// The forward and backward pass of `graph` in f64 on the CPU, on the case's f32 weights and batch (widened):
/// the loss, every parameter's gradient and every running statistic after the pass, written as f64 to `path`.
fn exact_pass(graph: &Graph, weights: &Weights, image: &[f32], labels: &[u32], path: &Path) -> Result<()> {
    let started = Instant::now();
    let mut values = HashMap::new();
    for (i, t) in graph.tensors.iter().enumerate() {
        if matches!(t.kind, TensorKind::Param { .. } | TensorKind::State) {
            let (_, v) =
                weights.get(&t.name)?.ok_or_else(|| Error::Invalid(format!("the case has no '{}'", t.name)))?;
            values.insert(TensorId(i), widen(&v));
        }
    }
    let forward = cpu::forward(graph, &values, &widen(image), labels, true, 1);
    let grads = cpu::backward(graph, &forward, labels, true, 1);
    let running = cpu::running_statistics(graph, &forward);
    let loss = graph.find("loss.loss").ok_or_else(|| Error::Invalid("the graph has no 'loss.loss'".into()))?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f64>)> = vec![("loss".into(), vec![1], forward[&loss].clone())];
    for (i, t) in graph.tensors.iter().enumerate() {
        let (prefix, from) = match t.kind {
            TensorKind::Param { .. } => ("grad", &grads),
            TensorKind::State => ("running", &running),
            _ => continue,
        };
        let v = from.get(&TensorId(i)).cloned().unwrap_or_else(|| vec![0.0; t.numel()]);
        tensors.push((format!("{prefix}.{}", t.name), t.shape.clone(), v));
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.into_iter().map(|(n, s, v)| (n, s, bytemuck::cast_slice(&v).to_vec())).collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| Ok((n.as_str(), TensorView::new(Dtype::F64, s.clone(), b)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| Error::Invalid(format!("'{}': {e}", path.display())))?;
    let data = safetensors::serialize(views, None).map_err(|e| Error::Invalid(format!("'{}': {e}", path.display())))?;
    write_bytes_atomically(path, &data)?;
    eprintln!(
        "f64 CPU pass: loss {:.9}; wrote {} tensors to {} ({:.1} s)",
        forward[&loss][0],
        bytes.len(),
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
