//! Errors the gateway answers clients with: each maps to one HTTP status,
//! a stable machine-readable `code` and a human message, sent as
//! `{"error":code,"message":…}`.

use std::time::Duration;

use http::StatusCode;

use super::BadChannelName;

/// Where an error came from: decides how loudly it is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent something wrong: debug.
    Client,
    /// The upstream or bus failed: warn.
    Upstream,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    BadChannel(#[from] BadChannelName),
    #[error("`{0}` must be an unsigned integer id")]
    BadCursor(&'static str),
    #[error("`timeout` must be a whole number of seconds")]
    BadTimeout,
    #[error("{0}")]
    BadJson(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed here; use {0}")]
    MethodNotAllowed(&'static str),
    #[error("body larger than the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("a body must arrive within {0:?}")]
    BodyTimeout(Duration),
    /// A proxied request body arrived too slowly (`proxy.body_timeout`,
    /// `proxy.body_min_rate`).
    #[error("{0}")]
    BodyTooSlow(String),
    /// The request head is over `limits.max_header_bytes` (or has too many
    /// header lines); answered by hyper, with this body.
    #[error("the request head (request line and headers) is too large")]
    HeadTooLarge,
    #[error("the request target (path and query) is too long")]
    UriTooLong,
    #[error("this is a WebSocket endpoint: send an Upgrade: websocket request")]
    UpgradeRequired,
    #[error("a connection may subscribe to at most {0} channels")]
    TooManySubscriptions(usize),
    #[error("too many requests from this address; retry after {0} s")]
    RateLimited(u64),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// The message bus is unreachable (the bus converts its own error).
    #[error("message bus unavailable: {0}")]
    Bus(String),
    /// With the suggested retry delay in seconds (spread over the
    /// reconnect window, so clients don't all come back at once).
    #[error("the gateway is shutting down; retry after {0} s")]
    ShuttingDown(u64),
    #[error("too many new sessions right now; retry after {0} s")]
    Overloaded(u64),
    /// The gateway-wide budget for unsent output is spent.
    #[error("the gateway holds too much unsent output right now; retry after {0} s")]
    OutputBudget(u64),
    /// The backend that decides who may subscribe did not answer.
    #[error("{0}")]
    AuthUnavailable(String),
    /// This client address has too many backend auth checks in flight or
    /// per second (`auth.auth_max_concurrent_per_ip`, `auth.auth_rate_per_ip`).
    #[error("too many authorisation checks from this address; retry after {0} s")]
    AuthRateLimited(u64),
    #[error("{0}")]
    UpstreamUnreachable(String),
    #[error("{0}")]
    UpstreamTimeout(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            BadChannel(_) | BadCursor(_) | BadTimeout | BadJson(_) | BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            NotFound(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout(_) | BodyTooSlow(_) => StatusCode::REQUEST_TIMEOUT,
            HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            UriTooLong => StatusCode::URI_TOO_LONG,
            UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            TooManySubscriptions(_) | RateLimited(_) | AuthRateLimited(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Forbidden(_) => StatusCode::FORBIDDEN,
            Bus(_) | ShuttingDown(_) | Overloaded(_) | OutputBudget(_) | AuthUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Stable code for clients and tests; never changes with the wording.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            BadChannel(_) => "bad_channel",
            BadCursor(_) => "bad_cursor",
            BadTimeout => "bad_timeout",
            BadJson(_) => "bad_json",
            BadRequest(_) => "bad_request",
            NotFound(_) => "not_found",
            MethodNotAllowed(_) => "method_not_allowed",
            TooLarge { .. } => "too_large",
            BodyTimeout(_) | BodyTooSlow(_) => "body_timeout",
            HeadTooLarge => "head_too_large",
            UriTooLong => "uri_too_long",
            UpgradeRequired => "upgrade_required",
            TooManySubscriptions(_) => "too_many_subscriptions",
            RateLimited(_) => "rate_limited",
            Unauthorized(_) => "unauthorized",
            Forbidden(_) => "forbidden",
            Bus(_) => "bus_unavailable",
            ShuttingDown(_) => "shutting_down",
            Overloaded(_) => "overloaded",
            OutputBudget(_) => "output_budget_exhausted",
            AuthUnavailable(_) => "auth_unavailable",
            AuthRateLimited(_) => "auth_rate_limited",
            UpstreamUnreachable(_) => "upstream_unreachable",
            UpstreamTimeout(_) => "upstream_timeout",
        }
    }

    pub fn source(&self) -> Source {
        match self {
            ApiError::Bus(_)
            | ApiError::AuthUnavailable(_)
            | ApiError::UpstreamUnreachable(_)
            | ApiError::UpstreamTimeout(_) => Source::Upstream,
            _ => Source::Client,
        }
    }

    /// Seconds a client should wait before retrying, for 503s.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Bus(_) | ApiError::AuthUnavailable(_) => Some(1),
            ApiError::ShuttingDown(secs)
            | ApiError::RateLimited(secs)
            | ApiError::AuthRateLimited(secs)
            | ApiError::Overloaded(secs)
            | ApiError::OutputBudget(secs) => Some(*secs),
            _ => None,
        }
    }

    /// The JSON body: `{"error":code,"message":…}`.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
        }))
        .expect("json! values serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_code_and_message() {
        let err = ApiError::TooLarge { limit: 10 };
        assert_eq!(err.status(), 413);
        let v: serde_json::Value = serde_json::from_slice(&err.body()).unwrap();
        assert_eq!(v["error"], "too_large");
        assert_eq!(v["message"], "body larger than the 10-byte limit");
    }
}
