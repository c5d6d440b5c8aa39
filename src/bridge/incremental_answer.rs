//! Answering a legacy poll of an incremental route from the feed's record
//! of its channel: the items after the client's own cursor, in the
//! backend's wrapper, with `304` and `hold` as for snapshots; a first poll
//! or an unknown cursor goes to the backend unchanged.

use std::sync::Arc;

use super::answer::{counted_not_modified, CopyBody};
use super::identity::{client_cursor, ClientCursor, FeedIdentity};
use super::incremental::Answer;
use super::{
    answer_with_body, client_has, forwarded_headers, held_until, pass_through, record_poll,
    Bridges, Route, FIRST_ANSWER_WAIT,
};
use crate::gateway::Gateway;
use crate::http::{Request, Response};
use crate::protocol::error::ApiError;

/// Answers a legacy poll of an incremental route.
pub async fn handle(
    gw: &Arc<Gateway>,
    bridges: &Bridges,
    index: usize,
    identity: FeedIdentity,
    req: Request,
    peer: std::net::SocketAddr,
    secure: bool,
) -> Result<Response, ApiError> {
    let route = &bridges.routes[index];
    // Kept for the answer's coding (the request may go on to the backend).
    let request_headers = req.headers().clone();
    let forwarded = forwarded_headers(route, req.headers());
    // Every poll keeps the feed alive (and starts it), even one the
    // backend answers: the page's next poll will carry a cursor.
    let Some(feed) = bridges.incremental_feed(gw, index, identity, forwarded)? else {
        route.variants.count_refused();
        return pass_through(gw, route, req, peer, secure).await;
    };
    feed.demand.touch();
    record_poll(gw, route, &feed.channel, &req, peer);
    let ClientCursor::One(cursor) = client_cursor(req.uri().query(), &route.config.cursor_param)
    else {
        return pass_through(gw, route, req, peer, secure).await;
    };

    let mut watch = feed.version.subscribe();
    if !feed.resolved() {
        let wait = watch.wait_for(|_| feed.resolved());
        let _ = tokio::time::timeout(FIRST_ANSWER_WAIT, wait).await;
    }
    let Some(answer) = feed.answer_after(&cursor) else {
        return pass_through(gw, route, req, peer, secure).await;
    };
    if !client_has(req.headers(), &answer.etag) {
        route.client_body.inc();
        return Ok(respond(gw, route, &request_headers, answer));
    }
    // The client has this answer: hold the poll (if the route holds) until
    // a new item comes.
    let seen = answer.last_bus_id;
    let newer = watch.wait_for(|_| feed.last_bus_id() != seen);
    let changed = held_until(gw, route.config.hold, newer).await;
    drop(watch);
    if !changed {
        return Ok(counted_not_modified(
            gw,
            route,
            &request_headers,
            &answer.etag,
            answer.body.len(),
        ));
    }
    match feed.answer_after(&cursor) {
        Some(newer) => {
            route.client_held.inc();
            Ok(respond(gw, route, &request_headers, newer))
        }
        // The cursor left the record while the poll was held.
        None => pass_through(gw, route, req, peer, secure).await,
    }
}

/// An incremental answer depends on the client's cursor: compressed per
/// answer.
fn respond(gw: &Gateway, route: &Route, request: &http::HeaderMap, answer: Answer) -> Response {
    let held = route.config.hold.is_some();
    let body = CopyBody {
        body: answer.body,
        shared: None,
        content_type: answer.content_type,
        etag: answer.etag,
    };
    answer_with_body(gw, request, body, held)
}
