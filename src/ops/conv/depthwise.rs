//! Depthwise convolution (groups == Cin == Cout): the kernels of shaders/depthwise.wgsl, the variants the
//! autotuner chooses among for the forward and backward_data passes, and the weight gradient's split over the
//! batch. `conv2d_*` route depthwise shapes here; the shape, parameters and flags are the parent module's.

use super::{flags, ConvParams, ConvShape, FLAG_FLIP, SIG, SIG_WITH_BIAS};
use crate::error::{Error, Result};
use crate::gpu::{Dispatch, Gpu, KernelSpec, Tensor};

pub const DEPTHWISE_CONV2D_FORWARD: KernelSpec =
    KernelSpec::new("depthwise_conv2d_forward", "depthwise", SIG_WITH_BIAS);
pub const DEPTHWISE_CONV2D_BACKWARD_DATA: KernelSpec =
    KernelSpec::new("depthwise_conv2d_backward_data", "depthwise", SIG);
pub const DEPTHWISE_CONV2D_BACKWARD_WEIGHT: KernelSpec =
    KernelSpec::new("depthwise_conv2d_backward_weight", "depthwise", SIG);
pub const DEPTHWISE_CONV2D_BACKWARD_WEIGHT_ROWS: KernelSpec =
    KernelSpec::new("depthwise_conv2d_backward_weight_rows", "depthwise", SIG);
/// All taps of a channel per workgroup, for the undilated 3x3, 5x5 and 7x7 (ConvNeXt) kernels (the sizes as
/// pipeline constants).
pub const DEPTHWISE_CONV2D_BACKWARD_WEIGHT_3X3: KernelSpec =
    KernelSpec::new("depthwise_conv2d_backward_weight_taps", "depthwise", SIG)
        .with_constants(&[("KH", 3.0), ("KW", 3.0)]);
pub const DEPTHWISE_CONV2D_BACKWARD_WEIGHT_5X5: KernelSpec =
    KernelSpec::new("depthwise_conv2d_backward_weight_taps", "depthwise", SIG)
        .with_constants(&[("KH", 5.0), ("KW", 5.0)]);
pub const DEPTHWISE_CONV2D_BACKWARD_WEIGHT_7X7: KernelSpec =
    KernelSpec::new("depthwise_conv2d_backward_weight_taps", "depthwise", SIG)
        .with_constants(&[("KH", 7.0), ("KW", 7.0)]);

/// The four-output depthwise kernel (forward, and stride-1 backward_data), one pipeline per (kernel size, stride).
pub(crate) const fn rows4(k: usize, stride: usize) -> KernelSpec {
    // Pipeline constants must be 'static: one table entry per configuration.
    const C: [[&[(&str, f64)]; 2]; 3] = [
        [&[("DW_K", 3.0), ("DW_S", 1.0)], &[("DW_K", 3.0), ("DW_S", 2.0)]],
        [&[("DW_K", 5.0), ("DW_S", 1.0)], &[("DW_K", 5.0), ("DW_S", 2.0)]],
        [&[("DW_K", 7.0), ("DW_S", 1.0)], &[("DW_K", 7.0), ("DW_S", 2.0)]],
    ];
    KernelSpec::new("depthwise_conv2d_forward_rows4", "depthwise", SIG_WITH_BIAS)
        .with_constants(C[(k - 3) / 2][stride - 1])
}

/// The kernels of the depthwise forward and backward_data passes, variants the autotuner chooses from per problem
/// (`src/tune.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DepthwiseKernel {
    /// The autotuner's choice for the problem (the direct kernel where the four-output one does not apply).
    Auto,
    /// One output per invocation, any kernel size, stride and dilation.
    Direct,
    /// Four neighbouring outputs of a row per invocation, kernel size and stride as pipeline constants: undilated
    /// square 3x3, 5x5 and 7x7 kernels at stride 1 or 2.
    Rows4,
}

impl DepthwiseKernel {
    pub const ALL: [DepthwiseKernel; 2] = [DepthwiseKernel::Direct, DepthwiseKernel::Rows4];

    pub fn name(self) -> &'static str {
        match self {
            DepthwiseKernel::Auto => "auto",
            DepthwiseKernel::Direct => "direct",
            DepthwiseKernel::Rows4 => "rows4",
        }
    }

    /// Whether the kernel computes the forward pass of `s` (a depthwise convolution).
    pub fn applies(self, s: &ConvShape) -> bool {
        match self {
            DepthwiseKernel::Auto | DepthwiseKernel::Direct => true,
            DepthwiseKernel::Rows4 => {
                s.kernel_h == s.kernel_w
                    && matches!(s.kernel_h, 3 | 5 | 7)
                    && s.cfg.stride.0 == s.cfg.stride.1
                    && matches!(s.cfg.stride.0, 1 | 2)
                    && s.cfg.dilation == (1, 1)
            }
        }
    }

    /// Whether the kernel computes the backward_data pass of `s`: the four-output kernel does stride 1 (as the
    /// forward pass of dy with the kernel turned by 180 degrees, padded by K - 1 - pad).
    pub fn applies_backward_data(self, s: &ConvShape) -> bool {
        match self {
            DepthwiseKernel::Rows4 => {
                self.applies(s)
                    && s.cfg.stride == (1, 1)
                    && s.cfg.padding.top < s.kernel_h
                    && s.cfg.padding.left < s.kernel_w
            }
            _ => true,
        }
    }
}

/// Which pass a depthwise launch computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DepthwisePass {
    Forward,
    BackwardData,
}

impl DepthwisePass {
    fn name(self) -> &'static str {
        match self {
            DepthwisePass::Forward => "forward",
            DepthwisePass::BackwardData => "backward_data",
        }
    }

    /// Whether `kernel` computes this pass of `s`.
    fn computed_by(self, kernel: DepthwiseKernel, s: &ConvShape) -> bool {
        match self {
            DepthwisePass::Forward => kernel.applies(s),
            DepthwisePass::BackwardData => kernel.applies_backward_data(s),
        }
    }
}

/// The depthwise forward pass y = conv(x, w) (+ bias) with a chosen kernel (`Auto`: the autotuner's). `s` must be
/// depthwise and the kernel apply to it ([`DepthwiseKernel::applies`]).
#[allow(clippy::too_many_arguments)]
pub fn depthwise_forward(
    gpu: &Gpu,
    kernel: DepthwiseKernel,
    s: &ConvShape,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    accumulate: bool,
    label: &str,
) -> Result<Dispatch> {
    let roles = [(x, s.x_shape(), "input"), (w, s.w_shape(), "weight"), (y, s.y_shape(), "output")];
    let flags = flags(bias.is_some(), accumulate);
    depthwise_pass(gpu, kernel, DepthwisePass::Forward, s, roles, bias.unwrap_or(w), flags, label)
}

/// The depthwise backward_data pass dx = conv_transpose(dy, w) with a chosen kernel (`Auto`: the autotuner's).
/// `s` must be depthwise and the kernel apply to it ([`DepthwiseKernel::applies_backward_data`]).
#[allow(clippy::too_many_arguments)]
pub fn depthwise_backward_data(
    gpu: &Gpu,
    kernel: DepthwiseKernel,
    s: &ConvShape,
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
    accumulate: bool,
    label: &str,
) -> Result<Dispatch> {
    let roles = [(dy, s.y_shape(), "output gradient"), (w, s.w_shape(), "weight"), (dx, s.x_shape(), "input gradient")];
    depthwise_pass(gpu, kernel, DepthwisePass::BackwardData, s, roles, w, flags(false, accumulate), label)
}

/// One depthwise pass with an explicit variant: its source, weight and output tensors (checked against the roles'
/// shapes), the bias binding (the weight where there is none), the flags.
#[allow(clippy::too_many_arguments)]
fn depthwise_pass(
    gpu: &Gpu,
    kernel: DepthwiseKernel,
    pass: DepthwisePass,
    s: &ConvShape,
    roles: [(&Tensor, [usize; 4], &str); 3],
    bias: &Tensor,
    flags: u32,
    label: &str,
) -> Result<Dispatch> {
    if !s.is_depthwise() || !pass.computed_by(kernel, s) {
        return Err(Error::Invalid(format!(
            "depthwise '{label}': the {} kernel does not compute the {} of {s:?}",
            kernel.name(),
            pass.name()
        )));
    }
    for (t, want, role) in roles {
        s.check(t, want, role)?;
    }
    let [(src, ..), (w, ..), (out, ..)] = roles;
    let kernel = resolve_depthwise(gpu, kernel, pass, s, (src, w, out), label)?;
    let p = s.params(flags, s.batch)?;
    depthwise_launch(gpu, kernel, pass, s, &p, (src, w, bias, out), label)
}

fn depthwise_launch(
    gpu: &Gpu,
    kernel: DepthwiseKernel,
    pass: DepthwisePass,
    s: &ConvShape,
    p: &ConvParams,
    (src, w, bias, out): (&Tensor, &Tensor, &Tensor, &Tensor),
    label: &str,
) -> Result<Dispatch> {
    let (spec, p, invocations) = match (kernel, pass) {
        (DepthwiseKernel::Rows4, DepthwisePass::Forward) => {
            (rows4(s.kernel_h, s.cfg.stride.0), *p, s.batch * s.out_c * s.out_h * s.out_w.div_ceil(4))
        }
        (DepthwiseKernel::Rows4, DepthwisePass::BackwardData) => {
            // dx = dy convolved with the turned kernel: dy's sizes as the input, x's as the output.
            let turned = ConvParams {
                in_h: p.out_h,
                in_w: p.out_w,
                out_h: p.in_h,
                out_w: p.in_w,
                pad_top: (s.kernel_h - 1 - s.cfg.padding.top) as u32,
                pad_left: (s.kernel_w - 1 - s.cfg.padding.left) as u32,
                flags: p.flags | FLAG_FLIP,
                ..*p
            };
            (rows4(s.kernel_h, 1), turned, s.batch * s.in_c * s.in_h * s.in_w.div_ceil(4))
        }
        (_, DepthwisePass::Forward) => (DEPTHWISE_CONV2D_FORWARD, *p, s.batch * s.out_c * s.out_h * s.out_w),
        (_, DepthwisePass::BackwardData) => (DEPTHWISE_CONV2D_BACKWARD_DATA, *p, s.batch * s.in_c * s.in_h * s.in_w),
    };
    let grid = crate::ops::grid_1d(invocations, 256, gpu.limits().max_compute_workgroups_per_dimension);
    // The forward kernels bind a bias (binding 3), backward_data does not.
    let bound: &[&Tensor] = if spec.storage.len() == 4 { &[src, w, bias, out] } else { &[src, w, out] };
    crate::ops::dispatch_to(gpu, &spec, &[src, w], out, bytemuck::bytes_of(&p), bound, grid, label)
}

/// `kernel`, or for `Auto` the autotuner's choice among the kernels that apply to `pass` (by default the
/// four-output kernel where it applies and a row has at least four outputs: 2.3-3.9x faster on lavapipe, and fewer
/// loads per output on any device).
fn resolve_depthwise(
    gpu: &Gpu,
    kernel: DepthwiseKernel,
    pass: DepthwisePass,
    s: &ConvShape,
    (src, w, out): (&Tensor, &Tensor, &Tensor),
    label: &str,
) -> Result<DepthwiseKernel> {
    if kernel != DepthwiseKernel::Auto {
        return Ok(kernel);
    }
    if !pass.computed_by(DepthwiseKernel::Rows4, s) {
        return Ok(DepthwiseKernel::Direct);
    }
    // The row the four-output kernel writes: the output's (forward) or the input's (backward_data).
    let row = if pass == DepthwisePass::Forward { s.out_w } else { s.in_w };
    let default = if row >= 4 { DepthwiseKernel::Rows4 } else { DepthwiseKernel::Direct };
    let key = format!(
        "depthwise {} {}x{}x{}x{} k{} s{} pad {},{} {:?}.{:?}>{:?}",
        pass.name(),
        s.batch,
        s.in_c,
        s.in_h,
        s.in_w,
        s.kernel_h,
        s.cfg.stride.0,
        s.cfg.padding.top,
        s.cfg.padding.left,
        src.dtype(),
        w.dtype(),
        out.dtype()
    );
    let flops = 2 * s.macs() as u64;
    let p = s.params(0, s.batch)?;
    let mut scratch: Option<[Tensor; 3]> = None;
    crate::tune::choose(gpu, &key, &DepthwiseKernel::ALL, DepthwiseKernel::name, default, flops, |k, runs| {
        if scratch.is_none() {
            scratch = Some(crate::tune::scratch_like(gpu, [(src, "input"), (w, "weight"), (out, "output")], label)?);
        }
        let [a, b, c] = scratch.as_ref().expect("made above");
        let d = depthwise_launch(gpu, k, pass, s, &p, (a, b, b, c), &format!("autotune {} {key}", k.name()))?;
        crate::bench::time_min_ms(gpu, &d, runs)
    })
}

/// A depthwise weight gradient's splits over the batch (its tap-summing kernel, `depthwise_weight_taps`, sums a
/// channel per workgroup: EfficientNet's 32 channels of 64 x 112 x 112 positions are 32 workgroups): on a GPU
/// enough that about 1024 workgroups run, never more than the batch; on a software adapter, or for the other
/// depthwise kernels, 1.
pub fn depthwise_weight_splits(gpu: &Gpu, s: &ConvShape) -> usize {
    if gpu.summary().is_software || depthwise_weight_taps(s).is_none() {
        return 1;
    }
    1024usize.div_ceil(s.out_c).clamp(1, s.batch)
}

/// The kernel that sums every tap of a channel at once (undilated 3x3, 5x5, 7x7 over sums of at least
/// [`crate::ops::reduce::ROWS_BELOW`] positions), where it applies.
pub(super) fn depthwise_weight_taps(s: &ConvShape) -> Option<&'static KernelSpec> {
    if !s.is_depthwise() || s.batch * s.out_h * s.out_w < crate::ops::reduce::ROWS_BELOW {
        return None;
    }
    match (s.kernel_h, s.kernel_w, s.cfg.dilation) {
        (3, 3, (1, 1)) => Some(&DEPTHWISE_CONV2D_BACKWARD_WEIGHT_3X3),
        (5, 5, (1, 1)) => Some(&DEPTHWISE_CONV2D_BACKWARD_WEIGHT_5X5),
        (7, 7, (1, 1)) => Some(&DEPTHWISE_CONV2D_BACKWARD_WEIGHT_7X7),
        _ => None,
    }
}
