//! Pretrained models end to end: the embedded EfficientNet-Lite0 against an independent numpy forward pass
//! (tools/effnet_reference.py, outputs stored in tests/fixtures/effnet_lite0), weights loading errors, save/load.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use wgtune::gpu::{AdapterRequest, Gpu};
use wgtune::graph::executor::{Executor, ExecutorConfig};
use wgtune::nn::weights::{load_into, Weights};
use wgtune::nn::Arch;

fn gpu() -> Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new(&AdapterRequest::from_env()) {
        Ok(g) => Arc::new(g),
        Err(e) => panic!("model tests need an adapter and found none: {e}"),
    })
    .clone()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures/effnet_lite0").join(name)).expect("fixture")
}

/// HWC u8 crops -> normalized NCHW f32 for EfficientNet-Lite: (x - 127) / 128.
fn to_input(crops: &[Vec<u8>]) -> Vec<f32> {
    let mut out = Vec::new();
    for crop in crops {
        for c in 0..3 {
            out.extend(crop.chunks_exact(3).map(|px| (px[c] as f32 - 127.0) / 128.0));
        }
    }
    out
}

#[test]
fn effnet_lite0_logits_match_the_numpy_reference() {
    let g = Arch::EffnetLite0.classifier(2, 224, 1000).unwrap();
    let mut ex = Executor::new(gpu(), g, ExecutorConfig::default()).unwrap();
    let weights = Weights::open(&root().join("assets/efficientnet_lite0.safetensors")).unwrap();
    let report = load_into(&ex, &weights, |n| n.to_string(), |_| false, |_| false).unwrap();
    assert_eq!(report.loaded.len(), 247, "all 247 tensors of the file are used");
    let input = to_input(&[fixture("chelsea.crop.u8"), fixture("coffee.crop.u8")]);
    let logits = ex.predict_logits(&input).unwrap();
    for (i, name) in ["chelsea", "coffee"].iter().enumerate() {
        let want: Vec<f32> = bytemuck::pod_collect_to_vec(&fixture(&format!("{name}.logits.f32")));
        let got = &logits[i * 1000..(i + 1) * 1000];
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("{name}: max |logit| {scale}, worst |diff| {worst:e}");
        assert!(worst <= 1e-3 * scale, "{name}: worst logit difference {worst} > 1e-3 x {scale}");
        let top = got.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        let want_top = want.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(top, want_top, "{name}");
    }
    // ImageNet 281-285 are the domestic cats; 967 is espresso.
    let top =
        |i: usize| logits[i * 1000..(i + 1) * 1000].iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    assert!((281..=285).contains(&top(0)), "the cat is classified as {}", top(0));
    assert_eq!(top(1), 967);
}

#[test]
fn loading_errors_name_the_tensor_and_both_shapes() {
    let g = Arch::Resnet18.classifier(1, 32, 10).unwrap();
    let ex = Executor::new(gpu(), g, ExecutorConfig::default()).unwrap();
    let weights = Weights::open(&root().join("assets/efficientnet_lite0.safetensors")).unwrap();
    let err = load_into(&ex, &weights, |n| n.to_string(), |_| false, |_| false).unwrap_err().to_string();
    assert!(err.contains("conv1.weight") && err.contains("[64, 3, 7, 7]"), "{err}");
    let err = load_into(
        &ex,
        &weights,
        |n| if n == "conv1.weight" { "_conv_stem.weight".into() } else { n.into() },
        |_| false,
        |_| false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("_conv_stem.weight") && err.contains("[32, 3, 3, 3]") && err.contains("[64, 3, 7, 7]"),
        "{err}"
    );
    let missing = Weights::open(&root().join("no/such/file.safetensors")).err().expect("missing file").to_string();
    assert!(missing.contains("no/such/file.safetensors"), "{missing}");
}
