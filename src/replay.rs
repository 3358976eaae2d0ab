//! The replayer: drains the journal to the upstream, exactly once.
//!
//! Records are sent in `MULTI … EXEC` transactions that also set the watermark key
//! `respite:replay:<instance-id>` (database 0) to the last sequence number of the batch.
//! The upstream applies the commands and the watermark atomically, so after any broken
//! connection the replayer reads the watermark and skips what was already applied:
//! nothing is applied twice, nothing is skipped. Commands are replayed, not values:
//! `INCR` adds to whatever the upstream holds at replay time. When the journal is empty
//! (checked under the outage lock, so no write can slip in behind it), the state goes
//! `replaying` → `healthy` and direct forwarding resumes.

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
use crate::upstream::{encode_command, Connector, UpstreamStream};

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
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => return,
            }
            if self.health.state() != State::Replaying {
                continue;
            }
            let stats = self.outage.journal.stats();
            tracing::info!(journal.entries = stats.entries, journal.bytes = stats.bytes, "replay started");
            let started = tokio::time::Instant::now();
            let before = self.metrics.journal_replayed.get();
            match self.drain(&cancel).await {
                Ok(true) => tracing::info!(
                    replayed = self.metrics.journal_replayed.get() - before,
                    seconds = started.elapsed().as_secs_f64(),
                    "replay finished; forwarding directly again"
                ),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, replayed = self.metrics.journal_replayed.get() - before, "replay interrupted");
                    self.health.record_failure(&format!("replay: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Drains the journal; `Ok(true)` when it emptied and outage mode ended.
    pub async fn drain(&self, cancel: &CancellationToken) -> Result<bool, UpstreamError> {
        let journal = &self.outage.journal;
        let key = watermark_key(journal.instance_id());
        let mut conn = Conn::open(&self.connector, self.timeout()).await?;
        let watermark = conn.watermark(&key).await?;
        // Records the upstream already applied (a lost EXEC reply) count as replayed.
        let before = journal.stats().entries;
        journal.confirm(watermark);
        self.metrics.journal_replayed.inc_by(before.saturating_sub(journal.stats().entries));
        let mut done = watermark;
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
            conn.timeout = self.timeout();
            done = self.apply(&mut conn, &key, &records).await?;
            journal.confirm(done);
        }
    }

    /// Applies records in one transaction (record by record if the upstream refuses the
    /// transaction); returns the last sequence number now confirmed.
    async fn apply(&self, conn: &mut Conn, key: &str, records: &[Record]) -> Result<u64, UpstreamError> {
        let last = records.last().expect("non-empty").seq;
        match conn.transaction(key, records).await? {
            Ok(errors) => {
                self.count(records.len(), errors);
                Ok(last)
            }
            Err(abort) if records.len() > 1 => {
                tracing::warn!(error = %abort, "replay transaction refused; replaying its records one by one");
                for r in records {
                    Box::pin(self.apply(conn, key, std::slice::from_ref(r))).await?;
                }
                Ok(last)
            }
            Err(abort) => {
                // The upstream refuses this record outright (e.g. a command it does not
                // know): it can never apply. Count it, log it, and move the watermark past it.
                tracing::error!(journal.seq = last, error = %abort, "replay: record refused by the upstream; skipped");
                self.metrics.journal_replay_errors.inc();
                conn.set_watermark_only(key, last).await?;
                self.metrics.journal_replayed.inc();
                Ok(last)
            }
        }
    }

    fn count(&self, records: usize, errors: u64) {
        self.metrics.journal_replayed.inc_by(records as u64);
        if errors > 0 {
            tracing::warn!(errors, "replayed commands answered with errors by the upstream");
            self.metrics.journal_replay_errors.inc_by(errors);
        }
    }
}

/// The replayer's own upstream connection.
struct Conn {
    stream: UpstreamStream,
    buf: BytesMut,
    timeout: Duration,
    /// The database the connection is in (the URL's, then whatever was selected).
    db: u32,
}

impl Conn {
    async fn open(connector: &Connector, timeout: Duration) -> Result<Conn, UpstreamError> {
        let stream = connector.connect().await?;
        Ok(Conn { stream, buf: BytesMut::with_capacity(64 << 10), timeout, db: connector.url().db })
    }

    async fn watermark(&mut self, key: &str) -> Result<u64, UpstreamError> {
        let mut req = BytesMut::new();
        encode_command(&mut req, &[b"SELECT", b"0"]);
        encode_command(&mut req, &[b"GET", key.as_bytes()]);
        let replies = self.round(&req, 2).await?;
        self.db = 0;
        match replies[1].first() {
            Some(b'$') if replies[1].starts_with(b"$-1") => Ok(0),
            Some(b'$') => {
                let body = &replies[1][replies[1].iter().position(|&b| b == b'\n').map_or(0, |p| p + 1)..];
                let digits = &body[..body.len().saturating_sub(2)];
                parse_int(digits)
                    .map(|v| v.max(0) as u64)
                    .ok_or_else(|| UpstreamError::Protocol("watermark is not a number".into()))
            }
            _ => Err(UpstreamError::Protocol(format!(
                "reading the replay watermark: {}",
                String::from_utf8_lossy(&replies[1]).trim_end()
            ))),
        }
    }

    async fn set_watermark_only(&mut self, key: &str, seq: u64) -> Result<(), UpstreamError> {
        let mut req = BytesMut::new();
        encode_command(&mut req, &[b"SELECT", b"0"]);
        encode_command(
            &mut req,
            &[b"SET", key.as_bytes(), seq.to_string().as_bytes(), b"EX", WATERMARK_TTL_SECS.as_bytes()],
        );
        self.round(&req, 2).await?;
        self.db = 0;
        Ok(())
    }

    /// `MULTI`, the records (with SELECTs between databases), the watermark, `EXEC`.
    /// Returns the number of error replies among the records' commands, or the reason the
    /// upstream refused the transaction as a whole.
    async fn transaction(&mut self, key: &str, records: &[Record]) -> Result<Result<u64, String>, UpstreamError> {
        let Some(last) = records.last().map(|r| r.seq) else { return Ok(Ok(0)) };
        let mut req = BytesMut::new();
        encode_command(&mut req, &[b"MULTI"]);
        let mut queued = 0usize;
        // Which queued commands belong to records (their errors count), by position.
        let mut is_record = Vec::new();
        let mut db = self.db;
        for r in records {
            if r.db != db {
                let d = r.db.to_string();
                encode_command(&mut req, &[b"SELECT", d.as_bytes()]);
                is_record.push(false);
                queued += 1;
                db = r.db;
            }
            req.extend_from_slice(&r.payload);
            is_record.extend(std::iter::repeat_n(true, r.commands as usize));
            queued += r.commands as usize;
        }
        if db != 0 {
            encode_command(&mut req, &[b"SELECT", b"0"]);
            is_record.push(false);
            queued += 1;
        }
        let seq = last.to_string();
        encode_command(&mut req, &[b"SET", key.as_bytes(), seq.as_bytes(), b"EX", WATERMARK_TTL_SECS.as_bytes()]);
        is_record.push(false);
        queued += 1;
        encode_command(&mut req, &[b"EXEC"]);
        let replies = self.round(&req, queued + 2).await?;
        let exec = replies.last().expect("counted");
        if exec.first() == Some(&b'-') {
            // EXECABORT (a command refused when queued) or similar: nothing was applied. The
            // connection's database is unchanged.
            let queue_error = replies[1..replies.len() - 1]
                .iter()
                .find(|r| r.first() == Some(&b'-'))
                .map(|r| String::from_utf8_lossy(r).trim_end().to_string());
            return Ok(Err(queue_error.unwrap_or_else(|| String::from_utf8_lossy(exec).trim_end().to_string())));
        }
        self.db = 0;
        // Count error replies inside the EXEC array that belong to records.
        let mut errors = 0;
        let mut pos = exec.iter().position(|&b| b == b'\n').map_or(exec.len(), |p| p + 1);
        let mut scanner = ReplyScanner::default();
        for &mine in &is_record {
            let Ok(Some(info)) = scanner.next(&exec[pos..]) else { break };
            if mine && info.is_error() {
                errors += 1;
            }
            pos += info.len;
        }
        Ok(Ok(errors))
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
