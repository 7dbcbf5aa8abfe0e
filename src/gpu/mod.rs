//! The GPU runtime: the only module that calls wgpu.
//!
//! - [`context`]: adapter choice, device, limits and features, error scopes.
//! - [`tensor`]: typed tensors in storage buffers, uploads.
//! - [`readback`]: the staging ring through which data comes back.
//! - [`kernels`]: WGSL sources, bind-group layouts and pipelines, built once; [`Dispatch`] values.
//! - [`timer`]: GPU-timestamp timing for benchmarks.
//! - `pipeline_cache`: the driver's compiled pipelines kept on disk between runs.

pub mod context;
pub mod kernels;
mod pipeline_cache;
pub mod readback;
pub mod tensor;
pub mod timer;

pub use context::{
    choose_adapter, AdapterFacts, AdapterRequest, AdapterSummary, Gpu, ENV_SHADER_CHECKS, ENV_SUBGROUPS,
    MIN_SUBGROUP_SIZE, NO_ADAPTER_HELP,
};
pub use kernels::{
    variant_source, with_subgroups, Access, CopyInto, Dispatch, KernelSpec, Precision, Segment, SegmentCopy, Submitted,
    ACT_ALIAS, FAMILIES, LHS_ALIAS, RES_ALIAS, RHS_ALIAS, SUBGROUPS_BEGIN, SUBGROUPS_END, TREE_BEGIN, TREE_END,
};
pub use readback::{ReadbackRing, Ticket};
pub use tensor::{DType, Storage, Tensor};
pub use timer::{Clock, DispatchTiming};
