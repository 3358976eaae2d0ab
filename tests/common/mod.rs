//! Test harness: real `redis-server` processes on free loopback ports (never 6379) that a
//! test can kill, freeze (SIGSTOP), thaw and restart; respite in-process on port 0, or as
//! the real binary for command-line and signal tests; raw RESP helpers.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use respite::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A port nobody listens on right now.
///
/// Never the same port twice in one test process: a test that kills its redis-server
/// expects the port to stay dead, and a concurrent test given the same port would start a
/// redis there (seen: a journal replayed into another test's server).
pub fn free_port() -> u16 {
    bind_fresh().local_addr().unwrap().port()
}

/// A listener on a loopback port no other part of this test process was given before.
///
/// The port is taken below the kernel's ephemeral range (`ip_local_port_range`), where
/// neither `bind(0)` nor an outgoing connection's local port can land: a port handed to a
/// redis-server that is still starting cannot be taken by another test's connection or
/// listener in between. Each process starts at its own offset.
pub fn bind_fresh() -> StdListener {
    static NEXT: parking_lot::Mutex<Option<u16>> = parking_lot::Mutex::new(None);
    const LOW: u16 = 10_000;
    let high = ephemeral_start().filter(|&h| h > LOW + 1000);
    let Some(high) = high else {
        return bind_any_fresh();
    };
    let span = high - LOW;
    let mut next = NEXT.lock();
    let mut port = next.unwrap_or_else(|| LOW + (std::process::id() as u64 * 7919 % span as u64) as u16);
    for _ in 0..span {
        let candidate = port;
        port = if port + 1 >= high { LOW } else { port + 1 };
        if let Ok(listener) = StdListener::bind(("127.0.0.1", candidate)) {
            *next = Some(port);
            return listener;
        }
    }
    panic!("no free loopback port in {LOW}..{high}");
}

/// The first port of the kernel's ephemeral range, where Linux tells it.
fn ephemeral_start() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// Fallback without `/proc`: a kernel-chosen port, never one given before.
fn bind_any_fresh() -> StdListener {
    static GIVEN: parking_lot::Mutex<Vec<u16>> = parking_lot::Mutex::new(Vec::new());
    loop {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut given = GIVEN.lock();
        if !given.contains(&port) {
            given.push(port);
            return listener;
        }
    }
}

/// [`bind_fresh`] for tokio.
pub fn bind_fresh_tokio() -> TcpListener {
    let l = bind_fresh();
    l.set_nonblocking(true).unwrap();
    TcpListener::from_std(l).unwrap()
}

/// A real redis-server child process.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts with extra arguments, e.g. `["--requirepass", "pw"]` or `["--appendonly", "yes"]`.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            RedisServer { port: free_port(), child: None, dir, extra: extra.iter().map(|s| s.to_string()).collect() };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut args: Vec<String> = vec![
            "--port".into(),
            self.port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--dir".into(),
            self.dir.path().display().to_string(),
            "--daemonize".into(),
            "no".into(),
        ];
        if !self.extra.iter().any(|a| a == "--appendonly") {
            args.extend(["--appendonly".into(), "no".into()]);
        }
        args.extend(self.extra.iter().cloned());
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        // Ready means answering: a PING answered (PONG, or NOAUTH with a password) by this
        // child, not merely a port that accepts connections.
        for _ in 0..1000 {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("redis-server on port {} exited at start: {status}", self.port);
            }
            if redis_answers(self.port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server on port {} did not answer PING within 10s", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.pid().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig} failed");
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port (and the same data directory).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts again on the same port and data directory with other extra arguments (an
    /// upstream that came back configured differently).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.kill();
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.spawn();
    }
}

/// Whether a RESP server on `port` answers PING (with any reply).
fn redis_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut first = [0u8; 1];
    s.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok() && s.read_exact(&mut first).is_ok() && matches!(first[0], b'+' | b'-')
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
        self.kill();
    }
}

/// respite running in-process on port 0.
pub struct Respite {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A configuration for tests: the given upstream, short timeouts so failures show fast.
pub fn test_config(upstream: &str) -> Config {
    let mut c = Config::default();
    c.upstream.url = upstream.to_string();
    c.client.listen = "127.0.0.1:0".into();
    c.admin.listen = "127.0.0.1:0".into();
    c.upstream.command_timeout = "1s".parse().unwrap();
    // Connects and probes get a second: the suite runs many redis-servers and respites on
    // two cores, and a stall of a few hundred ms there (seen in CI: a fresh respite's pool
    // connects and first probe all timing out together at 300ms, three "consecutive"
    // failures, so `down` before the test's first command) is load, not an outage. Outages
    // in tests are made by kill (refused at once) or SIGSTOP (the 1s command timeout).
    c.upstream.connect_timeout = "1s".parse().unwrap();
    c.health.probe_interval = "100ms".parse().unwrap();
    c.health.probe_timeout = "1s".parse().unwrap();
    c.shutdown.grace_period = "2s".parse().unwrap();
    c
}

impl Respite {
    pub async fn start(upstream: &str) -> Respite {
        Respite::start_with(test_config(upstream)).await
    }

    pub async fn start_with(cfg: Config) -> Respite {
        let validated = cfg.validate().expect("test config validates");
        let listener = bind_fresh_tokio();
        let admin = bind_fresh_tokio();
        let addr = listener.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.await;
            };
            respite::run(validated, listener, admin, stop).await.expect("respite starts");
        });
        Respite { addr, admin: admin_addr, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A `redis` crate client connected through respite.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    /// Triggers graceful shutdown and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t).await.expect("shutdown within 10s").unwrap();
        }
    }

    /// GET on the admin endpoint: (status code, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http(self.admin, "GET", path, None, None).await
    }

    pub async fn http_post(&self, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        http(self.admin, "POST", path, token, Some(body)).await
    }

    /// The value of a metric sample, e.g. `respite_commands_total{command="get",outcome="ok"}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics").await;
        metric_value(&body, sample)
    }

    pub async fn status(&self) -> serde_json::Value {
        let (code, body) = self.http_get("/status").await;
        assert_eq!(code, 200);
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until `/status` reports `state`.
    pub async fn wait_state(&self, state: &str, within: Duration) {
        wait_status(self.admin, &format!("state {state}"), within, |s| s["state"] == state).await;
    }
}

/// Polls `GET /status` on `admin` until `pred` holds and returns that status; fails the
/// test, naming `what` and showing the last status, after `within`.
pub async fn wait_status(
    admin: SocketAddr,
    what: &str,
    within: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (code, body) = http(admin, "GET", "/status", None, None).await;
        assert_eq!(code, 200, "{body}");
        let s: serde_json::Value = serde_json::from_str(&body).unwrap();
        if pred(&s) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: not reached; status: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for Respite {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn metric_value(body: &str, sample: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
    })
}

/// Minimal HTTP/1.1 client for the admin endpoint.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// A raw RESP connection, for byte-exact checks.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw { stream: TcpStream::connect(addr).await.unwrap(), buf: Vec::new() }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Sends a command as a RESP array.
    pub async fn cmd(&mut self, args: &[&[u8]]) {
        self.send(&encode(args)).await;
    }

    /// Reads exactly one complete reply (RESP2 or RESP3), within 5 seconds.
    pub async fn reply(&mut self) -> Vec<u8> {
        self.reply_within(Duration::from_secs(5)).await.expect("a reply within the time limit")
    }

    pub async fn reply_within(&mut self, d: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(d, async {
            loop {
                if let Some(len) = reply_len(&self.buf) {
                    return self.buf.drain(..len).collect::<Vec<u8>>();
                }
                let mut chunk = vec![0u8; 65536];
                let n = self.stream.read(&mut chunk).await.unwrap();
                assert!(
                    n > 0,
                    "connection closed while waiting for a reply; have {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                self.buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .ok()
    }

    /// Round trip: send a command, read one reply.
    pub async fn call(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.cmd(args).await;
        self.reply().await
    }

    /// Whether the peer closed the connection (EOF) within `d`.
    pub async fn closed_within(&mut self, d: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(tokio::time::timeout(d, self.stream.read(&mut chunk)).await, Ok(Ok(0)) | Ok(Err(_)))
    }
}

/// Length of the first complete reply in `buf`, using respite's own scanner.
pub fn reply_len(buf: &[u8]) -> Option<usize> {
    respite::resp::ReplyScanner::default().next(buf).unwrap().map(|i| i.len)
}

pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Path of the built `respite` binary.
pub fn respite_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_respite"))
}

/// Runs `redis-cli` with arguments; returns stdout.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out =
        Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().expect("redis-cli installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
