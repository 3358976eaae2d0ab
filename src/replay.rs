//! The replayer: drains the journal to the upstream, exactly once.
//!
//! Records are sent in `MULTI … EXEC` transactions that also set the watermark key
//! `respite:replay:<instance-id>` (database 0) to the last sequence number of the batch.
//! The upstream applies the commands and the watermark atomically, so after any broken
//! connection the replayer reads the watermark and skips what was already applied.
//! Each transaction first `WATCH`es the watermark and checks it still holds what this
//! replayer last confirmed: a transaction from a connection the replayer gave up on (a
//! timeout while the upstream was stalled or still reading a large batch) may still
//! reach the upstream later, and then one of the two aborts instead of both applying.
//! A transaction holds records of one database, selected before `MULTI`, so a database
//! the upstream refuses never sends records into another one.
//! Nothing is applied twice, nothing is skipped unless the upstream says it can never
//! apply (an unknown command, a database that does not exist): a refusal that can pass
//! (`-OOM`, `-READONLY`, `-MISCONF`, `-NOPERM`, `-LOADING`, …) keeps the records and
//! retries. Commands are replayed, not values: `INCR` adds to whatever the upstream holds
//! at replay time. When the journal is empty (checked under the outage lock, so no write
//! can slip in behind it), the state goes `replaying` → `healthy` and direct forwarding
//! resumes.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::error::UpstreamError;
use crate::health::{Health, State};
use crate::journal::Record;
use crate::metrics::Metrics;
use crate::outage::Outage;
use crate::resp::{parse_int, ReplyScanner};
use crate::upstream::{encode_command, encode_one, Connector, UpstreamStream};

/// Watermark keys expire after a week: long after any replay that could need them.
const WATERMARK_TTL_SECS: &str = "604800";

pub struct Replayer {
    pub outage: Arc<Outage>,
    pub connector: Arc<Connector>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// Commands per transaction.
    pub batch: usize,
    /// The live settings: the longest wait for one transaction's replies follows
    /// `upstream.command_timeout` (at least [`MIN_TIMEOUT`]), read per transaction.
    pub live: Arc<crate::reload::Live>,
}

/// A replay transaction may carry `journal.replay_batch` commands: never less than this.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(5);

/// While the upstream keeps refusing the replay with the same error, it is logged again
/// after this long (each refusal is counted in `respite_journal_replay_errors_total`).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// The watermark key of a journal.
pub fn watermark_key(instance_id: &str) -> String {
    format!("respite:replay:{instance_id}")
}

impl Replayer {
    fn timeout(&self) -> Duration {
        self.live.load().command_timeout.max(MIN_TIMEOUT)
    }

    /// Runs until cancelled: whenever the state is `replaying`, drains the journal.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // While the upstream keeps refusing the replay (out of memory for hours, say), the
        // retries each second are not logged again: the refusal last logged, and when.
        let mut refused: Option<(String, tokio::time::Instant)> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => return,
            }
            if self.health.state() != State::Replaying {
                refused = None;
                continue;
            }
            let stats = self.outage.journal.stats();
            if refused.is_none() {
                tracing::info!(journal.entries = stats.entries, journal.bytes = stats.bytes, "replay started");
            }
            let started = tokio::time::Instant::now();
            let before = self.metrics.journal_replayed.get();
            let result = self.drain(&cancel).await;
            if !matches!(result, Err(ReplayError::Refused(_))) {
                refused = None;
            }
            match result {
                Ok(true) => tracing::info!(
                    replayed = self.metrics.journal_replayed.get() - before,
                    seconds = started.elapsed().as_secs_f64(),
                    "replay finished; forwarding directly again"
                ),
                Ok(false) => {}
                Err(ReplayError::Upstream(e)) => {
                    tracing::warn!(error = %e, replayed = self.metrics.journal_replayed.get() - before, "replay interrupted");
                    self.health.record_failure(&format!("replay: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(ReplayError::Refused(e)) => {
                    // The upstream answers but will not take the writes now (full memory, a
                    // replica, a failing disk): they stay in the journal until it does.
                    // Logged when it starts or changes, and at most once a minute while it
                    // lasts; every refusal is counted.
                    let now = tokio::time::Instant::now();
                    let repeated = refused
                        .as_ref()
                        .is_some_and(|(last, at)| *last == e && now.duration_since(*at) < REFUSAL_LOG_EVERY);
                    if !repeated {
                        tracing::warn!(
                            error = %e,
                            journal.entries = stats.entries,
                            replayed = self.metrics.journal_replayed.get() - before,
                            "replay refused by the upstream for now; the journal keeps the writes and retries every second"
                        );
                        refused = Some((e, now));
                    }
                    self.metrics.journal_replay_errors.inc();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Drains the journal; `Ok(true)` when it emptied and outage mode ended.
    pub async fn drain(&self, cancel: &CancellationToken) -> Result<bool, ReplayError> {
        let journal = &self.outage.journal;
        let key = watermark_key(journal.instance_id());
        let mut conn = Conn::open(&self.connector, self.timeout()).await?;
        let watermark = conn.watermark(&key).await?;
        // Records the upstream already applied (a lost EXEC reply) count as replayed.
        let mut done = self.confirm(0, watermark);
        loop {
            if cancel.is_cancelled() || self.health.state() != State::Replaying {
                return Ok(false);
            }
            let records = journal.read_after(done, self.batch, 8 << 20);
            if records.is_empty() {
                let mut pending = self.outage.lock();
                if journal.stats().entries == 0 {
                    pending.clear();
                    self.health.replay_finished();
                    return Ok(true);
                }
                continue;
            }
            // One database per transaction: the run of records that share the first's.
            let db = records[0].db;
            let run = records.iter().take_while(|r| r.db == db).count();
            conn.timeout = self.timeout();
            let applied = self.apply(&mut conn, &key, &records[..run], done).await?;
            done = self.confirm(done, applied);
        }
    }

    /// Confirms the records up to `seq` (counting them as replayed); returns the new mark.
    fn confirm(&self, done: u64, seq: u64) -> u64 {
        let journal = &self.outage.journal;
        let before = journal.stats().entries;
        journal.confirm(seq);
        self.metrics.journal_replayed.inc_by(before.saturating_sub(journal.stats().entries));
        done.max(seq)
    }

    /// Applies records of one database in one transaction (record by record if the
    /// upstream refuses the transaction); returns the watermark now confirmed.
    async fn apply(&self, conn: &mut Conn, key: &str, records: &[Record], done: u64) -> Result<u64, ReplayError> {
        let last = records.last().expect("non-empty").seq;
        match conn.transaction(key, records, done, true).await? {
            Tx::Applied { errors } => {
                if errors > 0 {
                    tracing::warn!(errors, "replayed commands answered with errors by the upstream");
                    self.metrics.journal_replay_errors.inc_by(errors);
                }
                Ok(last)
            }
            // Another connection of this replayer (one it gave up on) applied records, or
            // its transaction aborted this one: continue from the upstream's watermark.
            Tx::Moved(watermark) => Ok(watermark),
            Tx::Refused(e) if !never_applies(&e) => Err(ReplayError::Refused(e)),
            Tx::Refused(e) if records.len() > 1 => {
                tracing::warn!(error = %e, "replay transaction refused; replaying its records one by one");
                let mut done = done;
                for r in records {
                    done = done.max(Box::pin(self.apply(conn, key, std::slice::from_ref(r), done)).await?);
                }
                Ok(done)
            }
            Tx::Refused(e) => {
                // The upstream refuses this record outright (a command it does not know, a
                // database it does not have): it can never apply. Count it, log it, and
                // move the watermark past it.
                tracing::error!(journal.seq = last, error = %e, "replay: record refused by the upstream; skipped");
                self.metrics.journal_replay_errors.inc_by(records.len() as u64);
                match conn.transaction(key, records, done, false).await? {
                    Tx::Applied { .. } => Ok(last),
                    Tx::Moved(watermark) => Ok(watermark),
                    Tx::Refused(e) => Err(ReplayError::Refused(e)),
                }
            }
        }
    }
}

/// Why a drain stopped before the journal emptied.
#[derive(Debug)]
pub enum ReplayError {
    /// The upstream could not be reached or did not answer.
    Upstream(UpstreamError),
    /// The upstream refused the writes for a reason that can pass (`-OOM`, `-READONLY`, …).
    Refused(String),
}

impl From<UpstreamError> for ReplayError {
    fn from(e: UpstreamError) -> ReplayError {
        ReplayError::Upstream(e)
    }
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Upstream(e) => e.fmt(f),
            ReplayError::Refused(e) => write!(f, "refused by the upstream: {e}"),
        }
    }
}

/// Whether an error the upstream gave a queued command (or a SELECT) means it can never
/// apply, rather than "not now" (`-OOM`, `-READONLY`, `-MISCONF`, `-NOPERM`, `-LOADING`,
/// `-BUSY`, `-MASTERDOWN`, `-NOREPLICAS`: the records wait for the upstream to recover).
fn never_applies(error: &str) -> bool {
    let e = error.trim_start_matches('-').to_ascii_lowercase();
    e.starts_with("err unknown command")
        || e.starts_with("err unknown subcommand")
        || e.starts_with("err wrong number of arguments")
        || e.starts_with("err db index is out of range")
        || e.starts_with("err invalid db index")
}

/// An upstream error reply as text that may be logged: without what Redis quotes of the
/// command's arguments (`ERR unknown command 'APPEND', with args beginning with: 'key'
/// 'value'`), which would put keys and values in the logs.
fn loggable(reply: &[u8]) -> String {
    let text = String::from_utf8_lossy(reply);
    let text = text.trim_end();
    match text.find(", with args beginning with:") {
        Some(at) => format!("{}, with args beginning with: (not shown)", &text[..at]),
        None => text.to_string(),
    }
}

/// What one replay transaction did.
#[derive(Debug)]
enum Tx {
    /// Applied, with this many error replies among the records' commands (errors at run
    /// time, such as WRONGTYPE, are the commands' own results, as they would have been).
    Applied { errors: u64 },
    /// Not applied: the watermark is no longer what this replayer confirmed (an earlier
    /// connection's transaction applied after all), or such a transaction touched it
    /// between `WATCH` and `EXEC`. Continue from this watermark.
    Moved(u64),
    /// Not applied: the upstream refused a command (or the database) when queued.
    Refused(String),
}

/// The replayer's own upstream connection.
struct Conn {
    stream: UpstreamStream,
    buf: BytesMut,
    timeout: Duration,
    /// The database the connection is in (the URL's, then whatever was selected).
    db: u32,
    /// The watermark value this connection `WATCH`es, when it does: set by the `WATCH`
    /// sent right after a transaction that applied (so the next one needs no round trip
    /// to watch and read it). No other transaction can move the key in between: one
    /// from an abandoned connection watched it before this connection's last `EXEC`
    /// changed it, so it aborts.
    watched: Option<u64>,
}

impl Conn {
    async fn open(connector: &Connector, timeout: Duration) -> Result<Conn, UpstreamError> {
        let stream = connector.connect().await?;
        Ok(Conn { stream, buf: BytesMut::with_capacity(64 << 10), timeout, db: connector.url().db, watched: None })
    }

    async fn watermark(&mut self, key: &str) -> Result<u64, UpstreamError> {
        let mut req = BytesMut::new();
        encode_command(&mut req, &[b"SELECT", b"0"]);
        encode_command(&mut req, &[b"GET", key.as_bytes()]);
        let replies = self.round(&req, 2).await?;
        self.db = 0;
        parse_watermark(&replies[1])
    }

    /// `WATCH`es the watermark and reads it: `Some(w)` when it is ahead of `done` (the
    /// transaction must not run; the connection is left unwatched).
    async fn watch(&mut self, key: &str, done: u64) -> Result<Option<u64>, UpstreamError> {
        let mut req = BytesMut::new();
        if self.db != 0 {
            encode_command(&mut req, &[b"SELECT", b"0"]);
        }
        encode_command(&mut req, &[b"WATCH", key.as_bytes()]);
        encode_command(&mut req, &[b"GET", key.as_bytes()]);
        let n = if self.db != 0 { 3 } else { 2 };
        let replies = self.round(&req, n).await?;
        self.db = 0;
        for r in &replies[..n - 1] {
            if !r.starts_with(b"+OK") {
                return Err(UpstreamError::Protocol(format!(
                    "watching the replay watermark: {}",
                    String::from_utf8_lossy(r).trim_end()
                )));
            }
        }
        let watermark = parse_watermark(&replies[n - 1])?;
        if watermark > done {
            self.round(&encode_one(&[b"UNWATCH"]), 1).await?;
            return Ok(Some(watermark));
        }
        Ok(None)
    }

    /// `WATCH` of the watermark (still at `done`), `SELECT` of the records' database, then
    /// `MULTI`, the records (or, with `payloads` false, none of them: a skip), the
    /// watermark, `EXEC`.
    async fn transaction(
        &mut self,
        key: &str,
        records: &[Record],
        done: u64,
        payloads: bool,
    ) -> Result<Tx, UpstreamError> {
        let Some(last) = records.last().map(|r| r.seq) else { return Ok(Tx::Applied { errors: 0 }) };
        if self.watched.take() != Some(done) {
            if let Some(watermark) = self.watch(key, done).await? {
                return Ok(Tx::Moved(watermark));
            }
        }
        let db = if payloads { records[0].db } else { 0 };
        debug_assert!(records.iter().all(|r| r.db == records[0].db), "one database per transaction");
        if db != self.db {
            let d = db.to_string();
            let reply = self.round(&encode_one(&[b"SELECT", d.as_bytes()]), 1).await?;
            if reply[0].first() == Some(&b'-') {
                self.round(&encode_one(&[b"UNWATCH"]), 1).await?;
                return Ok(Tx::Refused(loggable(&reply[0])));
            }
            self.db = db;
        }
        let mut req = BytesMut::new();
        encode_command(&mut req, &[b"MULTI"]);
        let mut queued = 0usize;
        if payloads {
            for r in records {
                req.extend_from_slice(&r.payload);
                queued += r.commands as usize;
            }
        }
        let records_queued = queued;
        if db != 0 {
            encode_command(&mut req, &[b"SELECT", b"0"]);
            queued += 1;
        }
        let seq = last.to_string();
        encode_command(&mut req, &[b"SET", key.as_bytes(), seq.as_bytes(), b"EX", WATERMARK_TTL_SECS.as_bytes()]);
        queued += 1;
        encode_command(&mut req, &[b"EXEC"]);
        // Watches the watermark again for the next transaction (EXEC unwatches).
        encode_command(&mut req, &[b"WATCH", key.as_bytes()]);
        let mut replies = self.round(&req, queued + 3).await?;
        let watched = replies.pop().expect("counted").starts_with(b"+OK");
        if !replies[0].starts_with(b"+OK") {
            // Without MULTI the commands ran one by one, the watermark included: the next
            // transaction's WATCH reads how far they got. Replay needs transactions.
            return Err(UpstreamError::Protocol(format!(
                "the upstream refused MULTI: {}",
                String::from_utf8_lossy(&replies[0]).trim_end()
            )));
        }
        let exec = replies.last().expect("counted");
        if exec.first() == Some(&b'-') {
            // EXECABORT (a command refused when queued) or similar: nothing was applied,
            // and the connection's database is unchanged.
            let queue_error = replies[1..replies.len() - 1].iter().find(|r| r.first() == Some(&b'-'));
            return Ok(Tx::Refused(loggable(queue_error.unwrap_or(exec))));
        }
        if exec.starts_with(b"*-1") || exec.starts_with(b"_") {
            // The watermark changed after WATCH: an earlier connection's transaction ran.
            // Nothing of this one was applied (the database is unchanged too).
            let watermark = self.watermark(key).await?;
            return Ok(Tx::Moved(watermark.max(done)));
        }
        self.db = 0;
        if watched {
            self.watched = Some(last);
        }
        // Count error replies inside the EXEC array that belong to records.
        let mut errors = 0;
        let mut pos = exec.iter().position(|&b| b == b'\n').map_or(exec.len(), |p| p + 1);
        let mut scanner = ReplyScanner::default();
        for _ in 0..records_queued {
            let Ok(Some(info)) = scanner.next(&exec[pos..]) else { break };
            if info.is_error() {
                errors += 1;
            }
            pos += info.len;
        }
        Ok(Tx::Applied { errors })
    }

    /// Writes a request and reads `n` replies within the timeout.
    async fn round(&mut self, req: &[u8], n: usize) -> Result<Vec<Bytes>, UpstreamError> {
        let work = async {
            self.stream
                .write_all(req)
                .await
                .map_err(|e| UpstreamError::Broken { reason: e.to_string(), sent: true })?;
            let mut out = Vec::with_capacity(n);
            let mut scanner = ReplyScanner::default();
            while out.len() < n {
                match scanner.next(&self.buf).map_err(|e| UpstreamError::Protocol(e.to_string()))? {
                    Some(info) => out.push(self.buf.split_to(info.len).freeze()),
                    None => {
                        let read = self.stream.read_buf(&mut self.buf).await;
                        match read {
                            Ok(0) => {
                                return Err(UpstreamError::Broken {
                                    reason: "closed by the upstream".into(),
                                    sent: true,
                                })
                            }
                            Ok(_) => {}
                            Err(e) => return Err(UpstreamError::Broken { reason: e.to_string(), sent: true }),
                        }
                    }
                }
            }
            Ok(out)
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
        }
    }
}

/// The watermark from a `GET` reply (nil: 0, nothing replayed yet).
fn parse_watermark(reply: &[u8]) -> Result<u64, UpstreamError> {
    match reply.first() {
        Some(b'$') if reply.starts_with(b"$-1") => Ok(0),
        Some(b'$') => {
            let body = &reply[reply.iter().position(|&b| b == b'\n').map_or(0, |p| p + 1)..];
            let digits = &body[..body.len().saturating_sub(2)];
            parse_int(digits)
                .map(|v| v.max(0) as u64)
                .ok_or_else(|| UpstreamError::Protocol("watermark is not a number".into()))
        }
        _ => Err(UpstreamError::Protocol(format!(
            "reading the replay watermark: {}",
            String::from_utf8_lossy(reply).trim_end()
        ))),
    }
}
