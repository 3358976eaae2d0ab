//! The in-memory journal: bounded in entries and bytes, lost with the process.

use parking_lot::Mutex;

use super::{Durable, Journal, JournalError, JournalStats, Record};

pub struct MemJournal {
    inner: Mutex<Inner>,
    max_entries: u64,
    max_bytes: u64,
    instance_id: String,
}

struct Inner {
    records: super::Records,
    bytes: u64,
    last_seq: u64,
    arena: super::Arena,
}

impl MemJournal {
    pub fn new(max_entries: u64, max_bytes: u64, instance_id: String) -> MemJournal {
        MemJournal {
            inner: Mutex::new(Inner { records: Default::default(), bytes: 0, last_seq: 0, arena: Default::default() }),
            max_entries,
            max_bytes,
            instance_id,
        }
    }
}

impl Journal for MemJournal {
    fn append(&self, db: u32, commands: u32, payload: &[u8], accepted_ms: u64) -> Result<u64, JournalError> {
        let mut g = self.inner.lock();
        let len = payload.len() as u64;
        if g.records.len() as u64 >= self.max_entries || g.bytes + len > self.max_bytes {
            return Err(JournalError::Full { entries: g.records.len() as u64, bytes: g.bytes });
        }
        g.last_seq += 1;
        let seq = g.last_seq;
        g.bytes += len;
        let payload = g.arena.own(payload);
        g.records.push_back(Record { seq, db, commands, payload, accepted_ms });
        Ok(seq)
    }

    fn durable(&self, _seq: u64) -> Durable<'_> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn has_room(&self, len: usize) -> bool {
        let g = self.inner.lock();
        (g.records.len() as u64) < self.max_entries && g.bytes + len as u64 <= self.max_bytes
    }

    fn read_after(&self, after: u64, max_records: usize, max_bytes: usize) -> Vec<Record> {
        let g = self.inner.lock();
        g.records.read_after(after, max_records, max_bytes)
    }

    fn confirm(&self, seq: u64) {
        let mut g = self.inner.lock();
        while g.records.front().is_some_and(|r| r.seq <= seq) {
            let r = g.records.pop_front().expect("front exists");
            g.bytes -= r.payload.len() as u64;
        }
    }

    fn stats(&self) -> JournalStats {
        let g = self.inner.lock();
        JournalStats {
            entries: g.records.len() as u64,
            bytes: g.bytes,
            oldest_ms: g.records.front().map(|r| r.accepted_ms),
            last_seq: g.last_seq,
            ..Default::default()
        }
    }

    fn instance_id(&self) -> &str {
        &self.instance_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn appends_in_order_reads_after_and_confirms() {
        let j = MemJournal::new(100, 1 << 20, "t".into());
        for i in 0..10u8 {
            assert_eq!(j.append(0, 1, &Bytes::from(vec![i; 10]), 0).unwrap(), i as u64 + 1);
        }
        let r = j.read_after(3, 4, usize::MAX);
        assert_eq!(r.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 5, 6, 7]);
        j.confirm(5);
        let s = j.stats();
        assert_eq!((s.entries, s.bytes, s.last_seq), (5, 50, 10));
        assert_eq!(j.read_after(0, 100, usize::MAX)[0].seq, 6);
        // Byte budget: at least one record, then stop before exceeding.
        assert_eq!(j.read_after(0, 100, 25).len(), 2);
    }

    #[test]
    fn limits_refuse_without_dropping_anything() {
        let j = MemJournal::new(3, 25, "t".into());
        j.append(0, 1, &Bytes::from_static(b"0123456789"), 0).unwrap();
        j.append(0, 1, &Bytes::from_static(b"0123456789"), 0).unwrap();
        assert!(matches!(j.append(0, 1, &Bytes::from_static(b"0123456789"), 0), Err(JournalError::Full { .. })));
        assert!(!j.has_room(10));
        assert!(j.has_room(5));
        j.append(0, 1, &Bytes::from_static(b"01234"), 0).unwrap();
        assert!(matches!(j.append(0, 1, &Bytes::new(), 0), Err(JournalError::Full { .. })));
        assert_eq!(j.stats().entries, 3);
    }
}
