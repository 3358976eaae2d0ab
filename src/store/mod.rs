//! The local store: what respite serves reads from when the upstream is down.
//!
//! A moka LRU bounded in bytes (each entry weighs its key and value), with an index beside
//! it that lookups use so that moka's per-read bookkeeping is paid once per key per
//! `TOUCH_MS`, not per command (see `Index`). Entries are typed
//! Redis values, or `Absent` when the upstream said the key does not exist. Each entry
//! knows when it was last confirmed (`seen_at`, for `store.max_staleness`) and its Redis
//! expiry as an absolute wall-clock time where known (`expires_at_ms`), so a served value
//! never outlives the upstream TTL. Filled while healthy from full-value read replies and
//! successful writes ([`crate::outage::warm`]); changed by writes accepted during an outage.

mod value;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hashbrown::hash_table::Entry as TableEntry;
use hashbrown::HashTable;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use parking_lot::Mutex;
use tokio::time::Instant;

pub use value::{Value, ZSet};

use crate::metrics::Metrics;

/// A key in a database.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreKey {
    pub db: u32,
    pub key: Bytes,
}

/// A borrowed [`StoreKey`] (usually a slice of a request): lookups, updates and
/// invalidations take it, so only an insert copies the key. Hashes exactly as the
/// `StoreKey` it stands for (`Bytes` hashes as its slice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyRef<'a> {
    pub db: u32,
    pub key: &'a [u8],
}

impl KeyRef<'_> {
    pub fn to_owned(self) -> StoreKey {
        StoreKey { db: self.db, key: Bytes::copy_from_slice(self.key) }
    }
}

impl StoreKey {
    pub fn as_ref(&self) -> KeyRef<'_> {
        KeyRef { db: self.db, key: &self.key }
    }
}

impl moka::Equivalent<StoreKey> for KeyRef<'_> {
    fn equivalent(&self, key: &StoreKey) -> bool {
        self.db == key.db && self.key == &key.key[..]
    }
}

/// A stored value with what is known of its freshness and expiry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub value: Value,
    /// Redis expiry, unix milliseconds; `None`: no expiry, or unknown (see `ttl_known`).
    pub expires_at_ms: Option<u64>,
    /// Whether `expires_at_ms` is known (a value warmed from GET has an unknown TTL, which
    /// `store.max_staleness` bounds; one written by SET has a known one).
    pub ttl_known: bool,
    /// When the upstream (or this sidecar's own write) last confirmed the value.
    pub seen_at: Instant,
    /// Built by outage writes on a key whose upstream value was never seen, as if it were
    /// absent (SPEC §3.7): writes go on from it (INCR counts 1, 2, 3), reads are misses, as
    /// for any unseen key. Cleared by a write that sets the whole value and expiry (SET,
    /// DEL, …) or by the upstream's value.
    pub guessed: bool,
}

/// A slot in the cache: the entry behind a lock (writes change it in place), and its weight
/// as last measured (the cache re-weighs on re-insert).
pub struct Slot {
    pub entry: Mutex<Entry>,
    weight: AtomicU32,
    /// When moka was last told of an access to this slot (wall clock, unix milliseconds:
    /// the round's reading, so no clock arithmetic per lookup; a clock step only moves
    /// one report): see [`Index`].
    touched_ms: AtomicU64,
}

impl Slot {
    fn new(entry: Entry, weight: u32, now_ms: u64) -> Arc<Slot> {
        Arc::new(Slot { entry: Mutex::new(entry), weight: AtomicU32::new(weight), touched_ms: AtomicU64::new(now_ms) })
    }
}

/// What a lookup found.
pub enum Lookup {
    /// The key was never seen (or its value is too stale to serve).
    Unseen,
    /// The value (`Value::Absent` for a key known not to exist, or expired).
    Found(Arc<Slot>),
}

/// A value to store: owned, or a string still to be copied (only if it changed).
enum Incoming<'a> {
    Value(Value),
    Str(&'a [u8]),
}

impl Incoming<'_> {
    fn same_as(&self, stored: &Value) -> bool {
        match self {
            Incoming::Value(v) => v == stored,
            Incoming::Str(s) => matches!(stored, Value::Str(v) if v[..] == **s),
        }
    }

    fn into_value(self) -> Value {
        match self {
            Incoming::Value(v) => v,
            Incoming::Str(s) => Value::Str(Bytes::copy_from_slice(s)),
        }
    }
}

/// How often, at most, an access to a slot found through the [`Index`] is reported to moka
/// (its LRU order): a key read or written continuously stays recent, and costs moka's
/// bookkeeping once per interval instead of once per command.
const TOUCH_MS: u64 = 100;

const SHARDS: usize = 16;

/// One shard of the [`Index`].
type Shard = Mutex<HashTable<(StoreKey, Arc<Slot>)>>;

/// The slots by key, beside moka. moka holds every entry, weighs it and decides what to
/// evict, but its `get` records each read for its LRU order (a clock read, a channel send
/// and the housekeeping that applies them: ~780 instructions, a fifth of an outage-mode
/// SET). Lookups therefore go through this table (one hash, a short lock) and tell moka of
/// the access only every [`TOUCH_MS`].
///
/// The two stay in step: a key's slot changes in moka and here under the key's shard lock
/// (so they never disagree on which slot a key has), and a slot moka removes on its own
/// (eviction) leaves the index when moka reports it. moka's removal notifications (which
/// can come from inside any moka call) only queue the slot; the queue is applied at the
/// start of the next store operation, outside every lock, and keeps a slot a write put
/// back into moka in the meantime (a re-weigh after the eviction).
struct Index {
    hasher: ahash::RandomState,
    shards: Box<[Shard]>,
    /// Slots moka removed (evicted, invalidated, replaced), to drop from the index.
    removed: Mutex<Vec<(StoreKey, Arc<Slot>)>>,
    removed_any: AtomicBool,
}

impl Index {
    fn new() -> Index {
        Index {
            hasher: ahash::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashTable::new())).collect(),
            removed: Mutex::new(Vec::new()),
            removed_any: AtomicBool::new(false),
        }
    }

    fn shard(&self, key: KeyRef<'_>) -> (u64, &Shard) {
        let h = self.hasher.hash_one(key);
        // Bits hashbrown uses neither for the bucket (low) nor for the tag (top 7).
        (h, &self.shards[(h >> 32) as usize % SHARDS])
    }

    fn get(&self, key: KeyRef<'_>) -> Option<Arc<Slot>> {
        let (h, shard) = self.shard(key);
        shard.lock().find(h, |(k, _)| moka::Equivalent::equivalent(&key, k)).map(|(_, s)| s.clone())
    }

    /// Runs `f` with the key's shard locked and its current entry (the index's own copy of
    /// the key, and the slot; `None` if absent); `f` returns the slot the key must have
    /// afterwards (`None`: no entry). A new entry keeps `owned` as its key when given
    /// (shared with moka's copy), else a copy of `key`.
    fn with<R>(
        &self,
        key: KeyRef<'_>,
        owned: Option<StoreKey>,
        f: impl FnOnce(Option<(&StoreKey, &Arc<Slot>)>) -> (Option<Arc<Slot>>, R),
    ) -> R {
        let (h, shard) = self.shard(key);
        let mut t = shard.lock();
        let eq = |(k, _): &(StoreKey, Arc<Slot>)| moka::Equivalent::equivalent(&key, k);
        match t.entry(h, eq, |(k, _)| self.hasher.hash_one(k)) {
            TableEntry::Occupied(mut e) => {
                let (k, s) = e.get();
                let (next, r) = f(Some((k, s)));
                match next {
                    Some(n) => e.get_mut().1 = n,
                    None => drop(e.remove()),
                }
                r
            }
            TableEntry::Vacant(v) => {
                let (next, r) = f(None);
                if let Some(n) = next {
                    v.insert((owned.unwrap_or_else(|| key.to_owned()), n));
                }
                r
            }
        }
    }

    /// moka removed `slot` (called from moka's listener: only queues it).
    fn moka_removed(&self, key: StoreKey, slot: Arc<Slot>) {
        self.removed.lock().push((key, slot));
        self.removed_any.store(true, Ordering::Release);
    }

    /// Drops the slots moka removed, unless the key has another slot by now or moka has
    /// the key again (`in_moka`, asked under the key's shard lock): a write that re-weighed
    /// the slot between moka's eviction and this call put it back into moka, and the two
    /// must keep agreeing.
    fn apply_removals(&self, in_moka: impl Fn(&StoreKey) -> bool) {
        if !self.removed_any.load(Ordering::Acquire) || !self.removed_any.swap(false, Ordering::AcqRel) {
            return;
        }
        let removed = std::mem::take(&mut *self.removed.lock());
        for (k, slot) in removed {
            let (h, shard) = self.shard(k.as_ref());
            let mut t = shard.lock();
            if let Ok(e) = t.find_entry(h, |(key, s)| key == &k && Arc::ptr_eq(s, &slot)) {
                if !in_moka(&k) {
                    e.remove();
                }
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    fn retain(&self, keep: impl Fn(&StoreKey) -> bool) {
        for shard in self.shards.iter() {
            shard.lock().retain(|(k, _)| keep(k));
        }
    }
}

/// The byte-bounded LRU of typed values.
pub struct Store {
    cache: moka::sync::Cache<StoreKey, Arc<Slot>, ahash::RandomState>,
    index: Arc<Index>,
    max_staleness: Duration,
    metrics: Arc<Metrics>,
    /// When keys last changed by this sidecar's hand, to refuse replies older than that.
    pub changes: Changes,
}

/// Orders what the store learns against what this sidecar changed. Replies come back to
/// sessions and are learned in no fixed order across sessions and connections: session A's
/// `GET k` may run upstream before session B's `SET k v2` and be learned after it, and
/// would put the older value back. So every change this sidecar makes or learns (a write's
/// reply, an outage write, a key forgotten) takes a tick of a clock and marks its key's
/// slot; a request takes the clock's reading when it is sent. A reply to a request sent
/// before a later change to one of its keys may be older than that change, and its keys
/// are forgotten instead of learned. Only a reply whose request was sent after the change
/// was learned (so it ran after it) can be newer. Keys share 16,384 slots by hash; a
/// shared slot only costs a key forgotten that could have been kept.
pub struct Changes {
    clock: AtomicU64,
    /// The tick of the last change to every key at once (FLUSHDB, unknown keys).
    all: AtomicU64,
    slots: Box<[AtomicU64]>,
}

impl Changes {
    const SLOTS: usize = 1 << 14;

    fn new() -> Changes {
        Changes {
            clock: AtomicU64::new(0),
            all: AtomicU64::new(0),
            slots: (0..Self::SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The clock's reading for a request about to be sent.
    pub fn now(&self) -> u64 {
        self.clock.load(Ordering::Acquire)
    }

    fn slot(&self, key: KeyRef<'_>) -> &AtomicU64 {
        &self.slots[(key_hash(key.db, key.key) as usize) & (Self::SLOTS - 1)]
    }

    /// One key's slot (hashed once), for [`KeyChanges::last`] and [`KeyChanges::mark`].
    pub fn key(&self, key: KeyRef<'_>) -> KeyChanges<'_> {
        KeyChanges { slot: self.slot(key), changes: self }
    }

    /// `key` changed by this sidecar's hand (or its value became unknown).
    pub fn changed(&self, key: KeyRef<'_>) {
        self.key(key).mark();
    }

    fn changed_all(&self) {
        let tick = self.clock.fetch_add(1, Ordering::AcqRel) + 1;
        self.all.fetch_max(tick, Ordering::AcqRel);
    }
}

/// One key's slot in [`Changes`].
pub struct KeyChanges<'a> {
    slot: &'a AtomicU64,
    changes: &'a Changes,
}

impl KeyChanges<'_> {
    /// The tick of the last change to the key (0: none).
    pub fn last(&self) -> u64 {
        self.slot.load(Ordering::Acquire).max(self.changes.all.load(Ordering::Acquire))
    }

    /// A write is being learned: marks the key changed. Returns the tick of the change
    /// before (as [`KeyChanges::last`]) and the mark.
    pub fn mark(&self) -> (u64, u64) {
        let tick = self.changes.clock.fetch_add(1, Ordering::AcqRel) + 1;
        let before = self.slot.fetch_max(tick, Ordering::AcqRel);
        (before.max(self.changes.all.load(Ordering::Acquire)), tick)
    }
}

/// FxHash-style hash of a database and key (multiply and rotate, 8 bytes a step): cheap,
/// and where it collides, a key is only treated more cautiously.
pub fn key_hash(db: u32, key: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let step = |h: u64, v: u64| (h.rotate_left(5) ^ v).wrapping_mul(K);
    let mut h = step(db as u64, key.len() as u64);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        h = step(h, u64::from_le_bytes(c.try_into().expect("8 bytes")));
    }
    let mut last = [0u8; 8];
    last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    step(h, u64::from_le_bytes(last))
}

/// One reading of both clocks, taken once per command and passed down (clock reads were
/// a tenth of outage-mode CPU when each layer took its own).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    /// Wall clock, unix milliseconds (Redis expiries are wall-clock times).
    pub ms: u64,
}

impl Now {
    pub fn current() -> Now {
        Now { at: Instant::now(), ms: now_ms() }
    }
}

/// Wall-clock now, unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Store {
    pub fn new(max_bytes: u64, max_staleness: Duration, metrics: Arc<Metrics>) -> Store {
        let evictions = metrics.store_evictions.clone();
        let index = Arc::new(Index::new());
        let removed = index.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .eviction_policy(EvictionPolicy::lru())
            // For `invalidate_db` (FLUSHDB): without it moka refuses predicate invalidation.
            .support_invalidation_closures()
            // The value, the key (counted twice: the index may hold its own copy) and the
            // entry's share of moka's and the index's tables.
            .weigher(|k: &StoreKey, v: &Arc<Slot>| {
                (k.key.len() as u32)
                    .saturating_mul(2)
                    .saturating_add(96)
                    .saturating_add(v.weight.load(Ordering::Relaxed))
            })
            .eviction_listener(move |k: Arc<StoreKey>, v: Arc<Slot>, cause| {
                if cause == RemovalCause::Size {
                    evictions.inc();
                }
                if cause != RemovalCause::Replaced {
                    removed.moka_removed((*k).clone(), v);
                }
            })
            .build_with_hasher(ahash::RandomState::new());
        Store { cache, index, max_staleness, metrics, changes: Changes::new() }
    }

    /// Applies moka's queued removals to the index.
    fn apply_removals(&self) {
        self.index.apply_removals(|k| self.cache.contains_key(k));
    }

    #[cfg(test)]
    fn index_len(&self) -> usize {
        self.apply_removals();
        self.index.len()
    }

    /// The key's slot, telling moka of the access if it has not heard of one for a while.
    fn find(&self, key: KeyRef<'_>, now: Now) -> Option<Arc<Slot>> {
        self.apply_removals();
        let slot = self.index.get(key)?;
        let t = now.ms;
        if t.abs_diff(slot.touched_ms.load(Ordering::Relaxed)) >= TOUCH_MS {
            slot.touched_ms.store(t, Ordering::Relaxed);
            let _ = self.cache.get(&key);
        }
        Some(slot)
    }

    /// Makes `slot` the key's entry in the index and in moka (which weighs it), under the
    /// shard's lock so that both agree. moka may evict inside `insert`; its listener only
    /// queues, so holding the lock here cannot deadlock.
    fn install(&self, key: KeyRef<'_>, slot: Arc<Slot>) {
        self.apply_removals();
        let owned = key.to_owned();
        self.index.with(key, Some(owned.clone()), |_| {
            self.cache.insert(owned, slot.clone());
            (Some(slot), ())
        });
    }

    /// Looks a key up. Expired values read as `Absent`; values older than the maximum
    /// staleness read as unseen (and are dropped).
    pub fn get(&self, key: KeyRef<'_>, now: Now) -> Lookup {
        match self.find(key, now) {
            None => {
                self.metrics.store_misses.inc();
                Lookup::Unseen
            }
            Some(slot) => {
                {
                    let mut e = slot.entry.lock();
                    if now.at.saturating_duration_since(e.seen_at) > self.max_staleness {
                        drop(e);
                        self.invalidate(key);
                        self.metrics.store_misses.inc();
                        return Lookup::Unseen;
                    }
                    if e.expires_at_ms.is_some_and(|t| t <= now.ms) {
                        e.value = Value::Absent;
                        e.expires_at_ms = None;
                        e.ttl_known = true;
                    }
                }
                self.metrics.store_hits.inc();
                Lookup::Found(slot)
            }
        }
    }

    /// Stores a value confirmed now; `ttl`: `Some(expiry)` when known, `None` when unknown
    /// (an unchanged value then keeps what was known of its expiry). An existing slot is
    /// updated in place, so a hot key read again and again costs a lookup, not an insert.
    pub fn put(&self, key: KeyRef<'_>, value: Value, ttl: Option<Option<u64>>, now: Now) {
        self.upsert(key, Incoming::Value(value), ttl, now);
    }

    /// [`Store::put`] of a string, copied only when it differs from the stored one (the
    /// bytes given are usually a slice of a network buffer, which must not be kept).
    pub fn put_str(&self, key: KeyRef<'_>, value: &[u8], ttl: Option<Option<u64>>, now: Now) {
        self.upsert(key, Incoming::Str(value), ttl, now);
    }

    fn upsert(&self, key: KeyRef<'_>, value: Incoming<'_>, ttl: Option<Option<u64>>, now: Now) {
        if let Some(slot) = self.find(key, now) {
            let weight = {
                let mut e = slot.entry.lock();
                // A guessed entry's expiry was a guess too: the upstream's replaces both.
                if e.guessed || !value.same_as(&e.value) {
                    e.value = value.into_value();
                    e.ttl_known = ttl.is_some();
                    e.expires_at_ms = ttl.flatten();
                } else if let Some(t) = ttl {
                    e.ttl_known = true;
                    e.expires_at_ms = t;
                }
                e.guessed = false;
                e.seen_at = now.at;
                e.value.weight()
            };
            self.set_weight(key, &slot, weight);
            return;
        }
        let value = value.into_value();
        let weight = value.weight();
        let entry =
            Entry { value, expires_at_ms: ttl.flatten(), ttl_known: ttl.is_some(), seen_at: now.at, guessed: false };
        self.install(key, Slot::new(entry, weight, now.ms));
    }

    /// The slot for `key`, created as a guessed `Absent` if unseen (`created` says which).
    pub fn slot_for_write(&self, key: KeyRef<'_>, now: Now) -> (Arc<Slot>, bool) {
        match self.get(key, now) {
            Lookup::Found(slot) => (slot, false),
            Lookup::Unseen => {
                let entry = Entry {
                    value: Value::Absent,
                    expires_at_ms: None,
                    ttl_known: true,
                    seen_at: now.at,
                    guessed: true,
                };
                let slot = Slot::new(entry, 0, now.ms);
                self.install(key, slot.clone());
                (slot, true)
            }
        }
    }

    /// Re-weighs a slot after its entry changed (the lock must not be held). moka learns
    /// the new weight by a re-insert, made only while the key still has this slot.
    pub fn reweigh(&self, key: KeyRef<'_>, slot: &Arc<Slot>) {
        let w = slot.entry.lock().value.weight();
        self.set_weight(key, slot, w);
    }

    fn set_weight(&self, key: KeyRef<'_>, slot: &Arc<Slot>, w: u32) {
        if slot.weight.swap(w, Ordering::Relaxed) != w {
            self.index.with(key, None, |current| match current {
                // moka learns the weight by a re-insert, under the index's copy of the key.
                Some((k, c)) if Arc::ptr_eq(c, slot) => {
                    self.cache.insert(k.clone(), slot.clone());
                    (Some(slot.clone()), ())
                }
                other => (other.map(|(_, c)| c.clone()), ()),
            });
        }
    }

    /// Forgets a key (its upstream value changed in a way this sidecar cannot follow).
    pub fn invalidate(&self, key: KeyRef<'_>) {
        self.changes.changed(key);
        self.index.with(key, None, |current| {
            // Lookups go through the index: what it does not hold is not stored.
            if current.is_some() {
                self.cache.invalidate(&key);
            }
            (None, ())
        });
    }

    /// Forgets everything in one database (FLUSHDB, or a write whose keys are unknown).
    pub fn invalidate_db(&self, db: u32) {
        self.changes.changed_all();
        self.index.retain(|k| k.db != db);
        self.cache
            .invalidate_entries_if(move |k, _| k.db == db)
            .expect("the cache is built with support_invalidation_closures");
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.changes.changed_all();
        self.index.retain(|_| false);
        self.cache.invalidate_all();
    }

    /// Entries currently stored (approximate, as moka counts).
    pub fn entries(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.apply_removals();
        self.cache.entry_count()
    }

    /// Bytes currently stored (the weighted size).
    pub fn bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.apply_removals();
        self.cache.weighted_size()
    }

    /// Number of keys of a database that are known to exist (DBSIZE of the local view):
    /// values past `store.max_staleness`, which reads treat as unseen, are not counted.
    pub fn dbsize(&self, db: u32, now: Now) -> usize {
        self.cache
            .iter()
            .filter(|(k, slot)| {
                k.db == db && {
                    let e = slot.entry.lock();
                    // A guessed value's existence is a guess too: not counted.
                    !e.guessed
                        && !matches!(e.value, Value::Absent)
                        && e.expires_at_ms.is_none_or(|t| t > now.ms)
                        && now.at.saturating_duration_since(e.seen_at) <= self.max_staleness
                }
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> KeyRef<'_> {
        KeyRef { db: 0, key: k.as_bytes() }
    }

    #[test]
    fn a_borrowed_key_finds_what_an_owned_key_stored() {
        let store = Store::new(1 << 20, Duration::from_secs(3600), Arc::new(Metrics::new()));
        store.put(key("k"), Value::Str(Bytes::from_static(b"v")), Some(None), Now::current());
        let other_buffer = String::from("k");
        assert!(matches!(store.get(key(&other_buffer), Now::current()), Lookup::Found(_)));
        assert!(matches!(store.get(KeyRef { db: 1, key: b"k" }, Now::current()), Lookup::Unseen));
        let owned = StoreKey { db: 0, key: Bytes::from_static(b"k") };
        assert!(matches!(store.get(owned.as_ref(), Now::current()), Lookup::Found(_)));
        store.invalidate(key("k"));
        assert!(matches!(store.get(owned.as_ref(), Now::current()), Lookup::Unseen));
    }

    #[test]
    fn the_byte_bound_holds_when_ten_times_as_much_is_written() {
        let metrics = Arc::new(Metrics::new());
        let bound = 1 << 20;
        let store = Store::new(bound, Duration::from_secs(3600), metrics.clone());
        let value = Bytes::from(vec![b'x'; 1000]);
        for i in 0..10_000 {
            store.put(key(&format!("k{i}")), Value::Str(value.clone()), Some(None), Now::current());
        }
        assert!(store.bytes() <= bound, "{} > {bound}", store.bytes());
        assert!(store.entries() < 10_000);
        assert!(metrics.store_evictions.get() > 0);
    }

    #[test]
    fn expired_values_read_as_absent_and_unseen_keys_as_unseen() {
        let store = Store::new(1 << 20, Duration::from_secs(3600), Arc::new(Metrics::new()));
        store.put(key("gone"), Value::Str(Bytes::from_static(b"v")), Some(Some(now_ms() - 1)), Now::current());
        match store.get(key("gone"), Now::current()) {
            Lookup::Found(slot) => assert!(matches!(slot.entry.lock().value, Value::Absent)),
            Lookup::Unseen => panic!("expired key must read as absent"),
        }
        assert!(matches!(store.get(key("never"), Now::current()), Lookup::Unseen));
    }

    #[test]
    fn invalidating_a_database_forgets_only_its_keys() {
        let store = Store::new(1 << 20, Duration::from_secs(3600), Arc::new(Metrics::new()));
        let v = || Value::Str(Bytes::from_static(b"v"));
        store.put(key("a"), v(), Some(None), Now::current());
        store.put(KeyRef { db: 1, key: b"b" }, v(), Some(None), Now::current());
        store.invalidate_db(0);
        assert!(matches!(store.get(key("a"), Now::current()), Lookup::Unseen));
        assert!(matches!(store.get(KeyRef { db: 1, key: b"b" }, Now::current()), Lookup::Found(_)));
        assert_eq!(store.entries(), 1);
    }

    #[test]
    fn stale_values_are_not_served() {
        let store = Store::new(1 << 20, Duration::ZERO, Arc::new(Metrics::new()));
        store.put(key("old"), Value::Str(Bytes::from_static(b"v")), Some(None), Now::current());
        std::thread::sleep(Duration::from_millis(2));
        assert!(matches!(store.get(key("old"), Now::current()), Lookup::Unseen));
    }

    #[test]
    fn dbsize_counts_what_reads_would_serve() {
        let store = Store::new(1 << 20, Duration::from_millis(200), Arc::new(Metrics::new()));
        store.put(key("old"), Value::Str(Bytes::from_static(b"v")), Some(None), Now::current());
        store.put(key("gone"), Value::Str(Bytes::from_static(b"v")), Some(Some(now_ms() - 1)), Now::current());
        store.put(key("absent"), Value::Absent, Some(None), Now::current());
        assert_eq!(store.dbsize(0, Now::current()), 1);
        std::thread::sleep(Duration::from_millis(250));
        store.put(key("fresh"), Value::Str(Bytes::from_static(b"v")), Some(None), Now::current());
        // "old" is past max_staleness: a GET would answer it as unseen.
        assert_eq!(store.dbsize(0, Now::current()), 1);
        assert!(matches!(store.get(key("old"), Now::current()), Lookup::Unseen));
        assert_eq!(store.dbsize(1, Now::current()), 0);
    }
    #[test]
    fn the_index_follows_moka_through_evictions_invalidations_and_reweighs() {
        let store = Store::new(64 << 10, Duration::from_secs(3600), Arc::new(Metrics::new()));
        let value = Bytes::from(vec![b'x'; 500]);
        for i in 0..2_000 {
            store.put(key(&format!("k{i}")), Value::Str(value.clone()), Some(None), Now::current());
        }
        store.cache.run_pending_tasks();
        let entries = store.entries();
        assert!(entries < 2_000, "moka evicted: {entries}");
        assert_eq!(store.index_len() as u64, entries, "every slot moka dropped left the index");
        // Every key the index has is one moka has, and the other way round.
        for (k, slot) in store.cache.iter() {
            let found = store.index.get((*k).as_ref()).expect("moka's key is in the index");
            assert!(Arc::ptr_eq(&found, &slot));
        }
        // A weight change re-inserts the same slot into moka: still found, still one entry.
        let last = format!("k{}", 1_999);
        store.put(key(&last), Value::Str(Bytes::from(vec![b'y'; 900])), Some(None), Now::current());
        assert!(matches!(store.get(key(&last), Now::current()), Lookup::Found(_)));
        store.cache.run_pending_tasks();
        assert_eq!(store.index_len() as u64, store.entries());
        store.invalidate(key(&last));
        assert!(matches!(store.get(key(&last), Now::current()), Lookup::Unseen));
        store.put(KeyRef { db: 1, key: b"other-db" }, Value::Str(value.clone()), Some(None), Now::current());
        store.invalidate_db(0);
        store.cache.run_pending_tasks();
        assert_eq!(store.index_len(), 1, "only db 1 is left");
        assert!(matches!(store.get(KeyRef { db: 1, key: b"other-db" }, Now::current()), Lookup::Found(_)));
        store.clear();
        assert!(matches!(store.get(KeyRef { db: 1, key: b"other-db" }, Now::current()), Lookup::Unseen));
    }

    #[test]
    fn a_key_in_use_stays_recent_in_the_lru_although_lookups_skip_moka() {
        let store = Store::new(64 << 10, Duration::from_secs(3600), Arc::new(Metrics::new()));
        let value = Bytes::from(vec![b'x'; 500]);
        let mut now = Now::current();
        store.put(key("hot"), Value::Str(value.clone()), Some(None), now);
        for i in 0..2_000 {
            // Time passes between rounds (as in real traffic); the hot key is read in each.
            now.ms += 10;
            store.put(key(&format!("cold{i}")), Value::Str(value.clone()), Some(None), now);
            assert!(matches!(store.get(key("hot"), now), Lookup::Found(_)), "hot key evicted at {i}");
        }
        assert!(store.entries() < 2_000);
    }
    #[test]
    fn the_index_and_moka_agree_after_concurrent_writers_readers_and_invalidations() {
        let store = Arc::new(Store::new(32 << 10, Duration::from_secs(3600), Arc::new(Metrics::new())));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        let k = format!("k{}", (i * 7 + t) % 300);
                        let now = Now::current();
                        match i % 5 {
                            0 => store.invalidate(key(&k)),
                            1 => {
                                let _ = store.get(key(&k), now);
                            }
                            2 => {
                                let (slot, _) = store.slot_for_write(key(&k), now);
                                slot.entry.lock().value = Value::Str(Bytes::from(vec![b'w'; (i % 400) as usize]));
                                store.reweigh(key(&k), &slot);
                            }
                            _ => store.put(
                                key(&k),
                                Value::Str(Bytes::from(vec![b'p'; (i % 300) as usize])),
                                Some(None),
                                now,
                            ),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        store.cache.run_pending_tasks();
        assert!(store.bytes() <= 32 << 10, "{}", store.bytes());
        // Every slot the index has is the one moka has for that key, and the other way round.
        let entries = store.entries();
        assert_eq!(store.index_len() as u64, entries);
        for shard in store.index.shards.iter() {
            for (k, slot) in shard.lock().iter() {
                let in_moka = store.cache.get(k).expect("an indexed key is in moka");
                assert!(Arc::ptr_eq(&in_moka, slot), "index and moka hold different slots for {k:?}");
            }
        }
        for (k, slot) in store.cache.iter() {
            let found = store.index.get((*k).as_ref()).expect("a key moka has is in the index");
            assert!(Arc::ptr_eq(&found, &slot));
        }
    }

    #[test]
    fn a_slot_re_weighed_after_moka_evicted_it_is_still_found() {
        // moka evicts k1 while other keys come in; the write holding k1's slot then re-weighs
        // it (putting it back into moka) before the index has heard of the eviction.
        let store = Store::new(16 << 10, Duration::from_secs(3600), Arc::new(Metrics::new()));
        let now = Now::current();
        let (slot, _) = store.slot_for_write(key("k1"), now);
        slot.entry.lock().value = Value::Str(Bytes::from(vec![b'a'; 100]));
        store.reweigh(key("k1"), &slot);
        let filler = Bytes::from(vec![b'f'; 500]);
        let mut i = 0;
        while store.cache.contains_key(&key("k1")) {
            store.put(key(&format!("f{i}")), Value::Str(filler.clone()), Some(None), now);
            store.cache.run_pending_tasks();
            i += 1;
            assert!(i < 1_000, "k1 never evicted");
        }
        // The eviction is queued, not yet applied: the index still has k1's slot.
        assert!(store.index.get(key("k1")).is_some_and(|s| Arc::ptr_eq(&s, &slot)));
        slot.entry.lock().value = Value::Str(Bytes::from(vec![b'b'; 200]));
        store.reweigh(key("k1"), &slot);
        assert!(store.cache.contains_key(&key("k1")), "the re-weigh put the slot back into moka");
        match store.get(key("k1"), now) {
            Lookup::Found(found) => assert!(Arc::ptr_eq(&found, &slot)),
            Lookup::Unseen => panic!("moka has k1 but the index dropped it"),
        }
        let entries = store.entries();
        assert_eq!(store.index_len() as u64, entries);
    }
}
