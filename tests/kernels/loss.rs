//! Softmax cross-entropy forward/backward and correct_count against the reference.
//! f32 exp/log are accurate to a few ulps; atol 2e-5 on the mean loss and 1e-6 on dlogits (which are
//! O(1 / batch)) with rtol 1e-4.

use wgtune::ops::loss::{
    correct_count, softmax_cross_entropy_backward, softmax_cross_entropy_forward, softmax_forward,
};
use wgtune::reference::{self, widen, SplitMix};

use crate::common::*;

/// (batch, classes, smoothing): 1 class, 2 classes, primes, more rows than one workgroup has invocations,
/// ImageNet's 1000 classes.
const CASES: &[(usize, usize, f32)] =
    &[(1, 1, 0.0), (1, 2, 0.0), (5, 3, 0.1), (37, 10, 0.0), (300, 7, 0.1), (4, 1000, 0.1)];

fn data(batch: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = SplitMix(seed);
    let logits = rng.vec_f32(batch * classes, -4.0, 4.0);
    let labels = (0..batch).map(|_| rng.below(classes as u32)).collect();
    (logits, labels)
}

#[test]
fn forward_matches_reference() {
    let g = gpu();
    for (i, &(batch, classes, smoothing)) in CASES.iter().enumerate() {
        let (logits_data, labels_data) = data(batch, classes, 60 + i as u64);
        let logits = upload(&[batch, classes], &logits_data, "logits");
        let labels = upload_u32(&[batch], &labels_data, "labels");
        let loss = poisoned(&[1], "loss");
        let d = softmax_cross_entropy_forward(g, &logits, &labels, &loss, smoothing, "ce forward").expect("dispatch");
        g.run("ce forward", &[&d]).expect("run");
        let want =
            reference::softmax_cross_entropy_forward(&widen(&logits_data), &labels_data, classes, smoothing as f64);
        assert_close(&read(&loss), &[want], 2e-5, 1e-4, &format!("loss ({batch}, {classes}, {smoothing})"));
    }
}

#[test]
fn backward_matches_reference() {
    let g = gpu();
    for (i, &(batch, classes, smoothing)) in CASES.iter().enumerate() {
        let (logits_data, labels_data) = data(batch, classes, 70 + i as u64);
        let logits = upload(&[batch, classes], &logits_data, "logits");
        let labels = upload_u32(&[batch], &labels_data, "labels");
        let dlogits = poisoned(&[batch, classes], "dlogits");
        let d = softmax_cross_entropy_backward(g, &logits, &labels, &dlogits, smoothing, 1.5, "ce backward")
            .expect("dispatch");
        g.run("ce backward", &[&d]).expect("run");
        let want = reference::softmax_cross_entropy_backward(
            &widen(&logits_data),
            &labels_data,
            classes,
            smoothing as f64,
            1.5,
        );
        assert_close(&read(&dlogits), &want, 1e-6, 1e-4, &format!("dlogits ({batch}, {classes}, {smoothing})"));
    }
}

#[test]
fn correct_count_matches_reference() {
    let g = gpu();
    for (i, &(batch, classes, _)) in CASES.iter().enumerate() {
        let (mut logits_data, labels_data) = data(batch, classes, 80 + i as u64);
        // Make about half the rows right by raising the label's logit above the rest.
        for (r, &y) in labels_data.iter().enumerate().filter(|(r, _)| r % 2 == 0) {
            logits_data[r * classes + y as usize] = 5.0;
        }
        let logits = upload(&[batch, classes], &logits_data, "logits");
        let labels = upload_u32(&[batch], &labels_data, "labels");
        let count = poisoned(&[1], "count");
        let d = correct_count(g, &logits, &labels, &count, "correct_count").expect("dispatch");
        g.run("correct_count", &[&d]).expect("run");
        let want = reference::correct_count(&widen(&logits_data), &labels_data, classes);
        assert_eq!(read(&count), vec![want as f32], "correct_count ({batch}, {classes})");
    }
}

#[test]
fn softmax_matches_reference() {
    let g = gpu();
    for (i, &(batch, classes, _)) in CASES.iter().enumerate() {
        let (logits_data, _) = data(batch, classes, 90 + i as u64);
        let logits = upload(&[batch, classes], &logits_data, "logits");
        let probs = poisoned(&[batch, classes], "probs");
        let d = softmax_forward(g, &logits, &probs, "softmax").expect("dispatch");
        g.run("softmax", &[&d]).expect("run");
        let want = reference::softmax_forward(&widen(&logits_data), classes);
        assert_close(&read(&probs), &want, 1e-7, 1e-5, &format!("softmax ({batch}, {classes})"));
    }
}
