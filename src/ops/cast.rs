//! `cast_to_act`: f32 parameters into the activations' precision (the f16 weight copies the GEMMs read). See
//! shaders/cast.wgsl.

use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Dispatch, Gpu, KernelSpec, Tensor};

use super::dim;

/// Mirrors `CastParams` in shaders/cast.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CastParams {
    pub len: u32,
    pub _pad: [u32; 3],
}

pub const CAST_TO_ACT: KernelSpec =
    KernelSpec::new("cast_to_act", "cast", &[(1, Access::Read), (2, Access::ReadWrite)]);

/// `dst = act(src)`: src f32, dst f32 or f16, the same number of elements.
pub fn cast_to_act(gpu: &Gpu, src: &Tensor, dst: &Tensor, label: &str) -> Result<Dispatch> {
    if src.numel() != dst.numel() {
        return Err(Error::shape(
            format!("cast_to_act '{label}'"),
            format!("'{}' {:?} and '{}' {:?} differ in size", src.label(), src.shape(), dst.label(), dst.shape()),
        ));
    }
    if src.dtype() != DType::F32 {
        return Err(Error::Invalid(format!(
            "cast_to_act '{label}': '{}' is {:?}, expected f32",
            src.label(),
            src.dtype()
        )));
    }
    let p = CastParams { len: dim(src.numel(), "cast length")?, _pad: [0; 3] };
    super::dispatch_at(
        gpu,
        &CAST_TO_ACT,
        &[dst],
        bytemuck::bytes_of(&p),
        &[src, dst],
        super::flat_grid(gpu, src.numel()),
        label,
    )
}
