//! The loss kernels against the reference: softmax cross-entropy (with label smoothing) and sigmoid binary
//! cross-entropy, plain and on MixUp/CutMix targets, their counts and probabilities. The losses are means of
//! O(1) terms summed in f32: atol 2e-5, rtol 1e-4; gradients (O(1 / batch)) atol 1e-6, rtol 1e-4.

use wgtune::ops::loss::{Loss, Targets};
use wgtune::reference::{self, finite_difference, widen, SplitMix};

use crate::common::*;

const SOFTMAX: Loss = Loss::SoftmaxCrossEntropy { smoothing: 0.0 };
const SIGMOID: Loss = Loss::SigmoidBinaryCrossEntropy { threshold: 0.5 };

/// (batch, classes, smoothing or threshold, mixed): 1 class, 2 classes, primes, more rows than one workgroup has
/// invocations, class counts across a 32-bit word (33, 64, 65) and ImageNet's 1000.
const CASES: &[(usize, usize, f32, bool)] = &[
    (1, 1, 0.0, false),
    (1, 2, 0.0, true),
    (5, 3, 0.1, false),
    (37, 10, 0.0, true),
    (300, 7, 0.1, true),
    (3, 33, 0.0, false),
    (7, 64, 0.2, true),
    (2, 65, 0.0, true),
    (4, 1000, 0.1, true),
];

/// Softmax with `value` as its smoothing, or sigmoid with `0.5 + value` as its threshold.
fn loss_of(multi: bool, value: f32) -> Loss {
    if multi {
        Loss::SigmoidBinaryCrossEntropy { threshold: 0.5 + value }
    } else {
        Loss::SoftmaxCrossEntropy { smoothing: value }
    }
}

/// Seeded logits, label sets (one class; or each class on with probability 0.3), and target rows with random
/// partners and lam in [0.5, 1] when `mixed`.
fn data(batch: usize, classes: usize, multi: bool, mixed: bool, seed: u64) -> (Vec<f32>, Vec<u32>, Targets) {
    let mut rng = SplitMix(seed);
    let logits = rng.vec_f32(batch * classes, -4.0, 4.0);
    let layout = Targets { classes, multi_label: multi };
    let mut labels = Vec::new();
    for _ in 0..batch {
        let tags: Vec<u32> = if multi {
            (0..classes as u32).filter(|_| rng.uniform(0.0, 1.0) < 0.3).collect()
        } else {
            vec![rng.below(classes as u32)]
        };
        labels.extend(layout.label_set(&tags));
    }
    let mix: Vec<(u32, f32)> = (0..batch).map(|_| (rng.below(batch as u32), rng.uniform(0.5, 1.0) as f32)).collect();
    let rows = layout.encode(&labels, mixed.then_some(mix.as_slice())).expect("encode");
    (logits, rows, layout)
}

fn want_loss(f: Loss, logits: &[f64], t: &[f64], classes: usize) -> f64 {
    match f {
        Loss::SoftmaxCrossEntropy { smoothing } => {
            reference::soft_cross_entropy_forward(logits, t, classes, smoothing as f64)
        }
        Loss::SigmoidBinaryCrossEntropy { .. } => reference::bce_with_logits_forward(logits, t),
    }
}

fn want_grad(f: Loss, logits: &[f64], t: &[f64], classes: usize, scale: f64) -> Vec<f64> {
    match f {
        Loss::SoftmaxCrossEntropy { smoothing } => {
            reference::soft_cross_entropy_backward(logits, t, classes, smoothing as f64, scale)
        }
        Loss::SigmoidBinaryCrossEntropy { .. } => reference::bce_with_logits_backward(logits, t, scale),
    }
}

#[test]
fn forward_matches_reference() {
    let g = gpu();
    for multi in [false, true] {
        for (i, &(batch, classes, value, mixed)) in CASES.iter().enumerate() {
            let f = loss_of(multi, value);
            let (logits_data, rows, layout) = data(batch, classes, multi, mixed, 60 + i as u64);
            let logits = upload(&[batch, classes], &logits_data, "logits");
            let targets = upload_u32(&[batch, layout.row()], &rows, "targets");
            let loss = poisoned(&[1], "loss");
            let d = f.forward(g, &logits, &targets, &loss, "loss forward").expect("dispatch");
            g.run("loss forward", &[&d]).expect("run");
            let t = reference::dense_targets(&rows, classes, multi);
            let want = want_loss(f, &widen(&logits_data), &t, classes);
            assert_close(&read(&loss), &[want], 2e-5, 1e-4, &format!("{f:?} ({batch}, {classes}, mixed {mixed})"));
        }
    }
}

#[test]
fn backward_matches_reference() {
    let g = gpu();
    for multi in [false, true] {
        for (i, &(batch, classes, value, mixed)) in CASES.iter().enumerate() {
            let f = loss_of(multi, value);
            let (logits_data, rows, layout) = data(batch, classes, multi, mixed, 70 + i as u64);
            let logits = upload(&[batch, classes], &logits_data, "logits");
            let targets = upload_u32(&[batch, layout.row()], &rows, "targets");
            let dlogits = poisoned(&[batch, classes], "dlogits");
            let d = f.backward(g, &logits, &targets, &dlogits, 1.5, None, "loss backward").expect("dispatch");
            g.run("loss backward", &[&d]).expect("run");
            let t = reference::dense_targets(&rows, classes, multi);
            let want = want_grad(f, &widen(&logits_data), &t, classes, 1.5);
            assert_close(&read(&dlogits), &want, 1e-6, 1e-4, &format!("{f:?} ({batch}, {classes}, mixed {mixed})"));
        }
    }
}

/// The references' gradients against central finite differences of their losses, mixed targets included.
#[test]
fn reference_gradients_match_finite_differences() {
    for multi in [false, true] {
        for (i, &(batch, classes, value, _)) in CASES.iter().enumerate().filter(|(_, c)| c.0 * c.1 <= 500) {
            let f = loss_of(multi, value);
            let (logits_data, rows, _) = data(batch, classes, multi, true, 75 + i as u64);
            let x = widen(&logits_data);
            let t = reference::dense_targets(&rows, classes, multi);
            let grad = want_grad(f, &x, &t, classes, 1.0);
            for (j, &gj) in grad.iter().enumerate() {
                let fd = finite_difference(&x, j, 1e-5, |x| want_loss(f, x, &t, classes));
                assert!((gj - fd).abs() < 1e-7 + 1e-5 * fd.abs(), "{f:?} ({batch}, {classes}) [{j}]: {gj} vs {fd}");
            }
        }
    }
}

#[test]
fn mixed_loss_is_the_lerp_of_the_two_losses() {
    // fastai's MixUp loss: lam * L(x, own) + (1 - lam) * L(x, partner's).
    for (multi, classes) in [(false, 5), (true, 40)] {
        let f = loss_of(multi, 0.1);
        let (logits_data, rows, layout) = data(4, classes, multi, true, 5);
        let x = widen(&logits_data);
        let w = layout.words();
        let own: Vec<u32> = rows.chunks(layout.row()).flat_map(|r| r[..w].to_vec()).collect();
        let theirs: Vec<u32> = rows.chunks(layout.row()).flat_map(|r| r[w..2 * w].to_vec()).collect();
        let lam: Vec<f64> = rows.chunks(layout.row()).map(|r| f32::from_bits(r[2 * w]) as f64).collect();
        let mut lerp = 0.0;
        for (row, &lam) in lam.iter().enumerate() {
            let xr = &x[row * classes..(row + 1) * classes];
            let set = |labels: &[u32]| {
                let rows = layout.encode(&labels[row * w..(row + 1) * w], None).unwrap();
                want_loss(f, xr, &reference::dense_targets(&rows, classes, multi), classes)
            };
            lerp += (lam * set(&own) + (1.0 - lam) * set(&theirs)) / 4.0;
        }
        let mixed = want_loss(f, &x, &reference::dense_targets(&rows, classes, multi), classes);
        assert!((mixed - lerp).abs() < 1e-12, "{f:?}: {mixed} vs {lerp}");
    }
}

#[test]
fn counts_match_reference() {
    let g = gpu();
    for multi in [false, true] {
        for (i, &(batch, classes, value, mixed)) in CASES.iter().enumerate() {
            let f = loss_of(multi, value);
            let (mut logits_data, rows, layout) = data(batch, classes, multi, mixed, 80 + i as u64);
            let own = reference::dense_targets(&layout.encode(&own_sets(&rows, layout), None).unwrap(), classes, multi);
            // Make about half the rows right by raising their labels' logits above the rest.
            for r in (0..batch).step_by(2) {
                for c in 0..classes {
                    if own[r * classes + c] > 0.5 {
                        logits_data[r * classes + c] = 5.0;
                    }
                }
            }
            let logits = upload(&[batch, classes], &logits_data, "logits");
            let targets = upload_u32(&[batch, layout.row()], &rows, "targets");
            let count = poisoned(&[1], "count");
            let d = f.correct(g, &logits, &targets, &count, "count").expect("dispatch");
            g.run("count", &[&d]).expect("run");
            let x = widen(&logits_data);
            let want = match f {
                Loss::SoftmaxCrossEntropy { .. } => {
                    let labels: Vec<u32> = own_sets(&rows, layout);
                    reference::correct_count(&x, &labels, classes)
                }
                Loss::SigmoidBinaryCrossEntropy { threshold } => {
                    reference::multi_label_correct(&x, &own, threshold as f64)
                }
            };
            assert_eq!(read(&count), vec![want as f32], "{f:?} ({batch}, {classes})");
            assert!(want > 0 && want < f.count_of(batch, classes) || batch * classes <= 2, "a test that can fail");
        }
    }
}

/// Each row's own label set, from its target row.
fn own_sets(rows: &[u32], layout: Targets) -> Vec<u32> {
    rows.chunks(layout.row()).flat_map(|r| r[..layout.words()].to_vec()).collect()
}

#[test]
fn probabilities_match_reference() {
    let g = gpu();
    for f in [SOFTMAX, SIGMOID] {
        for (i, &(batch, classes, _, _)) in CASES.iter().enumerate() {
            let (logits_data, _, _) = data(batch, classes, false, false, 90 + i as u64);
            let logits = upload(&[batch, classes], &logits_data, "logits");
            let probs = poisoned(&[batch, classes], "probs");
            let d = f.probabilities(g, &logits, &probs, "probs").expect("dispatch");
            g.run("probs", &[&d]).expect("run");
            let x = widen(&logits_data);
            let want = match f {
                Loss::SoftmaxCrossEntropy { .. } => reference::softmax_forward(&x, classes),
                Loss::SigmoidBinaryCrossEntropy { .. } => reference::sigmoid_forward(&x),
            };
            assert_close(&read(&probs), &want, 1e-7, 1e-5, &format!("{f:?} ({batch}, {classes})"));
        }
    }
}

#[test]
fn targets_are_checked() {
    let single = Targets { classes: 3, multi_label: false };
    assert!(single.check(&[0, 2], 2).is_ok());
    let err = single.check(&[0, 3], 2).unwrap_err().to_string();
    assert!(err.contains("label 3 is out of range for 3 classes"), "{err}");
    let multi = Targets { classes: 33, multi_label: true };
    assert_eq!(multi.label_set(&[0, 32]), vec![1, 1]);
    assert!(multi.check(&[1, 1], 1).is_ok());
    let err = multi.check(&[1, 2], 1).unwrap_err().to_string();
    assert!(err.contains("past the last of 33"), "{err}");
    let err = multi.check(&[1], 1).unwrap_err().to_string();
    assert!(err.contains("needs 2 2-word label bitmasks"), "{err}");
    let err = single.encode(&[0, 1], Some(&[(1, 0.5), (2, 0.5)])).unwrap_err().to_string();
    assert!(err.contains("partner 2 is outside the batch of 2"), "{err}");
}

#[test]
fn wrong_target_shapes_are_errors() {
    let g = gpu();
    let logits = upload(&[2, 3], &[0.0; 6], "logits");
    let plain = upload_u32(&[2], &[0, 1], "plain labels");
    let loss = poisoned(&[1], "loss");
    for f in [SOFTMAX, SIGMOID] {
        let Err(err) = f.forward(g, &logits, &plain, &loss, "loss") else { panic!("{f:?} took plain labels") };
        assert!(err.to_string().contains("must be (2, 3)"), "{err}");
    }
}

/// Logits in f16 (issue 14): the loss, the counts and the probabilities are computed in f32 and written in f32, the
/// logit gradients written in f16 (one more rounding, `F16_STORE`), each against the reference on the same
/// f16-rounded logits; an f16 loss is refused.
#[test]
fn f16_logits_match_reference() {
    let g = gpu();
    for multi in [false, true] {
        for (i, &(batch, classes, value, mixed)) in CASES.iter().enumerate() {
            let f = loss_of(multi, value);
            let what = format!("{f:?} ({batch}, {classes}, mixed {mixed}) f16");
            let (logits_data, rows, layout) = data(batch, classes, multi, mixed, 100 + i as u64);
            let logits_data = to_f16(&logits_data);
            let logits = upload_f16(&[batch, classes], &logits_data, "logits");
            let targets = upload_u32(&[batch, layout.row()], &rows, "targets");
            let (loss, count, probs) =
                (poisoned(&[1], "loss"), poisoned(&[1], "count"), poisoned(&[batch, classes], "probs"));
            let dlogits = upload_f16(&[batch, classes], &vec![f32::NAN; batch * classes], "dlogits");
            let steps = [
                f.forward(g, &logits, &targets, &loss, "loss").expect("forward"),
                f.backward(g, &logits, &targets, &dlogits, 1.5, None, "loss").expect("backward"),
                f.correct(g, &logits, &targets, &count, "count").expect("count"),
                f.probabilities(g, &logits, &probs, "probs").expect("probs"),
            ];
            g.run("loss f16", &steps.iter().collect::<Vec<_>>()).expect("run");
            let x = widen(&logits_data);
            let t = reference::dense_targets(&rows, classes, multi);
            assert_close(&read(&loss), &[want_loss(f, &x, &t, classes)], 2e-5, 1e-4, &what);
            let (atol, rtol) = F16_STORE;
            let want = want_grad(f, &x, &t, classes, 1.5);
            assert_close(&read_f16(&dlogits), &want, 1e-6 + atol, 1e-4 + rtol, &format!("{what} gradient"));
            let own = own_sets(&rows, layout);
            let want = match f {
                Loss::SoftmaxCrossEntropy { .. } => reference::correct_count(&x, &own, classes),
                Loss::SigmoidBinaryCrossEntropy { threshold } => {
                    let own = reference::dense_targets(&layout.encode(&own, None).unwrap(), classes, multi);
                    reference::multi_label_correct(&x, &own, threshold as f64)
                }
            };
            assert_eq!(read(&count), vec![want as f32], "{what} count");
            let want = match f {
                Loss::SoftmaxCrossEntropy { .. } => reference::softmax_forward(&x, classes),
                Loss::SigmoidBinaryCrossEntropy { .. } => reference::sigmoid_forward(&x),
            };
            assert_close(&read(&probs), &want, 1e-7, 1e-5, &format!("{what} probabilities"));
        }
    }
    let logits = upload_f16(&[2, 3], &[0.5; 6], "logits");
    let targets = upload_u32(&[2, 3], &[0, 0, 1f32.to_bits(), 1, 1, 1f32.to_bits()], "targets");
    let loss16 = upload_f16(&[1], &[0.0], "loss16");
    let e = SOFTMAX.forward(gpu(), &logits, &targets, &loss16, "loss").err().expect("refused").to_string();
    assert!(e.contains("loss16") && e.contains("f32"), "{e}");
}

/// f16 training's backwards (`backward` with the scaler) multiply by the dynamic loss scale S, read from the scaler's state,
/// before the f16 store, as PyTorch's GradScaler scales the loss before backward: every logit gradient, those below
/// f16's normal range (2^-14) before scaling too, within one f16 rounding of the reference times S (relative 2^-11,
/// or half the subnormal spacing 2^-25 where even the scaled value is subnormal). Storing unscaled and scaling
/// after (the order before) fails this: a gradient of 1e-6 kept only 2^-24 absolute precision (3% of it).
/// Logits in [-6, 6] over 67 rows put most off-target gradients between 1e-8 and 6e-5. An f32 state of the wrong
/// size is refused.
#[test]
fn scaled_backward_scales_before_the_f16_store() {
    use wgtune::ops::scaler::ScalerState;
    let g = gpu();
    let (batch, classes, s) = (67, 13, 4096.0);
    let state = upload_u32(&[4], &ScalerState::new(s as f32).words(), "scaler");
    for multi in [false, true] {
        let f = loss_of(multi, 0.0);
        let (_, rows, _) = data(batch, classes, multi, true, 7);
        let logits_data = to_f16(&SplitMix(8).vec_f32(batch * classes, -6.0, 6.0));
        let (logits, targets) = (
            upload_f16(&[batch, classes], &logits_data, "logits"),
            upload_u32(&[batch, rows.len() / batch], &rows, "t"),
        );
        let dlogits = upload_f16(&[batch, classes], &vec![f32::NAN; batch * classes], "dlogits");
        let d = f.backward(g, &logits, &targets, &dlogits, 1.5, Some(&state), "loss").expect("backward");
        g.run("scaled loss backward", &[&d]).expect("run");
        let t = reference::dense_targets(&rows, classes, multi);
        let unscaled = want_grad(f, &widen(&logits_data), &t, classes, 1.5);
        let small = unscaled.iter().filter(|v| v.abs() < 2f64.powi(-14) && v.abs() > 1e-8).count();
        assert!(small > batch, "{f:?}: only {small} gradients below f16's normal range: the case tests nothing");
        let tol = |want: f64| want.abs() * (2f64.powi(-11) + 1e-5) + 2f64.powi(-25);
        for (i, (&got, &want)) in read_f16(&dlogits).iter().zip(&unscaled).enumerate() {
            let want = want * s;
            assert!((got as f64 - want).abs() <= tol(want), "{f:?} element {i}: {got}, want {want} (S = {s})");
        }
        // The tolerance tells the orders apart: rounded to f16 unscaled, then scaled, many miss it.
        let late = unscaled.iter().filter(|&&v| {
            let stored = half::f16::from_f64(v).to_f64() * s;
            (stored - v * s).abs() > tol(v * s)
        });
        assert!(late.count() > batch / 2, "{f:?}: the check cannot tell scaling before the store from after");
    }
    let wrong = upload(&[4], &[1.0; 4], "f32 state");
    let (logits, dlogits) = (upload_f16(&[2, 3], &[0.5; 6], "logits"), upload_f16(&[2, 3], &[0.0; 6], "dlogits"));
    let targets = upload_u32(&[2, 3], &[0, 0, 1f32.to_bits(), 1, 1, 1f32.to_bits()], "targets");
    let e = SOFTMAX.backward(g, &logits, &targets, &dlogits, 1.0, Some(&wrong), "loss").err().expect("refused");
    assert!(e.to_string().contains("f32 state"), "{e}");
}
