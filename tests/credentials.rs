//! Upstream credentials against a real redis-server: the password from
//! `[upstream] password_file` or `RESPITE_UPSTREAM_PASSWORD` (the URL's is covered by
//! tests/transparency.rs), an ACL user from `[upstream] username` or the URL, AUTH sent
//! again on every reconnect (after an upstream restart), a refused password reported
//! clearly, and no password in `/status`, `check-config` output, errors or logs.
mod common;
use common::*;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use respite::config::Config;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn call(raw: &mut Raw, args: &[&[u8]]) -> Vec<u8> {
    Box::pin(raw.call(args)).await
}

fn env_password(pw: &'static str) -> impl Fn(&str) -> Option<String> {
    move |name| (name == "RESPITE_UPSTREAM_PASSWORD").then(|| pw.to_string())
}

/// Retries `args` until the reply is `expected` (the upstream may be coming back).
async fn eventually(raw: &mut Raw, args: &[&[u8]], expected: &[u8]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = call(raw, args).await;
        if got == expected {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{:?} kept answering {:?}", args, text(&got));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_is_sent_on_every_connection_including_after_a_restart() {
    let mut redis = RedisServer::start_with(&["--requirepass", "file-s3cret"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-password");
    std::fs::write(&file, "file-s3cret\n").unwrap();
    let mut cfg = test_config(&redis.url());
    cfg.upstream.password_file = Some(file.clone());
    let respite = Respite::start_with(cfg).await;

    let mut shared = Raw::connect(respite.addr).await;
    let mut pinned = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut shared, &[b"SET", b"k", b"1"]).await, b"+OK\r\n");
    assert_eq!(call(&mut pinned, &[b"SELECT", b"3"]).await, b"+OK\r\n");
    assert_eq!(call(&mut pinned, &[b"SET", b"k3", b"x"]).await, b"+OK\r\n");

    // Every connection is new after a restart: each must authenticate again.
    redis.restart();
    respite.wait_state("healthy", Duration::from_secs(5)).await;
    eventually(&mut shared, &[b"SET", b"k", b"2"], b"+OK\r\n").await;
    assert_eq!(call(&mut shared, &[b"GET", b"k"]).await, b"$1\r\n2\r\n");
    eventually(&mut pinned, &[b"SET", b"k3", b"y"], b"+OK\r\n").await;
    let direct = redis.port;
    let in_db3 = tokio::task::spawn_blocking(move || redis_cli(direct, &["-a", "file-s3cret", "-n", "3", "GET", "k3"]))
        .await
        .unwrap();
    assert_eq!(in_db3.trim(), "y", "the pinned client's database survived the reconnect");

    let status = respite.status().await.to_string();
    assert!(!status.contains("file-s3cret"), "{status}");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_with_its_password_from_the_environment_or_a_file() {
    let redis = RedisServer::start_with(&[
        "--user",
        "alice",
        "on",
        ">alice-pw",
        "~*",
        "&*",
        "+@all",
        "--user",
        "default",
        "off",
    ]);

    // `[upstream] username` + RESPITE_UPSTREAM_PASSWORD.
    let mut cfg = test_config(&redis.url());
    cfg.upstream.username = Some("alice".into());
    cfg.apply_env(env_password("alice-pw"));
    let respite = Respite::start_with(cfg).await;
    let mut raw = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut raw, &[b"ACL", b"WHOAMI"]).await, b"$5\r\nalice\r\n");
    assert_eq!(call(&mut raw, &[b"SET", b"a", b"1"]).await, b"+OK\r\n");
    assert_eq!(call(&mut raw, &[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(call(&mut raw, &[b"ACL", b"WHOAMI"]).await, b"+QUEUED\r\n");
    assert_eq!(call(&mut raw, &[b"EXEC"]).await, b"*1\r\n$5\r\nalice\r\n");
    respite.shutdown().await;

    // The user in the URL, the password in a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "  alice-pw \n").unwrap();
    let mut cfg = test_config(&format!("redis://alice@127.0.0.1:{}", redis.port));
    cfg.upstream.password_file = Some(file);
    let respite = Respite::start_with(cfg).await;
    let mut raw = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut raw, &[b"ACL", b"WHOAMI"]).await, b"$5\r\nalice\r\n");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_password_is_reported_without_the_password() {
    let redis = RedisServer::start_with(&["--requirepass", "right-one"]);
    let mut cfg = test_config(&redis.url());
    cfg.apply_env(env_password("wrong-one"));
    cfg.health.down_after_failures = 1000;
    cfg.upstream.max_retries = 1;
    let respite = Respite::start_with(cfg).await;
    let mut raw = Raw::connect(respite.addr).await;
    let reply = text(&call(&mut raw, &[b"GET", b"k"]).await);
    assert!(reply.starts_with("-UNAVAILABLE ") && reply.contains("WRONGPASS"), "{reply}");
    assert!(!reply.contains("wrong-one"), "{reply}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = respite.status().await;
        let msg = status["upstream"]["last_error"]["message"].as_str().unwrap_or("").to_string();
        if msg.contains("WRONGPASS") {
            assert!(!status.to_string().contains("wrong-one"), "{status}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    respite.shutdown().await;
}

fn validate_err(cfg: &Config) -> String {
    cfg.validate().expect_err("must not validate").to_string()
}

#[test]
fn credential_sources_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "from-file\n").unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, " \n").unwrap();

    let mut c = Config::default();
    c.upstream.password_file = Some(file.clone());
    c.upstream.username = Some("bob".into());
    let v = c.validate().unwrap();
    assert_eq!((v.upstream.username.as_deref(), v.upstream.password.as_deref()), (Some("bob"), Some("from-file")));
    assert_eq!(v.upstream.redacted(), "redis://bob:<redacted>@127.0.0.1:6379/0");

    let mut c = Config::default();
    c.apply_env(env_password("from-env"));
    assert_eq!(c.validate().unwrap().upstream.password.as_deref(), Some("from-env"));
    assert!(!format!("{c:?}").contains("from-env"), "Debug shows the password");
    assert!(!c.to_redacted_toml().contains("from-env"));

    let mut c = Config::default();
    c.upstream.url = "redis://:from-url@127.0.0.1:1".into();
    c.apply_env(env_password("from-env"));
    let e = validate_err(&c);
    assert!(
        e.contains("upstream.url") && e.contains("RESPITE_UPSTREAM_PASSWORD") && e.contains("more than once"),
        "{e}"
    );
    assert!(!e.contains("from-url") && !e.contains("from-env"), "{e}");

    let mut c = Config::default();
    c.upstream.password_file = Some(file.clone());
    c.apply_env(env_password("from-env"));
    let e = validate_err(&c);
    assert!(e.contains("upstream.password_file") && e.contains("RESPITE_UPSTREAM_PASSWORD"), "{e}");

    let mut c = Config::default();
    c.upstream.password_file = Some(dir.path().join("missing"));
    let e = validate_err(&c);
    assert!(e.contains("upstream.password_file") && e.contains("missing") && e.contains("cannot read"), "{e}");

    let mut c = Config::default();
    c.upstream.password_file = Some(empty);
    assert!(validate_err(&c).contains("is empty"));

    let mut c = Config::default();
    c.apply_env(env_password(""));
    assert!(validate_err(&c).contains("RESPITE_UPSTREAM_PASSWORD"));

    let mut c = Config::default();
    c.upstream.username = Some("bob".into());
    assert!(validate_err(&c).contains("needs a password"));

    let mut c = Config::default();
    c.upstream.url = "redis://alice:pw@127.0.0.1:1".into();
    c.upstream.username = Some("bob".into());
    let e = validate_err(&c);
    assert!(e.contains("upstream.username") && e.contains("differs"), "{e}");
}

/// Runs the real binary with `RESPITE_UPSTREAM_PASSWORD`; returns (exit code, stdout, stderr).
fn run_with_env_password(args: &[&str], password: &str) -> (i32, String, String) {
    let out = Command::new(respite_bin())
        .args(args)
        .env("RESPITE_UPSTREAM_PASSWORD", password)
        .env_remove("RESPITE_UPSTREAM")
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn check_config_and_logs_never_show_the_upstream_password() {
    let (code, out, err) = run_with_env_password(&["check-config", "--upstream", "redis://127.0.0.1:1"], "env-pw-1");
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("env-pw-1") && !err.contains("env-pw-1"), "{out}{err}");

    let (code, out, err) =
        run_with_env_password(&["check-config", "--upstream", "redis://u:url-pw-2@127.0.0.1:1"], "env-pw-2");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("more than once"), "{err}");
    for secret in ["env-pw-2", "url-pw-2"] {
        assert!(!out.contains(secret) && !err.contains(secret), "{secret} in {out}{err}");
    }

    // The server, at debug level, connecting with it: the password is in no log line.
    let redis = RedisServer::start_with(&["--requirepass", "env-pw-3"]);
    let listen = format!("127.0.0.1:{}", free_port());
    let child = Command::new(respite_bin())
        .args(["--upstream", &redis.url(), "--listen", &listen, "--log-level", "debug"])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .env("RESPITE_UPSTREAM_PASSWORD", "env-pw-3")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reply = String::new();
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(&listen) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n").unwrap();
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).unwrap_or(0);
            reply = text(&buf[..n]);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let out = child.wait_with_output().unwrap();
    let logs = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(reply, "+OK\r\n", "{logs}");
    assert!(!logs.is_empty());
    assert!(!logs.contains("env-pw-3"), "{logs}");
}
