//! The accept loop and per-connection HTTP/1.1 serving (hyper directly, instead of
//! `axum::serve`), so limits hold before anybody has authenticated:
//!
//! - every connection must send its request headers within [`HEADER_READ_TIMEOUT`] (and
//!   between keep-alive requests the same), so silent sockets cannot pile up;
//! - connections that have not authenticated (plain HTTP, or a WebSocket before its
//!   hello) are capped in total and per source address ([`Admission`]); past either cap a
//!   new connection is closed at once. A WebSocket leaves the count when its hello
//!   succeeds, so authenticated peers are never crowded out by anonymous ones;
//! - past the total cap a small reserve ([`OPS_RESERVE`], [`OPS_RESERVE_PER_SOURCE`] per
//!   address) still serves `/health` and `/metrics`, with a short header timeout
//!   ([`OPS_HEADER_TIMEOUT`]) and life ([`OPS_CONNECTION_MAX`]); anything else asked on
//!   such a connection is answered 503 `unavailable`. An operator can see a broker under
//!   attack, and the reserve is useless for holding places;
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
/// Connections served from the operators' reserve when the unauthenticated cap is full,
/// in total and from one address.
pub const OPS_RESERVE: usize = 16;
pub const OPS_RESERVE_PER_SOURCE: usize = 2;
/// A reserve connection must send its headers this fast, and lives at most this long.
pub const OPS_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
pub const OPS_CONNECTION_MAX: Duration = Duration::from_secs(5);
/// How long in-flight requests get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Counts unauthenticated connections, in total and per source address: the main pool,
/// and the operators' reserve behind it.
#[derive(Debug)]
pub struct Admission {
    main: Arc<Pool>,
    reserve: Arc<Pool>,
}

/// Places in total and per source address.
#[derive(Debug)]
struct Pool {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One unauthenticated connection's place in the count; given back when dropped (the
/// connection closed, or its WebSocket authenticated).
#[derive(Debug)]
pub struct PreAuth {
    pool: Arc<Pool>,
    ip: IpAddr,
}

/// Where a new connection was admitted.
#[derive(Debug)]
pub enum Admitted {
    /// Everything is served.
    Full(PreAuth),
    /// The main pool is full: only `/health` and `/metrics`.
    OpsOnly(PreAuth),
}

impl Drop for PreAuth {
    fn drop(&mut self) {
        let mut c = self
            .pool
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
    /// Unauthenticated connections now, both pools.
    pub fn count(&self) -> usize {
        let n = |p: &Pool| {
            p.counts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0
        };
        n(&self.main) + n(&self.reserve)
    }

    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            main: Pool::new(max_total, max_per_source),
            reserve: Pool::new(OPS_RESERVE, OPS_RESERVE_PER_SOURCE),
        })
    }

    /// A place for a new unauthenticated connection from `ip`: in the main pool if both
    /// its caps allow it, else (only when the main pool is full in total, not when this
    /// address is over its own cap) in the operators' reserve.
    pub fn admit(&self, ip: IpAddr) -> Option<Admitted> {
        match self.main.take(ip) {
            Ok(place) => Some(Admitted::Full(place)),
            Err(Full::Total) => self.reserve.take(ip).ok().map(Admitted::OpsOnly),
            Err(Full::Source) => None,
        }
    }
}

/// Which cap refused.
enum Full {
    Total,
    Source,
}

impl Pool {
    fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            counts: Mutex::new((0, HashMap::new())),
        })
    }

    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<PreAuth, Full> {
        let ip = crate::ratelimit::source_of(ip);
        let mut c = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let from_ip = c.1.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.max_per_source {
            return Err(Full::Source);
        }
        if c.0 >= self.max_total {
            return Err(Full::Total);
        }
        c.0 += 1;
        *c.1.entry(ip).or_insert(0) += 1;
        Ok(PreAuth {
            pool: self.clone(),
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

/// Serve `app` on `listener` until `stop`; connections from the reserve get `ops`.
#[allow(clippy::too_many_arguments)]
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    ops: Router,
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
        let (place, router, header_timeout, life) = match admission.admit(peer.ip()) {
            Some(Admitted::Full(place)) => (place, &app, HEADER_READ_TIMEOUT, HTTP_CONNECTION_MAX),
            Some(Admitted::OpsOnly(place)) => {
                Metrics::inc(&metrics.preauth_reserve_total);
                (place, &ops, OPS_HEADER_TIMEOUT, OPS_CONNECTION_MAX)
            }
            None => {
                Metrics::inc(&metrics.preauth_refused_total);
                tracing::debug!(%peer, "too many unauthenticated connections; closed");
                continue;
            }
        };
        let slot = PreAuthSlot(Arc::new(Mutex::new(Some(place))));
        let for_requests = slot.clone();
        let service = router
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
                .header_read_timeout(header_timeout);
            let conn = builder
                .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                result = tokio::time::timeout(life, conn.as_mut()) => {
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
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        let full = |x: Option<Admitted>| match x {
            Some(Admitted::Full(p)) => p,
            other => panic!("expected a full place, got {other:?}"),
        };
        let p1 = full(a.admit(ip(1)));
        let _p2 = full(a.admit(ip(1)));
        assert!(a.admit(ip(1)).is_none(), "per source: no reserve either");
        let _p3 = full(a.admit(ip(2)));
        // In total: the reserve, two per address, sixteen in all.
        let mut reserve = Vec::new();
        for n in 0..OPS_RESERVE {
            let source = ip(3 + u8::try_from(n / OPS_RESERVE_PER_SOURCE).unwrap());
            match a.admit(source) {
                Some(Admitted::OpsOnly(p)) => reserve.push(p),
                other => panic!("expected a reserve place, got {other:?}"),
            }
        }
        assert!(a.admit(ip(100)).is_none(), "the reserve is full too");
        drop(reserve);
        drop(p1);
        full(a.admit(ip(2)));
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_mapped_ipv4_is_its_ipv4() {
        let a = Admission::new(100, 2);
        let host = |s: &str| s.parse::<IpAddr>().unwrap();
        let _p = (
            a.admit(host("2001:db8:1:2::1")),
            a.admit(host("2001:db8:1:2:ffff::9")),
        );
        assert!(a.admit(host("2001:db8:1:2:abcd::1")).is_none(), "same /64");
        assert!(a.admit(host("2001:db8:1:3::1")).is_some(), "another /64");
        let _q = (
            a.admit(host("192.0.2.7")),
            a.admit(host("::ffff:192.0.2.7")),
        );
        assert!(
            a.admit(host("192.0.2.7")).is_none(),
            "mapped counts as IPv4"
        );
    }
}
