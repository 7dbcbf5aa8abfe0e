//! Embedding wgtune in an application: build a small CNN in code, train it on synthetic data on the GPU, then use
//! it for inference. Run with `cargo run --release --example embed`.
//!
//! The task: 8x8 grey images with one bright quadrant; the class is which quadrant.

use std::sync::Arc;

use wgtune::gpu::{AdapterRequest, Gpu};
use wgtune::graph::executor::{Executor, ExecutorConfig};
use wgtune::graph::Graph;
use wgtune::ops::conv::{Conv2dConfig, Padding};
use wgtune::ops::norm::BatchNormConfig;
use wgtune::ops::optim::Hyper;
use wgtune::reference::SplitMix;

const BATCH: usize = 32;
const SIZE: usize = 8;

/// A batch of images (BATCH, 1, SIZE, SIZE) and their quadrant labels.
fn batch(rng: &mut SplitMix) -> (Vec<f32>, Vec<u32>) {
    let mut images = Vec::with_capacity(BATCH * SIZE * SIZE);
    let mut labels = Vec::with_capacity(BATCH);
    for _ in 0..BATCH {
        let class = rng.below(4);
        for r in 0..SIZE {
            for c in 0..SIZE {
                let quadrant = (r / (SIZE / 2)) * 2 + c / (SIZE / 2);
                let signal = if quadrant as u32 == class { 1.0 } else { 0.0 };
                images.push(signal + rng.uniform(-0.5, 0.5) as f32);
            }
        }
        labels.push(class);
    }
    (images, labels)
}

fn main() -> wgtune::Result<()> {
    let gpu = Arc::new(Gpu::new(&AdapterRequest::from_env())?);
    println!("adapter: {}", gpu.summary().name);

    // The model: conv-BN-ReLU twice, flatten, linear head; cross-entropy loss.
    let mut g = Graph::new();
    let x = g.input("image", &[BATCH, 1, SIZE, SIZE]);
    let labels = g.labels("label", BATCH);
    let same = Conv2dConfig { padding: Padding::symmetric(1), ..Default::default() };
    let strided = Conv2dConfig { stride: (2, 2), ..same };
    let h = g.conv2d("conv1", x, 8, (3, 3), same, false)?;
    let h = g.batch_norm("bn1", h, BatchNormConfig::default())?;
    let h = g.relu("relu1", h)?;
    let h = g.conv2d("conv2", h, 8, (3, 3), strided, false)?;
    let h = g.batch_norm("bn2", h, BatchNormConfig::default())?;
    let h = g.relu("relu2", h)?;
    let h = g.flatten("flatten", h)?;
    let logits = g.linear("fc", h, 4, true)?;
    g.cross_entropy("loss", logits, labels, 0.0)?;

    let mut ex = Executor::new(gpu, g, ExecutorConfig::default())?;
    ex.set_hyper(0, Hyper { lr: 3e-3, ..Hyper::default() })?;
    println!("planned GPU memory: {} KiB", ex.planned_bytes()? / 1024);

    // Training: steps are submitted without waiting; losses arrive asynchronously.
    let mut rng = SplitMix(42);
    for _ in 0..100 {
        let (images, labels) = batch(&mut rng);
        ex.train_step(&images, &labels)?;
        for m in ex.poll_metrics()? {
            if m.step % 10 == 0 {
                println!("step {:>3}  loss {:.4}  accuracy {:.2}", m.step, m.loss, m.correct / BATCH as f32);
            }
        }
    }
    for m in ex.wait_metrics()? {
        if m.step % 10 == 0 {
            println!("step {:>3}  loss {:.4}  accuracy {:.2}", m.step, m.loss, m.correct / BATCH as f32);
        }
    }

    // Inference: class probabilities of a fresh batch.
    let (images, labels) = batch(&mut rng);
    let probs = ex.predict(&images)?;
    let right = probs
        .chunks(4)
        .zip(&labels)
        .filter(|(p, &y)| p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32) == Some(y))
        .count();
    println!("inference on a new batch: {right}/{BATCH} right; first image's probabilities {:?}", &probs[..4]);
    let c = ex.counters();
    println!("{} steps, {} submits, {} bytes read back", c.steps, c.submits, c.bytes_read_back);
    Ok(())
}
