//! Upstream TLS (`rediss://`) against a real `redis-server --tls-port` with certificates
//! made here by rcgen: verification with the right CA (by IP and by `server_name`), the
//! failures a wrong CA or a wrong name give (clear `-UNAVAILABLE` errors and `/status`),
//! mutual TLS, `insecure_skip_verify`, and the start-up validation of the TLS files.
mod common;
use common::*;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use respite::config::Config;

/// A CA and the PEM files it signed, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA (`<name>-ca.pem`), a server certificate for `redis.test` and 127.0.0.1
    /// (`<name>-server.pem`/`-server.key`) and a client certificate (`<name>-client.pem`/`.key`).
    fn new() -> Pki {
        let pki = Pki { dir: tempfile::tempdir().unwrap() };
        pki.issue("good");
        pki
    }

    fn issue(&self, name: &str) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, format!("respite test CA {name}"));
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        self.write(&format!("{name}-ca.pem"), &ca_cert.pem());
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["redis.test".to_string()]).unwrap();
        server.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        server.distinguished_name.push(DnType::CommonName, "redis.test");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.write(&format!("{name}-server.pem"), &server.signed_by(&key, &issuer).unwrap().pem());
        self.write(&format!("{name}-server.key"), &key.serialize_pem());

        let key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.distinguished_name.push(DnType::CommonName, "respite");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.write(&format!("{name}-client.pem"), &client.signed_by(&key, &issuer).unwrap().pem());
        self.write(&format!("{name}-client.key"), &key.serialize_pem());
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.path(file), text).unwrap();
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

/// `redis-server` listening with TLS only.
struct TlsRedis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start(pki: &Pki, require_client_cert: bool) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let p = |f: &str| pki.path(f).display().to_string();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--dir", &dir.path().display().to_string()])
            .args(["--tls-cert-file", &p("good-server.pem"), "--tls-key-file", &p("good-server.key")])
            .args(["--tls-ca-cert-file", &p("good-ca.pem")])
            .args(["--tls-auth-clients", if require_client_cert { "yes" } else { "no" }])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        // Dropping it kills and reaps the process, also if it never starts listening.
        let redis = TlsRedis { port, child, _dir: dir };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server with TLS on port {port} did not start");
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_config(redis: &TlsRedis, pki: &Pki, ca: &str) -> Config {
    let mut cfg = test_config(&redis.url());
    cfg.upstream.tls.ca_file = Some(pki.path(ca));
    cfg
}

/// A configuration whose failures stay visible to the client: the breaker does not go
/// `down` (which would answer "upstream down" without the cause) within the test.
fn failing_config(mut cfg: Config) -> Config {
    cfg.health.down_after_failures = 1000;
    cfg.health.probe_interval = "10s".parse().unwrap();
    cfg.upstream.max_retries = 1;
    cfg
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn call(raw: &mut Raw, args: &[&[u8]]) -> Vec<u8> {
    Box::pin(raw.call(args)).await
}

/// Waits until `/status` has a last upstream error containing every one of `words`.
async fn wait_last_error(respite: &Respite, words: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = respite.status().await;
        let msg = s["upstream"]["last_error"]["message"].as_str().unwrap_or("").to_string();
        if words.iter().all(|w| msg.contains(w)) {
            return msg;
        }
        assert!(tokio::time::Instant::now() < deadline, "last_error never mentioned {words:?}; status: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_tls_carries_every_kind_of_connection() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, false);
    // Verified as the URL's host, an IP address in the certificate.
    let respite = Respite::start_with(tls_config(&redis, &pki, "good-ca.pem")).await;
    let mut raw = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut raw, &[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(call(&mut raw, &[b"GET", b"k"]).await, b"$1\r\nv\r\n");

    // A pipeline bigger than the socket buffers: every byte must leave rustls's buffer.
    let big = vec![b'x'; 1 << 20];
    let mut pipeline = Vec::new();
    for i in 0..8 {
        pipeline.extend_from_slice(&encode(&[b"SET", format!("big{i}").as_bytes(), &big]));
    }
    raw.send(&pipeline).await;
    for _ in 0..8 {
        assert_eq!(Box::pin(raw.reply()).await, b"+OK\r\n");
    }
    let got = call(&mut raw, &[b"GET", b"big7"]).await;
    assert_eq!(got.len(), (1 << 20) + 12);

    // A dedicated connection (MULTI) and a relayed one (pub/sub).
    assert_eq!(call(&mut raw, &[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(call(&mut raw, &[b"INCR", b"n"]).await, b"+QUEUED\r\n");
    assert_eq!(call(&mut raw, &[b"EXEC"]).await, b"*1\r\n:1\r\n");
    let mut sub = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut sub, &[b"SUBSCRIBE", b"ch"]).await, b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
    assert_eq!(call(&mut raw, &[b"PUBLISH", b"ch", b"hi"]).await, b":1\r\n");
    assert_eq!(Box::pin(sub.reply()).await, b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n");

    // The upstream closes an idle pinned connection: respite notices before writing
    // (a TLS read polled without waiting) and reconnects, keeping the database.
    let mut pinned = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut pinned, &[b"SELECT", b"2"]).await, b"+OK\r\n");
    assert_eq!(call(&mut pinned, &[b"SET", b"in2", b"yes"]).await, b"+OK\r\n");
    let id = text(&call(&mut pinned, &[b"CLIENT", b"ID"]).await);
    let id = id.trim_start_matches(':').trim_end();
    assert_eq!(call(&mut raw, &[b"CLIENT", b"KILL", b"ID", id.as_bytes()]).await, b":1\r\n");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A write: had it gone into the dead connection, its outcome would be unknown.
    assert_eq!(text(&call(&mut pinned, &[b"APPEND", b"in2", b"!"]).await), ":4\r\n");
    assert_eq!(call(&mut pinned, &[b"GET", b"in2"]).await, b"$4\r\nyes!\r\n");

    let s = respite.status().await;
    assert_eq!(s["state"], "healthy", "{s}");
    respite.shutdown().await;

    // Verified as `server_name`, a DNS name in the certificate (and sent as SNI).
    let mut cfg = tls_config(&redis, &pki, "good-ca.pem");
    cfg.upstream.tls.server_name = Some("redis.test".into());
    let respite = Respite::start_with(cfg).await;
    let mut raw = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut raw, &[b"GET", b"k"]).await, b"$1\r\nv\r\n");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_name_fails_clearly() {
    let pki = Pki::new();
    pki.issue("other");
    let redis = TlsRedis::start(&pki, false);

    let respite = Respite::start_with(failing_config(tls_config(&redis, &pki, "other-ca.pem"))).await;
    let mut raw = Raw::connect(respite.addr).await;
    let reply = text(&call(&mut raw, &[b"GET", b"k"]).await);
    assert!(
        reply.starts_with("-UNAVAILABLE ") && reply.contains("TLS handshake failed") && reply.contains("certificate"),
        "{reply}"
    );
    let why = wait_last_error(&respite, &["TLS", "UnknownIssuer"]).await;
    eprintln!("wrong CA: {reply:?}; last_error: {why:?}");
    assert!(why.contains(&format!("127.0.0.1:{}", redis.port)), "{why}");
    respite.shutdown().await;

    let mut cfg = failing_config(tls_config(&redis, &pki, "good-ca.pem"));
    cfg.upstream.tls.server_name = Some("wrong.test".into());
    let respite = Respite::start_with(cfg).await;
    let mut raw = Raw::connect(respite.addr).await;
    let reply = text(&call(&mut raw, &[b"GET", b"k"]).await);
    assert!(reply.starts_with("-UNAVAILABLE ") && reply.contains("not valid for name"), "{reply}");
    assert!(reply.contains("wrong.test"), "{reply}");
    let why = wait_last_error(&respite, &["TLS", "wrong.test"]).await;
    eprintln!("wrong name: {reply:?}; last_error: {why:?}");
    respite.shutdown().await;

    // insecure_skip_verify accepts the same wrong CA and name.
    let mut cfg = test_config(&redis.url());
    cfg.upstream.tls.insecure_skip_verify = true;
    cfg.upstream.tls.server_name = Some("wrong.test".into());
    let respite = Respite::start_with(cfg).await;
    let mut raw = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut raw, &[b"PING"]).await, b"+PONG\r\n");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_sends_the_client_certificate() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, true);

    let mut cfg = tls_config(&redis, &pki, "good-ca.pem");
    cfg.upstream.tls.cert_file = Some(pki.path("good-client.pem"));
    cfg.upstream.tls.key_file = Some(pki.path("good-client.key"));
    let respite = Respite::start_with(cfg).await;
    let mut raw = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut raw, &[b"SET", b"m", b"tls"]).await, b"+OK\r\n");
    assert_eq!(call(&mut raw, &[b"GET", b"m"]).await, b"$3\r\ntls\r\n");
    respite.shutdown().await;

    // Without the certificate, the upstream refuses, and the client is told.
    let respite = Respite::start_with(failing_config(tls_config(&redis, &pki, "good-ca.pem"))).await;
    let mut raw = Raw::connect(respite.addr).await;
    let reply = text(&call(&mut raw, &[b"GET", b"m"]).await);
    assert!(reply.starts_with("-UNAVAILABLE "), "{reply}");
    let why = wait_last_error(&respite, &["alert"]).await;
    eprintln!("without a client certificate: {reply:?}; last_error: {why:?}");
    assert!(why.contains("Certificate") || why.contains("certificate"), "{why}");
    respite.shutdown().await;
}

fn validate_err(cfg: &Config) -> String {
    cfg.validate().expect_err("must not validate").to_string()
}

#[test]
fn tls_files_are_checked_at_start_with_errors_naming_the_key() {
    let pki = Pki::new();
    let base = || {
        let mut c = Config::default();
        c.upstream.url = "rediss://u:hunter2@127.0.0.1:6390".into();
        c.upstream.tls.ca_file = Some(pki.path("good-ca.pem"));
        c
    };
    base().validate().expect("a readable CA validates");
    let mut c = base();
    c.upstream.tls.cert_file = Some(pki.path("good-client.pem"));
    c.upstream.tls.key_file = Some(pki.path("good-client.key"));
    c.validate().expect("a matching client certificate and key validate");

    let missing = pki.path("missing.pem");
    let not_pem = pki.path("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let garbled = pki.path("garbled.pem");
    std::fs::write(&garbled, "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").unwrap();

    type Change<'a> = Box<dyn Fn(&mut Config) + 'a>;
    let cases: Vec<(Change, &[&str])> = vec![
        (
            Box::new(|c| c.upstream.tls.ca_file = Some(missing.clone())),
            &["upstream.tls.ca_file", "missing.pem", "cannot read"],
        ),
        (Box::new(|c| c.upstream.tls.ca_file = Some(not_pem.clone())), &["upstream.tls.ca_file", "no PEM certificate"]),
        (Box::new(|c| c.upstream.tls.ca_file = Some(garbled.clone())), &["upstream.tls.ca_file", "garbled.pem"]),
        (
            Box::new(|c| c.upstream.tls.ca_file = Some(pki.path("good-server.key"))),
            &["upstream.tls.ca_file", "no PEM certificate"],
        ),
        (
            Box::new(|c| c.upstream.tls.cert_file = Some(pki.path("good-client.pem"))),
            &["upstream.tls.key_file", "must be set with cert_file"],
        ),
        (
            Box::new(|c| c.upstream.tls.key_file = Some(pki.path("good-client.key"))),
            &["upstream.tls.cert_file", "must be set with key_file"],
        ),
        (
            Box::new(|c| {
                c.upstream.tls.cert_file = Some(pki.path("good-client.pem"));
                c.upstream.tls.key_file = Some(not_pem.clone());
            }),
            &["upstream.tls.key_file", "no PEM private key"],
        ),
        (
            Box::new(|c| {
                c.upstream.tls.cert_file = Some(pki.path("good-client.pem"));
                c.upstream.tls.key_file = Some(pki.path("good-server.key"));
            }),
            &["upstream.tls.key_file", "does not match cert_file"],
        ),
        (Box::new(|c| c.upstream.tls.server_name = Some("not a name!".into())), &["upstream.tls.server_name"]),
        (Box::new(|c| c.upstream.tls.insecure_skip_verify = true), &["upstream.tls.ca_file", "insecure_skip_verify"]),
        (Box::new(|c| c.upstream.url = "redis://127.0.0.1:6390".into()), &["upstream.tls", "rediss://"]),
    ];
    for (i, (change, words)) in cases.iter().enumerate() {
        let mut c = base();
        change(&mut c);
        let e = validate_err(&c);
        for w in *words {
            assert!(e.contains(w), "case {i}: {w:?} not in {e:?}");
        }
        assert!(!e.contains("hunter2"), "case {i}: {e}");
    }

    // Without ca_file, the Mozilla roots; without [upstream.tls] at all, plain TCP as before.
    let mut c = base();
    c.upstream.tls.ca_file = None;
    c.validate().expect("the built-in roots");
    let mut c = Config::default();
    c.upstream.url = "redis://127.0.0.1:6390".into();
    c.validate().expect("plain TCP");
}

#[test]
fn insecure_skip_verify_is_logged_loudly_at_start() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, false);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("respite.toml");
    std::fs::write(&file, "[upstream.tls]\ninsecure_skip_verify = true\n").unwrap();
    let mut child = Command::new(respite_bin())
        .arg("--config")
        .arg(&file)
        .args(["--upstream", &redis.url(), "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = read_log_until(&mut child, "verification is DISABLED", Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
    let line =
        log.lines().find(|l| l.contains("verification is DISABLED")).unwrap_or_else(|| panic!("no warning in {log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("insecure_skip_verify"), "{line}");
}

/// Reads the child's stdout and stderr until `needle` shows up (or `within` passes).
fn read_log_until(child: &mut Child, needle: &str, within: Duration) -> String {
    use std::io::Read;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for mut pipe in
        [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 || tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                    break;
                }
            }
        });
    }
    let deadline = tokio::time::Instant::now() + within;
    let mut log = String::new();
    while !log.contains(needle) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => log.push_str(&chunk),
            Err(_) => break,
        }
    }
    log
}
