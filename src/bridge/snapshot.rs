//! Answering a legacy poll of a snapshot route from the feed's copy: wait
//! for the first backend answer, `304` for a client that has the copy (or
//! hold its poll until the copy changes), the copy otherwise.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};

use super::answer::{counted_not_modified, CopyBody};
use super::feed::{self, Answer, Feed};
use super::{answer_with_body, client_has, held_until, not_modified, Route, FIRST_ANSWER_WAIT};
use crate::gateway::Gateway;
use crate::http::{Body, Request, Response};
use crate::protocol::error::ApiError;

/// The answer to a legacy poll served by `feed`.
pub(super) async fn answer(
    gw: &Arc<Gateway>,
    feed: &Arc<Feed>,
    req: &Request,
) -> Result<Response, ApiError> {
    let route = &feed.route;

    // Before the first poll has come back, wait for it: the first
    // client's request is the one that reaches the backend.
    let mut watch = feed.watch();
    if !feed.resolved() {
        let wait = watch.wait_for(|_| feed.resolved());
        let _ = tokio::time::timeout(FIRST_ANSWER_WAIT, wait).await;
    }
    let answer = feed.answer().ok_or_else(|| {
        ApiError::UpstreamTimeout(format!(
            "no answer from the backend for {} yet",
            route.config.path
        ))
    })?;
    let (copy, age) = match answer {
        Answer::Failure(failure) => {
            let mut resp = hyper::Response::new(Body::full(failure.body));
            *resp.status_mut() = failure.status;
            if let Some(ct) = failure.content_type {
                resp.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            return Ok(resp);
        }
        Answer::Copy { copy, age } => (copy, age),
    };

    let current = client_has(req.headers(), &copy.etag);
    if current {
        // Hold the poll (if the route holds) until the copy changes or the
        // hold ends.
        let seen = copy.id;
        let changed = watch.wait_for(
            |_| matches!(feed.answer(), Some(Answer::Copy { copy, .. }) if copy.id != seen),
        );
        let outcome = held_until(gw, route.config.hold, changed).await;
        drop(watch);
        if !outcome {
            return Ok(counted_not_modified(
                gw,
                route,
                req.headers(),
                &copy.etag,
                copy.body.len(),
            ));
        }
        route.client_held.inc();
        let Some(Answer::Copy { copy, age }) = feed.answer() else {
            return Ok(not_modified(
                gw,
                route,
                req.headers(),
                &copy.etag,
                copy.body.len(),
            ));
        };
        return Ok(body(gw, route, req, copy, age));
    }
    route.client_body.inc();
    Ok(body(gw, route, req, copy, age))
}

/// The copy as a `200`, with its age when it is older than the last poll.
/// Compressed once per version (the copy's shared forms).
fn body(
    gw: &Gateway,
    route: &Route,
    req: &Request,
    copy: feed::Copy,
    age: Option<Duration>,
) -> Response {
    let held = route.config.hold.is_some();
    let body = CopyBody {
        body: copy.body,
        shared: Some(&copy.compressed),
        content_type: copy.content_type,
        etag: copy.etag,
    };
    let mut resp = answer_with_body(gw, req.headers(), body, held);
    if let Some(age) = age {
        resp.headers_mut()
            .insert(header::AGE, HeaderValue::from(age.as_secs()));
    }
    resp
}
