//! A shared, pipelined upstream connection: many client sessions' stateless commands are
//! written back to back on one connection and the replies are matched to them in order.
//!
//! Two tasks per connection: the writer gathers whatever batches are queued and writes them
//! in one syscall; the reader splits the replies by count and hands each batch its bytes
//! (zero-copy) with the end offset of every reply. A reply that does not come within the
//! command timeout (`upstream.command_timeout` as it was when the batch was written: it
//! reloads live) marks the connection stuck: every request on it fails with a timeout and
//! the next batch opens a fresh connection, so a frozen upstream cannot hold clients longer
//! than their timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::stream::{UpstreamReadHalf, UpstreamWriteHalf};
use super::Connector;
use crate::error::UpstreamError;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::reload::Live;
use crate::resp::ReplyScanner;

/// Replies to a batch: their bytes back to back, and where each one ends.
#[derive(Debug, Default)]
pub struct BatchReply {
    pub bytes: Bytes,
    pub ends: SmallVec<[usize; 16]>,
}

/// A batch that did not complete: the replies that did arrive (a prefix), and why the rest
/// did not.
#[derive(Debug)]
pub struct BatchFailure {
    pub done: BatchReply,
    pub error: UpstreamError,
}

impl BatchFailure {
    fn new(error: UpstreamError) -> BatchFailure {
        BatchFailure { done: BatchReply::default(), error }
    }
}

pub type BatchResult = Result<BatchReply, Box<BatchFailure>>;

struct Batch {
    bytes: Bytes,
    count: usize,
    limit: usize,
    reply: oneshot::Sender<BatchResult>,
}

struct Pending {
    count: usize,
    /// Most bytes of replies the batch's client may still take (`usize::MAX`: no limit).
    limit: usize,
    reply: oneshot::Sender<BatchResult>,
    sent_at: Instant,
    /// The command timeout when the batch was written.
    timeout: Duration,
}

/// Handle to one shared connection; cheap to clone.
#[derive(Clone)]
pub struct Mux {
    tx: mpsc::Sender<Batch>,
}

/// Most bytes the writer gathers into one write.
const GATHER_BYTES: usize = 256 << 10;

impl Mux {
    pub fn spawn(
        connector: Arc<Connector>,
        live: Arc<Live>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Mux {
        let (tx, rx) = mpsc::channel(1024);
        let ctx = ConnCtx { live, health, metrics, tracker: tracker.clone() };
        tracker.spawn(writer(rx, connector, ctx, cancel));
        Mux { tx }
    }

    /// Sends `count` complete requests (`bytes`, back to back) and waits for their replies.
    /// Replies beyond `limit` bytes are read and dropped, and the batch fails with
    /// [`UpstreamError::ReplyLimit`]: a client cannot make respite hold more than its
    /// output buffer limit plus one reply.
    pub async fn send(&self, bytes: Bytes, count: usize, limit: usize) -> BatchResult {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Batch { bytes, count, limit, reply }).await.is_err() {
            return Err(Box::new(BatchFailure::new(UpstreamError::Broken {
                reason: "respite is shutting down".into(),
                sent: false,
            })));
        }
        rx.await.unwrap_or_else(|_| {
            Err(Box::new(BatchFailure::new(UpstreamError::Broken {
                reason: "upstream connection task ended".into(),
                sent: true,
            })))
        })
    }
}

#[derive(Clone)]
struct ConnCtx {
    live: Arc<Live>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
}

struct Conn {
    write: UpstreamWriteHalf,
    pending: mpsc::UnboundedSender<Pending>,
    dead: CancellationToken,
}

async fn writer(mut rx: mpsc::Receiver<Batch>, connector: Arc<Connector>, ctx: ConnCtx, cancel: CancellationToken) {
    let mut conn: Option<Conn> = None;
    let mut gathered: Vec<Batch> = Vec::new();
    let mut wbuf = BytesMut::new();
    loop {
        let first = tokio::select! {
            b = rx.recv() => match b { Some(b) => b, None => break },
            _ = cancel.cancelled() => break,
        };
        let mut size = first.bytes.len();
        gathered.push(first);
        // Let the other sessions that are ready run first (the scheduler runs a woken task
        // right after its waker), so their requests join this write: one syscall for many
        // clients instead of one each.
        tokio::task::yield_now().await;
        while size < GATHER_BYTES {
            match rx.try_recv() {
                Ok(b) => {
                    size += b.bytes.len();
                    gathered.push(b);
                }
                Err(_) => break,
            }
        }
        // A batch whose session stopped waiting (its deadline passed while this writer was
        // reconnecting or stuck writing) was answered -TIMEOUT: it must not run later.
        gathered.retain(|b| !b.reply.is_closed());
        if gathered.is_empty() {
            continue;
        }
        if conn.as_ref().is_none_or(|c| c.dead.is_cancelled()) {
            conn = None;
            let connected =
                if ctx.health.upstream_usable() { connector.connect().await } else { Err(UpstreamError::Down) };
            match connected {
                Ok(stream) => conn = Some(start_conn(stream, &ctx)),
                Err(e) => {
                    if e != UpstreamError::Down {
                        ctx.health.record_failure(&e.to_string());
                    }
                    for b in gathered.drain(..) {
                        let _ = b.reply.send(Err(Box::new(BatchFailure::new(e.clone()))));
                    }
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let single = if gathered.len() == 1 { Some(gathered[0].bytes.clone()) } else { None };
        if single.is_none() {
            wbuf.clear();
            for b in &gathered {
                wbuf.extend_from_slice(&b.bytes);
            }
        }
        let now = Instant::now();
        let timeout = ctx.live.load().command_timeout;
        for b in gathered.drain(..) {
            let _ = c.pending.send(Pending { count: b.count, limit: b.limit, reply: b.reply, sent_at: now, timeout });
        }
        let write = async {
            match &single {
                Some(bytes) => c.write.write_all(bytes).await,
                None => c.write.write_all(&wbuf).await,
            }
        };
        // A write blocks while the upstream reads nothing (a frozen process, a blackholed
        // connection). Once the reader gave up on the connection (a reply timed out) the
        // write is abandoned with it, so the next batch opens a fresh connection instead of
        // waiting behind a write that may never finish; and a connection the reader already
        // gave up on is not written to at all (its batches were failed as maybe sent).
        let written = tokio::select! {
            biased;
            _ = c.dead.cancelled() => false,
            w = write => w.is_ok(),
        };
        if !written {
            // The reader fails everything handed to it: those requests may have been sent.
            c.dead.cancel();
            conn = None;
        }
        if wbuf.capacity() > 4 * GATHER_BYTES {
            wbuf = BytesMut::new();
        }
    }
    if let Some(c) = conn {
        c.dead.cancel();
    }
}

fn start_conn(stream: super::UpstreamStream, ctx: &ConnCtx) -> Conn {
    let (read, write) = stream.into_split();
    let (pending, pending_rx) = mpsc::unbounded_channel();
    let dead = CancellationToken::new();
    ctx.tracker.spawn(reader(read, pending_rx, dead.clone(), ctx.clone()));
    Conn { write, pending, dead }
}

struct Current {
    p: Pending,
    /// Bytes of `buf` taken by this batch's complete replies.
    acc: usize,
    ends: SmallVec<[usize; 16]>,
    /// Replies complete so far.
    done: usize,
    /// Past the client's limit: complete replies are dropped as they come.
    over: bool,
}

impl Current {
    fn new(p: Pending) -> Current {
        Current { p, acc: 0, ends: SmallVec::new(), done: 0, over: false }
    }
}

async fn reader(
    mut read: UpstreamReadHalf,
    mut pending_rx: mpsc::UnboundedReceiver<Pending>,
    dead: CancellationToken,
    ctx: ConnCtx,
) {
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut scanner = ReplyScanner::default();
    let mut cur: Option<Current> = None;
    // One timer for the connection, moved to each batch's deadline: moving a registered
    // timer later is one atomic swap; a fresh one per read would register and deregister.
    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    let error = 'conn: loop {
        // Hand out every batch whose replies are complete.
        loop {
            if cur.is_none() {
                match pending_rx.try_recv() {
                    Ok(p) => cur = Some(Current::new(p)),
                    Err(_) => break,
                }
            }
            let c = cur.as_mut().expect("set above");
            match scanner.next(&buf[c.acc..]) {
                Ok(Some(info)) if info.is_push() => {
                    break 'conn UpstreamError::Protocol("unexpected push frame on a shared connection".into())
                }
                Ok(Some(info)) => {
                    c.done += 1;
                    if c.over {
                        let _ = buf.split_to(info.len);
                    } else {
                        c.acc += info.len;
                        c.ends.push(c.acc);
                        if c.acc > c.p.limit {
                            // The client is closed anyway: drop what it cannot take, and the
                            // rest of its replies as they complete.
                            let _ = buf.split_to(c.acc);
                            c.acc = 0;
                            c.ends.clear();
                            c.over = true;
                        }
                    }
                    if c.done == c.p.count {
                        let c = cur.take().expect("present");
                        let elapsed = c.p.sent_at.elapsed();
                        ctx.metrics.upstream_duration.observe(elapsed.as_secs_f64());
                        ctx.health.record_success(elapsed);
                        let result = if c.over {
                            Err(Box::new(BatchFailure::new(UpstreamError::ReplyLimit)))
                        } else {
                            Ok(BatchReply { bytes: buf.split_to(c.acc).freeze(), ends: c.ends })
                        };
                        let _ = c.p.reply.send(result);
                    }
                }
                Ok(None) => break,
                Err(e) => break 'conn UpstreamError::Protocol(e.to_string()),
            }
        }
        if cur.is_none() && !buf.is_empty() {
            break UpstreamError::Protocol("reply without a request".into());
        }
        let deadline = cur.as_ref().map(|c| (c.p.sent_at + c.p.timeout, c.p.timeout));
        if let Some((at, _)) = deadline {
            timer.as_mut().reset(at);
        }
        crate::resp::make_room(&mut buf, super::UPSTREAM_READ_ROOM);
        tokio::select! {
            r = read.read_buf(&mut buf) => match r {
                Ok(0) => break UpstreamError::Broken { reason: "closed by the upstream".into(), sent: true },
                Ok(_) => {}
                Err(e) => break UpstreamError::Broken { reason: e.to_string(), sent: true },
            },
            p = pending_rx.recv(), if cur.is_none() => match p {
                Some(p) => cur = Some(Current::new(p)),
                None => return,
            },
            _ = dead.cancelled() => break UpstreamError::Broken { reason: "write to upstream failed".into(), sent: true },
            // Counted in respite_upstream_timeouts_total by the session that waited.
            _ = timer.as_mut(), if deadline.is_some() => {
                break UpstreamError::Timeout(deadline.map_or(Duration::ZERO, |d| d.1));
            }
        }
    };
    dead.cancel();
    // An idle connection the upstream closed (its `timeout` setting) failed nobody: the next
    // batch opens another. Anything else is a failure.
    let idle_close = cur.is_none()
        && buf.is_empty()
        && pending_rx.is_empty()
        && matches!(&error, UpstreamError::Broken { reason, .. } if reason == "closed by the upstream");
    if !idle_close {
        ctx.health.record_failure(&error.to_string());
    }
    if let Some(c) = cur {
        let bytes = buf.split_to(c.acc).freeze();
        let _ =
            c.p.reply
                .send(Err(Box::new(BatchFailure { done: BatchReply { bytes, ends: c.ends }, error: error.clone() })));
    }
    pending_rx.close();
    while let Ok(p) = pending_rx.try_recv() {
        let _ = p.reply.send(Err(Box::new(BatchFailure::new(error.clone()))));
    }
}
