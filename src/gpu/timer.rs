//! Timing of dispatches with GPU timestamp queries (wall clock when the adapter has none).

use crate::clock::Instant;

use crate::error::{Error, Result};
use crate::gpu::context::Gpu;
use crate::gpu::kernels::{Dispatch, Submitted};
use crate::gpu::readback::ReadbackRing;
use crate::gpu::tensor::{DType, Tensor};

/// How a duration was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// GPU timestamps written at the start and end of the compute pass.
    GpuTimestamps,
    /// CPU wall clock around submit + wait (includes submission overhead).
    WallClock,
}

impl Gpu {
    /// Run `dispatches` (in one compute pass) `runs` times and return each run's duration in seconds. Native only
    /// (it blocks between runs).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn time_dispatches(&self, label: &str, dispatches: &[&Dispatch], runs: usize) -> Result<(Clock, Vec<f64>)> {
        if !self.has_timestamps() {
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t0 = Instant::now();
                self.run(label, dispatches)?;
                times.push(t0.elapsed().as_secs_f64());
            }
            return Ok((Clock::WallClock, times));
        }
        let query_label = format!("{label} timestamps");
        let (queries, resolve) = self.scoped(&query_label, || {
            let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some(&query_label),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("{label} timestamp resolve")),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            (queries, resolve)
        })?;
        let resolve = crate::gpu::tensor::Tensor::from_raw(resolve, &[4], crate::gpu::DType::U32, &query_label);
        let mut ring = ReadbackRing::new(self, label, 1, 16)?;
        let period_ns = self.queue.get_timestamp_period() as f64;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let mut encoder = self.command_encoder(label);
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(label),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &queries,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: Some(1),
                    }),
                });
                for d in dispatches {
                    d.encode(&mut pass);
                }
            }
            encoder.resolve_query_set(&queries, 0..2, &resolve.buffer, 0);
            let ticket = ring.copy(&mut encoder, &resolve)?;
            self.scoped(label, || self.queue.submit([encoder.finish()]))?;
            ring.map(&ticket);
            let bytes = ring.read_blocking(self, ticket)?;
            let ts: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
            times.push(ts[1].saturating_sub(ts[0]) as f64 * period_ns * 1e-9);
        }
        Ok((Clock::GpuTimestamps, times))
    }
}

/// GPU time of one dispatch of a profiled submission, with the work it was counted for.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DispatchTiming {
    /// The debug group (layer) the dispatch belongs to.
    pub layer: String,
    /// The op type of the layer ("conv2d 3x3 backward", "batch_norm", ...): filled in by the executor, which knows
    /// the layers; empty when the GPU layer reports it.
    pub op: String,
    pub label: String,
    /// The kernel's entry point.
    pub kernel: &'static str,
    pub seconds: f64,
    /// Counted floating-point operations (0 where the kernel's work is not counted).
    pub flops: u64,
    /// Bytes of the tensors it binds.
    pub bytes: u64,
}

/// wgpu allows at most this many queries in one query set.
const MAX_QUERIES: u32 = 4096;

impl Gpu {
    /// Like [`Gpu::submit_layers`], but every dispatch runs in a compute pass of its own with GPU timestamps
    /// written at its start and end; waits for the timestamps and returns each dispatch's time. Needs
    /// TIMESTAMP_QUERY ([`Gpu::has_timestamps`]).
    pub async fn submit_layers_timed(
        &self,
        label: &str,
        layers: &[(&str, Vec<&Dispatch>)],
        ring: &mut ReadbackRing,
        read: &[&Tensor],
    ) -> Result<(Submitted, Vec<DispatchTiming>)> {
        if !self.has_timestamps() {
            return Err(Error::Invalid(format!(
                "adapter '{}' has no timestamp queries: per-dispatch timing is not available",
                self.summary().name
            )));
        }
        let t0 = Instant::now();
        let all: Vec<(&str, &Dispatch)> =
            layers.iter().flat_map(|(name, ds)| ds.iter().map(move |d| (*name, *d))).collect();
        let per_set = (MAX_QUERIES / 2) as usize;
        let sets = all.len().div_ceil(per_set).max(1);
        // Two queries (start, end) per dispatch; a set is never empty.
        let counts: Vec<u32> = (0..sets).map(|i| (all.len() - i * per_set).clamp(1, per_set) as u32 * 2).collect();
        let query_label = format!("{label} timestamps");
        let (queries, resolves) = self.scoped(&query_label, || {
            let mut queries = Vec::new();
            let mut resolves = Vec::new();
            for (i, &count) in counts.iter().enumerate() {
                queries.push(self.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some(&format!("{query_label} {i}")),
                    ty: wgpu::QueryType::Timestamp,
                    count,
                }));
                let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("{query_label} resolve {i}")),
                    size: count as u64 * 8,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                resolves.push(Tensor::from_raw(buffer, &[count as usize * 2], DType::U32, &query_label));
            }
            (queries, resolves)
        })?;
        let mut stamps = ReadbackRing::new(self, &query_label, sets, per_set as u64 * 16)?;
        let mut encoder = self.command_encoder(label);
        for (i, (layer, d)) in all.iter().enumerate() {
            let (set, slot) = (i / per_set, (i % per_set) as u32);
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&d.label),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &queries[set],
                    beginning_of_pass_write_index: Some(2 * slot),
                    end_of_pass_write_index: Some(2 * slot + 1),
                }),
            });
            pass.push_debug_group(layer);
            d.encode(&mut pass);
            pass.pop_debug_group();
        }
        let mut stamp_tickets = Vec::with_capacity(sets);
        for ((q, r), &count) in queries.iter().zip(&resolves).zip(&counts) {
            encoder.resolve_query_set(q, 0..count, &r.buffer, 0);
            stamp_tickets.push(stamps.copy(&mut encoder, r)?);
        }
        let tickets = read.iter().map(|t| ring.copy(&mut encoder, t)).collect::<Result<Vec<_>>>()?;
        let commands = self.scoped(label, || encoder.finish())?;
        let encode = t0.elapsed();
        self.scoped(label, || self.queue.submit([commands]))?;
        let submit = t0.elapsed() - encode;
        tickets.iter().for_each(|t| ring.map(t));
        stamp_tickets.iter().for_each(|t| stamps.map(t));
        let period_ns = self.queue.get_timestamp_period() as f64;
        let mut out = Vec::with_capacity(all.len());
        for (set, ticket) in stamp_tickets.into_iter().enumerate() {
            let ts: Vec<u64> = bytemuck::pod_collect_to_vec(&stamps.read(self, ticket).await?);
            for (slot, (layer, d)) in all.iter().enumerate().skip(set * per_set).take(per_set) {
                let j = slot % per_set;
                out.push(DispatchTiming {
                    layer: layer.to_string(),
                    op: String::new(),
                    label: d.label.clone(),
                    kernel: d.kernel(),
                    seconds: ts[2 * j + 1].saturating_sub(ts[2 * j]) as f64 * period_ns * 1e-9,
                    flops: d.flops(),
                    bytes: d.bytes(),
                });
            }
        }
        Ok((Submitted { tickets, encode, submit }, out))
    }
}
