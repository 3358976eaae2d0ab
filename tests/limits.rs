//! Client-side limits and bad input against a real redis-server: connection limit, bulk
//! and array size limits, malformed RESP, inline commands, idle timeout, pipeline depth and
//! many concurrent clients. A misbehaving client gets a clear error (and is closed where
//! the stream cannot be resynchronised); every other client is unaffected.
mod common;
use common::*;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

// `Raw`'s futures hold a 64 KiB read buffer; boxing them keeps the test futures small
// enough for the default test-thread stack in debug builds.
async fn call(raw: &mut Raw, args: &[&[u8]]) -> Vec<u8> {
    Box::pin(raw.call(args)).await
}

async fn reply(raw: &mut Raw) -> Vec<u8> {
    Box::pin(raw.reply()).await
}

async fn reply_within(raw: &mut Raw, d: Duration) -> Option<Vec<u8>> {
    Box::pin(raw.reply_within(d)).await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Reads everything the peer sends until it closes the connection. Returns the bytes and
/// whether the close (EOF or reset) came within `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends `bytes` on a fresh connection to `addr` and reads until it closes.
async fn exchange_until_closed(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_until_closed(&mut s, Duration::from_secs(3)).await
}

/// A client that must keep working while another one misbehaves.
async fn assert_serves(raw: &mut Raw) {
    assert_eq!(call(raw, &[b"PING"]).await, b"+PONG\r\n");
    assert_eq!(call(raw, &[b"SET", b"bystander", b"ok"]).await, b"+OK\r\n");
    assert_eq!(call(raw, &[b"GET", b"bystander"]).await, b"$2\r\nok\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_rejects_the_extra_client_like_redis() {
    let redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    cfg.client.max_connections = 3;
    let respite = Respite::start_with(cfg).await;
    let mut first = Vec::new();
    for _ in 0..3 {
        let mut raw = Raw::connect(respite.addr).await;
        assert_eq!(call(&mut raw, &[b"PING"]).await, b"+PONG\r\n");
        first.push(raw);
    }
    let mut fourth = TcpStream::connect(respite.addr).await.unwrap();
    let (bytes, closed) = read_until_closed(&mut fourth, Duration::from_secs(2)).await;
    assert_eq!(text(&bytes), "-ERR max number of clients reached\r\n");
    assert!(closed, "the rejected client must be closed");
    for raw in &mut first {
        assert_serves(raw).await;
    }
    assert_eq!(
        respite.metric("respite_client_connections_rejected_total{reason=\"max_connections\"}").await,
        Some(1.0)
    );

    // One leaves: a new client gets its place (once respite noticed the close).
    drop(first.pop());
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut s = TcpStream::connect(respite.addr).await.unwrap();
        s.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.expect("an answer").unwrap();
        if &buf[..n] == b"+PONG\r\n" {
            break;
        }
        assert_eq!(text(&buf[..n]), "-ERR max number of clients reached\r\n");
        assert!(Instant::now() < deadline, "no place freed 2s after a client left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for raw in &mut first {
        assert_serves(raw).await;
    }
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bulk_is_refused_from_its_header() {
    let redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    cfg.client.max_bulk_bytes = "1KiB".parse().unwrap();
    let respite = Respite::start_with(cfg).await;
    let mut other = Raw::connect(respite.addr).await;
    assert_serves(&mut other).await;
    let before = respite.metric("respite_client_protocol_errors_total").await.unwrap_or(0.0);

    // Exactly the limit is accepted.
    let at_limit = vec![b'x'; 1024];
    assert_eq!(call(&mut other, &[b"SET", b"big", &at_limit]).await, b"+OK\r\n");

    // Only the header of a 2 KiB value: the error comes before the body.
    let mut bad = Raw::connect(respite.addr).await;
    bad.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2048\r\n").await;
    let r = reply_within(&mut bad, Duration::from_secs(1)).await.expect("the error comes without waiting for the body");
    assert_eq!(text(&r), "-ERR Protocol error: invalid bulk length\r\n");
    assert!(bad.closed_within(Duration::from_secs(1)).await);

    assert_serves(&mut other).await;
    assert_eq!(call(&mut other, &[b"EXISTS", b"k"]).await, b":0\r\n");
    assert_eq!(respite.metric("respite_client_protocol_errors_total").await, Some(before + 1.0));
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_arguments_are_refused() {
    let redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    cfg.client.max_array_len = 8;
    let respite = Respite::start_with(cfg).await;
    let mut other = Raw::connect(respite.addr).await;
    // 8 arguments: fine.
    assert_eq!(call(&mut other, &[b"DEL", b"a", b"b", b"c", b"d", b"e", b"f", b"g"]).await, b":0\r\n");
    // 9: refused from the array header.
    let (bytes, closed) = exchange_until_closed(respite.addr, b"*9\r\n").await;
    assert_eq!(text(&bytes), "-ERR Protocol error: invalid multibulk length\r\n");
    assert!(closed);
    let nine = encode(&[b"DEL", b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h"]);
    let (bytes, closed) = exchange_until_closed(respite.addr, &nine).await;
    assert_eq!(text(&bytes), "-ERR Protocol error: invalid multibulk length\r\n");
    assert!(closed);
    assert_serves(&mut other).await;
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_redis_errors_and_closes_only_that_client() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let mut other = Raw::connect(respite.addr).await;
    assert_serves(&mut other).await;

    // (input, exact bytes Redis 7 answers, then closes) — checked against redis-server.
    let closing: &[(&[u8], &str)] = &[
        (b"*1\r\n:5\r\n", "-ERR Protocol error: expected '$', got ':'\r\n"),
        (b"*1\r\n$-3\r\n", "-ERR Protocol error: invalid bulk length\r\n"),
        (b"*1\r\n$abc\r\n", "-ERR Protocol error: invalid bulk length\r\n"),
        (b"*abc\r\n", "-ERR Protocol error: invalid multibulk length\r\n"),
        (b"SET \"a b\"c\r\n", "-ERR Protocol error: unbalanced quotes in request\r\n"),
    ];
    let mut problems = Vec::new();
    for (input, expected) in closing {
        let (bytes, closed) = exchange_until_closed(respite.addr, input).await;
        if text(&bytes) != *expected || !closed {
            problems.push(format!(
                "{:?}: got {:?} (closed: {closed}), expected {expected:?} and close",
                text(input),
                text(&bytes)
            ));
        }
        assert_serves(&mut other).await;
    }

    // Empty arrays are ignored silently; the connection stays in sync.
    let mut raw = Raw::connect(respite.addr).await;
    raw.send(b"*-1\r\n*0\r\n*1\r\n$4\r\nPING\r\n").await;
    assert_eq!(reply(&mut raw).await, b"+PONG\r\n");
    assert_eq!(call(&mut raw, &[b"PING"]).await, b"+PONG\r\n");

    // A truncated frame, then the client leaves: nothing executes, nothing crashes.
    let mut s = TcpStream::connect(respite.addr).await.unwrap();
    s.write_all(b"*3\r\n$3\r\nSET\r\n$9\r\ntruncated\r\n$10\r\nabc").await.unwrap();
    s.shutdown().await.unwrap();
    let (bytes, closed) = read_until_closed(&mut s, Duration::from_secs(2)).await;
    assert!(closed && bytes.is_empty(), "got {:?}, closed: {closed}", text(&bytes));
    assert_serves(&mut other).await;
    assert_eq!(call(&mut other, &[b"EXISTS", b"truncated"]).await, b":0\r\n");

    // Unknown command and wrong arity: the upstream's own error, byte for byte, and the
    // connection stays open.
    let mut direct = Raw::connect(([127, 0, 0, 1], redis.port).into()).await;
    let cases: &[&[&[u8]]] =
        &[&[b"NOSUCHCOMMAND", b"a", b"b"], &[b"GET"], &[b"SET", b"onlykey"], &[b"HSET", b"h", b"field"]];
    for args in cases {
        let expected = call(&mut direct, args).await;
        assert!(expected.starts_with(b"-ERR "), "{}", text(&expected));
        let got = call(&mut raw, args).await;
        if got != expected {
            problems.push(format!(
                "{:?}: got {:?}, redis says {:?}",
                args.iter().map(|a| text(a)).collect::<Vec<_>>(),
                text(&got),
                text(&expected)
            ));
        }
    }
    raw.send(b"NOSUCHCOMMAND a b\r\n").await;
    assert_eq!(
        text(&reply(&mut raw).await),
        "-ERR unknown command 'NOSUCHCOMMAND', with args beginning with: 'a' 'b' \r\n"
    );
    raw.send(b"GET\r\n").await;
    assert_eq!(text(&reply(&mut raw).await), "-ERR wrong number of arguments for 'get' command\r\n");
    assert_eq!(call(&mut raw, &[b"PING"]).await, b"+PONG\r\n");

    // Inline commands, with Redis's quoting.
    raw.send(b"PING\r\n").await;
    assert_eq!(reply(&mut raw).await, b"+PONG\r\n");
    raw.send(b"SET \"a b\" c\r\n").await;
    assert_eq!(reply(&mut raw).await, b"+OK\r\n");
    raw.send(b"GET \"a b\"\r\n").await;
    assert_eq!(reply(&mut raw).await, b"$1\r\nc\r\n");
    assert_eq!(call(&mut other, &[b"GET", b"a b"]).await, b"$1\r\nc\r\n");
    raw.send(b"\r\nPING\n").await;
    assert_eq!(reply(&mut raw).await, b"+PONG\r\n");

    assert!(problems.is_empty(), "{}", problems.join("\n"));
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_a_bad_frame_are_answered_before_the_error() {
    // Redis executes what it parsed before the bad frame, then replies with the error and
    // closes. Sent in one write, so that respite reads all of it at once.
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let cases: &[(&[u8], &str)] = &[
        (b"PING\r\n*1\r\n:5\r\n", "+PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n"),
        (b"*1\r\n$4\r\nPING\r\n*1\r\n$-3\r\n", "+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"),
        (
            b"*3\r\n$3\r\nSET\r\n$6\r\nbefore\r\n$1\r\n1\r\n*1\r\n$abc\r\n",
            "+OK\r\n-ERR Protocol error: invalid bulk length\r\n",
        ),
    ];
    let mut problems = Vec::new();
    for (input, expected) in cases {
        let (bytes, closed) = exchange_until_closed(respite.addr, input).await;
        if text(&bytes) != *expected || !closed {
            problems.push(format!(
                "{:?}: got {:?} (closed: {closed}), expected {expected:?} and close",
                text(input),
                text(&bytes)
            ));
        }
    }
    let mut raw = Raw::connect(respite.addr).await;
    let before = text(&call(&mut raw, &[b"GET", b"before"]).await);
    if before != "$1\r\n1\r\n" {
        problems.push(format!("the SET before the bad frame was not executed: GET before -> {before:?}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_of_garbage_closes_that_client_only() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let mut other = Raw::connect(respite.addr).await;
    assert_serves(&mut other).await;

    let mut rng = fastrand::Rng::with_seed(0x005e_551e);
    let garbage: Vec<u8> = (0..1 << 20).map(|_| rng.u8(..)).collect();
    let s = TcpStream::connect(respite.addr).await.unwrap();
    let (mut read, mut write) = s.into_split();
    // Write and read at once, so that neither side blocks on a full socket buffer.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&garbage).await;
        write
    });
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let deadline = Instant::now() + Duration::from_secs(10);
    let closed = loop {
        match tokio::time::timeout_at(deadline, read.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    let shown = text(&out);
    assert!(closed, "respite kept a connection sending garbage open");
    assert!(
        shown.contains("-ERR Protocol error: "),
        "no protocol error in {} bytes of replies: {:?}",
        out.len(),
        &shown[shown.len().saturating_sub(300)..]
    );
    assert_serves(&mut other).await;
    assert!(respite.metric("respite_client_protocol_errors_total").await.unwrap_or(0.0) >= 1.0);
    // The upstream itself is fine.
    let p = redis.port;
    let pong = tokio::task::spawn_blocking(move || redis_cli(p, &["PING"])).await.unwrap();
    assert_eq!(pong.trim(), "PONG");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_idle_clients_only() {
    let redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    cfg.client.idle_timeout = "300ms".parse().unwrap();
    let respite = Respite::start_with(cfg).await;

    let mut idle = Raw::connect(respite.addr).await;
    let mut active = Raw::connect(respite.addr).await;
    let mut subscriber = Raw::connect(respite.addr).await;
    let mut blocked = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut idle, &[b"PING"]).await, b"+PONG\r\n");
    assert_eq!(call(&mut subscriber, &[b"SUBSCRIBE", b"ch"]).await, b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
    let start = Instant::now();
    // Blocked for 1s, longer than the idle timeout: blocked clients are not idle.
    blocked.cmd(&[b"BLPOP", b"idle:list", b"1"]).await;
    let idle_task = tokio::spawn(async move {
        let closed = idle.closed_within(Duration::from_secs(2)).await;
        (closed, start.elapsed())
    });
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(call(&mut active, &[b"PING"]).await, b"+PONG\r\n");
    }
    let (closed, after) = idle_task.await.unwrap();
    assert!(closed, "an idle client was not closed");
    assert!(
        after >= Duration::from_millis(250) && after <= Duration::from_millis(900),
        "closed after {after:?}, idle_timeout is 300ms"
    );
    assert_eq!(
        reply_within(&mut blocked, Duration::from_secs(2)).await.as_deref(),
        Some(&b"*-1\r\n"[..]),
        "the blocked client lost its BLPOP reply"
    );
    assert_eq!(call(&mut blocked, &[b"PING"]).await, b"+PONG\r\n");

    // The subscriber was silent for over 1s and still gets messages.
    let mut publisher = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut publisher, &[b"PUBLISH", b"ch", b"hello"]).await, b":1\r\n");
    assert_eq!(reply(&mut subscriber).await, b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_pipeline_with_a_small_max_pipeline_is_answered_in_order() {
    let redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    cfg.client.max_pipeline = 4;
    let respite = Respite::start_with(cfg).await;
    let mut raw = Raw::connect(respite.addr).await;

    let ping = encode(&[b"PING"]);
    raw.send(&ping.repeat(100)).await;
    for i in 0..100 {
        assert_eq!(reply(&mut raw).await, b"+PONG\r\n", "reply {i}");
    }

    let mut all = Vec::new();
    for i in 0..100 {
        if i % 10 == 0 {
            all.extend_from_slice(b"PING\r\n");
        } else {
            all.extend_from_slice(&encode(&[b"INCR", b"pipelined"]));
        }
    }
    raw.send(&all).await;
    let mut n = 0;
    for i in 0..100 {
        let r = reply(&mut raw).await;
        if i % 10 == 0 {
            assert_eq!(text(&r), "+PONG\r\n", "reply {i}");
        } else {
            n += 1;
            assert_eq!(text(&r), format!(":{n}\r\n"), "reply {i}");
        }
    }
    assert!(reply_within(&mut raw, Duration::from_millis(100)).await.is_none());
    assert_eq!(call(&mut raw, &[b"GET", b"pipelined"]).await, b"$2\r\n90\r\n");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_incr_one_key_exactly() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let url = respite.url();
    let work = async {
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
                let mut last = 0i64;
                for _ in 0..50 {
                    let v: i64 = redis::cmd("INCR").arg("shared:counter").query_async(&mut c).await.unwrap();
                    assert!(v > last, "INCR went backwards on one connection");
                    last = v;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(20), work).await.expect("200 clients x 50 INCR within 20s");
    let mut c = respite.client().await;
    let v: i64 = redis::cmd("GET").arg("shared:counter").query_async(&mut c).await.unwrap();
    assert_eq!(v, 10_000);
    let p = redis.port;
    let direct = tokio::task::spawn_blocking(move || redis_cli(p, &["GET", "shared:counter"])).await.unwrap();
    assert_eq!(direct.trim(), "10000");
    assert_eq!(respite.metric("respite_commands_total{command=\"incr\",outcome=\"ok\"}").await, Some(10_000.0));
    respite.shutdown().await;
}

/// Sends each part of `parts` in its own write, 100 ms apart (so each is its own read on
/// the other side), then reads replies until `expected_replies` complete ones arrived.
async fn exchange_in_parts(addr: SocketAddr, parts: &[&[u8]], expected_replies: usize) -> Vec<u8> {
    let mut raw = Raw::connect(addr).await;
    for p in parts {
        raw.send(p).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut out = Vec::new();
    for i in 0..expected_replies {
        match reply_within(&mut raw, Duration::from_secs(3)).await {
            Some(r) => out.extend_from_slice(&r),
            None => panic!("reply {i} of {parts:?} missing; got so far {:?}", text(&out)),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_split_after_empty_requests_is_parsed_where_it_is() {
    // Empty lines and `*0` are requests Redis ignores. A round made only of them used to
    // leave its bytes in the buffer while the parser's progress on the request after them
    // counted from past them: the request was then read from the wrong offset.
    let redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    // One shared upstream connection: a misframed request would shift a bystander's replies.
    cfg.upstream.pool_size = 1;
    let respite = Respite::start_with(cfg).await;
    let mut bystander = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut bystander, &[b"SET", b"mine", b"bystander's"]).await, b"+OK\r\n");
    let cases: &[(&[&[u8]], usize)] = &[
        (&[b"\r\n*1\r\n$4\r\nPI", b"NG\r\n"], 1),
        (&[b"*0\r\n*-1\r\n\n*2\r\n$4\r\nECHO\r\n$5\r\nhel", b"lo\r\n"], 1),
        // An argument that looks like a bulk header: parsed from the wrong offset, this was
        // one request to respite and two to the upstream, whose extra reply went to the next
        // batch on the shared connection (another client's).
        (&[b"\n\n\n\n\n\n\n\n\n\n\n\n*2\r\n$10\r\n$28\r\n12345\r\n$3\r\nx", b"yz\r\n*1\r\n$4\r\nPING\r\n"], 2),
    ];
    for (parts, replies) in cases {
        let direct = exchange_in_parts(SocketAddr::from(([127, 0, 0, 1], redis.port)), parts, *replies).await;
        let proxied = exchange_in_parts(respite.addr, parts, *replies).await;
        assert_eq!(text(&proxied), text(&direct), "{parts:?}");
        assert_eq!(call(&mut bystander, &[b"GET", b"mine"]).await, b"$11\r\nbystander's\r\n", "{parts:?}");
    }
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_empty_lines_does_not_accumulate() {
    // 16 MiB of empty lines (ignored by Redis) then a PING, with a query buffer limit of
    // 1 MiB: the empty lines are dropped as they are read, so the buffer never holds them
    // all, and the PING is answered without re-reading them (they used to pile up in the
    // buffer and be parsed again on every read: quadratic, minutes for this input).
    let redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    cfg.client.max_query_buffer = "1MiB".parse().unwrap();
    cfg.client.max_bulk_bytes = "1MiB".parse().unwrap();
    let respite = Respite::start_with(cfg).await;
    let mut raw = Raw::connect(respite.addr).await;
    let lines = b"\n".repeat(16 << 20);
    let sent = async {
        raw.send(&lines).await;
        raw.send(b"PING\r\n").await;
        reply(&mut raw).await
    };
    let pong =
        tokio::time::timeout(Duration::from_secs(20), sent).await.expect("PING answered after 16 MiB of empty lines");
    assert_eq!(pong, b"+PONG\r\n");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_timeouts_beyond_any_clock_get_the_upstreams_answer() {
    // Timeouts too large for a clock used to panic the session (no reply, connection
    // dropped): they are the upstream's to judge, as Redis judges them.
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let mut direct = Raw::connect(SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
    let mut raw = Raw::connect(respite.addr).await;
    let cases: &[&[&[u8]]] = &[
        &[b"BLPOP", b"k", b"1e20"],
        &[b"BLPOP", b"k", b"1e25"],
        &[b"BZPOPMIN", b"z", b"18446744073709551616"],
        &[b"WAIT", b"0", b"1e25"],
        &[b"XREAD", b"BLOCK", b"1e30", b"STREAMS", b"s", b"0"],
        &[b"XREAD", b"BLOCK", b"99999999999999999999", b"STREAMS", b"s", b"0"],
    ];
    for args in cases {
        let want = text(&call(&mut direct, args).await);
        let got = reply_within(&mut raw, Duration::ZERO).await;
        assert!(got.is_none(), "nothing pending before {args:?}");
        raw.cmd(args).await;
        let got = reply_within(&mut raw, Duration::from_secs(3)).await.map(|r| text(&r));
        assert_eq!(got.as_deref(), Some(want.as_str()), "{args:?}");
        assert_eq!(call(&mut raw, &[b"PING"]).await, b"+PONG\r\n", "the connection survives {args:?}");
    }
    // A timeout of centuries is a valid one: the client waits, and is woken.
    raw.cmd(&[b"BLPOP", b"woken", b"1e10"]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(call(&mut direct, &[b"RPUSH", b"woken", b"v"]).await, b":1\r\n");
    let woke = reply_within(&mut raw, Duration::from_secs(3)).await.map(|r| text(&r));
    assert_eq!(woke.as_deref(), Some("*2\r\n$5\r\nwoken\r\n$1\r\nv\r\n"));
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_client_pipelining_past_max_pipeline_gets_every_reply() {
    // A relayed (subscribed) connection cut its round at max_pipeline and then waited for
    // more bytes from the client: the rest of the pipeline went unanswered.
    let redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    cfg.client.max_pipeline = 4;
    let respite = Respite::start_with(cfg).await;
    let mut raw = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut raw, &[b"SUBSCRIBE", b"ch"]).await, b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
    raw.send(&encode(&[b"PING"]).repeat(10)).await;
    for i in 0..10 {
        let r = reply_within(&mut raw, Duration::from_secs(3)).await.map(|r| text(&r));
        assert_eq!(r.as_deref(), Some("*2\r\n$4\r\npong\r\n$0\r\n\r\n"), "reply {i}");
    }
    respite.shutdown().await;
}

/// respite with one shared upstream connection, a direct connection to its redis, and two
/// clients `a` and `b` (`b` has set `key` to `value`): what `a` sends must never shift `b`.
async fn one_shared_connection(key: &[u8], value: &[u8]) -> (RedisServer, Respite, Raw, Raw, Raw) {
    let redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    cfg.upstream.pool_size = 1;
    let respite = Respite::start_with(cfg).await;
    let direct = Raw::connect(SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
    let a = Raw::connect(respite.addr).await;
    let mut b = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut b, &[b"SET", key, value]).await, b"+OK\r\n");
    (redis, respite, direct, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_without_subscriptions_answers_like_redis_and_shifts_no_one() {
    // Redis answers UNSUBSCRIBE a b (not subscribed) with one reply per channel. Sent on a
    // shared connection that counts one reply per request, the second went to the next
    // client's batch: another client's GET got "unsubscribe b".
    let (_redis, respite, mut direct, mut a, mut b) = one_shared_connection(b"k", b"v").await;
    for cmd in
        [&[&b"UNSUBSCRIBE"[..], b"a", b"b"][..], &[b"PUNSUBSCRIBE", b"p*"], &[b"SUNSUBSCRIBE"], &[b"UNSUBSCRIBE"]]
    {
        let n = cmd.len().saturating_sub(1).max(1);
        direct.cmd(cmd).await;
        a.cmd(cmd).await;
        for _ in 0..n {
            let want = text(&reply(&mut direct).await);
            assert_eq!(text(&reply(&mut a).await), want, "{cmd:?}");
        }
        assert_eq!(call(&mut b, &[b"GET", b"k"]).await, b"$1\r\nv\r\n", "after {cmd:?}");
        assert_eq!(call(&mut a, &[b"PING"]).await, b"+PONG\r\n", "nothing left over after {cmd:?}");
    }
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_of_several_channels_inside_a_pipeline_shifts_no_one() {
    // The local answer above covered an UNSUBSCRIBE at the start of a batch only: one
    // after PING in the same write joined the forwarded batch, Redis answered it twice, and
    // the extra reply went to other clients (their GET got "unsubscribe c").
    let (_redis, respite, mut direct, mut a, mut b) = one_shared_connection(b"x", b"hello").await;
    let pipeline = [
        encode(&[b"PING"]),
        encode(&[b"UNSUBSCRIBE", b"b", b"c"]),
        encode(&[b"PUNSUBSCRIBE", b"p*", b"q*"]),
        encode(&[b"PING"]),
    ]
    .concat();
    for round in 0..20 {
        direct.send(&pipeline).await;
        a.send(&pipeline).await;
        for k in 0..6 {
            let want = text(&reply(&mut direct).await);
            assert_eq!(text(&reply(&mut a).await), want, "round {round}, reply {k}");
        }
        assert_eq!(call(&mut b, &[b"GET", b"x"]).await, b"$5\r\nhello\r\n", "round {round}");
    }
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_in_a_pipeline_keeps_what_the_commands_after_it_set() {
    // RESET drops the client's dedicated connection when its reply comes (the upstream
    // reset it to the default user and database 0). Batched with the commands after it,
    // the MULTI they opened on that connection went with it: EXEC failed.
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let mut raw = Raw::connect(respite.addr).await;
    raw.send(&[encode(&[b"RESET"]), encode(&[b"MULTI"])].concat()).await;
    assert_eq!(reply(&mut raw).await, b"+RESET\r\n");
    assert_eq!(reply(&mut raw).await, b"+OK\r\n");
    raw.send(&[encode(&[b"SET", b"a", b"1"]), encode(&[b"EXEC"])].concat()).await;
    assert_eq!(text(&reply(&mut raw).await), "+QUEUED\r\n");
    assert_eq!(text(&reply(&mut raw).await), "*1\r\n+OK\r\n");
    raw.send(&[encode(&[b"RESET"]), encode(&[b"WATCH", b"a"]), encode(&[b"MULTI"])].concat()).await;
    for want in ["+RESET\r\n", "+OK\r\n", "+OK\r\n"] {
        assert_eq!(text(&reply(&mut raw).await), want);
    }
    assert_eq!(text(&call(&mut raw, &[b"INCR", b"a"]).await), "+QUEUED\r\n");
    assert_eq!(text(&call(&mut raw, &[b"EXEC"]).await), "*1\r\n:2\r\n");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_on_a_dedicated_connection_keeps_the_replies_that_arrived() {
    // A pinned client's pipeline [GET, SET] while the upstream pauses writes: GET is
    // answered at once, SET waits past the command timeout. The timeout used to drop what
    // had been read, and GET got -TIMEOUT too (a shared connection kept it).
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let mut direct = Raw::connect(SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
    assert_eq!(call(&mut direct, &[b"SET", b"x", b"hello"]).await, b"+OK\r\n");
    let mut raw = Raw::connect(respite.addr).await;
    assert_eq!(call(&mut raw, &[b"CLIENT", b"SETNAME", b"pinned"]).await, b"+OK\r\n");
    assert_eq!(call(&mut direct, &[b"CLIENT", b"PAUSE", b"2500", b"WRITE"]).await, b"+OK\r\n");
    raw.send(&[encode(&[b"GET", b"x"]), encode(&[b"SET", b"y", b"1"])].concat()).await;
    assert_eq!(text(&reply(&mut raw).await), "$5\r\nhello\r\n");
    let second = text(&reply(&mut raw).await);
    assert!(second.starts_with("-TIMEOUT"), "{second}");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_do_not_keep_the_buffers_of_large_requests_and_replies() {
    // Four clients each SET and GET one 48 MiB value on their own (pinned) upstream
    // connection, then stay connected and idle. Their read buffers (the request's, and the
    // dedicated connection's for the reply) used to keep those 48+ MiB each for as long as
    // the client stayed: respite grew by 430 MiB here. Redis shrinks an idle client's
    // query buffer too. The binary runs on its own so that its memory is all this test's.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let redis = RedisServer::start();
    let port = free_port();
    let admin = free_port();
    let child = std::process::Command::new(respite_bin())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--upstream", &redis.url(), "--log-level", "warn"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = Kill(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "respite did not listen within 10s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut warm = Raw::connect(addr).await;
    assert_eq!(call(&mut warm, &[b"SET", b"small", b"v"]).await, b"+OK\r\n");
    let before = rss_kib(child.0.id());
    let value = vec![b'v'; 48 << 20];
    let mut clients = Vec::new();
    for i in 0..4 {
        let key = format!("big{i}");
        let mut raw = Raw::connect(addr).await;
        assert_eq!(call(&mut raw, &[b"SELECT", b"0"]).await, b"+OK\r\n");
        assert_eq!(call(&mut raw, &[b"SET", key.as_bytes(), &value]).await, b"+OK\r\n");
        assert_eq!(call(&mut raw, &[b"GET", key.as_bytes()]).await.len(), value.len() + 13);
        assert_eq!(call(&mut raw, &[b"DEL", key.as_bytes()]).await, b":1\r\n");
        clients.push(raw);
    }
    let grown = rss_kib(child.0.id()).saturating_sub(before) >> 10;
    assert!(grown < 100, "respite kept {grown} MiB for 4 idle clients");
    // They are still served.
    for raw in &mut clients {
        assert_eq!(call(raw, &[b"GET", b"small"]).await, b"$1\r\nv\r\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_naming_many_keys_is_learned_in_linear_time() {
    // A DEL of 100,000 keys (well within max_array_len): learning its reply looked each
    // key's change up in a list of the batch's changes so far, so the time grew with the
    // square of the key count (40,000 keys: 16 s of one worker thread, in a debug build;
    // 1,048,576 keys: hours), during which that worker served no one else and SIGTERM
    // could not stop respite.
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let mut raw = Raw::connect(respite.addr).await;
    let keys: Vec<Vec<u8>> = (0..100_000).map(|i| format!("many:{i}").into_bytes()).collect();
    let mut del: Vec<&[u8]> = vec![b"DEL"];
    del.extend(keys.iter().map(|k| &k[..]));
    assert_eq!(call(&mut raw, &[b"SET", b"many:7", b"v"]).await, b"+OK\r\n");
    // Measured, not a timeout: the stalled worker is one of this test's runtime, and the
    // timer did not fire while it was stuck (the reply came after 117 s).
    let sent = Instant::now();
    raw.cmd(&del).await;
    assert_eq!(reply(&mut raw).await, b":1\r\n");
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(10), "a DEL of 100,000 keys took {took:?}");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_many_members_during_an_outage_takes_linear_time() {
    // SREM and HDEL removed one member at a time, each removal shifting the rest (to keep
    // their order), and LREM the same from the middle of a list: quadratic, one worker
    // thread stalled (SREM of 20,000 members: 18.6 s in a debug build; a million: hours).
    let redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    cfg.admin.token = "t".into();
    // Keys first written during the outage are read as if they had been absent.
    cfg.store.miss = respite::config::Miss::Nil;
    let respite = Respite::start_with(cfg).await;
    let (code, answer) = respite.http_post("/admin/drill", Some("t"), r#"{"state":"down"}"#).await;
    assert_eq!(code, 200, "{answer}");
    let mut raw = Raw::connect(respite.addr).await;
    const N: usize = 30_000;
    let members: Vec<Vec<u8>> = (0..N).map(|i| format!("m{i}").into_bytes()).collect();
    let command = |head: &[&[u8]], tail: Vec<&[u8]>| -> Vec<Vec<u8>> {
        head.iter().copied().chain(tail).map(|a| a.to_vec()).collect()
    };
    let ms = || members.iter().map(|m| &m[..]);
    let pairs = || members.iter().flat_map(|m| [&m[..], b"v"]);
    let side = vec![&b"y"[..]; N / 2];
    let list: Vec<&[u8]> = side.iter().copied().chain(vec![&b"x"[..]; N]).chain(side.iter().copied()).collect();
    let n = format!(":{N}\r\n");
    for (c, want) in [
        (command(&[b"SADD", b"s"], ms().collect()), n.clone()),
        (command(&[b"HSET", b"h"], pairs().collect()), n.clone()),
        (command(&[b"RPUSH", b"l"], list), format!(":{}\r\n", 2 * N)),
    ] {
        let c: Vec<&[u8]> = c.iter().map(|a| &a[..]).collect();
        assert_eq!(text(&call(&mut raw, &c).await), want);
    }
    for c in [
        command(&[b"SREM", b"s"], ms().collect()),
        command(&[b"HDEL", b"h"], ms().collect()),
        command(&[b"LREM", b"l", b"0", b"x"], vec![]),
    ] {
        let c: Vec<&[u8]> = c.iter().map(|a| &a[..]).collect();
        let sent = Instant::now();
        assert_eq!(text(&call(&mut raw, &c).await), n);
        let took = sent.elapsed();
        assert!(took < Duration::from_secs(5), "{} of {N} members took {took:?}", text(c[0]));
    }
    // What stays keeps its order (as Redis's small hashes and sets do).
    for c in [
        &[&b"HSET"[..], b"o", b"a", b"1", b"b", b"2", b"c", b"3", b"d", b"4"][..],
        &[b"SADD", b"t", b"p", b"q", b"r", b"s"],
    ] {
        call(&mut raw, c).await;
    }
    assert_eq!(call(&mut raw, &[b"HDEL", b"o", b"c", b"b", b"c", b"zz"]).await, b":2\r\n");
    assert_eq!(text(&call(&mut raw, &[b"HGETALL", b"o"]).await), "*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nd\r\n$1\r\n4\r\n");
    assert_eq!(call(&mut raw, &[b"SREM", b"t", b"r", b"q", b"r"]).await, b":2\r\n");
    assert_eq!(text(&call(&mut raw, &[b"SMEMBERS", b"t"]).await), "*2\r\n$1\r\np\r\n$1\r\ns\r\n");
    assert_eq!(text(&call(&mut raw, &[b"LRANGE", b"l", b"0", b"0"]).await), "*1\r\n$1\r\ny\r\n");
    assert_eq!(call(&mut raw, &[b"LLEN", b"l"]).await, n.as_bytes());
    respite.shutdown().await;
}
