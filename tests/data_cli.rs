//! The data sources of the command line (fastai's from_csv, from_name_re and IDX files): each runs a short
//! `lr-find` (two steps at 32 px) so the data goes through the whole pipeline, and each says where its data came
//! from; bad rows and option mistakes end in errors naming the line, the column or the option.

use std::path::Path;
use std::process::Output;

mod support;

use support::{fashion_folder, temp_dir, wgtune};

/// A two-step lr-find on `data_args`; returns stderr after checking it succeeded.
fn lr_find(dir: &Path, data_args: &[&str]) -> String {
    let plot = dir.join("lr.png");
    let out = wgtune()
        .arg("lr-find")
        .args(data_args)
        .args(["--size", "32", "--bs", "2", "--num-it", "2", "--plot"])
        .arg(&plot)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "lr-find {data_args:?} failed: {stderr}");
    stderr
}

fn failure(out: Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !stderr.contains("panicked"), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "expected {n:?} in: {stderr}");
    }
}

/// The embedded images of two classes as DIR/images/<Class>_<i>.png, and their names.
fn flat_images(dir: &Path, per_class: usize) -> Vec<(String, &'static str)> {
    let folders = dir.join("folders");
    fashion_folder(&folders, per_class, 0);
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut names = vec![];
    for class in ["Trouser", "Bag"] {
        let mut files: Vec<_> =
            std::fs::read_dir(folders.join("train").join(class)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for (i, f) in files.iter().enumerate() {
            let name = format!("{class}_{i}.png");
            std::fs::copy(f, images.join(&name)).unwrap();
            names.push((name, class));
        }
    }
    names
}

#[test]
fn csv_with_named_columns_a_split_column_and_a_folder() {
    let dir = temp_dir("data-csv");
    let names = flat_images(&dir.0, 3);
    let rows: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, (name, class))| format!("{name},{class},{}", if i % 3 == 2 { "true" } else { "false" }))
        .collect();
    let csv = dir.0.join("labels.csv");
    std::fs::write(&csv, format!("fname,kind,is_valid\n{}\n", rows.join("\n"))).unwrap();
    let csv_arg = csv.display().to_string();
    let args = ["--csv", &csv_arg, "--csv-image-col", "fname", "--csv-label-col", "kind", "--valid-col", "is_valid"];
    let stderr = lr_find(&dir.0, &[&args[..], &["--folder", "images", "--valid-pct", "0.5"]].concat());
    assert!(stderr.contains(&format!("data: {csv_arg} (2 classes, 4 train, 2 valid images)")), "{stderr}");
    assert!(stderr.contains("--valid-pct is ignored: the CSV's column 'is_valid' splits the data"), "{stderr}");

    // Bad rows and columns: the line and the column are named.
    std::fs::write(&csv, format!("fname,kind,is_valid\n{}\nTrouser_0.png,,false\n", rows.join("\n"))).unwrap();
    failure(
        wgtune().args(["lr-find"]).args(args).args(["--folder", "images"]).output().unwrap(),
        &["labels.csv' line 8, column 'kind': empty label"],
    );
    std::fs::write(&csv, format!("fname,kind,is_valid\n{}\nnope.png,Bag,false\n", rows.join("\n"))).unwrap();
    failure(
        wgtune().args(["lr-find"]).args(args).args(["--folder", "images"]).output().unwrap(),
        &["1 files that do not exist", "nope.png (line 8)"],
    );
    failure(
        wgtune().args(["lr-find", "--csv", &csv_arg, "--csv-label-col", "label"]).output().unwrap(),
        &["--csv-label-col 'label'", "fname, kind, is_valid"],
    );
}

#[test]
fn labels_from_a_regex_on_file_names() {
    let dir = temp_dir("data-regex");
    flat_images(&dir.0, 4);
    let images = dir.0.join("images").display().to_string();
    let stderr = lr_find(&dir.0, &["--data", &images, "--label-regex", r"^(.+)_\d+\.png$", "--valid-pct", "0.25"]);
    assert!(stderr.contains("(labels from --label-regex) (2 classes, 6 train, 2 valid images)"), "{stderr}");
    failure(
        wgtune().args(["lr-find", "--data", &images, "--label-regex", r"^(\d+)\.png$"]).output().unwrap(),
        &["--label-regex", "does not match file"],
    );
    failure(wgtune().args(["lr-find", "--label-regex", "(.+)"]).output().unwrap(), &["--data"]);
}

/// MNIST-format files: 12 random 28x28 images with labels 0, 1, 2.
fn idx_files(dir: &Path) -> (String, String) {
    let mut images = vec![0, 0, 8, 3];
    for d in [12u32, 28, 28] {
        images.extend(d.to_be_bytes());
    }
    images.extend((0..12 * 28 * 28).map(|i: usize| (i * 7919 % 251) as u8));
    let mut labels = vec![0, 0, 8, 1];
    labels.extend(12u32.to_be_bytes());
    labels.extend((0..12).map(|i| (i % 3) as u8));
    let (i, l) = (dir.join("images-idx3-ubyte"), dir.join("labels-idx1-ubyte"));
    std::fs::write(&i, images).unwrap();
    std::fs::write(&l, labels).unwrap();
    (i.display().to_string(), l.display().to_string())
}

#[test]
fn idx_files_with_class_names() {
    let dir = temp_dir("data-idx");
    let (images, labels) = idx_files(&dir.0);
    let stderr = lr_find(&dir.0, &["--idx-images", &images, "--idx-labels", &labels, "--idx-classes", "zero,one,two"]);
    assert!(stderr.contains("(3 classes, 10 train, 2 valid images)"), "{stderr}");
    failure(
        wgtune()
            .args(["lr-find", "--idx-images", &images, "--idx-labels", &labels, "--idx-classes", "a,b"])
            .output()
            .unwrap(),
        &["labels up to 2 but 2 class names were given (a, b)"],
    );
    failure(wgtune().args(["lr-find", "--idx-images", &images]).output().unwrap(), &["--idx-labels"]);
    failure(
        wgtune().args(["lr-find", "--idx-images", &images, "--idx-labels", &labels, "--data", "x"]).output().unwrap(),
        &["--data", "cannot be used with"],
    );
}
