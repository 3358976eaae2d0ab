//! A dedicated upstream connection for one client in a stateful span (SELECT, AUTH, HELLO,
//! MULTI, WATCH, blocking commands, pub/sub, MONITOR, CLIENT TRACKING).
//!
//! Requests go in rounds like on a shared connection ([`Dedicated::round`]); RESP3 pushes that
//! arrive meanwhile are passed through in order. The connection state the client set up
//! (AUTH, HELLO, SELECT, CLIENT SETNAME) is recorded and replayed on a fresh connection after
//! a failure, so a reconnect never silently changes the client's database or identity.
//! For pub/sub and MONITOR the session takes the raw stream ([`Dedicated::take_stream`]).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::mux::{BatchFailure, BatchReply, BatchResult};
use super::{Connector, UpstreamStream};
use crate::error::UpstreamError;
use crate::metrics::Metrics;
use crate::resp::ReplyScanner;

pub struct Dedicated {
    connector: Arc<Connector>,
    stream: Option<UpstreamStream>,
    buf: BytesMut,
    /// Raw requests that set connection state, replayed in order on reconnect.
    state: Vec<(StateKey, Bytes)>,
    /// A connection was open before: a new one would not carry a MULTI or WATCH.
    had_connection: bool,
    /// Dedicated traffic feeds the upstream latency histogram (not the circuit breaker).
    metrics: Arc<Metrics>,
}

/// Which piece of connection state a recorded request sets (a newer one replaces an older).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKey {
    Auth,
    Hello,
    Select,
    ClientName,
    ReadOnly,
}

impl Dedicated {
    pub fn new(connector: Arc<Connector>, metrics: Arc<Metrics>) -> Dedicated {
        Dedicated {
            connector,
            metrics,
            stream: None,
            buf: BytesMut::with_capacity(16 << 10),
            state: Vec::new(),
            had_connection: false,
        }
    }

    /// Records a request that set connection state (after the upstream accepted it).
    pub fn record_state(&mut self, key: StateKey, request: Bytes) {
        self.state.retain(|(k, _)| *k != key);
        self.state.push((key, request));
    }

    /// Forgets recorded state (after RESET).
    pub fn clear_state(&mut self) {
        self.state.clear();
    }

    /// Whether a connection is open now.
    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// Drops the connection; the next round reconnects and replays the state.
    pub fn disconnect(&mut self) {
        self.stream = None;
        self.buf.clear();
    }

    /// Drops a connection the upstream closed while the client was idle (restart, Redis
    /// `timeout`), so that a request is never written into a dead connection.
    fn drop_if_closed(&mut self) {
        if let Some(stream) = &mut self.stream {
            // TCP: a non-blocking read; TLS: one poll with a no-op waker (see
            // `UpstreamStream::try_read`). Either way nothing waits.
            let mut probe = [0u8; 1];
            match stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Ok(1) => self.buf.extend_from_slice(&probe),
                _ => self.disconnect(),
            }
        }
    }

    async fn ensure_connected(&mut self) -> Result<(), UpstreamError> {
        // A closed connection is replaced before writing: the request provably was not sent.
        self.drop_if_closed();
        if self.stream.is_none() {
            let mut stream = self.connector.connect().await?;
            if !self.state.is_empty() {
                let mut all = BytesMut::new();
                for (_, r) in &self.state {
                    all.extend_from_slice(r);
                }
                let broken = |e: std::io::Error| UpstreamError::Connect {
                    addr: self.connector.url().addr(),
                    reason: e.to_string(),
                };
                stream.write_all(&all).await.map_err(broken)?;
                self.buf.clear();
                let reply = read_replies(&mut stream, &mut self.buf, self.state.len()).await.map_err(|e| {
                    UpstreamError::Connect {
                        addr: self.connector.url().addr(),
                        reason: format!("restoring the client's connection state: {e}"),
                    }
                })?;
                let mut start = 0;
                for &end in &reply.ends {
                    if matches!(reply.bytes[start], b'-' | b'!') {
                        let msg = String::from_utf8_lossy(&reply.bytes[start + 1..end - 2]).into_owned();
                        return Err(UpstreamError::Connect {
                            addr: self.connector.url().addr(),
                            reason: format!("restoring the client's connection state: {msg}"),
                        });
                    }
                    start = end;
                }
            }
            self.stream = Some(stream);
            self.had_connection = true;
        }
        Ok(())
    }

    /// Sends `count` requests and reads their replies, until `deadline` (`None`: no limit,
    /// for blocking commands with a zero timeout). Any failure drops the connection.
    ///
    /// `in_transaction`: the client is inside MULTI or WATCH, whose state lives on this very
    /// connection. If it is gone, a fresh one must not be used silently (queued commands
    /// would run at once, a WATCH would be forgotten): the request fails as not sent.
    pub async fn round(
        &mut self,
        bytes: &[u8],
        count: usize,
        deadline: Option<Instant>,
        in_transaction: bool,
        blocking: bool,
        limit: usize,
    ) -> BatchResult {
        let started = Instant::now();
        let budget = deadline.map(|d| d.saturating_duration_since(started));
        let timed_out = || {
            Box::new(BatchFailure {
                done: BatchReply::default(),
                error: UpstreamError::Timeout(round_duration(budget.unwrap_or_default())),
            })
        };
        let send = async {
            if in_transaction && self.had_connection {
                self.drop_if_closed();
                if self.stream.is_none() {
                    let error = UpstreamError::TransactionLost;
                    return Err(Box::new(BatchFailure { done: BatchReply::default(), error }));
                }
            }
            if let Err(e) = self.ensure_connected().await {
                return Err(Box::new(BatchFailure { done: BatchReply::default(), error: e }));
            }
            let stream = self.stream.as_mut().expect("connected above");
            if let Err(e) = stream.write_all(bytes).await {
                return Err(Box::new(BatchFailure {
                    done: BatchReply::default(),
                    error: UpstreamError::Broken { reason: e.to_string(), sent: true },
                }));
            }
            Ok(())
        };
        let sent = match deadline {
            Some(d) => tokio::time::timeout_at(d, send).await.unwrap_or_else(|_| Err(timed_out())),
            None => send.await,
        };
        // The replies are read against the same deadline, keeping those that arrived in
        // time: a GET answered before a SET that timed out is the client's.
        let result = match sent {
            Ok(()) => {
                let stream = self.stream.as_mut().expect("sent on it");
                read_replies_partial(stream, &mut self.buf, count, limit, deadline.map(|d| (d, timed_out().error)))
                    .await
            }
            Err(e) => Err(e),
        };
        // A dedicated connection does not feed the circuit breaker: what fails here may be
        // this client's own (a slow transaction, state that no longer restores: a database
        // or an ACL user gone), and the shared connections and the probe see the upstream.
        match &result {
            // A blocking command's wait is the client's choice, not upstream latency.
            Ok(_) if !blocking => self.metrics.upstream_duration.observe(started.elapsed().as_secs_f64()),
            Ok(_) => {}
            Err(_) => self.disconnect(),
        }
        result
    }

    /// Hands the connection (opened if needed) to the caller, for pub/sub and MONITOR relaying.
    /// Bytes already read from it are returned too.
    /// Opening (and restoring the client's state) takes at most `within`: a frozen upstream
    /// accepts connections through the kernel's backlog but never answers.
    pub async fn take_stream(
        &mut self,
        within: std::time::Duration,
    ) -> Result<(UpstreamStream, BytesMut), UpstreamError> {
        match tokio::time::timeout(within, self.ensure_connected()).await {
            Ok(r) => r?,
            Err(_) => {
                self.disconnect();
                return Err(UpstreamError::Timeout(within));
            }
        }
        let stream = self.stream.take().expect("connected");
        Ok((stream, std::mem::take(&mut self.buf)))
    }
}

/// A timeout as the client should read it: the budget, to the millisecond.
fn round_duration(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis((d.as_secs_f64() * 1000.0).round() as u64)
}

/// Reads `count` replies (RESP3 pushes pass through uncounted); on failure returns what
/// completed.
async fn read_replies_partial(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
    count: usize,
    limit: usize,
    deadline: Option<(Instant, UpstreamError)>,
) -> BatchResult {
    let mut scanner = ReplyScanner::default();
    let mut acc = 0usize;
    let mut ends: SmallVec<[usize; 16]> = SmallVec::new();
    while ends.len() < count {
        match scanner.next(&buf[acc..]) {
            Ok(Some(info)) => {
                acc += info.len;
                if acc > limit {
                    // The client is disconnected, and with it this connection: nothing to
                    // drain.
                    return Err(Box::new(BatchFailure {
                        done: BatchReply::default(),
                        error: UpstreamError::ReplyLimit,
                    }));
                }
                if !info.is_push() {
                    ends.push(acc);
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                let bytes = buf.split_to(acc).freeze();
                return Err(Box::new(BatchFailure {
                    done: BatchReply { bytes, ends },
                    error: UpstreamError::Protocol(e.to_string()),
                }));
            }
        }
        crate::resp::make_room(buf, super::UPSTREAM_READ_ROOM);
        let read = match &deadline {
            Some((d, timeout)) => match tokio::time::timeout_at(*d, stream.read_buf(buf)).await {
                Ok(r) => r,
                Err(_) => return Err(Box::new(fail_partial(buf, ends, timeout.clone()))),
            },
            None => stream.read_buf(buf).await,
        };
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                let error = UpstreamError::Broken { reason: e.to_string(), sent: true };
                return Err(Box::new(fail_partial(buf, ends, error)));
            }
        };
        if n == 0 {
            let error = UpstreamError::Broken { reason: "closed by the upstream".into(), sent: true };
            return Err(Box::new(fail_partial(buf, ends, error)));
        }
    }
    let bytes = crate::resp::split_front(buf, acc).freeze();
    Ok(BatchReply { bytes, ends })
}

/// Only whole replies count as done (with any pushes before the last of them).
fn fail_partial(buf: &mut BytesMut, ends: SmallVec<[usize; 16]>, error: UpstreamError) -> BatchFailure {
    let complete = ends.last().map_or(0, |&e| e);
    let bytes = buf.split_to(complete).freeze();
    BatchFailure { done: BatchReply { bytes, ends }, error }
}

async fn read_replies(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
    count: usize,
) -> Result<BatchReply, UpstreamError> {
    read_replies_partial(stream, buf, count, usize::MAX, None).await.map_err(|f| f.error)
}
