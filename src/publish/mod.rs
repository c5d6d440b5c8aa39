//! Publishing over HTTP: `POST /publish/{channel}` and the batch
//! `POST /publish`, on the admin listener (and on the public one with a
//! publisher key).

use std::sync::Arc;

use http::header;
use http::StatusCode;
use serde::Deserialize;

use crate::bus::Bus;

use crate::gateway::Gateway;
use crate::http::{json_value, read_body, Request, Response};
use crate::protocol::channel::ChannelName;
use crate::protocol::error::ApiError;
use crate::protocol::{Payload, PayloadError};

/// How many times a single message's limit a batch body may be.
const BATCH_FACTOR: usize = 64;

fn is_json(req: &Request) -> bool {
    crate::http::is_json_content_type(req.headers().get(header::CONTENT_TYPE))
}

fn payload_error(e: PayloadError) -> ApiError {
    match e {
        PayloadError::BadJson(m) => ApiError::BadJson(m),
        PayloadError::NotUtf8 => ApiError::BadRequest(
            "a non-JSON body is delivered as a string and must be UTF-8 text".into(),
        ),
    }
}

/// `POST /publish/{channel}`: the body is the payload.
pub async fn single(gw: &Arc<Gateway>, req: Request, channel: &str) -> Result<Response, ApiError> {
    if req.method() != http::Method::POST {
        return Err(ApiError::MethodNotAllowed("POST"));
    }
    let channel = ChannelName::new(channel)?;
    let json = is_json(&req);
    let limits = &gw.config.limits;
    let body = read_body(
        req.into_body(),
        limits.max_message_bytes,
        limits.body_read_timeout,
    )
    .await?;
    let payload = if json {
        Payload::json(&body)
    } else {
        Payload::text(&body)
    }
    .map_err(payload_error)?;
    let published = gw.bus.publish(&channel, &payload).await?;
    Ok(json_value(
        StatusCode::OK,
        &serde_json::json!({"channel": channel.as_str(), "id": published.id}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    channel: String,
    /// Kept as sent: checked by [`Payload::json`] like a single publish.
    data: Box<serde_json::value::RawValue>,
}

/// `POST /publish` with `[{"channel":…,"data":…},…]`: every item is checked
/// before any is published.
pub async fn batch(gw: &Arc<Gateway>, req: Request) -> Result<Response, ApiError> {
    if req.method() != http::Method::POST {
        return Err(ApiError::MethodNotAllowed("POST"));
    }
    let limits = &gw.config.limits;
    let body = read_body(
        req.into_body(),
        limits.max_message_bytes.saturating_mul(BATCH_FACTOR),
        limits.body_read_timeout,
    )
    .await?;
    let items: Vec<BatchItem> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadJson(format!(
            "expected [{{\"channel\":\"…\",\"data\":…}},…]: {e}"
        ))
    })?;
    let mut checked = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let channel = ChannelName::new(&item.channel).map_err(|e| {
            tracing::debug!(item = i, "batch publish refused: {e}");
            ApiError::BadChannel(e)
        })?;
        let payload = Payload::json(item.data.get().as_bytes()).map_err(|e| {
            tracing::debug!(item = i, "batch publish refused: {e}");
            match payload_error(e) {
                ApiError::BadJson(why) => ApiError::BadJson(format!("item {i}: {why}")),
                other => other,
            }
        })?;
        if payload.to_json_bytes().len() > limits.max_message_bytes {
            return Err(ApiError::TooLarge {
                limit: limits.max_message_bytes,
            });
        }
        checked.push((channel, payload));
    }
    // Runs of one channel are published together: one write per
    // subscriber for the whole run.
    let mut results = Vec::with_capacity(checked.len());
    for run in checked.chunk_by(|a, b| a.0 == b.0) {
        let channel = &run[0].0;
        let payloads: Vec<Payload> = run.iter().map(|(_, p)| p.clone()).collect();
        for published in gw.bus.publish_many(channel, &payloads).await? {
            results.push(serde_json::json!({"channel": channel.as_str(), "id": published.id}));
        }
    }
    Ok(json_value(StatusCode::OK, &results))
}
