//! `wgtune predict`: a saved model as a plain function from image files to top-5 classes; `wgtune export`: the
//! same model as an ONNX file.

use wgtune::nn::model::{ModelSpec, EFFNET_LITE0_IMAGENET};
use wgtune::nn::weights::Weights;
use wgtune::nn::Arch;

use super::args::{ExportArgs, PredictArgs};
use super::bench::open_gpu;

/// The weights of `--model` (the embedded ImageNet EfficientNet-Lite0 without one) and their spec.
fn open_model(model: Option<&std::path::Path>, arch: Option<Arch>) -> anyhow::Result<(Weights, ModelSpec)> {
    let weights = match model {
        Some(path) => Weights::open(path)?,
        None => Weights::from_static(EFFNET_LITE0_IMAGENET, "embedded EfficientNet-Lite0 (ImageNet)")?,
    };
    let spec = ModelSpec::of_weights(&weights, arch)?;
    Ok((weights, spec))
}

/// `wgtune export`: write the model as ONNX, atomically, and say what the file expects and gives.
pub(crate) fn export(args: ExportArgs) -> anyhow::Result<()> {
    use wgtune::export::{onnx, OnnxOptions};
    let (weights, spec) = open_model(args.model.as_deref(), args.arch)?;
    if args.model.as_deref().is_some_and(|m| same_file(m, &args.onnx)) {
        anyhow::bail!("--onnx '{}' is the model file itself; choose another path", args.onnx.display());
    }
    let opts = OnnxOptions {
        opset: args.opset,
        batch: args.batch.0,
        probabilities: args.probabilities,
        normalize: args.normalize,
    };
    let bytes = onnx(&spec, &weights, &opts)?;
    wgtune::nn::weights::write_bytes_atomically(&args.onnx, &bytes)?;
    let s = spec.input_size;
    let batch = opts.batch.map_or("batch".to_string(), |n| n.to_string());
    println!(
        "wrote {} ({:.1} MB, opset {}): {} with the {} head, {} classes",
        args.onnx.display(),
        bytes.len() as f64 / 1e6,
        opts.opset,
        spec.arch,
        spec.head.name(),
        spec.classes.len()
    );
    if opts.normalize {
        println!("  input   pixels   float32 ({batch}, 3, {s}, {s}): RGB values 0-255 (normalized inside the graph)");
    } else {
        println!(
            "  input   image    float32 ({batch}, 3, {s}, {s}): RGB normalized as {} on values 0-255",
            spec.normalization.describe()
        );
    }
    println!("  output  logits   float32 ({batch}, {})", spec.classes.len());
    if opts.probabilities {
        let how = if spec.multi_label() { "sigmoid of each logit: multi-label" } else { "softmax" };
        println!("  output  probabilities float32 ({batch}, {}): {how}", spec.classes.len());
    }
    println!("  metadata: wgtune.classes, wgtune.input_size, wgtune.normalization, wgtune.architecture, wgtune.input");
    Ok(())
}

/// Whether two paths name one existing file.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// One prediction: the five most probable classes.
pub(crate) fn top5(probs: &[f32], classes: &[String]) -> Vec<serde_json::Value> {
    ranked(probs, classes, (0..probs.len()).collect(), 5)
}

/// The classes `order` (at most `n`), most probable first, as {class_index, label, prob}.
fn ranked(probs: &[f32], classes: &[String], mut order: Vec<usize>, n: usize) -> Vec<serde_json::Value> {
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    order
        .into_iter()
        .take(n)
        .map(|i| serde_json::json!({"class_index": i, "label": classes.get(i).cloned().unwrap_or_default(), "prob": probs[i]}))
        .collect()
}

/// A multi-label prediction: every class whose probability is above `threshold`, most probable first.
pub(crate) fn above_threshold(probs: &[f32], classes: &[String], threshold: f32) -> Vec<serde_json::Value> {
    ranked(probs, classes, (0..probs.len()).filter(|&i| probs[i] > threshold).collect(), probs.len())
}

/// One image's prediction as text: a header line, a line per class (numbered when `ranked`), and its logits.
fn print_prediction(header: &str, classes: &[serde_json::Value], ranked: bool, logits: Option<&[f32]>) {
    println!("{header}");
    for (rank, t) in classes.iter().enumerate() {
        let number = if ranked { format!("{}. ", rank + 1) } else { String::new() };
        println!(
            "  {number}{:>6.2}%  {} ({})",
            t["prob"].as_f64().unwrap_or(0.0) * 100.0,
            t["label"].as_str().unwrap_or(""),
            t["class_index"]
        );
    }
    if let Some(row) = logits {
        let text: Vec<String> = row.iter().map(|v| format!("{v:.4}")).collect();
        println!("  logits: {}", text.join(" "));
    }
}

pub(crate) fn predict(adapter: Option<String>, args: PredictArgs) -> anyhow::Result<()> {
    use wgtune::data::{eval_crop, load_rgb, normalize_into};
    use wgtune::nn::model::load_model;
    let PredictArgs { model, arch, bs, json, logits: with_logits, tta, threshold, precision, images } = args;
    let (weights, mut spec) = open_model(model.as_deref(), arch)?;
    match (&mut spec.loss, threshold) {
        (wgtune::ops::loss::Loss::SigmoidBinaryCrossEntropy { threshold }, Some(t)) => *threshold = t,
        (wgtune::ops::loss::Loss::SoftmaxCrossEntropy { .. }, Some(_)) => {
            anyhow::bail!("--threshold is for multi-label models; this one predicts one class per image")
        }
        _ => {}
    }
    // Decode and preprocess every image first; a bad file is reported and skipped.
    let mut failures = 0;
    let mut ready: Vec<(&std::path::PathBuf, Vec<u8>)> = Vec::new();
    for path in &images {
        match load_rgb(path) {
            Ok(img) => ready.push((path, eval_crop(&img, spec.input_size))),
            Err(e) => {
                failures += 1;
                if json {
                    println!("{}", serde_json::json!({"file": path.display().to_string(), "error": e.to_string()}));
                } else {
                    eprintln!("{}: error: {e}", path.display());
                }
            }
        }
    }
    if !ready.is_empty() {
        let batch = bs.clamp(1, ready.len());
        let gpu = std::sync::Arc::new(open_gpu(adapter, false)?);
        let (mut ex, _) = load_model(gpu, &spec, &weights, batch, precision.into())?;
        let k = spec.classes.len();
        // Test-time augmentation: the training augmentation on the GPU, from a fixed seed (repeatable output).
        let mut rng = wgtune::reference::SplitMix(0x77a);
        if tta {
            let stage =
                wgtune::graph::executor::PixelInput { presize: spec.input_size, normalization: spec.normalization };
            ex.set_pixel_input(stage)?;
        }
        for chunk in ready.chunks(batch) {
            // A short last batch repeats its last image; those rows are not reported.
            let image = |i: usize| &chunk[i.min(chunk.len() - 1)].1;
            // TTA reads the pixels (--logits and --tta exclude each other); otherwise the batch is normalized once
            // for the probabilities and the logits.
            let (probs, logits) = if tta {
                use wgtune::learner::{tta_blend, tta_transforms, TTA_BETA, TTA_VIEWS};
                let pixels: Vec<u8> = (0..batch).flat_map(|i| image(i).iter().copied()).collect();
                let plain = ex.predict_pixels(&pixels)?;
                let aug = wgtune::data::augment::AugmentConfig::default();
                let views = (0..TTA_VIEWS)
                    .map(|_| ex.predict_pixels_with(&pixels, &tta_transforms(&aug, &mut rng, batch)))
                    .collect::<wgtune::Result<Vec<_>>>()?;
                (tta_blend(&plain, &views, TTA_BETA), vec![])
            } else {
                let mut input = Vec::with_capacity(batch * 3 * spec.input_size * spec.input_size);
                for i in 0..batch {
                    normalize_into(image(i), &spec.normalization, &mut input);
                }
                let logits = if with_logits { ex.predict_logits(&input)? } else { vec![] };
                (ex.predict(&input)?, logits)
            };
            for (i, (path, _)) in chunk.iter().enumerate() {
                let top = top5(&probs[i * k..(i + 1) * k], &spec.classes);
                let row = logits.get(i * k..(i + 1) * k);
                let above = match spec.loss {
                    wgtune::ops::loss::Loss::SigmoidBinaryCrossEntropy { threshold } => {
                        Some((threshold, above_threshold(&probs[i * k..(i + 1) * k], &spec.classes, threshold)))
                    }
                    wgtune::ops::loss::Loss::SoftmaxCrossEntropy { .. } => None,
                };
                if json {
                    let mut line = serde_json::json!({"file": path.display().to_string(), "top": top});
                    if let Some((threshold, labels)) = &above {
                        line["labels"] = serde_json::json!(labels);
                        line["threshold"] = serde_json::json!(threshold);
                    }
                    if let Some(row) = row {
                        line["logits"] = serde_json::json!(row);
                    }
                    println!("{line}");
                } else if let Some((threshold, labels)) = &above {
                    // Multi-label: every label above the threshold, most probable first.
                    let noun = if labels.len() == 1 { "label" } else { "labels" };
                    let header = format!("{} ({} {noun} above {threshold})", path.display(), labels.len());
                    print_prediction(&header, labels, false, row);
                } else {
                    print_prediction(&path.display().to_string(), &top, true, row);
                }
            }
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} of {} images could not be read", images.len());
    }
    Ok(())
}
