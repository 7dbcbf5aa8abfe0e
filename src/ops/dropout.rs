//! Inverted dropout with a counter-based mask: (seed, step, element) decide, so backward regenerates the mask;
//! drop path draws once per sample instead of once per element.
//! See shaders/dropout.wgsl; `crate::reference::dropout_keep` is the same hash on the CPU.

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, Gpu, KernelSpec, Tensor};

use super::dim;

/// Mirrors `DropoutParams` in shaders/dropout.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DropoutParams {
    pub len: u32,
    pub seed: u32,
    pub step: u32,
    pub threshold: u32,
    pub scale: f32,
    pub flags: u32,
    /// Elements per draw: 1 for dropout, a sample's elements for drop path.
    pub per: u32,
    pub _pad: u32,
}

pub const FLAG_ACCUMULATE: u32 = 1;
const SIG: &[(u32, Access)] = &[(1, Access::Read), (2, Access::ReadWrite)];
pub const DROPOUT_FORWARD: KernelSpec = KernelSpec::new("dropout_forward", "dropout", SIG);
pub const DROPOUT_BACKWARD: KernelSpec = KernelSpec::new("dropout_backward", "dropout", SIG);

impl DropoutParams {
    /// Parameters for drop probability `p` in [0, 1) at `step` (write them again each step for a fresh mask).
    pub fn new(len: usize, p: f64, seed: u32, step: u32, accumulate: bool) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::Invalid(format!("dropout probability {p} must be in [0, 1)")));
        }
        Ok(DropoutParams {
            len: dim(len, "elements")?,
            seed,
            step,
            threshold: (p * 4294967296.0).round().min(u32::MAX as f64) as u32,
            scale: (1.0 / (1.0 - p)) as f32,
            flags: if accumulate { FLAG_ACCUMULATE } else { 0 },
            per: 1,
            _pad: 0,
        })
    }

    /// Drop path (stochastic depth): one draw per `per` consecutive elements (a sample of a batch), which keeps
    /// or drops the whole sample.
    pub fn per_sample(self, per: usize) -> Result<Self> {
        Ok(DropoutParams { per: dim(per.max(1), "elements per sample")?, ..self })
    }
}

fn launch(gpu: &Gpu, spec: &KernelSpec, p: DropoutParams, src: &Tensor, dst: &Tensor, label: &str) -> Result<Dispatch> {
    if src.numel() != dst.numel() || src.numel() != p.len as usize {
        return Err(Error::shape(
            spec.entry,
            format!(
                "'{}' {:?} and '{}' {:?} must both hold {}",
                src.label(),
                src.shape(),
                dst.label(),
                dst.shape(),
                p.len
            ),
        ));
    }
    let grid = super::flat_grid(gpu, src.numel());
    super::dispatch_at(gpu, spec, &[src, dst], bytemuck::bytes_of(&p), &[src, dst], grid, label)
}

/// out = x * mask / (1 - p).
pub fn dropout_forward(gpu: &Gpu, x: &Tensor, out: &Tensor, p: DropoutParams, label: &str) -> Result<Dispatch> {
    launch(gpu, &DROPOUT_FORWARD, p, x, out, label)
}

/// dx (+)= dy * mask / (1 - p), the mask of the forward call with the same (seed, step).
pub fn dropout_backward(gpu: &Gpu, dy: &Tensor, dx: &Tensor, p: DropoutParams, label: &str) -> Result<Dispatch> {
    launch(gpu, &DROPOUT_BACKWARD, p, dy, dx, label)
}
