//! `wgtune finetune` and `wgtune lr-find` as a user runs them, on a tiny two-class folder at 32 px: SIGTERM and
//! Ctrl-C write a checkpoint and exit 130, `--resume` finishes the run with the table, plots and a model `predict`
//! can use.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

mod support;

use support::{fashion_folder, json_lines, run_ok, temp_dir, wgtune, Dir};

/// A temporary two-class folder with `train` + `valid` images per class.
fn tiny_folder(name: &str, train: usize, valid: usize) -> Dir {
    let dir = temp_dir(name);
    fashion_folder(&dir.0, train, valid);
    dir
}

#[test]
fn sigterm_and_ctrl_c_write_a_checkpoint_and_resume_finishes_the_run() {
    let dir = tiny_folder("ctrlc", 48, 8);
    let out = dir.0.join("m.safetensors");
    let args = |resume: bool| {
        let mut a: Vec<String> =
            ["finetune", "--size", "32", "--bs", "8", "--epochs", "1", "--freeze-epochs", "1", "--data"]
                .map(String::from)
                .to_vec();
        a.push(dir.0.display().to_string());
        a.extend(["--out".to_string(), out.display().to_string()]);
        if resume {
            a.push("--resume".into());
        }
        a
    };
    // SIGTERM (what kill, systemd, docker stop and schedulers send) in the first epoch, then SIGINT (Ctrl-C) in the
    // resumed run: each finishes its step, writes the checkpoint and exits 130.
    for (resume, signal, at) in [(false, libc::SIGTERM, "batch 3/12"), (true, libc::SIGINT, "batch 6/12")] {
        let mut child = wgtune().args(args(resume)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        let mut stderr = String::new();
        let mut signalled = false;
        for line in BufReader::new(child.stderr.take().unwrap()).lines() {
            let line = line.unwrap();
            // Progress lines go to stderr when it is not a terminal; interrupt in the middle of the first epoch.
            if !signalled && line.contains(&format!("frozen epoch 0: {at}")) {
                // SAFETY: kill(2) on the child we spawned and have not yet waited for.
                assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal {signal} could not be sent");
                signalled = true;
            }
            stderr += &line;
            stderr.push('\n');
        }
        let status = child.wait().unwrap();
        assert!(signalled, "no progress line to interrupt at:\n{stderr}");
        assert_eq!(status.code(), Some(130), "signal {signal}: {stderr}");
        assert!(stderr.contains("stopping after the current step") && stderr.contains("--resume"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        let checkpoint = dir.0.join("m.safetensors.checkpoint");
        assert!(checkpoint.exists() && !out.exists(), "a checkpoint and no model yet:\n{stderr}");
        assert!(!dir.0.join("m.safetensors.lock").exists(), "the lock is released on an interrupt");
    }

    let done = wgtune().args(args(true)).arg("--profile").output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&done.stdout), String::from_utf8_lossy(&done.stderr));
    assert!(done.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("resuming from"), "{stderr}");
    assert!(
        out.exists() && !dir.0.join("m.safetensors.checkpoint").exists(),
        "the finished run removes its checkpoint"
    );
    for want in [
        "frozen phase",
        "unfrozen phase",
        "train_loss",
        "confusion matrix",
        "saved the fine-tuned model",
        "profiled unfrozen-phase training step",
        "GFLOP/s",
    ] {
        assert!(stdout.contains(want), "'{want}' missing from:\n{stdout}");
    }
    for png in ["m.loss.png", "m.confusion.png"] {
        let img = image::open(dir.0.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(img.width() > 200 && img.height() > 100, "{png}");
    }

    let image = std::fs::read_dir(dir.0.join("valid/Bag")).unwrap().next().unwrap().unwrap().path();
    let p = wgtune().args(["predict", "--json", "--model"]).arg(&out).arg(&image).output().unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let v: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    let label = v["top"][0]["label"].as_str().unwrap_or_default().to_string();
    assert!(label == "Bag" || label == "Trouser", "{v}");
}

#[test]
fn lr_find_prints_a_suggestion_and_saves_the_plot() {
    let dir = tiny_folder("lrfind", 16, 2);
    let plot = dir.0.join("lr.png");
    let out = wgtune()
        .args(["lr-find", "--size", "32", "--bs", "8", "--num-it", "14", "--data"])
        .arg(&dir.0)
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("suggested learning rate (valley): "), "{stdout}");
    assert!(image::open(&plot).is_ok(), "{stdout}");
}

/// --save-best, --early-stop, --tta and --accum from the command line: fastai's messages, the JSON log's flags,
/// and the options' checks.
#[test]
fn save_best_and_early_stop_report_in_the_table_and_the_json_log() {
    let dir = tiny_folder("savebest", 8, 4);
    let (out, log) = (dir.0.join("m.safetensors"), dir.0.join("log.jsonl"));
    let mut run = wgtune();
    let run = run
        .args(["finetune", "--size", "32", "--bs", "8", "--epochs", "2", "--freeze-epochs", "1"])
        .args(["--save-best", "accuracy", "--early-stop", "5", "--tta", "--accum", "2", "--cutmix", "1", "--data"])
        .arg(&dir.0)
        .arg("--out")
        .arg(&out)
        .arg("--json-log")
        .arg(&log);
    let (stdout, stderr) = run_ok(run);
    assert!(stderr.contains("gradient accumulation: 2 batches of 8 per optimizer step (16 images)"), "{stderr}");
    assert!(stderr.contains("CutMix: a box per training batch pasted from shuffled partners, lam ~ Beta(1, 1)"));
    assert!(stdout.contains("better model found at epoch 0 with accuracy value: "), "{stdout}");
    assert!(stdout.contains("kept the weights of frozen epoch 0, the best by accuracy"), "{stdout}");
    assert!(stdout.contains("kept the weights of unfrozen epoch "), "{stdout}");
    assert!(stdout.contains("test-time augmentation (4 augmented views + the plain one, beta 0.25): accuracy "));
    let mut records = json_lines(&log);
    let tta = records.pop().unwrap();
    assert!(tta["tta"]["accuracy"].is_f64() && tta["tta"]["plain_accuracy"].is_f64(), "{tta}");
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r["improved"].is_boolean()), "{records:?}");
    assert_eq!(records[0]["kept_epoch"], 0);
    assert!(records[1]["kept_epoch"].is_null() && records[2]["kept_epoch"].is_u64(), "{records:?}");

    for (opt, val, says) in [
        ("--save-best", "loss", "valid_loss or accuracy"),
        ("--early-stop", "0", "at least 1"),
        ("--mixup", "0", "alpha must be positive"),
        ("--cutmix", "inf", "alpha must be positive"),
    ] {
        let bad = wgtune().args(["finetune", opt, val]).output().unwrap();
        let e = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success() && e.contains(opt) && e.contains(says), "{opt} {val}: {e}");
    }
    let both = wgtune().args(["finetune", "--mixup", "0.4", "--cutmix", "1"]).output().unwrap();
    assert!(!both.status.success() && String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
    // A threshold is for multi-label models.
    let image = std::fs::read_dir(dir.0.join("valid/Bag")).unwrap().next().unwrap().unwrap().path();
    let p = wgtune().args(["predict", "--threshold", "0.3", "--model"]).arg(&out).arg(&image).output().unwrap();
    let e = String::from_utf8_lossy(&p.stderr);
    assert!(!p.status.success() && e.contains("--threshold is for multi-label models"), "{e}");
}

/// A "pretrained" file in timm's layout for `arch` at `size` px (the graph's initial weights under timm's names, its
/// ImageNet head, no wgtune metadata); fine-tunes from it at 32 px with drop path (`extra` options added) through one
/// frozen and one unfrozen epoch, checks the table, and classifies an image with the saved model. Returns stderr.
fn fine_tune_timm_file(name: &str, arch: wgtune::nn::Arch, size: usize, extra: &[&str]) -> String {
    use wgtune::graph::TensorKind;
    let dir = tiny_folder(name, 8, 4);
    let g = arch.classifier(1, size, 1000).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = g
        .tensors
        .iter()
        .filter(|t| matches!(t.kind, TensorKind::Param { .. }))
        .map(|t| (t.name.clone(), t.shape.clone(), t.init.clone().expect("parameters start from a value")))
        .collect();
    let pretrained = dir.0.join("pretrained.safetensors");
    wgtune::nn::weights::write_atomically(&pretrained, &tensors, Default::default()).unwrap();
    let out = dir.0.join("m.safetensors");
    let mut run = wgtune();
    let run = run
        .args(["finetune", "--size", "32", "--bs", "8", "--epochs", "1", "--freeze-epochs", "1", "--drop-path", "0.1"])
        .args(extra)
        .arg("--model")
        .arg(&pretrained)
        .arg("--data")
        .arg(&dir.0)
        .arg("--out")
        .arg(&out);
    let (stdout, stderr) = run_ok(run);
    assert!(stdout.contains("frozen phase") && stdout.contains("unfrozen phase"), "{stdout}");
    // Table rows: epoch, train_loss, valid_loss, error_rate, accuracy, time.
    let rows: Vec<Vec<f64>> = stdout
        .lines()
        .map(|l| l.split_whitespace().take(5).map(|w| w.parse::<f64>().ok()).collect::<Option<Vec<f64>>>())
        .filter_map(|r| r.filter(|r| r.len() == 5))
        .collect();
    assert_eq!(rows.len(), 2, "one frozen and one unfrozen epoch: {stdout}");
    assert!(rows.iter().all(|r| r[1].is_finite() && r[2].is_finite()), "{stdout}");
    let image = dir.0.join("valid").join("Bag").read_dir().unwrap().next().unwrap().unwrap().path();
    let (p, _) = run_ok(wgtune().args(["predict", "--json", "--model"]).arg(&out).arg(&image));
    let v: serde_json::Value = serde_json::from_str(p.trim()).unwrap();
    let label = v["top"][0]["label"].as_str().unwrap_or_default();
    assert!(label == "Bag" || label == "Trouser", "{p}");
    stderr
}

/// ConvNeXt: `finetune` without --arch tells the architecture from the tensors and cuts timm's head.
#[test]
fn a_timm_convnext_file_fine_tunes_through_both_phases() {
    let stderr = fine_tune_timm_file("convnext", wgtune::nn::Arch::ConvnextAtto, 32, &[]);
    assert!(stderr.contains("model: convnext_atto, as '"), "{stderr}");
}

/// DeiT from a 224 px file at 32 px: the position embedding is resampled (with a note) and fastai's unpooled head
/// sits on the class token.
#[test]
fn a_timm_deit_file_fine_tunes_at_another_size() {
    let stderr = fine_tune_timm_file("deit", wgtune::nn::Arch::DeitTiny, 224, &["--arch", "deit_tiny_patch16_224"]);
    assert!(stderr.contains("position embedding [1, 197, 192] resampled to [1, 5, 192]"), "{stderr}");
}

/// With f16 the run ends with the loss scaler's summary, listing the steps whose update it skipped: a start of
/// 2^24 makes the first steps' gradients overflow f16 (the logits' gradient alone, about 1/8 per element at batch
/// 8, becomes 2^21), so they are skipped and listed.
#[test]
fn an_f16_run_lists_the_steps_its_loss_scaler_skipped() {
    let dir = tiny_folder("skipped", 8, 4);
    let out = dir.0.join("m.safetensors");
    let mut run = wgtune();
    let run = run
        .args(["finetune", "--size", "32", "--bs", "8", "--epochs", "1", "--freeze-epochs", "1"])
        .args(["--precision", "f16", "--loss-scale", "16777216", "--data"])
        .arg(&dir.0)
        .arg("--out")
        .arg(&out);
    let (stdout, _) = run_ok(run);
    let line = stdout.lines().find(|l| l.starts_with("mixed precision:")).unwrap_or_else(|| panic!("{stdout}"));
    // "mixed precision: loss scale S at the end; K of N steps skipped (steps 1, 2, ...) for ..."
    let count: usize = line.split("; ").nth(1).and_then(|s| s.split(' ').next()).unwrap().parse().unwrap();
    let listed = line.split('(').nth(1).and_then(|s| s.split(')').next()).unwrap_or_else(|| panic!("{line}"));
    let steps: Vec<usize> = listed
        .trim_start_matches("steps ")
        .trim_start_matches("step ")
        .split(", ")
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(count >= 1 && steps.len() == count && steps[0] == 1, "{line}");
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{line}");
}
