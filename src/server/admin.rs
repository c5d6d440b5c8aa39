//! The admin listener: metrics, health, readiness, channel stats and
//! publishing. Keep it off the public internet.

use std::sync::Arc;

use http::{Method, StatusCode};

use super::App;
use crate::bus::Bus;
use crate::http::{self as h, Request, Response};
use crate::protocol::error::ApiError;
use crate::publish;

pub async fn route(app: Arc<App>, req: Request) -> Response {
    if let Err(e) = app.admin_guard.check(&req) {
        tracing::debug!(error = %e, "admin request refused");
        return h::error(&e);
    }
    let path = req.uri().path().to_string();
    let result = match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => {
            let (content_type, body) = app.metrics.render();
            let mut resp = h::json(StatusCode::OK, body);
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                content_type.parse().expect("valid content type"),
            );
            Ok(resp)
        }
        (&Method::GET, "/") => Ok(super::assets::ADMIN_HTML.serve(req.headers())),
        (&Method::GET, "/stats") => {
            let mut report = serde_json::to_value(app.stats.report()).expect("stats serialise");
            let mut migration = app.migration.report();
            let counts = |pairs: Vec<(&str, u64)>| {
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), serde_json::Value::from(v)))
                    .collect::<serde_json::Map<_, _>>()
            };
            migration["fallbacks_by_reason"] = counts(app.metrics.fallback_counts()).into();
            migration["upgrade_failures_by_reason"] =
                counts(app.metrics.upgrade_failure_counts()).into();
            report["migration"] = migration;
            Ok(h::json_value(StatusCode::OK, &report))
        }
        (&Method::POST, "/disconnect") => {
            let sessions = app.metrics.transport(crate::protocol::Transport::WebSocket).connections.get()
                + app.metrics.transport(crate::protocol::Transport::Sse).connections.get();
            app.disconnect_all();
            tracing::info!(sessions, "operator disconnected every WebSocket and SSE session");
            Ok(h::json_value(StatusCode::OK, &serde_json::json!({"disconnected": sessions})))
        }
        (&Method::GET, "/healthz") => Ok(h::json(StatusCode::OK, &b"{\"status\":\"ok\"}"[..])),
        (&Method::GET, "/readyz") => Ok(if app.bus.is_ready() && !app.shutdown.is_cancelled() {
            h::json(StatusCode::OK, &b"{\"status\":\"ready\"}"[..])
        } else {
            h::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &b"{\"status\":\"not ready\"}"[..],
            )
        }),
        (&Method::GET, "/channels") => super::channel_list::page(&app, req.uri().query()),
        (_, "/publish") => publish::batch(&app.gw, req).await,
        (_, p) if p.starts_with("/publish/") => {
            let channel = h::decode_segment(&p["/publish/".len()..]);
            publish::single(&app.gw, req, &channel).await
        }
        _ => Err(ApiError::NotFound(format!(
            "no admin endpoint {path}; see /, /stats, /metrics, /healthz, /readyz, /channels, /publish, /disconnect"
        ))),
    };
    result.unwrap_or_else(|e| h::error(&e))
}
