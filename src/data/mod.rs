//! Image data: decoding and the deterministic preprocessing of evaluation and prediction (resize the short side,
//! centre crop, normalize to the model's statistics).

pub mod augment;
pub mod dataset;
pub mod idx;
pub mod loader;

use std::path::Path;

use image::imageops::FilterType;
use image::RgbImage;

use crate::error::{Error, Result};
use crate::nn::Normalization;

/// The most memory one decoded image may take (the decoder refuses larger ones before allocating).
pub const MAX_DECODE_BYTES: u64 = 1 << 30;
/// Above this many pixels an image is decoded with a warning: it costs seconds and hundreds of MB each time.
pub const LARGE_IMAGE_PIXELS: u64 = 40_000_000;
/// The largest side wgtune resizes images to (inputs and presizes are checked against it where they enter).
pub const MAX_IMAGE_SIDE: usize = 4096;

/// Decode an image file as RGB (grey and RGBA are converted; GIF gives its first frame), within the decoder's
/// memory limit. A JPEG cut short (no end-of-image marker after its last scan) is an error, as a truncated PNG
/// is, instead of a partly grey picture.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::Invalid(format!("cannot open image '{}': {e}", path.display())))?;
    decode_rgb(&bytes, &path.display().to_string())
}

/// Decode an image file's bytes (`origin` names it in errors) as [`load_rgb`] does: a web page hands over the
/// bytes of the files a user chose.
pub fn decode_rgb(bytes: &[u8], origin: &str) -> Result<RgbImage> {
    use image::ImageDecoder;
    let cannot = |why: String| Error::Invalid(format!("cannot decode image '{origin}': {why}"));
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| cannot(e.to_string()))?;
    if reader.format() == Some(image::ImageFormat::Jpeg) && jpeg_is_truncated(bytes) {
        return Err(cannot("the JPEG file is truncated (it ends inside its image data)".into()));
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits.clone());
    // One header parse: the decoder knows the size before it allocates anything.
    let decoder = reader.into_decoder().map_err(|e| cannot(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if limits.reserve(decoder.total_bytes()).is_err() {
        return Err(cannot(format!(
            "it is {w}x{h} pixels, more than the {} MB one decoded image may take",
            MAX_DECODE_BYTES >> 20
        )));
    }
    let pixels = w as u64 * h as u64;
    if pixels > LARGE_IMAGE_PIXELS {
        log::warn!(
            "'{origin}' is {w}x{h} pixels: decoding it takes about {} MB and seconds every time it is used; smaller \
             copies of large photos train as well and much faster",
            pixels * 4 / 1_000_000
        );
    }
    let img = image::DynamicImage::from_decoder(decoder).map_err(|e| cannot(e.to_string()))?;
    Ok(img.to_rgb8())
}

/// Whether a JPEG stream lacks the end-of-image marker (FF D9) after its last start-of-scan (FF DA): then the file
/// was cut short. (Entropy-coded data never holds FF D9: every FF in it is stuffed with 00; an embedded thumbnail's
/// markers come before the main image's scan.)
fn jpeg_is_truncated(bytes: &[u8]) -> bool {
    let Some(last_scan) = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]) else { return true };
    !bytes[last_scan..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// The side an image is resized to before the centre `size` square is cut from it: torchvision's Resize(256) +
/// CenterCrop(224) in proportion (fastai's `val_xtra` margin, close to 1/8), with an even margin so that the cut
/// takes whole pixels. The random crops of training take from a square of this side too, so an object has the same
/// size in training (on average), validation and prediction.
pub fn presize_for(size: usize) -> usize {
    size + 2 * (size as f64 / 14.0).round() as usize
}

/// How validation, `predict` and training without augmentation see an image (the evaluation transform of
/// torchvision and fastai): the short side resized to [`presize_for`]`(size)`, the centre `size` square cut out.
/// Returns HWC bytes.
pub fn eval_crop(img: &RgbImage, size: usize) -> Vec<u8> {
    let presize = presize_for(size);
    center_square(&resize_center_crop(img, presize), presize, size)
}

/// The centre `size` square of a `side` x `side` HWC image (whole pixels: `side - size` even, else the extra
/// column and row are cut from the right and bottom).
pub fn center_square(hwc: &[u8], side: usize, size: usize) -> Vec<u8> {
    let off = (side - size) / 2;
    let mut out = Vec::with_capacity(size * size * 3);
    for row in hwc.chunks_exact(side * 3).skip(off).take(size) {
        out.extend_from_slice(&row[off * 3..(off + size) * 3]);
    }
    out
}

/// Resize so the short side is `size` (bilinear, antialiased when shrinking), then cut the centre `size` x `size`
/// square. Returns HWC bytes.
///
/// An image far from square (a 1 x 30000 strip) would resize to an enormous intermediate; beyond 16x the output's
/// pixels, the centre square of the short side is cut out first and only it is resized, which bounds memory and
/// gives the same picture up to the filter's edge pixels.
pub fn resize_center_crop(img: &RgbImage, size: usize) -> Vec<u8> {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let scale = size as f64 / w.min(h);
    let nw = ((w * scale).round() as u32).max(size as u32);
    let nh = ((h * scale).round() as u32).max(size as u32);
    if nw as u64 * nh as u64 > 16 * (size * size) as u64 {
        let side = img.width().min(img.height());
        let (left, top) = ((img.width() - side) / 2, (img.height() - side) / 2);
        let square = image::imageops::crop_imm(img, left, top, side, side).to_image();
        return image::imageops::resize(&square, size as u32, size as u32, FilterType::Triangle).into_raw();
    }
    let resized = image::imageops::resize(img, nw, nh, FilterType::Triangle);
    let (left, top) = ((nw - size as u32) / 2, (nh - size as u32) / 2);
    let crop = image::imageops::crop_imm(&resized, left, top, size as u32, size as u32).to_image();
    crop.into_raw()
}

/// HWC RGB bytes -> CHW f32 with the model's normalization, appended to `out`.
pub fn normalize_into(hwc: &[u8], norm: &Normalization, out: &mut Vec<f32>) {
    for c in 0..3 {
        out.extend(hwc.chunks_exact(3).map(|px| px[c] as f32 * norm.scale[c] + norm.shift[c]));
    }
}
