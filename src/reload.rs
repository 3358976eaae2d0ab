//! Configuration reload at run time (SIGHUP): which settings change live, how the running
//! code reads them, and the one log line that says what changed.
//!
//! Decisions:
//!
//! - **What reloads live.** `[client]` limits and timeouts (`max_connections`,
//!   `max_bulk_bytes`, `max_array_len`, `max_query_buffer`, `max_pipeline`, `idle_timeout`,
//!   `output_buffer_limit`, `write_timeout`), `[upstream]` `command_timeout`,
//!   `blocking_margin`, `max_retries`, `retry_backoff_base`/`_max`, all of `[health]`,
//!   `[store] miss`, `[outage] allow_conditional`, `admin.token`, `log.level` and
//!   `shutdown.grace_period`. These are values read per round,
//!   per request or per event; a new one takes effect at the next read, and nothing in
//!   flight is interrupted. Everything else needs a restart (see [`is_live`]): listen
//!   addresses, the upstream URL, credentials, TLS and `pool_size` (open connections and
//!   sockets carry them), `[client]` authentication, `[store]` sizes, `[journal]`,
//!   `log.format`, `[runtime]`.
//! - **How it is read.** The live values sit in one immutable [`LiveSettings`] behind an
//!   `ArcSwap` ([`Live`]). A reload builds a new one and swaps it in; readers never lock. A
//!   client session keeps a snapshot and [`Live::refresh`]es it once per round (one atomic
//!   load; the refcount is touched only after a reload), so one round never mixes old and
//!   new values. An idle session picks up a new `idle_timeout` at its next round. The shared
//!   upstream connections read `command_timeout` once per write, the accept loop
//!   `max_connections` once per connection, the admin endpoint the token once per request.
//!   `[health]` lives in [`Health`](crate::health::Health) itself (atomics), which the probe
//!   and the breaker already read; the outage settings sit in the outage engine as atomic
//!   bits read per command. The journal replayer reads `command_timeout` per transaction.
//! - **Where it comes from.** The binary, on SIGHUP, loads the configuration again exactly
//!   as at start (same file, same flags, same environment, same precedence) and sends the
//!   result through [`Reloads::requests`]; tests can send a [`Config`] directly.
//! - **All or nothing.** A configuration that does not load or validate is rejected as a
//!   whole with one error line naming the key, the (redacted) value and why; the running
//!   settings stay.
//! - **What is logged.** One info line listing every live setting that changed, as
//!   `key: old -> new`, and one warning listing the restart-only keys whose new value differs
//!   from the running one (repeated on each reload until a restart). Secrets show as
//!   `key: <changed>`; the upstream URL shows without its password.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::Ctx;
use crate::config::{redact_url, Config, ConfigError, Validated};
use crate::resp::Limits;

/// The settings that may change while respite runs, as the running code reads them.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// `client.max_connections`.
    pub max_connections: usize,
    /// `client.max_bulk_bytes` and `client.max_array_len`.
    pub limits: Limits,
    /// `client.max_query_buffer`.
    pub max_query_buffer: usize,
    /// `client.max_pipeline`.
    pub max_pipeline: usize,
    /// `client.idle_timeout` (zero: never).
    pub idle_timeout: Duration,
    /// `client.output_buffer_limit` (0: no limit).
    pub output_buffer_limit: u64,
    /// `client.write_timeout` (zero: never).
    pub write_timeout: Duration,
    /// `upstream.command_timeout`.
    pub command_timeout: Duration,
    /// `upstream.blocking_margin`.
    pub blocking_margin: Duration,
    /// `upstream.max_retries`.
    pub max_retries: u32,
    /// `upstream.retry_backoff_base` and `upstream.retry_backoff_max`.
    pub retry_backoff_base: Duration,
    pub retry_backoff_max: Duration,
    /// `admin.token` (empty: drills disabled). Secret.
    pub admin_token: String,
    /// `shutdown.grace_period`.
    pub grace_period: Duration,
}

impl LiveSettings {
    pub fn from_config(c: &Config) -> LiveSettings {
        let size = |v: u64| v.min(usize::MAX as u64) as usize;
        LiveSettings {
            max_connections: c.client.max_connections,
            limits: Limits {
                max_bulk: size(c.client.max_bulk_bytes.0),
                max_array: c.client.max_array_len,
                ..Limits::default()
            },
            max_query_buffer: size(c.client.max_query_buffer.0),
            max_pipeline: c.client.max_pipeline,
            idle_timeout: c.client.idle_timeout.0,
            output_buffer_limit: c.client.output_buffer_limit.0,
            write_timeout: c.client.write_timeout.0,
            command_timeout: c.upstream.command_timeout.0,
            blocking_margin: c.upstream.blocking_margin.0,
            max_retries: c.upstream.max_retries,
            retry_backoff_base: c.upstream.retry_backoff_base.0,
            retry_backoff_max: c.upstream.retry_backoff_max.0,
            admin_token: c.admin.token.clone(),
            grace_period: c.shutdown.grace_period.0,
        }
    }
}

/// The current [`LiveSettings`], replaced as a whole by a reload.
pub struct Live {
    current: ArcSwap<LiveSettings>,
}

impl Live {
    pub fn new(settings: LiveSettings) -> Live {
        Live { current: ArcSwap::from_pointee(settings) }
    }

    /// The current settings, for a single read (a guard: do not hold it across `.await`).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<LiveSettings>> {
        self.current.load()
    }

    /// The current settings, to keep.
    pub fn load_full(&self) -> Arc<LiveSettings> {
        self.current.load_full()
    }

    /// Brings a kept snapshot up to date: one atomic load when nothing changed.
    #[inline]
    pub fn refresh(&self, snapshot: &mut Arc<LiveSettings>) {
        let current = self.current.load();
        if !Arc::ptr_eq(&current, snapshot) {
            *snapshot = arc_swap::Guard::into_inner(current);
        }
    }

    fn store(&self, settings: LiveSettings) {
        self.current.store(Arc::new(settings));
    }
}

/// Applies a new `log.level` (a `tracing` filter) to the running logger.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// How a running respite is asked to reload its configuration.
pub struct Reloads {
    /// Each message is the configuration loaded again (file, flags and environment, not yet
    /// validated), or why it could not be loaded.
    pub requests: mpsc::Receiver<Result<Config, ConfigError>>,
    /// Changes the log filter; `None`: `log.level` needs a restart.
    pub set_log_level: Option<SetLogLevel>,
}

impl Reloads {
    /// No reloads: a channel nobody sends on (what [`crate::run`] uses).
    pub fn none() -> Reloads {
        let (_, requests) = mpsc::channel(1);
        Reloads { requests, set_log_level: None }
    }
}

/// The keys whose new value takes effect without a restart (`log.level` only when the
/// logger can be changed: see [`Reloads::set_log_level`]).
pub const LIVE_KEYS: &[&str] = &[
    "client.max_connections",
    "client.max_bulk_bytes",
    "client.max_array_len",
    "client.max_query_buffer",
    "client.max_pipeline",
    "client.idle_timeout",
    "client.output_buffer_limit",
    "client.write_timeout",
    "upstream.command_timeout",
    "upstream.blocking_margin",
    "upstream.max_retries",
    "upstream.retry_backoff_base",
    "upstream.retry_backoff_max",
    "health.probe_interval",
    "health.probe_timeout",
    "health.down_after_failures",
    "health.degraded_latency",
    "store.miss",
    "outage.allow_conditional",
    "admin.token",
    "log.level",
    "shutdown.grace_period",
];

/// Keys whose values are never shown, only that they changed.
const SECRET_KEYS: &[&str] = &["client.requirepass", "client.users", "admin.token"];

/// Whether a changed `key` takes effect without a restart.
pub fn is_live(key: &str) -> bool {
    LIVE_KEYS.contains(&key)
}

/// One changed key, printable without secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    /// `None` for a secret: only the fact that it changed is shown.
    pub values: Option<(String, String)>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.values {
            Some((old, new)) => write!(f, "{}: {old} -> {new}", self.key),
            None => write!(f, "{}: <changed>", self.key),
        }
    }
}

/// What a reload changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Live settings that differ from the ones in effect: applied now.
    pub live: Vec<Change>,
    /// Restart-only settings that differ from the ones the process started with.
    pub restart: Vec<Change>,
}

/// Compares a newly loaded configuration with the one in effect. `started`: what the
/// process started with (restart-only keys still have these values); `current`: the last
/// configuration applied (live keys have these values); `log_level_live`: whether
/// `log.level` can change without a restart.
pub fn diff(started: &Validated, current: &Config, new: &Validated, log_level_live: bool) -> Changes {
    let (started_keys, current_keys, new_keys) = (flatten(&started.raw), flatten(current), flatten(&new.raw));
    let mut keys: Vec<&String> = started_keys.keys().chain(current_keys.keys()).chain(new_keys.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut changes = Changes::default();
    for key in keys {
        let live = is_live(key) && (key != "log.level" || log_level_live);
        let before = if live { &current_keys } else { &started_keys };
        let (old, new) = (before.get(key), new_keys.get(key));
        if old == new {
            continue;
        }
        let change = Change { key: key.clone(), values: shown(key, old, new) };
        if live {
            changes.live.push(change);
        } else {
            changes.restart.push(change);
        }
    }
    // A password file read again may hold a new password under the same path.
    let password_changed = started.upstream.password != new.upstream.password;
    let named = |k: &str| changes.restart.iter().any(|c| c.key == k);
    if password_changed && !named("upstream.url") && !named("upstream.password_file") {
        changes.restart.push(Change { key: "upstream.password_file".into(), values: None });
    }
    changes
}

/// Every leaf of the configuration by dotted key (`upstream.tls.ca_file`); arrays are leaves.
fn flatten(cfg: &Config) -> BTreeMap<String, toml::Value> {
    fn walk(prefix: &str, v: toml::Value, out: &mut BTreeMap<String, toml::Value>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            leaf => {
                out.insert(prefix.to_string(), leaf);
            }
        }
    }
    let mut out = BTreeMap::new();
    // Serialising plain data cannot fail; an empty map would only make a reload report nothing.
    if let Ok(v) = toml::Value::try_from(cfg) {
        walk("", v, &mut out);
    }
    out
}

/// The old and new values as shown in the log, or `None` when they must stay hidden.
fn shown(key: &str, old: Option<&toml::Value>, new: Option<&toml::Value>) -> Option<(String, String)> {
    if SECRET_KEYS.contains(&key) {
        return None;
    }
    let text = |v: Option<&toml::Value>| match v {
        None => "(unset)".to_string(),
        Some(toml::Value::String(s)) if s.is_empty() => "\"\"".to_string(),
        Some(toml::Value::String(s)) if key == "upstream.url" => redact_url(s),
        Some(toml::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let (old, new) = (text(old), text(new));
    // Only the URL's password changed: the redacted forms are equal.
    (old != new).then_some((old, new))
}

/// Joins changes for one log field: `a: 1s -> 2s, b: <changed>`.
fn join(changes: &[Change]) -> String {
    changes.iter().map(Change::to_string).collect::<Vec<_>>().join(", ")
}

/// Serves reload requests until `cancel`: validates each, applies the live settings and
/// logs what changed, or logs why it was rejected.
pub async fn serve(mut reloads: Reloads, ctx: Arc<Ctx>, cancel: CancellationToken) {
    let mut current = ctx.cfg.raw.clone();
    loop {
        let loaded = tokio::select! {
            r = reloads.requests.recv() => match r {
                Some(r) => r,
                None => return,
            },
            _ = cancel.cancelled() => return,
        };
        let validated = loaded.and_then(|c| c.validate());
        match validated {
            Ok(new) => {
                apply(&ctx, &current, &new, reloads.set_log_level.as_ref());
                current = new.raw;
            }
            Err(e) => {
                tracing::error!(
                    error = e.one_line().as_str(),
                    "configuration reload rejected; the running settings stay"
                )
            }
        }
    }
}

/// Applies a validated configuration's live settings and logs what changed.
fn apply(ctx: &Ctx, current: &Config, new: &Validated, set_log_level: Option<&SetLogLevel>) {
    let changes = diff(&ctx.cfg, current, new, set_log_level.is_some());
    if !changes.live.is_empty() {
        ctx.live.store(LiveSettings::from_config(&new.raw));
        ctx.health.set_config(&new.raw.health);
        ctx.outage.set_settings(crate::outage::Settings::from_config(&new.raw));
    }
    let level_changed = changes.live.iter().any(|c| c.key == "log.level");
    // Log under whichever filter shows the line: the old one if it does, else the new one.
    let log_first = tracing::enabled!(tracing::Level::INFO);
    if log_first || !level_changed {
        report(&changes);
    }
    if let (true, Some(set)) = (level_changed, set_log_level) {
        if let Err(e) = set(&new.raw.log.level) {
            tracing::error!(log.level = %new.raw.log.level, error = %e, "cannot change the log level");
        }
        if !log_first {
            report(&changes);
        }
    }
}

fn report(changes: &Changes) {
    if changes.live.is_empty() {
        tracing::info!("configuration reloaded; no live setting changed");
    } else {
        tracing::info!(changed = join(&changes.live).as_str(), "configuration reloaded");
    }
    if !changes.restart.is_empty() {
        tracing::warn!(
            restart_needed = join(&changes.restart).as_str(),
            "configuration reloaded, but these settings take effect only after a restart"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn validated(c: &Config) -> Validated {
        c.validate().expect("valid")
    }

    fn keys(changes: &[Change]) -> Vec<&str> {
        changes.iter().map(|c| c.key.as_str()).collect()
    }

    #[test]
    fn nothing_changed_reports_nothing() {
        let c = Config::default();
        assert_eq!(diff(&validated(&c), &c, &validated(&c), true), Changes::default());
    }

    #[test]
    fn live_and_restart_only_keys_are_told_apart() {
        let old = Config::default();
        let mut new = old.clone();
        new.upstream.command_timeout = Dur::secs(2);
        new.client.idle_timeout = Dur::ms(300);
        new.log.level = "debug".into();
        new.client.listen = "127.0.0.1:7001".into();
        new.upstream.pool_size = 4;
        let d = diff(&validated(&old), &old, &validated(&new), true);
        assert_eq!(keys(&d.live), ["client.idle_timeout", "log.level", "upstream.command_timeout"]);
        assert_eq!(keys(&d.restart), ["client.listen", "upstream.pool_size"]);
        assert_eq!(
            join(&d.live),
            "client.idle_timeout: 0s -> 300ms, log.level: info -> debug, upstream.command_timeout: 1s -> 2s"
        );
        assert_eq!(join(&d.restart), "client.listen: 127.0.0.1:6380 -> 127.0.0.1:7001, upstream.pool_size: 2 -> 4");
    }

    #[test]
    fn log_level_needs_a_restart_when_the_logger_cannot_change() {
        let old = Config::default();
        let mut new = old.clone();
        new.log.level = "debug".into();
        let d = diff(&validated(&old), &old, &validated(&new), false);
        assert!(d.live.is_empty());
        assert_eq!(join(&d.restart), "log.level: info -> debug");
    }

    #[test]
    fn live_keys_compare_with_the_last_reload_and_restart_keys_with_the_start() {
        let started = Config::default();
        let mut current = started.clone();
        current.upstream.command_timeout = Dur::secs(2);
        current.client.listen = "127.0.0.1:7001".into();
        // Reloading the same file again: the live change is in effect, the listener is not.
        let d = diff(&validated(&started), &current, &validated(&current), true);
        assert!(d.live.is_empty(), "{d:?}");
        assert_eq!(keys(&d.restart), ["client.listen"]);
    }

    #[test]
    fn secrets_are_never_shown() {
        let mut old = Config::default();
        old.admin.token = "hunter1".into();
        old.client.requirepass = "hunter2".into();
        old.upstream.url = "redis://u:hunter3@127.0.0.1:7000".into();
        let mut new = old.clone();
        new.admin.token = "hunter4".into();
        new.client.requirepass = "hunter5".into();
        new.upstream.url = "redis://u:hunter6@127.0.0.1:7000".into();
        let d = diff(&validated(&old), &old, &validated(&new), true);
        assert_eq!(join(&d.live), "admin.token: <changed>");
        assert_eq!(join(&d.restart), "client.requirepass: <changed>, upstream.url: <changed>");
        // The host may be shown, the password not.
        new.upstream.url = "redis://u:hunter6@127.0.0.1:7002".into();
        let d = diff(&validated(&old), &old, &validated(&new), true);
        let shown = join(&d.restart);
        assert!(
            shown.contains("upstream.url: redis://u:<redacted>@127.0.0.1:7000 -> redis://u:<redacted>@127.0.0.1:7002")
        );
        for s in ["hunter1", "hunter2", "hunter3", "hunter4", "hunter5", "hunter6"] {
            assert!(!format!("{d:?}{}", join(&d.live)).contains(s), "{s}");
            assert!(!shown.contains(s), "{s}");
        }
    }

    #[test]
    fn a_new_password_in_the_same_password_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "hunter1\n").unwrap();
        let mut c = Config::default();
        c.upstream.password_file = Some(file.clone());
        let started = validated(&c);
        std::fs::write(&file, "hunter2\n").unwrap();
        let d = diff(&started, &c, &validated(&c), true);
        assert_eq!(join(&d.restart), "upstream.password_file: <changed>");
    }

    #[test]
    fn every_live_key_names_a_key_of_the_configuration() {
        let all = flatten(&Config::default());
        for k in LIVE_KEYS {
            assert!(all.contains_key(*k), "{k} is not a configuration key");
        }
        for k in SECRET_KEYS {
            assert!(all.contains_key(*k), "{k} is not a configuration key");
        }
    }

    #[test]
    fn live_settings_carry_the_configured_values() {
        let mut c = Config::default();
        c.client.max_bulk_bytes = crate::config::Size(1 << 20);
        c.client.max_pipeline = 7;
        c.upstream.retry_backoff_max = Dur::ms(900);
        c.admin.token = "t".into();
        let s = LiveSettings::from_config(&c);
        assert_eq!((s.limits.max_bulk, s.max_pipeline), (1 << 20, 7));
        assert_eq!(s.limits.max_inline, Limits::default().max_inline);
        assert_eq!((s.retry_backoff_max, s.admin_token.as_str()), (Duration::from_millis(900), "t"));
    }

    #[test]
    fn a_snapshot_follows_a_swap() {
        let live = Live::new(LiveSettings::from_config(&Config::default()));
        let mut snap = live.load_full();
        let before = snap.clone();
        live.refresh(&mut snap);
        assert!(Arc::ptr_eq(&snap, &before), "unchanged: the same settings");
        let mut c = Config::default();
        c.client.max_pipeline = 3;
        live.store(LiveSettings::from_config(&c));
        live.refresh(&mut snap);
        assert_eq!(snap.max_pipeline, 3);
    }
}
