//! Keeping the local store warm while the upstream is healthy, and never older than this
//! sidecar's own last write.
//!
//! - Full-value reads (GET, MGET, HGETALL, SMEMBERS, `LRANGE k 0 -1`, `ZRANGE k 0 -1
//!   WITHSCORES`) store the value the upstream returned; TTL/PTTL record the expiry.
//! - Writes that determine the whole value (SET, SETEX, MSET, DEL, INCR's result, …) store
//!   it. Other writes to a cached key are applied to the cached copy, and kept only if the
//!   local reply equals the upstream's (otherwise another client changed the value
//!   meanwhile and the key is dropped). Writes to uncached keys, and every write respite
//!   cannot follow (RENAME, SORT … STORE, scripts, FLUSHDB, …), invalidate.

use bytes::{Bytes, BytesMut};
use indexmap::{IndexMap, IndexSet};
use smallvec::SmallVec;

use super::{commands, Outage};
use crate::command::{flags, CommandSpec};
use crate::resp::parse_int;
use crate::store::{KeyRef, Lookup, Now, Value, ZSet};

/// A decoded reply, as much as warming needs.
#[derive(Debug, Clone, PartialEq)]
enum Frame {
    Bulk(Bytes),
    Int(i64),
    Double(f64),
    Nil,
    Simple,
    Error,
    Array(Vec<Frame>),
    /// RESP3 map, flattened to key, value, key, value.
    Map(Vec<Frame>),
}

fn decode(buf: &Bytes) -> Option<Frame> {
    let (f, _) = decode_at(buf, 0, 0)?;
    Some(f)
}

fn decode_at(buf: &Bytes, pos: usize, depth: u32) -> Option<(Frame, usize)> {
    if depth > 8 {
        return None;
    }
    let t = *buf.get(pos)?;
    let cr = pos + 1 + memchr::memchr(b'\r', &buf[pos + 1..])?;
    let line = &buf[pos + 1..cr];
    let after = cr + 2;
    match t {
        b'+' => Some((Frame::Simple, after)),
        b'-' | b'!' => Some((Frame::Error, after)),
        b':' => Some((Frame::Int(parse_int(line)?), after)),
        b'_' => Some((Frame::Nil, after)),
        b',' => Some((Frame::Double(std::str::from_utf8(line).ok()?.parse().ok()?), after)),
        b'$' | b'=' => {
            let n = parse_int(line)?;
            if n < 0 {
                return Some((Frame::Nil, after));
            }
            let end = after + n as usize;
            let mut body = buf.slice(after..end);
            if t == b'=' && body.len() >= 4 {
                body = body.slice(4..);
            }
            Some((Frame::Bulk(body), end + 2))
        }
        b'*' | b'~' | b'%' => {
            let n = parse_int(line)?;
            if n < 0 {
                return Some((Frame::Nil, after));
            }
            let count = if t == b'%' { 2 * n as usize } else { n as usize };
            let mut items = Vec::with_capacity(count.min(1 << 16));
            let mut p = after;
            for _ in 0..count {
                let (f, next) = decode_at(buf, p, depth + 1)?;
                items.push(f);
                p = next;
            }
            Some((if t == b'%' { Frame::Map(items) } else { Frame::Array(items) }, p))
        }
        _ => None,
    }
}

/// An owned copy of a bulk string: the frame is a slice of an upstream read buffer, which a
/// stored value must not keep alive (the store's byte bound would not see it).
fn bulk(f: &Frame) -> Option<Bytes> {
    match f {
        Frame::Bulk(b) => Some(Bytes::copy_from_slice(b)),
        _ => None,
    }
}

fn flat(f: Frame) -> Option<Vec<Frame>> {
    match f {
        Frame::Array(v) | Frame::Map(v) => Some(v),
        _ => None,
    }
}

/// The request whose reply is being learned from.
pub struct Request<'a> {
    pub spec: &'static CommandSpec,
    pub args: &'a [&'a [u8]],
    pub db: u32,
    pub resp3: bool,
    /// [`crate::store::Changes::now`] when the request's batch was sent upstream.
    pub sent: u64,
}

/// The changes the replies of one batch marked so far: the batch's later replies ran
/// after them (one connection answers in order), so they are no reason to distrust those.
/// In ascending order (each mark is a fresh tick of one clock, taken in turn).
pub type BatchMarks = SmallVec<[u64; 8]>;

/// Whether this batch made change `tick`. A binary search: a write naming a million keys
/// adds a million marks, and a scan per key made learning its reply quadratic (hours of
/// one worker thread, serving no one else).
fn marked(marks: &BatchMarks, tick: u64) -> bool {
    marks.binary_search(&tick).is_ok()
}

impl Outage {
    /// Learns from a successful (non-error) upstream reply to `req`.
    /// `now`: one clock reading for the whole batch of replies (clock reads were a sixth
    /// of the CPU of a pipelined SET when each step took its own).
    pub fn learn(&self, req: &Request<'_>, reply: &Bytes, now: Now, marks: &mut BatchMarks) {
        let args = req.args;
        let key = |i: usize| KeyRef { db: req.db, key: args[i] };
        // The keys this reply would update, and for each the tick it must not be older
        // than (see `Changes`): for a read, its sending; for a write, its own mark.
        let spec = req.spec;
        let write = spec.may_write();
        let single = spec.first_key == 1 && spec.last_key == 1 && spec.flags & flags::M == 0;
        if !write
            && !matches!(spec.name, "GET" | "HGETALL" | "SMEMBERS" | "LRANGE" | "ZRANGE" | "PTTL" | "TTL" | "MGET")
        {
            return;
        }
        let changes = &self.store.changes;
        let trusted = |before: u64, marks: &BatchMarks| before <= req.sent || marked(marks, before);
        if single && args.len() > 1 {
            // The common case (GET, SET, INCR, HSET, ...), without the lists below: the
            // loop below does the same for one key at ~170 more instructions per request
            // (callgrind, GET and SET at pipeline 16).
            let k = key(1);
            let slot = changes.key(k);
            let (before, expect) = if write {
                let (before, tick) = slot.mark();
                debug_assert!(marks.last() < Some(&tick), "marks ascend");
                marks.push(tick);
                (before, tick)
            } else {
                let before = slot.last();
                (before, before)
            };
            if !trusted(before, marks) {
                return self.store.invalidate(k);
            }
            self.learn_in_order(req, reply, now);
            let last = slot.last();
            if last != expect && !marked(marks, last) {
                self.store.invalidate(k);
            }
            return;
        }
        let keys: SmallVec<[usize; 4]> = match spec.name {
            "MGET" => (1..args.len()).collect(),
            _ if write => write_keys(spec, args).unwrap_or_default(),
            _ => smallvec::smallvec![1],
        };
        // A change after the sending that is not this batch's own: the reply's place among
        // the changes is unknown.
        let mut ticks: SmallVec<[u64; 4]> = SmallVec::with_capacity(keys.len());
        let mut fresh = true;
        for &i in &keys {
            let slot = changes.key(key(i));
            let (before, tick) = if write { slot.mark() } else { (slot.last(), 0) };
            fresh &= trusted(before, marks);
            if write {
                debug_assert!(marks.last() < Some(&tick), "marks ascend");
                marks.push(tick);
                ticks.push(tick);
            } else {
                ticks.push(before);
            }
        }
        if !fresh {
            // This sidecar changed a key after the request was sent: the reply may be
            // older than that change. Forget instead of learning.
            for &i in &keys {
                self.store.invalidate(key(i));
            }
            return;
        }
        self.learn_in_order(req, reply, now);
        // A change that came in while this reply was applied (another thread): neither is
        // trusted.
        for (&i, &t) in keys.iter().zip(&ticks) {
            let last = changes.key(key(i)).last();
            // (A key named twice in one write carries the later of its two marks.)
            if last != t && !marked(marks, last) {
                self.store.invalidate(key(i));
            }
        }
    }

    fn learn_in_order(&self, req: &Request<'_>, reply: &Bytes, now: Now) {
        let name = req.spec.name;
        let args = req.args;
        let key = |i: usize| KeyRef { db: req.db, key: args[i] };
        let store = &self.store;
        match name {
            "GET" => match decode(reply) {
                Some(Frame::Bulk(v)) => store.put_str(key(1), &v, None, now),
                Some(Frame::Nil) => store.put(key(1), Value::Absent, Some(None), now),
                _ => store.invalidate(key(1)),
            },
            "MGET" => {
                if let Some(items) = decode(reply).and_then(flat) {
                    for (i, f) in items.iter().enumerate() {
                        match f {
                            Frame::Bulk(v) => store.put_str(key(i + 1), v, None, now),
                            // nil: absent, or a value of another type. A cached string is
                            // stale; anything else cached agrees with it and stays.
                            _ => {
                                if let Lookup::Found(slot) = store.get(key(i + 1), now) {
                                    let string = matches!(slot.entry.lock().value, Value::Str(_));
                                    if string {
                                        store.invalidate(key(i + 1));
                                    }
                                }
                            }
                        }
                    }
                }
            }
            "HGETALL" => match decode(reply).and_then(flat) {
                Some(items) if items.len() % 2 == 0 => {
                    let mut h = IndexMap::with_capacity(items.len() / 2);
                    for p in items.chunks(2) {
                        match (bulk(&p[0]), bulk(&p[1])) {
                            (Some(k), Some(v)) => {
                                h.insert(k, v);
                            }
                            _ => return store.invalidate(key(1)),
                        }
                    }
                    let v = if h.is_empty() { Value::Absent } else { Value::Hash(h) };
                    store.put(key(1), v, None, now);
                }
                _ => store.invalidate(key(1)),
            },
            "SMEMBERS" => match decode(reply).and_then(flat) {
                Some(items) => {
                    let s: Option<IndexSet<Bytes>> = items.iter().map(bulk).collect();
                    match s {
                        Some(s) if s.is_empty() => store.put(key(1), Value::Absent, None, now),
                        Some(s) => store.put(key(1), Value::Set(s), None, now),
                        None => store.invalidate(key(1)),
                    }
                }
                None => store.invalidate(key(1)),
            },
            "LRANGE" if args[2] == b"0" && args[3] == b"-1" => match decode(reply).and_then(flat) {
                Some(items) => match items.iter().map(bulk).collect::<Option<std::collections::VecDeque<_>>>() {
                    Some(l) if l.is_empty() => store.put(key(1), Value::Absent, None, now),
                    Some(l) => store.put(key(1), Value::List(l), None, now),
                    None => store.invalidate(key(1)),
                },
                None => store.invalidate(key(1)),
            },
            "ZRANGE"
                if args.len() == 5
                    && args[2] == b"0"
                    && args[3] == b"-1"
                    && args[4].eq_ignore_ascii_case(b"WITHSCORES") =>
            {
                match decode(reply).and_then(flat).and_then(|items| zset_from(items, req.resp3)) {
                    Some(z) if z.is_empty() => store.put(key(1), Value::Absent, None, now),
                    Some(z) => store.put(key(1), Value::ZSet(z), None, now),
                    None => store.invalidate(key(1)),
                }
            }
            "PTTL" | "TTL" => {
                if let Some(Frame::Int(n)) = decode(reply) {
                    if let Lookup::Found(slot) = store.get(key(1), now) {
                        let mut e = slot.entry.lock();
                        match n {
                            -2 => {
                                e.value = Value::Absent;
                                e.expires_at_ms = None;
                            }
                            -1 => e.expires_at_ms = None,
                            // TTL is rounded to the nearest second ((ms + 500) / 1000): keep
                            // the earliest expiry it allows, never a later one.
                            n if name == "TTL" => {
                                e.expires_at_ms = Some(now.ms + (n.max(0) as u64 * 1000).saturating_sub(500))
                            }
                            n => e.expires_at_ms = Some(now.ms + n as u64),
                        }
                        e.ttl_known = true;
                    }
                }
            }
            _ if req.spec.may_write() => self.learn_write(req, reply, now),
            _ => {}
        }
    }

    fn learn_write(&self, req: &Request<'_>, reply: &Bytes, now: Now) {
        let name = req.spec.name;
        let args = req.args;
        let key = |i: usize| KeyRef { db: req.db, key: args[i] };
        match name {
            "FLUSHALL" | "SWAPDB" => return self.store.clear(),
            "FLUSHDB" => return self.store.invalidate_db(req.db),
            "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
                if let Some(Frame::Int(n)) = decode(reply) {
                    return self.set_keeping_ttl(key(1), Value::Str(Bytes::from(n.to_string())), now);
                }
            }
            "INCRBYFLOAT" => {
                if let Some(Frame::Bulk(b)) = decode(reply) {
                    return self.set_keeping_ttl(key(1), Value::Str(Bytes::copy_from_slice(&b)), now);
                }
            }
            // The commonest write, stored directly (the general path below runs the whole
            // outage handler: three times the cost).
            "SET" if reply.starts_with(b"+") => {
                if let Some(expiry) = plain_set_expiry(args, now.ms) {
                    return self.store.put_str(key(1), args[2], Some(expiry), now);
                }
                if args.len() == 4 && args[3].eq_ignore_ascii_case(b"KEEPTTL") {
                    // The value is known; the expiry only if it was (else: unknown).
                    return self.set_keeping_ttl(key(1), Value::Str(Bytes::copy_from_slice(args[2])), now);
                }
            }
            _ => {}
        }
        if matches!(name, "MOVE" | "COPY" | "EVAL" | "EVALSHA" | "FCALL") {
            // Keys in another database, or a script: forgotten, not followed.
            return self.forget(req.spec, args, req.db);
        }
        let keys = write_keys(req.spec, args);
        let Some(keys) = keys else {
            // Keys unknown (movable): forget the whole database.
            return self.store.invalidate_db(req.db);
        };
        let local = commands::lookup(name);
        // Writes that determine the whole new value apply even to keys never seen.
        let option = |word: &[u8]| args.iter().skip(3).any(|a| a.eq_ignore_ascii_case(word));
        let conditional = option(b"NX") || option(b"XX");
        // SET … KEEPTTL keeps an expiry this sidecar may not know: only a cached key's.
        let determined = matches!(name, "SETEX" | "PSETEX" | "MSET" | "GETSET" | "DEL" | "UNLINK" | "GETDEL")
            || (name == "SET" && !conditional && !option(b"KEEPTTL"));
        let cached = !determined && keys.iter().all(|&i| matches!(self.store.get(key(i), now), Lookup::Found(_)));
        if let Some(entry) = local.filter(|_| determined || cached) {
            let mut scratch = BytesMut::new();
            let mut cx = self.cx(req.db, req.resp3, args, &mut scratch, now);
            cx.allow_conditional = true;
            cx.miss_nil = true;
            // Only a write that sets the whole value confirms it (a matching APPEND length
            // or SADD count says nothing of the rest, which another client may have changed).
            cx.keep_seen = !determined;
            let ok = (entry.run)(&mut cx).is_ok();
            let touched = std::mem::take(&mut cx.touched);
            // Otherwise another client changed the value meanwhile (the replies differ).
            if ok && (determined || scratch[..] == reply[..]) {
                for (i, slot) in &touched {
                    if determined {
                        // The upstream set the whole value (GETSET, GETDEL: they succeeded).
                        slot.entry.lock().guessed = false;
                    }
                    self.store.reweigh(key(*i), slot);
                }
                return;
            }
        }
        for i in keys {
            self.store.invalidate(key(i));
        }
    }

    /// A write's outcome is unknown (or it failed oddly): forget its keys.
    pub fn forget(&self, spec: &CommandSpec, args: &[&[u8]], db: u32) {
        let in_db = |i: usize| -> Option<u32> {
            let d = parse_int(args.get(i)?)?;
            u32::try_from(d).ok()
        };
        match spec.name {
            // MOVE key db: gone from this database, arrived in the other.
            "MOVE" if args.len() == 3 => {
                self.store.invalidate(KeyRef { db, key: args[1] });
                if let Some(to) = in_db(2) {
                    self.store.invalidate(KeyRef { db: to, key: args[1] });
                }
                return;
            }
            // COPY source destination [DB db] [REPLACE]: the destination, wherever it is.
            "COPY" if args.len() >= 3 => {
                let at = args.iter().skip(3).position(|a| a.eq_ignore_ascii_case(b"DB")).map(|p| p + 4);
                match at.map(in_db) {
                    None => self.store.invalidate(KeyRef { db, key: args[2] }),
                    Some(Some(to)) => self.store.invalidate(KeyRef { db: to, key: args[2] }),
                    Some(None) => self.store.clear(),
                }
                return;
            }
            _ => {}
        }
        match write_keys(spec, args) {
            Some(keys) => {
                for i in keys {
                    self.store.invalidate(KeyRef { db, key: args[i] });
                }
            }
            None => self.store.invalidate_db(db),
        }
    }

    /// A command the table does not know (a newer Redis's, a module's) ran, or may have:
    /// forget the key in the usual first-key position (module and newer commands put
    /// their key there; a read forgotten only costs a miss).
    pub fn forget_unknown(&self, args: &[&[u8]], db: u32) {
        if let Some(key) = args.get(1) {
            self.store.invalidate(KeyRef { db, key });
        }
    }

    fn set_keeping_ttl(&self, key: KeyRef<'_>, value: Value, now: Now) {
        match self.store.get(key, now) {
            Lookup::Found(slot) => {
                {
                    let mut e = slot.entry.lock();
                    e.value = value;
                    if e.guessed {
                        // The expiry kept was guessed: unknown now.
                        (e.guessed, e.ttl_known, e.expires_at_ms) = (false, false, None);
                    }
                }
                self.store.reweigh(key, &slot);
            }
            Lookup::Unseen => self.store.put(key, value, None, now),
        }
    }
}

/// Argument positions of the keys a write touches; `None` when they cannot be known.
fn write_keys(spec: &CommandSpec, args: &[&[u8]]) -> Option<SmallVec<[usize; 4]>> {
    match spec.name {
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => {
            let n = parse_int(args.get(2)?)?;
            if n < 0 || 3 + n as usize > args.len() {
                return None;
            }
            return Some((3..3 + n as usize).collect());
        }
        "MOVE" | "COPY" | "MIGRATE" | "RESTORE" | "RESTORE-ASKING" => return None,
        _ => {}
    }
    if spec.flags & flags::M != 0 || spec.first_key <= 0 {
        return None;
    }
    Some(spec.key_positions(args.len()).collect())
}

/// The expiry a `SET key value` with at most an `EX`/`PX` option gives the key (absolute unix
/// ms; `None`: no expiry); `None` for every other form, which takes the general path.
fn plain_set_expiry(args: &[&[u8]], now_ms: u64) -> Option<Option<u64>> {
    match args.len() {
        3 => Some(None),
        5 => {
            let n = parse_int(args[4]).filter(|&n| n > 0)? as u64;
            let ms = if args[3].eq_ignore_ascii_case(b"EX") {
                n.checked_mul(1000)?
            } else if args[3].eq_ignore_ascii_case(b"PX") {
                n
            } else {
                return None;
            };
            Some(Some(now_ms.checked_add(ms)?))
        }
        _ => None,
    }
}

fn zset_from(items: Vec<Frame>, resp3: bool) -> Option<ZSet> {
    let mut z = ZSet::default();
    let score = |f: &Frame| -> Option<f64> {
        match f {
            Frame::Double(d) => Some(*d),
            Frame::Bulk(b) => commands_float(b),
            Frame::Int(i) => Some(*i as f64),
            _ => None,
        }
    };
    if resp3 && items.first().is_some_and(|f| matches!(f, Frame::Array(_))) {
        for pair in items {
            let p = flat(pair)?;
            z.insert(bulk(p.first()?)?, score(p.get(1)?)?);
        }
    } else {
        if !items.len().is_multiple_of(2) {
            return None;
        }
        for p in items.chunks(2) {
            z.insert(bulk(&p[0])?, score(&p[1])?);
        }
    }
    Some(z)
}

fn commands_float(b: &[u8]) -> Option<f64> {
    match b {
        b"inf" | b"+inf" => Some(f64::INFINITY),
        b"-inf" => Some(f64::NEG_INFINITY),
        _ => std::str::from_utf8(b).ok()?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_resp2_and_resp3_frames() {
        let f = decode(&Bytes::from_static(b"*2\r\n$1\r\na\r\n%1\r\n+k\r\n,1.5\r\n")).unwrap();
        assert_eq!(
            f,
            Frame::Array(vec![
                Frame::Bulk(Bytes::from_static(b"a")),
                Frame::Map(vec![Frame::Simple, Frame::Double(1.5)])
            ])
        );
        assert_eq!(decode(&Bytes::from_static(b"$-1\r\n")), Some(Frame::Nil));
        assert_eq!(decode(&Bytes::from_static(b"_\r\n")), Some(Frame::Nil));
        assert_eq!(decode(&Bytes::from_static(b"*1\r\n")), None, "truncated");
    }
}
