//! Cross-origin reads of the HTTP transports (long-poll and SSE): which
//! origins may read an answer (`longpoll.cors_origins`, or an origin the
//! auth settings allow), the headers that say so, and preflights.

use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;

use crate::gateway::Gateway;
use crate::http::{json, Response};

/// The allowed origin to echo for this request, if any.
pub(crate) fn allowed_origin<'a>(gw: &Gateway, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
    let origins = &gw.config.longpoll.cors_origins;
    if origins.is_empty() && !gw.auth.lists_origins() {
        // No origin is allowed (the default): no need to look for one.
        return None;
    }
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    let listed = origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(text));
    (listed || gw.auth.origin_allowed(text)).then_some(origin)
}

/// CORS headers for an allowed cross-site poll.
pub fn cors(gw: &Gateway, request: &HeaderMap, response: &mut HeaderMap) {
    if let Some(origin) = allowed_origin(gw, request) {
        cors_headers(origin.clone(), response);
    }
}

pub(crate) fn cors_headers(origin: HeaderValue, response: &mut HeaderMap) {
    response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    // Appended: the answer may already vary on Accept-Encoding.
    response.append(header::VARY, HeaderValue::from_static("Origin"));
    response.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Retry-After"),
    );
}

/// Answers a CORS preflight.
pub(crate) fn preflight(gw: &Gateway, request: &HeaderMap) -> Response {
    let mut resp = json(StatusCode::NO_CONTENT, bytes::Bytes::new());
    resp.headers_mut().remove(header::CONTENT_TYPE);
    if let Some(origin) = allowed_origin(gw, request) {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, OPTIONS"),
        );
        if let Some(asked) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}
