//! Profiling: a training step or evaluation batch timed dispatch by dispatch (GPU timestamps), each dispatch named
//! by its layer's op type, and RenderDoc captures of one step.

use std::collections::HashMap;

use super::Executor;
use crate::error::{Error, Result};
use crate::gpu::{Dispatch, Gpu, ReadbackRing, Tensor};
use crate::graph::Op;
use crate::ops::norm::NormAct;

impl Executor {
    /// Time the next training step dispatch by dispatch (GPU timestamps around every dispatch, each in a compute
    /// pass of its own), or as a whole where the adapter has no timestamps; the step waits for its timings and
    /// otherwise trains as usual. Collect the result with [`Executor::take_profile`].
    pub fn profile_next_step(&mut self) {
        self.profile_next = true;
    }

    /// Wrap the next training step in a graphics-debugger capture (RenderDoc when the process runs under it): the
    /// capture holds exactly that step's submission, one debug group per layer. The step waits for the GPU (in a
    /// browser, which has no graphics debugger, the step runs as any other).
    pub fn capture_next_step(&mut self) {
        self.capture_next = true;
    }

    /// The profile of the last step profiled with [`Executor::profile_next_step`].
    pub fn take_profile(&mut self) -> Option<StepProfile> {
        self.last_profile.take()
    }

    blocking! {
        /// Profile one training step (parameters are updated as in any step) or one evaluation batch.
        pub fn profile(&mut self, training: bool, images: &[f32], labels: &[u32]) -> Result<StepProfile>
            => profile_async
    }

    pub async fn profile_async(&mut self, training: bool, images: &[f32], labels: &[u32]) -> Result<StepProfile> {
        self.check_images(images)?;
        self.check_labels(labels)?;
        if training {
            self.profile_next_step();
            self.run_training(images, labels, true).await?;
            let metrics = self.wait_metrics_async().await?;
            self.finished.extend(metrics);
            return self.take_profile().ok_or_else(|| Error::Invalid("the profiled step left no profile".into()));
        }
        self.ensure_eval()?;
        self.upload(false, images, labels)?;
        let p = self.eval.as_ref().expect("compiled");
        let layers = p.layer_groups();
        let (submitted, profile) =
            profiled(&self.gpu, "eval step", &layers, &mut self.ring, &[&p.loss, &p.correct]).await?;
        for t in submitted.tickets {
            self.ring.read(&self.gpu, t).await?;
        }
        self.counters.submits += 1;
        Ok(self.with_op_types(profile))
    }

    /// Name each timed dispatch's op type after its layer: the graph op, convolutions by kernel size (depthwise
    /// apart), a batch norm with its fused activation, "backward" for the gradient layers.
    pub(super) fn with_op_types(&self, mut profile: StepProfile) -> StepProfile {
        let kinds: HashMap<&str, String> = self
            .graph
            .nodes
            .iter()
            .map(|n| {
                let kind = match &n.op {
                    Op::Conv2d { shape, .. } if shape.is_depthwise() => {
                        format!("conv2d depthwise {}x{}", shape.kernel_h, shape.kernel_w)
                    }
                    Op::Conv2d { shape, .. } => format!("conv2d {}x{}", shape.kernel_h, shape.kernel_w),
                    Op::BatchNorm { cfg, .. } if cfg.act == NormAct::Relu => "batch_norm+relu".into(),
                    Op::BatchNorm { cfg, .. } if cfg.act == NormAct::Relu6 => "batch_norm+relu6".into(),
                    op => op.kind().name().to_string(),
                };
                (n.name.as_str(), kind)
            })
            .collect();
        for d in &mut profile.dispatches {
            let (base, backward) = match d.layer.strip_suffix(" backward") {
                Some(base) => (base, " backward"),
                None => (d.layer.as_str(), ""),
            };
            d.op = match kinds.get(base) {
                Some(kind) => format!("{kind}{backward}"),
                None => d.layer.clone(),
            };
        }
        profile
    }
}

/// Where one step's GPU time went.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepProfile {
    /// GpuTimestamps: `dispatches` holds every dispatch's time; WallClock (no timestamp support): only the
    /// whole step was timed.
    pub clock: crate::gpu::Clock,
    /// Submit to results, measured on the CPU (includes the per-dispatch passes' overhead when profiled).
    pub wall_seconds: f64,
    pub dispatches: Vec<crate::gpu::DispatchTiming>,
}

/// Submit `layers` timed dispatch by dispatch where the adapter can, or as a whole (waiting for it) otherwise.
pub(super) async fn profiled(
    gpu: &Gpu,
    label: &str,
    layers: &[(&str, Vec<&Dispatch>)],
    ring: &mut ReadbackRing,
    read: &[&Tensor],
) -> Result<(crate::gpu::Submitted, StepProfile)> {
    let t0 = crate::clock::Instant::now();
    if gpu.has_timestamps() {
        let (submitted, dispatches) = gpu.submit_layers_timed(label, layers, ring, read).await?;
        let profile = StepProfile {
            clock: crate::gpu::Clock::GpuTimestamps,
            wall_seconds: t0.elapsed().as_secs_f64(),
            dispatches,
        };
        return Ok((submitted, profile));
    }
    let submitted = gpu.submit_layers(label, layers, ring, read)?;
    gpu.idle().await?;
    let profile = StepProfile {
        clock: crate::gpu::Clock::WallClock,
        wall_seconds: t0.elapsed().as_secs_f64(),
        dispatches: vec![],
    };
    Ok((submitted, profile))
}
