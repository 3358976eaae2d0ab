//! The upstream Redis: connecting (with timeout, TLS for `rediss://` ([`tls`]), and the
//! AUTH/SELECT handshake), plain or TLS connections behind one type ([`stream`]), the
//! shared pipelined connections for stateless commands ([`mux`]), retry backoff
//! ([`backoff`]), and the background probe that feeds the circuit breaker.

pub mod backoff;
pub mod dedicated;
pub mod mux;
pub mod stream;
pub mod tls;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{UpstreamConfig, UpstreamUrl};
use crate::error::UpstreamError;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::reload::Live;
use crate::resp::{put_decimal, ReplyScanner};

/// Smallest room an upstream read is given (replies to many clients arrive together).
const UPSTREAM_READ_ROOM: usize = 16 << 10;

pub use mux::{BatchFailure, BatchReply, Mux};
pub use stream::UpstreamStream;
use tls::TlsSetup;

/// Opens upstream connections: TCP connect with a timeout, the TLS handshake for
/// `rediss://`, then the handshake the configuration asks for (AUTH with the upstream
/// credentials, SELECT), so every connection — the first and every reconnect — starts in
/// the configured state.
pub struct Connector {
    url: UpstreamUrl,
    connect_timeout: Duration,
    metrics: Arc<Metrics>,
    /// `rediss://`: the loaded TLS configuration, or why it could not be loaded (files are
    /// checked by `Config::validate` at start; this only fails if they changed since).
    tls: Option<Result<TlsSetup, String>>,
    handshake: BytesMut,
    handshake_replies: usize,
    /// What is known of the upstream's databases (for `SELECT` during an outage).
    pub databases: Databases,
}

/// The databases the upstream is known to have, for answering `SELECT` during an outage
/// (a write acknowledged in a database the upstream lacks could never be replayed).
/// Exact once `CONFIG GET databases` answered (the probe asks on each new connection);
/// until then (or where `CONFIG` is refused or renamed) databases 0 up to the highest one a
/// forwarded `SELECT` or the URL's database reached, since Redis numbers them without gaps.
pub struct Databases {
    count: AtomicU32,
    exact: AtomicBool,
}

/// Whether `SELECT n` may be answered locally.
#[derive(Debug, PartialEq, Eq)]
pub enum DbCheck {
    Exists,
    /// The upstream has fewer databases (Redis's own refusal applies).
    OutOfRange,
    /// Not known to exist: not confirmed by `CONFIG GET databases` nor by a `SELECT`.
    Unknown,
}

impl Databases {
    pub fn new(url_db: u32) -> Databases {
        Databases { count: AtomicU32::new(url_db.saturating_add(1)), exact: AtomicBool::new(false) }
    }

    /// The count `CONFIG GET databases` gave.
    pub fn set_count(&self, n: u32) {
        self.count.store(n, Ordering::Relaxed);
        self.exact.store(true, Ordering::Relaxed);
    }

    /// The upstream accepted `SELECT db`: databases 0..=db exist.
    pub fn reached(&self, db: u32) {
        if !self.exact.load(Ordering::Relaxed) {
            self.count.fetch_max(db.saturating_add(1), Ordering::Relaxed);
        }
    }

    /// Databases 0..n known to exist, and whether `CONFIG GET databases` said so (else a
    /// `SELECT` or the URL's database).
    pub fn known(&self) -> (u32, bool) {
        (self.count.load(Ordering::Relaxed), self.exact.load(Ordering::Relaxed))
    }

    pub fn check(&self, db: u32) -> DbCheck {
        if db < self.count.load(Ordering::Relaxed) {
            DbCheck::Exists
        } else if self.exact.load(Ordering::Relaxed) {
            DbCheck::OutOfRange
        } else {
            DbCheck::Unknown
        }
    }
}

impl Connector {
    /// `url` carries the resolved credentials (URL, `password_file` or environment; see
    /// `Config::validate`).
    pub fn new(url: UpstreamUrl, cfg: &UpstreamConfig, metrics: Arc<Metrics>) -> Connector {
        let tls = url.tls.then(|| TlsSetup::load(&url, &cfg.tls).map_err(|e| e.to_string()));
        match &tls {
            Some(Ok(t)) if t.insecure => tracing::warn!(
                upstream = %url.redacted(),
                "upstream TLS certificate verification is DISABLED (upstream.tls.insecure_skip_verify = true): \
                 the connection is encrypted but anyone in the path can impersonate the upstream"
            ),
            Some(Ok(t)) => {
                tracing::info!(upstream = %url.redacted(), tls.server_name = %t.server_name(), "upstream TLS")
            }
            Some(Err(e)) => tracing::error!(error = %e, "upstream TLS configuration cannot be loaded"),
            None => {}
        }
        let mut handshake = BytesMut::new();
        let mut n = 0;
        if let Some(password) = &url.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &url.username {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            encode_command(&mut handshake, &args);
            n += 1;
        }
        if url.db != 0 {
            let db = url.db.to_string();
            encode_command(&mut handshake, &[b"SELECT", db.as_bytes()]);
            n += 1;
        }
        let databases = Databases::new(url.db);
        Connector {
            url,
            connect_timeout: cfg.connect_timeout.0,
            metrics,
            tls,
            handshake,
            handshake_replies: n,
            databases,
        }
    }

    /// The upstream address, without credentials.
    pub fn url(&self) -> &UpstreamUrl {
        &self.url
    }

    /// Connects and runs the handshake, all within the connect timeout.
    pub async fn connect(&self) -> Result<UpstreamStream, UpstreamError> {
        let result = tokio::time::timeout(self.connect_timeout, self.connect_inner()).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Connect {
                addr: self.url.addr(),
                reason: format!("timed out after {:?}", self.connect_timeout),
            }),
        };
        self.metrics.upstream_connects.with_label_values(&[if result.is_ok() { "ok" } else { "error" }]).inc();
        result
    }

    async fn connect_inner(&self) -> Result<UpstreamStream, UpstreamError> {
        let addr = self.url.addr();
        let err = |reason: String| UpstreamError::Connect { addr: addr.clone(), reason };
        let tcp = TcpStream::connect(&addr).await.map_err(|e| err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut stream = match &self.tls {
            None => UpstreamStream::Tcp(tcp),
            Some(Err(e)) => return Err(err(format!("TLS configuration: {e}"))),
            Some(Ok(tls)) => match tls.connect(tcp).await {
                Ok(s) => UpstreamStream::Tls(Box::new(s)),
                Err(e) => {
                    return Err(err(format!("TLS handshake failed (verifying as {:?}): {e}", tls.server_name())));
                }
            },
        };
        if self.handshake_replies > 0 {
            stream.write_all(&self.handshake).await.map_err(|e| err(e.to_string()))?;
            let mut buf = BytesMut::with_capacity(256);
            let mut scanner = ReplyScanner::default();
            for _ in 0..self.handshake_replies {
                let info = loop {
                    if let Some(info) = scanner.next(&buf).map_err(|e| err(e.to_string()))? {
                        break info;
                    }
                    if stream.read_buf(&mut buf).await.map_err(|e| err(e.to_string()))? == 0 {
                        return Err(err("connection closed during handshake".into()));
                    }
                };
                let reply = buf.split_to(info.len);
                if info.is_error() {
                    let msg = String::from_utf8_lossy(&reply[1..reply.len() - 2]).into_owned();
                    return Err(err(format!("handshake refused: {msg}")));
                }
            }
        }
        Ok(stream)
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode_command(out: &mut BytesMut, args: &[&[u8]]) {
    out.put_u8(b'*');
    put_decimal(out, args.len() as i64);
    out.put_slice(b"\r\n");
    for a in args {
        out.put_u8(b'$');
        put_decimal(out, a.len() as i64);
        out.put_slice(b"\r\n");
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
}

/// One command, encoded on its own.
pub fn encode_one(args: &[&[u8]]) -> Bytes {
    let mut out = BytesMut::new();
    encode_command(&mut out, args);
    out.freeze()
}

/// The shared side of the upstream: a fixed set of pipelined connections.
pub struct Upstream {
    pub connector: Arc<Connector>,
    muxes: Vec<Mux>,
    next: AtomicUsize,
}

impl Upstream {
    /// `pool_size` shared connections; each reads `upstream.command_timeout` from `live`.
    pub fn start(
        connector: Arc<Connector>,
        pool_size: usize,
        live: Arc<Live>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Upstream {
        let muxes = (0..pool_size)
            .map(|_| {
                Mux::spawn(connector.clone(), live.clone(), health.clone(), metrics.clone(), tracker, cancel.clone())
            })
            .collect();
        Upstream { connector, muxes, next: AtomicUsize::new(0) }
    }

    /// A shared connection for a new client session (round robin).
    pub fn pick(&self) -> Mux {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.muxes.len();
        self.muxes[i].clone()
    }
}

/// Sends PING every `health.probe_interval` on a connection of its own and reports to the
/// breaker. Interval and timeout are read from [`Health`] each round, so a configuration
/// reload changes them for the next PING.
pub async fn probe(connector: Arc<Connector>, health: Arc<Health>, cancel: CancellationToken) {
    let mut conn: Option<UpstreamStream> = None;
    let mut interval = health.probe_interval();
    let mut ticker = probe_ticker(Instant::now(), interval);
    let mut buf = BytesMut::with_capacity(64);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = cancel.cancelled() => return,
        }
        if health.probe_interval() != interval {
            interval = health.probe_interval();
            ticker = probe_ticker(Instant::now() + interval.min(crate::config::MAX_DURATION), interval);
        }
        let timeout = health.probe_timeout();
        if health.drill_active() {
            conn = None;
            continue;
        }
        let start = Instant::now();
        let result = tokio::time::timeout(timeout, async {
            if conn.is_none() {
                let mut stream = connector.connect().await?;
                learn_version(&mut stream, &mut buf).await?;
                learn_databases(&mut stream, &mut buf, &connector.databases).await?;
                conn = Some(stream);
            }
            let stream = conn.as_mut().expect("connected above");
            ping(stream, &mut buf).await
        })
        .await;
        match result {
            Ok(Ok(())) => health.probe_succeeded(start.elapsed()),
            Ok(Err(e)) => {
                conn = None;
                health.record_failure(&format!("probe: {e}"));
            }
            Err(_) => {
                conn = None;
                health.record_failure(&format!("probe: PING not answered within {timeout:?}"));
            }
        }
    }
}

/// Ticks at `first`, then every `every`; a slow PING delays the next tick instead of
/// bunching them. The period is kept within what validation allows (a zero period panics,
/// and the ticker adds it to the clock).
fn probe_ticker(first: Instant, every: Duration) -> tokio::time::Interval {
    let every = every.clamp(Duration::from_millis(1), crate::config::MAX_DURATION);
    let mut ticker = tokio::time::interval_at(first, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// Sends one command on `stream` and returns its whole reply (an error reply included).
async fn ask(stream: &mut UpstreamStream, buf: &mut BytesMut, command: &[u8]) -> Result<BytesMut, UpstreamError> {
    let broken = |e: std::io::Error| UpstreamError::Broken { reason: e.to_string(), sent: true };
    stream.write_all(command).await.map_err(broken)?;
    buf.clear();
    let mut scanner = ReplyScanner::default();
    loop {
        if let Some(info) = scanner.next(buf).map_err(|e| UpstreamError::Protocol(e.to_string()))? {
            return Ok(buf.split_to(info.len));
        }
        if stream.read_buf(buf).await.map_err(broken)? == 0 {
            return Err(UpstreamError::Broken { reason: "connection closed".into(), sent: true });
        }
    }
}

/// Reads the upstream's `redis_version` (INFO server), which decides how scores print.
async fn learn_version(stream: &mut UpstreamStream, buf: &mut BytesMut) -> Result<(), UpstreamError> {
    let reply = ask(stream, buf, b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n").await?;
    let text = String::from_utf8_lossy(&reply);
    if let Some(v) = text.lines().find_map(|l| l.strip_prefix("redis_version:")) {
        crate::outage::reply::set_upstream_version(v.trim());
    }
    Ok(())
}

/// Reads how many databases the upstream has (`CONFIG GET databases`); a refusal (ACL,
/// a renamed or disabled `CONFIG`) leaves it unknown.
async fn learn_databases(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
    dbs: &Databases,
) -> Result<(), UpstreamError> {
    let reply = ask(stream, buf, b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$9\r\ndatabases\r\n").await?;
    if let Some(n) = config_get_count(&reply) {
        dbs.set_count(n);
    }
    Ok(())
}

/// The value of a RESP2 `CONFIG GET databases` reply (`*2 databases n`), if it is one.
fn config_get_count(reply: &[u8]) -> Option<u32> {
    let mut parts = reply.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let (Some(b"*2"), Some(_), Some(name), Some(_), Some(value)) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if !name.eq_ignore_ascii_case(b"databases") {
        return None;
    }
    crate::resp::parse_int(value).and_then(|n| u32::try_from(n).ok()).filter(|&n| n > 0)
}

async fn ping(stream: &mut UpstreamStream, buf: &mut BytesMut) -> Result<(), UpstreamError> {
    let reply = ask(stream, buf, b"*1\r\n$4\r\nPING\r\n").await?;
    // A LOADING or BUSY error means the upstream cannot serve yet.
    if reply.first() == Some(&b'-') {
        let msg = String::from_utf8_lossy(&reply[1..reply.len() - 2]).into_owned();
        return Err(UpstreamError::Protocol(format!("PING answered {msg}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_probe_ticker_takes_any_period() {
        // A zero period panicked ("period must be non-zero"), a huge one overflowed the clock.
        for every in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
            let mut ticker = probe_ticker(Instant::now(), every);
            ticker.tick().await;
            assert!(ticker.period() >= Duration::from_millis(1) && ticker.period() <= crate::config::MAX_DURATION);
        }
    }

    #[test]
    fn config_get_databases_reply_is_read_only_when_it_is_one() {
        assert_eq!(config_get_count(b"*2\r\n$9\r\ndatabases\r\n$2\r\n16\r\n"), Some(16));
        assert_eq!(config_get_count(b"*2\r\n$9\r\nDATABASES\r\n$1\r\n4\r\n"), Some(4));
        assert_eq!(config_get_count(b"*0\r\n"), None);
        assert_eq!(config_get_count(b"-NOPERM this user has no permissions\r\n"), None);
        assert_eq!(config_get_count(b"-ERR unknown command 'CONFIG'\r\n"), None);
        assert_eq!(config_get_count(b"*2\r\n$7\r\nmaxmemory\r\n$1\r\n0\r\n"), None);
        assert_eq!(config_get_count(b"*2\r\n$9\r\ndatabases\r\n$1\r\n0\r\n"), None);
        assert_eq!(config_get_count(b"*2\r\n$9\r\ndatabases\r\n$3\r\n1x6\r\n"), None);
    }

    #[test]
    fn databases_are_known_from_config_or_from_the_highest_select() {
        let d = Databases::new(2);
        assert_eq!(d.check(0), DbCheck::Exists);
        assert_eq!(d.check(2), DbCheck::Exists);
        assert_eq!(d.check(3), DbCheck::Unknown);
        d.reached(7);
        assert_eq!(d.check(5), DbCheck::Exists);
        assert_eq!(d.check(7), DbCheck::Exists);
        assert_eq!(d.check(8), DbCheck::Unknown);
        d.reached(u32::MAX);
        assert_eq!(d.check(u32::MAX - 1), DbCheck::Exists);
        d.set_count(4);
        assert_eq!(d.check(3), DbCheck::Exists);
        assert_eq!(d.check(4), DbCheck::OutOfRange);
        d.reached(9);
        assert_eq!(d.check(9), DbCheck::OutOfRange);
    }
}
