//! The upstream Redis: connecting (with timeout, TLS for `rediss://` ([`tls`]), and the
//! AUTH/SELECT handshake), plain or TLS connections behind one type ([`stream`]), the
//! shared pipelined connections for stateless commands ([`mux`]), retry backoff
//! ([`backoff`]), and the background probe that feeds the circuit breaker.

pub mod backoff;
pub mod dedicated;
pub mod mux;
pub mod stream;
pub mod tls;

use std::sync::atomic::{AtomicUsize, Ordering};
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
        Connector { url, connect_timeout: cfg.connect_timeout.0, metrics, tls, handshake, handshake_replies: n }
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
            ticker = probe_ticker(Instant::now() + interval, interval);
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
/// bunching them.
fn probe_ticker(first: Instant, every: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(first, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// Reads the upstream's `redis_version` (INFO server), which decides how scores print.
async fn learn_version(stream: &mut UpstreamStream, buf: &mut BytesMut) -> Result<(), UpstreamError> {
    let broken = |e: std::io::Error| UpstreamError::Broken { reason: e.to_string(), sent: true };
    stream.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n").await.map_err(broken)?;
    buf.clear();
    let mut scanner = ReplyScanner::default();
    loop {
        if let Some(info) = scanner.next(buf).map_err(|e| UpstreamError::Protocol(e.to_string()))? {
            let text = String::from_utf8_lossy(&buf[..info.len]);
            if let Some(v) = text.lines().find_map(|l| l.strip_prefix("redis_version:")) {
                crate::outage::reply::set_upstream_version(v.trim());
            }
            buf.clear();
            return Ok(());
        }
        if stream.read_buf(buf).await.map_err(broken)? == 0 {
            return Err(UpstreamError::Broken { reason: "connection closed".into(), sent: true });
        }
    }
}

async fn ping(stream: &mut UpstreamStream, buf: &mut BytesMut) -> Result<(), UpstreamError> {
    let broken = |e: std::io::Error| UpstreamError::Broken { reason: e.to_string(), sent: true };
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").await.map_err(broken)?;
    buf.clear();
    let mut scanner = ReplyScanner::default();
    loop {
        if let Some(info) = scanner.next(buf).map_err(|e| UpstreamError::Protocol(e.to_string()))? {
            // A LOADING or BUSY error means the upstream cannot serve yet.
            if info.is_error() {
                let msg = String::from_utf8_lossy(&buf[1..info.len - 2]).into_owned();
                return Err(UpstreamError::Protocol(format!("PING answered {msg}")));
            }
            return Ok(());
        }
        if stream.read_buf(buf).await.map_err(broken)? == 0 {
            return Err(UpstreamError::Broken { reason: "connection closed".into(), sent: true });
        }
    }
}
