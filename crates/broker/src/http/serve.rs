//! The accept loop and per-connection HTTP/1.1 serving (hyper directly, instead of
//! `axum::serve`), so limits hold before anybody has authenticated:
//!
//! - every connection must send its request headers within [`HEADER_READ_TIMEOUT`] (and
//!   between keep-alive requests the same), so silent sockets cannot pile up;
//! - connections that have not authenticated (plain HTTP, or a WebSocket before its
//!   hello) are capped in total and per source address ([`Admission`]); past the cap of
//!   its address a new connection is closed at once. A WebSocket leaves the count when its
//!   hello succeeds, so authenticated peers are never crowded out by anonymous ones;
//! - past the total cap a new connection joins a bounded queue (in total and per address,
//!   served by `lobby_router`): `/health` and `/metrics` are answered at once, and a
//!   WebSocket upgrade waits up to [`QUEUE_WAIT`] for a place, first come first served.
//!   A reconnect storm (every peer of a restarted broker at once) is absorbed instead of
//!   refused into the clients' backoff;
//! - past the queue a small reserve ([`OPS_RESERVE`], [`OPS_RESERVE_PER_SOURCE`] per
//!   address) still serves `/health` and `/metrics`, with a short header timeout
//!   ([`OPS_HEADER_TIMEOUT`]) and life ([`OPS_CONNECTION_MAX`]); anything else asked on
//!   such a connection is answered 503 `unavailable`. An operator can see a broker under
//!   attack, and the reserve is useless for holding places;
//! - every connection task is tracked, and stops (gracefully) at shutdown.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

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
/// Longest a queued WebSocket upgrade waits for a place before it is answered 503.
pub const QUEUE_WAIT: Duration = Duration::from_secs(5);
/// How long in-flight requests get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Counts unauthenticated connections, in total and per source address: the main pool,
/// the queue waiting for it, and the operators' reserve behind both.
#[derive(Debug)]
pub struct Admission {
    main: Arc<Pool>,
    queue: Arc<Pool>,
    reserve: Arc<Pool>,
}

/// Places in total and per source address; `freed` wakes one waiter when one is given
/// back.
#[derive(Debug)]
struct Pool {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
    freed: Notify,
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
    /// The main pool is full: in the queue (`lobby_router`), waiting for a place.
    Queued(PreAuth),
    /// The main pool and the queue are full: only `/health` and `/metrics`.
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
        drop(c);
        self.pool.freed.notify_one();
    }
}

impl Admission {
    /// Unauthenticated connections now, both pools.
    pub fn count(&self) -> usize {
        let n = |p: &Pool| p.total();
        n(&self.main) + n(&self.queue) + n(&self.reserve)
    }

    /// `max_queued` may be 0 (no queue: past the main pool, the reserve). One address may
    /// hold the same share of the queue as of the main pool.
    pub fn new(max_total: usize, max_per_source: usize, max_queued: usize) -> Arc<Self> {
        let max_total = max_total.max(1);
        let queued_per_source = max_per_source
            .saturating_mul(max_queued)
            .div_ceil(max_total)
            .min(max_queued);
        Arc::new(Self {
            main: Pool::new(max_total, max_per_source),
            queue: Pool::new(max_queued, queued_per_source),
            reserve: Pool::new(OPS_RESERVE, OPS_RESERVE_PER_SOURCE),
        })
    }

    /// A place for a new unauthenticated connection from `ip`: in the main pool if both
    /// its caps allow it and nobody is queued before it; else (unless this address is
    /// over its own cap) in the queue, and past the queue in the operators' reserve.
    pub fn admit(&self, ip: IpAddr) -> Option<Admitted> {
        if self.queue.total() == 0 {
            match self.main.take(ip) {
                Ok(place) => return Some(Admitted::Full(place)),
                Err(Full::Source) => return None,
                Err(Full::Total) => {}
            }
        } else if self.main.over_source(ip) {
            return None;
        }
        match self.queue.take(ip) {
            Ok(place) => Some(Admitted::Queued(place)),
            Err(_) => self.reserve.take(ip).ok().map(Admitted::OpsOnly),
        }
    }

    /// Wait until `deadline` for a place in the main pool for `ip`; `None` when the
    /// deadline passes or the address is over its own cap. Waiters are woken one per
    /// place given back, in the order they began waiting.
    async fn main_place(&self, ip: IpAddr, deadline: tokio::time::Instant) -> Option<PreAuth> {
        loop {
            let freed = self.main.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.main.take(ip) {
                Ok(place) => return Some(place),
                Err(Full::Total) => {}
                Err(Full::Source) => {
                    // The place this waiter may have been woken for is someone else's.
                    self.main.freed.notify_one();
                    return None;
                }
            }
            tokio::time::timeout_at(deadline, freed).await.ok()?;
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
            max_total,
            max_per_source: max_per_source.max(1),
            counts: Mutex::new((0, HashMap::new())),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn total(&self) -> usize {
        self.lock().0
    }

    /// Whether `ip` (already a source) holds its share. A share as large as the whole
    /// pool is no cap of its own: the total decides.
    fn source_full(&self, counts: &HashMap<IpAddr, usize>, ip: IpAddr) -> bool {
        self.max_per_source < self.max_total
            && counts.get(&ip).is_some_and(|n| *n >= self.max_per_source)
    }

    fn over_source(&self, ip: IpAddr) -> bool {
        let ip = crate::ratelimit::source_of(ip);
        self.source_full(&self.lock().1, ip)
    }

    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<PreAuth, Full> {
        let ip = crate::ratelimit::source_of(ip);
        let mut c = self.lock();
        if self.source_full(&c.1, ip) {
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
#[derive(Debug, Clone)]
pub struct PreAuthSlot {
    place: Arc<Mutex<Option<PreAuth>>>,
    admission: Arc<Admission>,
}

impl PreAuthSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<PreAuth>> {
        self.place
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn take(&self) -> Option<PreAuth> {
        self.lock().take()
    }

    /// For a queued connection: wait up to [`QUEUE_WAIT`] for a place in the main pool
    /// and take it instead of the queue's. True when the slot holds a main place.
    pub async fn wait_for_place(&self) -> bool {
        let ip = match &*self.lock() {
            Some(p) if Arc::ptr_eq(&p.pool, &self.admission.main) => return true,
            Some(p) if Arc::ptr_eq(&p.pool, &self.admission.queue) => p.ip,
            _ => return false,
        };
        let deadline = tokio::time::Instant::now() + QUEUE_WAIT;
        let Some(place) = self.admission.main_place(ip, deadline).await else {
            return false;
        };
        *self.lock() = Some(place);
        true
    }
}

/// What a connection is served, by where [`Admission`] placed it.
#[derive(Debug, Clone)]
pub struct Routers {
    /// Everything (a place in the main pool).
    pub app: Router,
    /// `/health`, `/metrics`, and a WebSocket upgrade that waits for a place (queued).
    pub lobby: Router,
    /// `/health` and `/metrics` only (the operators' reserve).
    pub ops: Router,
}

/// Serve `routers` on `listener` until `stop`.
pub async fn serve<L>(
    mut listener: L,
    routers: Routers,
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
        // (header timeout, life)
        let normal = (HEADER_READ_TIMEOUT, HTTP_CONNECTION_MAX);
        let (place, router, (header_timeout, life)) = match admission.admit(peer.ip()) {
            Some(Admitted::Full(place)) => (place, &routers.app, normal),
            Some(Admitted::Queued(place)) => {
                Metrics::inc(&metrics.preauth_queued_total);
                (place, &routers.lobby, normal)
            }
            Some(Admitted::OpsOnly(place)) => {
                Metrics::inc(&metrics.preauth_reserve_total);
                let ops = (OPS_HEADER_TIMEOUT, OPS_CONNECTION_MAX);
                (place, &routers.ops, ops)
            }
            None => {
                Metrics::inc(&metrics.preauth_refused_total);
                tracing::debug!(%peer, "too many unauthenticated connections; closed");
                continue;
            }
        };
        let slot = PreAuthSlot {
            place: Arc::new(Mutex::new(Some(place))),
            admission: admission.clone(),
        };
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
        let a = Admission::new(3, 2, 0);
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

    fn slot(a: &Arc<Admission>, place: PreAuth) -> PreAuthSlot {
        PreAuthSlot {
            place: Arc::new(Mutex::new(Some(place))),
            admission: a.clone(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_cap_connections_queue_and_get_places_in_order() {
        let a = Admission::new(2, 8, 3);
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        let Some(Admitted::Full(p1)) = a.admit(ip(1)) else {
            panic!("a place")
        };
        let Some(Admitted::Full(_p2)) = a.admit(ip(2)) else {
            panic!("a place")
        };
        let mut queued = Vec::new();
        for n in 3..6 {
            match a.admit(ip(n)) {
                Some(Admitted::Queued(p)) => queued.push(slot(&a, p)),
                other => panic!("expected a queued place, got {other:?}"),
            }
        }
        assert!(
            matches!(a.admit(ip(9)), Some(Admitted::OpsOnly(_))),
            "queue full: the reserve"
        );
        let waiters: Vec<_> = queued
            .iter()
            .cloned()
            .map(|s| tokio::spawn(async move { (s.wait_for_place().await, s) }))
            .collect();
        tokio::task::yield_now().await;
        // One place given back: the first waiter gets it, the others wait on.
        drop(p1);
        let mut waiters = waiters.into_iter();
        let (placed, first) = waiters.next().unwrap().await.unwrap();
        assert!(placed);
        assert!(first.wait_for_place().await, "a main place is a place");
        // Nobody gives a place back: the others are answered when QUEUE_WAIT is over.
        for w in waiters {
            let (placed, s) = w.await.unwrap();
            assert!(!placed, "no place within QUEUE_WAIT");
            drop(s);
        }
        drop(queued);
        // While nobody is queued, a new connection takes a free place directly.
        drop(first);
        assert!(matches!(a.admit(ip(7)), Some(Admitted::Full(_))));
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_mapped_ipv4_is_its_ipv4() {
        let a = Admission::new(100, 2, 0);
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
