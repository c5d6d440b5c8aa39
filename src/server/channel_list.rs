//! Admin `GET /channels?limit=N&after=NAME`: per-channel figures, one page
//! at a time, sorted by name. The answer's `next` is the `after` of the
//! following page (null on the last), so the listing costs a bounded
//! answer however many channels exist.

use http::StatusCode;

use crate::bus::Bus;
use crate::gateway::Gateway;
use crate::http::{self as h, query_pairs, Response};
use crate::protocol::error::ApiError;

/// Channels per page when `limit` is not given.
pub const DEFAULT_PAGE: usize = 100;
/// Most channels per page.
pub const MAX_PAGE: usize = 1000;

/// Answers one page: `{"channels":[…],"next":"name"|null,"total":N}`.
pub fn page(gw: &Gateway, query: Option<&str>) -> Result<Response, ApiError> {
    let mut limit = DEFAULT_PAGE;
    let mut after = None;
    for (key, value) in query_pairs(query) {
        match &*key {
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "`limit` must be a whole number from 1 to {MAX_PAGE}"
                        ))
                    })?
            }
            "after" => after = Some(value.into_owned()),
            _ => {}
        }
    }
    let hub = gw.bus.hub();
    // One more than asked: tells whether another page follows.
    let mut channels = hub.stats_page(after.as_deref(), limit + 1);
    let next = if channels.len() > limit {
        channels.truncate(limit);
        channels.last().map(|c| c.channel.clone())
    } else {
        None
    };
    Ok(h::json_value(
        StatusCode::OK,
        &serde_json::json!({
            "channels": channels,
            "next": next,
            "total": hub.channel_count(),
        }),
    ))
}
