//! `matmul` / `matmul_naive`: C = op(A)·op(B) (+ bias) (+ C), batched. See shaders/matmul.wgsl.

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, Gpu, KernelSpec, Tensor};

use super::dim;

/// Mirrors `MatmulParams` in shaders/matmul.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MatmulParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub batch: u32,
    pub a_batch: u32,
    pub a_row: u32,
    pub a_col: u32,
    pub b_batch: u32,
    pub b_row: u32,
    pub b_col: u32,
    pub flags: u32,
    pub _pad: u32,
}

pub const FLAG_BIAS: u32 = 1;
pub const FLAG_ACCUMULATE: u32 = 2;
pub const FLAG_ROW_BIAS: u32 = 4;

const SIGNATURE: &[(u32, Access)] = &[(1, Access::Read), (2, Access::Read), (3, Access::Read), (4, Access::ReadWrite)];
/// The library's register-blocked kernel.
pub const MATMUL: KernelSpec = KernelSpec::new("matmul", "matmul", SIGNATURE);
/// One output per invocation: the benchmark baseline.
pub const MATMUL_NAIVE: KernelSpec = KernelSpec::new("matmul_naive", "matmul", SIGNATURE);

/// Which matmul kernel to launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    Tiled,
    Naive,
}

impl MatmulKernel {
    pub const ALL: [MatmulKernel; 2] = [MatmulKernel::Naive, MatmulKernel::Tiled];
    pub fn name(self) -> &'static str {
        match self {
            MatmulKernel::Tiled => "tiled",
            MatmulKernel::Naive => "naive",
        }
    }
}

/// How A and B are read and C written.
#[derive(Clone, Copy, Debug, Default)]
pub struct MatmulOptions {
    /// A is stored (batch, K, M): use Aᵀ.
    pub trans_a: bool,
    /// B is stored (batch, N, K): use Bᵀ.
    pub trans_b: bool,
    /// Add the product to C instead of overwriting it.
    pub accumulate: bool,
    /// The bias has M elements, one per row of C (a 1x1 convolution's channels), instead of N.
    pub bias_per_row: bool,
}

fn split_batch(t: &Tensor) -> Result<(usize, usize, usize)> {
    match *t.shape() {
        [r, c] => Ok((1, r, c)),
        [b, r, c] => Ok((b, r, c)),
        _ => Err(Error::shape("matmul", format!("'{}' has shape {:?}; expected 2 or 3 dims", t.label(), t.shape()))),
    }
}

/// The kernel parameters and grid for `c = op(a)·op(b) (+ bias)`, after checking every shape.
pub fn matmul_params(
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
    opts: MatmulOptions,
) -> Result<MatmulParams> {
    let (ab, ar, ac) = split_batch(a)?;
    let (bb, br, bc) = split_batch(b)?;
    let (cb, cm, cn) = split_batch(c)?;
    let (m, ka) = if opts.trans_a { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if opts.trans_b { (bc, br) } else { (br, bc) };
    let shapes = || {
        format!(
            "A {:?}{}, B {:?}{}, C {:?}",
            a.shape(),
            if opts.trans_a { "ᵀ" } else { "" },
            b.shape(),
            if opts.trans_b { "ᵀ" } else { "" },
            c.shape()
        )
    };
    if ka != kb {
        return Err(Error::shape("matmul", format!("inner dimensions differ ({ka} vs {kb}): {}", shapes())));
    }
    if cm != m || cn != n {
        return Err(Error::shape("matmul", format!("C must be ({m}, {n}): {}", shapes())));
    }
    let batch = cb;
    for (name, tb) in [("A", ab), ("B", bb)] {
        if tb != batch && tb != 1 {
            return Err(Error::shape("matmul", format!("{name} has batch {tb}, C has {batch}: {}", shapes())));
        }
    }
    if let Some(bias) = bias {
        let (want, axis) = if opts.bias_per_row { (m, "M") } else { (n, "N") };
        if bias.numel() != want {
            return Err(Error::shape(
                "matmul bias",
                format!("bias {:?} must have {axis} = {want} elements", bias.shape()),
            ));
        }
    }
    let mut p = MatmulParams {
        m: dim(m, "M")?,
        n: dim(n, "N")?,
        k: dim(ka, "K")?,
        batch: dim(batch, "batch")?,
        a_batch: if ab == 1 { 0 } else { dim(ar * ac, "A batch stride")? },
        b_batch: if bb == 1 { 0 } else { dim(br * bc, "B batch stride")? },
        ..Default::default()
    };
    (p.a_row, p.a_col) = if opts.trans_a { (1, dim(ac, "M")?) } else { (dim(ac, "K")?, 1) };
    (p.b_row, p.b_col) = if opts.trans_b { (1, dim(bc, "K")?) } else { (dim(bc, "N")?, 1) };
    p.flags = match (bias.is_some(), opts.bias_per_row) {
        (false, _) => 0,
        (true, false) => FLAG_BIAS,
        (true, true) => FLAG_ROW_BIAS,
    } | if opts.accumulate { FLAG_ACCUMULATE } else { 0 };
    Ok(p)
}

/// Grid for `kernel` over an M x N x batch problem.
pub fn matmul_grid(kernel: MatmulKernel, p: &MatmulParams) -> [u32; 3] {
    match kernel {
        MatmulKernel::Tiled => [p.n.div_ceil(512), p.m.div_ceil(16), p.batch],
        MatmulKernel::Naive => [p.n.div_ceil(16), p.m.div_ceil(16), p.batch],
    }
}

/// `c = op(a)·op(b) (+ bias) (+ c)`: a (M, K) or (batch, M, K) (transposed: (K, M)), b (K, N) (transposed:
/// (N, K)), bias (N), c (M, N) or (batch, M, N). A 2-D operand with a 3-D C is shared by every batch.
pub fn matmul(
    gpu: &Gpu,
    kernel: MatmulKernel,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
    opts: MatmulOptions,
    label: &str,
) -> Result<Dispatch> {
    let p = matmul_params(a, b, bias, c, opts)?;
    let spec = match kernel {
        MatmulKernel::Tiled => &MATMUL,
        MatmulKernel::Naive => &MATMUL_NAIVE,
    };
    if let Some(bias) = bias.filter(|t| t.dtype() != crate::gpu::DType::F32) {
        return Err(crate::Error::Invalid(format!(
            "matmul '{label}': the bias '{}' is {:?}, expected f32 (a parameter)",
            bias.label(),
            bias.dtype()
        )));
    }
    // Without a bias the binding still needs a buffer: A is bound again (read-only, never read).
    let bias = bias.unwrap_or(a);
    let flops = 2 * p.m as u64 * p.n as u64 * p.k as u64 * p.batch.max(1) as u64;
    let grid = matmul_grid(kernel, &p);
    Ok(super::dispatch_to(gpu, spec, &[a, b], c, bytemuck::bytes_of(&p), &[a, b, bias, c], grid, label)?
        .with_flops(flops))
}
