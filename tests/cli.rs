//! The command line as a user meets it.

use std::process::Command;

fn wgtune() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wgtune"))
}

/// No GPU and no software driver: a clear message naming the fix, a non-zero exit, no panic.
#[test]
fn without_any_adapter_it_says_how_to_get_one() {
    let out = wgtune()
        .arg("info")
        // Point the Vulkan loader at no driver and search only Vulkan: a machine without any GPU driver.
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .env("WGPU_BACKEND", "vulkan")
        .env_remove("WGTUNE_ADAPTER")
        .output()
        .expect("run wgtune");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must exit non-zero; stderr: {stderr}");
    assert!(stderr.contains("no GPU adapter found"), "{stderr}");
    assert!(stderr.contains("apt-get install mesa-vulkan-drivers"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn info_names_the_adapter() {
    let out = wgtune().args(["info", "--json"]).output().expect("run wgtune");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(v["adapter"]["name"].as_str().is_some_and(|n| !n.is_empty()), "{v}");
    assert!(v["limits"]["max_storage_buffer_binding_size"].as_u64().is_some_and(|n| n > 0), "{v}");
}

#[test]
fn bench_matmul_json_lines_have_the_promised_fields() {
    let out =
        wgtune().args(["bench", "matmul", "--sizes", "33", "--runs", "1", "--json"]).output().expect("run wgtune");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let kernels: Vec<&str> = lines.iter().filter_map(|v| v["kernel"].as_str()).collect();
    assert_eq!(kernels, ["naive", "tiled", "shared32", "shared64", "shared128", "staged128", "auto"]);
    // 33^3 is below what the autotuner times: the software driver's default.
    assert_eq!(lines[6]["tuned"], "tiled", "{}", lines[6]);
    for v in &lines {
        assert_eq!(v["bench"], "matmul");
        assert_eq!((v["m"].as_u64(), v["n"].as_u64(), v["k"].as_u64()), (Some(33), Some(33), Some(33)));
        assert!(v["gflops"].as_f64().is_some_and(|g| g > 0.0), "{v}");
    }
}

/// The autotuner end to end: the first run times the variants and writes the cache (the next runs finish what a
/// slow machine's budget left untimed, one variant at least per run); a run with
/// `WGTUNE_AUTOTUNE=cache` takes the cached choice (an edited one, so it cannot be a new measurement); `off` takes
/// the default; a bad mode is an error naming the variable.
#[test]
fn the_autotuner_caches_its_choice_and_the_modes_hold() {
    let dir = std::env::temp_dir().join(format!("wgtune-cli-autotune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run_with = |mode: &str, setting: Option<(&str, &str)>| {
        let mut cmd = wgtune();
        cmd.args(["bench", "matmul", "--sizes", "161", "--kernels", "auto", "--runs", "1", "--json"])
            .env("WGTUNE_CACHE_DIR", &dir)
            .env("WGTUNE_AUTOTUNE", mode)
            .env_remove("WGTUNE_SHADER_CHECKS")
            .env_remove("WGTUNE_SUBGROUPS");
        if let Some((name, value)) = setting {
            cmd.env(name, value);
        }
        let out = cmd.output().expect("run wgtune");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let run = |mode: &str| run_with(mode, None);
    let key = "matmul 161x161x161 batch 1 nn F32.F32>F32";
    let cache_file = || {
        let files: Vec<_> = std::fs::read_dir(&dir)
            .expect("the cache folder exists")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("autotune-")))
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let text = std::fs::read_to_string(&files[0]).unwrap();
        (files[0].clone(), serde_json::from_str::<serde_json::Value>(&text).unwrap(), text)
    };
    // A slow machine's 3 s budget may not time all five variants in one run (the first runs of a kernel include
    // the driver's compilation): each run records what it timed and the next times the rest, so the problem is
    // chosen within one run per variant.
    let mut runs = Vec::new();
    let (file, mut cache, text) = loop {
        let (ok, stdout, stderr) = run("full");
        assert!(ok, "{stderr}");
        let out: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
        runs.push(out["tuned"].as_str().expect("auto reports its choice").to_string());
        let (file, cache, text) = cache_file();
        let pending = cache["choices"][key]["pending"].as_array().map_or(0, Vec::len);
        if pending == 0 {
            break (file, cache, text);
        }
        assert!(runs.len() < 5, "still {pending} variants untimed after {} runs: {text}", runs.len());
        assert_eq!(runs.last().unwrap(), "tiled", "an unfinished problem runs its default");
    };
    let chosen = runs.last().unwrap().clone();
    let entry = &cache["choices"][key];
    assert_eq!(entry["kernel"], chosen.as_str(), "{text}");
    for k in ["tiled", "shared32", "shared64", "shared128"] {
        assert!(entry["measured_ms"][k].as_f64().is_some_and(|ms| ms > 0.0), "{k} measured: {text}");
    }
    let other = if chosen == "shared64" { "shared32" } else { "shared64" };
    cache["choices"][key]["kernel"] = other.into();
    std::fs::write(&file, serde_json::to_vec(&cache).unwrap()).unwrap();
    let (ok, stdout, stderr) = run("cache");
    assert!(ok && stdout.contains(&format!("\"tuned\":\"{other}\"")), "{stdout} {stderr}");
    // A choice holds only under the settings it was timed with: with runtime checks on, or subgroup sums off,
    // the cache of the plain run is not this run's (the default runs, nothing timed in `cache` mode).
    for setting in [("WGTUNE_SHADER_CHECKS", "on"), ("WGTUNE_SUBGROUPS", "off")] {
        let (ok, stdout, stderr) = run_with("cache", Some(setting));
        assert!(ok && stdout.contains("\"tuned\":\"tiled\""), "{setting:?}: {stdout} {stderr}");
    }
    let (ok, stdout, stderr) = run("off");
    assert!(ok && stdout.contains("\"tuned\":\"tiled\""), "{stdout} {stderr}");
    let (ok, _, stderr) = run("fastest");
    assert!(!ok && stderr.contains("WGTUNE_AUTOTUNE='fastest'") && !stderr.contains("panicked"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The release settings: the audited kernels run without wgpu's runtime checks unless `WGTUNE_SHADER_CHECKS=on`
/// (a bad value names the variable); on Vulkan the driver's pipelines are kept in the cache folder, written when
/// the process ends, read by the next run, and a damaged file is set aside with a warning, not handed to the driver.
#[test]
fn shader_checks_and_the_pipeline_cache() {
    let dir = std::env::temp_dir().join(format!("wgtune-cli-pipelines-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |args: &[&str], checks: Option<&str>| {
        let mut cmd = wgtune();
        cmd.args(args).env("WGTUNE_CACHE_DIR", &dir).env("RUST_LOG", "wgtune::gpu=info");
        if let Some(c) = checks {
            cmd.env("WGTUNE_SHADER_CHECKS", c);
        }
        let out = cmd.output().expect("run wgtune");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let info = |checks| {
        let (ok, stdout, stderr) = run(&["info", "--json"], checks);
        assert!(ok, "{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).expect("one JSON object")
    };
    let v = info(None);
    assert_eq!(v["shader_checks"], false, "{v}");
    assert_eq!(info(Some("on"))["shader_checks"], true);
    let (ok, _, stderr) = run(&["info"], Some("maybe"));
    assert!(!ok && stderr.contains("WGTUNE_SHADER_CHECKS='maybe'") && !stderr.contains("panicked"), "{stderr}");

    let vulkan_cache = v["adapter"]["backend"] == "Vulkan"
        && v["features"].as_array().is_some_and(|f| f.iter().any(|f| f == "PIPELINE_CACHE"));
    let Some(path) = v["pipeline_cache"].as_str().map(std::path::PathBuf::from) else {
        assert!(!vulkan_cache, "a Vulkan adapter with PIPELINE_CACHE has a pipeline cache: {v}");
        return;
    };
    assert!(path.starts_with(&dir), "{v}");
    let _ = std::fs::remove_file(&path);
    let matmul = ["bench", "matmul", "--sizes", "33", "--kernels", "tiled", "--runs", "1"];
    let (ok, _, stderr) = run(&matmul, None);
    assert!(ok && stderr.contains("(0 bytes loaded)"), "{stderr}");
    let file = std::fs::read(&path).expect("the pipeline cache is written when the process ends");
    assert!(file.starts_with(b"wgtune pipelines") && file.len() > 24, "{} bytes", file.len());
    let (ok, _, stderr) = run(&matmul, None);
    assert!(ok && stderr.contains(&format!("({} bytes loaded)", file.len() - 24)), "{stderr}");
    let mut damaged = file.clone();
    *damaged.last_mut().unwrap() ^= 0xff;
    std::fs::write(&path, &damaged).unwrap();
    let (ok, _, stderr) = run(&matmul, None);
    assert!(ok && stderr.contains("is damaged: starting anew"), "{stderr}");
    let replaced = std::fs::read(&path).unwrap();
    assert!(replaced != damaged && replaced.starts_with(b"wgtune pipelines"), "the damaged file is replaced");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_option_is_an_error_not_a_panic() {
    let out = wgtune().args(["bench", "matmul", "--kernels", "fast"]).output().expect("run wgtune");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("unknown matmul kernel 'fast'"), "{stderr}");
}

/// `bench train --profile --json`: throughput fields, one submit and 8 bytes back per step, and the profile tables
/// (per op type and kernel) whose shares add up to the whole step, with GFLOP/s on the convolutions.
#[test]
fn bench_train_json_has_the_promised_fields_and_a_profile() {
    let out = wgtune()
        .args(["bench", "train", "--model", "small_cnn", "--bs", "4", "--size", "16", "--steps", "2", "--profile"])
        .arg("--json")
        .output()
        .expect("run wgtune");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["bench"], "train");
    for field in ["images_per_s", "first_step_s", "steps_per_s", "encode_us", "planned_bytes"] {
        assert!(v[field].as_f64().is_some_and(|x| x > 0.0), "{field}: {v}");
    }
    assert_eq!(v["submits_per_step"].as_f64(), Some(1.0), "{v}");
    assert_eq!(v["readback_bytes_per_step"].as_f64(), Some(8.0), "{v}");
    let p = &v["profile"];
    assert_eq!(p["clock"], "gpu_timestamps", "lavapipe has timestamp queries: {p}");
    let ops = p["by_op"].as_array().expect("by_op rows");
    let names: Vec<&str> = ops.iter().filter_map(|r| r["name"].as_str()).collect();
    // small_cnn's batch norms take in the ReLU after them (the executor's fusion), and the profile says so.
    for want in ["conv2d 3x3", "conv2d 3x3 backward", "batch_norm+relu", "optimizer", "softmax_cross_entropy"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let share: f64 = ops.iter().filter_map(|r| r["share"].as_f64()).sum();
    assert!((share - 1.0).abs() < 1e-6, "{share}");
    let conv = ops.iter().find(|r| r["name"] == "conv2d 3x3").unwrap();
    assert!(conv["gflops"].as_f64().is_some_and(|g| g > 0.0) && conv["calls"].as_u64() == Some(3), "{conv}");
    let kernels: usize =
        p["by_kernel"].as_array().unwrap().iter().filter_map(|r| r["calls"].as_u64()).sum::<u64>() as usize;
    assert_eq!(kernels as u64, p["dispatches"].as_u64().unwrap());
}

#[test]
fn predict_json_names_the_cat_and_reports_bad_files_without_stopping() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let cat = format!("{dir}/tests/fixtures/images/chelsea.png");
    let coffee = format!("{dir}/tests/fixtures/images/coffee.png");
    let bad = format!("{dir}/Cargo.toml");
    let out = wgtune().args(["predict", "--json", &cat, &bad, &coffee]).output().expect("run wgtune");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "an unreadable image makes the exit code non-zero");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let by_file = |f: &str| lines.iter().find(|v| v["file"] == f).unwrap_or_else(|| panic!("no line for {f}"));
    assert!(by_file(&bad)["error"].as_str().is_some_and(|e| e.contains("Cargo.toml")));
    let top = &by_file(&cat)["top"][0];
    assert!((281..=285).contains(&top["class_index"].as_u64().unwrap()), "{top}");
    assert!(top["label"].as_str().unwrap().contains("cat"), "{top}");
    assert_eq!(by_file(&coffee)["top"][0]["label"], "espresso");
    assert_eq!(by_file(&coffee)["top"].as_array().unwrap().len(), 5);
}

/// `predict --tta` blends augmented views in: other probabilities, the same photos' classes, repeatable.
#[test]
fn predict_with_tta_keeps_the_classes_and_changes_the_probabilities() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let images =
        [format!("{dir}/tests/fixtures/images/chelsea.png"), format!("{dir}/tests/fixtures/images/coffee.png")];
    let run = |extra: &[&str]| -> Vec<serde_json::Value> {
        let out = wgtune().args(["predict", "--json"]).args(extra).args(&images).output().expect("run wgtune");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let (plain, tta) = (run(&[]), run(&["--tta"]));
    assert_eq!(run(&["--tta"]), tta, "seeded views");
    assert!(tta[0]["top"][0]["label"].as_str().unwrap().contains("cat"), "{}", tta[0]);
    assert_eq!(tta[1]["top"][0]["label"], "espresso");
    let p = |v: &serde_json::Value| v["top"][0]["prob"].as_f64().unwrap();
    assert!((p(&plain[0]) - p(&tta[0])).abs() > 1e-4, "{} vs {}", plain[0], tta[0]);
}

/// An adapter without timestamp queries (simulated with WGTUNE_NO_TIMESTAMPS): `--profile` says so and falls back to
/// timing the whole step.
#[test]
fn profile_without_timestamps_falls_back_to_the_whole_step() {
    let out = wgtune()
        .args(["bench", "train", "--model", "small_cnn", "--bs", "2", "--size", "16", "--steps", "1", "--profile"])
        .env("WGTUNE_NO_TIMESTAMPS", "1")
        .output()
        .expect("run wgtune");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("for the whole step (wall clock)") && stdout.contains("no GPU timestamp queries"),
        "{stdout}"
    );
    assert!(!stdout.contains("GFLOP/s"), "{stdout}");
}

/// `--precision f16` (issue 14): on lavapipe (shader-f16) a training benchmark runs in f16 — one submit per step,
/// the loss and count plus the loss scaler's 16 bytes read back; on an adapter without shader-f16 (lavapipe's GL
/// sibling, llvmpipe through OpenGL) it stops with a message naming the adapter and the way out, and f32 (the
/// default) still works there.
#[test]
fn precision_f16_runs_where_the_adapter_has_shader_f16_and_says_why_not_elsewhere() {
    let out = wgtune()
        .args(["bench", "train", "--model", "small_cnn", "--bs", "4", "--size", "16", "--steps", "2"])
        .args(["--precision", "f16", "--json"])
        .output()
        .expect("run wgtune");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["precision"], "f16", "{v}");
    assert_eq!(v["submits_per_step"].as_f64(), Some(1.0), "{v}");
    assert_eq!(v["readback_bytes_per_step"].as_f64(), Some(24.0), "{v}");
    let base = ["bench", "memory", "--model", "resnet18", "--bs", "2", "--size", "32", "--adapter", "gl"];
    let out = wgtune().args(base).args(["--precision", "f16"]).output().expect("run wgtune");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "f16 on an adapter without shader-f16 must fail");
    assert!(stderr.contains("shader-f16") && stderr.contains("llvmpipe") && stderr.contains("f32"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let out = wgtune().args(base).output().expect("run wgtune");
    assert!(out.status.success(), "f32 on the same adapter: {}", String::from_utf8_lossy(&out.stderr));
}
