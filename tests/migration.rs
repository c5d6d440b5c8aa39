//! Migration telemetry at scale: distinct legacy pollers counted in a
//! sliding window (HyperLogLog, so a poller polling 20 times is still one,
//! and memory does not grow with the pollers), and the pages that still
//! poll the most (Referer path, query dropped).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::migration::{live_legacy_clients, source_addr, stats, Poller};
use common::*;
use tokio::sync::Semaphore;

/// Simulated pollers: 250 source addresses × 2 user agents.
const POLLERS: usize = 500;
const USER_AGENTS: [&str; 2] = [
    "Mozilla/5.0 (legacy poller A) jQuery/1.12",
    "Mozilla/5.0 (legacy poller B) Prototype/1.7",
];

fn within_5_percent(estimate: f64, truth: f64) -> bool {
    (estimate - truth).abs() <= truth * 0.05
}

/// Gateway with the per-address limits out of the way (250 addresses ×
/// many polls would otherwise trip them).
async fn gateway() -> Gateway {
    Gateway::start(&[
        "--longpoll-rate-per-ip",
        "0",
        "--max-connections-per-ip",
        "0",
    ])
    .await
}

/// Every poller (its own source address and user agent, one keep-alive
/// connection) polls `rounds` times `GET /rt/poll/news?timeout=0`.
async fn run_pollers(gw: &Gateway, rounds: usize) {
    let limit = Arc::new(Semaphore::new(100));
    let mut tasks = Vec::with_capacity(POLLERS);
    for i in 0..POLLERS {
        let server = gw.public;
        let limit = limit.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            // Pollers i and i + 250 share an address; the user agent tells
            // them apart.
            let source = source_addr(i);
            let agent = USER_AGENTS[i / 250];
            let mut conn = Poller::connect_from(source, server)
                .await
                .unwrap_or_else(|e| panic!("poller {i} from {source}: connect: {e}"));
            assert_eq!(conn.local_addr().ip(), source);
            for round in 0..rounds {
                let a = conn
                    .get("/rt/poll/news?timeout=0", &[("User-Agent", agent)])
                    .await
                    .unwrap_or_else(|e| panic!("poller {i} round {round}: {e}"));
                assert_eq!(a.status, 200, "poller {i}: {}", a.json());
                assert_eq!(a.json()["messages"], serde_json::json!([]));
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("pollers did not finish within 60 s")
            .expect("poller failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_distinct_pollers_are_counted_once_however_often_they_poll() {
    let gw = gateway().await;

    let started = Instant::now();
    run_pollers(&gw, 1).await;
    let once = live_legacy_clients(&gw, "longpoll").await;
    eprintln!(
        "500 pollers × 1 poll in {:?}: estimate {once}",
        started.elapsed()
    );
    assert!(
        within_5_percent(once, POLLERS as f64),
        "legacy_clients_by_route.longpoll = {once} for {POLLERS} distinct pollers"
    );

    // The same 500, 19 more polls each: still 500.
    let started = Instant::now();
    run_pollers(&gw, 19).await;
    let twenty = live_legacy_clients(&gw, "longpoll").await;
    eprintln!(
        "500 pollers × 19 more polls in {:?}: estimate {twenty}",
        started.elapsed()
    );
    assert!(
        within_5_percent(twenty, POLLERS as f64),
        "after 20 polls each: legacy_clients_by_route.longpoll = {twenty} for {POLLERS} pollers"
    );

    // The per-channel figure agrees.
    let s = stats(&gw).await;
    let by_channel = s["migration"]["legacy_clients_by_channel"]
        .as_array()
        .expect("legacy_clients_by_channel")
        .clone();
    let news = by_channel
        .iter()
        .find(|c| c["channel"] == "news")
        .unwrap_or_else(|| panic!("news missing from {by_channel:?}"));
    let per_channel = news["clients"].as_f64().unwrap();
    assert!(within_5_percent(per_channel, POLLERS as f64), "{news}");

    // The Prometheus gauge is refreshed by the gateway's sampler (every
    // ~10 s): it must show the same figure, not 20 × 500.
    let gauge = eventually(
        Duration::from_secs(20),
        "pollbridge_legacy_clients{route=longpoll} > 0",
        || async {
            gw.metric("pollbridge_legacy_clients", &[("route", "longpoll")])
                .await
                .filter(|v| *v > 0.0)
        },
    )
    .await;
    assert!(
        within_5_percent(gauge, POLLERS as f64),
        "pollbridge_legacy_clients{{route=\"longpoll\"}} = {gauge} for {POLLERS} pollers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_pollers_window_memory_stays_flat_from_500_to_50000() {
    // 50,000 pollers identified by the client library's `cid`, over 50
    // keep-alive connections. Memory must not grow with the pollers.
    let gw = gateway().await;
    const CONNS: usize = 50;

    async fn polls(gw: &Gateway, first: usize, count: usize) {
        let per_conn = count / CONNS;
        let mut tasks = Vec::new();
        for c in 0..CONNS {
            let server = gw.public;
            tasks.push(tokio::spawn(async move {
                let mut conn = Poller::connect_from(source_addr(c), server)
                    .await
                    .expect("connect");
                for k in 0..per_conn {
                    let cid = first + c * per_conn + k;
                    let a = conn
                        .get(&format!("/rt/poll/news?timeout=0&cid=c{cid:08}"), &[])
                        .await
                        .unwrap_or_else(|e| panic!("cid {cid}: {e}"));
                    assert_eq!(a.status, 200);
                }
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("polls did not finish within 60 s")
                .expect("poller failed");
        }
    }

    // Warm-up: 500 pollers, so connections, buffers and the sketches exist.
    polls(&gw, 0, 500).await;
    let est_500 = live_legacy_clients(&gw, "longpoll").await;
    assert!(within_5_percent(est_500, 500.0), "500 cids: {est_500}");
    let rss_500 = gw.rss_kib();

    let started = Instant::now();
    polls(&gw, 500, 49_500).await;
    let elapsed = started.elapsed();
    let est_50k = live_legacy_clients(&gw, "longpoll").await;
    let rss_50k = gw.rss_kib();
    eprintln!(
        "49,500 more polls in {elapsed:?}; estimate {est_50k}; RSS {rss_500} KiB → {rss_50k} KiB"
    );
    assert!(
        within_5_percent(est_50k, 50_000.0),
        "50,000 cids: estimate {est_50k}"
    );
    assert!(
        rss_50k < rss_500 + 4 * 1024,
        "RSS grew from {rss_500} KiB to {rss_50k} KiB between 500 and 50,000 pollers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_polling_pages_rank_referer_paths_without_their_queries() {
    let gw = gateway().await;
    // 100 polls: 60 % from /scores, 30 % from /prices, 10 % from /queue,
    // every one with its own query string (and a fragment now and then).
    let mut conn = Poller::connect_from(source_addr(0), gw.public)
        .await
        .expect("connect");
    for i in 0..100 {
        let referer = match i % 10 {
            0..=5 => format!("https://shop.example/scores?match={i}&_={}", 1000 + i),
            6..=8 => format!("https://shop.example/prices?sku={i}#top"),
            _ => format!("http://shop.example/queue?ticket={i}"),
        };
        let a = conn
            .get(
                &format!("/rt/poll/board?timeout=0&cid=p{i}"),
                &[("Referer", referer.as_str())],
            )
            .await
            .expect("poll");
        assert_eq!(a.status, 200);
    }
    // A poll without a Referer counts as a poller but names no page.
    let a = conn.get("/rt/poll/board?timeout=0", &[]).await.unwrap();
    assert_eq!(a.status, 200);

    let s = stats(&gw).await;
    let pages = s["migration"]["top_polling_pages"]
        .as_array()
        .unwrap_or_else(|| panic!("no top_polling_pages in {}", s["migration"]))
        .clone();
    let got: Vec<(String, u64)> = pages
        .iter()
        .map(|p| {
            (
                p["page"].as_str().expect("page").to_string(),
                p["polls"].as_u64().expect("polls"),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/scores".to_string(), 60),
            ("/prices".to_string(), 30),
            ("/queue".to_string(), 10),
        ],
        "top_polling_pages: {pages:?}"
    );
    assert!(pages.len() <= 20, "more than the top 20: {pages:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_polling_pages_keep_only_the_top_20() {
    let gw = gateway().await;
    let mut conn = Poller::connect_from(source_addr(1), gw.public)
        .await
        .expect("connect");
    // 30 pages, page k polled 30 - k times (so page 0 is the busiest).
    for k in 0..30u32 {
        for n in 0..(30 - k) {
            let referer = format!("https://app.example/page{k:02}?n={n}");
            let a = conn
                .get("/rt/poll/board?timeout=0", &[("Referer", referer.as_str())])
                .await
                .expect("poll");
            assert_eq!(a.status, 200);
        }
    }
    let s = stats(&gw).await;
    let pages: Vec<(String, u64)> = s["migration"]["top_polling_pages"]
        .as_array()
        .expect("top_polling_pages")
        .iter()
        .map(|p| {
            (
                p["page"].as_str().unwrap().to_string(),
                p["polls"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = (0..20u32)
        .map(|k| (format!("/page{k:02}"), u64::from(30 - k)))
        .collect();
    assert_eq!(pages, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pollers_of_a_bridged_path_are_counted_under_that_route() {
    use common::bridge_upstream::{ScoresUpstream, SCORES_PATH};
    let up = ScoresUpstream::start().await;
    let config = format!(
        "upstream = \"{}\"\n\n[[bridge]]\npath = \"{SCORES_PATH}\"\nchannel = \"scores\"\ninterval = \"100ms\"\n",
        up.url()
    );
    let gw = Gateway::builder()
        .config(&config)
        .args(&[
            "--longpoll-rate-per-ip",
            "0",
            "--max-connections-per-ip",
            "0",
        ])
        .start()
        .await;

    // 300 legacy pollers of the bridged URL (cache-buster queries, as
    // jQuery sends them), 200 long-pollers: two routes, counted apart.
    const BRIDGED: usize = 300;
    const LONGPOLL: usize = 200;
    let mut tasks = Vec::new();
    for i in 0..BRIDGED + LONGPOLL {
        let server = gw.public;
        tasks.push(tokio::spawn(async move {
            let mut conn = Poller::connect_from(source_addr(i), server)
                .await
                .expect("connect");
            let agent = USER_AGENTS[(i / 250) % 2];
            for round in 0..3 {
                let path = if i < BRIDGED {
                    format!("{SCORES_PATH}?_={}", 1_700_000_000 + round)
                } else {
                    "/rt/poll/scores?timeout=0".to_string()
                };
                let a = conn
                    .get(&path, &[("User-Agent", agent)])
                    .await
                    .unwrap_or_else(|e| panic!("poller {i}: {e}"));
                assert_eq!(a.status, 200, "poller {i} {path}: {:?}", a.body);
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("pollers did not finish")
            .expect("poller failed");
    }

    let bridged = live_legacy_clients(&gw, SCORES_PATH).await;
    let longpoll = live_legacy_clients(&gw, "longpoll").await;
    eprintln!("by route: {SCORES_PATH} {bridged}, longpoll {longpoll}");
    assert!(
        within_5_percent(bridged, BRIDGED as f64),
        "{SCORES_PATH}: {bridged} for {BRIDGED} pollers"
    );
    assert!(
        within_5_percent(longpoll, LONGPOLL as f64),
        "longpoll: {longpoll} for {LONGPOLL} pollers"
    );
    let gauge = eventually(
        Duration::from_secs(20),
        "pollbridge_legacy_clients{route=/api/scores} > 0",
        || async {
            gw.metric("pollbridge_legacy_clients", &[("route", SCORES_PATH)])
                .await
                .filter(|v| *v > 0.0)
        },
    )
    .await;
    assert!(
        within_5_percent(gauge, BRIDGED as f64),
        "gauge {{route={SCORES_PATH}}} = {gauge}"
    );
    let lp = gw
        .metric("pollbridge_legacy_clients", &[("route", "longpoll")])
        .await
        .expect("longpoll gauge");
    assert!(
        within_5_percent(lp, LONGPOLL as f64),
        "gauge longpoll = {lp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pollers_leave_the_window_once_they_stop_polling() {
    let gw = Gateway::start(&[
        "--legacy-window",
        "3s",
        "--longpoll-rate-per-ip",
        "0",
        "--max-connections-per-ip",
        "0",
    ])
    .await;
    let mut conn = Poller::connect_from(source_addr(7), gw.public)
        .await
        .expect("connect");
    for cid in 0..100 {
        let a = conn
            .get(&format!("/rt/poll/news?timeout=0&cid=w{cid}"), &[])
            .await
            .expect("poll");
        assert_eq!(a.status, 200);
    }
    let now = live_legacy_clients(&gw, "longpoll").await;
    assert!(within_5_percent(now, 100.0), "right after: {now}");
    let s = stats(&gw).await;
    assert_eq!(s["migration"]["window_seconds"], 3, "{}", s["migration"]);

    // A second group keeps polling; the first stops.
    let polling_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < polling_until {
        for cid in 0..20 {
            let a = conn
                .get(&format!("/rt/poll/news?timeout=0&cid=k{cid}"), &[])
                .await
                .expect("poll");
            assert_eq!(a.status, 200);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let later = live_legacy_clients(&gw, "longpoll").await;
    assert!(
        (19.0..=21.0).contains(&later),
        "4 s later (window 3 s), 20 pollers still poll: estimate {later}"
    );
}
