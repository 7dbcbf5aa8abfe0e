//! The one way data comes back from the GPU: a ring of staging buffers.
//!
//! copy (into a free staging slot, recorded in the caller's encoder) -> submit -> `map_async` -> non-blocking
//! `poll` until the callback fired -> read -> unmap, slot free again. A training loop reads last step's loss
//! while this step runs. Waiting for a ticket is an `async fn` ([`ReadbackRing::read`]: the map callback wakes
//! it, so it works in a browser); natively, tests and tools use the blocking form.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::context::Gpu;
use crate::gpu::tensor::{DType, Tensor};

#[derive(Clone, Debug, PartialEq)]
enum SlotState {
    Free,
    /// A copy into the slot is recorded; `map` has not been called.
    Copied,
    /// `map_async` issued, callback not yet fired.
    Mapping,
    /// The callback fired: Ok when the slot is readable.
    Mapped(Result<(), String>),
}

struct Slot {
    buffer: wgpu::Buffer,
    state: Arc<Mutex<SlotState>>,
    /// Fires when the map callback has run (set by `map`).
    mapped: Option<futures::channel::oneshot::Receiver<()>>,
    len: u64,
    source: String,
}

/// A pending readback: which slot, how many bytes.
#[derive(Debug)]
#[must_use = "a ticket must be mapped and read, or its slot stays busy"]
pub struct Ticket {
    slot: usize,
}

/// A fixed ring of staging buffers, each `slot_bytes` large.
pub struct ReadbackRing {
    slots: Vec<Slot>,
    slot_bytes: u64,
}

fn lock(s: &Mutex<SlotState>) -> std::sync::MutexGuard<'_, SlotState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl ReadbackRing {
    /// `slots` staging buffers of `slot_bytes` each.
    pub fn new(gpu: &Gpu, label: &str, slots: usize, slot_bytes: u64) -> Result<Self> {
        let slot_bytes = slot_bytes.max(4).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        let mut v = Vec::with_capacity(slots);
        for i in 0..slots {
            let name = format!("{label} staging {i}");
            let buffer = gpu.scoped(&name, || {
                gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&name),
                    size: slot_bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })?;
            v.push(Slot {
                buffer,
                state: Arc::new(Mutex::new(SlotState::Free)),
                mapped: None,
                len: 0,
                source: String::new(),
            });
        }
        Ok(ReadbackRing { slots: v, slot_bytes })
    }

    /// Record a copy of `src` into a free slot. Errors when every slot is busy (read some tickets first) or the
    /// tensor is larger than a slot.
    pub(crate) fn copy(&mut self, encoder: &mut wgpu::CommandEncoder, src: &Tensor) -> Result<Ticket> {
        let len = src.bound_bytes();
        if len > self.slot_bytes {
            return Err(Error::Readback {
                label: src.label().into(),
                reason: format!("{len} bytes do not fit a {}-byte staging slot", self.slot_bytes),
            });
        }
        let slot =
            self.slots.iter().position(|s| *lock(&s.state) == SlotState::Free).ok_or_else(|| Error::Readback {
                label: src.label().into(),
                reason: format!("all {} staging slots are busy", self.slots.len()),
            })?;
        let s = &mut self.slots[slot];
        encoder.copy_buffer_to_buffer(&src.buffer, src.offset, &s.buffer, 0, len);
        s.len = len;
        s.source = src.label().to_string();
        *lock(&s.state) = SlotState::Copied;
        Ok(Ticket { slot })
    }

    /// Start mapping a ticket's slot. Call after the encoder holding its copy was submitted.
    pub fn map(&mut self, ticket: &Ticket) {
        let s = &mut self.slots[ticket.slot];
        *lock(&s.state) = SlotState::Mapping;
        let state = s.state.clone();
        let (done, mapped) = futures::channel::oneshot::channel();
        s.mapped = Some(mapped);
        s.buffer.slice(0..s.len).map_async(wgpu::MapMode::Read, move |r| {
            *lock(&state) = SlotState::Mapped(r.map_err(|e| e.to_string()));
            let _ = done.send(());
        });
    }

    /// Whether the ticket's bytes have arrived (after a [`Gpu::poll`]), without taking them.
    pub fn is_ready(&self, ticket: &Ticket) -> bool {
        matches!(*lock(&self.slots[ticket.slot].state), SlotState::Mapped(_))
    }

    /// The ticket's bytes if they have arrived; `Ok(None)` while the GPU is still busy. Never blocks.
    pub fn try_read(&mut self, gpu: &Gpu, ticket: &Ticket) -> Result<Option<Vec<u8>>> {
        gpu.poll()?;
        self.take(ticket)
    }

    /// Wait for the ticket's bytes (the map callback wakes the future).
    pub async fn read(&mut self, gpu: &Gpu, ticket: Ticket) -> Result<Vec<u8>> {
        if let Some(mapped) = self.slots[ticket.slot].mapped.take() {
            // Natively callbacks run inside a device poll; in a browser the event loop runs them.
            #[cfg(not(target_arch = "wasm32"))]
            gpu.wait_idle()?;
            let _ = mapped.await;
        }
        gpu.check_pending("readback")?;
        self.take(&ticket)?.ok_or_else(|| Error::Readback {
            label: self.slots[ticket.slot].source.clone(),
            reason: "the staging buffer was not mapped after the GPU finished".into(),
        })
    }

    /// Wait for the ticket's bytes, blocking the thread. Native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_blocking(&mut self, gpu: &Gpu, ticket: Ticket) -> Result<Vec<u8>> {
        pollster::block_on(self.read(gpu, ticket))
    }

    fn take(&mut self, ticket: &Ticket) -> Result<Option<Vec<u8>>> {
        let s = &self.slots[ticket.slot];
        let state = lock(&s.state).clone();
        match state {
            SlotState::Mapped(Ok(())) => {
                let bytes = {
                    let view = s
                        .buffer
                        .slice(0..s.len)
                        .get_mapped_range()
                        .map_err(|e| Error::Readback { label: s.source.clone(), reason: e.to_string() })?;
                    view.to_vec()
                };
                s.buffer.unmap();
                *lock(&s.state) = SlotState::Free;
                Ok(Some(bytes))
            }
            SlotState::Mapped(Err(reason)) => {
                *lock(&s.state) = SlotState::Free;
                Err(Error::Readback { label: s.source.clone(), reason })
            }
            SlotState::Mapping => Ok(None),
            SlotState::Copied | SlotState::Free => Err(Error::Readback {
                label: s.source.clone(),
                reason: "ticket read before it was submitted and mapped".into(),
            }),
        }
    }
}

impl Gpu {
    /// Copy tensors back to the CPU, blocking until the GPU is done. For tests, tools and end-of-run results; a
    /// training step uses a long-lived [`ReadbackRing`] instead. Native only: the web awaits
    /// [`Gpu::read_bytes_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_bytes(&self, tensors: &[&Tensor]) -> Result<Vec<Vec<u8>>> {
        pollster::block_on(self.read_bytes_async(tensors))
    }

    /// Copy tensors back to the CPU once the GPU is done with them.
    pub async fn read_bytes_async(&self, tensors: &[&Tensor]) -> Result<Vec<Vec<u8>>> {
        let largest = tensors.iter().map(|t| t.bytes()).max().unwrap_or(4);
        let mut ring = ReadbackRing::new(self, "read_bytes", tensors.len(), largest)?;
        let mut encoder = self.command_encoder("read_bytes");
        let tickets = tensors.iter().map(|t| ring.copy(&mut encoder, t)).collect::<Result<Vec<_>>>()?;
        self.scoped("read_bytes", || self.queue.submit([encoder.finish()]))?;
        tickets.iter().for_each(|t| ring.map(t));
        let mut out = Vec::with_capacity(tickets.len());
        for t in tickets {
            out.push(ring.read(self, t).await?);
        }
        Ok(out)
    }

    /// Read a tensor back as elements of `T` (f32, u32).
    async fn read_elements<T: bytemuck::Pod>(&self, t: &Tensor) -> Result<Vec<T>> {
        let bytes = self.read_bytes_async(&[t]).await?.pop().unwrap_or_default();
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Read an f32 tensor back.
    pub async fn read_f32_async(&self, t: &Tensor) -> Result<Vec<f32>> {
        expect_dtype(t, DType::F32)?;
        self.read_elements(t).await
    }

    /// Read an f32 tensor back, blocking. Native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        pollster::block_on(self.read_f32_async(t))
    }

    /// Read an f16 tensor back, widened to f32.
    pub async fn read_f16_async(&self, t: &Tensor) -> Result<Vec<f32>> {
        expect_dtype(t, DType::F16)?;
        let halves: Vec<half::f16> = self.read_elements(t).await?;
        Ok(halves.iter().take(t.numel()).map(|h| h.to_f32()).collect())
    }

    /// Read an f16 tensor back widened to f32, blocking. Native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f16(&self, t: &Tensor) -> Result<Vec<f32>> {
        pollster::block_on(self.read_f16_async(t))
    }

    /// Read a u32 tensor back, blocking. Native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        pollster::block_on(self.read_elements(t))
    }
}

/// A typed read of a tensor of another element type is an error, not reinterpreted bytes.
fn expect_dtype(t: &Tensor, dtype: DType) -> Result<()> {
    if t.dtype() != dtype {
        return Err(Error::Invalid(format!("tensor '{}' is {:?}, not {dtype:?}", t.label(), t.dtype())));
    }
    Ok(())
}
