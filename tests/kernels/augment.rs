//! The augmentation kernel against reference::augment. Bilinear interpolation of bytes and the lighting curve in
//! f32: atol 2e-4 on normalized outputs of magnitude ~2, rtol 1e-5.

use wgtune::data::augment::{
    augment, batch_params, pack_pixels, AugmentConfig, ImageTransform, Mix, Mixing, PARAMS_PER_IMAGE,
};
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
    let params = batch_params(transforms);
    let tp = upload(&[n, PARAMS_PER_IMAGE], &params, "transforms");
    let out = poisoned(&[n, 3, out_size, out_size], "augmented");
    let d = augment(g, &px, &tp, &out, in_size, &norm, lighting, "augment").expect("dispatch");
    g.run("augment", &[&d]).expect("run");
    let t16: Vec<[f32; 16]> = transforms.iter().enumerate().map(|(row, t)| t.to_params(row)).collect();
    let want = reference::augment(&pixels, (n, in_size, out_size), &t16, norm.scale, norm.shift, lighting);
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
    let t = ImageTransform {
        m: [1.6 * c, -1.6 * s, 0.1, 1.6 * s, 1.6 * c, -0.2],
        contrast: 1.2,
        brightness_logit: -0.3,
        mix: None,
    };
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

#[test]
fn mixup_blends_each_image_with_its_partner_through_the_partners_transform() {
    let cfg = AugmentConfig::default();
    let mut rng = SplitMix(5);
    // 6 rows: 5 real, 1 padding row (left unmixed).
    let mut ts: Vec<ImageTransform> = (0..6).map(|_| cfg.sample(&mut rng)).collect();
    Mixing::MixUp { alpha: 0.4 }.apply(&mut ts, 5, 13, &mut rng).expect("mix");
    assert!(ts[5].mix.is_none(), "the padding row is not mixed");
    for t in &ts[..5] {
        let m = t.mix.expect("mixed");
        assert!((0.5..=1.0).contains(&m.pixel_lam) && m.label_lam == m.pixel_lam, "{m:?}");
        assert!(m.partner < 5, "{m:?}");
    }
    let mut partners: Vec<u32> = ts[..5].iter().map(|t| t.mix.unwrap().partner).collect();
    partners.sort();
    assert_eq!(partners, vec![0, 1, 2, 3, 4], "the partners are a permutation");
    check(6, 17, 13, &ts, true, Normalization::imagenet());
}

#[test]
fn cutmix_pastes_one_box_from_the_partner() {
    let cfg = AugmentConfig::default();
    let mut rng = SplitMix(8);
    let mut ts: Vec<ImageTransform> = (0..4).map(|_| cfg.sample(&mut rng)).collect();
    Mixing::CutMix { alpha: 1.0 }.apply(&mut ts, 4, 11, &mut rng).expect("mix");
    let m = ts[0].mix.expect("mixed");
    let [x0, y0, x1, y1] = m.cut;
    assert!(ts.iter().all(|t| t.mix.unwrap().cut == m.cut), "one box per batch");
    assert!((0.0..=11.0).contains(&x0) && x0 <= x1 && x1 <= 11.0 && y0 <= y1 && y1 <= 11.0, "{m:?}");
    let kept = 1.0 - (x1 - x0) * (y1 - y0) / 121.0;
    assert!((m.label_lam - kept).abs() < 1e-6 && m.pixel_lam == 1.0, "{m:?}");
    check(4, 9, 11, &ts, false, Normalization::TF_127);
    // A hand-made box that is certainly not empty, with a partner other than itself.
    let mut t = [ImageTransform::IDENTITY; 3];
    for (row, t) in t.iter_mut().enumerate() {
        t.mix = Some(Mix { partner: (row as u32 + 1) % 3, pixel_lam: 1.0, cut: [2.0, 1.0, 6.0, 4.0], label_lam: 0.0 });
    }
    check(3, 7, 7, &t, false, Normalization::imagenet());
}

#[test]
fn mixing_alpha_must_be_positive() {
    let mut ts = vec![ImageTransform::IDENTITY; 2];
    let err = Mixing::MixUp { alpha: 0.0 }.apply(&mut ts, 2, 8, &mut SplitMix(1)).unwrap_err().to_string();
    assert!(err.contains("alpha 0"), "{err}");
}
