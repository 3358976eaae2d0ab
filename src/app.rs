//! Wiring: builds the shared context (config, live settings, metrics, health, upstream,
//! journal) and runs the client listener, the admin endpoint, the probe, the replayer and
//! the configuration reloader until shutdown, then drains: client sessions first, then
//! (while the upstream is reachable) the journal, both within the grace period; last, the
//! journal is closed (fsynced) so whatever was not replayed waits in the durable journal for
//! the next start.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Validated;
use crate::health::{Health, State};
use crate::journal::{DiskJournal, Journal, JournalError, MemJournal};
use crate::metrics::Metrics;
use crate::outage::{Outage, Settings};
use crate::reload::{Live, LiveSettings, Reloads};
use crate::replay::Replayer;
use crate::store::{now_ms, Store};
use crate::upstream::{self, Connector, Upstream};
use crate::{admin, server};

/// What every session and endpoint shares.
pub struct Ctx {
    /// Who may connect (`[client] requirepass`, `[[client.users]]`).
    pub auth: crate::auth::Auth,
    /// The configuration the process started with. What a reload may change is read from
    /// `live` (and `[health]` from `health`) instead.
    pub cfg: Validated,
    /// The settings a configuration reload changes at run time (see [`crate::reload`]).
    pub live: Arc<Live>,
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

/// Why respite could not start (after the configuration was valid).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the durable journal: {0}")]
    Journal(String),
}

/// The journal `[journal]` asks for: durable in `dir` when set, else in memory with a random
/// per-process instance id.
pub fn open_journal(cfg: &Validated) -> Result<Arc<dyn Journal>, StartError> {
    let j = &cfg.raw.journal;
    let Some(dir) = &j.dir else {
        return Ok(Arc::new(MemJournal::new(j.max_entries, j.max_bytes.0, format!("{:016x}", fastrand::u64(..)))));
    };
    match DiskJournal::open(dir, j.fsync, j.max_entries, j.max_bytes.0, j.segment_bytes.0) {
        Ok(d) => Ok(Arc::new(d)),
        Err(JournalError::Io(reason)) => Err(StartError::Journal(reason)),
        Err(e) => Err(StartError::Journal(format!("{}: {e}", dir.display()))),
    }
}

/// Runs respite on already-bound listeners until `shutdown` completes, then drains client
/// sessions (and, while the upstream is reachable, the journal) for at most
/// `shutdown.grace_period`. Tests bind port 0 and pass their own shutdown future; the
/// binary passes SIGTERM/SIGINT. Fails before serving anything when the journal cannot be
/// opened. The configuration is never reloaded: see [`run_with_reloads`].
pub async fn run(
    cfg: Validated,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    run_with_reloads(cfg, listener, admin, shutdown, Reloads::none()).await
}

/// [`run`], and reloads the configuration whenever `reloads` delivers one (the binary: on
/// SIGHUP).
pub async fn run_with_reloads(
    cfg: Validated,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
    reloads: Reloads,
) -> Result<(), StartError> {
    let journal = open_journal(&cfg)?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(cfg.raw.health.clone(), metrics.clone()));
    if journal.stats().entries > 0 {
        // Records from before the restart go first: nothing is forwarded until they are
        // replayed (the probe moves the state to down while the upstream is unreachable).
        health.start_replay();
    }
    let tracker = TaskTracker::new();
    let background = CancellationToken::new();
    let live = Arc::new(Live::new(LiveSettings::from_config(&cfg.raw)));
    let connector = Arc::new(Connector::new(cfg.upstream.clone(), &cfg.raw.upstream, metrics.clone()));
    let upstream = Upstream::start(
        connector.clone(),
        cfg.raw.upstream.pool_size,
        live.clone(),
        health.clone(),
        metrics.clone(),
        &tracker,
        &background,
    );
    let store = Store::new(cfg.raw.store.max_bytes.0, cfg.raw.store.max_staleness.0, metrics.clone());
    let settings = Settings::from_config(&cfg.raw);
    let outage = Arc::new(Outage::new(store, journal, settings, metrics.clone(), health.clone()));
    let restored = outage.restore();
    if restored > 0 {
        tracing::info!(records = restored, "journal records from before the restart applied to the local store");
    }
    let o = outage.clone();
    metrics.set_refresh(move |m| {
        let s = o.journal.stats();
        m.journal_entries.set(s.entries as i64);
        m.journal_bytes.set(s.bytes as i64);
        m.journal_oldest_age.set(s.oldest_ms.map_or(0.0, |t| now_ms().saturating_sub(t) as f64 / 1000.0));
        // Counters kept by the journal itself, brought up to date at each scrape.
        m.journal_fsyncs.inc_by(s.fsyncs.saturating_sub(m.journal_fsyncs.get()));
        m.journal_fsync_seconds.inc_by((s.fsync_seconds - m.journal_fsync_seconds.get()).max(0.0));
        m.journal_failed.set(s.failed as i64);
        m.store_entries.set(o.store.entries() as i64);
        m.store_bytes.set(o.store.bytes() as i64);
    });
    let replayer = Replayer {
        outage: outage.clone(),
        connector: connector.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
        batch: cfg.raw.journal.replay_batch,
        live: live.clone(),
    };
    tracker.spawn(replayer.run(background.clone()));
    let auth = crate::auth::Auth::from_config(&cfg.raw.client).unwrap_or_default();
    let ctx = Arc::new(Ctx {
        auth,
        outage,
        live,
        metrics,
        health: health.clone(),
        upstream,
        shutdown: CancellationToken::new(),
        ready: AtomicBool::new(false),
        started: Instant::now(),
        cfg,
    });
    tracker.spawn(upstream::probe(connector, health, background.clone()));
    // The client listener is bound (connections queue in its backlog and are accepted by the
    // loop below): ready before the admin endpoint can first be asked.
    ctx.ready.store(true, Ordering::Release);
    tracker.spawn(admin::serve(admin, ctx.clone(), background.clone()));
    tracker.spawn(crate::reload::serve(reloads, ctx.clone(), background.clone()));
    tracing::info!(
        client.listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin.listen = %ctx.cfg.admin_listen,
        upstream = %ctx.cfg.upstream.redacted(),
        version = env!("CARGO_PKG_VERSION"),
        "respite started"
    );
    let sessions = TaskTracker::new();
    tokio::select! {
        _ = server::accept_loop(listener, ctx.clone(), sessions.clone()) => {}
        _ = shutdown => {}
    }
    tracing::info!(clients = sessions.len(), "shutting down: no new clients, draining");
    ctx.shutdown.cancel();
    sessions.close();
    let grace = ctx.live.load().grace_period;
    // `None`: beyond what the clock counts, as good as never.
    let deadline = Instant::now().checked_add(grace);
    if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
        tracing::warn!(clients = sessions.len(), grace = %humantime::format_duration(grace), "grace period over; closing remaining clients");
    }
    let journal = ctx.outage.journal.clone();
    // The replayer keeps running while the grace period lasts and the upstream answers.
    while ctx.health.state() == State::Replaying
        && journal.stats().entries > 0
        && deadline.is_none_or(|d| Instant::now() < d)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    background.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
    let left = journal.stats().entries;
    match journal.close() {
        Ok(()) if left > 0 && journal.is_persistent() => {
            tracing::info!(journal.entries = left, "unreplayed writes stay in the durable journal for the next start")
        }
        Ok(()) if left > 0 => {
            tracing::warn!(journal.entries = left, "unreplayed writes are lost: the journal is in memory only")
        }
        Ok(()) => {}
        Err(e) => tracing::error!(error = %e, "closing the journal failed"),
    }
    tracing::info!("respite stopped");
    Ok(())
}

impl Ctx {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.shutdown.is_cancelled()
    }
}
