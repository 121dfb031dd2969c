//! Process state shared by every HTTP handler and connection task: the config, the
//! engine handle, metrics, rate limits, the connection cap and the shutdown signal.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::BrokerConfig;
use crate::engine::EngineHandle;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;

#[derive(Debug)]
pub struct Shared {
    pub config: BrokerConfig,
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    pub rate_limiter: RateLimiter,
    /// Per-source-address limits on `/join` and the admin API.
    pub http_limiter: crate::ratelimit::HttpLimiter,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub connections: Arc<Semaphore>,
    pub next_conn: AtomicU64,
    /// Dashboard sign-in codes and sessions (see `http::dashboard`).
    pub dashboard: crate::http::dashboard::session::Sessions,
    /// The last hour of the broker's figures (the operators' dashboard).
    pub figures: crate::figures::Figures,
    /// Operator sign-in attempts (see `ratelimit.rs`).
    pub logins: crate::ratelimit::LoginLimiter,
    /// Password hashes computed at once (each takes ~20 MiB and tens of ms).
    pub password_work: Arc<Semaphore>,
    pub started: Instant,
    /// The clock of every connection's own rate limiter: made once, since making one
    /// calibrates the TSC (it was 4 % of the CPU of a reconnect storm).
    pub clock: governor::clock::DefaultClock,
}
