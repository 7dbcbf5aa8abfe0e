//! Running compiled programs: training steps (one submission each, loss and correct count read back
//! asynchronously), evaluation and prediction.
//!
//! Every call that waits for the GPU is an `async fn` (`*_async`); the plain names are native-only blocking
//! wrappers around them (pollster), the way wgpu's own examples split native and web.

use super::params::Params;
use super::profile::profiled;
use super::program::Program;
use super::{Executor, Pending, PixelInput, StepMetrics};
use crate::data::augment::ImageTransform;
use crate::error::{Error, Result};
use crate::gpu::{CopyInto, Dispatch, ReadbackRing, Segment, SegmentCopy, Tensor};
use crate::ops::dropout::DropoutParams;
use crate::ops::loss::Targets;
use crate::ops::optim::Hyper;
use crate::ops::scaler::ScalerState;

/// One micro-batch of pixels for [`Executor::train_cycle_pixels`].
#[derive(Clone, Copy, Debug)]
pub struct PixelBatch<'a> {
    pub pixels: &'a [u8],
    pub transforms: &'a [ImageTransform],
    pub labels: &'a [u32],
}

/// Steps whose metrics may be in flight before a new step waits for the oldest (the ring has 64 slots, two per
/// step).
pub(crate) const MAX_IN_FLIGHT: usize = 30;

impl Executor {
    /// Let at most `steps` (at least 1; at most 30, the readback ring's room) training steps be in flight before a
    /// new one waits for the oldest's metrics. Natively the driver's queue bounds the run-ahead anyway; a browser
    /// queues every submission at once, so a page lowers this to keep its progress bar current and Stop prompt
    /// (steps in flight always finish).
    pub fn set_max_in_flight(&mut self, steps: usize) {
        self.max_in_flight = steps.clamp(1, MAX_IN_FLIGHT);
    }

    /// Float batches are refused once the executor takes pixel batches.
    fn check_float_input(&self) -> Result<()> {
        if self.pixel_input.is_some() {
            return Err(Error::Invalid(
                "this executor takes u8 pixel batches (set_pixel_input): use the *_pixels calls".into(),
            ));
        }
        Ok(())
    }

    pub(super) fn check_images(&self, images: &[f32]) -> Result<()> {
        self.check_float_input()?;
        let want = self.graph.tensors[self.input.0].numel();
        if images.len() != want {
            return Err(Error::Invalid(format!(
                "a batch must hold {want} values ({:?}), got {}",
                self.graph.tensors[self.input.0].shape,
                images.len()
            )));
        }
        Ok(())
    }

    /// How the loss takes its labels: one class per image, or a class bitmask of [`Targets::words`] u32.
    pub fn targets(&self) -> Targets {
        let l = self.loss_tensors();
        l.f.targets(self.graph.shape(l.logits)[1])
    }

    /// Images per batch.
    pub fn batch_size(&self) -> usize {
        self.graph.tensors[self.labels.0].shape[0]
    }

    pub(super) fn check_labels(&self, labels: &[u32]) -> Result<()> {
        self.targets().check(labels, self.batch_size())
    }

    /// The loss's target rows: each image's labels, its partner's (from its transform's mix) and the weight of its
    /// own. Checks the labels and the partners.
    fn target_rows(&self, labels: &[u32], transforms: Option<&[ImageTransform]>) -> Result<Vec<u32>> {
        self.check_labels(labels)?;
        let mix = transforms.and_then(crate::data::augment::label_mix);
        self.targets().encode(labels, mix.as_deref())
    }

    fn write_targets(&mut self, training: bool, rows: &[u32]) -> Result<()> {
        let p = if training { self.train.as_ref() } else { self.eval.as_ref() }.expect("compiled before upload");
        self.gpu.write_bytes(&p.labels, bytemuck::cast_slice(rows))?;
        self.counters.bytes_uploaded += p.labels.bytes();
        Ok(())
    }

    pub(super) fn upload(&mut self, training: bool, images: &[f32], labels: &[u32]) -> Result<()> {
        let rows = self.target_rows(labels, None)?;
        let p = if training { self.train.as_ref() } else { self.eval.as_ref() }.expect("compiled before upload");
        self.gpu.write_values(&p.input, images)?;
        self.counters.bytes_uploaded += p.input.bytes();
        self.write_targets(training, &rows)
    }

    /// Feed batches as presized u8 pixels from now on: the GPU augments (training) or just normalizes
    /// (evaluation) them into the model's input, in the same submission as the step.
    pub fn set_pixel_input(&mut self, stage: PixelInput) -> Result<()> {
        let shape = &self.graph.tensors[self.input.0].shape;
        if shape.len() != 4 || shape[1] != 3 {
            return Err(Error::Invalid(format!(
                "pixel input needs an (N, 3, H, W) model input, this one is {shape:?}"
            )));
        }
        self.pixel_input = Some(stage);
        self.train = None;
        self.eval = None;
        Ok(())
    }

    /// A pixel batch must hold the training (presize) or evaluation (input size) images of a batch, and a transform
    /// for each.
    fn check_pixel_batch(&self, training: bool, pixels: &[u8], transforms: &[ImageTransform]) -> Result<()> {
        let (n, side) = self
            .pixel_stage(training)
            .ok_or_else(|| Error::Invalid("call set_pixel_input before feeding pixels".into()))?;
        if pixels.len() != n * side * side * 3 || transforms.len() != n {
            let what = if training { "a training" } else { "an evaluation" };
            return Err(Error::Invalid(format!(
                "{what} pixel batch needs {n} images of {0}x{0}x3 bytes and {n} transforms; got {1} bytes, {2}",
                side,
                pixels.len(),
                transforms.len(),
            )));
        }
        Ok(())
    }

    fn upload_pixels(
        &mut self,
        training: bool,
        pixels: &[u8],
        transforms: &[ImageTransform],
        labels: &[u32],
    ) -> Result<()> {
        self.check_pixel_batch(training, pixels, transforms)?;
        let rows = self.target_rows(labels, Some(transforms))?;
        if training {
            self.ensure_train()?
        } else {
            self.ensure_eval()?
        }
        let p = if training { self.train.as_ref() } else { self.eval.as_ref() }.expect("compiled");
        let (px, tf) = p.pixels.as_ref().expect("compiled with a pixel stage");
        self.gpu.write_bytes(px, bytemuck::cast_slice(&crate::data::augment::pack_pixels(pixels)))?;
        let params = crate::data::augment::batch_params(transforms);
        self.gpu.write_f32(tf, &params)?;
        self.counters.bytes_uploaded += px.bytes() + tf.bytes();
        self.write_targets(training, &rows)
    }

    blocking! {
        /// A training step from u8 pixels (N, P, P, 3) and per-image augmentation transforms.
        pub fn train_step_pixels(&mut self, pixels: &[u8], transforms: &[ImageTransform], labels: &[u32]) -> Result<()>
            => train_step_pixels_async
    }

    pub async fn train_step_pixels_async(
        &mut self,
        pixels: &[u8],
        transforms: &[ImageTransform],
        labels: &[u32],
    ) -> Result<()> {
        self.upload_pixels(true, pixels, transforms, labels)?;
        self.submit_training(true).await
    }

    blocking! {
        /// One optimizer step of gradient accumulation — its `accum` micro-batches of pixels — in one submission:
        /// the batches wait in staging buffers on the GPU and each micro-step copies its own into place (pixels,
        /// transforms, targets, and its dropout and accumulate uniforms) before its forward and backward pass; the
        /// optimizer runs once at the end. Where that does not apply (no accumulation, a cycle already under way,
        /// fewer batches than `accum`, a profiled or captured step next) the batches train one submission each,
        /// with the same result.
        pub fn train_cycle_pixels(&mut self, batches: &[PixelBatch<'_>]) -> Result<()> => train_cycle_pixels_async
    }

    pub async fn train_cycle_pixels_async(&mut self, batches: &[PixelBatch<'_>]) -> Result<()> {
        let k = self.cfg.accum;
        let one_submission = k > 1
            && batches.len() == k
            && self.micro == 0
            && !self.profile_next
            && !self.capture_next
            && k <= self.max_in_flight;
        if !one_submission {
            for b in batches {
                self.train_step_pixels_async(b.pixels, b.transforms, b.labels).await?;
            }
            return Ok(());
        }
        // Lay out every micro-batch before anything is written.
        let mut prepared = Vec::with_capacity(k);
        for b in batches {
            self.check_pixel_batch(true, b.pixels, b.transforms)?;
            let rows = self.target_rows(b.labels, Some(b.transforms))?;
            prepared.push((
                crate::data::augment::pack_pixels(b.pixels),
                crate::data::augment::batch_params(b.transforms),
                rows,
            ));
        }
        // The ring must hold every micro-step's two readbacks.
        self.make_room(k).await?;
        self.ensure_train()?;
        let first_step = self.step + 1;
        let p = self.train.as_ref().expect("compiled");
        let staging = p.staging.as_ref().expect("a training program with accumulation over pixels has staging");
        let (px, tf) = p.pixels.as_ref().expect("compiled with a pixel stage");
        // Each micro-step's uniforms (its dropout masks' step, its place in the accumulation cycle) wait in one
        // staging buffer, a block per micro-step, and are copied into the dispatches' parameters in turn.
        let per_step = (0..k)
            .map(|j| step_uniforms(p, &self.params, (first_step + j as u64) as u32, Some((j, k))))
            .collect::<Result<Vec<_>>>()?;
        let uniforms: Vec<u8> = per_step.iter().flatten().flat_map(|(_, bytes)| bytes.iter().copied()).collect();
        for (j, (pixels, transforms, rows)) in prepared.iter().enumerate() {
            self.gpu.write_bytes(&staging.pixels[j], bytemuck::cast_slice(pixels))?;
            self.gpu.write_f32(&staging.transforms[j], transforms)?;
            self.gpu.write_bytes(&staging.labels[j], bytemuck::cast_slice(rows))?;
        }
        if !uniforms.is_empty() {
            self.gpu.write_bytes(&staging.uniforms, &uniforms)?;
        }
        let mut uniform_bytes = uniforms.len() as u64;
        for (d, bytes) in optimizer_uniforms(p, &self.params, &self.hyper) {
            self.gpu.write_params(d, &bytes);
            uniform_bytes += bytes.len() as u64;
        }
        let optim: Vec<&Dispatch> = p.optim.iter().map(|(_, d)| d).collect();
        let mut segments = Vec::with_capacity(k);
        for (j, micro_uniforms) in per_step.iter().enumerate() {
            let mut copies = vec![
                SegmentCopy { src: &staging.pixels[j], src_offset: 0, dst: CopyInto::Tensor(px), bytes: px.bytes() },
                SegmentCopy {
                    src: &staging.transforms[j],
                    src_offset: 0,
                    dst: CopyInto::Tensor(tf),
                    bytes: tf.bytes(),
                },
                SegmentCopy {
                    src: &staging.labels[j],
                    src_offset: 0,
                    dst: CopyInto::Tensor(&p.labels),
                    bytes: p.labels.bytes(),
                },
            ];
            let mut offset = j as u64 * staging.block;
            for (d, bytes) in micro_uniforms {
                let bytes = bytes.len() as u64;
                copies.push(SegmentCopy {
                    src: &staging.uniforms,
                    src_offset: offset,
                    dst: CopyInto::Params(d),
                    bytes,
                });
                offset += bytes;
            }
            let mut layers = p.layer_groups();
            if !p.unscale.is_empty() {
                layers.push(("unscale gradients", p.unscale.iter().collect()));
            }
            layers.push(("accumulate gradients", p.accumulate.iter().map(|(_, d)| d).collect()));
            if j + 1 == k && !optim.is_empty() {
                layers.push(("optimizer", optim.clone()));
                if let Some(d) = &p.rescale {
                    layers.push(("loss scale", vec![d]));
                }
            }
            let mut read = vec![&p.loss, &p.correct];
            read.extend(p.rescale.as_ref().map(|_| &self.scaler));
            segments.push(Segment { copies, layers, read });
        }
        let submitted = self.gpu.submit_segments("train cycle", &segments, &mut self.ring)?;
        self.counters.encode_ns += submitted.encode.as_nanos() as u64;
        self.counters.submit_ns += submitted.submit.as_nanos() as u64;
        for (bucket, _) in &p.optim {
            self.params.buckets[*bucket].step += 1;
        }
        let staged: u64 =
            (0..k).map(|j| staging.pixels[j].bytes() + staging.transforms[j].bytes() + staging.labels[j].bytes()).sum();
        let mut tickets = submitted.tickets.into_iter();
        let scaled = p.rescale.is_some();
        for j in 0..k {
            let (Some(loss), Some(correct)) = (tickets.next(), tickets.next()) else {
                unreachable!("two tensors read back per micro-step")
            };
            let scaler = if scaled { tickets.next() } else { None };
            self.pending.push_back(Pending { step: first_step + j as u64, loss, correct, scaler });
        }
        self.step += k as u64;
        self.counters.steps += k as u64;
        self.counters.submits += 1;
        self.counters.bytes_uploaded += staged + uniform_bytes;
        Ok(())
    }

    blocking! {
        /// Loss and correct count of a pixel batch in eval mode (identity transform: the pixels are centre crops).
        pub fn evaluate_pixels(&mut self, pixels: &[u8], labels: &[u32]) -> Result<(f32, f32)> => evaluate_pixels_async
    }

    pub async fn evaluate_pixels_async(&mut self, pixels: &[u8], labels: &[u32]) -> Result<(f32, f32)> {
        let n = self.batch_size();
        self.upload_pixels(false, pixels, &vec![ImageTransform::IDENTITY; n], labels)?;
        self.submit_eval().await
    }

    blocking! {
        /// Class probabilities of a pixel batch in eval mode.
        pub fn predict_pixels(&mut self, pixels: &[u8]) -> Result<Vec<f32>> => predict_pixels_async
    }

    pub async fn predict_pixels_async(&mut self, pixels: &[u8]) -> Result<Vec<f32>> {
        let n = self.batch_size();
        self.predict_pixels_with_async(pixels, &vec![ImageTransform::IDENTITY; n]).await
    }

    blocking! {
        /// Class probabilities of a pixel batch in eval mode, each image seen through its own transform (test-time
        /// augmentation).
        pub fn predict_pixels_with(&mut self, pixels: &[u8], transforms: &[ImageTransform]) -> Result<Vec<f32>>
            => predict_pixels_with_async
    }

    pub async fn predict_pixels_with_async(
        &mut self,
        pixels: &[u8],
        transforms: &[ImageTransform],
    ) -> Result<Vec<f32>> {
        let n = self.batch_size() * self.targets().words();
        self.upload_pixels(false, pixels, transforms, &vec![0; n])?;
        self.submit_infer(true).await
    }

    blocking! {
        /// Encode and submit one training step (forward, backward, optimizer) without waiting for it. Its loss and
        /// correct count arrive later through [`Executor::poll_metrics`] / [`Executor::wait_metrics`]; only when
        /// 30 steps are in flight does it wait for the oldest.
        pub fn train_step(&mut self, images: &[f32], labels: &[u32]) -> Result<()> => train_step_async
    }

    pub async fn train_step_async(&mut self, images: &[f32], labels: &[u32]) -> Result<()> {
        self.run_training(images, labels, true).await
    }

    /// A batch of images uploaded once and kept on the GPU in the training input's shape and element type, for
    /// [`Executor::train_step_resident`]: benchmarks feed it every step as frameworks' benchmarks keep theirs on
    /// the device.
    pub fn upload_input(&mut self, images: &[f32]) -> Result<Tensor> {
        self.check_images(images)?;
        self.ensure_train()?;
        let input = &self.train.as_ref().expect("compiled").input;
        let t = match input.dtype() {
            crate::gpu::DType::F16 => self.gpu.upload_f16(input.shape(), images, "resident input")?,
            _ => self.gpu.upload_f32(input.shape(), images, "resident input")?,
        };
        Ok(t)
    }

    blocking! {
        /// [`Executor::train_step`] on a batch already on the GPU ([`Executor::upload_input`]): the batch is copied
        /// into the program's input on the device, in the step's own submission; only the labels cross the bus.
        pub fn train_step_resident(&mut self, images: &Tensor, labels: &[u32]) -> Result<()>
            => train_step_resident_async
    }

    pub async fn train_step_resident_async(&mut self, images: &Tensor, labels: &[u32]) -> Result<()> {
        self.check_float_input()?;
        let rows = self.target_rows(labels, None)?;
        self.ensure_train()?;
        self.gpu.copy_on_next_submit(images, &self.train.as_ref().expect("compiled").input)?;
        self.write_targets(true, &rows)?;
        self.submit_training(true).await
    }

    blocking! {
        /// Forward and backward without the optimizer update, waiting for the result: gradients are then readable
        /// with [`Executor::read_grad`].
        pub fn compute_gradients(&mut self, images: &[f32], labels: &[u32]) -> Result<StepMetrics>
            => compute_gradients_async
    }

    pub async fn compute_gradients_async(&mut self, images: &[f32], labels: &[u32]) -> Result<StepMetrics> {
        self.run_training(images, labels, false).await?;
        self.wait_metrics_async().await?.pop().ok_or_else(|| Error::Invalid("no metrics came back".into()))
    }

    pub(super) async fn run_training(&mut self, images: &[f32], labels: &[u32], update: bool) -> Result<()> {
        self.check_images(images)?;
        self.check_labels(labels)?;
        self.ensure_train()?;
        self.upload(true, images, labels)?;
        self.submit_training(update).await
    }

    /// Submit the compiled training program on the batch already uploaded.
    async fn submit_training(&mut self, update: bool) -> Result<()> {
        self.make_room(1).await?;
        self.step += 1;
        let step = self.step;
        let p = self.train.as_ref().expect("compiled");
        // Gradient accumulation: every step adds its gradients into the sums; the cycle's last hands the total to
        // the optimizer.
        let k = self.cfg.accum;
        let accumulating = update && k > 1;
        let apply = update && (!accumulating || self.micro + 1 == k);
        let mut uniforms = step_uniforms(p, &self.params, step as u32, accumulating.then_some((self.micro, k)))?;
        if apply {
            uniforms.extend(optimizer_uniforms(p, &self.params, &self.hyper));
        }
        let mut uniform_bytes = 0u64;
        for (d, bytes) in &uniforms {
            self.gpu.write_params(d, bytes);
            uniform_bytes += bytes.len() as u64;
        }
        let accumulate: Vec<&Dispatch> =
            if accumulating { p.accumulate.iter().map(|(_, d)| d).collect() } else { Vec::new() };
        let optim: Vec<&Dispatch> = if apply { p.optim.iter().map(|(_, d)| d).collect() } else { Vec::new() };
        let mut groups = p.layer_groups();
        if !p.unscale.is_empty() {
            groups.push(("unscale gradients", p.unscale.iter().collect()));
        }
        if !accumulate.is_empty() {
            groups.push(("accumulate gradients", accumulate));
        }
        if !optim.is_empty() {
            groups.push(("optimizer", optim));
        }
        if let (Some(d), true) = (&p.rescale, apply) {
            groups.push(("loss scale", vec![d]));
        }
        let scaled = p.rescale.is_some();
        let mut read = vec![&p.loss, &p.correct];
        read.extend(scaled.then_some(&self.scaler));
        let capture = std::mem::take(&mut self.capture_next);
        let (submitted, profile) = if std::mem::take(&mut self.profile_next) {
            let (submitted, profile) = profiled(&self.gpu, "train step", &groups, &mut self.ring, &read).await?;
            (submitted, Some(profile))
        } else if capture {
            let (label, ring) = (format!("train step {step}"), &mut self.ring);
            (self.gpu.capture(|| self.gpu.submit_layers(&label, &groups, ring, &read))?, None)
        } else {
            (self.gpu.submit_layers("train step", &groups, &mut self.ring, &read)?, None)
        };
        if let Some(profile) = profile {
            self.last_profile = Some(self.with_op_types(profile));
        }
        self.counters.encode_ns += submitted.encode.as_nanos() as u64;
        self.counters.submit_ns += submitted.submit.as_nanos() as u64;
        if apply {
            for (bucket, _) in &p.optim {
                self.params.buckets[*bucket].step += 1;
            }
        }
        if accumulating {
            self.micro = (self.micro + 1) % k;
        }
        let mut it = submitted.tickets.into_iter();
        let (Some(loss), Some(correct)) = (it.next(), it.next()) else { unreachable!("two tensors read back") };
        self.pending.push_back(Pending { step, loss, correct, scaler: it.next() });
        self.counters.steps += 1;
        self.counters.submits += 1;
        self.counters.bytes_uploaded += uniform_bytes;
        Ok(())
    }

    /// Keep the readback ring from running out: wait for the oldest steps until `steps` more fit in flight.
    async fn make_room(&mut self, steps: usize) -> Result<()> {
        while self.pending.len() + steps > self.max_in_flight && !self.pending.is_empty() {
            let pending = self.pending.pop_front().expect("non-empty");
            let m = self.read_metrics(pending).await?;
            self.finished.push(m);
        }
        Ok(())
    }

    async fn read_metrics(&mut self, p: Pending) -> Result<StepMetrics> {
        let l = self.ring.read(&self.gpu, p.loss).await?;
        let c = self.ring.read(&self.gpu, p.correct).await?;
        let s = match p.scaler {
            Some(t) => Some(self.ring.read(&self.gpu, t).await?),
            None => None,
        };
        Ok(self.metrics_of(p.step, &l, &c, s.as_deref()))
    }

    fn metrics_of(&mut self, step: u64, loss: &[u8], correct: &[u8], scaler: Option<&[u8]>) -> StepMetrics {
        self.counters.bytes_read_back += (loss.len() + correct.len() + scaler.map_or(0, |s| s.len())) as u64;
        let scaler = scaler.map(|b| ScalerState::from_words(&bytemuck::pod_collect_to_vec::<u8, u32>(b)));
        StepMetrics { step, loss: scalar(loss), correct: scalar(correct), scaler }
    }

    /// Metrics of the steps whose results have arrived, oldest first. Never blocks.
    pub fn poll_metrics(&mut self) -> Result<Vec<StepMetrics>> {
        let mut out = std::mem::take(&mut self.finished);
        self.gpu.poll()?;
        // A step's two tickets were copied in one submission: both are mapped once the step is done.
        // A step's tickets were copied in one submission: all are mapped once the step is done.
        while let Some(p) = self.pending.front() {
            let ready = |t: &crate::gpu::Ticket| self.ring.is_ready(t);
            if !(ready(&p.loss) && ready(&p.correct) && p.scaler.as_ref().is_none_or(ready)) {
                break;
            }
            let p = self.pending.pop_front().expect("non-empty");
            let l = self.ring.try_read(&self.gpu, &p.loss)?;
            let c = self.ring.try_read(&self.gpu, &p.correct)?;
            let s = match &p.scaler {
                Some(t) => self.ring.try_read(&self.gpu, t)?,
                None => None,
            };
            let (Some(l), Some(c)) = (l, c) else { unreachable!("both tickets were ready") };
            out.push(self.metrics_of(p.step, &l, &c, s.as_deref()));
        }
        Ok(out)
    }

    blocking! {
        /// Wait for every submitted step and return the metrics not handed out yet, oldest first.
        pub fn wait_metrics(&mut self) -> Result<Vec<StepMetrics>> => wait_metrics_async
    }

    pub async fn wait_metrics_async(&mut self) -> Result<Vec<StepMetrics>> {
        let mut out = std::mem::take(&mut self.finished);
        while let Some(p) = self.pending.pop_front() {
            out.push(self.read_metrics(p).await?);
        }
        Ok(out)
    }

    blocking! {
        /// Loss and correct count of one batch in eval mode (batch norm on running statistics, no dropout),
        /// waiting for the result.
        pub fn evaluate(&mut self, images: &[f32], labels: &[u32]) -> Result<(f32, f32)> => evaluate_async
    }

    pub async fn evaluate_async(&mut self, images: &[f32], labels: &[u32]) -> Result<(f32, f32)> {
        self.check_images(images)?;
        self.check_labels(labels)?;
        self.ensure_eval()?;
        self.upload(false, images, labels)?;
        self.submit_eval().await
    }

    async fn submit_eval(&mut self) -> Result<(f32, f32)> {
        let p = self.eval.as_ref().expect("compiled");
        let layers = p.layer_groups();
        let mut tickets =
            self.gpu.submit_layers("eval step", &layers, &mut self.ring, &[&p.loss, &p.correct])?.tickets.into_iter();
        self.counters.submits += 1;
        let (Some(loss), Some(correct)) = (tickets.next(), tickets.next()) else {
            unreachable!("two tensors read back")
        };
        let m = self.read_metrics(Pending { step: 0, loss, correct, scaler: None }).await?;
        Ok((m.loss, m.correct))
    }

    blocking! {
        /// Class probabilities (batch, classes) of one batch in eval mode.
        pub fn predict(&mut self, images: &[f32]) -> Result<Vec<f32>> => predict_async
    }

    pub async fn predict_async(&mut self, images: &[f32]) -> Result<Vec<f32>> {
        self.infer(images, true).await
    }

    blocking! {
        /// Logits (batch, classes) of one batch in eval mode.
        pub fn predict_logits(&mut self, images: &[f32]) -> Result<Vec<f32>> => predict_logits_async
    }

    pub async fn predict_logits_async(&mut self, images: &[f32]) -> Result<Vec<f32>> {
        self.infer(images, false).await
    }

    async fn infer(&mut self, images: &[f32], probabilities: bool) -> Result<Vec<f32>> {
        self.check_images(images)?;
        self.ensure_eval()?;
        let n = self.batch_size() * self.targets().words();
        self.upload(false, images, &vec![0; n])?;
        self.submit_infer(probabilities).await
    }

    async fn submit_infer(&mut self, probabilities: bool) -> Result<Vec<f32>> {
        let p = self.eval.as_ref().expect("compiled");
        let layers = p.layer_groups();
        let out =
            if probabilities { p.probs.as_ref().expect("eval programs compute probabilities") } else { &p.logits };
        let mut ring = ReadbackRing::new(&self.gpu, "predictions", 1, out.bytes())?;
        let mut tickets = self.gpu.submit_layers("predict", &layers, &mut ring, &[out])?.tickets.into_iter();
        self.counters.submits += 1;
        let bytes = ring.read(&self.gpu, tickets.next().expect("one ticket")).await?;
        self.counters.bytes_read_back += bytes.len() as u64;
        // f16 logits come back widened to f32 (the probabilities are f32 at either precision).
        Ok(match out.dtype() {
            crate::gpu::DType::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(&bytes)
                .iter()
                .take(out.numel())
                .map(|h| h.to_f32())
                .collect(),
            _ => bytemuck::pod_collect_to_vec(&bytes),
        })
    }
}

/// One training step's per-step uniforms: each dropout site's parameters for step `step`, then, with gradient
/// accumulation (`micro` of `k`), each accumulate dispatch's mode. (dispatch, its parameter bytes), in that order.
fn step_uniforms<'p>(
    p: &'p Program,
    params: &Params,
    step: u32,
    accumulation: Option<(usize, usize)>,
) -> Result<Vec<(&'p Dispatch, Vec<u8>)>> {
    let mut out = Vec::new();
    for layer in &p.layers {
        for site in &layer.dropout {
            let u = DropoutParams::new(site.len, site.p, site.seed, step, site.accumulate)?.per_sample(site.per)?;
            out.push((&layer.dispatches[site.dispatch], bytemuck::bytes_of(&u).to_vec()));
        }
    }
    if let Some((micro, k)) = accumulation {
        let mode = crate::ops::accumulate::AccumulateMode::of(micro, k);
        for (bucket, d) in &p.accumulate {
            let u = mode.params(params.buckets[*bucket].len, 1.0 / k as f32);
            out.push((d, bytemuck::bytes_of(&u).to_vec()));
        }
    }
    Ok(out)
}

/// The optimizer dispatches' parameters for their next step: each bucket's group hyper-parameters (no weight decay
/// where the bucket takes none) and step count.
fn optimizer_uniforms<'p>(p: &'p Program, params: &Params, hyper: &[Hyper]) -> Vec<(&'p Dispatch, Vec<u8>)> {
    p.optim
        .iter()
        .map(|(bucket, d)| {
            let b = &params.buckets[*bucket];
            let mut h = hyper[b.group];
            if !b.decay {
                h.wd = 0.0;
            }
            (d, bytemuck::bytes_of(&h.params(b.len as u32, b.step + 1, *bucket as u32)).to_vec())
        })
        .collect()
}

fn scalar(bytes: &[u8]) -> f32 {
    bytemuck::pod_read_unaligned(&bytes[..4])
}
