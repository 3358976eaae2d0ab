//! Wiring: builds the shared context (config, metrics, health, upstream) and runs the
//! client listener, the admin endpoint and the probe until shutdown, then drains.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Miss, Validated};
use crate::health::Health;
use crate::journal::{Journal, MemJournal};
use crate::metrics::Metrics;
use crate::outage::{Outage, Settings};
use crate::replay::Replayer;
use crate::resp::Limits;
use crate::store::{now_ms, Store};
use crate::upstream::{self, Connector, Upstream};
use crate::{admin, server};

/// What every session and endpoint shares.
pub struct Ctx {
    pub cfg: Validated,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub upstream: Upstream,
    pub outage: Arc<Outage>,
    /// Cancelled when shutdown starts: stop accepting, stop reading new requests.
    pub shutdown: CancellationToken,
    /// Set once the client listener accepts connections.
    pub ready: AtomicBool,
    pub started: Instant,
}

/// Runs respite on already-bound listeners until `shutdown` completes, then drains client
/// sessions for at most `shutdown.grace_period`. Tests bind port 0 and pass their own
/// shutdown future; the binary passes SIGTERM/SIGINT.
pub async fn run(cfg: Validated, listener: TcpListener, admin: TcpListener, shutdown: impl Future<Output = ()>) {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(cfg.raw.health.clone(), metrics.clone()));
    let tracker = TaskTracker::new();
    let background = CancellationToken::new();
    let connector = Arc::new(Connector::new(cfg.upstream.clone(), &cfg.raw.upstream, metrics.clone()));
    let upstream =
        Upstream::start(connector.clone(), &cfg.raw.upstream, health.clone(), metrics.clone(), &tracker, &background);
    let limits = Limits {
        max_bulk: cfg.raw.client.max_bulk_bytes.0.min(usize::MAX as u64) as usize,
        max_array: cfg.raw.client.max_array_len,
        ..Limits::default()
    };
    let journal: Arc<dyn Journal> = Arc::new(MemJournal::new(
        cfg.raw.journal.max_entries,
        cfg.raw.journal.max_bytes.0,
        format!("{:016x}", fastrand::u64(..)),
    ));
    let store = Store::new(cfg.raw.store.max_bytes.0, cfg.raw.store.max_staleness.0, metrics.clone());
    let settings =
        Settings { miss_nil: cfg.raw.store.miss == Miss::Nil, allow_conditional: cfg.raw.outage.allow_conditional };
    let outage = Arc::new(Outage::new(store, journal, settings, metrics.clone(), health.clone()));
    let o = outage.clone();
    metrics.set_refresh(move |m| {
        let s = o.journal.stats();
        m.journal_entries.set(s.entries as i64);
        m.journal_bytes.set(s.bytes as i64);
        m.journal_oldest_age.set(s.oldest_ms.map_or(0.0, |t| now_ms().saturating_sub(t) as f64 / 1000.0));
        m.store_entries.set(o.store.entries() as i64);
        m.store_bytes.set(o.store.bytes() as i64);
    });
    let replayer = Replayer {
        outage: outage.clone(),
        connector: connector.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
        batch: cfg.raw.journal.replay_batch,
        timeout: cfg.raw.upstream.command_timeout.0.max(std::time::Duration::from_secs(5)),
    };
    tracker.spawn(replayer.run(background.clone()));
    let ctx = Arc::new(Ctx {
        outage,
        limits,
        metrics,
        health: health.clone(),
        upstream,
        shutdown: CancellationToken::new(),
        ready: AtomicBool::new(false),
        started: Instant::now(),
        cfg,
    });
    let h = &ctx.cfg.raw.health;
    tracker.spawn(upstream::probe(connector, health, h.probe_interval.0, h.probe_timeout.0, background.clone()));
    tracker.spawn(admin::serve(admin, ctx.clone(), background.clone()));
    tracing::info!(
        client.listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin.listen = %ctx.cfg.admin_listen,
        upstream = %ctx.cfg.upstream.redacted(),
        version = env!("CARGO_PKG_VERSION"),
        "respite started"
    );
    let sessions = TaskTracker::new();
    ctx.ready.store(true, Ordering::Release);
    tokio::select! {
        _ = server::accept_loop(listener, ctx.clone(), sessions.clone()) => {}
        _ = shutdown => {}
    }
    tracing::info!(clients = sessions.len(), "shutting down: no new clients, draining");
    ctx.shutdown.cancel();
    sessions.close();
    let grace = ctx.cfg.raw.shutdown.grace_period.0;
    if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
        tracing::warn!(clients = sessions.len(), grace = %humantime::format_duration(grace), "grace period over; closing remaining clients");
    }
    background.cancel();
    tracker.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), tracker.wait()).await;
    tracing::info!("respite stopped");
}

impl Ctx {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.shutdown.is_cancelled()
    }
}
