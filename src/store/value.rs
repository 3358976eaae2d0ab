//! Typed Redis values as the local store keeps them.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use indexmap::{IndexMap, IndexSet};

/// A value, or the knowledge that the key does not exist.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// The upstream said the key does not exist (or it expired).
    Absent,
    Str(Bytes),
    /// Insertion order kept, as Redis keeps it for small hashes.
    Hash(IndexMap<Bytes, Bytes>),
    List(VecDeque<Bytes>),
    Set(IndexSet<Bytes>),
    ZSet(ZSet),
}

impl Value {
    /// Approximate memory weight in bytes (for the store's byte bound).
    pub fn weight(&self) -> u32 {
        let w: usize = match self {
            Value::Absent => 0,
            Value::Str(b) => b.len(),
            Value::Hash(h) => h.iter().map(|(k, v)| k.len() + v.len() + 32).sum(),
            Value::List(l) => l.iter().map(|v| v.len() + 16).sum(),
            Value::Set(s) => s.iter().map(|v| v.len() + 24).sum(),
            Value::ZSet(z) => z.scores.keys().map(|m| 2 * m.len() + 64).sum(),
        };
        w.min(u32::MAX as usize) as u32
    }

    /// The Redis TYPE name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Absent => "none",
            Value::Str(_) => "string",
            Value::Hash(_) => "hash",
            Value::List(_) => "list",
            Value::Set(_) => "set",
            Value::ZSet(_) => "zset",
        }
    }

    /// Makes this a string holding `bytes`. When it is already a string of the same length
    /// that nothing else holds (a SET over a key it set before: counters, fixed-size
    /// values), the bytes are written in place: no allocation for the new value and no
    /// free of the old, which were ~12% of an outage-mode SET.
    pub fn set_str(&mut self, bytes: &[u8]) {
        if let Value::Str(old) = self {
            if old.len() == bytes.len() {
                match std::mem::take(old).try_into_mut() {
                    // Same length and capacity: `freeze` keeps the buffer as it is.
                    Ok(mut owned) if owned.capacity() == bytes.len() => {
                        owned.clear();
                        owned.extend_from_slice(bytes);
                        *old = owned.freeze();
                        return;
                    }
                    _ => {}
                }
            }
        }
        *self = Value::Str(Bytes::copy_from_slice(bytes));
    }

    /// Whether a collection became empty (Redis deletes empty collections).
    pub fn is_empty_collection(&self) -> bool {
        match self {
            Value::Hash(h) => h.is_empty(),
            Value::List(l) => l.is_empty(),
            Value::Set(s) => s.is_empty(),
            Value::ZSet(z) => z.scores.is_empty(),
            _ => false,
        }
    }
}

/// A float with Redis's total order for scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score(pub f64);

impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    /// As Redis compares scores (`<`): -0 and 0 are equal (the member then decides).
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.partial_cmp(&other.0).unwrap_or_else(|| self.0.total_cmp(&other.0))
    }
}

/// A sorted set: members by score, then by member bytes (Redis's order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ZSet {
    pub scores: HashMap<Bytes, f64>,
    pub order: BTreeSet<(Score, Bytes)>,
}

impl ZSet {
    /// Sets a member's score; returns whether the member is new.
    pub fn insert(&mut self, member: Bytes, score: f64) -> bool {
        // Redis stores a small sorted set's scores as text, where -0 reads back as 0.
        let score = score + 0.0;
        match self.scores.get(&member) {
            // As Redis: an equal score (0 for -0 too) changes nothing.
            Some(&old) if old == score => return false,
            _ => {}
        }
        match self.scores.insert(member.clone(), score) {
            Some(old) => {
                self.order.remove(&(Score(old), member.clone()));
                self.order.insert((Score(score), member));
                false
            }
            None => {
                self.order.insert((Score(score), member));
                true
            }
        }
    }

    pub fn remove(&mut self, member: &[u8]) -> bool {
        match self.scores.remove(member) {
            Some(score) => {
                self.order.remove(&(Score(score), Bytes::copy_from_slice(member)));
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.scores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// Members in ascending order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&Bytes, f64)> + ExactSizeIterator {
        self.order.iter().map(|(s, m)| (m, s.0))
    }

    /// 0-based rank of a member in ascending order.
    pub fn rank(&self, member: &[u8]) -> Option<usize> {
        let score = *self.scores.get(member)?;
        Some(self.order.range(..(Score(score), Bytes::copy_from_slice(member))).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_str_reuses_an_unshared_buffer_of_the_same_length_only() {
        let mut v = Value::Absent;
        v.set_str(b"12345678");
        let Value::Str(first) = &v else { panic!("not a string") };
        let at = first.as_ptr();
        v.set_str(b"abcdefgh");
        let Value::Str(second) = &v else { panic!("not a string") };
        assert_eq!(&second[..], b"abcdefgh");
        assert_eq!(second.as_ptr(), at, "same length, unshared: written in place");

        // A reader holding the old value keeps it unchanged.
        let held = second.clone();
        v.set_str(b"ABCDEFGH");
        assert_eq!(&held[..], b"abcdefgh");
        assert!(matches!(&v, Value::Str(b) if &b[..] == b"ABCDEFGH"));

        // Other lengths and other types get a fresh string.
        v.set_str(b"short");
        assert!(matches!(&v, Value::Str(b) if &b[..] == b"short"));
        v.set_str(b"a much longer value than before");
        assert!(matches!(&v, Value::Str(b) if &b[..] == b"a much longer value than before"));
        let mut h = Value::Hash(IndexMap::new());
        h.set_str(b"x");
        assert!(matches!(&h, Value::Str(b) if &b[..] == b"x"));
        // A slice of a larger buffer is never written through.
        let big = Bytes::from_static(b"0123456789");
        let mut s = Value::Str(big.slice(2..5));
        s.set_str(b"xyz");
        assert!(matches!(&s, Value::Str(b) if &b[..] == b"xyz"));
        assert_eq!(&big[..], b"0123456789");
    }

    #[test]
    fn zset_orders_by_score_then_member() {
        let mut z = ZSet::default();
        assert!(z.insert(Bytes::from_static(b"b"), 1.0));
        assert!(z.insert(Bytes::from_static(b"a"), 1.0));
        assert!(z.insert(Bytes::from_static(b"c"), 0.5));
        assert!(!z.insert(Bytes::from_static(b"c"), 2.0));
        let order: Vec<_> = z.iter().map(|(m, _)| m.clone()).collect();
        assert_eq!(order, vec![Bytes::from_static(b"a"), Bytes::from_static(b"b"), Bytes::from_static(b"c")]);
        assert_eq!(z.rank(b"c"), Some(2));
        assert!(z.remove(b"a"));
        assert_eq!(z.rank(b"b"), Some(0));
        assert_eq!(z.len(), 2);
    }
}
