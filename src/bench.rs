//! Measurements behind `wgtune bench`: each returns records that print as a table or as JSON lines.

use std::sync::Arc;

use serde::Serialize;

use crate::clock::Instant;
use crate::error::Result;
use crate::gpu::{Clock, Gpu};
use crate::graph::executor::{Executor, ExecutorConfig};
use crate::graph::{Graph, TensorKind};
use crate::nn::Arch;
use crate::ops::conv::{Conv2dConfig, Padding};
use crate::ops::norm::BatchNormConfig;
use crate::reference::SplitMix;
// The kernel and inference benchmarks block on the GPU: native only. In a browser, the training step
// ([`bench_step`]) is what the page measures.
#[cfg(not(target_arch = "wasm32"))]
use crate::{
    gpu::{DType, Dispatch},
    nn::model::ModelSpec,
    ops::conv::{
        conv2d_backward_data, conv2d_backward_weight, conv2d_backward_weight_scratch, conv2d_forward, ConvShape,
    },
    ops::matmul::{matmul, MatmulKernel, MatmulOptions},
};

/// How many timed runs and warm-ups.
#[derive(Clone, Copy, Debug)]
pub struct BenchConfig {
    /// Timed runs per case (the median is reported).
    pub runs: usize,
    /// Untimed runs first (pipeline compilation, caches).
    pub warmup: usize,
    /// Stop adding runs to a case once this many seconds were spent timing it (at least 3 runs are kept).
    pub max_seconds_per_case: f64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig { runs: 5, warmup: 1, max_seconds_per_case: 30.0 }
    }
}

/// One matmul measurement.
#[derive(Clone, Debug, Serialize)]
pub struct MatmulRecord {
    pub bench: &'static str,
    pub kernel: &'static str,
    /// For `auto`: the kernel the autotuner chose (and this record timed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tuned: Option<&'static str>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub gflops: f64,
    pub median_ms: f64,
    pub runs: usize,
    pub clock: Clock,
    pub adapter: String,
}

/// Median of a non-empty slice.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// The fastest of `runs` GPU-timestamped runs of one dispatch, in milliseconds, after one untimed run when
/// `runs` > 1 (a single run is the autotuner's probe: cheap, perhaps cold). `None` without timestamp queries: a
/// wall-clock time of one small dispatch is mostly submission overhead. Never anything in a browser, which cannot
/// wait for the GPU.
#[cfg(not(target_arch = "wasm32"))]
pub fn time_min_ms(gpu: &Gpu, d: &Dispatch, runs: usize) -> Result<Option<f64>> {
    if !gpu.has_timestamps() {
        return Ok(None);
    }
    if runs > 1 {
        gpu.run(d.label(), &[d])?;
    }
    let (clock, times) = gpu.time_dispatches(d.label(), &[d], runs.max(1))?;
    Ok((clock == Clock::GpuTimestamps).then(|| times.iter().copied().fold(f64::INFINITY, f64::min) * 1e3))
}

#[cfg(target_arch = "wasm32")]
pub fn time_min_ms(_: &Gpu, _: &crate::gpu::Dispatch, _: usize) -> Result<Option<f64>> {
    Ok(None)
}

#[cfg(not(target_arch = "wasm32"))]
/// Time every matmul kernel on square problems of each size: C (n, n) = A (n, n) · B (n, n).
pub fn bench_matmul(
    gpu: &Gpu,
    sizes: &[usize],
    kernels: &[MatmulKernel],
    cfg: BenchConfig,
    mut on_record: impl FnMut(&MatmulRecord),
) -> Result<Vec<MatmulRecord>> {
    let adapter = gpu.summary().name;
    let mut rng = SplitMix(42);
    let mut out = Vec::new();
    for &n in sizes {
        let a = gpu.upload_f32(&[n, n], &rng.vec_f32(n * n, -1.0, 1.0), "bench A")?;
        let b = gpu.upload_f32(&[n, n], &rng.vec_f32(n * n, -1.0, 1.0), "bench B")?;
        let c = gpu.tensor(&[n, n], DType::F32, "bench C")?;
        for &kernel in kernels {
            let label = format!("matmul {} {n}x{n}x{n}", kernel.name());
            let opts = MatmulOptions::default();
            let chosen = crate::ops::matmul::resolve(gpu, kernel, (&a, &b, &c), opts, &label)?;
            let d = matmul(gpu, chosen, &a, &b, None, &c, opts, &label)?;
            let (clock, secs, runs) = time_case(gpu, &label, &[d], cfg)?;
            let rec = MatmulRecord {
                bench: "matmul",
                kernel: kernel.name(),
                tuned: (kernel == MatmulKernel::Auto).then(|| chosen.name()),
                m: n,
                n,
                k: n,
                gflops: 2.0 * (n as f64).powi(3) / secs / 1e9,
                median_ms: secs * 1e3,
                runs,
                clock,
                adapter: adapter.clone(),
            };
            on_record(&rec);
            out.push(rec);
        }
    }
    Ok(out)
}

/// One convolution measurement.
#[derive(Clone, Debug, Serialize)]
pub struct ConvRecord {
    pub bench: &'static str,
    pub layer: String,
    pub pass: &'static str,
    pub input: [usize; 4],
    pub weight: [usize; 4],
    pub stride: usize,
    pub groups: usize,
    pub gflops: f64,
    pub gbps: f64,
    pub median_ms: f64,
    pub runs: usize,
    pub clock: Clock,
    pub adapter: String,
}

/// A named convolution layer to benchmark.
#[derive(Clone, Debug)]
pub struct ConvLayer {
    pub name: &'static str,
    pub x: [usize; 4],
    pub w: [usize; 4],
    pub cfg: Conv2dConfig,
}

/// The layers the conv issue names: a ResNet 3x3 layer and EfficientNet's depthwise 5x5 at stride 1 and 2; and
/// ResNet's strided 3x3.
pub fn default_conv_layers() -> Vec<ConvLayer> {
    let same = |size: usize, k: usize, s: usize| Padding::same(size, size, (k, k), (s, s), (1, 1));
    vec![
        ConvLayer {
            name: "resnet_3x3_64",
            x: [8, 64, 56, 56],
            w: [64, 64, 3, 3],
            cfg: Conv2dConfig { padding: Padding::symmetric(1), ..Default::default() },
        },
        // ResNet-18's layer2 opens with this stride-2 3x3 (and its siblings in layers 3 and 4).
        ConvLayer {
            name: "resnet_3x3_s2",
            x: [8, 64, 56, 56],
            w: [128, 64, 3, 3],
            cfg: Conv2dConfig { stride: (2, 2), padding: Padding::symmetric(1), ..Default::default() },
        },
        ConvLayer {
            name: "effnet_dw5x5_s1",
            x: [8, 240, 28, 28],
            w: [240, 1, 5, 5],
            cfg: Conv2dConfig { padding: same(28, 5, 1), groups: 240, ..Default::default() },
        },
        ConvLayer {
            name: "effnet_dw5x5_s2",
            x: [8, 240, 28, 28],
            w: [240, 1, 5, 5],
            cfg: Conv2dConfig { stride: (2, 2), padding: same(28, 5, 2), groups: 240, ..Default::default() },
        },
    ]
}

#[cfg(not(target_arch = "wasm32"))]
fn time_case(gpu: &Gpu, label: &str, steps: &[Dispatch], cfg: BenchConfig) -> Result<(Clock, f64, usize)> {
    let refs: Vec<&Dispatch> = steps.iter().collect();
    for _ in 0..cfg.warmup {
        gpu.run(label, &refs)?;
    }
    let mut times = Vec::new();
    let mut clock = Clock::WallClock;
    let mut spent = 0.0;
    while times.len() < cfg.runs && (times.len() < 3 || spent < cfg.max_seconds_per_case) {
        let (c, t) = gpu.time_dispatches(label, &refs, 1)?;
        clock = c;
        spent += t[0];
        times.push(t[0]);
    }
    Ok((clock, median(&times), times.len()))
}

#[cfg(not(target_arch = "wasm32"))]
/// Time forward, backward_data and backward_weight of each layer.
pub fn bench_conv(
    gpu: &Gpu,
    layers: &[ConvLayer],
    cfg: BenchConfig,
    mut on_record: impl FnMut(&ConvRecord),
) -> Result<Vec<ConvRecord>> {
    let adapter = gpu.summary().name;
    let mut rng = SplitMix(7);
    let mut out = Vec::new();
    for layer in layers {
        let s = ConvShape::new(&layer.x, &layer.w, layer.cfg)?;
        let numel = |d: [usize; 4]| d.iter().product::<usize>();
        let x = gpu.upload_f32(&s.x_shape(), &rng.vec_f32(numel(s.x_shape()), -1.0, 1.0), "bench x")?;
        let w = gpu.upload_f32(&s.w_shape(), &rng.vec_f32(numel(s.w_shape()), -1.0, 1.0), "bench w")?;
        let y = gpu.tensor(&s.y_shape(), DType::F32, "bench y")?;
        let dy = gpu.upload_f32(&s.y_shape(), &rng.vec_f32(numel(s.y_shape()), -1.0, 1.0), "bench dy")?;
        let dx = gpu.tensor(&s.x_shape(), DType::F32, "bench dx")?;
        let dw = gpu.tensor(&s.w_shape(), DType::F32, "bench dw")?;
        let partial = match conv2d_backward_weight_scratch(gpu, &s) {
            Some(shape) => Some(gpu.tensor(&shape, DType::F32, "bench partial dw")?),
            None => None,
        };
        let (xb, wb, yb) = (x.bytes() as f64, w.bytes() as f64, y.bytes() as f64);
        let passes: [(&'static str, Vec<Dispatch>, f64); 3] = [
            ("forward", conv2d_forward(gpu, &s, &x, &w, None, &y, false, layer.name)?, xb + wb + yb),
            ("backward_data", conv2d_backward_data(gpu, &s, &dy, &w, &dx, false, layer.name)?, yb + wb + xb),
            (
                "backward_weight",
                conv2d_backward_weight(gpu, &s, &dy, &x, &dw, partial.as_ref(), false, layer.name)?,
                yb + xb + wb,
            ),
        ];
        for (pass, steps, bytes) in passes {
            let label = format!("conv {} {pass}", layer.name);
            let (clock, secs, runs) = time_case(gpu, &label, &steps, cfg)?;
            let rec = ConvRecord {
                bench: "conv",
                layer: layer.name.to_string(),
                pass,
                input: layer.x,
                weight: layer.w,
                stride: layer.cfg.stride.0,
                groups: layer.cfg.groups,
                gflops: 2.0 * s.macs() as f64 / secs / 1e9,
                gbps: bytes / secs / 1e9,
                median_ms: secs * 1e3,
                runs,
                clock,
                adapter: adapter.clone(),
            };
            on_record(&rec);
            out.push(rec);
        }
    }
    Ok(out)
}

/// Where `bench train` feeds each step's batch from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepInput {
    /// Uploaded once and copied into the program's input on the GPU each step, as PyTorch's benchmark keeps its
    /// batch on the device (tools/torch_reference.py).
    #[default]
    Resident,
    /// Written from host memory every step, as training does (a transfer over the bus on a discrete GPU).
    Host,
}

/// One training-step measurement.
#[derive(Clone, Debug, Serialize)]
pub struct StepRecord {
    pub bench: &'static str,
    pub model: String,
    pub batch: usize,
    pub size: usize,
    pub steps: usize,
    pub images_per_s: f64,
    pub steps_per_s: f64,
    /// Micro-batches per optimizer step (1: none; more when the batch was split to fit the adapter).
    pub accum: usize,
    /// Wall time of the first step, from compiling the program to its loss being read back.
    pub first_step_s: f64,
    /// CPU time to encode one submission's command buffer (mean; a micro-batch with accumulation), microseconds.
    pub encode_us: f64,
    /// Mean time the train_step call took (upload, uniforms, encode, submit): on a saturated adapter the driver
    /// blocks the submit until earlier steps finish, so this approaches the step time.
    pub call_us: f64,
    pub submits_per_step: f64,
    pub readback_bytes_per_step: f64,
    /// Bytes bound by one training step's dispatches (each dispatch's tensors, counted once per dispatch).
    pub bound_bytes_per_step: u64,
    pub planned_bytes: u64,
    /// Activations' storage type.
    pub precision: crate::gpu::Precision,
    /// Where each step's batch came from.
    pub input: StepInput,
    /// Bytes written from the host per step (the labels and uniforms; the images too with a host input).
    pub upload_bytes_per_step: f64,
    pub adapter: String,
    /// One more step timed dispatch by dispatch (`--profile`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::profile::ProfileSummary>,
}

/// The small CNN of the executor issue, for side-by-side runs with other frameworks: three conv-BN-ReLU
/// (3->32->64->128, 3x3, stride 2, pad 1), global average pool, linear to 10 classes, cross-entropy.
pub fn small_cnn(batch: usize, size: usize) -> Result<Graph> {
    let mut g = Graph::new();
    let x = g.input("image", &[batch, 3, size, size]);
    let labels = g.labels("label", batch);
    let cfg = Conv2dConfig { stride: (2, 2), padding: Padding::symmetric(1), ..Default::default() };
    let mut h = x;
    for (i, c) in [32, 64, 128].into_iter().enumerate() {
        h = g.conv2d(&format!("conv{}", i + 1), h, c, (3, 3), cfg, false)?;
        h = g.batch_norm(&format!("bn{}", i + 1), h, BatchNormConfig::default())?;
        h = g.relu(&format!("relu{}", i + 1), h)?;
    }
    let h = g.global_avg_pool("pool", h)?;
    let logits = g.linear("fc", h, 10, true)?;
    g.cross_entropy("loss", logits, labels, 0.0)?;
    Ok(g)
}

/// The graph `bench train` times for `model`: "small_cnn", or an architecture with fastai's head over 10 classes.
pub fn train_graph(model: &str, batch: usize, size: usize) -> Result<Graph> {
    match model {
        "small_cnn" => small_cnn(batch, size),
        arch => Arch::parse(arch)?.with_fastai_head(batch, size, 10, 0.1, crate::nn::FASTAI_PS),
    }
}

/// Time `steps` optimizer steps (after the first, which is timed on its own, executor building included) of the
/// model `graph` builds for a batch of `batch`, with Adam; with `profile`, one more step is timed dispatch by
/// dispatch and returned too. A batch over the adapter's binding limit is split into accumulated micro-batches
/// (as `finetune` does; the split is returned): each optimizer step then runs `parts` of them. Async, so that a page
/// can run it too; the command line blocks on it.
#[allow(clippy::too_many_arguments)]
pub async fn bench_step(
    gpu: Arc<Gpu>,
    model: &str,
    graph: impl Fn(usize) -> Result<Graph>,
    batch: usize,
    steps: usize,
    profile: bool,
    precision: crate::gpu::Precision,
    feed: StepInput,
) -> Result<(StepRecord, Option<crate::graph::executor::Split>, Option<crate::graph::executor::StepProfile>)> {
    let t0 = Instant::now();
    let cfg = ExecutorConfig { precision, ..Default::default() };
    let mut ex = Executor::new(gpu.clone(), graph(batch)?, cfg)?;
    let split = ex.split_to_fit()?;
    let accum = split.map_or(1, |s| s.parts);
    if let Some(s) = split {
        drop(ex);
        ex = Executor::new(gpu.clone(), graph(s.micro)?, ExecutorConfig { accum, ..cfg })?;
    }
    let graph = ex.graph();
    let input = graph.tensors.iter().find(|t| t.kind == TensorKind::Input).map(|t| t.shape.clone()).unwrap_or_default();
    let (batch, size) = (input[0], input[input.len() - 1]);
    let classes =
        graph.tensors.iter().rev().find(|t| t.name.ends_with(".out") && t.shape.len() == 2).map_or(2, |t| t.shape[1]);
    let adapter = gpu.summary().name;
    let mut rng = SplitMix(1);
    let images = rng.vec_f32(input.iter().product(), -1.0, 1.0);
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(classes as u32)).collect();
    let resident = match feed {
        StepInput::Resident => Some(ex.upload_input(&images)?),
        StepInput::Host => None,
    };
    for _ in 0..accum {
        train_step(&mut ex, resident.as_ref(), &images, &labels).await?;
    }
    ex.wait_metrics_async().await?;
    let first_step_s = t0.elapsed().as_secs_f64();
    let before = ex.counters();
    let mut encode = Vec::with_capacity(steps);
    let t0 = Instant::now();
    let (steps, micro_steps) = (steps, steps * accum);
    for _ in 0..micro_steps {
        let e0 = Instant::now();
        train_step(&mut ex, resident.as_ref(), &images, &labels).await?;
        encode.push(e0.elapsed().as_secs_f64());
        ex.poll_metrics()?;
    }
    ex.wait_metrics_async().await?;
    let secs = t0.elapsed().as_secs_f64();
    let c = ex.counters();
    let n = micro_steps.max(1) as f64;
    let profiled = if profile { Some(ex.profile_async(true, &images, &labels).await?) } else { None };
    let record = StepRecord {
        bench: "train",
        model: model.to_string(),
        batch: batch * accum,
        size,
        steps,
        accum,
        images_per_s: (micro_steps * batch) as f64 / secs,
        steps_per_s: steps as f64 / secs,
        first_step_s,
        encode_us: (c.encode_ns - before.encode_ns) as f64 / n / 1e3,
        call_us: encode.iter().sum::<f64>() / n * 1e6,
        // Per optimizer step: with accumulation, one submit and one loss per micro-batch.
        submits_per_step: (c.submits - before.submits) as f64 / steps.max(1) as f64,
        readback_bytes_per_step: (c.bytes_read_back - before.bytes_read_back) as f64 / steps.max(1) as f64,
        bound_bytes_per_step: ex.step_bytes_bound()?,
        planned_bytes: ex.planned_bytes()?,
        precision,
        input: feed,
        upload_bytes_per_step: (c.bytes_uploaded - before.bytes_uploaded) as f64 / steps.max(1) as f64,
        adapter,
        profile: profiled.as_ref().map(crate::profile::ProfileSummary::new),
    };
    Ok((record, split, profiled))
}

/// One training step of `bench_step` on the resident batch, or else on `images` from the host.
async fn train_step(
    ex: &mut Executor,
    resident: Option<&crate::gpu::Tensor>,
    images: &[f32],
    labels: &[u32],
) -> Result<()> {
    match resident {
        Some(t) => ex.train_step_resident_async(t, labels).await,
        None => ex.train_step_async(images, labels).await,
    }
}

/// Inference throughput of one architecture.
#[derive(Clone, Debug, Serialize)]
pub struct PredictRecord {
    pub bench: &'static str,
    pub model: &'static str,
    pub batch: usize,
    pub size: usize,
    pub images_per_s: f64,
    pub median_ms: f64,
    pub runs: usize,
    pub precision: crate::gpu::Precision,
    pub adapter: String,
}

#[cfg(not(target_arch = "wasm32"))]
/// Time `runs` eval-mode batches (probabilities read back) of an ImageNet classifier after one warm-up.
pub fn bench_predict(
    gpu: Arc<Gpu>,
    arch: Arch,
    batch: usize,
    size: usize,
    runs: usize,
    precision: crate::gpu::Precision,
) -> Result<PredictRecord> {
    let adapter = gpu.summary().name;
    let spec = ModelSpec { input_size: size, ..ModelSpec::imagenet(arch) };
    let mut ex = Executor::new(gpu, spec.graph(batch, 0.1)?, ExecutorConfig { precision, ..Default::default() })?;
    let images = SplitMix(3).vec_f32(batch * 3 * size * size, -1.0, 1.0);
    ex.predict(&images)?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        ex.predict(&images)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    let secs = median(&times);
    Ok(PredictRecord {
        bench: "predict",
        model: arch.name(),
        batch,
        size,
        images_per_s: batch as f64 / secs,
        median_ms: secs * 1e3,
        runs: times.len(),
        precision,
        adapter,
    })
}

/// Planned GPU memory of one architecture.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryRecord {
    pub bench: &'static str,
    pub model: &'static str,
    pub head: &'static str,
    pub batch: usize,
    pub size: usize,
    /// Parameters, gradients, optimizer moments, running statistics.
    pub persistent_bytes: u64,
    /// Persistent plus the training program's memory plan.
    pub train_bytes: u64,
    /// The training program's memory plan alone: activations, their gradients, saved statistics, scratch (and
    /// the pixel stage's upload buffers).
    pub train_activation_bytes: u64,
    /// Persistent plus the evaluation program's memory plan.
    pub eval_bytes: u64,
    /// Activations' storage type (the persistent part is the same either way).
    pub precision: crate::gpu::Precision,
    /// With `bound`: bytes bound by one training step's dispatches (compiling the program, which allocates it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_bound_bytes: Option<u64>,
}

/// The memory plan of an architecture with fastai's head, computed without allocating the activations (so it
/// also reports sizes that exceed this adapter's limits).
pub fn bench_memory(
    gpu: Arc<Gpu>,
    arch: Arch,
    batch: usize,
    size: usize,
    precision: crate::gpu::Precision,
    bound: bool,
) -> Result<MemoryRecord> {
    let g = arch.with_fastai_head(batch, size, 10, 0.1, crate::nn::FASTAI_PS)?;
    let mut ex = Executor::new(gpu, g, ExecutorConfig { precision, ..Default::default() })?;
    let train_bytes = ex.plan_bytes(true)?;
    Ok(MemoryRecord {
        bench: "memory",
        model: arch.name(),
        head: "fastai",
        batch,
        size,
        persistent_bytes: ex.persistent_bytes(),
        train_bytes,
        train_activation_bytes: train_bytes - ex.persistent_bytes(),
        eval_bytes: ex.plan_bytes(false)?,
        precision,
        step_bound_bytes: if bound { Some(ex.step_bytes_bound()?) } else { None },
    })
}

/// What the autotuner chose for a model's training step on this device.
#[derive(Clone, Debug, Serialize)]
pub struct TuneRecord {
    pub bench: &'static str,
    pub model: String,
    pub batch: usize,
    pub size: usize,
    /// Seconds to compile the step, timing included.
    pub compile_s: f64,
    #[serde(flatten)]
    pub report: crate::tune::TuneReport,
}

#[cfg(not(target_arch = "wasm32"))]
/// Compile the training step of `model` (fastai's head, every parameter training), which has the autotuner
/// choose a kernel for every problem it meets, and report the device's choices.
pub fn bench_tune(
    gpu: Arc<Gpu>,
    model: &str,
    batch: usize,
    size: usize,
    precision: crate::gpu::Precision,
) -> Result<TuneRecord> {
    let t0 = Instant::now();
    let mut ex = Executor::new(
        gpu.clone(),
        train_graph(model, batch, size)?,
        ExecutorConfig { precision, ..Default::default() },
    )?;
    ex.step_bytes_bound()?;
    Ok(TuneRecord {
        bench: "tune",
        model: model.to_string(),
        batch,
        size,
        compile_s: t0.elapsed().as_secs_f64(),
        report: crate::tune::report(&gpu)?,
    })
}

/// Data pipeline throughput.
#[derive(Clone, Debug, Serialize)]
pub struct DataRecord {
    pub bench: &'static str,
    /// "decode_presize" (CPU worker threads) or "augment" (one GPU dispatch per batch).
    pub stage: &'static str,
    pub images_per_s: f64,
    pub images: usize,
    pub batch: usize,
    pub source: String,
    pub presize: usize,
    pub size: usize,
    pub workers: usize,
    pub adapter: String,
}

#[cfg(not(target_arch = "wasm32"))]
/// Time decoding + presizing `count` synthetic JPEG photos (`width` x `height`) on `workers` threads, then the
/// GPU augmentation of the presized batches to `size`.
pub fn bench_data(
    gpu: &Gpu,
    count: usize,
    (width, height): (u32, u32),
    presize: usize,
    size: usize,
    batch: usize,
    workers: usize,
) -> Result<Vec<DataRecord>> {
    use crate::data::augment::{augment, pack_pixels, AugmentConfig};
    use crate::data::dataset::{Item, Source};
    use crate::data::loader::{Loader, LoaderConfig};
    let dir = std::env::temp_dir().join(format!("wgtune-bench-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut rng = SplitMix(5);
    let mut items = Vec::new();
    for i in 0..count {
        // Smooth colour fields plus noise: about the size a camera JPEG of this resolution compresses to.
        let (a, b) = (rng.below(256) as f32, rng.below(256) as f32);
        let img = image::RgbImage::from_fn(width, height, |x, y| {
            let n = ((x * 7 + y * 13 + i as u32) % 17) as f32;
            image::Rgb([(a + x as f32 * 0.3 + n) as u8, (b + y as f32 * 0.4) as u8, ((x + y) as f32 * 0.2 + n) as u8])
        });
        let path = dir.join(format!("{i:04}.jpg"));
        img.save(&path).map_err(|e| crate::Error::Invalid(format!("cannot write '{}': {e}", path.display())))?;
        items.push(Item::new(Source::File(path), 0));
    }
    let adapter = gpu.summary().name;
    let source = format!("{count} JPEG {width}x{height}");
    let loader = Loader::new(
        items,
        LoaderConfig {
            batch,
            presize,
            crop: None,
            shuffle: true,
            drop_last: true,
            seed: 1,
            workers,
            prefetch: 2,
            targets: crate::ops::loss::Targets { classes: 1, multi_label: false },
        },
    )?;
    let t0 = Instant::now();
    let batches = loader.epoch(0).collect::<Result<Vec<_>>>()?;
    let decode_s = t0.elapsed().as_secs_f64();
    let decoded = batches.len() * batch;
    let px = gpu.tensor(&[(batch * presize * presize * 3).div_ceil(4)], DType::U32, "bench pixels")?;
    let tf = gpu.tensor(&[batch, crate::data::augment::PARAMS_PER_IMAGE], DType::F32, "bench transforms")?;
    let out = gpu.tensor(&[batch, 3, size, size], DType::F32, "bench augmented")?;
    let norm = Arch::EffnetLite0.normalization();
    let d = augment(gpu, &px, &tf, &out, presize, &norm, true, "bench augment")?;
    let cfg = AugmentConfig::default();
    let mut times = Vec::new();
    for b in &batches {
        gpu.write_bytes(&px, bytemuck::cast_slice(&pack_pixels(&b.pixels)))?;
        let drawn: Vec<_> = (0..batch).map(|_| cfg.sample(&mut rng)).collect();
        let params = crate::data::augment::batch_params(&drawn);
        gpu.write_f32(&tf, &params)?;
        let (_, t) = gpu.time_dispatches("bench augment", &[&d], 1)?;
        times.push(t[0]);
    }
    std::fs::remove_dir_all(&dir)?;
    let rec = |stage, images_per_s| DataRecord {
        bench: "data",
        stage,
        images_per_s,
        images: decoded,
        batch,
        source: source.clone(),
        presize,
        size,
        workers,
        adapter: adapter.clone(),
    };
    Ok(vec![rec("decode_presize", decoded as f64 / decode_s), rec("augment", batch as f64 / median(&times))])
}
