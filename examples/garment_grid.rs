//! Make a multi-label data set from real photographs of garments: 2x2 grids of the embedded Fashion-MNIST images
//! (one to four garments per grid, empty cells black), labelled with every class in the grid, as a CSV for
//! `wgtune finetune --csv DIR/labels.csv --label-delim ' ' --valid-col is_valid`. Validation grids are made from
//! the validation images only.
//!
//!     cargo run --release --example garment_grid -- OUT_DIR [TRAIN_GRIDS [VALID_GRIDS]]

use std::path::{Path, PathBuf};

use wgtune::reference::SplitMix;

/// Side of one Fashion-MNIST image, and so of a grid cell.
const CELL: u32 = 28;

fn images_by_class(split: &Path) -> Vec<(String, Vec<PathBuf>)> {
    let mut classes: Vec<(String, Vec<PathBuf>)> = std::fs::read_dir(split)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", split.display()))
        .map(|d| d.expect("a folder entry").path())
        .filter(|p| p.is_dir())
        .map(|d| {
            let mut files: Vec<PathBuf> =
                std::fs::read_dir(&d).expect("a class folder").map(|f| f.unwrap().path()).collect();
            files.sort();
            (d.file_name().unwrap().to_string_lossy().into_owned(), files)
        })
        .collect();
    classes.sort();
    classes
}

/// `n` grids from the images of `split`, written as OUT/images/{prefix}{i}.png; returns their CSV rows.
fn grids(split: &Path, out: &Path, prefix: &str, n: usize, valid: bool, rng: &mut SplitMix) -> Vec<String> {
    let classes = images_by_class(split);
    let mut rows = Vec::new();
    for i in 0..n {
        let mut grid = image::GrayImage::new(2 * CELL, 2 * CELL);
        let filled = 1 + rng.below(4) as usize;
        let mut cells: Vec<u32> = (0..4).collect();
        for k in (1..4).rev() {
            cells.swap(k, rng.below(k as u32 + 1) as usize);
        }
        let mut labels: Vec<&str> = Vec::new();
        for &cell in &cells[..filled] {
            let (name, files) = &classes[rng.below(classes.len() as u32) as usize];
            let file = &files[rng.below(files.len() as u32) as usize];
            let img = image::open(file).unwrap_or_else(|e| panic!("{}: {e}", file.display())).to_luma8();
            image::imageops::replace(&mut grid, &img, ((cell % 2) * CELL) as i64, ((cell / 2) * CELL) as i64);
            if !labels.contains(&name.as_str()) {
                labels.push(name);
            }
        }
        labels.sort();
        let file = format!("{prefix}{i:04}.png");
        grid.save(out.join("images").join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        rows.push(format!("images/{file},{},{valid}", labels.join(" ")));
    }
    rows
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first().map(PathBuf::from) else {
        eprintln!("usage: garment_grid OUT_DIR [TRAIN_GRIDS [VALID_GRIDS]]");
        std::process::exit(2);
    };
    let count = |i: usize, default: usize| args.get(i).map_or(default, |a| a.parse().expect("a number of grids"));
    let (train, valid) = (count(1, 800), count(2, 200));
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/fashion_mnist");
    std::fs::create_dir_all(out.join("images")).expect("the output folder");
    let mut rng = SplitMix(7);
    let mut rows = vec!["file,labels,is_valid".to_string()];
    rows.extend(grids(&assets.join("train"), &out, "train", train, false, &mut rng));
    rows.extend(grids(&assets.join("valid"), &out, "valid", valid, true, &mut rng));
    let csv = out.join("labels.csv");
    std::fs::write(&csv, rows.join("\n") + "\n").expect("labels.csv");
    println!("wrote {} grids and {}", train + valid, csv.display());
}
