//! GPU errors come back as `Result`s that name the labelled object, not as panics.

use wgtune::ops::elementwise::{elementwise, Elementwise};

use crate::common::*;

/// Binding one buffer as both input and output of a dispatch is a wgpu validation error: `run` must return it,
/// naming the step.
#[test]
fn validation_error_is_a_result_naming_the_label() {
    let g = gpu();
    let x = upload(&[8], &[1.0; 8], "x");
    let y = upload(&[8], &[2.0; 8], "y");
    let result = elementwise(g, Elementwise::Add, &x, Some(&y), &x, 1.0, false, "aliased add")
        .and_then(|d| g.run("aliased add step", &[&d]));
    let err = result.err().expect("aliasing an input and the output must fail").to_string();
    assert!(err.contains("aliased add"), "{err}");
    // The device is still usable afterwards.
    let out = poisoned(&[8], "out");
    let d = elementwise(g, Elementwise::Add, &x, Some(&y), &out, 1.0, false, "good add").expect("dispatch");
    g.run("good add", &[&d]).expect("run");
    assert_eq!(read(&out), vec![3.0; 8]);
}

#[test]
fn oversized_tensor_is_refused_with_the_limit() {
    let g = gpu();
    let too_many = (g.limits().max_storage_buffer_binding_size / 4 + 1) as usize;
    let err = g.tensor(&[too_many], wgtune::gpu::DType::F32, "huge activations").err().expect("refused").to_string();
    assert!(err.contains("huge activations") && err.contains("storage binding"), "{err}");
}
