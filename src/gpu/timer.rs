//! Timing of dispatches with GPU timestamp queries (wall clock when the adapter has none).

use std::time::Instant;

use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::kernels::Dispatch;
use crate::gpu::readback::ReadbackRing;

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
    /// Run `dispatches` (in one compute pass) `runs` times and return each run's duration in seconds.
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
            let mut encoder =
                self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
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
