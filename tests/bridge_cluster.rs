//! The bridge on a cluster: two gateway nodes on one Redis elect one poller
//! per feed through a Redis lease, so the backend still sees one request per
//! interval; when the node holding the lease dies, the other takes over
//! within two intervals and its legacy clients miss no change.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::bridge_upstream::{ScoresUpstream, SCORES_PATH};
use common::redis::{wait_ready, RedisServer};
use common::*;
use tokio::sync::watch;

/// The bridge's interval. Its lease lives two intervals and is renewed
/// once per interval, so a holder stalled longer than one interval loses
/// it: 500 ms, not less, so that a loaded 2-core CI machine (load 15+ while
/// the whole suite runs) does not hand the lease over mid-test.
const INTERVAL: Duration = Duration::from_millis(500);
/// How often the backend changes: more than an interval apart, so every
/// version is polled and seen.
const CHANGE_EVERY: Duration = Duration::from_millis(1200);
/// Scheduling leeway on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(500);
const POLLERS_PER_NODE: usize = 100;

fn config(upstream: &str, bus: &str) -> String {
    format!(
        "upstream = \"{upstream}\"\nbus = \"{bus}\"\n\n[[bridge]]\npath = \"{SCORES_PATH}\"\n\
         channel = \"scores\"\ninterval = \"{}ms\"\n",
        INTERVAL.as_millis()
    )
}

/// `pollbridge_bridge_upstream_requests_total` (all results) of one node.
async fn upstream_polls(gw: &Gateway) -> f64 {
    let text = gw.metrics().await;
    ["changed", "not_modified", "error"]
        .iter()
        .map(|r| {
            metric_value(
                &text,
                "pollbridge_bridge_upstream_requests_total",
                &[("bridge", "scores"), ("result", r)],
            )
            .unwrap_or(0.0)
        })
        .sum()
}

/// A legacy browser: polls every 100 ms with its ETag until told to stop;
/// returns every version it saw.
async fn legacy_client(addr: SocketAddr, mut stop: watch::Receiver<bool>) -> BTreeSet<u64> {
    let mut seen = BTreeSet::new();
    let mut etag = String::new();
    let mut conn = RawHttpConn::connect(addr).await.expect("connect");
    while !*stop.borrow() {
        let headers: Vec<(&str, &str)> = if etag.is_empty() {
            vec![]
        } else {
            vec![("If-None-Match", etag.as_str())]
        };
        match conn.request("GET", SCORES_PATH, &headers, None).await {
            Ok(r) if r.status() == 200 => {
                if let Some(v) = r.json()["v"].as_u64() {
                    seen.insert(v);
                }
                etag = r.header("etag").unwrap_or_default().to_string();
            }
            Ok(r) => assert_eq!(r.status(), 304, "legacy poll answered {}", r.status()),
            Err(_) => break, // its node was killed
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => {}
        }
    }
    seen
}

#[tokio::test]
async fn two_nodes_poll_once_per_interval_and_survive_the_lease_holder() {
    let redis = RedisServer::start().await;
    let up = Arc::new(ScoresUpstream::start().await);
    let cfg = config(&up.url(), &redis.url());
    let a = Gateway::builder().config(&cfg).start().await;
    let b = Gateway::builder().config(&cfg).start().await;
    wait_ready(&a, true, Duration::from_secs(10)).await;
    wait_ready(&b, true, Duration::from_secs(10)).await;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for _ in 0..POLLERS_PER_NODE {
        on_a.push(tokio::spawn(legacy_client(a.public, stop_rx.clone())));
        on_b.push(tokio::spawn(legacy_client(b.public, stop_rx.clone())));
    }

    // Phase 1: both nodes up, the backend changes every CHANGE_EVERY.
    let polls_before = up.poll_count();
    let started = Instant::now();
    for v in 2..=5 {
        tokio::time::sleep(CHANGE_EVERY).await;
        up.set_version(v);
    }
    tokio::time::sleep(CHANGE_EVERY).await;
    let elapsed = started.elapsed();
    let polls = up.poll_count() - polls_before;
    let bound = (elapsed.as_millis() / INTERVAL.as_millis()) as usize + 3;
    assert!(
        polls <= bound,
        "{polls} backend requests in {elapsed:?} from two nodes (one per {INTERVAL:?} interval allows {bound})"
    );
    let (by_a, by_b) = (upstream_polls(&a).await, upstream_polls(&b).await);
    assert!(
        by_a == 0.0 || by_b == 0.0,
        "both nodes polled the backend: {by_a} and {by_b}"
    );

    // Phase 2: kill the node holding the lease; the other takes over.
    let (holder, survivor, survivor_clients) = if by_a > 0.0 {
        (a, b, on_b)
    } else {
        (b, a, on_a)
    };
    drop(holder); // SIGKILL
    let killed = Instant::now();
    let before = up.poll_count();
    let took_over = eventually(
        Duration::from_secs(5),
        "the survivor polls the backend",
        || {
            let up = up.clone();
            async move { (up.poll_count() > before).then(Instant::now) }
        },
    )
    .await;
    let gap = took_over.duration_since(killed);
    assert!(
        gap <= INTERVAL * 2 + SLACK,
        "the surviving node took over after {gap:?} (two intervals are {:?})",
        INTERVAL * 2
    );
    up.set_version(6);
    tokio::time::sleep(CHANGE_EVERY).await;
    up.set_version(7);
    tokio::time::sleep(CHANGE_EVERY).await;
    assert!(
        upstream_polls(&survivor).await > 0.0,
        "the survivor holds the lease now"
    );

    stop_tx.send(true).unwrap();
    for client in survivor_clients {
        let seen = client.await.unwrap();
        let expected: BTreeSet<u64> = (1..=7).collect();
        assert_eq!(
            seen, expected,
            "a client of the surviving node missed a change"
        );
    }
}
