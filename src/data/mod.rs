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

/// Decode an image file as RGB (grey and RGBA are converted; GIF gives its first frame).
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::Invalid(format!("cannot open image '{}': {e}", path.display())))?
        .with_guessed_format()
        .map_err(|e| Error::Invalid(format!("cannot read image '{}': {e}", path.display())))?
        .decode()
        .map_err(|e| Error::Invalid(format!("cannot decode image '{}': {e}", path.display())))?;
    Ok(img.to_rgb8())
}

/// Resize so the short side is `size` (bilinear, antialiased when shrinking), then cut the centre `size` x `size`
/// square: the evaluation transform of torchvision and fastai. Returns HWC bytes.
pub fn resize_center_crop(img: &RgbImage, size: usize) -> Vec<u8> {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let scale = size as f64 / w.min(h);
    let nw = ((w * scale).round() as u32).max(size as u32);
    let nh = ((h * scale).round() as u32).max(size as u32);
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
