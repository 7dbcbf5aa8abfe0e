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

/// The workgroup-memory kernel; each [`MatmulKernel`] `Shared*` is it with its tile constants.
pub const MATMUL_SHARED: KernelSpec = KernelSpec::new("matmul_shared", "matmul", SIGNATURE);

/// The workgroup-memory kernel with a fixed 128 x 128 tile, its register block and staged slabs in named
/// registers ([`MatmulKernel::Staged128`]).
pub const MATMUL_STAGED: KernelSpec = KernelSpec::new("matmul_staged", "matmul", SIGNATURE);

/// Which matmul kernel to launch. `Auto` is the autotuner's choice for the problem on this device (see
/// [`crate::tune`]); the others are the variants it chooses among.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulKernel {
    Auto,
    /// Register-blocked, no workgroup memory: 16 x 512 tiles of 64 invocations (the software driver's winner).
    Tiled,
    /// Workgroup-memory tiles: 32 x 32 (64 invocations, 4 x 4 each; small GPUs and small problems).
    Shared32,
    /// 64 x 64 (256 invocations, 4 x 4 each).
    Shared64,
    /// 128 x 128 (256 invocations, 8 x 8 each, K in steps of 8; big GPUs, big problems).
    Shared128,
    /// 128 x 128 as `Shared128`, but its block and the next slab's values in named registers (no array a
    /// compiler might leave in memory), rows padded against bank conflicts, the loads overlapping the products.
    Staged128,
    /// One output per invocation: the benchmark baseline, never chosen.
    Naive,
}

impl MatmulKernel {
    /// Every concrete kernel, baseline first.
    pub const ALL: [MatmulKernel; 6] = [
        MatmulKernel::Naive,
        MatmulKernel::Tiled,
        MatmulKernel::Shared32,
        MatmulKernel::Shared64,
        MatmulKernel::Shared128,
        MatmulKernel::Staged128,
    ];
    /// What the autotuner times: every kernel but the baseline.
    pub const CANDIDATES: [MatmulKernel; 5] = [
        MatmulKernel::Tiled,
        MatmulKernel::Shared32,
        MatmulKernel::Shared64,
        MatmulKernel::Shared128,
        MatmulKernel::Staged128,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MatmulKernel::Auto => "auto",
            MatmulKernel::Tiled => "tiled",
            MatmulKernel::Shared32 => "shared32",
            MatmulKernel::Shared64 => "shared64",
            MatmulKernel::Shared128 => "shared128",
            MatmulKernel::Staged128 => "staged128",
            MatmulKernel::Naive => "naive",
        }
    }

    /// The kernel of a name (`auto` included).
    pub fn from_name(name: &str) -> Option<MatmulKernel> {
        std::iter::once(MatmulKernel::Auto).chain(MatmulKernel::ALL).find(|k| k.name() == name)
    }

    /// (rows, columns) of C a workgroup covers.
    pub fn tile(self) -> (u32, u32) {
        match self {
            MatmulKernel::Tiled => (16, 512),
            MatmulKernel::Shared32 => (32, 32),
            MatmulKernel::Shared64 => (64, 64),
            MatmulKernel::Shared128 | MatmulKernel::Staged128 => (128, 128),
            MatmulKernel::Naive | MatmulKernel::Auto => (16, 16),
        }
    }

    /// The workgroup-memory kernel's constants (SH_WX, SH_WY, SH_TM, SH_TN, SH_BK; see shaders/matmul.wgsl).
    pub fn shared_constants(self) -> Option<&'static [(&'static str, f64)]> {
        const SHARED32: &[(&str, f64)] =
            &[("SH_WX", 8.0), ("SH_WY", 8.0), ("SH_TM", 4.0), ("SH_TN", 4.0), ("SH_BK", 16.0)];
        const SHARED64: &[(&str, f64)] =
            &[("SH_WX", 16.0), ("SH_WY", 16.0), ("SH_TM", 4.0), ("SH_TN", 4.0), ("SH_BK", 16.0)];
        const SHARED128: &[(&str, f64)] =
            &[("SH_WX", 16.0), ("SH_WY", 16.0), ("SH_TM", 8.0), ("SH_TN", 8.0), ("SH_BK", 8.0)];
        match self {
            MatmulKernel::Shared32 => Some(SHARED32),
            MatmulKernel::Shared64 => Some(SHARED64),
            MatmulKernel::Shared128 => Some(SHARED128),
            _ => None,
        }
    }

    /// The pipeline for a problem with these epilogue flags: the register-blocked kernels have one per flag set
    /// (`EPILOGUE`, so that their inlined stores compile without the flag branches), the others read the flags.
    fn spec(self, flags: u32) -> KernelSpec {
        // Pipeline constants must be 'static: one table entry per flag set (bias 1, accumulate 2, row bias 4).
        const EPILOGUES: [&[(&str, f64)]; 8] = [
            &[("EPILOGUE", 0.0)],
            &[("EPILOGUE", 1.0)],
            &[("EPILOGUE", 2.0)],
            &[("EPILOGUE", 3.0)],
            &[("EPILOGUE", 4.0)],
            &[("EPILOGUE", 5.0)],
            &[("EPILOGUE", 6.0)],
            &[("EPILOGUE", 7.0)],
        ];
        match (self, self.shared_constants()) {
            (_, Some(constants)) => MATMUL_SHARED.with_constants(constants),
            (MatmulKernel::Naive, None) => MATMUL_NAIVE,
            (MatmulKernel::Staged128, None) => MATMUL_STAGED.with_constants(EPILOGUES[(flags & 7) as usize]),
            _ => MATMUL.with_constants(EPILOGUES[(flags & 7) as usize]),
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
    let (rows, cols) = kernel.tile();
    [p.n.div_ceil(cols), p.m.div_ceil(rows), p.batch]
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
    if let Some(bias) = bias.filter(|t| t.dtype() != crate::gpu::DType::F32) {
        return Err(crate::Error::Invalid(format!(
            "matmul '{label}': the bias '{}' is {:?}, expected f32 (a parameter)",
            bias.label(),
            bias.dtype()
        )));
    }
    let kernel = resolve_params(gpu, kernel, &p, (a, b, c), label)?;
    launch(gpu, kernel, &p, (a, b, c), bias, label)
}

/// The concrete kernel `matmul` runs for `kernel` on these operands: `Auto` asks the autotuner.
pub fn resolve(
    gpu: &Gpu,
    kernel: MatmulKernel,
    (a, b, c): (&Tensor, &Tensor, &Tensor),
    opts: MatmulOptions,
    label: &str,
) -> Result<MatmulKernel> {
    resolve_params(gpu, kernel, &matmul_params(a, b, None, c, opts)?, (a, b, c), label)
}

fn resolve_params(
    gpu: &Gpu,
    kernel: MatmulKernel,
    p: &MatmulParams,
    operands: (&Tensor, &Tensor, &Tensor),
    label: &str,
) -> Result<MatmulKernel> {
    match kernel {
        MatmulKernel::Auto => tuned(gpu, p, operands, label),
        k => Ok(k),
    }
}

fn launch(
    gpu: &Gpu,
    kernel: MatmulKernel,
    p: &MatmulParams,
    (a, b, c): (&Tensor, &Tensor, &Tensor),
    bias: Option<&Tensor>,
    label: &str,
) -> Result<Dispatch> {
    // Without a bias the binding still needs a buffer: A is bound again (read-only, never read).
    let bias = bias.unwrap_or(a);
    let flops = 2 * p.m as u64 * p.n as u64 * p.k as u64 * p.batch.max(1) as u64;
    let grid = matmul_grid(kernel, p);
    let spec = kernel.spec(p.flags);
    Ok(super::dispatch_to(gpu, &spec, &[a, b], c, bytemuck::bytes_of(p), &[a, b, bias, c], grid, label)?
        .with_flops(flops))
}

/// Split-K for products with few outputs and a long reduction (a linear layer's weight gradient dW = dYᵀ·X sums
/// over every token of the batch: ViT-S's 384 x 1536 outputs over 6,304 tokens fill a few hundred workgroups of a
/// GPU that runs tens of thousands): the reduction is cut into `splits` equal parts computed as one batched product
/// into a scratch tensor of partial sums (splits, M, N), f32, which one fixed-order sum then reduces into C
/// (deterministic). Each part is the product of K/splits rows of op(A) and op(B), which the batch strides address
/// in place: no copies and no kernel of its own.
///
/// How many splits a problem gets on this adapter: 1 (no split) on a software adapter, for a batched product or one
/// with a bias; else enough that the parts hold about 2^23 outputs together, the split count a divisor of K (parts
/// of equal length, each at least [`MIN_SPLIT_K`] long) and the partial sums within 64 MiB.
pub fn split_k(gpu: &Gpu, m: usize, n: usize, k: usize, batch: usize, bias: bool) -> usize {
    if gpu.is_software() || batch != 1 || bias {
        return 1;
    }
    split_k_count(m, n, k)
}

/// [`split_k`]'s count for an unbatched M x N x K product on a GPU.
pub fn split_k_count(m: usize, n: usize, k: usize) -> usize {
    let want = (1usize << 23).div_ceil(m * n).min(((64usize << 20) / (4 * m * n)).max(1));
    if want <= 1 {
        return 1;
    }
    let mut divisors = (1..=k / MIN_SPLIT_K).filter(|d| k.is_multiple_of(*d));
    // The divisor nearest the wish from above (within 2x), else the largest below it.
    divisors.clone().find(|&d| d >= want && d <= 2 * want).or_else(|| divisors.rfind(|&d| d <= want)).unwrap_or(1)
}

/// The fewest reduction steps one part of a split-K product sums.
pub const MIN_SPLIT_K: usize = 64;

/// The scratch tensor [`matmul_split_k`] needs for an M x N x K product on this adapter (see [`split_k`]):
/// (splits, M, N) f32, or `None` when it does not split.
pub fn split_k_scratch(gpu: &Gpu, m: usize, n: usize, k: usize) -> Option<Vec<usize>> {
    let splits = split_k(gpu, m, n, k, 1, false);
    (splits > 1).then(|| vec![splits, m, n])
}

/// `c = op(a)·op(b) (+ c)` (no bias, no batch) with the reduction split as `partials` says: `None` is a plain
/// [`matmul`]; a (splits, M, N) f32 tensor (shaped as [`split_k_scratch`] asks, or for any divisor of K) takes the
/// product in parts and sums them into C.
#[allow(clippy::too_many_arguments)]
pub fn matmul_split_k(
    gpu: &Gpu,
    kernel: MatmulKernel,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    opts: MatmulOptions,
    partials: Option<&Tensor>,
    label: &str,
) -> Result<Vec<Dispatch>> {
    let Some(partials) = partials else {
        return Ok(vec![matmul(gpu, kernel, a, b, None, c, opts, label)?]);
    };
    let p = matmul_params(a, b, None, c, opts)?;
    let splits = partials.shape().first().copied().unwrap_or(0);
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    if p.batch != 1 || splits == 0 || k % splits != 0 || partials.shape() != [splits, m, n] {
        return Err(Error::shape(
            format!("matmul split-K '{label}'"),
            format!(
                "partial sums {:?} must be (splits, {m}, {n}) with splits dividing K = {k}, for an unbatched product \
                 (batch {})",
                partials.shape(),
                p.batch
            ),
        ));
    }
    if partials.dtype() != crate::gpu::DType::F32 {
        return Err(Error::Invalid(format!("matmul split-K '{label}': '{}' must be f32", partials.label())));
    }
    // Part s reads rows [s * len, (s + 1) * len) of op(A)'s columns and op(B)'s rows: batch strides of len steps.
    let len = (k / splits) as u32;
    let parts = MatmulParams {
        k: len,
        batch: dim(splits, "splits")?,
        a_batch: len * p.a_col,
        b_batch: len * p.b_row,
        flags: 0,
        ..p
    };
    let kernel = resolve_params(gpu, kernel, &parts, (a, b, partials), label)?;
    let product = launch(gpu, kernel, &parts, (a, b, partials), None, label)?;
    let sum = super::reduce::sum_reduce(
        gpu,
        partials,
        c,
        (splits, m * n, 1),
        opts.accumulate,
        &format!("{label} split sum"),
    )?;
    Ok(vec![product, sum])
}

/// The kernel a device runs for a problem when nothing was measured (no timestamp queries, or the tuning budget
/// spent): the register-blocked one, except on a GPU for products with fewer than 64 rows or columns, where the
/// 32 x 32 workgroup-memory tile gives more workgroups. What the autotuner measured on an NVIDIA H200
/// (BENCHMARKS.md): `tiled` 20 TFLOP/s at 4096^3 against 2-3 for the `shared*` tiles, `shared32` faster only on
/// small outputs; on the software driver `tiled` wins everywhere.
pub fn default_kernel(gpu: &Gpu, p: &MatmulParams) -> MatmulKernel {
    if gpu.is_software() || p.m.min(p.n) >= 64 {
        MatmulKernel::Tiled
    } else {
        MatmulKernel::Shared32
    }
}

/// The autotuner's kernel for the problem (see [`crate::tune`]): keyed by its sizes, the operands' layouts and
/// storage types; timed on scratch tensors of the operands' shapes (never the real ones, which may hold a
/// gradient being accumulated), without bias or accumulation.
fn tuned(gpu: &Gpu, p: &MatmulParams, (a, b, c): (&Tensor, &Tensor, &Tensor), label: &str) -> Result<MatmulKernel> {
    let layout = |unit_col: bool| if unit_col { "n" } else { "t" };
    let key = format!(
        "matmul {}x{}x{} batch {} {}{} {:?}.{:?}>{:?}",
        p.m,
        p.n,
        p.k,
        p.batch,
        layout(p.a_col == 1),
        layout(p.b_col == 1),
        a.dtype(),
        b.dtype(),
        c.dtype()
    );
    let flops = 2 * p.m as u64 * p.n as u64 * p.k as u64 * p.batch.max(1) as u64;
    let bare = MatmulParams { flags: 0, ..*p };
    let mut scratch: Option<[Tensor; 3]> = None;
    crate::tune::choose(
        gpu,
        &key,
        &MatmulKernel::CANDIDATES,
        MatmulKernel::name,
        default_kernel(gpu, p),
        flops,
        |k, runs| {
            if scratch.is_none() {
                scratch = Some(crate::tune::scratch_like(gpu, [(a, "A"), (b, "B"), (c, "C")], label)?);
            }
            let [sa, sb, sc] = scratch.as_ref().expect("made above");
            let d = launch(gpu, k, &bare, (sa, sb, sc), None, &format!("autotune {} {key}", k.name()))?;
            crate::bench::time_min_ms(gpu, &d, runs)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::MatmulKernel;

    /// Every workgroup-memory configuration fits the kernel's arrays and WebGPU's default limits, and its tile is
    /// what the grid assumes.
    #[test]
    fn shared_configurations_fit_the_kernel() {
        for k in MatmulKernel::ALL {
            let Some(c) = k.shared_constants() else { continue };
            let get = |n: &str| c.iter().find(|(name, _)| *name == n).expect("every constant set").1 as u32;
            let (wx, wy, tm, tn, bk) = (get("SH_WX"), get("SH_WY"), get("SH_TM"), get("SH_TN"), get("SH_BK"));
            assert!(tm <= 8 && (tn == 4 || tn == 8), "{k:?}: register block {tm} x {tn}");
            assert!(bk * (wy * tm + 1) <= 1040 && bk * wx * tn / 4 <= 256, "{k:?}: tiles exceed the arrays");
            assert!(wx * wy <= 256, "{k:?}: {} invocations, WebGPU's default limit is 256", wx * wy);
            assert_eq!(k.tile(), (wy * tm, wx * tn), "{k:?}");
        }
    }

    /// Split-K's counts: ViT-S's weight gradients over 6,304 tokens (2^5 x 197) get the divisor at or just above
    /// 2^23 outputs in all; products with many outputs, a short K or a prime K stay whole; the partial sums stay
    /// within 64 MiB.
    #[test]
    fn split_k_counts() {
        use super::split_k_count;
        assert_eq!(split_k_count(384, 1536, 6304), 16); // wants 15
        assert_eq!(split_k_count(1152, 384, 6304), 32); // wants 19
        assert_eq!(split_k_count(384, 384, 6304), 32); // wants 57: no divisor in 57..=114
        assert_eq!(split_k_count(4096, 4096, 4096), 1);
        assert_eq!(split_k_count(512, 2560, 32), 1);
        assert_eq!(split_k_count(100, 100, 7919), 1); // prime
        assert_eq!(split_k_count(10, 10, 1 << 20), 16384); // parts of 64, the shortest
        for (m, n, k) in [(384, 1536, 6304), (10, 10, 1 << 20), (3, 5, 64 * 1024)] {
            let s = split_k_count(m, n, k);
            assert!(k % s == 0 && k / s >= super::MIN_SPLIT_K && s * m * n * 4 <= 64 << 20, "{m}x{n}x{k}: {s}");
        }
    }
}
