//! A channel range of a tensor seen as (outer, C, inner) and a batch-of-one tensor repeated over a batch: a vision
//! transformer's token ops. See shaders/slice.wgsl; the CPU twins are `crate::reference::slice` and friends.

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, Gpu, KernelSpec, Tensor};

use super::layer_norm::ChannelAxis;
use super::{dim, flat_grid};

/// Mirrors `SliceParams` in shaders/slice.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SliceParams {
    pub outer: u32,
    pub channels: u32,
    pub inner: u32,
    pub flags: u32,
    pub start: u32,
    pub len: u32,
    pub _pad: [u32; 2],
}

pub const FLAG_ACCUMULATE: u32 = 1;
const SIG: &[(u32, Access)] = &[(1, Access::Read), (2, Access::ReadWrite)];
pub const SLICE_FORWARD: KernelSpec = KernelSpec::new("slice_forward", "slice", SIG);
pub const SLICE_BACKWARD: KernelSpec = KernelSpec::new("slice_backward", "slice", SIG);
pub const EXPAND_FORWARD: KernelSpec = KernelSpec::new("expand_forward", "slice", SIG);

/// The parameters of a slice of `whole` (channels along dimension 1) to `part`, starting at channel `start`.
fn params(whole: &Tensor, part: &Tensor, start: usize, accumulate: bool) -> Result<SliceParams> {
    let (Some(w), Some(p)) = (ChannelAxis::second(whole.shape()), ChannelAxis::second(part.shape())) else {
        return Err(Error::shape("slice", format!("{:?} and {:?} need at least (N, C)", whole.shape(), part.shape())));
    };
    if w.outer != p.outer || w.inner != p.inner || start + p.channels > w.channels {
        return Err(Error::shape(
            "slice",
            format!(
                "'{}' {:?} is not channels {start}..{} of '{}' {:?}",
                part.label(),
                part.shape(),
                start + p.channels,
                whole.label(),
                whole.shape()
            ),
        ));
    }
    Ok(SliceParams {
        outer: dim(w.outer, "outer size")?,
        channels: dim(w.channels, "channels")?,
        inner: dim(w.inner, "inner size")?,
        flags: if accumulate { FLAG_ACCUMULATE } else { 0 },
        start: dim(start, "start")?,
        len: dim(p.channels, "length")?,
        _pad: [0; 2],
    })
}

/// y = x[:, start .. start + C_y] (dimension 1).
pub fn slice_forward(gpu: &Gpu, x: &Tensor, y: &Tensor, start: usize, label: &str) -> Result<Dispatch> {
    let p = params(x, y, start, false)?;
    super::dispatch_at(gpu, &SLICE_FORWARD, &[x, y], bytemuck::bytes_of(&p), &[x, y], flat_grid(gpu, y.numel()), label)
}

/// dx (+)= dy placed at channels start .. start + C_dy, zeros elsewhere (every element of dx is written).
pub fn slice_backward(
    gpu: &Gpu,
    dy: &Tensor,
    dx: &Tensor,
    start: usize,
    accumulate: bool,
    label: &str,
) -> Result<Dispatch> {
    let p = params(dx, dy, start, accumulate)?;
    super::dispatch_at(
        gpu,
        &SLICE_BACKWARD,
        &[dy, dx],
        bytemuck::bytes_of(&p),
        &[dy, dx],
        flat_grid(gpu, dx.numel()),
        label,
    )
}

/// y (N, ...) = x (1, ...) repeated N times (x may be an f32 parameter with y f16). Its backward is a sum over the
/// batch (`reduce::sum_reduce`).
pub fn expand_forward(gpu: &Gpu, x: &Tensor, y: &Tensor, label: &str) -> Result<Dispatch> {
    let per = x.numel();
    if per == 0
        || !y.numel().is_multiple_of(per)
        || y.shape().get(1..) != x.shape().get(1..)
        || x.shape().first() != Some(&1)
    {
        return Err(Error::shape(
            EXPAND_FORWARD.entry,
            format!("'{}' {:?} is not '{}' {:?} repeated over a batch", y.label(), y.shape(), x.label(), x.shape()),
        ));
    }
    let p = SliceParams { outer: dim(y.numel() / per, "batch")?, inner: dim(per, "elements")?, ..Default::default() };
    let grid = flat_grid(gpu, y.numel());
    if (x.dtype(), y.dtype()) == (crate::gpu::DType::F32, crate::gpu::DType::F16) {
        // An f32 parameter (a class token, a position embedding) into f16 activations.
        let spec = EXPAND_FORWARD.with_precision(crate::gpu::Precision::F16WithF32Rhs);
        return gpu.dispatch(&spec, bytemuck::bytes_of(&p), &[x, y], grid, label);
    }
    super::dispatch_at(gpu, &EXPAND_FORWARD, &[x, y], bytemuck::bytes_of(&p), &[x, y], grid, label)
}
