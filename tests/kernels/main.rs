//! GPU kernels against the f64 CPU reference (`wgtune::reference`), on awkward shapes with seeded inputs and
//! NaN-poisoned outputs. One test binary, one device: see common.rs.

mod common;
mod conv;
mod elementwise;
mod errors;
mod loss;
mod matmul;
mod optim;
mod reduce;
