//! Element-wise kernels: add, scale, relu and relu6 forward/backward. See shaders/elementwise.wgsl.

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, Gpu, KernelSpec, Tensor};

use super::{dim, grid_1d};

/// Mirrors `EltParams` in shaders/elementwise.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct EltParams {
    pub len: u32,
    pub flags: u32,
    pub alpha: f32,
    pub _pad: u32,
}

pub const FLAG_ACCUMULATE: u32 = 1;

const BINARY: &[(u32, Access)] = &[(1, Access::Read), (2, Access::Read), (3, Access::ReadWrite)];
const UNARY: &[(u32, Access)] = &[(1, Access::Read), (3, Access::ReadWrite)];

/// The element-wise kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elementwise {
    /// out = x + y
    Add,
    /// out = alpha * x
    Scale,
    /// out = max(x, 0)
    ReluForward,
    /// out = dy * (x > 0), x the forward input
    ReluBackward,
    /// out = clamp(x, 0, 6)
    Relu6Forward,
    /// out = dy * (0 < x < 6), x the forward input
    Relu6Backward,
}

impl Elementwise {
    pub const ALL: [Elementwise; 6] = [
        Elementwise::Add,
        Elementwise::Scale,
        Elementwise::ReluForward,
        Elementwise::ReluBackward,
        Elementwise::Relu6Forward,
        Elementwise::Relu6Backward,
    ];

    pub fn spec(self) -> KernelSpec {
        let (entry, sig) = match self {
            Elementwise::Add => ("add", BINARY),
            Elementwise::Scale => ("scale", UNARY),
            Elementwise::ReluForward => ("relu_forward", UNARY),
            Elementwise::ReluBackward => ("relu_backward", BINARY),
            Elementwise::Relu6Forward => ("relu6_forward", UNARY),
            Elementwise::Relu6Backward => ("relu6_backward", BINARY),
        };
        KernelSpec::new(entry, "elementwise", sig)
    }

    /// Whether the kernel takes a second input (y or dy).
    pub fn is_binary(self) -> bool {
        self.spec().storage.len() == 3
    }
}

/// Launch an element-wise kernel. `y` is the second operand (Add) or dy (backward kernels), `None` for unary
/// kernels. `alpha` is used by Scale. All tensors must have the same number of elements.
pub fn elementwise(
    gpu: &Gpu,
    op: Elementwise,
    x: &Tensor,
    y: Option<&Tensor>,
    out: &Tensor,
    alpha: f32,
    accumulate: bool,
    label: &str,
) -> Result<Dispatch> {
    let spec = op.spec();
    let n = x.numel();
    let mut tensors = vec![x];
    match (op.is_binary(), y) {
        (true, Some(y)) => tensors.push(y),
        (false, None) => {}
        (true, None) => return Err(Error::Invalid(format!("{}: '{label}' needs a second input", spec.entry))),
        (false, Some(_)) => return Err(Error::Invalid(format!("{}: '{label}' takes one input", spec.entry))),
    }
    tensors.push(out);
    if let Some(bad) = tensors.iter().find(|t| t.numel() != n) {
        return Err(Error::shape(
            format!("{} '{label}'", spec.entry),
            format!("'{}' {:?} and '{}' {:?} differ in size", x.label(), x.shape(), bad.label(), bad.shape()),
        ));
    }
    let p = EltParams { len: dim(n, "elements")?, flags: if accumulate { FLAG_ACCUMULATE } else { 0 }, alpha, _pad: 0 };
    let grid = grid_1d(n, 256, gpu.limits().max_compute_workgroups_per_dimension);
    gpu.dispatch(&spec, bytemuck::bytes_of(&p), &tensors, grid, label)
}
