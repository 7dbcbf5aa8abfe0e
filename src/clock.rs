//! The clock: std's `Instant` natively; in a browser (wasm32, where std's panics) the page's monotonic clock
//! through web-time.

#[cfg(not(target_arch = "wasm32"))]
pub use std::time::Instant;
#[cfg(target_arch = "wasm32")]
pub use web_time::Instant;
