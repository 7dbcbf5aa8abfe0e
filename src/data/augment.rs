//! GPU augmentation: fastai's aug_transforms as one affine grid sample plus lighting, drawn per image on the CPU
//! (seeded) and applied by shaders/augment.wgsl to a whole batch in one dispatch.

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, Gpu, KernelSpec, Tensor};
use crate::nn::Normalization;
use crate::ops::dim;
use crate::reference::SplitMix;

/// Mirrors `AugmentParams` in shaders/augment.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AugmentParams {
    pub batch: u32,
    pub in_size: u32,
    pub out_size: u32,
    pub flags: u32,
    pub scale: [f32; 4],
    pub shift: [f32; 4],
}

pub const FLAG_LIGHTING: u32 = 1;
pub const AUGMENT: KernelSpec =
    KernelSpec::new("augment", "augment", &[(1, Access::Read), (2, Access::Read), (3, Access::ReadWrite)]);

/// f32 per image in the kernel's transform buffer.
pub const PARAMS_PER_IMAGE: usize = 16;

/// Per-image transform: affine matrix (output -> input, normalized coordinates), contrast, brightness logit, and
/// the MixUp/CutMix partner, if any.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageTransform {
    pub m: [f32; 6],
    pub contrast: f32,
    pub brightness_logit: f32,
    pub mix: Option<Mix>,
}

/// An image mixed with another of its batch (fastai's MixUp and CutMix callbacks). The partner is seen through its
/// own transform.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mix {
    /// The batch row whose image and labels are mixed in.
    pub partner: u32,
    /// Weight of this image's pixels outside `cut` (MixUp: lam; CutMix: 1).
    pub pixel_lam: f32,
    /// Output pixels [x0, y0, x1, y1) that are the partner's alone (CutMix's box; empty for MixUp).
    pub cut: [f32; 4],
    /// Weight of this image's labels in the loss (MixUp: lam; CutMix: the fraction of pixels still its own).
    pub label_lam: f32,
}

impl ImageTransform {
    /// Sample the centre of the input, unchanged: validation.
    pub const IDENTITY: ImageTransform =
        ImageTransform { m: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], contrast: 1.0, brightness_logit: 0.0, mix: None };

    /// The kernel's parameters of the image in batch row `row`: m0..m5, contrast, brightness logit, partner row,
    /// pixel weight, cut box x0 y0 x1 y1, 2 unused. Without a partner the image is its own, at weight 1.
    pub fn to_params(self, row: usize) -> [f32; PARAMS_PER_IMAGE] {
        let [a, b, c, d, e, f] = self.m;
        let mix = self.mix.unwrap_or(Mix { partner: row as u32, pixel_lam: 1.0, cut: [0.0; 4], label_lam: 1.0 });
        let [x0, y0, x1, y1] = mix.cut;
        let partner = mix.partner as f32;
        [a, b, c, d, e, f, self.contrast, self.brightness_logit, partner, mix.pixel_lam, x0, y0, x1, y1, 0.0, 0.0]
    }
}

/// Transform parameters of a whole batch, row after row.
pub fn batch_params(transforms: &[ImageTransform]) -> Vec<f32> {
    transforms.iter().enumerate().flat_map(|(row, t)| t.to_params(row)).collect()
}

/// Each row's (partner, weight of its own labels) for the loss's target rows, or None when no image of the batch
/// is mixed.
pub fn label_mix(transforms: &[ImageTransform]) -> Option<Vec<(u32, f32)>> {
    transforms.iter().any(|t| t.mix.is_some()).then(|| {
        transforms
            .iter()
            .enumerate()
            .map(|(row, t)| t.mix.map_or((row as u32, 1.0), |m| (m.partner, m.label_lam)))
            .collect()
    })
}

/// Which batch-mixing augmentation a run uses (fastai's MixUp / CutMix callbacks; off by default).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Mixing {
    /// Each image blended with a shuffled partner at weight lam ~ Beta(alpha, alpha), lam = max(lam, 1 - lam)
    /// (drawn per image); the loss blended with the same weight.
    MixUp { alpha: f64 },
    /// One box per batch of area fraction about 1 - lam, lam ~ Beta(alpha, alpha), pasted from a shuffled partner;
    /// the loss weighted by the fraction of pixels each image keeps.
    CutMix { alpha: f64 },
}

impl Mixing {
    fn beta(alpha: f64, rng: &mut SplitMix) -> Result<f64> {
        use rand_distr::Distribution;
        let d = rand_distr::Beta::new(alpha, alpha)
            .map_err(|e| Error::Invalid(format!("mixing alpha {alpha} must be positive and finite ({e})")))?;
        Ok(d.sample(rng))
    }

    /// Give each of `transforms` (a batch of `real` images, then padding rows, each `size` pixels square) its
    /// partner as fastai draws them: a random permutation of the real rows; padding rows are not mixed.
    pub fn apply(self, transforms: &mut [ImageTransform], real: usize, size: usize, rng: &mut SplitMix) -> Result<()> {
        // Fisher-Yates over the real rows.
        let mut shuffle: Vec<u32> = (0..real as u32).collect();
        for i in (1..real).rev() {
            shuffle.swap(i, rng.below(i as u32 + 1) as usize);
        }
        match self {
            Mixing::MixUp { alpha } => {
                for (t, &partner) in transforms.iter_mut().zip(&shuffle) {
                    let lam = Self::beta(alpha, rng)?;
                    let lam = lam.max(1.0 - lam) as f32;
                    t.mix = Some(Mix { partner, pixel_lam: lam, cut: [0.0; 4], label_lam: lam });
                }
            }
            Mixing::CutMix { alpha } => {
                // fastai's rand_bbox: a box of sides int(size * sqrt(1 - lam)) around a uniform centre, clipped.
                let lam = Self::beta(alpha, rng)?;
                let side = (size as f64 * (1.0 - lam).sqrt()) as i64;
                let (cx, cy) = (rng.below(size as u32) as i64, rng.below(size as u32) as i64);
                let clip = |v: i64| v.clamp(0, size as i64) as f32;
                let cut = [clip(cx - side / 2), clip(cy - side / 2), clip(cx + side / 2), clip(cy + side / 2)];
                let kept = 1.0 - (cut[2] - cut[0]) * (cut[3] - cut[1]) / (size * size) as f32;
                for (t, &partner) in transforms.iter_mut().zip(&shuffle) {
                    t.mix = Some(Mix { partner, pixel_lam: 1.0, cut, label_lam: kept });
                }
            }
        }
        Ok(())
    }
}

/// fastai's aug_transforms defaults plus the random resized crop of its item transforms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentConfig {
    /// Smallest fraction of the area a random crop keeps (fastai's `min_scale`).
    pub min_scale: f64,
    pub flip: bool,
    pub max_rotate_deg: f64,
    pub max_zoom: f64,
    pub max_lighting: f64,
    /// Probability of applying the rotation/zoom part (fastai's p_affine).
    pub p_affine: f64,
    pub p_lighting: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            min_scale: 0.75,
            flip: true,
            max_rotate_deg: 10.0,
            max_zoom: 1.1,
            max_lighting: 0.2,
            p_affine: 0.75,
            p_lighting: 0.75,
        }
    }
}

impl AugmentConfig {
    /// Draw one image's transform.
    pub fn sample(&self, rng: &mut SplitMix) -> ImageTransform {
        // Random resized crop: area fraction in [min_scale, 1], aspect ratio log-uniform in [3/4, 4/3], placed
        // uniformly; half-extents hx, hy of the crop in normalized coordinates.
        let area = rng.uniform(self.min_scale, 1.0);
        let ratio = rng.uniform((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln()).exp();
        let hx = (area * ratio).sqrt().min(1.0);
        let hy = (area / ratio).sqrt().min(1.0);
        let cx = rng.uniform(-(1.0 - hx), 1.0 - hx);
        let cy = rng.uniform(-(1.0 - hy), 1.0 - hy);
        let flip = if self.flip && rng.uniform(0.0, 1.0) < 0.5 { -1.0 } else { 1.0 };
        let (mut theta, mut zoom) = (0.0, 1.0);
        if rng.uniform(0.0, 1.0) < self.p_affine {
            theta = rng.uniform(-self.max_rotate_deg, self.max_rotate_deg).to_radians();
            zoom = rng.uniform(1.0, self.max_zoom);
        }
        let (sin, cos) = theta.sin_cos();
        // source = centre + R(theta) * diag(flip * hx / zoom, hy / zoom) * (u, v)
        let (kx, ky) = (flip * hx / zoom, hy / zoom);
        let m = [cos * kx, -sin * ky, cx, sin * kx, cos * ky, cy].map(|v| v as f32);
        let (mut contrast, mut brightness_logit) = (1.0, 0.0);
        if rng.uniform(0.0, 1.0) < self.p_lighting {
            let l = self.max_lighting;
            let b = rng.uniform(0.5 * (1.0 - l), 0.5 * (1.0 + l));
            brightness_logit = (b / (1.0 - b)).ln();
            contrast = rng.uniform((1.0 - l).ln(), -(1.0 - l).ln()).exp();
        }
        ImageTransform { m, contrast: contrast as f32, brightness_logit: brightness_logit as f32, mix: None }
    }
}

/// Launch the augmentation of a batch: `pixels` (N, P, P, 3) u8 packed in u32 words, `transforms` (N, 16) (see
/// [`ImageTransform::to_params`]), into `out` (N, 3, S, S).
#[allow(clippy::too_many_arguments)] // a kernel launcher: its tensors, sizes and options
pub fn augment(
    gpu: &Gpu,
    pixels: &Tensor,
    transforms: &Tensor,
    out: &Tensor,
    in_size: usize,
    norm: &Normalization,
    lighting: bool,
    label: &str,
) -> Result<Dispatch> {
    let &[n, c, s, s2] = out.shape() else {
        return Err(Error::shape("augment", format!("out {:?} must be (N, 3, S, S)", out.shape())));
    };
    if c != 3
        || s != s2
        || transforms.numel() != n * PARAMS_PER_IMAGE
        || (pixels.bytes() as usize) < n * in_size * in_size * 3
    {
        return Err(Error::shape(
            "augment",
            format!(
                "pixels {:?}, transforms {:?} and out {:?} do not fit {in_size}px inputs",
                pixels.shape(),
                transforms.shape(),
                out.shape()
            ),
        ));
    }
    let p = AugmentParams {
        batch: dim(n, "batch")?,
        in_size: dim(in_size, "input size")?,
        out_size: dim(s, "output size")?,
        flags: if lighting { FLAG_LIGHTING } else { 0 },
        scale: [norm.scale[0], norm.scale[1], norm.scale[2], 0.0],
        shift: [norm.shift[0], norm.shift[1], norm.shift[2], 0.0],
    };
    let grid = [(s * s).div_ceil(256) as u32, p.batch, 1];
    // f32 or f16 images: the kernel's variant follows `out`.
    crate::ops::dispatch_at(gpu, &AUGMENT, &[out], bytemuck::bytes_of(&p), &[pixels, transforms, out], grid, label)
}

/// u8 pixels packed four to a u32 word (little-endian), padded with zeros.
pub fn pack_pixels(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks(4).map(|c| c.iter().enumerate().fold(0u32, |w, (i, &b)| w | (b as u32) << (8 * i))).collect()
}
