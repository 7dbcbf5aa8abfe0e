//! The kernel registry: WGSL sources (one file per kernel family, pulled in with `include_str!`), explicit
//! bind-group layouts ("the function signature of a kernel") and compute pipelines, each built once and cached.
//!
//! Convention for every kernel: binding 0 is its uniform parameter struct, the storage buffers follow at the
//! binding numbers listed in its [`KernelSpec`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::gpu::context::Gpu;
use crate::gpu::readback::{ReadbackRing, Ticket};
use crate::gpu::tensor::Tensor;

/// A WGSL source file: one kernel family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Family {
    pub name: &'static str,
    pub source: &'static str,
    /// Every storage, workgroup and local array access of every entry point is in bounds for any parameters the
    /// Rust side accepts, and every loop ends (CONTRIBUTING.md, "Runtime checks"): the family's modules are
    /// created without wgpu's bounds clamps and loop-bound counters unless `WGTUNE_SHADER_CHECKS=on`.
    /// Integer-division guards stay in every module (a zero divisor would be undefined behavior).
    pub audited: bool,
}

/// Every shader file of the crate. A test checks that this list and `shaders/*.wgsl` agree.
pub const FAMILIES: &[Family] = &[
    Family { name: "matmul", source: include_str!("../../shaders/matmul.wgsl"), audited: true },
    Family { name: "conv2d", source: include_str!("../../shaders/conv2d.wgsl"), audited: true },
    Family { name: "depthwise", source: include_str!("../../shaders/depthwise.wgsl"), audited: true },
    Family { name: "pool", source: include_str!("../../shaders/pool.wgsl"), audited: true },
    Family { name: "concat", source: include_str!("../../shaders/concat.wgsl"), audited: true },
    Family { name: "norm", source: include_str!("../../shaders/norm.wgsl"), audited: true },
    Family { name: "layer_norm", source: include_str!("../../shaders/layer_norm.wgsl"), audited: true },
    Family { name: "permute", source: include_str!("../../shaders/permute.wgsl"), audited: true },
    Family { name: "softmax", source: include_str!("../../shaders/softmax.wgsl"), audited: true },
    Family { name: "slice", source: include_str!("../../shaders/slice.wgsl"), audited: true },
    Family { name: "dropout", source: include_str!("../../shaders/dropout.wgsl"), audited: true },
    Family { name: "augment", source: include_str!("../../shaders/augment.wgsl"), audited: true },
    Family { name: "elementwise", source: include_str!("../../shaders/elementwise.wgsl"), audited: true },
    Family { name: "reduce", source: include_str!("../../shaders/reduce.wgsl"), audited: true },
    Family { name: "loss", source: include_str!("../../shaders/loss.wgsl"), audited: true },
    Family { name: "optim", source: include_str!("../../shaders/optim.wgsl"), audited: true },
    Family { name: "accumulate", source: include_str!("../../shaders/accumulate.wgsl"), audited: true },
    Family { name: "scaler", source: include_str!("../../shaders/scaler.wgsl"), audited: true },
];

/// The runtime checks an audited family's modules keep: integer-division guards only.
const UNCHECKED: wgpu::ShaderRuntimeChecks =
    wgpu::ShaderRuntimeChecks { int_div_checks: true, ..wgpu::ShaderRuntimeChecks::unchecked() };

/// The element types a kernel stores in. An f16 kernel is its family's f32 source with the line [`ACT_ALIAS`]
/// made `alias act = f16;` (and [`RES_ALIAS`], [`LHS_ALIAS`] and [`RHS_ALIAS`], where the family has them, f16
/// as the variant says) and `enable f16;` put first: one source, several variants; arithmetic and accumulators
/// stay f32 inside (values are widened on load and rounded once on store).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// Activations in f16, results too.
    F16,
    /// f16 operands, f32 result: the variant of families whose result type is [`RES_ALIAS`] (the GEMMs and the
    /// loss) for weight gradients, losses, counts and probabilities.
    F16ToF32,
    /// f16 activations and result, the [`LHS_ALIAS`] operand f32: an f32 master weight read by a GEMM as it is.
    F16WithF32Lhs,
    /// f16 activations and result, the [`RHS_ALIAS`] operand f32 (a weight, or a parameter expanded into
    /// activations).
    F16WithF32Rhs,
}

impl Precision {
    pub const ALL: [Precision; 5] =
        [Precision::F32, Precision::F16, Precision::F16ToF32, Precision::F16WithF32Lhs, Precision::F16WithF32Rhs];
}

/// The line of a family's WGSL that names its activations' storage type (families without it have no f16
/// variant).
pub const ACT_ALIAS: &str = "alias act = f32;";

/// The line of a family's WGSL that names its result's storage type where that may differ from its operands'
/// (f32 weight gradients from f16 activations): f16 in [`Precision::F16`], f32 in [`Precision::F16ToF32`].
pub const RES_ALIAS: &str = "alias res = f32;";

/// The lines naming the storage type of a GEMM's left or right operand where that operand may be an f32 weight
/// next to f16 activations: f16 in every f16 variant but [`Precision::F16WithF32Lhs`] (resp. `Rhs`).
pub const LHS_ALIAS: &str = "alias lhs = f32;";
pub const RHS_ALIAS: &str = "alias rhs = f32;";

/// Which of (res, lhs, rhs) `fam`'s variant at `p` makes f16 (act is f16 in every f16 variant; nothing is in
/// f32); None when the family has no such variant (no [`ACT_ALIAS`] line; for [`Precision::F16ToF32`] no
/// [`RES_ALIAS`] line; for the f32-operand variants no such operand line).
fn variant_f16_lines(fam: Family, p: Precision) -> Option<(bool, bool, bool)> {
    let has = |line: &str| fam.source.lines().any(|l| l.trim() == line);
    match p {
        Precision::F32 => Some((false, false, false)),
        _ if !has(ACT_ALIAS) => None,
        Precision::F16 => Some((true, true, true)),
        Precision::F16ToF32 if has(RES_ALIAS) => Some((false, true, true)),
        Precision::F16WithF32Lhs if has(LHS_ALIAS) => Some((true, false, true)),
        Precision::F16WithF32Rhs if has(RHS_ALIAS) => Some((true, true, false)),
        _ => None,
    }
}

/// The WGSL of `fam` at precision `p`; None when the family has no such variant (see [`variant_f16_lines`]).
pub fn variant_source(fam: Family, p: Precision) -> Option<Cow<'static, str>> {
    let (res, lhs, rhs) = variant_f16_lines(fam, p)?;
    if p == Precision::F32 {
        return Some(fam.source.into());
    }
    let mut source = fam.source.replacen(ACT_ALIAS, "alias act = f16;", 1);
    for (f16, line, made) in [
        (res, RES_ALIAS, "alias res = f16;"),
        (lhs, LHS_ALIAS, "alias lhs = f16;"),
        (rhs, RHS_ALIAS, "alias rhs = f16;"),
    ] {
        if f16 {
            source = source.replacen(line, made, 1);
        }
    }
    Some(format!("enable f16;\n{source}").into())
}

/// The line opening a family's workgroup-memory reduction, the part its subgroup variant replaces, and the line
/// closing it.
pub const TREE_BEGIN: &str = "// [workgroup tree]";
pub const TREE_END: &str = "// [end workgroup tree]";
/// The lines around the same functions written with subgroup operations, inside a block comment in the f32 source.
pub const SUBGROUPS_BEGIN: &str = "/* [subgroups]";
pub const SUBGROUPS_END: &str = "[end subgroups] */";

/// `source` (any precision's variant of a family) with its workgroup-tree block taken out and its subgroup block
/// uncommented; None when the family has no such blocks. The two blocks define the same names (the reductions, an
/// entry-point input struct `Lane` and `enter`), so the kernels themselves are one text. (No `enable subgroups;`:
/// naga 30 takes subgroup operations without it and refuses the directive; the variant is native-only, as wgpu's
/// `SUBGROUP` feature is.)
pub fn with_subgroups(source: &str) -> Option<String> {
    let mut out = String::new();
    let (mut in_tree, mut seen_tree, mut seen_subgroups) = (false, false, false);
    for line in source.lines() {
        match line.trim() {
            TREE_BEGIN => (in_tree, seen_tree) = (true, true),
            TREE_END => in_tree = false,
            SUBGROUPS_BEGIN | SUBGROUPS_END => seen_subgroups = true,
            _ if !in_tree => {
                out.push_str(line);
                out.push('\n');
            }
            _ => {}
        }
    }
    (seen_tree && seen_subgroups).then_some(out)
}

/// A shader module's label: its file, and "(f16)" for the f16 variant.
fn module_label(fam: Family, precision: Precision) -> String {
    match precision {
        Precision::F32 => format!("shaders/{}.wgsl", fam.name),
        Precision::F16 => format!("shaders/{}.wgsl (f16)", fam.name),
        Precision::F16ToF32 => format!("shaders/{}.wgsl (f16, f32 result)", fam.name),
        Precision::F16WithF32Lhs => format!("shaders/{}.wgsl (f16, f32 left operand)", fam.name),
        Precision::F16WithF32Rhs => format!("shaders/{}.wgsl (f16, f32 right operand)", fam.name),
    }
}

fn family(name: &str) -> Family {
    *FAMILIES.iter().find(|f| f.name == name).expect("kernel family is registered in FAMILIES")
}

/// How a kernel sees one storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

/// A kernel's signature: its entry point, its family and its storage bindings as (binding number, access),
/// in the order tensors are passed to [`Gpu::dispatch`]. Binding 0 is always the uniform parameter struct.
#[derive(Clone, Copy, Debug)]
pub struct KernelSpec {
    pub entry: &'static str,
    pub family: &'static str,
    pub storage: &'static [(u32, Access)],
    /// Values for the WGSL `override` constants of the entry point (e.g. a workgroup size); each distinct set is
    /// its own pipeline.
    pub constants: &'static [(&'static str, f64)],
    /// The activations' storage type: the family's f16 variant for [`Precision::F16`].
    pub precision: Precision,
}

impl KernelSpec {
    pub const fn new(entry: &'static str, family: &'static str, storage: &'static [(u32, Access)]) -> Self {
        KernelSpec { entry, family, storage, constants: &[], precision: Precision::F32 }
    }

    /// The same kernel storing activations at `precision`.
    pub const fn with_precision(self, precision: Precision) -> Self {
        KernelSpec { precision, ..self }
    }

    /// Whether the kernel's family has a variant at `precision` (see [`variant_source`]), without making it.
    pub fn has_variant(&self, precision: Precision) -> bool {
        variant_f16_lines(family(self.family), precision).is_some()
    }

    /// The same kernel with pipeline-overridable constants set.
    pub const fn with_constants(self, constants: &'static [(&'static str, f64)]) -> Self {
        KernelSpec { constants, ..self }
    }

    /// The pipeline cache key: the family, the entry point and its constants (two families may share an entry
    /// point's name).
    fn key(&self) -> String {
        let mut k = format!("{}/{}", self.family, self.entry);
        match self.precision {
            Precision::F32 => {}
            Precision::F16 => k.push_str("@f16"),
            Precision::F16ToF32 => k.push_str("@f16>f32"),
            Precision::F16WithF32Lhs => k.push_str("@f16+f32lhs"),
            Precision::F16WithF32Rhs => k.push_str("@f16+f32rhs"),
        }
        for (name, value) in self.constants {
            k.push_str(&format!(" {name}={value}"));
        }
        k
    }
}

struct Compiled {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// Cache of shader modules and pipelines, keyed by family / entry point.
pub(crate) struct Kernels {
    modules: Mutex<HashMap<(&'static str, Precision), Arc<wgpu::ShaderModule>>>,
    pipelines: Mutex<HashMap<String, Arc<Compiled>>>,
}

impl Kernels {
    pub(crate) fn new() -> Self {
        Kernels { modules: Mutex::new(HashMap::new()), pipelines: Mutex::new(HashMap::new()) }
    }
}

/// What [`Gpu::submit_layers`] did: readback tickets, CPU time spent encoding, and time the submit call took.
#[derive(Debug)]
pub struct Submitted {
    pub tickets: Vec<Ticket>,
    pub encode: std::time::Duration,
    pub submit: std::time::Duration,
}

/// Where a copy inside a submission lands: a tensor, or a dispatch's uniform parameters.
pub enum CopyInto<'a> {
    Tensor(&'a Tensor),
    Params(&'a Dispatch),
}

/// A copy inside a submission: `bytes` bytes of `src` from byte `src_offset` to the start of `dst`.
pub struct SegmentCopy<'a> {
    pub src: &'a Tensor,
    pub src_offset: u64,
    pub dst: CopyInto<'a>,
    pub bytes: u64,
}

/// One part of a submission of several: its copies (inputs and uniforms staged on the GPU beforehand), its
/// layers' dispatches in one compute pass, then the tensors copied out for reading back.
pub struct Segment<'a> {
    pub copies: Vec<SegmentCopy<'a>>,
    pub layers: Vec<(&'a str, Vec<&'a Dispatch>)>,
    pub read: Vec<&'a Tensor>,
}

/// A kernel launch compiled once: pipeline, bind group, its own parameter buffer and the grid size.
/// Encode it any number of times; update its parameters with [`Gpu::write_params`].
pub struct Dispatch {
    pub(crate) label: String,
    compiled: Arc<Compiled>,
    pub(crate) bind_group: wgpu::BindGroup,
    pub(crate) params: wgpu::Buffer,
    pub(crate) workgroups: [u32; 3],
    kernel: &'static str,
    bytes: u64,
    flops: u64,
}

impl Dispatch {
    pub fn label(&self) -> &str {
        &self.label
    }
    /// The kernel's entry point (its WGSL function name).
    pub fn kernel(&self) -> &'static str {
        self.kernel
    }
    /// Bytes of the tensors the dispatch binds, each counted once: the traffic a GB/s figure is quoted against.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// Floating-point operations (a multiply-add is 2), where the launcher counted them; 0 otherwise.
    pub fn flops(&self) -> u64 {
        self.flops
    }
    /// Record the useful floating-point work of this launch (for GFLOP/s in profiles).
    pub fn with_flops(mut self, flops: u64) -> Dispatch {
        self.flops = flops;
        self
    }
    pub fn workgroups(&self) -> [u32; 3] {
        self.workgroups
    }
    pub(crate) fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.push_debug_group(&self.label);
        pass.set_pipeline(&self.compiled.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
        pass.pop_debug_group();
    }
}

impl Gpu {
    /// Compile every kernel family's WGSL (and its f16 variant where it has one and the adapter has shader-f16)
    /// and wait for the driver's verdict on each: the module's name, and None where it compiled or the compiler's
    /// message where it did not. Kernels compile lazily, on first use; this is how a browser's WGSL compiler
    /// (stricter in places than naga) is checked against all of them at once.
    pub async fn compile_all_async(&self) -> Vec<(String, Option<String>)> {
        let mut out = Vec::new();
        for fam in FAMILIES {
            for precision in Precision::ALL {
                if precision != Precision::F32 && !self.has_shader_f16() {
                    continue;
                }
                let Some(source) = variant_source(*fam, precision) else { continue };
                let (source, label) = self.with_reductions(source, module_label(*fam, precision));
                let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
                let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&label),
                    source: wgpu::ShaderSource::Wgsl(source),
                });
                let error = scope.pop().await;
                drop(module);
                out.push((label, error.map(|e| e.to_string())));
            }
        }
        out
    }

    /// A module's source and label with the subgroup reductions where this device uses them and the family has
    /// them ([`with_subgroups`]).
    fn with_reductions<'a>(&self, source: Cow<'a, str>, label: String) -> (Cow<'a, str>, String) {
        match self.subgroups.then(|| with_subgroups(&source)).flatten() {
            Some(s) => (s.into(), format!("{label} (subgroups)")),
            None => (source, label),
        }
    }

    fn module(&self, fam: Family, precision: Precision) -> Result<Arc<wgpu::ShaderModule>> {
        let mut modules = self.kernels.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.get(&(fam.name, precision)) {
            return Ok(m.clone());
        }
        let source = variant_source(fam, precision)
            .ok_or_else(|| Error::Invalid(format!("the {} kernels have no {precision:?} variant", fam.name)))?;
        let (source, label) = self.with_reductions(source, module_label(fam, precision));
        if precision != Precision::F32 && !self.has_shader_f16() {
            return Err(Error::Invalid(format!(
                "the adapter '{}' has no shader-f16 feature: f16 kernels need it (use f32 here)",
                self.summary().name
            )));
        }
        let desc = wgpu::ShaderModuleDescriptor { label: Some(&label), source: wgpu::ShaderSource::Wgsl(source) };
        let module = self.scoped(&label, || {
            if fam.audited && !self.shader_checks {
                // SAFETY: an audited family's accesses stay in bounds and its loops end for every parameter set
                // the Rust side builds (see `Family::audited`); the kernel tests run with and without the checks.
                unsafe { self.device.create_shader_module_trusted(desc, UNCHECKED) }
            } else {
                self.device.create_shader_module(desc)
            }
        })?;
        let module = Arc::new(module);
        modules.insert((fam.name, precision), module.clone());
        Ok(module)
    }

    fn compiled(&self, spec: &KernelSpec) -> Result<Arc<Compiled>> {
        let key = spec.key();
        if let Some(c) = self.kernels.pipelines.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        let module = self.module(family(spec.family), spec.precision)?;
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        for &(binding, access) in spec.storage {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: access == Access::Read },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let started = crate::clock::Instant::now();
        let compiled = self.scoped(spec.entry, || {
            let layout = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&format!("{} bindings", spec.entry)),
                entries: &entries,
            });
            let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&format!("{} layout", spec.entry)),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&key),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(spec.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: spec.constants,
                    ..Default::default()
                },
                cache: self.pipeline_cache.as_ref().map(|c| c.cache()),
            });
            Compiled { pipeline, layout }
        })?;
        log::debug!("pipeline {key} compiled in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
        let compiled = Arc::new(compiled);
        self.kernels.pipelines.lock().unwrap_or_else(|p| p.into_inner()).insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Build a launch of `spec` over `tensors` (bindings 1..) with uniform `params` (binding 0).
    pub fn dispatch(
        &self,
        spec: &KernelSpec,
        params: &[u8],
        tensors: &[&Tensor],
        workgroups: [u32; 3],
        label: impl Into<String>,
    ) -> Result<Dispatch> {
        let label = label.into();
        if tensors.len() != spec.storage.len() {
            return Err(Error::Invalid(format!(
                "kernel {} takes {} tensors, '{label}' passed {}",
                spec.entry,
                spec.storage.len(),
                tensors.len()
            )));
        }
        let max = self.limits.max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&w| w > max) {
            return Err(Error::Invalid(format!(
                "'{label}': grid {workgroups:?} exceeds this adapter's {max} workgroups per dimension"
            )));
        }
        let compiled = self.compiled(spec)?;
        let (params_buf, bind_group) = self.scoped(&label, || {
            let params_buf = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(&format!("{label} params")),
                contents: params,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            });
            let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: params_buf.as_entire_binding() }];
            for (&(binding, _), t) in spec.storage.iter().zip(tensors) {
                entries.push(wgpu::BindGroupEntry { binding, resource: t.binding() });
            }
            let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&label),
                layout: &compiled.layout,
                entries: &entries,
            });
            (params_buf, bind_group)
        })?;
        // A tensor bound twice (a placeholder binding) is counted once.
        let mut seen: Vec<&Tensor> = Vec::with_capacity(tensors.len());
        for t in tensors {
            if !seen.iter().any(|s| std::ptr::eq(*s, *t)) {
                seen.push(t);
            }
        }
        let bytes = seen.iter().map(|t| t.bytes()).sum();
        Ok(Dispatch {
            label,
            compiled,
            bind_group,
            params: params_buf,
            workgroups,
            kernel: spec.entry,
            bytes,
            flops: 0,
        })
    }

    /// Overwrite a dispatch's uniform parameters (e.g. this step's learning rate). Takes effect for work
    /// submitted after this call.
    pub fn write_params(&self, dispatch: &Dispatch, params: &[u8]) {
        self.queue.write_buffer(&dispatch.params, 0, params);
    }

    /// Encode `dispatches` in one compute pass (one debug group per dispatch), copy `read` into free slots of
    /// `ring`, and submit once — without waiting. The returned tickets (one per tensor in `read`) are already
    /// mapping: collect them with [`ReadbackRing::try_read`] (never blocks) or
    /// [`ReadbackRing::read_blocking`]. This is the shape of a training step: one submission, a few bytes back.
    pub fn submit(
        &self,
        label: &str,
        dispatches: &[&Dispatch],
        ring: &mut ReadbackRing,
        read: &[&Tensor],
    ) -> Result<Vec<Ticket>> {
        Ok(self.submit_layers(label, &[(label, dispatches.to_vec())], ring, read)?.tickets)
    }

    /// As [`Gpu::submit`], with the dispatches grouped by layer: each layer is a debug group named after it,
    /// so a GPU capture of the step reads like the model.
    pub fn submit_layers(
        &self,
        label: &str,
        layers: &[(&str, Vec<&Dispatch>)],
        ring: &mut ReadbackRing,
        read: &[&Tensor],
    ) -> Result<Submitted> {
        let t0 = crate::clock::Instant::now();
        let mut encoder = self.command_encoder(label);
        {
            let mut pass =
                encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(label), timestamp_writes: None });
            for (name, dispatches) in layers {
                pass.push_debug_group(name);
                for d in dispatches.iter() {
                    d.encode(&mut pass);
                }
                pass.pop_debug_group();
            }
        }
        let tickets = read.iter().map(|t| ring.copy(&mut encoder, t)).collect::<Result<Vec<_>>>()?;
        // Validation errors of the recorded commands surface at finish: inside the scope, so they name `label`.
        let commands = self.scoped(label, || encoder.finish())?;
        let encode = t0.elapsed();
        // On a busy adapter the driver may hold the submitting thread here until earlier work drains.
        self.scoped(label, || self.queue.submit([commands]))?;
        tickets.iter().for_each(|t| ring.map(t));
        Ok(Submitted { tickets, encode, submit: t0.elapsed() - encode })
    }

    /// Encode `segments` one after another in one command buffer — each its copies, its compute pass, its
    /// readback copies — and submit once, without waiting: several training steps (the micro-batches of an
    /// accumulated optimizer step) in one submission. Tickets come in the segments' order.
    pub fn submit_segments(&self, label: &str, segments: &[Segment], ring: &mut ReadbackRing) -> Result<Submitted> {
        let t0 = crate::clock::Instant::now();
        let mut encoder = self.command_encoder(label);
        let mut tickets = Vec::new();
        for (i, segment) in segments.iter().enumerate() {
            for c in &segment.copies {
                let (dst, dst_offset, room) = match c.dst {
                    CopyInto::Tensor(t) => (&*t.buffer, t.offset, t.bytes()),
                    CopyInto::Params(d) => (&d.params, 0, d.params.size()),
                };
                if c.bytes > room || c.src_offset + c.bytes > c.src.bytes() {
                    return Err(Error::Invalid(format!(
                        "{label}: a copy of {} bytes from '{}' does not fit",
                        c.bytes,
                        c.src.label()
                    )));
                }
                encoder.copy_buffer_to_buffer(&c.src.buffer, c.src.offset + c.src_offset, dst, dst_offset, c.bytes);
            }
            {
                let name = format!("{label} {i}");
                let mut pass = encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(&name), timestamp_writes: None });
                for (name, dispatches) in &segment.layers {
                    pass.push_debug_group(name);
                    for d in dispatches.iter() {
                        d.encode(&mut pass);
                    }
                    pass.pop_debug_group();
                }
            }
            for t in &segment.read {
                tickets.push(ring.copy(&mut encoder, t)?);
            }
        }
        let commands = self.scoped(label, || encoder.finish())?;
        let encode = t0.elapsed();
        self.scoped(label, || self.queue.submit([commands]))?;
        tickets.iter().for_each(|t| ring.map(t));
        Ok(Submitted { tickets, encode, submit: t0.elapsed() - encode })
    }

    /// Encode `dispatches` in one compute pass (one debug group per dispatch), submit, and wait. Native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run(&self, label: &str, dispatches: &[&Dispatch]) -> Result<()> {
        let mut no_readback = ReadbackRing::new(self, label, 0, 4)?;
        self.submit(label, dispatches, &mut no_readback, &[])?;
        self.wait_idle()
    }

    /// [`Gpu::run`] without blocking the thread (in a browser: the page's kernel checks).
    pub async fn run_async(&self, label: &str, dispatches: &[&Dispatch]) -> Result<()> {
        let mut no_readback = ReadbackRing::new(self, label, 0, 4)?;
        self.submit(label, dispatches, &mut no_readback, &[])?;
        self.idle().await
    }
}
