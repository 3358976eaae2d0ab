//! Pub/sub through an outage: delivered locally between this sidecar's clients while the
//! upstream is down, and back on the upstream once it returns (SPEC §3, issue 3 item 7).

mod common;
use common::*;
use std::time::Duration;

async fn drill(respite: &Respite, state: &str) {
    let (code, body) = respite.http_post("/admin/drill", Some("t"), &format!("{{\"state\":\"{state}\"}}")).await;
    assert_eq!(code, 200, "{body}");
}

/// Sends `cmd` every 50 ms (up to 20 times) until it answers `want` (subscribers move to
/// local delivery when respite notices the outage); returns the last answer.
async fn call_until(client: &mut Raw, cmd: &[&[u8]], want: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    for _ in 0..20 {
        r = Box::pin(client.call(cmd)).await;
        if r == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r
}

fn message(channel: &str, payload: &str) -> Vec<u8> {
    encode(&[b"message", channel.as_bytes(), payload.as_bytes()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_keep_receiving_through_an_outage_and_after_it() {
    let redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    cfg.admin.token = "t".into();
    let respite = Respite::start_with(cfg).await;

    // Subscribed while healthy: on the upstream.
    let mut sub = Box::pin(Raw::connect(respite.addr)).await;
    assert_eq!(Box::pin(sub.call(&[b"SUBSCRIBE", b"news"])).await, b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
    let mut publisher = Box::pin(Raw::connect(respite.addr)).await;
    assert_eq!(Box::pin(publisher.call(&[b"PUBLISH", b"news", b"one"])).await, b":1\r\n");
    assert_eq!(Box::pin(sub.reply()).await, message("news", "one"));

    // The upstream goes down: the subscriber stays subscribed, now locally, without an error.
    drill(&respite, "down").await;
    respite.wait_state("down", Duration::from_secs(2)).await;
    // The drill leaves the relayed connection open, but it is an outage all the same: the
    // subscriber moves to local delivery. A second, pattern subscriber joins during the outage.
    let mut psub = Box::pin(Raw::connect(respite.addr)).await;
    assert_eq!(Box::pin(psub.call(&[b"PSUBSCRIBE", b"n*"])).await, b"*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:1\r\n");
    let mut r = Vec::new();
    for _ in 0..20 {
        r = Box::pin(publisher.call(&[b"PUBLISH", b"news", b"two"])).await;
        if r == b":2\r\n" {
            break;
        }
        // Not yet moved (checked every 100 ms): drain what the pattern subscriber got.
        let _ = Box::pin(psub.reply()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(r, b":2\r\n", "during the outage PUBLISH reaches both local subscribers");
    assert_eq!(Box::pin(sub.reply()).await, message("news", "two"));
    assert_eq!(
        Box::pin(psub.reply()).await,
        encode(&[b"pmessage", b"n*", b"news", b"two"]),
        "a pattern subscriber made during the outage receives local messages"
    );

    // Back up: the pattern subscriber is moved to the upstream and receives what others publish there.
    drill(&respite, "auto").await;
    respite.wait_state("healthy", Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let direct = redis::Client::open(redis.url()).unwrap();
    let mut direct = direct.get_multiplexed_async_connection().await.unwrap();
    let receivers: i64 = redis::cmd("PUBLISH").arg("news").arg("three").query_async(&mut direct).await.unwrap();
    assert_eq!(receivers, 2, "both subscribers are on the upstream again");
    assert_eq!(Box::pin(sub.reply()).await, message("news", "three"));
    assert_eq!(Box::pin(psub.reply()).await, encode(&[b"pmessage", b"n*", b"news", b"three"]));
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_upstream_keeps_subscribers_subscribed_locally() {
    let mut redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let mut sub = Box::pin(Raw::connect(respite.addr)).await;
    assert_eq!(Box::pin(sub.call(&[b"SUBSCRIBE", b"a", b"b"])).await, b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
    assert_eq!(Box::pin(sub.reply()).await, b"*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n");
    redis.kill();
    respite.wait_state("down", Duration::from_secs(3)).await;
    let mut publisher = Box::pin(Raw::connect(respite.addr)).await;
    // The subscriber's relayed connection is given up as soon as respite sees it closed.
    let delivered = call_until(&mut publisher, &[b"PUBLISH", b"b", b"local"], b":1\r\n").await;
    assert_eq!(delivered, b":1\r\n");
    assert_eq!(Box::pin(sub.reply()).await, message("b", "local"));
    // Unsubscribing works locally and counts down like Redis.
    assert_eq!(Box::pin(sub.call(&[b"UNSUBSCRIBE", b"a"])).await, b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n");
    assert_eq!(Box::pin(publisher.call(&[b"PUBLISH", b"a", b"x"])).await, b":0\r\n");
    assert!(!sub.closed_within(Duration::from_millis(100)).await, "the client connection stays open");
    respite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_subscribers_are_served_locally_through_an_outage_and_resubscribed_after() {
    let redis = RedisServer::start();
    let mut cfg = test_config(&redis.url());
    cfg.admin.token = "t".into();
    let respite = Respite::start_with(cfg).await;
    let smessage = |payload: &str| encode(&[b"smessage", b"orders", payload.as_bytes()]);

    // Subscribed while healthy: on the upstream (Redis's own confirmation).
    let mut sub = Box::pin(Raw::connect(respite.addr)).await;
    assert_eq!(
        Box::pin(sub.call(&[b"SSUBSCRIBE", b"orders"])).await,
        b"*3\r\n$10\r\nssubscribe\r\n$6\r\norders\r\n:1\r\n"
    );
    let mut publisher = Box::pin(Raw::connect(respite.addr)).await;
    assert_eq!(Box::pin(publisher.call(&[b"SPUBLISH", b"orders", b"one"])).await, b":1\r\n");
    assert_eq!(Box::pin(sub.reply()).await, smessage("one"));

    // Down: the shard subscriber stays subscribed, locally, without an error.
    drill(&respite, "down").await;
    respite.wait_state("down", Duration::from_secs(2)).await;
    let r = call_until(&mut publisher, &[b"SPUBLISH", b"orders", b"two"], b":1\r\n").await;
    assert_eq!(r, b":1\r\n", "during the outage SPUBLISH reaches the local shard subscriber");
    assert_eq!(Box::pin(sub.reply()).await, smessage("two"));
    // Shard channels are their own namespace: PUBLISH on the same name reaches nobody.
    assert_eq!(Box::pin(publisher.call(&[b"PUBLISH", b"orders", b"plain"])).await, b":0\r\n");
    // A second shard subscriber joins and leaves locally, counting as Redis does.
    let mut sub2 = Box::pin(Raw::connect(respite.addr)).await;
    assert_eq!(
        Box::pin(sub2.call(&[b"SSUBSCRIBE", b"orders", b"other"])).await,
        b"*3\r\n$10\r\nssubscribe\r\n$6\r\norders\r\n:1\r\n"
    );
    assert_eq!(Box::pin(sub2.reply()).await, b"*3\r\n$10\r\nssubscribe\r\n$5\r\nother\r\n:2\r\n");
    assert_eq!(Box::pin(publisher.call(&[b"SPUBLISH", b"orders", b"three"])).await, b":2\r\n");
    assert_eq!(Box::pin(sub.reply()).await, smessage("three"));
    assert_eq!(Box::pin(sub2.reply()).await, smessage("three"));
    assert_eq!(
        Box::pin(sub2.call(&[b"SUNSUBSCRIBE", b"orders"])).await,
        b"*3\r\n$12\r\nsunsubscribe\r\n$6\r\norders\r\n:1\r\n"
    );
    assert_eq!(Box::pin(publisher.call(&[b"SPUBLISH", b"orders", b"four"])).await, b":1\r\n");
    assert_eq!(Box::pin(sub.reply()).await, smessage("four"));

    // Back up: the first subscriber is shard-subscribed on the upstream again.
    drill(&respite, "auto").await;
    respite.wait_state("healthy", Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let direct = redis::Client::open(redis.url()).unwrap();
    let mut direct = direct.get_multiplexed_async_connection().await.unwrap();
    let receivers: i64 = redis::cmd("SPUBLISH").arg("orders").arg("five").query_async(&mut direct).await.unwrap();
    assert_eq!(receivers, 1, "the shard subscriber is on the upstream again (the second left)");
    assert_eq!(Box::pin(sub.reply()).await, smessage("five"));
    assert!(!sub.closed_within(Duration::from_millis(100)).await, "no error, no close");
    respite.shutdown().await;
}
