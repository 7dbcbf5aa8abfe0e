//! The kernel tests of tests/kernels/ once more, with wgpu's runtime shader checks on (wgtune runs its audited
//! kernels without them by default; `common::CHECKED` tells the two builds apart by crate name). Every module of
//! tests/kernels/main.rs is listed here too (checked below).

#[path = "../kernels/attention.rs"]
mod attention;
#[path = "../kernels/augment.rs"]
mod augment;
#[path = "../kernels/common.rs"]
mod common;
#[path = "../kernels/conv.rs"]
mod conv;
#[path = "../kernels/dropout.rs"]
mod dropout;
#[path = "../kernels/elementwise.rs"]
mod elementwise;
#[path = "../kernels/errors.rs"]
mod errors;
#[path = "../kernels/half_precision.rs"]
mod half_precision;
#[path = "../kernels/layer_norm.rs"]
mod layer_norm;
#[path = "../kernels/loss.rs"]
mod loss;
#[path = "../kernels/matmul.rs"]
mod matmul;
#[path = "../kernels/norm.rs"]
mod norm;
#[path = "../kernels/optim.rs"]
mod optim;
#[path = "../kernels/pool.rs"]
mod pool;
#[path = "../kernels/reduce.rs"]
mod reduce;

/// Both builds run the same test modules.
#[test]
fn every_kernel_test_module_runs_in_both_builds() {
    let modules = |source: &str| -> Vec<String> {
        source.lines().filter_map(|l| l.strip_prefix("mod ")).map(str::to_string).collect()
    };
    assert_eq!(modules(include_str!("main.rs")), modules(include_str!("../kernels/main.rs")));
}
