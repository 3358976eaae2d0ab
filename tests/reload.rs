//! SIGHUP against the real binary: live settings change without a restart (admin token,
//! log level, idle timeout, connection limit, command timeout), restart-only ones are named
//! in a warning, flags still win over the file, and a configuration that does not load or
//! validate is rejected with the running settings kept. Secrets never reach the log.

mod common;
use common::*;

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// Distinct free ports.
fn ports<const N: usize>() -> [u16; N] {
    let mut out = [0u16; N];
    for i in 0..N {
        let mut p = free_port();
        while out[..i].contains(&p) {
            p = free_port();
        }
        out[i] = p;
    }
    out
}

/// A `respite --config FILE` process with its stderr in a file; killed on drop.
struct Server {
    child: Option<Child>,
    port: u16,
    admin_port: u16,
    _dir: tempfile::TempDir,
    config: PathBuf,
    stderr: PathBuf,
}

impl Server {
    /// Writes `config` and starts respite on it (plus `extra` arguments); `port` and
    /// `admin_port` are where it is expected to listen.
    fn start(config: &str, port: u16, admin_port: u16, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("respite.toml");
        std::fs::write(&path, config).unwrap();
        let stderr = dir.path().join("stderr");
        let mut cmd = Command::new(respite_bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("RESPITE_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--config")
            .arg(&path)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).unwrap());
        let child = cmd.spawn().expect("respite binary runs");
        let mut s = Server { child: Some(child), port, admin_port, _dir: dir, config: path, stderr };
        s.wait_listening();
        s
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.admin_port)).is_ok()
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("respite exited during start-up with {status}; stderr:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "respite did not listen within 10s; stderr:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success(), "kill {sig} failed");
    }

    /// Rewrites the configuration file and sends SIGHUP.
    fn reload(&self, config: &str) {
        std::fs::write(&self.config, config).unwrap();
        self.signal("-HUP");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until `needle` occurs `n` times in the log; returns the line of its `n`th
    /// occurrence.
    async fn wait_log(&self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if let Some(line) = log.lines().filter(|l| l.contains(needle)).nth(n - 1) {
                return line.to_string();
            }
            assert!(Instant::now() < deadline, "no {needle:?} (×{n}) in the log within 10s:\n{log}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// `POST /admin/drill` ending any drill, with a bearer token: the HTTP status.
    async fn drill(&self, token: &str) -> u16 {
        http(([127, 0, 0, 1], self.admin_port).into(), "POST", "/admin/drill", Some(token), Some(r#"{"state":"auto"}"#))
            .await
            .0
    }

    /// SIGTERM; asserts a clean exit.
    fn stop(mut self) {
        self.signal("-TERM");
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "respite exited with {status}; stderr:\n{}", self.log());
                return;
            }
            assert!(Instant::now() < deadline, "respite did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A configuration file: the listeners, the upstream, more `[client]` keys (`client`, one
/// per line), and the admin token.
fn config(port: u16, admin_port: u16, upstream: &str, client: &str, token: &str) -> String {
    format!(
        "[client]\nlisten = \"127.0.0.1:{port}\"\n{client}\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"{token}\"\n\
         [upstream]\nurl = \"{upstream}\"\n"
    )
}

const TOKEN_A: &str = "token-alpha-1";
const TOKEN_B: &str = "token-bravo-2";

fn assert_no_secret(log: &str) {
    for t in [TOKEN_A, TOKEN_B] {
        assert!(!log.contains(t), "{t} in the log:\n{log}");
    }
}

#[tokio::test]
async fn sighup_applies_live_settings_and_names_those_needing_a_restart() {
    let redis = RedisServer::start();
    let [port, admin, other_port] = ports::<3>();
    let s = Server::start(&config(port, admin, &redis.url(), "", TOKEN_A), port, admin, &[]);
    assert_eq!(s.drill(TOKEN_A).await, 200);
    assert_eq!(s.drill(TOKEN_B).await, 401);

    // New token, debug logs, idle clients closed after 300ms, and a new listen address.
    let changed =
        config(other_port, admin, &redis.url(), "idle_timeout = \"300ms\"", TOKEN_B) + "[log]\nlevel = \"debug\"\n";
    s.reload(&changed);
    let info = s.wait_log("configuration reloaded", 1).await;
    for c in ["admin.token: <changed>", "client.idle_timeout: 0s -> 300ms", "log.level: info -> debug"] {
        assert!(info.contains(c), "{c:?} not in {info}");
    }
    assert!(!info.contains("client.listen"), "{info}");
    let warn = s.wait_log("take effect only after a restart", 1).await;
    assert!(warn.contains("WARN"), "{warn}");
    assert!(warn.contains(&format!("client.listen: 127.0.0.1:{port} -> 127.0.0.1:{other_port}")), "{warn}");
    assert!(!warn.contains("admin.token") && !warn.contains("idle_timeout"), "{warn}");

    assert_eq!(s.drill(TOKEN_B).await, 200, "the new token works");
    assert_eq!(s.drill(TOKEN_A).await, 401, "the old one does not");
    // The listener stays where it was: listen addresses need a restart.
    let mut c = Raw::connect(s.addr()).await;
    assert_eq!(c.call(&[b"PING"]).await, b"+PONG\r\n");
    assert!(c.closed_within(Duration::from_secs(3)).await, "an idle client is closed after the new idle_timeout");
    // Debug is on: a session's end is a debug line.
    s.wait_log("client session ended", 1).await;

    // A file that does not load: rejected, the running settings stay.
    s.reload(&(changed.clone() + "[clinet]\nbogus_key = 1\n"));
    let err = s.wait_log("configuration reload rejected", 1).await;
    assert!(err.contains("ERROR") && err.contains("clinet"), "{err}");
    assert_eq!(s.drill(TOKEN_B).await, 200, "still the token of the last good configuration");
    assert_eq!(s.drill(TOKEN_A).await, 401);
    // A file that loads but does not validate: rejected too, naming key and value.
    s.reload(&changed.replace("[upstream]\n", "[upstream]\ncommand_timeout = \"0s\"\n"));
    let err = s.wait_log("configuration reload rejected", 2).await;
    assert!(err.contains("upstream.command_timeout") && err.contains("greater than 0"), "{err}");
    assert_eq!(s.drill(TOKEN_B).await, 200);
    // Reloading the last good file again: nothing live changed; the listener still waits.
    s.reload(&changed);
    s.wait_log("no live setting changed", 1).await;
    s.wait_log("take effect only after a restart", 2).await;

    assert_no_secret(&s.log());
    s.stop();
}

#[tokio::test]
async fn a_reload_with_a_probe_interval_that_counts_as_zero_is_rejected() {
    let [port, admin, dead] = ports::<3>();
    let text = config(port, admin, &format!("redis://127.0.0.1:{dead}"), "", "");
    let s = Server::start(&text, port, admin, &[]);
    // Accepted before, the probe then panicked ("period must be non-zero").
    s.reload(&format!("{text}[health]\nprobe_interval = \"500ns\"\n"));
    let err = s.wait_log("configuration reload rejected", 1).await;
    assert!(err.contains("health.probe_interval") && err.contains("at least 1ms"), "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!s.log().contains("panicked"), "{}", s.log());
    let (code, _) = http(([127, 0, 0, 1], admin).into(), "GET", "/healthz", None, None).await;
    assert_eq!(code, 200);
    s.stop();
}

#[tokio::test]
async fn flags_still_win_over_the_file_after_a_reload() {
    let redis = RedisServer::start();
    let [port, admin, file_admin] = ports::<3>();
    // The file names another admin address and log level; the flags win, at start and after.
    let text = config(port, file_admin, &redis.url(), "", "") + "[log]\nlevel = \"debug\"\n";
    let s =
        Server::start(&text, port, admin, &["--admin-listen", &format!("127.0.0.1:{admin}"), "--log-level", "info"]);
    s.reload(&text.replace("[upstream]\n", "[upstream]\ncommand_timeout = \"2s\"\n"));
    let info = s.wait_log("configuration reloaded", 1).await;
    assert!(info.contains("changed=\"upstream.command_timeout: 1s -> 2s\""), "{info}");
    s.stop();
}

#[tokio::test]
async fn a_lower_max_connections_refuses_new_clients_until_some_leave() {
    let redis = RedisServer::start();
    let [port, admin] = ports::<2>();
    let s = Server::start(&config(port, admin, &redis.url(), "max_connections = 10", ""), port, admin, &[]);
    let mut first = Raw::connect(s.addr()).await;
    assert_eq!(first.call(&[b"PING"]).await, b"+PONG\r\n");
    s.reload(&config(port, admin, &redis.url(), "max_connections = 1", ""));
    s.wait_log("client.max_connections: 10 -> 1", 1).await;
    let mut second = Raw::connect(s.addr()).await;
    assert_eq!(second.reply().await, b"-ERR max number of clients reached\r\n");
    assert_eq!(first.call(&[b"PING"]).await, b"+PONG\r\n", "the open client is not closed");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut third = Raw::connect(s.addr()).await;
        third.cmd(&[b"PING"]).await;
        if third.reply().await == b"+PONG\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "a client is accepted again once the first left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop();
}

#[tokio::test]
async fn outage_settings_change_live_for_commands_served_during_an_outage() {
    let redis = RedisServer::start();
    let [port, admin] = ports::<2>();
    let strict = config(port, admin, &redis.url(), "", TOKEN_A);
    let lenient = format!("{strict}[store]\nmiss = \"nil\"\n[outage]\nallow_conditional = true\n");
    let s = Server::start(&strict, port, admin, &[]);
    let (code, body) =
        http(([127, 0, 0, 1], admin).into(), "POST", "/admin/drill", Some(TOKEN_A), Some(r#"{"state":"down"}"#)).await;
    assert_eq!(code, 200, "{body}");
    let mut c = Raw::connect(s.addr()).await;
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let refused = text(c.call(&[b"SETNX", b"lock", b"me"]).await);
    assert!(refused.starts_with("-UNAVAILABLE") && refused.contains("SETNX"), "{refused}");
    let miss = text(c.call(&[b"GET", b"never-seen"]).await);
    assert!(miss.starts_with("-UNAVAILABLE"), "{miss}");

    s.reload(&lenient);
    s.wait_log("outage.allow_conditional: false -> true", 1).await;
    assert!(s.log().contains("store.miss: error -> nil"), "{}", s.log());
    // The same connection, still in the outage: the new settings apply at once.
    assert_eq!(c.call(&[b"SETNX", b"lock", b"me"]).await, b":1\r\n");
    assert_eq!(c.call(&[b"SETNX", b"lock", b"you"]).await, b":0\r\n");
    assert_eq!(c.call(&[b"GET", b"never-seen"]).await, b"$-1\r\n");

    s.reload(&strict);
    s.wait_log("outage.allow_conditional: true -> false", 1).await;
    let refused = text(c.call(&[b"SETNX", b"other", b"me"]).await);
    assert!(refused.starts_with("-UNAVAILABLE"), "{refused}");
    assert!(!s.log().contains("restart"), "nothing here needs a restart:\n{}", s.log());
    s.stop();
}

#[tokio::test]
async fn a_shorter_command_timeout_applies_to_a_client_connected_before() {
    let redis = RedisServer::start();
    let [port, admin] = ports::<2>();
    let long =
        config(port, admin, &redis.url(), "", "").replace("[upstream]\n", "[upstream]\ncommand_timeout = \"5s\"\n");
    let s = Server::start(&long, port, admin, &[]);
    let mut c = Raw::connect(s.addr()).await;
    assert_eq!(c.call(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    s.reload(&long.replace("\"5s\"", "\"200ms\""));
    s.wait_log("upstream.command_timeout: 5s -> 200ms", 1).await;
    redis.freeze();
    let started = Instant::now();
    let reply = c.call(&[b"GET", b"k"]).await;
    redis.thaw();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    assert!(reply.starts_with("-TIMEOUT") && reply.contains("200ms"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    s.stop();
}
