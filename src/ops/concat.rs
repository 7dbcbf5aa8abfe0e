//! Channel concatenation (forward: copy x into a channel slice of out; backward: copy the slice of dout back).
//! See shaders/concat.wgsl.

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, Gpu, KernelSpec, Tensor};

use super::dim;

/// Mirrors `ConcatParams` in shaders/concat.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ConcatParams {
    pub batch: u32,
    pub channels: u32,
    pub hw: u32,
    pub flags: u32,
    pub src_c_total: u32,
    pub src_c_offset: u32,
    pub dst_c_total: u32,
    pub dst_c_offset: u32,
}

pub const FLAG_ACCUMULATE: u32 = 1;
const SIG: &[(u32, Access)] = &[(1, Access::Read), (2, Access::ReadWrite)];
pub const CONCAT_FORWARD: KernelSpec = KernelSpec::new("concat_forward", "concat", SIG);
pub const CONCAT_BACKWARD: KernelSpec = KernelSpec::new("concat_backward", "concat", SIG);

/// (N, C, rest...) -> (N, C, product of rest)
fn ncs(t: &Tensor) -> Result<(usize, usize, usize)> {
    match t.shape() {
        [n, c, rest @ ..] => Ok((*n, *c, rest.iter().product())),
        s => Err(Error::shape("concat", format!("'{}' {s:?} needs at least (N, C)", t.label()))),
    }
}

fn params(part: &Tensor, whole: &Tensor, offset: usize, forward: bool, accumulate: bool) -> Result<ConcatParams> {
    let (n, c, hw) = ncs(part)?;
    let (wn, wc, whw) = ncs(whole)?;
    if n != wn || hw != whw || offset + c > wc {
        return Err(Error::shape(
            "concat",
            format!("{:?} does not fit into {:?} at channel {offset}", part.shape(), whole.shape()),
        ));
    }
    let (part_total, whole_total, off) = (dim(c, "channels")?, dim(wc, "channels")?, dim(offset, "offset")?);
    let (src_c_total, src_c_offset, dst_c_total, dst_c_offset) =
        if forward { (part_total, 0, whole_total, off) } else { (whole_total, off, part_total, 0) };
    Ok(ConcatParams {
        batch: dim(n, "batch")?,
        channels: part_total,
        hw: dim(hw, "H*W")?,
        flags: if accumulate { FLAG_ACCUMULATE } else { 0 },
        src_c_total,
        src_c_offset,
        dst_c_total,
        dst_c_offset,
    })
}

/// out[:, offset .. offset + C] = x. Concatenating k tensors is k of these into one `out`.
pub fn concat_forward(gpu: &Gpu, x: &Tensor, out: &Tensor, offset: usize, label: &str) -> Result<Dispatch> {
    let p = params(x, out, offset, true, false)?;
    let grid = [p.hw.div_ceil(256), p.channels, p.batch];
    super::dispatch_at(gpu, &CONCAT_FORWARD, &[x, out], bytemuck::bytes_of(&p), &[x, out], grid, label)
}

/// dx (+)= dout[:, offset .. offset + C].
pub fn concat_backward(
    gpu: &Gpu,
    dout: &Tensor,
    offset: usize,
    dx: &Tensor,
    accumulate: bool,
    label: &str,
) -> Result<Dispatch> {
    let p = params(dx, dout, offset, false, accumulate)?;
    let grid = [p.hw.div_ceil(256), p.channels, p.batch];
    super::dispatch_at(gpu, &CONCAT_BACKWARD, &[dout, dx], bytemuck::bytes_of(&p), &[dout, dx], grid, label)
}
