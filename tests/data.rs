//! The data pipeline: every source format, every bad-input case, the loader's batches, malformed IDX and CSV
//! input that must never panic, and the executor's pixel input path.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use wgtune::data::dataset::{Column, CsvOptions, Dataset};
use wgtune::data::loader::{Loader, LoaderConfig};
use wgtune::ops::loss::Targets;
use wgtune::reference::SplitMix;

/// Loaders of single-label data: one class index per image.
const ONE_LABEL: Targets = Targets { classes: 10, multi_label: false };

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("wgtune-data-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small RGB PNG whose colour encodes `seed`.
fn write_png(path: &Path, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(12, 9, |x, y| image::Rgb([seed, (x * 20) as u8, (y * 25) as u8]));
    img.save(path).unwrap();
}

fn folder_with_split(root: &Path, classes: &[&str], per_class: usize) {
    for (c, class) in classes.iter().enumerate() {
        for i in 0..per_class {
            write_png(&root.join(class).join(format!("{i}.png")), (c * 10 + i) as u8);
        }
    }
}

#[test]
fn image_folder_with_train_and_valid() {
    let d = TempDir::new("tv");
    folder_with_split(&d.path().join("train"), &["cat", "dog"], 3);
    folder_with_split(&d.path().join("valid"), &["cat", "dog"], 1);
    let ds = Dataset::from_folder(d.path(), 0.2, 1).unwrap();
    assert_eq!(ds.classes, vec!["cat", "dog"]);
    assert_eq!((ds.train.len(), ds.valid.len()), (6, 2));
}

#[test]
fn image_folder_of_classes_splits_20_percent_with_a_seed() {
    let d = TempDir::new("split");
    folder_with_split(d.path(), &["a", "b", "c"], 10);
    let one = Dataset::from_folder(d.path(), 0.2, 7).unwrap();
    let again = Dataset::from_folder(d.path(), 0.2, 7).unwrap();
    let other = Dataset::from_folder(d.path(), 0.2, 8).unwrap();
    assert_eq!((one.train.len(), one.valid.len()), (24, 6));
    let names = |ds: &Dataset| ds.valid.iter().map(|i| i.describe()).collect::<Vec<_>>();
    assert_eq!(names(&one), names(&again), "same seed, same split");
    assert_ne!(names(&one), names(&other), "another seed, another split");
}

#[test]
fn csv_of_files_and_labels_with_and_without_header() {
    let d = TempDir::new("csv");
    for i in 0..6 {
        write_png(&d.path().join(format!("img{i}.png")), i as u8);
    }
    let rows: Vec<String> = (0..6).map(|i| format!("img{i}.png,{}", if i % 2 == 0 { "even" } else { "odd" })).collect();
    std::fs::write(d.path().join("labels.csv"), format!("file,label\n{}\n", rows.join("\n"))).unwrap();
    let ds = Dataset::from_csv(&d.path().join("labels.csv"), d.path(), &CsvOptions::default(), 0.34, 1).unwrap();
    assert_eq!(ds.classes, vec!["even", "odd"]);
    assert_eq!(ds.train.len() + ds.valid.len(), 6);
    std::fs::write(d.path().join("bare.csv"), rows.join("\n")).unwrap();
    assert_eq!(
        Dataset::from_csv(&d.path().join("bare.csv"), d.path(), &CsvOptions::default(), 0.34, 1).unwrap().classes.len(),
        2
    );
    let missing: Vec<String> = (0..8).map(|i| format!("gone{i}.png,x")).collect();
    std::fs::write(d.path().join("missing.csv"), format!("{}\nimg0.png,y\n", missing.join("\n"))).unwrap();
    let err = Dataset::from_csv(&d.path().join("missing.csv"), d.path(), &CsvOptions::default(), 0.2, 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("8 files that do not exist") && err.contains("gone0.png") && !err.contains("gone7.png"),
        "{err}"
    );
}

/// fastai's from_csv options: columns by name or position, a boolean split column, a folder prefix, quoted
/// fields; bad rows name the line and the column.
#[test]
fn csv_columns_split_column_folder_and_bad_rows() {
    let d = TempDir::new("csv-options");
    std::fs::create_dir_all(d.path().join("imgs")).unwrap();
    for i in 0..6 {
        write_png(&d.path().join(format!("imgs/img {i}.png")), i as u8);
    }
    let rows: Vec<String> = (0..6)
        .map(|i| {
            format!("{i},\"img {i}.png\",{},{}", ["\"cat, big\"", "dog"][i % 2], if i >= 4 { "True" } else { "False" })
        })
        .collect();
    let csv = d.path().join("labels.csv");
    std::fs::write(&csv, format!("id,fname,kind,is_valid\n{}\n\n", rows.join("\n"))).unwrap();
    let name = |s: &str| Column::Name(s.into());
    let opts = CsvOptions {
        image_col: name("fname"),
        label_col: name("kind"),
        valid_col: Some(name("is_valid")),
        folder: Some("imgs".into()),
        ..Default::default()
    };
    let ds = Dataset::from_csv(&csv, d.path(), &opts, 0.5, 1).unwrap();
    assert_eq!(ds.classes, ["cat, big", "dog"]);
    assert_eq!((ds.train.len(), ds.valid.len()), (4, 2), "the split column decides, not valid_pct");
    assert!(ds.valid.iter().all(|i| i.describe().ends_with("img 4.png") || i.describe().ends_with("img 5.png")));
    // The same columns by position.
    let by_index = CsvOptions {
        image_col: Column::parse("1"),
        label_col: Column::parse("2"),
        valid_col: Some(Column::parse("3")),
        folder: Some("imgs".into()),
        ..Default::default()
    };
    let again = Dataset::from_csv(&csv, d.path(), &by_index, 0.5, 1).unwrap();
    assert_eq!((again.classes.clone(), again.valid.len()), (ds.classes.clone(), 2));

    let err = |text: &str, opts: &CsvOptions| {
        std::fs::write(&csv, text).unwrap();
        Dataset::from_csv(&csv, d.path(), opts, 0.5, 1).unwrap_err().to_string()
    };
    let head = "id,fname,kind,is_valid\n0,img 0.png,cat,False\n";
    let e = err(head, &CsvOptions { label_col: name("label"), ..opts.clone() });
    assert!(e.contains("--csv-label-col 'label'") && e.contains("id, fname, kind, is_valid"), "{e}");
    let e = err(head, &CsvOptions { image_col: Column::Index(7), ..by_index.clone() });
    assert!(e.contains("--csv-image-col 7") && e.contains("4 columns"), "{e}");
    let e = err(&format!("{head}1,img 1.png,,False\n"), &opts);
    assert!(e.contains("line 3") && e.contains("column 'kind'") && e.contains("empty label"), "{e}");
    let e = err(&format!("{head}1,img 1.png,dog\n"), &opts);
    assert!(e.contains("line 3") && e.contains("'is_valid'") && e.contains("3 fields"), "{e}");
    let e = err(&format!("{head}1,img 1.png,dog,maybe\n"), &opts);
    assert!(e.contains("line 3") && e.contains("'maybe' is not true/false"), "{e}");
    let e = err(&format!("{head}1,img 9.png,dog,False\n"), &opts);
    assert!(e.contains("1 files that do not exist") && e.contains("img 9.png (line 3)"), "{e}");
    let e = err("\n\n", &opts);
    assert!(e.contains("has no rows"), "{e}");
}

#[test]
fn labels_from_a_filename_regex_pets_style() {
    let d = TempDir::new("regex");
    for (i, name) in [
        "Abyssinian_1.jpg",
        "Abyssinian_2.jpg",
        "beagle_10.jpg",
        "beagle_11.jpg",
        "great_pyrenees_3.jpg",
        "great_pyrenees_4.jpg",
    ]
    .iter()
    .enumerate()
    {
        let path = d.path().join(name);
        image::RgbImage::from_pixel(8, 8, image::Rgb([i as u8, 0, 0])).save(&path).unwrap();
    }
    let ds = Dataset::from_regex(d.path(), r"^(.+)_\d+\.jpg$", 0.34, 2).unwrap();
    assert_eq!(ds.classes, vec!["Abyssinian", "beagle", "great_pyrenees"]);
    let err = Dataset::from_regex(d.path(), r"^(\d+)\.png$", 0.2, 2).unwrap_err().to_string();
    assert!(err.contains("does not match"), "{err}");
}

fn idx_bytes(n: usize, h: usize, w: usize) -> (Vec<u8>, Vec<u8>) {
    let mut images = vec![0, 0, 8, 3];
    for d in [n, h, w] {
        images.extend((d as u32).to_be_bytes());
    }
    images.extend((0..n * h * w).map(|i| (i % 251) as u8));
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((n as u32).to_be_bytes());
    labels.extend((0..n).map(|i| (i % 3) as u8));
    (images, labels)
}

#[test]
fn idx_files_plain_and_gzipped() {
    let d = TempDir::new("idx");
    let (images, labels) = idx_bytes(30, 4, 5);
    std::fs::write(d.path().join("images.idx"), &images).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &labels).unwrap();
    std::fs::write(d.path().join("labels.idx.gz"), gz.finish().unwrap()).unwrap();
    let ds = Dataset::from_idx(&d.path().join("images.idx"), &d.path().join("labels.idx.gz"), None, 0.2, 3).unwrap();
    assert_eq!(ds.classes, vec!["0", "1", "2"]);
    assert_eq!((ds.train.len(), ds.valid.len()), (24, 6));
    let loader = Loader::new(
        ds.train,
        LoaderConfig {
            batch: 4,
            presize: 6,
            crop: None,
            shuffle: true,
            drop_last: true,
            seed: 1,
            workers: 2,
            prefetch: 2,
            targets: ONE_LABEL,
        },
    )
    .unwrap();
    let b = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!(b.pixels.len(), 4 * 6 * 6 * 3);
}

/// Truncations and byte flips of a valid IDX file: parse returns Ok or Err, never panics; CSV likewise.
#[test]
fn malformed_idx_and_csv_never_panic() {
    let (images, _) = idx_bytes(5, 3, 3);
    let mut rng = SplitMix(11);
    for len in 0..images.len() {
        let _ = wgtune::data::idx::parse(&images[..len], "truncated");
    }
    for _ in 0..2000 {
        let mut b = images.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(b.len() as u32) as usize;
            b[i] = rng.below(256) as u8;
        }
        let _ = wgtune::data::idx::parse(&b, "mutated");
    }
    assert!(wgtune::data::idx::parse(&images, "valid").is_ok());
    let d = TempDir::new("csvfuzz");
    for _ in 0..300 {
        let n = rng.below(60) as usize;
        let text: String = (0..n).map(|_| *b",\n\"ab.png x".get(rng.below(11) as usize).unwrap() as char).collect();
        std::fs::write(d.path().join("f.csv"), text).unwrap();
        let _ = Dataset::from_csv(&d.path().join("f.csv"), d.path(), &CsvOptions::default(), 0.2, 1);
    }
}

#[test]
fn bad_files_are_skipped_with_warnings_and_batches_stay_full() {
    let d = TempDir::new("bad");
    folder_with_split(d.path(), &["x", "y"], 4);
    std::fs::write(d.path().join("x/empty.png"), b"").unwrap();
    std::fs::write(d.path().join("x/notes.txt"), b"not an image").unwrap();
    std::fs::write(d.path().join("y/fake.jpg"), b"this is text, not a JPEG").unwrap();
    let good = std::fs::read(d.path().join("y/0.png")).unwrap();
    std::fs::write(d.path().join("y/truncated.png"), &good[..good.len() / 2]).unwrap();
    // The scan skips the empty file and the text file; decoding later finds the fake JPEG and the truncated PNG.
    let ds = Dataset::from_folder(d.path(), 0.2, 1).unwrap();
    assert_eq!(ds.skipped.len(), 2, "{:?}", ds.skipped);
    let items: Vec<_> = ds.train.iter().chain(&ds.valid).cloned().collect();
    let total = items.len();
    let loader = Loader::new(
        items,
        LoaderConfig {
            batch: 5,
            presize: 8,
            crop: None,
            shuffle: false,
            drop_last: false,
            seed: 0,
            workers: 2,
            prefetch: 1,
            targets: ONE_LABEL,
        },
    )
    .unwrap();
    let batches: Vec<_> = loader.epoch(0).collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(batches.len(), total.div_ceil(5));
    assert!(batches.iter().all(|b| b.labels.len() == 5 && b.pixels.len() == 5 * 8 * 8 * 3));
    assert_eq!(loader.bad_items(), 2, "the fake JPEG and the truncated PNG");
}

#[test]
fn data_set_errors_before_training() {
    let d = TempDir::new("errs");
    let err = Dataset::from_folder(d.path(), 0.2, 1).unwrap_err().to_string();
    assert!(err.contains("no classes"), "{err}");
    folder_with_split(d.path(), &["only"], 3);
    let err = Dataset::from_folder(d.path(), 0.2, 1).unwrap_err().to_string();
    assert!(err.contains("only one class"), "{err}");
    let e = TempDir::new("errs2");
    folder_with_split(&e.path().join("train"), &["a", "b"], 2);
    std::fs::create_dir_all(e.path().join("valid")).unwrap();
    let err = Dataset::from_folder(e.path(), 0.2, 1).unwrap_err().to_string();
    assert!(err.contains("no validation images"), "{err}");
    folder_with_split(&e.path().join("valid"), &["a", "c"], 1);
    let err = Dataset::from_folder(e.path(), 0.2, 1).unwrap_err().to_string();
    assert!(err.contains("'c'") && err.contains("not in"), "{err}");
    let err = Dataset::from_folder(&e.path().join("nope"), 0.2, 1).unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn loader_drops_or_pads_the_last_batch_and_shuffles_per_epoch() {
    let d = TempDir::new("loader");
    folder_with_split(d.path(), &["a", "b"], 5);
    let ds = Dataset::from_folder(d.path(), 0.2, 1).unwrap();
    let train = Loader::new(
        ds.train.clone(),
        LoaderConfig {
            batch: 3,
            presize: 4,
            crop: None,
            shuffle: true,
            drop_last: true,
            seed: 5,
            workers: 2,
            prefetch: 2,
            targets: ONE_LABEL,
        },
    )
    .unwrap();
    assert_eq!((train.len(), train.batches()), (8, 2));
    assert_eq!(train.order(0), train.order(0));
    assert_ne!(train.order(0), train.order(1));
    let valid = Loader::new(
        ds.train,
        LoaderConfig {
            batch: 3,
            presize: 4,
            crop: None,
            shuffle: false,
            drop_last: false,
            seed: 5,
            workers: 1,
            prefetch: 2,
            targets: ONE_LABEL,
        },
    )
    .unwrap();
    let batches: Vec<_> = valid.epoch(0).collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(batches.iter().map(|b| b.real).collect::<Vec<_>>(), vec![3, 3, 2]);
}

#[test]
fn the_embedded_fashion_mnist_subset_is_balanced() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/fashion_mnist");
    let ds = Dataset::from_folder(&root, 0.2, 1).unwrap();
    assert_eq!(ds.classes.len(), 10);
    assert_eq!((ds.train.len(), ds.valid.len()), (2000, 500));
    for c in 0..10u32 {
        assert_eq!(ds.train.iter().filter(|i| i.label() == c).count(), 200);
        assert_eq!(ds.valid.iter().filter(|i| i.label() == c).count(), 50);
    }
}

fn gpu() -> Arc<wgtune::gpu::Gpu> {
    static GPU: OnceLock<Arc<wgtune::gpu::Gpu>> = OnceLock::new();
    GPU.get_or_init(|| match wgtune::gpu::Gpu::new(&wgtune::gpu::AdapterRequest::from_env()) {
        Ok(g) => Arc::new(g),
        Err(e) => panic!("data tests need an adapter and found none: {e}"),
    })
    .clone()
}

/// The pixel path (u8 upload, GPU normalization with the identity transform) gives the same predictions as
/// normalizing on the CPU and uploading f32: evaluation batches come at the model's input size (as `predict`
/// decodes them), training batches at the presize.
#[test]
fn pixel_input_matches_cpu_normalization() {
    use wgtune::graph::executor::{Executor, ExecutorConfig, PixelInput};
    use wgtune::nn::Normalization;
    let build = || {
        let mut g = wgtune::graph::Graph::new();
        let x = g.input("image", &[2, 3, 8, 8]);
        let labels = g.labels("label", 2);
        let h = g.global_avg_pool("pool", x).unwrap();
        let logits = g.linear("fc", h, 3, true).unwrap();
        g.cross_entropy("loss", logits, labels, 0.0).unwrap();
        g
    };
    let norm = Normalization::imagenet();
    let mut a = Executor::new(gpu(), build(), ExecutorConfig::default()).unwrap();
    let mut b = Executor::new(gpu(), build(), ExecutorConfig::default()).unwrap();
    b.set_pixel_input(PixelInput { presize: 11, normalization: norm }).unwrap();
    let mut rng = SplitMix(4);
    let pixels: Vec<u8> = (0..2 * 8 * 8 * 3).map(|_| rng.below(256) as u8).collect();
    let mut f = Vec::new();
    for img in pixels.chunks(8 * 8 * 3) {
        wgtune::data::normalize_into(img, &norm, &mut f);
    }
    let pa = a.predict(&f).unwrap();
    let pb = b.predict_pixels(&pixels).unwrap();
    assert!(pa.iter().zip(&pb).all(|(x, y)| (x - y).abs() < 1e-5), "{pa:?} vs {pb:?}");
    assert!(b.predict(&f).is_err(), "f32 batches are refused once pixel input is set");
    let transforms = vec![wgtune::data::augment::ImageTransform::IDENTITY; 2];
    let err = b.train_step_pixels(&pixels, &transforms, &[0, 2]).unwrap_err().to_string();
    assert!(err.contains("a training pixel batch needs 2 images of 11x11x3 bytes"), "{err}");
    let presized: Vec<u8> = (0..2 * 11 * 11 * 3).map(|_| rng.below(256) as u8).collect();
    b.train_step_pixels(&presized, &transforms, &[0, 2]).unwrap();
    assert_eq!(b.wait_metrics().unwrap().len(), 1);
    let err = b.predict_pixels(&presized).unwrap_err().to_string();
    assert!(err.contains("an evaluation pixel batch needs 2 images of 8x8x3 bytes"), "{err}");
}

/// Links back up the tree (`up -> ..`, `again -> .`) are not followed: the scan ends, counts each image once and
/// never puts one file in both splits.
#[cfg(unix)]
#[test]
fn symbolic_link_loops_are_not_followed() {
    let d = TempDir::new("loops");
    folder_with_split(d.path(), &["a", "b"], 5);
    std::os::unix::fs::symlink("..", d.path().join("a/up")).unwrap();
    std::os::unix::fs::symlink("..", d.path().join("b/up")).unwrap();
    std::os::unix::fs::symlink(".", d.path().join("a/again")).unwrap();
    let ds = Dataset::from_folder(d.path(), 0.2, 1).unwrap();
    assert_eq!(ds.train.len() + ds.valid.len(), 10, "each image once");
    let files = |items: &[wgtune::data::dataset::Item]| -> std::collections::HashSet<String> {
        items.iter().map(|i| i.describe()).collect()
    };
    assert!(files(&ds.train).is_disjoint(&files(&ds.valid)), "no file in both splits");
    assert!(ds.skipped.iter().any(|(p, why)| p.ends_with("up") && why.contains("not followed")), "{:?}", ds.skipped);
}

#[test]
fn a_class_folder_without_images_is_an_error_naming_it() {
    let d = TempDir::new("emptyclass");
    folder_with_split(d.path(), &["a", "b"], 5);
    std::fs::create_dir_all(d.path().join("ghost")).unwrap();
    let err = Dataset::from_folder(d.path(), 0.2, 1).unwrap_err().to_string();
    assert!(err.contains("'ghost'") && err.contains("no images"), "{err}");
    let e = TempDir::new("emptyclass2");
    folder_with_split(&e.path().join("train"), &["a", "b"], 2);
    folder_with_split(&e.path().join("valid"), &["a", "b"], 1);
    std::fs::create_dir_all(e.path().join("train/ghost")).unwrap();
    let err = Dataset::from_folder(e.path(), 0.2, 1).unwrap_err().to_string();
    assert!(err.contains("'ghost'") && err.contains("no images"), "{err}");
}

/// Class names are text: a folder whose name is not UTF-8 is refused with its (lossy) name, in both layouts,
/// instead of silently losing its images or merging classes.
#[cfg(unix)]
#[test]
fn class_folders_with_non_utf8_names_are_refused() {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"cls\xff");
    let d = TempDir::new("utf8");
    folder_with_split(d.path(), &["ok"], 3);
    write_png(&d.path().join(bad).join("0.png"), 1);
    let err = Dataset::from_folder(d.path(), 0.2, 1).unwrap_err().to_string();
    assert!(err.contains("cls") && err.contains("not valid UTF-8"), "{err}");
    let e = TempDir::new("utf8tv");
    for split in ["train", "valid"] {
        folder_with_split(&e.path().join(split), &["ok"], 2);
        write_png(&e.path().join(split).join(bad).join("0.png"), 1);
    }
    let err = Dataset::from_folder(e.path(), 0.2, 1).unwrap_err().to_string();
    assert!(err.contains("not valid UTF-8"), "{err}");
}

/// A JPEG cut short is refused like a truncated PNG (the loader then skips it with a warning), not decoded
/// half grey.
#[test]
fn a_truncated_jpeg_is_an_error() {
    let d = TempDir::new("jpeg");
    let path = d.path().join("photo.jpg");
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, 90]));
    img.save(&path).unwrap();
    assert!(wgtune::data::load_rgb(&path).is_ok());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = wgtune::data::load_rgb(&path).unwrap_err().to_string();
    assert!(err.contains("photo.jpg") && err.contains("truncated"), "{err}");
}

/// A PNG whose header claims 100000 x 100000 pixels is refused by the decoder's memory limit, before allocating.
#[test]
fn an_image_header_claiming_gigapixels_is_refused_before_allocating() {
    let d = TempDir::new("giga");
    let path = d.path().join("huge.png");
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend(kind);
        c.extend(data);
        c.extend(crc.sum().to_be_bytes());
        c
    };
    let mut ihdr = 100_000u32.to_be_bytes().to_vec();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    // A little compressed image data, as a bomb carries (zeros compress a thousandfold).
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut z, &[0u8; 100_000]).unwrap();
    png.extend(chunk(b"IDAT", &z.finish().unwrap()));
    png.extend(chunk(b"IEND", &[]));
    std::fs::write(&path, png).unwrap();
    let err = wgtune::data::load_rgb(&path).unwrap_err().to_string();
    assert!(err.contains("huge.png") && err.contains("100000x100000"), "{err}");
}

/// The evaluation crop: torchvision's 256 -> 224 in proportion with an even margin; an image already at the presize
/// is cut, not resampled; other sizes come out `size` square. A loader with `crop` gives the same centre squares.
#[test]
fn evaluation_crop_cuts_the_centre_of_the_presized_image() {
    use wgtune::data::{eval_crop, presize_for};
    assert_eq!([presize_for(224), presize_for(64), presize_for(32), presize_for(16)], [256, 74, 36, 18]);
    let mut rng = SplitMix(6);
    let img = image::RgbImage::from_fn(74, 74, |_, _| image::Rgb([rng.below(256) as u8, 7, 9]));
    let out = eval_crop(&img, 64);
    assert_eq!(out.len(), 64 * 64 * 3);
    for (y, row) in out.chunks_exact(64 * 3).enumerate() {
        for (x, px) in row.chunks_exact(3).enumerate() {
            assert_eq!(px, &img.get_pixel(x as u32 + 5, y as u32 + 5).0, "({x}, {y})");
        }
    }
    let wide = image::RgbImage::from_pixel(300, 97, image::Rgb([1, 2, 3]));
    assert_eq!(eval_crop(&wide, 32), [1, 2, 3].repeat(32 * 32));

    let d = TempDir::new("crop");
    folder_with_split(d.path(), &["a", "b"], 3);
    let items = Dataset::from_folder(d.path(), 0.2, 1).unwrap().train;
    let cfg = |crop| LoaderConfig {
        batch: 3,
        presize: 10,
        crop,
        shuffle: false,
        drop_last: false,
        seed: 0,
        workers: 1,
        prefetch: 1,
        targets: ONE_LABEL,
    };
    let whole = Loader::new(items.clone(), cfg(None)).unwrap().epoch(0).next().unwrap().unwrap();
    let cut = Loader::new(items, cfg(Some(8))).unwrap().epoch(0).next().unwrap().unwrap();
    assert_eq!(cut.pixels.len(), 3 * 8 * 8 * 3);
    for (w, c) in whole.pixels.chunks_exact(10 * 10 * 3).zip(cut.pixels.chunks_exact(8 * 8 * 3)) {
        assert_eq!(wgtune::data::center_square(w, 10, 8), c);
    }
    assert!(Loader::new(vec![], cfg(Some(11))).is_err());
}

/// Resizing a 1 x 30000 strip to 64 px crops the centre square first: the result is the right size and the
/// intermediate stays small (the old path made a 64 x 1.9M image).
#[test]
fn extreme_aspect_ratios_resize_within_bounded_memory() {
    let strip = image::RgbImage::from_fn(1, 30_000, |_, y| image::Rgb([(y % 256) as u8, 0, 0]));
    let out = wgtune::data::resize_center_crop(&strip, 64);
    assert_eq!(out.len(), 64 * 64 * 3);
    let wide = image::RgbImage::from_fn(300, 200, |x, y| image::Rgb([x as u8, y as u8, 7]));
    assert_eq!(wgtune::data::resize_center_crop(&wide, 32).len(), 32 * 32 * 3);
}

#[test]
fn a_data_set_where_nothing_decodes_names_an_image() {
    let d = TempDir::new("nodecode");
    for class in ["a", "b"] {
        std::fs::create_dir_all(d.path().join(class)).unwrap();
        for i in 0..3 {
            std::fs::write(d.path().join(class).join(format!("{i}.png")), b"not a png").unwrap();
        }
    }
    let ds = Dataset::from_folder(d.path(), 0.2, 1).unwrap();
    let loader = Loader::new(
        ds.train.clone(),
        LoaderConfig {
            batch: 2,
            presize: 8,
            crop: None,
            shuffle: false,
            drop_last: true,
            seed: 0,
            workers: 1,
            prefetch: 1,
            targets: ONE_LABEL,
        },
    )
    .unwrap();
    let err = loader.epoch(0).next().unwrap().unwrap_err().to_string();
    assert!(err.contains("no image of the data set can be decoded") && err.contains(".png"), "{err}");
}
