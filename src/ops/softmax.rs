//! Softmax over the last axis with a scale on the input (attention's scores): forward and backward. See
//! shaders/softmax.wgsl; the CPU twins are `crate::reference::softmax_rows` and `softmax_rows_backward`.

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, Gpu, KernelSpec, Tensor};

use super::dim;

/// Mirrors `SoftmaxParams` in shaders/softmax.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SoftmaxParams {
    pub rows: u32,
    pub len: u32,
    pub flags: u32,
    pub scale: f32,
}

pub const FLAG_ACCUMULATE: u32 = 1;

use Access::{Read as R, ReadWrite as W};
pub const SOFTMAX_ROWS_FORWARD: KernelSpec = KernelSpec::new("softmax_rows_forward", "softmax", &[(1, R), (3, W)]);
pub const SOFTMAX_ROWS_BACKWARD: KernelSpec =
    KernelSpec::new("softmax_rows_backward", "softmax", &[(1, R), (2, R), (3, W)]);

fn params(t: &Tensor, scale: f32, accumulate: bool) -> Result<SoftmaxParams> {
    let Some(&len) = t.shape().last().filter(|&&l| l > 0) else {
        return Err(Error::shape("softmax", format!("'{}' {:?} has no last axis to normalize", t.label(), t.shape())));
    };
    Ok(SoftmaxParams {
        rows: dim(t.numel() / len, "rows")?,
        len: dim(len, "row length")?,
        flags: if accumulate { FLAG_ACCUMULATE } else { 0 },
        scale,
    })
}

fn same(kernel: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            kernel,
            format!("'{}' {:?} and '{}' {:?} must match", a.label(), a.shape(), b.label(), b.shape()),
        ));
    }
    Ok(())
}

/// y = softmax(scale * x) over the last axis.
pub fn softmax_rows_forward(gpu: &Gpu, x: &Tensor, y: &Tensor, scale: f32, label: &str) -> Result<Dispatch> {
    same(SOFTMAX_ROWS_FORWARD.entry, x, y)?;
    let p = params(x, scale, false)?;
    let grid = super::flat_grid(gpu, p.rows as usize);
    super::dispatch_at(gpu, &SOFTMAX_ROWS_FORWARD, &[x, y], bytemuck::bytes_of(&p), &[x, y], grid, label)
}

/// dx (+)= scale * y * (dy - sum(dy * y)) over the last axis, `y` the forward output.
pub fn softmax_rows_backward(
    gpu: &Gpu,
    y: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    scale: f32,
    accumulate: bool,
    label: &str,
) -> Result<Dispatch> {
    same(SOFTMAX_ROWS_BACKWARD.entry, y, dy)?;
    same(SOFTMAX_ROWS_BACKWARD.entry, y, dx)?;
    let p = params(y, scale, accumulate)?;
    let grid = super::flat_grid(gpu, p.rows as usize);
    super::dispatch_at(gpu, &SOFTMAX_ROWS_BACKWARD, &[y, dy, dx], bytemuck::bytes_of(&p), &[y, dy, dx], grid, label)
}
