//! Dynamic loss scaling on the GPU: `unscale_check`, `update_scale` (the loss's backward applies the scale:
//! [`crate::ops::loss::Loss::backward`] with the scaler). See shaders/scaler.wgsl.

use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Dispatch, Gpu, KernelSpec, Tensor};

use super::dim;

/// Mirrors `ScalerParams` in shaders/scaler.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ScalerParams {
    pub len: u32,
    pub interval: u32,
    pub _pad: [u32; 2],
}

pub const UNSCALE_CHECK: KernelSpec =
    KernelSpec::new("unscale_check", "scaler", &[(2, Access::ReadWrite), (3, Access::ReadWrite)]);
pub const UPDATE_SCALE: KernelSpec = KernelSpec::new("update_scale", "scaler", &[(3, Access::ReadWrite)]);

/// PyTorch's GradScaler and fastai's MixedPrecision start the loss scale at 2^16.
pub const DEFAULT_SCALE: f32 = 65536.0;

/// The scaler's four u32 words (see shaders/scaler.wgsl): the scale, clean steps, skipped steps, the flag.
pub const STATE_WORDS: usize = 4;

/// The scaler's state as read back: (scale, clean steps since it changed, steps skipped so far).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScalerState {
    pub scale: f32,
    pub clean: u32,
    pub skipped: u32,
}

impl ScalerState {
    /// A fresh scaler at `scale`.
    pub fn new(scale: f32) -> ScalerState {
        ScalerState { scale, clean: 0, skipped: 0 }
    }

    /// The four words the GPU holds (the flag clear).
    pub fn words(&self) -> [u32; STATE_WORDS] {
        [self.scale.to_bits(), self.clean, self.skipped, 0]
    }

    /// From the words the GPU holds.
    pub fn from_words(w: &[u32]) -> ScalerState {
        ScalerState { scale: f32::from_bits(w[0]), clean: w[1], skipped: w[2] }
    }
}

/// The scaler's state must be u32 [`STATE_WORDS`] (every kernel that binds it checks).
pub(crate) fn check_state(state: &Tensor, label: &str) -> Result<()> {
    if state.dtype() != DType::U32 || state.numel() != STATE_WORDS {
        return Err(Error::Invalid(format!(
            "'{label}': the scaler state '{}' is {:?} {:?}, expected u32 [{STATE_WORDS}]",
            state.label(),
            state.dtype(),
            state.shape()
        )));
    }
    Ok(())
}

/// `grads /= scale` in place (f32), raising the state's flag on a non-finite element.
pub fn unscale_check(gpu: &Gpu, grads: &Tensor, state: &Tensor, label: &str) -> Result<Dispatch> {
    check_state(state, label)?;
    if grads.dtype() != DType::F32 {
        return Err(Error::Invalid(format!("unscale_check '{label}': '{}' must be f32", grads.label())));
    }
    let p = ScalerParams { len: dim(grads.numel(), "gradient elements")?, ..Default::default() };
    gpu.dispatch(&UNSCALE_CHECK, bytemuck::bytes_of(&p), &[grads, state], super::flat_grid(gpu, grads.numel()), label)
}

/// Back off on a raised flag, grow after `interval` clean steps, clear the flag.
pub fn update_scale(gpu: &Gpu, state: &Tensor, interval: u32, label: &str) -> Result<Dispatch> {
    check_state(state, label)?;
    if interval == 0 {
        return Err(Error::Invalid(format!("update_scale '{label}': the growth interval must be at least 1")));
    }
    let p = ScalerParams { len: 0, interval, ..Default::default() };
    gpu.dispatch(&UPDATE_SCALE, bytemuck::bytes_of(&p), &[state], [1, 1, 1], label)
}
