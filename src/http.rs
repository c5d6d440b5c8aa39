//! The HTTP vocabulary shared by both listeners: one response body type for
//! every kind of answer, and builders for JSON answers and errors.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::StatusCode;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

pub mod encoding;
pub mod h1;
mod query;
mod request_body;

pub use query::{decode_segment, may_name, query_pairs, QueryPairs};
pub use request_body::RequestBody;

use crate::net::meter::ConnMeter;
use crate::protocol::error::ApiError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Request = hyper::Request<RequestBody>;
pub type Response = hyper::Response<Body>;

/// A body the gateway produces as the socket drains (an SSE stream, a
/// large long-poll answer). The transports implement it; this layer only
/// drives it, so it needn't know them.
pub trait StreamBody: Send + Unpin + 'static {
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>;

    /// Bytes still to come, when known in advance (then the answer goes
    /// out with a Content-Length); `None` for an open-ended stream.
    fn remaining(&self) -> Option<usize>;

    /// Lets the output limits abort the connection of a dropped client.
    fn attach_meter(&self, meter: &Arc<ConnMeter>);

    /// Holds the body's pending output to `limits.write_timeout` itself
    /// (an HTTP/2 stream: see `OutputAccount::watch_stalls`).
    fn watch_stalls(&self) {}

    /// The last data frame is already in the connection's HTTP/1.1 chunk
    /// framing (the unsent tail of a chunk the publisher wrote in part,
    /// `transport::sse_direct`): the lean path writes it as is.
    fn prechunked(&self) -> bool {
        false
    }
}

enum Kind {
    Full(Option<Bytes>),
    /// Produced as the socket drains (boxed: rare and large).
    Stream(Box<dyn StreamBody>),
    Upstream(Incoming),
}

/// Every response body the gateway sends. A plain enum (not a boxed trait
/// object) so the common case, a small full body, costs no allocation.
pub struct Body {
    kind: Kind,
    /// Told when the response is finished, so bytes read afterwards are
    /// attributed to the next request on the connection.
    meter: Option<Arc<ConnMeter>>,
}

impl Body {
    pub fn empty() -> Body {
        Body::full(Bytes::new())
    }

    pub fn full(bytes: impl Into<Bytes>) -> Body {
        let bytes = bytes.into();
        Body {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            meter: None,
        }
    }

    /// A body produced as the socket drains.
    pub fn stream(body: impl StreamBody) -> Body {
        Body {
            kind: Kind::Stream(Box::new(body)),
            meter: None,
        }
    }

    pub fn upstream(body: Incoming) -> Body {
        Body {
            kind: Kind::Upstream(body),
            meter: None,
        }
    }

    pub(crate) fn set_meter(&mut self, meter: Arc<ConnMeter>) {
        // A body that counts against the client's output limits can now
        // abort the connection if the client is dropped.
        if let Kind::Stream(stream) = &self.kind {
            stream.attach_meter(&meter);
        }
        self.meter = Some(meter);
    }
}

impl Body {
    /// See [`StreamBody::watch_stalls`].
    pub(crate) fn watch_stalls(&self) {
        if let Kind::Stream(stream) = &self.kind {
            stream.watch_stalls();
        }
    }

    /// See [`StreamBody::prechunked`].
    pub(crate) fn prechunked(&self) -> bool {
        matches!(&self.kind, Kind::Stream(stream) if stream.prechunked())
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Some(meter) = self.meter.take() {
            meter.response_done();
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Every variant is Unpin, so the body can be reached mutably.
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(stream) => Pin::new(stream.as_mut()).poll_frame(cx),
            Kind::Upstream(incoming) => Pin::new(incoming)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Stream(stream) => stream.remaining() == Some(0),
            Kind::Upstream(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(stream) => match stream.remaining() {
                // Exact, so the answer goes out with a Content-Length.
                Some(left) => SizeHint::with_exact(left as u64),
                None => SizeHint::default(),
            },
            Kind::Upstream(incoming) => incoming.size_hint(),
        }
    }
}

/// `200` (or `status`) with a JSON body.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut resp = hyper::Response::new(Body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON value as the response body.
pub fn json_value(status: StatusCode, value: &impl serde::Serialize) -> Response {
    json(
        status,
        serde_json::to_vec(value).expect("response values serialise"),
    )
}

/// The error's status, JSON body and, for 503s, `Retry-After`.
pub fn error(err: &ApiError) -> Response {
    let mut resp = json(err.status(), err.body());
    if let Some(secs) = err.retry_after() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if matches!(err, ApiError::UpgradeRequired) {
        resp.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    }
    resp
}

/// [`error`], logged by who caused it: a client's mistake at debug, an
/// upstream or bus failure at warn.
pub fn logged_error(err: &ApiError) -> Response {
    match err.source() {
        crate::protocol::error::Source::Client => {
            tracing::debug!(error = %err, code = err.code(), "request refused")
        }
        crate::protocol::error::Source::Upstream => {
            tracing::warn!(error = %err, code = err.code(), "request failed")
        }
    }
    error(err)
}

/// Plain text with a content type.
pub fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response {
    let mut resp = hyper::Response::new(Body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// True for a JSON media type (`application/json`, `…+json`), parameters
/// ignored. Publish bodies and bridged backend answers of such a type are
/// published as JSON, anything else as a string.
pub fn is_json_content_type(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|mime| mime == "application/json" || mime.ends_with("+json"))
}

/// Reads a request body up to `limit` bytes within `timeout`.
pub async fn read_body(
    body: RequestBody,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(ApiError::BodyTimeout(timeout)),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::TooLarge { limit })
        }
        Ok(Err(e)) => Err(ApiError::BadRequest(format!(
            "could not read the body: {e}"
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}
