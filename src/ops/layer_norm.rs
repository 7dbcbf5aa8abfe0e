//! Layer norm and layer scale over the channel axis of a tensor seen as (outer, C, inner). See
//! shaders/layer_norm.wgsl; the CPU twins are `crate::reference::layer_norm_*` and `layer_scale_*`.

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, Gpu, KernelSpec, Tensor};

use super::{dim, flat_grid};

/// Mirrors `LayerNormParams` in shaders/layer_norm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LayerNormParams {
    pub outer: u32,
    pub channels: u32,
    pub inner: u32,
    pub flags: u32,
    pub eps: f32,
    pub _pad: [u32; 3],
}

pub const FLAG_ACCUMULATE: u32 = 1;

use Access::{Read as R, ReadWrite as W};
pub const LAYER_NORM_FORWARD: KernelSpec =
    KernelSpec::new("layer_norm_forward", "layer_norm", &[(1, R), (3, R), (4, R), (5, W), (6, W), (7, W)]);
pub const LAYER_NORM_BACKWARD_DATA: KernelSpec =
    KernelSpec::new("layer_norm_backward_data", "layer_norm", &[(1, R), (2, R), (3, R), (5, W), (6, W), (7, W)]);
pub const LAYER_NORM_FORWARD_ROWS: KernelSpec = KernelSpec { entry: "layer_norm_forward_rows", ..LAYER_NORM_FORWARD };
pub const LAYER_NORM_BACKWARD_DATA_ROWS: KernelSpec =
    KernelSpec { entry: "layer_norm_backward_data_rows", ..LAYER_NORM_BACKWARD_DATA };
pub const LAYER_NORM_BACKWARD_PARAMS: KernelSpec =
    KernelSpec::new("layer_norm_backward_params", "layer_norm", &[(1, R), (2, R), (5, W), (6, W), (8, W), (9, W)]);
pub const LAYER_SCALE_FORWARD: KernelSpec =
    KernelSpec::new("layer_scale_forward", "layer_norm", &[(1, R), (3, R), (7, W)]);
pub const LAYER_SCALE_BACKWARD_DATA: KernelSpec =
    KernelSpec::new("layer_scale_backward_data", "layer_norm", &[(2, R), (3, R), (7, W)]);
pub const LAYER_SCALE_BACKWARD_WEIGHT: KernelSpec =
    KernelSpec::new("layer_scale_backward_weight", "layer_norm", &[(1, R), (2, R), (8, W)]);

/// Which axis of a tensor is the channel axis: dimension 1 of (N, C, H, W) (ConvNeXt's LayerNorm2d, layer
/// scale on feature maps) or the last dimension (a transformer's LayerNorm). The tensor is then (outer, C, inner).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelAxis {
    pub outer: usize,
    pub channels: usize,
    pub inner: usize,
}

impl ChannelAxis {
    /// Dimension 1 of a tensor of rank 2 or more: outer = N, inner = the product of the rest.
    pub fn second(shape: &[usize]) -> Option<ChannelAxis> {
        (shape.len() >= 2).then(|| ChannelAxis {
            outer: shape[0],
            channels: shape[1],
            inner: shape[2..].iter().product(),
        })
    }

    /// The last dimension: outer = the product of the others, inner = 1.
    pub fn last(shape: &[usize]) -> Option<ChannelAxis> {
        let (&c, rest) = shape.split_last()?;
        Some(ChannelAxis { outer: rest.iter().product(), channels: c, inner: 1 })
    }

    pub fn numel(&self) -> usize {
        self.outer * self.channels * self.inner
    }

    /// Positions (one per (outer, inner) pair): the length of the saved mean and rstd.
    pub fn positions(&self) -> usize {
        self.outer * self.inner
    }

    /// As the reference functions take it.
    pub fn tuple(&self) -> (usize, usize, usize) {
        (self.outer, self.channels, self.inner)
    }

    fn params(&self, eps: f32, accumulate: bool) -> Result<LayerNormParams> {
        Ok(LayerNormParams {
            outer: dim(self.outer, "outer size")?,
            channels: dim(self.channels, "channels")?,
            inner: dim(self.inner, "inner size")?,
            flags: if accumulate { FLAG_ACCUMULATE } else { 0 },
            eps,
            _pad: [0; 3],
        })
    }

    /// Every tensor must hold `numel` elements (full tensors), C (per-channel) or one per position (statistics).
    fn check(&self, kernel: &str, full: &[&Tensor], per_channel: &[&Tensor], per_position: &[&Tensor]) -> Result<()> {
        let groups = [
            (full, self.numel(), "elements"),
            (per_channel, self.channels, "channels"),
            (per_position, self.positions(), "positions"),
        ];
        for (tensors, want, what) in groups {
            if let Some(t) = tensors.iter().find(|t| t.numel() != want) {
                return Err(Error::shape(
                    kernel,
                    format!(
                        "'{}' {:?} must hold {want} values (one per {}) for {self:?}",
                        t.label(),
                        t.shape(),
                        what.trim_end_matches('s')
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The per-position kernel and its grid: one invocation per position where channels are strided (inner > 1:
/// neighbouring invocations read neighbouring positions), 64 per position (a row) where they are contiguous.
fn per_row<'a>(gpu: &Gpu, axis: ChannelAxis, each: &'a KernelSpec, rows: &'a KernelSpec) -> (&'a KernelSpec, [u32; 3]) {
    if axis.inner == 1 {
        (rows, flat_grid(gpu, axis.positions() * ROW_LANES))
    } else {
        (each, flat_grid(gpu, axis.positions()))
    }
}

/// Invocations per row of the `_rows` kernels (shaders/layer_norm.wgsl).
const ROW_LANES: usize = 64;

/// y = gamma * (x - mean) * rstd + beta at every position, saving each position's mean and rstd.
pub fn layer_norm_forward(
    gpu: &Gpu,
    axis: ChannelAxis,
    x: &Tensor,
    (gamma, beta): (&Tensor, &Tensor),
    (mean, rstd): (&Tensor, &Tensor),
    y: &Tensor,
    eps: f32,
    label: &str,
) -> Result<Dispatch> {
    axis.check(LAYER_NORM_FORWARD.entry, &[x, y], &[gamma, beta], &[mean, rstd])?;
    let p = axis.params(eps, false)?;
    let (spec, grid) = per_row(gpu, axis, &LAYER_NORM_FORWARD, &LAYER_NORM_FORWARD_ROWS);
    super::dispatch_at(gpu, spec, &[x, y], bytemuck::bytes_of(&p), &[x, gamma, beta, mean, rstd, y], grid, label)
}

/// dgamma and dbeta (when `params` is Some) and dx (when Some; added to when `accumulate_dx`), from the forward
/// pass's saved statistics.
pub fn layer_norm_backward(
    gpu: &Gpu,
    axis: ChannelAxis,
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    (mean, rstd): (&Tensor, &Tensor),
    params: Option<(&Tensor, &Tensor)>,
    dx: Option<&Tensor>,
    accumulate_dx: bool,
    label: &str,
) -> Result<Vec<Dispatch>> {
    axis.check("layer_norm_backward", &[dy, x], &[gamma], &[mean, rstd])?;
    let p = axis.params(0.0, accumulate_dx)?;
    let mut out = Vec::new();
    if let Some((dgamma, dbeta)) = params {
        axis.check(LAYER_NORM_BACKWARD_PARAMS.entry, &[], &[dgamma, dbeta], &[])?;
        out.push(super::dispatch_at(
            gpu,
            &LAYER_NORM_BACKWARD_PARAMS,
            &[x, dy],
            bytemuck::bytes_of(&p),
            &[x, dy, mean, rstd, dgamma, dbeta],
            [p.channels, 1, 1],
            &format!("{label} params"),
        )?);
    }
    if let Some(dx) = dx {
        axis.check(LAYER_NORM_BACKWARD_DATA.entry, &[dx], &[], &[])?;
        let (spec, grid) = per_row(gpu, axis, &LAYER_NORM_BACKWARD_DATA, &LAYER_NORM_BACKWARD_DATA_ROWS);
        let tensors = [x, dy, gamma, mean, rstd, dx];
        out.push(super::dispatch_at(gpu, spec, &[x, dy, dx], bytemuck::bytes_of(&p), &tensors, grid, label)?);
    }
    Ok(out)
}

/// y = gamma[c] * x.
pub fn layer_scale_forward(
    gpu: &Gpu,
    axis: ChannelAxis,
    x: &Tensor,
    gamma: &Tensor,
    y: &Tensor,
    label: &str,
) -> Result<Dispatch> {
    axis.check(LAYER_SCALE_FORWARD.entry, &[x, y], &[gamma], &[])?;
    let p = axis.params(0.0, false)?;
    let grid = flat_grid(gpu, axis.numel());
    super::dispatch_at(gpu, &LAYER_SCALE_FORWARD, &[x, y], bytemuck::bytes_of(&p), &[x, gamma, y], grid, label)
}

/// dgamma = sum of dy * x per channel (when Some) and dx = gamma[c] * dy (when Some; added to when
/// `accumulate_dx`).
pub fn layer_scale_backward(
    gpu: &Gpu,
    axis: ChannelAxis,
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    dgamma: Option<&Tensor>,
    dx: Option<&Tensor>,
    accumulate_dx: bool,
    label: &str,
) -> Result<Vec<Dispatch>> {
    axis.check("layer_scale_backward", &[dy, x], &[gamma], &[])?;
    let p = axis.params(0.0, accumulate_dx)?;
    let mut out = Vec::new();
    if let Some(dgamma) = dgamma {
        axis.check(LAYER_SCALE_BACKWARD_WEIGHT.entry, &[], &[dgamma], &[])?;
        out.push(super::dispatch_at(
            gpu,
            &LAYER_SCALE_BACKWARD_WEIGHT,
            &[x, dy],
            bytemuck::bytes_of(&p),
            &[x, dy, dgamma],
            [p.channels, 1, 1],
            &format!("{label} weight"),
        )?);
    }
    if let Some(dx) = dx {
        axis.check(LAYER_SCALE_BACKWARD_DATA.entry, &[dx], &[], &[])?;
        out.push(super::dispatch_at(
            gpu,
            &LAYER_SCALE_BACKWARD_DATA,
            &[dy, dx],
            bytemuck::bytes_of(&p),
            &[dy, gamma, dx],
            flat_grid(gpu, axis.numel()),
            label,
        )?);
    }
    Ok(out)
}
