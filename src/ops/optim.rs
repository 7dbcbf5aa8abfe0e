//! Optimizer steps: fastai's SGD (momentum, weight decay) and Adam. See shaders/optim.wgsl.

use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Dispatch, Gpu, KernelSpec, Tensor};

use super::dim;

/// Mirrors `OptimParams` in shaders/optim.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct OptimParams {
    pub len: u32,
    pub flags: u32,
    pub lr: f32,
    pub mom: f32,
    pub sqr_mom: f32,
    pub eps: f32,
    pub wd: f32,
    pub debias1: f32,
    pub debias2: f32,
    /// adam_step: the bucket's pair of words in the step counts.
    pub bucket: u32,
    /// adam_step: the 1-based step count `debias1` and `debias2` were computed for.
    pub step: u32,
    pub _pad: u32,
}

pub const FLAG_DECOUPLED_WD: u32 = 1;

pub const SGD_STEP: KernelSpec = KernelSpec::new(
    "sgd_step",
    "optim",
    &[(1, Access::ReadWrite), (2, Access::Read), (3, Access::ReadWrite), (5, Access::Read)],
);
pub const ADAM_STEP: KernelSpec = KernelSpec::new(
    "adam_step",
    "optim",
    &[
        (1, Access::ReadWrite),
        (2, Access::Read),
        (3, Access::ReadWrite),
        (4, Access::ReadWrite),
        (5, Access::Read),
        (6, Access::ReadWrite),
    ],
);

/// Hyper-parameters of one optimizer step. Defaults are fastai's Adam.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    pub lr: f64,
    /// Momentum (SGD) or beta1 (Adam).
    pub mom: f64,
    /// beta2 (Adam only).
    pub sqr_mom: f64,
    pub eps: f64,
    pub wd: f64,
    /// true: p *= 1 - lr*wd (AdamW / fastai default); false: L2, g += wd*p.
    pub decoupled_wd: bool,
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper { lr: 1e-3, mom: 0.9, sqr_mom: 0.99, eps: 1e-5, wd: 0.01, decoupled_wd: true }
    }
}

impl Hyper {
    /// The uniform for `len` elements of `bucket` (its pair of words in the step counts) at 1-based `step`
    /// (Adam's debiasing terms computed here in f64).
    pub fn params(&self, len: u32, step: u64, bucket: u32) -> OptimParams {
        let step = step.max(1);
        OptimParams {
            step: step as u32,
            len,
            flags: if self.decoupled_wd { FLAG_DECOUPLED_WD } else { 0 },
            lr: self.lr as f32,
            mom: self.mom as f32,
            sqr_mom: self.sqr_mom as f32,
            eps: self.eps as f32,
            wd: self.wd as f32,
            debias1: (1.0 - self.mom.powi(step as i32)) as f32,
            debias2: (1.0 - self.sqr_mom.powi(step as i32)) as f32,
            bucket,
            _pad: 0,
        }
    }
}

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Optimizer {
    Sgd,
    Adam,
}

impl Optimizer {
    /// The state the rule keeps per parameter element, one buffer each, in kernel binding order.
    pub fn state_names(self) -> &'static [&'static str] {
        match self {
            Optimizer::Sgd => &["grad_avg"],
            Optimizer::Adam => &["grad_avg", "sqr_avg"],
        }
    }

    fn spec(self) -> &'static KernelSpec {
        match self {
            Optimizer::Sgd => &SGD_STEP,
            Optimizer::Adam => &ADAM_STEP,
        }
    }
}

/// Where Adam counts the updates it applied (skipped steps excluded): u32 words, two per bucket, and this
/// bucket's index. SGD does not bind them.
#[derive(Clone, Copy, Debug)]
pub struct StepCounts<'a> {
    pub counts: &'a Tensor,
    pub bucket: u32,
}

/// One in-place optimizer step over `param` with gradient `grad` and `state` (one tensor per
/// [`Optimizer::state_names`] entry: `grad_avg`, plus `sqr_avg` for Adam), all the same size. Rewrite the
/// hyper-parameters each step with `gpu.write_params(&d, ...)` ([`Hyper::params`] for `counts.bucket`).
#[allow(clippy::too_many_arguments)]
pub fn optimizer_step(
    gpu: &Gpu,
    opt: Optimizer,
    param: &Tensor,
    grad: &Tensor,
    state: &[&Tensor],
    scaler: &Tensor,
    counts: StepCounts,
    hyper: &Hyper,
    step: u64,
    label: &str,
) -> Result<Dispatch> {
    let n = param.numel();
    let spec = opt.spec();
    if state.len() != opt.state_names().len() {
        return Err(Error::Invalid(format!(
            "{} '{label}' needs {} state tensors ({}), got {}",
            spec.entry,
            opt.state_names().len(),
            opt.state_names().join(", "),
            state.len()
        )));
    }
    let mut tensors = vec![param, grad];
    tensors.extend(state);
    if let Some(bad) = tensors.iter().find(|t| t.numel() != n) {
        return Err(Error::shape(
            format!("{} '{label}'", spec.entry),
            format!("'{}' has {} elements, '{}' has {n}", bad.label(), bad.numel(), param.label()),
        ));
    }
    super::scaler::check_state(scaler, label)?;
    tensors.push(scaler);
    if opt == Optimizer::Adam {
        let words = 2 * counts.bucket as usize + 2;
        if counts.counts.dtype() != DType::U32 || counts.counts.numel() < words {
            return Err(Error::Invalid(format!(
                "{} '{label}': the step counts '{}' are {:?} {:?}, expected u32 with at least {words} words",
                spec.entry,
                counts.counts.label(),
                counts.counts.dtype(),
                counts.counts.shape()
            )));
        }
        tensors.push(counts.counts);
    }
    let p = hyper.params(dim(n, "parameter elements")?, step, counts.bucket);
    let grid = super::flat_grid(gpu, n);
    gpu.dispatch(spec, bytemuck::bytes_of(&p), &tensors, grid, label)
}
