//! Pub/sub between this sidecar's own clients while the upstream is down.
//!
//! During an outage PUBLISH is delivered to the local subscribers of the channel (and of
//! matching patterns), and SPUBLISH to the local subscribers of the shard channel (a
//! namespace of its own, as in Redis 7: patterns never match it), each answering how many
//! received it — as Redis would if this sidecar's clients were its only clients. Messages
//! published elsewhere during the outage are not seen, and nothing is replayed: pub/sub is
//! fire-and-forget in Redis too. Each subscriber has a queue bounded in messages (1,024)
//! and in bytes (its client's `client.output_buffer_limit`); a subscriber that does not
//! keep up misses messages (counted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::resp::put_decimal;

/// A message for one subscriber.
#[derive(Debug, Clone)]
pub enum Msg {
    Message { channel: Bytes, payload: Bytes },
    PMessage { pattern: Bytes, channel: Bytes, payload: Bytes },
    SMessage { channel: Bytes, payload: Bytes },
}

impl Msg {
    /// The bytes a queued message holds (what its subscriber's byte bound counts).
    pub fn size(&self) -> u64 {
        let (a, b, c) = match self {
            Msg::Message { channel, payload } | Msg::SMessage { channel, payload } => (0, channel.len(), payload.len()),
            Msg::PMessage { pattern, channel, payload } => (pattern.len(), channel.len(), payload.len()),
        };
        (a + b + c + 64) as u64
    }

    /// Encodes the message as Redis sends it (an array in RESP2, a push in RESP3).
    pub fn encode(&self, resp3: bool, out: &mut BytesMut) {
        let head = if resp3 { b'>' } else { b'*' };
        match self {
            Msg::Message { channel, payload } | Msg::SMessage { channel, payload } => {
                header(out, head, 3);
                bulk(out, if matches!(self, Msg::Message { .. }) { b"message" } else { b"smessage" });
                bulk(out, channel);
                bulk(out, payload);
            }
            Msg::PMessage { pattern, channel, payload } => {
                header(out, head, 4);
                bulk(out, b"pmessage");
                bulk(out, pattern);
                bulk(out, channel);
                bulk(out, payload);
            }
        }
    }
}

fn header(out: &mut BytesMut, t: u8, n: usize) {
    out.put_u8(t);
    put_decimal(out, n as i64);
    out.put_slice(b"\r\n");
}

/// Appends a bulk string.
pub fn bulk(out: &mut BytesMut, b: &[u8]) {
    out.put_u8(b'$');
    put_decimal(out, b.len() as i64);
    out.put_slice(b"\r\n");
    out.put_slice(b);
    out.put_slice(b"\r\n");
}

/// A subscription confirmation: `[kind, name, count]` (`name` nil when absent).
pub fn confirmation(out: &mut BytesMut, resp3: bool, kind: &[u8], name: Option<&[u8]>, count: usize) {
    header(out, if resp3 { b'>' } else { b'*' }, 3);
    bulk(out, kind);
    match name {
        Some(n) => bulk(out, n),
        None => out.put_slice(if resp3 { b"_\r\n" } else { b"$-1\r\n" }),
    }
    out.put_u8(b':');
    put_decimal(out, count as i64);
    out.put_slice(b"\r\n");
}

/// Queue length per local subscriber.
pub const QUEUE: usize = 1024;

/// A local subscriber's queue, bounded in messages ([`QUEUE`]) and in bytes.
pub fn queue(max_bytes: u64) -> (SubTx, SubRx) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let queued = Arc::new(AtomicU64::new(0));
    (SubTx { tx, queued: queued.clone(), max_bytes }, SubRx { rx, queued })
}

/// The broker's end of a subscriber's queue.
#[derive(Clone)]
pub struct SubTx {
    tx: mpsc::Sender<Msg>,
    /// Bytes of the messages in the queue.
    queued: Arc<AtomicU64>,
    max_bytes: u64,
}

/// The subscriber's end.
pub struct SubRx {
    rx: mpsc::Receiver<Msg>,
    queued: Arc<AtomicU64>,
}

impl SubRx {
    pub async fn recv(&mut self) -> Option<Msg> {
        let m = self.rx.recv().await?;
        self.queued.fetch_sub(m.size(), Ordering::AcqRel);
        Some(m)
    }

    #[cfg(test)]
    fn try_recv(&mut self) -> Option<Msg> {
        let m = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(m.size(), Ordering::AcqRel);
        Some(m)
    }
}

type Subscribers = Vec<(u64, SubTx)>;
type Channels = Mutex<HashMap<Bytes, Subscribers>>;

/// The local broker.
#[derive(Default)]
pub struct Broker {
    channels: Channels,
    patterns: Mutex<Vec<(Bytes, u64, SubTx)>>,
    /// Shard channels (SSUBSCRIBE/SPUBLISH).
    shard: Channels,
    next_id: AtomicU64,
    /// Messages a slow local subscriber missed.
    pub dropped: AtomicU64,
}

impl Broker {
    /// A new subscriber identity.
    pub fn subscriber(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn subscribe(&self, id: u64, channel: Bytes, tx: SubTx) {
        join(&self.channels, id, channel, tx);
    }

    pub fn unsubscribe(&self, id: u64, channel: &[u8]) {
        leave(&self.channels, id, channel);
    }

    pub fn ssubscribe(&self, id: u64, channel: Bytes, tx: SubTx) {
        join(&self.shard, id, channel, tx);
    }

    pub fn sunsubscribe(&self, id: u64, channel: &[u8]) {
        leave(&self.shard, id, channel);
    }

    pub fn psubscribe(&self, id: u64, pattern: Bytes, tx: SubTx) {
        let mut p = self.patterns.lock();
        if !p.iter().any(|(pat, i, _)| *i == id && pat == &pattern) {
            p.push((pattern, id, tx));
        }
    }

    pub fn punsubscribe(&self, id: u64, pattern: &[u8]) {
        self.patterns.lock().retain(|(p, i, _)| !(*i == id && p == pattern));
    }

    /// Removes every subscription of a subscriber.
    pub fn remove(&self, id: u64) {
        for channels in [&self.channels, &self.shard] {
            channels.lock().retain(|_, subs| {
                subs.retain(|(i, _)| *i != id);
                !subs.is_empty()
            });
        }
        self.patterns.lock().retain(|(_, i, _)| *i != id);
    }

    /// Delivers a message; returns how many subscribers received it.
    pub fn publish(&self, channel: &[u8], payload: &[u8]) -> usize {
        let channel = Bytes::copy_from_slice(channel);
        let payload = Bytes::copy_from_slice(payload);
        let mut n = 0;
        if let Some(subs) = self.channels.lock().get(&channel) {
            for (_, tx) in subs {
                n += self.deliver(tx, Msg::Message { channel: channel.clone(), payload: payload.clone() });
            }
        }
        for (pattern, _, tx) in self.patterns.lock().iter() {
            if glob_match(pattern, &channel) {
                let msg =
                    Msg::PMessage { pattern: pattern.clone(), channel: channel.clone(), payload: payload.clone() };
                n += self.deliver(tx, msg);
            }
        }
        n
    }

    /// Delivers a shard message (SPUBLISH); returns how many subscribers received it.
    pub fn spublish(&self, channel: &[u8], payload: &[u8]) -> usize {
        let shard = self.shard.lock();
        let Some(subs) = shard.get(channel) else { return 0 };
        let (channel, payload) = (Bytes::copy_from_slice(channel), Bytes::copy_from_slice(payload));
        subs.iter()
            .map(|(_, tx)| self.deliver(tx, Msg::SMessage { channel: channel.clone(), payload: payload.clone() }))
            .sum()
    }

    fn deliver(&self, tx: &SubTx, msg: Msg) -> usize {
        let size = msg.size();
        // Counted before sending, so the receiver never subtracts what was not added.
        let before = tx.queued.fetch_add(size, Ordering::AcqRel);
        let sent = if before.saturating_add(size) > tx.max_bytes {
            Err(true)
        } else {
            tx.tx.try_send(msg).map_err(|e| matches!(e, mpsc::error::TrySendError::Full(_)))
        };
        match sent {
            Ok(()) => 1,
            // Not queued: uncounted again; over the bounds (bytes or messages) it is a
            // missed message.
            Err(missed) => {
                tx.queued.fetch_sub(size, Ordering::AcqRel);
                if missed {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                0
            }
        }
    }
}

fn join(channels: &Channels, id: u64, channel: Bytes, tx: SubTx) {
    let mut c = channels.lock();
    let subs = c.entry(channel).or_default();
    if !subs.iter().any(|(i, _)| *i == id) {
        subs.push((id, tx));
    }
}

fn leave(channels: &Channels, id: u64, channel: &[u8]) {
    let mut c = channels.lock();
    if let Some(subs) = c.get_mut(channel) {
        subs.retain(|(i, _)| *i != id);
        if subs.is_empty() {
            c.remove(channel);
        }
    }
}

/// Redis's glob matching for PSUBSCRIBE patterns: `*`, `?`, `[abc]`, `[^a-z]`, `\x`.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let (mut star_p, mut star_i) = (usize::MAX, 0);
    while i < s.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star_p = p;
                    star_i = i;
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(pattern, p, s[i]) {
                        if matched {
                            p = next;
                            i += 1;
                            continue;
                        }
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == s[i] => {
                    p += 2;
                    i += 1;
                    continue;
                }
                b'\\' if p + 1 < pattern.len() => {}
                c if c == s[i] => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        if star_p != usize::MAX {
            p = star_p + 1;
            star_i += 1;
            i = star_i;
            continue;
        }
        return false;
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[p] == b'['`; returns whether it
/// matched and where the pattern continues.
fn class(pattern: &[u8], p: usize, c: u8) -> Option<(bool, usize)> {
    let mut j = p + 1;
    let negate = pattern.get(j) == Some(&b'^');
    if negate {
        j += 1;
    }
    let mut matched = false;
    while j < pattern.len() && pattern[j] != b']' {
        if pattern[j] == b'\\' && j + 1 < pattern.len() {
            matched |= pattern[j + 1] == c;
            j += 2;
        } else if j + 2 < pattern.len() && pattern[j + 1] == b'-' && pattern[j + 2] != b']' {
            let (lo, hi) = (pattern[j].min(pattern[j + 2]), pattern[j].max(pattern[j + 2]));
            matched |= (lo..=hi).contains(&c);
            j += 3;
        } else {
            matched |= pattern[j] == c;
            j += 1;
        }
    }
    if j >= pattern.len() {
        return None;
    }
    Some((matched != negate, j + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matching_follows_redis() {
        for (p, s, want) in [
            (&b"news.*"[..], &b"news.tech"[..], true),
            (b"news.*", b"sport", false),
            (b"h?llo", b"hello", true),
            (b"h[ae]llo", b"hallo", true),
            (b"h[^e]llo", b"hello", false),
            (b"h[a-c]llo", b"hbllo", true),
            (b"*", b"", true),
            (b"a*b*c", b"axxbyyc", true),
            (b"a*b*c", b"axxbyy", false),
            (b"a\\*", b"a*", true),
            (b"a\\*", b"ab", false),
        ] {
            assert_eq!(glob_match(p, s), want, "{} ~ {}", String::from_utf8_lossy(p), String::from_utf8_lossy(s));
        }
    }

    #[tokio::test]
    async fn publish_reaches_channel_and_pattern_subscribers() {
        let b = Broker::default();
        let (tx1, mut rx1) = queue(u64::MAX);
        let (tx2, mut rx2) = queue(u64::MAX);
        let (s1, s2) = (b.subscriber(), b.subscriber());
        b.subscribe(s1, Bytes::from_static(b"news"), tx1);
        b.psubscribe(s2, Bytes::from_static(b"n*"), tx2);
        assert_eq!(b.publish(b"news", b"hi"), 2);
        assert!(matches!(rx1.recv().await, Some(Msg::Message { .. })));
        assert!(matches!(rx2.recv().await, Some(Msg::PMessage { .. })));
        b.remove(s1);
        assert_eq!(b.publish(b"news", b"again"), 1);
        let mut out = BytesMut::new();
        Msg::Message { channel: Bytes::from_static(b"c"), payload: Bytes::from_static(b"p") }.encode(false, &mut out);
        assert_eq!(&out[..], b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\np\r\n");
    }

    #[tokio::test]
    async fn a_slow_subscribers_queue_is_bounded_in_bytes() {
        // 470 bytes a message as counted (400 of payload, the channel, 64 of overhead):
        // two fit in 1,000 bytes, the third is dropped and counted, and reading one makes
        // room again.
        let b = Broker::default();
        let (tx, mut rx) = queue(1000);
        let s = b.subscriber();
        b.subscribe(s, Bytes::from_static(b"bulky"), tx);
        let payload = vec![b'x'; 400];
        assert_eq!(b.publish(b"bulky", &payload), 1);
        assert_eq!(b.publish(b"bulky", &payload), 1);
        assert_eq!(b.publish(b"bulky", &payload), 0, "over the byte bound");
        assert_eq!(b.dropped.load(Ordering::Relaxed), 1);
        assert!(rx.recv().await.is_some());
        assert_eq!(b.publish(b"bulky", &payload), 1, "room again once one was read");
    }

    #[tokio::test]
    async fn shard_channels_are_a_namespace_of_their_own() {
        let b = Broker::default();
        let (tx1, mut rx1) = queue(u64::MAX);
        let (tx2, mut rx2) = queue(u64::MAX);
        let (s1, s2) = (b.subscriber(), b.subscriber());
        b.ssubscribe(s1, Bytes::from_static(b"orders"), tx1);
        b.psubscribe(s2, Bytes::from_static(b"*"), tx2.clone());
        b.subscribe(s2, Bytes::from_static(b"orders"), tx2);
        assert_eq!(b.spublish(b"orders", b"1"), 1, "SPUBLISH reaches shard subscribers only");
        assert!(matches!(rx1.recv().await, Some(Msg::SMessage { .. })));
        assert!(rx2.try_recv().is_none(), "patterns and plain channels do not see shard messages");
        assert_eq!(b.publish(b"orders", b"2"), 2, "PUBLISH reaches the channel and the pattern");
        assert!(rx1.try_recv().is_none(), "a shard subscriber does not see PUBLISH");
        b.sunsubscribe(s1, b"orders");
        assert_eq!(b.spublish(b"orders", b"3"), 0);
        b.ssubscribe(s1, Bytes::from_static(b"x"), queue(1 << 20).0);
        b.remove(s1);
        assert_eq!(b.spublish(b"x", b"4"), 0, "remove drops shard subscriptions too");
        let mut out = BytesMut::new();
        Msg::SMessage { channel: Bytes::from_static(b"c"), payload: Bytes::from_static(b"p") }.encode(true, &mut out);
        assert_eq!(&out[..], b">3\r\n$8\r\nsmessage\r\n$1\r\nc\r\n$1\r\np\r\n");
    }
}
