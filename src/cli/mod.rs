//! The command line's parts: arguments, the training commands, prediction, benchmarks and charts. Only the
//! binary uses them; the library stays free of their crates.

pub mod args;
pub mod bench;
pub mod plot;
pub mod predict;
pub mod train;
