//! The clock: std's `Instant` natively; in a browser (wasm32, where std's panics) the page's monotonic clock
//! through web-time.

#[cfg(not(target_arch = "wasm32"))]
pub use std::time::Instant;
#[cfg(target_arch = "wasm32")]
pub use web_time::Instant;

/// Keeps a page responsive while the engine works on its thread: [`PageYield::now_and_then`] hands the thread back to
/// the browser's event loop (a `setTimeout(0)` round trip: it paints, takes clicks such as Stop) when 50 ms have
/// passed since the last time. Natively it does nothing.
pub struct PageYield {
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    last: Instant,
}

impl Default for PageYield {
    fn default() -> Self {
        PageYield { last: Instant::now() }
    }
}

impl PageYield {
    /// Every 50 ms: the longest the page goes without painting (a timer round trip costs about 4 ms, so the
    /// engine keeps over 90% of the thread however short its steps are).
    #[cfg(target_arch = "wasm32")]
    pub async fn now_and_then(&mut self) {
        if self.last.elapsed() < std::time::Duration::from_millis(50) {
            return;
        }
        let promise = js_sys::Promise::new(&mut |resolve, _| {
            let global = js_sys::global();
            if let Ok(set_timeout) = js_sys::Reflect::get(&global, &"setTimeout".into()) {
                let set_timeout: js_sys::Function = set_timeout.into();
                let _ = set_timeout.call2(&global, &resolve, &0.into());
            }
        });
        let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
        self.last = Instant::now();
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub async fn now_and_then(&mut self) {}
}
