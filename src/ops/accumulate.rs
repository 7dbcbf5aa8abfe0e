//! Gradient accumulation: K micro-batches' gradients summed, scaled by 1 / K, into one optimizer step. See
//! shaders/accumulate.wgsl.

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, Gpu, KernelSpec, Tensor};

use super::dim;

/// Mirrors `AccumulateParams` in shaders/accumulate.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AccumulateParams {
    pub len: u32,
    pub mode: u32,
    pub scale: f32,
    pub _pad: u32,
}

pub const ACCUMULATE_GRADIENTS: KernelSpec =
    KernelSpec::new("accumulate_gradients", "accumulate", &[(1, Access::ReadWrite), (2, Access::ReadWrite)]);

/// Where a micro-batch sits in its accumulation cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccumulateMode {
    /// The first: `sum = grad * scale`.
    Start = 0,
    /// A middle one: `sum += grad * scale`.
    Add = 1,
    /// The last: `grad = sum + grad * scale`, for the optimizer.
    Finish = 2,
}

impl AccumulateMode {
    /// Micro-batch `micro` (0-based) of a cycle of `k` (k >= 2).
    pub fn of(micro: usize, k: usize) -> AccumulateMode {
        match micro {
            0 => AccumulateMode::Start,
            m if m + 1 >= k => AccumulateMode::Finish,
            _ => AccumulateMode::Add,
        }
    }

    /// The uniform for `len` elements with `scale`.
    pub fn params(self, len: usize, scale: f32) -> AccumulateParams {
        AccumulateParams { len: len as u32, mode: self as u32, scale, _pad: 0 }
    }
}

/// The accumulation dispatch over `grad` and `sum` (same size). Rewrite its mode each step with
/// `gpu.write_params(&d, bytemuck::bytes_of(&mode.params(len, scale)))`.
pub fn accumulate_gradients(
    gpu: &Gpu,
    grad: &Tensor,
    sum: &Tensor,
    mode: AccumulateMode,
    scale: f32,
    label: &str,
) -> Result<Dispatch> {
    let n = grad.numel();
    if sum.numel() != n {
        return Err(Error::shape(
            format!("accumulate_gradients '{label}'"),
            format!("'{}' has {} elements, '{}' has {n}", sum.label(), sum.numel(), grad.label()),
        ));
    }
    let p = mode.params(dim(n, "gradient elements")? as usize, scale);
    let grid = super::flat_grid(gpu, n);
    gpu.dispatch(&ACCUMULATE_GRADIENTS, bytemuck::bytes_of(&p), &[grad, sum], grid, label)
}
