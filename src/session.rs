//! A client session: reads requests, routes each through the command table, and writes the
//! replies back in order.
//!
//! A round: read what the client sent, parse every complete request (up to
//! `client.max_pipeline`), forward consecutive requests as one batch (zero-copy: the batch is a
//! slice of the client's buffer), write all replies with one write. Stateless commands share
//! a pipelined connection ([`Mux`]); the first stateful command pins the client to a
//! [`Dedicated`] connection for the rest of its life; SUBSCRIBE/MONITOR/CLIENT TRACKING turn
//! it into a relayed stream. A client connection is never closed because the upstream
//! failed: every request gets a reply or an error saying what is known of its outcome.

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::app::Ctx;
use crate::command::{self, Block, CommandId, CommandSpec, Route};
use crate::error::{write_error_line, UpstreamError};
use crate::metrics::Outcome;
use crate::outage::warm::Request;
use crate::outage::{NotQueued, Queued, Served};
use crate::reload::LiveSettings;
use crate::resp::{Arg, Parsed, ProtocolError, RequestParser};
use crate::upstream::backoff;
use crate::upstream::dedicated::{Dedicated, StateKey};
use crate::upstream::mux::{BatchFailure, BatchReply, BatchResult};
use crate::upstream::{DbCheck, Mux, UpstreamStream};
use indexmap::IndexSet;
use smallvec::SmallVec;
use tokio_util::sync::WaitForCancellationFutureOwned;

/// One parsed request of the current round.
struct Req {
    /// Byte range in the round's buffer (unused for inline requests).
    range: Range<usize>,
    /// Re-encoded bytes of an inline command.
    inline: Option<Bytes>,
    /// Argument range in the arena.
    args: Range<usize>,
    id: CommandId,
    spec: Option<&'static CommandSpec>,
    route: Route,
    received: Instant,
}

impl Req {
    fn read_only(&self) -> bool {
        self.spec.is_some_and(|s| s.is_read_only())
    }
    fn name(&self) -> &'static str {
        self.spec.map_or("command", |s| s.name)
    }
}

/// Transaction state on a dedicated connection, so that losing the connection in the
/// middle of MULTI or WATCH aborts the transaction instead of running half of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Txn {
    #[default]
    None,
    Watching,
    Multi,
    /// The connection was lost inside a transaction: refuse until EXEC/DISCARD/UNWATCH.
    Lost,
}

pub struct Session {
    ctx: Arc<Ctx>,
    /// The live settings for this round (limits, timeouts, retries), refreshed between
    /// rounds so a configuration reload applies from the next one.
    live: Arc<LiveSettings>,
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    rbuf: BytesMut,
    out: BytesMut,
    parser: RequestParser,
    args: Vec<Arg>,
    reqs: Vec<Req>,
    mux: Mux,
    dedicated: Option<Dedicated>,
    txn: Txn,
    /// Close after the pending replies are written (QUIT, protocol error).
    closing: bool,
    /// This round waited for the upstream (its replies come back to sessions in batches,
    /// so no yield is needed to write them together).
    forwarded: bool,
    /// This round's replies went past `client.output_buffer_limit`: nothing more is
    /// answered, and the client is disconnected when the round ends.
    overflow: bool,
    /// The store's change clock when the last batch was sent: what its replies teach the
    /// store must not be older than changes made since ([`crate::store::Changes`]).
    sent_tick: u64,
    /// The clocks when the last batch was sent: relative expiries its replies teach count
    /// from there, so a local expiry is never later than the upstream's (which counts from
    /// when the command ran, after it was sent).
    sent_at: crate::store::Now,
    /// The changes the last batch's replies marked in the store so far.
    batch_marks: crate::outage::warm::BatchMarks,
    /// The relayed stream (pub/sub, MONITOR, CLIENT TRACKING) once the client entered it.
    stream: Option<(UpstreamStream, BytesMut)>,
    /// The last round stopped at `client.max_pipeline` with requests left in the buffer.
    backlog: bool,
    /// The client's database (SELECT) and protocol (HELLO), as the upstream confirmed them.
    db: u32,
    resp3: bool,
    /// A MULTI opened during an outage, queued locally.
    outage_multi: Option<OutageMulti>,
    /// The last journal record this round appended: replies wait until it is durable.
    journal_seq: Option<u64>,
    /// The writes queued in an upstream MULTI, by position in the queue (their replies'
    /// place in EXEC's array): learned from that array, in order, at EXEC.
    txn_writes: Vec<(usize, Option<&'static CommandSpec>, Vec<Bytes>)>,
    /// Commands queued in the open upstream MULTI.
    txn_queued: usize,
    /// A SELECT was queued: which database each write meant is not followed; EXEC forgets
    /// the whole store instead of learning.
    txn_select: bool,
    /// Connection state queued in the open MULTI (SELECT, HELLO, CLIENT SETNAME, …): each
    /// request with the state it records and its effect here, applied when EXEC runs them.
    txn_state: Vec<(StateKey, Bytes, StateEffect)>,
    /// Channels and patterns the client is subscribed to (upstream or locally).
    subs: Subs,
    /// Local subscriptions while the upstream is down.
    local: Option<LocalSub>,
    /// Subscription confirmations to drop from the relayed stream after re-subscribing.
    swallow: usize,
    /// Whether the client passed `[client]` authentication (always, when none is set).
    authed: bool,
    /// The round's clock reading for commands served locally: one per round, as Redis
    /// reads its clock once per command batch (expiries are absolute unix milliseconds).
    clock: Option<crate::store::Now>,
    /// Command durations observed this round, added to the shared histogram in one go
    /// before the replies are written (a shared observe is four atomic updates; per command
    /// that was 3-5% of outage-mode CPU at pipeline 16).
    durations: prometheus::local::LocalHistogram,
    /// Resolves when respite shuts down. Kept across reads: a fresh `cancelled()` per read
    /// joins and leaves the token's waiter list (a lock each way) every round.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The command timeout of the batch waiting on a shared connection. Kept across
    /// batches: moving a registered timer later is one atomic swap, where a fresh timer per
    /// batch registers with the runtime's timer wheel and leaves it again (a lock each way;
    /// ~8% of respite's instructions per request at pipeline 1).
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The last duration counted: arrival, end, seconds.
    last_duration: std::cell::Cell<(Instant, Instant, f64)>,
}

#[derive(Default)]
struct Subs {
    channels: IndexSet<Bytes>,
    patterns: IndexSet<Bytes>,
    /// Shard channels (SSUBSCRIBE).
    shard: IndexSet<Bytes>,
}

impl Subs {
    /// The count SUBSCRIBE/PSUBSCRIBE confirmations carry (shard channels have their own).
    fn count(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    /// Channels, patterns and shard channels: the confirmations a re-subscription makes.
    fn total(&self) -> usize {
        self.count() + self.shard.len()
    }
}

struct LocalSub {
    id: u64,
    tx: crate::pubsub::SubTx,
    rx: crate::pubsub::SubRx,
}

/// A transaction queued locally during an outage.
struct OutageMulti {
    queued: Vec<Queued>,
    /// A command was refused while queuing: EXEC answers EXECABORT.
    aborted: bool,
}

/// A request's arguments as slices.
fn req_args<'a>(arena: &'a [Arg], base: &'a [u8], r: Range<usize>) -> SmallVec<[&'a [u8]; 8]> {
    arena[r].iter().map(|&(s, l)| &base[s as usize..(s + l) as usize]).collect()
}

/// The reply buffer a session starts with: enough for the replies of a short pipeline, and
/// it grows as replies need. An idle client that sent one command keeps this much, so it is
/// small (with 4 KiB it was a quarter of the memory an idle client costs).
const OUT_START: usize = 512;

/// Why a session ended (read through `Debug` by the session's debug log line).
#[derive(Debug)]
#[allow(dead_code)]
enum End {
    ClientClosed,
    Quit,
    Protocol(ProtocolError),
    Idle,
    Shutdown,
    Io(std::io::Error),
}

impl Session {
    pub fn new(ctx: Arc<Ctx>, stream: TcpStream) -> Session {
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let mux = ctx.upstream.pick();
        let ctx_db = ctx.cfg.upstream.db;
        let ctx_auth = ctx.auth.required();
        let live = ctx.live.load_full();
        let durations = ctx.metrics.command_duration.local();
        let shutdown = Box::pin(ctx.shutdown.clone().cancelled_owned());
        let timer = Box::pin(tokio::time::sleep(live.command_timeout));
        let now = Instant::now();
        Session {
            ctx,
            live,
            read,
            write,
            rbuf: BytesMut::with_capacity(4096),
            out: BytesMut::with_capacity(OUT_START),
            parser: RequestParser::default(),
            args: Vec::with_capacity(16),
            reqs: Vec::with_capacity(16),
            mux,
            dedicated: None,
            txn: Txn::None,
            closing: false,
            forwarded: false,
            overflow: false,
            sent_tick: 0,
            sent_at: crate::store::Now::current(),
            batch_marks: Default::default(),
            stream: None,
            backlog: false,
            db: ctx_db,
            resp3: false,
            outage_multi: None,
            journal_seq: None,
            txn_writes: Vec::new(),
            txn_queued: 0,
            txn_select: false,
            txn_state: Vec::new(),
            subs: Subs::default(),
            local: None,
            swallow: 0,
            authed: !ctx_auth,
            clock: None,
            durations,
            shutdown,
            timer,
            last_duration: std::cell::Cell::new((now, now, 0.0)),
        }
    }

    /// Serves the client until it leaves, misbehaves, idles out or respite shuts down.
    pub async fn run(mut self) {
        let end = self.serve().await;
        self.durations.flush();
        tracing::debug!(?end, "client session ended");
        let reason = match end {
            End::Idle => Some("idle"),
            End::Protocol(_) => Some("protocol"),
            _ => None,
        };
        if let Some(r) = reason {
            self.ctx.metrics.client_disconnects.with_label_values(&[r]).inc();
        }
        if let Some(l) = self.local.take() {
            self.ctx.outage.broker.remove(l.id);
        }
        let _ = self.write.shutdown().await;
    }

    async fn serve(&mut self) -> End {
        loop {
            self.ctx.live.refresh(&mut self.live);
            if self.stream.is_some() {
                if let Some(end) = self.relay().await {
                    return end;
                }
                continue;
            }
            if let Some(end) = self.read_more().await {
                return end;
            }
            let (consumed, bad_input) = self.parse_round();
            if self.reqs.is_empty() && bad_input.is_none() {
                // Only empty requests (blank lines, `*0`): drop them, since the parser's
                // progress on an incomplete request after them counts from past them.
                bytes::Buf::advance(&mut self.rbuf, consumed);
                continue;
            }
            let frozen = crate::resp::split_front(&mut self.rbuf, consumed).freeze();
            self.clock = None;
            // Requests before a malformed one are served first, as Redis does.
            self.process(&frozen).await;
            self.reqs.clear();
            self.args.clear();
            self.await_durable().await;
            if let Some(e) = &bad_input {
                if !self.closing {
                    self.ctx.metrics.protocol_errors.inc();
                    write_error_line(&mut self.out, &format!("ERR {e}"));
                }
            }
            if !std::mem::take(&mut self.forwarded) && !self.out.is_empty() {
                // Served here (outage mode, local replies): let the other sessions that are
                // ready process their requests first, then all write (tokio runs yielded
                // tasks once its queue is empty). The replies leave back to back, as Redis
                // writes them before it sleeps, so a client woken by the first finds the
                // rest without another wake-up: outage SET at pipeline 16 went from 0.52x
                // to 0.73x of redis. Forwarded rounds need none of it: the mux hands the
                // replies of many sessions out together.
                tokio::task::yield_now().await;
            }
            if let Err(e) = self.flush().await {
                return End::Io(e);
            }
            if let Some(e) = bad_input {
                return End::Protocol(e);
            }
            if self.closing {
                return End::Quit;
            }
        }
    }

    /// Waits for more client bytes unless complete requests are already buffered.
    async fn read_more(&mut self) -> Option<End> {
        if std::mem::take(&mut self.backlog) {
            return None;
        }
        // Subscribed clients are never idle.
        let idle = if self.local.is_some() { Duration::ZERO } else { self.live.idle_timeout };
        let result = loop {
            crate::resp::make_room(&mut self.rbuf, crate::resp::READ_ROOM);
            let read = self.read.read_buf(&mut self.rbuf);
            let local = async {
                match &mut self.local {
                    Some(l) => tokio::time::timeout(Duration::from_millis(100), l.rx.recv()).await.ok().flatten(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = read => break r,
                _ = &mut self.shutdown => return Some(End::Shutdown),
                _ = sleep_or_never(idle) => return Some(End::Idle),
                msg = local => {
                    if let Some(msg) = msg {
                        msg.encode(self.resp3, &mut self.out);
                        if let Err(e) = self.flush().await {
                            return Some(End::Io(e));
                        }
                    }
                    if !self.ctx.outage.active() && self.resubscribe_upstream().await {
                        return None;
                    }
                }
            }
        };
        match result {
            Ok(0) => Some(End::ClientClosed),
            Ok(_) => None,
            Err(e) => Some(End::Io(e)),
        }
    }

    /// Parses complete requests from the buffer; returns how many bytes they span, and the
    /// protocol error that stopped parsing, if any (the connection closes after it).
    fn parse_round(&mut self) -> (usize, Option<ProtocolError>) {
        let mut consumed = 0;
        let result = self.parse_into(&mut consumed);
        (consumed, result.err())
    }

    fn parse_into(&mut self, consumed_out: &mut usize) -> Result<(), ProtocolError> {
        let mut limits = self.live.limits;
        limits.unauthenticated = !self.authed;
        let max = self.live.max_pipeline;
        let mut encoded = BytesMut::new();
        let now = Instant::now();
        loop {
            let consumed = *consumed_out;
            if self.reqs.len() >= max {
                self.backlog = true;
                break;
            }
            let args_start = self.args.len();
            match self.parser.parse(&self.rbuf[consumed..], &limits, &mut self.args, &mut encoded)? {
                Parsed::Incomplete => {
                    if self.rbuf.len() - consumed > self.live.max_query_buffer {
                        return Err(ProtocolError::QueryBufferLimit);
                    }
                    break;
                }
                Parsed::Request { len } => {
                    let args = args_start..self.args.len();
                    // Offsets are relative to the request: make them relative to the round.
                    for a in &mut self.args[args.clone()] {
                        a.0 += consumed as u32;
                    }
                    let range = consumed..consumed + len;
                    *consumed_out += len;
                    self.push_req(range, None, args, now);
                }
                Parsed::Inline { len } => {
                    let args = args_start..self.args.len();
                    *consumed_out += len;
                    if !args.is_empty() {
                        let bytes = encoded.split().freeze();
                        self.push_req(0..0, Some(bytes), args, now);
                    }
                }
            }
            if limits.unauthenticated && self.reqs.last().is_some_and(|r| matches!(r.name(), "AUTH" | "HELLO")) {
                // What follows is read once this has been answered: with the configured
                // limits if it authenticated the client (as Redis reads a pipeline).
                self.backlog = true;
                break;
            }
        }
        Ok(())
    }

    fn push_req(&mut self, range: Range<usize>, inline: Option<Bytes>, args: Range<usize>, received: Instant) {
        let base: &[u8] = match &inline {
            Some(b) => b,
            None => &self.rbuf,
        };
        let arg = |i: usize| -> &[u8] {
            let (s, l) = self.args[args.start + i];
            &base[s as usize..(s + l) as usize]
        };
        let (id, spec) = match command::lookup(arg(0)) {
            Some((id, spec)) => (id, Some(spec)),
            None => (command::other_id(), None),
        };
        let argc = args.len();
        let route = match spec.map(|s| s.route) {
            None => Route::Shared,
            Some(Route::Client) if argc > 1 => command::client_route(arg(1)),
            Some(Route::Client) => Route::Shared,
            Some(Route::Blocking(Block::BlockOption)) => {
                if (1..argc).any(|i| arg(i).eq_ignore_ascii_case(b"BLOCK")) {
                    Route::Blocking(Block::BlockOption)
                } else {
                    Route::Shared
                }
            }
            Some(r) => r,
        };
        self.reqs.push(Req { range, inline, args, id, spec, route, received });
    }

    fn arg<'a>(&'a self, frozen: &'a Bytes, req: &'a Req, i: usize) -> &'a [u8] {
        let base: &[u8] = req.inline.as_deref().unwrap_or(frozen);
        let (s, l) = self.args[req.args.start + i];
        &base[s as usize..(s + l) as usize]
    }

    /// Runs the round's requests in order, batching consecutive forwardable ones.
    async fn process(&mut self, frozen: &Bytes) {
        let n = self.reqs.len();
        let mut i = 0;
        while i < n {
            // Replies past the limit (served locally, or forwarded batches added up) end
            // the round: the client is disconnected instead of holding more.
            if self.over_output_limit() {
                self.overflow = true;
                return;
            }
            if self.ctx.auth.required() && self.auth_gate(frozen, i) {
                i += 1;
                continue;
            }
            let route = self.reqs[i].route;
            match route {
                Route::Local => {
                    // QUIT: answered, and nothing after it in the pipeline runs (as Redis).
                    self.answer_local(i);
                    return;
                }
                Route::Refused => {
                    let name = self.reqs[i].name();
                    write_error_line(&mut self.out, &format!("ERR respite: {name} is not supported through a proxy"));
                    self.count(i, Outcome::Refused);
                    i += 1;
                    continue;
                }
                _ if (self.ctx.outage.active() || self.local.is_some()) && self.serve_local(frozen, i) => {
                    i += 1;
                    continue;
                }
                _ if self.txn != Txn::Multi
                    && matches!(self.reqs[i].name(), "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "SUNSUBSCRIBE") =>
                {
                    // Not subscribed (a subscribed client is relayed): Redis answers once per
                    // channel named, which a shared connection counting one reply per request
                    // would hand to the next clients' batches. Answered here, as Redis would.
                    self.unsubscribe_unsubscribed(frozen, i);
                    i += 1;
                    continue;
                }
                Route::Stream => {
                    // From here on the connection is relayed raw, this request included.
                    self.pin();
                    if !self.ctx.health.upstream_usable() {
                        self.fail(frozen, i..n, &UpstreamError::Down);
                        return;
                    }
                    let dedicated = self.dedicated.as_mut().expect("pinned above");
                    let result = dedicated.take_stream(self.live.command_timeout).await;
                    match result {
                        Ok((stream, buf)) => {
                            self.stream = Some((stream, buf));
                            let rest = self.relayed_bytes(frozen, i..n);
                            self.track_subscriptions(frozen, i..n);
                            self.relay_input(rest, i..n).await;
                        }
                        Err(e) => self.fail(frozen, i..n, &e),
                    }
                    return;
                }
                Route::Pin | Route::Blocking(_) => self.pin(),
                Route::Shared | Route::Client => {}
            }
            if self.outage_multi.is_some() {
                // Outage mode ended inside a locally queued MULTI: finish it locally.
                self.serve_local(frozen, i);
                i += 1;
                continue;
            }
            if self.txn == Txn::Lost {
                self.answer_lost_txn(frozen, i);
                i += 1;
                continue;
            }
            // Extend the batch over following requests that go the same way.
            let mut end = i + 1;
            if self.reqs[i].inline.is_none() {
                // With client authentication, AUTH and HELLO end the batch: the gate above
                // answers them (their credentials are respite's, never the upstream's).
                let gated = self.ctx.auth.required();
                // In outage mode (replaying: a read the store could not answer was let
                // through) each request goes through `serve_local` on its own: a batch
                // would forward the writes after it past the journal.
                let local = self.ctx.outage.active() || self.local.is_some();
                // UNSUBSCRIBE and friends end it too: not subscribed, they are answered
                // here (above), once per channel; batched, they went upstream counted as
                // one reply each, and the extra replies reached other clients' batches.
                // RESET ends it after itself: its reply drops the dedicated connection,
                // and with it what the commands after it set there (MULTI, WATCH).
                while !local
                    && end < n
                    && self.reqs[end - 1].name() != "RESET"
                    && self.reqs[end].inline.is_none()
                    && self.forwardable(self.reqs[end].route)
                    && !(gated && matches!(self.reqs[end].name(), "AUTH" | "HELLO"))
                    && !matches!(self.reqs[end].name(), "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "SUNSUBSCRIBE")
                {
                    end += 1;
                }
            }
            self.forward(frozen, i..end).await;
            i = end;
        }
    }

    /// Serves request `i` in outage mode; `false` when it must be forwarded after all
    /// (outage mode ended, or a read the upstream can answer while replaying).
    fn serve_local(&mut self, frozen: &Bytes, i: usize) -> bool {
        if matches!(self.txn, Txn::Multi | Txn::Watching) {
            // The upstream transaction cannot complete: abort it honestly.
            self.txn = Txn::Lost;
        }
        if self.txn == Txn::Lost {
            self.answer_lost_txn(frozen, i);
            return true;
        }
        let name = self.reqs[i].name();
        if matches!(
            name,
            "SUBSCRIBE"
                | "PSUBSCRIBE"
                | "SSUBSCRIBE"
                | "UNSUBSCRIBE"
                | "PUNSUBSCRIBE"
                | "SUNSUBSCRIBE"
                | "PUBLISH"
                | "SPUBLISH"
        ) || (name == "PING" && self.local.is_some())
        {
            let req = &self.reqs[i];
            let base: &[u8] = req.inline.as_deref().unwrap_or(frozen);
            let args: Vec<Bytes> =
                req_args(&self.args, base, req.args.clone()).iter().map(|a| Bytes::copy_from_slice(a)).collect();
            let outcome = self.serve_pubsub(name, &args);
            self.count(i, outcome);
            return true;
        }
        let now = *self.clock.get_or_insert_with(crate::store::Now::current);
        let req = &self.reqs[i];
        let spec = req.spec;
        let base: &[u8] = req.inline.as_deref().unwrap_or(frozen);
        let raw: &[u8] = match &req.inline {
            Some(b) => b,
            None => &frozen[req.range.clone()],
        };
        let args = req_args(&self.args, base, req.args.clone());
        let outage = &self.ctx.outage;
        let out = &mut self.out;
        let outcome = match (name, &mut self.outage_multi) {
            ("MULTI", Some(_)) => err(out, "ERR MULTI calls can not be nested"),
            ("MULTI", m @ None) => {
                *m = Some(OutageMulti { queued: Vec::new(), aborted: false });
                out.extend_from_slice(b"+OK\r\n");
                Outcome::Local
            }
            ("EXEC", None) => err(out, "ERR EXEC without MULTI"),
            ("DISCARD", None) => err(out, "ERR DISCARD without MULTI"),
            ("DISCARD", m @ Some(_)) => {
                *m = None;
                out.extend_from_slice(b"+OK\r\n");
                Outcome::Local
            }
            ("EXEC", m @ Some(_)) => {
                let multi = m.take().expect("matched Some");
                if multi.aborted {
                    err(out, "EXECABORT Transaction discarded because of previous errors.")
                } else {
                    match outage.execute_block(self.db, self.resp3, &multi.queued, out) {
                        Served::Done { outcome, seq } => {
                            self.journal_seq = seq.or(self.journal_seq);
                            outcome
                        }
                        Served::Forward => {
                            // Outage mode ended: the block goes upstream as a transaction.
                            err(out, "EXECABORT respite: the upstream came back during the transaction; it was discarded, retry it")
                        }
                    }
                }
            }
            ("HELLO", None) => {
                // HELLO [protover [AUTH user pass] [SETNAME name]], answered as Redis would,
                // so a client can (re)connect during the outage; the protocol and name are
                // recorded for the upstream connection the client gets when it is back.
                let proto = match args.get(1).map(|v| crate::resp::parse_int(v)) {
                    None => Some(if self.resp3 { 3 } else { 2 }),
                    Some(Some(v @ (2 | 3))) => Some(v),
                    Some(Some(_)) => None,
                    Some(None) => {
                        let outcome = err(out, "ERR Protocol version is not an integer or out of range");
                        self.count_at(i, outcome, now.at);
                        return true;
                    }
                };
                let mut name = None;
                let mut k = 2;
                let mut refused = None;
                while k < args.len() {
                    if args[k].eq_ignore_ascii_case(b"AUTH") && k + 2 < args.len() {
                        refused = Some("UNAVAILABLE upstream down: HELLO with AUTH is not served during an outage (the upstream checks those credentials)");
                        k += 3;
                    } else if args[k].eq_ignore_ascii_case(b"SETNAME") && k + 1 < args.len() {
                        name = Some(args[k + 1]);
                        k += 2;
                    } else {
                        let opt = String::from_utf8_lossy(args[k]).into_owned();
                        let outcome = err(out, &format!("ERR Syntax error in HELLO option '{opt}'"));
                        self.count_at(i, outcome, now.at);
                        return true;
                    }
                }
                let outcome = match (proto, refused) {
                    (None, _) => err(out, "NOPROTO unsupported protocol version"),
                    (Some(_), Some(msg)) => {
                        outage.write_refusal(out, "unsupported", msg);
                        Outcome::Refused
                    }
                    (Some(proto), None) => {
                        let resp3 = proto == 3;
                        self.resp3 = resp3;
                        let ctx = &self.ctx;
                        let d = self
                            .dedicated
                            .get_or_insert_with(|| Dedicated::new(ctx.upstream.connector.clone(), ctx.metrics.clone()));
                        let proto_arg = proto.to_string();
                        d.record_state(StateKey::Hello, crate::upstream::encode_one(&[b"HELLO", proto_arg.as_bytes()]));
                        if let Some(n) = name {
                            d.record_state(
                                StateKey::ClientName,
                                crate::upstream::encode_one(&[b"CLIENT", b"SETNAME", n]),
                            );
                        }
                        // An open connection still speaks the old protocol: the next
                        // forwarded command reconnects and restores the state.
                        d.disconnect();
                        let mut r = crate::outage::reply::Reply { out, resp3 };
                        r.map(7);
                        r.bulk(b"server");
                        r.bulk(b"redis");
                        r.bulk(b"version");
                        r.bulk(crate::outage::reply::upstream_version().as_bytes());
                        r.bulk(b"proto");
                        r.int(proto);
                        r.bulk(b"id");
                        r.int(0);
                        r.bulk(b"mode");
                        r.bulk(b"standalone");
                        r.bulk(b"role");
                        r.bulk(b"master");
                        r.bulk(b"modules");
                        r.array(0);
                        Outcome::Local
                    }
                };
                self.count_at(i, outcome, now.at);
                return true;
            }
            ("SELECT", None) if args.len() != 2 => err(out, "ERR wrong number of arguments for 'select' command"),
            ("SELECT", None) => match args.get(1).and_then(|a| crate::resp::parse_int(a)) {
                Some(db) if !(0..=u32::MAX as i64).contains(&db) => err(out, "ERR DB index is out of range"),
                Some(db) if self.ctx.upstream.connector.databases.check(db as u32) == DbCheck::OutOfRange => {
                    err(out, "ERR DB index is out of range")
                }
                Some(db) if self.ctx.upstream.connector.databases.check(db as u32) == DbCheck::Unknown => {
                    let msg = format!(
                        "UNAVAILABLE upstream down: SELECT {db} is not served during an outage (database {db} is not \
                         known to exist upstream: CONFIG GET databases was refused and no SELECT reached it)"
                    );
                    outage.write_refusal(out, "unsupported", &msg);
                    Outcome::Error
                }
                Some(db) => {
                    self.db = db as u32;
                    out.extend_from_slice(b"+OK\r\n");
                    let ctx = &self.ctx;
                    let d = self
                        .dedicated
                        .get_or_insert_with(|| Dedicated::new(ctx.upstream.connector.clone(), ctx.metrics.clone()));
                    d.record_state(StateKey::Select, Bytes::copy_from_slice(raw));
                    // An open connection is still in the old database: the next forwarded
                    // command reconnects and restores the state, this SELECT included.
                    d.disconnect();
                    Outcome::Local
                }
                _ => err(out, "ERR value is not an integer or out of range"),
            },
            (_, Some(multi)) => match outage.queueable(req.id, spec, &args) {
                Ok(entry) => {
                    let spec = spec.expect("queueable() refuses unknown commands");
                    multi.queued.push(Queued {
                        spec,
                        entry,
                        raw: Bytes::copy_from_slice(raw),
                        args: args.iter().map(|a| Bytes::copy_from_slice(a)).collect(),
                    });
                    out.extend_from_slice(b"+QUEUED\r\n");
                    Outcome::Local
                }
                Err(NotQueued::Refused(reason, msg)) => {
                    multi.aborted = true;
                    outage.write_refusal(out, reason, &msg);
                    Outcome::Error
                }
                Err(NotQueued::Redis(msg)) => {
                    multi.aborted = true;
                    err(out, &msg)
                }
            },
            (_, None) => match outage.execute(self.db, self.resp3, req.id, spec, &args, raw, now, out) {
                Served::Done { outcome, seq } => {
                    self.journal_seq = seq.or(self.journal_seq);
                    outcome
                }
                Served::Forward => return false,
            },
        };
        self.count_at(i, outcome, now.at);
        true
    }

    /// Client authentication: answers AUTH itself, verifies and strips `HELLO … AUTH`, and
    /// refuses everything else with `-NOAUTH` until the client is authenticated. Returns
    /// whether the request was answered here.
    fn auth_gate(&mut self, frozen: &Bytes, i: usize) -> bool {
        let name = self.reqs[i].name();
        if !matches!(name, "AUTH" | "HELLO") {
            if self.authed || name == "QUIT" {
                return false;
            }
            if name == "RESET" && self.reqs[i].args.len() == 1 {
                // Allowed before AUTH, as in Redis. A client that is not authenticated has
                // no state to reset (RESET already reset what it had), so it is answered
                // here, without an upstream connection.
                self.out.extend_from_slice(b"+RESET\r\n");
                self.count(i, Outcome::Local);
                return true;
            }
            // Redis checks a known command's arity before authentication.
            if let Some(spec) = self.reqs[i].spec.filter(|s| !s.arity_ok(self.reqs[i].args.len())) {
                err(&mut self.out, &crate::error::wrong_arity(spec.name));
                self.count(i, Outcome::Error);
                return true;
            }
            err(&mut self.out, "NOAUTH Authentication required.");
            self.count(i, Outcome::Refused);
            return true;
        }
        let req = &self.reqs[i];
        let base: &[u8] = req.inline.as_deref().unwrap_or(frozen);
        let args: Vec<Vec<u8>> = req_args(&self.args, base, req.args.clone()).iter().map(|a| a.to_vec()).collect();
        let ctx = self.ctx.clone();
        let auth = &ctx.auth;
        let outcome = if name == "AUTH" {
            let ok = match args.len() {
                2 => auth.check(None, &args[1]),
                3 => auth.check(Some(&args[1]), &args[2]),
                n => {
                    // As Redis: arity first (AUTH alone), then a syntax error for more.
                    err(
                        &mut self.out,
                        if n > 3 { "ERR syntax error" } else { "ERR wrong number of arguments for 'auth' command" },
                    );
                    self.count(i, Outcome::Refused);
                    return true;
                }
            };
            if ok {
                self.authed = true;
                self.out.extend_from_slice(b"+OK\r\n");
                Outcome::Local
            } else {
                wrongpass(&mut self.out)
            }
        } else {
            // HELLO [protover [AUTH user pass] [SETNAME name]]: checked in Redis's order,
            // the version, then the options, then the credentials.
            if let Some(v) = args.get(1) {
                let msg = match crate::resp::parse_int(v) {
                    None => Some("ERR Protocol version is not an integer or out of range"),
                    Some(2 | 3) => None,
                    Some(_) => Some("NOPROTO unsupported protocol version"),
                };
                if let Some(msg) = msg {
                    err(&mut self.out, msg);
                    self.count(i, Outcome::Refused);
                    return true;
                }
            }
            let mut k = 2;
            let mut at = None;
            while k < args.len() {
                if args[k].eq_ignore_ascii_case(b"AUTH") && k + 2 < args.len() {
                    at = Some(k);
                    k += 3;
                } else if args[k].eq_ignore_ascii_case(b"SETNAME") && k + 1 < args.len() {
                    k += 2;
                } else {
                    // Redis checks the options before authentication.
                    let opt = String::from_utf8_lossy(&args[k]).into_owned();
                    err(&mut self.out, &format!("ERR Syntax error in HELLO option '{opt}'"));
                    self.count(i, Outcome::Refused);
                    return true;
                }
            }
            match at {
                Some(k) if !auth.check(Some(&args[k + 1]), &args[k + 2]) => wrongpass(&mut self.out),
                Some(k) => {
                    // Authenticated here: the upstream gets HELLO without respite's credentials.
                    self.authed = true;
                    let kept: Vec<Vec<u8>> =
                        args.into_iter().enumerate().filter(|(j, _)| !(k..k + 3).contains(j)).map(|(_, a)| a).collect();
                    self.replace_request(i, &kept);
                    return false;
                }
                None if !self.authed => {
                    err(
                        &mut self.out,
                        "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO \
                         <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP \
                         protocol version at the same time",
                    );
                    Outcome::Refused
                }
                None => return false,
            }
        };
        self.count(i, outcome);
        true
    }

    /// Replaces request `i` by the given arguments (re-encoded).
    fn replace_request(&mut self, i: usize, args: &[Vec<u8>]) {
        let bytes = crate::outage::encode(args);
        let start = self.args.len();
        let mut pos = 0usize;
        // Offsets of each argument inside the encoding: after its `$len\r\n` header.
        let header = format!("*{}\r\n", args.len()).len();
        pos += header;
        for a in args {
            pos += format!("${}\r\n", a.len()).len();
            self.args.push((pos as u32, a.len() as u32));
            pos += a.len() + 2;
        }
        let req = &mut self.reqs[i];
        req.inline = Some(bytes);
        req.args = start..self.args.len();
    }

    /// Acknowledges journaled writes only once they are durable under the fsync policy.
    async fn await_durable(&mut self) {
        if let Some(seq) = self.journal_seq.take() {
            if let Err(e) = self.ctx.outage.journal.durable(seq).await {
                // The replies already in `out` would acknowledge writes that may not be
                // durable: replace them with one error for the round (Redis does the same
                // on a failed AOF write: -MISCONF), and close.
                tracing::error!(error = %e, "journal write failed; refusing the round's acknowledgements");
                self.out.clear();
                write_error_line(
                    &mut self.out,
                    &format!(
                        "MISCONF respite: {e}; the outcome of this round's writes is unknown \
                         (they stay journaled and may still be replayed)"
                    ),
                );
                self.closing = true;
            }
        }
    }

    /// Pub/sub during an outage, between this sidecar's own clients.
    fn serve_pubsub(&mut self, name: &str, args: &[Bytes]) -> Outcome {
        let broker = &self.ctx.outage.broker;
        let resp3 = self.resp3;
        if name == "PUBLISH" || name == "SPUBLISH" {
            if args.len() != 3 {
                return err(&mut self.out, &crate::error::wrong_arity(name));
            }
            let n = if name == "PUBLISH" {
                broker.publish(&args[1], &args[2])
            } else {
                broker.spublish(&args[1], &args[2])
            };
            self.out.extend_from_slice(format!(":{n}\r\n").as_bytes());
            return Outcome::Local;
        }
        if name == "PING" {
            // PING in subscribed mode answers ["pong", message] (RESP2).
            if resp3 {
                self.out.extend_from_slice(b"+PONG\r\n");
            } else {
                self.out.extend_from_slice(b"*2\r\n$4\r\npong\r\n");
                crate::pubsub::bulk(&mut self.out, args.get(1).map_or(&b""[..], |a| &a[..]));
            }
            return Outcome::Local;
        }
        let subscribing = matches!(name, "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE");
        if subscribing && args.len() < 2 {
            return err(&mut self.out, &crate::error::wrong_arity(name));
        }
        if self.local.is_none() {
            let (tx, rx) = self.local_queue();
            self.local = Some(LocalSub { id: broker.subscriber(), tx, rx });
        }
        let local = self.local.as_mut().expect("set above");
        #[derive(PartialEq)]
        enum Space {
            Channels,
            Patterns,
            Shard,
        }
        let space = match name {
            "PSUBSCRIBE" | "PUNSUBSCRIBE" => Space::Patterns,
            "SSUBSCRIBE" | "SUNSUBSCRIBE" => Space::Shard,
            _ => Space::Channels,
        };
        // As Redis: shard confirmations count shard channels; the others count the rest.
        let count = |subs: &Subs| if space == Space::Shard { subs.shard.len() } else { subs.count() };
        let kind = name.to_ascii_lowercase();
        let targets: Vec<Bytes> = if args.len() > 1 {
            args[1..].to_vec()
        } else {
            match space {
                Space::Channels => self.subs.channels.iter().cloned().collect(),
                Space::Patterns => self.subs.patterns.iter().cloned().collect(),
                Space::Shard => self.subs.shard.iter().cloned().collect(),
            }
        };
        if targets.is_empty() {
            crate::pubsub::confirmation(&mut self.out, resp3, kind.as_bytes(), None, count(&self.subs));
        }
        for t in targets {
            match (subscribing, &space) {
                (true, Space::Channels) => {
                    broker.subscribe(local.id, t.clone(), local.tx.clone());
                    self.subs.channels.insert(t.clone());
                }
                (true, Space::Patterns) => {
                    broker.psubscribe(local.id, t.clone(), local.tx.clone());
                    self.subs.patterns.insert(t.clone());
                }
                (true, Space::Shard) => {
                    broker.ssubscribe(local.id, t.clone(), local.tx.clone());
                    self.subs.shard.insert(t.clone());
                }
                (false, Space::Channels) => {
                    broker.unsubscribe(local.id, &t);
                    self.subs.channels.shift_remove(&t);
                }
                (false, Space::Patterns) => {
                    broker.punsubscribe(local.id, &t);
                    self.subs.patterns.shift_remove(&t);
                }
                (false, Space::Shard) => {
                    broker.sunsubscribe(local.id, &t);
                    self.subs.shard.shift_remove(&t);
                }
            }
            crate::pubsub::confirmation(&mut self.out, resp3, kind.as_bytes(), Some(&t), count(&self.subs));
        }
        if self.subs.total() == 0 {
            if let Some(l) = self.local.take() {
                broker.remove(l.id);
            }
        }
        Outcome::Local
    }

    /// After an outage: moves local subscriptions back to the upstream (SUBSCRIBE again on a
    /// dedicated connection, dropping the confirmations the client already had).
    async fn resubscribe_upstream(&mut self) -> bool {
        self.pin();
        let dedicated = self.dedicated.as_mut().expect("pinned above");
        let Ok((mut stream, buf)) = dedicated.take_stream(self.live.command_timeout).await else { return false };
        let mut req = BytesMut::new();
        for (cmd, set) in [
            (&b"SUBSCRIBE"[..], &self.subs.channels),
            (b"PSUBSCRIBE", &self.subs.patterns),
            (b"SSUBSCRIBE", &self.subs.shard),
        ] {
            if !set.is_empty() {
                let mut args: Vec<&[u8]> = vec![cmd];
                args.extend(set.iter().map(|c| &c[..]));
                crate::upstream::encode_command(&mut req, &args);
            }
        }
        if stream.write_all(&req).await.is_err() {
            return false;
        }
        if let Some(l) = self.local.take() {
            self.ctx.outage.broker.remove(l.id);
        }
        self.swallow = self.subs.total();
        self.stream = Some((stream, buf));
        tracing::debug!(subscriptions = self.swallow, "local subscriptions moved back to the upstream");
        true
    }

    /// Follows SUBSCRIBE/UNSUBSCRIBE on a relayed connection, to restore them after a loss.
    fn track_subscriptions(&mut self, frozen: &Bytes, run: Range<usize>) {
        for i in run {
            let req = &self.reqs[i];
            let Some(spec) = req.spec else { continue };
            let base: &[u8] = req.inline.as_deref().unwrap_or(frozen);
            let args = req_args(&self.args, base, req.args.clone());
            let set = match spec.name {
                "SUBSCRIBE" | "UNSUBSCRIBE" => &mut self.subs.channels,
                "PSUBSCRIBE" | "PUNSUBSCRIBE" => &mut self.subs.patterns,
                "SSUBSCRIBE" | "SUNSUBSCRIBE" => &mut self.subs.shard,
                "RESET" => {
                    self.subs = Subs::default();
                    continue;
                }
                _ => continue,
            };
            if spec.name.contains("UNSUB") {
                if args.len() == 1 {
                    set.clear();
                }
                for a in &args[1..] {
                    set.shift_remove(*a);
                }
            } else {
                set.extend(args[1..].iter().map(|a| Bytes::copy_from_slice(a)));
            }
        }
    }

    fn forwardable(&self, route: Route) -> bool {
        match route {
            Route::Shared | Route::Client => true,
            Route::Pin | Route::Blocking(_) => self.dedicated.is_some(),
            Route::Stream | Route::Local | Route::Refused => false,
        }
    }

    fn pin(&mut self) {
        if self.dedicated.is_none() {
            let ctx = &self.ctx;
            self.dedicated = Some(Dedicated::new(ctx.upstream.connector.clone(), ctx.metrics.clone()));
        }
    }

    /// The bytes of requests that may not be contiguous (inline ones are re-encoded).
    fn join(&self, frozen: &Bytes, run: Range<usize>) -> Bytes {
        if run.clone().all(|i| self.reqs[i].inline.is_none()) {
            return self.bytes_of(frozen, run);
        }
        let mut all = BytesMut::new();
        for i in run {
            all.extend_from_slice(&self.bytes_of(frozen, i..i + 1));
        }
        all.freeze()
    }

    fn bytes_of(&self, frozen: &Bytes, run: Range<usize>) -> Bytes {
        let first = &self.reqs[run.start];
        if let Some(b) = &first.inline {
            debug_assert_eq!(run.len(), 1);
            return b.clone();
        }
        frozen.slice(first.range.start..self.reqs[run.end - 1].range.end)
    }

    /// The deadline of a batch: the command timeout, or for blocking commands their own
    /// timeout plus the margin (`None` when one of them blocks forever).
    fn deadline(&self, frozen: &Bytes, run: Range<usize>) -> Option<Instant> {
        let live = &self.live;
        let mut budget = live.command_timeout;
        for i in run {
            let req = &self.reqs[i];
            if let Route::Blocking(block) = req.route {
                match self.block_timeout(frozen, req, block) {
                    Some(d) if d.is_zero() => return None,
                    // Beyond what a clock can count: as good as forever.
                    Some(d) => budget = budget.max(d.checked_add(live.blocking_margin)?),
                    None => {}
                }
            }
        }
        Instant::now().checked_add(budget)
    }

    fn block_timeout(&self, frozen: &Bytes, req: &Req, block: Block) -> Option<Duration> {
        let argc = req.args.len();
        let (raw, millis) = match block {
            Block::LastArgSecs => (self.arg(frozen, req, argc - 1), false),
            Block::ArgSecs(i) if (i as usize) < argc => (self.arg(frozen, req, i as usize), false),
            Block::ArgMillis(i) if (i as usize) < argc => (self.arg(frozen, req, i as usize), true),
            Block::BlockOption => {
                let pos =
                    (1..argc.saturating_sub(1)).find(|&i| self.arg(frozen, req, i).eq_ignore_ascii_case(b"BLOCK"))?;
                (self.arg(frozen, req, pos + 1), true)
            }
            _ => return None,
        };
        let v: f64 = std::str::from_utf8(raw).ok()?.trim().parse().ok()?;
        if !(v.is_finite() && v >= 0.0) {
            return None;
        }
        // Out of range for a Duration: not a timeout respite can follow; the upstream
        // answers it ("timeout is out of range") within the command timeout.
        Duration::try_from_secs_f64(if millis { v / 1000.0 } else { v }).ok()
    }

    /// Forwards a run of requests, retrying what provably did not execute (and reads).
    async fn forward(&mut self, frozen: &Bytes, run: Range<usize>) {
        let deadline = self.deadline(frozen, run.clone());
        let max_retries = self.live.max_retries;
        let mut next = run.start;
        let mut attempt = 0;
        while next < run.end {
            if !self.ctx.health.upstream_usable() {
                self.fail(frozen, next..run.end, &UpstreamError::Down);
                return;
            }
            let bytes = self.bytes_of(frozen, next..run.end);
            let blocking = (next..run.end).any(|i| matches!(self.reqs[i].route, Route::Blocking(_)));
            let result = self.send(bytes, run.end - next, deadline, blocking).await;
            match result {
                Ok(reply) => {
                    self.deliver(frozen, next, &reply);
                    return;
                }
                Err(f) => {
                    self.deliver(frozen, next, &f.done);
                    next += f.done.ends.len();
                    let time_left = deadline.is_none_or(|d| Instant::now() < d);
                    if !f.error.retryable() || attempt >= max_retries || !time_left {
                        self.fail(frozen, next..run.end, &f.error);
                        return;
                    }
                    if f.error.maybe_executed() {
                        // Each write may have run: say so. Each read is retried on its own,
                        // unless a write after it may have run: retried now, it would see
                        // that write, as if the later command had run first.
                        let last_write = (next..run.end).rev().find(|&i| !self.reqs[i].read_only());
                        for i in next..run.end {
                            if self.reqs[i].read_only() && last_write.is_none_or(|w| i > w) {
                                self.retry_single(frozen, i, deadline, attempt).await;
                            } else {
                                self.fail(frozen, i..i + 1, &f.error);
                            }
                        }
                        return;
                    }
                    attempt += 1;
                    self.ctx.metrics.upstream_retries.inc_by((run.end - next) as u64);
                    self.backoff(attempt, deadline).await;
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        // The backoff ran into the deadline: nothing more is sent.
                        self.fail(frozen, next..run.end, &f.error);
                        return;
                    }
                }
            }
        }
    }

    async fn retry_single(&mut self, frozen: &Bytes, i: usize, deadline: Option<Instant>, mut attempt: u32) {
        let max_retries = self.live.max_retries;
        loop {
            attempt += 1;
            self.ctx.metrics.upstream_retries.inc();
            self.backoff(attempt, deadline).await;
            let bytes = self.bytes_of(frozen, i..i + 1);
            match self.send(bytes, 1, deadline, false).await {
                Ok(reply) => return self.deliver(frozen, i, &reply),
                Err(f) => {
                    let time_left = deadline.is_none_or(|d| Instant::now() < d);
                    if !f.error.retryable()
                        || attempt >= max_retries
                        || !time_left
                        || !self.ctx.health.upstream_usable()
                    {
                        return self.fail(frozen, i..i + 1, &f.error);
                    }
                }
            }
        }
    }

    /// Sleeps before retry `attempt` (not borrowing the session across the sleep: it is
    /// not `Sync`, so a borrow held there would make the task not `Send`).
    fn backoff(&self, attempt: u32, deadline: Option<Instant>) -> tokio::time::Sleep {
        let live = &self.live;
        let delay = backoff::delay(attempt, live.retry_backoff_base, live.retry_backoff_max);
        match deadline {
            Some(d) => tokio::time::sleep_until(Instant::now().checked_add(delay).map_or(d, |wake| wake.min(d))),
            // `sleep` itself caps a delay the clock cannot count.
            None => tokio::time::sleep(delay),
        }
    }

    /// Sends a batch on the client's connection (dedicated or shared); counts a timeout once.
    async fn send(&mut self, bytes: Bytes, count: usize, deadline: Option<Instant>, blocking: bool) -> BatchResult {
        self.forwarded = true;
        // What the client may still take this round (`client.output_buffer_limit`).
        let limit = match self.live.output_buffer_limit {
            0 => usize::MAX,
            l => usize::try_from(l).unwrap_or(usize::MAX).saturating_sub(self.out.len()),
        };
        let in_transaction = matches!(self.txn, Txn::Multi | Txn::Watching);
        self.sent_tick = self.ctx.outage.store.changes.now();
        self.sent_at = crate::store::Now::current();
        self.batch_marks.clear();
        let result = match &mut self.dedicated {
            Some(d) => d.round(&bytes, count, deadline, in_transaction, blocking, limit).await,
            None => {
                let send = self.mux.send(bytes, count, limit);
                match deadline {
                    Some(d) => {
                        self.timer.as_mut().reset(d);
                        tokio::select! {
                            biased;
                            r = send => r,
                            _ = self.timer.as_mut() => Err(Box::new(BatchFailure {
                                done: BatchReply::default(),
                                error: UpstreamError::Timeout(self.live.command_timeout),
                            })),
                        }
                    }
                    None => send.await,
                }
            }
        };
        if matches!(&result, Err(f) if matches!(f.error, UpstreamError::Timeout(_))) {
            self.ctx.metrics.upstream_timeouts.inc();
        }
        result
    }

    /// Appends the replies of requests `first..` and does the per-command bookkeeping.
    fn deliver(&mut self, frozen: &Bytes, first: usize, reply: &BatchReply) {
        self.out.extend_from_slice(&reply.bytes);
        // One clock reading for the batch: metrics and the local store share it.
        let clock = crate::store::Now::current();
        let now = clock.at;
        let mut start = 0usize;
        for (k, &end) in reply.ends.iter().enumerate() {
            let i = first + k;
            let is_error = matches!(reply.bytes.get(start), Some(b'-') | Some(b'!'));
            let outcome = if is_error { Outcome::Error } else { Outcome::Ok };
            self.count_at(i, outcome, now);
            if !is_error {
                self.learn(frozen, i, reply.bytes.slice(start..end), self.sent_at);
                if self.dedicated.is_some() {
                    self.track_state(frozen, i, &reply.bytes[start..end]);
                }
            } else if self.reqs[i].name() == "EXEC" {
                // -EXECABORT (a command refused when queued): the transaction is over and
                // nothing of it ran.
                self.txn = Txn::None;
                self.txn_writes.clear();
                self.txn_queued = 0;
                self.txn_select = false;
                self.txn_state.clear();
            }
            start = end;
        }
    }

    /// Keeps the local store in step with a successful upstream reply.
    fn learn(&mut self, frozen: &Bytes, i: usize, reply: Bytes, now: crate::store::Now) {
        let req = &self.reqs[i];
        let base: &[u8] = req.inline.as_deref().unwrap_or(frozen);
        let (spec, argv) = (req.spec, req.args.clone());
        let name = spec.map_or("", |s| s.name);
        if self.txn == Txn::Multi && !matches!(name, "EXEC" | "DISCARD" | "MULTI") {
            // Queued: it runs at EXEC, whose array holds its reply at this position.
            // (A command the upstream refused to queue gets no position: EXEC then aborts.)
            if spec.is_none_or(|s| s.may_write()) {
                let owned = req_args(&self.args, base, argv).iter().map(|a| Bytes::copy_from_slice(a)).collect();
                self.txn_writes.push((self.txn_queued, spec, owned));
            }
            self.txn_select |= name == "SELECT";
            self.txn_queued += 1;
            return;
        }
        let outage = &self.ctx.outage;
        let Some(spec) = spec else {
            let args = req_args(&self.args, base, argv);
            return outage.forget_unknown(&args, self.db);
        };
        match spec.name {
            "MULTI" | "DISCARD" => {
                self.txn_writes.clear();
                self.txn_queued = 0;
                self.txn_select = false;
            }
            // A SELECT inside: which database each write meant is not followed.
            "EXEC" if self.txn_select => self.forget_txn_writes(),
            "EXEC" => match exec_elements(&reply) {
                // Not an array of replies: what ran is unknown.
                None => self.forget_txn_writes(),
                // A nil array: WATCH aborted it, nothing ran.
                Some(None) => {
                    self.txn_writes.clear();
                    self.txn_queued = 0;
                }
                Some(Some(elements)) => {
                    self.txn_queued = 0;
                    for (pos, spec, args) in self.txn_writes.drain(..) {
                        let args: SmallVec<[&[u8]; 8]> = args.iter().map(|a| &a[..]).collect();
                        match (spec, elements.get(pos)) {
                            // A command the table does not know may write anything.
                            (None, _) => outage.store.invalidate_db(self.db),
                            (Some(spec), None) => outage.forget(spec, &args, self.db),
                            // An error changed nothing.
                            (Some(_), Some(r)) if matches!(r.first(), Some(b'-') | Some(b'!')) => {}
                            // As a write answered on its own.
                            (Some(spec), Some(r)) => {
                                let req =
                                    Request { spec, args: &args, db: self.db, resp3: self.resp3, sent: self.sent_tick };
                                outage.learn(&req, r, now, &mut self.batch_marks)
                            }
                        }
                    }
                }
            },
            _ => {
                let base: &[u8] = self.reqs[i].inline.as_deref().unwrap_or(frozen);
                let args = req_args(&self.args, base, argv);
                let req = Request { spec, args: &args, db: self.db, resp3: self.resp3, sent: self.sent_tick };
                outage.learn(&req, &reply, now, &mut self.batch_marks)
            }
        }
    }

    /// Forgets the keys of the writes queued in an upstream MULTI whose EXEC may have run
    /// (its reply was lost).
    fn forget_txn_writes(&mut self) {
        self.txn_queued = 0;
        if std::mem::take(&mut self.txn_select) {
            self.txn_writes.clear();
            return self.ctx.outage.store.clear();
        }
        for (_, spec, args) in self.txn_writes.drain(..) {
            let args: SmallVec<[&[u8]; 8]> = args.iter().map(|a| &a[..]).collect();
            match spec {
                Some(spec) => self.ctx.outage.forget(spec, &args, self.db),
                None => self.ctx.outage.store.invalidate_db(self.db),
            }
        }
    }

    /// Appends errors for requests that got no reply — or, for requests that provably were
    /// not sent while outage mode is on, serves them locally.
    fn fail(&mut self, frozen: &Bytes, run: Range<usize>, error: &UpstreamError) {
        if *error == UpstreamError::ReplyLimit {
            self.overflow = true;
            return;
        }
        let lost_connection = self.dedicated.as_ref().is_some_and(|d| !d.is_connected());
        let mut exec_lost = false;
        for i in run {
            if !error.maybe_executed() && self.ctx.outage.active() && self.serve_local(frozen, i) {
                continue;
            }
            let req = &self.reqs[i];
            if error.maybe_executed() && req.name() == "EXEC" {
                // Sent, and its reply lost: it ended the transaction whether it ran or not
                // (the client is told the outcome is unknown).
                exec_lost = true;
                self.forget_txn_writes();
            }
            let req = &self.reqs[i]; // again: forget_txn_writes borrowed the session
            if error.maybe_executed() {
                let base: &[u8] = req.inline.as_deref().unwrap_or(frozen);
                match req.spec {
                    Some(spec) if spec.may_write() => {
                        self.ctx.outage.forget(spec, &req_args(&self.args, base, req.args.clone()), self.db)
                    }
                    Some(_) => {}
                    None => self.ctx.outage.forget_unknown(&req_args(&self.args, base, req.args.clone()), self.db),
                }
            }
            let read_only = req.read_only();
            let name = display_name(req, &self.args, frozen);
            let context = (*error == UpstreamError::Down).then(|| self.ctx.health.down_context());
            error.write_reply(&name, read_only, context.as_deref(), &mut self.out);
            self.count(i, error.outcome(read_only));
        }
        let lost_connection = lost_connection || *error == UpstreamError::TransactionLost;
        if exec_lost {
            self.txn = Txn::None;
        } else if lost_connection && matches!(self.txn, Txn::Multi | Txn::Watching) {
            self.txn = Txn::Lost;
        }
    }

    /// Follows the connection state a dedicated connection has, to restore it after a
    /// reconnect and to abort a transaction whose connection was lost.
    fn track_state(&mut self, frozen: &Bytes, i: usize, reply: &[u8]) {
        let Some(spec) = self.reqs[i].spec else {
            return;
        };
        let key = match spec.name {
            "AUTH" => Some(StateKey::Auth),
            "HELLO" => Some(StateKey::Hello),
            "SELECT" => Some(StateKey::Select),
            "READONLY" | "READWRITE" => Some(StateKey::ReadOnly),
            "CLIENT"
                if self.reqs[i].args.len() > 2
                    && self.arg(frozen, &self.reqs[i], 1).eq_ignore_ascii_case(b"SETNAME") =>
            {
                Some(StateKey::ClientName)
            }
            _ => None,
        };
        let argc = self.reqs[i].args.len();
        let effect = match spec.name {
            "SELECT" if argc == 2 => crate::resp::parse_int(self.arg(frozen, &self.reqs[i], 1))
                .map_or(StateEffect::None, |db| StateEffect::Db(db.max(0) as u32)),
            "HELLO" if argc > 1 => StateEffect::Resp3(self.arg(frozen, &self.reqs[i], 1) == b"3"),
            _ => StateEffect::None,
        };
        if let (StateEffect::Db(db), b"+OK\r\n") = (&effect, reply) {
            // The upstream has this database: an outage may answer SELECT for it.
            self.ctx.upstream.connector.databases.reached(*db);
        }
        // A HELLO is recorded as the pieces of state it sets (protocol, credentials, name),
        // each replacing its own kind: a later bare `HELLO`, or `HELLO 3` without AUTH,
        // keeps the user an earlier `HELLO 3 AUTH …` authenticated as.
        let records: SmallVec<[(StateKey, Bytes, StateEffect); 3]> = match (spec.name, key) {
            ("HELLO", _) => self.hello_state(frozen, i),
            (_, Some(key)) => smallvec::smallvec![(key, self.bytes_of(frozen, i..i + 1), effect)],
            _ => SmallVec::new(),
        };
        if self.txn == Txn::Multi && !matches!(spec.name, "EXEC" | "DISCARD" | "MULTI" | "RESET") {
            // Queued, not run: it takes effect when EXEC runs it (DISCARD drops it).
            self.txn_state.extend(records);
            return;
        }
        let queued = std::mem::take(&mut self.txn_state);
        // EXEC ran what was queued, unless WATCH aborted it (a null reply).
        if spec.name == "EXEC" && !matches!(reply, b"*-1\r\n" | b"_\r\n") {
            for (key, bytes, effect) in queued {
                self.apply_state(key, bytes, effect);
            }
        }
        match spec.name {
            "MULTI" => self.txn = Txn::Multi,
            "WATCH" if self.txn == Txn::None => self.txn = Txn::Watching,
            "EXEC" | "DISCARD" | "UNWATCH" => self.txn = Txn::None,
            "RESET" => {
                self.txn = Txn::None;
                self.db = self.ctx.cfg.upstream.db;
                self.resp3 = false;
                // As Redis: RESET leaves the client unauthenticated (with client auth).
                self.authed = !self.ctx.auth.required();
                if let Some(d) = &mut self.dedicated {
                    d.clear_state();
                    // The upstream reset this connection to database 0 and the default
                    // user, not to the URL's: the next command gets a fresh connection
                    // with the URL's AUTH and SELECT.
                    d.disconnect();
                }
            }
            _ => {}
        }
        for (key, bytes, effect) in records {
            self.apply_state(key, bytes, effect);
        }
    }

    /// The state `HELLO [protover [AUTH user pass] [SETNAME name]]` sets, as the commands
    /// that set each piece on a new connection.
    fn hello_state(&self, frozen: &Bytes, i: usize) -> SmallVec<[(StateKey, Bytes, StateEffect); 3]> {
        let req = &self.reqs[i];
        let argc = req.args.len();
        let arg = |k: usize| self.arg(frozen, req, k);
        let mut out = SmallVec::new();
        if argc < 2 {
            return out;
        }
        let proto = arg(1);
        let encode = crate::upstream::encode_one;
        out.push((StateKey::Hello, encode(&[b"HELLO", proto]), StateEffect::Resp3(proto == b"3")));
        let mut k = 2;
        while k < argc {
            if arg(k).eq_ignore_ascii_case(b"AUTH") && k + 2 < argc {
                let auth = encode(&[b"AUTH", arg(k + 1), arg(k + 2)]);
                out.push((StateKey::Auth, auth, StateEffect::None));
                k += 3;
            } else if arg(k).eq_ignore_ascii_case(b"SETNAME") && k + 1 < argc {
                let name = encode(&[b"CLIENT", b"SETNAME", arg(k + 1)]);
                out.push((StateKey::ClientName, name, StateEffect::None));
                k += 2;
            } else {
                k += 1;
            }
        }
        out
    }

    /// A connection-state command took effect: follow it here, and record it for the
    /// dedicated connection to restore after a reconnect.
    fn apply_state(&mut self, key: StateKey, bytes: Bytes, effect: StateEffect) {
        match effect {
            StateEffect::Db(db) => self.db = db,
            StateEffect::Resp3(on) => self.resp3 = on,
            StateEffect::None => {}
        }
        if let Some(d) = &mut self.dedicated {
            d.record_state(key, bytes);
        }
    }

    fn answer_lost_txn(&mut self, _frozen: &Bytes, i: usize) {
        let name = self.reqs[i].name();
        match name {
            "EXEC" => {
                write_error_line(&mut self.out, "EXECABORT respite: the upstream connection was lost during the transaction; it was discarded");
                self.txn = Txn::None;
            }
            "DISCARD" | "UNWATCH" | "RESET" => {
                self.out.extend_from_slice(b"+OK\r\n");
                self.txn = Txn::None;
            }
            _ => write_error_line(
                &mut self.out,
                &format!("ERR respite: the upstream connection was lost during MULTI/WATCH; {name} refused until EXEC or DISCARD"),
            ),
        }
        self.count(i, Outcome::Refused);
    }

    fn answer_local(&mut self, i: usize) {
        // QUIT is the only local command on the healthy path.
        self.out.extend_from_slice(b"+OK\r\n");
        self.count(i, Outcome::Local);
        self.closing = true;
    }

    fn count(&self, i: usize, outcome: Outcome) {
        self.count_at(i, outcome, Instant::now());
    }

    /// Counts a command that ended at `now` (one clock read serves a whole batch).
    fn count_at(&self, i: usize, outcome: Outcome, now: Instant) {
        let req = &self.reqs[i];
        let m = &self.ctx.metrics;
        m.command(req.id, outcome);
        // A round's requests share their arrival and usually their end: one subtraction.
        let (received, end, secs) = self.last_duration.get();
        let secs = if received == req.received && end == now {
            secs
        } else {
            let secs = now.saturating_duration_since(req.received).as_secs_f64();
            self.last_duration.set((req.received, now, secs));
            secs
        };
        self.durations.observe(secs);
    }

    /// Writes the pending replies. A client whose replies exceed `client.output_buffer_limit`,
    /// or that accepts no bytes for `client.write_timeout`, is disconnected (Redis's
    /// `client-output-buffer-limit`): a slow or hostile reader cannot hold memory forever.
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.over_output_limit() {
            self.overflow = false;
            self.ctx.metrics.client_disconnects.with_label_values(&["output_buffer"]).inc();
            self.out = BytesMut::new();
            return Err(std::io::Error::other("client output buffer limit reached"));
        }
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            let written = self.write_client(&out).await;
            self.out = out;
            written?;
            self.out.clear();
            if self.out.capacity() > 1 << 20 {
                self.out = BytesMut::with_capacity(OUT_START);
            }
        }
        Ok(())
    }
}

impl Session {
    /// Writes to the client within `client.write_timeout`.
    async fn write_client(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        // The durations of the commands answered here are visible before their replies.
        self.durations.flush();
        // Usually the socket takes it all at once: no timer, no future.
        let bytes = match self.write.try_write(bytes) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => bytes,
            Err(e) => return Err(e),
        };
        let timeout = self.live.write_timeout;
        if timeout.is_zero() {
            return self.write.write_all(bytes).await;
        }
        match tokio::time::timeout(timeout, self.write.write_all(bytes)).await {
            Ok(r) => r,
            Err(_) => {
                self.ctx.metrics.client_disconnects.with_label_values(&["write_timeout"]).inc();
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client did not read its replies"))
            }
        }
    }

    /// Relays a pub/sub, MONITOR or tracking connection: client requests go upstream as
    /// they arrive, upstream frames go to the client as they arrive. Returns `None` when
    /// the upstream connection was lost (the client was told, and goes back to rounds).
    async fn relay(&mut self) -> Option<End> {
        loop {
            // Requests left over from a round cut at `max_pipeline` go before reading more.
            if std::mem::take(&mut self.backlog) {
                if let Some(end) = self.relay_round().await {
                    return Some(end);
                }
                continue;
            }
            crate::resp::make_room(&mut self.rbuf, crate::resp::READ_ROOM);
            let (up, ubuf) = self.stream.as_mut().expect("in stream mode");
            let client_read = self.read.read_buf(&mut self.rbuf);
            tokio::select! {
                r = client_read => match r {
                    Ok(0) => return Some(End::ClientClosed),
                    Err(e) => return Some(End::Io(e)),
                    Ok(_) => {
                        if let Some(end) = self.relay_round().await {
                            return Some(end);
                        }
                    }
                },
                r = up.read_buf(ubuf) => match r {
                    Ok(n) if n > 0 => {
                        // After re-subscribing, the client already has these confirmations.
                        while self.swallow > 0 {
                            match crate::resp::ReplyScanner::default().next(ubuf) {
                                Ok(Some(info)) => {
                                    let _ = ubuf.split_to(info.len);
                                    self.swallow -= 1;
                                }
                                _ => break,
                            }
                        }
                        if self.swallow > 0 {
                            continue;
                        }
                        let chunk = ubuf.split();
                        if let Err(e) = self.write_client(&chunk).await {
                            return Some(End::Io(e));
                        }
                    }
                    _ => {
                        if self.closing {
                            return Some(End::Quit);
                        }
                        self.stream = None;
                        self.ctx.health.record_failure("pub/sub connection closed by the upstream");
                        if self.subs.total() > 0 {
                            self.go_local();
                            return None;
                        }
                        write_error_line(
                            &mut self.out,
                            "ERR respite: the upstream connection was lost; subscriptions and MONITOR ended, subscribe again",
                        );
                        if let Err(e) = self.flush().await {
                            return Some(End::Io(e));
                        }
                        return None;
                    }
                },
                _ = &mut self.shutdown => return Some(End::Shutdown),
                // An outage that leaves this connection open (a drill, a partition) is
                // still an outage: subscribers move to local delivery.
                _ = tokio::time::sleep(Duration::from_millis(100)), if self.subs.total() > 0 => {
                    if self.ctx.outage.active() {
                        self.stream = None;
                        self.go_local();
                        return None;
                    }
                }
            }
        }
    }

    /// Relays the complete requests buffered from the client (up to `max_pipeline`).
    async fn relay_round(&mut self) -> Option<End> {
        let (consumed, bad_input) = self.parse_round();
        let frozen = crate::resp::split_front(&mut self.rbuf, consumed).freeze();
        let n = self.reqs.len();
        if n > 0 {
            let all = self.relayed_bytes(&frozen, 0..n);
            self.track_subscriptions(&frozen, 0..n);
            self.relay_input(all, 0..n).await;
        }
        self.reqs.clear();
        self.args.clear();
        if let Some(e) = bad_input {
            self.ctx.metrics.protocol_errors.inc();
            write_error_line(&mut self.out, &format!("ERR {e}"));
            let _ = self.flush().await;
            return Some(End::Protocol(e));
        }
        None
    }

    /// `UNSUBSCRIBE [channel …]` (and the P/S forms) from a client subscribed to nothing:
    /// one confirmation per channel named (one with a nil channel when none is), each with
    /// a count of 0.
    fn unsubscribe_unsubscribed(&mut self, frozen: &Bytes, i: usize) {
        let req = &self.reqs[i];
        let kind = req.name().to_ascii_lowercase();
        let base: &[u8] = req.inline.as_deref().unwrap_or(frozen);
        let args = req_args(&self.args, base, req.args.clone());
        if args.len() < 2 {
            crate::pubsub::confirmation(&mut self.out, self.resp3, kind.as_bytes(), None, 0);
        }
        for ch in args.iter().skip(1) {
            crate::pubsub::confirmation(&mut self.out, self.resp3, kind.as_bytes(), Some(ch), 0);
        }
        self.count(i, Outcome::Local);
    }

    /// The bytes of requests relayed as they are, except that with client authentication
    /// an AUTH, or a HELLO carrying AUTH, goes as a bare `AUTH`: its credentials are
    /// respite's, never the upstream's, and the upstream's argument error keeps the
    /// replies in order (a relayed connection's replies all come from the upstream).
    fn relayed_bytes(&self, frozen: &Bytes, run: Range<usize>) -> Bytes {
        let credentials = |i: usize| {
            let r = &self.reqs[i];
            match r.name() {
                "AUTH" => true,
                "HELLO" => (1..r.args.len()).any(|k| self.arg(frozen, r, k).eq_ignore_ascii_case(b"AUTH")),
                _ => false,
            }
        };
        if !self.ctx.auth.required() || !run.clone().any(credentials) {
            return self.join(frozen, run);
        }
        let mut all = BytesMut::new();
        for i in run {
            if credentials(i) {
                crate::upstream::encode_command(&mut all, &[b"AUTH"]);
            } else {
                all.extend_from_slice(&self.bytes_of(frozen, i..i + 1));
            }
        }
        all.freeze()
    }

    /// A local subscriber's queue, bounded in bytes by `client.output_buffer_limit`.
    fn local_queue(&self) -> (crate::pubsub::SubTx, crate::pubsub::SubRx) {
        let limit = self.live.output_buffer_limit;
        crate::pubsub::queue(if limit == 0 { u64::MAX } else { limit })
    }

    /// Whether this round's replies went past `client.output_buffer_limit`.
    fn over_output_limit(&self) -> bool {
        let limit = self.live.output_buffer_limit;
        self.overflow || (limit > 0 && self.out.len() as u64 > limit)
    }

    /// Keeps the client subscribed, locally, until the upstream is back.
    fn go_local(&mut self) {
        let broker = &self.ctx.outage.broker;
        let (tx, rx) = self.local_queue();
        let id = broker.subscriber();
        for c in &self.subs.channels {
            broker.subscribe(id, c.clone(), tx.clone());
        }
        for p in &self.subs.patterns {
            broker.psubscribe(id, p.clone(), tx.clone());
        }
        for c in &self.subs.shard {
            broker.ssubscribe(id, c.clone(), tx.clone());
        }
        self.local = Some(LocalSub { id, tx, rx });
        tracing::debug!(subscriptions = self.subs.total(), "outage: subscriptions served locally");
    }

    /// Writes client requests to the relayed connection.
    async fn relay_input(&mut self, bytes: Bytes, run: Range<usize>) {
        for i in run {
            if self.reqs[i].route == Route::Local {
                // QUIT: the upstream answers +OK and closes; then the client is closed too.
                self.closing = true;
            }
            self.count(i, Outcome::Ok);
        }
        let (up, _) = self.stream.as_mut().expect("in stream mode");
        if up.write_all(&bytes).await.is_err() {
            // The read side sees the closed connection and tells the client.
            tracing::debug!("write to relayed upstream connection failed");
        }
    }
}

async fn sleep_or_never(d: Duration) {
    if d.is_zero() {
        std::future::pending::<()>().await
    } else {
        tokio::time::sleep(d).await
    }
}

/// What a connection-state command changes in the session itself.
#[derive(Debug, Clone, Copy)]
enum StateEffect {
    Db(u32),
    Resp3(bool),
    None,
}

/// The replies in an EXEC reply: `Some(None)` for a nil (WATCH aborted the transaction),
/// `None` when it is not an array of complete replies.
fn exec_elements(reply: &Bytes) -> Option<Option<Vec<Bytes>>> {
    if !matches!(reply.first(), Some(b'*')) {
        return None;
    }
    let cr = memchr::memchr(b'\r', reply)?;
    let n = crate::resp::parse_int(&reply[1..cr])?;
    if n < 0 {
        return Some(None);
    }
    let mut pos = cr + 2;
    let mut out = Vec::with_capacity(n.min(1024) as usize);
    for _ in 0..n {
        let info = crate::resp::ReplyScanner::default().next(reply.get(pos..)?).ok()??;
        out.push(reply.slice(pos..pos + info.len));
        pos += info.len;
    }
    Some(Some(out))
}

/// A request's command name for error texts: the table's name, or what the client sent
/// (upper-cased, printable, at most 32 bytes) for commands the table does not know.
fn display_name(req: &Req, arena: &[Arg], frozen: &Bytes) -> String {
    if let Some(spec) = req.spec {
        return spec.name.to_string();
    }
    let base: &[u8] = req.inline.as_deref().unwrap_or(frozen);
    let (s, l) = arena[req.args.start];
    base[s as usize..(s + l) as usize]
        .iter()
        .take(32)
        .map(|&b| if b.is_ascii_graphic() { b.to_ascii_uppercase() as char } else { '?' })
        .collect()
}

/// The reply to a wrong password (Redis's words).
fn wrongpass(out: &mut BytesMut) -> Outcome {
    write_error_line(out, "WRONGPASS invalid username-password pair or user is disabled.");
    Outcome::Refused
}

/// Appends an error reply; the outcome of a command answered with it.
fn err(out: &mut BytesMut, msg: &str) -> Outcome {
    write_error_line(out, msg);
    Outcome::Error
}
