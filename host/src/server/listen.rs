//! Accepting connections: HTTP/1.1 on each, with a deadline for every
//! request head and a cap on open connections.
//!
//! Invariants: a client that does not send a complete request head within
//! `header_timeout` (a slow trickle of header bytes, or a keep-alive
//! connection left idle) is disconnected, so connections cannot be held
//! open for free; at most `max_connections` are open at once (past that the
//! server stops accepting and new clients wait in the kernel's backlog,
//! rather than the process running out of file descriptors); on shutdown
//! the listener closes at once, each connection finishes the request it is
//! serving (idle ones close), and `serve` returns when all have ended or
//! `drain` has passed (a client that stops reading a long answer cannot
//! hold shutdown).

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// How long a client may take to send a request's head, counted from
    /// when the server starts waiting for it (idle keep-alive included).
    pub header_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long shutdown waits for connections to finish.
    pub drain: Duration,
}

/// Serve `router` on `listener` until `shutdown` resolves, then let every
/// connection finish its request in flight and return.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Dropped to tell connections to finish; `closed()` waits for them.
    let (stop, stopping) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Errors of one connection (reset before accept) are
                    // not the listener's; others (out of descriptors) pass.
                    if !is_connection_error(&e) {
                        tracing::warn!(error = %e, "accept failed; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopping.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(());
    if tokio::time::timeout(limits.drain, stop.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after {} s of shutdown; closing them",
            limits.drain.as_secs()
        );
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
