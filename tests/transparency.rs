mod common;
use common::*;

// SPEC §2: respite is a transparent proxy. Every test talks to a real `redis-server`
// through respite with real clients (the `redis` crate, `redis-cli`) and, where the exact
// bytes matter, with raw RESP compared against the same commands sent to Redis directly.

use std::net::SocketAddr;
use std::time::Duration;

use redis::{PushKind, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// `Raw`'s futures carry a 64 KiB read buffer; boxing them keeps the (debug-build) test
/// futures, which hold one per `.await`, from overflowing the test thread's stack.
trait RawBoxed {
    fn req<'a>(&'a mut self, args: &'a [&'a [u8]]) -> BoxFut<'a, Vec<u8>>;
    fn rep(&mut self) -> BoxFut<'_, Vec<u8>>;
    fn rep_within(&mut self, d: Duration) -> BoxFut<'_, Option<Vec<u8>>>;
}

impl RawBoxed for Raw {
    fn req<'a>(&'a mut self, args: &'a [&'a [u8]]) -> BoxFut<'a, Vec<u8>> {
        Box::pin(self.call(args))
    }
    fn rep(&mut self) -> BoxFut<'_, Vec<u8>> {
        Box::pin(self.reply())
    }
    fn rep_within(&mut self, d: Duration) -> BoxFut<'_, Option<Vec<u8>>> {
        Box::pin(self.reply_within(d))
    }
}

fn direct_addr(redis: &RedisServer) -> SocketAddr {
    format!("127.0.0.1:{}", redis.port).parse().unwrap()
}

/// Printable form of RESP bytes for assertion messages (long ones shortened).
fn esc(b: &[u8]) -> String {
    let s = b.escape_ascii().to_string();
    if s.len() > 400 {
        format!("{}…({} bytes)", &s[..400], b.len())
    } else {
        s
    }
}

/// Sends the same command to Redis directly and through respite; returns both replies.
async fn both(direct: &mut Raw, proxied: &mut Raw, args: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
    let d = direct.req(args).await;
    let p = proxied.req(args).await;
    (d, p)
}

fn label(args: &[&[u8]]) -> String {
    args.iter().map(|a| esc(a)).collect::<Vec<_>>().join(" ")
}

/// Collects byte differences so that one run reports all of them.
#[derive(Default)]
struct Diffs(Vec<String>);

impl Diffs {
    fn check(&mut self, what: &str, direct: &[u8], proxied: &[u8]) {
        if direct != proxied {
            self.0.push(format!("{what}\n    redis direct:  {}\n    via respite:   {}", esc(direct), esc(proxied)));
        }
    }

    async fn same(&mut self, direct: &mut Raw, proxied: &mut Raw, args: &[&[u8]]) -> Vec<u8> {
        let (d, p) = both(direct, proxied, args).await;
        self.check(&label(args), &d, &p);
        d
    }

    fn assert_none(self) {
        assert!(self.0.is_empty(), "{} replies differ:\n{}", self.0.len(), self.0.join("\n"));
    }
}

/// Two Redis servers in the same (empty) state: one used directly, one behind respite.
struct Pair {
    direct: RedisServer,
    proxied: RedisServer,
    respite: Respite,
}

impl Pair {
    async fn start() -> Pair {
        let direct = RedisServer::start();
        let proxied = RedisServer::start();
        let respite = Respite::start(&proxied.url()).await;
        Pair { direct, proxied, respite }
    }

    /// (raw connection to Redis direct, raw connection through respite)
    async fn raws(&self) -> (Raw, Raw) {
        (Raw::connect(direct_addr(&self.direct)).await, Raw::connect(self.respite.addr).await)
    }

    async fn direct_client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.direct.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }
}

/// Replaces the connection id in a HELLO reply (it differs between any two connections).
fn normalize_hello(reply: &[u8]) -> Vec<u8> {
    let marker = b"$2\r\nid\r\n:";
    let Some(pos) = reply.windows(marker.len()).position(|w| w == marker) else {
        return reply.to_vec();
    };
    let start = pos + marker.len();
    let end = start + reply[start..].iter().position(|&b| b == b'\r').unwrap();
    let mut out = reply[..start].to_vec();
    out.push(b'N');
    out.extend_from_slice(&reply[end..]);
    out
}

fn bulk(b: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", b.len()).into_bytes();
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
    out
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn random_bytes(n: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Reads until the peer closes (or `d` passes); returns everything read.
async fn read_to_close(stream: &mut TcpStream, d: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(d, stream.read_to_end(&mut out)).await.is_ok();
    (out, closed)
}

// ---------------------------------------------------------------------------------------
// 1. Binary safety
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_safe_keys_and_values() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let mut c = respite.client().await;

    let all: Vec<u8> = (0..=255u8).collect();
    let key_all: Vec<u8> = all.iter().rev().copied().collect();
    let crlf_key = b"key\r\nwith\r\ncrlf".to_vec();
    let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"bin:all".to_vec(), all.clone()),
        (key_all.clone(), all.repeat(4)),
        (b"bin:crlf".to_vec(), b"line1\r\nline2\r\n\r\n\n\r".to_vec()),
        (b"bin:resp".to_vec(), b"*1\r\n$3\r\nGET\r\n+OK\r\n-ERR x\r\n$-1\r\n".to_vec()),
        (crlf_key.clone(), b"\0\0\0".to_vec()),
        (b"bin:empty".to_vec(), Vec::new()),
        (Vec::new(), b"empty key".to_vec()),
    ];

    for (k, v) in &cases {
        let _: () = redis::cmd("SET").arg(k).arg(v).query_async(&mut c).await.unwrap();
    }
    for (k, v) in &cases {
        let got: Vec<u8> = redis::cmd("GET").arg(k).query_async(&mut c).await.unwrap();
        assert_eq!(got, *v, "GET {} through respite", esc(k));
        let len: usize = redis::cmd("STRLEN").arg(k).query_async(&mut c).await.unwrap();
        assert_eq!(len, v.len(), "STRLEN {}", esc(k));
    }
    // MGET of all of them at once (plus a missing key) through respite.
    let mut mget = redis::cmd("MGET");
    for (k, _) in &cases {
        mget.arg(k);
    }
    mget.arg(b"bin:missing");
    let got: Vec<Option<Vec<u8>>> = mget.query_async(&mut c).await.unwrap();
    let mut want: Vec<Option<Vec<u8>>> = cases.iter().map(|(_, v)| Some(v.clone())).collect();
    want.push(None);
    assert_eq!(got, want);

    // What respite wrote is what Redis holds, and the raw reply bytes are identical.
    let mut direct = Raw::connect(direct_addr(&redis)).await;
    let mut proxied = Raw::connect(respite.addr).await;
    let mut diffs = Diffs::default();
    for (k, v) in &cases {
        let d = diffs.same(&mut direct, &mut proxied, &[b"GET", k]).await;
        assert_eq!(d, bulk(v), "Redis holds what was SET through respite for {}", esc(k));
    }
    // Binary-keyed hash fields and list elements too.
    diffs.same(&mut direct, &mut proxied, &[b"HSET", &key_all, &all, b"\r\n", b"\r\n", &all]).await;
    diffs.same(&mut direct, &mut proxied, &[b"HGET", &key_all, &all]).await;
    diffs.same(&mut direct, &mut proxied, &[b"HGET", &key_all, b"\r\n"]).await;
    diffs.same(&mut direct, &mut proxied, &[b"RPUSH", &crlf_key, b"", b"\r\n", &all]).await;
    diffs.same(&mut direct, &mut proxied, &[b"LRANGE", &crlf_key, b"0", b"-1"]).await;
    diffs.assert_none();
    respite.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 2. Deep pipelines
// ---------------------------------------------------------------------------------------

const PIPELINE: usize = 5_000;

/// What Redis answers one command of the mixed pipeline.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Ok,
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
}

impl Expect {
    fn resp(&self) -> Vec<u8> {
        match self {
            Expect::Ok => b"+OK\r\n".to_vec(),
            Expect::Int(n) => format!(":{n}\r\n").into_bytes(),
            Expect::Bulk(b) => bulk(b),
            Expect::Nil => b"$-1\r\n".to_vec(),
        }
    }

    fn value(&self) -> Value {
        match self {
            Expect::Ok => Value::Okay,
            Expect::Int(n) => Value::Int(*n),
            Expect::Bulk(b) => Value::BulkString(b.clone()),
            Expect::Nil => Value::Nil,
        }
    }
}

/// A model of the keys the mixed pipeline touches.
#[derive(Default)]
struct Model {
    strings: std::collections::HashMap<String, String>,
    counters: std::collections::HashMap<String, i64>,
}

impl Model {
    /// The i-th command of the mixed pipeline (SET / INCR / GET) and its reply.
    fn command(&mut self, prefix: &str, i: usize) -> (Vec<String>, Expect) {
        let key = format!("{prefix}:k{}", i % 37);
        match i % 3 {
            0 => {
                let value = format!("v{i}");
                self.strings.insert(key.clone(), value.clone());
                (vec!["SET".into(), key, value], Expect::Ok)
            }
            1 => {
                let counter = format!("{prefix}:c{}", i % 5);
                let n = self.counters.entry(counter.clone()).or_insert(0);
                *n += 1;
                (vec!["INCR".into(), counter], Expect::Int(*n))
            }
            _ => {
                let reply = match self.strings.get(&key) {
                    Some(v) => Expect::Bulk(v.clone().into_bytes()),
                    None => Expect::Nil,
                };
                (vec!["GET".into(), key], reply)
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_of_5000_mixed_commands_answered_in_order() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;

    // With the redis crate.
    let mut c = respite.client().await;
    let mut model = Model::default();
    let mut pipe = redis::pipe();
    let mut expected = Vec::with_capacity(PIPELINE);
    for i in 0..PIPELINE {
        let (args, reply) = model.command("p", i);
        let cmd = pipe.cmd(&args[0]);
        for a in &args[1..] {
            cmd.arg(a);
        }
        expected.push(reply.value());
    }
    let got: Vec<Value> = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(got.len(), PIPELINE);
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "redis crate pipeline reply #{i}");
    }

    // Raw: every frame in one write, then 5,000 replies, each checked.
    let mut model = Model::default();
    let mut frames = Vec::new();
    let mut expected = Vec::with_capacity(PIPELINE);
    for i in 0..PIPELINE {
        let (args, reply) = model.command("r", i);
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        frames.extend_from_slice(&encode(&refs));
        expected.push(reply.resp());
    }
    let mut raw = Raw::connect(respite.addr).await;
    raw.send(&frames).await;
    for (i, want) in expected.iter().enumerate() {
        let got = raw.rep().await;
        assert_eq!(esc(&got), esc(want), "raw pipeline reply #{i}");
    }
    assert!(raw.rep_within(Duration::from_millis(100)).await.is_none(), "no extra replies");
    // And the final state in Redis agrees with the model.
    let mut direct = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    for (k, v) in &model.counters {
        let n: i64 = redis::cmd("GET").arg(k).query_async(&mut direct).await.unwrap();
        assert_eq!(n, *v, "{k}");
    }
    for (k, v) in &model.strings {
        let got: String = redis::cmd("GET").arg(k).query_async(&mut direct).await.unwrap();
        assert_eq!(got, *v, "{k}");
    }
    respite.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 3. Transactions
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_discard_and_watch_conflict() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;

    // The redis crate's atomic pipeline (MULTI … EXEC).
    let mut c = respite.client().await;
    let (ok, n, v): (String, i64, String) = redis::pipe()
        .atomic()
        .set("tx:crate", 41)
        .incr("tx:crate", 1)
        .get("tx:crate")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((ok.as_str(), n, v.as_str()), ("OK", 42, "42"));

    // Raw, byte-exact.
    let mut a = Raw::connect(respite.addr).await;
    assert_eq!(esc(&a.req(&[b"MULTI"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"SET", b"tx:a", b"1"]).await), "+QUEUED\\r\\n");
    assert_eq!(esc(&a.req(&[b"INCR", b"tx:a"]).await), "+QUEUED\\r\\n");
    assert_eq!(esc(&a.req(&[b"GET", b"tx:a"]).await), "+QUEUED\\r\\n");
    assert_eq!(esc(&a.req(&[b"EXEC"]).await), esc(b"*3\r\n+OK\r\n:2\r\n$1\r\n2\r\n"));

    // DISCARD: nothing queued is executed.
    assert_eq!(esc(&a.req(&[b"MULTI"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"SET", b"tx:b", b"1"]).await), "+QUEUED\\r\\n");
    assert_eq!(esc(&a.req(&[b"DISCARD"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"GET", b"tx:b"]).await), "$-1\\r\\n");

    // Another client meanwhile sees nothing of a queued transaction.
    let mut b = Raw::connect(respite.addr).await;
    assert_eq!(esc(&a.req(&[b"MULTI"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"SET", b"tx:c", b"queued"]).await), "+QUEUED\\r\\n");
    assert_eq!(esc(&b.req(&[b"GET", b"tx:c"]).await), "$-1\\r\\n");
    assert_eq!(esc(&b.req(&[b"SET", b"tx:d", b"from-b"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"EXEC"]).await), esc(b"*1\r\n+OK\r\n"));
    assert_eq!(esc(&b.req(&[b"GET", b"tx:c"]).await), esc(&bulk(b"queued")));

    // WATCH without a conflict: EXEC runs.
    assert_eq!(esc(&a.req(&[b"WATCH", b"tx:w"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"MULTI"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"SET", b"tx:w", b"first"]).await), "+QUEUED\\r\\n");
    assert_eq!(esc(&a.req(&[b"EXEC"]).await), esc(b"*1\r\n+OK\r\n"));

    // WATCH with a conflicting write from another client (through respite): EXEC is nil.
    assert_eq!(esc(&a.req(&[b"WATCH", b"tx:w"]).await), "+OK\\r\\n");
    assert_eq!(esc(&b.req(&[b"SET", b"tx:w", b"other"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"MULTI"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"SET", b"tx:w", b"mine"]).await), "+QUEUED\\r\\n");
    assert_eq!(esc(&a.req(&[b"EXEC"]).await), "*-1\\r\\n", "EXEC after a conflicting write is a null array");
    assert_eq!(esc(&a.req(&[b"GET", b"tx:w"]).await), esc(&bulk(b"other")));

    // The same with the conflicting write made by a redis crate client on a shared connection.
    assert_eq!(esc(&a.req(&[b"WATCH", b"tx:w2"]).await), "+OK\\r\\n");
    let _: () = redis::cmd("SET").arg("tx:w2").arg("crate").query_async(&mut c).await.unwrap();
    assert_eq!(esc(&a.req(&[b"MULTI"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"INCR", b"tx:w2"]).await), "+QUEUED\\r\\n");
    assert_eq!(esc(&a.req(&[b"EXEC"]).await), "*-1\\r\\n");

    // UNWATCH forgets the watched key.
    assert_eq!(esc(&a.req(&[b"WATCH", b"tx:w3"]).await), "+OK\\r\\n");
    assert_eq!(esc(&b.req(&[b"SET", b"tx:w3", b"x"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"UNWATCH"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"MULTI"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"SET", b"tx:w3", b"y"]).await), "+QUEUED\\r\\n");
    assert_eq!(esc(&a.req(&[b"EXEC"]).await), esc(b"*1\r\n+OK\r\n"));

    // A whole transaction in one write (pipelined MULTI … EXEC).
    let mut all = Vec::new();
    for args in [&[&b"MULTI"[..]][..], &[b"INCR", b"tx:p"], &[b"INCR", b"tx:p"], &[b"EXEC"]] {
        all.extend_from_slice(&encode(args));
    }
    a.send(&all).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.extend_from_slice(&a.rep().await);
    }
    assert_eq!(esc(&got), esc(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n:2\r\n"));
    respite.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 4. SELECT
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_is_per_client_and_does_not_leak() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;

    // Other clients sharing upstream connections, before anyone selects.
    let mut shared: Vec<redis::aio::MultiplexedConnection> = Vec::new();
    for _ in 0..4 {
        shared.push(respite.client().await);
    }
    let mut b = Raw::connect(respite.addr).await;
    assert_eq!(esc(&b.req(&[b"SET", b"k", b"db0"]).await), "+OK\\r\\n");

    let mut a = Raw::connect(respite.addr).await;
    assert_eq!(esc(&a.req(&[b"SELECT", b"1"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"GET", b"k"]).await), "$-1\\r\\n", "db 1 is empty");
    assert_eq!(esc(&a.req(&[b"SET", b"k", b"db1"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"SET", b"only1", b"x"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"GET", b"k"]).await), esc(&bulk(b"db1")));
    assert_eq!(esc(&b.req(&[b"GET", b"k"]).await), esc(&bulk(b"db0")));
    assert_eq!(esc(&b.req(&[b"GET", b"only1"]).await), "$-1\\r\\n");
    assert_eq!(esc(&b.req(&[b"DBSIZE"]).await), ":1\\r\\n");
    assert_eq!(esc(&a.req(&[b"DBSIZE"]).await), ":2\\r\\n");

    // Interleaved concurrent traffic: A keeps seeing db 1, everybody else db 0.
    let a_task = tokio::spawn(async move {
        for i in 0..200 {
            let got = a.req(&[b"GET", b"k"]).await;
            assert_eq!(esc(&got), esc(&bulk(b"db1")), "client A (db 1), round {i}");
        }
        a
    });
    let mut tasks = Vec::new();
    for (n, mut c) in shared.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                let v: Option<String> = redis::cmd("GET").arg("k").query_async(&mut c).await.unwrap();
                assert_eq!(v.as_deref(), Some("db0"), "shared client {n}, round {i}");
                let v: Option<String> = redis::cmd("GET").arg("only1").query_async(&mut c).await.unwrap();
                assert_eq!(v, None, "shared client {n}, round {i}");
            }
        }));
    }
    let mut a = a_task.await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }

    // A client connecting after A's SELECT is still in db 0.
    let mut late = respite.client().await;
    let v: String = redis::cmd("GET").arg("k").query_async(&mut late).await.unwrap();
    assert_eq!(v, "db0");

    // A selects back.
    assert_eq!(esc(&a.req(&[b"SELECT", b"0"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"GET", b"k"]).await), esc(&bulk(b"db0")));

    // The db in the URL (the redis crate sends SELECT on connect), and redis-cli -n.
    let mut db1 =
        redis::Client::open(format!("{}/1", respite.url())).unwrap().get_multiplexed_async_connection().await.unwrap();
    let v: String = redis::cmd("GET").arg("k").query_async(&mut db1).await.unwrap();
    assert_eq!(v, "db1");
    assert_eq!(redis_cli(respite.port(), &["-n", "1", "GET", "k"]).trim(), "db1");
    assert_eq!(redis_cli(respite.port(), &["GET", "k"]).trim(), "db0");

    // Redis itself agrees.
    assert_eq!(redis_cli(redis.port, &["-n", "1", "GET", "k"]).trim(), "db1");
    assert_eq!(redis_cli(redis.port, &["-n", "0", "GET", "k"]).trim(), "db0");
    assert_eq!(redis_cli(redis.port, &["-n", "0", "EXISTS", "only1"]).trim(), "0");
    respite.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 5. Blocking commands
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_pops_wake_time_out_and_outlive_the_command_timeout() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let addr = respite.addr;

    // Woken by another client's RPUSH.
    let woken = tokio::spawn(async move {
        let mut a = Raw::connect(addr).await;
        let t = Instant::now();
        let reply = a.req(&[b"BLPOP", b"bl:wake", b"5"]).await;
        (reply, t.elapsed())
    });
    // Times out after 1s with a nil reply.
    let timed_out = tokio::spawn(async move {
        let mut a = Raw::connect(addr).await;
        let t = Instant::now();
        let reply = a.req(&[b"BLPOP", b"bl:none", b"1"]).await;
        (reply, t.elapsed(), a)
    });
    // BLPOP 0 woken after ~2.3s: longer than the 1s command timeout of test_config, and
    // longer than that timeout plus the 1s blocking margin.
    let forever = tokio::spawn(async move {
        let mut a = Raw::connect(addr).await;
        let t = Instant::now();
        let reply = a.req(&[b"BLPOP", b"bl:late", b"0"]).await;
        (reply, t.elapsed())
    });
    // XREAD BLOCK 0 woken after ~1.5s.
    let xread = tokio::spawn(async move {
        let mut a = Raw::connect(addr).await;
        let t = Instant::now();
        let reply = a.req(&[b"XREAD", b"BLOCK", b"0", b"STREAMS", b"bl:xs", b"$"]).await;
        (reply, t.elapsed())
    });

    let mut c = respite.client().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n: i64 = redis::cmd("RPUSH").arg("bl:wake").arg("x").query_async(&mut c).await.unwrap();
    assert_eq!(n, 1);
    let (reply, took) = woken.await.unwrap();
    assert_eq!(esc(&reply), esc(b"*2\r\n$7\r\nbl:wake\r\n$1\r\nx\r\n"));
    assert!(took < Duration::from_secs(2), "woken BLPOP took {took:?}");

    tokio::time::sleep(Duration::from_millis(1300)).await;
    let _: String = redis::cmd("XADD").arg("bl:xs").arg("5-0").arg("f").arg("v").query_async(&mut c).await.unwrap();

    let (reply, took, mut after_timeout) = timed_out.await.unwrap();
    assert_eq!(esc(&reply), "*-1\\r\\n", "BLPOP timing out answers a null array, not an error");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(2500), "BLPOP 1 took {took:?}");

    tokio::time::sleep(Duration::from_millis(800)).await;
    let n: i64 = redis::cmd("RPUSH").arg("bl:late").arg("y").query_async(&mut c).await.unwrap();
    assert_eq!(n, 1);
    let (reply, took) = forever.await.unwrap();
    assert_eq!(esc(&reply), esc(b"*2\r\n$7\r\nbl:late\r\n$1\r\ny\r\n"), "BLPOP 0 after {took:?}");
    assert!(took >= Duration::from_millis(1500), "BLPOP 0 answered after {took:?}");

    let (reply, took) = xread.await.unwrap();
    assert_eq!(
        esc(&reply),
        esc(b"*1\r\n*2\r\n$5\r\nbl:xs\r\n*1\r\n*2\r\n$3\r\n5-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"),
        "XREAD BLOCK 0 after {took:?}"
    );
    assert!(took >= Duration::from_millis(1000), "XREAD BLOCK 0 answered after {took:?}");

    // The connection whose BLPOP timed out is still usable.
    let a = &mut after_timeout;
    assert_eq!(esc(&a.req(&[b"BLPOP", b"bl:wake", b"bl:late", b"0.1"]).await), "*-1\\r\\n");
    assert_eq!(esc(&a.req(&[b"PING"]).await), "+PONG\\r\\n");
    respite.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 6. Pub/sub
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_subscribe_psubscribe_unsubscribe() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let mut publisher = respite.client().await;
    let mut direct = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();

    // (a) The redis crate's PubSub (RESP2): subscriptions are confirmed and reach Redis.
    let client = redis::Client::open(respite.url()).unwrap();
    let mut ps = client.get_async_pubsub().await.unwrap();
    ps.subscribe("news").await.unwrap();
    ps.psubscribe("ev.*").await.unwrap();
    let numsub: (String, i64) = redis::cmd("PUBSUB").arg("NUMSUB").arg("news").query_async(&mut direct).await.unwrap();
    assert_eq!(numsub.1, 1);
    let numpat: i64 = redis::cmd("PUBSUB").arg("NUMPAT").query_async(&mut direct).await.unwrap();
    assert_eq!(numpat, 1);
    let receivers: i64 = redis::cmd("PUBLISH").arg("news").arg("hello").query_async(&mut publisher).await.unwrap();
    assert_eq!(receivers, 1);
    let receivers: i64 = redis::cmd("PUBLISH").arg("ev.1").arg("hello").query_async(&mut publisher).await.unwrap();
    assert_eq!(receivers, 1);
    // PING while subscribed (RESP2) answers ["pong", ""].
    let pong: Vec<String> = ps.ping().await.unwrap();
    assert_eq!(pong, vec!["pong".to_string(), String::new()]);
    ps.unsubscribe("news").await.unwrap();
    ps.punsubscribe("ev.*").await.unwrap();
    let numsub: (String, i64) = redis::cmd("PUBSUB").arg("NUMSUB").arg("news").query_async(&mut direct).await.unwrap();
    assert_eq!(numsub.1, 0);
    let receivers: i64 = redis::cmd("PUBLISH").arg("news").arg("again").query_async(&mut publisher).await.unwrap();
    assert_eq!(receivers, 0);
    drop(ps);

    // (b) The redis crate with RESP3 pushes: messages and pattern messages arrive.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cfg = redis::AsyncConnectionConfig::new().set_push_sender(tx);
    let r3 = redis::Client::open(format!("{}/?protocol=resp3", respite.url())).unwrap();
    let mut sub = r3.get_multiplexed_async_connection_with_config(&cfg).await.unwrap();
    sub.subscribe("news").await.unwrap();
    sub.psubscribe("ev.*").await.unwrap();
    let receivers: i64 = redis::cmd("PUBLISH").arg("news").arg("m1").query_async(&mut publisher).await.unwrap();
    assert_eq!(receivers, 1);
    let receivers: i64 = redis::cmd("PUBLISH").arg("ev.42").arg("m2").query_async(&mut publisher).await.unwrap();
    assert_eq!(receivers, 1);
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while got.len() < 2 {
        let push = tokio::time::timeout_at(deadline, rx.recv()).await.expect("pushes within 3s").expect("sender alive");
        if matches!(push.kind, PushKind::Message | PushKind::PMessage) {
            got.push(push);
        }
    }
    assert_eq!(got[0].kind, PushKind::Message);
    assert_eq!(got[0].data, vec![Value::BulkString(b"news".to_vec()), Value::BulkString(b"m1".to_vec())]);
    assert_eq!(got[1].kind, PushKind::PMessage);
    assert_eq!(
        got[1].data,
        vec![
            Value::BulkString(b"ev.*".to_vec()),
            Value::BulkString(b"ev.42".to_vec()),
            Value::BulkString(b"m2".to_vec())
        ]
    );
    // Ordinary commands still work on the subscribed RESP3 connection.
    let v: Option<String> = redis::cmd("GET").arg("nokey").query_async(&mut sub).await.unwrap();
    assert_eq!(v, None);
    sub.unsubscribe("news").await.unwrap();
    sub.punsubscribe("ev.*").await.unwrap();
    let receivers: i64 = redis::cmd("PUBLISH").arg("news").arg("m3").query_async(&mut publisher).await.unwrap();
    assert_eq!(receivers, 0);
    let receivers: i64 = redis::cmd("PUBLISH").arg("ev.1").arg("m4").query_async(&mut publisher).await.unwrap();
    assert_eq!(receivers, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(push) = rx.try_recv() {
        assert!(!matches!(push.kind, PushKind::Message | PushKind::PMessage), "message after unsubscribe: {push:?}");
    }

    // (c) Raw RESP2 frames, byte for byte against Redis direct.
    let mut d = Raw::connect(direct_addr(&redis)).await;
    let mut p = Raw::connect(respite.addr).await;
    let mut diffs = Diffs::default();
    // SUBSCRIBE with two channels: two confirmations.
    d.cmd(&[b"SUBSCRIBE", b"c1", b"c2"]).await;
    p.cmd(&[b"SUBSCRIBE", b"c1", b"c2"]).await;
    for ch in ["c1", "c2"] {
        let (dr, pr) = (d.rep().await, p.rep().await);
        diffs.check(&format!("SUBSCRIBE confirmation for {ch}"), &dr, &pr);
    }
    diffs.same(&mut d, &mut p, &[b"PSUBSCRIBE", b"pat.*"]).await;
    diffs.same(&mut d, &mut p, &[b"PING"]).await;
    diffs.same(&mut d, &mut p, &[b"PING", b"hi"]).await;
    let receivers: i64 = redis::cmd("PUBLISH").arg("c1").arg("payload\r\n1").query_async(&mut publisher).await.unwrap();
    assert_eq!(receivers, 2, "both raw subscribers receive");
    let (dr, pr) = (d.rep().await, p.rep().await);
    assert_eq!(esc(&dr), esc(b"*3\r\n$7\r\nmessage\r\n$2\r\nc1\r\n$10\r\npayload\r\n1\r\n"));
    diffs.check("message on c1", &dr, &pr);
    let receivers: i64 = redis::cmd("PUBLISH").arg("pat.x").arg("p").query_async(&mut publisher).await.unwrap();
    assert_eq!(receivers, 2);
    let (dr, pr) = (d.rep().await, p.rep().await);
    diffs.check("pmessage on pat.x", &dr, &pr);
    diffs.same(&mut d, &mut p, &[b"UNSUBSCRIBE", b"c1"]).await;
    diffs.same(&mut d, &mut p, &[b"PUNSUBSCRIBE", b"pat.*"]).await;
    // Commands not allowed in RESP2 subscribed mode get Redis's error.
    diffs.same(&mut d, &mut p, &[b"GET", b"x"]).await;
    let receivers: i64 = redis::cmd("PUBLISH").arg("c1").arg("gone").query_async(&mut publisher).await.unwrap();
    assert_eq!(receivers, 0);
    let receivers: i64 = redis::cmd("PUBLISH").arg("pat.y").arg("gone").query_async(&mut publisher).await.unwrap();
    assert_eq!(receivers, 0);
    assert!(p.rep_within(Duration::from_millis(200)).await.is_none(), "nothing after unsubscribing");
    diffs.same(&mut d, &mut p, &[b"UNSUBSCRIBE", b"c2"]).await;
    // Out of subscribed mode: ordinary commands again.
    diffs.same(&mut d, &mut p, &[b"GET", b"x"]).await;
    diffs.same(&mut d, &mut p, &[b"PING"]).await;
    diffs.assert_none();
    respite.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 7. RESP3
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_after_hello_3_is_byte_identical() {
    let pair = Pair::start().await;
    let (mut d, mut p) = pair.raws().await;
    let mut diffs = Diffs::default();

    let (dh, ph) = both(&mut d, &mut p, &[b"HELLO", b"3"]).await;
    assert!(dh.starts_with(b"%7\r\n"), "HELLO 3 is a map: {}", esc(&dh));
    diffs.check("HELLO 3 (connection id normalised)", &normalize_hello(&dh), &normalize_hello(&ph));

    diffs.same(&mut d, &mut p, &[b"HSET", b"h", b"f1", b"v1", b"f2", b"v2"]).await;
    let r = diffs.same(&mut d, &mut p, &[b"HGETALL", b"h"]).await;
    assert!(r.starts_with(b"%2\r\n"), "HGETALL is a map: {}", esc(&r));
    diffs.same(&mut d, &mut p, &[b"HGETALL", b"nohash"]).await;
    diffs.same(&mut d, &mut p, &[b"SADD", b"s", b"member"]).await;
    let r = diffs.same(&mut d, &mut p, &[b"SMEMBERS", b"s"]).await;
    assert_eq!(esc(&r), esc(b"~1\r\n$6\r\nmember\r\n"), "SMEMBERS is a set");
    diffs.same(&mut d, &mut p, &[b"SADD", b"ints", b"3", b"1", b"2"]).await;
    diffs.same(&mut d, &mut p, &[b"SMEMBERS", b"ints"]).await;
    diffs.same(&mut d, &mut p, &[b"ZADD", b"z", b"1.5", b"a", b"2", b"b"]).await;
    let r = diffs.same(&mut d, &mut p, &[b"ZSCORE", b"z", b"a"]).await;
    assert_eq!(esc(&r), ",1.5\\r\\n", "Redis 7.0 answers ZSCORE with a RESP3 double");
    diffs.same(&mut d, &mut p, &[b"ZSCORE", b"z", b"b"]).await;
    diffs.same(&mut d, &mut p, &[b"ZINCRBY", b"z", b"0.25", b"a"]).await;
    diffs.same(&mut d, &mut p, &[b"ZRANGE", b"z", b"0", b"-1", b"WITHSCORES"]).await;
    diffs.same(&mut d, &mut p, &[b"ZADD", b"z", b"INCR", b"inf", b"b"]).await;
    diffs.same(&mut d, &mut p, &[b"ZSCORE", b"z", b"b"]).await;
    // INCRBYFLOAT stays a bulk string under RESP3.
    diffs.same(&mut d, &mut p, &[b"INCRBYFLOAT", b"f", b"1.5"]).await;
    let r = diffs.same(&mut d, &mut p, &[b"GET", b"missing"]).await;
    assert_eq!(esc(&r), "_\\r\\n", "RESP3 null");
    diffs.same(&mut d, &mut p, &[b"ZSCORE", b"z", b"missing"]).await;
    diffs.same(&mut d, &mut p, &[b"HMGET", b"h", b"f1", b"nof"]).await;
    diffs.same(&mut d, &mut p, &[b"CONFIG", b"GET", b"maxmemory-policy"]).await;
    diffs.same(&mut d, &mut p, &[b"XADD", b"st", b"1-1", b"f", b"v"]).await;
    diffs.same(&mut d, &mut p, &[b"XINFO", b"STREAM", b"st"]).await;
    diffs.same(&mut d, &mut p, &[b"BLPOP", b"nolist", b"0.05"]).await;
    diffs.same(&mut d, &mut p, &[b"EXISTS", b"h", b"nokey"]).await;
    diffs.same(&mut d, &mut p, &[b"LRANGE", b"nolist", b"0", b"-1"]).await;
    diffs.same(&mut d, &mut p, &[b"GET", b"h"]).await; // WRONGTYPE under RESP3
    diffs.same(&mut d, &mut p, &[b"ECHO", b"v\r\nx"]).await;

    // Push frames: SUBSCRIBE under RESP3.
    let r = diffs.same(&mut d, &mut p, &[b"SUBSCRIBE", b"ch"]).await;
    assert_eq!(esc(&r), esc(b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"), "SUBSCRIBE confirmation is a push");
    let mut pd = pair.direct_client().await;
    let mut pp = pair.respite.client().await;
    let n: i64 = redis::cmd("PUBLISH").arg("ch").arg("hi").query_async(&mut pd).await.unwrap();
    assert_eq!(n, 1);
    let n: i64 = redis::cmd("PUBLISH").arg("ch").arg("hi").query_async(&mut pp).await.unwrap();
    assert_eq!(n, 1);
    let (dr, pr) = (d.rep().await, p.rep().await);
    assert_eq!(esc(&dr), esc(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"));
    diffs.check("RESP3 message push", &dr, &pr);
    // Under RESP3 a subscribed connection still runs ordinary commands.
    diffs.same(&mut d, &mut p, &[b"HGETALL", b"h"]).await;
    diffs.same(&mut d, &mut p, &[b"PING"]).await;
    diffs.same(&mut d, &mut p, &[b"UNSUBSCRIBE", b"ch"]).await;
    diffs.same(&mut d, &mut p, &[b"ZSCORE", b"z", b"a"]).await;

    // Back to RESP2 on the same connection.
    let (dh, ph) = both(&mut d, &mut p, &[b"HELLO", b"2"]).await;
    diffs.check("HELLO 2 (connection id normalised)", &normalize_hello(&dh), &normalize_hello(&ph));
    diffs.same(&mut d, &mut p, &[b"ZSCORE", b"z", b"a"]).await;
    diffs.same(&mut d, &mut p, &[b"HGETALL", b"h"]).await;
    diffs.same(&mut d, &mut p, &[b"GET", b"missing"]).await;
    diffs.assert_none();

    // The redis crate speaking RESP3 through respite.
    let r3 = redis::Client::open(format!("{}/?protocol=resp3", pair.respite.url())).unwrap();
    let mut c = r3.get_multiplexed_async_connection().await.unwrap();
    let v: Value = redis::cmd("HGETALL").arg("h").query_async(&mut c).await.unwrap();
    assert!(matches!(v, Value::Map(ref m) if m.len() == 2), "{v:?}");
    let v: Value = redis::cmd("SMEMBERS").arg("s").query_async(&mut c).await.unwrap();
    assert!(matches!(v, Value::Set(ref m) if m.len() == 1), "{v:?}");
    let v: Value = redis::cmd("ZSCORE").arg("z").arg("a").query_async(&mut c).await.unwrap();
    assert_eq!(v, Value::Double(1.75));
    pair.respite.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 8. AUTH passthrough
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_passed_through_per_client() {
    let redis = RedisServer::start_with(&["--requirepass", "pw"]);
    let respite = Respite::start(&redis.url()).await;
    let mut d = Raw::connect(direct_addr(&redis)).await;
    let mut p = Raw::connect(respite.addr).await;
    let mut diffs = Diffs::default();

    let r = diffs.same(&mut d, &mut p, &[b"GET", b"k"]).await;
    assert_eq!(esc(&r), "-NOAUTH Authentication required.\\r\\n");
    diffs.same(&mut d, &mut p, &[b"SET", b"k", b"v"]).await;
    diffs.same(&mut d, &mut p, &[b"AUTH", b"wrong"]).await;
    diffs.same(&mut d, &mut p, &[b"AUTH", b"default", b"wrong"]).await;
    let r = diffs.same(&mut d, &mut p, &[b"AUTH", b"pw"]).await;
    assert_eq!(esc(&r), "+OK\\r\\n");
    diffs.same(&mut d, &mut p, &[b"SET", b"k", b"v"]).await;
    diffs.same(&mut d, &mut p, &[b"GET", b"k"]).await;
    diffs.same(&mut d, &mut p, &[b"EXISTS", b"k", b"n"]).await;

    // Another client that did not AUTH is still refused, by Redis, with its own words.
    let mut other = Raw::connect(respite.addr).await;
    let r = other.req(&[b"GET", b"k"]).await;
    diffs.check("GET from a second client without AUTH", b"-NOAUTH Authentication required.\r\n", &r);
    let r = other.req(&[b"PING"]).await;
    diffs.check("PING from a second client without AUTH", b"-NOAUTH Authentication required.\r\n", &r);
    // … also with the redis crate and redis-cli.
    let mut c = respite.client().await;
    let err = redis::cmd("GET").arg("k").query_async::<Option<String>>(&mut c).await.unwrap_err();
    assert_eq!(err.code(), Some("NOAUTH"), "{err:?}");
    assert!(redis_cli(respite.port(), &["GET", "k"]).contains("NOAUTH"), "redis-cli without -a");
    // The first client stays authenticated.
    diffs.same(&mut d, &mut p, &[b"GET", b"k"]).await;
    diffs.assert_none();

    // The redis crate and redis-cli with a password on their own URL.
    let mut authed = redis::Client::open(format!("redis://:pw@{}", respite.addr))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let v: String = redis::cmd("GET").arg("k").query_async(&mut authed).await.unwrap();
    assert_eq!(v, "v");
    assert_eq!(redis_cli(respite.port(), &["--no-auth-warning", "-a", "pw", "GET", "k"]).trim(), "v");
    respite.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 9. Error replies
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_are_byte_identical() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let mut setup = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET").arg("str").arg("abc").query_async(&mut setup).await.unwrap();
    let _: () = redis::cmd("RPUSH").arg("list").arg("a").query_async(&mut setup).await.unwrap();
    let _: () = redis::cmd("XADD").arg("st").arg("5-0").arg("f").arg("v").query_async(&mut setup).await.unwrap();

    let mut d = Raw::connect(direct_addr(&redis)).await;
    let mut p = Raw::connect(respite.addr).await;
    let mut diffs = Diffs::default();
    let cases: &[&[&[u8]]] = &[
        &[b"NOSUCHCOMMAND"],
        &[b"NOSUCHCOMMAND", b"a", b"b"],
        &[b"nosuch", b"with spaces", b"x\r\ny"],
        &[b""],
        &[b"GET"],
        &[b"get"],
        &[b"GeT", b"a", b"b"],
        &[b"SET", b"k"],
        &[b"HSET", b"h", b"f"],
        &[b"LPUSH", b"str", b"x"],
        &[b"GET", b"list"],
        &[b"HGET", b"list", b"f"],
        &[b"ZADD", b"str", b"1", b"m"],
        &[b"INCR", b"str"],
        &[b"INCRBY", b"str", b"1"],
        &[b"INCRBY", b"n", b"notanumber"],
        &[b"INCRBYFLOAT", b"n", b"nan"],
        &[b"INCRBYFLOAT", b"str", b"1"],
        &[b"SET", b"k", b"v", b"EX", b"notanumber"],
        &[b"SET", b"k", b"v", b"EX", b"0"],
        &[b"SET", b"k", b"v", b"NX", b"XX"],
        &[b"SET", b"k", b"v", b"BOGUS"],
        &[b"ZADD", b"z", b"notafloat", b"m"],
        &[b"ZADD", b"z", b"NX", b"XX", b"1", b"m"],
        &[b"LINDEX", b"list", b"x"],
        &[b"LRANGE", b"list", b"0"],
        &[b"XADD", b"st", b"1-0", b"f", b"v"],
        &[b"XADD", b"st", b"bad-id", b"f", b"v"],
        &[b"EXPIRE", b"str", b"soon"],
        &[b"OBJECT", b"NOSUCH", b"str"],
        &[b"CONFIG", b"NOSUCH"],
        &[b"CONFIG", b"GET"],
        &[b"CLIENT", b"NOSUCH"],
        &[b"SELECT", b"99"],
        &[b"SELECT", b"x"],
        &[b"EXEC"],
        &[b"DISCARD"],
        &[b"EVAL", b"return redis.error_reply('MYERR custom failure')", b"0"],
        &[b"EVAL", b"return redis.call('nosuch')", b"0"],
        &[b"EVAL", b"syntax error here", b"0"],
        &[b"BLPOP", b"list", b"-1"],
        &[b"BLPOP", b"list", b"notatimeout"],
        &[b"XREAD", b"BLOCK", b"x", b"STREAMS", b"st", b"$"],
        &[b"DEBUG", b"NOSUCH"],
        &[b"PUBLISH", b"ch"],
    ];
    for args in cases {
        let r = diffs.same(&mut d, &mut p, args).await;
        assert!(r.starts_with(b"-"), "{} is an error case: {}", label(args), esc(&r));
    }
    // Errors inside MULTI: the queued error, then EXECABORT.
    diffs.same(&mut d, &mut p, &[b"MULTI"]).await;
    diffs.same(&mut d, &mut p, &[b"MULTI"]).await;
    diffs.same(&mut d, &mut p, &[b"WATCH", b"k"]).await;
    diffs.same(&mut d, &mut p, &[b"GET"]).await;
    diffs.same(&mut d, &mut p, &[b"SET", b"k", b"v"]).await;
    diffs.same(&mut d, &mut p, &[b"EXEC"]).await;
    // Runtime errors inside EXEC are elements of the array.
    diffs.same(&mut d, &mut p, &[b"MULTI"]).await;
    diffs.same(&mut d, &mut p, &[b"INCR", b"str"]).await;
    diffs.same(&mut d, &mut p, &[b"LPUSH", b"str", b"x"]).await;
    diffs.same(&mut d, &mut p, &[b"EXEC"]).await;
    // And the connections are still fine afterwards.
    diffs.same(&mut d, &mut p, &[b"GET", b"str"]).await;
    diffs.assert_none();

    // The redis crate sees the same error codes.
    let mut c = respite.client().await;
    let err = redis::cmd("INCR").arg("str").query_async::<i64>(&mut c).await.unwrap_err();
    assert_eq!(err.kind(), redis::ErrorKind::ResponseError, "{err:?}");
    let err = redis::cmd("GET").arg("list").query_async::<Option<String>>(&mut c).await.unwrap_err();
    assert_eq!(err.code(), Some("WRONGTYPE"), "{err:?}");
    respite.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 10. CLIENT SETNAME / GETNAME
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_setname_getname_is_per_client() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let mut a = Raw::connect(respite.addr).await;
    let mut b = Raw::connect(respite.addr).await;

    assert_eq!(esc(&b.req(&[b"CLIENT", b"GETNAME"]).await), "$-1\\r\\n");
    assert_eq!(esc(&a.req(&[b"CLIENT", b"SETNAME", b"app-a"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"CLIENT", b"GETNAME"]).await), esc(&bulk(b"app-a")));
    assert_eq!(esc(&b.req(&[b"CLIENT", b"GETNAME"]).await), "$-1\\r\\n", "B never named itself");
    // lower case, and after other traffic
    assert_eq!(esc(&a.req(&[b"SET", b"x", b"1"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"client", b"getname"]).await), esc(&bulk(b"app-a")));

    // The redis crate: a fresh connection has no name; naming it works.
    let mut c = respite.client().await;
    let name: Option<String> = redis::cmd("CLIENT").arg("GETNAME").query_async(&mut c).await.unwrap();
    assert_eq!(name, None);
    let _: () = redis::cmd("CLIENT").arg("SETNAME").arg("crate-c").query_async(&mut c).await.unwrap();
    let name: Option<String> = redis::cmd("CLIENT").arg("GETNAME").query_async(&mut c).await.unwrap();
    assert_eq!(name.as_deref(), Some("crate-c"));
    assert_eq!(esc(&b.req(&[b"CLIENT", b"GETNAME"]).await), "$-1\\r\\n");
    assert_eq!(esc(&a.req(&[b"CLIENT", b"GETNAME"]).await), esc(&bulk(b"app-a")));

    // Invalid names: Redis's error, unchanged.
    let mut d = Raw::connect(direct_addr(&redis)).await;
    let mut diffs = Diffs::default();
    diffs.same(&mut d, &mut b, &[b"CLIENT", b"SETNAME", b"has space"]).await;
    diffs.same(&mut d, &mut b, &[b"CLIENT", b"SETNAME"]).await;
    diffs.assert_none();
    assert_eq!(esc(&b.req(&[b"CLIENT", b"GETNAME"]).await), "$-1\\r\\n");

    // Clearing the name.
    assert_eq!(esc(&a.req(&[b"CLIENT", b"SETNAME", b""]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"CLIENT", b"GETNAME"]).await), "$-1\\r\\n");
    respite.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 11. QUIT
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_replies_ok_then_closes() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;

    let mut a = Raw::connect(respite.addr).await;
    assert_eq!(esc(&a.req(&[b"PING"]).await), "+PONG\\r\\n");
    assert_eq!(esc(&a.req(&[b"QUIT"]).await), "+OK\\r\\n");
    assert!(a.closed_within(Duration::from_secs(2)).await, "closed after QUIT");

    // Lower case, as the first command.
    let mut a = Raw::connect(respite.addr).await;
    assert_eq!(esc(&a.req(&[b"quit"]).await), "+OK\\r\\n");
    assert!(a.closed_within(Duration::from_secs(2)).await, "closed after quit");

    // On a pinned (dedicated) connection.
    let mut a = Raw::connect(respite.addr).await;
    assert_eq!(esc(&a.req(&[b"SELECT", b"2"]).await), "+OK\\r\\n");
    assert_eq!(esc(&a.req(&[b"QUIT"]).await), "+OK\\r\\n");
    assert!(a.closed_within(Duration::from_secs(2)).await, "closed after QUIT on a pinned connection");

    // While subscribed.
    let mut a = Raw::connect(respite.addr).await;
    a.req(&[b"SUBSCRIBE", b"ch"]).await;
    assert_eq!(esc(&a.req(&[b"QUIT"]).await), "+OK\\r\\n");
    assert!(a.closed_within(Duration::from_secs(2)).await, "closed after QUIT while subscribed");

    // respite itself is unaffected.
    let mut c = respite.client().await;
    let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
    assert_eq!(pong, "PONG");

    // In a pipeline: what follows QUIT is not executed, exactly as with Redis direct.
    let mut frames = Vec::new();
    for args in [&[&b"SET"[..], b"q", b"1"][..], &[b"QUIT"], &[b"SET", b"q", b"2"], &[b"INCR", b"after-quit"]] {
        frames.extend_from_slice(&encode(args));
    }
    let mut direct = TcpStream::connect(direct_addr(&redis)).await.unwrap();
    direct.write_all(&frames).await.unwrap();
    let (dbytes, dclosed) = read_to_close(&mut direct, Duration::from_secs(2)).await;
    assert!(dclosed);
    assert_eq!(esc(&dbytes), "+OK\\r\\n+OK\\r\\n");
    let _ = redis_cli(redis.port, &["DEL", "q", "after-quit"]);
    let mut proxied = TcpStream::connect(respite.addr).await.unwrap();
    proxied.write_all(&frames).await.unwrap();
    let (pbytes, pclosed) = read_to_close(&mut proxied, Duration::from_secs(2)).await;
    let q = redis_cli(redis.port, &["GET", "q"]).trim().to_string();
    let after = redis_cli(redis.port, &["EXISTS", "after-quit"]).trim().to_string();
    assert!(
        pbytes == dbytes && pclosed && q == "1" && after == "0",
        "pipelined SET q 1, QUIT, SET q 2, INCR after-quit through respite:\n  \
         replies {} (Redis direct: {}), closed: {pclosed}\n  \
         afterwards GET q = {q:?} (want \"1\": the SET after QUIT must not run), \
         EXISTS after-quit = {after:?} (want \"0\")",
        esc(&pbytes),
        esc(&dbytes),
    );
    respite.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 12. Large values
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_megabyte_values_round_trip() {
    const SIZE: usize = 12 << 20;
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let mut c = respite.client().await;

    // The redis crate.
    let big = random_bytes(SIZE, 0x9E37_79B9_7F4A_7C15);
    let _: () = redis::cmd("SET").arg("big:crate").arg(&big).query_async(&mut c).await.unwrap();
    let got: Vec<u8> = redis::cmd("GET").arg("big:crate").query_async(&mut c).await.unwrap();
    assert!(got == big, "GET returned {} bytes, different from the {} set", got.len(), big.len());
    let len: usize = redis::cmd("STRLEN").arg("big:crate").query_async(&mut c).await.unwrap();
    assert_eq!(len, SIZE);

    // redis-cli -x SET from a file, read back by both clients.
    let big2 = random_bytes(SIZE, 0xD1B5_4A32_D192_ED03);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.bin");
    std::fs::write(&file, &big2).unwrap();
    let port = respite.port().to_string();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port, "-x", "SET", "big:cli"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "OK",
        "redis-cli -x SET: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<u8> = redis::cmd("GET").arg("big:cli").query_async(&mut c).await.unwrap();
    assert!(got == big2, "value set by redis-cli, read by the redis crate: {} bytes", got.len());
    for (key, want) in [("big:cli", &big2), ("big:crate", &big)] {
        let out = std::process::Command::new("redis-cli").args(["-p", &port, "GET", key]).output().unwrap();
        // Not a terminal: redis-cli prints the raw value and a newline.
        let mut stdout = out.stdout;
        assert_eq!(stdout.pop(), Some(b'\n'));
        assert!(stdout == *want, "redis-cli GET {key}: {} bytes", stdout.len());
    }

    // Byte-exact raw replies equal Redis direct.
    let mut d = Raw::connect(direct_addr(&redis)).await;
    let mut p = Raw::connect(respite.addr).await;
    let (dr, pr) = both(&mut d, &mut p, &[b"GET", b"big:crate"]).await;
    assert_eq!(dr.len(), pr.len());
    assert!(dr == pr, "raw GET of 12 MB differs");
    // A large value pipelined between small commands keeps the order.
    let mut frames = encode(&[b"SET", b"big:raw", &big2]);
    frames.extend_from_slice(&encode(&[b"GET", b"small"]));
    frames.extend_from_slice(&encode(&[b"STRLEN", b"big:raw"]));
    p.send(&frames).await;
    assert_eq!(esc(&p.rep().await), "+OK\\r\\n");
    assert_eq!(esc(&p.rep().await), "$-1\\r\\n");
    assert_eq!(esc(&p.rep().await), format!(":{SIZE}\\r\\n"));
    respite.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 13. Byte-for-byte table
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_for_byte_transparency_table() {
    let pair = Pair::start().await;
    let (mut d, mut p) = pair.raws().await;
    let mut diffs = Diffs::default();
    let table: &[&[&[u8]]] = &[
        // connection / server
        &[b"PING"],
        &[b"PING", b"hello world"],
        &[b"ECHO", b"\x00\xff\r\n"],
        &[b"DBSIZE"],
        // strings
        &[b"SET", b"s1", b"hello"],
        &[b"GET", b"s1"],
        &[b"GET", b"nokey"],
        &[b"APPEND", b"s1", b" world"],
        &[b"STRLEN", b"s1"],
        &[b"GETRANGE", b"s1", b"0", b"4"],
        &[b"SETRANGE", b"s1", b"6", b"W"],
        &[b"SET", b"s2", b"v", b"GET"],
        &[b"SET", b"s2", b"w", b"NX"],
        &[b"SET", b"s2", b"w", b"XX", b"GET"],
        &[b"SETNX", b"s2", b"x"],
        &[b"MSET", b"a", b"1", b"b", b"2"],
        &[b"MGET", b"a", b"b", b"nokey"],
        &[b"MGET", b"nokey"],
        &[b"INCR", b"counter"],
        &[b"INCRBY", b"counter", b"10"],
        &[b"DECR", b"counter"],
        &[b"DECRBY", b"counter", b"-5"],
        &[b"INCRBYFLOAT", b"f", b"2.5"],
        &[b"INCRBYFLOAT", b"f", b"1e3"],
        &[b"GETDEL", b"b"],
        &[b"SETBIT", b"bits", b"7", b"1"],
        &[b"GETBIT", b"bits", b"7"],
        &[b"BITCOUNT", b"bits"],
        &[b"PFADD", b"hll", b"a", b"b", b"c"],
        &[b"PFCOUNT", b"hll"],
        // hashes
        &[b"HSET", b"h", b"f1", b"v1", b"f2", b"v2"],
        &[b"HGET", b"h", b"f1"],
        &[b"HGET", b"h", b"nof"],
        &[b"HGETALL", b"h"],
        &[b"HGETALL", b"nohash"],
        &[b"HKEYS", b"h"],
        &[b"HVALS", b"h"],
        &[b"HLEN", b"h"],
        &[b"HMGET", b"h", b"f1", b"nof", b"f2"],
        &[b"HINCRBY", b"h", b"n", b"5"],
        &[b"HINCRBYFLOAT", b"h", b"fl", b"0.1"],
        &[b"HDEL", b"h", b"f2", b"nof"],
        &[b"HEXISTS", b"h", b"f2"],
        // lists
        &[b"LPUSH", b"l", b"a", b"b", b"c"],
        &[b"RPUSH", b"l", b"d"],
        &[b"LRANGE", b"l", b"0", b"-1"],
        &[b"LRANGE", b"nolist", b"0", b"-1"],
        &[b"LLEN", b"l"],
        &[b"LINDEX", b"l", b"0"],
        &[b"LINDEX", b"l", b"99"],
        &[b"LPOS", b"l", b"d"],
        &[b"LPOP", b"l"],
        &[b"RPOP", b"l", b"2"],
        &[b"LPOP", b"nolist"],
        &[b"LPOP", b"nolist", b"2"],
        // sets (intsets and single members: deterministic order)
        &[b"SADD", b"ints", b"3", b"1", b"2", b"3"],
        &[b"SMEMBERS", b"ints"],
        &[b"SMEMBERS", b"noset"],
        &[b"SADD", b"one", b"member"],
        &[b"SMEMBERS", b"one"],
        &[b"SISMEMBER", b"ints", b"2"],
        &[b"SMISMEMBER", b"ints", b"1", b"9"],
        &[b"SCARD", b"ints"],
        &[b"SINTER", b"ints", b"noset"],
        // sorted sets
        &[b"ZADD", b"z", b"1", b"a", b"2.5", b"b", b"3", b"c"],
        &[b"ZRANGE", b"z", b"0", b"-1", b"WITHSCORES"],
        &[b"ZRANGE", b"z", b"0", b"-1"],
        &[b"ZSCORE", b"z", b"b"],
        &[b"ZSCORE", b"z", b"nomember"],
        &[b"ZINCRBY", b"z", b"1.5", b"a"],
        &[b"ZRANK", b"z", b"c"],
        &[b"ZRANK", b"z", b"nomember"],
        &[b"ZRANGEBYSCORE", b"z", b"-inf", b"+inf", b"WITHSCORES"],
        &[b"ZREVRANGE", b"z", b"0", b"0"],
        &[b"ZCARD", b"z"],
        &[b"ZMSCORE", b"z", b"a", b"nomember"],
        &[b"ZPOPMIN", b"z"],
        // streams with fixed ids
        &[b"XADD", b"st", b"1-1", b"f", b"v"],
        &[b"XADD", b"st", b"2-0", b"g", b"w", b"h", b"x"],
        &[b"XRANGE", b"st", b"-", b"+"],
        &[b"XREVRANGE", b"st", b"+", b"-", b"COUNT", b"1"],
        &[b"XRANGE", b"st", b"3", b"+"],
        &[b"XLEN", b"st"],
        &[b"XREAD", b"COUNT", b"1", b"STREAMS", b"st", b"0"],
        // keys, expiry, introspection
        &[b"EXPIRE", b"s1", b"1000"],
        &[b"TTL", b"s1"],
        &[b"TTL", b"s2"],
        &[b"TTL", b"nokey"],
        &[b"PERSIST", b"s1"],
        &[b"TTL", b"s1"],
        &[b"EXPIRE", b"nokey", b"10"],
        &[b"OBJECT", b"ENCODING", b"s1"],
        &[b"OBJECT", b"ENCODING", b"counter"],
        &[b"OBJECT", b"ENCODING", b"l"],
        &[b"OBJECT", b"ENCODING", b"ints"],
        &[b"OBJECT", b"ENCODING", b"h"],
        &[b"OBJECT", b"ENCODING", b"z"],
        &[b"OBJECT", b"ENCODING", b"nokey"],
        &[b"TYPE", b"s1"],
        &[b"TYPE", b"h"],
        &[b"TYPE", b"l"],
        &[b"TYPE", b"ints"],
        &[b"TYPE", b"z"],
        &[b"TYPE", b"st"],
        &[b"TYPE", b"nokey"],
        &[b"EXISTS", b"s1", b"nokey", b"h", b"s1"],
        &[b"KEYS", b"s1"],
        &[b"KEYS", b"nomatch*"],
        &[b"DUMP", b"s1"],
        &[b"DUMP", b"nokey"],
        &[b"RENAME", b"a", b"a2"],
        &[b"DEL", b"a2", b"nokey", b"s2"],
        &[b"DBSIZE"],
        &[b"EVAL", b"return {1, 'two', {3}, false, 'x'}", b"0"],
        &[b"EVAL", b"return redis.call('HGETALL', KEYS[1])", b"1", b"h"],
    ];
    for args in table {
        diffs.same(&mut d, &mut p, args).await;
    }
    // The same again with the redis crate and redis-cli (textual view).
    for args in [["GET", "s1"], ["TYPE", "st"], ["TTL", "s1"]] {
        let want = redis_cli(pair.direct.port, &args);
        let got = redis_cli(pair.respite.port(), &args);
        diffs.check(&format!("redis-cli {}", args.join(" ")), want.as_bytes(), got.as_bytes());
    }
    let mut cd = pair.direct_client().await;
    let mut cp = pair.respite.client().await;
    for args in [vec!["XRANGE", "st", "-", "+"], vec!["ZRANGE", "z", "0", "-1", "WITHSCORES"], vec!["HGETALL", "h"]] {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let vd: Value = cmd.query_async(&mut cd).await.unwrap();
        let vp: Value = cmd.query_async(&mut cp).await.unwrap();
        diffs.check(
            &format!("redis crate {}", args.join(" ")),
            format!("{vd:?}").as_bytes(),
            format!("{vp:?}").as_bytes(),
        );
    }
    diffs.assert_none();
    // The proxied server really holds the state (respite did not answer from elsewhere).
    assert_eq!(redis_cli(pair.proxied.port, &["GET", "s1"]).trim(), "hello World");
    pair.respite.shutdown().await;
}
