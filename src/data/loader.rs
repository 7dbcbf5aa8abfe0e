//! Batches of presized u8 pixels, decoded on worker threads while the GPU trains on the previous batch.
//!
//! Each item is decoded (the `image` crate), resized so its short side is `presize` and centre-cropped to a
//! `presize` square (the GPU's augmentation then crops, flips, rotates, zooms and resizes to the model's size).
//! An epoch's order is shuffled with (seed, epoch); training drops the last partial batch, validation pads it by
//! repeating its last image and says how many rows are real. An image that fails to decode is reported once and
//! replaced by the next one in the epoch's order, so batches stay full and nothing crashes.
//!
//! In a browser (wasm32) there are no threads: batches are decoded in turn as the iterator asks for them.

use std::collections::HashSet;
#[cfg(not(target_arch = "wasm32"))]
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

use crate::data::dataset::{Item, Source};
use crate::data::{decode_rgb, load_rgb, resize_center_crop};
use crate::error::{Error, Result};
use crate::ops::loss::Targets;
use crate::reference::SplitMix;

/// How batches are made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoaderConfig {
    pub batch: usize,
    /// Side of the square each image is presized to.
    pub presize: usize,
    /// Then keep only the centre square of this side ([`crate::data::eval_crop`] with `presize` =
    /// [`crate::data::presize_for`]`(crop)`): validation, and training without augmentation. None: the whole
    /// presized square (training's random crops take from it).
    pub crop: Option<usize>,
    pub shuffle: bool,
    pub drop_last: bool,
    pub seed: u64,
    /// Decoding threads.
    pub workers: usize,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
    /// How a batch's labels are written: a class per image, or a class bitmask per image (multi-label).
    pub targets: Targets,
}

/// A batch: (N, P, P, 3) RGB bytes (P the crop, or the presize), N label sets ([`Targets::words`] u32 each), and how many rows are real (the
/// rest pad a last batch).
#[derive(Clone, Debug)]
pub struct Batch {
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    pub real: usize,
}

/// Batches over a fixed list of items.
pub struct Loader {
    items: Arc<Vec<Item>>,
    cfg: LoaderConfig,
    bad: Arc<Mutex<HashSet<usize>>>,
}

/// Decode one item into a presized square of RGB bytes.
pub fn decode_presized(item: &Item, presize: usize) -> Result<Vec<u8>> {
    match &item.source {
        Source::File(p) => Ok(resize_center_crop(&load_rgb(p)?, presize)),
        Source::Encoded { name, bytes } => Ok(resize_center_crop(&decode_rgb(bytes, name)?, presize)),
        Source::Grey { width, height, pixels } => {
            let grey = image::GrayImage::from_raw(*width, *height, pixels.to_vec())
                .ok_or_else(|| Error::Invalid("an in-memory image has the wrong number of pixels".into()))?;
            let rgb = image::DynamicImage::ImageLuma8(grey).to_rgb8();
            Ok(resize_center_crop(&rgb, presize))
        }
    }
}

impl Loader {
    pub fn new(items: Vec<Item>, cfg: LoaderConfig) -> Result<Loader> {
        if cfg.batch == 0 || cfg.presize == 0 {
            return Err(Error::Invalid("batch size and image size must be at least 1".into()));
        }
        if cfg.crop.is_some_and(|c| c == 0 || c > cfg.presize) {
            return Err(Error::Invalid(format!("a crop of {:?} does not fit a presize of {}", cfg.crop, cfg.presize)));
        }
        if cfg.presize > crate::data::MAX_IMAGE_SIDE {
            return Err(Error::Invalid(format!(
                "images are presized to {} pixels, more than the {} wgtune resizes to",
                cfg.presize,
                crate::data::MAX_IMAGE_SIDE
            )));
        }
        if items.is_empty() {
            return Err(Error::Invalid("no images to load".into()));
        }
        Ok(Loader { items: Arc::new(items), cfg, bad: Arc::new(Mutex::new(HashSet::new())) })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn config(&self) -> LoaderConfig {
        self.cfg
    }

    /// Batches per epoch.
    pub fn batches(&self) -> usize {
        if self.cfg.drop_last {
            (self.items.len() / self.cfg.batch).max(1)
        } else {
            self.items.len().div_ceil(self.cfg.batch)
        }
    }

    /// Items that failed to decode so far.
    pub fn bad_items(&self) -> usize {
        self.bad.lock().map(|b| b.len()).unwrap_or(0)
    }

    /// The item order of an epoch.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        if self.cfg.shuffle {
            let mut rng = SplitMix(self.cfg.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u32 + 1) as usize);
            }
        }
        order
    }

    /// Start decoding an epoch; batches arrive in order through the returned iterator. Dropping it stops the
    /// workers.
    pub fn epoch(&self, epoch: u64) -> EpochBatches {
        self.epoch_from(epoch, 0)
    }

    /// The batches of an epoch from batch `first` on (resuming an interrupted epoch).
    pub fn epoch_from(&self, epoch: u64, first: usize) -> EpochBatches {
        let order = self.order(epoch);
        let batches = self.batches();
        let first = first.min(batches);
        let job = EpochJob { items: self.items.clone(), order, cfg: self.cfg, bad: self.bad.clone(), next: first };
        #[cfg(not(target_arch = "wasm32"))]
        {
            let (tx, rx) = sync_channel(self.cfg.prefetch.max(1));
            let mut job = job;
            std::thread::spawn(move || {
                for _ in first..batches {
                    if tx.send(job.next_batch()).is_err() {
                        return;
                    }
                }
            });
            EpochBatches { rx, left: batches - first }
        }
        #[cfg(target_arch = "wasm32")]
        EpochBatches { job, left: batches - first }
    }
}

/// What decoding an epoch needs, and the next batch to make.
struct EpochJob {
    items: Arc<Vec<Item>>,
    order: Vec<usize>,
    cfg: LoaderConfig,
    bad: Arc<Mutex<HashSet<usize>>>,
    next: usize,
}

impl EpochJob {
    fn next_batch(&mut self) -> Result<Batch> {
        let start = self.next * self.cfg.batch;
        self.next += 1;
        make_batch(&self.items, &self.order, start, self.cfg, &self.bad)
    }
}

/// The batch starting at position `start` of `order`.
fn make_batch(
    items: &[Item],
    order: &[usize],
    start: usize,
    cfg: LoaderConfig,
    bad: &Mutex<HashSet<usize>>,
) -> Result<Batch> {
    let real = cfg.batch.min(order.len() - start);
    let side = cfg.crop.unwrap_or(cfg.presize);
    let px = side * side * 3;
    let mut pixels = vec![0u8; cfg.batch * px];
    let words = cfg.targets.words();
    let mut labels = vec![0u32; cfg.batch * words];
    let workers = cfg.workers.clamp(1, real.max(1));
    let chunk = real.div_ceil(workers);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let chunks =
        pixels[..real * px].chunks_mut(chunk * px).zip(labels[..real * words].chunks_mut(chunk * words)).enumerate();
    let fill = |w: usize, pix_chunk: &mut [u8], lab_chunk: &mut [u32]| {
        for (i, (dst, label)) in pix_chunk.chunks_mut(px).zip(lab_chunk.chunks_mut(words)).enumerate() {
            // Position in the epoch; on a decode failure, the next items in the order stand in.
            let mut pos = start + w * chunk + i;
            let mut tries = 0;
            loop {
                let idx = order[pos % order.len()];
                let known_bad = bad.lock().map(|b| b.contains(&idx)).unwrap_or(false);
                if !known_bad {
                    let decoded = decode_presized(&items[idx], cfg.presize);
                    let decoded = match cfg.crop {
                        Some(c) => decoded.map(|d| crate::data::center_square(&d, cfg.presize, c)),
                        None => decoded,
                    };
                    match decoded {
                        Ok(bytes) => {
                            dst.copy_from_slice(&bytes);
                            label.copy_from_slice(&cfg.targets.label_set(&items[idx].labels));
                            break;
                        }
                        Err(e) => {
                            if bad.lock().map(|mut b| b.insert(idx)).unwrap_or(false) {
                                log::warn!("skipping {}: {e}", items[idx].describe());
                            }
                        }
                    }
                }
                pos += 1;
                tries += 1;
                if tries > order.len() {
                    if let Ok(mut f) = failure.lock() {
                        *f = Some(Error::Invalid(format!(
                            "no image of the data set can be decoded (the first is {}; run with RUST_LOG=warn to \
                             see why each was skipped)",
                            items[order[0]].describe()
                        )));
                    }
                    return;
                }
            }
        }
    };
    #[cfg(not(target_arch = "wasm32"))]
    std::thread::scope(|scope| {
        for (w, (pix_chunk, lab_chunk)) in chunks {
            let fill = &fill;
            scope.spawn(move || fill(w, pix_chunk, lab_chunk));
        }
    });
    #[cfg(target_arch = "wasm32")]
    for (w, (pix_chunk, lab_chunk)) in chunks {
        fill(w, pix_chunk, lab_chunk);
    }
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    // Pad a short last batch with copies of its last real row.
    for i in real..cfg.batch {
        let last = (real - 1) * px;
        pixels.copy_within(last..last + px, i * px);
        labels.copy_within((real - 1) * words..real * words, i * words);
    }
    Ok(Batch { pixels, labels, real })
}

/// The batches of one epoch, decoded ahead on worker threads (in a browser: in turn, as they are asked for).
pub struct EpochBatches {
    #[cfg(not(target_arch = "wasm32"))]
    rx: Receiver<Result<Batch>>,
    #[cfg(target_arch = "wasm32")]
    job: EpochJob,
    left: usize,
}

impl Iterator for EpochBatches {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        #[cfg(not(target_arch = "wasm32"))]
        return Some(
            self.rx.recv().unwrap_or_else(|_| Err(Error::Invalid("the data loader stopped unexpectedly".into()))),
        );
        #[cfg(target_arch = "wasm32")]
        Some(self.job.next_batch())
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}
