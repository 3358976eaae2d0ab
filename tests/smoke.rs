mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_set_through_respite() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let mut c = respite.client().await;
    let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut c).await.unwrap();
    let v: String = redis::cmd("GET").arg("k").query_async(&mut c).await.unwrap();
    assert_eq!(v, "v");
    assert_eq!(redis_cli(respite.port(), &["GET", "k"]).trim(), "v");
    respite.shutdown().await;
}

/// A request split across two reads is classified by its real name: a MULTI that arrives
/// in two pieces still opens a transaction on a dedicated connection (regression: the
/// parser's partial arguments used to be cleared between reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_split_across_reads_is_routed_by_its_real_name() {
    let redis = RedisServer::start();
    let respite = Respite::start(&redis.url()).await;
    let mut raw = Raw::connect(respite.addr).await;
    raw.send(b"*1\r\n$5\r\nMUL").await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    raw.send(b"TI\r\n").await;
    assert_eq!(raw.reply().await, b"+OK\r\n");
    raw.send(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$1\r\n").await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    raw.send(b"1\r\n").await;
    assert_eq!(raw.reply().await, b"+QUEUED\r\n");
    assert_eq!(raw.call(&[b"EXEC"]).await, b"*1\r\n+OK\r\n");
    assert_eq!(respite.metric("respite_commands_total{command=\"multi\",outcome=\"ok\"}").await, Some(1.0));
    assert_eq!(respite.metric("respite_commands_total{command=\"set\",outcome=\"ok\"}").await, Some(1.0));
    assert_eq!(respite.metric("respite_commands_total{command=\"other\",outcome=\"ok\"}").await, None);
    respite.shutdown().await;
}
