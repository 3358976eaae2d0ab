//! Upstream failures against real redis-server processes: a frozen upstream (SIGSTOP), a
//! killed one, a restarted one, an unreachable one, the circuit breaker and the operator
//! drill. The rule under test everywhere: every request gets an answer or an error that
//! says what is known of its outcome, within its timeout, and a client connection is never
//! closed because the upstream failed.
mod common;
use common::*;

use std::time::Duration;

use tokio::time::Instant;

const HEALTHY_WITHIN: Duration = Duration::from_secs(5);

// `Raw`'s futures hold a 64 KiB read buffer; boxing them keeps the test futures small
// enough for the default test-thread stack in debug builds.
async fn call(raw: &mut Raw, args: &[&[u8]]) -> Vec<u8> {
    Box::pin(raw.call(args)).await
}

async fn reply_within(raw: &mut Raw, d: Duration) -> Option<Vec<u8>> {
    Box::pin(raw.reply_within(d)).await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Sum of every sample of a metric family whose line starts with `prefix`.
fn metric_sum(body: &str, prefix: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum()
}

async fn metrics_body(respite: &Respite) -> String {
    let (code, body) = respite.http_get("/metrics").await;
    assert_eq!(code, 200);
    body
}

/// Sends a command and measures how long its reply takes (`None`: no reply within `limit`).
async fn timed_call(raw: &mut Raw, args: &[&[u8]], limit: Duration) -> (Option<Vec<u8>>, Duration) {
    let start = Instant::now();
    raw.cmd(args).await;
    let reply = reply_within(raw, limit).await;
    (reply, start.elapsed())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SharedGet,
    SharedIncr,
    Pinned,
    Multi,
}

/// The reply to a command not sent because the breaker is down: it names the command and
/// says, in brackets, since when and why the upstream is down.
fn not_sent_while_down(reply: &str, command: &str) -> bool {
    reply
        .strip_prefix(&format!("-UNAVAILABLE respite: upstream down: {command} was not sent [upstream "))
        .is_some_and(|rest| rest.ends_with("]\r\n") && rest.contains("s, down because: "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_upstream_every_client_gets_an_answer_within_the_timeout() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await; // command_timeout = 1s
    let mut clients: Vec<(Kind, Raw)> = Vec::new();
    for i in 0..20 {
        let kind = match i {
            0..=9 => Kind::SharedGet,
            10..=11 => Kind::SharedIncr,
            12..=18 => Kind::Pinned,
            _ => Kind::Multi,
        };
        let mut raw = Raw::connect(respite.addr).await;
        match kind {
            Kind::SharedGet | Kind::SharedIncr => {
                assert_eq!(call(&mut raw, &[b"PING"]).await, b"+PONG\r\n")
            }
            Kind::Pinned => assert_eq!(call(&mut raw, &[b"SELECT", b"0"]).await, b"+OK\r\n"),
            Kind::Multi => assert_eq!(call(&mut raw, &[b"MULTI"]).await, b"+OK\r\n"),
        }
        clients.push((kind, raw));
    }

    redis.freeze();
    let mut tasks = Vec::new();
    for (kind, mut raw) in clients {
        tasks.push(tokio::spawn(async move {
            let args: &[&[u8]] = match kind {
                Kind::SharedGet | Kind::Pinned => &[b"GET", b"frozen:k"],
                Kind::SharedIncr => &[b"INCR", b"frozen:n"],
                Kind::Multi => &[b"SET", b"frozen:k", b"v"],
            };
            let (reply, took) = timed_call(&mut raw, args, Duration::from_secs(4)).await;
            (kind, raw, reply, took)
        }));
    }
    let mut answered = Vec::new();
    for t in tasks {
        answered.push(t.await.unwrap());
    }
    let mut problems = Vec::new();
    for (kind, _, reply, took) in &answered {
        let Some(reply) = reply else {
            problems.push(format!("{kind:?}: no answer within 4s"));
            continue;
        };
        let r = text(reply);
        if *took > Duration::from_millis(1600) {
            problems.push(format!("{kind:?}: answered after {took:?} (> command_timeout 1s + 600ms): {r:?}"));
        }
        let ok = match kind {
            Kind::SharedGet | Kind::Pinned => {
                r == "-TIMEOUT respite: upstream did not answer GET within 1s\r\n"
                    || not_sent_while_down(&r, "GET")
            }
            Kind::SharedIncr => {
                r == "-TIMEOUT respite: upstream did not answer INCR within 1s; its outcome is unknown and it was not retried\r\n"
                    || not_sent_while_down(&r, "INCR")
            }
            Kind::Multi => {
                r == "-TIMEOUT respite: upstream did not answer SET within 1s; its outcome is unknown and it was not retried\r\n"
                    || not_sent_while_down(&r, "SET")
            }
        };
        if !ok {
            problems.push(format!("{kind:?}: unexpected answer {r:?} after {took:?}"));
        }
    }

    redis.thaw();
    respite.wait_state("healthy", HEALTHY_WITHIN).await;
    // Every connection is still open and usable.
    for (kind, mut raw, _, _) in answered {
        match kind {
            Kind::SharedGet | Kind::SharedIncr => {
                let r = call(&mut raw, &[b"PING"]).await;
                if r != b"+PONG\r\n" {
                    problems.push(format!("{kind:?} after thaw: PING -> {:?}", text(&r)));
                }
            }
            Kind::Pinned => {
                let r = call(&mut raw, &[b"SET", b"after", b"thaw"]).await;
                let g = call(&mut raw, &[b"GET", b"after"]).await;
                if r != b"+OK\r\n" || g != b"$4\r\nthaw\r\n" {
                    problems.push(format!("{kind:?} after thaw: SET -> {:?}, GET -> {:?}", text(&r), text(&g)));
                }
            }
            Kind::Multi => {
                // The transaction lost its connection: EXEC must not run half of it.
                let r = call(&mut raw, &[b"EXEC"]).await;
                if !r.starts_with(b"-EXECABORT") {
                    problems.push(format!("MULTI client after thaw: EXEC -> {:?}", text(&r)));
                }
                let r = call(&mut raw, &[b"PING"]).await;
                if r != b"+PONG\r\n" {
                    problems.push(format!("MULTI client after thaw: PING -> {:?}", text(&r)));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_upstream_gives_errors_and_the_same_connection_works_after_restart() {
    let mut redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let mut client = respite.client().await;
    let mut raw = Raw::connect(respite.addr).await;
    let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut client).await.unwrap();
    assert_eq!(call(&mut raw, &[b"GET", b"k"]).await, b"$1\r\nv\r\n");

    redis.kill();
    // The retries trip the breaker; the read is then served from the local store, which
    // the SET through respite filled (SPEC §3).
    let (reply, took) = timed_call(&mut raw, &[b"GET", b"k"], Duration::from_secs(3)).await;
    let reply = text(&reply.expect("an answer, not silence"));
    assert_eq!(reply, "$1\r\nv\r\n");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let v: Option<String> = redis::cmd("GET").arg("k").query_async(&mut client).await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    // A key never seen is a clear error, not a guess.
    let err = redis::cmd("GET").arg("never-seen").query_async::<Option<String>>(&mut client).await.unwrap_err();
    assert_eq!(err.code(), Some("UNAVAILABLE"), "{err:?}");
    assert!(!err.is_connection_dropped(), "{err:?}");
    // A write while the upstream is gone is accepted into the journal (SPEC §3)...
    assert_eq!(call(&mut raw, &[b"SET", b"k", b"w"]).await, b"+OK\r\n");
    assert_eq!(call(&mut raw, &[b"GET", b"k"]).await, b"$1\r\nw\r\n");

    redis.restart();
    respite.wait_state("healthy", HEALTHY_WITHIN).await;
    // ...and replayed once the upstream is back (the restarted redis had no data).
    let direct = redis::Client::open(redis.url()).unwrap();
    let mut direct = direct.get_multiplexed_async_connection().await.unwrap();
    let v: Option<String> = redis::cmd("GET").arg("k").query_async(&mut direct).await.unwrap();
    assert_eq!(v.as_deref(), Some("w"));
    // The same connections work again.
    assert_eq!(call(&mut raw, &[b"SET", b"k", b"again"]).await, b"+OK\r\n");
    assert_eq!(call(&mut raw, &[b"GET", b"k"]).await, b"$5\r\nagain\r\n");
    let v: Option<String> = redis::cmd("GET").arg("k").query_async(&mut client).await.unwrap();
    assert_eq!(v.as_deref(), Some("again"));
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_on_stale_connections_succeed_after_an_upstream_restart() {
    let mut redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    // This test is about retries, not the breaker: the probe must not open it meanwhile.
    cfg.health.down_after_failures = 50;
    let respite = Respite::start_with(cfg).await;
    let mut shared = Raw::connect(respite.addr).await;
    let mut pinned = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut shared, &[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(call(&mut shared, &[b"GET", b"k"]).await, b"$1\r\nv\r\n");
    assert_eq!(call(&mut pinned, &[b"SELECT", b"0"]).await, b"+OK\r\n");
    assert_eq!(call(&mut pinned, &[b"GET", b"k"]).await, b"$1\r\nv\r\n");

    // Kill and restart at once: respite's open connections are now stale.
    redis.restart();
    let r = call(&mut shared, &[b"GET", b"k"]).await;
    assert_eq!(text(&r), "$-1\r\n", "shared GET after restart");
    let r = call(&mut pinned, &[b"GET", b"k"]).await;
    assert_eq!(text(&r), "$-1\r\n", "pinned GET after restart");
    // The client's SELECT was restored on the fresh dedicated connection.
    assert_eq!(call(&mut pinned, &[b"SET", b"k", b"p"]).await, b"+OK\r\n");
    assert_eq!(call(&mut shared, &[b"GET", b"k"]).await, b"$1\r\np\r\n");

    let body = metrics_body(&respite).await;
    for outcome in ["unavailable", "timeout", "unknown"] {
        let sample = format!("respite_commands_total{{command=\"get\",outcome=\"{outcome}\"}}");
        assert_eq!(metric_value(&body, &sample).unwrap_or(0.0), 0.0, "{sample}");
    }
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_on_a_stale_pinned_connection_that_provably_did_not_run_is_retried() {
    // The upstream restarted while this pinned client was idle: respite already holds the
    // FIN of the dead connection when the client sends INCR, so INCR cannot have reached
    // any upstream. It must be sent on a fresh connection, not answered -UNKNOWN.
    let mut redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    cfg.health.down_after_failures = 50;
    let respite = Respite::start_with(cfg).await;
    let mut pinned = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut pinned, &[b"SELECT", b"0"]).await, b"+OK\r\n");
    assert_eq!(call(&mut pinned, &[b"INCR", b"n"]).await, b":1\r\n");

    redis.restart();
    // Let the FIN of the killed server's socket arrive for sure.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = call(&mut pinned, &[b"INCR", b"n"]).await;
    assert_eq!(
        text(&r),
        ":1\r\n",
        "INCR on a connection the upstream had already closed was not executed anywhere; \
         it should be retried on a fresh connection"
    );
    assert_eq!(
        respite.metric("respite_commands_total{command=\"incr\",outcome=\"unknown\"}").await.unwrap_or(0.0),
        0.0
    );
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_whose_connection_breaks_gets_unknown_and_is_not_retried() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut cfg = test_config(&redis.url());
    // Long enough that the kill, not the timeout, ends the wait.
    cfg.upstream.command_timeout = "5s".parse().unwrap();
    let respite = Respite::start_with(cfg).await;
    let mut shared = Raw::connect(respite.addr).await;
    let mut pinned = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut shared, &[b"SET", b"counter", b"10"]).await, b"+OK\r\n");
    assert_eq!(call(&mut pinned, &[b"SELECT", b"0"]).await, b"+OK\r\n");
    assert_eq!(call(&mut pinned, &[b"GET", b"counter"]).await, b"$2\r\n10\r\n");

    redis.freeze();
    let start = Instant::now();
    shared.cmd(&[b"INCR", b"counter"]).await;
    pinned.cmd(&[b"INCR", b"counter"]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SIGKILL a stopped process: its sockets are reset, the INCRs unread.
    redis.kill();
    let expected_tail = "INCR was sent, its outcome is unknown and it was not retried\r\n";
    for (name, raw) in [("shared", &mut shared), ("pinned", &mut pinned)] {
        let r = reply_within(raw, Duration::from_secs(4)).await.map(|r| text(&r));
        let took = start.elapsed();
        let r = r.unwrap_or_else(|| panic!("{name}: no answer"));
        assert!(r.starts_with("-UNKNOWN respite: ") && r.ends_with(expected_tail), "{name}: {r:?}");
        assert!(took < Duration::from_secs(2), "{name}: answered after {took:?}, the kill was at 200ms");
    }
    assert_eq!(respite.metric("respite_commands_total{command=\"incr\",outcome=\"unknown\"}").await, Some(2.0));
    assert_eq!(respite.metric("respite_commands_total{command=\"incr\",outcome=\"ok\"}").await.unwrap_or(0.0), 0.0);

    redis.restart();
    respite.wait_state("healthy", HEALTHY_WITHIN).await;
    // The frozen server never read the INCRs and respite did not retry them.
    assert_eq!(call(&mut shared, &[b"GET", b"counter"]).await, b"$2\r\n10\r\n");
    assert_eq!(call(&mut pinned, &[b"GET", b"counter"]).await, b"$2\r\n10\r\n");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_opens_fails_fast_and_closes_after_restart() {
    let mut redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let mut raw = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut raw, &[b"PING"]).await, b"+PONG\r\n");
    assert_eq!(respite.status().await["state"], "healthy");

    redis.kill();
    for _ in 0..3 {
        // Before the breaker opens: not sent; after: a key never seen (both UNAVAILABLE).
        let r = text(&call(&mut raw, &[b"GET", b"k"]).await);
        assert!(r.starts_with("-UNAVAILABLE ") && r.contains("GET"), "{r:?}");
    }
    respite.wait_state("down", Duration::from_secs(3)).await;
    let status = respite.status().await;
    assert_eq!(status["state"], "down");
    let last = &status["upstream"]["last_error"];
    assert!(last["message"].as_str().is_some_and(|m| !m.is_empty()), "last_error missing: {status}");
    assert!(last["at"].is_string(), "{status}");
    let body = metrics_body(&respite).await;
    assert_eq!(metric_value(&body, "respite_upstream_state{state=\"down\"}"), Some(1.0));
    assert_eq!(metric_value(&body, "respite_upstream_state{state=\"healthy\"}"), Some(0.0));

    // While down: answered locally, well under the command timeout (1s): a key never
    // seen is an error, a counter never seen counts from 0 (SPEC §3.7), PING is local.
    for (args, want) in [
        (&[&b"GET"[..], b"k"][..], "-UNAVAILABLE upstream down: GET needs a key this sidecar has not seen"),
        (&[b"INCR", b"n"], ":1\r\n"),
        (&[b"PING"], "+PONG\r\n"),
    ] {
        let (r, took) = timed_call(&mut raw, args, Duration::from_secs(3)).await;
        let r = text(&r.expect("an answer"));
        assert!(r.starts_with(want), "{r:?}");
        assert!(took < Duration::from_millis(200), "{} took {took:?}", text(args[0]));
        if r.starts_with('-') {
            // Refusals carry the breaker's cause: the upstream was killed.
            assert!(r.contains(" [upstream down for ") && r.contains("s, down because: "), "{r:?}");
            assert!(r.contains("consecutive upstream failures, last: "), "{r:?}");
        }
    }

    redis.restart();
    let start = Instant::now();
    respite.wait_state("healthy", Duration::from_secs(3)).await;
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    assert_eq!(call(&mut raw, &[b"PING"]).await, b"+PONG\r\n");
    assert_eq!(call(&mut raw, &[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(call(&mut raw, &[b"GET", b"k"]).await, b"$1\r\nv\r\n");

    let body = metrics_body(&respite).await;
    let into_down = body
        .lines()
        .filter(|l| l.starts_with("respite_upstream_state_transitions_total{") && l.contains("to=\"down\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(into_down >= 1.0, "{body}");
    let out_of_down = metric_sum(&body, "respite_upstream_state_transitions_total{from=\"down\"");
    assert!(out_of_down >= 1.0, "{body}");
    assert_eq!(metric_value(&body, "respite_upstream_state{state=\"healthy\"}"), Some(1.0));
    assert_eq!(metric_value(&body, "respite_upstream_state{state=\"down\"}"), Some(0.0));
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_forces_down_and_auto_ends_it() {
    let redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    cfg.admin.token = "t".into();
    let respite = Respite::start_with(cfg).await;
    let mut raw = Raw::connect(respite.addr).await;
    let mut client = respite.client().await;
    assert_eq!(call(&mut raw, &[b"SET", b"k", b"v"]).await, b"+OK\r\n");

    let down = "{\"state\":\"down\"}";
    assert_eq!(respite.http_post("/admin/drill", None, down).await.0, 401);
    assert_eq!(respite.http_post("/admin/drill", Some("wrong"), down).await.0, 401);
    assert_eq!(respite.http_post("/admin/drill", Some("t"), "{\"state\":\"sideways\"}").await.0, 400);
    assert_eq!(respite.status().await["state"], "healthy");

    let (code, body) = respite.http_post("/admin/drill", Some("t"), down).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"down\""), "{body}");
    let status = respite.status().await;
    assert_eq!(status["state"], "down");
    assert_eq!(status["drill"], true);
    assert_eq!(respite.metric("respite_upstream_state{state=\"down\"}").await, Some(1.0));
    // During the drill, reads are served from the local store, as in a real outage.
    let (r, took) = timed_call(&mut raw, &[b"GET", b"k"], Duration::from_secs(3)).await;
    assert_eq!(text(&r.unwrap()), "$1\r\nv\r\n");
    assert!(took < Duration::from_millis(200), "{took:?}");
    let (r, _) = timed_call(&mut raw, &[b"GET", b"never-seen"], Duration::from_secs(3)).await;
    assert!(text(&r.unwrap()).starts_with("-UNAVAILABLE upstream down: GET needs a key"));
    let err = redis::cmd("GET").arg("never-seen").query_async::<Option<String>>(&mut client).await.unwrap_err();
    assert_eq!(err.code(), Some("UNAVAILABLE"), "{err:?}");
    // The probe still reaches the upstream, but the drill holds the state.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(respite.status().await["state"], "down");
    // A write during the drill is journaled, exactly as in a real outage...
    assert_eq!(call(&mut raw, &[b"SET", b"k", b"w"]).await, b"+OK\r\n");
    assert_eq!(respite.status().await["journal"]["entries"], 1);

    let (code, body) = respite.http_post("/admin/drill", Some("t"), "{\"state\":\"auto\"}").await;
    assert_eq!(code, 200, "{body}");
    respite.wait_state("healthy", Duration::from_secs(2)).await;
    assert_eq!(respite.status().await["drill"], false);
    // ...and replayed when it ends.
    assert_eq!(respite.status().await["journal"]["entries"], 0);
    assert_eq!(call(&mut raw, &[b"GET", b"k"]).await, b"$1\r\nw\r\n");
    let v: Option<String> = redis::cmd("GET").arg("k").query_async(&mut client).await.unwrap();
    assert_eq!(v.as_deref(), Some("w"));
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_is_forbidden_without_a_configured_token() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let down = "{\"state\":\"down\"}";
    assert_eq!(respite.http_post("/admin/drill", Some("t"), down).await.0, 403);
    assert_eq!(respite.http_post("/admin/drill", Some(""), down).await.0, 403);
    assert_eq!(respite.http_post("/admin/drill", None, down).await.0, 403);
    assert_eq!(respite.status().await["state"], "healthy");
    assert_eq!(respite.status().await["drill"], false);
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_serves_clear_errors_when_the_upstream_is_unreachable() {
    let port = free_port();
    let respite = Respite::start(&format!("redis://127.0.0.1:{port}")).await;
    let mut raw = Raw::connect(respite.addr).await;
    for _ in 0..2 {
        let (r, took) = timed_call(&mut raw, &[b"GET", b"k"], Duration::from_secs(3)).await;
        let r = text(&r.expect("an answer"));
        assert!(r.starts_with("-UNAVAILABLE ") && r.contains("GET"), "{r:?}");
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }
    // Once the breaker is open, PING is answered locally (SPEC §3 command coverage).
    respite.wait_state("down", Duration::from_secs(3)).await;
    let (r, _) = timed_call(&mut raw, &[b"PING"], Duration::from_secs(3)).await;
    assert_eq!(text(&r.unwrap()), "+PONG\r\n");
    assert_eq!(respite.http_get("/readyz").await.0, 200);
    assert_eq!(respite.http_get("/healthz").await.0, 200);
    respite.wait_state("down", Duration::from_secs(3)).await;
    let status = respite.status().await;
    let msg = status["upstream"]["last_error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains(&port.to_string()), "{status}");
    assert_eq!(respite.http_get("/readyz").await.0, 200);
    // A real client sees the error, not a dropped connection.
    let p = respite.port();
    let cli = tokio::task::spawn_blocking(move || redis_cli(p, &["GET", "k"])).await.unwrap();
    assert!(cli.contains("UNAVAILABLE"), "redis-cli printed {cli:?}");
    let r = text(&call(&mut raw, &[b"GET", b"k"]).await);
    assert!(r.starts_with("-UNAVAILABLE upstream down: GET needs a key this sidecar has not seen"), "{r:?}");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_command_on_a_frozen_upstream_ends_at_its_timeout_plus_margin() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await; // command_timeout 1s, blocking_margin 1s
    let mut raw = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut raw, &[b"PING"]).await, b"+PONG\r\n");

    redis.freeze();
    let (r, took) = timed_call(&mut raw, &[b"BLPOP", b"k", b"1"], Duration::from_secs(5)).await;
    let r = text(&r.expect("BLPOP must not hang on a frozen upstream"));
    assert!(r.starts_with("-TIMEOUT respite: upstream did not answer BLPOP within"), "{r:?}");
    // BLPOP's own 1s plus the 1s margin: not cut at the 1s command timeout, and not longer.
    assert!(took >= Duration::from_millis(1900) && took <= Duration::from_millis(2600), "answered after {took:?}");

    redis.thaw();
    respite.wait_state("healthy", HEALTHY_WITHIN).await;
    // The same connection blocks and times out normally again.
    let (r, took) = timed_call(&mut raw, &[b"BLPOP", b"k", b"1"], Duration::from_secs(5)).await;
    assert_eq!(text(&r.unwrap()), "*-1\r\n");
    assert!(took >= Duration::from_millis(900), "{took:?}");
    respite.shutdown().await;
}

/// A pinned connection that the upstream closed while the client sat inside MULTI or WATCH
/// is never silently replaced: the transaction's state lived on it. Queued commands must not
/// run on a fresh connection, and EXEC must abort (regression: they used to run at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_connection_was_lost_is_aborted_not_replayed_on_a_new_one() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes"]);
    let respite = Respite::start(&redis.url()).await;
    let mut raw = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut raw, &[b"SET", b"n", b"0"]).await, b"+OK\r\n");

    // MULTI, then the upstream restarts while the client is idle.
    assert_eq!(call(&mut raw, &[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(call(&mut raw, &[b"INCR", b"n"]).await, b"+QUEUED\r\n");
    redis.restart();
    respite.wait_state("healthy", HEALTHY_WITHIN).await;
    let r = text(&call(&mut raw, &[b"INCR", b"n"]).await);
    assert!(
        r.starts_with('-') && r.contains("MULTI/WATCH"),
        "a queued command must not run on a new connection: {r:?}"
    );
    let r = text(&call(&mut raw, &[b"EXEC"]).await);
    assert!(r.starts_with("-EXECABORT"), "{r:?}");
    let mut direct = loaded_connection(&redis).await;
    let n: String = redis::cmd("GET").arg("n").query_async(&mut direct).await.unwrap();
    assert_eq!(n, "0", "neither INCR ran");

    // WATCH, then the connection is lost: the EXEC must not succeed without the WATCH.
    assert_eq!(call(&mut raw, &[b"WATCH", b"n"]).await, b"+OK\r\n");
    redis.restart();
    respite.wait_state("healthy", HEALTHY_WITHIN).await;
    let mut direct = loaded_connection(&redis).await;
    let _: () = redis::cmd("SET").arg("n").arg("changed").query_async(&mut direct).await.unwrap();
    let r = text(&call(&mut raw, &[b"MULTI"]).await);
    assert!(r.starts_with('-'), "MULTI after a lost WATCH must not start a transaction that ignores it: {r:?}");
    let r = text(&call(&mut raw, &[b"EXEC"]).await);
    assert!(r.starts_with("-EXECABORT"), "{r:?}");
    // The client can start over.
    assert_eq!(call(&mut raw, &[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(call(&mut raw, &[b"GET", b"n"]).await, b"+QUEUED\r\n");
    assert_eq!(call(&mut raw, &[b"EXEC"]).await, b"*1\r\n$7\r\nchanged\r\n");
    respite.shutdown().await;
}

/// A direct connection to a just-restarted redis, once it has finished loading its AOF
/// (before that it answers LOADING).
async fn loaded_connection(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let client = redis::Client::open(redis.url()).unwrap();
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            if redis::cmd("PING").query_async::<String>(&mut c).await.is_ok() {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "redis did not finish loading");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_on_a_pinned_connection_returns_to_the_urls_database_and_credentials() {
    // RESET puts the upstream connection in database 0 as the default user; respite's
    // client is back in the URL's database (5 here) with the URL's credentials. The pinned
    // connection used to stay in database 0, unauthenticated, after RESET.
    let redis = RedisServer::start_with(&["--requirepass", "pw"]);
    let url = format!("redis://:pw@127.0.0.1:{}/5", redis.port);
    let respite = Respite::start(&url).await;
    let mut raw = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut raw, &[b"CLIENT", b"SETNAME", b"pinned"]).await, b"+OK\r\n");
    assert_eq!(call(&mut raw, &[b"RESET"]).await, b"+RESET\r\n");
    assert_eq!(call(&mut raw, &[b"SET", b"after-reset", b"v"]).await, b"+OK\r\n");
    let p = redis.port;
    let in_five = tokio::task::spawn_blocking(move || {
        redis_cli(p, &["-a", "pw", "--no-auth-warning", "-n", "5", "GET", "after-reset"])
    })
    .await
    .unwrap();
    assert_eq!(in_five.trim(), "v");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_hello_after_hello_auth_keeps_the_user_across_a_reconnect() {
    // HELLO 3 AUTH alice, then a bare HELLO: the connection is still alice's, in RESP3.
    // respite recorded only the last HELLO, so after a reconnect the client was silently
    // the default user, in RESP2.
    let redis = RedisServer::start_with(&["--user", "alice", "on", ">apw", "~*", "&*", "+@all"]);
    let respite = Respite::start(&redis.url()).await;
    let mut raw = Raw::connect(respite.addr).await;
    let hello = text(&call(&mut raw, &[b"HELLO", b"3", b"AUTH", b"alice", b"apw"]).await);
    assert!(hello.starts_with('%'), "{hello}");
    assert!(text(&call(&mut raw, &[b"HELLO"]).await).starts_with('%'));
    assert_eq!(call(&mut raw, &[b"ACL", b"WHOAMI"]).await, b"$5\r\nalice\r\n");
    let p = redis.port;
    let killed = tokio::task::spawn_blocking(move || redis_cli(p, &["CLIENT", "KILL", "USER", "alice"])).await.unwrap();
    assert_eq!(killed.trim(), "1", "the client's dedicated connection was closed");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(call(&mut raw, &[b"ACL", b"WHOAMI"]).await, b"$5\r\nalice\r\n", "still alice after the reconnect");
    let map = text(&call(&mut raw, &[b"HGETALL", b"nothing"]).await);
    assert_eq!(map, "%0\r\n", "still RESP3");
    respite.shutdown().await;
}

/// A TCP relay to a redis-server whose existing connections can be frozen: a frozen
/// connection stops reading (respite's writes pile up in the kernel's buffers until they
/// block) and relays nothing back, while connections opened afterwards relay normally — one
/// flow blackholed in the network while the upstream itself answers.
struct Relay {
    addr: std::net::SocketAddr,
    /// Connections numbered below this are frozen.
    frozen_below: std::sync::Arc<std::sync::atomic::AtomicU64>,
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Relay {
    async fn start(target_port: u16) -> Relay {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // Small receive buffers (no autotuning): a frozen connection blocks its writer soon.
        socket.set_recv_buffer_size(64 << 10).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(64).unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen_below = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let (frozen, counter) = (frozen_below.clone(), next.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = counter.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut r, mut w) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(sr), Box::new(cw)),
                ] {
                    let frozen = frozen.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16 << 10];
                        loop {
                            if id < frozen.load(Ordering::SeqCst) {
                                // Keep both sockets open, read and relay nothing.
                                std::future::pending::<()>().await;
                            }
                            match r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if id < frozen.load(Ordering::SeqCst) {
                                        std::future::pending::<()>().await;
                                    }
                                    if w.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                }
            }
        });
        Relay { addr, frozen_below, next }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Freezes every connection open now; later ones relay normally.
    fn freeze_existing(&self) {
        use std::sync::atomic::Ordering;
        self.frozen_below.store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_connection_stuck_writing_is_replaced_once_its_reply_timed_out() {
    // A request too big for the kernel's buffers, on a connection that stopped reading: the
    // write blocks. Once the reply timed out the connection is abandoned, so the next
    // client's command on the same shared connection opens a fresh one instead of waiting
    // behind a write that may never finish.
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port).await;
    let mut cfg = test_config(&relay.url());
    cfg.upstream.pool_size = 1;
    let respite = Respite::start_with(cfg).await;
    let mut a = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut a, &[b"SET", b"stuck:k", b"v"]).await, b"+OK\r\n");

    relay.freeze_existing();
    let big = vec![b'x'; 16 << 20];
    let (reply, _) = timed_call(&mut a, &[b"SET", b"stuck:big", &big], Duration::from_secs(5)).await;
    let reply = text(&reply.expect("an answer within 5s"));
    assert!(reply.starts_with("-TIMEOUT respite: upstream did not answer SET within 1s"), "{reply}");

    // The probe's connection was frozen too: it reconnects through the relay and sees the
    // upstream answering.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    respite.wait_state("healthy", Duration::from_secs(10)).await;
    let mut b = Raw::connect(respite.addr).await;
    let (reply, took) = timed_call(&mut b, &[b"GET", b"stuck:k"], Duration::from_secs(5)).await;
    assert_eq!(reply.as_deref().map(text), Some("$1\r\nv\r\n".to_string()), "took {took:?}");
}
