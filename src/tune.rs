//! The autotuner: which of a kernel family's correct variants runs a given problem on this device, decided by
//! timing them on the device (GPU timestamps) the first time the problem is met, and remembered in a cache file per
//! adapter, driver, wgtune version and kernel settings (runtime checks, subgroup sums), so later runs reuse the choice
//! without timing anything.
//!
//! `WGTUNE_AUTOTUNE` sets the mode: `full` (the default) times problems the cache does not know, within a budget
//! of [`BUDGET_S`] seconds per process; `cache` uses cached choices and the defaults for the rest, timing nothing;
//! `off` uses the defaults only. `WGTUNE_CACHE_DIR` moves the cache (the user cache dir's `wgtune` folder
//! otherwise). Problems too small to be worth a measurement ([`MIN_FLOPS`]), problems past the budget and devices
//! without timestamp queries get the family's default for the device type, uncached, so a later run can tune them;
//! a problem the budget cuts short runs its default too, with what was timed cached for the next run to finish.
//! In a browser tab nothing is timed (the page cannot block on the GPU): the defaults run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Microseconds this process has spent timing variants (the budget is the process's, whatever the devices).
static SPENT_US: AtomicU64 = AtomicU64::new(0);

/// The environment variable that sets the [`Mode`].
pub const ENV_MODE: &str = "WGTUNE_AUTOTUNE";
/// The environment variable that moves the cache folder.
pub const ENV_DIR: &str = "WGTUNE_CACHE_DIR";
/// Seconds of timing one process spends at most (give or take one variant's runs); problems met after that, or
/// left unfinished by it, run their default.
pub const BUDGET_S: f64 = 3.0;
/// Problems of fewer floating-point operations run their default untimed: launch overhead dominates them.
pub const MIN_FLOPS: u64 = 1 << 22;
/// A variant replaces the default only when it takes at most this share of the default's time, so that a few
/// percent of timing noise does not move a problem off its default.
pub const MARGIN: f64 = 0.9;
/// Timed runs per variant: a probe of one, then (for a variant within [`PROBE_WITHIN`] of the best) the rest after
/// one untimed run; the fastest counts.
pub const RUNS: usize = 3;
/// A variant whose first run takes more than this many times the best so far is not run again.
pub const PROBE_WITHIN: f64 = 1.5;

/// What the autotuner may do (`WGTUNE_AUTOTUNE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The defaults only.
    Off,
    /// Cached choices, the defaults for the rest; nothing timed.
    Cache,
    /// Time what the cache does not know (within the budget) and remember it.
    Full,
}

impl Mode {
    /// The mode from the variable's value (unset: `full`).
    pub fn parse(value: Option<&str>) -> Result<Mode> {
        match value.map(str::trim) {
            None | Some("") | Some("full") => Ok(Mode::Full),
            Some("cache") => Ok(Mode::Cache),
            Some("off") => Ok(Mode::Off),
            Some(v) => Err(Error::Invalid(format!("{ENV_MODE}='{v}': expected off, cache or full"))),
        }
    }
}

/// One problem's choice and what each variant measured (milliseconds, the fastest of [`RUNS`]). A problem the
/// budget cut short keeps its default as `kernel` and names the variants not yet timed in `pending`: the next run
/// times only those, so a problem whose variants together outlast the budget is finished over a few runs instead
/// of started anew by each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub kernel: String,
    pub measured_ms: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
}

/// The cache file: the device it was measured on and the choices by problem.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    device: String,
    choices: BTreeMap<String, Choice>,
}

/// A device's choices, loaded from the cache and grown as problems are tuned.
pub struct Tuner {
    mode: Mode,
    device: String,
    path: Option<PathBuf>,
    choices: BTreeMap<String, Choice>,
    spent_s: f64,
    loaded: usize,
}

/// What `wgtune bench tune` reports.
#[derive(Clone, Debug, Serialize)]
pub struct TuneReport {
    pub mode: Mode,
    pub device: String,
    pub cache: Option<String>,
    /// Choices read from the cache when the device opened.
    pub loaded: usize,
    /// Seconds this process spent timing variants.
    pub spent_s: f64,
    pub choices: BTreeMap<String, Choice>,
}

/// The device key of a cache: adapter, backend, driver, wgtune version and the two settings that change the
/// compiled kernels (runtime checks, subgroup reductions). Any change starts a new cache.
pub fn device_key(gpu: &Gpu) -> String {
    let s = gpu.summary();
    let adapter = format!("{} | {} | {} {}", s.name, s.backend, s.driver, s.driver_info);
    key_of(&adapter, gpu.shader_checks(), gpu.subgroups())
}

/// [`device_key`] from its parts: the adapter's description, whether kernels keep wgpu's runtime checks and the
/// subgroup sizes the reductions use (None: workgroup trees). A variant timed with checks on, or with trees, can
/// lose to one it beats without them, so a choice holds only under the settings it was made with.
fn key_of(adapter: &str, shader_checks: bool, subgroups: Option<(u32, u32)>) -> String {
    let checks = if shader_checks { "checks on" } else { "checks off" };
    let sums = match subgroups {
        Some((min, max)) => format!("subgroups {min}-{max}"),
        None => "no subgroups".to_string(),
    };
    format!("{adapter} | {checks} | {sums} | wgtune {}", env!("CARGO_PKG_VERSION"))
}

/// FNV-1a: a file name from the device key that stays the same across Rust versions.
fn fnv1a(s: &str) -> u64 {
    fnv1a_bytes(s.as_bytes())
}

/// FNV-1a of bytes (64 bits): file names and the pipeline cache's checksum.
pub(crate) fn fnv1a_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The cache file of a device key in `dir`.
pub fn cache_path(dir: &Path, device: &str) -> PathBuf {
    dir.join(format!("autotune-{:016x}.json", fnv1a(device)))
}

/// The cache folder: `WGTUNE_CACHE_DIR`, else the user cache dir's `wgtune` (none in a browser).
pub(crate) fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os(ENV_DIR).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if cfg!(target_arch = "wasm32") {
        return None;
    }
    dirs::cache_dir().map(|d| d.join("wgtune"))
}

impl Tuner {
    /// A tuner for `device` in `mode`, with the choices cached at `path` for the same device key (a file for
    /// another key, unreadable or malformed, is ignored and later replaced).
    pub fn open(mode: Mode, device: String, path: Option<PathBuf>) -> Tuner {
        let mut choices = BTreeMap::new();
        if let (Some(p), true) = (&path, mode != Mode::Off) {
            match std::fs::read(p).map(|b| serde_json::from_slice::<CacheFile>(&b)) {
                Ok(Ok(f)) if f.device == device => choices = f.choices,
                Ok(Ok(f)) => log::info!("autotune cache {} is for '{}': starting anew", p.display(), f.device),
                Ok(Err(e)) => log::warn!("autotune cache {} unreadable ({e}): starting anew", p.display()),
                Err(_) => {}
            }
        }
        let loaded = choices.len();
        Tuner { mode, device, path, choices, spent_s: 0.0, loaded }
    }

    /// The tuner as the environment sets it up for `gpu`.
    fn from_env(gpu: &Gpu) -> Result<Tuner> {
        let mode = Mode::parse(std::env::var(ENV_MODE).ok().as_deref())?;
        let device = device_key(gpu);
        let path = cache_dir().map(|d| cache_path(&d, &device));
        Ok(Tuner::open(mode, device, path))
    }

    /// The cached choice of `key`, if it is finished, names one of `candidates` and was made among all of them: a
    /// variant added since (a newer build of the same version) was never timed, so the problem is tuned again.
    pub fn cached<K: Copy>(&self, key: &str, candidates: &[K], name: fn(K) -> &'static str) -> Option<K> {
        let c = self.choices.get(key)?;
        if !c.pending.is_empty() || !candidates.iter().all(|&k| c.measured_ms.contains_key(name(k))) {
            return None;
        }
        candidates.iter().copied().find(|&k| name(k) == c.kernel)
    }

    /// What earlier runs measured of `candidates` for `key` (a problem they left unfinished, or one offered a new
    /// variant since).
    fn known<K: Copy>(&self, key: &str, candidates: &[K], name: fn(K) -> &'static str) -> Vec<(K, f64)> {
        let Some(c) = self.choices.get(key) else { return Vec::new() };
        candidates.iter().filter_map(|&k| c.measured_ms.get(name(k)).map(|&ms| (k, ms))).collect()
    }

    /// [`choose`] with the budget as `out_of_time(seconds this problem has taken so far)`: the cached choice; or
    /// the variants no run has timed yet, timed now and the fastest recorded; or, when time runs out first, what
    /// was timed recorded as unfinished (the default runs, a later run times the rest).
    #[allow(clippy::too_many_arguments)]
    fn decide<K: Copy + PartialEq>(
        &mut self,
        key: &str,
        candidates: &[K],
        name: fn(K) -> &'static str,
        default: K,
        flops: u64,
        out_of_time: impl Fn(f64) -> bool,
        time: &mut impl FnMut(K, usize) -> Result<Option<f64>>,
    ) -> Result<K> {
        if self.mode == Mode::Off {
            return Ok(default);
        }
        if let Some(k) = self.cached(key, candidates, name) {
            return Ok(k);
        }
        if self.mode == Mode::Cache || flops < MIN_FLOPS || out_of_time(0.0) || cfg!(target_arch = "wasm32") {
            return Ok(default);
        }
        let known = self.known(key, candidates, name);
        let Some(Measured { times: measured, finished }) =
            measure(key, candidates, default, known, &out_of_time, time)?
        else {
            return Ok(default);
        };
        let chosen = if finished { pick(&measured, default) } else { default };
        let untimed = candidates.iter().filter(|&&k| !measured.iter().any(|m| m.0 == k));
        let pending = untimed.map(|&k| name(k).to_string()).collect();
        let choice = Choice {
            kernel: name(chosen).to_string(),
            measured_ms: measured.iter().map(|&(k, ms)| (name(k).to_string(), ms)).collect(),
            pending,
        };
        if finished {
            log::info!("autotune {key}: {} of {:?}", choice.kernel, choice.measured_ms);
        } else {
            log::info!(
                "autotune {key}: out of time with {:?} untimed; the default runs, a later run times the rest",
                choice.pending
            );
        }
        self.record(key, choice);
        Ok(chosen)
    }

    /// Remember `key`'s choice and write the cache (atomically: a temporary file renamed over it). A failed write
    /// is logged; the choice still holds for this process.
    pub fn record(&mut self, key: &str, choice: Choice) {
        self.choices.insert(key.to_string(), choice);
        let Some(path) = &self.path else { return };
        let file = CacheFile { device: self.device.clone(), choices: self.choices.clone() };
        let written = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::Invalid(e.to_string()))
            .and_then(|bytes| write_cache_file(path, &bytes));
        if let Err(e) = written {
            log::warn!("autotune cache {} not written: {e}", path.display());
        }
    }

    pub fn report(&self) -> TuneReport {
        TuneReport {
            mode: self.mode,
            device: self.device.clone(),
            cache: self.path.as_ref().map(|p| p.display().to_string()),
            loaded: self.loaded,
            spent_s: self.spent_s,
            choices: self.choices.clone(),
        }
    }
}

/// Write a file of the cache folder atomically (the autotuner's choices, the pipeline cache), making the folder
/// first.
pub(crate) fn write_cache_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Invalid(format!("cannot create the cache folder '{}': {e}", dir.display())))?;
    }
    crate::nn::weights::write_bytes_atomically(path, bytes)
}

/// The device's tuner, set up from the environment on first use.
fn tuner(gpu: &Gpu) -> Result<&Mutex<Tuner>> {
    if let Some(t) = gpu.tuner.get() {
        return Ok(t);
    }
    let t = Tuner::from_env(gpu)?;
    Ok(gpu.tuner.get_or_init(|| Mutex::new(t)))
}

/// The report of the device's tuner so far.
pub fn report(gpu: &Gpu) -> Result<TuneReport> {
    Ok(tuner(gpu)?.lock().unwrap_or_else(|p| p.into_inner()).report())
}

/// Which of `candidates` runs the problem `key` of `flops` operations: the cached choice, or the fastest as
/// `time(kernel, runs)` measures them (the fastest of `runs` in milliseconds; `None` where the device has no
/// timestamps), or `default` (see the module's text for when).
pub fn choose<K: Copy + PartialEq>(
    gpu: &Gpu,
    key: &str,
    candidates: &[K],
    name: fn(K) -> &'static str,
    default: K,
    flops: u64,
    mut time: impl FnMut(K, usize) -> Result<Option<f64>>,
) -> Result<K> {
    let mut t = tuner(gpu)?.lock().unwrap_or_else(|p| p.into_inner());
    let start = crate::clock::Instant::now();
    let chosen = t.decide(key, candidates, name, default, flops, |here| spent_s() + here >= BUDGET_S, &mut time);
    let spent = start.elapsed().as_secs_f64();
    t.spent_s += spent;
    SPENT_US.fetch_add((spent * 1e6) as u64, Ordering::Relaxed);
    chosen
}

/// Scratch tensors shaped and typed like a problem's operands (each with its role for the label), on which the
/// variants are timed: never the real tensors, which may hold a gradient being accumulated.
pub fn scratch_like<const N: usize>(
    gpu: &Gpu,
    operands: [(&crate::gpu::Tensor, &str); N],
    label: &str,
) -> Result<[crate::gpu::Tensor; N]> {
    let made = operands
        .iter()
        .map(|(t, role)| gpu.transient_tensor(t.shape(), t.dtype(), &format!("autotune {role} of {label}")))
        .collect::<Result<Vec<_>>>()?;
    let Ok(made) = <[crate::gpu::Tensor; N]>::try_from(made) else { unreachable!("one tensor per operand") };
    Ok(made)
}

/// Seconds this process has spent timing variants, on every device.
fn spent_s() -> f64 {
    SPENT_US.load(Ordering::Relaxed) as f64 / 1e6
}

/// What [`measure`] timed: each variant's milliseconds, and whether that is every candidate.
struct Measured<K> {
    times: Vec<(K, f64)>,
    finished: bool,
}

/// Time the candidates `known` lacks, the default first, then the others: each probed with one run and, when
/// within [`PROBE_WITHIN`] of the best so far, given the remaining runs (variants far off the pace cost one run
/// each). Returns what is measured and whether every candidate is: not when `out_of_time` (given the seconds spent
/// here) stopped it first. `None` when the device has no timestamps, or time ran out before anything was measured.
fn measure<K: Copy + PartialEq>(
    key: &str,
    candidates: &[K],
    default: K,
    known: Vec<(K, f64)>,
    out_of_time: &impl Fn(f64) -> bool,
    time: &mut impl FnMut(K, usize) -> Result<Option<f64>>,
) -> Result<Option<Measured<K>>> {
    let start = crate::clock::Instant::now();
    let order = std::iter::once(default).chain(candidates.iter().copied().filter(|&k| k != default));
    let mut measured = known;
    for k in order {
        if measured.iter().any(|m| m.0 == k) {
            continue;
        }
        if out_of_time(start.elapsed().as_secs_f64()) {
            log::debug!("autotune {key}: out of time after {} of {} variants", measured.len(), candidates.len());
            return Ok(Some(Measured { times: measured, finished: false }).filter(|m| !m.times.is_empty()));
        }
        let Some(probe) = time(k, 1)? else { return Ok(None) };
        let best = measured.iter().map(|m| m.1).fold(f64::INFINITY, f64::min);
        let ms = if probe <= PROBE_WITHIN * best { probe.min(time(k, RUNS - 1)?.unwrap_or(probe)) } else { probe };
        measured.push((k, ms));
    }
    Ok(Some(Measured { times: measured, finished: true }))
}

/// The fastest measured variant, unless it is within [`MARGIN`] of the default's time.
pub fn pick<K: Copy + PartialEq>(measured: &[(K, f64)], default: K) -> K {
    let Some(&(best, best_ms)) = measured.iter().min_by(|a, b| a.1.total_cmp(&b.1)) else { return default };
    match measured.iter().find(|m| m.0 == default) {
        Some(&(_, default_ms)) if best_ms > MARGIN * default_ms => default,
        _ => best,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_a_bad_value_names_the_variable() {
        assert_eq!(Mode::parse(None).unwrap(), Mode::Full);
        assert_eq!(Mode::parse(Some("cache")).unwrap(), Mode::Cache);
        assert_eq!(Mode::parse(Some(" off ")).unwrap(), Mode::Off);
        let e = Mode::parse(Some("fast")).unwrap_err().to_string();
        assert!(e.contains("WGTUNE_AUTOTUNE='fast'") && e.contains("off, cache or full"), "{e}");
    }

    #[test]
    fn the_fastest_wins_only_by_the_margin() {
        assert_eq!(pick(&[(0, 10.0), (1, 9.5), (2, 12.0)], 0), 0, "5% faster is noise");
        assert_eq!(pick(&[(0, 10.0), (1, 8.0), (2, 12.0)], 0), 1);
        assert_eq!(pick(&[(0, 10.0), (1, 8.0)], 2), 1, "a default not measured does not hold");
        assert_eq!(pick::<u8>(&[], 2), 2);
    }

    fn choice(kernel: &str) -> Choice {
        let measured_ms = [("a".to_string(), 1.0), ("b".to_string(), 2.0)].into();
        Choice { kernel: kernel.into(), measured_ms, pending: Vec::new() }
    }

    /// A problem whose variants outlast the budget: each run times what the last left untimed, records it, and the
    /// run that times the last variant makes the choice, which later runs read without timing anything.
    #[test]
    fn a_problem_the_budget_cuts_short_is_finished_by_later_runs() {
        let dir = std::env::temp_dir().join(format!("wgtune-tune-partial-{}", std::process::id()));
        let device = "GPU Y | Vulkan | drv 2.0 | wgtune 0.1.0".to_string();
        let path = cache_path(&dir, &device);
        let candidates = ["tiled", "a", "b", "c"];
        let name = |k: &'static str| k;
        let ms = |k: &str| match k {
            "tiled" => 10.0,
            "a" => 12.0,
            "b" => 6.0,
            _ => 8.0,
        };
        // One process: the budget allows `per_run` variants (counting whole variants, not seconds).
        let run = |per_run: usize| {
            let timed = std::cell::RefCell::new(Vec::<&str>::new());
            let mut tuner = Tuner::open(Mode::Full, device.clone(), Some(path.clone()));
            let out_of_time = |_: f64| timed.borrow().len() >= per_run;
            let mut time = |k: &'static str, _runs: usize| {
                if !timed.borrow().contains(&k) {
                    timed.borrow_mut().push(k);
                }
                Ok(Some(ms(k)))
            };
            let chosen = tuner.decide("mm", &candidates, name, "tiled", MIN_FLOPS, out_of_time, &mut time).unwrap();
            (chosen, timed.into_inner(), tuner.choices.get("mm").cloned())
        };
        let (chosen, timed, c) = run(2);
        assert_eq!((chosen, timed), ("tiled", vec!["tiled", "a"]), "the default first, then in order");
        let c = c.expect("the unfinished problem is recorded");
        assert_eq!((c.kernel.as_str(), c.pending.clone()), ("tiled", vec!["b".to_string(), "c".to_string()]));
        assert_eq!(c.measured_ms, [("tiled".to_string(), 10.0), ("a".to_string(), 12.0)].into());
        let (chosen, timed, c) = run(1);
        assert_eq!((chosen, timed), ("tiled", vec!["b"]), "the next run times only what is left");
        assert_eq!(c.unwrap().pending, vec!["c".to_string()]);
        let (chosen, timed, c) = run(1);
        assert_eq!((chosen, timed), ("b", vec!["c"]), "the last variant timed, the fastest chosen");
        assert!(c.unwrap().pending.is_empty());
        let again = Tuner::open(Mode::Full, device.clone(), Some(path.clone()));
        assert_eq!(again.cached("mm", &candidates, name), Some("b"));
        let (chosen, timed, _) = run(0);
        assert_eq!((chosen, timed), ("b", vec![]), "a finished choice is read, nothing timed, whatever the budget");
        // A budget spent before the problem is met times nothing and records nothing.
        std::fs::remove_dir_all(&dir).unwrap();
        let (chosen, timed, c) = run(0);
        assert_eq!((chosen, timed, c), ("tiled", vec![], None));
        // An unfinished entry is not a choice, even when its pending variant is no longer offered.
        let mut t = Tuner::open(Mode::Full, device.clone(), None);
        let mut partial = choice("b");
        partial.pending = vec!["c".to_string()];
        t.record("mm", partial);
        assert_eq!(t.cached("mm", &["a", "b"], name), None);
        assert_eq!(t.known("mm", &["a", "b", "c"], name), vec![("a", 1.0), ("b", 2.0)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_cache_round_trips_and_another_device_or_version_starts_anew() {
        let dir = std::env::temp_dir().join(format!("wgtune-tune-test-{}", std::process::id()));
        let device = "GPU X | Vulkan | drv 1.0 | wgtune 0.1.0".to_string();
        let path = cache_path(&dir, &device);
        let mut t = Tuner::open(Mode::Full, device.clone(), Some(path.clone()));
        assert_eq!(t.loaded, 0);
        t.record("matmul 1", choice("b"));
        t.record("matmul 2", choice("a"));
        let again = Tuner::open(Mode::Full, device.clone(), Some(path.clone()));
        assert_eq!(again.loaded, 2);
        assert_eq!(again.choices["matmul 1"], choice("b"));
        let name = |k: &'static str| k;
        assert_eq!(again.cached("matmul 1", &["a", "b"], name), Some("b"));
        assert_eq!(again.cached("matmul 1", &["a"], name), None, "a choice no longer offered is ignored");
        assert_eq!(again.cached("matmul 2", &["a"], name), Some("a"), "a candidate dropped leaves the rest");
        assert_eq!(again.cached("matmul 1", &["a", "b", "c"], name), None, "a candidate never timed: tune again");
        assert_eq!(again.cached("matmul 3", &["a", "b"], name), None);
        // A new driver or wgtune version is another key: another file, and this one read for it is ignored.
        let newer = device.replace("wgtune 0.1.0", "wgtune 0.2.0");
        assert_ne!(cache_path(&dir, &newer), path);
        assert_eq!(Tuner::open(Mode::Full, newer, Some(path.clone())).loaded, 0);
        assert_eq!(Tuner::open(Mode::Off, device.clone(), Some(path.clone())).loaded, 0, "off reads nothing");
        // So is another runtime-check or subgroup setting on the same adapter.
        let base = key_of("GPU X | Vulkan | drv 1.0", false, Some((32, 32)));
        let others = [
            key_of("GPU X | Vulkan | drv 1.0", true, Some((32, 32))),
            key_of("GPU X | Vulkan | drv 1.0", false, None),
            key_of("GPU X | Vulkan | drv 1.1", false, Some((32, 32))),
        ];
        for other in &others {
            assert_ne!(cache_path(&dir, other), cache_path(&dir, &base), "{other} against {base}");
        }
        assert_eq!(key_of("GPU X | Vulkan | drv 1.0", false, Some((32, 32))), base, "the same settings, the same key");
        std::fs::write(&path, b"{ not json").unwrap();
        assert_eq!(Tuner::open(Mode::Full, device, Some(path)).loaded, 0, "a broken file is ignored");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
