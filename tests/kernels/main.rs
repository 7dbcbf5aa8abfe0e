//! GPU kernels against the f64 CPU reference (`wgtune::reference`), on awkward shapes with seeded inputs and
//! NaN-poisoned outputs. One test binary, one device: see common.rs.

mod attention;
mod augment;
mod common;
mod conv;
mod dropout;
mod elementwise;
mod errors;
mod half_precision;
mod layer_norm;
mod loss;
mod matmul;
mod norm;
mod optim;
mod pool;
mod reduce;
