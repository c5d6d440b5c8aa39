//! What the bridge tells browser caches, and why it depends on `hold`.
//!
//! A browser's HTTP cache serialises requests for one URL: while it
//! revalidates a cached answer (the `If-None-Match` it adds by itself to a
//! `Cache-Control: no-cache` answer), every other request of that browser
//! for the same URL waits for it — Chromium up to 20 s (its cache lock),
//! whatever tab it comes from. A bridged poll that is *held* until the next
//! change therefore stalls every other tab of the browser polling the same
//! URL: measured in headless Chromium with four tabs of a `fetch` page and
//! `hold = "25s"`, one tab updated and three stayed on "loading…".
//!
//! So a route with `hold` answers `Cache-Control: no-store`: the browser
//! keeps no copy, adds no validators of its own and takes no lock, every
//! tab's plain `fetch`/`XMLHttpRequest` gets the current body at once, and
//! a poll is held only when the page itself sent `If-None-Match` (then
//! Chromium holds all four tabs' polls side by side, each answered at the
//! change). Without `hold`, answers stay `no-cache` with an `ETag`: the
//! browser revalidates and gets a cheap `304` that is answered at once, so
//! its lock is never held for long.

use http::header::HeaderValue;

/// The `Cache-Control` of every bridged answer (`200` and `304`) of a route.
pub fn cache_control(holds: bool) -> HeaderValue {
    if holds {
        HeaderValue::from_static("no-store")
    } else {
        // Legacy clients must revalidate every time; the ETag makes it cheap.
        HeaderValue::from_static("no-cache")
    }
}
