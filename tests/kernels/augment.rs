//! The augmentation kernel against reference::augment. Bilinear interpolation of bytes and the lighting curve in
//! f32: atol 2e-4 on normalized outputs of magnitude ~2, rtol 1e-5.

use wgtune::data::augment::{augment, pack_pixels, AugmentConfig, ImageTransform};
use wgtune::gpu::DType;
use wgtune::nn::Normalization;
use wgtune::reference::{self, SplitMix};

use crate::common::*;

fn check(
    n: usize,
    in_size: usize,
    out_size: usize,
    transforms: &[ImageTransform],
    lighting: bool,
    norm: Normalization,
) {
    let g = gpu();
    let mut rng = SplitMix(17);
    let pixels: Vec<u8> = (0..n * in_size * in_size * 3).map(|_| rng.below(256) as u8).collect();
    let packed = pack_pixels(&pixels);
    let px = g.upload_u32(&[packed.len()], &packed, "pixels").expect("upload");
    let params: Vec<f32> = transforms.iter().flat_map(|t| t.to_params()).collect();
    let tp = upload(&[n, 8], &params, "transforms");
    let out = poisoned(&[n, 3, out_size, out_size], "augmented");
    let d = augment(g, &px, &tp, &out, in_size, &norm, lighting, "augment").expect("dispatch");
    g.run("augment", &[&d]).expect("run");
    let t8: Vec<[f32; 8]> = transforms.iter().map(|t| t.to_params()).collect();
    let want = reference::augment(&pixels, (n, in_size, out_size), &t8, norm.scale, norm.shift, lighting);
    assert_close(&read(&out), &want, 2e-4, 1e-5, &format!("augment n={n} {in_size}->{out_size} lighting={lighting}"));
    assert_eq!(out.dtype(), DType::F32);
}

#[test]
fn identity_is_a_plain_normalized_copy() {
    // Same size, identity: every output pixel is exactly one input pixel.
    check(2, 7, 7, &[ImageTransform::IDENTITY; 2], false, Normalization::imagenet());
}

#[test]
fn random_fastai_transforms_match_the_reference() {
    let cfg = AugmentConfig::default();
    let mut rng = SplitMix(3);
    let ts: Vec<ImageTransform> = (0..5).map(|_| cfg.sample(&mut rng)).collect();
    check(5, 37, 29, &ts, true, Normalization::TF_127);
}

#[test]
fn reflection_padding_at_strong_zoom_out_and_rotation() {
    // A 0.6x zoom-out rotated by 30 degrees reaches far outside the source square.
    let (s, c) = 30f32.to_radians().sin_cos();
    let t =
        ImageTransform { m: [1.6 * c, -1.6 * s, 0.1, 1.6 * s, 1.6 * c, -0.2], contrast: 1.2, brightness_logit: -0.3 };
    check(1, 16, 257, &[t], true, Normalization::imagenet());
}

#[test]
fn sampled_transforms_are_seeded_and_within_fastai_ranges() {
    let cfg = AugmentConfig::default();
    let a: Vec<ImageTransform> = (0..50).scan(SplitMix(9), |r, _| Some(cfg.sample(r))).collect();
    let b: Vec<ImageTransform> = (0..50).scan(SplitMix(9), |r, _| Some(cfg.sample(r))).collect();
    assert_eq!(a, b, "same seed, same transforms");
    for t in &a {
        // contrast within [0.8, 1.25]; brightness within logit(0.4)..logit(0.6)
        assert!((0.8 - 1e-6..=1.25 + 1e-6).contains(&(t.contrast as f64)), "{t:?}");
        assert!(t.brightness_logit.abs() <= (0.6f32 / 0.4).ln() + 1e-6, "{t:?}");
    }
    assert!(a.iter().any(|t| t.m[0] < 0.0) && a.iter().any(|t| t.m[0] > 0.0), "flips happen about half the time");
}
