//! Adapter choice, device creation, error capture.
//!
//! The adapter is picked by type (discrete > integrated > virtual > CPU) unless the user names one with
//! `--adapter NAME` / `WGTUNE_ADAPTER` (a substring of the adapter name or a backend name such as `vulkan`).
//! The device is requested with the adapter's own limits and, where present, the optional features wgtune uses
//! (timestamp queries for profiling, f16 in shaders).

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::kernels::Kernels;

/// Optional features wgtune asks for when the adapter has them.
const WANTED_FEATURES: wgpu::Features = wgpu::Features::TIMESTAMP_QUERY
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
    .union(wgpu::Features::SHADER_F16)
    .union(wgpu::Features::PIPELINE_CACHE)
    .union(wgpu::Features::SUBGROUP);

/// How to get a GPU, printed when there is none.
pub const NO_ADAPTER_HELP: &str = "no GPU adapter found (Vulkan, Metal, DX12 or OpenGL).\n\
     - On a machine with a GPU: install or update its driver (Vulkan on Linux/Windows, Metal on macOS).\n\
     - Without a GPU, Mesa's software Vulkan driver works (slowly): `apt-get install mesa-vulkan-drivers` on \
     Debian/Ubuntu, `dnf install mesa-vulkan-drivers` on Fedora.\n\
     - `WGPU_BACKEND=vulkan|gl|metal|dx12` restricts the backends searched; `WGTUNE_ADAPTER=NAME` picks an adapter.";

/// What the user asked for when choosing an adapter.
#[derive(Clone, Debug, Default)]
pub struct AdapterRequest {
    /// Substring of the adapter name or a backend name (`vulkan`, `gl`, `metal`, `dx12`), case-insensitive.
    pub name: Option<String>,
    /// Open the instance with wgpu's DEBUG flag: object labels and debug groups reach the driver, for a graphics
    /// debugger's capture. Off by default: on some backends (DX12) it also compiles shaders without optimization.
    /// `WGPU_DEBUG=1` turns it on too.
    pub debug: bool,
    /// Keep wgpu's runtime checks in every kernel: bounds clamps on every array and buffer access and loop-bound
    /// counters (see [`crate::gpu::kernels::Family::audited`]). None: as `WGTUNE_SHADER_CHECKS` says (unset: off
    /// for the audited kernels).
    pub shader_checks: Option<bool>,
    /// Sum across workgroups with subgroup operations where the adapter has them (the `subgroups` feature, subgroups
    /// of at least [`MIN_SUBGROUP_SIZE`] lanes), workgroup-memory trees where not. None: as `WGTUNE_SUBGROUPS` says
    /// (unset: on where available); Some(false) forces the trees (the checked kernel tests run that way).
    pub subgroups: Option<bool>,
}

/// The environment variable that turns subgroup reductions off (`off`) or leaves them on where the adapter has them
/// (`on`, the default).
pub const ENV_SUBGROUPS: &str = "WGTUNE_SUBGROUPS";

/// The smallest subgroup the subgroup reductions handle: three levels of subgroup sums reduce a 256-invocation
/// workgroup to one value with subgroups of 8 lanes or more (lavapipe's are 8; NVIDIA's 32; AMD's 32 or 64).
pub const MIN_SUBGROUP_SIZE: u32 = 8;

/// Whether the request (else `WGTUNE_SUBGROUPS`) allows subgroup reductions.
fn allows_subgroups(request: &AdapterRequest, env: Option<&str>) -> Result<bool> {
    switch(request.subgroups, ENV_SUBGROUPS, env, true)
}

/// The environment variable that turns wgpu's runtime shader checks back on for every kernel (`on`) or leaves
/// them off for the audited ones (`off`, the default).
pub const ENV_SHADER_CHECKS: &str = "WGTUNE_SHADER_CHECKS";

/// Whether kernels keep wgpu's runtime checks, from the request or else `WGTUNE_SHADER_CHECKS`'s value.
fn wants_shader_checks(request: &AdapterRequest, env: Option<&str>) -> Result<bool> {
    switch(request.shader_checks, ENV_SHADER_CHECKS, env, false)
}

/// An on/off setting: the request's if it has one, else the environment variable `var`'s value `env` (`on`/`1`,
/// `off`/`0`; unset or empty: `default`); any other value is an error naming the variable.
fn switch(request: Option<bool>, var: &str, env: Option<&str>, default: bool) -> Result<bool> {
    if let Some(on) = request {
        return Ok(on);
    }
    match env.map(str::trim) {
        None | Some("") => Ok(default),
        Some("on") | Some("1") => Ok(true),
        Some("off") | Some("0") => Ok(false),
        Some(other) => Err(Error::Invalid(format!("{var}='{other}': expected on or off"))),
    }
}

/// Whether the instance gets wgpu's DEBUG flag: asked for by the request (a capture) or by `WGPU_DEBUG=1`.
fn wants_debug(request: &AdapterRequest, env: Option<&str>) -> bool {
    request.debug || env == Some("1")
}

impl AdapterRequest {
    /// The request from `WGTUNE_ADAPTER`, if set.
    pub fn from_env() -> Self {
        AdapterRequest { name: std::env::var("WGTUNE_ADAPTER").ok().filter(|s| !s.is_empty()), ..Default::default() }
    }
}

/// Facts about the chosen adapter, for `wgtune info` and benchmark records.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub is_software: bool,
}

/// An error captured outside an error scope (uncaptured error handler or device-lost callback). Kept until the
/// next checked call so it surfaces as a `Result`, never as a panic in wgpu's default handler.
#[derive(Default)]
pub(crate) struct PendingErrors {
    pub uncaptured: Vec<String>,
    pub lost: Option<String>,
}

/// The GPU: device, queue and the cached kernels. Cheap to share behind an `Arc`.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) adapter_info: wgpu::AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    pub(crate) features: wgpu::Features,
    pub(crate) kernels: Kernels,
    pub(crate) pending: Arc<Mutex<PendingErrors>>,
    /// Bytes of every storage buffer created so far (tensors and storages): what plans are checked against.
    pub(crate) storage_bytes: std::sync::atomic::AtomicU64,
    /// Bytes of every transient tensor created so far (outside the plans).
    pub(crate) transient_bytes: std::sync::atomic::AtomicU64,
    /// The autotuner's choices for this device ([`crate::tune`]), set up on first use.
    pub(crate) tuner: std::sync::OnceLock<Mutex<crate::tune::Tuner>>,
    /// Whether every kernel keeps wgpu's runtime checks ([`AdapterRequest::shader_checks`]).
    pub(crate) shader_checks: bool,
    /// Whether the families with a subgroup variant use it ([`AdapterRequest::subgroups`]).
    pub(crate) subgroups: bool,
    /// Whether the adapter has subgroups the reductions could use.
    pub(crate) subgroups_available: bool,
    /// The driver's compiled pipelines, kept on disk between runs where the backend can (Vulkan).
    pub(crate) pipeline_cache: Option<crate::gpu::pipeline_cache::DiskPipelineCache>,
    /// Device-to-device copies waiting for the next command encoder ([`Gpu::copy_on_next_submit`]).
    pub(crate) staged_copies: Mutex<Vec<StagedCopy>>,
}

/// A copy of one tensor into another of the same shape and type, encoded first in the next command buffer.
pub(crate) struct StagedCopy {
    src: crate::gpu::Tensor,
    dst: crate::gpu::Tensor,
}

impl Drop for Gpu {
    fn drop(&mut self) {
        self.save_pipeline_cache();
    }
}

fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn backend_rank(b: wgpu::Backend) -> u32 {
    // Native compute APIs first; GL has no subgroups / f16 and runs compute through a translation layer.
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    }
}

/// What adapter choice looks at.
#[derive(Clone, Debug)]
pub struct AdapterFacts {
    pub name: String,
    pub backend: wgpu::Backend,
    pub device_type: wgpu::DeviceType,
}

impl From<&wgpu::AdapterInfo> for AdapterFacts {
    fn from(i: &wgpu::AdapterInfo) -> Self {
        AdapterFacts { name: i.name.clone(), backend: i.backend, device_type: i.device_type }
    }
}

fn describe(info: &AdapterFacts) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

fn matches_request(info: &AdapterFacts, want: &str) -> bool {
    let want = want.to_lowercase();
    info.name.to_lowercase().contains(&want) || format!("{:?}", info.backend).to_lowercase() == want
}

/// Pick the best adapter among `infos` for `request`: index into `infos`, or an error that lists what exists.
pub fn choose_adapter(infos: &[AdapterFacts], request: &AdapterRequest) -> Result<usize> {
    if infos.is_empty() {
        return Err(Error::NoAdapter(NO_ADAPTER_HELP.to_string()));
    }
    let candidates: Vec<usize> = match &request.name {
        Some(want) => (0..infos.len()).filter(|&i| matches_request(&infos[i], want)).collect(),
        None => (0..infos.len()).collect(),
    };
    if candidates.is_empty() {
        let list: Vec<String> = infos.iter().map(|i| format!("  - {}", describe(i))).collect();
        return Err(Error::NoAdapter(format!(
            "no adapter matches '{}' (from --adapter or WGTUNE_ADAPTER); available adapters:\n{}",
            request.name.as_deref().unwrap_or_default(),
            list.join("\n")
        )));
    }
    let best = candidates
        .into_iter()
        .min_by_key(|&i| (type_rank(infos[i].device_type), backend_rank(infos[i].backend), i))
        .expect("candidates is not empty");
    Ok(best)
}

impl Gpu {
    /// Find an adapter and open a device on it. Blocks (adapter and device requests are quick); native only,
    /// the web awaits [`Gpu::new_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(request: &AdapterRequest) -> Result<Gpu> {
        pollster::block_on(Self::new_async(request))
    }

    /// Async form of [`Gpu::new`].
    pub async fn new_async(request: &AdapterRequest) -> Result<Gpu> {
        // `WGPU_BACKEND` (read by `from_env`) may restrict backends; otherwise native APIs are searched first and
        // GL only when they found nothing (GL's EGL set-up is slow and noisy when a Vulkan driver exists anyway).
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        // Labels and debug groups reach the driver (and RenderDoc) only with DEBUG, which wgpu's `from_env` sets in
        // debug builds (and from WGPU_DEBUG); release builds get it when a capture asks for it.
        if wants_debug(request, std::env::var("WGPU_DEBUG").ok().as_deref()) {
            desc.flags |= wgpu::InstanceFlags::DEBUG;
        }
        let shader_checks = wants_shader_checks(request, std::env::var(ENV_SHADER_CHECKS).ok().as_deref())?;
        let env_backends = std::env::var("WGPU_BACKEND").is_ok();
        let instance = wgpu::Instance::new(desc);
        let mut adapters = if env_backends {
            instance.enumerate_adapters(wgpu::Backends::all()).await
        } else {
            instance.enumerate_adapters(wgpu::Backends::PRIMARY).await
        };
        let primary_matches = adapters
            .iter()
            .any(|a| request.name.as_deref().is_none_or(|n| matches_request(&(&a.get_info()).into(), n)));
        if !env_backends && !primary_matches {
            adapters.extend(instance.enumerate_adapters(wgpu::Backends::SECONDARY).await);
        }
        let infos: Vec<AdapterFacts> = adapters.iter().map(|a| (&a.get_info()).into()).collect();
        let index = choose_adapter(&infos, request)?;
        let adapter = adapters.swap_remove(index);
        let info = adapter.get_info();
        log::info!("adapter: {}", describe(&infos[index]));
        if info.device_type == wgpu::DeviceType::Cpu {
            log::warn!(
                "using the software adapter '{}': it is correct but slow (1-15 GFLOP/s); \
                 expect small jobs to take minutes",
                info.name
            );
        }
        let mut features = adapter.features() & WANTED_FEATURES;
        // WGTUNE_NO_TIMESTAMPS=1: run as on an adapter without timestamp queries (drivers whose timestamps are
        // wrong; the tests of the wall-clock fallbacks).
        if std::env::var("WGTUNE_NO_TIMESTAMPS").is_ok_and(|v| v != "0") {
            features.remove(
                wgpu::Features::TIMESTAMP_QUERY
                    | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
                    | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
            );
        }
        // Subgroups: requested only when the reductions will use them (the feature, lanes enough, not turned off).
        // Not in a browser: its WGSL compiler wants `enable subgroups;`, which naga (native) refuses, so the
        // variant is written for native backends only.
        let subgroups_available = features.contains(wgpu::Features::SUBGROUP)
            && info.subgroup_min_size >= MIN_SUBGROUP_SIZE
            && info.backend != wgpu::Backend::BrowserWebGpu;
        let subgroups = allows_subgroups(request, std::env::var(ENV_SUBGROUPS).ok().as_deref())? && subgroups_available;
        if !subgroups {
            features.remove(wgpu::Features::SUBGROUP);
        }
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wgtune device"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::RequestDevice { adapter: describe(&infos[index]), reason: e.to_string() })?;

        let pipeline_cache = crate::gpu::pipeline_cache::DiskPipelineCache::open(&device, &info, features);
        let pending = Arc::new(Mutex::new(PendingErrors::default()));
        {
            let pending = pending.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                log::error!("uncaptured GPU error: {e}");
                pending.lock().unwrap_or_else(|p| p.into_inner()).uncaptured.push(e.to_string());
            }));
        }
        {
            let pending = pending.clone();
            device.set_device_lost_callback(move |reason, message| {
                // Dropping the device at exit also reports "lost" with reason Destroyed: not an error.
                if reason != wgpu::DeviceLostReason::Destroyed {
                    log::error!("GPU device lost ({reason:?}): {message}");
                    pending.lock().unwrap_or_else(|p| p.into_inner()).lost = Some(format!("{reason:?}: {message}"));
                }
            });
        }
        Ok(Gpu {
            device,
            queue,
            adapter_info: info,
            limits,
            features,
            kernels: Kernels::new(),
            pending,
            storage_bytes: Default::default(),
            transient_bytes: Default::default(),
            tuner: Default::default(),
            shader_checks,
            subgroups,
            subgroups_available,
            pipeline_cache,
            staged_copies: Default::default(),
        })
    }

    /// Name, backend, type and driver of the adapter.
    pub fn summary(&self) -> AdapterSummary {
        let i = &self.adapter_info;
        AdapterSummary {
            name: i.name.clone(),
            backend: format!("{:?}", i.backend),
            device_type: format!("{:?}", i.device_type),
            driver: i.driver.clone(),
            driver_info: i.driver_info.clone(),
            is_software: i.device_type == wgpu::DeviceType::Cpu,
        }
    }

    /// Whether the adapter is a CPU (a software driver such as lavapipe).
    pub fn is_software(&self) -> bool {
        self.adapter_info.device_type == wgpu::DeviceType::Cpu
    }

    /// Copy `src` into `dst` (same shape and element type) on the GPU, first thing in the next submission, the way
    /// `Queue::write_buffer` stages host data: a batch kept on the device feeds a compiled program's input without
    /// crossing the bus each step.
    pub fn copy_on_next_submit(&self, src: &crate::gpu::Tensor, dst: &crate::gpu::Tensor) -> Result<()> {
        if src.shape() != dst.shape() || src.dtype() != dst.dtype() {
            return Err(Error::shape(
                format!("copy '{}' into '{}'", src.label(), dst.label()),
                format!("{:?} {:?} into {:?} {:?}", src.dtype(), src.shape(), dst.dtype(), dst.shape()),
            ));
        }
        let copy = StagedCopy { src: src.clone(), dst: dst.clone() };
        self.staged_copies.lock().unwrap_or_else(|p| p.into_inner()).push(copy);
        Ok(())
    }

    /// A command encoder with the staged copies ([`Gpu::copy_on_next_submit`]) already in it: every command
    /// buffer wgtune submits starts here, so staged copies run before whatever is submitted next.
    pub(crate) fn command_encoder(&self, label: &str) -> wgpu::CommandEncoder {
        let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        for c in self.staged_copies.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let (src, dst) = (&c.src, &c.dst);
            encoder.copy_buffer_to_buffer(&src.buffer, src.offset, &dst.buffer, dst.offset, dst.bound_bytes());
        }
        encoder
    }

    /// Whether every kernel keeps wgpu's runtime checks (`WGTUNE_SHADER_CHECKS=on`); off, the audited kernels
    /// run without them.
    pub fn shader_checks(&self) -> bool {
        self.shader_checks
    }

    /// The on-disk pipeline cache's file, where the backend has one and a cache folder exists.
    pub fn pipeline_cache_path(&self) -> Option<&std::path::Path> {
        self.pipeline_cache.as_ref().map(|c| c.path())
    }

    /// Write the driver's pipeline cache to disk if it grew since it was loaded or last written (atomically; a
    /// failed write is logged). Also done when the `Gpu` is dropped.
    pub fn save_pipeline_cache(&self) {
        if let Some(c) = &self.pipeline_cache {
            c.save();
        }
    }

    /// The limits the device was opened with (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Optional features enabled on the device.
    pub fn features(&self) -> wgpu::Features {
        self.features
    }

    /// Whether f16 kernels can run (the shader-f16 feature).
    pub fn has_shader_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    /// The adapter's subgroup sizes (lanes, smallest and largest) when the reductions use subgroups, None when
    /// they use workgroup-memory trees (no subgroups, subgroups too small, or turned off: [`AdapterRequest::subgroups`]).
    pub fn subgroups(&self) -> Option<(u32, u32)> {
        self.subgroups.then_some((self.adapter_info.subgroup_min_size, self.adapter_info.subgroup_max_size))
    }

    /// Whether the adapter offers subgroups large enough for the reductions, used or not.
    pub fn adapter_has_subgroups(&self) -> bool {
        self.subgroups_available
    }

    /// Whether GPU timestamps can be written at compute-pass boundaries.
    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Run `f` inside validation and out-of-memory error scopes; a captured error names `label`.
    ///
    /// Natively the scopes' results are ready at once and come back here. In a browser they arrive later (the
    /// page cannot block): they are collected in the background and surface as a `Result` from the next checked
    /// call, still naming `label`.
    pub(crate) fn scoped<T>(&self, label: &str, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let (v, o) = (validation.pop(), oom.pop());
        #[cfg(not(target_arch = "wasm32"))]
        {
            let (v, o) = (pollster::block_on(v), pollster::block_on(o));
            if let Some(e) = v.or(o) {
                return Err(Error::Gpu { label: label.to_string(), message: e.to_string() });
            }
        }
        #[cfg(target_arch = "wasm32")]
        {
            let (pending, label) = (self.pending.clone(), label.to_string());
            wasm_bindgen_futures::spawn_local(async move {
                if let Some(e) = v.await.or(o.await) {
                    let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
                    p.uncaptured.push(format!("{label}: {e}"));
                }
            });
        }
        self.check_pending(label)?;
        Ok(value)
    }

    /// Surface an error that arrived outside a scope (device lost, uncaptured error) as a `Result`.
    pub(crate) fn check_pending(&self, label: &str) -> Result<()> {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lost) = p.lost.clone() {
            return Err(Error::DeviceLost(lost));
        }
        if !p.uncaptured.is_empty() {
            let message = p.uncaptured.drain(..).collect::<Vec<_>>().join("; ");
            return Err(Error::Gpu { label: label.to_string(), message });
        }
        Ok(())
    }

    /// Block until all submitted work is done. Native only: the web awaits [`Gpu::idle`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait_idle(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu { label: "wait for the queue".into(), message: e.to_string() })?;
        self.check_pending("wait for the queue")
    }

    /// Wait until all work submitted so far is done, without blocking the thread where that is impossible (in a
    /// browser the queue's completion callback wakes the future).
    pub async fn idle(&self) -> Result<()> {
        let (done, finished) = futures::channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = done.send(());
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.wait_idle()?;
        let _ = finished.await;
        self.check_pending("wait for the queue")
    }

    /// Run `f` (which submits GPU work) inside a graphics-debugger capture where there is one. In a browser there is no graphics debugger (and no
    /// waiting): `f` just runs.
    #[cfg(target_arch = "wasm32")]
    pub fn capture<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        f()
    }

    /// Run `f` (which submits GPU work) inside a graphics-debugger capture: RenderDoc's StartFrameCapture /
    /// EndFrameCapture when the process runs under RenderDoc (Xcode's capture manager on Metal), nothing otherwise.
    /// Waits for the work to finish before ending the capture.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn capture<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        // SAFETY: wgtune starts no other capture, and the one started here is always stopped below, after the
        // captured work has finished, as the debuggers require.
        unsafe { self.device.start_graphics_debugger_capture() };
        let out = f().and_then(|v| self.wait_idle().map(|()| v));
        // SAFETY: the capture started above is still active.
        unsafe { self.device.stop_graphics_debugger_capture() };
        out
    }

    /// Process finished work and map callbacks without blocking.
    pub fn poll(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Poll)
            .map_err(|e| Error::Gpu { label: "poll".into(), message: e.to_string() })?;
        self.check_pending("poll")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wgpu::{Backend, DeviceType};

    /// Release runs open the instance without DEBUG (on DX12 it compiles shaders unoptimized); a capture
    /// (`--capture-step`) or `WGPU_DEBUG=1` turns it on.
    #[test]
    fn the_debug_flag_is_on_only_when_asked_for() {
        let plain = AdapterRequest::default();
        let capture = AdapterRequest { debug: true, ..Default::default() };
        assert!(!wants_debug(&plain, None));
        assert!(!wants_debug(&plain, Some("0")));
        assert!(wants_debug(&plain, Some("1")));
        assert!(wants_debug(&capture, None));
        assert!(!wants_debug(&AdapterRequest::from_env(), None));
    }

    /// The audited kernels run without wgpu's runtime checks unless `WGTUNE_SHADER_CHECKS=on` or the request
    /// says otherwise; a value that is neither names the variable.
    #[test]
    fn shader_checks_are_off_unless_asked_for() {
        let plain = AdapterRequest::default();
        assert!(!wants_shader_checks(&plain, None).unwrap());
        assert!(!wants_shader_checks(&plain, Some("off")).unwrap());
        assert!(!wants_shader_checks(&plain, Some("0")).unwrap());
        assert!(wants_shader_checks(&plain, Some("on")).unwrap());
        assert!(wants_shader_checks(&plain, Some(" 1 ")).unwrap());
        let on = AdapterRequest { shader_checks: Some(true), ..Default::default() };
        assert!(wants_shader_checks(&on, Some("off")).unwrap(), "the request wins over the variable");
        let e = wants_shader_checks(&plain, Some("yes")).unwrap_err().to_string();
        assert!(e.contains("WGTUNE_SHADER_CHECKS='yes'") && e.contains("on or off"), "{e}");
    }

    /// Subgroup reductions are on where available unless `WGTUNE_SUBGROUPS=off` or the request says otherwise.
    #[test]
    fn subgroups_are_on_unless_turned_off() {
        let plain = AdapterRequest::default();
        assert!(allows_subgroups(&plain, None).unwrap());
        assert!(allows_subgroups(&plain, Some(" on ")).unwrap());
        assert!(!allows_subgroups(&plain, Some("off")).unwrap());
        assert!(!allows_subgroups(&plain, Some("0")).unwrap());
        let off = AdapterRequest { subgroups: Some(false), ..Default::default() };
        assert!(!allows_subgroups(&off, Some("on")).unwrap(), "the request wins over the variable");
        let e = allows_subgroups(&plain, Some("maybe")).unwrap_err().to_string();
        assert!(e.contains("WGTUNE_SUBGROUPS='maybe'") && e.contains("on or off"), "{e}");
    }

    fn facts(list: &[(&str, Backend, DeviceType)]) -> Vec<AdapterFacts> {
        list.iter().map(|&(n, b, t)| AdapterFacts { name: n.into(), backend: b, device_type: t }).collect()
    }

    fn pick(list: &[(&str, Backend, DeviceType)], want: Option<&str>) -> Result<usize> {
        choose_adapter(&facts(list), &AdapterRequest { name: want.map(str::to_string), ..Default::default() })
    }

    const MACHINE: &[(&str, Backend, DeviceType)] = &[
        ("llvmpipe", Backend::Gl, DeviceType::Cpu),
        ("llvmpipe (LLVM 15)", Backend::Vulkan, DeviceType::Cpu),
        ("Intel UHD 770", Backend::Vulkan, DeviceType::IntegratedGpu),
        ("NVIDIA RTX 4090", Backend::Vulkan, DeviceType::DiscreteGpu),
        ("NVIDIA RTX 4090", Backend::Gl, DeviceType::DiscreteGpu),
    ];

    #[test]
    fn discrete_then_integrated_then_cpu_and_native_before_gl() {
        assert_eq!(pick(MACHINE, None).unwrap(), 3);
        assert_eq!(pick(&MACHINE[..3], None).unwrap(), 2);
        assert_eq!(pick(&MACHINE[..2], None).unwrap(), 1);
    }

    #[test]
    fn a_name_or_backend_picks_the_adapter() {
        assert_eq!(pick(MACHINE, Some("intel")).unwrap(), 2);
        assert_eq!(pick(MACHINE, Some("LLVMPIPE")).unwrap(), 1);
        assert_eq!(pick(MACHINE, Some("gl")).unwrap(), 4);
    }

    #[test]
    fn no_match_lists_the_adapters_and_none_says_how_to_get_one() {
        let err = pick(MACHINE, Some("radeon")).unwrap_err().to_string();
        assert!(err.contains("radeon") && err.contains("Intel UHD 770") && err.contains("llvmpipe"), "{err}");
        let err = pick(&[], None).unwrap_err().to_string();
        assert!(err.contains("mesa-vulkan-drivers"), "{err}");
    }
}
