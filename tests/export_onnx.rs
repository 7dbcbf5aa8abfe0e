//! `wgtune export`: every architecture written as ONNX, checked by onnx's checker and run by onnxruntime (CPU) on
//! the same images as `wgtune predict --json --logits`; the logits must agree to 1e-4 of each image's largest
//! |logit|, at batch 1 and 7 (tools/onnx_check.py does the Python side). And the export's errors.
//!
//! Needs python3 with onnx, onnxruntime, numpy and pillow; when they are missing the tests install them with pip
//! (`.ci/run` installs them first), and fail, never skip, when that is impossible.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use support::{temp_dir, wgtune};
use wgtune::graph::TensorKind;
use wgtune::nn::model::{Head, ModelSpec, EFFNET_LITE0_IMAGENET};
use wgtune::nn::weights::{write_atomically, Weights};
use wgtune::nn::Arch;
use wgtune::reference::SplitMix;

/// The relative tolerance of the comparison (the bound).
const TOLERANCE: &str = "1e-4";

/// python3, once it can import what tools/onnx_check.py needs.
fn python() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let can_import = || {
            Command::new("python3")
                .args(["-c", "import onnx, onnxruntime, numpy, PIL"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !can_import() {
            let pip = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                .args(["onnx", "onnxruntime", "numpy", "pillow"])
                .status();
            assert!(
                pip.is_ok_and(|s| s.success()) && can_import(),
                "these tests need python3 with onnx, onnxruntime, numpy and pillow, and could not install them: \
                 run `python3 -m pip install onnx onnxruntime numpy pillow`"
            );
        }
    });
    "python3"
}

/// Seven `size` x `size` RGB PNGs in `dir`: the two photos of the fixtures and five embedded Fashion-MNIST
/// images, cut to the model's input size here so that wgtune and the Python side read the same pixels.
fn images(dir: &Path, size: usize) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources =
        vec![root.join("tests/fixtures/images/chelsea.png"), root.join("tests/fixtures/images/coffee.png")];
    for class in ["Bag", "Sneaker", "Dress", "Trouser", "Coat"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join("assets/fashion_mnist/valid").join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        sources.push(files[0].clone());
    }
    sources
        .iter()
        .enumerate()
        .map(|(i, src)| {
            // Saved at the presize, so that predict's evaluation crop is a plain cut of whole pixels that
            // tools/onnx_check.py repeats exactly.
            let img = wgtune::data::load_rgb(src).unwrap();
            let presize = wgtune::data::presize_for(size);
            let pixels = wgtune::data::resize_center_crop(&img, presize);
            let out = dir.join(format!("image{i}.png"));
            image::RgbImage::from_raw(presize as u32, presize as u32, pixels).unwrap().save(&out).unwrap();
            out
        })
        .collect()
}

/// A model file for `spec`: the body's tensors from `body` where it has them, everything else from the graph's
/// initial values, with batch-norm statistics and affine parameters drawn at random so that no layer is the
/// identity the defaults would make it.
fn write_model(path: &Path, spec: &ModelSpec, body: Option<&Weights>, seed: u64) {
    let graph = spec.graph(1, 0.1).unwrap();
    let mut rng = SplitMix(seed);
    let mut tensors = vec![];
    for t in &graph.tensors {
        if !matches!(t.kind, TensorKind::Param { .. } | TensorKind::State) {
            continue;
        }
        let pretrained = body.and_then(|w| w.get(&t.name).unwrap()).map(|(_, v)| v);
        let n = t.numel();
        let is_bn = matches!(t.kind, TensorKind::Param { is_bn: true, .. });
        let values = match pretrained {
            Some(v) => v,
            None if t.name.ends_with("running_mean") => rng.vec_f32(n, -0.3, 0.3),
            None if t.name.ends_with("running_var") => rng.vec_f32(n, 0.5, 2.0),
            // ConvNeXt's layer scale: far from its 1e-6 start, so the blocks count in the comparison.
            None if t.name.ends_with(".gamma") => rng.vec_f32(n, 0.2, 0.6),
            // A ViT's class token starts at 1e-6: give it a size that shows in the comparison.
            None if t.name == "cls_token" => rng.vec_f32(n, -0.5, 0.5),
            None if is_bn && t.name.ends_with(".weight") => rng.vec_f32(n, 0.5, 1.5),
            None if is_bn => rng.vec_f32(n, -0.2, 0.2),
            None => t.init.clone().unwrap_or_else(|| vec![0.0; n]),
        };
        tensors.push((t.name.clone(), t.shape.clone(), values));
    }
    write_atomically(path, &tensors, spec.metadata()).unwrap();
}

fn fastai_spec(arch: Arch, size: usize) -> ModelSpec {
    ModelSpec {
        arch,
        head: Head::Fastai,
        classes: ["bag", "sneaker", "dress", "trouser", "coat"].map(String::from).to_vec(),
        input_size: size,
        normalization: arch.normalization(),
        loss: wgtune::nn::model::SINGLE_LABEL,
    }
}

/// Export `model` (the embedded model when None) with `export_args`, classify `images` with `wgtune predict`
/// (batches of 4: one full, one short), and compare in onnxruntime at batch sizes `batches`. Returns the report.
fn export_and_compare(
    dir: &Path,
    model: Option<&Path>,
    export_args: &[&str],
    images: &[PathBuf],
    batches: &[usize],
) -> serde_json::Value {
    let onnx = dir.join("model.onnx");
    let model_args: Vec<&std::ffi::OsStr> = model.map(|m| vec!["--model".as_ref(), m.as_os_str()]).unwrap_or_default();
    let out = wgtune().arg("export").args(&model_args).arg("--onnx").arg(&onnx).args(export_args).output().unwrap();
    assert!(out.status.success(), "export failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("wrote") && stdout.contains("logits"), "{stdout}");

    let out =
        wgtune().args(["predict", "--json", "--logits", "--bs", "4"]).args(&model_args).args(images).output().unwrap();
    assert!(out.status.success(), "predict failed: {}", String::from_utf8_lossy(&out.stderr));
    let predictions = dir.join("predictions.jsonl");
    std::fs::write(&predictions, &out.stdout).unwrap();

    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/onnx_check.py");
    let batches: Vec<String> = batches.iter().map(|b| b.to_string()).collect();
    let out = Command::new(python())
        .arg(tool)
        .arg("compare")
        .args([&onnx, &predictions])
        .arg("--batches")
        .args(&batches)
        .args(["--tolerance", TOLERANCE])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("onnx_check printed no report: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success() && report["ok"] == true, "onnxruntime disagrees with wgtune: {report}");
    report
}

#[test]
fn embedded_imagenet_effnet_lite0_with_normalization_and_probabilities_in_the_graph() {
    let dir = temp_dir("export-effnet-imagenet");
    let imgs = images(&dir.0, 224);
    let r = export_and_compare(&dir.0, None, &["--normalize", "--probabilities"], &imgs, &[1, 7]);
    assert_eq!(r["input"]["name"], "pixels");
    assert_eq!(r["input"]["shape"], serde_json::json!(["batch", 3, 224, 224]));
    assert_eq!(r["outputs"], serde_json::json!(["logits", "probabilities"]));
    assert_eq!(r["opset"], 17);
}

/// A fine-tuned-style model of `arch` with fastai's head at `size` px (EfficientNet-Lite0's body pretrained, the
/// rest random), exported with `export_args` and compared at batch sizes `batches`.
fn fastai_model(
    name: &str,
    arch: Arch,
    size: usize,
    seed: u64,
    export_args: &[&str],
    batches: &[usize],
) -> serde_json::Value {
    let dir = temp_dir(name);
    let body = (arch == Arch::EffnetLite0).then(|| Weights::from_static(EFFNET_LITE0_IMAGENET, "embedded").unwrap());
    let model = dir.0.join("model.safetensors");
    write_model(&model, &fastai_spec(arch, size), body.as_ref(), seed);
    let imgs = images(&dir.0, size);
    export_and_compare(&dir.0, Some(&model), export_args, &imgs, batches)
}

#[test]
fn effnet_lite0_with_fastai_head_at_opset_13() {
    let r = fastai_model("export-effnet-fastai", Arch::EffnetLite0, 64, 1, &["--opset", "13"], &[1, 7]);
    assert_eq!(r["input"]["name"], "image");
    assert_eq!((r["opset"].as_i64(), r["ir_version"].as_i64()), (Some(13), Some(7)));
}

#[test]
fn resnet18_with_fastai_head_at_opset_21() {
    let r = fastai_model("export-resnet18", Arch::Resnet18, 64, 2, &["--opset", "21", "--normalize"], &[1, 7]);
    assert_eq!((r["opset"].as_i64(), r["ir_version"].as_i64()), (Some(21), Some(10)));
}

#[test]
fn resnet34_with_fastai_head() {
    fastai_model("export-resnet34", Arch::Resnet34, 64, 3, &[], &[1, 7]);
}

#[test]
fn resnet50_with_fastai_head_and_probabilities() {
    fastai_model("export-resnet50", Arch::Resnet50, 64, 4, &["--probabilities"], &[1, 7]);
}

#[test]
fn convnext_atto_with_fastai_head() {
    // GELU as Erf, LayerNorm2d as Transpose + LayerNormalization + Transpose, layer scale as Mul.
    fastai_model("export-convnext", Arch::ConvnextAtto, 64, 6, &[], &[1, 7]);
    // LayerNormalization came with opset 17: an older opset is refused with the way out.
    let dir = temp_dir("export-convnext-opset");
    let model = dir.0.join("model.safetensors");
    write_model(&model, &fastai_spec(Arch::ConvnextAtto, 32), None, 7);
    let onnx = dir.0.join("m.onnx");
    let e = export_error(&[
        "--model".as_ref(),
        model.as_os_str(),
        "--onnx".as_ref(),
        onnx.as_os_str(),
        "--opset".as_ref(),
        "13".as_ref(),
    ]);
    assert!(e.contains("'stem.1' (layer_norm)") && e.contains("--opset 17 or later"), "{e}");
    assert!(!onnx.exists(), "nothing written");
}

#[test]
fn deit_tiny_with_fastai_head_at_a_fixed_batch() {
    // Attention as Reshape/Transpose/Slice/MatMul/Softmax, the class token and position embedding by Expand +
    // Concat + Add, LayerNormalization over the last axis.
    let r = fastai_model("export-deit", Arch::DeitTiny, 32, 8, &["--batch", "3"], &[3]);
    assert_eq!(r["input"]["shape"], serde_json::json!([3, 3, 32, 32]));
    // Its reshapes carry the batch size: a dynamic batch is refused with the way out.
    let dir = temp_dir("export-deit-dynamic");
    let model = dir.0.join("model.safetensors");
    write_model(&model, &fastai_spec(Arch::DeitTiny, 32), None, 9);
    let onnx = dir.0.join("m.onnx");
    let e = export_error(&["--model".as_ref(), model.as_os_str(), "--onnx".as_ref(), onnx.as_os_str()]);
    assert!(e.contains("fixed batch size only") && e.contains("--batch N"), "{e}");
}

#[test]
fn a_fixed_batch_is_the_input_shape() {
    let r = fastai_model("export-fixed-batch", Arch::Resnet18, 32, 5, &["--batch", "7"], &[7]);
    assert_eq!(r["input"]["shape"], serde_json::json!([7, 3, 32, 32]));
}

/// Runs `wgtune export ARGS` expecting failure; returns stderr.
fn export_error(args: &[&std::ffi::OsStr]) -> String {
    let out = wgtune().arg("export").args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "export {args:?} should fail");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn export_errors_name_the_option_or_tensor() {
    let dir = temp_dir("export-errors");
    let d = &dir.0;
    let onnx = d.join("out.onnx");
    let os = |s: &str| std::ffi::OsString::from(s);
    // A raw pretrained file (no wgtune metadata): its architecture is told from its tensors, or given with --arch.
    let raw = d.join("raw.safetensors");
    let spec = ModelSpec { input_size: 32, ..ModelSpec::imagenet(Arch::Resnet18) };
    write_model(&raw, &spec, None, 6);
    let tensors: Vec<_> = {
        let w = Weights::open(&raw).unwrap();
        w.shapes()
            .unwrap()
            .keys()
            .map(|n| {
                let (s, v) = w.get(n).unwrap().unwrap();
                (n.clone(), s, v)
            })
            .collect()
    };
    write_atomically(&raw, &tensors, Default::default()).unwrap();
    let args = [os("--model"), raw.clone().into(), os("--onnx"), onnx.clone().into()];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    // torchvision's names and shapes say it is a ResNet-18; --arch says so too.
    for arch in [None, Some("resnet18")] {
        let arch: Vec<&str> = arch.map(|a| vec!["--arch", a]).unwrap_or_default();
        let out = wgtune().arg("export").args(&args).args(arch).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(onnx.exists());
        std::fs::remove_file(&onnx).unwrap();
    }
    // Tensors of no known architecture (a ResNet without its last stage) need --arch.
    let unknown = d.join("unknown.safetensors");
    let partial: Vec<_> = tensors.iter().filter(|t| !t.0.starts_with("layer4.")).cloned().collect();
    write_atomically(&unknown, &partial, Default::default()).unwrap();
    let e = export_error(&[os("--model").as_os_str(), unknown.as_os_str(), os("--onnx").as_os_str(), onnx.as_os_str()]);
    assert!(e.contains("--arch") && e.contains("unknown.safetensors") && e.contains("match no known"), "{e}");

    // Options out of range are refused before any work, naming the option.
    for (opt, val, says) in
        [("--opset", "12", "13..=21"), ("--batch", "0", "at least 1"), ("--batch", "some", "dynamic")]
    {
        let e = export_error(&[os("--onnx").as_os_str(), onnx.as_os_str(), os(opt).as_os_str(), os(val).as_os_str()]);
        assert!(e.contains(opt) && e.contains(says), "{opt} {val}: {e}");
    }

    // A model whose tensor does not fit its architecture: the tensor is named.
    let bad = d.join("bad.safetensors");
    let mut wrong = tensors.clone();
    let fc = wrong.iter_mut().find(|t| t.0 == "fc.weight").unwrap();
    fc.1 = vec![fc.1[0] / 2, fc.1[1] * 2];
    write_atomically(&bad, &wrong, Default::default()).unwrap();
    let e = export_error(&[
        os("--model").as_os_str(),
        bad.as_os_str(),
        os("--arch").as_os_str(),
        os("resnet18").as_os_str(),
        os("--onnx").as_os_str(),
        onnx.as_os_str(),
    ]);
    assert!(e.contains("fc.weight") && e.contains("shape"), "{e}");

    // Writing into a folder that does not exist: a clear error, nothing left behind; and the model itself is never
    // overwritten.
    let missing = d.join("no-such-folder/out.onnx");
    let e = export_error(&[os("--onnx").as_os_str(), missing.as_os_str()]);
    assert!(e.contains("cannot write") && e.contains("no-such-folder"), "{e}");
    let e = export_error(&[
        os("--model").as_os_str(),
        raw.as_os_str(),
        os("--arch").as_os_str(),
        os("resnet18").as_os_str(),
        os("--onnx").as_os_str(),
        raw.as_os_str(),
    ]);
    assert!(e.contains("model file itself"), "{e}");
    assert!(Weights::open(&raw).is_ok());
    let left: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().contains(".tmp-")), "temporary files left: {left:?}");
}
