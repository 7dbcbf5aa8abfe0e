//! Dropout: the GPU mask equals the CPU hash bit for bit, backward reuses it, p = 0 is the identity.

use wgtune::ops::dropout::{dropout_backward, dropout_forward, DropoutParams};
use wgtune::reference::{drop_path, dropout_keep, widen, SplitMix};

use crate::common::*;

fn check(n: usize, p: f64, seed: u32, step: u32) {
    let g = gpu();
    let mut rng = SplitMix(seed as u64);
    let x_data = rng.vec_f32(n, -1.0, 1.0);
    let dy_data = rng.vec_f32(n, -1.0, 1.0);
    let dx0 = rng.vec_f32(n, -1.0, 1.0);
    let x = upload(&[n], &x_data, "x");
    let dy = upload(&[n], &dy_data, "dy");
    let out = poisoned(&[n], "out");
    let dx = upload(&[n], &dx0, "dx");
    let fwd = DropoutParams::new(n, p, seed, step, false).expect("params");
    let bwd = DropoutParams::new(n, p, seed, step, true).expect("params");
    let steps = [
        dropout_forward(g, &x, &out, fwd, "dropout").expect("fwd"),
        dropout_backward(g, &dy, &dx, bwd, "dropout bwd").expect("bwd"),
    ];
    g.run("dropout", &steps.iter().collect::<Vec<_>>()).expect("run");
    let scale = fwd.scale as f64;
    let keep: Vec<bool> = (0..n as u32).map(|i| dropout_keep(seed, step, i, fwd.threshold)).collect();
    let want: Vec<f64> = (0..n).map(|i| if keep[i] { x_data[i] as f64 * scale } else { 0.0 }).collect();
    assert_close(&read(&out), &want, 1e-7, 1e-6, &format!("dropout forward n={n} p={p}"));
    let want: Vec<f64> =
        (0..n).map(|i| dx0[i] as f64 + if keep[i] { dy_data[i] as f64 * scale } else { 0.0 }).collect();
    assert_close(&read(&dx), &want, 1e-6, 1e-6, &format!("dropout backward (accumulating) n={n} p={p}"));
    if p > 0.0 && n > 1000 {
        let kept = keep.iter().filter(|&&k| k).count() as f64 / n as f64;
        assert!((kept - (1.0 - p)).abs() < 0.02, "kept {kept} at p = {p}");
    }
}

#[test]
fn dropout_mask_matches_the_cpu_hash() {
    check(1, 0.5, 1, 0);
    check(257, 0.25, 2, 7);
    check(100_003, 0.5, 3, 11);
}

#[test]
fn dropout_zero_is_identity() {
    check(1000, 0.0, 4, 0);
}

#[test]
fn dropout_rejects_p_of_one() {
    assert!(DropoutParams::new(10, 1.0, 0, 0, false).is_err());
}

/// Drop path: one draw per sample of `per` elements, the GPU's equal to the CPU reference; every sample is all
/// kept (scaled) or all zero; backward applies the same draw to dy.
#[test]
fn drop_path_keeps_or_drops_whole_samples() {
    let g = gpu();
    for (samples, per, p, seed) in [(1, 1, 0.5, 5u32), (7, 13, 0.4, 6), (64, 300, 0.25, 7)] {
        let n = samples * per;
        let mut rng = SplitMix(seed as u64);
        let x_data = rng.vec_f32(n, 0.5, 1.0);
        let dy_data = rng.vec_f32(n, -1.0, 1.0);
        let (x, dy) = (upload(&[n], &x_data, "x"), upload(&[n], &dy_data, "dy"));
        let (out, dx) = (poisoned(&[n], "out"), poisoned(&[n], "dx"));
        let step = 3;
        let fwd = DropoutParams::new(n, p, seed, step, false).and_then(|d| d.per_sample(per)).expect("params");
        let steps = [
            dropout_forward(g, &x, &out, fwd, "drop path").expect("fwd"),
            dropout_backward(g, &dy, &dx, fwd, "drop path bwd").expect("bwd"),
        ];
        g.run("drop path", &steps.iter().collect::<Vec<_>>()).expect("run");
        let scale = fwd.scale as f64;
        let what = format!("drop path {samples} x {per} p={p}");
        let want = drop_path(&widen(&x_data), per, seed, step, fwd.threshold, scale);
        assert_close(&read(&out), &want, 1e-7, 1e-6, &what);
        let want = drop_path(&widen(&dy_data), per, seed, step, fwd.threshold, scale);
        assert_close(&read(&dx), &want, 1e-7, 1e-6, &format!("{what} backward"));
        let got = read(&out);
        let kept: Vec<bool> = got.chunks(per).map(|s| s[0] != 0.0).collect();
        for (s, chunk) in got.chunks(per).enumerate() {
            assert!(chunk.iter().all(|&v| (v != 0.0) == kept[s]), "{what}: sample {s} partly dropped");
        }
        if samples == 64 {
            let share = kept.iter().filter(|&&k| k).count() as f64 / samples as f64;
            assert!((share - (1.0 - p)).abs() < 0.2, "{what}: kept {share} of the samples");
        }
    }
}
