//! The accept loop and per-connection HTTP/1.1 serving (hyper directly, instead of
//! `axum::serve`), so limits hold before anybody has authenticated:
//!
//! - every connection must send its request headers within [`HEADER_READ_TIMEOUT`] (and
//!   between keep-alive requests the same), so silent sockets cannot pile up;
//! - connections that have not authenticated (plain HTTP, or a WebSocket before its
//!   hello) are capped in total and per source address ([`Admission`]). A WebSocket
//!   leaves the count when its hello succeeds, so authenticated peers are never crowded
//!   out by anonymous ones;
//! - past either cap a new connection joins a bounded queue (in total, and per address
//!   the same share as of the places), served by `lobby_router`: `/health` and `/metrics`
//!   are answered at once, a WebSocket upgrade waits up to [`QUEUE_WAIT`] for a place
//!   (a place given back goes straight to the first waiter that may use it), anything
//!   else is served only if a place is free. A reconnect storm (every peer of a restarted
//!   broker at once) is absorbed instead of refused into the clients' backoff. Past its
//!   address's share of the queue a new connection is closed at once;
//! - past the queue's total a small reserve ([`OPS_RESERVE`], [`OPS_RESERVE_PER_SOURCE`] per
//!   address) still serves `/health` and `/metrics`, with a short header timeout
//!   ([`OPS_HEADER_TIMEOUT`]) and life ([`OPS_CONNECTION_MAX`]); anything else asked on
//!   such a connection is answered 503 `unavailable`. An operator can see a broker under
//!   attack, and the reserve is useless for holding places;
//! - every connection task is tracked, and stops (gracefully) at shutdown.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

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
/// A line of waiters this long (at least) is swept of those that stopped waiting.
const WAITERS_SWEEP: usize = 16_384;
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

/// Places in total and per source address, and who waits for one, in order.
#[derive(Debug)]
struct Pool {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
    /// Waiting for a place (sources), first come first. A place given back goes straight
    /// to the first one that may use it, so a place is never free while somebody who may
    /// take it waits, and nobody can take it in between.
    waiters: VecDeque<(IpAddr, oneshot::Sender<PreAuth>)>,
    /// The line's length at which it is next swept of those that stopped waiting: twice
    /// what was left by the last sweep (so sweeping stays amortized O(1) per waiter).
    sweep_at: usize,
}

/// One unauthenticated connection's place in the count; given back when dropped (the
/// connection closed, or its WebSocket authenticated).
#[derive(Debug)]
pub struct PreAuth {
    pool: Arc<Pool>,
    ip: IpAddr,
    /// Still in the count (false once `Drop` has given it back by other means).
    counted: bool,
}

/// Where a new connection was admitted.
#[derive(Debug)]
pub enum Admitted {
    /// Everything is served.
    Full(PreAuth),
    /// The main pool (or this address's share of it) is full: in the queue, served by
    /// `lobby_router`, where a WebSocket upgrade waits for a place.
    Queued(PreAuth),
    /// The main pool and the queue are full: only `/health` and `/metrics`.
    OpsOnly(PreAuth),
}

impl Drop for PreAuth {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let mut handed = self.pool.release(self.ip);
        // Outside the lock. A waiter that left meanwhile gives the place back, to the
        // next one (in a loop, not by dropping it: no recursion however many left).
        while let Some((place, tx)) = handed {
            let Err(mut place) = tx.send(place) else {
                break;
            };
            place.counted = false;
            handed = place.pool.release(place.ip);
        }
    }
}

impl Admission {
    /// Unauthenticated connections now, both pools.
    pub fn count(&self) -> usize {
        let n = |p: &Pool| p.lock().total;
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
    /// its caps allow it; else in the queue, within this address's share of it; past the
    /// queue (only when both are full in total, not when this address is over its own cap
    /// or share) in the operators' reserve.
    pub fn admit(&self, ip: IpAddr) -> Option<Admitted> {
        let main_full = match self.main.take(ip) {
            Ok(place) => return Some(Admitted::Full(place)),
            Err(full) => full,
        };
        match (self.queue.take(ip), main_full) {
            (Ok(place), _) => Some(Admitted::Queued(place)),
            (Err(Full::Total), Full::Total) => self.reserve.take(ip).ok().map(Admitted::OpsOnly),
            (Err(_), _) => None,
        }
    }
}

/// Which cap refused.
#[derive(Debug, Clone, Copy)]
enum Full {
    Total,
    Source,
}

impl Pool {
    fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_source: max_per_source.max(1),
            counts: Mutex::new(Counts {
                total: 0,
                by_source: HashMap::new(),
                waiters: VecDeque::new(),
                sweep_at: WAITERS_SWEEP,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a place is free for `ip` (already a source). A share as large as the whole
    /// pool is no cap of its own: the total decides.
    fn check(&self, c: &Counts, ip: IpAddr) -> Result<(), Full> {
        let own_cap = self.max_per_source < self.max_total;
        if own_cap
            && c.by_source
                .get(&ip)
                .is_some_and(|n| *n >= self.max_per_source)
        {
            return Err(Full::Source);
        }
        if c.total >= self.max_total {
            return Err(Full::Total);
        }
        Ok(())
    }

    fn count_in(self: &Arc<Self>, c: &mut Counts, ip: IpAddr) -> PreAuth {
        c.total += 1;
        *c.by_source.entry(ip).or_insert(0) += 1;
        PreAuth {
            pool: self.clone(),
            ip,
            counted: true,
        }
    }

    /// Give back a place of `ip`'s, and hand it to the first waiter that may use it.
    fn release(self: &Arc<Self>, ip: IpAddr) -> Option<(PreAuth, oneshot::Sender<PreAuth>)> {
        let mut c = self.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_source.remove(&ip);
            }
        }
        self.hand_over(&mut c)
    }

    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<PreAuth, Full> {
        let ip = crate::ratelimit::source_of(ip);
        let mut c = self.lock();
        self.check(&c, ip)?;
        Ok(self.count_in(&mut c, ip))
    }

    /// A place for `ip` now, or a turn in the line for one.
    fn take_or_wait(self: &Arc<Self>, ip: IpAddr) -> Result<PreAuth, oneshot::Receiver<PreAuth>> {
        let mut c = self.lock();
        if self.check(&c, ip).is_ok() {
            return Ok(self.count_in(&mut c, ip));
        }
        let (tx, rx) = oneshot::channel();
        // Who stopped waiting leaves the line when it reaches its front; the whole line is
        // swept only when it has grown past any real one (amortized, not O(n) per call).
        if c.waiters.len() >= c.sweep_at {
            c.waiters.retain(|(_, tx)| !tx.is_closed());
            c.sweep_at = (2 * c.waiters.len()).max(WAITERS_SWEEP);
        }
        c.waiters.push_back((ip, tx));
        Err(rx)
    }

    /// After a place was given back: the first waiter still waiting that may use it,
    /// with the place counted in for it.
    fn hand_over(self: &Arc<Self>, c: &mut Counts) -> Option<(PreAuth, oneshot::Sender<PreAuth>)> {
        while c.waiters.front().is_some_and(|(_, tx)| tx.is_closed()) {
            c.waiters.pop_front();
        }
        let i = c
            .waiters
            .iter()
            .position(|(ip, tx)| !tx.is_closed() && self.check(c, *ip).is_ok())?;
        let (ip, tx) = c.waiters.remove(i)?;
        Some((self.count_in(c, ip), tx))
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

    /// Where the slot's place is: the queue's source, or `None` when it holds a main
    /// place (or none at all: then there is nothing to wait for either).
    fn queued_source(&self) -> Option<IpAddr> {
        match &*self.lock() {
            Some(p) if Arc::ptr_eq(&p.pool, &self.admission.queue) => Some(p.ip),
            _ => None,
        }
    }

    fn holds_main_place(&self) -> bool {
        self.lock()
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(&p.pool, &self.admission.main))
    }

    /// For a queued connection: a place in the main pool instead of the queue's, if one
    /// is free now (`wait` zero) or comes within `wait`, in the order connections began
    /// waiting. True when the slot holds a main place.
    pub async fn place(&self, wait: Duration) -> bool {
        let Some(ip) = self.queued_source() else {
            return self.holds_main_place();
        };
        if wait.is_zero() {
            let Ok(place) = self.admission.main.take(ip) else {
                return false;
            };
            *self.lock() = Some(place);
            return true;
        }
        let place = match self.admission.main.take_or_wait(ip) {
            Ok(place) => place,
            Err(turn) => match tokio::time::timeout(wait, turn).await {
                Ok(Ok(place)) => place,
                // Dropping `turn` leaves the line; a place handed to it meanwhile is
                // given back, to the next one.
                Ok(Err(_)) | Err(_) => return false,
            },
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
    /// `app` behind the queue's gate (`lobby_router`): for a queued connection.
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

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn placed(a: &Arc<Admission>, from: IpAddr) -> PreAuth {
        match a.admit(from) {
            Some(Admitted::Full(p)) => p,
            other => panic!("expected a place, got {other:?}"),
        }
    }

    fn queued(a: &Arc<Admission>, from: IpAddr) -> PreAuthSlot {
        match a.admit(from) {
            Some(Admitted::Queued(p)) => slot(a, p),
            other => panic!("expected a queued place, got {other:?}"),
        }
    }

    /// Wait for a place in a task of its own, started now (so the line's order is the
    /// order of the calls).
    async fn waiting(s: &PreAuthSlot) -> tokio::task::JoinHandle<bool> {
        let s = s.clone();
        let task = tokio::spawn(async move { s.place(QUEUE_WAIT).await });
        tokio::task::yield_now().await;
        task
    }

    #[tokio::test(start_paused = true)]
    async fn a_place_given_back_goes_to_the_first_waiter_and_nobody_barges() {
        let a = Admission::new(2, 8, 3);
        let p1 = placed(&a, ip(1));
        let _p2 = placed(&a, ip(2));
        let q: Vec<_> = (3..6).map(|n| queued(&a, ip(n))).collect();
        assert!(
            matches!(a.admit(ip(9)), Some(Admitted::OpsOnly(_))),
            "queue full: the reserve"
        );
        let mut w = Vec::new();
        for s in &q {
            w.push(waiting(s).await);
        }
        drop(p1);
        // The place went to the first waiter at once: a newcomer finds none free.
        assert!(
            a.main.take(ip(7)).is_err(),
            "nobody takes a place a waiter is owed"
        );
        let mut w = w.into_iter();
        assert!(
            w.next().unwrap().await.unwrap(),
            "the first waiter got the place"
        );
        assert!(q[0].holds_main_place());
        for task in w {
            assert!(!task.await.unwrap(), "no place within QUEUE_WAIT");
        }
        drop(q);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_left_passes_its_turn_on() {
        let a = Admission::new(1, 1, 2);
        let p1 = placed(&a, ip(1));
        let (first, second) = (queued(&a, ip(2)), queued(&a, ip(3)));
        let gone = waiting(&first).await;
        let stays = waiting(&second).await;
        gone.abort();
        let _ = gone.await;
        drop(p1);
        assert!(stays.await.unwrap(), "the second waiter got the place");
        assert!(!first.holds_main_place());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_over_its_address_cap_waits_for_its_own_address_place() {
        // Two places in all, one per address; ip(1) holds its one, ip(2) the other.
        let a = Admission::new(2, 1, 4);
        let mine = placed(&a, ip(1));
        let other = placed(&a, ip(2));
        let same = queued(&a, ip(1));
        let third = queued(&a, ip(3));
        let (same_w, third_w) = (waiting(&same).await, waiting(&third).await);
        // ip(2)'s place is given back: ip(1) may not use it, the next waiter may.
        drop(other);
        assert!(third_w.await.unwrap());
        assert!(!same_w.is_finished());
        drop(mine);
        assert!(
            same_w.await.unwrap(),
            "its address's own place, once given back"
        );
    }

    #[test]
    fn the_queue_holds_an_address_share_and_a_request_that_cannot_wait_gets_no_place() {
        // 4 places, 2 per address; a queue of 8, so 4 per address.
        let a = Admission::new(4, 2, 8);
        let mut held: Vec<_> = (0..2)
            .flat_map(|_| [placed(&a, ip(1)), placed(&a, ip(2))])
            .collect();
        let q: Vec<_> = (0..4).map(|_| queued(&a, ip(1))).collect();
        assert!(
            a.admit(ip(1)).is_none(),
            "past its share of the queue: closed"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(
            !rt.block_on(q[0].place(Duration::ZERO)),
            "no place free, no wait"
        );
        assert!(
            a.main.lock().waiters.is_empty(),
            "and not in the line either"
        );
        // One of ip(1)'s places is given back: a request that cannot wait takes it.
        drop(held.remove(0));
        assert!(rt.block_on(q[0].place(Duration::ZERO)));
        assert!(q[0].holds_main_place());
        drop(q);
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
