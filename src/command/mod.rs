//! The command table: what respite knows about each Redis command, as data.
//!
//! Each entry carries Redis's own facts (arity, read/write flags, key positions — checked
//! entry by entry against a live `COMMAND INFO` in `tests/command_table.rs`) and respite's
//! routing class for the healthy path. Commands not in the table are forwarded unchanged
//! and counted under the metric label `other`.

mod table;

use std::sync::OnceLock;

pub use table::TABLE;

/// Flag bits (a subset of Redis's command flags).
pub mod flags {
    pub const NONE: u16 = 0;
    /// Modifies data.
    pub const W: u16 = 1 << 0;
    /// Only reads data.
    pub const R: u16 = 1 << 1;
    /// May block the connection.
    pub const B: u16 = 1 << 2;
    /// Pub/sub command.
    pub const P: u16 = 1 << 3;
    /// Administrative command.
    pub const A: u16 = 1 << 4;
    /// Key positions depend on the arguments.
    pub const M: u16 = 1 << 5;
    /// Not allowed in scripts.
    pub const N: u16 = 1 << 6;
    /// May grow memory (refused by Redis under OOM).
    pub const D: u16 = 1 << 7;
}

/// Where the blocking timeout of a blocking command is, and in which unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// The last argument, in seconds (BLPOP, BRPOP, BLMOVE, BZPOPMIN, …).
    LastArgSecs,
    /// Argument N, in seconds (BLMPOP, BZMPOP).
    ArgSecs(u8),
    /// A `BLOCK <ms>` option; without it the command does not block (XREAD, XREADGROUP).
    BlockOption,
    /// Argument N, in milliseconds (WAIT).
    ArgMillis(u8),
}

/// How the healthy path routes a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Stateless: may share a pipelined upstream connection with other clients.
    Shared,
    /// Changes per-connection state (SELECT, AUTH, HELLO, MULTI, WATCH, …): from here on the
    /// client has a dedicated upstream connection.
    Pin,
    /// Blocks its connection: dedicated connection, timeout taken from the command itself.
    Blocking(Block),
    /// Turns the connection into a push stream (SUBSCRIBE, MONITOR): dedicated connection,
    /// replies relayed as they come.
    Stream,
    /// CLIENT: routed by subcommand, see [`client_route`].
    Client,
    /// Answered by respite itself (QUIT).
    Local,
    /// Never forwarded: replication handshakes would hijack a proxied connection.
    Refused,
}

/// One command's facts.
#[derive(Debug, Clone, Copy)]
pub struct CommandSpec {
    /// Upper-case name.
    pub name: &'static str,
    /// Redis arity: `n` exactly n arguments (name included), `-n` at least n.
    pub arity: i16,
    /// [`flags`] bits.
    pub flags: u16,
    /// Position of the first key (0: none), the last (negative: from the end), the step.
    pub first_key: i8,
    pub last_key: i8,
    pub step: i8,
    /// Routing class on the healthy path.
    pub route: Route,
}

pub(crate) const fn c(
    name: &'static str,
    arity: i16,
    flags: u16,
    first_key: i8,
    last_key: i8,
    step: i8,
    route: Route,
) -> CommandSpec {
    CommandSpec { name, arity, flags, first_key, last_key, step, route }
}

impl CommandSpec {
    /// Whether the command only reads data and may therefore be retried after an unknown outcome.
    pub fn is_read_only(&self) -> bool {
        self.flags & flags::R != 0 && self.flags & flags::B == 0
    }
    /// Whether the command writes.
    pub fn is_write(&self) -> bool {
        self.flags & flags::W != 0
    }
    /// Whether the command may change keys: writes, and scripts and functions (not flagged
    /// as writes: that depends on the script; they may write the keys they declare).
    pub fn may_write(&self) -> bool {
        self.is_write() || (self.flags & flags::M != 0 && matches!(self.name, "EVAL" | "EVALSHA" | "FCALL"))
    }
    /// Whether `argc` arguments (the name included) satisfy the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let a = self.arity as isize;
        if a >= 0 {
            argc as isize == a
        } else {
            argc as isize >= -a
        }
    }
    /// Key argument positions for commands whose keys are at fixed positions.
    pub fn key_positions(&self, argc: usize) -> impl Iterator<Item = usize> {
        let first = self.first_key as isize;
        let last = if self.last_key < 0 { argc as isize + self.last_key as isize } else { self.last_key as isize };
        let step = self.step.max(1) as usize;
        let range = if first <= 0 || last < first { 0..0 } else { first as usize..(last as usize + 1).min(argc) };
        range.step_by(step)
    }
}

/// Index of a command in [`TABLE`]; `TABLE.len()` stands for any unknown command.
pub type CommandId = usize;

/// The id used for commands not in the table.
pub fn other_id() -> CommandId {
    TABLE.len()
}

/// Longest command name (GEORADIUSBYMEMBER_RO has 20 bytes).
const MAX_NAME: usize = 24;

/// Commands bucketed by (name length, upper-cased first byte), each with its name packed
/// as below: a lookup compares one to three candidates, without copying or hashing.
fn buckets() -> &'static [Vec<(u64, CommandId)>] {
    static BUCKETS: OnceLock<Vec<Vec<(u64, CommandId)>>> = OnceLock::new();
    BUCKETS.get_or_init(|| {
        let mut b = vec![Vec::new(); (MAX_NAME + 1) * 64];
        for (id, c) in TABLE.iter().enumerate() {
            b[bucket(c.name.as_bytes())].push((pack(c.name.as_bytes()), id));
        }
        b
    })
}

fn bucket(name: &[u8]) -> usize {
    name.len() * 64 + (name[0].to_ascii_uppercase() & 63) as usize
}

/// A name's first eight bytes upper-cased into one word: names of up to eight bytes (GET,
/// SET, HGETALL...) are then told apart by one comparison.
#[inline]
fn pack(name: &[u8]) -> u64 {
    let mut w = 0u64;
    for (i, b) in name.iter().take(8).enumerate() {
        w |= (b.to_ascii_uppercase() as u64) << (8 * i);
    }
    w
}

/// Looks a command name up, case-insensitively, without allocating.
pub fn lookup(name: &[u8]) -> Option<(CommandId, &'static CommandSpec)> {
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    let packed = pack(name);
    buckets()[bucket(name)]
        .iter()
        .find(|&&(p, id)| {
            p == packed && (name.len() <= 8 || TABLE[id].name.as_bytes()[8..].eq_ignore_ascii_case(&name[8..]))
        })
        .map(|&(_, id)| (id, &TABLE[id]))
}

/// The metric label of a command id: the lower-case name, or `other`.
pub fn label(id: CommandId) -> String {
    TABLE.get(id).map(|c| c.name.to_ascii_lowercase()).unwrap_or_else(|| "other".to_string())
}

/// CLIENT subcommands that change the connection's state and therefore pin it. CLIENT ID
/// pins too: a client asking for its id means to use it (TRACKING REDIRECT, CLIENT KILL).
pub const CLIENT_PINNING: &[&str] =
    &["SETNAME", "SETINFO", "ID", "CACHING", "NO-EVICT", "NO-TOUCH", "GETREDIR", "TRACKINGINFO"];

/// CLIENT subcommands after which the upstream may push at any time: relayed as a stream.
pub const CLIENT_STREAMING: &[&str] = &["TRACKING"];

/// CLIENT subcommands respite refuses: `CLIENT REPLY OFF|SKIP` removes replies, which a
/// proxy that answers every request in order cannot honour.
pub const CLIENT_REFUSED: &[&str] = &["REPLY"];

/// Routing of `CLIENT <sub>`.
pub fn client_route(sub: &[u8]) -> Route {
    let is = |list: &[&str]| list.iter().any(|s| s.as_bytes().eq_ignore_ascii_case(sub));
    if is(CLIENT_REFUSED) {
        Route::Refused
    } else if is(CLIENT_STREAMING) {
        Route::Stream
    } else if is(CLIENT_PINNING) {
        Route::Pin
    } else {
        Route::Shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_found_by_its_name_in_any_case() {
        for (id, spec) in TABLE.iter().enumerate() {
            assert_eq!(lookup(spec.name.as_bytes()).map(|(i, _)| i), Some(id), "{}", spec.name);
            let lower = spec.name.to_ascii_lowercase();
            assert_eq!(lookup(lower.as_bytes()).map(|(i, _)| i), Some(id), "{}", spec.name);
        }
        // A name one byte away from a command's is another command or none.
        for spec in TABLE.iter() {
            for at in 0..spec.name.len() {
                for b in [b'#', b'\0', spec.name.as_bytes()[at] ^ 0x20 ^ 0x01] {
                    let mut near = spec.name.as_bytes().to_vec();
                    near[at] = b;
                    let found = lookup(&near).map(|(_, s)| s.name);
                    assert!(found.is_none_or(|n| n.as_bytes().eq_ignore_ascii_case(&near)), "{near:?} found {found:?}");
                }
            }
        }
        assert!(lookup(b"NOSUCHCOMMAND").is_none());
        assert!(lookup(&[b'A'; 40]).is_none());
        assert!(lookup(b"").is_none());
        assert!(lookup(b"\xff\x00").is_none());
        assert!(TABLE.iter().all(|c| c.name.len() <= MAX_NAME));
        assert_eq!(label(other_id()), "other");
        assert_eq!(label(lookup(b"get").unwrap().0), "get");
    }

    #[test]
    fn every_entry_is_consistent() {
        let mut names = std::collections::HashSet::new();
        for spec in TABLE.iter() {
            assert!(names.insert(spec.name), "duplicate {}", spec.name);
            assert_eq!(spec.name, spec.name.to_ascii_uppercase());
            assert!(spec.arity != 0, "{}", spec.name);
            assert!(!(spec.is_write() && spec.flags & flags::R != 0), "{} both read and write", spec.name);
            if spec.flags & flags::B != 0 {
                assert!(matches!(spec.route, Route::Blocking(_)), "{} blocks but is not routed as blocking", spec.name);
            }
            if let Route::Blocking(_) = spec.route {
                assert!(spec.flags & flags::B != 0 || matches!(spec.name, "WAIT" | "WAITAOF"), "{}", spec.name);
            }
            if spec.flags & flags::P != 0 && spec.name.contains("SUBSCRIBE") && !spec.name.contains("UNSUB") {
                assert_eq!(spec.route, Route::Stream, "{}", spec.name);
            }
            if spec.first_key > 0 {
                assert!(spec.step > 0, "{}", spec.name);
            }
        }
    }

    #[test]
    fn stateful_commands_never_share_a_connection() {
        for name in ["SELECT", "AUTH", "HELLO", "MULTI", "WATCH", "RESET", "READONLY", "READWRITE", "ASKING"] {
            assert_eq!(lookup(name.as_bytes()).unwrap().1.route, Route::Pin, "{name}");
        }
        for name in ["SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR"] {
            assert_eq!(lookup(name.as_bytes()).unwrap().1.route, Route::Stream, "{name}");
        }
        for (name, block) in [
            ("BLPOP", Block::LastArgSecs),
            ("BRPOP", Block::LastArgSecs),
            ("BLMOVE", Block::LastArgSecs),
            ("BRPOPLPUSH", Block::LastArgSecs),
            ("BZPOPMIN", Block::LastArgSecs),
            ("BZPOPMAX", Block::LastArgSecs),
            ("BLMPOP", Block::ArgSecs(1)),
            ("BZMPOP", Block::ArgSecs(1)),
            ("XREAD", Block::BlockOption),
            ("XREADGROUP", Block::BlockOption),
            ("WAIT", Block::ArgMillis(2)),
            ("WAITAOF", Block::ArgMillis(3)),
        ] {
            assert_eq!(lookup(name.as_bytes()).unwrap().1.route, Route::Blocking(block), "{name}");
        }
        assert_eq!(lookup(b"QUIT").unwrap().1.route, Route::Local);
        for name in ["SYNC", "PSYNC", "REPLCONF"] {
            assert_eq!(lookup(name.as_bytes()).unwrap().1.route, Route::Refused, "{name}");
        }
        assert_eq!(lookup(b"CLIENT").unwrap().1.route, Route::Client);
        for sub in CLIENT_PINNING {
            assert_eq!(client_route(sub.to_ascii_lowercase().as_bytes()), Route::Pin, "{sub}");
        }
        assert_eq!(client_route(b"reply"), Route::Refused);
        assert_eq!(client_route(b"tracking"), Route::Stream);
        for sub in ["GETNAME", "LIST", "INFO", "KILL", "PAUSE", "UNPAUSE", "NO-SUCH"] {
            assert_eq!(client_route(sub.as_bytes()), Route::Shared, "{sub}");
        }
    }

    #[test]
    fn key_positions_follow_first_last_step() {
        let (_, mset) = lookup(b"MSET").unwrap();
        assert_eq!(mset.key_positions(5).collect::<Vec<_>>(), vec![1, 3]);
        let (_, blpop) = lookup(b"BLPOP").unwrap();
        assert_eq!(blpop.key_positions(4).collect::<Vec<_>>(), vec![1, 2]);
        let (_, ping) = lookup(b"PING").unwrap();
        assert_eq!(ping.key_positions(1).count(), 0);
        assert!(lookup(b"GET").unwrap().1.arity_ok(2));
        assert!(!lookup(b"GET").unwrap().1.arity_ok(3));
        assert!(lookup(b"DEL").unwrap().1.arity_ok(9));
        assert!(!lookup(b"DEL").unwrap().1.arity_ok(1));
        assert!(lookup(b"GET").unwrap().1.is_read_only());
        assert!(!lookup(b"BLPOP").unwrap().1.is_read_only());
        assert!(!lookup(b"INCR").unwrap().1.is_read_only());
    }
}
