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
    let err = result.expect_err("aliasing an input and the output must fail").to_string();
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
    let err = g.tensor(&[too_many], wgtune::gpu::DType::F32, "huge activations").expect_err("refused").to_string();
    assert!(err.contains("huge activations") && err.contains("storage binding"), "{err}");
}

/// The training-step shape: one submission that computes a loss and copies it into the staging ring, then
/// non-blocking polls until the 4 bytes arrive. The ring's slots are reusable afterwards.
#[test]
fn async_readback_of_a_scalar_through_the_ring() {
    use wgtune::gpu::ReadbackRing;
    use wgtune::ops::loss::{Loss, Targets};
    let g = gpu();
    let logits = upload(&[2, 3], &[1.0, 2.0, 3.0, 0.0, 0.0, 0.0], "logits");
    let rows = Targets { classes: 3, multi_label: false }.encode(&[2, 1], None).expect("encode");
    let labels = upload_u32(&[2, 3], &rows, "labels");
    let loss = poisoned(&[1], "loss");
    let f = Loss::SoftmaxCrossEntropy { smoothing: 0.0 };
    let d = f.forward(g, &logits, &labels, &loss, "loss").expect("dispatch");
    let mut ring = ReadbackRing::new(g, "metrics", 2, 16).expect("ring");
    let want = wgtune::reference::softmax_cross_entropy_forward(&[1.0, 2.0, 3.0, 0.0, 0.0, 0.0], &[2, 1], 3, 0.0);
    for round in 0..3 {
        let tickets = g.submit("step", &[&d], &mut ring, &[&loss]).expect("submit");
        let mut polls = 0u64;
        let bytes = loop {
            if let Some(b) = ring.try_read(g, &tickets[0]).expect("try_read") {
                break b;
            }
            polls += 1;
            assert!(polls < 10_000_000, "round {round}: the readback never arrived");
            std::thread::yield_now();
        };
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        assert_close(&got, &[want], 1e-6, 1e-6, &format!("round {round}"));
    }
}

/// The two builds of these tests run the same kernels with and without wgpu's runtime checks.
#[test]
fn the_shader_checks_are_as_this_build_says() {
    assert_eq!(gpu().shader_checks(), CHECKED);
}

/// The reductions of batch norm and the depthwise weight gradient run with subgroups in one build (where the adapter
/// has them: lavapipe does, with 8 lanes) and with workgroup-memory trees in the other, so both are tested here.
#[test]
fn the_reductions_are_as_this_build_says() {
    let turned_off = std::env::var(wgtune::gpu::ENV_SUBGROUPS).is_ok_and(|v| v.trim() == "off" || v.trim() == "0");
    let want = !CHECKED && gpu().adapter_has_subgroups() && !turned_off;
    assert_eq!(gpu().subgroups().is_some(), want, "subgroups {:?}", gpu().subgroups());
    if let Some((min, _)) = gpu().subgroups() {
        assert!(min >= wgtune::gpu::MIN_SUBGROUP_SIZE);
    }
}
