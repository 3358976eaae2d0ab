//! The journal: writes accepted during an outage, in acceptance order, until the replayer
//! has applied them upstream and the watermark confirms it.
//!
//! [`Journal`] is the interface the outage engine and the replayer use; [`MemJournal`] keeps
//! records in memory (lost if the process dies — see README "During an outage");
//! [`DiskJournal`] (`--journal-dir`) keeps them in checksummed segment files that survive a
//! crash and a restart.

mod disk;
mod memory;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use thiserror::Error;

pub use disk::{encode_record, scan_segment, Damage, DiskJournal, Scan, RECORD_HEADER, SEGMENT_MAGIC};
pub use memory::MemJournal;

/// One accepted write (or MULTI/EXEC block): RESP-encoded commands to replay in `db`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Strictly increasing, never reused (also across restarts for a durable journal).
    pub seq: u64,
    pub db: u32,
    /// Number of commands in `payload` (a MULTI/EXEC block journals its inner commands).
    pub commands: u32,
    pub payload: Bytes,
    /// Acceptance time, unix milliseconds.
    pub accepted_ms: u64,
}

/// Why a write could not be journaled; the client gets an `-OOM`-style error and the write
/// is not acknowledged.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum JournalError {
    #[error("journal full ({entries} entries, {bytes} bytes): write refused until the upstream is back")]
    Full { entries: u64, bytes: u64 },
    #[error("journal write failed: {0}")]
    Io(String),
}

/// Figures for `/status` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub entries: u64,
    pub bytes: u64,
    /// Acceptance time of the oldest unreplayed record, unix milliseconds.
    pub oldest_ms: Option<u64>,
    pub last_seq: u64,
}

/// A future that completes when a record is durable under the fsync policy.
pub type Durable<'a> = Pin<Box<dyn Future<Output = Result<(), JournalError>> + Send + 'a>>;

/// Where both journals keep the payloads of unreplayed records: copied into shared 1 MiB
/// chunks. A payload handed to `append` is usually a slice of a client's read buffer;
/// keeping that slice would keep the whole buffer alive (several times the payload, and
/// invisible to `max_bytes`), and a separate allocation per record costs a malloc each.
/// Records leave in order, so at most the chunks at both ends are partly unused.
///
/// A journal grows into memory the process never touched, and on a VM each first touch
/// of a page is a fault costing microseconds (measured: one per ~40 journaled SETs, ~8%
/// of an outage SET's CPU). Chunks therefore come pre-faulted from a helper thread
/// ([`Prefault`]), started by the first append, so the client-serving thread only copies.
#[derive(Default)]
pub struct Arena {
    chunk: bytes::BytesMut,
}

impl Arena {
    const CHUNK: usize = 1 << 20;
    /// Larger payloads get an allocation of their own (they fill pages themselves).
    const ALONE: usize = 16 << 10;

    /// An owned copy of `payload`.
    pub fn own(&mut self, payload: &[u8]) -> Bytes {
        if payload.len() > Self::ALONE {
            return Bytes::copy_from_slice(payload);
        }
        if self.chunk.capacity() - self.chunk.len() < payload.len() {
            self.chunk = Prefault::chunk();
        }
        self.chunk.extend_from_slice(payload);
        self.chunk.split().freeze()
    }
}

/// The helper thread that prepares the [`Arena`]'s next chunks: allocated and written
/// once (so resident) while the serving thread is busy elsewhere. At most two chunks wait.
struct Prefault {
    ready: parking_lot::Mutex<std::sync::mpsc::Receiver<bytes::BytesMut>>,
}

impl Prefault {
    const WAITING: usize = 2;

    /// A chunk of [`Arena::CHUNK`] bytes: a prepared one when ready, else a fresh one.
    fn chunk() -> bytes::BytesMut {
        static HELPER: std::sync::OnceLock<Option<Prefault>> = std::sync::OnceLock::new();
        let helper = HELPER.get_or_init(Prefault::start);
        helper
            .as_ref()
            .and_then(|h| h.ready.lock().try_recv().ok())
            .unwrap_or_else(|| bytes::BytesMut::with_capacity(Arena::CHUNK))
    }

    /// `None` if no thread can be started (chunks are then allocated in place).
    fn start() -> Option<Prefault> {
        let (tx, rx) = std::sync::mpsc::sync_channel(Self::WAITING);
        std::thread::Builder::new()
            .name("respite-prefault".into())
            .spawn(move || loop {
                let mut chunk = bytes::BytesMut::with_capacity(Arena::CHUNK);
                chunk.resize(Arena::CHUNK, 0);
                chunk.clear();
                if tx.send(chunk).is_err() {
                    return;
                }
            })
            .ok()?;
        Some(Prefault { ready: parking_lot::Mutex::new(rx) })
    }
}

/// Up to `max_records` / about `max_bytes` of `records` (in sequence order) with `seq > after`:
/// at least one record, then none that would pass the byte budget. Both journals keep their
/// unreplayed records in such a deque and answer [`Journal::read_after`] with this.
pub fn records_after(
    records: &std::collections::VecDeque<Record>,
    after: u64,
    max_records: usize,
    max_bytes: usize,
) -> Vec<Record> {
    let start = records.partition_point(|r| r.seq <= after);
    let mut out = Vec::new();
    let mut bytes = 0;
    for r in records.range(start..) {
        if out.len() >= max_records || (bytes > 0 && bytes + r.payload.len() > max_bytes) {
            break;
        }
        bytes += r.payload.len();
        out.push(r.clone());
    }
    out
}

/// The journal interface.
pub trait Journal: Send + Sync {
    /// Appends a record and returns its sequence number. Called under the outage lock, so
    /// records are in acceptance order. Fails when full; then nothing was appended.
    /// `accepted_ms`: acceptance time, unix milliseconds.
    fn append(&self, db: u32, commands: u32, payload: Bytes, accepted_ms: u64) -> Result<u64, JournalError>;

    /// Completes once `seq` is durable under the configured policy (at once in memory); a
    /// write is acknowledged only after this.
    fn durable(&self, seq: u64) -> Durable<'_>;

    /// Whether a record of `len` payload bytes would fit now.
    fn has_room(&self, len: usize) -> bool;

    /// Up to `max_records` / about `max_bytes` records with `seq > after`, in order.
    fn read_after(&self, after: u64, max_records: usize, max_bytes: usize) -> Vec<Record>;

    /// Everything up to and including `seq` is applied upstream: drop it.
    fn confirm(&self, seq: u64);

    fn stats(&self) -> JournalStats;

    /// Identifies this journal's records upstream (the watermark key's suffix). A durable
    /// journal keeps it across restarts.
    fn instance_id(&self) -> &str;

    /// Whether records survive the process (`/status` `journal.durable`).
    fn is_persistent(&self) -> bool {
        false
    }

    /// Makes everything appended durable and stops background work, at shutdown. Later
    /// appends fail.
    fn close(&self) -> Result<(), JournalError> {
        Ok(())
    }
}
