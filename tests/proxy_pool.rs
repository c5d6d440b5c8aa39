//! The proxy's upstream connections: kept alive and reused across
//! requests, never reused when the answer or the upstream says not to,
//! and a pooled connection the upstream closed while idle costs the
//! client nothing. Requests arrive upstream in origin form with a `Host`.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::http::find;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the raw upstream answers.
#[derive(Clone, Copy)]
enum Answer {
    /// `200` with a 2-byte body, kept alive.
    Ok,
    /// `204` (no body), kept alive.
    NoContent,
    /// `200` with `Connection: close`, then closes.
    Close,
    /// `200`, kept alive by its head, but closed right after (the way an
    /// upstream's idle timeout closes a kept-alive connection).
    SilentClose,
}

/// A hand-rolled upstream: counts connections, records request heads.
struct RawUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Connections the gateway closed (EOF seen while waiting for a head).
    closed: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start(answer: Answer) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (a, c, h) = (accepted.clone(), closed.clone(), heads.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (c, h) = (c.clone(), h.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for _ in 0..1000 {
                        let end = loop {
                            if let Some(i) = find(&buf, b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => {
                                    c.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end);
                        let is_head = head.starts_with("HEAD ");
                        h.lock().unwrap().push(head);
                        let reply: &[u8] = match answer {
                            Answer::Ok | Answer::SilentClose if is_head => {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
                            }
                            Answer::Ok | Answer::SilentClose => {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                            }
                            Answer::NoContent => b"HTTP/1.1 204 No Content\r\n\r\n",
                            Answer::Close => {
                                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
                            }
                        };
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                        if matches!(answer, Answer::Close | Answer::SilentClose) {
                            return;
                        }
                    }
                });
            }
        });
        RawUpstream {
            addr,
            accepted,
            closed,
            heads,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// `n` requests one after the other, each on its own client connection;
/// every one must be answered `want`.
async fn sequential(gw: &Gateway, method: &str, n: usize, want: u16) {
    for k in 0..n {
        let r = http(method, &gw.public_url(&format!("/seq/{k}")), &[], None).await;
        assert_eq!(r.status(), want, "request {k}: {}", r.text());
    }
}

#[tokio::test]
async fn one_upstream_connection_serves_sequential_requests() {
    let up = RawUpstream::start(Answer::Ok).await;
    let gw = Gateway::start(&["--upstream", &up.url()]).await;
    sequential(&gw, "GET", 20, 200).await;
    sequential(&gw, "HEAD", 5, 200).await;
    assert_eq!(up.accepted(), 1, "upstream connections for 25 requests");
    assert_eq!(up.heads().len(), 25);
}

#[tokio::test]
async fn bodiless_answers_keep_the_connection() {
    let up = RawUpstream::start(Answer::NoContent).await;
    let gw = Gateway::start(&["--upstream", &up.url()]).await;
    sequential(&gw, "GET", 10, 204).await;
    assert_eq!(up.accepted(), 1, "upstream connections for 10 answers 204");
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let up = RawUpstream::start(Answer::Ok).await;
    let gw = Gateway::start(&[
        "--upstream",
        &up.url(),
        "--proxy-pool-idle-timeout",
        "300ms",
    ])
    .await;
    sequential(&gw, "GET", 2, 200).await;
    assert_eq!(up.accepted(), 1);
    assert_eq!(up.closed(), 0, "closed while still fresh");
    eventually(
        Duration::from_secs(5),
        "idle upstream connection closed",
        || async { (up.closed() == 1).then_some(()) },
    )
    .await;
    // The next request opens a new one.
    sequential(&gw, "GET", 1, 200).await;
    assert_eq!(up.accepted(), 2);
}

#[tokio::test]
async fn no_idle_connections_kept_with_pool_max_idle_0() {
    let up = RawUpstream::start(Answer::Ok).await;
    let gw = Gateway::start(&["--upstream", &up.url(), "--proxy-pool-max-idle", "0"]).await;
    sequential(&gw, "GET", 3, 200).await;
    assert_eq!(up.accepted(), 3);
}

#[tokio::test]
async fn connection_close_answers_are_not_reused() {
    let up = RawUpstream::start(Answer::Close).await;
    let gw = Gateway::start(&["--upstream", &up.url()]).await;
    sequential(&gw, "GET", 5, 200).await;
    assert_eq!(up.accepted(), 5);
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_costs_the_client_nothing() {
    let up = RawUpstream::start(Answer::SilentClose).await;
    let gw = Gateway::start(&["--upstream", &up.url()]).await;
    for k in 0..10 {
        // Let the close arrive before the next request, as an idle
        // timeout's would; and right away too (the race).
        if k % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = get(&gw.public_url(&format!("/idle/{k}"))).await;
        assert_eq!(r.status(), 200, "request {k}: {}", r.text());
    }
    assert_eq!(
        up.heads().len(),
        10,
        "each request reached the upstream once"
    );
}

#[tokio::test]
async fn absolute_form_and_hostless_requests_arrive_in_origin_form_with_a_host() {
    let up = RawUpstream::start(Answer::Ok).await;
    let gw = Gateway::start(&["--upstream", &up.url()]).await;
    let (addr, _) = split_url(&gw.public_url("/"));

    let mut conn = RawHttpConn::connect(addr).await.unwrap();
    conn.write_all(b"GET http://front.example/abs/x?q=1 HTTP/1.1\r\nHost: front.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let head = conn.read_head().await.unwrap();
    assert_eq!(head.status, 200);

    let mut conn = RawHttpConn::connect(addr).await.unwrap();
    conn.write_all(b"GET /old/client HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let head = conn.read_head().await.unwrap();
    assert_eq!(head.status, 200);

    let heads = up.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(
        heads[0].starts_with("GET /abs/x?q=1 HTTP/1.1\r\n"),
        "{:?}",
        heads[0]
    );
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("\r\nhost: front.example\r\n"),
        "{:?}",
        heads[0]
    );
    assert!(
        heads[1].starts_with("GET /old/client HTTP/1.1\r\n"),
        "{:?}",
        heads[1]
    );
    let host = format!("\r\nhost: {}\r\n", up.addr);
    assert!(
        heads[1].to_ascii_lowercase().contains(&host),
        "{:?}",
        heads[1]
    );
}
