//! Outage mode: while the upstream is down (or the journal is still replaying), commands
//! are served from the local store and writes are journaled for replay.
//!
//! - [`commands`]: the table of what is served and how (data, one function per command).
//! - [`warm`]: keeping the store warm from healthy-path replies and writes.
//! - [`reply`]: encoding replies in the client's protocol.
//!
//! Every write takes the engine's lock (reads take it shared), is applied to the store, then appended to the
//! journal: store order equals journal order equals acceptance order. Relative expiries
//! are rewritten as absolute ones before journaling. Commands whose meaning depends on
//! state across all clients (locks, WATCH, scripts, blocking pops) are refused.

pub mod commands;
pub mod reply;
pub mod warm;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;
use smallvec::SmallVec;

use crate::command::CommandId;
use crate::command::{flags, CommandSpec};
use crate::health::{Health, State};
use crate::journal::{Journal, JournalError};
use crate::metrics::{Metrics, Outcome};
use crate::store::{Entry, KeyRef, Lookup, Now, Slot, Store, Value};
use commands::Kind;
use reply::Reply;

/// Why a command was not served locally.
#[derive(Debug)]
pub enum CmdErr {
    /// An error Redis itself would give (WRONGTYPE, not an integer, syntax).
    Redis(String),
    /// A key this sidecar never saw (the answer would be a guess).
    Miss,
    /// A conditional write, refused unless opted in.
    Conditional(&'static str),
    /// A form of a command that the local store does not serve.
    Unsupported(&'static str),
}

pub type Res = Result<(), CmdErr>;

/// What a command handler works with.
pub struct Cx<'a> {
    pub store: &'a Store,
    pub db: u32,
    pub args: &'a [&'a [u8]],
    /// Wall clock, unix ms (expiries), from `now`.
    pub now_ms: u64,
    pub now: Now,
    pub r: Reply<'a>,
    /// Journal these arguments instead of the request as received (absolute expiries).
    pub rewrite: Option<Vec<Vec<u8>>>,
    pub miss_nil: bool,
    pub allow_conditional: bool,
    /// Writes keep a value's `seen_at`: learning a write whose reply confirms only part of
    /// the value (a length, a count), which is no confirmation of the rest.
    pub keep_seen: bool,
    /// Keys written that were never seen (applied as if absent, SPEC §3.7).
    pub unseen: u32,
    /// Written keys (argument index) and their slots, to re-weigh once journaled.
    touched: SmallVec<[(usize, Arc<Slot>); 2]>,
    /// In a MULTI block: each written slot as it was before the block first changed it, to
    /// put back if a later command of the block is refused.
    undo: Option<Vec<Undo>>,
}

/// Why a command was not queued in an outage MULTI (either way the EXEC is aborted).
pub enum NotQueued {
    /// Not served during an outage: metric reason, message.
    Refused(&'static str, String),
    /// The error Redis gives when queuing it (wrong number of arguments).
    Redis(String),
}

/// A slot as it was before a MULTI block changed it.
struct Undo {
    key: crate::store::StoreKey,
    slot: Arc<Slot>,
    /// The slot was made by the block (the key was not in the store).
    created: bool,
    before: Entry,
}

impl<'a> Cx<'a> {
    fn key(&self, i: usize) -> KeyRef<'a> {
        KeyRef { db: self.db, key: self.args[i] }
    }

    /// Reads argument `i`'s key: a miss unless seen (or `[store] miss = "nil"`).
    pub fn read<T>(&mut self, i: usize, f: impl FnOnce(&Entry) -> Result<T, CmdErr>) -> Result<T, CmdErr> {
        match self.store.get(self.key(i), self.now) {
            Lookup::Found(slot) => {
                let e = slot.entry.lock();
                if e.guessed && !self.miss_nil {
                    // Built on a key never seen: still a miss (SPEC §3.7).
                    return Err(CmdErr::Miss);
                }
                f(&e)
            }
            Lookup::Unseen if self.miss_nil => f(&Entry {
                value: Value::Absent,
                expires_at_ms: None,
                ttl_known: true,
                seen_at: self.now.at,
                guessed: false,
            }),
            Lookup::Unseen => Err(CmdErr::Miss),
        }
    }

    /// Changes argument `i`'s key in place. `f` must not change anything when it fails.
    /// An unseen key starts as absent; an emptied collection becomes absent (as in Redis).
    pub fn write<T>(&mut self, i: usize, f: impl FnOnce(&mut Entry) -> Result<T, CmdErr>) -> Result<T, CmdErr> {
        let key = self.key(i);
        let (slot, created) = self.store.slot_for_write(key, self.now);
        if let Some(undo) = &mut self.undo {
            if !undo.iter().any(|u| Arc::ptr_eq(&u.slot, &slot)) {
                let before = slot.entry.lock().clone();
                undo.push(Undo { key: key.to_owned(), slot: slot.clone(), created, before });
            }
        }
        let result = {
            let mut e = slot.entry.lock();
            let r = f(&mut e);
            if r.is_ok() {
                if e.value.is_empty_collection() {
                    e.value = Value::Absent;
                    e.expires_at_ms = None;
                }
                if !self.keep_seen {
                    e.seen_at = self.now.at;
                }
            }
            r
        };
        match &result {
            Err(_) if created => self.store.invalidate(key),
            Err(_) => {}
            Ok(_) => {
                self.unseen += created as u32;
                self.touched.push((i, slot));
            }
        }
        result
    }
}

/// Outage-mode settings (`[store] miss` and `[outage]`); a configuration reload changes
/// them live ([`Outage::set_settings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Answer a never-seen key as absent (nil) instead of an error.
    pub miss_nil: bool,
    /// Serve SET NX/XX, SETNX, HSETNX, MSETNX from local state.
    pub allow_conditional: bool,
}

impl Settings {
    pub fn from_config(c: &crate::config::Config) -> Settings {
        Settings { miss_nil: c.store.miss == crate::config::Miss::Nil, allow_conditional: c.outage.allow_conditional }
    }

    fn bits(self) -> u8 {
        self.miss_nil as u8 | (self.allow_conditional as u8) << 1
    }

    fn from_bits(b: u8) -> Settings {
        Settings { miss_nil: b & 1 != 0, allow_conditional: b & 2 != 0 }
    }
}

/// The outage engine.
pub struct Outage {
    pub store: Store,
    /// Pub/sub between this sidecar's clients during an outage.
    pub broker: crate::pubsub::Broker,
    pub journal: Arc<dyn Journal>,
    /// Orders journal appends, and guards the keys they wrote that are not yet replayed.
    /// Reads hold it shared while they run, so with several worker threads a read sees a
    /// multi-key write (`MSET`, a `MULTI` block) whole or not at all, as in Redis.
    lock: RwLock<PendingKeys>,
    /// [`Settings`] as bits: read per command, swapped by a reload.
    settings: std::sync::atomic::AtomicU8,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The most a rewrite (`EX n` → `PXAT t`, `EXPIRE` → `PEXPIREAT`, `SETEX` → `SET … PXAT`)
/// can add to a command's journaled payload; 0 for commands journaled as received.
fn rewrite_room(name: &str, argc: usize) -> usize {
    match name {
        "SET" if argc > 3 => 64,
        "SETEX" | "PSETEX" | "GETEX" | "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => 64,
        _ => 0,
    }
}

/// Keys (hashes of database and key) with journaled writes not yet replayed, guarded by
/// the order lock. While the journal replays, a read the store cannot answer (a key never
/// seen, evicted, or only guessed) is forwarded only when its key is not in here: the
/// upstream has not applied the others' writes yet, and would answer a state older than
/// what this sidecar acknowledged (SPEC §3.8). Emptied when the journal is; it holds a
/// u64 per distinct key written during the outage (bounded by `journal.max_entries`).
#[derive(Default)]
pub struct PendingKeys(std::collections::HashSet<u64, std::hash::BuildHasherDefault<KeyHashed>>);

/// The set's hasher: the values are hashes already.
#[derive(Default)]
pub struct KeyHashed(u64);

impl std::hash::Hasher for KeyHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl PendingKeys {
    /// FxHash-style ([`crate::store::key_hash`]): SipHash cost an outage SET a tenth of
    /// its instructions, and a collision here only turns a forward into a miss.
    fn hash(db: u32, key: &[u8]) -> u64 {
        crate::store::key_hash(db, key)
    }

    fn add(&mut self, db: u32, key: &[u8]) {
        self.0.insert(Self::hash(db, key));
    }

    /// Whether any of `args` may be a key with a pending write (a collision, or an argument
    /// that is not a key, only makes a read a miss instead of forwarding it).
    fn any(&self, db: u32, args: &[&[u8]]) -> bool {
        !self.0.is_empty() && args.iter().any(|a| self.0.contains(&Self::hash(db, a)))
    }

    /// The journal is empty: nothing is pending.
    pub fn clear(&mut self) {
        self.0 = Default::default();
    }
}

/// The result of serving one command locally.
pub enum Served {
    /// Answered (reply appended); `seq`: the journal record to wait for before acknowledging.
    Done { outcome: Outcome, seq: Option<u64> },
    /// Outage mode ended before the write could be journaled: forward it instead.
    Forward,
}

/// A command queued inside MULTI during an outage.
pub struct Queued {
    pub spec: &'static CommandSpec,
    pub entry: &'static commands::OutageSpec,
    pub raw: Bytes,
    pub args: Vec<Bytes>,
}

impl Outage {
    pub fn new(
        store: Store,
        journal: Arc<dyn Journal>,
        settings: Settings,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Outage {
        let settings = std::sync::atomic::AtomicU8::new(settings.bits());
        Outage {
            store,
            journal,
            broker: Default::default(),
            lock: RwLock::new(PendingKeys::default()),
            settings,
            metrics,
            health,
        }
    }

    pub fn settings(&self) -> Settings {
        Settings::from_bits(self.settings.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Applies reloaded settings; commands served from now on use them.
    pub fn set_settings(&self, s: Settings) {
        self.settings.store(s.bits(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether commands are served locally now: the upstream is down, or the journal is
    /// not yet drained (new writes must queue behind it).
    #[inline]
    pub fn active(&self) -> bool {
        matches!(self.health.state(), State::Down | State::Replaying)
    }

    /// The circuit breaker (benches drive outage mode through it).
    pub fn health_for_bench(&self) -> &Health {
        &self.health
    }

    /// The lock that orders journal appends; the replayer takes it to end outage mode (and
    /// then empties the pending keys).
    pub fn lock(&self) -> parking_lot::RwLockWriteGuard<'_, PendingKeys> {
        self.lock.write()
    }

    /// Why a command is refused during an outage, if it is (metric label, client message).
    /// `name` is the command as the client sent it (used when the table does not know it).
    pub fn refusal(spec: Option<&CommandSpec>, name: &[u8]) -> Option<(&'static str, String)> {
        let Some(spec) = spec else {
            let shown: String = String::from_utf8_lossy(&name[..name.len().min(64)])
                .chars()
                .map(|c| if c.is_control() { '?' } else { c.to_ascii_uppercase() })
                .collect();
            return Some(("unsupported", format!("UNAVAILABLE upstream down: {shown} is not served during an outage")));
        };
        let name = spec.name;
        let (reason, why) = match name {
            "WATCH" => ("coordination", "WATCH needs the upstream's view of all clients"),
            "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" | "SCRIPT" | "FUNCTION" => {
                ("script", "scripts and functions run on the upstream")
            }
            _ if spec.flags & flags::B != 0 => ("blocking", "blocking commands wait on other clients' writes"),
            _ => match commands::lookup(name) {
                Some(_) => return None,
                None => ("unsupported", "it is not served during an outage"),
            },
        };
        Some((reason, format!("UNAVAILABLE upstream down: {name} is not served during an outage ({why})")))
    }

    /// Serves one command from the store (and the journal, for a write).
    #[allow(clippy::too_many_arguments)]
    pub fn execute(
        &self,
        db: u32,
        resp3: bool,
        id: CommandId,
        spec: Option<&'static CommandSpec>,
        args: &[&[u8]],
        raw: &[u8],
        now: Now,
        out: &mut BytesMut,
    ) -> Served {
        // Served commands are found by id; only the others need a refusal worked out.
        let (Some(spec), Some(entry)) = (spec, commands::by_id(id)) else {
            let (reason, msg) = Self::refusal(spec, args[0])
                .unwrap_or(("unsupported", "UNAVAILABLE upstream down: not served during an outage".into()));
            return self.refuse(out, reason, &msg);
        };
        if !spec.arity_ok(args.len()) {
            crate::error::write_error_line(out, &crate::error::wrong_arity(spec.name));
            return Served::Done { outcome: Outcome::Error, seq: None };
        }
        if entry.kind == Kind::Conditional && !self.settings().allow_conditional {
            return self.refuse(out, "coordination", &conditional_message(spec.name));
        }
        let writes = matches!(entry.kind, Kind::Write | Kind::Conditional);
        if !writes {
            let mark = out.len();
            let pending = self.lock.read();
            let mut cx = self.cx(db, resp3, args, out, now);
            let result = (entry.run)(&mut cx);
            // While replaying, the upstream knows a key with no pending write.
            if matches!(result, Err(CmdErr::Miss))
                && self.health.state() == State::Replaying
                && !pending.any(db, &args[1..])
            {
                out.truncate(mark);
                return Served::Forward;
            }
            return self.finish_read(result, spec.name, out);
        }
        let mut pending = self.lock.write();
        if !self.active() {
            return Served::Forward;
        }
        // Room for the payload as appended: relative expiries are rewritten as absolute
        // ones, a few bytes longer (a failed append after the store changed would have to
        // forget keys that hold acknowledged writes).
        if !self.journal.has_room(raw.len() + rewrite_room(spec.name, args.len())) {
            return self.journal_full(out, None);
        }
        let mark = out.len();
        let mut cx = self.cx(db, resp3, args, out, now);
        let now_ms = cx.now_ms;
        let result = (entry.run)(&mut cx);
        let (rewrite, touched, unseen) = (cx.rewrite.take(), std::mem::take(&mut cx.touched), cx.unseen);
        if let Err(e) = result {
            return self.finish_read(Err(e), spec.name, out);
        }
        let encoded;
        let payload: &[u8] = match rewrite {
            Some(a) => {
                encoded = encode(&a);
                &encoded
            }
            None => raw,
        };
        match self.journal.append(db, 1, payload, now_ms) {
            Ok(seq) => {
                self.after_write(
                    &mut pending,
                    touched.iter().map(|(i, slot)| (KeyRef { db, key: args[*i] }, slot)),
                    unseen,
                );
                Served::Done { outcome: Outcome::Local, seq: Some(seq) }
            }
            Err(e) => {
                // Not journaled, so not acknowledged: forget what was applied locally.
                for (i, _) in &touched {
                    self.store.invalidate(KeyRef { db, key: args[*i] });
                }
                out.truncate(mark);
                self.journal_full(out, Some(e))
            }
        }
    }

    /// Runs a MULTI/EXEC block as one atomic journal record.
    pub fn execute_block(&self, db: u32, resp3: bool, block: &[Queued], out: &mut BytesMut) -> Served {
        let mut pending = self.lock.write();
        if !self.active() {
            return Served::Forward;
        }
        let total: usize = block.iter().map(|q| q.raw.len()).sum();
        let room: usize = block.iter().map(|q| rewrite_room(q.spec.name, q.args.len())).sum();
        if !self.journal.has_room(total + room) {
            return self.journal_full(out, None);
        }
        let mut replies = BytesMut::new();
        let mut payload = BytesMut::new();
        let mut writes = 0u32;
        let mut touched_all = Vec::new();
        let mut unseen_all = 0;
        let mut undo = Vec::new();
        let now = Now::current();
        let now_ms = now.ms;
        for q in block {
            let args: SmallVec<[&[u8]; 8]> = q.args.iter().map(|a| &a[..]).collect();
            let entry = q.entry;
            if !q.spec.arity_ok(args.len()) {
                // Refused when queued (EXECABORT); never run a handler past its arguments.
                crate::error::write_error_line(&mut replies, &crate::error::wrong_arity(q.spec.name));
                continue;
            }
            let mut cx = self.cx(db, resp3, &args, &mut replies, now);
            cx.undo = Some(std::mem::take(&mut undo));
            let result = (entry.run)(&mut cx);
            let (rewrite, touched, unseen) = (cx.rewrite.take(), std::mem::take(&mut cx.touched), cx.unseen);
            undo = cx.undo.take().unwrap_or_default();
            match result {
                Ok(()) if matches!(entry.kind, Kind::Write | Kind::Conditional) => {
                    writes += 1;
                    match rewrite {
                        Some(a) => payload.extend_from_slice(&encode(&a)),
                        None => payload.extend_from_slice(&q.raw),
                    }
                    touched_all
                        .extend(touched.into_iter().map(|(i, slot)| (KeyRef { db, key: args[i] }.to_owned(), slot)));
                    unseen_all += unseen;
                }
                Ok(()) => {}
                // As in Redis, an error inside EXEC does not stop the other commands.
                Err(CmdErr::Redis(msg)) => crate::error::write_error_line(&mut replies, &msg),
                // A command the outage cannot serve in this form (found only when it runs:
                // a miss, SET NX, ZADD GT, ...): Redis would have run the whole block, so
                // none of it runs here. What the commands before it changed is put back.
                Err(refused) => {
                    for u in undo.into_iter().rev() {
                        if u.created {
                            self.store.invalidate(u.key.as_ref());
                        } else {
                            *u.slot.entry.lock() = u.before;
                            self.store.reweigh(u.key.as_ref(), &u.slot);
                        }
                    }
                    let mut why = BytesMut::new();
                    self.finish_read(Err(refused), q.spec.name, &mut why);
                    let why = String::from_utf8_lossy(&why);
                    let why = why.trim_end().trim_start_matches('-');
                    crate::error::write_error_line(out, &format!("EXECABORT Transaction discarded: {why}"));
                    return Served::Done { outcome: Outcome::Refused, seq: None };
                }
            }
        }
        let seq = if writes > 0 {
            match self.journal.append(db, writes, &payload, now_ms) {
                Ok(seq) => Some(seq),
                Err(e) => {
                    for (k, _) in &touched_all {
                        self.store.invalidate(k.as_ref());
                    }
                    return self.journal_full(out, Some(e));
                }
            }
        } else {
            None
        };
        self.after_write(&mut pending, touched_all.iter().map(|(k, slot)| (k.as_ref(), slot)), unseen_all);
        let mut r = Reply { out, resp3 };
        r.array(block.len());
        out.extend_from_slice(&replies);
        Served::Done { outcome: Outcome::Local, seq }
    }

    /// At start: applies the journal's records (writes accepted before a restart, not yet
    /// replayed) to the empty local store, without journaling them again, so reads of keys
    /// with pending writes are served locally until the replay is done (SPEC §3.8). Keys
    /// never seen start as absent, as for any outage write. Returns the records applied.
    pub fn restore(&self) -> usize {
        let records = self.journal.read_after(0, usize::MAX, usize::MAX);
        let mut pending = self.lock.write();
        let limits = crate::resp::Limits {
            max_bulk: usize::MAX >> 1,
            max_array: usize::MAX >> 1,
            max_inline: 0,
            unauthenticated: false,
        };
        let mut applied = 0;
        for r in &records {
            let mut parser = crate::resp::RequestParser::default();
            let mut pos = 0;
            while pos < r.payload.len() {
                let mut args_at = Vec::new();
                let mut enc = BytesMut::new();
                let Ok(crate::resp::Parsed::Request { len }) =
                    parser.parse(&r.payload[pos..], &limits, &mut args_at, &mut enc)
                else {
                    break;
                };
                let base = &r.payload[pos..pos + len];
                let args: SmallVec<[&[u8]; 8]> =
                    args_at.iter().map(|&(s, l)| &base[s as usize..(s + l) as usize]).collect();
                pos += len;
                let Some((id, _)) = args.first().and_then(|n| crate::command::lookup(n)) else { continue };
                let Some(entry) = commands::by_id(id) else { continue };
                let mut sink = BytesMut::new();
                let mut cx = self.cx(r.db, false, &args, &mut sink, Now::current());
                cx.allow_conditional = true;
                cx.miss_nil = true;
                if (entry.run)(&mut cx).is_ok() {
                    let touched = std::mem::take(&mut cx.touched);
                    for (i, slot) in &touched {
                        self.store.reweigh(KeyRef { db: r.db, key: args[*i] }, slot);
                        pending.add(r.db, args[*i]);
                    }
                }
            }
            applied += 1;
        }
        applied
    }

    /// Whether a command may be queued in an outage MULTI (an error now aborts the EXEC).
    pub fn queueable(
        &self,
        id: CommandId,
        spec: Option<&'static CommandSpec>,
        args: &[&[u8]],
    ) -> Result<&'static commands::OutageSpec, NotQueued> {
        if let Some((reason, msg)) = Self::refusal(spec, args[0]) {
            return Err(NotQueued::Refused(reason, msg));
        }
        let spec = spec.expect("checked");
        if !spec.arity_ok(args.len()) {
            return Err(NotQueued::Redis(crate::error::wrong_arity(spec.name)));
        }
        let entry = commands::by_id(id).expect("refusal() checked the table");
        match entry.kind {
            Kind::Conditional if !self.settings().allow_conditional => {
                Err(NotQueued::Refused("coordination", conditional_message(spec.name)))
            }
            _ => Ok(entry),
        }
    }

    fn cx<'a>(&'a self, db: u32, resp3: bool, args: &'a [&'a [u8]], out: &'a mut BytesMut, now: Now) -> Cx<'a> {
        let settings = self.settings();
        Cx {
            store: &self.store,
            db,
            args,
            now_ms: now.ms,
            now,
            r: Reply { out, resp3 },
            rewrite: None,
            miss_nil: settings.miss_nil,
            allow_conditional: settings.allow_conditional,
            keep_seen: false,
            unseen: 0,
            touched: SmallVec::new(),
            undo: None,
        }
    }

    fn after_write<'k>(
        &self,
        pending: &mut PendingKeys,
        touched: impl Iterator<Item = (KeyRef<'k>, &'k Arc<Slot>)>,
        unseen: u32,
    ) {
        for (k, slot) in touched {
            self.store.reweigh(k, slot);
            self.store.changes.changed(k);
            pending.add(k.db, k.key);
        }
        if unseen > 0 {
            self.metrics.store_unseen_writes.inc_by(unseen as u64);
        }
        self.metrics.journal_appends.inc();
        self.health.journal_written();
    }

    fn finish_read(&self, result: Res, name: &str, out: &mut BytesMut) -> Served {
        match result {
            Ok(()) => Served::Done { outcome: Outcome::Local, seq: None },
            Err(CmdErr::Redis(msg)) => {
                crate::error::write_error_line(out, &msg);
                Served::Done { outcome: Outcome::Error, seq: None }
            }
            Err(CmdErr::Miss) => self.refuse(
                out,
                "miss",
                &format!(
                    "UNAVAILABLE upstream down: {name} needs a key this sidecar has not seen (set [store] miss = \"nil\" to answer nil)"
                ),
            ),
            Err(CmdErr::Conditional(what)) => self.refuse(out, "coordination", &conditional_message(what)),
            Err(CmdErr::Unsupported(what)) => {
                self.refuse(out, "unsupported", &format!("UNAVAILABLE upstream down: {what} is not served during an outage"))
            }
        }
    }

    fn refuse(&self, out: &mut BytesMut, reason: &'static str, msg: &str) -> Served {
        self.write_refusal(out, reason, msg);
        Served::Done { outcome: Outcome::Refused, seq: None }
    }

    /// Counts a refusal by `reason` and writes its error, followed by why and since when
    /// the upstream is down ([`Health::down_context`]).
    pub fn write_refusal(&self, out: &mut BytesMut, reason: &'static str, msg: &str) {
        self.metrics.outage_refused.with_label_values(&[reason]).inc();
        crate::error::write_error_line(out, &format!("{msg} {}", self.health.down_context()));
    }

    fn journal_full(&self, out: &mut BytesMut, e: Option<JournalError>) -> Served {
        self.metrics.outage_refused.with_label_values(&["journal_full"]).inc();
        let why = match e {
            Some(e) => e.to_string(),
            None => {
                let s = self.journal.stats();
                JournalError::Full { entries: s.entries, bytes: s.bytes }.to_string()
            }
        };
        crate::error::write_error_line(out, &format!("OOM respite: {why}"));
        Served::Done { outcome: Outcome::Refused, seq: None }
    }
}

fn conditional_message(what: &str) -> String {
    format!(
        "UNAVAILABLE upstream down: {what} depends on the upstream's current state and is refused during an outage \
         (a lock taken from a sidecar's memory is one two pods can both hold; opt in with [outage] allow_conditional = true)"
    )
}

/// Encodes arguments as a RESP command.
pub fn encode(args: &[Vec<u8>]) -> Bytes {
    let mut out = BytesMut::new();
    let refs: SmallVec<[&[u8]; 8]> = args.iter().map(|a| &a[..]).collect();
    crate::upstream::encode_command(&mut out, &refs);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::PendingKeys;

    #[test]
    fn pending_keys_are_told_apart_by_database_key_and_length() {
        let mut p = PendingKeys::default();
        assert!(!p.any(0, &[b"k"]));
        p.add(0, b"counter:1");
        p.add(3, b"a");
        assert!(p.any(0, &[b"x", b"counter:1"]));
        assert!(p.any(3, &[b"a"]));
        for (db, key) in
            [(1, &b"counter:1"[..]), (0, b"counter:2"), (0, b"a"), (3, b"a\0"), (3, b""), (0, b"counter:1\0")]
        {
            assert!(!p.any(db, &[key]), "db {db} {key:?}");
        }
        // Long keys: every 8-byte step counts.
        let long = b"user:0000000000000000:profile".to_vec();
        let mut other = long.clone();
        other[12] = b'1';
        p.add(0, &long);
        assert!(p.any(0, &[&long[..]]) && !p.any(0, &[&other[..]]));
        p.clear();
        assert!(!p.any(0, &[b"counter:1"]));
    }
}
