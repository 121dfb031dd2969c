//! The accept loop and per-connection HTTP/1.1 serving (hyper directly, instead of
//! `axum::serve`), so limits hold before anybody has authenticated:
//!
//! - every connection must send its request headers within [`HEADER_READ_TIMEOUT`] (and
//!   between keep-alive requests the same), so silent sockets cannot pile up;
//! - connections that have not authenticated (plain HTTP, or a WebSocket before its
//!   hello) are capped in total and per source address ([`Admission`]); past either cap a
//!   new connection is closed at once. A WebSocket leaves the count when its hello
//!   succeeds, so authenticated peers are never crowded out by anonymous ones;
//! - every connection task is tracked, and stops (gracefully) at shutdown.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::metrics::Metrics;

/// Longest a client may take to send a request's headers (including the first).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a plain HTTP connection may live (keep-alive included), so a request body
/// sent a byte a minute cannot hold a place for ever. A WebSocket leaves hyper as soon as
/// it is upgraded, so this never limits one.
pub const HTTP_CONNECTION_MAX: Duration = Duration::from_secs(60);
/// How long in-flight requests get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Counts unauthenticated connections, in total and per source address.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One unauthenticated connection's place in the count; given back when dropped (the
/// connection closed, or its WebSocket authenticated).
#[derive(Debug)]
pub struct PreAuth {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for PreAuth {
    fn drop(&mut self) {
        let mut c = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.0 = c.0.saturating_sub(1);
        if let Some(n) = c.1.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.1.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            counts: Mutex::new((0, HashMap::new())),
        })
    }

    /// A place for a new unauthenticated connection from `ip`, if both caps allow it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PreAuth> {
        let mut c = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let from_ip = c.1.get(&ip).copied().unwrap_or(0);
        if c.0 >= self.max_total || from_ip >= self.max_per_source {
            return None;
        }
        c.0 += 1;
        *c.1.entry(ip).or_insert(0) += 1;
        Some(PreAuth {
            admission: self.clone(),
            ip,
        })
    }
}

/// The connection's pre-auth place, reachable from its requests (the WebSocket upgrade
/// takes it, and its connection task gives it back after the hello).
#[derive(Debug, Clone, Default)]
pub struct PreAuthSlot(Arc<Mutex<Option<PreAuth>>>);

impl PreAuthSlot {
    pub fn take(&self) -> Option<PreAuth> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Serve `app` on `listener` until `stop`.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    stop: CancellationToken,
    tasks: TaskTracker,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    loop {
        let (io, peer) = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Some(place) = admission.admit(peer.ip()) else {
            Metrics::inc(&metrics.preauth_refused_total);
            tracing::debug!(%peer, "too many unauthenticated connections; closed");
            continue;
        };
        let slot = PreAuthSlot(Arc::new(Mutex::new(Some(place))));
        let for_requests = slot.clone();
        let service = app
            .clone()
            .map_request(move |mut req: axum::extract::Request<_>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(for_requests.clone());
                req.map(axum::body::Body::new)
            });
        let stop = stop.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder
                .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                result = tokio::time::timeout(HTTP_CONNECTION_MAX, conn.as_mut()) => {
                    match result {
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
                        Err(_) => tracing::debug!(%peer, "HTTP connection closed after its maximum life"),
                        Ok(Ok(())) => {}
                    }
                }
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_in_total_and_per_source_and_gives_places_back() {
        let a = Admission::new(3, 2);
        let (x, y) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let p1 = a.admit(x).unwrap();
        let _p2 = a.admit(x).unwrap();
        assert!(a.admit(x).is_none(), "per source");
        let _p3 = a.admit(y).unwrap();
        assert!(a.admit(y).is_none(), "in total");
        drop(p1);
        assert!(a.admit(y).is_some());
    }
}
