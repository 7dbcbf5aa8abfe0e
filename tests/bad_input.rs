//! The command line against bad input, as a hostile user tries it: every case ends in a clear error naming the
//! option or file and what was expected, with exit code 1 (never a panic, an abort or a hang), and loses nothing
//! already on disk. Most fail before any GPU work, in well under a second.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod support;

use support::{fashion_folder, temp_dir, wgtune};

/// The run failed cleanly (exit 1, no panic) with a message holding every one of `needles`.
fn fails_with(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "expected {n:?} in: {stderr}");
    }
    stderr
}

fn run(args: &[&str]) -> Output {
    wgtune().args(args).output().expect("run wgtune")
}

#[test]
fn zero_runs_is_an_error_not_a_panic() {
    fails_with(&run(&["bench", "matmul", "--runs", "0"]), &["--runs", "at least 1"]);
    fails_with(&run(&["bench", "conv", "--runs", "0"]), &["--runs", "at least 1"]);
    fails_with(&run(&["bench", "train", "--steps", "0"]), &["--steps", "at least 1"]);
}

#[test]
fn numeric_options_are_range_checked() {
    for (args, needle) in [
        (&["--lr=-1"][..], "--lr"),
        (&["--lr", "1e6"], "--lr"),
        (&["--lr", "nan"], "--lr"),
        (&["--valid-pct=-0.5"], "--valid-pct"),
        (&["--valid-pct", "nan"], "--valid-pct"),
        (&["--valid-pct", "1.5"], "--valid-pct"),
        (&["--pct-start=-1"], "--pct-start"),
        (&["--div", "0"], "--div"),
        (&["--lr-mult", "0"], "--lr-mult"),
        (&["--size", "1"], "--size"),
        (&["--size", "0"], "--size"),
        (&["--size", "20000"], "--size"),
        (&["--size", "4294967296"], "--size"),
        (&["--size", "18446744073709551615"], "--size"),
        (&["--bs", "0"], "--bs"),
        (&["--wd", "inf"], "--wd"),
        (&["--loss-scale", "3"], "power of two"),
        (&["--loss-scale", "0.5"], "--loss-scale"),
        (&["--loss-scale", "1e30"], "--loss-scale"),
    ] {
        let mut all = vec!["finetune"];
        all.extend(args);
        fails_with(&run(&all), &[needle]);
    }
    let out = run(&["finetune", "--epochs", "0", "--freeze-epochs", "0"]);
    fails_with(&out, &["trains nothing"]);
    fails_with(&run(&["lr-find", "--num-it", "0"]), &["--num-it"]);
    fails_with(&run(&["predict", "--bs", "0", "x.png"]), &["--bs"]);
}

#[test]
fn help_still_succeeds() {
    let out = run(&["finetune", "--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--overwrite"));
}

#[test]
fn a_bad_data_path_says_what_it_is() {
    let dir = temp_dir("data");
    let file = dir.0.join("labels.csv");
    std::fs::write(&file, "a,b\n").unwrap();
    let out_path = dir.0.join("m.safetensors");
    let out = |data: &Path| {
        run(&["finetune", "--data", &data.display().to_string(), "--out", &out_path.display().to_string()])
    };
    fails_with(&out(&file), &["labels.csv", "is a file, not a folder"]);
    #[cfg(unix)]
    {
        let link = dir.0.join("gone");
        std::os::unix::fs::symlink(dir.0.join("nowhere"), &link).unwrap();
        fails_with(&out(&link), &["gone", "broken symbolic link"]);
    }
    fails_with(&out(&dir.0.join("missing")), &["missing", "does not exist"]);
}

#[test]
fn out_is_checked_before_training() {
    let dir = temp_dir("out");
    let data = dir.0.join("data");
    fashion_folder(&data, 2, 2);
    let data = data.display().to_string();
    let finetune = |out: &str| run(&["finetune", "--data", &data, "--size", "32", "--out", out]);
    // A missing folder, a path under a file, an existing folder: refused at once, nothing written.
    let missing = dir.0.join("no/such/dir/m.safetensors");
    fails_with(&finetune(&missing.display().to_string()), &["does not exist"]);
    let under_file = dir.0.join("data/train/Bag").read_dir().unwrap().next().unwrap().unwrap().path().join("m.st");
    fails_with(&finetune(&under_file.display().to_string()), &["does not exist"]);
    let folder = dir.0.join("a_folder");
    std::fs::create_dir(&folder).unwrap();
    fails_with(&finetune(&folder.display().to_string()), &["is a folder", "model.safetensors"]);
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 0, "nothing left in the folder");
    #[cfg(target_os = "linux")]
    fails_with(&finetune("/proc/wgtune-model.safetensors"), &["cannot write next to --out"]);
}

#[test]
fn an_interrupted_runs_checkpoint_is_not_overwritten() {
    let dir = temp_dir("ckpt");
    let data = dir.0.join("data");
    fashion_folder(&data, 2, 2);
    let out = dir.0.join("m.safetensors");
    let checkpoint = dir.0.join("m.safetensors.checkpoint");
    std::fs::write(&checkpoint, b"an interrupted run's state").unwrap();
    let args = ["finetune", "--data", &data.display().to_string(), "--size", "32", "--out", &out.display().to_string()];
    fails_with(&run(&args), &["m.safetensors.checkpoint", "--resume", "--overwrite"]);
    assert_eq!(std::fs::read(&checkpoint).unwrap(), b"an interrupted run's state", "the checkpoint is untouched");
    assert!(!dir.0.join("m.safetensors.lock").exists(), "the lock is released");
}

#[test]
fn a_second_run_with_the_same_out_is_refused() {
    let dir = temp_dir("lock");
    let data = dir.0.join("data");
    fashion_folder(&data, 2, 2);
    let out = dir.0.join("m.safetensors");
    // A live process holds the lock: this test's own process.
    let lock = dir.0.join("m.safetensors.lock");
    std::fs::write(&lock, std::process::id().to_string()).unwrap();
    let args = ["finetune", "--data", &data.display().to_string(), "--size", "32", "--out", &out.display().to_string()];
    fails_with(&run(&args), &["another wgtune run", &std::process::id().to_string(), "m.safetensors.lock"]);
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), std::process::id().to_string(), "the other run's lock stays");
}

#[test]
fn resume_without_a_checkpoint_says_so() {
    let dir = temp_dir("resume");
    let data = dir.0.join("data");
    fashion_folder(&data, 4, 4);
    let out = dir.0.join("m.safetensors");
    let args = [
        "finetune",
        "--data",
        &data.display().to_string(),
        "--size",
        "32",
        "--bs",
        "4",
        "--out",
        &out.display().to_string(),
        "--resume",
    ];
    fails_with(&run(&args), &["cannot resume", "m.safetensors.checkpoint", "no checkpoint there"]);
}

/// A model file whose metadata says `metadata` (plus one tensor): for predict's metadata checks.
fn model_file(dir: &Path, name: &str, metadata: &[(&str, &str)]) -> PathBuf {
    let path = dir.join(name);
    let meta = metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    wgtune::nn::weights::write_atomically(&path, &[("x".into(), vec![1], vec![0.0])], meta).unwrap();
    path
}

#[test]
fn predict_names_the_bad_metadata_and_the_checkpoint_mistake() {
    let dir = temp_dir("meta");
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/chelsea.png");
    let image = image.display().to_string();
    let good = [
        ("wgtune.architecture", "effnet-lite0"),
        ("wgtune.head", "fastai"),
        ("wgtune.classes", "[\"a\",\"b\"]"),
        ("wgtune.normalization", "(x - 127) / 128"),
    ];
    for (size, why) in [("100000", "100000"), ("abc", "abc"), ("18446744073709551615", "18446744073709551615")] {
        let mut meta = good.to_vec();
        meta.push(("wgtune.input_size", size));
        let model = model_file(&dir.0, &format!("size-{why}.safetensors"), &meta);
        let out = run(&["predict", "--model", &model.display().to_string(), &image]);
        fails_with(&out, &[&model.display().to_string(), "wgtune.input_size", why]);
    }
    let mut meta = good.to_vec();
    meta.push(("wgtune.input_size", "32"));
    meta[0] = ("wgtune.architecture", "vgg16");
    let model = model_file(&dir.0, "arch.safetensors", &meta);
    fails_with(&run(&["predict", "--model", &model.display().to_string(), &image]), &["arch.safetensors", "vgg16"]);
    let checkpoint = model_file(&dir.0, "m.safetensors.checkpoint", &[("wgtune.checkpoint", "{}")]);
    let out = run(&["predict", "--model", &checkpoint.display().to_string(), &image]);
    fails_with(&out, &["training checkpoint", "--resume"]);
}

/// A model whose weights went NaN (a diverged run) is refused at load, naming the tensor, instead of printing
/// 0.00% for every class.
#[test]
fn predict_refuses_a_model_with_non_finite_weights() {
    use wgtune::nn::model::{Head, ModelSpec};
    let dir = temp_dir("nan");
    let spec = ModelSpec {
        arch: wgtune::nn::Arch::EffnetLite0,
        head: Head::Fastai,
        classes: vec!["a".into(), "b".into()],
        input_size: 32,
        normalization: wgtune::nn::Normalization::TF_127,
        loss: wgtune::nn::model::SINGLE_LABEL,
    };
    let g = spec.graph(1, 0.1).unwrap();
    let mut tensors = Vec::new();
    for t in &g.tensors {
        if matches!(t.kind, wgtune::graph::TensorKind::Param { .. } | wgtune::graph::TensorKind::State) {
            let mut v = t.init.clone().unwrap_or_else(|| vec![0.0; t.numel()]);
            if t.name.ends_with("weight") {
                v.iter_mut().for_each(|x| *x = f32::NAN);
            }
            tensors.push((t.name.clone(), t.shape.clone(), v));
        }
    }
    let model = dir.0.join("nan.safetensors");
    wgtune::nn::weights::write_atomically(&model, &tensors, spec.metadata()).unwrap();
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/chelsea.png");
    let out = run(&["predict", "--model", &model.display().to_string(), &image.display().to_string()]);
    fails_with(&out, &["nan.safetensors", "non-finite"]);
}

/// A 1 x 200000 PNG (a few hundred bytes) used to make the resize allocate tens of GB and abort; under a 6 GB
/// address-space limit it must now classify (or be refused) cleanly.
#[cfg(target_os = "linux")]
#[test]
fn a_decompression_bomb_by_shape_is_bounded() {
    let dir = temp_dir("bomb");
    let strip = dir.0.join("strip.png");
    image::RgbImage::from_pixel(1, 200_000, image::Rgb([200, 30, 30])).save(&strip).unwrap();
    let script = format!("ulimit -v 6000000; exec '{}' predict '{}'", env!("CARGO_BIN_EXE_wgtune"), strip.display());
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("strip.png"));
}

/// With no Vulkan driver wgtune falls back to OpenGL (where Mesa has it) or says how to get a driver; either way
/// the Vulkan loader's "Found no drivers!" errors are not printed.
#[test]
fn no_vulkan_driver_prints_no_loader_errors() {
    let out = wgtune()
        .arg("info")
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .env_remove("RUST_LOG")
        .env_remove("WGTUNE_ADAPTER")
        .output()
        .expect("run wgtune");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("vkCreateInstance") && !stderr.contains("Loader Message"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `--valid-pct` on a folder with its own train/valid split is said to be ignored, not silently dropped.
#[test]
fn valid_pct_on_a_split_folder_is_reported_as_ignored() {
    let dir = temp_dir("validpct");
    let data = dir.0.join("data");
    fashion_folder(&data, 2, 1);
    let plot = dir.0.join("lr.png");
    let out = run(&[
        "lr-find",
        "--data",
        &data.display().to_string(),
        "--valid-pct",
        "0.3",
        "--size",
        "32",
        "--bs",
        "2",
        "--num-it",
        "2",
        "--plot",
        &plot.display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--valid-pct is ignored") && stderr.contains("train/ and valid/"), "{stderr}");
}
