//! Element-wise kernels: add, scale, relu, relu6, leaky relu and GELU (exact and tanh forms) forward/backward.
//! See shaders/elementwise.wgsl.

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, Gpu, KernelSpec, Tensor};
use crate::reference;

use super::dim;

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

/// The element-wise family from one table: each row is a kernel (variant = "WGSL entry point"(operands) =>
/// CPU reference of one element, and for a backward rule the forward rule it differentiates). The enum, the list
/// of every kernel (tests iterate it), the kernel signatures and the references all come from the rows, so a new
/// row is tested everywhere by construction (the pattern of candle's `unary_op!`).
macro_rules! elementwise_family {
    ($(
        $(#[$doc:meta])*
        $variant:ident = $entry:literal ($($operand:ident),+) => $reference:path $(, grad of $forward:ident)?;
    )*) => {
        /// The element-wise kernels.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Elementwise {
            $($(#[$doc])* $variant,)*
        }

        impl Elementwise {
            /// Every kernel of the family.
            pub const ALL: &'static [Elementwise] = &[$(Elementwise::$variant),*];

            /// The WGSL entry point in shaders/elementwise.wgsl.
            pub fn entry(self) -> &'static str {
                match self {
                    $(Elementwise::$variant => $entry,)*
                }
            }

            /// Number of tensor operands: 1 (x) or 2 (x and y, or x and dy).
            pub fn operands(self) -> usize {
                match self {
                    $(Elementwise::$variant => [$(stringify!($operand)),+].len(),)*
                }
            }

            /// The CPU reference of one element: f(x, y or dy (0 for one operand), alpha).
            pub fn reference(self) -> fn(f64, f64, f64) -> f64 {
                match self {
                    $(Elementwise::$variant => $reference,)*
                }
            }

            /// For a backward rule, the forward rule it is the derivative of (dx = dy * f'(x)).
            pub fn gradient_of(self) -> Option<Elementwise> {
                match self {
                    $(Elementwise::$variant => elementwise_family!(@forward $($forward)?),)*
                }
            }
        }
    };
    (@forward) => { None };
    (@forward $forward:ident) => { Some(Elementwise::$forward) };
}

elementwise_family! {
    /// out = x + y
    Add = "add"(x, y) => reference::add;
    /// out = alpha * x
    Scale = "scale"(x) => reference::scale;
    /// out = max(x, 0)
    ReluForward = "relu_forward"(x) => reference::relu_forward;
    /// out = dy * (x > 0), x the forward input
    ReluBackward = "relu_backward"(x, dy) => reference::relu_backward, grad of ReluForward;
    /// out = clamp(x, 0, 6)
    Relu6Forward = "relu6_forward"(x) => reference::relu6_forward;
    /// out = dy * (0 < x < 6), x the forward input
    Relu6Backward = "relu6_backward"(x, dy) => reference::relu6_backward, grad of Relu6Forward;
    /// out = x > 0 ? x : alpha * x
    LeakyReluForward = "leaky_relu_forward"(x) => reference::leaky_relu_forward;
    /// out = dy * (x > 0 ? 1 : alpha), x the forward input
    LeakyReluBackward = "leaky_relu_backward"(x, dy) => reference::leaky_relu_backward, grad of LeakyReluForward;
    /// out = x * Phi(x) (GELU, exact erf form)
    GeluForward = "gelu_forward"(x) => reference::gelu_forward;
    /// out = dy * (Phi(x) + x * phi(x)), x the forward input
    GeluBackward = "gelu_backward"(x, dy) => reference::gelu_backward, grad of GeluForward;
    /// out = x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3))) (GELU, tanh form)
    GeluTanhForward = "gelu_tanh_forward"(x) => reference::gelu_tanh_forward;
    /// out = dy * d/dx of gelu_tanh_forward, x the forward input
    GeluTanhBackward = "gelu_tanh_backward"(x, dy) => reference::gelu_tanh_backward, grad of GeluTanhForward;
}

impl Elementwise {
    pub fn spec(self) -> KernelSpec {
        KernelSpec::new(self.entry(), "elementwise", if self.is_binary() { BINARY } else { UNARY })
    }

    /// Whether the kernel takes a second input (y or dy).
    pub fn is_binary(self) -> bool {
        self.operands() == 2
    }

    /// The CPU reference over whole tensors (`y` for binary kernels).
    pub fn apply_reference(self, x: &[f64], y: Option<&[f64]>, alpha: f64) -> Vec<f64> {
        reference::elementwise(self.reference(), x, y, alpha)
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
    let grid = super::flat_grid(gpu, n);
    // f16 tensors take the family's f16 variant (f32 arithmetic inside, one rounding per stored element).
    super::dispatch_at(gpu, &spec, &tensors, bytemuck::bytes_of(&p), &tensors, grid, label)
}
