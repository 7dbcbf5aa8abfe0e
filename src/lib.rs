//! wgtune: a GPU-compute-first neural-network trainer with hand-written WGSL kernels, built on wgpu.
//!
//! - [`gpu`]: the runtime (adapter, device, tensors, readback, kernel registry) — the only module calling wgpu.
//! - [`graph`]: models as graphs of ops, the derived backward pass, the executor that trains them on the GPU.
//! - [`learner`]: fastai's fine_tune: phases, schedules, epoch records.
//! - [`nn`]: EfficientNet-Lite0 and ResNet-18/34/50 built from graph ops, fastai's head, safetensors in and out.
//! - [`ops`]: one launcher per kernel, checking shapes and building [`gpu::Dispatch`] values.
//! - [`plot`]: PNG charts of a run (loss curve, lr_find, confusion matrix).
//! - [`profile`]: per-kernel and per-op tables of a profiled training step.
//! - [`schedule`]: fastai's one-cycle, discriminative learning rates and fine_tune phases.
//! - [`reference`]: the plain-loop f64 CPU twin of every kernel, the test oracle.
//! - [`bench`]: the measurements behind `wgtune bench`.

pub mod bench;
pub mod data;
pub mod error;
pub mod gpu;
pub mod graph;
pub mod learner;
pub mod nn;
pub mod ops;
pub mod plot;
pub mod profile;
pub mod reference;
pub mod schedule;

pub use error::{Error, Result};
