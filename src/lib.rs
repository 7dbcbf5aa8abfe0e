//! wgtune: a GPU-compute-first neural-network trainer with hand-written WGSL kernels, built on wgpu.
//!
//! - [`gpu`]: the runtime (adapter, device, tensors, readback, kernel registry) — the only module calling wgpu.
//! - [`graph`]: models as graphs of ops, the derived backward pass, the executor that trains them on the GPU.
//! - [`learner`]: fastai's fine_tune: phases, schedules, epoch records.
//! - [`nn`]: EfficientNet-Lite0 and ResNet-18/34/50 built from graph ops, fastai's head, safetensors in and out.
//! - [`ops`]: one launcher per kernel, checking shapes and building [`gpu::Dispatch`] values.
//! - [`profile`]: per-kernel and per-op tables of a profiled training step.
//! - [`schedule`]: fastai's one-cycle, discriminative learning rates and fine_tune phases.
//! - [`reference`]: the plain-loop f64 CPU twin of every kernel, the test oracle.
//! - [`bench`]: the measurements behind `wgtune bench`.
//! - [`tune`]: the autotuner: kernel variants timed on the device, the winners cached per adapter and driver.
//! - [`export`]: models as ONNX files (feature `onnx`, on with the CLI).

// In a browser wgpu's objects are neither Send nor Sync (one thread, the page's); the Arcs that share them
// natively are plain reference counts there.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

/// A native-only blocking twin of an `async fn` method: `fn name(&mut self, args) -> T => name_async` makes
/// `name` run `name_async` to completion with pollster. The library's GPU waits are all `async fn`s (a browser
/// cannot block); these wrappers are what native callers (the CLI, tests, embedding apps) use.
macro_rules! blocking {
    (
        $(#[$doc:meta])*
        $vis:vis fn $name:ident(&mut self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty => $async_name:ident
    ) => {
        $(#[$doc])*
        #[cfg(not(target_arch = "wasm32"))]
        $vis fn $name(&mut self $(, $arg: $ty)*) -> $ret {
            pollster::block_on(self.$async_name($($arg),*))
        }
    };
    (
        $(#[$doc:meta])*
        $vis:vis fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty => $async_name:ident
    ) => {
        $(#[$doc])*
        #[cfg(not(target_arch = "wasm32"))]
        $vis fn $name(&self $(, $arg: $ty)*) -> $ret {
            pollster::block_on(self.$async_name($($arg),*))
        }
    };
}

pub mod bench;
pub mod clock;
pub mod data;
pub mod error;
#[cfg(feature = "onnx")]
pub mod export;
pub mod gpu;
pub mod graph;
pub mod learner;
pub mod nn;
pub mod ops;
pub mod profile;
pub mod reference;
pub mod schedule;
pub mod tune;

pub use error::{Error, Result};
