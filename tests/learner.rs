//! fine_tune end to end on a tiny subset of the embedded data: it learns, a resumed run equals an uninterrupted
//! one, and a NaN stops training without touching the last checkpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use wgtune::data::dataset::Dataset;
use wgtune::learner::{EpochRecord, FineTuneConfig, Learner, Monitor};
use wgtune::nn::model::EFFNET_LITE0_IMAGENET;
use wgtune::nn::weights::Weights;

fn gpu() -> Arc<wgtune::gpu::Gpu> {
    static GPU: OnceLock<Arc<wgtune::gpu::Gpu>> = OnceLock::new();
    GPU.get_or_init(|| match wgtune::gpu::Gpu::new(&wgtune::gpu::AdapterRequest::from_env()) {
        Ok(g) => Arc::new(g),
        Err(e) => panic!("learner tests need an adapter and found none: {e}"),
    })
    .clone()
}

/// Two well-separated Fashion-MNIST classes (trousers, bags): `train` + `valid` images each.
fn tiny_data(train: usize, valid: usize) -> Dataset {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/fashion_mnist");
    let full = Dataset::from_folder(&root, 0.2, 1).unwrap();
    let keep = |name: &str| full.classes.iter().position(|c| c == name).unwrap() as u32;
    let (a, b) = (keep("Trouser"), keep("Bag"));
    let pick = |items: &[wgtune::data::dataset::Item], n: usize| {
        let mut out = Vec::new();
        for (new_label, old) in [(0u32, a), (1u32, b)] {
            out.extend(items.iter().filter(|i| i.label() == old).take(n).cloned().map(|mut i| {
                i.labels = vec![new_label];
                i
            }));
        }
        out
    };
    Dataset {
        classes: vec!["Trouser".into(), "Bag".into()],
        multi_label: false,
        train: pick(&full.train, train),
        valid: pick(&full.valid, valid),
        skipped: Vec::new(),
    }
}

fn cfg() -> FineTuneConfig {
    FineTuneConfig {
        size: 32,
        presize: 37,
        bs: 16,
        epochs: 2,
        freeze_epochs: 1,
        workers: 2,
        ..FineTuneConfig::default()
    }
}

fn weights() -> Weights {
    Weights::from_static(EFFNET_LITE0_IMAGENET, "embedded EfficientNet-Lite0").unwrap()
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two classes, 96 training images each at 32 px, 1 frozen + 2 unfrozen epochs: validation accuracy must beat
/// chance (50%) by a clear margin (>= 80%); the resumed run from the checkpoint after the first epoch must end
/// with bit-identical weights; a NaN weight stops training with a message and leaves the checkpoint as it was.
#[test]
fn fine_tune_learns_resumes_exactly_and_stops_on_nan() {
    let dir = Dir(std::env::temp_dir().join(format!("wgtune-learner-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let data = tiny_data(96, 16);
    let ckpt = dir.0.join("run.checkpoint");
    let after_first = dir.0.join("after-first-epoch.checkpoint");

    let mut full = Learner::new(gpu(), &data, Some(&weights()), cfg()).unwrap();
    let mut on_epoch = |r: &wgtune::learner::EpochRecord| {
        eprintln!("{r:?}");
        if r.phase == "frozen" {
            std::fs::copy(&ckpt, &after_first).unwrap();
        }
    };
    let go = AtomicBool::new(false);
    let records = full.fit(&mut |_, _, _, _, _| {}, &mut on_epoch, Some(&ckpt), None, &go).unwrap();
    assert_eq!(records.len(), 3);
    let last = records.last().unwrap();
    assert!(last.accuracy >= 0.8, "validation accuracy {} after fine-tuning (chance is 0.5)", last.accuracy);
    let (full_state, _) = full.ex.training_state().unwrap();

    let mut resumed = Learner::new(gpu(), &data, Some(&weights()), cfg()).unwrap();
    let again = resumed.fit(&mut |_, _, _, _, _| {}, &mut |_| {}, None, Some(&after_first), &go).unwrap();
    assert_eq!(again.len(), 3, "the restored record plus the two resumed epochs");
    // A restored record is what the checkpoint kept: everything but the display-only confusion matrix.
    assert_eq!(again[0], EpochRecord { confusion: None, ..records[0].clone() });
    let (resumed_state, _) = resumed.ex.training_state().unwrap();
    for ((name, _, a), (_, _, b)) in full_state.iter().zip(&resumed_state) {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} differs after resuming");
    }

    // Ctrl-C in the middle of the first unfrozen epoch: the run stops after the current step with a checkpoint,
    // and resuming it mid-epoch ends exactly where the uninterrupted run did.
    let stop = AtomicBool::new(false);
    let stopped_ckpt = dir.0.join("stopped.checkpoint");
    let mut interrupted = Learner::new(gpu(), &data, Some(&weights()), cfg()).unwrap();
    let mut raise = |phase: &str, _: usize, done: usize, _: usize, _: f64| {
        if phase == "unfrozen" && done == 3 {
            stop.store(true, Ordering::SeqCst);
        }
    };
    let err = interrupted.fit(&mut raise, &mut |_| {}, Some(&stopped_ckpt), None, &stop).unwrap_err();
    assert!(matches!(err, wgtune::Error::Interrupted(_)) && err.to_string().contains("--resume"), "{err}");
    let mut continued = Learner::new(gpu(), &data, Some(&weights()), cfg()).unwrap();
    let finished = continued.fit(&mut |_, _, _, _, _| {}, &mut |_| {}, None, Some(&stopped_ckpt), &go).unwrap();
    assert_eq!(finished.len(), 3);
    let (continued_state, _) = continued.ex.training_state().unwrap();
    for ((name, _, a), (_, _, b)) in full_state.iter().zip(&continued_state) {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} differs after a mid-epoch resume");
    }

    let mut broken = Learner::new(gpu(), &data, Some(&weights()), cfg()).unwrap();
    let before = std::fs::read(&after_first).unwrap();
    // Resume, then poison a weight: the next step's loss is NaN.
    let (_, records, _) = broken.load_checkpoint(&after_first).unwrap();
    assert_eq!(records.len(), 1);
    let n = broken.ex.read_value("head.8.weight").unwrap().len();
    broken.ex.write_value("head.8.weight", &vec![f32::NAN; n]).unwrap();
    let phases = broken.phases();
    broken.ex.freeze_to(0).unwrap();
    let err = broken.epoch(&phases[1], 0, 1, &mut |_, _, _, _, _| {}, None, &go).unwrap_err().to_string();
    assert!(err.contains("NaN") && err.contains("--lr"), "{err}");
    assert_eq!(std::fs::read(&after_first).unwrap(), before, "the last good checkpoint is untouched");
}

/// --save-best and --early-stop (fastai's SaveModelCallback and EarlyStoppingCallback, reset every phase): each
/// record's flags follow the rule computed here from the valid losses, a phase that stops early skips its other
/// epochs, the model ends with the weights of the unfrozen phase's best epoch (its valid loss again), and a run
/// resumed from the checkpoint after the first epoch ends bit-identical.
#[test]
fn save_best_and_early_stop_follow_the_valid_loss_and_survive_a_resume() {
    let dir = Dir(std::env::temp_dir().join(format!("wgtune-learner-best-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let data = tiny_data(16, 8);
    // A high learning rate on few images makes the valid loss go up and down.
    let cfg = FineTuneConfig {
        bs: 8,
        freeze_epochs: 3,
        epochs: 4,
        lr: 3e-2,
        save_best: Some(Monitor::ValidLoss),
        early_stop: Some(1),
        ..cfg()
    };
    let (ckpt, after_first) = (dir.0.join("run.checkpoint"), dir.0.join("first.checkpoint"));
    let mut full = Learner::new(gpu(), &data, Some(&weights()), cfg.clone()).unwrap();
    let mut first = true;
    let mut on_epoch = |r: &wgtune::learner::EpochRecord| {
        eprintln!("{r:?}");
        if std::mem::take(&mut first) {
            std::fs::copy(&ckpt, &after_first).unwrap();
        }
    };
    let go = AtomicBool::new(false);
    let records = full.fit(&mut |_, _, _, _, _| {}, &mut on_epoch, Some(&ckpt), None, &go).unwrap();
    let mut best_unfrozen = f64::NAN;
    for (phase, epochs) in [("frozen", cfg.freeze_epochs), ("unfrozen", cfg.epochs)] {
        let rs: Vec<_> = records.iter().filter(|r| r.phase == phase).collect();
        let (mut best, mut best_epoch, mut since) = (f64::INFINITY, 0, 0);
        for (i, r) in rs.iter().enumerate() {
            assert_eq!(r.epoch, i);
            let improved = r.valid_loss < best;
            assert_eq!(r.improved, Some(improved), "{r:?}");
            if improved {
                (best, best_epoch, since) = (r.valid_loss, r.epoch, 0);
            } else {
                since += 1;
            }
            let stops = since >= 1 && i + 1 < epochs;
            assert_eq!(r.early_stop, stops, "{r:?}");
            let last = i + 1 == rs.len();
            assert_eq!(last, stops || i + 1 == epochs, "a phase ends at its last epoch or an early stop");
            assert_eq!(r.kept_epoch, last.then_some(best_epoch), "{r:?}");
        }
        best_unfrozen = best;
    }
    assert!(records.iter().any(|r| r.early_stop), "this run (seeded) stops early: the skip is tested");
    let (valid_loss, _) = full.validate().unwrap();
    assert!(
        (valid_loss - best_unfrozen).abs() <= 1e-6 * best_unfrozen,
        "the model's valid loss {valid_loss} is not the best epoch's {best_unfrozen}"
    );
    let (full_state, _) = full.ex.training_state().unwrap();

    let mut resumed = Learner::new(gpu(), &data, Some(&weights()), cfg).unwrap();
    let again = resumed.fit(&mut |_, _, _, _, _| {}, &mut |_| {}, None, Some(&after_first), &go).unwrap();
    // Untimed, and without the display-only confusion matrix (restored records have none).
    let untimed = |rs: &[EpochRecord]| {
        rs.iter().map(|r| EpochRecord { seconds: 0.0, confusion: None, ..r.clone() }).collect::<Vec<_>>()
    };
    assert_eq!(untimed(&again), untimed(&records), "the resumed run's records");
    let (resumed_state, _) = resumed.ex.training_state().unwrap();
    for ((name, _, a), (_, _, b)) in full_state.iter().zip(&resumed_state) {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} differs after resuming");
    }
}

/// Test-time augmentation: beta 1 is the plain validation, other betas blend in augmented views (a different
/// loss), repeatably.
#[test]
fn tta_blends_augmented_views_with_the_plain_view() {
    let data = tiny_data(16, 8);
    let mut l = Learner::new(gpu(), &data, Some(&weights()), FineTuneConfig { bs: 8, ..cfg() }).unwrap();
    let (loss, accuracy) = l.validate().unwrap();
    let plain = l.tta(4, 1.0).unwrap();
    assert_eq!((plain.accuracy, plain.plain_accuracy), (accuracy, accuracy));
    assert!((plain.valid_loss - loss).abs() <= 1e-6 * loss && (plain.plain_valid_loss - loss).abs() <= 1e-6 * loss);
    let t = l.tta(4, 0.25).unwrap();
    assert!(t.valid_loss.is_finite() && (t.valid_loss - loss).abs() > 1e-4 * loss, "{t:?} vs plain {loss}");
    assert_eq!(l.tta(4, 0.25).unwrap(), t, "the views come from a seeded generator");
}

/// A batch over the adapter's storage-binding limit (EfficientNet-Lite0 at 224 px: lavapipe's 128 MiB holds 27
/// images of the largest activation) is split into the fewest equal micro-batches that fit, trained with gradient
/// accumulation: exactly when the plan says the batch does not fit, and not one image before.
#[test]
fn a_batch_too_large_for_the_adapter_is_split_into_accumulated_micro_batches() {
    use wgtune::graph::executor::{Executor, ExecutorConfig, PixelInput};
    let arch = wgtune::nn::Arch::EffnetLite0;
    // 1,024 images at 224 px exceed any adapter's binding limit (a 96 x 112 x 112 activation is 4.9 GB).
    let mut probe =
        Executor::new(gpu(), arch.with_fastai_head(1024, 224, 2, 0.1, 0.5).unwrap(), ExecutorConfig::default())
            .unwrap();
    probe.set_pixel_input(PixelInput { presize: 256, normalization: arch.normalization() }).unwrap();
    let fits = probe.batch_that_fits(true).unwrap().expect("1,024 images at 224 px fit no adapter");
    drop(probe);
    assert!(fits >= 2, "{fits}");
    let mut data = tiny_data(8, 2);
    let more: Vec<_> = data.train.iter().cycle().take(fits + 1).cloned().collect();
    data.train = more;
    let at = |bs: usize| {
        let cfg = FineTuneConfig { bs, size: 224, presize: 256, accum: 1, ..cfg() };
        Learner::new(gpu(), &data, Some(&weights()), cfg).unwrap()
    };
    let fitting = at(fits);
    assert_eq!((fitting.split, fitting.cfg.bs, fitting.cfg.accum), (None, fits, 1));
    drop(fitting);
    let split = at(fits + 1);
    let s = split.split.expect("one image more than fits is split");
    assert_eq!(s.batch, fits + 1);
    assert!(s.parts >= 2 && s.micro * s.parts == fits + 1 && s.micro <= fits, "{s:?}");
    assert!(
        (2..s.parts).all(|p| !(fits + 1).is_multiple_of(p) || (fits + 1) / p > fits),
        "{s:?} is not the fewest parts"
    );
    assert_eq!((split.cfg.bs, split.cfg.accum), (s.micro, s.parts));
    assert_eq!(split.ex.batch_that_fits(true).unwrap(), None, "the micro-batch plan fits");
}

#[test]
fn resuming_with_other_settings_is_refused() {
    let dir = Dir(std::env::temp_dir().join(format!("wgtune-learner-mismatch-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let data = tiny_data(16, 4);
    let l = Learner::new(gpu(), &data, Some(&weights()), cfg()).unwrap();
    let path = dir.0.join("x.checkpoint");
    l.save_checkpoint(&path, 1, &[], None).unwrap();
    let mut other = Learner::new(gpu(), &data, Some(&weights()), FineTuneConfig { lr: 1e-3, ..cfg() }).unwrap();
    let err = other.load_checkpoint(&path).unwrap_err().to_string();
    assert!(err.contains("other settings"), "{err}");
}

/// lr_find ramps the learning rate exponentially (constant ratio between steps, from `start`), records a finite
/// smoothed loss per step, stops when that loss passes 4x its best, and leaves every weight, batch-norm statistic
/// and optimizer moment bit-identical to before.
#[test]
fn lr_find_ramps_exponentially_stops_on_divergence_and_restores_the_weights() {
    let data = tiny_data(32, 2);
    let mut l = Learner::new(gpu(), &data, Some(&weights()), cfg()).unwrap();
    let (before, counters) = l.ex.training_state().unwrap();
    let found = l.lr_find(1e-5, 1e3, 16, &mut |_, _, _, _, _| {}).unwrap();
    assert!(found.lrs.len() >= 3 && found.lrs.len() <= 16, "{found:?}");
    assert!((found.lrs[0] - 1e-5).abs() < 1e-18);
    let ratio = (1e3f64 / 1e-5).powf(1.0 / 16.0);
    for w in found.lrs.windows(2) {
        assert!((w[1] / w[0] - ratio).abs() < 1e-9, "{:?}", found.lrs);
    }
    let best = found.losses.iter().copied().filter(|v| v.is_finite()).fold(f64::INFINITY, f64::min);
    let last = *found.losses.last().unwrap();
    if found.stopped_early {
        assert!(!last.is_finite() || last > 4.0 * best, "{found:?}");
    } else {
        assert_eq!(found.lrs.len(), 16);
    }
    let (after, counters_after) = l.ex.training_state().unwrap();
    assert_eq!(counters, counters_after);
    for ((name, _, a), (_, _, b)) in before.iter().zip(&after) {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} changed by lr_find");
    }
}

/// With `--accum 2` the learner trains each cycle of two batches in one submission (Executor::train_cycle_pixels);
/// a profiled run trains batch by batch. Both give the same weights, bit for bit, over epochs of 5 batches (so a
/// cycle straddles each epoch's end and its first half trains alone), with about half the submissions.
#[test]
fn accumulation_cycles_in_one_submission_train_as_batch_by_batch() {
    let data = tiny_data(20, 4);
    let go = AtomicBool::new(false);
    let run = |profile: bool| {
        let cfg = FineTuneConfig { bs: 8, accum: 2, epochs: 1, freeze_epochs: 1, profile, ..cfg() };
        let mut l = Learner::new(gpu(), &data, Some(&weights()), cfg).unwrap();
        assert_eq!(l.steps_per_epoch(), 5);
        let records = l.fit(&mut |_, _, _, _, _| {}, &mut |_| {}, None, None, &go).unwrap();
        let weights: Vec<(String, Vec<f32>)> = l
            .ex
            .graph()
            .tensors
            .iter()
            .filter(|t| matches!(t.kind, wgtune::graph::TensorKind::Param { .. } | wgtune::graph::TensorKind::State))
            .map(|t| (t.name.clone(), l.ex.read_value(&t.name).unwrap()))
            .collect();
        (records, weights, l.ex.counters().submits, l.history.clone())
    };
    let (grouped, batch_by_batch) = (run(false), run(true));
    assert_eq!(grouped.3, batch_by_batch.3, "every step's loss");
    for ((name, a), (_, b)) in grouped.1.iter().zip(&batch_by_batch.1) {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} differs");
    }
    assert_eq!(grouped.0.len(), 2);
    assert!(grouped.0.iter().zip(&batch_by_batch.0).all(|(a, b)| a.valid_loss == b.valid_loss));
    // 10 training batches: 4 two-batch submissions and 2 single ones, against 10; plus validation's.
    assert_eq!(batch_by_batch.2 - grouped.2, 4, "{} vs {} submits", grouped.2, batch_by_batch.2);
}
