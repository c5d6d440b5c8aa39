//! A backend with an old-style polling URL, for the legacy polling bridge.
//!
//! [`ScoresUpstream`] serves `GET /api/scores` as `{"v":N}` (or
//! `{"user":"<Authorization>","v":N}` when the request has an
//! `Authorization` header), where `N` changes only when the test calls
//! [`ScoresUpstream::set_version`] (or `text/html` `<p>score N</p>` after
//! [`ScoresUpstream::set_html`]). It sends an `ETag` and answers a
//! matching `If-None-Match` with `304` unless validators are switched off
//! (then every poll gets the whole, identical body). It records every
//! request, tracks how many are in flight at once, and can be made slow,
//! made to fail with `500`, or stopped (connection refused). Any other
//! method or path gets a JSON echo of the request with `x-upstream: scores`,
//! so a test can tell a proxied answer from a bridged one.
//!
//! It also has a login-protected polling URL, [`INBOX_PATH`]: for a request
//! whose `Authorization` was let in with [`ScoresUpstream::log_in`] it
//! serves `{"unread":N}` (the same for every logged-in user, `N` the
//! version) with an `ETag` and `304`; anyone else gets `401
//! {"error":"login required"}` with `WWW-Authenticate: Bearer`. And an
//! `auth_url` endpoint, [`AUTH_PATH`]: `204` for a logged-in
//! `Authorization`, else `403 {"error":"not logged in"}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::upstream::Fnv;

/// The polling URL this backend serves.
pub const SCORES_PATH: &str = "/api/scores";

/// The login-protected polling URL.
pub const INBOX_PATH: &str = "/api/inbox";

/// The backend's answer to `auth.auth_url` checks.
pub const AUTH_PATH: &str = "/auth";

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub method: String,
    /// Path and query.
    pub target: String,
    pub authorization: Option<String>,
    pub if_none_match: Option<String>,
    pub body: Vec<u8>,
    /// The status it was answered with (0 if it never got one).
    pub status: u16,
}

#[derive(Default)]
struct Shared {
    version: AtomicU64,
    /// When false: no `ETag`, no `304`.
    validators: AtomicBool,
    delay_ms: AtomicU64,
    failing: AtomicBool,
    /// Serve `text/html` (`<p>score N</p>`) instead of JSON.
    html: AtomicBool,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// `Authorization` values of logged-in users.
    logged_in: Mutex<Vec<String>>,
    seen: Mutex<Vec<Seen>>,
}

/// Counts a request in flight for as long as it is alive (also when the
/// client gives up and the connection task drops it).
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> InFlight<'a> {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The test backend. Its server task (and every connection) ends on
/// [`ScoresUpstream::stop`] or drop.
pub struct ScoresUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ScoresUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

impl ScoresUpstream {
    /// Starts on 127.0.0.1:0 at version 1, validators on.
    pub async fn start() -> ScoresUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        shared.version.store(1, Ordering::SeqCst);
        shared.validators.store(true, Ordering::SeqCst);
        let server_shared = shared.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set, so aborting the server task
            // closes every one of them too (the gateway's pooled
            // connections included).
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let shared = server_shared.clone();
                        connections.spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let shared = shared.clone();
                                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        ScoresUpstream {
            addr,
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the answer from now on.
    pub fn set_version(&self, v: u64) {
        self.shared.version.store(v, Ordering::SeqCst);
    }

    pub fn version(&self) -> u64 {
        self.shared.version.load(Ordering::SeqCst)
    }

    /// Off: no `ETag` and never `304`, so only the body tells a change.
    pub fn set_validators(&self, on: bool) {
        self.shared.validators.store(on, Ordering::SeqCst);
    }

    /// Every answer waits this long first.
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// On: every request gets `500 {"error":"scores backend failed"}`.
    pub fn set_failing(&self, on: bool) {
        self.shared.failing.store(on, Ordering::SeqCst);
    }

    /// On: `text/html; charset=utf-8` bodies, [`html_body`], instead of JSON.
    pub fn set_html(&self, on: bool) {
        self.shared.html.store(on, Ordering::SeqCst);
    }

    /// Closes the listener and every connection: from now on connecting is
    /// refused.
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Waits (bounded) until the stopped server's socket is really closed.
    pub async fn stopped(&self) {
        self.stop();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "upstream {} still accepts connections after stop",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// From now on `authorization` (an `Authorization` value) is a
    /// logged-in user of [`INBOX_PATH`] and [`AUTH_PATH`].
    pub fn log_in(&self, authorization: &str) {
        self.shared
            .logged_in
            .lock()
            .unwrap()
            .push(authorization.to_string());
    }

    /// Requests for `path` (without query) so far.
    pub fn requests_to(&self, path: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| path_of(&s.target) == path)
            .collect()
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// `GET`s of the polling URL so far.
    pub fn polls(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "GET" && path_of(&s.target) == SCORES_PATH)
            .collect()
    }

    pub fn poll_count(&self) -> usize {
        self.polls().len()
    }

    /// Most requests ever in flight at the same time.
    pub fn max_in_flight(&self) -> u64 {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }
}

fn path_of(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

/// The body for a version as the backend serves it.
pub fn scores_body(user: Option<&str>, v: u64) -> serde_json::Value {
    match user {
        Some(user) => serde_json::json!({"user": user, "v": v}),
        None => serde_json::json!({"v": v}),
    }
}

/// The body for a version in HTML mode.
pub fn html_body(v: u64) -> String {
    format!("<p>score {v}</p>")
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let _in_flight = InFlight::enter(shared);
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let mut seen = Seen {
        at: Instant::now(),
        method: req.method().to_string(),
        target: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        authorization: header("authorization"),
        if_none_match: header("if-none-match"),
        body: Vec::new(),
        status: 0,
    };
    let index = {
        let mut all = shared.seen.lock().unwrap();
        all.push(seen.clone());
        all.len() - 1
    };
    seen.body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();

    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let response = answer(shared, &seen);
    let mut all = shared.seen.lock().unwrap();
    all[index].body = seen.body;
    all[index].status = response.status().as_u16();
    response
}

fn json(status: u16, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

/// [`INBOX_PATH`] and [`AUTH_PATH`], or `None` for other requests.
fn answer_logged_in(shared: &Shared, req: &Seen) -> Option<Response<Body>> {
    let path = path_of(&req.target);
    if req.method != "GET" || (path != INBOX_PATH && path != AUTH_PATH) {
        return None;
    }
    let logged_in = req
        .authorization
        .as_ref()
        .is_some_and(|a| shared.logged_in.lock().unwrap().contains(a));
    if path == AUTH_PATH {
        return Some(if logged_in {
            Response::builder()
                .status(204)
                .body(full(Bytes::new()))
                .unwrap()
        } else {
            json(403, r#"{"error":"not logged in"}"#)
        });
    }
    if !logged_in {
        let mut refused = json(401, r#"{"error":"login required"}"#);
        refused.headers_mut().insert(
            "www-authenticate",
            hyper::header::HeaderValue::from_static("Bearer realm=\"inbox\""),
        );
        return Some(refused);
    }
    let v = shared.version.load(Ordering::SeqCst);
    let etag = format!("\"i{v}\"");
    if req.if_none_match.as_deref() == Some(etag.as_str()) {
        return Some(
            Response::builder()
                .status(304)
                .header("etag", etag)
                .body(full(Bytes::new()))
                .unwrap(),
        );
    }
    let mut ok = json(200, &serde_json::json!({ "unread": v }).to_string());
    ok.headers_mut()
        .insert("etag", hyper::header::HeaderValue::from_str(&etag).unwrap());
    Some(ok)
}

fn answer(shared: &Shared, req: &Seen) -> Response<Body> {
    if let Some(response) = answer_logged_in(shared, req) {
        return response;
    }
    if req.method != "GET" || path_of(&req.target) != SCORES_PATH {
        let echo = serde_json::json!({
            "method": req.method,
            "target": req.target,
            "body": String::from_utf8_lossy(&req.body),
        });
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("x-upstream", "scores")
            .body(full(echo.to_string()))
            .unwrap();
    }
    if shared.failing.load(Ordering::SeqCst) {
        return Response::builder()
            .status(500)
            .header("content-type", "application/json")
            .body(full(r#"{"error":"scores backend failed"}"#))
            .unwrap();
    }
    let v = shared.version.load(Ordering::SeqCst);
    let user = req.authorization.as_deref();
    let mut tag = Fnv::default();
    tag.update(user.unwrap_or("").as_bytes());
    let html = shared.html.load(Ordering::SeqCst);
    let kind = if html { "h" } else { "j" };
    let etag = format!("\"{kind}{v}-{}\"", tag.hex());
    let validators = shared.validators.load(Ordering::SeqCst);
    if validators && req.if_none_match.as_deref() == Some(etag.as_str()) {
        return Response::builder()
            .status(304)
            .header("etag", etag)
            .body(full(Bytes::new()))
            .unwrap();
    }
    let (content_type, body) = if html {
        ("text/html; charset=utf-8", html_body(v))
    } else {
        ("application/json", scores_body(user, v).to_string())
    };
    let mut builder = Response::builder()
        .status(200)
        .header("content-type", content_type);
    if validators {
        builder = builder.header("etag", etag);
    }
    builder.body(full(body)).unwrap()
}
