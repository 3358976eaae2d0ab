//! What respite serves from its local store while the upstream is down: one table entry
//! per command (data), each with the function that answers it the way Redis would on the
//! store's content. Commands not in [`TABLE`] are refused with a clear error.

use std::collections::VecDeque;

use bytes::Bytes;
use indexmap::{IndexMap, IndexSet};

use super::reply::long_double;
use super::{CmdErr, Cx, Res};
use crate::store::{Entry, Value, ZSet};

/// How a command is served during an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Answered from the store.
    Read,
    /// Applied to the store and journaled for replay.
    Write,
    /// A write whose meaning depends on the upstream's current state (SETNX, HSETNX,
    /// MSETNX): refused unless `[outage] allow_conditional`.
    Conditional,
    /// Answered by respite alone (PING, ECHO, TIME, DBSIZE).
    Local,
}

pub struct OutageSpec {
    pub name: &'static str,
    pub kind: Kind,
    pub run: fn(&mut Cx<'_>) -> Res,
}

const fn r(name: &'static str, run: fn(&mut Cx<'_>) -> Res) -> OutageSpec {
    OutageSpec { name, kind: Kind::Read, run }
}
const fn w(name: &'static str, run: fn(&mut Cx<'_>) -> Res) -> OutageSpec {
    OutageSpec { name, kind: Kind::Write, run }
}
const fn cond(name: &'static str, run: fn(&mut Cx<'_>) -> Res) -> OutageSpec {
    OutageSpec { name, kind: Kind::Conditional, run }
}
const fn l(name: &'static str, run: fn(&mut Cx<'_>) -> Res) -> OutageSpec {
    OutageSpec { name, kind: Kind::Local, run }
}

/// Every command served during an outage.
pub static TABLE: &[OutageSpec] = &[
    // Local.
    l("PING", ping),
    l("ECHO", echo),
    l("TIME", time),
    l("DBSIZE", dbsize),
    // Strings: reads.
    r("GET", get),
    r("MGET", mget),
    r("STRLEN", strlen),
    r("GETRANGE", getrange),
    r("SUBSTR", getrange),
    // Keys: reads.
    r("EXISTS", exists),
    r("TTL", ttl),
    r("PTTL", pttl),
    r("EXPIRETIME", expiretime),
    r("PEXPIRETIME", pexpiretime),
    r("TYPE", type_),
    // Hashes: reads.
    r("HGET", hget),
    r("HMGET", hmget),
    r("HGETALL", hgetall),
    r("HKEYS", hkeys),
    r("HVALS", hvals),
    r("HLEN", hlen),
    r("HEXISTS", hexists),
    r("HSTRLEN", hstrlen),
    // Lists: reads.
    r("LRANGE", lrange),
    r("LLEN", llen),
    r("LINDEX", lindex),
    // Sets: reads.
    r("SMEMBERS", smembers),
    r("SISMEMBER", sismember),
    r("SMISMEMBER", smismember),
    r("SCARD", scard),
    // Sorted sets: reads.
    r("ZRANGE", zrange),
    r("ZRANGEBYSCORE", zrangebyscore),
    r("ZREVRANGEBYSCORE", zrevrangebyscore),
    r("ZREVRANGE", zrevrange),
    r("ZSCORE", zscore),
    r("ZMSCORE", zmscore),
    r("ZCARD", zcard),
    r("ZCOUNT", zcount),
    r("ZRANK", zrank),
    r("ZREVRANK", zrevrank),
    // Strings and keys: writes.
    w("SET", set),
    w("SETEX", setex),
    w("PSETEX", psetex),
    w("MSET", mset),
    w("APPEND", append),
    w("INCR", incr),
    w("DECR", decr),
    w("INCRBY", incrby),
    w("DECRBY", decrby),
    w("INCRBYFLOAT", incrbyfloat),
    w("GETDEL", getdel),
    w("GETEX", getex),
    w("GETSET", getset),
    w("DEL", del),
    w("UNLINK", del),
    w("EXPIRE", expire),
    w("PEXPIRE", pexpire),
    w("EXPIREAT", expireat),
    w("PEXPIREAT", pexpireat),
    w("PERSIST", persist),
    // Hashes: writes.
    w("HSET", hset),
    w("HMSET", hmset),
    w("HDEL", hdel),
    w("HINCRBY", hincrby),
    w("HINCRBYFLOAT", hincrbyfloat),
    // Lists: writes.
    w("LPUSH", lpush),
    w("RPUSH", rpush),
    w("LPOP", lpop),
    w("RPOP", rpop),
    w("LTRIM", ltrim),
    w("LREM", lrem),
    w("LSET", lset),
    // Sets: writes.
    w("SADD", sadd),
    w("SREM", srem),
    // Sorted sets: writes.
    w("ZADD", zadd),
    w("ZREM", zrem),
    w("ZINCRBY", zincrby),
    w("ZREMRANGEBYSCORE", zremrangebyscore),
    w("ZREMRANGEBYRANK", zremrangebyrank),
    // Conditional writes (opt-in).
    cond("SETNX", setnx),
    cond("HSETNX", hsetnx),
    cond("MSETNX", msetnx),
];

/// Looks a command up (the name already upper-case, from the command table).
pub fn lookup(name: &str) -> Option<&'static OutageSpec> {
    TABLE.iter().find(|s| s.name == name)
}

/// The outage entry of a command-table id, in O(1) (built once from [`TABLE`]).
pub fn by_id(id: crate::command::CommandId) -> Option<&'static OutageSpec> {
    static INDEX: std::sync::OnceLock<Vec<Option<&'static OutageSpec>>> = std::sync::OnceLock::new();
    INDEX.get_or_init(|| crate::command::TABLE.iter().map(|c| lookup(c.name)).collect()).get(id).copied().flatten()
}

pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
pub const NOT_INT: &str = "ERR value is not an integer or out of range";
pub const NOT_FLOAT: &str = "ERR value is not a valid float";
pub const SYNTAX: &str = "ERR syntax error";
const OVERFLOW: &str = "ERR increment or decrement would overflow";
const NAN_INF: &str = "ERR increment would produce NaN or Infinity";
const INCR_NAN_INF: &str = "ERR value is NaN or Infinity";
const HASH_NOT_INT: &str = "ERR hash value is not an integer";
const HASH_NOT_FLOAT: &str = "ERR hash value is not a float";
const NO_SUCH_KEY: &str = "ERR no such key";
const INDEX_RANGE: &str = "ERR index out of range";
const MIN_MAX_FLOAT: &str = "ERR min or max is not a float";

fn err(msg: &'static str) -> CmdErr {
    CmdErr::Redis(msg.to_string())
}

fn wrong_args(cx: &Cx<'_>) -> CmdErr {
    CmdErr::Redis(crate::error::wrong_arity(&String::from_utf8_lossy(cx.args[0])))
}

fn int(b: &[u8]) -> Result<i64, CmdErr> {
    crate::resp::parse_int(b).ok_or_else(|| err(NOT_INT))
}

/// A double as Redis's `string2d` reads one (scores, ZINCRBY increments): C's `strtod`
/// over the whole argument, no leading space, and neither NaN nor a value out of range (an
/// overflow to infinity or an underflow to zero, which `strtod` flags with ERANGE).
fn float(b: &[u8]) -> Result<f64, CmdErr> {
    let s = std::str::from_utf8(b).map_err(|_| err(NOT_FLOAT))?;
    if s.starts_with(|c: char| c.is_ascii_whitespace() || c == '\x0b') {
        return Err(err(NOT_FLOAT));
    }
    match c_strtod(s) {
        Some((v, false)) if !v.is_nan() => Ok(v),
        _ => Err(err(NOT_FLOAT)),
    }
}

/// A float as Redis's `string2ld` reads one (INCRBYFLOAT, HINCRBYFLOAT): as [`float`], but
/// in the range of an x87 long double (`1e400` is a float there). A hexadecimal float,
/// which `strtold` reads, is refused here (see README).
fn float_ld(b: &[u8]) -> Result<(), CmdErr> {
    use rustc_apfloat::Float as _;
    let s = std::str::from_utf8(b).map_err(|_| err(NOT_FLOAT))?;
    if s.starts_with(|c: char| c.is_ascii_whitespace() || c == '\x0b') {
        return Err(err(NOT_FLOAT));
    }
    match c_strtod(s) {
        Some((v, _)) if v.is_nan() => Err(err(NOT_FLOAT)),
        Some((v, false)) if v.is_infinite() => Ok(()),
        Some((_, out_of_double_range)) => match long_double::parse(b) {
            Some(ld) if !out_of_double_range || (ld.is_finite() && !ld.is_zero()) => Ok(()),
            _ => Err(err(NOT_FLOAT)),
        },
        None => Err(err(NOT_FLOAT)),
    }
}

/// What C's `strtod` makes of all of `s` (`None` unless every character is part of the
/// number): the value, and whether it was out of range (ERANGE: a finite number too large,
/// or a non-zero one too small, for a double). Leading whitespace is skipped, as `strtod`
/// does; hexadecimal (`0x1.8p3`) is read too.
fn c_strtod(s: &str) -> Option<(f64, bool)> {
    let t = s.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let lower = body.to_ascii_lowercase();
    let v = match lower.as_str() {
        "inf" | "infinity" => return Some((if neg { f64::NEG_INFINITY } else { f64::INFINITY }, false)),
        "nan" => return Some((f64::NAN, false)),
        _ if lower.starts_with("0x") => hex_float(&lower[2..])?,
        // Rust's parser takes what C's does here, and nothing more (no "_", no "inf" left).
        _ if lower.bytes().all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'+' | b'-')) => {
            lower.parse::<f64>().ok()?
        }
        _ => return None,
    };
    let mantissa_nonzero = {
        let m = lower.strip_prefix("0x").unwrap_or(&lower);
        let m = m.split(['e', 'p']).next().unwrap_or("");
        m.bytes().any(|c| c.is_ascii_hexdigit() && c != b'0')
    };
    let out_of_range = v.is_infinite() || (v == 0.0 && mantissa_nonzero);
    Some((if neg { -v } else { v }, out_of_range))
}

/// The digits of a hexadecimal float after `0x`: `h[.h][p[+-]d]`.
fn hex_float(s: &str) -> Option<f64> {
    let (mantissa, exp) = match s.split_once('p') {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (s, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut m: u128 = 0;
    let mut shift = exp;
    for (i, c) in int.chars().chain(frac.chars()).enumerate() {
        let d = c.to_digit(16)? as u128;
        if m >> 120 == 0 {
            m = m * 16 + d;
            if i >= int.len() {
                shift = shift.saturating_sub(4);
            }
        } else if i < int.len() {
            // Digits past 120 bits only scale (and round away) the value.
            shift = shift.saturating_add(4);
        }
    }
    Some((m as f64) * 2f64.powi(shift.clamp(-2000, 2000)))
}

fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

type Hash = IndexMap<Bytes, Bytes>;
type List = VecDeque<Bytes>;
type Set = IndexSet<Bytes>;

/// One of Redis's types as held in a [`Value`]: the one typed accessor pair below serves
/// every command, with Redis's WRONGTYPE for a key of another type.
trait Typed: Default {
    fn of(v: &Value) -> Option<&Self>;
    fn of_mut(v: &mut Value) -> Option<&mut Self>;
    fn into_value(self) -> Value;
}

macro_rules! typed {
    ($t:ty, $variant:ident) => {
        impl Typed for $t {
            fn of(v: &Value) -> Option<&Self> {
                match v {
                    Value::$variant(x) => Some(x),
                    _ => None,
                }
            }
            fn of_mut(v: &mut Value) -> Option<&mut Self> {
                match v {
                    Value::$variant(x) => Some(x),
                    _ => None,
                }
            }
            fn into_value(self) -> Value {
                Value::$variant(self)
            }
        }
    };
}
typed!(Bytes, Str);
typed!(Hash, Hash);
typed!(List, List);
typed!(Set, Set);
typed!(ZSet, ZSet);

/// The value read as a `T`: `None` when absent, WRONGTYPE when of another type.
fn typed<T: Typed>(v: &Value) -> Result<Option<&T>, CmdErr> {
    match v {
        Value::Absent => Ok(None),
        v => T::of(v).map(Some).ok_or_else(|| err(WRONGTYPE)),
    }
}

/// The value to change as a `T`, created empty when absent; WRONGTYPE when of another type.
fn typed_mut<T: Typed>(e: &mut Entry) -> Result<&mut T, CmdErr> {
    if matches!(e.value, Value::Absent) {
        e.value = T::default().into_value();
    }
    T::of_mut(&mut e.value).ok_or_else(|| err(WRONGTYPE))
}

/// Resolves Redis's inclusive, negative-from-the-end index range over `len` items.
fn range(start: i64, stop: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let s = if start < 0 { (len + start).max(0) } else { start };
    let e = if stop < 0 { len + stop } else { stop.min(len - 1) };
    if s > e || s >= len {
        None
    } else {
        Some((s as usize, e as usize))
    }
}

// ---- local ----

fn ping(cx: &mut Cx<'_>) -> Res {
    match cx.args.len() {
        1 => cx.r.simple("PONG"),
        2 => cx.r.bulk(cx.args[1]),
        _ => return Err(wrong_args(cx)),
    }
    Ok(())
}

fn echo(cx: &mut Cx<'_>) -> Res {
    if cx.args.len() != 2 {
        return Err(wrong_args(cx));
    }
    cx.r.bulk(cx.args[1]);
    Ok(())
}

fn time(cx: &mut Cx<'_>) -> Res {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    cx.r.array(2);
    cx.r.bulk(now.as_secs().to_string().as_bytes());
    cx.r.bulk(now.subsec_micros().to_string().as_bytes());
    Ok(())
}

fn dbsize(cx: &mut Cx<'_>) -> Res {
    let n = cx.store.dbsize(cx.db, cx.now);
    cx.r.int(n as i64);
    Ok(())
}

// ---- string reads ----

fn get(cx: &mut Cx<'_>) -> Res {
    let v = cx.read(1, |e| Ok(typed::<Bytes>(&e.value)?.cloned()))?;
    cx.r.bulk_or_nil(v.as_deref());
    Ok(())
}

fn mget(cx: &mut Cx<'_>) -> Res {
    let mut vals = Vec::with_capacity(cx.args.len() - 1);
    for i in 1..cx.args.len() {
        // MGET answers nil for a key of another type.
        vals.push(cx.read(i, |e| Ok(if let Value::Str(b) = &e.value { Some(b.clone()) } else { None }))?);
    }
    cx.r.array(vals.len());
    for v in vals {
        cx.r.bulk_or_nil(v.as_deref());
    }
    Ok(())
}

fn strlen(cx: &mut Cx<'_>) -> Res {
    let n = cx.read(1, |e| Ok(typed::<Bytes>(&e.value)?.map_or(0, |b| b.len())))?;
    cx.r.int(n as i64);
    Ok(())
}

fn getrange(cx: &mut Cx<'_>) -> Res {
    let (start, end) = (int(cx.args[2])?, int(cx.args[3])?);
    let v = cx.read(1, |e| Ok(typed::<Bytes>(&e.value)?.cloned()))?.unwrap_or_default();
    match string_range(start, end, v.len()) {
        Some((s, e)) => cx.r.bulk(&v[s..=e]),
        None => cx.r.bulk(b""),
    }
    Ok(())
}

/// GETRANGE's bounds, which are not LRANGE's: an end before the start of the string is
/// clamped to the first byte (`GETRANGE k 0 -100` of "abc" is "a"), unless both ends are
/// negative and out of order. This is Redis 7's rule (a change to LRANGE's rule was made
/// upstream and reverted as a breaking change: redis/redis#12272).
fn string_range(start: i64, end: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    if len == 0 || (start < 0 && end < 0 && start > end) {
        return None;
    }
    let s = if start < 0 { (len + start).max(0) } else { start };
    let e = if end < 0 { (len + end).max(0) } else { end.min(len - 1) };
    (s <= e).then_some((s as usize, e as usize))
}

// ---- key reads ----

fn exists(cx: &mut Cx<'_>) -> Res {
    let mut n = 0;
    for i in 1..cx.args.len() {
        n += cx.read(i, |e| Ok(!matches!(e.value, Value::Absent) as i64))?;
    }
    cx.r.int(n);
    Ok(())
}

/// Remaining TTL in ms: -2 absent, -1 no expiry; `Miss` when the TTL is unknown.
fn ttl_ms(cx: &mut Cx<'_>) -> Result<i64, CmdErr> {
    let now = cx.now_ms;
    cx.read(1, |e| match (&e.value, e.expires_at_ms) {
        (Value::Absent, _) => Ok(-2),
        (_, Some(t)) => Ok(t.saturating_sub(now) as i64),
        (_, None) if e.ttl_known => Ok(-1),
        _ => Err(CmdErr::Miss),
    })
}

fn ttl(cx: &mut Cx<'_>) -> Res {
    let ms = ttl_ms(cx)?;
    cx.r.int(if ms < 0 { ms } else { (ms + 500) / 1000 });
    Ok(())
}

fn pttl(cx: &mut Cx<'_>) -> Res {
    let ms = ttl_ms(cx)?;
    cx.r.int(ms);
    Ok(())
}

fn expire_time_ms(cx: &mut Cx<'_>) -> Result<i64, CmdErr> {
    cx.read(1, |e| match (&e.value, e.expires_at_ms) {
        (Value::Absent, _) => Ok(-2),
        (_, Some(t)) => Ok(t as i64),
        (_, None) if e.ttl_known => Ok(-1),
        _ => Err(CmdErr::Miss),
    })
}

fn expiretime(cx: &mut Cx<'_>) -> Res {
    let t = expire_time_ms(cx)?;
    // Rounded to the nearest second, as Redis does ((ms + 500) / 1000).
    cx.r.int(if t < 0 { t } else { (t + 500) / 1000 });
    Ok(())
}

fn pexpiretime(cx: &mut Cx<'_>) -> Res {
    let t = expire_time_ms(cx)?;
    cx.r.int(t);
    Ok(())
}

fn type_(cx: &mut Cx<'_>) -> Res {
    let t = cx.read(1, |e| Ok(e.value.type_name()))?;
    cx.r.simple(t);
    Ok(())
}

// ---- hash reads ----

fn hget(cx: &mut Cx<'_>) -> Res {
    let field = cx.args[2];
    let v = cx.read(1, |e| Ok(typed::<Hash>(&e.value)?.and_then(|h| h.get(field).cloned())))?;
    cx.r.bulk_or_nil(v.as_deref());
    Ok(())
}

fn hmget(cx: &mut Cx<'_>) -> Res {
    let fields = &cx.args[2..];
    let vals: Vec<Option<Bytes>> = cx.read(1, |e| {
        Ok(fields.iter().map(|f| typed::<Hash>(&e.value).ok().flatten().and_then(|h| h.get(*f).cloned())).collect())
    })?;
    // HMGET on a wrong type is an error, checked separately so the collect above stays simple.
    cx.read(1, |e| typed::<Hash>(&e.value).map(|_| ()))?;
    cx.r.array(vals.len());
    for v in vals {
        cx.r.bulk_or_nil(v.as_deref());
    }
    Ok(())
}

fn hgetall(cx: &mut Cx<'_>) -> Res {
    let h = cx.read(1, |e| Ok(typed::<Hash>(&e.value)?.cloned().unwrap_or_default()))?;
    cx.r.map(h.len());
    for (k, v) in &h {
        cx.r.bulk(k);
        cx.r.bulk(v);
    }
    Ok(())
}

fn hkeys(cx: &mut Cx<'_>) -> Res {
    let ks: Vec<Bytes> =
        cx.read(1, |e| Ok(typed::<Hash>(&e.value)?.map(|h| h.keys().cloned().collect()).unwrap_or_default()))?;
    cx.r.array(ks.len());
    for k in ks {
        cx.r.bulk(&k);
    }
    Ok(())
}

fn hvals(cx: &mut Cx<'_>) -> Res {
    let vs: Vec<Bytes> =
        cx.read(1, |e| Ok(typed::<Hash>(&e.value)?.map(|h| h.values().cloned().collect()).unwrap_or_default()))?;
    cx.r.array(vs.len());
    for v in vs {
        cx.r.bulk(&v);
    }
    Ok(())
}

fn hlen(cx: &mut Cx<'_>) -> Res {
    let n = cx.read(1, |e| Ok(typed::<Hash>(&e.value)?.map_or(0, |h| h.len())))?;
    cx.r.int(n as i64);
    Ok(())
}

fn hexists(cx: &mut Cx<'_>) -> Res {
    let field = cx.args[2];
    let n = cx.read(1, |e| Ok(typed::<Hash>(&e.value)?.is_some_and(|h| h.contains_key(field))))?;
    cx.r.int(n as i64);
    Ok(())
}

fn hstrlen(cx: &mut Cx<'_>) -> Res {
    let field = cx.args[2];
    let n = cx.read(1, |e| Ok(typed::<Hash>(&e.value)?.and_then(|h| h.get(field)).map_or(0, |v| v.len())))?;
    cx.r.int(n as i64);
    Ok(())
}

// ---- list reads ----

fn lrange(cx: &mut Cx<'_>) -> Res {
    let (start, stop) = (int(cx.args[2])?, int(cx.args[3])?);
    let items: Vec<Bytes> = cx.read(1, |e| {
        Ok(typed::<List>(&e.value)?
            .and_then(|l| range(start, stop, l.len()).map(|(s, e)| l.range(s..=e).cloned().collect()))
            .unwrap_or_default())
    })?;
    cx.r.array(items.len());
    for i in items {
        cx.r.bulk(&i);
    }
    Ok(())
}

fn llen(cx: &mut Cx<'_>) -> Res {
    let n = cx.read(1, |e| Ok(typed::<List>(&e.value)?.map_or(0, |l| l.len())))?;
    cx.r.int(n as i64);
    Ok(())
}

fn lindex(cx: &mut Cx<'_>) -> Res {
    let arg = cx.args[2];
    // Redis's order: the key (nil when absent), its type, then the index.
    let v = cx.read(1, |e| {
        let Some(l) = typed::<List>(&e.value)? else {
            return Ok(None);
        };
        let idx = int(arg)?;
        let i = if idx < 0 { l.len() as i64 + idx } else { idx };
        Ok((i >= 0).then(|| l.get(i as usize).cloned()).flatten())
    })?;
    cx.r.bulk_or_nil(v.as_deref());
    Ok(())
}

// ---- set reads ----

fn smembers(cx: &mut Cx<'_>) -> Res {
    let ms: Vec<Bytes> =
        cx.read(1, |e| Ok(typed::<Set>(&e.value)?.map(|s| s.iter().cloned().collect()).unwrap_or_default()))?;
    let ms = intset_order(ms);
    cx.r.set(ms.len());
    for m in ms {
        cx.r.bulk(&m);
    }
    Ok(())
}

/// Redis keeps a set of only integers (up to `set-max-intset-entries`, 512 by default) as an
/// intset, listed in numeric order; other sets are listed in an order of their own, kept
/// here as learned and added.
fn intset_order(ms: Vec<Bytes>) -> Vec<Bytes> {
    if ms.len() > 512 {
        return ms;
    }
    let Some(ints) = ms.iter().map(|m| crate::resp::parse_int(m)).collect::<Option<Vec<i64>>>() else {
        return ms;
    };
    let mut pairs: Vec<(i64, Bytes)> = ints.into_iter().zip(ms).collect();
    pairs.sort_unstable_by_key(|p| p.0);
    pairs.into_iter().map(|p| p.1).collect()
}

fn sismember(cx: &mut Cx<'_>) -> Res {
    let m = cx.args[2];
    let n = cx.read(1, |e| Ok(typed::<Set>(&e.value)?.is_some_and(|s| s.contains(m))))?;
    cx.r.int(n as i64);
    Ok(())
}

fn smismember(cx: &mut Cx<'_>) -> Res {
    let ms = &cx.args[2..];
    let found: Vec<bool> = cx.read(1, |e| {
        let s = typed::<Set>(&e.value)?;
        Ok(ms.iter().map(|m| s.is_some_and(|s| s.contains(*m))).collect())
    })?;
    cx.r.array(found.len());
    for f in found {
        cx.r.int(f as i64);
    }
    Ok(())
}

fn scard(cx: &mut Cx<'_>) -> Res {
    let n = cx.read(1, |e| Ok(typed::<Set>(&e.value)?.map_or(0, |s| s.len())))?;
    cx.r.int(n as i64);
    Ok(())
}

// ---- sorted set reads ----

/// A score bound: value and whether it is exclusive (`(1.5`).
#[derive(Clone, Copy)]
struct Bound(f64, bool);

/// A score bound as Redis's `zslParseRange` reads one: `strtod` over the rest, so leading
/// space is skipped, an empty bound is 0 and a value out of range saturates (to infinity or
/// zero); only NaN and trailing text are refused.
fn bound(b: &[u8]) -> Result<Bound, CmdErr> {
    let (excl, rest) = match b.first() {
        Some(b'(') => (true, &b[1..]),
        _ => (false, b),
    };
    let rest = std::str::from_utf8(rest).map_err(|_| err(MIN_MAX_FLOAT))?;
    let v = if rest.is_empty() { Some((0.0, false)) } else { c_strtod(rest) };
    match v {
        Some((v, _)) if !v.is_nan() => Ok(Bound(v, excl)),
        _ => Err(err(MIN_MAX_FLOAT)),
    }
}

fn in_range(s: f64, min: Bound, max: Bound) -> bool {
    (if min.1 { s > min.0 } else { s >= min.0 }) && (if max.1 { s < max.0 } else { s <= max.0 })
}

/// Options after the fixed arguments of ZRANGE-like commands.
struct RangeOpts {
    withscores: bool,
    limit: Option<(i64, i64)>,
    rev: bool,
    byscore: bool,
}

/// What a ZRANGE-like command fixes before its options: ZRANGE nothing, ZRANGEBYSCORE the
/// score type, ZREVRANGE the rank type and the direction, and so on.
#[derive(Clone, Copy, PartialEq)]
enum RangeBy {
    Auto,
    Rank,
    Score,
}

/// The options as Redis's `zrangeGenericCommand` reads them: each of REV, BYSCORE and BYLEX
/// at most once and only where the command does not fix it, LIMIT (count -1: no limit) only
/// with a score or lex range, WITHSCORES not with BYLEX; all before the range itself.
fn range_opts(args: &[&[u8]], by: RangeBy, rev_fixed: bool) -> Result<RangeOpts, CmdErr> {
    let mut o = RangeOpts { withscores: false, limit: None, rev: rev_fixed, byscore: by == RangeBy::Score };
    let (mut rev_given, mut by_given, mut bylex) = (rev_fixed, by != RangeBy::Auto, false);
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        if is(a, "WITHSCORES") {
            o.withscores = true;
        } else if is(a, "LIMIT") && i + 2 < args.len() {
            o.limit = Some((int(args[i + 1])?, int(args[i + 2])?));
            i += 2;
        } else if !rev_given && is(a, "REV") {
            (o.rev, rev_given) = (true, true);
        } else if !by_given && is(a, "BYSCORE") {
            (o.byscore, by_given) = (true, true);
        } else if !by_given && is(a, "BYLEX") {
            (bylex, by_given) = (true, true);
        } else {
            return Err(err(SYNTAX));
        }
        i += 1;
    }
    if o.limit.is_some_and(|(_, count)| count != -1) && !o.byscore && !bylex {
        return Err(err("ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX"));
    }
    if o.withscores && bylex {
        return Err(err("ERR syntax error, WITHSCORES not supported in combination with BYLEX"));
    }
    if bylex {
        return Err(CmdErr::Unsupported("ZRANGE BYLEX"));
    }
    if !o.byscore {
        // A rank range ignores a LIMIT whose count is -1 (Redis lets it through).
        o.limit = None;
    }
    Ok(o)
}

fn emit_scored(cx: &mut Cx<'_>, items: Vec<(Bytes, f64)>, withscores: bool) {
    if withscores {
        cx.r.scored_header(items.len());
        for (m, s) in &items {
            cx.r.scored(m, *s);
        }
    } else {
        cx.r.array(items.len());
        for (m, _) in &items {
            cx.r.bulk(m);
        }
    }
}

fn apply_limit(items: Vec<(Bytes, f64)>, limit: Option<(i64, i64)>) -> Vec<(Bytes, f64)> {
    match limit {
        None => items,
        Some((off, _)) if off < 0 => Vec::new(),
        Some((off, count)) => {
            let it = items.into_iter().skip(off as usize);
            if count < 0 {
                it.collect()
            } else {
                it.take(count as usize).collect()
            }
        }
    }
}

fn by_rank(cx: &mut Cx<'_>, start: i64, stop: i64, rev: bool) -> Result<Vec<(Bytes, f64)>, CmdErr> {
    cx.read(1, |e| {
        let Some(z) = typed::<ZSet>(&e.value)? else { return Ok(Vec::new()) };
        let Some((s, t)) = range(start, stop, z.len()) else { return Ok(Vec::new()) };
        let items: Vec<_> = if rev {
            z.iter().rev().skip(s).take(t - s + 1).map(|(m, sc)| (m.clone(), sc)).collect()
        } else {
            z.iter().skip(s).take(t - s + 1).map(|(m, sc)| (m.clone(), sc)).collect()
        };
        Ok(items)
    })
}

fn by_score(cx: &mut Cx<'_>, min: Bound, max: Bound, rev: bool) -> Result<Vec<(Bytes, f64)>, CmdErr> {
    cx.read(1, |e| {
        let Some(z) = typed::<ZSet>(&e.value)? else { return Ok(Vec::new()) };
        let it = z.iter().filter(|(_, s)| in_range(*s, min, max)).map(|(m, s)| (m.clone(), s));
        Ok(if rev { it.rev().collect() } else { it.collect() })
    })
}

fn zrange(cx: &mut Cx<'_>) -> Res {
    let o = range_opts(&cx.args[4..], RangeBy::Auto, false)?;
    let items = if o.byscore {
        // With REV the bounds come max first.
        let (a, b) = (bound(cx.args[2])?, bound(cx.args[3])?);
        let (min, max) = if o.rev { (b, a) } else { (a, b) };
        apply_limit(by_score(cx, min, max, o.rev)?, o.limit)
    } else {
        by_rank(cx, int(cx.args[2])?, int(cx.args[3])?, o.rev)?
    };
    emit_scored(cx, items, o.withscores);
    Ok(())
}

fn zrangebyscore(cx: &mut Cx<'_>) -> Res {
    let o = range_opts(&cx.args[4..], RangeBy::Score, false)?;
    let (min, max) = (bound(cx.args[2])?, bound(cx.args[3])?);
    let items = apply_limit(by_score(cx, min, max, false)?, o.limit);
    emit_scored(cx, items, o.withscores);
    Ok(())
}

fn zrevrangebyscore(cx: &mut Cx<'_>) -> Res {
    let o = range_opts(&cx.args[4..], RangeBy::Score, true)?;
    let (max, min) = (bound(cx.args[2])?, bound(cx.args[3])?);
    let items = apply_limit(by_score(cx, min, max, true)?, o.limit);
    emit_scored(cx, items, o.withscores);
    Ok(())
}

fn zrevrange(cx: &mut Cx<'_>) -> Res {
    let o = range_opts(&cx.args[4..], RangeBy::Rank, true)?;
    let items = by_rank(cx, int(cx.args[2])?, int(cx.args[3])?, true)?;
    emit_scored(cx, items, o.withscores);
    Ok(())
}

fn zscore(cx: &mut Cx<'_>) -> Res {
    let m = cx.args[2];
    let s = cx.read(1, |e| Ok(typed::<ZSet>(&e.value)?.and_then(|z| z.scores.get(m).copied())))?;
    cx.r.double_or_nil(s);
    Ok(())
}

fn zmscore(cx: &mut Cx<'_>) -> Res {
    let ms = &cx.args[2..];
    let scores: Vec<Option<f64>> = cx.read(1, |e| {
        let z = typed::<ZSet>(&e.value)?;
        Ok(ms.iter().map(|m| z.and_then(|z| z.scores.get(*m).copied())).collect())
    })?;
    cx.r.array(scores.len());
    for s in scores {
        cx.r.double_or_nil(s);
    }
    Ok(())
}

fn zcard(cx: &mut Cx<'_>) -> Res {
    let n = cx.read(1, |e| Ok(typed::<ZSet>(&e.value)?.map_or(0, |z| z.len())))?;
    cx.r.int(n as i64);
    Ok(())
}

fn zcount(cx: &mut Cx<'_>) -> Res {
    let (min, max) = (bound(cx.args[2])?, bound(cx.args[3])?);
    let n = cx.read(1, |e| {
        Ok(typed::<ZSet>(&e.value)?.map_or(0, |z| z.iter().filter(|(_, s)| in_range(*s, min, max)).count()))
    })?;
    cx.r.int(n as i64);
    Ok(())
}

fn zrank_impl(cx: &mut Cx<'_>, rev: bool) -> Res {
    if cx.args.len() != 3 {
        return Err(CmdErr::Unsupported("ZRANK WITHSCORE"));
    }
    let m = cx.args[2];
    let rank = cx.read(1, |e| {
        Ok(typed::<ZSet>(&e.value)?.and_then(|z| z.rank(m).map(|r| if rev { z.len() - 1 - r } else { r })))
    })?;
    match rank {
        Some(r) => cx.r.int(r as i64),
        None => cx.r.nil(),
    }
    Ok(())
}

fn zrank(cx: &mut Cx<'_>) -> Res {
    zrank_impl(cx, false)
}

fn zrevrank(cx: &mut Cx<'_>) -> Res {
    zrank_impl(cx, true)
}

// ---- string and key writes ----

/// Parsed SET options.
struct SetOpts {
    /// New absolute expiry (ms), or keep the old one.
    expiry: Option<u64>,
    keepttl: bool,
    get: bool,
    nx: bool,
    xx: bool,
}

/// The options of SET (`for_set`) or GETEX as Redis's `parseExtendedStringArgumentsOrReply`
/// reads them: an expiry unit excludes the others, KEEPTTL and PERSIST, but may repeat (the
/// last value wins), as may every other flag; NX/XX/GET/KEEPTTL are SET's, PERSIST GETEX's.
#[derive(Default)]
struct Extended<'a> {
    /// Value, in seconds, relative.
    expire: Option<(&'a [u8], bool, bool)>,
    unit: Option<&'static str>,
    keepttl: bool,
    persist: bool,
    get: bool,
    nx: bool,
    xx: bool,
}

fn parse_extended<'a>(a: &[&'a [u8]], for_set: bool) -> Result<Extended<'a>, CmdErr> {
    let mut o = Extended::default();
    let mut i = 0;
    while i < a.len() {
        let opt = a[i];
        let unit = ["EX", "PX", "EXAT", "PXAT"].into_iter().find(|u| is(opt, u));
        if let Some(unit) = unit {
            if o.unit.is_some_and(|u| u != unit) || o.keepttl || o.persist || i + 1 >= a.len() {
                return Err(err(SYNTAX));
            }
            o.unit = Some(unit);
            o.expire = Some((a[i + 1], unit.starts_with('E'), !unit.ends_with("AT")));
            i += 2;
            continue;
        }
        if for_set && is(opt, "KEEPTTL") && o.unit.is_none() {
            o.keepttl = true;
        } else if !for_set && is(opt, "PERSIST") && o.unit.is_none() {
            o.persist = true;
        } else if for_set && is(opt, "GET") {
            o.get = true;
        } else if for_set && is(opt, "NX") && !o.xx {
            o.nx = true;
        } else if for_set && is(opt, "XX") && !o.nx {
            o.xx = true;
        } else {
            return Err(err(SYNTAX));
        }
        i += 1;
    }
    Ok(o)
}

fn parse_set_opts(cx: &Cx<'_>) -> Result<SetOpts, CmdErr> {
    let e = parse_extended(&cx.args[3..], true)?;
    let mut o = SetOpts { expiry: None, keepttl: e.keepttl, get: e.get, nx: e.nx, xx: e.xx };
    if let Some((text, seconds, relative)) = e.expire {
        o.expiry = Some(expire_ms(cx, text, seconds, relative)?);
    }
    Ok(o)
}

/// The error Redis gives for an expiry it cannot use, naming the command.
fn invalid_expire(cx: &Cx<'_>) -> CmdErr {
    CmdErr::Redis(format!(
        "ERR invalid expire time in '{}' command",
        String::from_utf8_lossy(cx.args[0]).to_ascii_lowercase()
    ))
}

/// An expiry option of SET, SETEX, PSETEX or GETEX as an absolute time in ms, by Redis's
/// rule (`getExpireMillisecondsOrReply`): positive, and no overflow in unit or base.
fn expire_ms(cx: &Cx<'_>, text: &[u8], seconds: bool, relative: bool) -> Result<u64, CmdErr> {
    let v = int(text)?;
    if v <= 0 || (seconds && v > i64::MAX / 1000) {
        return Err(invalid_expire(cx));
    }
    let ms = if seconds { v * 1000 } else { v };
    let ms = if relative { ms.checked_add(cx.now_ms as i64).ok_or_else(|| invalid_expire(cx))? } else { ms };
    Ok(ms as u64)
}

fn set(cx: &mut Cx<'_>) -> Res {
    let o = parse_set_opts(cx)?;
    if (o.nx || o.xx) && !cx.allow_conditional {
        return Err(CmdErr::Conditional(if o.nx { "SET NX" } else { "SET XX" }));
    }
    let value = cx.args[2];
    let (old, done) = cx.write(1, |e| {
        let old = if o.get { typed::<Bytes>(&e.value)?.cloned() } else { None };
        let exists = !matches!(e.value, Value::Absent);
        if (o.nx && exists) || (o.xx && !exists) {
            return Ok((old, false));
        }
        e.value.set_str(value);
        if !o.keepttl {
            e.expires_at_ms = o.expiry;
            e.ttl_known = true;
            // SET … GET fails on a value of another type: on a guess, still a guess.
            e.guessed &= o.get;
        }
        Ok((old, true))
    })?;
    if o.get {
        cx.r.bulk_or_nil(old.as_deref());
    } else if done {
        cx.r.ok();
    } else {
        cx.r.nil();
    }
    // Journal with the absolute expiry, so replay never extends the TTL.
    if let Some(t) = o.expiry {
        let mut args: Vec<Vec<u8>> = vec![b"SET".to_vec(), cx.args[1].to_vec(), cx.args[2].to_vec()];
        args.push(b"PXAT".to_vec());
        args.push(t.to_string().into_bytes());
        for (flag, word) in [(o.nx, "NX"), (o.xx, "XX"), (o.get, "GET")] {
            if flag {
                args.push(word.as_bytes().to_vec());
            }
        }
        cx.rewrite = Some(args);
    }
    Ok(())
}

fn set_with_ttl(cx: &mut Cx<'_>, seconds: bool) -> Res {
    let t = expire_ms(cx, cx.args[2], seconds, true)?;
    let value = cx.args[3];
    cx.write(1, |e| {
        e.value.set_str(value);
        e.expires_at_ms = Some(t);
        e.ttl_known = true;
        e.guessed = false;
        Ok(())
    })?;
    cx.r.ok();
    cx.rewrite = Some(vec![
        b"SET".to_vec(),
        cx.args[1].to_vec(),
        cx.args[3].to_vec(),
        b"PXAT".to_vec(),
        t.to_string().into_bytes(),
    ]);
    Ok(())
}

fn setex(cx: &mut Cx<'_>) -> Res {
    set_with_ttl(cx, true)
}

fn psetex(cx: &mut Cx<'_>) -> Res {
    set_with_ttl(cx, false)
}

fn mset(cx: &mut Cx<'_>) -> Res {
    if cx.args.len() % 2 != 1 {
        return Err(wrong_args(cx));
    }
    for i in (1..cx.args.len()).step_by(2) {
        let value = cx.args[i + 1];
        cx.write(i, |e| {
            e.value.set_str(value);
            e.expires_at_ms = None;
            e.ttl_known = true;
            e.guessed = false;
            Ok(())
        })?;
    }
    cx.r.ok();
    Ok(())
}

fn append(cx: &mut Cx<'_>) -> Res {
    let add = cx.args[2];
    let n = cx.write(1, |e| {
        let mut v = typed::<Bytes>(&e.value)?.map(|b| b.to_vec()).unwrap_or_default();
        v.extend_from_slice(add);
        let n = v.len();
        e.value = Value::Str(Bytes::from(v));
        Ok(n)
    })?;
    cx.r.int(n as i64);
    Ok(())
}

fn incr_by(cx: &mut Cx<'_>, by: i64) -> Res {
    let n = cx.write(1, |e| {
        let cur = match typed::<Bytes>(&e.value)? {
            Some(b) => int(b)?,
            None => 0,
        };
        let n = cur.checked_add(by).ok_or_else(|| err(OVERFLOW))?;
        e.value = Value::Str(Bytes::from(n.to_string()));
        Ok(n)
    })?;
    cx.r.int(n);
    Ok(())
}

fn incr(cx: &mut Cx<'_>) -> Res {
    incr_by(cx, 1)
}

fn decr(cx: &mut Cx<'_>) -> Res {
    incr_by(cx, -1)
}

fn incrby(cx: &mut Cx<'_>) -> Res {
    let by = int(cx.args[2])?;
    incr_by(cx, by)
}

fn decrby(cx: &mut Cx<'_>) -> Res {
    let by = int(cx.args[2])?;
    if by == i64::MIN {
        return Err(CmdErr::Redis("ERR decrement would overflow".into()));
    }
    incr_by(cx, -by)
}

fn incrbyfloat(cx: &mut Cx<'_>) -> Res {
    let incr = cx.args[2];
    let s = cx.write(1, |e| {
        // Redis's order: the key's type, its value, then the increment.
        let cur = typed::<Bytes>(&e.value)?.cloned();
        if let Some(b) = &cur {
            float_ld(b)?;
        }
        float_ld(incr)?;
        let s = long_double::add(cur.as_deref().unwrap_or(b"0"), incr).ok_or_else(|| err(NAN_INF))?;
        e.value = Value::Str(Bytes::from(s.clone()));
        Ok(s)
    })?;
    cx.r.bulk(s.as_bytes());
    Ok(())
}

fn getdel(cx: &mut Cx<'_>) -> Res {
    let old = cx.write(1, |e| {
        let old = typed::<Bytes>(&e.value)?.cloned();
        e.value = Value::Absent;
        e.expires_at_ms = None;
        e.ttl_known = true;
        Ok(old)
    })?;
    cx.r.bulk_or_nil(old.as_deref());
    Ok(())
}

fn getset(cx: &mut Cx<'_>) -> Res {
    let value = cx.args[2];
    let old = cx.write(1, |e| {
        let old = typed::<Bytes>(&e.value)?.cloned();
        e.value.set_str(value);
        e.expires_at_ms = None;
        e.ttl_known = true;
        Ok(old)
    })?;
    cx.r.bulk_or_nil(old.as_deref());
    Ok(())
}

fn getex(cx: &mut Cx<'_>) -> Res {
    // GETEX key [EX s | PX ms | EXAT s | PXAT ms | PERSIST]
    // Redis's order: the syntax, then the key (missing: nil; another type: WRONGTYPE),
    // then the expiry's value.
    let o = parse_extended(&cx.args[2..], false)?;
    let option = match (o.expire, o.persist) {
        (Some(e), _) => Some(Some(e)),
        (None, true) => Some(None),
        (None, false) => None,
    };
    // Checked only once the key is known to hold a string.
    let expiry: Option<Result<Option<u64>, CmdErr>> = option.map(|o| match o {
        Some((text, seconds, relative)) => expire_ms(cx, text, seconds, relative).map(Some),
        None => Ok(None),
    });
    let absolute = match &expiry {
        Some(Ok(Some(t))) => Some(*t),
        _ => None,
    };
    let invalid = matches!(expiry, Some(Err(_)));
    let v = cx.write(1, |e| {
        let v = typed::<Bytes>(&e.value)?.cloned();
        if v.is_some() {
            if let Some(t) = expiry {
                e.expires_at_ms = t?;
                e.ttl_known = true;
            }
        }
        Ok(v)
    })?;
    cx.r.bulk_or_nil(v.as_deref());
    // Journaled with the absolute expiry; an unusable one (answered nil: no key) as a
    // plain GETEX, which changes nothing at replay either.
    if let Some(t) = absolute {
        cx.rewrite = Some(vec![b"GETEX".to_vec(), cx.args[1].to_vec(), b"PXAT".to_vec(), t.to_string().into_bytes()]);
    } else if invalid {
        cx.rewrite = Some(vec![b"GETEX".to_vec(), cx.args[1].to_vec()]);
    }
    Ok(())
}

fn del(cx: &mut Cx<'_>) -> Res {
    let mut n = 0;
    for i in 1..cx.args.len() {
        n += cx.write(i, |e| {
            let existed = !matches!(e.value, Value::Absent);
            e.value = Value::Absent;
            e.expires_at_ms = None;
            e.ttl_known = true;
            e.guessed = false;
            Ok(existed as i64)
        })?;
    }
    cx.r.int(n);
    Ok(())
}

/// Sets an absolute expiry (ms) on an existing key; journals `PEXPIREAT key t`.
fn expire_at(cx: &mut Cx<'_>, t: u64) -> Res {
    if cx.args.len() > 3 {
        // NX / XX / GT / LT depend on the upstream's current TTL (not served even with
        // allow_conditional, so the refusal must not suggest it).
        let what = "EXPIRE with NX|XX|GT|LT";
        return Err(if cx.allow_conditional { CmdErr::Unsupported(what) } else { CmdErr::Conditional(what) });
    }
    let now = cx.now_ms;
    let n = cx.write(1, |e| {
        if matches!(e.value, Value::Absent) {
            return Ok(0);
        }
        if t <= now {
            e.value = Value::Absent;
            e.expires_at_ms = None;
        } else {
            e.expires_at_ms = Some(t);
        }
        e.ttl_known = true;
        Ok(1)
    })?;
    cx.r.int(n);
    cx.rewrite = Some(vec![b"PEXPIREAT".to_vec(), cx.args[1].to_vec(), t.to_string().into_bytes()]);
    Ok(())
}

/// EXPIRE's time as an absolute ms by Redis's rule (`expireGenericCommand`): any value,
/// negative included (the key is deleted), unless the unit or the base overflows.
fn expire_when(cx: &Cx<'_>, seconds: bool, base: i64) -> Result<u64, CmdErr> {
    let when = int(cx.args[2])?;
    if seconds && !(i64::MIN / 1000..=i64::MAX / 1000).contains(&when) {
        return Err(invalid_expire(cx));
    }
    let when = if seconds { when * 1000 } else { when };
    let when = when.checked_add(base).ok_or_else(|| invalid_expire(cx))?;
    Ok(when.max(0) as u64)
}

fn expire(cx: &mut Cx<'_>) -> Res {
    let t = expire_when(cx, true, cx.now_ms as i64)?;
    expire_at(cx, t)
}

fn pexpire(cx: &mut Cx<'_>) -> Res {
    let t = expire_when(cx, false, cx.now_ms as i64)?;
    expire_at(cx, t)
}

fn expireat(cx: &mut Cx<'_>) -> Res {
    let t = expire_when(cx, true, 0)?;
    expire_at(cx, t)
}

fn pexpireat(cx: &mut Cx<'_>) -> Res {
    let t = expire_when(cx, false, 0)?;
    expire_at(cx, t)
}

fn persist(cx: &mut Cx<'_>) -> Res {
    let n = cx.write(1, |e| {
        if matches!(e.value, Value::Absent) {
            return Ok(0);
        }
        if !e.ttl_known {
            // The reply says whether there was an expiry, which this sidecar does not know
            // (a value warmed from GET): refused, not guessed.
            return Err(CmdErr::Unsupported("PERSIST of a key whose expiry this sidecar has not seen"));
        }
        let had = e.expires_at_ms.is_some();
        e.expires_at_ms = None;
        Ok(had as i64)
    })?;
    cx.r.int(n);
    Ok(())
}

// ---- hash writes ----

fn hset_impl(cx: &mut Cx<'_>) -> Result<i64, CmdErr> {
    if cx.args.len() < 4 || !cx.args.len().is_multiple_of(2) {
        return Err(wrong_args(cx));
    }
    let pairs: Vec<(Bytes, Bytes)> =
        cx.args[2..].chunks(2).map(|p| (Bytes::copy_from_slice(p[0]), Bytes::copy_from_slice(p[1]))).collect();
    cx.write(1, |e| {
        let h = typed_mut::<Hash>(e)?;
        Ok(pairs.into_iter().filter(|(f, v)| h.insert(f.clone(), v.clone()).is_none()).count() as i64)
    })
}

fn hset(cx: &mut Cx<'_>) -> Res {
    let n = hset_impl(cx)?;
    cx.r.int(n);
    Ok(())
}

fn hmset(cx: &mut Cx<'_>) -> Res {
    hset_impl(cx)?;
    cx.r.ok();
    Ok(())
}

fn hdel(cx: &mut Cx<'_>) -> Res {
    let fields = &cx.args[2..];
    let n = cx.write(1, |e| match &mut e.value {
        Value::Absent => Ok(0),
        Value::Hash(h) if fields.len() == 1 => Ok(h.shift_remove(fields[0]).is_some() as i64),
        Value::Hash(h) => {
            // In one pass (keeping the order of the rest): removed one by one, each
            // removal shifted the rest, quadratic in the fields named.
            let gone: std::collections::HashSet<&[u8]> = fields.iter().copied().collect();
            let before = h.len();
            h.retain(|f, _| !gone.contains(&f[..]));
            Ok((before - h.len()) as i64)
        }
        _ => Err(err(WRONGTYPE)),
    })?;
    cx.r.int(n);
    Ok(())
}

fn hincrby(cx: &mut Cx<'_>) -> Res {
    let by = int(cx.args[3])?;
    let field = Bytes::copy_from_slice(cx.args[2]);
    let n = cx.write(1, |e| {
        if !matches!(e.value, Value::Absent | Value::Hash(_)) {
            return Err(err(WRONGTYPE));
        }
        let cur = match &e.value {
            Value::Hash(h) => {
                h.get(&field).map(|v| crate::resp::parse_int(v).ok_or_else(|| err(HASH_NOT_INT))).transpose()?
            }
            _ => None,
        };
        let n = cur.unwrap_or(0).checked_add(by).ok_or_else(|| err(OVERFLOW))?;
        typed_mut::<Hash>(e)?.insert(field, Bytes::from(n.to_string()));
        Ok(n)
    })?;
    cx.r.int(n);
    Ok(())
}

fn hincrbyfloat(cx: &mut Cx<'_>) -> Res {
    let incr = cx.args[3];
    float_ld(incr)?;
    if !long_double::is_finite(incr) {
        return Err(err(INCR_NAN_INF));
    }
    let field = Bytes::copy_from_slice(cx.args[2]);
    let s = cx.write(1, |e| {
        let cur = match &e.value {
            Value::Hash(h) => h.get(&field).cloned(),
            Value::Absent => None,
            _ => return Err(err(WRONGTYPE)),
        };
        if let Some(v) = &cur {
            float_ld(v).map_err(|_| err(HASH_NOT_FLOAT))?;
        }
        let s = long_double::add(cur.as_deref().unwrap_or(b"0"), incr).ok_or_else(|| err(NAN_INF))?;
        typed_mut::<Hash>(e)?.insert(field, Bytes::from(s.clone()));
        Ok(s)
    })?;
    cx.r.bulk(s.as_bytes());
    Ok(())
}

fn hsetnx(cx: &mut Cx<'_>) -> Res {
    let (f, v) = (Bytes::copy_from_slice(cx.args[2]), Bytes::copy_from_slice(cx.args[3]));
    let n = cx.write(1, |e| {
        let h = typed_mut::<Hash>(e)?;
        if h.contains_key(&f) {
            Ok(0)
        } else {
            h.insert(f, v);
            Ok(1)
        }
    })?;
    cx.r.int(n);
    Ok(())
}

// ---- list writes ----

fn push(cx: &mut Cx<'_>, left: bool) -> Res {
    let items: Vec<Bytes> = cx.args[2..].iter().map(|a| Bytes::copy_from_slice(a)).collect();
    let n = cx.write(1, |e| {
        let l = typed_mut::<List>(e)?;
        for i in items {
            if left {
                l.push_front(i)
            } else {
                l.push_back(i)
            }
        }
        Ok(l.len())
    })?;
    cx.r.int(n as i64);
    Ok(())
}

fn lpush(cx: &mut Cx<'_>) -> Res {
    push(cx, true)
}

fn rpush(cx: &mut Cx<'_>) -> Res {
    push(cx, false)
}

fn pop(cx: &mut Cx<'_>, left: bool) -> Res {
    let count = match cx.args.len() {
        2 => None,
        3 => match crate::resp::parse_int(cx.args[2]) {
            Some(c) if c >= 0 => Some(c as usize),
            // Redis's getPositiveLongFromObjectOrReply: one message for both.
            _ => return Err(CmdErr::Redis("ERR value is out of range, must be positive".into())),
        },
        _ => return Err(wrong_args(cx)),
    };
    let popped: Option<Vec<Bytes>> = cx.write(1, |e| match &mut e.value {
        Value::Absent => Ok(None),
        Value::List(l) => {
            let n = count.unwrap_or(1).min(l.len());
            Ok(Some((0..n).filter_map(|_| if left { l.pop_front() } else { l.pop_back() }).collect()))
        }
        _ => Err(err(WRONGTYPE)),
    })?;
    match (count, popped) {
        (None, Some(v)) if !v.is_empty() => cx.r.bulk(&v[0]),
        (None, _) => cx.r.nil(),
        (Some(_), None) => cx.r.null_array(),
        (Some(_), Some(v)) => {
            cx.r.array(v.len());
            for i in v {
                cx.r.bulk(&i);
            }
        }
    }
    Ok(())
}

fn lpop(cx: &mut Cx<'_>) -> Res {
    pop(cx, true)
}

fn rpop(cx: &mut Cx<'_>) -> Res {
    pop(cx, false)
}

fn ltrim(cx: &mut Cx<'_>) -> Res {
    let (start, stop) = (int(cx.args[2])?, int(cx.args[3])?);
    cx.write(1, |e| match &mut e.value {
        Value::Absent => Ok(()),
        Value::List(l) => {
            match range(start, stop, l.len()) {
                Some((s, t)) => {
                    l.truncate(t + 1);
                    l.drain(..s);
                }
                None => l.clear(),
            }
            Ok(())
        }
        _ => Err(err(WRONGTYPE)),
    })?;
    cx.r.ok();
    Ok(())
}

fn lrem(cx: &mut Cx<'_>) -> Res {
    let count = int(cx.args[2])?;
    let target = cx.args[3];
    let n = cx.write(1, |e| match &mut e.value {
        Value::Absent => Ok(0),
        Value::List(l) => {
            let limit = if count == 0 { usize::MAX } else { count.unsigned_abs() as usize };
            // In one pass: removing one by one from the middle of the list shifted the
            // rest each time (quadratic). From the tail (count < 0): the first matches are
            // kept, the last `limit` removed.
            let keep = if count >= 0 { 0 } else { l.iter().filter(|v| **v == target).count().saturating_sub(limit) };
            let (mut seen, mut removed) = (0, 0);
            l.retain(|v| {
                if *v != target {
                    return true;
                }
                seen += 1;
                if seen <= keep || removed == limit {
                    return true;
                }
                removed += 1;
                false
            });
            Ok(removed as i64)
        }
        _ => Err(err(WRONGTYPE)),
    })?;
    cx.r.int(n);
    Ok(())
}

fn lset(cx: &mut Cx<'_>) -> Res {
    let arg = cx.args[2];
    let v = Bytes::copy_from_slice(cx.args[3]);
    // Redis's order: the key, its type, then the index.
    cx.write(1, |e| match &mut e.value {
        Value::Absent => Err(err(NO_SUCH_KEY)),
        Value::List(l) => {
            let idx = int(arg)?;
            let i = if idx < 0 { l.len() as i64 + idx } else { idx };
            match (i >= 0).then(|| l.get_mut(i as usize)).flatten() {
                Some(slot) => {
                    *slot = v;
                    Ok(())
                }
                None => Err(err(INDEX_RANGE)),
            }
        }
        _ => Err(err(WRONGTYPE)),
    })?;
    cx.r.ok();
    Ok(())
}

// ---- set writes ----

fn sadd(cx: &mut Cx<'_>) -> Res {
    let ms: Vec<Bytes> = cx.args[2..].iter().map(|a| Bytes::copy_from_slice(a)).collect();
    let n = cx.write(1, |e| {
        let s = typed_mut::<Set>(e)?;
        Ok(ms.into_iter().filter(|m| s.insert(m.clone())).count() as i64)
    })?;
    cx.r.int(n);
    Ok(())
}

fn srem(cx: &mut Cx<'_>) -> Res {
    let ms = &cx.args[2..];
    let n = cx.write(1, |e| match &mut e.value {
        Value::Absent => Ok(0),
        Value::Set(s) if ms.len() == 1 => Ok(s.shift_remove(ms[0]) as i64),
        Value::Set(s) => {
            // In one pass, as HDEL.
            let gone: std::collections::HashSet<&[u8]> = ms.iter().copied().collect();
            let before = s.len();
            s.retain(|m| !gone.contains(&m[..]));
            Ok((before - s.len()) as i64)
        }
        _ => Err(err(WRONGTYPE)),
    })?;
    cx.r.int(n);
    Ok(())
}

// ---- sorted set writes ----

fn zadd(cx: &mut Cx<'_>) -> Res {
    let mut i = 2;
    let (mut ch, mut incr) = (false, false);
    while i < cx.args.len() {
        let a = cx.args[i];
        if is(a, "NX") || is(a, "XX") || is(a, "GT") || is(a, "LT") {
            let what = "ZADD NX|XX|GT|LT";
            return Err(if cx.allow_conditional { CmdErr::Unsupported(what) } else { CmdErr::Conditional(what) });
        } else if is(a, "CH") {
            ch = true;
        } else if is(a, "INCR") {
            incr = true;
        } else {
            break;
        }
        i += 1;
    }
    let rest = &cx.args[i..];
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return Err(err(SYNTAX));
    }
    if incr && rest.len() != 2 {
        return Err(CmdErr::Redis("ERR INCR option supports a single increment-element pair".into()));
    }
    let mut pairs = Vec::with_capacity(rest.len() / 2);
    for p in rest.chunks(2) {
        pairs.push((float(p[0])?, Bytes::copy_from_slice(p[1])));
    }
    let result = cx.write(1, |e| {
        let z = typed_mut::<ZSet>(e)?;
        if incr {
            let (by, m) = pairs.pop().expect("one pair");
            let n = z.scores.get(&m).map_or(by, |cur| cur + by);
            if n.is_nan() {
                return Err(CmdErr::Redis("ERR resulting score is not a number (NaN)".into()));
            }
            z.insert(m, n);
            return Ok(Err(n));
        }
        let mut added = 0;
        let mut changed = 0;
        for (s, m) in pairs {
            let old = z.scores.get(&m).copied();
            if z.insert(m, s) {
                added += 1;
            } else if old != Some(s) {
                changed += 1;
            }
        }
        Ok(Ok(if ch { added + changed } else { added }))
    })?;
    match result {
        Ok(n) => cx.r.int(n),
        Err(score) => cx.r.double(score),
    }
    Ok(())
}

fn zrem(cx: &mut Cx<'_>) -> Res {
    let ms = &cx.args[2..];
    let n = cx.write(1, |e| match &mut e.value {
        Value::Absent => Ok(0),
        Value::ZSet(z) => Ok(ms.iter().filter(|m| z.remove(m)).count() as i64),
        _ => Err(err(WRONGTYPE)),
    })?;
    cx.r.int(n);
    Ok(())
}

fn zincrby(cx: &mut Cx<'_>) -> Res {
    let by = float(cx.args[2])?;
    let m = Bytes::copy_from_slice(cx.args[3]);
    let n = cx.write(1, |e| {
        let z = typed_mut::<ZSet>(e)?;
        let n = z.scores.get(&m).map_or(by, |cur| cur + by);
        if n.is_nan() {
            return Err(CmdErr::Redis("ERR resulting score is not a number (NaN)".into()));
        }
        z.insert(m, n);
        Ok(n)
    })?;
    cx.r.double(n);
    Ok(())
}

fn zremrangebyscore(cx: &mut Cx<'_>) -> Res {
    let (min, max) = (bound(cx.args[2])?, bound(cx.args[3])?);
    let n = cx.write(1, |e| match &mut e.value {
        Value::Absent => Ok(0),
        Value::ZSet(z) => {
            let gone: Vec<Bytes> = z.iter().filter(|(_, s)| in_range(*s, min, max)).map(|(m, _)| m.clone()).collect();
            for m in &gone {
                z.remove(m);
            }
            Ok(gone.len() as i64)
        }
        _ => Err(err(WRONGTYPE)),
    })?;
    cx.r.int(n);
    Ok(())
}

fn zremrangebyrank(cx: &mut Cx<'_>) -> Res {
    let (start, stop) = (int(cx.args[2])?, int(cx.args[3])?);
    let n = cx.write(1, |e| match &mut e.value {
        Value::Absent => Ok(0),
        Value::ZSet(z) => {
            let Some((s, t)) = range(start, stop, z.len()) else { return Ok(0) };
            let gone: Vec<Bytes> = z.iter().skip(s).take(t - s + 1).map(|(m, _)| m.clone()).collect();
            for m in &gone {
                z.remove(m);
            }
            Ok(gone.len() as i64)
        }
        _ => Err(err(WRONGTYPE)),
    })?;
    cx.r.int(n);
    Ok(())
}

// ---- conditional writes (opt-in) ----

fn setnx(cx: &mut Cx<'_>) -> Res {
    let value = Bytes::copy_from_slice(cx.args[2]);
    let n = cx.write(1, |e| {
        if matches!(e.value, Value::Absent) {
            e.value = Value::Str(value);
            e.expires_at_ms = None;
            e.ttl_known = true;
            Ok(1)
        } else {
            Ok(0)
        }
    })?;
    cx.r.int(n);
    Ok(())
}

fn msetnx(cx: &mut Cx<'_>) -> Res {
    if cx.args.len() % 2 != 1 {
        return Err(wrong_args(cx));
    }
    let mut any = false;
    for i in (1..cx.args.len()).step_by(2) {
        any |= cx.read(i, |e| Ok(!matches!(e.value, Value::Absent))).unwrap_or(false);
    }
    if !any {
        for i in (1..cx.args.len()).step_by(2) {
            let value = Bytes::copy_from_slice(cx.args[i + 1]);
            cx.write(i, |e| {
                e.value = Value::Str(value);
                e.expires_at_ms = None;
                e.ttl_known = true;
                Ok(())
            })?;
        }
    }
    cx.r.int(!any as i64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command;

    #[test]
    fn every_entry_is_a_known_command_found_by_id_with_a_kind_matching_its_flags() {
        let mut names = std::collections::HashSet::new();
        for e in TABLE {
            assert!(names.insert(e.name), "duplicate {}", e.name);
            let (id, spec) = command::lookup(e.name.as_bytes()).unwrap_or_else(|| panic!("{} unknown", e.name));
            assert!(std::ptr::eq(by_id(id).unwrap(), e), "{}", e.name);
            match e.kind {
                Kind::Read => assert!(spec.flags & command::flags::R != 0, "{} served as a read", e.name),
                Kind::Write | Kind::Conditional => assert!(spec.is_write(), "{} served as a write", e.name),
                Kind::Local => assert!(!spec.is_write(), "{}", e.name),
            }
        }
        // Everything else is refused: e.g. no blocking command and no script is in the table.
        for spec in command::TABLE {
            if spec.flags & command::flags::B != 0 || spec.name.starts_with("EVAL") || spec.name == "WATCH" {
                assert!(lookup(spec.name).is_none(), "{} must be refused during an outage", spec.name);
            }
        }
        assert!(by_id(command::other_id()).is_none());
    }
}
