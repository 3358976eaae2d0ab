//! The admin HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/status`, and the
//! token-protected `POST /admin/drill`.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::Ctx;

pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>, cancel: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/admin/drill", post(drill))
        .with_state(ctx);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await {
        tracing::error!(error = %e, "admin endpoint failed");
    }
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], ctx.metrics.render()).into_response()
}

/// Liveness: the process runs its event loop.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the client listener accepts connections — also while the upstream is down.
async fn readyz(State(ctx): State<Arc<Ctx>>) -> Response {
    if ctx.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn status(State(ctx): State<Arc<Ctx>>) -> Json<serde_json::Value> {
    let h = &ctx.health;
    let journal = ctx.outage.journal.stats();
    let last_error = h.last_error().map(|e| {
        json!({
            "message": e.message,
            "at": humantime::format_rfc3339_millis(e.at).to_string(),
            "at_unix_seconds": e.at.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        })
    });
    Json(json!({
        "state": h.state().as_str(),
        "state_seconds": h.in_state_for().as_secs_f64(),
        "drill": h.drill_active(),
        "upstream": {
            "address": ctx.cfg.upstream.redacted(),
            "latency_seconds": h.latency().as_secs_f64(),
            "last_error": last_error,
        },
        "clients": ctx.metrics.client_connections.get(),
        "store": {
            "entries": ctx.outage.store.entries(),
            "bytes": ctx.outage.store.bytes(),
        },
        "journal": {
            "entries": journal.entries,
            "bytes": journal.bytes,
            "oldest_age_seconds": journal.oldest_ms.map(|t| crate::store::now_ms().saturating_sub(t) as f64 / 1000.0),
            "durable": ctx.outage.journal.is_persistent(),
        },
        "replay": {
            "replayed_total": ctx.metrics.journal_replayed.get(),
            "errors_total": ctx.metrics.journal_replay_errors.get(),
            "remaining": journal.entries,
        },
        "uptime_seconds": ctx.started.elapsed().as_secs_f64(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

#[derive(Deserialize)]
struct DrillRequest {
    state: String,
}

/// `{"state":"down"}` forces outage mode; `{"state":"auto"}` ends it. Needs the admin token.
async fn drill(State(ctx): State<Arc<Ctx>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    // Read per request: `admin.token` reloads live.
    let live = ctx.live.load_full();
    let token = &live.admin_token;
    if token.is_empty() {
        return (StatusCode::FORBIDDEN, "drills are disabled: set [admin] token\n").into_response();
    }
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|g| crate::auth::constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response();
    }
    let Ok(req) = serde_json::from_slice::<DrillRequest>(&body) else {
        return (StatusCode::BAD_REQUEST, "body must be {\"state\":\"down\"} or {\"state\":\"auto\"}\n")
            .into_response();
    };
    match req.state.as_str() {
        "down" => ctx.health.set_drill(true),
        "auto" => ctx.health.set_drill(false),
        _ => return (StatusCode::BAD_REQUEST, "state must be \"down\" or \"auto\"\n").into_response(),
    }
    Json(json!({"state": ctx.health.state().as_str(), "drill": ctx.health.drill_active()})).into_response()
}
