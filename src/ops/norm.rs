//! Batch normalization over channels of (N, C, H, W) or (N, C) tensors, training and eval. See shaders/norm.wgsl.

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, Gpu, KernelSpec, Tensor};

use super::dim;

/// Mirrors `NormParams` in shaders/norm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NormParams {
    pub batch: u32,
    pub channels: u32,
    pub hw: u32,
    pub flags: u32,
    pub eps: f32,
    pub momentum: f32,
    /// [`NormSchedule::Chunked`]: elements of a channel per chunk.
    pub chunk_len: u32,
    pub _pad: u32,
}

pub const FLAG_ACCUMULATE: u32 = 1;
pub const FLAG_EVAL: u32 = 2;
pub const FLAG_RELU: u32 = 4;
pub const FLAG_RELU6: u32 = 8;
pub const FLAG_RESIDUAL: u32 = 16;
pub const FLAG_ACCUMULATE_RESIDUAL: u32 = 32;

use Access::{Read as R, ReadWrite as W};
pub const BATCH_NORM_STATISTICS: KernelSpec =
    KernelSpec::new("batch_norm_statistics", "norm", &[(1, R), (10, W), (11, W), (12, W), (13, W)]);
pub const BATCH_NORM_STATISTICS_ROWS: KernelSpec =
    KernelSpec::new("batch_norm_statistics_rows", "norm", &[(1, R), (10, W), (11, W), (12, W), (13, W)]);
pub const BATCH_NORM_BACKWARD_REDUCE_ROWS: KernelSpec = KernelSpec::new(
    "batch_norm_backward_reduce_rows",
    "norm",
    &[(1, R), (2, W), (3, R), (4, R), (5, R), (6, R), (10, W), (11, W)],
);
pub const BATCH_NORM_FORWARD: KernelSpec =
    KernelSpec::new("batch_norm_forward", "norm", &[(1, R), (3, R), (4, R), (5, R), (6, R), (9, W), (14, R)]);
pub const BATCH_NORM_BACKWARD_REDUCE: KernelSpec = KernelSpec::new(
    "batch_norm_backward_reduce",
    "norm",
    &[(1, R), (2, W), (3, R), (4, R), (5, R), (6, R), (10, W), (11, W)],
);
pub const BATCH_NORM_BACKWARD_DATA: KernelSpec = KernelSpec::new(
    "batch_norm_backward_data",
    "norm",
    &[(1, R), (2, W), (3, R), (4, R), (5, R), (7, R), (8, R), (9, W)],
);

pub const BATCH_NORM_STATISTICS_CHUNKS: KernelSpec =
    KernelSpec::new("batch_norm_statistics_chunks", "norm", &[(1, R), (16, W)]);
pub const BATCH_NORM_STATISTICS_COMBINE: KernelSpec =
    KernelSpec::new("batch_norm_statistics_combine", "norm", &[(10, W), (11, W), (12, W), (13, W), (16, W)]);
pub const BATCH_NORM_BACKWARD_REDUCE_CHUNKS: KernelSpec = KernelSpec::new(
    "batch_norm_backward_reduce_chunks",
    "norm",
    &[(1, R), (2, W), (3, R), (4, R), (5, R), (6, R), (16, W)],
);
pub const BATCH_NORM_BACKWARD_COMBINE: KernelSpec =
    KernelSpec::new("batch_norm_backward_combine", "norm", &[(10, W), (11, W), (16, W)]);

pub const BATCH_NORM_FORWARD_SINGLE: KernelSpec = KernelSpec::new(
    "batch_norm_forward_single",
    "norm",
    &[(1, R), (5, R), (6, R), (9, W), (10, W), (11, W), (12, W), (13, W), (14, R)],
);
pub const BATCH_NORM_FORWARD_SINGLE_ROWS: KernelSpec =
    KernelSpec { entry: "batch_norm_forward_single_rows", ..BATCH_NORM_FORWARD_SINGLE };
pub const BATCH_NORM_BACKWARD_SINGLE: KernelSpec = KernelSpec::new(
    "batch_norm_backward_single",
    "norm",
    &[(1, R), (2, W), (3, R), (4, R), (5, R), (6, R), (9, W), (10, W), (11, W)],
);
pub const BATCH_NORM_BACKWARD_SINGLE_ROWS: KernelSpec =
    KernelSpec { entry: "batch_norm_backward_single_rows", ..BATCH_NORM_BACKWARD_SINGLE };
pub const BATCH_NORM_BACKWARD_SINGLE_RESIDUAL: KernelSpec = KernelSpec::new(
    "batch_norm_backward_single_residual",
    "norm",
    &[(1, R), (2, W), (3, R), (4, R), (5, R), (6, R), (9, W), (10, W), (11, W), (15, W)],
);
pub const BATCH_NORM_BACKWARD_SINGLE_RESIDUAL_ROWS: KernelSpec =
    KernelSpec { entry: "batch_norm_backward_single_residual_rows", ..BATCH_NORM_BACKWARD_SINGLE_RESIDUAL };

/// Storage buffers the single-dispatch kernels bind (one more than WebGPU's default limit).
pub const SINGLE_STORAGE_BUFFERS: u32 = 9;
/// ... and the single backward that also writes a fused residual's gradient.
pub const SINGLE_RESIDUAL_STORAGE_BUFFERS: u32 = 10;

/// Per-channel elements up to which [`NormSchedule::Auto`] takes the single-dispatch schedule on a GPU: 64 per
/// invocation of a channel's workgroup. Longer channels (a big batch's stem, 32 channels of 64 x 112 x 112) would
/// leave most of a big GPU idle in the elementwise part, which the split schedule spreads over the whole tensor.
pub const SINGLE_UP_TO: usize = 16384;

/// Elements of a channel per chunk of [`NormSchedule::Auto`]'s chunked schedule: 16 per invocation of a chunk's
/// workgroup (64 x 112 x 112 values of a channel are 196 chunks).
pub const CHUNK_LEN: usize = 4096;

/// How a training batch norm is scheduled (see shaders/norm.wgsl): the same values every way, to rounding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NormSchedule {
    /// [`NormSchedule::Single`] where the device binds 9 storage buffers and either it is a CPU (its few threads
    /// are busy with any grid) or each channel holds at most [`SINGLE_UP_TO`] elements; else chunked (chunks of
    /// [`CHUNK_LEN`]) on a GPU, split on a CPU.
    #[default]
    Auto,
    /// Forward and backward one dispatch each: a channel's workgroup sums it and then writes its y or dx.
    Single,
    /// Statistics / sums by channel, then the elementwise pass over the whole tensor: 2 dispatches each.
    Split,
    /// As split, with each channel's sums in two stages: a workgroup per chunk of `len` elements of a channel, then
    /// the chunks combined per channel (3 dispatches each way, and a (C, chunks, 2) scratch tensor).
    Chunked { len: usize },
}

impl NormSchedule {
    /// The schedule a layer of `per_channel` elements (N * H * W) runs with on `gpu`. An explicit `Single` on a
    /// device that cannot bind 9 storage buffers is an error naming the layer.
    pub fn resolve(self, gpu: &Gpu, per_channel: usize, label: &str) -> Result<NormSchedule> {
        let can = gpu.limits().max_storage_buffers_per_shader_stage >= SINGLE_STORAGE_BUFFERS;
        Ok(match self {
            NormSchedule::Split => NormSchedule::Split,
            NormSchedule::Single if can => NormSchedule::Single,
            NormSchedule::Single => {
                return Err(Error::Invalid(format!(
                    "'{label}': the single-dispatch batch norm binds {SINGLE_STORAGE_BUFFERS} storage buffers; \
                     this device allows {}",
                    gpu.limits().max_storage_buffers_per_shader_stage
                )))
            }
            NormSchedule::Chunked { len: 0 } => {
                return Err(Error::Invalid(format!("'{label}': a chunked batch norm needs chunks of at least 1")))
            }
            NormSchedule::Chunked { len } => NormSchedule::Chunked { len: chunk_len(len, per_channel) },
            NormSchedule::Auto if can && (gpu.is_software() || per_channel <= SINGLE_UP_TO) => NormSchedule::Single,
            NormSchedule::Auto if gpu.is_software() => NormSchedule::Split,
            NormSchedule::Auto => NormSchedule::Chunked { len: chunk_len(CHUNK_LEN, per_channel) },
        })
    }

    /// The scratch tensor a layer of this schedule needs, for `channels` channels of `per_channel` elements: the
    /// chunked schedule's per-chunk partial sums (C, chunks, 2), f32; `None` for the others.
    pub fn scratch(self, gpu: &Gpu, channels: usize, per_channel: usize) -> Result<Option<Vec<usize>>> {
        Ok(match self.resolve(gpu, per_channel, "batch norm")? {
            NormSchedule::Chunked { len } => Some(vec![channels, per_channel.div_ceil(len), 2]),
            _ => None,
        })
    }
}

/// A chunk length of at least `len` that keeps the chunks within a grid dimension (65,535).
fn chunk_len(len: usize, per_channel: usize) -> usize {
    len.max(per_channel.div_ceil(65535)).min(per_channel.max(1))
}

/// An activation applied to batch norm's output in the same pass (timm's BatchNormAct2d): the normalized value
/// never goes to memory, and backward masks dy by the activation's derivative (in place: see shaders/norm.wgsl),
/// recomputing the normalized value from x and the statistics it reads anyway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NormAct {
    #[default]
    None,
    /// max(v, 0); backward passes dy where v > 0.
    Relu,
    /// min(max(v, 0), 6); backward passes dy where 0 < v < 6.
    Relu6,
}

impl NormAct {
    fn flag(self) -> u32 {
        match self {
            NormAct::None => 0,
            NormAct::Relu => FLAG_RELU,
            NormAct::Relu6 => FLAG_RELU6,
        }
    }

    /// The activation of a normalized value (the reference's, in f64).
    pub fn apply(self, v: f64) -> f64 {
        match self {
            NormAct::None => v,
            NormAct::Relu => v.max(0.0),
            NormAct::Relu6 => v.clamp(0.0, 6.0),
        }
    }

    /// Whether the activation passes a gradient (its derivative, 0 or 1, with 0 at the kinks as PyTorch's ReLU and
    /// hardtanh), given its input or equally its output: both are strictly inside the linear range together.
    pub fn passes(self, v: f64) -> bool {
        match self {
            NormAct::None => true,
            NormAct::Relu => v > 0.0,
            NormAct::Relu6 => v > 0.0 && v < 6.0,
        }
    }
}

/// eps and momentum; defaults are PyTorch's (torchvision weights). EfficientNet-Lite's TF weights use eps 1e-3.
/// `act`: an activation fused into the layer (none from the graph builder; the executor fuses a ReLU or ReLU6 that
/// alone reads a batch norm's output, see [`crate::graph::Graph::fuse_norm_activations`]). `schedule`: how
/// training runs on the device (the same values every way).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    pub eps: f32,
    pub momentum: f32,
    pub act: NormAct,
    pub schedule: NormSchedule,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig { eps: 1e-5, momentum: 0.1, act: NormAct::None, schedule: NormSchedule::Auto }
    }
}

/// The per-channel tensors of a batch-norm layer, and the chunked schedule's scratch (shaped as
/// [`NormSchedule::scratch`] says; `None` for the other schedules).
pub struct BatchNormState<'a> {
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub running_mean: &'a Tensor,
    pub running_var: &'a Tensor,
    pub partials: Option<&'a Tensor>,
}

/// The chunked schedule's grid and scratch for a layer: `partials` checked to be (C, chunks, 2) f32.
fn chunked<'a>(p: &mut NormParams, len: usize, partials: Option<&'a Tensor>, label: &str) -> Result<(&'a Tensor, u32)> {
    let chunks = ((p.batch * p.hw) as usize).div_ceil(len);
    let want = [p.channels as usize, chunks, 2];
    match partials {
        Some(t) if t.shape() == want && t.dtype() == crate::gpu::DType::F32 => {
            p.chunk_len = dim(len, "chunk length")?;
            Ok((t, dim(chunks, "chunks")?))
        }
        t => Err(Error::shape(
            format!("batch norm '{label}'"),
            format!("the chunked schedule needs an f32 scratch tensor {want:?}; given {:?}", t.map(|t| t.shape())),
        )),
    }
}

/// A per-channel reduction: a workgroup per channel for long channels, an invocation per channel for short ones.
fn per_channel<'a>(p: &NormParams, wide: &'a KernelSpec, rows: &'a KernelSpec) -> (&'a KernelSpec, [u32; 3]) {
    if ((p.batch * p.hw) as usize) < super::reduce::ROWS_BELOW {
        (rows, [p.channels.div_ceil(256), 1, 1])
    } else {
        (wide, [p.channels, 1, 1])
    }
}

/// One invocation per element of the (N, C, HW) tensor.
fn elements_grid(gpu: &Gpu, p: &NormParams) -> [u32; 3] {
    super::flat_grid(gpu, (p.batch * p.channels * p.hw) as usize)
}

/// (N, C, HW) of x, with every per-channel tensor checked to hold C.
fn geometry(x: &Tensor, per_channel: &[&Tensor]) -> Result<(usize, usize, usize)> {
    let (n, c, hw) = match x.shape() {
        [n, c] => (*n, *c, 1),
        [n, c, h, w] => (*n, *c, h * w),
        s => return Err(Error::shape("batch_norm", format!("'{}' {s:?} must be (N, C) or (N, C, H, W)", x.label()))),
    };
    if let Some(t) = per_channel.iter().find(|t| t.numel() != c) {
        return Err(Error::shape("batch_norm", format!("'{}' {:?} must hold C = {c}", t.label(), t.shape())));
    }
    Ok((n, c, hw))
}

fn params(x: &Tensor, per_channel: &[&Tensor], cfg: BatchNormConfig, flags: u32) -> Result<NormParams> {
    let (n, c, hw) = geometry(x, per_channel)?;
    Ok(NormParams {
        batch: dim(n, "batch")?,
        channels: dim(c, "channels")?,
        hw: dim(hw, "H*W")?,
        flags: flags | cfg.act.flag(),
        eps: cfg.eps,
        momentum: cfg.momentum,
        chunk_len: 0,
        _pad: 0,
    })
}

/// Forward. Training (`save` = Some((save_mean, save_var))): batch statistics into `save`, running statistics
/// updated, y normalized with the batch statistics — one dispatch or two (`cfg.schedule`). Eval (`save` = None):
/// y normalized with the running statistics — one dispatch. y is `cfg.act` of the normalized value or, with
/// `residual` (and no activation: backward could not recompute the activation's input), bn(x) + residual (a skip
/// connection).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward(
    gpu: &Gpu,
    x: &Tensor,
    state: &BatchNormState,
    save: Option<(&Tensor, &Tensor)>,
    residual: Option<&Tensor>,
    y: &Tensor,
    cfg: BatchNormConfig,
    label: &str,
) -> Result<Vec<Dispatch>> {
    if y.shape() != x.shape() || residual.is_some_and(|r| r.shape() != x.shape()) {
        let r = residual.map(|r| format!(" and the residual {:?}", r.shape())).unwrap_or_default();
        return Err(Error::shape("batch_norm_forward", format!("y {:?}{r} must match x {:?}", y.shape(), x.shape())));
    }
    residual_without_act(cfg, residual.is_some(), label)?;
    let all = [state.gamma, state.beta, state.running_mean, state.running_var];
    let mut p = params(x, &all, cfg, if residual.is_some() { FLAG_RESIDUAL } else { 0 })?;
    let (mean, var) = save.unwrap_or((state.running_mean, state.running_var));
    // Without a residual the kernels' residual binding reads x (and nothing of it).
    let r = residual.unwrap_or(x);
    let mut steps = Vec::new();
    if save.is_some() {
        geometry(x, &[mean, var])?;
        let schedule = cfg.schedule.resolve(gpu, (p.batch * p.hw) as usize, label)?;
        if schedule == NormSchedule::Single {
            let (spec, grid) = per_channel(&p, &BATCH_NORM_FORWARD_SINGLE, &BATCH_NORM_FORWARD_SINGLE_ROWS);
            let tensors = [x, state.gamma, state.beta, y, mean, var, state.running_mean, state.running_var, r];
            return Ok(vec![super::dispatch_at(gpu, spec, &[x, r, y], bytemuck::bytes_of(&p), &tensors, grid, label)?]);
        }
        let stats = format!("{label} statistics");
        if let NormSchedule::Chunked { len } = schedule {
            let (partials, chunks) = chunked(&mut p, len, state.partials, label)?;
            let launch = |spec, tensors: &[&Tensor], grid| {
                super::dispatch_at(gpu, spec, &[x], bytemuck::bytes_of(&p), tensors, grid, &stats)
            };
            steps.push(launch(&BATCH_NORM_STATISTICS_CHUNKS, &[x, partials], [p.channels, chunks, 1])?);
            let tensors = [mean, var, state.running_mean, state.running_var, partials];
            steps.push(launch(&BATCH_NORM_STATISTICS_COMBINE, &tensors, [p.channels.div_ceil(256), 1, 1])?);
        } else {
            let (spec, grid) = per_channel(&p, &BATCH_NORM_STATISTICS, &BATCH_NORM_STATISTICS_ROWS);
            let tensors = [x, mean, var, state.running_mean, state.running_var];
            steps.push(super::dispatch_at(gpu, spec, &[x], bytemuck::bytes_of(&p), &tensors, grid, &stats)?);
        }
    }
    steps.push(super::dispatch_at(
        gpu,
        &BATCH_NORM_FORWARD,
        &[x, r, y],
        bytemuck::bytes_of(&p),
        &[x, mean, var, state.gamma, state.beta, y, r],
        elements_grid(gpu, &p),
        label,
    )?);
    Ok(steps)
}

/// A fused residual and a fused activation do not go together.
fn residual_without_act(cfg: BatchNormConfig, residual: bool, label: &str) -> Result<()> {
    if residual && cfg.act != NormAct::None {
        return Err(Error::Invalid(format!(
            "'{label}': batch norm fuses a residual add or an activation, not both ({:?} with a residual)",
            cfg.act
        )));
    }
    Ok(())
}

/// Where batch norm's backward writes: the parameters' gradients, x's (added to what it holds with
/// `accumulate_dx`) and, for a fused residual, the residual's (dy itself; added to what it holds with its flag).
pub struct BatchNormGrads<'a> {
    pub dgamma: &'a Tensor,
    pub dbeta: &'a Tensor,
    pub dx: &'a Tensor,
    pub accumulate_dx: bool,
    pub residual: Option<(&'a Tensor, bool)>,
    /// The chunked schedule's scratch (see [`BatchNormState::partials`]).
    pub partials: Option<&'a Tensor>,
}

/// Backward: dgamma, dbeta and dx. `stats` = (mean, var) used in forward: the saved batch statistics in training,
/// the running ones in eval (`eval` = true, where they are constants and dx = gamma * invstd * dy). With a fused
/// `cfg.act`, dy is the gradient of the activation's output, `params` = (gamma, beta) recompute its input, and dy
/// is masked in place (zero where the activation passes nothing): it must be a buffer nothing reads later. A fused
/// residual's gradient is dy. One dispatch or two (`cfg.schedule`), and the residual's copy unless the single
/// dispatch writes it too (where the device binds 10 storage buffers).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    gpu: &Gpu,
    dy: &Tensor,
    x: &Tensor,
    params: (&Tensor, &Tensor),
    stats: (&Tensor, &Tensor),
    eval: bool,
    grads: &BatchNormGrads,
    cfg: BatchNormConfig,
    label: &str,
) -> Result<Vec<Dispatch>> {
    let BatchNormGrads { dgamma, dbeta, dx, accumulate_dx, residual, partials } = *grads;
    let shapes_match = [dy, dx].iter().chain(residual.as_ref().map(|(r, _)| r)).all(|t| t.shape() == x.shape());
    if !shapes_match {
        return Err(Error::shape(
            "batch_norm_backward",
            format!(
                "dy {:?}, dx {:?} and the residual's gradient must match x {:?}",
                dy.shape(),
                dx.shape(),
                x.shape()
            ),
        ));
    }
    residual_without_act(cfg, residual.is_some(), label)?;
    let (mean, var) = stats;
    let (gamma, beta) = params;
    let flags = if eval { FLAG_EVAL } else { 0 } | if accumulate_dx { FLAG_ACCUMULATE } else { 0 };
    let mut p = self::params(x, &[gamma, beta, mean, var, dgamma, dbeta], cfg, flags)?;
    let schedule = cfg.schedule.resolve(gpu, (p.batch * p.hw) as usize, label)?;
    let single = schedule == NormSchedule::Single;
    let residual_in_kernel = single
        && residual.is_some()
        && gpu.limits().max_storage_buffers_per_shader_stage >= SINGLE_RESIDUAL_STORAGE_BUFFERS;
    if let (true, Some((dr, accumulate))) = (residual_in_kernel, residual) {
        let p = NormParams { flags: p.flags | if accumulate { FLAG_ACCUMULATE_RESIDUAL } else { 0 }, ..p };
        let (spec, grid) =
            per_channel(&p, &BATCH_NORM_BACKWARD_SINGLE_RESIDUAL, &BATCH_NORM_BACKWARD_SINGLE_RESIDUAL_ROWS);
        let tensors = [x, dy, mean, var, gamma, beta, dx, dgamma, dbeta, dr];
        return Ok(vec![super::dispatch_at(
            gpu,
            spec,
            &[x, dy, dx, dr],
            bytemuck::bytes_of(&p),
            &tensors,
            grid,
            label,
        )?]);
    }
    let mut steps = if single {
        let (spec, grid) = per_channel(&p, &BATCH_NORM_BACKWARD_SINGLE, &BATCH_NORM_BACKWARD_SINGLE_ROWS);
        let tensors = [x, dy, mean, var, gamma, beta, dx, dgamma, dbeta];
        vec![super::dispatch_at(gpu, spec, &[x, dy, dx], bytemuck::bytes_of(&p), &tensors, grid, label)?]
    } else {
        let mut reduce = Vec::new();
        let sums = format!("{label} reduce");
        if let NormSchedule::Chunked { len } = schedule {
            let (partials, chunks) = chunked(&mut p, len, partials, label)?;
            let launch = |spec, tensors: &[&Tensor], grid| {
                super::dispatch_at(gpu, spec, &[x, dy], bytemuck::bytes_of(&p), tensors, grid, &sums)
            };
            let tensors = [x, dy, mean, var, gamma, beta, partials];
            reduce.push(launch(&BATCH_NORM_BACKWARD_REDUCE_CHUNKS, &tensors, [p.channels, chunks, 1])?);
            let combine = [p.channels.div_ceil(256), 1, 1];
            reduce.push(launch(&BATCH_NORM_BACKWARD_COMBINE, &[dgamma, dbeta, partials], combine)?);
        } else {
            let (spec, grid) = per_channel(&p, &BATCH_NORM_BACKWARD_REDUCE, &BATCH_NORM_BACKWARD_REDUCE_ROWS);
            let tensors = [x, dy, mean, var, gamma, beta, dgamma, dbeta];
            reduce.push(super::dispatch_at(gpu, spec, &[x, dy], bytemuck::bytes_of(&p), &tensors, grid, &sums)?);
        }
        let data = super::dispatch_at(
            gpu,
            &BATCH_NORM_BACKWARD_DATA,
            &[x, dy, dx],
            bytemuck::bytes_of(&p),
            &[x, dy, mean, var, gamma, dgamma, dbeta, dx],
            elements_grid(gpu, &p),
            label,
        )?;
        reduce.push(data);
        reduce
    };
    if let Some((dr, accumulate)) = residual {
        let copy = super::elementwise::Elementwise::Scale;
        steps.push(super::elementwise::elementwise(
            gpu,
            copy,
            dy,
            None,
            dr,
            1.0,
            accumulate,
            &format!("{label} residual"),
        )?);
    }
    Ok(steps)
}
