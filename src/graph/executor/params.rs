//! Parameters, gradients, optimizer state and running statistics: allocated once, resident on the GPU.
//!
//! Parameters live in one storage buffer per (group, weight-decay) bucket, their gradients in a matching buffer,
//! and the optimizer's state in as many matching buffers as its update rule needs (SGD: the momentum average;
//! Adam: both moments). One optimizer dispatch per bucket updates every member; freezing a group skips its
//! buckets. Each member's byte offset inside its bucket is kept, so one member can be read or written alone.
//! Batch-norm running statistics live in one more buffer.

use std::collections::HashMap;

use super::{Executor, NamedTensor};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Storage, Tensor};
use crate::graph::{Graph, TensorId, TensorKind};
use crate::ops::optim::Optimizer;

/// The checkpoint name of a bucket's gradient sum (gradient accumulation).
const SUM: &str = "grad_sum";

/// The element type of parameters, gradients, optimizer state and running statistics.
pub(super) const PARAM_DTYPE: DType = DType::F32;

/// The parameters of one (group, decay) pair, with their gradients and optimizer state.
pub(super) struct Bucket {
    pub group: usize,
    pub decay: bool,
    /// Elements, members' alignment padding included.
    pub len: usize,
    /// Each member and its byte offset in `params` (and in `grads` and every state buffer).
    pub members: Vec<(TensorId, u64)>,
    pub params: Storage,
    pub grads: Storage,
    /// One buffer per [`Optimizer::state_names`] entry, in that order.
    pub state: Vec<Storage>,
    /// With gradient accumulation: the running sum of the cycle's scaled gradients.
    pub sum: Option<Storage>,
    /// Optimizer steps taken (Adam's debiasing).
    pub step: u64,
}

impl Bucket {
    /// The whole of one of the bucket's buffers as a flat tensor.
    pub fn whole(&self, storage: &Storage, what: &str) -> Result<Tensor> {
        storage.view(0, &[self.len], PARAM_DTYPE, &format!("group {} {what}", self.group))
    }
}

/// Everything persistent of an executor.
pub(super) struct Params {
    pub buckets: Vec<Bucket>,
    /// Parameters (views into bucket storage) and state (running statistics).
    pub values: HashMap<TensorId, Tensor>,
    /// Parameter gradients (views into bucket gradient storage).
    pub grads: HashMap<TensorId, Tensor>,
    pub bytes: u64,
    _running: Option<Storage>,
}

impl Params {
    /// Allocate every persistent buffer of `graph` for `optimizer` and upload the initial values.
    pub fn new(gpu: &Gpu, graph: &Graph, optimizer: Optimizer, accumulate: bool) -> Result<Params> {
        let elem = PARAM_DTYPE.size();
        // Each view starts on a binding-aligned offset. Parameters stay f32 with f16 activations too: the kernels
        // read the master weights as they are (no f16 copy; rounding weights to f16 cost more accuracy than
        // rounding activations, BENCHMARKS.md "Mixed precision").
        let align = gpu.binding_alignment().max(elem);
        // ((group, decay), [(parameter, byte offset)], bytes)
        type BucketLayout = ((usize, bool), Vec<(TensorId, u64)>, u64);
        let mut layout: Vec<BucketLayout> = Vec::new();
        for t in graph.params() {
            let TensorKind::Param { group, decay, .. } = graph.tensors[t.0].kind else { continue };
            let i = match layout.iter().position(|(k, _, _)| *k == (group, decay)) {
                Some(i) => i,
                None => {
                    layout.push(((group, decay), Vec::new(), 0));
                    layout.len() - 1
                }
            };
            let (_, members, bytes) = &mut layout[i];
            members.push((t, *bytes));
            *bytes = (*bytes + graph.tensors[t.0].numel() as u64 * elem).next_multiple_of(align);
        }
        let mut values = HashMap::new();
        let mut grads = HashMap::new();
        let mut buckets = Vec::new();
        let mut total = 0;
        for ((group, decay), members, bytes) in layout {
            let name = format!("group {group}{}", if decay { "" } else { " no-decay" });
            let storage = |what: &str| gpu.storage(bytes, &format!("{name} {what}"));
            let state = optimizer.state_names().iter().map(|what| storage(what)).collect::<Result<Vec<_>>>()?;
            let bucket = Bucket {
                group,
                decay,
                len: (bytes / elem) as usize,
                members,
                params: storage("params")?,
                grads: storage("grads")?,
                state,
                sum: if accumulate { Some(storage("gradient sum")?) } else { None },
                step: 0,
            };
            total += bytes * (2 + bucket.state.len() as u64 + bucket.sum.is_some() as u64);
            for &(t, offset) in &bucket.members {
                let info = &graph.tensors[t.0];
                let v = bucket.params.view(offset, &info.shape, PARAM_DTYPE, &info.name)?;
                if let Some(init) = &info.init {
                    gpu.write_f32(&v, init)?;
                }
                values.insert(t, v);
                let grad = format!("{}.grad", info.name);
                grads.insert(t, bucket.grads.view(offset, &info.shape, PARAM_DTYPE, &grad)?);
            }
            buckets.push(bucket);
        }
        // Running statistics: one buffer.
        let mut offsets = Vec::new();
        let mut bytes = 0;
        for (i, info) in graph.tensors.iter().enumerate() {
            if info.kind == TensorKind::State {
                offsets.push((TensorId(i), bytes));
                bytes = (bytes + info.numel() as u64 * elem).next_multiple_of(align);
            }
        }
        let running = if offsets.is_empty() { None } else { Some(gpu.storage(bytes, "running statistics")?) };
        if let Some(storage) = &running {
            total += storage.bytes();
            for &(t, offset) in &offsets {
                let info = &graph.tensors[t.0];
                let v = storage.view(offset, &info.shape, PARAM_DTYPE, &info.name)?;
                if let Some(init) = &info.init {
                    gpu.write_f32(&v, init)?;
                }
                values.insert(t, v);
            }
        }
        Ok(Params { buckets, values, grads, bytes: total, _running: running })
    }
}

impl Executor {
    /// Zero the optimizer's state and step counts.
    pub fn reset_optimizer(&mut self) -> Result<()> {
        for b in &mut self.params.buckets {
            for s in &b.state {
                self.gpu.clear_storage(s)?;
            }
            b.step = 0;
        }
        self.gpu.write_bytes(&self.counts, &vec![0; self.counts.bytes() as usize])
    }

    /// Each bucket's count of applied optimizer updates (its steps less the ones the loss scaler skipped), after
    /// the steps submitted so far: the word of its pair that its next step reads.
    async fn applied_steps_async(&self) -> Result<Vec<u64>> {
        let words = self.gpu.read_bytes_async(&[&self.counts]).await?.remove(0);
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&words);
        Ok(self
            .params
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| words[2 * i + ((b.step + 1) & 1) as usize] as u64)
            .collect())
    }

    blocking! {
        /// Every parameter and running statistic: (name, shape, values), in graph order. What a saved model holds.
        pub fn model_tensors(&self) -> Result<Vec<NamedTensor>> => model_tensors_async
    }

    pub async fn model_tensors_async(&self) -> Result<Vec<NamedTensor>> {
        let mut tensors = Vec::new();
        for info in &self.graph.tensors {
            if matches!(info.kind, TensorKind::Param { .. } | TensorKind::State) {
                tensors.push((info.name.clone(), info.shape.clone(), self.read_value_async(&info.name).await?));
            }
        }
        Ok(tensors)
    }

    blocking! {
        /// [`Executor::training_state_async`], blocking.
        pub fn training_state(&self) -> Result<(Vec<NamedTensor>, String)> => training_state_async
    }

    /// Everything training changes, for a checkpoint: every parameter and running statistic by name, each
    /// optimizer bucket's state (`optimizer.<bucket>.grad_avg`, and `.sqr_avg` for Adam), and the counters
    /// (trainable flags, bucket step counts, the training step, the loss scaler) as text.
    pub async fn training_state_async(&self) -> Result<(Vec<NamedTensor>, String)> {
        let mut tensors = self.model_tensors_async().await?;
        for (i, b) in self.params.buckets.iter().enumerate() {
            for (what, storage) in
                self.cfg.optimizer.state_names().iter().zip(&b.state).chain(b.sum.iter().map(|s| (&SUM, s)))
            {
                let v = b.whole(storage, what)?;
                tensors.push((format!("optimizer.{i}.{what}"), vec![b.len], self.gpu.read_f32_async(&v).await?));
            }
        }
        let mut counters = serde_json::json!({
            "step": self.step,
            "micro": self.micro,
            "trainable": self.trainable,
            "bucket_steps": self.params.buckets.iter().map(|b| b.step).collect::<Vec<_>>(),
            "bucket_applied_steps": self.applied_steps_async().await?,
        });
        // With f16 the loss scaler's state, so that a resume continues it exactly.
        if self.cfg.precision == crate::gpu::Precision::F16 {
            counters["loss_scaler"] = serde_json::to_value(self.loss_scaler_async().await?)
                .map_err(|e| Error::Invalid(format!("loss scaler: {e}")))?;
        }
        Ok((tensors, counters.to_string()))
    }

    /// Restore what [`Executor::training_state`] saved (same model). `get` returns a saved tensor by name.
    pub fn restore_training_state(&mut self, get: &dyn Fn(&str) -> Result<Vec<f32>>, counters: &str) -> Result<()> {
        let bad = |why: String| Error::Invalid(format!("checkpoint does not match this model: {why}"));
        let c: serde_json::Value = serde_json::from_str(counters).map_err(|e| bad(e.to_string()))?;
        let trainable: Vec<bool> = serde_json::from_value(c["trainable"].clone()).map_err(|e| bad(e.to_string()))?;
        let bucket_steps: Vec<u64> =
            serde_json::from_value(c["bucket_steps"].clone()).map_err(|e| bad(e.to_string()))?;
        if trainable.len() != self.trainable.len() || bucket_steps.len() != self.params.buckets.len() {
            return Err(bad(format!("{} groups and {} buckets saved", trainable.len(), bucket_steps.len())));
        }
        for (g, &t) in trainable.iter().enumerate() {
            // Without the optimizer reset that set_trainable does on a change: the moments come next.
            if self.trainable[g] != t {
                self.trainable[g] = t;
                self.train = None;
                self.eval = None;
            }
        }
        // Every parameter and running statistic has a view in `values`.
        for (t, view) in &self.params.values {
            self.gpu.write_f32(view, &get(&self.graph.tensors[t.0].name)?)?;
        }
        for (i, b) in self.params.buckets.iter_mut().enumerate() {
            for (what, storage) in
                self.cfg.optimizer.state_names().iter().zip(&b.state).chain(b.sum.iter().map(|s| (&SUM, s)))
            {
                self.gpu.write_f32(&b.whole(storage, what)?, &get(&format!("optimizer.{i}.{what}"))?)?;
            }
            b.step = bucket_steps[i];
        }
        // Both words of each bucket's pair hold its applied updates (a checkpoint from before they were kept: its
        // steps, as no step was skipped without them being kept).
        let applied: Vec<u64> = match c.get("bucket_applied_steps") {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| bad(format!("bucket_applied_steps: {e}")))?,
            None => bucket_steps.clone(),
        };
        if applied.len() != bucket_steps.len() {
            return Err(bad(format!("{} applied step counts for {} buckets", applied.len(), bucket_steps.len())));
        }
        let mut words = vec![0u32; self.counts.numel()];
        for (i, &a) in applied.iter().enumerate() {
            words[2 * i] = a as u32;
            words[2 * i + 1] = a as u32;
        }
        self.gpu.write_bytes(&self.counts, bytemuck::cast_slice(&words))?;
        // An f32 run's checkpoint has no scaler: an f16 resume of it starts the scale afresh (and an f32 resume of
        // an f16 checkpoint has no use for one).
        if let (Some(v), crate::gpu::Precision::F16) = (c.get("loss_scaler"), self.cfg.precision) {
            let scaler: crate::ops::scaler::ScalerState =
                serde_json::from_value(v.clone()).map_err(|e| bad(format!("loss_scaler: {e}")))?;
            self.gpu.write_bytes(&self.scaler, bytemuck::cast_slice(&scaler.words()))?;
        }
        self.step = c["step"].as_u64().ok_or_else(|| bad("no step count".into()))?;
        self.micro = c["micro"].as_u64().unwrap_or(0) as usize % self.cfg.accum;
        Ok(())
    }

    blocking! {
        /// The loss scaler's state after the steps submitted so far (f16; with f32 it stays at scale 1).
        pub fn loss_scaler(&self) -> Result<crate::ops::scaler::ScalerState> => loss_scaler_async
    }

    pub async fn loss_scaler_async(&self) -> Result<crate::ops::scaler::ScalerState> {
        let words = self.gpu.read_bytes_async(&[&self.scaler]).await?.remove(0);
        Ok(crate::ops::scaler::ScalerState::from_words(&bytemuck::pod_collect_to_vec::<u8, u32>(&words)))
    }

    /// GPU bytes of parameters, gradients, optimizer state and step counts, running
    /// statistics and the loss scaler.
    pub fn persistent_bytes(&self) -> u64 {
        self.params.bytes + self.scaler.bytes() + self.counts.bytes()
    }

    fn value(&self, name: &str) -> Result<&Tensor> {
        let t = self.tensor_id(name)?;
        self.params.values.get(&t).ok_or_else(|| Error::Invalid(format!("'{name}' is not a parameter or state")))
    }

    blocking! {
        /// Read a parameter or running statistic by name.
        pub fn read_value(&self, name: &str) -> Result<Vec<f32>> => read_value_async
    }

    pub async fn read_value_async(&self, name: &str) -> Result<Vec<f32>> {
        self.gpu.read_f32_async(self.value(name)?).await
    }

    /// Overwrite a parameter or running statistic (e.g. with pretrained weights).
    pub fn write_value(&self, name: &str, data: &[f32]) -> Result<()> {
        self.gpu.write_f32(self.value(name)?, data)
    }

    blocking! {
        /// Read the gradient of a parameter from the last step that computed it.
        pub fn read_grad(&self, name: &str) -> Result<Vec<f32>> => read_grad_async
    }

    pub async fn read_grad_async(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor_id(name)?;
        let g = self.params.grads.get(&t).ok_or_else(|| Error::Invalid(format!("'{name}' is not a parameter")))?;
        self.gpu.read_f32_async(g).await
    }

    /// Whether any member of bucket `b` trains.
    pub(super) fn bucket_trains(&self, b: &Bucket) -> bool {
        b.members.iter().any(|&(t, _)| self.group_trains(t, true))
    }
}
