//! `wgtune finetune` and `wgtune lr-find`: the learner driven from the command line, with progress bars, the
//! epoch table, Ctrl-C handling and the charts.

use super::args::{FinetuneArgs, LrFindArgs, RunArgs};
use super::bench::open_gpu;

/// A run's claim on its `--out`: checked before any training (so a bad path fails in seconds, not after an
/// epoch), and locked so that a second run with the same `--out` is refused instead of overwriting the first's
/// checkpoints. The lock file (OUT.lock, holding the process id) goes away when the run ends.
pub(crate) struct OutLock {
    path: std::path::PathBuf,
}

impl OutLock {
    pub(crate) fn acquire(out: &std::path::Path, resume: bool, overwrite: bool) -> anyhow::Result<OutLock> {
        if out.is_dir() {
            anyhow::bail!(
                "--out '{}' is a folder: give the model's file name, e.g. --out {}",
                out.display(),
                out.join("model.safetensors").display()
            );
        }
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        if !parent.is_dir() {
            anyhow::bail!("--out '{}': the folder '{}' does not exist", out.display(), parent.display());
        }
        let path = std::path::PathBuf::from(format!("{}.lock", out.display()));
        let mut file = match std::fs::File::create_new(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let pid: Option<u32> = holder.trim().parse().ok();
                if pid.is_some_and(process_is_running) {
                    anyhow::bail!(
                        "another wgtune run (process {}) is writing to --out '{}'; give this run another --out (if no \
                         such run exists, delete {})",
                        holder.trim(),
                        out.display(),
                        path.display()
                    );
                }
                // Left by a run that was killed: take it over.
                std::fs::File::create(&path)
                    .map_err(|e| anyhow::anyhow!("cannot write next to --out '{}': {e}", out.display()))?
            }
            Err(e) => anyhow::bail!("cannot write next to --out '{}': {e}", out.display()),
        };
        use std::io::Write;
        let lock = OutLock { path };
        write!(file, "{}", std::process::id())
            .map_err(|e| anyhow::anyhow!("cannot write next to --out '{}': {e}", out.display()))?;
        let checkpoint = checkpoint_path(out);
        if checkpoint.exists() && !resume && !overwrite {
            anyhow::bail!(
                "an interrupted run left its checkpoint {}: continue it with --resume, or start over with --overwrite",
                checkpoint.display()
            );
        }
        Ok(lock)
    }
}

impl Drop for OutLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a process with this id runs (Linux: /proc; elsewhere assumed, and the message says how to clear it).
fn process_is_running(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    let proc = std::path::Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// The most classes a confusion matrix is printed and drawn for.
const MAX_CONFUSION_CLASSES: usize = 50;

/// What the end of a run prints about the validation set's confusion, and whether to draw the chart: the matrix
/// up to a few dozen classes; beyond, a line with the accuracy (the most confused pairs follow either way).
fn confusion_report(confusion: &wgtune::learner::Confusion) -> (String, bool) {
    if confusion.classes.len() <= MAX_CONFUSION_CLASSES {
        let table = confusion.table();
        return (format!("confusion matrix (validation set, {} images)\n{table}", confusion.total()), true);
    }
    let line = format!(
        "{} classes: too many for a readable confusion matrix (at most {MAX_CONFUSION_CLASSES}); validation accuracy \
         {:.4} over {} images",
        confusion.classes.len(),
        confusion.accuracy(),
        confusion.total()
    );
    (line, false)
}

/// Where a run with `--out OUT` keeps its checkpoint.
pub(crate) fn checkpoint_path(out: &std::path::Path) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("{}.checkpoint", out.display()))
}

/// The embedded default data set (a folder of the source tree).
const DEFAULT_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/fashion_mnist");

/// The run's data set, from --csv, --idx-images/--idx-labels, --data with --label-regex, or a folder (the
/// embedded one by default), and a description of where it came from.
fn load_data(r: &RunArgs) -> anyhow::Result<(wgtune::data::dataset::Dataset, String)> {
    use wgtune::data::dataset::{Column, CsvOptions, Dataset};
    let valid_pct = r.valid_pct.unwrap_or(0.2);
    let ignored = |why: &str| {
        if r.valid_pct.is_some() {
            eprintln!("warning: --valid-pct is ignored: {why}");
        }
    };
    if let Some(csv) = &r.csv {
        let column = |c: &Option<String>, default: usize| c.as_deref().map_or(Column::Index(default), Column::parse);
        let opts = CsvOptions {
            image_col: column(&r.csv_image_col, 0),
            label_col: column(&r.csv_label_col, 1),
            valid_col: r.valid_col.as_deref().map(Column::parse),
            folder: r.folder.clone(),
            label_delim: r.label_delim.clone(),
            multi_label: r.multi_label,
        };
        if let Some(v) = &r.valid_col {
            ignored(&format!("the CSV's column '{v}' splits the data"));
        }
        let root = csv.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        return Ok((Dataset::from_csv(csv, root, &opts, valid_pct, r.seed)?, csv.display().to_string()));
    }
    if let (Some(images), Some(labels)) = (&r.idx_images, &r.idx_labels) {
        let names = (!r.idx_classes.is_empty()).then(|| r.idx_classes.clone());
        let data = Dataset::from_idx(images, labels, names, valid_pct, r.seed)?;
        return Ok((data, format!("{} + {}", images.display(), labels.display())));
    }
    let dir = r.data.clone().unwrap_or_else(|| DEFAULT_DATA.into());
    if let Some(re) = &r.label_regex {
        let data = Dataset::from_regex(&dir, re, valid_pct, r.seed)?;
        return Ok((data, format!("{} (labels from --label-regex)", dir.display())));
    }
    if dir.join("train").is_dir() && dir.join("valid").is_dir() {
        ignored(&format!("'{}' has its own train/ and valid/ folders", dir.display()));
    }
    Ok((Dataset::from_folder(&dir, valid_pct, r.seed)?, dir.display().to_string()))
}

/// The pretrained weights, the data and the GPU of a run, and the learner built from them; `epochs` None means
/// the preset's.
pub(crate) fn prepare(
    adapter: Option<String>,
    r: &RunArgs,
    epochs: Option<usize>,
    cfg: wgtune::learner::FineTuneConfig,
) -> anyhow::Result<wgtune::learner::Learner> {
    use wgtune::learner::{FineTuneConfig, Learner};
    use wgtune::nn::model::EFFNET_LITE0_IMAGENET;
    use wgtune::nn::weights::Weights;
    use wgtune::nn::Arch;
    let weights = match &r.model {
        _ if r.no_pretrained => None,
        Some(p) => Some(Weights::open(p)?),
        None if r.arch.is_none_or(|a| a == Arch::EffnetLite0) => {
            Some(Weights::from_static(EFFNET_LITE0_IMAGENET, "embedded EfficientNet-Lite0 (ImageNet)")?)
        }
        None => anyhow::bail!(
            "--arch {} has no embedded weights: give pretrained ones with --model FILE (timm's or torchvision's \
             safetensors), or train from scratch with --no-pretrained",
            r.arch.map_or("", |a| a.name())
        ),
    };
    let arch = match (r.arch, &weights) {
        (Some(a), _) => a,
        (None, Some(w)) if r.model.is_some() => {
            let a = wgtune::nn::model::ModelSpec::of_weights(w, None)?.arch;
            eprintln!("model: {a}, as '{}' says (its metadata or its tensors; --arch to say otherwise)", w.origin());
            a
        }
        (None, _) => Arch::EffnetLite0,
    };
    let (data, origin) = load_data(r)?;
    eprintln!(
        "data: {origin} ({} classes, {} train, {} valid images{})",
        data.classes.len(),
        data.train.len(),
        data.valid.len(),
        if data.multi_label {
            format!("; multi-label: sigmoid outputs, binary cross-entropy, threshold {}", r.threshold)
        } else {
            String::new()
        }
    );
    if r.no_pretrained {
        eprintln!("model: {} from random initial weights (--no-pretrained)", arch.name());
    }
    let gpu = std::sync::Arc::new(open_gpu(adapter, cfg.capture_step.is_some())?);
    if r.precision == super::args::PrecisionArg::F16 && !gpu.has_shader_f16() {
        anyhow::bail!(
            "--precision f16 needs the shader-f16 feature, which the adapter '{}' does not have: use --precision f32 \
             (the default) here",
            gpu.summary().name
        );
    }
    let software = gpu.summary().is_software;
    let size = r.size.unwrap_or(if software { 64 } else { 224 });
    let epochs_known = epochs.is_some();
    let epochs = epochs.unwrap_or(if software { 2 } else { 3 });
    // Measured on the embedded 28x28 Fashion-MNIST images at 64 px, 1 + 2 epochs: 76.2% without augmentation,
    // 73.2% with it (BENCHMARKS.md). Elsewhere fastai's augmentation stays on.
    let embedded = r.data.is_none() && r.csv.is_none() && r.idx_images.is_none();
    let augment = r.augment || !(r.no_augment || (software && embedded));
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
        presize: wgtune::data::presize_for(size),
        epochs,
        augment,
        accum: r.accum,
        precision: r.precision.into(),
        loss_scale: r.loss_scale,
        threshold: r.threshold,
        drop_path: r.drop_path,
        ..cfg
    };
    let (bs, px) = (cfg.bs, cfg.size);
    let learner = Learner::new(gpu, &data, weights.as_ref(), cfg).map_err(|e| with_memory_advice(e, bs, px))?;
    if let Some(s) = learner.split {
        eprintln!(
            "a batch of {} at {px}x{px} does not fit this adapter's storage-binding limit: training it as {} \
             accumulated micro-batches of {} (one optimizer step per {} images; batch norm sees {} at a time)",
            s.batch, s.parts, s.micro, s.batch, s.micro
        );
    }
    if r.accum > 1 {
        let l = &learner.cfg;
        eprintln!(
            "gradient accumulation: {} batches of {} per optimizer step ({} images)",
            l.accum,
            l.bs,
            l.accum * l.bs
        );
    }
    Ok(learner)
}

/// Errors that mean the run did not fit the GPU get advice on what to change; others pass through.
pub(crate) fn with_memory_advice(e: wgtune::Error, bs: usize, size: usize) -> anyhow::Error {
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
pub(crate) fn progress_printer() -> impl FnMut(&str, usize, usize, usize, f64) {
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

pub(crate) fn lr_find(adapter: Option<String>, a: LrFindArgs) -> anyhow::Result<()> {
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
    super::plot::lr_find(&a.plot, &found)?;
    println!("plot: {}", a.plot.display());
    Ok(())
}

pub(crate) fn finetune(adapter: Option<String>, a: FinetuneArgs) -> anyhow::Result<()> {
    use std::io::Write;
    use wgtune::nn::model::save_model;
    if a.epochs == Some(0) && a.freeze_epochs == 0 {
        anyhow::bail!("--epochs 0 with --freeze-epochs 0 trains nothing: give at least one epoch");
    }
    let _lock = OutLock::acquire(&a.out, a.resume, a.overwrite)?;
    let cfg = wgtune::learner::FineTuneConfig {
        freeze_epochs: a.freeze_epochs,
        lr: a.lr,
        lr_mult: a.lr_mult,
        pct_start: a.pct_start,
        div: a.div,
        save_best: a.save_best,
        early_stop: a.early_stop,
        mixing: match (a.mixup, a.cutmix) {
            (Some(alpha), _) => Some(wgtune::data::augment::Mixing::MixUp { alpha }),
            (_, Some(alpha)) => Some(wgtune::data::augment::Mixing::CutMix { alpha }),
            _ => None,
        },
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
    if let Some(m) = learner.cfg.mixing {
        eprintln!("{}", describe_mixing(m));
    }
    let mut on_epoch = |r: &wgtune::learner::EpochRecord| {
        if r.phase != last_phase {
            println!("\n{} phase", r.phase);
            println!("{}", epoch_header(r));
            last_phase = r.phase.clone();
        }
        println!("{}", epoch_row(r));
        // fastai's callbacks' messages.
        let metric = a.save_best.unwrap_or(wgtune::learner::Monitor::ValidLoss);
        if a.save_best.is_some() && r.improved == Some(true) {
            println!("better model found at epoch {} with {} value: {:.6}", r.epoch, metric.name(), metric.of(r));
        }
        if r.early_stop {
            let n = a.early_stop.unwrap_or(0);
            let epochs = if n == 1 { "epoch" } else { "epochs" };
            println!(
                "no improvement of {} in the last {n} {epochs}: early stopping ({} phase)",
                metric.name(),
                r.phase
            );
        }
        if let Some(k) = r.kept_epoch {
            println!("kept the weights of {} epoch {k}, the best by {}", r.phase, metric.name());
        }
        if let Some(f) = log.as_mut() {
            let _ = writeln!(f, "{}", serde_json::to_string(r).unwrap_or_default());
        }
    };
    let checkpoint = checkpoint_path(&a.out);
    if a.resume {
        eprintln!("resuming from {}", checkpoint.display());
    }
    // Ctrl-C and SIGTERM (kill, systemd, docker stop, schedulers): finish the current step, write a checkpoint,
    // exit 130. A second one exits at once.
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
    if learner.cfg.precision == wgtune::gpu::Precision::F16 {
        let s = learner.ex.loss_scaler()?;
        let at: Vec<String> =
            (learner.history.iter().enumerate()).filter(|(_, h)| h.skipped).map(|(i, _)| (i + 1).to_string()).collect();
        let at = match at.len() {
            0 => String::new(),
            1 => format!(" (step {})", at[0]),
            _ => format!(" (steps {})", at.join(", ")),
        };
        println!(
            "
mixed precision: loss scale {} at the end; {} of {} steps skipped{at} for f16 gradients that overflowed",
            s.scale,
            s.skipped,
            learner.ex.step()
        );
    }
    // The model is saved: the checkpoint has nothing left to resume, and left behind it would make the next run
    // with this --out refuse to start as if this one had been interrupted.
    if let Err(e) = std::fs::remove_file(&checkpoint) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("warning: cannot remove the finished run's checkpoint {}: {e}", checkpoint.display());
        }
    }
    println!(
        "\nsaved the fine-tuned model to {out} (use it with `wgtune predict --model {out} IMAGES`; for onnxruntime and \
         others: `wgtune export --model {out} --onnx {}`)",
        a.out.with_extension("onnx").display(),
        out = a.out.display(),
    );
    let (_, scores) = learner.validate_scores()?;
    let side = |ext: &str| a.out.with_extension(ext);
    let steps = learner.steps_per_epoch();
    let confusion = match scores {
        wgtune::learner::Scores::Single(c) => c,
        wgtune::learner::Scores::Multi(m) => {
            println!(
                "\nmulti-label validation ({} images, threshold {}): accuracy_multi {:.4}, F2 (samples) {:.4}",
                m.total(),
                m.threshold,
                m.accuracy(),
                m.fbeta()
            );
            super::plot::loss_curve(&side("loss.png"), &learner.history, &records, steps)?;
            println!("plot: {} (loss curve)", side("loss.png").display());
            return finish(&mut learner, &a, log.as_mut(), bs, size);
        }
    };
    let (report, readable) = confusion_report(&confusion);
    println!("\n{report}");
    let worst: Vec<String> =
        confusion.most_confused(1).iter().take(5).map(|(a, p, n)| format!("{a} -> {p}: {n}")).collect();
    if !worst.is_empty() {
        println!("most confused (actual -> predicted): {}", worst.join(", "));
    }
    super::plot::loss_curve(&side("loss.png"), &learner.history, &records, steps)?;
    if readable {
        super::plot::confusion(&side("confusion.png"), &confusion)?;
        println!(
            "plots: {} (loss curve), {} (confusion matrix)",
            side("loss.png").display(),
            side("confusion.png").display()
        );
    } else {
        println!("plot: {} (loss curve; no confusion-matrix chart for this many classes)", side("loss.png").display());
    }
    finish(&mut learner, &a, log.as_mut(), bs, size)
}

/// The end of a run after its report: test-time augmentation, profiles, a capture warning.
fn finish(
    learner: &mut wgtune::learner::Learner,
    a: &FinetuneArgs,
    log: Option<&mut std::fs::File>,
    bs: usize,
    size: usize,
) -> anyhow::Result<()> {
    use std::io::Write;
    if a.tta {
        use wgtune::learner::{TTA_BETA, TTA_VIEWS};
        let t0 = std::time::Instant::now();
        let t = learner.tta(TTA_VIEWS, TTA_BETA).map_err(|e| with_memory_advice(e, bs, size))?;
        let fbeta = match (t.fbeta, t.plain_fbeta) {
            (Some(f), Some(p)) => format!(", F2 {f:.4} (plain {p:.4})"),
            _ => String::new(),
        };
        println!(
            "\ntest-time augmentation ({TTA_VIEWS} augmented views + the plain one, beta {TTA_BETA}): {} {:.4} \
             (plain {:.4}){fbeta}, valid_loss {:.6} (plain {:.6}), {:.0} s",
            if learner.spec.multi_label() { "accuracy_multi" } else { "accuracy" },
            t.accuracy,
            t.plain_accuracy,
            t.valid_loss,
            t.plain_valid_loss,
            t0.elapsed().as_secs_f64()
        );
        if let Some(f) = log {
            let _ = writeln!(f, "{}", serde_json::json!({ "tta": t }));
        }
    }
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

/// What the run's MixUp/CutMix does, for the log.
fn describe_mixing(m: wgtune::data::augment::Mixing) -> String {
    match m {
        wgtune::data::augment::Mixing::MixUp { alpha } => {
            format!("MixUp: training images blended in pairs, lam ~ Beta({alpha}, {alpha}), the loss blended alike")
        }
        wgtune::data::augment::Mixing::CutMix { alpha } => {
            format!("CutMix: a box per training batch pasted from shuffled partners, lam ~ Beta({alpha}, {alpha})")
        }
    }
}

/// fastai's epoch table header: accuracy and error rate, or accuracy_multi and F2 for a multi-label model.
fn epoch_header(r: &wgtune::learner::EpochRecord) -> String {
    match r.fbeta {
        None => format!(
            "{:>5}  {:>10}  {:>10}  {:>10}  {:>8}  {:>6}",
            "epoch", "train_loss", "valid_loss", "error_rate", "accuracy", "time"
        ),
        Some(_) => format!(
            "{:>5}  {:>10}  {:>10}  {:>14}  {:>11}  {:>6}",
            "epoch", "train_loss", "valid_loss", "accuracy_multi", "fbeta_score", "time"
        ),
    }
}

fn epoch_row(r: &wgtune::learner::EpochRecord) -> String {
    let secs = r.seconds as u64;
    let time = format!("{:02}:{:02}", secs / 60, secs % 60);
    match r.fbeta {
        None => format!(
            "{:>5}  {:>10.6}  {:>10.6}  {:>10.6}  {:>8.4}  {time}",
            r.epoch, r.train_loss, r.valid_loss, r.error_rate, r.accuracy
        ),
        Some(f) => format!(
            "{:>5}  {:>10.6}  {:>10.6}  {:>14.6}  {:>11.6}  {time}",
            r.epoch, r.train_loss, r.valid_loss, r.accuracy, f
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out of memory and device loss name the batch size to try; other errors pass through unchanged.
    /// 1,600 classes: no matrix printed and no chart drawn (it overflowed the PNG size and took GBs), a line
    /// with the accuracy instead; ten classes still get both.
    #[test]
    fn many_classes_get_a_summary_instead_of_a_matrix() {
        let classes: Vec<String> = (0..1600).map(|i| format!("class{i}")).collect();
        let mut c = wgtune::learner::Confusion::new(classes);
        c.add(3, 3);
        c.add(5, 7);
        let (text, chart) = confusion_report(&c);
        assert!(!chart && text.contains("1600 classes") && text.contains("0.5000") && text.len() < 200, "{text}");
        let mut small = wgtune::learner::Confusion::new((0..10).map(|i| i.to_string()).collect());
        small.add(1, 1);
        let (text, chart) = confusion_report(&small);
        assert!(chart && text.contains("confusion matrix"), "{text}");
    }

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
