//! Configuration: the TOML schema with its defaults, the command line, the environment, and
//! their precedence (flag > `RESPITE_*` environment > file > built-in default).
//!
//! Every key is documented in the repository's `config.toml`. Unknown keys are errors.
//! [`Config::validate`] turns the raw values into checked ones before anything binds, and
//! [`Config::redacted`] is the only form ever printed.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// A configuration error: which key, which value, and why. Exit code 64 (EX_USAGE).
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}` = {value:?}: {reason}")]
    Invalid { key: &'static str, value: String, reason: String },
}

impl ConfigError {
    /// This error on one line, for a log line. (Every message is one line already; this
    /// guards the log format against a multi-line one.)
    pub fn one_line(&self) -> String {
        self.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
    }
}

/// A TOML parse error as respite shows it: one line with the position, the dotted key of
/// the offending line and the reason — never the file's text. A file that failed to parse
/// may hold a secret anywhere (a misspelt `requirepasss = "…"`, an unquoted URL with its
/// password, an unclosed string), so the reason's quoted values are `<redacted>` too; only
/// key and table names and the schema's own words (after "expected") are kept.
fn describe_parse_error(text: &str, e: &toml::de::Error) -> String {
    let reason = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(", ");
    let reason = redact_values(&reason);
    let Some(span) = e.span() else {
        return format!("TOML parse error: {reason}");
    };
    let start = span.start.min(text.len());
    let start = (0..=start).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    let line = text[..start].matches('\n').count();
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..start].chars().count() + 1;
    let key = key_path(text, line).map(|k| format!(" ({k})")).unwrap_or_default();
    format!("TOML parse error at line {}, column {column}{key}: {reason}", line + 1)
}

/// Replaces every quoted part (`…` or "…") of a parse error's reason with `<redacted>`,
/// except key and table names (after "field ", "key ", "table ") and everything after the
/// first unquoted "expected", which is the schema's (or the parser's) own words.
fn redact_values(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason;
    loop {
        let quote = rest.find(['`', '"']);
        let expected = rest.find("expected");
        let Some(q) = quote.filter(|&q| expected.is_none_or(|e| q < e)) else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..q]);
        let mark = &rest[q..=q];
        let after = &rest[q + 1..];
        // An unclosed quote hides everything after it.
        let (inner, next) = after.find(mark).map_or((after, ""), |c| (&after[..c], &after[c + 1..]));
        if ["field ", "key ", "table "].iter().any(|w| out.ends_with(w)) {
            out.push_str(mark);
            out.push_str(inner);
            out.push_str(mark);
        } else {
            out.push_str("<redacted>");
        }
        rest = next;
    }
}

/// The dotted key set on line `line` (0-based) of a TOML text: the last table header
/// before it and the line's own key (`[admin]` … `token = …` → `admin.token`), or the
/// header itself (`[clinet]`). `None` when the line sets no key, such as the inside of a
/// multi-line string.
fn key_path(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let own = lines.get(line)?.trim();
    if own.starts_with('[') {
        return table_header(own).map(|t| format!("[{t}]"));
    }
    let key = own.split_once('=')?.0.trim();
    if !is_key(key) {
        return None;
    }
    match lines[..line].iter().rev().find(|l| l.trim_start().starts_with('[')) {
        Some(h) => Some(format!("{}.{key}", table_header(h.trim())?)),
        None => Some(key.to_string()),
    }
}

/// The table a header line opens: `[client]` → `client`, `[[client.users]]` → `client.users`.
fn table_header(line: &str) -> Option<String> {
    let inner = line.strip_prefix("[[").or_else(|| line.strip_prefix('['))?;
    let name = inner.split(']').next()?.trim();
    is_key(name).then(|| name.to_string())
}

/// Whether `s` looks like a (possibly dotted) bare TOML key.
fn is_key(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-. ".contains(c))
}

fn invalid(key: &'static str, value: impl fmt::Display, reason: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid { key, value: value.to_string(), reason: reason.to_string() }
}

/// The longest duration any key accepts (ten years, as `"10y"` counts them): deadlines
/// are computed as now plus a duration, and far beyond this the clock overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 31_557_600);

/// A duration written in human units in TOML (`"250ms"`, `"2s"`, `"1m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn ms(ms: u64) -> Dur {
        Dur(Duration::from_millis(ms))
    }
    pub const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
}

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "0" {
            return Ok(Dur(Duration::ZERO));
        }
        humantime::parse_duration(s)
            .map(Dur)
            .map_err(|e| format!("not a duration ({e}); expected a number and a unit, e.g. \"250ms\", \"2s\", \"1m\""))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            f.write_str("0s")
        } else {
            write!(f, "{}", humantime::format_duration(self.0))
        }
    }
}

/// A size in bytes written in human units (`"512MiB"`, `"64KiB"`, `"1GB"`, or a plain number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

/// The units a size may carry, as the errors list them.
const SIZE_UNITS: &str = "B, KiB, MiB, GiB, TiB, KB, kB, MB, GB, TB";

// The error messages never repeat the value (a file that fails to parse is reported without
// its values) and put their examples after "expected", where the parse error keeps them.
impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        if num.is_empty() {
            return Err(format!(
                "not a size, expected a number of bytes or a number with a unit ({SIZE_UNITS}), e.g. \"64KiB\""
            ));
        }
        if unit.starts_with('.') {
            return Err(WHOLE_SIZE.to_string());
        }
        let n: u64 = num.parse().map_err(|_| "size is too large for 64 bits".to_string())?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            _ => return Err(format!("unknown size unit, expected one of {SIZE_UNITS}")),
        };
        n.checked_mul(mult).map(Size).ok_or_else(|| "size is too large for 64 bits".to_string())
    }
}

const WHOLE_SIZE: &str =
    "a size must be a whole number, expected a number of bytes or a whole number of a smaller unit, e.g. \"1536KiB\"";

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a number of bytes, or a string with a unit such as \"64KiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n).map(Size).map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Size, E> {
                Err(E::custom(WHOLE_SIZE))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Size, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= m && self.0.is_multiple_of(m) {
                return write!(f, "{}{unit}", self.0 / m);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub client: ClientConfig,
    pub upstream: UpstreamConfig,
    pub health: HealthConfig,
    pub admin: AdminConfig,
    pub store: StoreConfig,
    pub outage: OutageConfig,
    pub journal: JournalConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
    pub runtime: RuntimeConfig,
    /// Secret environment variables that are set but empty, found by
    /// [`Config::apply_env`]; [`Config::validate`] rejects them.
    #[serde(skip)]
    empty_env: Vec<&'static str>,
}

/// `[client]`: the client-facing listener and its limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Client-facing RESP listener (`--listen`).
    pub listen: String,
    /// Connections beyond this get `-ERR max number of clients reached` and are closed.
    pub max_connections: usize,
    /// Largest bulk string argument (Redis `proto-max-bulk-len`).
    pub max_bulk_bytes: Size,
    /// Largest number of arguments in one command.
    pub max_array_len: usize,
    /// Largest unparsed input kept for one client (Redis `client-query-buffer-limit`).
    pub max_query_buffer: Size,
    /// Most commands of one client in flight upstream at once; the rest wait in its buffer.
    pub max_pipeline: usize,
    /// Close a client idle this long (`"0s"`: never, as Redis's `timeout 0`). Clients
    /// subscribed or blocked are not idle.
    pub idle_timeout: Dur,
    /// Password apps must send with AUTH (empty: none). Secret.
    pub requirepass: String,
    /// ACL-style users apps may AUTH as: name and SHA-256 (hex) of the password.
    pub users: Vec<UserConfig>,
    /// Replies larger than this for one round close the client (0: no limit).
    pub output_buffer_limit: Size,
    /// A client that accepts no bytes of its replies for this long is closed (0s: never).
    pub write_timeout: Dur,
}

/// `[[client.users]]`: a user that may authenticate to respite.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Lower-case hex SHA-256 of the password (`printf %s 'pw' | sha256sum`).
    pub password_sha256: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            listen: "127.0.0.1:6380".into(),
            max_connections: 10_000,
            max_bulk_bytes: Size(512 << 20),
            max_array_len: 1 << 20,
            max_query_buffer: Size(1 << 30),
            max_pipeline: 1024,
            idle_timeout: Dur(Duration::ZERO),
            requirepass: String::new(),
            users: Vec::new(),
            output_buffer_limit: Size(1 << 30),
            write_timeout: Dur::secs(60),
        }
    }
}

/// `[upstream]`: the real Redis.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (`--upstream`).
    pub url: String,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Dur,
    /// Longest wait for a reply to a non-blocking command.
    pub command_timeout: Dur,
    /// Added to a blocking command's own timeout (BLPOP k 5 waits 5s + this).
    pub blocking_margin: Dur,
    /// Shared, pipelined connections for stateless commands.
    pub pool_size: usize,
    /// Retries of a command that provably did not execute (or is read-only).
    pub max_retries: u32,
    /// First retry delay; doubles per attempt, with full jitter, up to `retry_backoff_max`.
    pub retry_backoff_base: Dur,
    pub retry_backoff_max: Dur,
    /// ACL user for `AUTH` when the URL names none.
    pub username: Option<String>,
    /// A file whose content, trimmed, is the upstream password (e.g. a Kubernetes Secret
    /// volume). Read once at start.
    pub password_file: Option<PathBuf>,
    /// The upstream password from the environment (`RESPITE_UPSTREAM_PASSWORD`), filled
    /// by [`Config::load`]. Never read from or written to a file.
    #[serde(skip)]
    pub password_env: Option<Secret>,
    pub tls: TlsConfig,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: "redis://127.0.0.1:6379".into(),
            connect_timeout: Dur::ms(500),
            command_timeout: Dur::secs(1),
            blocking_margin: Dur::secs(1),
            pool_size: 2,
            max_retries: 3,
            retry_backoff_base: Dur::ms(10),
            retry_backoff_max: Dur::ms(200),
            username: None,
            password_file: None,
            password_env: None,
            tls: TlsConfig::default(),
        }
    }
}

/// The environment variable [`Config::load`] reads the upstream password from.
pub const UPSTREAM_PASSWORD_ENV: &str = "RESPITE_UPSTREAM_PASSWORD";
/// The environment variable that sets `admin.token` over the file.
pub const ADMIN_TOKEN_ENV: &str = "RESPITE_ADMIN_TOKEN";
/// The environment variable that sets `client.requirepass` over the file.
pub const REQUIREPASS_ENV: &str = "RESPITE_REQUIREPASS";

/// A secret value: its `Debug` form is `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `[upstream.tls]`: used with `rediss://` URLs (and an error with `redis://`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// CA certificates (PEM) to verify the upstream with; unset: the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Name to verify the upstream's certificate against and to send as SNI; unset: the
    /// URL's host.
    pub server_name: Option<String>,
    /// Accept any certificate (encrypted but not authenticated). Logged as a warning.
    pub insecure_skip_verify: bool,
}

/// `[health]`: the circuit breaker and its probe.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How often the background probe sends PING.
    pub probe_interval: Dur,
    /// A PING slower than this is a failure.
    pub probe_timeout: Dur,
    /// Consecutive failures (connect errors, timeouts, broken connections) that mean `down`.
    pub down_after_failures: u32,
    /// Upstream round trips slower than this (moving average) mean `degraded`.
    pub degraded_latency: Dur,
    /// `degraded` entered on a failure is left only when no failure has been seen for this
    /// long (0: at the first normal round trip), so occasional failures do not flip the
    /// state, and its log line, on every failure and the next success.
    pub recover_after: Dur,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            probe_interval: Dur::ms(500),
            probe_timeout: Dur::ms(500),
            down_after_failures: 3,
            degraded_latency: Dur::ms(50),
            recover_after: Dur::ms(1000),
        }
    }
}

/// `[admin]`: the HTTP endpoint for metrics, health and status.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `--admin-listen`.
    pub listen: String,
    /// Bearer token for mutating endpoints (`POST /admin/drill`); empty disables them. Secret.
    pub token: String,
    /// Open admin connections at most; further ones wait to be accepted.
    pub max_connections: u32,
    /// An admin connection that sends nothing for this long is closed.
    pub idle_timeout: Dur,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9480".into(),
            token: String::new(),
            max_connections: 64,
            idle_timeout: Dur::secs(60),
        }
    }
}

/// What an outage read of a key this sidecar never saw answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Miss {
    /// A clear `-UNAVAILABLE` error (the honest default: the value is unknown).
    #[default]
    Error,
    /// nil, as if the key did not exist.
    Nil,
}

/// `[store]`: the local store outage reads are served from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Byte bound of the local store (LRU beyond it).
    pub max_bytes: Size,
    /// A value not confirmed by the upstream (or this sidecar's own write) for this long is
    /// not served.
    pub max_staleness: Dur,
    /// `error` or `nil` for reads of keys never seen.
    pub miss: Miss,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { max_bytes: Size(64 << 20), max_staleness: Dur::secs(3600), miss: Miss::Error }
    }
}

/// `[outage]`: what is served while the upstream is down.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutageConfig {
    /// Serve conditional writes (SET NX/XX, SETNX, HSETNX, MSETNX) from local state. Off by
    /// default: a lock "acquired" from one sidecar's memory is one two pods can both hold.
    pub allow_conditional: bool,
}

/// `fsync` policy of the durable journal, as Redis's `appendfsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    Always,
    #[default]
    Everysec,
    No,
}

/// Smallest `[journal] segment_bytes`: guards against a unit forgotten ("64" meaning bytes).
pub const MIN_SEGMENT_BYTES: u64 = 4 << 10;

/// `[journal]`: where writes accepted during an outage wait for replay.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Directory of the durable journal (`--journal-dir`); absent: in memory only.
    pub dir: Option<PathBuf>,
    pub fsync: Fsync,
    /// Most records waiting for replay; further writes get `-OOM`.
    pub max_entries: u64,
    /// Most bytes waiting for replay (for the durable journal: its disk use); further
    /// writes get `-OOM`.
    pub max_bytes: Size,
    /// Durable journal: a segment file is closed and a new one started at this size;
    /// a segment is deleted once all its records are replayed.
    pub segment_bytes: Size,
    /// Commands per replay transaction (MULTI … watermark … EXEC).
    pub replay_batch: usize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            dir: None,
            fsync: Fsync::Everysec,
            max_entries: 1_000_000,
            max_bytes: Size(256 << 20),
            segment_bytes: Size(64 << 20),
            replay_batch: 1000,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, `respite=debug,warn`, …
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".into() }
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After SIGTERM/SIGINT: how long in-flight commands (and, later, the journal's replay)
    /// may take before the process exits anyway.
    pub grace_period: Dur,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { grace_period: Dur::secs(10) }
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Tokio worker threads (0: one per core). One by default: a sidecar serves one app,
    /// and one thread avoids cross-thread wake-ups on every request (measured faster on
    /// the reference 2-core machine; see README "Performance").
    pub worker_threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { worker_threads: 1 }
    }
}

/// The upstream address, parsed from the URL.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

impl fmt::Debug for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl UpstreamUrl {
    /// Parses `redis://[user:password@]host:port[/db]` and `rediss://…`.
    pub fn parse(s: &str) -> Result<UpstreamUrl, ConfigError> {
        let shown = redact_url(s);
        let u = url::Url::parse(s).map_err(|e| invalid("upstream.url", &shown, e))?;
        let tls = match u.scheme() {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(invalid(
                    "upstream.url",
                    &shown,
                    format!("scheme must be redis:// or rediss://, not {other}://"),
                ))
            }
        };
        let host = u.host_str().filter(|h| !h.is_empty()).ok_or_else(|| invalid("upstream.url", &shown, "no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = u.port().unwrap_or(6379);
        if port == 0 {
            return Err(invalid(
                "upstream.url",
                &shown,
                "port 0 cannot be connected to; give the upstream's port (1-65535)",
            ));
        }
        // Percent-decoding only: `+` in a URL's user information is a plus, not a space
        // (form decoding turned a password `a+b` into `a b`).
        let decode = |p: &str| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned();
        let username = Some(u.username()).filter(|s| !s.is_empty()).map(decode);
        let password = u.password().map(decode);
        let path = u.path().trim_start_matches('/');
        let db = if path.is_empty() {
            0
        } else if path.trim_start_matches('-').chars().all(|c| c.is_ascii_digit()) && path != "-" {
            // Redis numbers its databases 0 to a 32-bit signed maximum.
            path.parse::<u32>().ok().filter(|&db| db <= i32::MAX as u32).ok_or_else(|| {
                invalid("upstream.url", &shown, format!("database {path} is out of range (0 to {})", i32::MAX))
            })?
        } else {
            return Err(invalid("upstream.url", &shown, format!("database must be a number, not {path:?}")));
        };
        if u.query().is_some() {
            return Err(invalid("upstream.url", &shown, "query parameters are not supported; use the [upstream] keys"));
        }
        Ok(UpstreamUrl { tls, host, port, username, password, db })
    }

    /// `host:port`, for connecting.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL without its password: the only form that is ever logged or shown.
    pub fn redacted(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let user = match (&self.username, &self.password) {
            (Some(u), Some(_)) => format!("{u}:<redacted>@"),
            (None, Some(_)) => ":<redacted>@".to_string(),
            (Some(u), None) => format!("{u}@"),
            (None, None) => String::new(),
        };
        format!("{scheme}://{user}{}/{}", self.addr(), self.db)
    }
}

/// Replaces the password of a URL-like string, even one that does not parse: whatever
/// lies between the first `:` after the scheme (`redis://`, or `redis:`/`rediss:` without
/// the slashes) and the last `@` (`redis:/alice:pw@h`, `alice:pw@h`, `redis//:pw@h` all
/// lose `pw`). Without an `@`, a non-numeric "port" is hidden too (`redis://default:pw`,
/// the host forgotten).
pub fn redact_url(s: &str) -> String {
    let scheme_end = match s.find("://") {
        Some(i) => i + 3,
        None => {
            match ["redis:", "rediss:"].iter().find(|p| s.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p))) {
                // The scheme and any slashes after it.
                Some(p) => s.len() - s[p.len()..].trim_start_matches('/').len(),
                None => 0,
            }
        }
    };
    let (head, rest) = s.split_at(scheme_end);
    if let Some(at) = rest.rfind('@') {
        return match rest[..at].find(':') {
            Some(colon) => format!("{head}{}:<redacted>{}", &rest[..colon], &rest[at..]),
            None => s.to_string(),
        };
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    match authority.rfind(':') {
        Some(colon) if !authority.ends_with(']') && !authority[colon + 1..].chars().all(|c| c.is_ascii_digit()) => {
            format!("{head}{}:<redacted>{}", &authority[..colon], &rest[authority.len()..])
        }
        _ => s.to_string(),
    }
}

/// Command-line flags shared by the server and `check-config`. Each also reads `RESPITE_<NAME>`.
#[derive(Debug, Clone, Default, Args)]
pub struct Flags {
    /// TOML configuration file (see the repository's config.toml for every key).
    #[arg(long, env = "RESPITE_CONFIG", hide_env_values = true, global = true)]
    pub config: Option<PathBuf>,
    /// Client-facing RESP listener address [default: 127.0.0.1:6380].
    #[arg(long, env = "RESPITE_LISTEN", hide_env_values = true, global = true)]
    pub listen: Option<String>,
    /// The upstream Redis URL (`--upstream`; its help text is the `help` below, which
    /// rustdoc does not read as a link).
    #[arg(
        long,
        env = "RESPITE_UPSTREAM",
        hide_env_values = true,
        global = true,
        help = "Upstream Redis URL: redis://[user:password@]host:port[/db] or rediss://… [default: redis://127.0.0.1:6379]"
    )]
    pub upstream: Option<String>,
    /// Admin HTTP listener for /metrics, /healthz, /readyz, /status [default: 127.0.0.1:9480].
    #[arg(long, env = "RESPITE_ADMIN_LISTEN", hide_env_values = true, global = true)]
    pub admin_listen: Option<String>,
    /// Directory of the durable journal (off when absent).
    #[arg(long, env = "RESPITE_JOURNAL_DIR", hide_env_values = true, global = true)]
    pub journal_dir: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, env = "RESPITE_LOG_FORMAT", hide_env_values = true, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level or tracing filter [default: info].
    #[arg(long, env = "RESPITE_LOG_LEVEL", hide_env_values = true, global = true)]
    pub log_level: Option<String>,
    /// Validate the configuration, print it with secrets redacted, and exit.
    #[arg(long, global = true)]
    pub check_config: bool,
}

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "respite", version, about = "A resilient caching sidecar for Redis")]
pub struct Cli {
    #[command(flatten)]
    pub flags: Flags,
    #[command(subcommand)]
    pub command: Option<CliCommand>,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Validate the configuration, print it with secrets redacted, and exit (non-zero on error).
    CheckConfig,
}

impl Cli {
    /// Whether this invocation only checks the configuration.
    pub fn is_check(&self) -> bool {
        self.flags.check_config || matches!(self.command, Some(CliCommand::CheckConfig))
    }
}

/// A configuration that passed [`Config::validate`].
#[derive(Debug, Clone)]
pub struct Validated {
    pub raw: Config,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub upstream: UpstreamUrl,
}

impl Config {
    /// Loads the file (if any) and applies flags and environment on top.
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        let mut cfg = match &flags.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        cfg.apply_flags(flags);
        cfg.apply_env(|name| std::env::var(name).ok());
        Ok(cfg)
    }

    /// Settings only the environment gives: the upstream password
    /// (`RESPITE_UPSTREAM_PASSWORD`), the admin token (`RESPITE_ADMIN_TOKEN`) and the client
    /// password (`RESPITE_REQUIREPASS`). `get` reads a variable (the process environment in
    /// [`Config::load`]).
    ///
    /// A variable set but empty (or blank) is an error at [`Config::validate`], not a
    /// value: an empty `RESPITE_REQUIREPASS` or `RESPITE_ADMIN_TOKEN` would silently turn
    /// client authentication or drills off over the file's value.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        let mut read = |name: &'static str| match get(name) {
            Some(v) if v.trim().is_empty() => {
                self.empty_env.push(name);
                None
            }
            v => v,
        };
        let upstream_password = read(UPSTREAM_PASSWORD_ENV);
        // Secrets a Kubernetes Secret can provide as environment variables, over the file.
        let admin_token = read(ADMIN_TOKEN_ENV);
        let requirepass = read(REQUIREPASS_ENV);
        if let Some(p) = upstream_password {
            self.upstream.password_env = Some(Secret(p));
        }
        if let Some(t) = admin_token {
            self.admin.token = t;
        }
        if let Some(p) = requirepass {
            self.client.requirepass = p;
        }
    }

    /// Parses a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })
    }

    /// Parses TOML text; the error names the line and the key, and never shows a value
    /// (see [`describe_parse_error`]).
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| describe_parse_error(text, &e))
    }

    /// Flags and their environment variables win over the file.
    pub fn apply_flags(&mut self, f: &Flags) {
        if let Some(v) = &f.listen {
            self.client.listen = v.clone();
        }
        if let Some(v) = &f.upstream {
            self.upstream.url = v.clone();
        }
        if let Some(v) = &f.admin_listen {
            self.admin.listen = v.clone();
        }
        if let Some(v) = &f.journal_dir {
            self.journal.dir = Some(v.clone());
        }
        if let Some(v) = f.log_format {
            self.log.format = v;
        }
        if let Some(v) = &f.log_level {
            self.log.level = v.clone();
        }
    }

    /// Checks every value; the first error names its key.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        if let Some(name) = self.empty_env.first() {
            return Err(invalid(name, "", "is set but empty"));
        }
        let addr = |key: &'static str, v: &str| -> Result<SocketAddr, ConfigError> {
            v.parse()
                .map_err(|e| invalid(key, v, format!("{e}; write host:port with an IP address, e.g. 127.0.0.1:6380")))
        };
        let listen = addr("client.listen", &self.client.listen)?;
        let admin_listen = addr("admin.listen", &self.admin.listen)?;
        // One of the two binds would fail (an unspecified address covers every other).
        let (a, b) = (listen.ip(), admin_listen.ip());
        if listen.port() != 0
            && listen.port() == admin_listen.port()
            && (a == b || a.is_unspecified() || b.is_unspecified())
        {
            return Err(invalid(
                "admin.listen",
                &self.admin.listen,
                format!(
                    "must not be the address of client.listen ({}); give each listener its own port",
                    self.client.listen
                ),
            ));
        }
        let mut upstream = UpstreamUrl::parse(&self.upstream.url)?;
        self.resolve_credentials(&mut upstream)?;
        if upstream.tls {
            // Reads and parses every file now: a bad one is a configuration error.
            crate::upstream::tls::TlsSetup::load(&upstream, &self.upstream.tls)?;
        } else if self.upstream.tls != TlsConfig::default() {
            return Err(invalid(
                "upstream.tls",
                upstream.redacted(),
                "TLS settings are given but upstream.url is redis:// (plain TCP); use rediss:// or remove [upstream.tls]",
            ));
        }
        let positive = |key: &'static str, v: u64| {
            if v == 0 {
                Err(invalid(key, v, "must be greater than 0"))
            } else {
                Ok(())
            }
        };
        positive("client.max_connections", self.client.max_connections as u64)?;
        positive("client.max_bulk_bytes", self.client.max_bulk_bytes.0)?;
        positive("admin.max_connections", self.admin.max_connections as u64)?;
        positive("client.max_array_len", self.client.max_array_len as u64)?;
        positive("client.max_pipeline", self.client.max_pipeline as u64)?;
        positive("upstream.pool_size", self.upstream.pool_size as u64)?;
        positive("health.down_after_failures", self.health.down_after_failures as u64)?;
        positive("journal.max_entries", self.journal.max_entries)?;
        positive("journal.max_bytes", self.journal.max_bytes.0)?;
        positive("journal.replay_batch", self.journal.replay_batch as u64)?;
        if self.journal.segment_bytes.0 < MIN_SEGMENT_BYTES {
            return Err(invalid(
                "journal.segment_bytes",
                self.journal.segment_bytes,
                format!("must be at least {}", Size(MIN_SEGMENT_BYTES)),
            ));
        }
        if self.journal.dir.is_some() && self.journal.segment_bytes > self.journal.max_bytes {
            return Err(invalid(
                "journal.segment_bytes",
                self.journal.segment_bytes,
                format!("must be at most journal.max_bytes ({})", self.journal.max_bytes),
            ));
        }
        if self.journal.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err(invalid("journal.dir", "", "must name a directory (leave it out for an in-memory journal)"));
        }
        // Request offsets inside a client's read buffer are 32-bit: a buffer holding an
        // incomplete request of this size (and what follows it in the same read) must stay
        // far below 4 GiB.
        if self.client.max_query_buffer.0 > 1 << 30 {
            return Err(invalid(
                "client.max_query_buffer",
                self.client.max_query_buffer,
                "must be at most 1GiB (Redis's default client-query-buffer-limit)",
            ));
        }
        if self.client.max_query_buffer.0 < self.client.max_bulk_bytes.0 {
            return Err(invalid(
                "client.max_query_buffer",
                self.client.max_query_buffer,
                format!("must be at least client.max_bulk_bytes ({})", self.client.max_bulk_bytes),
            ));
        }
        self.validate_durations()?;
        if self.upstream.retry_backoff_max < self.upstream.retry_backoff_base {
            return Err(invalid(
                "upstream.retry_backoff_max",
                self.upstream.retry_backoff_max,
                "must be at least upstream.retry_backoff_base",
            ));
        }
        let level = &self.log.level;
        if level.trim().is_empty() {
            // An empty filter is valid to tracing and silences everything below ERROR.
            return Err(invalid(
                "log.level",
                level,
                "must not be empty; write a level (error, warn, info, debug, trace) or a tracing filter",
            ));
        }
        let simple = !level.contains('=') && !level.contains(',');
        let bad_level = simple && level.parse::<tracing_subscriber::filter::LevelFilter>().is_err();
        if bad_level || tracing_subscriber::EnvFilter::try_new(level).is_err() {
            return Err(invalid(
                "log.level",
                &self.log.level,
                "not a level (error, warn, info, debug, trace) or tracing filter",
            ));
        }
        crate::auth::Auth::from_config(&self.client)?;
        Ok(Validated { raw: self.clone(), listen, admin_listen, upstream })
    }

    /// Checks every duration against its key's range: at most [`MAX_DURATION`], and no
    /// non-zero value so short that the code reading it would count it as 0 (timers count
    /// whole milliseconds, latencies whole microseconds). Keys where 0 means "never" or
    /// "none" accept 0.
    fn validate_durations(&self) -> Result<(), ConfigError> {
        const MS: Duration = Duration::from_millis(1);
        const TIMERS: &str = "timers count whole milliseconds";
        let (c, u, h) = (&self.client, &self.upstream, &self.health);
        // (key, value, what 0 means where it is allowed, the smallest other value, why)
        let keys: [(&'static str, Dur, Option<&str>, Duration, &str); 14] = [
            ("client.idle_timeout", c.idle_timeout, Some("never"), MS, TIMERS),
            ("client.write_timeout", c.write_timeout, Some("never"), MS, TIMERS),
            ("upstream.connect_timeout", u.connect_timeout, None, MS, TIMERS),
            ("upstream.command_timeout", u.command_timeout, None, MS, TIMERS),
            ("upstream.blocking_margin", u.blocking_margin, Some("no margin"), Duration::ZERO, ""),
            ("upstream.retry_backoff_base", u.retry_backoff_base, None, MS, TIMERS),
            // Checked against retry_backoff_base below.
            ("upstream.retry_backoff_max", u.retry_backoff_max, Some(""), Duration::ZERO, ""),
            ("health.probe_interval", h.probe_interval, None, MS, TIMERS),
            ("health.probe_timeout", h.probe_timeout, None, MS, TIMERS),
            (
                "health.degraded_latency",
                h.degraded_latency,
                None,
                Duration::from_micros(1),
                "round trips are measured in whole microseconds",
            ),
            (
                "health.recover_after",
                h.recover_after,
                Some("leave `degraded` at the first normal round trip"),
                MS,
                TIMERS,
            ),
            ("admin.idle_timeout", self.admin.idle_timeout, None, MS, TIMERS),
            ("store.max_staleness", self.store.max_staleness, Some("values are never served"), Duration::ZERO, ""),
            ("shutdown.grace_period", self.shutdown.grace_period, Some("exit at once"), Duration::ZERO, ""),
        ];
        for (key, d, zero, min, why) in keys {
            if d.0 > MAX_DURATION {
                return Err(invalid(key, d, format!("must be at most {}", Dur(MAX_DURATION))));
            }
            if d.0.is_zero() {
                if zero.is_none() {
                    return Err(invalid(key, d, "must be greater than 0"));
                }
                continue;
            }
            if d.0 < min {
                let reason = match zero {
                    Some(means) => format!("must be 0s ({means}) or at least {} ({why})", Dur(min)),
                    None => format!("must be at least {} ({why})", Dur(min)),
                };
                return Err(invalid(key, d, reason));
            }
        }
        Ok(())
    }

    /// The upstream credentials: the password from exactly one of the URL,
    /// `upstream.password_file` and `RESPITE_UPSTREAM_PASSWORD`; the user from the URL or
    /// `upstream.username`. Errors never show a password.
    fn resolve_credentials(&self, url: &mut UpstreamUrl) -> Result<(), ConfigError> {
        let up = &self.upstream;
        let mut sources = Vec::new();
        if url.password.is_some() {
            sources.push("upstream.url");
        }
        if let Some(path) = &up.password_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid("upstream.password_file", path.display(), format!("cannot read: {e}")))?;
            let password = text.trim();
            if password.is_empty() {
                return Err(invalid("upstream.password_file", path.display(), "is empty"));
            }
            url.password = Some(password.to_string());
            sources.push("upstream.password_file");
        }
        if let Some(Secret(p)) = &up.password_env {
            if p.trim().is_empty() {
                return Err(invalid(UPSTREAM_PASSWORD_ENV, "", "is set but empty"));
            }
            url.password = Some(p.clone());
            sources.push(UPSTREAM_PASSWORD_ENV);
        }
        if sources.len() > 1 {
            return Err(invalid(
                sources[1],
                "<redacted>",
                format!("the upstream password is given more than once ({}); keep one", sources.join(", ")),
            ));
        }
        if let Some(user) = &up.username {
            if user.is_empty() {
                return Err(invalid("upstream.username", "", "must not be empty (leave it out for the default user)"));
            }
            if url.username.as_ref().is_some_and(|u| u != user) {
                return Err(invalid("upstream.username", user, "differs from the user in upstream.url; keep one"));
            }
            if url.password.is_none() {
                return Err(invalid(
                    "upstream.username",
                    user,
                    format!("needs a password (in upstream.url, upstream.password_file or {UPSTREAM_PASSWORD_ENV})"),
                ));
            }
            url.username = Some(user.clone());
        }
        Ok(())
    }

    /// This configuration with every secret replaced by `<redacted>`.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.upstream.url = redact_url(&c.upstream.url);
        if c.upstream.password_env.is_some() {
            c.upstream.password_env = Some(Secret("<redacted>".into()));
        }
        // The SHA-256 of a weak password is as good as the password: a dictionary reverses it.
        let hashes = c.client.users.iter_mut().map(|u| &mut u.password_sha256);
        for secret in [&mut c.client.requirepass, &mut c.admin.token].into_iter().chain(hashes) {
            if !secret.is_empty() {
                *secret = "<redacted>".into();
            }
        }
        c
    }

    /// The redacted configuration as TOML, as `check-config` prints it.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string(&self.redacted()).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let v = Config::default().validate().unwrap();
        assert_eq!(v.listen.to_string(), "127.0.0.1:6380");
        assert_eq!(v.admin_listen.to_string(), "127.0.0.1:9480");
        assert_eq!(v.upstream.addr(), "127.0.0.1:6379");
        assert_eq!(v.upstream.db, 0);
    }

    #[test]
    fn durations_and_sizes_in_human_units() {
        assert_eq!("250ms".parse::<Dur>().unwrap(), Dur::ms(250));
        assert_eq!("2s".parse::<Dur>().unwrap(), Dur::secs(2));
        assert_eq!("0".parse::<Dur>().unwrap(), Dur(Duration::ZERO));
        assert!("fast".parse::<Dur>().is_err());
        assert_eq!("1MiB".parse::<Size>().unwrap(), Size(1 << 20));
        assert_eq!("64KiB".parse::<Size>().unwrap(), Size(65536));
        assert_eq!("1GB".parse::<Size>().unwrap(), Size(1_000_000_000));
        assert_eq!("100".parse::<Size>().unwrap(), Size(100));
        assert!("1 parsec".parse::<Size>().is_err());
        assert!("MiB".parse::<Size>().is_err());
        assert!("99999999999999999999GiB".parse::<Size>().is_err());
        assert_eq!(Size(512 << 20).to_string(), "512MiB");
        assert_eq!(Size(1000).to_string(), "1000B");
        assert_eq!(Dur::ms(250).to_string(), "250ms");
    }

    #[test]
    fn bad_sizes_say_why() {
        for (text, expected) in [
            ("max_bytes = -1", "(store.max_bytes): a size cannot be negative"),
            ("max_bytes = 1.5", "(store.max_bytes): a size must be a whole number, expected"),
            ("max_bytes = \"1.5MiB\"", "a size must be a whole number, expected"),
            (
                "max_bytes = \"5 parsecs\"",
                "unknown size unit, expected one of B, KiB, MiB, GiB, TiB, KB, kB, MB, GB, TB",
            ),
            ("max_bytes = \"-1\"", "not a size, expected a number of bytes or a number with a unit"),
            ("max_bytes = \"99999999999999999999\"", "size is too large for 64 bits"),
            ("max_bytes = true", "invalid type: boolean <redacted>, expected a size"),
        ] {
            let e = Config::from_toml(&format!("[store]\n{text}\n")).unwrap_err();
            assert!(e.contains(expected), "{text}: {expected:?} not in {e}");
        }
        let c = Config::from_toml("[store]\nmax_bytes = 1048576\n[journal]\nmax_bytes = \"1 TiB\"\n").unwrap();
        assert_eq!((c.store.max_bytes, c.journal.max_bytes), (Size(1 << 20), Size(1 << 40)));
    }

    #[test]
    fn every_key_of_the_example_file_parses_and_round_trips() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
        let cfg = Config::from_toml(&text).unwrap();
        cfg.validate().unwrap();
        // The example documents the defaults: rendering the defaults gives the same values.
        let defaults = toml::to_string(&Config::default()).unwrap();
        assert_eq!(toml::to_string(&cfg).unwrap(), defaults);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let e = Config::from_toml("[client]\nmax_conections = 5\n").unwrap_err();
        assert!(e.contains("max_conections"), "{e}");
        let e = Config::from_toml("[clinet]\n").unwrap_err();
        assert!(e.contains("clinet"), "{e}");
    }

    #[test]
    fn bad_values_name_key_value_and_reason() {
        let e = Config::from_toml("[upstream]\ncommand_timeout = \"soon\"\n").unwrap_err();
        assert!(e.contains("command_timeout") || e.contains("duration"), "{e}");
        let mut c = Config::default();
        c.client.listen = "localhost".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("client.listen") && e.contains("localhost"), "{e}");
        let mut c = Config::default();
        c.client.max_connections = 0;
        assert!(c.validate().unwrap_err().to_string().contains("client.max_connections"));
        let mut c = Config::default();
        c.upstream.url = "http://x:1".into();
        assert!(c.validate().unwrap_err().to_string().contains("scheme"));
        let mut c = Config::default();
        c.upstream.url = "redis://h:1/abc".into();
        assert!(c.validate().unwrap_err().to_string().contains("database"));
        for (url, reason) in [
            ("redis://h:1/4294967296", "database 4294967296 is out of range (0 to 2147483647)"),
            ("redis://h:1/2147483648", "database 2147483648 is out of range"),
            ("redis://h:1/-1", "database -1 is out of range"),
            ("redis://h:0", "port 0 cannot be connected to"),
            ("redis://u:hunter2@h:0/1", "port 0"),
        ] {
            c.upstream.url = url.into();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("upstream.url") && e.contains(reason) && !e.contains("hunter2"), "{url}: {e}");
        }
        c.upstream.url = "redis://h:1/2147483647".into();
        assert_eq!(c.validate().unwrap().upstream.db, i32::MAX as u32);
        let mut c = Config::default();
        for (client, admin, clash) in [
            ("127.0.0.1:7000", "127.0.0.1:7000", true),
            ("0.0.0.0:7000", "127.0.0.1:7000", true),
            ("127.0.0.1:7000", "[::]:7000", true),
            ("127.0.0.1:7000", "127.0.0.2:7000", false),
            ("127.0.0.1:7000", "127.0.0.1:7001", false),
            ("127.0.0.1:0", "127.0.0.1:0", false),
        ] {
            (c.client.listen, c.admin.listen) = (client.into(), admin.into());
            match c.validate() {
                Err(e) if clash => {
                    let e = e.to_string();
                    assert!(e.contains("admin.listen") && e.contains("client.listen"), "{e}");
                }
                Ok(_) if !clash => {}
                other => panic!("{client} and {admin}: {other:?}"),
            }
        }
        let mut c = Config::default();
        c.log.level = "loud!!".into();
        assert!(c.validate().unwrap_err().to_string().contains("log.level"));
        for empty in ["", " ", "\t"] {
            c.log.level = empty.into();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("log.level") && e.contains("must not be empty"), "{e}");
        }
        let mut c = Config::default();
        c.journal.segment_bytes = Size(64);
        assert!(c.validate().unwrap_err().to_string().contains("journal.segment_bytes"));
        let mut c = Config::default();
        c.journal.dir = Some("/tmp/j".into());
        c.journal.segment_bytes = Size(1 << 30);
        assert!(c.validate().unwrap_err().to_string().contains("at most journal.max_bytes"));
        let mut c = Config::default();
        c.client.max_query_buffer = Size((1 << 30) + 1);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("client.max_query_buffer") && e.contains("at most 1GiB"), "{e}");
        let mut c = Config::default();
        c.upstream.url = "rediss://u:pw@h:1".into();
        c.validate().expect("rediss:// with the built-in roots");
        c.upstream.tls.ca_file = Some("/nonexistent/ca.pem".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("upstream.tls.ca_file") && e.contains("cannot read") && !e.contains("pw"), "{e}");
    }

    #[test]
    fn durations_that_would_count_as_zero_or_overflow_are_rejected() {
        let check = |file: &str| Config::from_toml(file).unwrap().validate().map(|_| ()).map_err(|e| e.to_string());
        for (file, expected) in [
            ("[health]\nprobe_interval = \"500ns\"", "`health.probe_interval` = \"500ns\": must be at least 1ms"),
            ("[health]\nprobe_timeout = \"999ns\"", "`health.probe_timeout` = \"999ns\": must be at least 1ms"),
            ("[upstream]\ncommand_timeout = \"999us\"", "`upstream.command_timeout` = \"999us\": must be at least 1ms"),
            ("[upstream]\nconnect_timeout = \"1ns\"", "upstream.connect_timeout"),
            ("[upstream]\nretry_backoff_base = \"1us\"", "upstream.retry_backoff_base"),
            ("[admin]\nidle_timeout = \"10us\"", "admin.idle_timeout"),
            ("[health]\ndegraded_latency = \"999ns\"", "must be at least 1us"),
            ("[health]\ndegraded_latency = \"0s\"", "`health.degraded_latency` = \"0s\": must be greater than 0"),
            ("[client]\nidle_timeout = \"500us\"", "must be 0s (never) or at least 1ms"),
            ("[health]\nrecover_after = \"500us\"", "`health.recover_after` = \"500us\": must be 0s"),
            (
                "[client]\nwrite_timeout = \"1ns\"",
                "`client.write_timeout` = \"1ns\": must be 0s (never) or at least 1ms",
            ),
            ("[shutdown]\ngrace_period = \"300000000000y\"", "`shutdown.grace_period`"),
            ("[admin]\nidle_timeout = \"300000000000y\"", "`admin.idle_timeout`"),
            ("[store]\nmax_staleness = \"11y\"", "`store.max_staleness` = \"11years\": must be at most 10years"),
            ("[upstream]\nblocking_margin = \"20y\"", "upstream.blocking_margin"),
            ("[upstream]\nretry_backoff_base = \"1s\"\nretry_backoff_max = \"20y\"", "upstream.retry_backoff_max"),
            ("[client]\nidle_timeout = \"20y\"", "client.idle_timeout"),
        ] {
            let e = check(file).expect_err(file);
            assert!(e.contains(expected), "{expected:?} not in {e}");
        }
        for file in [
            "[client]\nidle_timeout = \"0s\"\nwrite_timeout = \"0s\"",
            "[shutdown]\ngrace_period = \"0s\"",
            "[shutdown]\ngrace_period = \"10y\"",
            "[upstream]\nblocking_margin = \"0s\"",
            "[upstream]\nblocking_margin = \"100us\"",
            "[store]\nmax_staleness = \"0s\"",
            "[health]\nprobe_interval = \"1ms\"\nprobe_timeout = \"1ms\"\ndegraded_latency = \"500us\"",
        ] {
            check(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }

    #[test]
    fn one_line_parse_errors_name_the_key_but_not_the_value() {
        let err =
            |text: &str| ConfigError::Parse { path: "f.toml".into(), message: Config::from_toml(text).unwrap_err() };
        let e = err("[admin]\ntoken = \"hunter2\n").one_line();
        assert!(e.starts_with("config file f.toml: TOML parse error at line 2") && e.contains("(admin.token)"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains('\n'), "{e}");
        let e = err("[admin]\ntoken = 5\n").one_line();
        assert!(e.contains("(admin.token): invalid type: integer <redacted>, expected a string"), "{e}");
        let e = err("[clinet]\nx = 1\n").one_line();
        assert!(e.contains("([clinet]): unknown field `clinet`"), "{e}");
        let e = invalid("client.listen", "x", "bad");
        assert_eq!(e.one_line(), e.to_string());
    }

    #[test]
    fn parse_errors_never_show_the_file_or_its_values() {
        let cases = [
            // A misspelt secret key: the excerpt showed the whole line.
            (
                "[client]\nrequirepasss = \"hunter2\"\n",
                "line 2, column 1 (client.requirepasss): unknown field `requirepasss`",
            ),
            // An unquoted URL with its password.
            ("[upstream]\nurl = redis://app:hunter2@10.0.0.1:6379\n", "line 2, column 7 (upstream.url): "),
            // An unclosed string.
            ("[admin]\ntoken = \"hunter2\n", "line 2, column 17 (admin.token): invalid basic string"),
            // A value of the wrong type: serde quotes it.
            (
                "[client]\nrequirepass = 12345678\n",
                "(client.requirepass): invalid type: integer <redacted>, expected a string",
            ),
            (
                "[client]\nmax_connections = \"expected hunter2\"\n",
                "(client.max_connections): invalid type: string <redacted>, expected",
            ),
            (
                "[upstream]\ncommand_timeout = \"5hunter2\"\n",
                "(upstream.command_timeout): not a duration (unknown time unit <redacted>",
            ),
            (
                "[[client.users]]\nname = \"a\"\npassword_sha256 = 7\n",
                "line 3, column 19 (client.users.password_sha256): invalid type",
            ),
            ("[log]\nformat = \"hunter2\"\n", "(log.format): unknown variant <redacted>, expected `text` or `json`"),
        ];
        for (text, expected) in cases {
            let e = ConfigError::Parse { path: "f.toml".into(), message: Config::from_toml(text).unwrap_err() };
            // What the binary prints (check-config, start-up) and what a reload logs.
            for shown in [e.to_string(), e.one_line()] {
                assert!(shown.contains(expected), "{expected:?} not in {shown}");
                for secret in ["hunter2", "12345678"] {
                    assert!(!shown.contains(secret), "{secret} in {shown}");
                }
                assert!(!shown.contains('\n'), "{shown}");
            }
        }
    }

    #[test]
    fn url_parsing_and_redaction() {
        let u = UpstreamUrl::parse("redis://alice:s%40cret@10.0.0.1:7000/3").unwrap();
        assert_eq!(
            (u.username.as_deref(), u.password.as_deref(), u.db, u.port),
            (Some("alice"), Some("s@cret"), 3, 7000)
        );
        assert_eq!(u.redacted(), "redis://alice:<redacted>@10.0.0.1:7000/3");
        assert!(!format!("{u:?}").contains("cret"));
        let u = UpstreamUrl::parse("redis://us+er:a+b%26c=d%40@localhost").unwrap();
        assert_eq!((u.username.as_deref(), u.password.as_deref()), (Some("us+er"), Some("a+b&c=d@")));
        let u = UpstreamUrl::parse("redis://:pw@localhost").unwrap();
        assert_eq!((u.username, u.password.as_deref(), u.port), (None, Some("pw"), 6379));
        let u = UpstreamUrl::parse("rediss://[::1]:6380").unwrap();
        assert!(u.tls);
        assert_eq!(u.addr(), "[::1]:6380");
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:<redacted>@h:1/0");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact_url("redis://[::1]"), "redis://[::1]");
        assert_eq!(redact_url("redis://user@h:1"), "redis://user@h:1");
        // Strings that do not parse as the URL they were meant to be.
        for (given, shown) in [
            ("redis:/alice:hunter2@10.0.0.1:6379", "redis:/alice:<redacted>@10.0.0.1:6379"),
            ("alice:hunter2@host:6379", "alice:<redacted>@host:6379"),
            ("redis:alice:hunter2@host", "redis:alice:<redacted>@host"),
            ("redis//:hunter2@host", "redis//:<redacted>@host"),
            ("redis://alice:hun:ter2@x@host/0", "redis://alice:<redacted>@host/0"),
            ("redis://alice:hunter2/x@host", "redis://alice:<redacted>@host"),
            ("redis://default:hunter2", "redis://default:<redacted>"),
            ("redis://default:hunter2/0", "redis://default:<redacted>/0"),
        ] {
            assert_eq!(redact_url(given), shown);
        }
        // And the errors about them.
        for url in ["redis:/alice:hunter2@10.0.0.1:6379", "alice:hunter2@host:6379", "redis:alice:hunter2@host"] {
            let e = UpstreamUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains("upstream.url") && !e.contains("hunter2"), "{e}");
        }
        for url in ["redis//:hunter2@host", "redis://default:hunter2", "redis://a:hunter2/x@h"] {
            let e = UpstreamUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains("upstream.url") && !e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn precedence_flag_over_file_over_default() {
        let mut c =
            Config::from_toml("[client]\nlisten = \"127.0.0.1:7000\"\n[admin]\nlisten = \"127.0.0.1:7001\"\n").unwrap();
        let flags = Flags { listen: Some("127.0.0.1:7002".into()), ..Flags::default() };
        c.apply_flags(&flags);
        assert_eq!(c.client.listen, "127.0.0.1:7002");
        assert_eq!(c.admin.listen, "127.0.0.1:7001");
        assert_eq!(c.upstream.url, "redis://127.0.0.1:6379");
    }

    #[test]
    fn secret_environment_variables_set_but_empty_are_errors() {
        for name in [UPSTREAM_PASSWORD_ENV, ADMIN_TOKEN_ENV, REQUIREPASS_ENV] {
            for empty in ["", " "] {
                let mut c = Config::from_toml("[client]\nrequirepass = \"a\"\n[admin]\ntoken = \"b\"\n").unwrap();
                c.apply_env(|n| (n == name).then(|| empty.to_string()));
                let e = c.validate().unwrap_err().to_string();
                assert!(e.contains(name) && e.contains("is set but empty"), "{e}");
            }
        }
        // Set, they win over the file.
        let mut c = Config::from_toml("[client]\nrequirepass = \"a\"\n[admin]\ntoken = \"b\"\n").unwrap();
        c.apply_env(|n| Some(format!("{n}-value")));
        let v = c.validate().unwrap();
        assert_eq!(
            (v.raw.client.requirepass.as_str(), v.raw.admin.token.as_str()),
            ("RESPITE_REQUIREPASS-value", "RESPITE_ADMIN_TOKEN-value")
        );
    }

    #[test]
    fn redaction_hides_every_secret() {
        let mut c = Config::default();
        c.upstream.url = "redis://u:hunter2@h:1".into();
        c.client.requirepass = "hunter3".into();
        c.admin.token = "hunter4".into();
        c.apply_env(|name| (name == UPSTREAM_PASSWORD_ENV).then(|| "hunter5".to_string()));
        // printf %s hunter6 | sha256sum
        let hash = "6ab62aa84a9bf147513428a3e617e257b4d00c616659d18dd317748404b4258b";
        c.client.users.push(UserConfig { name: "app".into(), password_sha256: hash.into() });
        let shown = c.to_redacted_toml();
        for s in ["hunter2", "hunter3", "hunter4", "hunter5", hash] {
            assert!(!shown.contains(s), "{s} in {shown}");
        }
        assert!(shown.contains("name = \"app\""), "{shown}");
        let debug = format!("{:?}", c.redacted());
        for s in ["hunter2", "hunter3", "hunter4", "hunter5", hash] {
            assert!(!debug.contains(s), "{s} in {debug}");
        }
        assert!(shown.contains("<redacted>"));
    }
}
