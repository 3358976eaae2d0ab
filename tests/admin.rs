//! The admin HTTP endpoint, in-process: health, readiness, status, metrics and drills.

mod common;
use common::*;

use std::time::Duration;

// ---------------------------------------------------------------------------------------
// 1. Liveness, readiness, unknown paths.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_readyz_and_unknown_paths() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let (code, body) = respite.http_get("/healthz").await;
    assert_eq!(code, 200, "/healthz: {body}");
    let (code, body) = respite.http_get("/readyz").await;
    assert_eq!(code, 200, "/readyz: {body}");
    let (code, body) = respite.http_get("/no/such/path").await;
    assert_eq!(code, 404, "unknown path: {body}");
    let (code, _) = respite.http_get("/").await;
    assert_eq!(code, 404, "root is not an endpoint");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_200_while_the_upstream_is_down() {
    let dead = free_port();
    let respite = Respite::start(&format!("redis://127.0.0.1:{dead}")).await;
    respite.wait_state("down", Duration::from_secs(5)).await;
    let (code, body) = respite.http_get("/readyz").await;
    assert_eq!(code, 200, "/readyz while the upstream is down: {body}");
    let (code, _) = respite.http_get("/healthz").await;
    assert_eq!(code, 200);
    respite.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 2. /status.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_state_upstream_without_password_uptime_version_clients() {
    let password = "s3cr3t-upstream-pw";
    let redis = RedisServer::start_with(&["--requirepass", password]);
    let url = format!("redis://:{password}@127.0.0.1:{}", redis.port);
    let respite = Respite::start(&url).await;
    // Traffic through respite proves the password reached the upstream.
    let mut c = respite.client().await;
    let _: () = redis::cmd("SET").arg("status:k").arg("v").query_async(&mut c).await.unwrap();
    respite.wait_state("healthy", Duration::from_secs(5)).await;

    let (code, body) = respite.http_get("/status").await;
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains(password), "/status leaks the upstream password: {body}");
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["state"], "healthy", "{s}");
    let address = s["upstream"]["address"].as_str().unwrap_or_else(|| panic!("upstream.address is a string: {s}"));
    assert!(address.contains(&format!("127.0.0.1:{}", redis.port)), "address names host and port: {address}");
    assert!(!address.contains(password), "{address}");
    let latency = s["upstream"]["latency_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("upstream.latency_seconds is a number: {s}"));
    assert!((0.0..5.0).contains(&latency), "latency {latency}");
    let uptime = s["uptime_seconds"].as_f64().unwrap_or_else(|| panic!("uptime_seconds is a number: {s}"));
    assert!((0.0..60.0).contains(&uptime), "uptime {uptime}");
    assert_eq!(s["version"].as_str(), Some(env!("CARGO_PKG_VERSION")), "version: {s}");
    let clients = s["clients"].as_f64().unwrap_or_else(|| panic!("clients is a number: {s}"));
    assert!(clients >= 1.0, "one client is connected: {s}");
    drop(c);
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_clients_and_uptime_grows() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let s0 = respite.status().await;
    let mut a = Raw::connect(respite.addr).await;
    let mut b = Raw::connect(respite.addr).await;
    assert_eq!(a.call(&[b"PING"]).await, b"+PONG\r\n");
    assert_eq!(b.call(&[b"PING"]).await, b"+PONG\r\n");
    let s1 = respite.status().await;
    assert_eq!(s1["clients"].as_f64(), Some(2.0), "{s1}");
    assert!(s1["uptime_seconds"].as_f64().unwrap() >= s0["uptime_seconds"].as_f64().unwrap(), "{s0} then {s1}");
    respite.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 3. /metrics.

const FAMILIES: &[&str] = &[
    "respite_commands_total",
    "respite_command_duration_seconds",
    "respite_upstream_duration_seconds",
    "respite_upstream_state",
    "respite_client_connections",
    "respite_client_connections_accepted_total",
    "respite_upstream_connects_total",
];

/// Whether the exposition has a sample of `family` (with or without labels; for
/// histograms, a `_bucket`, `_sum` or `_count` sample).
fn has_sample(body: &str, family: &str) -> bool {
    body.lines().any(|l| {
        !l.starts_with('#')
            && l.strip_prefix(family).is_some_and(|rest| {
                let rest = ["_bucket", "_sum", "_count"].iter().find_map(|s| rest.strip_prefix(s)).unwrap_or(rest);
                rest.starts_with('{') || rest.starts_with(' ')
            })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_every_family_and_count_commands_exactly() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let key = "very-private-key-name-4711";
    let mut c = Raw::connect(respite.addr).await;
    assert_eq!(c.call(&[b"SET", key.as_bytes(), b"value"]).await, b"+OK\r\n");
    const GETS: usize = 7;
    for _ in 0..GETS {
        assert_eq!(c.call(&[b"GET", key.as_bytes()]).await, b"$5\r\nvalue\r\n");
    }
    let unknown = c.call(&[b"NOSUCHCMDXYZ", key.as_bytes()]).await;
    assert!(unknown.starts_with(b"-ERR"), "{unknown:?}");

    let (code, body) = respite.http_get("/metrics").await;
    assert_eq!(code, 200);
    for family in FAMILIES {
        assert!(has_sample(&body, family), "/metrics lacks {family}:\n{body}");
        assert!(body.contains(&format!("# TYPE {family} ")), "/metrics lacks a TYPE line for {family}:\n{body}");
    }
    for hist in ["respite_command_duration_seconds", "respite_upstream_duration_seconds"] {
        assert!(body.contains(&format!("# TYPE {hist} histogram")), "{hist} is a histogram:\n{body}");
        for suffix in ["_bucket{le=", "_sum ", "_count "] {
            assert!(body.contains(&format!("{hist}{suffix}")), "{hist}{suffix} missing:\n{body}");
        }
        let count = metric_value(&body, &format!("{hist}_count")).unwrap();
        assert!(count >= 1.0, "{hist}_count {count}");
    }
    let cmd_count = metric_value(&body, "respite_command_duration_seconds_count").unwrap();
    assert!(cmd_count >= (GETS + 2) as f64, "every command is timed: {cmd_count}");
    for state in ["healthy", "degraded", "down", "replaying"] {
        let v = metric_value(&body, &format!("respite_upstream_state{{state=\"{state}\"}}"));
        assert!(v.is_some(), "respite_upstream_state for {state}:\n{body}");
    }
    assert_eq!(metric_value(&body, "respite_upstream_state{state=\"healthy\"}"), Some(1.0));
    let ones: f64 = ["healthy", "degraded", "down", "replaying"]
        .iter()
        .map(|s| metric_value(&body, &format!("respite_upstream_state{{state=\"{s}\"}}")).unwrap())
        .sum();
    assert_eq!(ones, 1.0, "exactly one state is current:\n{body}");
    assert_eq!(
        metric_value(&body, "respite_commands_total{command=\"get\",outcome=\"ok\"}"),
        Some(GETS as f64),
        "GETs counted exactly:\n{body}"
    );
    assert_eq!(metric_value(&body, "respite_commands_total{command=\"set\",outcome=\"ok\"}"), Some(1.0), "{body}");
    let other: f64 = body
        .lines()
        .filter(|l| l.starts_with("respite_commands_total{command=\"other\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(other, 1.0, "the unknown command counts under command=\"other\":\n{body}");
    assert_eq!(metric_value(&body, "respite_client_connections"), Some(1.0), "{body}");
    assert!(metric_value(&body, "respite_client_connections_accepted_total").unwrap() >= 1.0, "{body}");
    assert!(!body.contains(key), "a key name appears in /metrics:\n{body}");
    assert!(
        !body.to_ascii_lowercase().contains("nosuchcmdxyz"),
        "an unknown command name appears in /metrics:\n{body}"
    );
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_track_connections_and_upstream_connects() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let before = respite.metric("respite_client_connections_accepted_total").await.unwrap_or(0.0);
    {
        let mut a = Raw::connect(respite.addr).await;
        let mut b = Raw::connect(respite.addr).await;
        assert_eq!(a.call(&[b"PING"]).await, b"+PONG\r\n");
        assert_eq!(b.call(&[b"PING"]).await, b"+PONG\r\n");
        assert_eq!(respite.metric("respite_client_connections").await, Some(2.0));
    }
    let after = respite.metric("respite_client_connections_accepted_total").await.unwrap();
    assert_eq!(after - before, 2.0);
    // Closed connections leave the gauge (bounded wait).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let open = respite.metric("respite_client_connections").await;
        if open == Some(0.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "respite_client_connections stays at {open:?} after both clients closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, body) = respite.http_get("/metrics").await;
    let connects: f64 = body
        .lines()
        .filter(|l| l.starts_with("respite_upstream_connects_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(connects >= 1.0, "upstream connects counted:\n{body}");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_connections_are_timed_and_their_timeouts_counted() {
    // A client pinned to its own upstream connection (CLIENT SETNAME): its round trips feed
    // respite_upstream_duration_seconds and its timeouts respite_upstream_timeouts_total,
    // as the README's Metrics table says.
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let mut c = Raw::connect(respite.addr).await;
    assert_eq!(c.call(&[b"CLIENT", b"SETNAME", b"pinned"]).await, b"+OK\r\n");
    let before = respite.metric("respite_upstream_duration_seconds_count").await.unwrap();
    for _ in 0..3 {
        assert_eq!(c.call(&[b"PING"]).await, b"+PONG\r\n");
    }
    let after = respite.metric("respite_upstream_duration_seconds_count").await.unwrap();
    assert_eq!(after - before, 3.0, "each round trip on the dedicated connection is timed");
    assert_eq!(respite.metric("respite_upstream_timeouts_total").await, Some(0.0));
    redis.freeze();
    let reply = c.call(&[b"GET", b"k"]).await;
    redis.thaw();
    assert!(reply.starts_with(b"-"), "a frozen upstream: {:?}", String::from_utf8_lossy(&reply));
    assert_eq!(respite.metric("respite_upstream_timeouts_total").await, Some(1.0), "the timeout is counted");
    respite.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 4. POST /admin/drill.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_is_forbidden_without_a_configured_token() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let (code, body) = respite.http_post("/admin/drill", None, r#"{"state":"down"}"#).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = respite.http_post("/admin/drill", Some(""), r#"{"state":"down"}"#).await;
    assert_eq!(code, 403, "an empty bearer token is no token: {body}");
    let (code, body) = respite.http_post("/admin/drill", Some("anything"), r#"{"state":"down"}"#).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(respite.status().await["state"], "healthy");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_needs_the_token_and_forces_down_until_auto() {
    let redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    cfg.admin.token = "t".into();
    let respite = Respite::start_with(cfg).await;
    respite.wait_state("healthy", Duration::from_secs(5)).await;

    let down = r#"{"state":"down"}"#;
    let (code, body) = respite.http_post("/admin/drill", None, down).await;
    assert_eq!(code, 401, "no token: {body}");
    let (code, body) = respite.http_post("/admin/drill", Some("wrong"), down).await;
    assert_eq!(code, 401, "wrong token: {body}");
    let (code, body) = respite.http_post("/admin/drill", Some("tt"), down).await;
    assert_eq!(code, 401, "token with a suffix: {body}");
    // Not "healthy" exactly: on a loaded machine the breaker may call slow round trips
    // "degraded" by itself. What a rejected drill must not do is force outage mode.
    let not_drilled = |s: serde_json::Value| s["drill"] == false && s["state"] != "down";
    let s = respite.status().await;
    assert!(not_drilled(s.clone()), "rejected drills change nothing: {s}");

    for bad in ["not json", "{}", r#"{"state":"sideways"}"#, r#"{"state":1}"#] {
        let (code, body) = respite.http_post("/admin/drill", Some("t"), bad).await;
        assert_eq!(code, 400, "bad body {bad:?}: {body}");
    }
    let s = respite.status().await;
    assert!(not_drilled(s.clone()), "rejected drills change nothing: {s}");

    let (code, body) = respite.http_post("/admin/drill", Some("t"), down).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "down", "{v}");
    let s = respite.status().await;
    assert_eq!(s["state"], "down", "{s}");
    assert_eq!(s["drill"], true, "{s}");
    // The probe succeeds against the live upstream, yet the drill holds the state down.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(respite.status().await["state"], "down");
    assert_eq!(respite.metric("respite_upstream_state{state=\"down\"}").await, Some(1.0));

    let (code, body) = respite.http_post("/admin/drill", Some("t"), r#"{"state":"auto"}"#).await;
    assert_eq!(code, 200, "{body}");
    respite.wait_state("healthy", Duration::from_secs(5)).await;
    assert_eq!(respite.status().await["drill"], false);
    assert_eq!(respite.metric("respite_upstream_state{state=\"healthy\"}").await, Some(1.0));
    // GET is not the drill method.
    let (code, _) = respite.http_get("/admin/drill").await;
    assert_eq!(code, 405);
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_admin_connections_are_closed_and_their_number_is_bounded() {
    // Two connections that send nothing take both admin permits: a third client waits,
    // and is served once the idle timeout has closed them (axum's server alone kept such
    // connections forever: no header-read timeout).
    use tokio::io::AsyncReadExt;
    let redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    cfg.admin.max_connections = 2;
    cfg.admin.idle_timeout = "500ms".parse().unwrap();
    let respite = Respite::start_with(cfg).await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(tokio::net::TcpStream::connect(respite.admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    let (code, _) = respite.http_get("/healthz").await;
    let waited = started.elapsed();
    assert_eq!(code, 200);
    assert!(waited >= Duration::from_millis(250), "served only once a permit was free: {waited:?}");
    for mut s in idle {
        let mut b = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(3), s.read(&mut b)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "an idle admin connection was closed: {closed:?}");
    }
    respite.shutdown().await;
}
