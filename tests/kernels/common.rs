//! Shared helpers of the GPU kernel tests: one device per test binary, seeded data, poisoned outputs, and a
//! comparison that prints the worst difference and the first bad index.

use std::sync::OnceLock;

use wgtune::gpu::{AdapterRequest, DType, Gpu, Tensor};

/// Whether this build of the kernel tests is the one with wgpu's runtime shader checks on (the `kernels_checked`
/// target; `kernels` runs the audited kernels without them, as wgtune does by default).
pub const CHECKED: bool = matches!(env!("CARGO_CRATE_NAME").as_bytes(), b"kernels_checked");

/// The test device. There is no skipping: without an adapter every GPU test fails with the reason.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    // The checked build also sums with workgroup-memory trees; the other uses subgroups where the adapter has them.
    let request = AdapterRequest {
        shader_checks: Some(CHECKED),
        subgroups: if CHECKED { Some(false) } else { None },
        ..AdapterRequest::from_env()
    };
    GPU.get_or_init(|| match Gpu::new(&request) {
        Ok(g) => {
            eprintln!(
                "GPU tests run on: {:?}, shader checks {}, subgroup sizes {:?}",
                g.summary(),
                if CHECKED { "on" } else { "off" },
                g.subgroups()
            );
            g
        }
        Err(e) => panic!("GPU tests need an adapter and found none: {e}"),
    })
}

/// An f32 tensor filled with NaN, so any element a kernel fails to write shows up.
pub fn poisoned(shape: &[usize], label: &str) -> Tensor {
    let n: usize = shape.iter().product();
    gpu().upload_f32(shape, &vec![f32::NAN; n], label).expect("upload poison")
}

pub fn upload(shape: &[usize], data: &[f32], label: &str) -> Tensor {
    gpu().upload_f32(shape, data, label).expect("upload")
}

/// An f16 tensor of `data` rounded to half precision.
pub fn upload_f16(shape: &[usize], data: &[f32], label: &str) -> Tensor {
    let t = gpu().upload_f16(shape, data, label).expect("upload f16");
    assert_eq!(t.dtype(), DType::F16);
    t
}

/// An f16 tensor read back, widened to f32.
pub fn read_f16(t: &Tensor) -> Vec<f32> {
    gpu().read_f16(t).expect("readback f16")
}

/// A function uploading f32 values as a tensor of some precision.
pub type Upload = fn(&[usize], &[f32], &str) -> Tensor;

/// Upload and read functions for f32 tensors, or with `half` for f16 ones (tests that run both precisions).
pub fn io(half: bool) -> (Upload, fn(&Tensor) -> Vec<f32>) {
    if half {
        (upload_f16, read_f16)
    } else {
        (upload, read)
    }
}

/// One f16 rounding of a stored result, on top of an f32 tolerance: (extra atol, extra rtol): one f16 ulp, at most
/// 2^-10 relative (WGSL lets the f32-to-f16 conversion round either way), 2^-24 in the subnormal range.
pub const F16_STORE: (f64, f64) = (1.0 / (1u32 << 24) as f64, 1.0 / 1024.0);

/// `v` rounded to f16 and back, as the GPU holds it.
pub fn to_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

pub fn upload_u32(shape: &[usize], data: &[u32], label: &str) -> Tensor {
    let t = gpu().upload_u32(shape, data, label).expect("upload");
    assert_eq!(t.dtype(), DType::U32);
    t
}

pub fn read(t: &Tensor) -> Vec<f32> {
    gpu().read_f32(t).expect("readback")
}

/// |got - want| <= atol + rtol * |want| everywhere (NaN fails). On failure: the max difference and the first
/// bad index with both values.
pub fn assert_close(got: &[f32], want: &[f64], atol: f64, rtol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut first_bad = None;
    let mut max_diff = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let diff = (g as f64 - w).abs();
        let diff = if diff.is_nan() { f64::INFINITY } else { diff };
        max_diff = max_diff.max(diff);
        if diff > atol + rtol * w.abs() {
            first_bad.get_or_insert((i, g, w));
        }
    }
    if let Some((i, g, w)) = first_bad {
        panic!(
            "{what}: max |diff| {max_diff:e} (atol {atol:e}, rtol {rtol:e}); first bad index {i}: got {g}, want {w}"
        );
    }
}
