//! `permute`: a tensor's axes reordered into a new contiguous tensor. See shaders/permute.wgsl; the CPU twin is
//! `crate::reference::permute`.

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, Gpu, KernelSpec, Tensor};

use super::dim;

/// The most axes a permutation takes.
pub const MAX_RANK: usize = 8;

/// Mirrors `PermuteParams` in shaders/permute.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PermuteParams {
    pub len: u32,
    pub rank: u32,
    pub flags: u32,
    pub _pad: u32,
    /// The output's dims.
    pub dims: [u32; MAX_RANK],
    /// For each output axis, the input's element stride along the axis it comes from.
    pub strides: [u32; MAX_RANK],
}

pub const FLAG_ACCUMULATE: u32 = 1;

pub const PERMUTE: KernelSpec = KernelSpec::new("permute", "permute", &[(1, Access::Read), (2, Access::ReadWrite)]);

/// Output axis d is input axis `perm[d]`: the output shape, or an error when `perm` is not a permutation of the
/// input's axes (or has more than [`MAX_RANK`]).
pub fn permuted_shape(shape: &[usize], perm: &[usize]) -> Result<Vec<usize>> {
    let mut seen = vec![false; shape.len()];
    let valid = perm.len() == shape.len()
        && perm.len() <= MAX_RANK
        && perm.iter().all(|&a| a < shape.len() && !std::mem::replace(&mut seen[a], true));
    if !valid {
        return Err(Error::shape(
            "permute",
            format!("{perm:?} is not a permutation of the {} axes of {shape:?} (at most {MAX_RANK})", shape.len()),
        ));
    }
    Ok(perm.iter().map(|&a| shape[a]).collect())
}

/// The permutation that undoes `perm` (backward's).
pub fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (d, &a) in perm.iter().enumerate() {
        inv[a] = d;
    }
    inv
}

/// out (+)= x with its axes reordered: output axis d is x's axis `perm[d]`.
pub fn permute(gpu: &Gpu, x: &Tensor, perm: &[usize], out: &Tensor, accumulate: bool, label: &str) -> Result<Dispatch> {
    let shape = permuted_shape(x.shape(), perm)?;
    if out.shape() != shape.as_slice() {
        return Err(Error::shape(
            "permute",
            format!(
                "'{}' {:?} must be {shape:?}: '{}' {:?} permuted by {perm:?}",
                out.label(),
                out.shape(),
                x.label(),
                x.shape()
            ),
        ));
    }
    let mut in_strides = vec![1usize; x.shape().len()];
    for a in (0..x.shape().len().saturating_sub(1)).rev() {
        in_strides[a] = in_strides[a + 1] * x.shape()[a + 1];
    }
    let mut p = PermuteParams {
        len: dim(x.numel(), "elements")?,
        rank: perm.len() as u32,
        flags: if accumulate { FLAG_ACCUMULATE } else { 0 },
        ..Default::default()
    };
    for (d, &a) in perm.iter().enumerate() {
        p.dims[d] = dim(shape[d], "dimension")?;
        p.strides[d] = dim(in_strides[a], "stride")?;
    }
    let grid = super::flat_grid(gpu, x.numel());
    super::dispatch_at(gpu, &PERMUTE, &[x, out], bytemuck::bytes_of(&p), &[x, out], grid, label)
}
