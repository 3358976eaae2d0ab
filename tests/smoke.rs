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
