//! The client-facing listener: accepts connections, enforces `client.max_connections`
//! (over the limit: `-ERR max number of clients reached`, as Redis), and runs a session per
//! client under a tracker that shutdown drains.
//!
//! The limit is read at each accept, so a configuration reload changes it at once; lowering
//! it closes no one, it refuses new clients until enough have left.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::app::Ctx;
use crate::session::Session;

pub async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, sessions: TaskTracker) {
    let open = Arc::new(AtomicUsize::new(0));
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
        // Only this loop adds clients, so checking then adding cannot overshoot.
        if open.load(Ordering::Acquire) >= ctx.live.load().max_connections {
            ctx.metrics.client_connections_rejected.with_label_values(&["max_connections"]).inc();
            // Tracked like a session, so shutdown waits for it too (37 bytes into an empty
            // socket buffer: it never waits on the client).
            sessions.spawn(async move {
                let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
                let _ = stream.shutdown().await;
            });
            continue;
        }
        let slot = Slot::take(&open, ctx.metrics.client_connections.clone());
        ctx.metrics.client_connections_accepted.inc();
        let session = Session::new(ctx.clone(), stream);
        sessions.spawn(async move {
            session.run().await;
            drop(slot);
        });
    }
}

/// One open client connection, counted (and shown in `respite_client_connections`) until
/// dropped, also when its session ends in a panic.
struct Slot(Arc<AtomicUsize>, prometheus::IntGauge);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, gauge: prometheus::IntGauge) -> Slot {
        open.fetch_add(1, Ordering::AcqRel);
        gauge.inc();
        Slot(open.clone(), gauge)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        self.1.dec();
    }
}
