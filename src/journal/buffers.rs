//! How both journals hold their unreplayed records in memory: [`Records`], the records in
//! sequence order, and [`Arena`], their payloads.
//!
//! A journal grows into memory the process never touched, and on a VM each first touch of
//! a page is a fault costing microseconds (measured: one fault per ~25 journaled SETs, the
//! largest single cost of an outage SET after the sockets). Both therefore grow in fixed
//! blocks that a helper thread prepares ([`Prefault`]): allocated and written once, so
//! resident before the client-serving thread fills them. Growth never reallocates or
//! copies, and the serving thread only copies payloads and pushes records.

use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use super::Record;

/// Where the journals keep payloads: copied into shared 1 MiB chunks. A payload handed to
/// `append` is usually a slice of a client's read buffer; keeping that slice would keep the
/// whole buffer alive (several times the payload, and invisible to `max_bytes`), and a
/// separate allocation per record costs a malloc each. Records leave in order, so at most
/// the chunks at both ends are partly unused.
#[derive(Default)]
pub struct Arena {
    chunk: BytesMut,
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
            static CHUNKS: OnceLock<Option<Prefault<BytesMut>>> = OnceLock::new();
            self.chunk = Prefault::take(
                &CHUNKS,
                "respite-prefault",
                || BytesMut::with_capacity(Self::CHUNK),
                |c| {
                    // One write per page faults it in (the kernel zero-fills it): zeroing
                    // all of it again cost ~100 instructions per journaled SET.
                    for b in c.spare_capacity_mut().iter_mut().step_by(4096) {
                        b.write(0);
                    }
                },
            );
        }
        self.chunk.extend_from_slice(payload);
        self.chunk.split().freeze()
    }
}

/// A journal's unreplayed records in sequence order: a deque of blocks of `BLOCK` (8,192)
/// records each. Appends go to the last block, confirmations empty the first.
#[derive(Default)]
pub struct Records {
    blocks: VecDeque<VecDeque<Record>>,
    len: usize,
}

impl Records {
    /// Records per block (~450 KiB).
    const BLOCK: usize = 8192;

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn front(&self) -> Option<&Record> {
        self.blocks.front().and_then(|b| b.front())
    }

    pub fn push_back(&mut self, record: Record) {
        if self.blocks.back().is_none_or(|b| b.len() >= Self::BLOCK) {
            static BLOCKS: OnceLock<Option<Prefault<VecDeque<Record>>>> = OnceLock::new();
            let block = Prefault::take(
                &BLOCKS,
                "respite-prefault-records",
                || VecDeque::with_capacity(Self::BLOCK),
                |b| {
                    b.resize_with(Self::BLOCK, || Record {
                        seq: 0,
                        db: 0,
                        commands: 0,
                        payload: Bytes::new(),
                        accepted_ms: 0,
                    });
                    b.clear();
                },
            );
            self.blocks.push_back(block);
        }
        self.blocks.back_mut().expect("ensured above").push_back(record);
        self.len += 1;
    }

    pub fn pop_front(&mut self) -> Option<Record> {
        let block = self.blocks.front_mut()?;
        let record = block.pop_front();
        // The last block stays when drained: a replay that keeps up with a trickle of new
        // writes would otherwise free it and have the helper prepare a new one per write.
        if block.is_empty() && self.blocks.len() > 1 {
            self.blocks.pop_front();
        }
        if record.is_some() {
            self.len -= 1;
        }
        record
    }

    /// The records with `seq > after`, in order.
    pub fn after(&self, after: u64) -> impl Iterator<Item = &Record> {
        let first = self.blocks.partition_point(|b| b.back().is_some_and(|r| r.seq <= after));
        let mut blocks = self.blocks.range(first..);
        // Binary searches only: the replayer reads after a point deep in a block.
        let head = blocks.next().map(|b| b.range(b.partition_point(|r| r.seq <= after)..));
        head.into_iter().flatten().chain(blocks.flatten())
    }

    /// Up to `max_records` / about `max_bytes` of the records with `seq > after`: at least
    /// one record, then none that would pass the byte budget ([`super::Journal::read_after`]).
    pub fn read_after(&self, after: u64, max_records: usize, max_bytes: usize) -> Vec<Record> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for r in self.after(after) {
            if out.len() >= max_records || (bytes > 0 && bytes + r.payload.len() > max_bytes) {
                break;
            }
            bytes += r.payload.len();
            out.push(r.clone());
        }
        out
    }
}

impl Extend<Record> for Records {
    fn extend<I: IntoIterator<Item = Record>>(&mut self, records: I) {
        for r in records {
            self.push_back(r);
        }
    }
}

/// A helper thread that keeps up to two blocks of one kind ready, made resident by `touch`.
struct Prefault<T> {
    ready: Mutex<Receiver<T>>,
}

impl<T: Send + 'static> Prefault<T> {
    const WAITING: usize = 2;

    /// A prepared block when one is ready, else `alloc()` (untouched) in place. The helper
    /// starts with the first call; without threads, every block is allocated in place.
    fn take(helper: &OnceLock<Option<Prefault<T>>>, name: &str, alloc: fn() -> T, touch: fn(&mut T)) -> T {
        helper
            .get_or_init(|| Prefault::start(name, alloc, touch))
            .as_ref()
            .and_then(|h| h.ready.lock().try_recv().ok())
            .unwrap_or_else(alloc)
    }

    fn start(name: &str, alloc: fn() -> T, touch: fn(&mut T)) -> Option<Prefault<T>> {
        let (tx, rx) = sync_channel(Self::WAITING);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                let mut block = alloc();
                touch(&mut block);
                if tx.send(block).is_err() {
                    return;
                }
            })
            .ok()?;
        Some(Prefault { ready: Mutex::new(rx) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> Record {
        Record { seq, db: 0, commands: 1, payload: Bytes::from(format!("p{seq}")), accepted_ms: seq }
    }

    #[test]
    fn records_keep_order_across_blocks_and_read_after_any_point() {
        let mut rs = Records::default();
        let n = Records::BLOCK as u64 * 2 + 10;
        rs.extend((1..=n).map(record));
        assert_eq!(rs.len(), n as usize);
        for after in [0, 1, Records::BLOCK as u64 - 1, Records::BLOCK as u64, Records::BLOCK as u64 + 1, n - 1, n] {
            let seqs: Vec<u64> = rs.after(after).map(|r| r.seq).collect();
            assert_eq!(seqs, ((after + 1)..=n).collect::<Vec<_>>(), "after {after}");
        }
        // Confirming empties blocks from the front; appends continue at the back.
        for want in 1..=(Records::BLOCK as u64 + 5) {
            assert_eq!(rs.pop_front().map(|r| r.seq), Some(want));
        }
        assert_eq!(rs.front().map(|r| r.seq), Some(Records::BLOCK as u64 + 6));
        rs.push_back(record(n + 1));
        let seqs: Vec<u64> = rs.after(0).map(|r| r.seq).collect();
        assert_eq!(seqs, ((Records::BLOCK as u64 + 6)..=n + 1).collect::<Vec<_>>());
        assert_eq!(rs.len(), seqs.len());
        while rs.pop_front().is_some() {}
        assert!(rs.is_empty() && rs.front().is_none() && rs.after(0).next().is_none());
        // Drained, the last block is kept and reused: appending and confirming one record at
        // a time takes no new block.
        assert_eq!(rs.blocks.len(), 1);
        for seq in n + 2..n + 2 + 3 * Records::BLOCK as u64 {
            rs.push_back(record(seq));
            assert_eq!(rs.after(seq - 1).map(|r| r.seq).collect::<Vec<_>>(), [seq]);
            assert_eq!(rs.pop_front().map(|r| r.seq), Some(seq));
            assert_eq!(rs.blocks.len(), 1);
        }
        assert!(rs.is_empty());
    }

    #[test]
    fn read_after_stops_at_the_record_or_byte_budget_but_returns_at_least_one() {
        let mut rs = Records::default();
        rs.extend((1..=10).map(record));
        assert_eq!(rs.read_after(3, 2, usize::MAX).iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 5]);
        // "p4" is 2 bytes: a budget of 1 still returns one record, 4 bytes two.
        assert_eq!(rs.read_after(3, 100, 1).len(), 1);
        assert_eq!(rs.read_after(3, 100, 4).len(), 2);
        assert!(rs.read_after(10, 100, 100).is_empty());
    }

    #[test]
    fn arena_copies_are_independent_of_the_source() {
        let mut arena = Arena::default();
        let mut src = b"hello".to_vec();
        let a = arena.own(&src);
        src[0] = b'j';
        let b = arena.own(&src);
        assert_eq!((&a[..], &b[..]), (&b"hello"[..], &b"jello"[..]));
        let big = vec![7u8; Arena::ALONE + 1];
        assert_eq!(arena.own(&big), big);
    }
}
