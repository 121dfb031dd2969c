//! Validated broker settings. The binary turns flags into a [`BrokerConfig`]; tests build
//! one directly (usually with [`BrokerConfig::for_tests`]). Timings default to the
//! protocol constants and are adjustable so tests need not wait 30 s for a lease.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use claudemesh_proto::limits;

/// Who may create meshes on this broker (`POST /api/meshes`).
#[derive(Clone, PartialEq, Eq)]
pub enum MeshCreation {
    /// Anyone who can reach the broker (the default when it listens on loopback only).
    Open,
    /// Requests must carry this token (compared in constant time).
    Token(String),
    /// Nobody; meshes exist only from earlier runs.
    Closed,
}

/// The token never prints (config and handles are `Debug`).
impl std::fmt::Debug for MeshCreation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MeshCreation::Open => f.write_str("Open"),
            MeshCreation::Token(_) => f.write_str("Token(<redacted>)"),
            MeshCreation::Closed => f.write_str("Closed"),
        }
    }
}

/// A token bucket: sustained `per_sec`, bursts up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

/// Per-member rate limits by frame `type`; types not listed use `default`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    pub default: Rate,
    pub by_type: HashMap<String, Rate>,
    pub enabled: bool,
}

impl Default for RateLimits {
    fn default() -> Self {
        let mut by_type = HashMap::new();
        by_type.insert(
            "send".to_owned(),
            Rate {
                per_sec: 100.0,
                burst: 500.0,
            },
        );
        by_type.insert(
            "client_ack".to_owned(),
            Rate {
                per_sec: 1_000.0,
                burst: 5_000.0,
            },
        );
        by_type.insert(
            "list_peers".to_owned(),
            Rate {
                per_sec: 5.0,
                burst: 20.0,
            },
        );
        // Hellos per member, shared by all its sessions: a restart of every session at
        // once fits the burst; minting identities in a loop does not.
        by_type.insert(
            "hello".to_owned(),
            Rate {
                per_sec: 1.0,
                burst: 30.0,
            },
        );
        for kind in ["list_members", "message_status", "retire_sessions"] {
            by_type.insert(
                kind.to_owned(),
                Rate {
                    per_sec: 5.0,
                    burst: 20.0,
                },
            );
        }
        Self {
            default: Rate {
                per_sec: 20.0,
                burst: 100.0,
            },
            by_type,
            enabled: true,
        }
    }
}

impl RateLimits {
    pub fn rate_for(&self, kind: &str) -> Rate {
        self.by_type.get(kind).copied().unwrap_or(self.default)
    }
}

/// Timings of the delivery and presence machinery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub lease: Duration,
    pub grace: Duration,
    pub ping_interval: Duration,
    pub dead_after: Duration,
    pub hello_deadline: Duration,
    /// How often expired messages and replay records are purged.
    pub purge_interval: Duration,
    /// A session identity offline this long retires (swept with the purge).
    pub session_retention: Duration,
    /// Pushes of one delivery on one connection before it parks (never acked).
    pub max_pushes: u32,
    /// The shortest time between two presence frames of one mesh (see the engine's
    /// `announce.rs`).
    pub presence_tick: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            lease: limits::LEASE,
            grace: limits::PRESENCE_GRACE,
            ping_interval: limits::PING_INTERVAL,
            dead_after: limits::DEAD_SOCKET_AFTER,
            hello_deadline: limits::HELLO_DEADLINE,
            purge_interval: Duration::from_secs(600),
            session_retention: limits::SESSION_RETENTION,
            max_pushes: limits::MAX_PUSHES,
            presence_tick: limits::PRESENCE_TICK,
        }
    }
}

/// The host name (Linux), else "broker".
pub fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "broker".to_owned())
}

/// Everything the broker needs to start.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    /// Directory holding `claudemesh.db` when no database URL is given.
    pub data_dir: PathBuf,
    /// `sqlite:///path` or `postgres://…`; `None` means SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// This node's name in `/health`, the `node` label of `/metrics` and logs (default:
    /// the host name).
    pub node_name: String,
    pub mesh_creation: MeshCreation,
    /// Serve TLS with these PEM files (else plain HTTP, e.g. behind a TLS proxy).
    pub tls: Option<crate::tls::TlsFiles>,
    pub rate_limits: RateLimits,
    pub timings: Timings,
    /// Pushes queued for one connection before its reader counts as too slow and is
    /// dropped (its deliveries come back when it reconnects). Raised to at least
    /// `inflight_window`, since one window is a normal burst.
    pub outbound_buffer: usize,
    /// Deliveries pushed to one recipient and not yet acked.
    pub inflight_window: usize,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Connections that have not authenticated (HTTP, or a WebSocket before its hello),
    /// in total and from one source address.
    pub max_unauthenticated: usize,
    pub max_unauthenticated_per_source: usize,
    /// Connections queued past `max_unauthenticated` (a WebSocket waits there for a place
    /// instead of being refused); one address may hold the same share of it as of the
    /// unauthenticated places.
    pub max_queued: usize,
    /// Behind a TLS-terminating proxy: take client addresses for the per-source limits
    /// from `X-Forwarded-For` / `Forwarded`, and drop the per-source cap on unauthenticated
    /// connections (they all come from the proxy).
    pub trust_proxy: bool,
    /// Session identities per member that are not retired (live or resumable); past it
    /// the oldest offline one retires, and a hello is refused when all of them are live.
    pub sessions_per_member: usize,
    /// Compatibility mode: announce no extensions and behave as a plain v1 broker
    /// (no `list_members`, `sealedKeys` ignored). For testing clients against v1.
    pub v1_only: bool,
}

impl BrokerConfig {
    /// Defaults for `listen` and `data_dir`; creation open only on a loopback address.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        let mesh_creation = if listen.ip().is_loopback() {
            MeshCreation::Open
        } else {
            MeshCreation::Closed
        };
        Self {
            listen,
            data_dir,
            database_url: None,
            node_name: default_node_name(),
            mesh_creation,
            tls: None,
            rate_limits: RateLimits::default(),
            timings: Timings::default(),
            outbound_buffer: 1_024,
            inflight_window: 256,
            max_connections: 10_000,
            max_unauthenticated: 1_024,
            max_unauthenticated_per_source: 64,
            max_queued: 8_192,
            trust_proxy: false,
            sessions_per_member: limits::MAX_SESSIONS_PER_MEMBER,
            v1_only: false,
        }
    }

    /// Shrink the connection caps to what `nofile` file descriptors can hold, keeping 64
    /// for the database, the listener and logs, and room for the operators' reserve and
    /// (when serving TLS) the handshakes; of the rest a quarter (at most) for
    /// unauthenticated connections, and for the queue only what is left after the
    /// authenticated ones. Returns the (authenticated, unauthenticated, queued) caps.
    pub fn fit_to_fd_limit(&mut self, nofile: u64) -> (usize, usize, usize) {
        use crate::http::serve::OPS_RESERVE;
        // Handshakes in progress, done and not yet accepted, and their own reserve.
        let tls = match self.tls {
            Some(_) => 2 * crate::tls::MAX_HANDSHAKES + OPS_RESERVE,
            None => 0,
        };
        let budget = usize::try_from(nofile.saturating_sub(64))
            .unwrap_or(usize::MAX)
            .saturating_sub(OPS_RESERVE + tls)
            .max(16);
        self.max_unauthenticated = self.max_unauthenticated.min(budget / 4).max(4);
        self.max_unauthenticated_per_source = self
            .max_unauthenticated_per_source
            .min(self.max_unauthenticated);
        let rest = budget.saturating_sub(self.max_unauthenticated);
        self.max_connections = self.max_connections.min(rest).max(1);
        self.max_queued = self
            .max_queued
            .min(rest.saturating_sub(self.max_connections));
        (
            self.max_connections,
            self.max_unauthenticated,
            self.max_queued,
        )
    }

    /// The database backend the config names: `postgres` or `sqlite`.
    pub fn backend(&self) -> &'static str {
        match self.database_url.as_deref() {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => "postgres",
            _ => "sqlite",
        }
    }

    /// Loopback port 0, the given data directory, everything else default.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        Self::new(SocketAddr::from(([127, 0, 0, 1], 0)), data_dir)
    }
}
