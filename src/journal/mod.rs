//! The journal: writes accepted during an outage, in acceptance order, until the replayer
//! has applied them upstream and the watermark confirms it.
//!
//! [`Journal`] is the interface the outage engine and the replayer use; [`MemJournal`] keeps
//! records in memory (lost if the process dies — see README "During an outage");
//! [`DiskJournal`] (`--journal-dir`) keeps them in checksummed segment files that survive a
//! crash and a restart.

mod buffers;
mod disk;
mod memory;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use thiserror::Error;

pub use buffers::{Arena, Records};
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
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JournalStats {
    pub entries: u64,
    pub bytes: u64,
    /// Acceptance time of the oldest unreplayed record, unix milliseconds.
    pub oldest_ms: Option<u64>,
    pub last_seq: u64,
    /// fsync rounds of a durable journal so far, and the time they took.
    pub fsyncs: u64,
    pub fsync_seconds: f64,
    /// An fsync failed: outage writes are refused until a restart.
    pub failed: bool,
}

/// A future that completes when a record is durable under the fsync policy.
pub type Durable<'a> = Pin<Box<dyn Future<Output = Result<(), JournalError>> + Send + 'a>>;

/// The journal interface.
pub trait Journal: Send + Sync {
    /// Appends a record and returns its sequence number. Called under the outage lock, so
    /// records are in acceptance order. Fails when full; then nothing was appended.
    /// `accepted_ms`: acceptance time, unix milliseconds.
    fn append(&self, db: u32, commands: u32, payload: &[u8], accepted_ms: u64) -> Result<u64, JournalError>;

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
