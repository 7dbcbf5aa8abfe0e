//! The kernel checks a page runs: a subset of `tests/kernels` (the same launchers, references and tolerances) on
//! the browser's WebGPU adapter, where the shaders go through another compiler (Tint instead of naga's SPIR-V) and
//! another set of limits. Seeded inputs in [-1, 1], awkward shapes (1, primes, strides that leave a remainder),
//! NaN-poisoned outputs, f64 references.
//!
//! Tolerance: each output is a sum of K products of values in [-1, 1], so `|got - want| <= 2e-6 * K + 1e-6 +
//! 1e-5 * |want|` (as in tests/kernels/matmul.rs and conv.rs); a wrong element is off by O(1).

use wgtune::gpu::{Dispatch, Gpu, Tensor};
use wgtune::ops::conv::{conv2d_backward_data, conv2d_backward_weight, conv2d_backward_weight_scratch, conv2d_forward};
use wgtune::ops::conv::{
    depthwise_backward_data, depthwise_forward, Conv2dConfig, ConvShape, DepthwiseKernel, Padding,
};
use wgtune::ops::matmul::{matmul, MatmulKernel, MatmulOptions};
use wgtune::ops::pool::{max_pool_forward, PoolConfig, PoolShape};
use wgtune::reference::{self, widen, MatmulShape, SplitMix};
use wgtune::Result;

/// One check's outcome.
#[derive(serde::Serialize)]
pub struct Check {
    pub kernel: String,
    pub shape: String,
    pub max_error: f64,
    /// The bound for an element whose reference is 0 (the relative part is added per element).
    pub tolerance: f64,
    pub ok: bool,
}

fn compare(kernel: &str, shape: String, got: &[f32], want: &[f64], terms: usize) -> Check {
    let atol = 2e-6 * terms as f64 + 1e-6;
    let mut max_error = 0.0f64;
    let mut ok = got.len() == want.len();
    for (&g, &w) in got.iter().zip(want) {
        let diff = (g as f64 - w).abs();
        let diff = if diff.is_nan() { f64::INFINITY } else { diff };
        max_error = max_error.max(diff);
        ok &= diff <= atol + 1e-5 * w.abs();
    }
    Check { kernel: kernel.into(), shape, max_error, tolerance: atol, ok }
}

async fn run_all(gpu: &Gpu, label: &str, steps: &[Dispatch]) -> Result<()> {
    gpu.run_async(label, &steps.iter().collect::<Vec<_>>()).await
}

fn poisoned(gpu: &Gpu, shape: &[usize], label: &str) -> Result<Tensor> {
    gpu.upload_f32(shape, &vec![f32::NAN; shape.iter().product()], label)
}

pub async fn run(gpu: &Gpu) -> Result<Vec<Check>> {
    // Every kernel family first: the browser's WGSL compiler sees all of wgtune's shaders, not only those below.
    let mut out: Vec<Check> = gpu
        .compile_all_async()
        .await
        .into_iter()
        .map(|(module, error)| Check {
            kernel: format!("{module} compiles"),
            shape: error.clone().unwrap_or_default(),
            max_error: 0.0,
            tolerance: 0.0,
            ok: error.is_none(),
        })
        .collect();
    for (m, n, k) in [(1, 1, 1), (7, 13, 17), (33, 517, 29)] {
        for kernel in MatmulKernel::ALL {
            out.push(check_matmul(gpu, kernel, m, n, k).await?);
        }
    }
    let cfg = |stride: usize, pad: usize, groups: usize| Conv2dConfig {
        stride: (stride, stride),
        padding: Padding::symmetric(pad),
        groups,
        ..Default::default()
    };
    // Dense 3x3, strided with a remainder, pointwise, and depthwise 3x3 and 5x5 (EfficientNet's).
    out.extend(check_conv(gpu, [2, 3, 7, 5], [5, 3, 3, 3], cfg(1, 1, 1), 11).await?);
    out.extend(check_conv(gpu, [3, 4, 9, 11], [6, 4, 3, 3], cfg(2, 1, 1), 12).await?);
    out.extend(check_conv(gpu, [2, 5, 5, 3], [7, 5, 1, 1], cfg(1, 0, 1), 13).await?);
    out.extend(check_conv(gpu, [2, 6, 9, 7], [6, 1, 3, 3], cfg(1, 1, 6), 14).await?);
    out.extend(check_conv(gpu, [1, 7, 11, 13], [7, 1, 5, 5], cfg(2, 2, 7), 15).await?);
    out.push(check_max_pool(gpu, [2, 3, 9, 7], PoolConfig::square(3, 2, 1), 16).await?);
    Ok(out)
}

async fn check_matmul(gpu: &Gpu, kernel: MatmulKernel, m: usize, n: usize, k: usize) -> Result<Check> {
    let s = MatmulShape::new(1, m, n, k);
    let mut rng = SplitMix((m * 1000 + n + k) as u64);
    let a_data = rng.vec_f32(m * k, -1.0, 1.0);
    let b_data = rng.vec_f32(k * n, -1.0, 1.0);
    let bias_data = rng.vec_f32(n, -1.0, 1.0);
    let a = gpu.upload_f32(&[m, k], &a_data, "check A")?;
    let b = gpu.upload_f32(&[k, n], &b_data, "check B")?;
    let bias = gpu.upload_f32(&[n], &bias_data, "check bias")?;
    let c = poisoned(gpu, &[1, m, n], "check C")?;
    let d = matmul(gpu, kernel, &a, &b, Some(&bias), &c, MatmulOptions::default(), "check matmul")?;
    run_all(gpu, "check matmul", &[d]).await?;
    let want = reference::matmul(&s, &widen(&a_data), &widen(&b_data), Some(&widen(&bias_data)), None);
    let got = gpu.read_f32_async(&c).await?;
    Ok(compare(&format!("matmul ({})", kernel.name()), format!("{m}x{k} by {k}x{n} + bias"), &got, &want, k + 1))
}

async fn check_conv(
    gpu: &Gpu,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    cfg: Conv2dConfig,
    seed: u64,
) -> Result<Vec<Check>> {
    let s = ConvShape::new(&x_shape, &w_shape, cfg)?;
    let mut rng = SplitMix(seed);
    let numel = |shape: [usize; 4]| shape.iter().product::<usize>();
    let x_data = rng.vec_f32(numel(s.x_shape()), -1.0, 1.0);
    let w_data = rng.vec_f32(numel(s.w_shape()), -1.0, 1.0);
    let b_data = rng.vec_f32(s.out_c, -1.0, 1.0);
    let dy_data = rng.vec_f32(numel(s.y_shape()), -1.0, 1.0);
    let x = gpu.upload_f32(&s.x_shape(), &x_data, "check x")?;
    let w = gpu.upload_f32(&s.w_shape(), &w_data, "check w")?;
    let b = gpu.upload_f32(&[s.out_c], &b_data, "check bias")?;
    let dy = gpu.upload_f32(&s.y_shape(), &dy_data, "check dy")?;
    let y = poisoned(gpu, &s.y_shape(), "check y")?;
    let dx = poisoned(gpu, &s.x_shape(), "check dx")?;
    let dw = poisoned(gpu, &s.w_shape(), "check dw")?;
    let mut steps = conv2d_forward(gpu, &s, &x, &w, Some(&b), &y, false, "check conv forward")?;
    steps.extend(conv2d_backward_data(gpu, &s, &dy, &w, &dx, false, "check conv backward data")?);
    let partial = match conv2d_backward_weight_scratch(gpu, &s) {
        Some(shape) => Some(poisoned(gpu, &shape, "check partial dw")?),
        None => None,
    };
    steps.extend(conv2d_backward_weight(gpu, &s, &dy, &x, &dw, partial.as_ref(), false, "check conv backward weight")?);
    run_all(gpu, "check conv", &steps).await?;
    let (xd, wd, dyd) = (widen(&x_data), widen(&w_data), widen(&dy_data));
    let kind = if cfg.groups == s.in_c && cfg.groups > 1 { "depthwise conv2d" } else { "conv2d" };
    let what = format!("x {x_shape:?} w {w_shape:?} stride {} pad {:?}", cfg.stride.0, cfg.padding);
    let per_group = s.in_c / cfg.groups;
    // Every depthwise variant that applies, each on outputs of its own (conv2d_* above ran the default's).
    let mut variants = Vec::new();
    for k in DepthwiseKernel::ALL.into_iter().filter(|_| s.is_depthwise()) {
        if k.applies(&s) {
            let yk = poisoned(gpu, &s.y_shape(), "check y of a variant")?;
            let d = depthwise_forward(gpu, k, &s, &x, &w, Some(&b), &yk, false, "check depthwise variant")?;
            run_all(gpu, "check depthwise variant", &[d]).await?;
            let want = reference::conv2d_forward(&s, &xd, &wd, Some(&widen(&b_data)));
            let got = gpu.read_f32_async(&yk).await?;
            let kernel = format!("{kind} forward ({})", k.name());
            variants.push(compare(&kernel, what.clone(), &got, &want, s.kernel_h * s.kernel_w + 1));
        }
        if k.applies_backward_data(&s) {
            let dxk = poisoned(gpu, &s.x_shape(), "check dx of a variant")?;
            let d = depthwise_backward_data(gpu, k, &s, &dy, &w, &dxk, false, "check depthwise variant")?;
            run_all(gpu, "check depthwise variant", &[d]).await?;
            let want = reference::conv2d_backward_data(&s, &dyd, &wd);
            let got = gpu.read_f32_async(&dxk).await?;
            let kernel = format!("{kind} backward data ({})", k.name());
            variants.push(compare(&kernel, what.clone(), &got, &want, s.kernel_h * s.kernel_w));
        }
    }
    let mut checks = vec![
        compare(
            &format!("{kind} forward"),
            what.clone(),
            &gpu.read_f32_async(&y).await?,
            &reference::conv2d_forward(&s, &xd, &wd, Some(&widen(&b_data))),
            per_group * s.kernel_h * s.kernel_w + 1,
        ),
        compare(
            &format!("{kind} backward data"),
            what.clone(),
            &gpu.read_f32_async(&dx).await?,
            &reference::conv2d_backward_data(&s, &dyd, &wd),
            s.out_c / cfg.groups * s.kernel_h * s.kernel_w,
        ),
        compare(
            &format!("{kind} backward weight"),
            what,
            &gpu.read_f32_async(&dw).await?,
            &reference::conv2d_backward_weight(&s, &dyd, &xd),
            s.batch * s.out_h * s.out_w,
        ),
    ];
    checks.extend(variants);
    Ok(checks)
}

async fn check_max_pool(gpu: &Gpu, x_shape: [usize; 4], cfg: PoolConfig, seed: u64) -> Result<Check> {
    let s = PoolShape::new(&x_shape, cfg)?;
    let mut rng = SplitMix(seed);
    let x_data = rng.vec_f32(x_shape.iter().product(), -1.0, 1.0);
    let x = gpu.upload_f32(&x_shape, &x_data, "check pool x")?;
    let y = poisoned(gpu, &s.y_shape(), "check pool y")?;
    let indices = gpu.upload_u32(&s.y_shape(), &vec![u32::MAX; s.y_shape().iter().product()], "check pool indices")?;
    let d = max_pool_forward(gpu, &s, &x, &y, &indices, "check max pool")?;
    run_all(gpu, "check max pool", &[d]).await?;
    let (want, _) = reference::max_pool_forward(&s, &widen(&x_data));
    let what = format!("x {x_shape:?} kernel {:?} stride {:?}", cfg.kernel, cfg.stride);
    Ok(compare("max pool forward", what, &gpu.read_f32_async(&y).await?, &want, 1))
}
