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
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
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
