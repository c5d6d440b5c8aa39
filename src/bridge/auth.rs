//! `[[bridge]] auth`: a route whose copy only logged-in users may read.
//!
//! Before a legacy client is served the shared copy, its credentials (its
//! `Cookie` and `Authorization` headers) are checked with the backend —
//! through the `auth.auth_url` delegation, or by a conditional request to
//! the route itself — and the answer is remembered per credential for
//! `auth_ttl`. So the backend sees one poll per interval for the cluster
//! plus one check per distinct credential per `auth_ttl`, never one per
//! client poll. A client the backend refuses (3xx/4xx) gets the backend's
//! own answer: its status, body, `Content-Type`, `Location` and
//! `WWW-Authenticate`.
//!
//! Bounds: at most `auth_cache_size` remembered answers per route (past
//! it, expired ones are swept, then new ones are not remembered) and at
//! most `auth_max_in_flight` checks waiting on the backend at once; a
//! client that cannot start its check within `auth.auth_timeout` gets
//! `503 auth_unavailable` with `Retry-After`. Identical credentials arriving
//! together share one check.
//!
//! The route's own poller needs credentials too: it polls with those of the
//! client allowed most recently (the copy is one every logged-in user may
//! read; a per-user answer needs `vary_by`).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use parking_lot::Mutex;
use prometheus::IntCounter;
use tokio::sync::{OnceCell, Semaphore};

use super::UpstreamClient;
use crate::auth::{kept_headers, Authorizer, BackendAnswer, Credentials};
use crate::config::{BridgeAuthMode, BridgeRoute};
use crate::http::{Body, Response};
use crate::metrics::Metrics;
use crate::protocol::channel::ChannelName;
use crate::protocol::error::ApiError;

/// The request headers that carry a legacy client's credentials.
const CREDENTIAL_HEADERS: [HeaderName; 2] = [header::COOKIE, header::AUTHORIZATION];

/// Remembered answers are swept of expired ones at most this often (a sweep
/// walks the whole map).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Why a client is not served the copy.
pub enum Denied {
    /// The backend's own answer, passed on as it was.
    Backend(BackendAnswer),
    /// No answer could be had (backend unreachable, too many checks).
    Error(ApiError),
}

impl Denied {
    pub fn into_response(self) -> Result<Response, ApiError> {
        let answer = match self {
            Denied::Backend(answer) => answer,
            Denied::Error(e) => return Err(e),
        };
        let mut resp = hyper::Response::new(Body::full(answer.body));
        *resp.status_mut() = answer.status;
        *resp.headers_mut() = answer.headers;
        // The answer is about these credentials, now: no cache keeps it.
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    }
}

/// One remembered decision.
#[derive(Clone)]
struct Decided {
    /// `None`: allowed; `Some`: the backend's refusal.
    refusal: Option<BackendAnswer>,
    until: Instant,
}

/// The decision for one credential: decided once, shared by every request
/// that carries it until it expires.
#[derive(Default)]
struct Slot {
    decided: OnceCell<Decided>,
}

impl Slot {
    /// Still usable: being decided, or decided and not expired.
    fn live(&self, now: Instant) -> bool {
        self.decided.get().is_none_or(|d| d.until > now)
    }
}

/// Counters of a route's checks.
struct Counters {
    allowed: IntCounter,
    refused: IntCounter,
    error: IntCounter,
}

/// The checks of one route.
pub struct RouteAuth {
    mode: BridgeAuthMode,
    ttl: Duration,
    cache_size: usize,
    /// Longest wait for a free check slot.
    wait: Duration,
    in_flight: Semaphore,
    /// Keyed with a per-process random key, so nobody can craft a
    /// credential that lands on someone else's remembered answer.
    hasher: RandomState,
    answers: DashMap<u64, Arc<Slot>>,
    last_sweep: Mutex<Instant>,
    /// The credential headers of the client allowed most recently: the
    /// route's poller sends them.
    poll_credentials: Mutex<HeaderMap>,
    /// `auth = "route"`: the backend's last `ETag` for the route, sent as
    /// `If-None-Match` so an allowed client usually costs a `304`.
    validator: Mutex<Option<HeaderValue>>,
    /// The refusal remembered last: an identical one shares its body, so a
    /// full cache of refused credentials holds one copy of the usual `401`
    /// body, not one each.
    last_refusal: Mutex<Option<BackendAnswer>>,
    counters: Counters,
}

impl RouteAuth {
    /// The checks of `route`, or `None` when it has `auth = "none"`.
    pub fn new(
        route: &BridgeRoute,
        auth_timeout: Duration,
        metrics: &Metrics,
    ) -> Option<RouteAuth> {
        if route.auth == BridgeAuthMode::None {
            return None;
        }
        let counter = |result: &str| {
            metrics
                .bridge_auth_checks
                .with_label_values(&[route.channel.as_str(), result])
        };
        Some(RouteAuth {
            mode: route.auth,
            ttl: route.auth_ttl,
            cache_size: route.auth_cache_size,
            wait: auth_timeout,
            in_flight: Semaphore::new(route.auth_max_in_flight),
            hasher: RandomState::new(),
            answers: DashMap::new(),
            last_sweep: Mutex::new(Instant::now()),
            poll_credentials: Mutex::new(HeaderMap::new()),
            validator: Mutex::new(None),
            last_refusal: Mutex::new(None),
            counters: Counters {
                allowed: counter("allowed"),
                refused: counter("refused"),
                error: counter("error"),
            },
        })
    }

    /// Whether the client sending `headers` may be served the copy.
    pub async fn check(
        &self,
        route: &BridgeRoute,
        auth: &Authorizer,
        client: &UpstreamClient,
        headers: &HeaderMap,
    ) -> Result<(), Denied> {
        let credentials = credential_headers(headers);
        let slot = self.slot(self.key(&credentials));
        let decided = slot
            .decided
            .get_or_try_init(|| self.ask(route, auth, client, &credentials))
            .await?;
        match &decided.refusal {
            None => {
                *self.poll_credentials.lock() = credentials;
                Ok(())
            }
            Some(refusal) => Err(Denied::Backend(refusal.clone())),
        }
    }

    /// True once some client has been allowed (the poller has credentials).
    pub fn has_poll_credentials(&self) -> bool {
        !self.poll_credentials.lock().is_empty()
    }

    /// Adds the poller's credentials to one of its requests.
    pub fn add_poll_credentials(&self, headers: &mut HeaderMap) {
        for (name, value) in self.poll_credentials.lock().iter() {
            headers.append(name.clone(), value.clone());
        }
    }

    fn key(&self, credentials: &HeaderMap) -> u64 {
        let values: Vec<(&str, &[u8])> = credentials
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        self.hasher.hash_one(values)
    }

    /// The slot for a credential: the live one, or a new one (remembered
    /// while there is room).
    fn slot(&self, key: u64) -> Arc<Slot> {
        let now = Instant::now();
        if let Some(slot) = self.answers.get(&key) {
            if slot.live(now) {
                return slot.clone();
            }
        }
        if self.answers.len() >= self.cache_size {
            self.sweep(now);
            if self.answers.len() >= self.cache_size {
                return Arc::new(Slot::default());
            }
        }
        let mut entry = self.answers.entry(key).or_default();
        if !entry.live(now) {
            *entry = Arc::new(Slot::default());
        }
        entry.clone()
    }

    fn sweep(&self, now: Instant) {
        {
            let mut last = self.last_sweep.lock();
            if now.duration_since(*last) < SWEEP_EVERY {
                return;
            }
            *last = now;
        }
        self.answers.retain(|_, slot| slot.live(now));
    }

    /// One check with the backend.
    async fn ask(
        &self,
        route: &BridgeRoute,
        auth: &Authorizer,
        client: &UpstreamClient,
        credentials: &HeaderMap,
    ) -> Result<Decided, Denied> {
        let _permit = tokio::time::timeout(self.wait, self.in_flight.acquire())
            .await
            .map_err(|_| {
                self.counters.error.inc();
                Denied::Error(ApiError::AuthUnavailable(
                    "too many login checks are waiting on the backend".into(),
                ))
            })?
            .expect("the check semaphore is never closed");
        let answer = match self.mode {
            BridgeAuthMode::None => return Ok(self.decided(None)),
            BridgeAuthMode::AuthUrl => self.ask_auth_url(route, auth, credentials).await,
            BridgeAuthMode::Route => self.ask_route(route, client, credentials).await,
        };
        let answer = answer.inspect_err(|_| self.counters.error.inc())?;
        if answer.status.is_success() || answer.status == StatusCode::NOT_MODIFIED {
            self.counters.allowed.inc();
            Ok(self.decided(None))
        } else if answer.status.is_server_error() {
            // The backend failing is no refusal: passed on to this client,
            // not remembered.
            self.counters.error.inc();
            Err(Denied::Backend(answer))
        } else {
            self.counters.refused.inc();
            Ok(self.decided(Some(self.shared_refusal(answer))))
        }
    }

    /// `answer`, or the identical refusal remembered before it.
    fn shared_refusal(&self, answer: BackendAnswer) -> BackendAnswer {
        let mut last = self.last_refusal.lock();
        match &*last {
            Some(same)
                if same.status == answer.status
                    && same.headers == answer.headers
                    && same.body == answer.body =>
            {
                same.clone()
            }
            _ => {
                *last = Some(answer.clone());
                answer
            }
        }
    }

    fn decided(&self, refusal: Option<BackendAnswer>) -> Decided {
        Decided {
            refusal,
            until: Instant::now() + self.ttl,
        }
    }

    async fn ask_auth_url(
        &self,
        route: &BridgeRoute,
        auth: &Authorizer,
        credentials: &HeaderMap,
    ) -> Result<BackendAnswer, Denied> {
        let channel = ChannelName::new(&route.channel).map_err(|e| Denied::Error(e.into()))?;
        let credentials = Credentials {
            token: None,
            cookie: credentials.get(header::COOKIE).cloned(),
            authorization: credentials.get(header::AUTHORIZATION).cloned(),
        };
        match auth.backend_answer(&channel, &credentials).await {
            Some(answer) => answer.map_err(Denied::Error),
            // Configuration validation requires auth.auth_url for this mode.
            None => Err(Denied::Error(ApiError::AuthUnavailable(
                "auth.auth_url is not configured".into(),
            ))),
        }
    }

    async fn ask_route(
        &self,
        route: &BridgeRoute,
        client: &UpstreamClient,
        credentials: &HeaderMap,
    ) -> Result<BackendAnswer, Denied> {
        let mut headers = credentials.clone();
        if let Some(etag) = self.validator.lock().clone() {
            headers.insert(header::IF_NONE_MATCH, etag);
        }
        let (parts, body) =
            client
                .exchange(&route.path, headers)
                .await
                .map_err(|(status, reason)| {
                    Denied::Error(if status == StatusCode::GATEWAY_TIMEOUT {
                        ApiError::UpstreamTimeout(reason)
                    } else {
                        ApiError::UpstreamUnreachable(reason)
                    })
                })?;
        if parts.status.is_success() {
            if let Some(etag) = parts.headers.get(header::ETAG) {
                *self.validator.lock() = Some(etag.clone());
            }
        }
        Ok(BackendAnswer {
            status: parts.status,
            headers: kept_headers(&parts.headers),
            body: if parts.status.is_success() {
                Bytes::new()
            } else {
                body
            },
        })
    }
}

/// The client's credential headers (every value of each).
fn credential_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in CREDENTIAL_HEADERS {
        for value in headers.get_all(&name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_auth(cache_size: usize) -> RouteAuth {
        let route: BridgeRoute = toml::from_str(&format!(
            "path = \"/a\"\nchannel = \"a\"\nauth = \"route\"\nauth_cache_size = {cache_size}\nauth_ttl = \"50ms\"\n"
        ))
        .unwrap();
        RouteAuth::new(&route, Duration::from_secs(1), &Metrics::new()).unwrap()
    }

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        h
    }

    #[test]
    fn keys_depend_on_credentials_only() {
        let auth = route_auth(10);
        let a = credential_headers(&headers("session=a"));
        let mut a_again = headers("session=a");
        a_again.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
        assert_eq!(a.len(), 1);
        assert_eq!(auth.key(&a), auth.key(&credential_headers(&a_again)));
        assert_ne!(
            auth.key(&a),
            auth.key(&credential_headers(&headers("session=b")))
        );
        assert_ne!(auth.key(&a), auth.key(&HeaderMap::new()));
    }

    #[test]
    fn remembered_answers_stay_bounded() {
        let auth = route_auth(3);
        for key in 0..10u64 {
            let slot = auth.slot(key);
            slot.decided.set(auth.decided(None)).ok().unwrap();
        }
        assert_eq!(auth.answers.len(), 3, "past the cap nothing new is kept");
        // Once the kept ones have expired (and a sweep is due), new ones fit.
        std::thread::sleep(Duration::from_millis(60));
        *auth.last_sweep.lock() = Instant::now() - SWEEP_EVERY;
        let slot = auth.slot(99);
        assert!(slot.decided.get().is_none());
        assert_eq!(auth.answers.len(), 1);
    }

    #[test]
    fn identical_refusals_share_one_body() {
        let auth = route_auth(3);
        let refusal = || BackendAnswer {
            status: StatusCode::UNAUTHORIZED,
            headers: HeaderMap::new(),
            body: Bytes::from(vec![b'x'; 1000]),
        };
        let a = auth.shared_refusal(refusal());
        let b = auth.shared_refusal(refusal());
        assert_eq!(a.body.as_ptr(), b.body.as_ptr());
        let other = auth.shared_refusal(BackendAnswer {
            status: StatusCode::FORBIDDEN,
            ..refusal()
        });
        assert_ne!(a.body.as_ptr(), other.body.as_ptr());
    }

    #[test]
    fn an_expired_answer_is_asked_again() {
        let auth = route_auth(3);
        let slot = auth.slot(1);
        slot.decided.set(auth.decided(None)).ok().unwrap();
        assert!(Arc::ptr_eq(&slot, &auth.slot(1)));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!Arc::ptr_eq(&slot, &auth.slot(1)));
    }
}
