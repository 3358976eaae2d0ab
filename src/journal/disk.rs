//! The durable journal (`--journal-dir`): append-only segment files of checksummed records,
//! an fsync policy as Redis's `appendfsync`, recovery of torn and corrupt tails at start.
//!
//! Decisions, and why:
//!
//! - **Files.** `<dir>/<first seq, 20 digits>.seg` segments (so names sort in sequence
//!   order), `<dir>/instance_id` (16 random hex characters, created once: the watermark key
//!   `respite:replay:<id>` stays the same across restarts) and `<dir>/confirmed` (the highest
//!   sequence number the replayer confirmed, replaced atomically by write-tmp + rename).
//! - **Record format** (little-endian): `[u32 len][u32 crc][u64 seq][u32 db][u32 commands]
//!   [u64 accepted_ms][payload]`; `len` counts the bytes after the crc field, and the CRC-32
//!   (crc32fast) covers `len` and everything after the crc field, so a flipped length is
//!   caught too. A segment starts with the 8-byte magic [`SEGMENT_MAGIC`].
//! - **Write path.** [`Journal::append`] runs under the outage lock: it encodes the record
//!   and writes it with one positioned `write` at the segment's logical end, before it
//!   returns. The record is then in the page cache, so a killed process loses nothing it
//!   acknowledged. A failed write (a full disk) returns [`JournalError::Io`], consumes no
//!   sequence number and leaves no record: the next write overwrites whatever part reached
//!   the file, and the tail is cut before the segment is closed. The client gets `-OOM`.
//! - **fsync.** `always`: [`Journal::durable`] waits until a flusher thread has fsynced past
//!   the record; writes that arrive while an fsync runs share the next one (group commit).
//!   `everysec`: the flusher fsyncs once a second and `durable` returns at once (as Redis
//!   acknowledges before the fsync: a power loss can cost the last second). `no`: never
//!   fsynced explicitly while running. Every policy fsyncs the open segment on graceful
//!   shutdown, as Redis does its AOF. A failed
//!   fsync fails the journal for good (Linux may have dropped the dirty pages, so a retry
//!   could lie): `durable` and later appends return errors until a restart re-reads the
//!   files.
//! - **Memory.** Unreplayed records are also kept in memory, so [`Journal::read_after`]
//!   never reads the disk; the files are for durability and recovery.
//! - **Limits.** `max_entries` bounds the unreplayed records; `max_bytes` bounds the
//!   journal's disk use: every byte of every live segment file, including confirmed records
//!   that share a segment with unconfirmed ones. `stats().bytes` reports that disk use.
//! - **Compaction.** [`Journal::confirm`] drops records from memory; the flusher thread then
//!   writes `confirmed` and only after that deletes segments whose records are all
//!   confirmed (and the active one once everything is), so the highest sequence number
//!   ever used survives the deletion and numbers are never reused. A confirmed watermark
//!   beyond the last sequence number (records lost to a power loss after their replay)
//!   moves numbering past it, so no new record hides below the watermark.
//! - **Recovery at start.** Segments are read in order; the first bad record (short,
//!   length out of range, checksum mismatch, sequence number not increasing, zero-filled)
//!   is logged with file and offset, the file is truncated there and later segments are
//!   deleted (their records cannot be replayed in order); nothing panics on any input.
//!   Records at or below `confirmed` are skipped (the upstream has them, even if its
//!   watermark key were lost). Appends then start a new segment; the old ones are deleted
//!   once replayed.
//! - **Not handled.** Two processes sharing one directory (nothing locks it).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Durable, Journal, JournalError, JournalStats, Record};
use crate::config::Fsync;

/// The first bytes of every segment file (format version 1).
pub const SEGMENT_MAGIC: &[u8; 8] = b"RSPJRNL1";
/// Bytes of a record before its payload.
pub const RECORD_HEADER: usize = 32;
/// Bytes after the `len` and `crc` fields and before the payload.
const BODY_HEADER: usize = RECORD_HEADER - 8;
/// Largest payload a record can hold (`len` is a u32).
const MAX_PAYLOAD: usize = u32::MAX as usize - BODY_HEADER;
const SEGMENT_SUFFIX: &str = ".seg";
const INSTANCE_FILE: &str = "instance_id";
const CONFIRMED_FILE: &str = "confirmed";
/// How far numbering jumps at each start without `fsync = "always"` (see `open`).
const NUMBERING_GAP: u64 = 1 << 32;
const EVERYSEC: Duration = Duration::from_secs(1);

/// Appends one encoded record to `out`.
pub fn encode_record(out: &mut Vec<u8>, seq: u64, db: u32, commands: u32, accepted_ms: u64, payload: &[u8]) {
    let start = out.len();
    let len = (BODY_HEADER + payload.len()) as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&db.to_le_bytes());
    out.extend_from_slice(&commands.to_le_bytes());
    out.extend_from_slice(&accepted_ms.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = checksum(&out[start..start + 4], &out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(len: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(body);
    h.finalize()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Why a segment's valid prefix ends where it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The file does not start with [`SEGMENT_MAGIC`].
    BadMagic,
    /// Everything from here on is zero bytes (a preallocated or zero-filled end).
    ZeroFilled,
    /// A record that ends past the end of the file (a torn write).
    Torn {
        need: u64,
        have: u64,
    },
    /// A length field too small to hold a record header.
    BadLength(u32),
    BadChecksum,
    SeqNotIncreasing {
        seq: u64,
        after: u64,
    },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::BadMagic => write!(f, "not a journal segment (bad magic)"),
            Damage::ZeroFilled => write!(f, "zero-filled tail"),
            Damage::Torn { need, have } => write!(f, "torn record ({need} bytes needed, {have} present)"),
            Damage::BadLength(len) => write!(f, "record length {len} out of range"),
            Damage::BadChecksum => write!(f, "checksum mismatch"),
            Damage::SeqNotIncreasing { seq, after } => {
                write!(f, "sequence number {seq} does not follow {after}")
            }
        }
    }
}

/// The result of reading one segment.
#[derive(Debug)]
pub struct Scan {
    /// The intact records, in order.
    pub records: Vec<Record>,
    /// Length of the intact prefix of the file (magic included).
    pub valid_len: usize,
    /// Where and why reading stopped before the end of the file.
    pub damage: Option<(usize, Damage)>,
}

/// Reads a whole segment file's contents: magic, then records whose sequence numbers
/// increase from above `after`. Stops at the first bad record; never panics.
pub fn scan_segment(buf: &Bytes, after: u64) -> Scan {
    let mut scan = Scan { records: Vec::new(), valid_len: 0, damage: None };
    if buf.len() < SEGMENT_MAGIC.len() || &buf[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
        let damage = if buf.iter().all(|&b| b == 0) { Damage::ZeroFilled } else { Damage::BadMagic };
        scan.damage = (!buf.is_empty()).then_some((0, damage));
        return scan;
    }
    let mut at = SEGMENT_MAGIC.len();
    let mut prev = after;
    while at < buf.len() {
        match record_at(buf, at, prev) {
            Ok((record, next)) => {
                prev = record.seq;
                scan.records.push(record);
                at = next;
            }
            Err(damage) => {
                let damage = if buf[at..].iter().all(|&b| b == 0) { Damage::ZeroFilled } else { damage };
                scan.damage = Some((at, damage));
                break;
            }
        }
    }
    scan.valid_len = at;
    scan
}

/// Decodes the record at `at`; returns it and the offset after it.
fn record_at(buf: &Bytes, at: usize, prev: u64) -> Result<(Record, usize), Damage> {
    let have = (buf.len() - at) as u64;
    if have < 8 {
        return Err(Damage::Torn { need: 8, have });
    }
    let len = u32_at(buf, at);
    if (len as usize) < BODY_HEADER {
        return Err(Damage::BadLength(len));
    }
    let need = 8 + len as u64;
    if need > have {
        return Err(Damage::Torn { need, have });
    }
    let end = at + 8 + len as usize;
    if checksum(&buf[at..at + 4], &buf[at + 8..end]) != u32_at(buf, at + 4) {
        return Err(Damage::BadChecksum);
    }
    let seq = u64_at(buf, at + 8);
    if seq <= prev {
        return Err(Damage::SeqNotIncreasing { seq, after: prev });
    }
    let record = Record {
        seq,
        db: u32_at(buf, at + 16),
        commands: u32_at(buf, at + 20),
        accepted_ms: u64_at(buf, at + 24),
        payload: buf.slice(at + RECORD_HEADER..end),
    };
    Ok((record, end))
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

fn io_err(what: impl std::fmt::Display, e: io::Error) -> JournalError {
    JournalError::Io(format!("{what}: {e}"))
}

/// Takes the directory's `LOCK` file (an exclusive advisory lock, released by the kernel
/// when the process ends, however it ends): two processes appending to and deleting the
/// same segments would each replay and discard the other's writes.
fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join("LOCK");
    let shown = path.display();
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(format_args!("cannot open the journal lock {shown}"), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(JournalError::Io(format!(
            "journal directory {} is in use by another respite process (it holds {shown}); \
             each respite needs its own journal directory",
            dir.display()
        ))),
        Err(fs::TryLockError::Error(e)) => Err(io_err(format_args!("cannot lock the journal ({shown})"), e)),
    }
}

/// Writes `name` in `dir` atomically: a temporary file, then a rename over the old one.
fn write_atomic(dir: &Path, name: &str, contents: &[u8], sync: bool) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(contents)?;
    if sync {
        f.sync_data()?;
    }
    drop(f);
    fs::rename(&tmp, dir.join(name))?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A segment file on disk.
#[derive(Debug)]
struct Segment {
    /// Its last record's sequence number; 0 when it holds none.
    last_seq: u64,
    path: PathBuf,
    /// File size.
    bytes: u64,
}

/// The segment appends go to (the last of `segments`).
struct Active {
    file: Arc<File>,
    /// Logical end: the next record is written here.
    end: u64,
    /// A failed write may have left bytes after `end`; cut them before closing the file.
    dirty_tail: bool,
}

/// The outcome of fsyncs, published to `durable` waiters.
#[derive(Debug, Clone, Default)]
struct Synced {
    /// Every record up to this sequence number is fsynced.
    seq: u64,
    /// Set when an fsync failed: the journal accepts nothing more.
    failed: Option<Arc<str>>,
}

struct Inner {
    /// Unconfirmed records, in order.
    records: super::Records,
    last_seq: u64,
    confirmed: u64,
    segments: VecDeque<Segment>,
    active: Option<Active>,
    /// Sum of live segment file sizes.
    disk_bytes: u64,
    /// Encoding buffer, reused.
    scratch: Vec<u8>,
    /// The in-memory copies of unconfirmed payloads.
    arena: super::Arena,
    /// Highest sequence number written to a file.
    written: u64,
    /// Highest sequence number the flusher fsynced.
    synced: u64,
    /// Closed segments whose data may not be fsynced yet.
    unsynced: Vec<Arc<File>>,
    /// A segment was created since the directory was last fsynced.
    dir_dirty: bool,
    /// Fully confirmed segments for the flusher to delete (after writing `confirmed`).
    doomed: Vec<Segment>,
    failed: Option<Arc<str>>,
    closed: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Wakes the flusher: records to fsync (`always`), confirmations, shutdown.
    wake: Condvar,
    synced: watch::Sender<Synced>,
    /// fsync rounds so far (each may cover many records).
    fsyncs: std::sync::atomic::AtomicU64,
    /// Time spent in those fsyncs, nanoseconds.
    fsync_nanos: std::sync::atomic::AtomicU64,
    dir: PathBuf,
    fsync: Fsync,
}

/// The durable journal. See the module documentation.
pub struct DiskJournal {
    /// The directory's `LOCK` file, locked exclusively until [`Journal::close`] (or drop).
    lock: Mutex<Option<File>>,
    shared: Arc<Shared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    instance_id: String,
    max_entries: u64,
    max_bytes: u64,
    segment_bytes: u64,
}

impl DiskJournal {
    /// Opens (creating if needed) the journal in `dir`, recovers its records, truncating a
    /// torn or corrupt tail, and starts the flusher thread. Errors name the directory.
    pub fn open(
        dir: &Path,
        fsync: Fsync,
        max_entries: u64,
        max_bytes: u64,
        segment_bytes: u64,
    ) -> Result<DiskJournal, JournalError> {
        let shown = dir.display();
        fs::create_dir_all(dir).map_err(|e| io_err(format_args!("cannot create journal directory {shown}"), e))?;
        let probe = dir.join(".write-test.tmp");
        File::create(&probe)
            .and_then(|mut f| f.write_all(b"respite"))
            .and_then(|_| fs::remove_file(&probe))
            .map_err(|e| io_err(format_args!("journal directory {shown} is not writable"), e))?;
        let lock = lock_dir(dir)?;
        // A new directory has a new instance id: no watermark can hold its numbers yet.
        let fresh = !dir.join(INSTANCE_FILE).exists();
        let instance_id = load_instance_id(dir)?;
        let confirmed = load_confirmed(dir);
        let recovered = recover(dir, confirmed)?;
        if recovered.records.len() as u64 > max_entries || recovered.disk_bytes > max_bytes {
            tracing::warn!(
                journal.dir = %shown,
                journal.entries = recovered.records.len(),
                journal.bytes = recovered.disk_bytes,
                "the journal holds more than its configured limits; new writes are refused until it is replayed"
            );
        }
        tracing::info!(
            journal.dir = %shown,
            journal.instance_id = %instance_id,
            journal.entries = recovered.records.len(),
            journal.bytes = recovered.disk_bytes,
            journal.segments = recovered.segments.len(),
            journal.last_seq = recovered.last_seq,
            journal.fsync = ?fsync,
            "durable journal opened"
        );
        // Without `fsync = "always"` a power loss can take the `confirmed` file's latest
        // update and the deletion of replayed segments back, while the upstream's watermark
        // kept the numbers they reached: records numbered from the recovered end would sit
        // at or below that watermark, and the replay would take them for applied. Numbers
        // restart far past anything that can have been lost (2^32 records).
        let last_seq = match fsync {
            Fsync::Always => recovered.last_seq,
            _ if fresh => recovered.last_seq,
            _ => recovered.last_seq + NUMBERING_GAP,
        };
        let inner = Inner {
            records: recovered.records,
            last_seq,
            confirmed,
            segments: recovered.segments,
            active: None,
            disk_bytes: recovered.disk_bytes,
            scratch: Vec::new(),
            arena: Default::default(),
            written: last_seq,
            synced: last_seq,
            unsynced: Vec::new(),
            dir_dirty: false,
            doomed: Vec::new(),
            failed: None,
            closed: false,
        };
        let (synced, _) = watch::channel(Synced { seq: last_seq, failed: None });
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            wake: Condvar::new(),
            synced,
            fsyncs: Default::default(),
            fsync_nanos: Default::default(),
            dir: dir.to_owned(),
            fsync,
        });
        let s = shared.clone();
        let flusher = std::thread::Builder::new()
            .name("respite-journal".into())
            .spawn(move || flusher(s, confirmed))
            .map_err(|e| io_err("cannot start the journal flusher thread", e))?;
        Ok(DiskJournal {
            lock: Mutex::new(Some(lock)),
            shared,
            flusher: Mutex::new(Some(flusher)),
            instance_id,
            max_entries,
            max_bytes,
            segment_bytes: segment_bytes.max(1),
        })
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Closes the segment appends go to, after cutting any bytes a failed write left.
    fn seal(&self, g: &mut Inner) -> Result<(), JournalError> {
        let Some(a) = &mut g.active else { return Ok(()) };
        if a.dirty_tail {
            a.file.set_len(a.end).map_err(|e| io_err("cutting a failed write from a journal segment", e))?;
            a.dirty_tail = false;
        }
        let a = g.active.take().expect("checked above");
        if self.shared.fsync != Fsync::No {
            g.unsynced.push(a.file);
        }
        Ok(())
    }

    fn create_segment(&self, g: &mut Inner, first_seq: u64) -> Result<(), JournalError> {
        let path = self.shared.dir.join(segment_name(first_seq));
        let created = OpenOptions::new().write(true).create_new(true).open(&path).and_then(|f| {
            f.write_all_at(SEGMENT_MAGIC, 0)?;
            Ok(f)
        });
        let file = match created {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(io_err(format_args!("creating journal segment {}", path.display()), e));
            }
        };
        let magic = SEGMENT_MAGIC.len() as u64;
        g.segments.push_back(Segment { last_seq: 0, path, bytes: magic });
        g.active = Some(Active { file: Arc::new(file), end: magic, dirty_tail: false });
        g.disk_bytes += magic;
        g.dir_dirty = true;
        Ok(())
    }

    #[cfg(test)]
    fn replace_active_file(&self, file: Arc<File>) -> Option<Arc<File>> {
        let mut g = self.shared.inner.lock();
        g.active.as_mut().map(|a| std::mem::replace(&mut a.file, file))
    }
}

impl Drop for DiskJournal {
    fn drop(&mut self) {
        let _ = Journal::close(self);
    }
}

impl Journal for DiskJournal {
    fn append(&self, db: u32, commands: u32, payload: &[u8], accepted_ms: u64) -> Result<u64, JournalError> {
        let mut guard = self.shared.inner.lock();
        let g = &mut *guard;
        if let Some(e) = &g.failed {
            return Err(JournalError::Io(format!("{e} (restart respite to recover the journal)")));
        }
        if g.closed {
            return Err(JournalError::Io("the journal is closed (shutting down)".into()));
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(JournalError::Io(format!("a record of {} bytes is too large", payload.len())));
        }
        let len = (RECORD_HEADER + payload.len()) as u64;
        if g.records.len() as u64 >= self.max_entries
            || g.disk_bytes + len + SEGMENT_MAGIC.len() as u64 > self.max_bytes
        {
            return Err(JournalError::Full { entries: g.records.len() as u64, bytes: g.disk_bytes });
        }
        let seq = g.last_seq + 1;
        if g.active.as_ref().is_some_and(|a| a.end > SEGMENT_MAGIC.len() as u64 && a.end + len > self.segment_bytes) {
            self.seal(g)?;
        }
        if g.active.is_none() {
            self.create_segment(g, seq)?;
        }
        g.scratch.clear();
        encode_record(&mut g.scratch, seq, db, commands, accepted_ms, payload);
        let a = g.active.as_mut().expect("created above");
        let seg = g.segments.back_mut().expect("the active segment is the last");
        if let Err(e) = a.file.write_all_at(&g.scratch, a.end) {
            // Nothing is acknowledged; whatever part reached the file is overwritten by the
            // next record, or cut here (best effort) and before the segment is closed.
            if a.file.set_len(a.end).is_err() {
                a.dirty_tail = true;
            }
            return Err(io_err(format_args!("writing {}", seg.path.display()), e));
        }
        a.end += len;
        seg.bytes += len;
        seg.last_seq = seq;
        g.disk_bytes += len;
        g.written = seq;
        g.last_seq = seq;
        let payload = g.arena.own(payload);
        g.records.push_back(Record { seq, db, commands, payload, accepted_ms });
        if g.scratch.capacity() > 1 << 20 {
            g.scratch = Vec::new();
        }
        drop(guard);
        if self.shared.fsync == Fsync::Always {
            self.shared.wake.notify_one();
        }
        Ok(seq)
    }

    fn durable(&self, seq: u64) -> Durable<'_> {
        let mut rx = self.shared.synced.subscribe();
        if self.shared.fsync != Fsync::Always {
            let failed = rx.borrow().failed.clone();
            return Box::pin(std::future::ready(match failed {
                Some(e) => Err(JournalError::Io(e.to_string())),
                None => Ok(()),
            }));
        }
        Box::pin(async move {
            match rx.wait_for(|s| s.seq >= seq || s.failed.is_some()).await {
                Ok(s) if s.seq >= seq => Ok(()),
                Ok(s) => Err(JournalError::Io(s.failed.as_deref().unwrap_or("fsync failed").to_string())),
                Err(_) => Err(JournalError::Io("the journal is closed".into())),
            }
        })
    }

    fn has_room(&self, len: usize) -> bool {
        let g = self.shared.inner.lock();
        (g.records.len() as u64) < self.max_entries
            && g.disk_bytes + (RECORD_HEADER + SEGMENT_MAGIC.len() + len) as u64 <= self.max_bytes
    }

    fn read_after(&self, after: u64, max_records: usize, max_bytes: usize) -> Vec<Record> {
        let g = self.shared.inner.lock();
        g.records.read_after(after, max_records, max_bytes)
    }

    fn confirm(&self, seq: u64) {
        let mut guard = self.shared.inner.lock();
        let g = &mut *guard;
        if seq <= g.confirmed {
            return;
        }
        g.confirmed = seq;
        if seq > g.last_seq {
            // The upstream confirmed records this journal no longer has (lost to a power
            // loss after their replay): number new records past them, or they would hide
            // below the watermark.
            tracing::warn!(
                journal.last_seq = g.last_seq,
                journal.confirmed = seq,
                "watermark beyond the journal's end"
            );
            g.last_seq = seq;
        }
        while g.records.front().is_some_and(|r| r.seq <= seq) {
            g.records.pop_front();
        }
        let unconfirmed = g.records.front().map(|r| r.seq);
        if unconfirmed.is_none() && g.active.is_some() {
            // Everything is replayed: close the active segment too, so it can go.
            if self.seal(g).is_err() {
                tracing::warn!(journal.dir = %self.shared.dir.display(), "cannot cut a failed write; segment kept");
            }
        }
        let active = g.active.is_some();
        while let Some(front) = g.segments.front() {
            let is_active = active && g.segments.len() == 1;
            let done = match unconfirmed {
                None => true,
                Some(first) => front.last_seq < first,
            };
            if is_active || !done {
                break;
            }
            let dead = g.segments.pop_front().expect("front exists");
            g.doomed.push(dead);
        }
        drop(guard);
        self.shared.wake.notify_one();
    }

    fn stats(&self) -> JournalStats {
        let g = self.shared.inner.lock();
        JournalStats {
            entries: g.records.len() as u64,
            bytes: g.disk_bytes,
            oldest_ms: g.records.front().map(|r| r.accepted_ms),
            last_seq: g.last_seq,
            fsyncs: self.shared.fsyncs.load(std::sync::atomic::Ordering::Relaxed),
            fsync_seconds: self.shared.fsync_nanos.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9,
            failed: g.failed.is_some(),
        }
    }

    fn instance_id(&self) -> &str {
        &self.instance_id
    }

    fn is_persistent(&self) -> bool {
        true
    }

    /// Stops the flusher after a last fsync (of the open segment, under every policy) and a
    /// last `confirmed` update. Later appends fail. Idempotent.
    fn close(&self) -> Result<(), JournalError> {
        {
            let mut g = self.shared.inner.lock();
            if let Some(a) = &mut g.active {
                if a.dirty_tail && a.file.set_len(a.end).is_ok() {
                    a.dirty_tail = false;
                }
            }
            g.closed = true;
        }
        self.shared.wake.notify_all();
        if let Some(handle) = self.flusher.lock().take() {
            if handle.join().is_err() {
                return Err(JournalError::Io("the journal flusher thread panicked".into()));
            }
        }
        // Nothing touches the directory any more: another process may take it.
        self.lock.lock().take();
        match &self.shared.synced.borrow().failed {
            Some(e) => Err(JournalError::Io(e.to_string())),
            None => Ok(()),
        }
    }
}

/// What the flusher does in one round, taken under the lock and done outside it.
struct Job {
    files: Vec<Arc<File>>,
    sync_dir: bool,
    upto: u64,
    confirmed: u64,
    doomed: Vec<Segment>,
    stop: bool,
}

/// The flusher thread: fsyncs under the policy, writes `confirmed`, deletes replayed
/// segments; on close, does all of it a last time and exits.
fn flusher(shared: Arc<Shared>, mut confirmed_on_disk: u64) {
    let mut next_tick = Instant::now() + EVERYSEC;
    let mut retry_confirm_at: Option<Instant> = None;
    loop {
        let job = {
            let mut g = shared.inner.lock();
            loop {
                let dirty = g.written > g.synced || !g.unsynced.is_empty() || g.dir_dirty;
                let now = Instant::now();
                let sync_now = g.closed
                    || match shared.fsync {
                        Fsync::Always => dirty,
                        Fsync::Everysec => dirty && now >= next_tick,
                        Fsync::No => false,
                    };
                let confirm_due = retry_confirm_at.is_none_or(|t| now >= t);
                let confirm_now = confirm_due && (g.confirmed > confirmed_on_disk || !g.doomed.is_empty());
                if sync_now || confirm_now {
                    let files = if sync_now {
                        let mut files = std::mem::take(&mut g.unsynced);
                        files.extend(g.active.as_ref().map(|a| a.file.clone()));
                        files
                    } else {
                        Vec::new()
                    };
                    let sync_dir = sync_now && std::mem::take(&mut g.dir_dirty);
                    break Job {
                        files,
                        sync_dir,
                        upto: if sync_now { g.written } else { g.synced },
                        confirmed: g.confirmed,
                        doomed: if confirm_now { std::mem::take(&mut g.doomed) } else { Vec::new() },
                        stop: g.closed,
                    };
                }
                let mut wait = match shared.fsync {
                    Fsync::Everysec if dirty => next_tick.saturating_duration_since(now),
                    Fsync::Everysec => EVERYSEC,
                    _ => Duration::from_secs(3600),
                };
                if let Some(t) = retry_confirm_at {
                    wait = wait.min(t.saturating_duration_since(now));
                }
                shared.wake.wait_for(&mut g, wait.max(Duration::from_millis(1)));
            }
        };
        if !job.files.is_empty() || job.sync_dir || job.upto > shared.synced.borrow().seq {
            let started = Instant::now();
            let mut result = Ok(());
            for f in &job.files {
                result = result.and_then(|_| f.sync_data());
            }
            if job.sync_dir {
                result = result.and_then(|_| sync_dir(&shared.dir));
            }
            let took = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
            shared.fsync_nanos.fetch_add(took, std::sync::atomic::Ordering::Relaxed);
            shared.fsyncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut g = shared.inner.lock();
            match result {
                Ok(()) => {
                    g.synced = g.synced.max(job.upto);
                    let seq = g.synced;
                    shared.synced.send_modify(|s| s.seq = s.seq.max(seq));
                }
                Err(e) => {
                    let msg: Arc<str> = format!("fsync of the journal in {} failed: {e}", shared.dir.display()).into();
                    tracing::error!(journal.dir = %shared.dir.display(), error = %e, "journal fsync failed; refusing further writes");
                    g.failed = Some(msg.clone());
                    // Nothing more can be made durable: stop trying.
                    g.synced = g.written;
                    shared.synced.send_modify(|s| s.failed = Some(msg));
                }
            }
            drop(g);
            if shared.fsync == Fsync::Everysec {
                next_tick = Instant::now() + EVERYSEC;
            }
        }
        if job.confirmed > confirmed_on_disk || !job.doomed.is_empty() {
            let written = job.confirmed <= confirmed_on_disk
                || write_atomic(
                    &shared.dir,
                    CONFIRMED_FILE,
                    format!("{}\n", job.confirmed).as_bytes(),
                    shared.fsync != Fsync::No,
                )
                .map_err(|e| {
                    tracing::warn!(journal.dir = %shared.dir.display(), error = %e, "cannot write the journal's confirmed file; retrying");
                })
                .is_ok();
            if written {
                confirmed_on_disk = job.confirmed;
                retry_confirm_at = None;
                let mut freed = 0;
                for seg in &job.doomed {
                    match fs::remove_file(&seg.path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            tracing::warn!(journal.segment = %seg.path.display(), error = %e, "cannot delete a replayed journal segment")
                        }
                    }
                    freed += seg.bytes;
                }
                if freed > 0 {
                    let mut g = shared.inner.lock();
                    g.disk_bytes = g.disk_bytes.saturating_sub(freed);
                }
            } else {
                // Keep the segments until `confirmed` is written: deleting them first could
                // let a restart reuse their sequence numbers.
                shared.inner.lock().doomed.extend(job.doomed);
                retry_confirm_at = Some(Instant::now() + EVERYSEC);
            }
        }
        if job.stop {
            let g = shared.inner.lock();
            if g.doomed.is_empty() || retry_confirm_at.is_some() {
                return;
            }
        }
    }
}

/// Reads or creates `<dir>/instance_id`.
fn load_instance_id(dir: &Path) -> Result<String, JournalError> {
    let path = dir.join(INSTANCE_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if ok {
                Ok(id.to_string())
            } else {
                Err(JournalError::Io(format!(
                    "{} is not a valid instance id (1 to 64 letters, digits or '-'); fix it, or delete it only \
                     if the journal holds nothing",
                    path.display()
                )))
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = format!("{:016x}", fastrand::u64(..));
            write_atomic(dir, INSTANCE_FILE, format!("{id}\n").as_bytes(), true)
                .map_err(|e| io_err(format_args!("cannot write {}", path.display()), e))?;
            Ok(id)
        }
        Err(e) => Err(io_err(format_args!("cannot read {}", path.display()), e)),
    }
}

/// Reads `<dir>/confirmed`; 0 when absent or unreadable (the upstream watermark still
/// prevents double application).
fn load_confirmed(dir: &Path) -> u64 {
    let path = dir.join(CONFIRMED_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(journal.file = %path.display(), "unreadable confirmed file ignored; the upstream watermark still applies");
            0
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => {
            tracing::warn!(journal.file = %path.display(), error = %e, "cannot read the confirmed file; the upstream watermark still applies");
            0
        }
    }
}

/// What recovery found.
struct Recovered {
    records: super::Records,
    segments: VecDeque<Segment>,
    disk_bytes: u64,
    /// Highest sequence number ever used (also of discarded records, and `confirmed`).
    last_seq: u64,
}

/// Reads every segment, cuts the first bad record and everything after it, deletes
/// segments that hold nothing unconfirmed. Segments after damage that took unconfirmed
/// records are set aside (renamed `<name>.unreplayable`, kept for the operator): their
/// records cannot be replayed in order. Damage that took only confirmed records (a
/// replayed segment not yet deleted) costs nothing.
fn recover(dir: &Path, confirmed: u64) -> Result<Recovered, JournalError> {
    let shown = dir.display();
    let mut names = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| io_err(format_args!("cannot list journal directory {shown}"), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err(format_args!("cannot list journal directory {shown}"), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        } else if let Some(first) = parse_segment_name(name) {
            names.push((first, entry.path()));
        }
    }
    names.sort();
    let mut out =
        Recovered { records: Default::default(), segments: VecDeque::new(), disk_bytes: 0, last_seq: confirmed };
    let mut prev = 0u64;
    let mut broken = false;
    // Damage cut the previous segment: the records it took run up to this segment's first.
    let mut damaged = false;
    for (first_seq, path) in names {
        if std::mem::take(&mut damaged) && first_seq.saturating_sub(1) > confirmed {
            broken = true;
        }
        let buf = Bytes::from(
            fs::read(&path).map_err(|e| io_err(format_args!("cannot read journal segment {}", path.display()), e))?,
        );
        let scan = scan_segment(&buf, prev);
        let seen = scan.records.last().map_or(0, |r| r.seq);
        out.last_seq = out.last_seq.max(seen).max(first_seq.saturating_sub(1));
        if broken {
            let mut aside = path.clone().into_os_string();
            aside.push(".unreplayable");
            let aside = PathBuf::from(aside);
            tracing::error!(
                journal.segment = %path.display(),
                set_aside_as = %aside.display(),
                records = scan.records.len(),
                "a journal segment follows damage that took unreplayed records: its records cannot be replayed in order; set aside"
            );
            fs::rename(&path, &aside)
                .map_err(|e| io_err(format_args!("cannot set aside journal segment {}", path.display()), e))?;
            continue;
        }
        let mut size = buf.len() as u64;
        if let Some((offset, damage)) = &scan.damage {
            tracing::warn!(
                journal.segment = %path.display(),
                offset,
                reason = %damage,
                intact_records = scan.records.len(),
                "corrupt journal tail: truncating the segment here; the intact records before it are kept"
            );
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| {
                    f.set_len(scan.valid_len as u64)?;
                    f.sync_all()
                })
                .map_err(|e| io_err(format_args!("cannot truncate corrupt journal segment {}", path.display()), e))?;
            size = scan.valid_len as u64;
            damaged = true;
        }
        if seen != 0 {
            prev = seen;
        }
        let live: Vec<Record> = scan.records.into_iter().filter(|r| r.seq > confirmed).collect();
        if live.is_empty() {
            fs::remove_file(&path)
                .map_err(|e| io_err(format_args!("cannot delete replayed journal segment {}", path.display()), e))?;
            continue;
        }
        out.records.extend(live);
        out.disk_bytes += size;
        out.segments.push_back(Segment { last_seq: seen, path, bytes: size });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn open(dir: &Path, fsync: Fsync, segment_bytes: u64) -> DiskJournal {
        DiskJournal::open(dir, fsync, 1_000_000, 1 << 30, segment_bytes).unwrap()
    }

    #[test]
    fn a_directory_is_used_by_one_journal_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), Fsync::No, 1 << 20);
        j.append(0, 1, &payload(1), 0).unwrap();
        let Err(e) = DiskJournal::open(dir.path(), Fsync::No, 1_000_000, 1 << 30, 1 << 20) else {
            panic!("a second journal on a directory in use must not open");
        };
        assert!(e.to_string().contains("is in use by another respite process"), "{e}");
        assert_eq!(j.stats().entries, 1, "the refused open changed nothing");
        j.close().unwrap();
        let again = open(dir.path(), Fsync::No, 1 << 20);
        assert_eq!(again.stats().entries, 1);
    }

    fn payload(i: u64) -> Bytes {
        let key = format!("k{i}");
        Bytes::from(format!("*2\r\n$4\r\nINCR\r\n${}\r\n{key}\r\n", key.len()))
    }

    fn max_seq(path: &Path) -> u64 {
        scan_segment(&Bytes::from(fs::read(path).unwrap()), 0).records.last().map_or(0, |r| r.seq)
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "not within 5s: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    fn seqs(j: &DiskJournal) -> Vec<u64> {
        j.read_after(0, usize::MAX, usize::MAX).iter().map(|r| r.seq).collect()
    }

    #[test]
    fn records_survive_a_reopen_with_their_fields() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), Fsync::Everysec, 1 << 20);
        let id = j.instance_id().to_string();
        assert_eq!(id.len(), 16);
        for i in 1..=10 {
            assert_eq!(j.append(i as u32 % 3, 1, &payload(i), 1000 + i).unwrap(), i);
        }
        let before = j.read_after(0, 100, usize::MAX);
        drop(j);
        let j = open(dir.path(), Fsync::Everysec, 1 << 20);
        assert_eq!(j.instance_id(), id, "the instance id is kept across restarts");
        assert_eq!(j.read_after(0, 100, usize::MAX), before);
        assert_eq!(j.stats().entries, 10);
        // Without fsync "always", numbering resumes 2^32 past the recovered end: a power
        // loss may have taken back the confirmed file, not the upstream's watermark.
        assert_eq!(j.append(0, 1, &payload(11), 0).unwrap(), 11 + NUMBERING_GAP, "numbering continues past a gap");
        assert_eq!(j.read_after(10, 100, usize::MAX).len(), 1, "after the recovered ones, in order");
        drop(j);
        let j = open(dir.path(), Fsync::Always, 1 << 20);
        assert_eq!(j.append(0, 1, &payload(12), 0).unwrap(), 12 + NUMBERING_GAP, "with fsync always, densely");
    }

    #[test]
    fn after_a_lost_confirmation_new_records_are_numbered_past_the_upstream_watermark() {
        // fsync "everysec": records 1-10 were replayed (the upstream's watermark says 10),
        // confirmed and their segment deleted; a power loss then took the confirmed file's
        // update back but not the deletion. The records written after the restart must
        // not be numbered at or below 10, or the replay would confirm them as applied
        // without sending them.
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), Fsync::Everysec, 1 << 20);
        for i in 1..=10 {
            j.append(0, 1, &payload(i), 0).unwrap();
        }
        j.confirm(10);
        drop(j);
        assert!(segments(dir.path()).is_empty());
        fs::remove_file(dir.path().join(CONFIRMED_FILE)).unwrap();
        let j = open(dir.path(), Fsync::Everysec, 1 << 20);
        let fresh = j.append(0, 1, &payload(99), 0).unwrap();
        // The replay reads the watermark, 10, and confirms up to it.
        j.confirm(10);
        assert_eq!(j.read_after(0, 100, usize::MAX).iter().map(|r| r.seq).collect::<Vec<_>>(), [fresh]);
    }

    #[test]
    fn confirmed_records_are_not_loaded_again_and_numbers_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), Fsync::Always, 256);
        for i in 1..=20 {
            j.append(0, 1, &payload(i), 0).unwrap();
        }
        assert!(segments(dir.path()).len() > 3, "small segments roll");
        j.confirm(12);
        j.close().unwrap();
        let j = open(dir.path(), Fsync::Always, 256);
        assert_eq!(seqs(&j), (13..=20).collect::<Vec<_>>());
        j.confirm(20);
        j.close().unwrap();
        assert!(segments(dir.path()).is_empty(), "every segment is deleted once everything is confirmed");
        let j = open(dir.path(), Fsync::Always, 256);
        assert_eq!(j.stats().entries, 0);
        assert_eq!(j.append(0, 1, &payload(1), 0).unwrap(), 21, "numbering continues past the confirmed ones");
    }

    #[test]
    fn segments_are_deleted_as_they_are_confirmed_and_disk_use_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), Fsync::No, 300);
        for i in 1..=30 {
            j.append(0, 1, &payload(i), 0).unwrap();
        }
        let files = segments(dir.path());
        let size = |files: &[PathBuf]| files.iter().map(|p| fs::metadata(p).unwrap().len()).sum::<u64>();
        assert_eq!(j.stats().bytes, size(&files));
        assert!(files.iter().all(|p| fs::metadata(p).unwrap().len() <= 300));
        let kept: Vec<PathBuf> = files.iter().filter(|p| max_seq(p) > 15).cloned().collect();
        assert!(kept.len() < files.len() - 1, "some segments hold only records up to 15");
        j.confirm(15);
        wait_until("replayed segments deleted", || segments(dir.path()) == kept && j.stats().bytes == size(&kept));
        wait_until("confirmed written", || {
            fs::read_to_string(dir.path().join(CONFIRMED_FILE)).is_ok_and(|t| t.trim() == "15")
        });
        j.confirm(30);
        wait_until("everything deleted", || segments(dir.path()).is_empty() && j.stats().bytes == 0);
        assert_eq!(j.append(0, 1, &payload(31), 0).unwrap(), 31);
    }

    #[test]
    fn limits_bound_entries_and_disk_bytes_without_dropping_anything() {
        let dir = tempfile::tempdir().unwrap();
        let j = DiskJournal::open(dir.path(), Fsync::No, 5, 200, 1 << 20).unwrap();
        let p = Bytes::from_static(b"0123456789");
        let mut n = 0;
        while j.has_room(p.len()) {
            j.append(0, 1, &p, 0).unwrap();
            n += 1;
        }
        assert!(matches!(j.append(0, 1, &p, 0), Err(JournalError::Full { .. })));
        assert_eq!(j.stats().entries, n);
        assert!(j.stats().bytes <= 200);
        j.close().unwrap();
        let on_disk: u64 = segments(dir.path()).iter().map(|p| fs::metadata(p).unwrap().len()).sum();
        assert!(on_disk <= 200, "{on_disk}");
        let j = DiskJournal::open(dir.path(), Fsync::No, 2, 200, 1 << 20).unwrap();
        assert_eq!(j.stats().entries, n, "lowered limits refuse new writes but keep the old ones");
        assert!(!j.has_room(1));
    }

    #[tokio::test]
    async fn always_acknowledges_after_an_fsync_shared_by_concurrent_writers() {
        let dir = tempfile::tempdir().unwrap();
        let j = Arc::new(open(dir.path(), Fsync::Always, 1 << 20));
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let j = j.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    let seq = j.append(0, 1, &payload(t * 100 + i), 0).unwrap();
                    j.durable(seq).await.unwrap();
                    assert!(j.shared.synced.borrow().seq >= seq);
                }
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(20), t).await.unwrap().unwrap();
        }
        assert_eq!(j.stats().entries, 800);
        let rounds = j.stats().fsyncs;
        assert!(rounds > 0 && rounds < 800, "{rounds} fsyncs for 800 acknowledged writes: shared");
    }

    #[tokio::test]
    async fn everysec_and_no_acknowledge_at_once() {
        for policy in [Fsync::Everysec, Fsync::No] {
            let dir = tempfile::tempdir().unwrap();
            let j = open(dir.path(), policy, 1 << 20);
            let seq = j.append(0, 1, &payload(1), 0).unwrap();
            tokio::time::timeout(Duration::from_millis(100), j.durable(seq)).await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn a_failed_fsync_fails_its_waiters_and_refuses_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), Fsync::Always, 1 << 20);
        let seq = j.append(0, 1, &payload(1), 0).unwrap();
        tokio::time::timeout(Duration::from_secs(5), j.durable(seq)).await.unwrap().unwrap();
        assert!(!j.stats().failed);
        let fsyncs = j.stats().fsyncs;
        assert!(fsyncs >= 1 && j.stats().fsync_seconds > 0.0, "{:?}", j.stats());
        // /dev/null takes the write but cannot be fsynced (EINVAL): a disk whose fsync fails.
        let null = OpenOptions::new().read(true).write(true).open("/dev/null").unwrap();
        j.replace_active_file(Arc::new(null)).unwrap();
        let seq = j.append(0, 1, &payload(2), 0).unwrap();
        let e = tokio::time::timeout(Duration::from_secs(5), j.durable(seq)).await.unwrap().unwrap_err();
        assert!(e.to_string().contains("fsync of the journal"), "{e}");
        assert!(j.stats().failed, "{:?}", j.stats());
        assert!(j.stats().fsyncs > fsyncs);
        let refused = j.append(0, 1, &payload(3), 0).unwrap_err();
        assert!(refused.to_string().contains("fsync of the journal"), "{refused}");
        assert_eq!(j.stats().entries, 2, "what was appended stays (its outcome is unknown), nothing more");
    }

    #[test]
    fn a_failed_write_is_not_acknowledged_and_leaves_no_record() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), Fsync::No, 1 << 20);
        j.append(0, 1, &payload(1), 0).unwrap();
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let real = j.replace_active_file(Arc::new(full)).unwrap();
        let before = j.stats();
        let e = j.append(0, 1, &payload(2), 0).unwrap_err();
        assert!(matches!(&e, JournalError::Io(m) if m.contains("No space left")), "{e:?}");
        assert_eq!(j.stats(), before, "nothing appended, no number used");
        // Space is back: writing resumes where the journal's intact end is.
        j.replace_active_file(real);
        assert_eq!(j.append(0, 1, &payload(3), 0).unwrap(), 2);
        drop(j);
        let j = open(dir.path(), Fsync::Everysec, 1 << 20);
        assert_eq!(seqs(&j), vec![1, 2]);
        assert_eq!(j.read_after(1, 1, usize::MAX)[0].payload, payload(3));
    }

    /// Records 1-12 in segments of 200 bytes (three or more), closed; the segment files.
    fn twelve_records_in_small_segments(dir: &Path) -> Vec<PathBuf> {
        let j = open(dir, Fsync::No, 200);
        for i in 1..=12 {
            j.append(0, 1, &payload(i), 0).unwrap();
        }
        drop(j);
        let files = segments(dir);
        assert!(files.len() >= 3);
        files
    }

    #[test]
    fn corrupt_tails_are_truncated_and_later_segments_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let files = twelve_records_in_small_segments(dir.path());
        // Flip one byte in the second record of the second segment.
        let victim = &files[1];
        let mut bytes = fs::read(victim).unwrap();
        let first_len = 8 + u32_at(&bytes, 8) as usize;
        let second = 8 + first_len;
        bytes[second + RECORD_HEADER + 2] ^= 0x40;
        fs::write(victim, &bytes).unwrap();
        let first_of_victim = parse_segment_name(victim.file_name().unwrap().to_str().unwrap()).unwrap();
        let j = open(dir.path(), Fsync::No, 200);
        assert_eq!(seqs(&j), (1..=first_of_victim).collect::<Vec<_>>(), "every intact record before the damage");
        assert_eq!(fs::metadata(victim).unwrap().len() as usize, second);
        assert_eq!(segments(dir.path()).len(), 2, "segments after the corrupt one are set aside");
        let aside: Vec<_> = files[2..].iter().map(|f| PathBuf::from(format!("{}.unreplayable", f.display()))).collect();
        assert!(aside.iter().all(|f| f.exists()), "kept for the operator: {aside:?}");
        assert!(j.append(0, 1, &payload(99), 0).unwrap() > 12, "numbers of discarded records are not reused");
        drop(j);
        let j = open(dir.path(), Fsync::No, 200);
        assert_eq!(seqs(&j).len(), first_of_victim as usize + 1, "set-aside segments are not read again");
    }

    #[test]
    fn damage_in_a_replayed_segment_costs_nothing_after_it() {
        // A segment whose records are all confirmed (replayed, not yet deleted) is damaged:
        // the records it lost were applied already, so the segments after it are intact
        // and replayable (they used to be deleted).
        let dir = tempfile::tempdir().unwrap();
        let files = twelve_records_in_small_segments(dir.path());
        let second_first = parse_segment_name(files[1].file_name().unwrap().to_str().unwrap()).unwrap();
        // Confirmed up to the end of the first segment, as a crash between writing
        // `confirmed` and deleting the segment leaves it.
        fs::write(dir.path().join("confirmed"), (second_first - 1).to_string()).unwrap();
        let mut bytes = fs::read(&files[0]).unwrap();
        let at = bytes.len() - 3;
        bytes[at] ^= 0x40;
        fs::write(&files[0], &bytes).unwrap();
        let j = open(dir.path(), Fsync::No, 200);
        assert_eq!(seqs(&j), (second_first..=12).collect::<Vec<_>>());
    }

    #[test]
    fn zero_filled_and_torn_ends_and_foreign_files_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), Fsync::No, 1 << 20);
        for i in 1..=5 {
            j.append(0, 1, &payload(i), 0).unwrap();
        }
        drop(j);
        let seg = &segments(dir.path())[0];
        let mut f = OpenOptions::new().append(true).open(seg).unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
        drop(f);
        let j = open(dir.path(), Fsync::No, 1 << 20);
        assert_eq!(seqs(&j), vec![1, 2, 3, 4, 5]);
        drop(j);
        // Half a record.
        let len = fs::metadata(seg).unwrap().len();
        OpenOptions::new().write(true).open(seg).unwrap().set_len(len - 7).unwrap();
        let j = open(dir.path(), Fsync::No, 1 << 20);
        assert_eq!(seqs(&j), vec![1, 2, 3, 4]);
        drop(j);
        // A file with the segment name but other contents; an empty one.
        fs::write(dir.path().join(segment_name(1000)), b"hello world, not a journal").unwrap();
        fs::write(dir.path().join(segment_name(2000)), b"").unwrap();
        let j = open(dir.path(), Fsync::No, 1 << 20);
        assert_eq!(seqs(&j), vec![1, 2, 3, 4]);
        assert!(j.append(0, 1, &payload(9), 0).unwrap() > 1000);
    }

    #[test]
    fn an_unwritable_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        fs::write(&file, b"x").unwrap();
        let target = file.join("journal");
        let e = DiskJournal::open(&target, Fsync::Everysec, 10, 1000, 1000).err().unwrap();
        assert!(e.to_string().contains(&*target.display().to_string()), "{e}");
    }

    #[test]
    fn a_bad_instance_id_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(INSTANCE_FILE), "\0\0garbage\n").unwrap();
        let e = DiskJournal::open(dir.path(), Fsync::Everysec, 10, 1000, 1000).err().unwrap();
        assert!(e.to_string().contains("instance id"), "{e}");
    }

    #[test]
    fn a_watermark_beyond_the_end_moves_numbering_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), Fsync::No, 1 << 20);
        j.append(0, 1, &payload(1), 0).unwrap();
        j.confirm(50);
        assert_eq!(j.append(0, 1, &payload(2), 0).unwrap(), 51);
        j.close().unwrap();
        let j = open(dir.path(), Fsync::No, 1 << 20);
        assert_eq!(seqs(&j), vec![51]);
    }

    #[test]
    fn appends_after_close_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), Fsync::Always, 1 << 20);
        j.close().unwrap();
        assert!(matches!(j.append(0, 1, &payload(1), 0), Err(JournalError::Io(_))));
    }

    fn arb_records() -> impl Strategy<Value = Vec<(u64, u32, u32, u64, Vec<u8>)>> {
        prop::collection::vec(
            (1u64..5, any::<u32>(), 1u32..4, any::<u64>(), prop::collection::vec(any::<u8>(), 0..80)),
            1..12,
        )
    }

    fn build(spec: &[(u64, u32, u32, u64, Vec<u8>)]) -> (Vec<u8>, Vec<Record>, Vec<usize>) {
        let mut buf = SEGMENT_MAGIC.to_vec();
        let mut records = Vec::new();
        let mut ends = Vec::new();
        let mut seq = 0;
        for (step, db, commands, ms, p) in spec {
            seq += step;
            encode_record(&mut buf, seq, *db, *commands, *ms, p);
            ends.push(buf.len());
            records.push(Record {
                seq,
                db: *db,
                commands: *commands,
                accepted_ms: *ms,
                payload: Bytes::from(p.clone()),
            });
        }
        (buf, records, ends)
    }

    proptest! {
        #[test]
        fn intact_segments_read_back_exactly(spec in arb_records()) {
            let (buf, records, _) = build(&spec);
            let scan = scan_segment(&Bytes::from(buf.clone()), 0);
            prop_assert_eq!(scan.records, records);
            prop_assert_eq!(scan.valid_len, buf.len());
            prop_assert!(scan.damage.is_none());
        }

        #[test]
        fn truncation_keeps_exactly_the_whole_records_before_the_cut(spec in arb_records(), cut in any::<prop::sample::Index>()) {
            let (buf, records, ends) = build(&spec);
            let at = cut.index(buf.len() + 1);
            let scan = scan_segment(&Bytes::copy_from_slice(&buf[..at]), 0);
            let whole = ends.iter().filter(|&&e| e <= at).count();
            prop_assert_eq!(&scan.records[..], &records[..whole]);
            let valid = if at < SEGMENT_MAGIC.len() { 0 } else if whole == 0 { SEGMENT_MAGIC.len() } else { ends[whole - 1] };
            prop_assert_eq!(scan.valid_len, valid);
            prop_assert_eq!(scan.damage.is_some(), at != valid);
        }

        #[test]
        fn bit_flips_never_yield_a_wrong_record(spec in arb_records(), flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4)) {
            let (mut buf, records, ends) = build(&spec);
            let mut first = buf.len();
            for (i, bit) in &flips {
                let at = i.index(buf.len());
                buf[at] ^= 1 << bit;
                first = first.min(at);
            }
            let scan = scan_segment(&Bytes::from(buf), 0);
            // Every record that ends before the first flipped byte is kept; nothing read
            // is other than what was written, in order.
            let before = ends.iter().filter(|&&e| e <= first).count();
            prop_assert!(scan.records.len() >= before.min(records.len()) || first < SEGMENT_MAGIC.len());
            prop_assert!(scan.records.len() <= records.len());
            prop_assert_eq!(&scan.records[..], &records[..scan.records.len()]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), magic in any::<bool>()) {
            let mut buf = if magic { SEGMENT_MAGIC.to_vec() } else { Vec::new() };
            buf.extend_from_slice(&bytes);
            let scan = scan_segment(&Bytes::from(buf.clone()), 0);
            prop_assert!(scan.valid_len <= buf.len());
        }
    }
}
