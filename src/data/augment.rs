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

/// Per-image transform: affine matrix (output -> input, normalized coordinates), contrast, brightness logit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageTransform {
    pub m: [f32; 6],
    pub contrast: f32,
    pub brightness_logit: f32,
}

impl ImageTransform {
    /// Sample the centre of the input, unchanged: validation.
    pub const IDENTITY: ImageTransform =
        ImageTransform { m: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], contrast: 1.0, brightness_logit: 0.0 };

    pub fn to_params(self) -> [f32; 8] {
        let [a, b, c, d, e, f] = self.m;
        [a, b, c, d, e, f, self.contrast, self.brightness_logit]
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
        ImageTransform { m, contrast: contrast as f32, brightness_logit: brightness_logit as f32 }
    }
}

/// Launch the augmentation of a batch: `pixels` (N, P, P, 3) u8 packed in u32 words, `transforms` (N, 8), into
/// `out` (N, 3, S, S).
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
    if c != 3 || s != s2 || transforms.numel() != n * 8 || (pixels.bytes() as usize) < n * in_size * in_size * 3 {
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
    gpu.dispatch(
        &AUGMENT,
        bytemuck::bytes_of(&p),
        &[pixels, transforms, out],
        [(s * s).div_ceil(256) as u32, p.batch, 1],
        label,
    )
}

/// u8 pixels packed four to a u32 word (little-endian), padded with zeros.
pub fn pack_pixels(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks(4).map(|c| c.iter().enumerate().fold(0u32, |w, (i, &b)| w | (b as u32) << (8 * i))).collect()
}
