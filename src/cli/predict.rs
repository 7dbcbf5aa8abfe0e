//! `wgtune predict`: a saved model as a plain function from image files to top-5 classes.

use super::bench::open_gpu;

/// One prediction: the five most probable classes.
pub(crate) fn top5(probs: &[f32], classes: &[String]) -> Vec<serde_json::Value> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    order
        .into_iter()
        .take(5)
        .map(|i| serde_json::json!({"class_index": i, "label": classes.get(i).cloned().unwrap_or_default(), "prob": probs[i]}))
        .collect()
}

pub(crate) fn predict(
    adapter: Option<String>,
    model: Option<std::path::PathBuf>,
    arch: Option<wgtune::nn::Arch>,
    bs: usize,
    json: bool,
    images: &[std::path::PathBuf],
) -> anyhow::Result<()> {
    use wgtune::data::{load_rgb, normalize_into, resize_center_crop};
    use wgtune::nn::model::{load_model, ModelSpec, EFFNET_LITE0_IMAGENET};
    use wgtune::nn::weights::Weights;
    let weights = match &model {
        Some(path) => Weights::open(path)?,
        None => Weights::from_static(EFFNET_LITE0_IMAGENET, "embedded EfficientNet-Lite0 (ImageNet)")?,
    };
    let spec = ModelSpec::of_weights(&weights, arch)?;
    // Decode and preprocess every image first; a bad file is reported and skipped.
    let mut failures = 0;
    let mut ready: Vec<(&std::path::PathBuf, Vec<u8>)> = Vec::new();
    for path in images {
        match load_rgb(path) {
            Ok(img) => ready.push((path, resize_center_crop(&img, spec.input_size))),
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
        let gpu = std::sync::Arc::new(open_gpu(adapter)?);
        let (mut ex, _) = load_model(gpu, &spec, &weights, batch)?;
        let k = spec.classes.len();
        for chunk in ready.chunks(batch) {
            let mut input = Vec::with_capacity(batch * 3 * spec.input_size * spec.input_size);
            for i in 0..batch {
                // A short last batch repeats its last image; those rows are not reported.
                normalize_into(&chunk[i.min(chunk.len() - 1)].1, &spec.normalization, &mut input);
            }
            let probs = ex.predict(&input)?;
            for (i, (path, _)) in chunk.iter().enumerate() {
                let top = top5(&probs[i * k..(i + 1) * k], &spec.classes);
                if json {
                    println!("{}", serde_json::json!({"file": path.display().to_string(), "top": top}));
                } else {
                    println!("{}", path.display());
                    for (rank, t) in top.iter().enumerate() {
                        println!(
                            "  {}. {:>6.2}%  {} ({})",
                            rank + 1,
                            t["prob"].as_f64().unwrap_or(0.0) * 100.0,
                            t["label"].as_str().unwrap_or(""),
                            t["class_index"]
                        );
                    }
                }
            }
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} of {} images could not be read", images.len());
    }
    Ok(())
}
