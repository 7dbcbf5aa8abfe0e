//! Softmax cross-entropy (forward: mean loss; backward: dlogits) and the correct-prediction count.
//! See shaders/loss.wgsl.

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, Gpu, KernelSpec, Tensor};

use super::dim;

/// Mirrors `LossParams` in shaders/loss.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LossParams {
    pub batch: u32,
    pub classes: u32,
    pub smoothing: f32,
    pub scale: f32,
}

const SIGNATURE: &[(u32, Access)] = &[(1, Access::Read), (2, Access::Read), (3, Access::ReadWrite)];
pub const SOFTMAX_CROSS_ENTROPY_FORWARD: KernelSpec =
    KernelSpec::new("softmax_cross_entropy_forward", "loss", SIGNATURE);
pub const SOFTMAX_CROSS_ENTROPY_BACKWARD: KernelSpec =
    KernelSpec::new("softmax_cross_entropy_backward", "loss", SIGNATURE);
pub const CORRECT_COUNT: KernelSpec = KernelSpec::new("correct_count", "loss", SIGNATURE);
pub const SOFTMAX_FORWARD: KernelSpec =
    KernelSpec::new("softmax_forward", "loss", &[(1, Access::Read), (3, Access::ReadWrite)]);

fn params(logits: &Tensor, labels: &Tensor, smoothing: f32, scale: f32, what: &str) -> Result<LossParams> {
    let [batch, classes] = *logits.shape() else {
        return Err(Error::shape(what, format!("logits {:?} must be (batch, classes)", logits.shape())));
    };
    if labels.numel() != batch {
        return Err(Error::shape(what, format!("{} labels for a batch of {batch}", labels.numel())));
    }
    if !(0.0..1.0).contains(&smoothing) {
        return Err(Error::Invalid(format!("{what}: label smoothing {smoothing} must be in [0, 1)")));
    }
    Ok(LossParams { batch: dim(batch, "batch")?, classes: dim(classes, "classes")?, smoothing, scale })
}

/// Mean softmax cross-entropy of `logits` (batch, C) against `labels` (batch, u32) into `loss` (1).
pub fn softmax_cross_entropy_forward(
    gpu: &Gpu,
    logits: &Tensor,
    labels: &Tensor,
    loss: &Tensor,
    smoothing: f32,
    label: &str,
) -> Result<Dispatch> {
    let p = params(logits, labels, smoothing, 1.0, "softmax_cross_entropy_forward")?;
    if loss.numel() != 1 {
        return Err(Error::shape("softmax_cross_entropy_forward", format!("loss {:?} must hold 1", loss.shape())));
    }
    gpu.dispatch(&SOFTMAX_CROSS_ENTROPY_FORWARD, bytemuck::bytes_of(&p), &[logits, labels, loss], [1, 1, 1], label)
}

/// dlogits = scale * (softmax(logits) - target) / batch, target the smoothed one-hot labels.
pub fn softmax_cross_entropy_backward(
    gpu: &Gpu,
    logits: &Tensor,
    labels: &Tensor,
    dlogits: &Tensor,
    smoothing: f32,
    scale: f32,
    label: &str,
) -> Result<Dispatch> {
    let p = params(logits, labels, smoothing, scale, "softmax_cross_entropy_backward")?;
    if dlogits.shape() != logits.shape() {
        return Err(Error::shape(
            "softmax_cross_entropy_backward",
            format!("dlogits {:?} must match logits {:?}", dlogits.shape(), logits.shape()),
        ));
    }
    let grid = [p.batch.div_ceil(64), 1, 1];
    gpu.dispatch(&SOFTMAX_CROSS_ENTROPY_BACKWARD, bytemuck::bytes_of(&p), &[logits, labels, dlogits], grid, label)
}

/// Number of rows whose first maximal logit is the label, into `count` (1), as f32.
pub fn correct_count(gpu: &Gpu, logits: &Tensor, labels: &Tensor, count: &Tensor, label: &str) -> Result<Dispatch> {
    let p = params(logits, labels, 0.0, 1.0, "correct_count")?;
    if count.numel() != 1 {
        return Err(Error::shape("correct_count", format!("count {:?} must hold 1", count.shape())));
    }
    gpu.dispatch(&CORRECT_COUNT, bytemuck::bytes_of(&p), &[logits, labels, count], [1, 1, 1], label)
}

/// probs = softmax(logits) row by row, (batch, C).
pub fn softmax_forward(gpu: &Gpu, logits: &Tensor, probs: &Tensor, label: &str) -> Result<Dispatch> {
    let [batch, classes] = *logits.shape() else {
        return Err(Error::shape("softmax_forward", format!("logits {:?} must be (batch, classes)", logits.shape())));
    };
    if probs.shape() != logits.shape() {
        return Err(Error::shape(
            "softmax_forward",
            format!("probs {:?} must match logits {:?}", probs.shape(), logits.shape()),
        ));
    }
    let p = LossParams { batch: dim(batch, "batch")?, classes: dim(classes, "classes")?, smoothing: 0.0, scale: 1.0 };
    gpu.dispatch(&SOFTMAX_FORWARD, bytemuck::bytes_of(&p), &[logits, probs], [p.batch.div_ceil(64), 1, 1], label)
}
