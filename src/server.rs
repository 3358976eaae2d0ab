//! The client-facing listener: accepts connections, enforces `client.max_connections`
//! (over the limit: `-ERR max number of clients reached`, as Redis), and runs a session per
//! client under a tracker that shutdown drains.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::app::Ctx;
use crate::session::Session;

pub async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, sessions: TaskTracker) {
    let permits = Arc::new(Semaphore::new(ctx.cfg.raw.client.max_connections));
    loop {
        let (mut stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            ctx.metrics.client_connections_rejected.with_label_values(&["max_connections"]).inc();
            tokio::spawn(async move {
                let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        ctx.metrics.client_connections_accepted.inc();
        ctx.metrics.client_connections.inc();
        let session = Session::new(ctx.clone(), stream);
        let ctx2 = ctx.clone();
        sessions.spawn(async move {
            session.run().await;
            ctx2.metrics.client_connections.dec();
            drop(permit);
        });
    }
}
