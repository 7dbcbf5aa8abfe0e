//! The `wgtune` command line: a thin layer over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use wgtune::bench::{bench_conv, bench_matmul, bench_step, default_conv_layers, small_cnn, BenchConfig, MatmulRecord};
use wgtune::gpu::{AdapterRequest, Gpu};
use wgtune::ops::matmul::MatmulKernel;

#[derive(Parser)]
#[command(name = "wgtune", version, about = "Fine-tune pretrained image models on any GPU, through wgpu")]
struct Cli {
    /// Adapter to use: a substring of its name, or a backend (vulkan, metal, dx12, gl).
    #[arg(long, global = true, env = "WGTUNE_ADAPTER")]
    adapter: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the adapter, its limits and features.
    Info {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure kernels.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Classify images with a model: top-5 classes and probabilities per image.
    Predict {
        /// A model saved by wgtune, or a raw pretrained safetensors file (then give --arch). Default: the embedded
        /// ImageNet EfficientNet-Lite0.
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        /// Architecture of a raw pretrained file: effnet-lite0, resnet18, resnet34, resnet50.
        #[arg(long)]
        arch: Option<String>,
        /// Images per GPU batch.
        #[arg(long, default_value_t = 8)]
        bs: usize,
        /// One JSON object per image.
        #[arg(long)]
        json: bool,
        /// Image files (JPEG, PNG, WebP, BMP, GIF).
        #[arg(required = true)]
        images: Vec<std::path::PathBuf>,
    },
    /// Fine-tune a pretrained model (fastai's fine_tune): train a new head with the body frozen, then everything
    /// with discriminative learning rates, one-cycle schedules throughout.
    Finetune(FinetuneArgs),
    /// fastai's lr_find: train a few steps with the learning rate growing exponentially, plot the loss against
    /// it, suggest a rate (weights are restored; nothing is saved but the plot).
    LrFind(LrFindArgs),
}

/// What a training run is made of: data, model, input and batch size, optimizer.
#[derive(clap::Args)]
struct RunArgs {
    /// Image folder (DIR/train/<class>/* + DIR/valid/<class>/*, or DIR/<class>/*). Default: the embedded
    /// Fashion-MNIST subset.
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// Pretrained weights (safetensors). Default: the embedded ImageNet EfficientNet-Lite0.
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// Start from random weights instead of pretrained ones (the baseline transfer learning is measured against).
    #[arg(long, conflicts_with = "model")]
    no_pretrained: bool,
    /// Architecture: effnet-lite0, resnet18, resnet34, resnet50.
    #[arg(long, default_value = "effnet-lite0")]
    arch: String,
    #[arg(long, default_value_t = 32)]
    bs: usize,
    /// Input size (square). Default: 224 on a GPU; 64 on a software adapter, where 224 would take hours.
    #[arg(long)]
    size: Option<usize>,
    /// Fraction held out for validation when the folder has no valid/ split.
    #[arg(long, default_value_t = 0.2)]
    valid_pct: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Decoupled weight decay (not applied to batch norm and biases).
    #[arg(long, default_value_t = 0.01)]
    wd: f64,
    /// Batch norm of the frozen body in eval mode too: nothing of the body trains in phase 1.
    #[arg(long)]
    freeze_bn: bool,
    /// SGD with momentum instead of Adam.
    #[arg(long)]
    sgd: bool,
    /// Train without data augmentation (only the resize and normalization).
    #[arg(long, conflicts_with = "augment")]
    no_augment: bool,
    /// Train with data augmentation even where the preset turns it off (the embedded data set on a software
    /// adapter).
    #[arg(long)]
    augment: bool,
}

#[derive(clap::Args)]
struct FinetuneArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Epochs after unfreezing. Default: 2 on a software adapter, 3 on a GPU.
    #[arg(long)]
    epochs: Option<usize>,
    /// Epochs with the body frozen.
    #[arg(long, default_value_t = 1)]
    freeze_epochs: usize,
    /// Base learning rate (fastai's base_lr).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Ratio of the head's learning rate to the first group's after unfreezing.
    #[arg(long, default_value_t = 100.0)]
    lr_mult: f64,
    #[arg(long, default_value_t = 0.3)]
    pct_start: f64,
    #[arg(long, default_value_t = 5.0)]
    div: f64,
    /// Where to save the fine-tuned model; the loss curve and confusion matrix go next to it (OUT.loss.png,
    /// OUT.confusion.png without the .safetensors).
    #[arg(long, default_value = "wgtune-model.safetensors")]
    out: std::path::PathBuf,
    /// One JSON line per epoch.
    #[arg(long)]
    json_log: Option<std::path::PathBuf>,
    /// Continue an interrupted run from its checkpoint (OUT.checkpoint, written after every epoch).
    #[arg(long)]
    resume: bool,
    /// Time the second step of each phase dispatch by dispatch (GPU timestamps) and print where the time went,
    /// per op type and per kernel, at the end.
    #[arg(long)]
    profile: bool,
    /// Wrap training step N (1-based) in a RenderDoc capture; run under RenderDoc (see README) to record it.
    #[arg(long, value_name = "N")]
    capture_step: Option<u64>,
}

#[derive(clap::Args)]
struct LrFindArgs {
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, default_value_t = 1e-7)]
    start_lr: f64,
    #[arg(long, default_value_t = 10.0)]
    end_lr: f64,
    /// Training steps of the ramp (fewer when the loss diverges first).
    #[arg(long, default_value_t = 100)]
    num_it: usize,
    /// Where to save the loss-vs-learning-rate plot.
    #[arg(long, default_value = "wgtune-lr-find.png")]
    plot: std::path::PathBuf,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Data pipeline images/s: JPEG decode + presize on CPU worker threads, augmentation on the GPU.
    Data {
        /// Synthetic JPEG photos to make and decode.
        #[arg(long, default_value_t = 128)]
        images: usize,
        #[arg(long, default_value_t = 256)]
        presize: usize,
        #[arg(long, default_value_t = 224)]
        size: usize,
        #[arg(long, default_value_t = 32)]
        bs: usize,
        /// Decoding threads (default: the number of CPU cores).
        #[arg(long)]
        workers: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Inference images/s of ImageNet classifiers (eval mode, probabilities read back).
    Predict {
        /// Architectures, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = vec!["effnet-lite0".to_string(), "resnet50".to_string()])]
        model: Vec<String>,
        #[arg(long, default_value_t = 32)]
        bs: usize,
        #[arg(long, default_value_t = 224)]
        size: usize,
        /// Timed batches after a warm-up (median reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        json: bool,
    },
    /// Planned GPU memory (parameters, gradients, optimizer state, activations) of models with fastai's head.
    Memory {
        #[arg(long, value_delimiter = ',', default_values_t = vec!["effnet-lite0".to_string(), "resnet50".to_string()])]
        model: Vec<String>,
        #[arg(long, default_value_t = 32)]
        bs: usize,
        #[arg(long, default_value_t = 224)]
        size: usize,
        #[arg(long)]
        json: bool,
    },
    /// Training images/s of a model with fastai's head (every parameter trains, Adam, random inputs), planned GPU
    /// memory and CPU encode time per step.
    #[command(alias = "step")]
    Train {
        /// effnet-lite0, resnet18, resnet34, resnet50, or small_cnn (three conv-BN-ReLU, global pool, linear).
        #[arg(long, default_value = "effnet-lite0")]
        model: String,
        /// Batch size.
        #[arg(long, default_value_t = 32)]
        bs: usize,
        /// Input size (square images, 3 channels).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Timed steps after the first.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Time one more step dispatch by dispatch and print where the GPU time goes, per op type and kernel.
        #[arg(long)]
        profile: bool,
        /// One JSON object (with --profile, the tables are in its "profile" field).
        #[arg(long)]
        json: bool,
    },
    /// GFLOP/s and GB/s of each convolution pass on a ResNet 3x3 layer and EfficientNet depthwise 5x5 layers,
    /// followed by the tiled matmul in the same run for comparison.
    Conv {
        /// Square matmul sizes timed after the convolutions (the yardstick for implicit GEMM).
        #[arg(long, value_delimiter = ',', default_values_t = vec![1024])]
        matmul_sizes: Vec<usize>,
        /// Time only the convolutions.
        #[arg(long)]
        no_matmul: bool,
        /// Timed runs per case (median reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// GFLOP/s of every matmul kernel on square problems.
    Matmul {
        /// Matrix sizes n (C = A·B, all n x n).
        #[arg(long, value_delimiter = ',', default_values_t = vec![256, 512, 1024])]
        sizes: Vec<usize>,
        /// Kernels to time (naive, tiled).
        #[arg(long, value_delimiter = ',', default_values_t = vec!["naive".to_string(), "tiled".to_string()])]
        kernels: Vec<String>,
        /// Timed runs per case (median reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

fn open_gpu(adapter: Option<String>) -> anyhow::Result<Gpu> {
    Ok(Gpu::new(&AdapterRequest { name: adapter })?)
}

fn info(gpu: &Gpu, json: bool) -> anyhow::Result<()> {
    let s = gpu.summary();
    let l = gpu.limits();
    let limits = serde_json::json!({
        "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
        "max_buffer_size": l.max_buffer_size,
        "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
        "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
        "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
        "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
    });
    let features: Vec<String> = gpu.features().iter_names().map(|(n, _)| n.to_string()).collect();
    if json {
        println!("{}", serde_json::json!({ "adapter": s, "limits": limits, "features": features }));
        return Ok(());
    }
    println!("adapter      {}", s.name);
    println!("backend      {}", s.backend);
    println!("device type  {}{}", s.device_type, if s.is_software { " (software: correct but slow)" } else { "" });
    println!("driver       {} {}", s.driver, s.driver_info);
    println!("limits");
    if let Some(map) = limits.as_object() {
        for (k, v) in map {
            println!("  {k:<40} {v}");
        }
    }
    println!(
        "features     {}",
        if features.is_empty() { "(none of the optional ones)".into() } else { features.join(", ") }
    );
    Ok(())
}

fn print_matmul(
    gpu: &Gpu,
    sizes: &[usize],
    kernels: &[MatmulKernel],
    cfg: BenchConfig,
    json: bool,
) -> anyhow::Result<()> {
    if !json {
        println!(
            "{:<8} {:>6} {:>6} {:>6} {:>10} {:>12} {:>5}",
            "kernel", "m", "n", "k", "GFLOP/s", "median ms", "runs"
        );
    }
    bench_matmul(gpu, sizes, kernels, cfg, |r: &MatmulRecord| {
        if json {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        } else {
            println!(
                "{:<8} {:>6} {:>6} {:>6} {:>10.3} {:>12.2} {:>5}",
                r.kernel, r.m, r.n, r.k, r.gflops, r.median_ms, r.runs
            );
        }
    })?;
    Ok(())
}

/// One prediction: the five most probable classes.
fn top5(probs: &[f32], classes: &[String]) -> Vec<serde_json::Value> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    order
        .into_iter()
        .take(5)
        .map(|i| serde_json::json!({"class_index": i, "label": classes.get(i).cloned().unwrap_or_default(), "prob": probs[i]}))
        .collect()
}

fn predict(
    adapter: Option<String>,
    model: Option<std::path::PathBuf>,
    arch: Option<String>,
    bs: usize,
    json: bool,
    images: &[std::path::PathBuf],
) -> anyhow::Result<()> {
    use wgtune::data::{load_rgb, normalize_into, resize_center_crop};
    use wgtune::nn::model::{load_model, ModelSpec, EFFNET_LITE0_IMAGENET};
    use wgtune::nn::weights::Weights;
    let weights = match &model {
        Some(path) => Weights::open(path)?,
        None => Weights::from_static(EFFNET_LITE0_IMAGENET, "embedded EfficientNet-Lite0 (ImageNet)")?,
    };
    let arch = arch.as_deref().map(wgtune::nn::Arch::parse).transpose()?;
    let spec = ModelSpec::of_weights(&weights, arch)?;
    // Decode and preprocess every image first; a bad file is reported and skipped.
    let mut failures = 0;
    let mut ready: Vec<(&std::path::PathBuf, Vec<u8>)> = Vec::new();
    for path in images {
        match load_rgb(path) {
            Ok(img) => ready.push((path, resize_center_crop(&img, spec.input_size))),
            Err(e) => {
                failures += 1;
                if json {
                    println!("{}", serde_json::json!({"file": path.display().to_string(), "error": e.to_string()}));
                } else {
                    eprintln!("{}: error: {e}", path.display());
                }
            }
        }
    }
    if !ready.is_empty() {
        let batch = bs.clamp(1, ready.len());
        let gpu = std::sync::Arc::new(open_gpu(adapter)?);
        let (mut ex, _) = load_model(gpu, &spec, &weights, batch)?;
        let k = spec.classes.len();
        for chunk in ready.chunks(batch) {
            let mut input = Vec::with_capacity(batch * 3 * spec.input_size * spec.input_size);
            for i in 0..batch {
                // A short last batch repeats its last image; those rows are not reported.
                normalize_into(&chunk[i.min(chunk.len() - 1)].1, &spec.normalization, &mut input);
            }
            let probs = ex.predict(&input)?;
            for (i, (path, _)) in chunk.iter().enumerate() {
                let top = top5(&probs[i * k..(i + 1) * k], &spec.classes);
                if json {
                    println!("{}", serde_json::json!({"file": path.display().to_string(), "top": top}));
                } else {
                    println!("{}", path.display());
                    for (rank, t) in top.iter().enumerate() {
                        println!(
                            "  {}. {:>6.2}%  {} ({})",
                            rank + 1,
                            t["prob"].as_f64().unwrap_or(0.0) * 100.0,
                            t["label"].as_str().unwrap_or(""),
                            t["class_index"]
                        );
                    }
                }
            }
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} of {} images could not be read", images.len());
    }
    Ok(())
}

/// The embedded default data set (a folder of the source tree).
const DEFAULT_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/fashion_mnist");

/// The pretrained weights, the data and the GPU of a run, and the learner built from them; `epochs` None means
/// the preset's.
fn prepare(
    adapter: Option<String>,
    r: &RunArgs,
    epochs: Option<usize>,
    cfg: wgtune::learner::FineTuneConfig,
) -> anyhow::Result<wgtune::learner::Learner> {
    use wgtune::learner::{FineTuneConfig, Learner};
    use wgtune::nn::model::EFFNET_LITE0_IMAGENET;
    use wgtune::nn::weights::Weights;
    let arch = wgtune::nn::Arch::parse(&r.arch)?;
    let weights = match &r.model {
        _ if r.no_pretrained => None,
        Some(p) => Some(Weights::open(p)?),
        None if arch == wgtune::nn::Arch::EffnetLite0 => {
            Some(Weights::from_static(EFFNET_LITE0_IMAGENET, "embedded EfficientNet-Lite0 (ImageNet)")?)
        }
        None => anyhow::bail!("--arch {} needs pretrained weights: give them with --model FILE", r.arch),
    };
    let data_dir = r.data.clone().unwrap_or_else(|| DEFAULT_DATA.into());
    let data = wgtune::data::dataset::Dataset::from_folder(&data_dir, r.valid_pct, r.seed)?;
    eprintln!(
        "data: {} ({} classes, {} train, {} valid images)",
        data_dir.display(),
        data.classes.len(),
        data.train.len(),
        data.valid.len()
    );
    if r.no_pretrained {
        eprintln!("model: {} from random initial weights (--no-pretrained)", arch.name());
    }
    let gpu = std::sync::Arc::new(open_gpu(adapter)?);
    let software = gpu.summary().is_software;
    let size = r.size.unwrap_or(if software { 64 } else { 224 });
    let epochs_known = epochs.is_some();
    let epochs = epochs.unwrap_or(if software { 2 } else { 3 });
    // Measured on the embedded 28x28 Fashion-MNIST images at 64 px, 1 + 2 epochs: 76.2% without augmentation,
    // 73.2% with it (BENCHMARKS.md). Elsewhere fastai's augmentation stays on.
    let augment = r.augment || !(r.no_augment || (software && r.data.is_none()));
    if r.size.is_none() {
        // lr-find runs no epochs: its preset is the input size and augmentation alone.
        let schedule = if epochs_known { String::new() } else { format!(", {} + {epochs} epochs", cfg.freeze_epochs) };
        eprintln!(
            "preset: {size}x{size} inputs{schedule}, augmentation {} for the {} adapter '{}' \
             (--size, --epochs, --augment/--no-augment to change)",
            if augment { "on" } else { "off" },
            if software { "software" } else { "hardware" },
            gpu.summary().name
        );
    }
    let cfg = FineTuneConfig {
        arch,
        bs: r.bs,
        seed: r.seed,
        wd: r.wd,
        optimizer: if r.sgd { wgtune::ops::optim::Optimizer::Sgd } else { wgtune::ops::optim::Optimizer::Adam },
        freeze_bn: r.freeze_bn,
        size,
        presize: (size * 8).div_ceil(7),
        epochs,
        augment,
        ..cfg
    };
    let (bs, px) = (cfg.bs, cfg.size);
    Learner::new(gpu, &data, weights.as_ref(), cfg).map_err(|e| with_memory_advice(e, bs, px))
}

/// Errors that mean the run did not fit the GPU get advice on what to change; others pass through.
fn with_memory_advice(e: wgtune::Error, bs: usize, size: usize) -> anyhow::Error {
    let memory = match &e {
        wgtune::Error::DeviceLost(_) | wgtune::Error::TooLarge { .. } => true,
        wgtune::Error::Gpu { message, .. } => message.to_lowercase().contains("memory"),
        _ => false,
    };
    if memory {
        anyhow::anyhow!(
            "{e}\nhint: batch size {bs} at {size}x{size} px may not fit this GPU's memory: try --bs {} (or a smaller \
             --size); `wgtune bench memory --bs {bs} --size {size}` shows what a run needs",
            (bs / 2).max(1)
        )
    } else {
        e.into()
    }
}

/// A progress callback: one indicatif bar per epoch on a terminal, plain lines (every tenth) otherwise.
fn progress_printer() -> impl FnMut(&str, usize, usize, usize, f64) {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut bar: Option<indicatif::ProgressBar> = None;
    move |phase: &str, epoch: usize, done: usize, total: usize, loss: f64| {
        if !terminal {
            if done.is_multiple_of((total / 10).max(1)) || done == total {
                eprintln!("  {phase} epoch {epoch}: batch {done}/{total}, smoothed loss {loss:.4}");
            }
            return;
        }
        let b = bar.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            let style =
                indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> ");
            b.set_style(style);
            b.set_prefix(format!("{phase} epoch {epoch}"));
            b
        });
        b.set_position(done as u64);
        b.set_message(format!("loss {loss:.4}"));
        if done == total {
            b.finish_and_clear();
            bar = None;
        }
    }
}

fn lr_find(adapter: Option<String>, a: LrFindArgs) -> anyhow::Result<()> {
    let cfg = wgtune::learner::FineTuneConfig::default();
    let mut learner = prepare(adapter, &a.run, Some(1), cfg)?;
    let (bs, size) = (learner.cfg.bs, learner.cfg.size);
    let mut progress = progress_printer();
    let found =
        learner.lr_find(a.start_lr, a.end_lr, a.num_it, &mut progress).map_err(|e| with_memory_advice(e, bs, size))?;
    if found.stopped_early {
        println!(
            "the loss diverged at lr {:.2e} after {} steps: stopped there (weights restored)",
            found.lrs.last().copied().unwrap_or(f64::NAN),
            found.lrs.len()
        );
    }
    match found.suggestion {
        Some(lr) => println!("suggested learning rate (valley): {lr:.2e}  (finetune --lr {lr:.1e})"),
        None => println!("too few steps recorded for a suggestion: raise --num-it"),
    }
    wgtune::plot::lr_find(&a.plot, &found)?;
    println!("plot: {}", a.plot.display());
    Ok(())
}

fn finetune(adapter: Option<String>, a: FinetuneArgs) -> anyhow::Result<()> {
    use std::io::Write;
    use wgtune::nn::model::save_model;
    let cfg = wgtune::learner::FineTuneConfig {
        freeze_epochs: a.freeze_epochs,
        lr: a.lr,
        lr_mult: a.lr_mult,
        pct_start: a.pct_start,
        div: a.div,
        profile: a.profile,
        capture_step: a.capture_step,
        ..Default::default()
    };
    let mut learner = prepare(adapter, &a.run, a.epochs, cfg)?;
    let (bs, size) = (learner.cfg.bs, learner.cfg.size);
    if let Some(n) = a.capture_step {
        eprintln!(
            "--capture-step {n}: step {n} is wrapped in a RenderDoc capture, which records only when wgtune runs \
             under RenderDoc (renderdoccmd capture -w -c CAPTURE_PATH wgtune finetune ...; see README)"
        );
    }
    let mut log = match &a.json_log {
        Some(p) => Some(
            std::fs::File::create(p).map_err(|e| anyhow::anyhow!("cannot create --json-log {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let mut last_phase = String::new();
    let mut progress = progress_printer();
    let mut on_epoch = |r: &wgtune::learner::EpochRecord| {
        if r.phase != last_phase {
            println!("\n{} phase", r.phase);
            println!(
                "{:>5}  {:>10}  {:>10}  {:>10}  {:>8}  {:>6}",
                "epoch", "train_loss", "valid_loss", "error_rate", "accuracy", "time"
            );
            last_phase = r.phase.clone();
        }
        let secs = r.seconds as u64;
        println!(
            "{:>5}  {:>10.6}  {:>10.6}  {:>10.6}  {:>8.4}  {:02}:{:02}",
            r.epoch,
            r.train_loss,
            r.valid_loss,
            r.error_rate,
            r.accuracy,
            secs / 60,
            secs % 60
        );
        if let Some(f) = log.as_mut() {
            let _ = writeln!(f, "{}", serde_json::to_string(r).unwrap_or_default());
        }
    };
    let checkpoint = std::path::PathBuf::from(format!("{}.checkpoint", a.out.display()));
    if a.resume {
        eprintln!("resuming from {}", checkpoint.display());
    }
    // Ctrl-C: finish the current step, write a checkpoint, exit 130. A second Ctrl-C exits at once.
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after the current step (Ctrl-C again to quit at once)...");
    });
    let records = learner
        .fit(&mut progress, &mut on_epoch, Some(&checkpoint), a.resume.then_some(checkpoint.as_path()), &STOP)
        .map_err(|e| with_memory_advice(e, bs, size))?;
    save_model(&learner.ex, &learner.spec, &a.out)?;
    println!(
        "\nsaved the fine-tuned model to {} (use it with `wgtune predict --model {} IMAGES`)",
        a.out.display(),
        a.out.display()
    );
    let (_, confusion) = learner.validate_confusion()?;
    println!("\nconfusion matrix (validation set, {} images)\n{}", confusion.total(), confusion.table());
    let worst: Vec<String> =
        confusion.most_confused(1).iter().take(5).map(|(a, p, n)| format!("{a} -> {p}: {n}")).collect();
    if !worst.is_empty() {
        println!("most confused (actual -> predicted): {}", worst.join(", "));
    }
    let side = |ext: &str| a.out.with_extension(ext);
    let steps = learner.steps_per_epoch();
    wgtune::plot::loss_curve(&side("loss.png"), &learner.history, &records, steps)?;
    wgtune::plot::confusion(&side("confusion.png"), &confusion)?;
    println!(
        "plots: {} (loss curve), {} (confusion matrix)",
        side("loss.png").display(),
        side("confusion.png").display()
    );
    for (phase, p) in &learner.profiles {
        println!("\n{}", wgtune::profile::render(&format!("profiled {phase}-phase training step"), p, 15));
    }
    if let Some(n) = a.capture_step {
        let steps = learner.history.len() as u64;
        if n == 0 || n > steps {
            eprintln!("warning: --capture-step {n} is outside the run's {steps} steps: nothing was captured");
        }
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info { json } => info(&open_gpu(cli.adapter)?, json),
        Command::Bench { what: BenchCommand::Matmul { sizes, kernels, runs, json } } => {
            let kernels = kernels
                .iter()
                .map(|k| {
                    MatmulKernel::ALL.into_iter().find(|m| m.name() == k).ok_or_else(|| {
                        anyhow::anyhow!("--kernels: unknown matmul kernel '{k}' (expected naive or tiled)")
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let gpu = open_gpu(cli.adapter)?;
            print_matmul(&gpu, &sizes, &kernels, BenchConfig { runs, ..Default::default() }, json)
        }
        Command::Bench { what: BenchCommand::Data { images, presize, size, bs, workers, json } } => {
            let gpu = open_gpu(cli.adapter)?;
            let workers = workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            for r in wgtune::bench::bench_data(&gpu, images, (500, 375), presize, size, bs, workers)? {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "{:<15} {:>9.1} images/s  ({}, presize {}, size {}, {} workers)",
                        r.stage, r.images_per_s, r.source, r.presize, r.size, r.workers
                    );
                }
            }
            Ok(())
        }
        Command::Bench { what: BenchCommand::Predict { model, bs, size, runs, json } } => {
            let gpu = std::sync::Arc::new(open_gpu(cli.adapter)?);
            let mut failed = 0;
            for name in &model {
                let arch = wgtune::nn::Arch::parse(name)?;
                match wgtune::bench::bench_predict(gpu.clone(), arch, bs, size, runs) {
                    Ok(r) if json => println!("{}", serde_json::to_string(&r)?),
                    Ok(r) => println!(
                        "{:<14} batch {:>3} at {}px: {:>8.2} images/s ({:.0} ms per batch)",
                        r.model, r.batch, r.size, r.images_per_s, r.median_ms
                    ),
                    Err(e) => {
                        failed += 1;
                        if json {
                            println!(
                                "{}",
                                serde_json::json!({"bench": "predict", "model": name, "error": e.to_string()})
                            );
                        } else {
                            eprintln!("{name}: error: {e}");
                        }
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} models could not be measured", model.len());
            }
            Ok(())
        }
        Command::Bench { what: BenchCommand::Memory { model, bs, size, json } } => {
            let gpu = std::sync::Arc::new(open_gpu(cli.adapter)?);
            for name in &model {
                let r = wgtune::bench::bench_memory(gpu.clone(), wgtune::nn::Arch::parse(name)?, bs, size)?;
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    let mib = |b: u64| b as f64 / (1 << 20) as f64;
                    println!(
                        "{:<14} batch {:>3} at {}px: training {:>8.1} MiB, evaluation {:>8.1} MiB (persistent {:.1} MiB)",
                        r.model, r.batch, r.size, mib(r.train_bytes), mib(r.eval_bytes), mib(r.persistent_bytes)
                    );
                }
            }
            Ok(())
        }
        Command::Bench { what: BenchCommand::Train { model, bs, size, steps, profile, json } } => {
            let graph = match model.as_str() {
                "small_cnn" => small_cnn(bs, size)?,
                arch => wgtune::nn::Arch::parse(arch)?.with_fastai_head(bs, size, 10, 0.1)?,
            };
            let gpu = std::sync::Arc::new(open_gpu(cli.adapter)?);
            let (r, profiled) =
                bench_step(gpu, &model, graph, steps, profile).map_err(|e| with_memory_advice(e, bs, size))?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
                return Ok(());
            }
            println!("model             {} (batch {}, {}x{})", r.model, r.batch, r.size, r.size);
            println!("images/s          {:.2}", r.images_per_s);
            println!("steps/s           {:.3}", r.steps_per_s);
            println!("first step        {:.2} s (compile, upload, run, read back)", r.first_step_s);
            println!("encode            {:.0} us per step (CPU)", r.encode_us);
            println!("train_step call   {:.0} us (includes waiting for the adapter)", r.call_us);
            println!("submits           {} per step", r.submits_per_step);
            println!("read back         {} bytes per step", r.readback_bytes_per_step);
            println!("planned GPU bytes {:.1} MiB", r.planned_bytes as f64 / (1 << 20) as f64);
            if let Some(p) = profiled {
                println!("\n{}", wgtune::profile::render("profiled training step", &p, 15));
            }
            Ok(())
        }
        Command::Bench { what: BenchCommand::Conv { matmul_sizes, no_matmul, runs, json } } => {
            let gpu = open_gpu(cli.adapter)?;
            let cfg = BenchConfig { runs, ..Default::default() };
            if !json {
                println!(
                    "{:<16} {:<16} {:>6} {:>9} {:>9} {:>11} {:>5}",
                    "layer", "pass", "groups", "GFLOP/s", "GB/s", "median ms", "runs"
                );
            }
            bench_conv(&gpu, &default_conv_layers(), cfg, |r| {
                if json {
                    println!("{}", serde_json::to_string(r).unwrap_or_default());
                } else {
                    println!(
                        "{:<16} {:<16} {:>6} {:>9.3} {:>9.3} {:>11.2} {:>5}",
                        r.layer, r.pass, r.groups, r.gflops, r.gbps, r.median_ms, r.runs
                    );
                }
            })?;
            if no_matmul {
                return Ok(());
            }
            if !json {
                println!();
            }
            print_matmul(&gpu, &matmul_sizes, &[MatmulKernel::Tiled], cfg, json)
        }
        Command::Predict { model, arch, bs, json, images } => predict(cli.adapter, model, arch, bs, json, &images),
        Command::Finetune(args) => finetune(cli.adapter, args),
        Command::LrFind(args) => lr_find(cli.adapter, args),
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<wgtune::Error>() {
            Some(wgtune::Error::Interrupted(msg)) => {
                eprintln!("{msg}");
                ExitCode::from(130)
            }
            _ => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out of memory and device loss name the batch size to try; other errors pass through unchanged.
    #[test]
    fn memory_errors_advise_a_smaller_batch() {
        let lost = with_memory_advice(wgtune::Error::DeviceLost("Out of memory".into()), 32, 224).to_string();
        assert!(lost.contains("--bs 16") && lost.contains("batch size 32 at 224x224"), "{lost}");
        let oom = wgtune::Error::Gpu { label: "activations".into(), message: "Out of Memory".into() };
        assert!(with_memory_advice(oom, 1, 64).to_string().contains("--bs 1"));
        let other = with_memory_advice(wgtune::Error::Invalid("bad --lr".into()), 32, 224).to_string();
        assert_eq!(other, "bad --lr");
    }
}
