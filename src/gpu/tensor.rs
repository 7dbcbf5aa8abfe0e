//! Typed GPU tensors (shape + buffer + byte offset) and uploads.
//!
//! Every tensor is a row-major view into a storage buffer. Data goes up with `queue.write_buffer` and comes back
//! only through the [`ReadbackRing`](crate::gpu::ReadbackRing).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::context::Gpu;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    /// IEEE half precision (kernels declare `alias T = f16;`, needs SHADER_F16).
    F16,
    U32,
}

impl DType {
    /// Bytes of one element.
    pub fn size(self) -> u64 {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }
}

/// A row-major tensor living in a GPU storage buffer.
#[derive(Clone)]
pub struct Tensor {
    pub(crate) buffer: Arc<wgpu::Buffer>,
    pub(crate) offset: u64,
    shape: Vec<usize>,
    dtype: DType,
    label: Arc<str>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({} {:?} {:?})", self.label, self.dtype, self.shape)
    }
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn label(&self) -> &str {
        &self.label
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Bytes of the tensor's data.
    pub fn bytes(&self) -> u64 {
        self.numel() as u64 * self.dtype.size()
    }
    /// The bytes a binding or a copy covers: [`Tensor::bytes`] rounded up to 4 (an odd number of f16 elements
    /// ends in half a word; buffers and views are sized in whole words, so the padding is always there).
    pub(crate) fn bound_bytes(&self) -> u64 {
        self.bytes().next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
    }
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: std::num::NonZeroU64::new(self.bound_bytes()),
        })
    }
    /// The same data seen with another shape of equal element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(Error::shape(
                format!("reshape of '{}'", self.label),
                format!("{:?} has {} elements, {:?} has {n}", self.shape, self.numel(), shape),
            ));
        }
        Ok(Tensor { shape: shape.to_vec(), ..self.clone() })
    }
}

impl Gpu {
    /// Check a tensor size against this adapter's limits; the error says which limit and by how much.
    pub fn check_size(&self, label: &str, bytes: u64) -> Result<()> {
        let binding = self.limits.max_storage_buffer_binding_size;
        if bytes > binding {
            return Err(Error::TooLarge { label: label.into(), bytes, limit: binding, what: "storage binding" });
        }
        self.check_buffer_size(label, bytes)
    }

    /// Check a buffer size (not bound whole, e.g. a [`Storage`] of many views) against this adapter's limit.
    fn check_buffer_size(&self, label: &str, bytes: u64) -> Result<()> {
        if bytes > self.limits.max_buffer_size {
            return Err(Error::TooLarge {
                label: label.into(),
                bytes,
                limit: self.limits.max_buffer_size,
                what: "buffer",
            });
        }
        Ok(())
    }

    /// A new tensor with unspecified contents (zeroed by wgpu).
    pub fn tensor(&self, shape: &[usize], dtype: DType, label: &str) -> Result<Tensor> {
        self.new_tensor(shape, dtype, label, &self.storage_bytes)
    }

    /// A tensor for a moment's work outside any memory plan (the autotuner's scratch operands, dropped once it
    /// has timed them), counted in [`Gpu::transient_bytes_created`] instead of [`Gpu::storage_bytes_created`].
    pub fn transient_tensor(&self, shape: &[usize], dtype: DType, label: &str) -> Result<Tensor> {
        self.new_tensor(shape, dtype, label, &self.transient_bytes)
    }

    fn new_tensor(&self, shape: &[usize], dtype: DType, label: &str, counter: &AtomicU64) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if numel == 0 {
            return Err(Error::shape(format!("tensor '{label}'"), format!("shape {shape:?} has no elements")));
        }
        let bytes = numel as u64 * dtype.size();
        self.check_size(label, bytes)?;
        let buffer = self.storage_buffer(bytes.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT), label, counter)?;
        Ok(Tensor { buffer: Arc::new(buffer), offset: 0, shape: shape.to_vec(), dtype, label: label.into() })
    }

    /// A new f32 tensor holding `data`.
    pub fn upload_f32(&self, shape: &[usize], data: &[f32], label: &str) -> Result<Tensor> {
        let t = self.tensor(shape, DType::F32, label)?;
        self.write_f32(&t, data)?;
        Ok(t)
    }

    /// A new u32 tensor holding `data`.
    pub fn upload_u32(&self, shape: &[usize], data: &[u32], label: &str) -> Result<Tensor> {
        let t = self.tensor(shape, DType::U32, label)?;
        self.write_bytes(&t, bytemuck::cast_slice(data))?;
        Ok(t)
    }

    /// Overwrite an f32 tensor's contents.
    pub fn write_f32(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        if t.dtype != DType::F32 {
            return Err(Error::Invalid(format!("tensor '{}' is {:?}, not F32", t.label, t.dtype)));
        }
        self.write_bytes(t, bytemuck::cast_slice(data))
    }

    /// Write `data` into `t` in its own element type: f32 as is, f16 rounded to nearest even (an input batch into a
    /// model that stores activations in either).
    pub fn write_values(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        match t.dtype {
            DType::F32 => self.write_f32(t, data),
            DType::F16 => {
                if data.len() != t.numel() {
                    return Err(Error::shape(
                        format!("write to '{}'", t.label),
                        format!("tensor {:?} holds {} elements, got {}", t.shape, t.numel(), data.len()),
                    ));
                }
                let mut bytes: Vec<u8> = data.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
                bytes.resize(t.bound_bytes() as usize, 0);
                self.queue.write_buffer(&t.buffer, t.offset, &bytes);
                Ok(())
            }
            DType::U32 => Err(Error::Invalid(format!("tensor '{}' is U32, not a float tensor", t.label))),
        }
    }

    /// A new f16 tensor holding `data` rounded to half precision (round to nearest even; beyond ±65504: ±inf).
    pub fn upload_f16(&self, shape: &[usize], data: &[f32], label: &str) -> Result<Tensor> {
        let t = self.tensor(shape, DType::F16, label)?;
        self.write_values(&t, data)?;
        Ok(t)
    }

    /// Overwrite a tensor's contents with raw bytes (exactly `t.bytes()` of them).
    pub fn write_bytes(&self, t: &Tensor, data: &[u8]) -> Result<()> {
        if data.len() as u64 != t.bytes() {
            return Err(Error::shape(
                format!("upload to '{}'", t.label),
                format!("tensor {:?} holds {} bytes, got {}", t.shape, t.bytes(), data.len()),
            ));
        }
        self.queue.write_buffer(&t.buffer, t.offset, data);
        Ok(())
    }
}

impl Tensor {
    /// Wrap a buffer this module created for a special use (e.g. query resolution) as a tensor view.
    pub(crate) fn from_raw(buffer: wgpu::Buffer, shape: &[usize], dtype: DType, label: &str) -> Tensor {
        Tensor { buffer: Arc::new(buffer), offset: 0, shape: shape.to_vec(), dtype, label: label.into() }
    }
}

/// A storage buffer that several tensors live in (a parameter bucket, or a memory-plan slot shared by tensors
/// whose lifetimes do not overlap). Tensors are made from it with [`Storage::view`].
#[derive(Clone)]
pub struct Storage {
    buffer: Arc<wgpu::Buffer>,
    bytes: u64,
    label: Arc<str>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({} {} bytes)", self.label, self.bytes)
    }
}

impl Storage {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A tensor view at `offset` bytes (a multiple of [`Gpu::binding_alignment`]).
    pub fn view(&self, offset: u64, shape: &[usize], dtype: DType, label: &str) -> Result<Tensor> {
        let t = Tensor { buffer: self.buffer.clone(), offset, shape: shape.to_vec(), dtype, label: label.into() };
        if t.numel() == 0 || offset + t.bytes() > self.bytes {
            return Err(Error::shape(
                format!("view '{label}' of '{}'", self.label),
                format!("{shape:?} at byte {offset} does not fit in {} bytes", self.bytes),
            ));
        }
        Ok(t)
    }
}

impl Gpu {
    /// A storage buffer of `size` bytes (already aligned), counted in `counter`: the one place tensors and storages
    /// get their memory.
    fn storage_buffer(&self, size: u64, label: &str, counter: &AtomicU64) -> Result<wgpu::Buffer> {
        counter.fetch_add(size, Ordering::Relaxed);
        self.scoped(label, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// Bytes of all storage buffers this device has created so far ([`Gpu::tensor`], [`Gpu::storage`]); staging
    /// and uniform buffers apart. Memory plans are tested against it.
    pub fn storage_bytes_created(&self) -> u64 {
        self.storage_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of the transient tensors created so far ([`Gpu::transient_tensor`]).
    pub fn transient_bytes_created(&self) -> u64 {
        self.transient_bytes.load(Ordering::Relaxed)
    }

    /// Byte alignment of a tensor view's offset inside a [`Storage`].
    pub fn binding_alignment(&self) -> u64 {
        self.limits.min_storage_buffer_offset_alignment as u64
    }

    /// A zero-filled storage buffer of `bytes` bytes.
    pub fn storage(&self, bytes: u64, label: &str) -> Result<Storage> {
        self.check_buffer_size(label, bytes)?;
        let size = bytes.max(4).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        let buffer = self.storage_buffer(size, label, &self.storage_bytes)?;
        Ok(Storage { buffer: Arc::new(buffer), bytes: size, label: label.into() })
    }

    /// Zero a whole storage buffer (optimizer state on a reset), in queue order.
    pub fn clear_storage(&self, s: &Storage) -> Result<()> {
        self.scoped(&s.label, || {
            let mut encoder = self.command_encoder(&format!("clear {}", s.label));
            encoder.clear_buffer(&s.buffer, 0, None);
            self.queue.submit([encoder.finish()]);
        })
    }
}
