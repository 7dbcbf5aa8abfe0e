//! Pooling: max and average windows, global average / max (fastai's concat pool writes both into one tensor).
//! See shaders/pool.wgsl. Flatten is a reshape ([`Tensor::reshape`]), no kernel.

use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::ops::conv::Padding;

use super::dim;

/// Mirrors `PoolParams` in shaders/pool.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PoolParams {
    pub batch: u32,
    pub channels: u32,
    pub in_h: u32,
    pub in_w: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub kernel_h: u32,
    pub kernel_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_top: u32,
    pub pad_left: u32,
    pub pad_bottom: u32,
    pub pad_right: u32,
    pub flags: u32,
    pub out_c_total: u32,
    pub out_c_offset: u32,
    pub _pad: [u32; 3],
}

pub const FLAG_ACCUMULATE: u32 = 1;
pub const FLAG_COUNT_PAD: u32 = 2;
pub const FLAG_MAX: u32 = 4;

const SRC_DST: &[(u32, Access)] = &[(1, Access::Read), (2, Access::ReadWrite)];
const SRC_DST_IDX: &[(u32, Access)] = &[(1, Access::Read), (2, Access::ReadWrite), (3, Access::ReadWrite)];
pub const MAX_POOL_FORWARD: KernelSpec = KernelSpec::new("max_pool_forward", "pool", SRC_DST_IDX);
pub const MAX_POOL_BACKWARD: KernelSpec = KernelSpec::new("max_pool_backward", "pool", SRC_DST_IDX);
pub const AVG_POOL_FORWARD: KernelSpec = KernelSpec::new("avg_pool_forward", "pool", SRC_DST);
pub const AVG_POOL_BACKWARD: KernelSpec = KernelSpec::new("avg_pool_backward", "pool", SRC_DST);
pub const GLOBAL_POOL_FORWARD: KernelSpec = KernelSpec::new("global_pool_forward", "pool", SRC_DST_IDX);
pub const GLOBAL_POOL_FORWARD_ROWS: KernelSpec = KernelSpec::new("global_pool_forward_rows", "pool", SRC_DST_IDX);
pub const GLOBAL_AVG_POOL_BACKWARD: KernelSpec = KernelSpec::new("global_avg_pool_backward", "pool", SRC_DST);
pub const GLOBAL_MAX_POOL_BACKWARD: KernelSpec = KernelSpec::new("global_max_pool_backward", "pool", SRC_DST_IDX);

/// A pooling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: Padding,
    /// Average pooling divides by the whole window, padding included (PyTorch's default).
    pub count_include_pad: bool,
}

impl PoolConfig {
    /// A square window with PyTorch's defaults (stride = kernel unless given).
    pub fn square(kernel: usize, stride: usize, pad: usize) -> Self {
        PoolConfig {
            kernel: (kernel, kernel),
            stride: (stride, stride),
            padding: Padding::symmetric(pad),
            count_include_pad: true,
        }
    }
}

/// Window pooling geometry for x (N, C, H, W).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub batch: usize,
    pub channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub cfg: PoolConfig,
}

impl PoolShape {
    pub fn new(x: &[usize], cfg: PoolConfig) -> Result<PoolShape> {
        let bad = |why: &str| Error::shape("pool", format!("{why} (x {x:?}, {cfg:?})"));
        let &[batch, channels, in_h, in_w] = x else { return Err(bad("x must be (N, C, H, W)")) };
        let (kh, kw) = cfg.kernel;
        if kh == 0 || kw == 0 || cfg.stride.0 == 0 || cfg.stride.1 == 0 {
            return Err(bad("kernel and stride must be at least 1"));
        }
        let pad = cfg.padding;
        // PyTorch's rule, which also guarantees every window holds at least one real pixel.
        if pad.top.max(pad.bottom) * 2 > kh || pad.left.max(pad.right) * 2 > kw {
            return Err(bad("padding must be at most half the kernel"));
        }
        let (ph, pw) = (in_h + pad.top + pad.bottom, in_w + pad.left + pad.right);
        if ph < kh || pw < kw {
            return Err(bad("the window is larger than the padded input"));
        }
        let out_h = (ph - kh) / cfg.stride.0 + 1;
        let out_w = (pw - kw) / cfg.stride.1 + 1;
        Ok(PoolShape { batch, channels, in_h, in_w, out_h, out_w, cfg })
    }
    pub fn x_shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.in_h, self.in_w]
    }
    pub fn y_shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.out_h, self.out_w]
    }
    fn params(&self, flags: u32) -> Result<PoolParams> {
        Ok(PoolParams {
            batch: dim(self.batch, "batch")?,
            channels: dim(self.channels, "channels")?,
            in_h: dim(self.in_h, "H")?,
            in_w: dim(self.in_w, "W")?,
            out_h: dim(self.out_h, "OH")?,
            out_w: dim(self.out_w, "OW")?,
            kernel_h: dim(self.cfg.kernel.0, "kernel")?,
            kernel_w: dim(self.cfg.kernel.1, "kernel")?,
            stride_h: dim(self.cfg.stride.0, "stride")?,
            stride_w: dim(self.cfg.stride.1, "stride")?,
            pad_top: dim(self.cfg.padding.top, "padding")?,
            pad_left: dim(self.cfg.padding.left, "padding")?,
            pad_bottom: dim(self.cfg.padding.bottom, "padding")?,
            pad_right: dim(self.cfg.padding.right, "padding")?,
            flags,
            out_c_total: 0,
            out_c_offset: 0,
            _pad: [0; 3],
        })
    }
}

fn expect_shape(t: &Tensor, want: &[usize], what: &str) -> Result<()> {
    if t.shape() != want {
        return Err(Error::shape(what, format!("'{}' is {:?}, expected {want:?}", t.label(), t.shape())));
    }
    Ok(())
}

fn acc_flag(accumulate: bool) -> u32 {
    if accumulate {
        FLAG_ACCUMULATE
    } else {
        0
    }
}

/// Max pooling: y (N, C, OH, OW) and the argmax `indices` (same shape, u32) that backward needs.
pub fn max_pool_forward(
    gpu: &Gpu,
    s: &PoolShape,
    x: &Tensor,
    y: &Tensor,
    indices: &Tensor,
    label: &str,
) -> Result<Dispatch> {
    expect_shape(x, &s.x_shape(), "max_pool_forward input")?;
    expect_shape(y, &s.y_shape(), "max_pool_forward output")?;
    expect_shape(indices, &s.y_shape(), "max_pool_forward indices")?;
    let p = s.params(0)?;
    let grid = [(p.out_h * p.out_w).div_ceil(256), p.channels, p.batch];
    super::dispatch_at(gpu, &MAX_POOL_FORWARD, &[x, y], bytemuck::bytes_of(&p), &[x, y, indices], grid, label)
}

pub fn max_pool_backward(
    gpu: &Gpu,
    s: &PoolShape,
    dy: &Tensor,
    indices: &Tensor,
    dx: &Tensor,
    accumulate: bool,
    label: &str,
) -> Result<Dispatch> {
    expect_shape(dy, &s.y_shape(), "max_pool_backward output gradient")?;
    expect_shape(indices, &s.y_shape(), "max_pool_backward indices")?;
    expect_shape(dx, &s.x_shape(), "max_pool_backward input gradient")?;
    let p = s.params(acc_flag(accumulate))?;
    let grid = [(p.in_h * p.in_w).div_ceil(256), p.channels, p.batch];
    super::dispatch_at(gpu, &MAX_POOL_BACKWARD, &[dy, dx], bytemuck::bytes_of(&p), &[dy, dx, indices], grid, label)
}

fn avg_flags(s: &PoolShape, accumulate: bool) -> u32 {
    acc_flag(accumulate) | if s.cfg.count_include_pad { FLAG_COUNT_PAD } else { 0 }
}

pub fn avg_pool_forward(gpu: &Gpu, s: &PoolShape, x: &Tensor, y: &Tensor, label: &str) -> Result<Dispatch> {
    expect_shape(x, &s.x_shape(), "avg_pool_forward input")?;
    expect_shape(y, &s.y_shape(), "avg_pool_forward output")?;
    let p = s.params(avg_flags(s, false))?;
    let grid = [(p.out_h * p.out_w).div_ceil(256), p.channels, p.batch];
    super::dispatch_at(gpu, &AVG_POOL_FORWARD, &[x, y], bytemuck::bytes_of(&p), &[x, y], grid, label)
}

pub fn avg_pool_backward(
    gpu: &Gpu,
    s: &PoolShape,
    dy: &Tensor,
    dx: &Tensor,
    accumulate: bool,
    label: &str,
) -> Result<Dispatch> {
    expect_shape(dy, &s.y_shape(), "avg_pool_backward output gradient")?;
    expect_shape(dx, &s.x_shape(), "avg_pool_backward input gradient")?;
    let p = s.params(avg_flags(s, accumulate))?;
    let grid = [(p.in_h * p.in_w).div_ceil(256), p.channels, p.batch];
    super::dispatch_at(gpu, &AVG_POOL_BACKWARD, &[dy, dx], bytemuck::bytes_of(&p), &[dy, dx], grid, label)
}

/// Global pooling kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalPool {
    Avg,
    Max,
}

/// Where a global pool writes: `y` is (N, C_total) and this pool fills channels [offset, offset + C).
fn global_params(x: &Tensor, y: &Tensor, offset: usize, flags: u32, what: &str) -> Result<PoolParams> {
    let &[batch, channels, h, w] = x.shape() else {
        return Err(Error::shape(what, format!("x {:?} must be (N, C, H, W)", x.shape())));
    };
    let [yb, total] = *y.shape() else {
        return Err(Error::shape(what, format!("y {:?} must be (N, C_total)", y.shape())));
    };
    if yb != batch || offset + channels > total {
        return Err(Error::shape(
            what,
            format!("x {:?} does not fit y {:?} at channel offset {offset}", x.shape(), y.shape()),
        ));
    }
    Ok(PoolParams {
        batch: dim(batch, "batch")?,
        channels: dim(channels, "channels")?,
        in_h: dim(h, "H")?,
        in_w: dim(w, "W")?,
        out_h: 1,
        out_w: 1,
        kernel_h: dim(h, "H")?,
        kernel_w: dim(w, "W")?,
        stride_h: 1,
        stride_w: 1,
        flags,
        out_c_total: dim(total, "channels")?,
        out_c_offset: dim(offset, "channel offset")?,
        ..Default::default()
    })
}

/// y[n, offset + c] = mean or max over (H, W) of x[n, c]; `indices` (N, C) u32 records the max's position.
/// fastai's AdaptiveConcatPool2d is `Max` at offset 0 and `Avg` at offset C into one (N, 2C) tensor.
pub fn global_pool_forward(
    gpu: &Gpu,
    kind: GlobalPool,
    x: &Tensor,
    y: &Tensor,
    offset: usize,
    indices: &Tensor,
    label: &str,
) -> Result<Dispatch> {
    let flags = if kind == GlobalPool::Max { FLAG_MAX } else { 0 };
    let p = global_params(x, y, offset, flags, "global_pool_forward")?;
    if kind == GlobalPool::Max && indices.numel() != (p.batch * p.channels) as usize {
        return Err(Error::shape("global_pool_forward", format!("indices {:?} must hold N * C", indices.shape())));
    }
    if p.in_h * p.in_w < 1024 {
        let grid = [(p.batch * p.channels).div_ceil(256), 1, 1];
        let tensors = [x, y, indices];
        return super::dispatch_at(
            gpu,
            &GLOBAL_POOL_FORWARD_ROWS,
            &[x, y],
            bytemuck::bytes_of(&p),
            &tensors,
            grid,
            label,
        );
    }
    let grid = [p.channels, p.batch, 1];
    super::dispatch_at(gpu, &GLOBAL_POOL_FORWARD, &[x, y], bytemuck::bytes_of(&p), &[x, y, indices], grid, label)
}

/// dx (N, C, H, W) from the slice [offset, offset + C) of dy (N, C_total).
pub fn global_pool_backward(
    gpu: &Gpu,
    kind: GlobalPool,
    dy: &Tensor,
    offset: usize,
    indices: &Tensor,
    dx: &Tensor,
    accumulate: bool,
    label: &str,
) -> Result<Dispatch> {
    let p = global_params(dx, dy, offset, acc_flag(accumulate), "global_pool_backward")?;
    let elements = dx.numel();
    let grid = super::flat_grid(gpu, elements);
    match kind {
        GlobalPool::Avg => super::dispatch_at(
            gpu,
            &GLOBAL_AVG_POOL_BACKWARD,
            &[dy, dx],
            bytemuck::bytes_of(&p),
            &[dy, dx],
            grid,
            label,
        ),
        GlobalPool::Max => {
            let tensors = [dy, dx, indices];
            super::dispatch_at(gpu, &GLOBAL_MAX_POOL_BACKWARD, &[dy, dx], bytemuck::bytes_of(&p), &tensors, grid, label)
        }
    }
}

/// A u32 tensor for argmax positions of `shape`.
pub fn indices_for(gpu: &Gpu, shape: &[usize], label: &str) -> Result<Tensor> {
    gpu.tensor(shape, DType::U32, label)
}
