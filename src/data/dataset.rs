//! Labelled image collections: image folders, a CSV of `file,label`, labels from a filename regex, and IDX files
//! (MNIST / Fashion-MNIST). Every source ends as a [`Dataset`] of train and valid items with class names, checked
//! before training starts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::reference::SplitMix;

/// File extensions the decoder reads.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif"];

/// Where an item's pixels come from.
#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    /// An image file's bytes held in memory (in a browser: a file the user chose), with its name for messages.
    Encoded {
        name: String,
        bytes: Arc<[u8]>,
    },
    /// An image held in memory (IDX files): grey pixels, row-major.
    Grey {
        width: u32,
        height: u32,
        pixels: Arc<[u8]>,
    },
}

/// One labelled image.
#[derive(Clone, Debug)]
pub struct Item {
    pub source: Source,
    /// Its classes, sorted: exactly one in a single-label data set, any number in a multi-label one.
    pub labels: Vec<u32>,
}

impl Item {
    /// An image of one class.
    pub fn new(source: Source, label: u32) -> Item {
        Item { source, labels: vec![label] }
    }

    /// The class of a single-label item (its first).
    pub fn label(&self) -> u32 {
        self.labels.first().copied().unwrap_or(0)
    }

    /// A short name for messages.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::File(p) => p.display().to_string(),
            Source::Encoded { name, .. } => name.clone(),
            Source::Grey { .. } => "(in-memory image)".into(),
        }
    }
}

/// A CSV column: by header name, or by position from 0 (fastai's `fn_col=0`, `label_col=1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Column {
    Index(usize),
    Name(String),
}

impl Column {
    /// A number is a position, anything else a header name.
    pub fn parse(s: &str) -> Column {
        s.parse().map_or_else(|_| Column::Name(s.to_string()), Column::Index)
    }
}

/// How [`Dataset::from_csv`] reads a CSV: fastai's `fn_col`, `label_col`, `valid_col` and `folder`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvOptions {
    pub image_col: Column,
    pub label_col: Column,
    /// A true/false column that puts the row in the validation set; None: a random split.
    pub valid_col: Option<Column>,
    /// A folder the file names are relative to, itself relative to the CSV's root.
    pub folder: Option<PathBuf>,
    /// Splits a label cell into several labels (fastai's `label_delim`, ' ' for the planet data set); a data set
    /// where some row has several labels is multi-label.
    pub label_delim: Option<String>,
    /// Multi-label even when every row has one label.
    pub multi_label: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            image_col: Column::Index(0),
            label_col: Column::Index(1),
            valid_col: None,
            folder: None,
            label_delim: None,
            multi_label: false,
        }
    }
}

/// How labelled rows are split into train and valid.
enum SplitBy {
    /// A seeded random fraction (valid_pct, seed) goes to valid.
    Random(f64, u64),
    /// Each row says (a CSV's split column).
    Flagged,
}

/// Train and valid items with their class names.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub classes: Vec<String>,
    /// Images have any number of classes (sigmoid outputs, binary cross-entropy), not exactly one.
    pub multi_label: bool,
    pub train: Vec<Item>,
    pub valid: Vec<Item>,
    /// Files passed over while scanning (not images, empty), with the reason; each was warned about once.
    pub skipped: Vec<(PathBuf, String)>,
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Image files below `dir` (sorted, recursive), with non-images and empty files reported in `skipped`. As
/// fastai's get_image_files (os.walk), symbolic links to folders below `dir` are not followed: a link back up the
/// tree would otherwise loop, or list the same images many times.
fn image_files(dir: &Path, skipped: &mut Vec<(PathBuf, String)>) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).map_err(|e| Error::Invalid(format!("cannot read folder '{}': {e}", d.display())))?;
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let link = entry.file_type().is_ok_and(|t| t.is_symlink());
            if path.is_dir() {
                if link {
                    skipped.push((path, "a symbolic link to a folder (not followed)".into()));
                } else {
                    stack.push(path);
                }
            } else if link && !path.exists() {
                skipped.push((path, "a broken symbolic link".into()));
            } else if !is_image(&path) {
                skipped.push((path, "not an image file (by extension)".into()));
            } else if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) == 0 {
                skipped.push((path, "empty file".into()));
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn warn_skipped(skipped: &[(PathBuf, String)]) {
    for (p, why) in skipped {
        log::warn!("skipping {}: {why}", p.display());
    }
}

/// The folders in `dir` (class folders), sorted. Their names become class names, so each must be valid UTF-8.
fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::Invalid(format!("cannot read folder '{}': {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    if let Some(bad) = v.iter().find(|p| p.file_name().and_then(|n| n.to_str()).is_none()) {
        return Err(Error::Invalid(format!(
            "class folder '{}' has a name that is not valid UTF-8: class names must be text; rename the folder",
            bad.display()
        )));
    }
    v.sort();
    Ok(v)
}

fn name_of(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Split items into (train, valid) with a seeded shuffle: `valid_pct` of them (at least one) go to valid.
pub fn random_split(items: Vec<Item>, valid_pct: f64, seed: u64) -> (Vec<Item>, Vec<Item>) {
    let mut order: Vec<usize> = (0..items.len()).collect();
    let mut rng = SplitMix(seed);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u32 + 1) as usize);
    }
    let n_valid = ((items.len() as f64 * valid_pct).round() as usize).clamp(1.min(items.len()), items.len());
    let valid_idx: BTreeSet<usize> = order[..n_valid].iter().copied().collect();
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for (i, item) in items.into_iter().enumerate() {
        if valid_idx.contains(&i) {
            valid.push(item);
        } else {
            train.push(item);
        }
    }
    (train, valid)
}

impl Dataset {
    /// `DIR/train/<class>/*` + `DIR/valid/<class>/*`, or `DIR/<class>/*` split with `valid_pct` (seeded).
    pub fn from_folder(dir: &Path, valid_pct: f64, seed: u64) -> Result<Dataset> {
        if !dir.is_dir() {
            let why = if dir.is_file() {
                "is a file, not a folder (a CSV of file,label rows goes to --csv)"
            } else if dir.symlink_metadata().is_ok() {
                "is a broken symbolic link"
            } else {
                "does not exist"
            };
            return Err(Error::Invalid(format!("data folder '{}' {why}", dir.display())));
        }
        let mut skipped = Vec::new();
        let (train_dir, valid_dir) = (dir.join("train"), dir.join("valid"));
        let ds = if train_dir.is_dir() && valid_dir.is_dir() {
            let classes: Vec<String> = subdirs(&train_dir)?.iter().map(|p| name_of(p)).collect();
            let valid_classes: Vec<String> = subdirs(&valid_dir)?.iter().map(|p| name_of(p)).collect();
            if let Some(extra) = valid_classes.iter().find(|c| !classes.contains(c)) {
                return Err(Error::Invalid(format!(
                    "class '{extra}' appears in '{}' but not in '{}': the model could never learn it",
                    valid_dir.display(),
                    train_dir.display()
                )));
            }
            let collect = |root: &Path, skipped: &mut Vec<(PathBuf, String)>| -> Result<Vec<Item>> {
                let mut items = Vec::new();
                for (label, class) in classes.iter().enumerate() {
                    let d = root.join(class);
                    if d.is_dir() {
                        for f in image_files(&d, skipped)? {
                            items.push(Item::new(Source::File(f), label as u32));
                        }
                    }
                }
                Ok(items)
            };
            let train = collect(&train_dir, &mut skipped)?;
            let valid = collect(&valid_dir, &mut skipped)?;
            Dataset { classes, multi_label: false, train, valid, skipped }
        } else {
            let class_dirs = subdirs(dir)?;
            let classes: Vec<String> = class_dirs.iter().map(|p| name_of(p)).collect();
            let mut items = Vec::new();
            for (label, d) in class_dirs.iter().enumerate() {
                for f in image_files(d, &mut skipped)? {
                    items.push(Item::new(Source::File(f), label as u32));
                }
            }
            // One file reached twice (a class folder linked to another) must not land in both splits.
            let mut seen = std::collections::HashSet::new();
            items.retain(|item| match &item.source {
                Source::File(f) => seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())),
                Source::Encoded { .. } | Source::Grey { .. } => true,
            });
            let (train, valid) = random_split(items, valid_pct, seed);
            Dataset { classes, multi_label: false, train, valid, skipped }
        };
        warn_skipped(&ds.skipped);
        ds.check(&dir.display().to_string())
    }

    /// fastai's `ImageDataLoaders.from_csv`: one row per image, the file name in `opts.image_col` (relative to
    /// `root`, joined with `opts.folder`), the label in `opts.label_col`, and the split from `opts.valid_col`
    /// (true/false, 1/0, yes/no) or, without one, a seeded random `valid_pct`. The first row is a header when a
    /// column is chosen by name or when its file cell has no image extension (`file`, `fname`). Errors name the
    /// CSV, the line and the column: an unknown column, a short row, an empty file name or label, a bad split
    /// value, files that do not exist (the first five).
    pub fn from_csv(csv: &Path, root: &Path, opts: &CsvOptions, valid_pct: f64, seed: u64) -> Result<Dataset> {
        let origin = csv.display().to_string();
        let bytes = std::fs::read(csv).map_err(|e| Error::Invalid(format!("cannot read '{origin}': {e}")))?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(bytes.as_slice());
        let mut records = Vec::new();
        for r in reader.records() {
            let r = r.map_err(|e| Error::Invalid(format!("'{origin}': {e}")))?;
            // Blank lines are no rows.
            if !(r.len() == 1 && r[0].is_empty()) {
                records.push(r);
            }
        }
        let Some(first) = records.first() else {
            return Err(Error::Invalid(format!("'{origin}' has no rows")));
        };
        let dir = opts.folder.as_ref().map_or_else(|| root.to_path_buf(), |f| root.join(f));
        let by_name = [Some(&opts.image_col), Some(&opts.label_col), opts.valid_col.as_ref()]
            .into_iter()
            .flatten()
            .any(|c| matches!(c, Column::Name(_)));
        let header = by_name
            || match &opts.image_col {
                Column::Index(i) => first.get(*i).is_none_or(|f| !is_image(Path::new(f))),
                Column::Name(_) => true,
            };
        let names: Vec<String> = if header { first.iter().map(str::to_string).collect() } else { vec![] };
        let width = first.len();
        let resolve = |c: &Column, option: &str| -> Result<(usize, String)> {
            match c {
                Column::Index(i) if *i < width => {
                    Ok((*i, names.get(*i).map_or_else(|| format!("#{i}"), |n| format!("'{n}'"))))
                }
                Column::Index(i) => {
                    Err(Error::Invalid(format!("{option} {i}: '{origin}' has {width} columns (numbered from 0)")))
                }
                Column::Name(n) => names.iter().position(|h| h == n).map(|i| (i, format!("'{n}'"))).ok_or_else(|| {
                    Error::Invalid(format!(
                        "{option} '{n}': '{origin}' has no such column (its header: {})",
                        names.join(", ")
                    ))
                }),
            }
        };
        let (image_col, image_name) = resolve(&opts.image_col, "--csv-image-col")?;
        let (label_col, label_name) = resolve(&opts.label_col, "--csv-label-col")?;
        let valid_col = opts.valid_col.as_ref().map(|c| resolve(c, "--valid-col")).transpose()?;
        let mut rows = Vec::new();
        let mut missing = Vec::new();
        for r in records.iter().skip(header as usize) {
            let line = r.position().map_or(0, |p| p.line());
            let cell = |col: usize, name: &str, what: &str| -> Result<String> {
                match r.get(col) {
                    Some("") => Err(Error::Invalid(format!("'{origin}' line {line}, column {name}: empty {what}"))),
                    Some(v) => Ok(v.to_string()),
                    None => Err(Error::Invalid(format!(
                        "'{origin}' line {line} has {} fields: no column {name} ({what})",
                        r.len()
                    ))),
                }
            };
            let file = dir.join(cell(image_col, &image_name, "file name")?);
            let cell_text = cell(label_col, &label_name, "label")?;
            let label: Vec<String> = match &opts.label_delim {
                Some(d) => {
                    cell_text.split(d.as_str()).map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
                }
                None => vec![cell_text],
            };
            if label.is_empty() {
                return Err(Error::Invalid(format!(
                    "'{origin}' line {line}, column {label_name}: no labels between the delimiters"
                )));
            }
            let valid = match &valid_col {
                None => false,
                Some((col, name)) => {
                    let v = cell(*col, name, "split value")?;
                    match v.to_ascii_lowercase().as_str() {
                        "true" | "1" | "yes" | "t" | "y" => true,
                        "false" | "0" | "no" | "f" | "n" => false,
                        _ => {
                            return Err(Error::Invalid(format!(
                                "'{origin}' line {line}, column {name}: '{v}' is not true/false (or 1/0, yes/no)"
                            )))
                        }
                    }
                }
            };
            if !file.is_file() {
                missing.push(format!("{} (line {line})", file.display()));
            }
            rows.push((file, label, valid));
        }
        if !missing.is_empty() {
            let first: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
            return Err(Error::Invalid(format!(
                "'{origin}' names {} files that do not exist (column {image_name}, relative to '{}'), e.g. {}",
                missing.len(),
                dir.display(),
                first.join(", ")
            )));
        }
        let split = if valid_col.is_some() { SplitBy::Flagged } else { SplitBy::Random(valid_pct, seed) };
        let multi = opts.multi_label || rows.iter().any(|r| r.1.len() > 1);
        Self::from_labelled(rows, split, multi, &origin)
    }

    /// Every image below `dir`, labelled by the first capture group of `pattern` applied to its file name
    /// (fastai's Pets style, e.g. `^([^/]+)_\d+\.jpg$`). A file the pattern does not match is an error.
    pub fn from_regex(dir: &Path, pattern: &str, valid_pct: f64, seed: u64) -> Result<Dataset> {
        let re = regex::Regex::new(pattern).map_err(|e| Error::Invalid(format!("--label-regex '{pattern}': {e}")))?;
        if re.captures_len() < 2 {
            return Err(Error::Invalid(format!("--label-regex '{pattern}' needs a capture group for the label")));
        }
        let mut skipped = Vec::new();
        let files = image_files(dir, &mut skipped)?;
        warn_skipped(&skipped);
        let mut rows = Vec::new();
        for f in files {
            let name = name_of(&f);
            let label = re
                .captures(&name)
                .and_then(|c| c.get(1))
                .ok_or_else(|| Error::Invalid(format!("--label-regex '{pattern}' does not match file '{name}'")))?;
            rows.push((f.clone(), vec![label.as_str().to_string()], false));
        }
        let mut ds = Self::from_labelled(rows, SplitBy::Random(valid_pct, seed), false, &dir.display().to_string())?;
        ds.skipped = skipped;
        Ok(ds)
    }

    /// Rows of (file, labels, in the validation set): classes are the sorted labels; the split is the rows' flags
    /// or a seeded random one.
    fn from_labelled(
        rows: Vec<(PathBuf, Vec<String>, bool)>,
        split: SplitBy,
        multi_label: bool,
        origin: &str,
    ) -> Result<Dataset> {
        let classes: Vec<String> =
            rows.iter().flat_map(|r| r.1.iter().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
        let items = rows.into_iter().map(|(p, l, valid)| {
            let labels: BTreeSet<u32> = l.iter().map(|l| classes.binary_search(l).unwrap_or(0) as u32).collect();
            (Item { source: Source::File(p), labels: labels.into_iter().collect() }, valid)
        });
        let (train, valid) = match split {
            SplitBy::Random(valid_pct, seed) => random_split(items.map(|(item, _)| item).collect(), valid_pct, seed),
            SplitBy::Flagged => {
                let (valid, train): (Vec<_>, Vec<_>) = items.partition(|(_, valid)| *valid);
                (train.into_iter().map(|(i, _)| i).collect(), valid.into_iter().map(|(i, _)| i).collect())
            }
        };
        Dataset { classes, multi_label, train, valid, skipped: Vec::new() }.check(origin)
    }

    /// IDX image and label files (MNIST / Fashion-MNIST; gzip or raw), split with `valid_pct`; classes are
    /// named by `names` or "0".."9".
    pub fn from_idx(
        images: &Path,
        labels: &Path,
        names: Option<Vec<String>>,
        valid_pct: f64,
        seed: u64,
    ) -> Result<Dataset> {
        let (dims, pixels) = crate::data::idx::read(images)?;
        let (ldims, label_bytes) = crate::data::idx::read(labels)?;
        let (&[n, h, w], &[ln]) = (dims.as_slice(), ldims.as_slice()) else {
            return Err(Error::Invalid(format!(
                "IDX shapes {dims:?} ('{}') and {ldims:?} ('{}') are not (N, H, W) images and (N) labels",
                images.display(),
                labels.display()
            )));
        };
        if n != ln {
            return Err(Error::Invalid(format!(
                "{n} images in '{}' but {ln} labels in '{}'",
                images.display(),
                labels.display()
            )));
        }
        let n_classes = label_bytes.iter().copied().max().map_or(0, |m| m as usize + 1);
        if let Some(names) = names.as_ref().filter(|names| names.len() < n_classes) {
            return Err(Error::Invalid(format!(
                "'{}' has labels up to {} but {} class names were given ({}): name every label from 0",
                labels.display(),
                n_classes - 1,
                names.len(),
                names.join(", ")
            )));
        }
        let classes = names.unwrap_or_else(|| (0..n_classes).map(|c| c.to_string()).collect());
        let items = (0..n)
            .map(|i| {
                let pixels = pixels[i * h * w..(i + 1) * h * w].into();
                Item::new(Source::Grey { width: w as u32, height: h as u32, pixels }, label_bytes[i] as u32)
            })
            .collect();
        let (train, valid) = random_split(items, valid_pct, seed);
        Dataset { classes, multi_label: false, train, valid, skipped: Vec::new() }.check(&images.display().to_string())
    }

    /// The checks that must pass before training: at least two classes, non-empty train and valid sets, and no
    /// class that only valid has.
    pub fn check(self, origin: &str) -> Result<Dataset> {
        if self.classes.is_empty() {
            return Err(Error::Invalid(format!("'{origin}' has no classes (expected one folder or label per class)")));
        }
        if self.classes.len() < 2 {
            return Err(Error::Invalid(format!(
                "'{origin}' has only one class ('{}'): a classifier needs at least two",
                self.classes[0]
            )));
        }
        if self.train.is_empty() {
            return Err(Error::Invalid(format!("'{origin}' has no training images")));
        }
        if self.valid.is_empty() {
            return Err(Error::Invalid(format!("'{origin}' has no validation images")));
        }
        let in_train: BTreeSet<u32> = self.train.iter().flat_map(|i| i.labels.iter().copied()).collect();
        let in_valid: BTreeSet<u32> = self.valid.iter().flat_map(|i| i.labels.iter().copied()).collect();
        if let Some(empty) = (0..self.classes.len() as u32).find(|c| !in_train.contains(c) && !in_valid.contains(c)) {
            return Err(Error::Invalid(format!(
                "class '{}' of '{origin}' has no images: remove its folder or add images to it (a class the model \
                 never sees would still be predicted)",
                self.classes[empty as usize]
            )));
        }
        if let Some(only_valid) = in_valid.iter().copied().find(|l| !in_train.contains(l)) {
            if self.multi_label {
                // A rare tag can fall wholly into a random validation split; the other tags still train.
                log::warn!(
                    "{origin}: class '{}' has validation images but no training images",
                    self.classes[only_valid as usize]
                );
                return Ok(self);
            }
            return Err(Error::Invalid(format!(
                "class '{}' of '{origin}' has validation images but no training images",
                self.classes[only_valid as usize]
            )));
        }
        if !self.skipped.is_empty() {
            log::warn!("{}: skipped {} files that are not readable images", origin, self.skipped.len());
        }
        Ok(self)
    }
}
