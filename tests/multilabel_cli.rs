//! Multi-label classification from the command line (fastai's planet recipe): a CSV whose label cells hold several
//! labels, sigmoid outputs and binary cross-entropy, accuracy_multi and F2 in the epoch table and the JSON log, and
//! `predict` listing every label above the threshold. The task is synthetic: each image holds one to four coloured
//! marks in fixed corners, and its labels are the marks it holds.

mod support;

use support::{json_lines, run_ok, temp_dir, wgtune};

const MARKS: [(&str, [u8; 3]); 4] =
    [("red", [220, 30, 30]), ("green", [30, 200, 40]), ("blue", [40, 60, 230]), ("black", [10, 10, 10])];

/// `n` 32x32 PNGs on grey backgrounds of random shades and 10x10 marks (mark k in corner k), at least one per image; the
/// CSV `marks.csv` (file, space-separated tags, is_valid: the last `valid` rows). Returns the fraction of (image,
/// mark) pairs in the validation rows that are absent: the all-negative predictor's accuracy_multi.
fn marks(dir: &std::path::Path, n: usize, valid: usize) -> f64 {
    let mut rng = wgtune::reference::SplitMix(11);
    let mut rows = vec!["file,tags,is_valid".to_string()];
    let mut absent = 0;
    for i in 0..n {
        let mut on: Vec<usize> = (0..4).filter(|_| rng.uniform(0.0, 1.0) < 0.5).collect();
        if on.is_empty() {
            on.push(rng.below(4) as usize);
        }
        let v = 100 + rng.below(50) as u8;
        let mut img = image::RgbImage::from_pixel(32, 32, image::Rgb([v, v, v]));
        for &k in &on {
            let (x0, y0) = ((k % 2) as u32 * 20 + 1, (k / 2) as u32 * 20 + 1);
            for y in y0..y0 + 10 {
                for x in x0..x0 + 10 {
                    img.put_pixel(x, y, image::Rgb(MARKS[k].1));
                }
            }
        }
        let file = format!("img{i:03}.png");
        img.save(dir.join(&file)).unwrap();
        let tags: Vec<&str> = on.iter().map(|&k| MARKS[k].0).collect();
        let is_valid = i >= n - valid;
        if is_valid {
            absent += 4 - on.len();
        }
        rows.push(format!("{file},{},{is_valid}", tags.join(" ")));
    }
    std::fs::write(dir.join("marks.csv"), rows.join("\n") + "\n").unwrap();
    absent as f64 / (4 * valid) as f64
}

#[test]
fn multi_label_csv_trains_scores_and_predicts_every_label_above_the_threshold() {
    let dir = temp_dir("multilabel");
    let baseline = marks(&dir.0, 208, 32);
    let (csv, out, log) = (dir.0.join("marks.csv"), dir.0.join("m.safetensors"), dir.0.join("log.jsonl"));
    let mut run = wgtune();
    let run = run
        .args([
            "finetune",
            "--size",
            "32",
            "--bs",
            "16",
            "--epochs",
            "4",
            "--freeze-epochs",
            "1",
            "--lr",
            "1e-2",
            "--no-augment",
            "--tta",
            "--csv",
        ])
        .arg(&csv)
        .args(["--csv-label-col", "tags", "--valid-col", "is_valid", "--label-delim", " ", "--out"])
        .arg(&out)
        .arg("--json-log")
        .arg(&log);
    let (stdout, stderr) = run_ok(run);
    assert!(stderr.contains("(4 classes, 176 train, 32 valid images; multi-label: sigmoid outputs"), "{stderr}");
    assert!(stdout.contains("accuracy_multi  fbeta_score"), "{stdout}");
    assert!(stdout.contains("multi-label validation (32 images, threshold 0.5): accuracy_multi "), "{stdout}");
    assert!(stdout.contains("test-time augmentation") && stdout.contains("accuracy_multi"), "{stdout}");
    let records = json_lines(&log);
    let last = &records[records.len() - 2];
    let (acc, f2) = (last["accuracy"].as_f64().unwrap(), last["fbeta"].as_f64().unwrap());
    eprintln!("accuracy_multi {acc:.4} (all-negative baseline {baseline:.4}), F2 {f2:.4}");
    assert!(acc > baseline + 0.25 && acc > 0.8, "accuracy_multi {acc} vs all-negative {baseline}\n{stdout}");
    assert!(f2 > 0.7, "F2 {f2}\n{stdout}");
    assert!(records.last().unwrap()["tta"]["fbeta"].is_f64(), "{records:?}");

    // predict on the validation images: every label above the threshold, most probable first, from the saved
    // model's mode; scored against the CSV, predict's accuracy_multi is the run's (validation sees an image as
    // predict does).
    let images: Vec<_> = (176..208).map(|i| dir.0.join(format!("img{i:03}.png"))).collect();
    let pred = wgtune().args(["predict", "--json", "--model"]).arg(&out).args(&images).output().unwrap();
    let text = String::from_utf8_lossy(&pred.stdout);
    assert!(pred.status.success(), "{text}\n{}", String::from_utf8_lossy(&pred.stderr));
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    let mut right = 0;
    for (line, row) in text.lines().zip(csv_text.lines().skip(177)) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["threshold"], 0.5);
        let labels: Vec<(&str, f64)> = v["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["label"].as_str().unwrap(), l["prob"].as_f64().unwrap()))
            .collect();
        let above: Vec<(&str, f64)> = v["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["label"].as_str().unwrap(), l["prob"].as_f64().unwrap()))
            .filter(|l| l.1 > 0.5)
            .collect();
        assert_eq!(labels, above, "{v}");
        let truth: Vec<&str> = row.split(',').nth(1).unwrap().split(' ').collect();
        right += MARKS.iter().filter(|(m, _)| truth.contains(m) == labels.iter().any(|l| l.0 == *m)).count();
    }
    let predicted = right as f64 / (4 * images.len()) as f64;
    assert!((predicted - acc).abs() < 1e-9, "predict's accuracy_multi {predicted} vs the run's {acc}");
    let image = &images[0];
    // A threshold of 1 predicts nothing; the text output says how many labels passed.
    let none = wgtune().args(["predict", "--threshold", "1", "--model"]).arg(&out).arg(image).output().unwrap();
    let text = String::from_utf8_lossy(&none.stdout);
    assert!(none.status.success() && text.contains("(0 labels above 1)"), "{text}");

    // Errors: an empty label between delimiters names the line; --multi-label needs a CSV.
    std::fs::write(&csv, "file,tags\nimg000.png,;\n").unwrap();
    let bad = wgtune().args(["lr-find", "--csv"]).arg(&csv).args(["--label-delim", ";"]).output().unwrap();
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && e.contains("line 2") && e.contains("no labels between the delimiters"), "{e}");
    let bad = wgtune().args(["lr-find", "--multi-label"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--csv"));
}
