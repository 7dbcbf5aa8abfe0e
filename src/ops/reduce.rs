//! `sum_reduce`: sums over the outer and inner axes of a (outer, mid, inner) view. See shaders/reduce.wgsl.

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, Gpu, KernelSpec, Tensor};

use super::{dim, grid_1d};

/// Mirrors `ReduceParams` in shaders/reduce.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ReduceParams {
    pub outer: u32,
    pub mid: u32,
    pub inner: u32,
    pub flags: u32,
}

pub const FLAG_ACCUMULATE: u32 = 1;

pub const SUM_REDUCE: KernelSpec =
    KernelSpec::new("sum_reduce", "reduce", &[(1, Access::Read), (2, Access::ReadWrite)]);
pub const SUM_REDUCE_ROWS: KernelSpec =
    KernelSpec::new("sum_reduce_rows", "reduce", &[(1, Access::Read), (2, Access::ReadWrite)]);

/// Reductions shorter than this run one invocation per output instead of one workgroup.
pub const ROWS_BELOW: usize = 1024;

/// `out[m] (+)= sum_{o, i} x[o, m, i]` with x seen as (outer, mid, inner); out has `mid` elements.
pub fn sum_reduce(
    gpu: &Gpu,
    x: &Tensor,
    out: &Tensor,
    (outer, mid, inner): (usize, usize, usize),
    accumulate: bool,
    label: &str,
) -> Result<Dispatch> {
    if outer * mid * inner != x.numel() || out.numel() != mid {
        return Err(Error::shape(
            format!("sum_reduce '{label}'"),
            format!(
                "x {:?} seen as ({outer}, {mid}, {inner}) and out {:?} (needs {mid} elements)",
                x.shape(),
                out.shape()
            ),
        ));
    }
    let p = ReduceParams {
        outer: dim(outer, "outer")?,
        mid: dim(mid, "mid")?,
        inner: dim(inner, "inner")?,
        flags: if accumulate { FLAG_ACCUMULATE } else { 0 },
    };
    // x at either precision; the sums (parameter gradients) are f32.
    if out.dtype() != crate::gpu::DType::F32 {
        return Err(Error::Invalid(format!("sum_reduce '{label}': '{}' must be f32 (sums are f32)", out.label())));
    }
    let max_x = gpu.limits().max_compute_workgroups_per_dimension;
    let (spec, grid) = if outer * inner < ROWS_BELOW {
        (&SUM_REDUCE_ROWS, grid_1d(mid, 256, max_x))
    } else {
        (&SUM_REDUCE, grid_1d(mid, 1, max_x))
    };
    super::dispatch_at(gpu, spec, &[x], bytemuck::bytes_of(&p), &[x, out], grid, label)
}
