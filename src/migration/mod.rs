//! Migration telemetry: who still polls, from which pages, and why browsers
//! fall back from WebSocket — the figures a team watches while it moves a
//! site off Ajax polling, in bounded memory (no label or map entry per
//! client).

mod topk;
mod window;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::HeaderMap;
use parking_lot::Mutex;
use prometheus::IntGaugeVec;

use topk::SpaceSaving;
use window::{ClientHash, DistinctWindow};

/// The maps' hasher: foldhash, seeded at random per process. Channel
/// names are the client's choice, so the hash must not be one a client can
/// aim collisions at, but it runs on every poll, so not SipHash.
type Keyed = foldhash::fast::RandomState;

/// Channels whose distinct pollers are tracked one by one (for `/stats`);
/// past it, only the per-route figures grow.
const MAX_TRACKED_CHANNELS: usize = 1000;
/// Counters kept by the page sketch; the top 20 of them are reported.
const PAGE_COUNTERS: usize = 200;
pub const TOP_PAGES: usize = 20;

struct Inner {
    /// Bridged routes (by path) and `longpoll` (every long-poll endpoint).
    routes: HashMap<String, DistinctWindow, Keyed>,
    channels: HashMap<String, DistinctWindow, Keyed>,
    pages: SpaceSaving,
}

pub struct Migration {
    window: Duration,
    inner: Mutex<Inner>,
    legacy_clients: IntGaugeVec,
}

/// Who a poll comes from, without keeping who it is: the client library's
/// `cid` when it sends one, else address + user agent.
pub fn client_key(ip: IpAddr, headers: &HeaderMap, client_id: Option<&str>) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match client_id {
        Some(id) => id.hash(&mut hasher),
        None => {
            ip.hash(&mut hasher);
            headers
                .get(http::header::USER_AGENT)
                .map(|v| v.as_bytes())
                .hash(&mut hasher);
        }
    }
    hasher.finish()
}

/// The path of a `Referer` (query string and fragment dropped).
pub fn referer_path(headers: &HeaderMap) -> Option<String> {
    let referer = headers.get(http::header::REFERER)?.to_str().ok()?;
    let uri: http::Uri = referer.parse().ok()?;
    Some(uri.path().to_string())
}

impl Migration {
    pub fn new(window: Duration, legacy_clients: IntGaugeVec, routes: &[String]) -> Migration {
        let mut map: HashMap<String, DistinctWindow, Keyed> = routes
            .iter()
            .map(|r| (r.clone(), DistinctWindow::new(window)))
            .collect();
        map.insert("longpoll".into(), DistinctWindow::new(window));
        for route in map.keys() {
            legacy_clients.with_label_values(&[route.as_str()]).set(0);
        }
        Migration {
            window,
            inner: Mutex::new(Inner {
                routes: map,
                channels: HashMap::default(),
                pages: SpaceSaving::new(PAGE_COUNTERS),
            }),
            legacy_clients,
        }
    }

    /// One legacy poll: `route` is `longpoll` or a bridged path.
    pub fn record_poll(&self, route: &str, channel: &str, client: u64, page: Option<&str>) {
        let now = Instant::now();
        let client = ClientHash::of(client);
        let mut inner = self.inner.lock();
        if let Some(w) = inner.routes.get_mut(route) {
            w.insert(client, now);
        }
        // Looked up by `&str` first: `entry` would want an owned key, an
        // allocation on every poll for a channel that is nearly always known.
        if let Some(w) = inner.channels.get_mut(channel) {
            w.insert(client, now);
        } else if inner.channels.len() < MAX_TRACKED_CHANNELS {
            let mut w = DistinctWindow::new(self.window);
            w.insert(client, now);
            inner.channels.insert(channel.to_string(), w);
        }
        if let Some(page) = page {
            inner.pages.insert(page);
        }
    }

    /// Updates `pollbridge_legacy_clients{route}`; called periodically.
    pub fn refresh(&self) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        for (route, w) in inner.routes.iter_mut() {
            self.legacy_clients
                .with_label_values(&[route.as_str()])
                .set(w.estimate(now).round() as i64);
        }
        // Forget channels nobody polled during the whole window.
        inner.channels.retain(|_, w| w.estimate(now) >= 0.5);
    }

    /// The figures for `/stats` and the admin page.
    pub fn report(&self) -> serde_json::Value {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let routes: serde_json::Map<String, serde_json::Value> = inner
            .routes
            .iter_mut()
            .map(|(r, w)| (r.clone(), w.estimate(now).round().into()))
            .collect();
        let mut channels: Vec<(String, f64)> = inner
            .channels
            .iter_mut()
            .map(|(c, w)| (c.clone(), w.estimate(now).round()))
            .filter(|(_, n)| *n > 0.0)
            .collect();
        channels.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        channels.truncate(100);
        let pages: Vec<serde_json::Value> = inner
            .pages
            .top(TOP_PAGES)
            .into_iter()
            .map(|(page, polls)| serde_json::json!({"page": page, "polls": polls}))
            .collect();
        serde_json::json!({
            "window_seconds": self.window.as_secs(),
            "legacy_clients_by_route": routes,
            "legacy_clients_by_channel": channels
                .into_iter()
                .map(|(c, n)| serde_json::json!({"channel": c, "clients": n}))
                .collect::<Vec<_>>(),
            "top_polling_pages": pages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referer_paths_drop_the_query() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::REFERER,
            "https://shop.test/cart?id=3#x".parse().unwrap(),
        );
        assert_eq!(referer_path(&h).as_deref(), Some("/cart"));
    }

    #[test]
    fn report_counts_clients_per_route_and_channel() {
        let gauge = IntGaugeVec::new(prometheus::Opts::new("g", "g"), &["route"]).unwrap();
        let m = Migration::new(
            Duration::from_secs(300),
            gauge.clone(),
            &["/api/scores".into()],
        );
        for client in 0..50u64 {
            for _ in 0..3 {
                m.record_poll("longpoll", "news", client, Some("/home"));
            }
        }
        m.record_poll("/api/scores", "scores", 1, Some("/scores"));
        m.refresh();
        assert_eq!(gauge.with_label_values(&["longpoll"]).get(), 50);
        assert_eq!(gauge.with_label_values(&["/api/scores"]).get(), 1);
        let r = m.report();
        assert_eq!(r["top_polling_pages"][0]["page"], "/home");
        assert_eq!(r["legacy_clients_by_channel"][0]["channel"], "news");
    }
}
