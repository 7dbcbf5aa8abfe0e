//! 2-D convolution, NCHW: forward, backward_data, backward_weight, backward_bias. Routes each call to the
//! kernel that fits: depthwise kernels (shaders/depthwise.wgsl) when groups == Cin == Cout, the matmul path for
//! 1x1 stride-1 unpadded convs (forward and backward_data), and the implicit-GEMM kernels of
//! shaders/conv2d.wgsl for everything else.

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, Gpu, KernelSpec, Tensor};
use crate::ops::matmul::{matmul, MatmulKernel, MatmulOptions};
use crate::ops::reduce::sum_reduce;

use super::dim;

mod depthwise;
use depthwise::depthwise_weight_taps;
pub(crate) use depthwise::rows4;
pub use depthwise::{
    depthwise_backward_data, depthwise_forward, depthwise_weight_splits, DepthwiseKernel,
    DEPTHWISE_CONV2D_BACKWARD_DATA, DEPTHWISE_CONV2D_BACKWARD_WEIGHT, DEPTHWISE_CONV2D_BACKWARD_WEIGHT_3X3,
    DEPTHWISE_CONV2D_BACKWARD_WEIGHT_5X5, DEPTHWISE_CONV2D_BACKWARD_WEIGHT_7X7, DEPTHWISE_CONV2D_BACKWARD_WEIGHT_ROWS,
    DEPTHWISE_CONV2D_FORWARD,
};

/// Mirrors `ConvParams` in shaders/conv2d.wgsl and shaders/depthwise.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ConvParams {
    pub batch: u32,
    pub in_c: u32,
    pub in_h: u32,
    pub in_w: u32,
    pub out_c: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub groups: u32,
    pub kernel_h: u32,
    pub kernel_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_top: u32,
    pub pad_left: u32,
    pub dilation_h: u32,
    pub dilation_w: u32,
    pub flags: u32,
    pub split_len: u32,
    pub _pad: [u32; 2],
}

pub const FLAG_BIAS: u32 = 1;
pub const FLAG_ACCUMULATE: u32 = 2;
/// Depthwise only (the four-output kernel): the kernel turned by 180 degrees, for a stride-1 backward_data.
pub const FLAG_FLIP: u32 = 4;

const SIG_WITH_BIAS: &[(u32, Access)] =
    &[(1, Access::Read), (2, Access::Read), (3, Access::Read), (4, Access::ReadWrite)];
const SIG: &[(u32, Access)] = &[(1, Access::Read), (2, Access::Read), (4, Access::ReadWrite)];

pub const CONV2D_FORWARD: KernelSpec = KernelSpec::new("conv2d_forward", "conv2d", SIG_WITH_BIAS);
/// The forward pass on the staged 128 x 128 tile ([`ConvKernel::Staged`]).
pub const CONV2D_FORWARD_STAGED: KernelSpec = KernelSpec::new("conv2d_forward_staged", "conv2d", SIG_WITH_BIAS);
pub const CONV2D_BACKWARD_DATA: KernelSpec = KernelSpec::new("conv2d_backward_data", "conv2d", SIG);
pub const CONV2D_BACKWARD_WEIGHT: KernelSpec = KernelSpec::new("conv2d_backward_weight", "conv2d", SIG);
/// Which implicit-GEMM kernel computes a dense (or grouped) convolution's forward pass. `Auto` is the autotuner's
/// choice for the layer on this device; the others are the variants it chooses among.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvKernel {
    Auto,
    /// Register-blocked, no workgroup memory: 16 output channels x 512 pixels per workgroup of 64 invocations
    /// (the software driver's winner).
    Tiled,
    /// 128 output channels x 128 pixels per workgroup of 256, the weights and the gathered input staged through
    /// workgroup memory in slabs of 8 (matmul's `staged128`; for GPUs).
    Staged,
}

impl ConvKernel {
    /// Every concrete kernel.
    pub const ALL: [ConvKernel; 2] = [ConvKernel::Tiled, ConvKernel::Staged];

    pub fn name(self) -> &'static str {
        match self {
            ConvKernel::Auto => "auto",
            ConvKernel::Tiled => "tiled",
            ConvKernel::Staged => "staged",
        }
    }
}

/// Padding of the four sides, in pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Padding {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Padding {
    /// The same amount on every side (PyTorch's `padding=p`).
    pub fn symmetric(p: usize) -> Self {
        Padding { top: p, bottom: p, left: p, right: p }
    }

    /// TensorFlow's "SAME" padding for an input of `in_h x in_w`: output size ceil(in / stride), and when the total
    /// padding is odd the extra pixel goes to the bottom/right (what EfficientNet-Lite's weights expect).
    pub fn same(
        in_h: usize,
        in_w: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        dilation: (usize, usize),
    ) -> Self {
        let total = |size: usize, k: usize, s: usize, d: usize| {
            let out = size.div_ceil(s);
            ((out - 1) * s + (k - 1) * d + 1).saturating_sub(size)
        };
        let th = total(in_h, kernel.0, stride.0, dilation.0);
        let tw = total(in_w, kernel.1, stride.1, dilation.1);
        Padding { top: th / 2, bottom: th - th / 2, left: tw / 2, right: tw - tw / 2 }
    }
}

/// Geometry of a convolution, independent of the tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub stride: (usize, usize),
    pub padding: Padding,
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Conv2dConfig { stride: (1, 1), padding: Padding::default(), dilation: (1, 1), groups: 1 }
    }
}

/// The sizes of one convolution, checked against each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub in_c: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_c: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub cfg: Conv2dConfig,
}

impl ConvShape {
    /// Shapes from x (N, Cin, H, W) and w (Cout, Cin/groups, KH, KW) dims; errors name both shapes.
    pub fn new(x: &[usize], w: &[usize], cfg: Conv2dConfig) -> Result<ConvShape> {
        let bad = |why: String| Error::shape("conv2d", format!("{why} (x {x:?}, w {w:?}, {cfg:?})"));
        let (&[batch, in_c, in_h, in_w], &[out_c, cin_g, kernel_h, kernel_w]) = (x, w) else {
            return Err(bad("x must be (N, Cin, H, W) and w (Cout, Cin/groups, KH, KW)".into()));
        };
        let g = cfg.groups;
        if in_c == 0 || out_c == 0 {
            return Err(bad("Cin and Cout must be at least 1".into()));
        }
        if g == 0 || in_c % g != 0 || out_c % g != 0 || cin_g != in_c / g {
            return Err(bad(format!(
                "groups = {g} must divide Cin and Cout, and w must have Cin/groups input channels"
            )));
        }
        let (sh, sw) = cfg.stride;
        let (dh, dw) = cfg.dilation;
        if sh == 0 || sw == 0 || dh == 0 || dw == 0 || kernel_h == 0 || kernel_w == 0 {
            return Err(bad("stride, dilation and kernel size must be at least 1".into()));
        }
        let span_h = dh * (kernel_h - 1) + 1;
        let span_w = dw * (kernel_w - 1) + 1;
        let padded_h = in_h + cfg.padding.top + cfg.padding.bottom;
        let padded_w = in_w + cfg.padding.left + cfg.padding.right;
        if padded_h < span_h || padded_w < span_w {
            return Err(bad(format!("the kernel ({span_h} x {span_w} with dilation) is larger than the padded input")));
        }
        let out_h = (padded_h - span_h) / sh + 1;
        let out_w = (padded_w - span_w) / sw + 1;
        Ok(ConvShape { batch, in_c, in_h, in_w, out_c, out_h, out_w, kernel_h, kernel_w, cfg })
    }

    pub fn x_shape(&self) -> [usize; 4] {
        [self.batch, self.in_c, self.in_h, self.in_w]
    }
    pub fn w_shape(&self) -> [usize; 4] {
        [self.out_c, self.in_c / self.cfg.groups, self.kernel_h, self.kernel_w]
    }
    pub fn y_shape(&self) -> [usize; 4] {
        [self.batch, self.out_c, self.out_h, self.out_w]
    }
    /// Multiply-adds of the forward pass (each backward pass does the same number).
    pub fn macs(&self) -> usize {
        self.batch
            * self.out_c
            * self.out_h
            * self.out_w
            * (self.in_c / self.cfg.groups)
            * self.kernel_h
            * self.kernel_w
    }
    pub fn is_depthwise(&self) -> bool {
        self.cfg.groups == self.in_c && self.in_c == self.out_c && self.in_c > 1
    }
    /// A 1x1, stride-1, unpadded, ungrouped conv over planes of at least 512 pixels: a batched matmul with full
    /// 16 x 512 tiles (one matrix per image). Smaller planes would leave most of each tile idle, so those go to
    /// the implicit GEMM, which folds the batch into the columns.
    pub fn is_pointwise(&self) -> bool {
        self.in_h * self.in_w >= 512
            && self.kernel_h == 1
            && self.kernel_w == 1
            && self.cfg.stride == (1, 1)
            && self.cfg.padding == Padding::default()
            && self.cfg.groups == 1
    }

    fn params(&self, flags: u32, split_len: usize) -> Result<ConvParams> {
        Ok(ConvParams {
            batch: dim(self.batch, "batch")?,
            in_c: dim(self.in_c, "Cin")?,
            in_h: dim(self.in_h, "H")?,
            in_w: dim(self.in_w, "W")?,
            out_c: dim(self.out_c, "Cout")?,
            out_h: dim(self.out_h, "OH")?,
            out_w: dim(self.out_w, "OW")?,
            groups: dim(self.cfg.groups, "groups")?,
            kernel_h: dim(self.kernel_h, "KH")?,
            kernel_w: dim(self.kernel_w, "KW")?,
            stride_h: dim(self.cfg.stride.0, "stride")?,
            stride_w: dim(self.cfg.stride.1, "stride")?,
            pad_top: dim(self.cfg.padding.top, "padding")?,
            pad_left: dim(self.cfg.padding.left, "padding")?,
            dilation_h: dim(self.cfg.dilation.0, "dilation")?,
            dilation_w: dim(self.cfg.dilation.1, "dilation")?,
            flags,
            split_len: dim(split_len.max(1), "split")?,
            _pad: [0; 2],
        })
    }

    fn check(&self, t: &Tensor, want: [usize; 4], role: &str) -> Result<()> {
        if t.shape() != want {
            return Err(Error::shape(
                format!("conv2d {role}"),
                format!("'{}' is {:?}, expected {want:?}", t.label(), t.shape()),
            ));
        }
        Ok(())
    }
}

fn flags(bias: bool, accumulate: bool) -> u32 {
    (if bias { FLAG_BIAS } else { 0 }) | if accumulate { FLAG_ACCUMULATE } else { 0 }
}

/// y = conv2d(x, w) + bias. x (N, Cin, H, W), w (Cout, Cin/groups, KH, KW), bias (Cout), y (N, Cout, OH, OW).
pub fn conv2d_forward(
    gpu: &Gpu,
    s: &ConvShape,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    accumulate: bool,
    label: &str,
) -> Result<Vec<Dispatch>> {
    // The first launch does the multiply-adds (any second one is a split-K reduction).
    counted(
        s,
        (|| {
            check_forward(s, x, w, bias, y)?;
            if s.is_pointwise() {
                // y[n] (Cout, HW) = w (Cout, Cin) · x[n] (Cin, HW) + bias per row
                let hw = s.in_h * s.in_w;
                let opts = MatmulOptions { accumulate, bias_per_row: true, ..Default::default() };
                let d = matmul(
                    gpu,
                    MatmulKernel::Auto,
                    &w.reshape(&[s.out_c, s.in_c])?,
                    &x.reshape(&[s.batch, s.in_c, hw])?,
                    bias,
                    &y.reshape(&[s.batch, s.out_c, hw])?,
                    opts,
                    label,
                )?;
                return Ok(vec![d]);
            }
            check_bias_is_f32(bias, label)?;
            if s.is_depthwise() {
                return Ok(vec![depthwise_forward(gpu, DepthwiseKernel::Auto, s, x, w, bias, y, accumulate, label)?]);
            }
            Ok(vec![forward_gemm(gpu, ConvKernel::Auto, s, (x, w, bias, y), accumulate, label)?])
        })(),
    )
}

/// The forward pass's operands against the geometry: x, w and y shaped as `s` says, the bias one per Cout.
fn check_forward(s: &ConvShape, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &Tensor) -> Result<()> {
    s.check(x, s.x_shape(), "input")?;
    s.check(w, s.w_shape(), "weight")?;
    s.check(y, s.y_shape(), "output")?;
    match bias {
        Some(b) if b.numel() != s.out_c => {
            Err(Error::shape("conv2d bias", format!("bias {:?} must have Cout = {}", b.shape(), s.out_c)))
        }
        _ => Ok(()),
    }
}

/// The bias is an f32 parameter at every precision (the 1x1 path's matmul says the same in its own words).
fn check_bias_is_f32(bias: Option<&Tensor>, label: &str) -> Result<()> {
    match bias.filter(|b| b.dtype() != crate::gpu::DType::F32) {
        Some(b) => Err(Error::Invalid(format!(
            "conv2d '{label}': the bias '{}' is {:?}, expected f32 (a parameter)",
            b.label(),
            b.dtype()
        ))),
        None => Ok(()),
    }
}

/// The forward pass as one implicit GEMM of shaders/conv2d.wgsl (any geometry, groups included; `conv2d_forward`
/// sends 1x1 and depthwise layers elsewhere), by `kernel` (`Auto`: the autotuner's choice for the layer).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward_gemm(
    gpu: &Gpu,
    kernel: ConvKernel,
    s: &ConvShape,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    accumulate: bool,
    label: &str,
) -> Result<Dispatch> {
    check_forward(s, x, w, bias, y)?;
    check_bias_is_f32(bias, label)?;
    Ok(forward_gemm(gpu, kernel, s, (x, w, bias, y), accumulate, label)?.with_flops(2 * s.macs() as u64))
}

/// [`conv2d_forward_gemm`] on checked operands.
fn forward_gemm(
    gpu: &Gpu,
    kernel: ConvKernel,
    s: &ConvShape,
    (x, w, bias, y): (&Tensor, &Tensor, Option<&Tensor>, &Tensor),
    accumulate: bool,
    label: &str,
) -> Result<Dispatch> {
    let p = s.params(flags(bias.is_some(), accumulate), s.batch)?;
    let kernel = match kernel {
        ConvKernel::Auto => tuned_forward(gpu, s, (x, w, y), label)?,
        k => k,
    };
    forward_launch(gpu, kernel, &p, (x, w, bias, y), label)
}

fn forward_launch(
    gpu: &Gpu,
    kernel: ConvKernel,
    p: &ConvParams,
    (x, w, bias, y): (&Tensor, &Tensor, Option<&Tensor>, &Tensor),
    label: &str,
) -> Result<Dispatch> {
    let bias = bias.unwrap_or(w);
    let (cols, cout_g) = (p.batch * p.out_h * p.out_w, p.out_c / p.groups);
    let (spec, grid) = match kernel {
        ConvKernel::Staged => (&CONV2D_FORWARD_STAGED, [cols.div_ceil(128), cout_g.div_ceil(128), p.groups]),
        _ => (&CONV2D_FORWARD, [cols.div_ceil(512), cout_g.div_ceil(16), p.groups]),
    };
    let spec = gemm_spec(spec, false, p.flags);
    super::dispatch_to(gpu, &spec, &[w, x], y, bytemuck::bytes_of(p), &[w, x, bias, y], grid, label)
}

/// The autotuner's forward kernel for the layer: keyed by its geometry and storage types, timed on scratch tensors
/// of its shapes without bias or accumulation. Untimed, the register-blocked kernel runs (measured on a GPU at
/// 7.5 TFLOP/s on ResNet's 3x3 layers; the staged one has not been timed on a GPU yet). A software adapter runs it
/// without timing: the staged kernel's barriers made it 1.8-6.9x slower on lavapipe's layers (small_cnn's three,
/// BENCHMARKS.md), and timing it there cost the first training step 3 s.
fn tuned_forward(gpu: &Gpu, s: &ConvShape, (x, w, y): (&Tensor, &Tensor, &Tensor), label: &str) -> Result<ConvKernel> {
    if gpu.is_software() {
        return Ok(ConvKernel::Tiled);
    }
    let key = format!(
        "conv2d forward {}x{}x{}x{} w {}x{}x{}x{} s{},{} pad {},{} d{},{} g{} {:?}.{:?}>{:?}",
        s.batch,
        s.in_c,
        s.in_h,
        s.in_w,
        s.out_c,
        s.in_c / s.cfg.groups,
        s.kernel_h,
        s.kernel_w,
        s.cfg.stride.0,
        s.cfg.stride.1,
        s.cfg.padding.top,
        s.cfg.padding.left,
        s.cfg.dilation.0,
        s.cfg.dilation.1,
        s.cfg.groups,
        w.dtype(),
        x.dtype(),
        y.dtype()
    );
    let p = s.params(0, s.batch)?;
    let mut scratch: Option<[Tensor; 3]> = None;
    crate::tune::choose(
        gpu,
        &key,
        &ConvKernel::ALL,
        ConvKernel::name,
        ConvKernel::Tiled,
        2 * s.macs() as u64,
        |k, runs| {
            if scratch.is_none() {
                scratch = Some(crate::tune::scratch_like(gpu, [(x, "input"), (w, "weight"), (y, "output")], label)?);
            }
            let [sx, sw, sy] = scratch.as_ref().expect("made above");
            let d = forward_launch(gpu, k, &p, (sx, sw, None, sy), &format!("autotune {} {key}", k.name()))?;
            crate::bench::time_min_ms(gpu, &d, runs)
        },
    )
}

/// dx = the gradient of conv2d with respect to its input, from dy.
pub fn conv2d_backward_data(
    gpu: &Gpu,
    s: &ConvShape,
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
    accumulate: bool,
    label: &str,
) -> Result<Vec<Dispatch>> {
    // The first launch does the multiply-adds (any second one is a split-K reduction).
    counted(
        s,
        (|| {
            s.check(dy, s.y_shape(), "output gradient")?;
            s.check(w, s.w_shape(), "weight")?;
            s.check(dx, s.x_shape(), "input gradient")?;
            if s.is_pointwise() {
                // dx[n] (Cin, HW) = wᵀ (Cin, Cout) · dy[n] (Cout, HW)
                let hw = s.in_h * s.in_w;
                let opts = MatmulOptions { trans_a: true, accumulate, ..Default::default() };
                let d = matmul(
                    gpu,
                    MatmulKernel::Auto,
                    &w.reshape(&[s.out_c, s.in_c])?,
                    &dy.reshape(&[s.batch, s.out_c, hw])?,
                    None,
                    &dx.reshape(&[s.batch, s.in_c, hw])?,
                    opts,
                    label,
                )?;
                return Ok(vec![d]);
            }
            if s.is_depthwise() {
                return Ok(vec![depthwise_backward_data(gpu, DepthwiseKernel::Auto, s, dy, w, dx, accumulate, label)?]);
            }
            let p = s.params(flags(false, accumulate), s.batch)?;
            // One z slice per group and stride phase, each as wide as the largest phase (phase 0).
            let (sh, sw) = (p.stride_h, p.stride_w);
            let phase0 = p.batch * p.in_h.div_ceil(sh) * p.in_w.div_ceil(sw);
            let grid = [phase0.div_ceil(512), (p.in_c / p.groups).div_ceil(16), p.groups * sh * sw];
            let params = bytemuck::bytes_of(&p);
            let spec = gemm_spec(&CONV2D_BACKWARD_DATA, false, p.flags);
            Ok(vec![super::dispatch_to(gpu, &spec, &[w, dy], dx, params, &[w, dy, dx], grid, label)?])
        })(),
    )
}

/// Whether backward_weight for `ncols` = Cin_g * KH * KW weight columns takes the narrow kernel, and the columns one
/// workgroup covers: few columns (a 1x1 conv's Cin) take 64-column workgroups instead of 512, so most lanes have a
/// column.
fn backward_weight_kernel(ncols: usize) -> (bool, u32) {
    if ncols <= 256 {
        (true, 64)
    } else {
        (false, 512)
    }
}

/// A register-blocked conv2d kernel's pipeline for a launch with these flags (`EPILOGUE`: its inlined stores
/// compile without the flag branches), narrow or not (backward_weight's 8 invocations per workgroup covering 64
/// columns, for weight gradients of at most 256 columns: Cin_g * KH * KW).
pub(crate) fn gemm_spec(base: &KernelSpec, narrow: bool, flags: u32) -> KernelSpec {
    // Pipeline constants must be 'static: one entry per (narrow, flags) (bias 1, accumulate 2).
    const C: [[&[(&str, f64)]; 4]; 2] = [
        [&[("EPILOGUE", 0.0)], &[("EPILOGUE", 1.0)], &[("EPILOGUE", 2.0)], &[("EPILOGUE", 3.0)]],
        [
            &[("WG", 8.0), ("EPILOGUE", 0.0)],
            &[("WG", 8.0), ("EPILOGUE", 1.0)],
            &[("WG", 8.0), ("EPILOGUE", 2.0)],
            &[("WG", 8.0), ("EPILOGUE", 3.0)],
        ],
    ];
    base.with_constants(C[narrow as usize][(flags & 3) as usize])
}

/// How many splits backward_weight cuts its reduction into (split-K over the rows (n, oh) of dy, N * OH of them):
/// enough workgroups to fill the adapter (a few per core on a software adapter; on a GPU about 2^17 invocations, a
/// couple of waves of a big one), never fewer than [`MIN_SPLIT_STEPS`] reduction steps per split, and partial sums
/// within `max_scratch` bytes.
pub fn backward_weight_splits(gpu: &Gpu, s: &ConvShape) -> usize {
    if s.is_depthwise() {
        return depthwise_weight_splits(gpu, s);
    }
    let cin_g = s.in_c / s.cfg.groups;
    let ncols = cin_g * s.kernel_h * s.kernel_w;
    let (narrow, tile) = backward_weight_kernel(ncols);
    let workgroups = ncols.div_ceil(tile as usize) * (s.out_c / s.cfg.groups).div_ceil(16) * s.cfg.groups;
    let want = if gpu.summary().is_software {
        8usize.div_ceil(workgroups)
    } else {
        let invocations = workgroups * if narrow { 8 } else { 64 };
        (1usize << 17).div_ceil(invocations)
    };
    let rows = s.batch * s.out_h;
    let by_work = (rows * s.out_w / MIN_SPLIT_STEPS).max(1);
    let max_scratch: usize = 64 << 20;
    let per_split = s.out_c * ncols * crate::gpu::DType::F32.size() as usize;
    want.clamp(1, rows).min(by_work).min((max_scratch / per_split).max(1))
}

/// The fewest reduction steps (dy elements per output channel) one split of backward_weight sums: below this its
/// partial sums' writes and their reduction would cost more than the split saves.
pub const MIN_SPLIT_STEPS: usize = 64;

/// The scratch tensor [`conv2d_backward_weight`] needs on this adapter (shape, f32): the per-split partial
/// weight gradients when the batch is split for parallelism; `None` when it needs none. The caller places it
/// (the executor's memory plan does), so every byte a step uses is planned.
pub fn conv2d_backward_weight_scratch(gpu: &Gpu, s: &ConvShape) -> Option<Vec<usize>> {
    conv2d_backward_weight_scratch_split(s, backward_weight_splits(gpu, s))
}

/// The scratch tensor [`conv2d_backward_weight_split`] needs for `splits` splits (`None`: none).
pub fn conv2d_backward_weight_scratch_split(s: &ConvShape, splits: usize) -> Option<Vec<usize>> {
    if s.is_depthwise() {
        depthwise_weight_taps(s)?;
        let (splits, _) = even_split(s.batch, splits);
        return (splits > 1).then(|| vec![splits, s.out_c * s.kernel_h * s.kernel_w]);
    }
    WeightSplit::new(s, splits).scratch_shape(s)
}

/// `total` items (images, rows) in at most `splits` groups of equal length but the last: (groups, length).
fn even_split(total: usize, splits: usize) -> (usize, usize) {
    let len = total.div_ceil(splits.clamp(1, total.max(1)));
    (total.div_ceil(len), len)
}

/// How the dense backward_weight splits its reduction on this adapter: `splits` groups of `split_len` rows (n, oh)
/// of dy, each summing into its own partial dw of `ncols` columns per output channel.
struct WeightSplit {
    splits: usize,
    split_len: usize,
    ncols: usize,
}

impl WeightSplit {
    /// At most `splits` splits of equal length (fewer where the rows do not divide evenly enough).
    fn new(s: &ConvShape, splits: usize) -> WeightSplit {
        let (splits, split_len) = even_split(s.batch * s.out_h, splits);
        let ncols = (s.in_c / s.cfg.groups) * s.kernel_h * s.kernel_w;
        WeightSplit { splits, split_len, ncols }
    }

    /// The partial sums' shape, when there is more than one split.
    fn scratch_shape(&self, s: &ConvShape) -> Option<Vec<usize>> {
        (self.splits > 1).then(|| vec![self.splits, s.out_c * self.ncols])
    }
}

/// dw = the gradient of conv2d with respect to its weight, from dy and the forward input x. `scratch` has the
/// shape [`conv2d_backward_weight_scratch`] asks for (or is `None` when it asks for none).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_weight(
    gpu: &Gpu,
    s: &ConvShape,
    dy: &Tensor,
    x: &Tensor,
    dw: &Tensor,
    scratch: Option<&Tensor>,
    accumulate: bool,
    label: &str,
) -> Result<Vec<Dispatch>> {
    let splits = backward_weight_splits(gpu, s);
    conv2d_backward_weight_split(gpu, s, splits, dy, x, dw, scratch, accumulate, label)
}

/// [`conv2d_backward_weight`] with the dense kernel's reduction cut into at most `splits` splits (split-K; see
/// [`backward_weight_splits`] for the adapter's choice) and `scratch` shaped as
/// [`conv2d_backward_weight_scratch_split`] asks; a depthwise one's tap-summing kernel splits over whole images
/// ([`depthwise_weight_splits`]), its other kernels ignore `splits`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_weight_split(
    gpu: &Gpu,
    s: &ConvShape,
    splits: usize,
    dy: &Tensor,
    x: &Tensor,
    dw: &Tensor,
    scratch: Option<&Tensor>,
    accumulate: bool,
    label: &str,
) -> Result<Vec<Dispatch>> {
    // The first launch does the multiply-adds (any second one is a split-K reduction).
    counted(
        s,
        (|| {
            s.check(dy, s.y_shape(), "output gradient")?;
            s.check(x, s.x_shape(), "input")?;
            s.check(dw, s.w_shape(), "weight gradient")?;
            let want = conv2d_backward_weight_scratch_split(s, splits);
            if want.as_deref() != scratch.map(|t| t.shape()) {
                return Err(Error::shape(
                    format!("conv2d_backward_weight '{label}'"),
                    format!("scratch {:?} given, {want:?} needed", scratch.map(|t| t.shape())),
                ));
            }
            if let Some(spec) = depthwise_weight_taps(s) {
                // Split over the batch where asked: partial sums, then one fixed-order sum over the splits.
                let (splits, split_len) = even_split(s.batch, splits);
                let Some(partial) = scratch else {
                    let p = s.params(flags(false, accumulate), split_len)?;
                    let (params, grid) = (bytemuck::bytes_of(&p), [p.out_c, 1, 1]);
                    return Ok(vec![super::dispatch_to(gpu, spec, &[dy, x], dw, params, &[dy, x, dw], grid, label)?]);
                };
                let p = s.params(0, split_len)?;
                let (params, grid) = (bytemuck::bytes_of(&p), [p.out_c, splits as u32, 1]);
                let taps = super::dispatch_to(gpu, spec, &[dy, x], partial, params, &[dy, x, partial], grid, label)?;
                let sums = (splits, s.out_c * s.kernel_h * s.kernel_w, 1);
                let sum = sum_reduce(gpu, partial, dw, sums, accumulate, &format!("{label} split sum"))?;
                return Ok(vec![taps, sum]);
            }
            if s.is_depthwise() {
                let p = s.params(flags(false, accumulate), s.batch)?;
                if s.batch * s.out_h * s.out_w < crate::ops::reduce::ROWS_BELOW {
                    let taps = (p.out_c * p.kernel_h * p.kernel_w) as usize;
                    let grid = super::flat_grid(gpu, taps);
                    let spec = &DEPTHWISE_CONV2D_BACKWARD_WEIGHT_ROWS;
                    let params = bytemuck::bytes_of(&p);
                    return Ok(vec![super::dispatch_to(gpu, spec, &[dy, x], dw, params, &[dy, x, dw], grid, label)?]);
                }
                let grid = [p.kernel_h * p.kernel_w, p.out_c, 1];
                return Ok(vec![super::dispatch_to(
                    gpu,
                    &DEPTHWISE_CONV2D_BACKWARD_WEIGHT,
                    &[dy, x],
                    dw,
                    bytemuck::bytes_of(&p),
                    &[dy, x, dw],
                    grid,
                    label,
                )?]);
            }
            let WeightSplit { splits, split_len, ncols } = WeightSplit::new(s, splits);
            let (narrow, tile) = backward_weight_kernel(ncols);
            let grid = |p: &ConvParams| {
                [(ncols as u32).div_ceil(tile), (p.out_c / p.groups).div_ceil(16), p.groups * splits as u32]
            };
            // A scratch tensor was given exactly when the reduction is split (checked above).
            let Some(partial) = scratch else {
                let p = s.params(flags(false, accumulate), split_len)?;
                let (params, spec) = (bytemuck::bytes_of(&p), gemm_spec(&CONV2D_BACKWARD_WEIGHT, narrow, p.flags));
                return Ok(vec![super::dispatch_to(gpu, &spec, &[dy, x], dw, params, &[dy, x, dw], grid(&p), label)?]);
            };
            // Each split writes its own partial dw; one sum over the splits finishes (and accumulates, if asked).
            let p = s.params(0, split_len)?;
            let (params, spec) = (bytemuck::bytes_of(&p), gemm_spec(&CONV2D_BACKWARD_WEIGHT, narrow, 0));
            let conv = super::dispatch_to(gpu, &spec, &[dy, x], partial, params, &[dy, x, partial], grid(&p), label)?;
            let sum =
                sum_reduce(gpu, partial, dw, (splits, s.out_c * ncols, 1), accumulate, &format!("{label} split sum"))?;
            Ok(vec![conv, sum])
        })(),
    )
}

/// Record a convolution pass's multiply-adds on its first launch (for GFLOP/s in profiles).
fn counted(s: &ConvShape, launches: Result<Vec<Dispatch>>) -> Result<Vec<Dispatch>> {
    let mut launches = launches?;
    if !launches.is_empty() {
        let first = launches.remove(0).with_flops(2 * s.macs() as u64);
        launches.insert(0, first);
    }
    Ok(launches)
}

/// dbias[c] = sum over n, oh, ow of dy[n, c, oh, ow].
pub fn conv2d_backward_bias(
    gpu: &Gpu,
    s: &ConvShape,
    dy: &Tensor,
    dbias: &Tensor,
    accumulate: bool,
    label: &str,
) -> Result<Dispatch> {
    s.check(dy, s.y_shape(), "output gradient")?;
    sum_reduce(gpu, dy, dbias, (s.batch, s.out_c, s.out_h * s.out_w), accumulate, label)
}
