//! The command line's arguments: subcommands and their options, with clap's derive.

use clap::Subcommand;
use wgtune::nn::model::{MAX_INPUT_SIZE, MIN_INPUT_SIZE};
use wgtune::nn::Arch;

// Every numeric option is range-checked where it is parsed, here: a bad value stops the command before any work
// with a message naming the option and the range (clap adds the option's name).

/// A count of at least 1 (batch sizes, runs, steps, images).
fn count(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("'{s}' is not a whole number"))?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    if n > 1 << 20 {
        return Err(format!("{n} is far more than any run needs (at most {})", 1 << 20));
    }
    Ok(n)
}

/// A side of square input images.
fn image_size(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("'{s}' is not a whole number"))?;
    if !(MIN_INPUT_SIZE..=MAX_INPUT_SIZE).contains(&n) {
        return Err(format!("{n} is outside {MIN_INPUT_SIZE}..={MAX_INPUT_SIZE} pixels"));
    }
    Ok(n)
}

/// A finite number in [lo, hi] (`open` excludes lo).
fn number_in(s: &str, lo: f64, hi: f64, open: bool) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    let above = if open { v > lo } else { v >= lo };
    if !v.is_finite() || !above || v > hi {
        let bracket = if open { "(" } else { "[" };
        return Err(format!("{v} is outside {bracket}{lo}, {hi}]"));
    }
    Ok(v)
}

fn learning_rate(s: &str) -> Result<f64, String> {
    number_in(s, 0.0, 10.0, true)
}

/// A loss scale's start: a power of two from 1 to 2^24 (GradScaler's init_scale; a power of two scales without
/// rounding).
fn loss_scale(s: &str) -> Result<f32, String> {
    let v = number_in(s, 1.0, 16_777_216.0, false)?;
    if v.log2().fract() != 0.0 {
        return Err(format!("{v} is not a power of two (1, 2, 4, ... 65536, ... 16777216)"));
    }
    Ok(v as f32)
}

/// A fraction of the data held out: above 0, below 1.
fn valid_fraction(s: &str) -> Result<f64, String> {
    let v = number_in(s, 0.0, 1.0, true)?;
    if v >= 1.0 {
        return Err("1 would leave no training images".into());
    }
    Ok(v)
}

fn fraction(s: &str) -> Result<f64, String> {
    number_in(s, 0.0, 1.0, false)
}

/// A ratio of at least 1 (one-cycle's div, the head's LR multiplier).
fn ratio(s: &str) -> Result<f64, String> {
    number_in(s, 1.0, 1e6, false)
}

fn weight_decay(s: &str) -> Result<f64, String> {
    number_in(s, 0.0, 1.0, false)
}

/// A drop probability: 0 (off) up to, not including, 1.
fn drop_rate(s: &str) -> Result<f64, String> {
    let v = number_in(s, 0.0, 1.0, false)?;
    if v >= 1.0 {
        return Err("1 would drop every residual branch".into());
    }
    Ok(v)
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    Predict(PredictArgs),
    /// Write a model as an ONNX file (eval mode: batch norm with running statistics, no dropout), with its
    /// classes, input size and normalization in the file's metadata.
    Export(ExportArgs),
    /// Fine-tune a pretrained model (fastai's fine_tune): train a new head with the body frozen, then everything
    /// with discriminative learning rates, one-cycle schedules throughout.
    Finetune(FinetuneArgs),
    /// fastai's lr_find: train a few steps with the learning rate growing exponentially, plot the loss against
    /// it, suggest a rate (weights are restored; nothing is saved but the plot).
    LrFind(LrFindArgs),
}

/// The options of `wgtune predict`.
#[derive(clap::Args)]
pub(crate) struct PredictArgs {
    /// A model saved by wgtune, or a raw pretrained safetensors file (then give --arch). Default: the embedded
    /// ImageNet EfficientNet-Lite0.
    #[arg(long)]
    pub(crate) model: Option<std::path::PathBuf>,
    /// Architecture of a raw pretrained file.
    #[arg(long)]
    pub(crate) arch: Option<Arch>,
    /// Images per GPU batch.
    #[arg(long, default_value_t = 8, value_parser = count)]
    pub(crate) bs: usize,
    /// One JSON object per image.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also print every class's logit (the scores before softmax; in JSON a "logits" list).
    #[arg(long, conflicts_with = "tta")]
    pub(crate) logits: bool,
    /// Test-time augmentation (fastai's tta): the probabilities of 4 augmented views blended with the plain
    /// view's (beta 0.25).
    #[arg(long)]
    pub(crate) tta: bool,
    /// Storage type of activations (f16 needs the adapter's shader-f16).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub(crate) precision: PrecisionArg,
    /// A multi-label model's threshold: the labels whose probability is above it are predicted [default: the
    /// model's, saved by finetune].
    #[arg(long, value_parser = probability)]
    pub(crate) threshold: Option<f32>,
    /// Image files (JPEG, PNG, WebP, BMP, GIF).
    #[arg(required = true)]
    pub(crate) images: Vec<std::path::PathBuf>,
}

/// The options of `wgtune export`.
#[derive(clap::Args)]
pub(crate) struct ExportArgs {
    /// A model saved by wgtune, or a raw pretrained safetensors file (then give --arch). Default: the embedded
    /// ImageNet EfficientNet-Lite0.
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Architecture of a raw pretrained file.
    #[arg(long)]
    pub arch: Option<Arch>,
    /// The ONNX file to write (replaced atomically if it exists).
    #[arg(long, value_name = "OUT.onnx")]
    pub onnx: std::path::PathBuf,
    /// ONNX opset.
    #[arg(long, default_value_t = wgtune::export::DEFAULT_OPSET, value_parser = opset)]
    pub opset: i64,
    /// Batch size of the exported input: `dynamic` (any batch) or a number.
    #[arg(long, default_value = "dynamic", value_parser = export_batch)]
    pub batch: ExportBatch,
    /// Add a `probabilities` output (softmax) after `logits`.
    #[arg(long)]
    pub probabilities: bool,
    /// Put the normalization inside the graph: the input is `pixels`, RGB 0-255 as float32, instead of the
    /// normalized `image`.
    #[arg(long)]
    pub normalize: bool,
}

/// `--batch`: dynamic or fixed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExportBatch(pub Option<usize>);

fn export_batch(s: &str) -> Result<ExportBatch, String> {
    if s == "dynamic" {
        return Ok(ExportBatch(None));
    }
    count(s).map(|n| ExportBatch(Some(n))).map_err(|e| format!("{e} (or 'dynamic')"))
}

fn opset(s: &str) -> Result<i64, String> {
    let range = wgtune::export::OPSETS;
    let v: i64 = s.parse().map_err(|_| format!("'{s}' is not a whole number"))?;
    if !range.contains(&v) {
        return Err(format!("{v} is outside {}..={}: wgtune writes those opsets", range.start(), range.end()));
    }
    Ok(v)
}

/// What a training run is made of: data, model, input and batch size, optimizer.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Image folder (DIR/train/<class>/* + DIR/valid/<class>/*, or DIR/<class>/*; with --label-regex, every
    /// image below DIR). Default: the embedded Fashion-MNIST subset.
    #[arg(long, help_heading = "Data")]
    pub(crate) data: Option<std::path::PathBuf>,
    /// Label the images of --data by the first capture group of this regex on their file names (fastai's
    /// from_name_re), e.g. '^(.+)_\d+\.jpg$'.
    #[arg(long, requires = "data", value_name = "RE", help_heading = "Data")]
    pub(crate) label_regex: Option<String>,
    /// A CSV with one row per image: file name and label (fastai's from_csv). File names are relative to the CSV's
    /// folder (and --folder).
    #[arg(long, conflicts_with_all = ["data", "idx_images"], help_heading = "Data")]
    pub(crate) csv: Option<std::path::PathBuf>,
    /// The CSV's file-name column: a header name, or a position from 0 [default: 0].
    #[arg(long, requires = "csv", value_name = "COLUMN", help_heading = "Data")]
    pub(crate) csv_image_col: Option<String>,
    /// The CSV's label column: a header name, or a position from 0 [default: 1].
    #[arg(long, requires = "csv", value_name = "COLUMN", help_heading = "Data")]
    pub(crate) csv_label_col: Option<String>,
    /// A true/false CSV column: its true rows are the validation set (instead of a random --valid-pct split).
    #[arg(long, requires = "csv", value_name = "COLUMN", help_heading = "Data")]
    pub(crate) valid_col: Option<String>,
    /// The folder the CSV's file names are relative to, itself relative to the CSV's folder (fastai's folder=).
    #[arg(long, requires = "csv", help_heading = "Data")]
    pub(crate) folder: Option<std::path::PathBuf>,
    /// Split the CSV's label cells into several labels at this delimiter (fastai's label_delim, e.g. ' '); where a
    /// row has several, the task is multi-label.
    #[arg(long, requires = "csv", value_name = "DELIM", help_heading = "Data")]
    pub(crate) label_delim: Option<String>,
    /// Multi-label classification (sigmoid outputs, binary cross-entropy, accuracy_multi and F2) even if every row
    /// of the CSV has one label.
    #[arg(long, requires = "csv", help_heading = "Data")]
    pub(crate) multi_label: bool,
    /// A multi-label model predicts every class whose probability is above this (fastai's thresh).
    #[arg(long, default_value_t = 0.5, value_parser = probability, help_heading = "Data")]
    pub(crate) threshold: f32,
    /// IDX image file (MNIST's format, raw or gzip), with --idx-labels.
    #[arg(long, requires = "idx_labels", conflicts_with = "data", value_name = "FILE", help_heading = "Data")]
    pub(crate) idx_images: Option<std::path::PathBuf>,
    /// IDX label file, one byte per image of --idx-images.
    #[arg(long, requires = "idx_images", value_name = "FILE", help_heading = "Data")]
    pub(crate) idx_labels: Option<std::path::PathBuf>,
    /// Class names of the IDX labels 0, 1, ..., comma-separated [default: the numbers].
    #[arg(long, requires = "idx_images", value_delimiter = ',', value_name = "NAMES", help_heading = "Data")]
    pub(crate) idx_classes: Vec<String>,
    /// Pretrained weights (safetensors). Default: the embedded ImageNet EfficientNet-Lite0.
    #[arg(long)]
    pub(crate) model: Option<std::path::PathBuf>,
    /// Start from random weights instead of pretrained ones (the baseline transfer learning is measured against).
    #[arg(long, conflicts_with = "model")]
    pub(crate) no_pretrained: bool,
    /// The architecture [default: told from --model's tensors, or effnet-lite0 (the embedded weights) without
    /// --model].
    #[arg(long)]
    pub(crate) arch: Option<Arch>,
    /// A ConvNeXt's or ViT's stochastic depth (timm's drop_path_rate): each block's residual branch is dropped per
    /// image with a probability rising linearly from 0 to RATE over the blocks, in training only.
    #[arg(long, default_value_t = 0.0, value_parser = drop_rate, value_name = "RATE")]
    pub(crate) drop_path: f64,
    #[arg(long, default_value_t = 32, value_parser = count)]
    pub(crate) bs: usize,
    /// Gradient accumulation (fastai's GradientAccumulation): N batches of --bs per optimizer step, which then
    /// sees the mean gradient of N x bs images; batch norm sees each batch of --bs. (A batch too large for the
    /// adapter is split this way by itself.)
    #[arg(long, default_value_t = 1, value_parser = count, value_name = "N")]
    pub(crate) accum: usize,
    /// Input size (square). Default: 224 on a GPU; 64 on a software adapter, where 224 would take hours.
    #[arg(long, value_parser = image_size)]
    pub(crate) size: Option<usize>,
    /// Fraction held out for validation when the folder has no valid/ split [default: 0.2].
    #[arg(long, value_parser = valid_fraction)]
    pub(crate) valid_pct: Option<f64>,
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Decoupled weight decay (not applied to batch norm and biases).
    #[arg(long, default_value_t = 0.01, value_parser = weight_decay)]
    pub(crate) wd: f64,
    /// Batch norm of the frozen body in eval mode too: nothing of the body trains in phase 1.
    #[arg(long)]
    pub(crate) freeze_bn: bool,
    /// Storage type of activations and their gradients: f16 is fastai's to_fp16 (mixed precision with dynamic
    /// loss scaling; needs the adapter's shader-f16). The saved model is f32 either way.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub(crate) precision: PrecisionArg,
    /// With --precision f16: the dynamic loss scale's start (PyTorch GradScaler's init_scale). It halves, skipping
    /// the step's update, whenever the gradients overflow f16, and doubles after 2,000 clean steps.
    #[arg(long, default_value_t = wgtune::ops::scaler::DEFAULT_SCALE, value_parser = loss_scale, value_name = "SCALE")]
    pub(crate) loss_scale: f32,
    /// SGD with momentum instead of Adam.
    #[arg(long)]
    pub(crate) sgd: bool,
    /// Train without data augmentation (only the resize and normalization).
    #[arg(long, conflicts_with = "augment")]
    pub(crate) no_augment: bool,
    /// Train with data augmentation even where the preset turns it off (the embedded data set on a software
    /// adapter).
    #[arg(long)]
    pub(crate) augment: bool,
}

#[derive(clap::Args)]
pub(crate) struct FinetuneArgs {
    #[command(flatten)]
    pub(crate) run: RunArgs,
    /// Epochs after unfreezing. Default: 2 on a software adapter, 3 on a GPU.
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    /// Epochs with the body frozen.
    #[arg(long, default_value_t = 1)]
    pub(crate) freeze_epochs: usize,
    /// Base learning rate (fastai's base_lr).
    #[arg(long, default_value_t = 2e-3, value_parser = learning_rate)]
    pub(crate) lr: f64,
    /// Ratio of the head's learning rate to the first group's after unfreezing.
    #[arg(long, default_value_t = 100.0, value_parser = ratio)]
    pub(crate) lr_mult: f64,
    #[arg(long, default_value_t = 0.3, value_parser = fraction)]
    pub(crate) pct_start: f64,
    #[arg(long, default_value_t = 5.0, value_parser = ratio)]
    pub(crate) div: f64,
    /// Where to save the fine-tuned model; the loss curve and confusion matrix go next to it (OUT.loss.png,
    /// OUT.confusion.png without the .safetensors).
    #[arg(long, default_value = "wgtune-model.safetensors")]
    pub(crate) out: std::path::PathBuf,
    /// One JSON line per epoch.
    #[arg(long)]
    pub(crate) json_log: Option<std::path::PathBuf>,
    /// Continue an interrupted run from its checkpoint (OUT.checkpoint, written after every epoch).
    #[arg(long, conflicts_with = "overwrite")]
    pub(crate) resume: bool,
    /// Start over although an interrupted run with this --out left a checkpoint (it is replaced).
    #[arg(long)]
    pub(crate) overwrite: bool,
    /// Time the second step of each phase dispatch by dispatch (GPU timestamps) and print where the time went,
    /// per op type and per kernel, at the end.
    #[arg(long)]
    pub(crate) profile: bool,
    /// Wrap training step N (1-based) in a RenderDoc capture; run under RenderDoc (see README) to record it.
    #[arg(long, value_name = "N")]
    pub(crate) capture_step: Option<u64>,
    /// Keep the best epoch (fastai's SaveModelCallback): at the end of each phase, go back to the weights of its
    /// best epoch by this metric; the saved model is the unfrozen phase's best.
    #[arg(long, value_name = "METRIC", value_parser = monitor)]
    pub(crate) save_best: Option<wgtune::learner::Monitor>,
    /// Validate once more at the end with test-time augmentation (fastai's learn.tta: 4 augmented views blended
    /// with the plain one, beta 0.25) and print both accuracies.
    #[arg(long)]
    pub(crate) tta: bool,
    /// Stop a phase after N epochs without improvement (fastai's EarlyStoppingCallback), of --save-best's metric
    /// or else of valid_loss.
    #[arg(long, value_name = "N", value_parser = count)]
    pub(crate) early_stop: Option<usize>,
    /// MixUp (fastai's callback): each training image blended with another of its batch, weight lam ~
    /// Beta(ALPHA, ALPHA) (the larger of lam and 1 - lam), and the loss blended alike. fastai's default ALPHA: 0.4.
    #[arg(long, value_name = "ALPHA", value_parser = mixing_alpha, conflicts_with = "cutmix")]
    pub(crate) mixup: Option<f64>,
    /// CutMix (fastai's callback): a box of each training batch pasted from shuffled partners, its area about 1 - lam
    /// with lam ~ Beta(ALPHA, ALPHA), and the loss weighted by the area kept. fastai's default ALPHA: 1.0.
    #[arg(long, value_name = "ALPHA", value_parser = mixing_alpha)]
    pub(crate) cutmix: Option<f64>,
}

fn mixing_alpha(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("{v}: the Beta distribution's alpha must be positive"));
    }
    Ok(v)
}

fn probability(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{v} is not a probability from 0 to 1"));
    }
    Ok(v)
}

fn monitor(s: &str) -> Result<wgtune::learner::Monitor, String> {
    wgtune::learner::Monitor::parse(s).map_err(|e| e.to_string())
}

#[derive(clap::Args)]
pub(crate) struct LrFindArgs {
    #[command(flatten)]
    pub(crate) run: RunArgs,
    #[arg(long, default_value_t = 1e-7, value_parser = learning_rate)]
    pub(crate) start_lr: f64,
    #[arg(long, default_value_t = 10.0, value_parser = learning_rate)]
    pub(crate) end_lr: f64,
    /// Training steps of the ramp (fewer when the loss diverges first).
    #[arg(long, default_value_t = 100, value_parser = count)]
    pub(crate) num_it: usize,
    /// Where to save the loss-vs-learning-rate plot.
    #[arg(long, default_value = "wgtune-lr-find.png")]
    pub(crate) plot: std::path::PathBuf,
}

/// The storage type of activations (`--precision`): fastai's `to_fp16` is f16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PrecisionArg {
    /// Everything in f32.
    F32,
    /// Activations and their gradients in f16 (needs the adapter's shader-f16); master weights, weight gradients,
    /// optimizer state, normalization statistics and the loss in f32, with dynamic loss scaling.
    F16,
}

impl From<PrecisionArg> for wgtune::gpu::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => wgtune::gpu::Precision::F32,
            PrecisionArg::F16 => wgtune::gpu::Precision::F16,
        }
    }
}

/// The training step a benchmark compiles: a model with fastai's head, batch size, input size, precision.
#[derive(clap::Args)]
pub(crate) struct StepArgs {
    /// An architecture (effnet-lite0, resnet18/34/50, convnext_atto ... convnext_base), or small_cnn (three
    /// conv-BN-ReLU, global pool, linear).
    #[arg(long, default_value = "effnet-lite0")]
    pub(crate) model: String,
    /// Batch size.
    #[arg(long, default_value_t = 32, value_parser = count)]
    pub(crate) bs: usize,
    /// Input size (square images, 3 channels).
    #[arg(long, default_value_t = 64, value_parser = image_size)]
    pub(crate) size: usize,
    /// Storage type of activations and their gradients.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub(crate) precision: PrecisionArg,
}

/// Which ImageNet models a benchmark runs, at which batch size and input size.
#[derive(clap::Args)]
pub(crate) struct ModelsArgs {
    /// Architectures, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![Arch::EffnetLite0, Arch::Resnet50])]
    pub(crate) model: Vec<Arch>,
    #[arg(long, default_value_t = 32, value_parser = count)]
    pub(crate) bs: usize,
    #[arg(long, default_value_t = 224, value_parser = image_size)]
    pub(crate) size: usize,
    /// Storage type of activations and their gradients.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub(crate) precision: PrecisionArg,
}

/// `bench matmul`'s default `--kernels`: every variant, then the autotuner's choice.
const MATMUL_KERNELS: [&str; 7] = ["naive", "tiled", "shared32", "shared64", "shared128", "staged128", "auto"];

#[derive(Subcommand)]
pub(crate) enum BenchCommand {
    /// Data pipeline images/s: JPEG decode + presize on CPU worker threads, augmentation on the GPU.
    Data {
        /// Synthetic JPEG photos to make and decode.
        #[arg(long, default_value_t = 128, value_parser = count)]
        images: usize,
        #[arg(long, default_value_t = 256, value_parser = image_size)]
        presize: usize,
        #[arg(long, default_value_t = 224, value_parser = image_size)]
        size: usize,
        #[arg(long, default_value_t = 32, value_parser = count)]
        bs: usize,
        /// Decoding threads (default: the number of CPU cores).
        #[arg(long, value_parser = count)]
        workers: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Inference images/s of ImageNet classifiers (eval mode, probabilities read back).
    Predict {
        #[command(flatten)]
        models: ModelsArgs,
        /// Timed batches after a warm-up (median reported).
        #[arg(long, default_value_t = 3, value_parser = count)]
        runs: usize,
        #[arg(long)]
        json: bool,
    },
    /// Planned GPU memory (parameters, gradients, optimizer state, activations) of models with fastai's head.
    Memory {
        #[command(flatten)]
        models: ModelsArgs,
        /// Also count the bytes one training step's dispatches bind (compiles the training program, allocating
        /// its buffers).
        #[arg(long)]
        bound: bool,
        #[arg(long)]
        json: bool,
    },
    /// Training images/s of a model with fastai's head (every parameter trains, Adam, random inputs), planned GPU
    /// memory and CPU encode time per step.
    #[command(alias = "step")]
    Train {
        #[command(flatten)]
        step: StepArgs,
        /// Timed steps after the first.
        #[arg(long, default_value_t = 10, value_parser = count)]
        steps: usize,
        /// Time one more step dispatch by dispatch and print where the GPU time goes, per op type and kernel.
        #[arg(long)]
        profile: bool,
        /// Write each step's batch from host memory, as training does, instead of copying a batch kept on the GPU
        /// (the default, as PyTorch's benchmark keeps its batch on the device).
        #[arg(long)]
        host_input: bool,
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
        #[arg(long, default_value_t = 5, value_parser = count)]
        runs: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// The autotuner's choice of kernel for every problem of a model's training step on this device, with what
    /// each variant measured (compiles the step; WGTUNE_AUTOTUNE=off|cache|full, WGTUNE_CACHE_DIR).
    Tune {
        #[command(flatten)]
        step: StepArgs,
        #[arg(long)]
        json: bool,
    },
    /// GFLOP/s of every matmul kernel on square problems.
    Matmul {
        /// Matrix sizes n (C = A·B, all n x n).
        #[arg(long, value_delimiter = ',', default_values_t = vec![256, 512, 1024])]
        sizes: Vec<usize>,
        /// Kernels to time: naive, tiled, shared32, shared64, shared128, staged128, or auto (the autotuner's choice
        /// for the size, reported with the kernel it chose).
        #[arg(long, value_delimiter = ',', default_values_t = MATMUL_KERNELS.map(String::from).to_vec())]
        kernels: Vec<String>,
        /// Timed runs per case (median reported).
        #[arg(long, default_value_t = 5, value_parser = count)]
        runs: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}
