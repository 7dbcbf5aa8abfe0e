//! Pretrained models end to end: the embedded EfficientNet-Lite0, the ResNets and ConvNeXts against independent
//! numpy forward passes (tools/*_reference.py, outputs stored in tests/fixtures), weights loading errors,
//! architecture detection, save/load.

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

/// Seeded random weights drawn exactly as tools/resnet_reference.py draws them (same generator, same order).
fn seeded_resnet_weights(ex: &Executor) {
    let g = ex.graph();
    let mut names: Vec<(String, Vec<usize>)> = g
        .tensors
        .iter()
        .filter(|t| matches!(t.kind, wgtune::graph::TensorKind::Param { .. } | wgtune::graph::TensorKind::State))
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    names.sort();
    let mut rng = wgtune::reference::SplitMix(2024);
    for (name, shape) in names {
        let n: usize = shape.iter().product();
        let values = if shape.len() >= 2 {
            let a = (6.0 / shape[1..].iter().product::<usize>() as f64).sqrt();
            rng.vec_f32(n, -a, a)
        } else if name.ends_with("running_var") || name.ends_with(".weight") {
            rng.vec_f32(n, 0.5, 1.5)
        } else {
            rng.vec_f32(n, -0.1, 0.1)
        };
        ex.write_value(&name, &values).unwrap();
    }
}

fn check_resnet(arch: Arch) {
    let g = arch.classifier(1, 64, 1000).unwrap();
    let mut ex = Executor::new(gpu(), g, ExecutorConfig::default()).unwrap();
    seeded_resnet_weights(&ex);
    let input = wgtune::reference::SplitMix(7).vec_f32(3 * 64 * 64, -1.0, 1.0);
    let got = ex.predict_logits(&input).unwrap();
    let bytes = std::fs::read(root().join(format!("tests/fixtures/resnet/{}.logits.f32", arch.name()))).unwrap();
    let want: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("{}: max |logit| {scale}, worst |diff| {worst:e}", arch.name());
    // Random weights make the logits large (up to ~3e4 for ResNet-50); f32 against f64 over 50 layers: 1e-4 of the
    // largest logit.
    assert!(worst <= 1e-4 * scale, "{}: worst logit difference {worst} vs scale {scale}", arch.name());
}

#[test]
fn resnet18_logits_match_the_numpy_reference() {
    check_resnet(Arch::Resnet18);
}

#[test]
fn resnet34_logits_match_the_numpy_reference() {
    check_resnet(Arch::Resnet34);
}

#[test]
fn resnet50_logits_match_the_numpy_reference() {
    check_resnet(Arch::Resnet50);
}

/// Seeded random weights drawn exactly as tools/convnext_reference.py (seed 2025) and tools/vit_reference.py (seed
/// 2026) draw them (same generator, same order of timm's names): tensors of 2-D and up uniform in +-sqrt(6 /
/// fan_in), LayerNorm weights in [0.5, 1.5), every other 1-D tensor in [-0.1, 0.1). Returns them by name with the
/// graph's shapes.
fn seeded_timm_weights(g: &wgtune::graph::Graph, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut names: Vec<(String, Vec<usize>)> = g
        .tensors
        .iter()
        .filter(|t| matches!(t.kind, wgtune::graph::TensorKind::Param { .. }))
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    names.sort();
    let mut rng = wgtune::reference::SplitMix(seed);
    let norm_weight = |n: &str| {
        ["norm.weight", "norm1.weight", "norm2.weight", "downsample.0.weight"].iter().any(|s| n.ends_with(s))
            || n == "stem.1.weight"
    };
    names
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let values = if shape.len() >= 2 {
                let a = (6.0 / shape[1..].iter().product::<usize>() as f64).sqrt();
                rng.vec_f32(n, -a, a)
            } else if norm_weight(&name) {
                rng.vec_f32(n, 0.5, 1.5)
            } else {
                rng.vec_f32(n, -0.1, 0.1)
            };
            (name, shape, values)
        })
        .collect()
}

/// timm's classifier (64 px, seeded weights) against tools/convnext_reference.py or tools/vit_reference.py, each
/// checked against timm (1e-14 in float64): within 1e-4 of the largest logit.
fn check_timm(arch: Arch, fixtures: &str, seed: u64) {
    let g = arch.classifier(1, 64, 1000).unwrap();
    let weights = seeded_timm_weights(&g, seed);
    let mut ex = Executor::new(gpu(), g, ExecutorConfig::default()).unwrap();
    for (name, _, values) in &weights {
        ex.write_value(name, values).unwrap();
    }
    assert_reference_logits(&mut ex, &format!("{fixtures}/{}", arch.name()));
}

/// The logits of the seeded 64 px input (SplitMix(7), as the numpy references draw it) against
/// tests/fixtures/`fixture`.logits.f32: within 1e-4 of the largest logit.
fn assert_reference_logits(ex: &mut Executor, fixture: &str) {
    let input = wgtune::reference::SplitMix(7).vec_f32(3 * 64 * 64, -1.0, 1.0);
    let got = ex.predict_logits(&input).unwrap();
    let bytes = std::fs::read(root().join(format!("tests/fixtures/{fixture}.logits.f32"))).unwrap();
    let want: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("{fixture}: max |logit| {scale}, worst |diff| {worst:e}");
    assert!(worst <= 1e-4 * scale, "{fixture}: worst logit difference {worst} vs scale {scale}");
}

#[test]
fn convnext_atto_logits_match_the_numpy_reference() {
    check_timm(Arch::ConvnextAtto, "convnext", 2025);
}

#[test]
fn convnext_tiny_logits_match_the_numpy_reference() {
    check_timm(Arch::ConvnextTiny, "convnext", 2025);
}

/// timm's resample_abs_pos_embed (PyTorch's antialiased bicubic; fixtures from tools/vit_reference.py --timm):
/// shrinking 14x14 to 4x4 (224 px weights at 64 px), growing 4x4 to 6x6, 5x5 to 3x3; the class token's row kept.
#[test]
fn position_embeddings_resample_as_timm_does() {
    use wgtune::nn::vit::resample_pos_embed;
    let read = |name: &str| -> Vec<f32> {
        bytemuck::pod_collect_to_vec(&std::fs::read(root().join("tests/fixtures/vit").join(name)).unwrap())
    };
    for (g0, g1) in [(14, 4), (4, 6), (5, 3)] {
        let from = read(&format!("pos_embed_{g0}.f32"));
        let want = read(&format!("pos_embed_{g0}_to_{g1}.f32"));
        let got = resample_pos_embed(&from, &[1, 1 + g0 * g0, 3], &[1, 1 + g1 * g1, 3]).unwrap();
        assert_eq!(got.len(), want.len());
        assert_eq!(got[..3], from[..3], "the class token's row");
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "{g0}x{g0} -> {g1}x{g1}: worst difference {worst}");
    }
    assert!(resample_pos_embed(&[0.0; 33], &[1, 11, 3], &[1, 17, 3]).is_none(), "10 patches are no square grid");
}

#[test]
fn deit_tiny_logits_match_the_numpy_reference() {
    check_timm(Arch::DeitTiny, "vit", 2026);
}

#[test]
fn vit_small_logits_match_the_numpy_reference() {
    check_timm(Arch::VitSmall, "vit", 2026);
}

/// A file in timm's layout (convnext_tiny's MLP weights as Linear (out, in), no wgtune metadata, no --arch) is
/// recognized as convnext_tiny, loads into the 1x1 convolutions, and gives the reference logits.
#[test]
fn a_timm_convnext_file_is_detected_and_loads_its_linear_mlp_weights() {
    use wgtune::nn::model::{load_model, ModelSpec};
    let g = Arch::ConvnextTiny.classifier(1, 64, 1000).unwrap();
    let timm_layout: Vec<(String, Vec<usize>, Vec<f32>)> = seeded_timm_weights(&g, 2025)
        .into_iter()
        .map(|(name, shape, values)| {
            let linear = name.contains(".mlp.fc") && name.ends_with(".weight");
            (name, if linear { shape[..2].to_vec() } else { shape }, values)
        })
        .collect();
    assert!(timm_layout.iter().any(|(n, s, _)| n == "stages.0.blocks.0.mlp.fc1.weight" && s == &[384, 96]));
    let dir = std::env::temp_dir().join(format!("wgtune-timm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    wgtune::nn::weights::write_atomically(&path, &timm_layout, Default::default()).unwrap();
    let weights = Weights::open(&path).unwrap();
    let spec = ModelSpec { input_size: 64, ..ModelSpec::of_weights(&weights, None).unwrap() };
    assert_eq!(spec.arch, Arch::ConvnextTiny);
    let (mut ex, report) = load_model(gpu(), &spec, &weights, 1, wgtune::gpu::Precision::F32).unwrap();
    assert!(report.kept_initial.is_empty() && report.ignored.is_empty(), "{report:?}");
    assert_reference_logits(&mut ex, "convnext/convnext_tiny");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// timm's drop_path_rate: a drop path after every ConvNeXt block but the first, its rate rising linearly to the
/// rate given at the last; refused where there is none.
#[test]
fn convnext_drop_path_rises_linearly_over_the_blocks() {
    use wgtune::graph::Op;
    use wgtune::nn::TrainOptions;
    let opts = TrainOptions { drop_path: 0.2, ..TrainOptions::default() };
    let g = Arch::ConvnextAtto.with_fastai_head_and_loss(2, 32, 3, opts).unwrap();
    let rates: Vec<f64> =
        g.nodes.iter().filter_map(|n| if let Op::DropPath { p, .. } = n.op { Some(p) } else { None }).collect();
    // 12 blocks (2 + 2 + 6 + 2): rates k / 11 * 0.2 for k = 1..=11.
    assert_eq!(rates.len(), 11);
    for (k, r) in rates.iter().enumerate() {
        assert!((r - 0.2 * (k + 1) as f64 / 11.0).abs() < 1e-12, "block {}: {r}", k + 1);
    }
    let e = Arch::Resnet18.with_fastai_head_and_loss(2, 32, 3, opts).unwrap_err();
    assert!(e.to_string().contains("resnet18 has no drop path"), "{e}");
}

/// Every architecture but the ViTs is told apart from the others by its tensor names and shapes alone (a ViT and
/// a DeiT of one size have the same tensors and differ in their input normalization: those need --arch).
#[test]
fn every_architecture_is_detected_from_its_tensors() {
    for arch in Arch::ALL {
        let g = arch.classifier(1, 32, 1000).unwrap();
        let shapes = g
            .tensors
            .iter()
            .filter(|t| matches!(t.kind, wgtune::graph::TensorKind::Param { .. } | wgtune::graph::TensorKind::State))
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        let want = if arch.vit().is_some() { None } else { Some(arch) };
        assert_eq!(Arch::detect(&shapes), want, "{arch}");
    }
    assert_eq!(Arch::detect(&[("fc.weight".to_string(), vec![2, 3])].into_iter().collect()), None);
}

/// A fine-tuned model (fastai head, class names, size, normalization in the metadata) saved, loaded and rebuilt
/// from its file alone gives identical logits.
#[test]
fn save_and_load_round_trip_gives_identical_logits() {
    use wgtune::nn::model::{load_model, save_model, Head, ModelSpec, SINGLE_LABEL};
    use wgtune::ops::loss::Loss;
    // Single-label, and multi-label (the task and threshold travel in the metadata).
    for (i, loss) in [SINGLE_LABEL, Loss::SigmoidBinaryCrossEntropy { threshold: 0.3 }].into_iter().enumerate() {
        let spec = ModelSpec {
            arch: Arch::Resnet18,
            head: Head::Fastai,
            classes: vec!["cat".into(), "dog".into(), "fish".into()],
            input_size: 32,
            normalization: Arch::Resnet18.normalization(),
            loss,
        };
        let mut ex = Executor::new(gpu(), spec.graph(2, 0.1).unwrap(), ExecutorConfig::default()).unwrap();
        seeded_resnet_weights_partial(&ex);
        let input = wgtune::reference::SplitMix(9).vec_f32(2 * 3 * 32 * 32, -1.0, 1.0);
        let before = ex.predict_logits(&input).unwrap();
        let dir = std::env::temp_dir().join(format!("wgtune-roundtrip-{}-{i}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        save_model(&ex, &spec, &path).unwrap();
        let weights = Weights::open(&path).unwrap();
        let loaded_spec = ModelSpec::of_weights(&weights, None).unwrap();
        assert_eq!(loaded_spec, spec);
        let (mut ex2, report) = load_model(gpu(), &loaded_spec, &weights, 2, wgtune::gpu::Precision::F32).unwrap();
        assert!(report.kept_initial.is_empty() && report.ignored.is_empty(), "{report:?}");
        let after = ex2.predict_logits(&input).unwrap();
        assert!(before.iter().zip(&after).all(|(a, b)| a.to_bits() == b.to_bits()), "{before:?} vs {after:?}");
        if loss.multi_label() {
            // A multi-label model's probabilities are the sigmoid of each logit, not a softmax.
            let probs = ex2.predict(&input).unwrap();
            for (p, x) in probs.iter().zip(&after) {
                assert!((p - 1.0 / (1.0 + (-x).exp())).abs() < 1e-6, "{p} vs sigmoid({x})");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Change every parameter and statistic away from its initial value, so the round trip proves they all travel.
fn seeded_resnet_weights_partial(ex: &Executor) {
    let mut rng = wgtune::reference::SplitMix(5);
    for t in &ex.graph().tensors {
        if matches!(t.kind, wgtune::graph::TensorKind::Param { .. } | wgtune::graph::TensorKind::State) {
            let lo = if t.name.ends_with("running_var") { 0.5 } else { -0.5 };
            ex.write_value(&t.name, &rng.vec_f32(t.numel(), lo, lo + 1.0)).unwrap();
        }
    }
}

/// f16 and bf16 files load (widened to f32); a tensor the model does not use is an error naming it, unless the
/// caller allows it.
#[test]
fn half_precision_files_load_and_unexpected_tensors_are_named() {
    use safetensors::tensor::{Dtype, TensorView};
    let mut g = wgtune::graph::Graph::new();
    let x = g.input("image", &[1, 4]);
    let labels = g.labels("label", 1);
    let logits = g.linear("fc", x, 2, true).unwrap();
    g.cross_entropy("loss", logits, labels, 0.0).unwrap();
    let ex = Executor::new(gpu(), g, ExecutorConfig::default()).unwrap();
    let w = [0.5f32, -1.25, 2.0, 0.125, 3.5, -0.75, 1.0, 0.0];
    let b = [0.25f32, -2.0];
    let dir = std::env::temp_dir().join(format!("wgtune-half-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    fn f16_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()
    }
    fn bf16_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect()
    }
    for (dtype, bytes) in [(Dtype::F16, f16_bytes as fn(&[f32]) -> Vec<u8>), (Dtype::BF16, bf16_bytes)] {
        let (wb, bb, extra) = (bytes(&w), bytes(&b), bytes(&[1.0]));
        let tensors = vec![
            ("fc.weight", TensorView::new(dtype, vec![2, 4], &wb).unwrap()),
            ("fc.bias", TensorView::new(dtype, vec![2], &bb).unwrap()),
            ("stray.weight", TensorView::new(dtype, vec![1], &extra).unwrap()),
        ];
        let path = dir.join(format!("{dtype:?}.safetensors"));
        safetensors::serialize_to_file(tensors, None, &path).unwrap();
        let weights = Weights::open(&path).unwrap();
        let err = load_into(&ex, &weights, |n| n.to_string(), |_| false, |_| false).unwrap_err().to_string();
        assert!(err.contains("stray.weight") && err.contains("does not use"), "{err}");
        let report = load_into(&ex, &weights, |n| n.to_string(), |_| false, |n| n.starts_with("stray")).unwrap();
        assert_eq!(report.ignored, vec!["stray.weight".to_string()]);
        assert_eq!(ex.read_value("fc.weight").unwrap(), w, "{dtype:?} (all values exact in half precision)");
        assert_eq!(ex.read_value("fc.bias").unwrap(), b);
        // A raw file has no wgtune metadata: the architecture must be named, and then means ImageNet.
        let err = wgtune::nn::model::ModelSpec::of_weights(&weights, None).unwrap_err().to_string();
        assert!(err.contains("--arch"), "{err}");
        let spec = wgtune::nn::model::ModelSpec::of_weights(&weights, Some(Arch::Resnet18)).unwrap();
        assert_eq!((spec.classes.len(), spec.input_size), (1000, 224));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
