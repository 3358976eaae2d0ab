//! The admin HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/status`, and the
//! token-protected `POST /admin/drill`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::app::Ctx;

pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>, cancel: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/admin/drill", post(drill))
        .with_state(ctx.clone());
    let admin = &ctx.cfg.raw.admin;
    let listener = Limited {
        listener,
        permits: Arc::new(Semaphore::new(admin.max_connections as usize)),
        idle: admin.idle_timeout.0,
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await {
        tracing::error!(error = %e, "admin endpoint failed");
    }
}

/// The admin listener with its limits (`[admin] max_connections`, `idle_timeout`): a
/// connection is accepted only with a permit, and closed when it sends nothing for the
/// idle timeout (axum's server has no header-read timeout of its own), so slow or stalled
/// HTTP clients cannot hold sockets and file descriptors.
struct Limited {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    idle: Duration,
}

impl axum::serve::Listener for Limited {
    type Io = IdleClosing;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self.permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    let deadline = Box::pin(tokio::time::sleep(self.idle));
                    return (IdleClosing { stream, _permit: permit, idle: self.idle, deadline }, addr);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// An admin connection: reads fail with `TimedOut` once nothing came for the idle time.
struct IdleClosing {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl AsyncRead for IdleClosing {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    // A deadline past what the clock counts: keep the one set (as far).
                    if let Some(next) = Instant::now().checked_add(self.idle) {
                        self.deadline.as_mut().reset(next);
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "admin connection idle past admin.idle_timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for IdleClosing {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
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
    let dbs = ctx.upstream.connector.databases.known();
    Json(json!({
        "state": h.state().as_str(),
        "state_seconds": h.in_state_for().as_secs_f64(),
        "drill": h.drill_active(),
        "upstream": {
            "address": ctx.cfg.upstream.redacted(),
            "latency_seconds": h.latency().as_secs_f64(),
            "last_error": last_error,
            "databases": {
                "known": dbs.0,
                "from": if dbs.1 { "config" } else { "select" },
            },
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

/// The credentials of an `Authorization: Bearer <token>` header value (the scheme name is
/// case-insensitive, RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// `{"state":"down"}` forces outage mode; `{"state":"auto"}` ends it. Needs the admin token.
async fn drill(State(ctx): State<Arc<Ctx>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    // Read per request: `admin.token` reloads live.
    let live = ctx.live.load_full();
    let token = &live.admin_token;
    if token.is_empty() {
        return (StatusCode::FORBIDDEN, "drills are disabled: set [admin] token\n").into_response();
    }
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
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

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
        assert_eq!(bearer("Bearer t0k"), Some("t0k"));
        assert_eq!(bearer("bearer t0k"), Some("t0k"));
        assert_eq!(bearer("BEARER t0k"), Some("t0k"));
        assert_eq!(bearer("Bearer  t0k"), Some(" t0k"), "extra spaces are part of the token, which then differs");
        assert_eq!(bearer("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer("Bearert0k"), None);
        assert_eq!(bearer("t0k"), None);
    }
}
