//! The claudemesh broker as a library: [`Broker::spawn`] opens the store, starts the
//! engine thread and the HTTP/WebSocket server, and returns a [`BrokerHandle`] with the
//! bound address and a graceful [`BrokerHandle::shutdown`]. The `claudemesh-broker`
//! binary is a thin wrapper; tests start the real thing on port 0.
//!
//! Module map: `http` (routes, one room per endpoint family) → `conn` (one actor per
//! WebSocket) → `engine` (the single thread that owns the store and all routing state).
//! `state` is the process state they share, `refusal` the domain error they all speak,
//! `auth` verifies hellos, `ratelimit` holds token buckets, `metrics` the counters.
//! `fuzzing` (hidden) hands the fuzz targets in `fuzz/` the code that reads peer bytes.

pub mod accounts;
mod auth;
mod cluster;
pub mod config;
mod conn;
mod engine;
mod figures;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod metrics;
mod ratelimit;
mod refusal;
mod state;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use claudemesh_store::{PgStore, SqliteStore, Store};
pub use config::{BrokerConfig, MeshCreation, Rate, RateLimits, Timings};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated (the cause is the source).
    #[error("database")]
    Store(#[from] claudemesh_store::StoreError),
    /// The data directory cannot be created, or its lock file written there.
    #[error("cannot use the data directory {}{}", dir.display(), data_dir_hint(source))]
    DataDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Another broker holds this SQLite database (its lock file is taken).
    #[error("another broker is already using {path}; stop it, or give this one another --data-dir")]
    Locked { path: String },
    /// The listen address could not be bound (the cause is the source).
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsLoadError),
    /// The database URL names a backend this build does not have (shown without any
    /// credentials it carried).
    #[error(
        "unsupported database URL '{0}': use postgres://USER@HOST/DB, a sqlite:// path, or leave it unset"
    )]
    UnsupportedDatabase(String),
}

/// Entry point.
#[derive(Debug)]
pub struct Broker;

/// A running broker.
#[derive(Debug)]
pub struct BrokerHandle {
    addr: SocketAddr,
    /// Present when the broker serves TLS itself.
    certs: Option<Arc<tls::CertStore>>,
    /// The database's lock file, held until the broker is gone.
    lock: Option<std::fs::File>,
    /// The listener for other nodes' notifications (on a shared database).
    listener: Option<cluster::Listener>,
    shared: Arc<state::Shared>,
    server: tokio::task::JoinHandle<()>,
    engine: std::thread::JoinHandle<()>,
}

/// What an unsupported database URL is shown as: its scheme only. Credentials can hide
/// in the userinfo, the query or keyword strings, so nothing after the scheme prints.
fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, _)) => format!("{scheme}://…"),
        None => "(not a URL)".to_owned(),
    }
}

/// What to do about a data directory the broker may not write in.
fn data_dir_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            " (the user running the broker may not write there: fix its permissions, or pass another --data-dir)"
        }
        _ => "",
    }
}

/// Take `<db>.lock` for the life of the broker, so a second broker cannot open the same
/// SQLite database (two engines on one file would each believe they own its state).
fn lock_database(db: &std::path::Path) -> Result<std::fs::File, StartError> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = std::path::PathBuf::from(name);
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let data_dir = |source| StartError::DataDir {
        dir: dir.to_path_buf(),
        source,
    };
    claudemesh_store::sqlite::private_dir(dir).map_err(data_dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(data_dir)?;
    // A lock can be held for a moment by a process being spawned elsewhere in this
    // program (between fork and exec the child shares the open file), e.g. a broker
    // restarted in place while another starts a child: wait that out, briefly.
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StartError::Locked {
                    path: db.display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StartError::Store(claudemesh_store::StoreError::Open {
                    path: path.display().to_string(),
                    reason: format!("cannot lock it: {e}"),
                }));
            }
        }
    }
}

/// How long a taken SQLite lock file is retried before "another broker is using it".
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// The SQLite file the config names, or `None` for PostgreSQL.
fn sqlite_path(config: &BrokerConfig) -> Result<Option<std::path::PathBuf>, StartError> {
    match config.database_url.as_deref() {
        None => Ok(Some(config.data_dir.join("claudemesh.db"))),
        Some(_) if config.backend() == "postgres" => Ok(None),
        Some(url) => match url.strip_prefix("sqlite://") {
            Some(path) => Ok(Some(path.into())),
            None => Err(StartError::UnsupportedDatabase(redact_url(url))),
        },
    }
}

/// The store the config names: SQLite (a file under a lock file, held by the returned
/// guard: one broker per file) or PostgreSQL (shared by any number of broker nodes).
fn open_store(
    config: &BrokerConfig,
) -> Result<(Box<dyn Store>, Option<std::fs::File>), StartError> {
    match (sqlite_path(config)?, config.database_url.as_deref()) {
        (Some(path), _) => {
            let lock = lock_database(&path)?;
            Ok((Box::new(SqliteStore::open(&path)?), Some(lock)))
        }
        // Any number of nodes may share it (see engine/cluster.rs): no lock.
        (None, Some(url)) => Ok((Box::new(PgStore::open(url)?), None)),
        (None, None) => Err(StartError::UnsupportedDatabase(String::new())),
    }
}

/// Open the config's database without taking the SQLite lock file, for a short
/// administrative change (operator accounts) beside a running broker: SQLite's own
/// locking and busy timeout order the writes.
pub fn open_store_unlocked(config: &BrokerConfig) -> Result<Box<dyn Store>, StartError> {
    match (sqlite_path(config)?, config.database_url.as_deref()) {
        (Some(path), _) => Ok(Box::new(SqliteStore::open(&path)?)),
        (None, Some(url)) => Ok(Box::new(PgStore::open(url)?)),
        (None, None) => Err(StartError::UnsupportedDatabase(String::new())),
    }
}

/// Where the config's database is, fit to print (no password).
pub fn describe_database(config: &BrokerConfig) -> String {
    match config.database_url.as_deref() {
        None => config.data_dir.join("claudemesh.db").display().to_string(),
        Some(url) => claudemesh_store::pg::redact_url(url),
    }
}

impl Broker {
    /// Open the store named by the config, start the engine and serve on `config.listen`.
    pub async fn spawn(config: BrokerConfig) -> Result<BrokerHandle, StartError> {
        // Opening may block on the network (PostgreSQL): off the async threads.
        let (store, lock, config) = tokio::task::spawn_blocking(move || {
            open_store(&config).map(|(store, lock)| (store, lock, config))
        })
        .await
        .map_err(|e| {
            StartError::Store(claudemesh_store::StoreError::Open {
                path: "the database".into(),
                reason: format!("opening it panicked: {e}"),
            })
        })??;
        let mut handle = Self::spawn_with_store(config, store).await?;
        handle.lock = lock;
        Ok(handle)
    }

    /// Serve over an already opened [`Store`] (another backend, or a wrapper around one).
    pub async fn spawn_with_store(
        config: BrokerConfig,
        store: Box<dyn Store>,
    ) -> Result<BrokerHandle, StartError> {
        let metrics = Arc::new(metrics::Metrics::new(&config.node_name));
        let (engine, engine_thread, node_id) =
            engine::start(store, &config, metrics.clone()).await?;
        let peers_listener = match (node_id, config.database_url.clone()) {
            (Some(node), Some(url)) => Some(
                cluster::Listener::start(url, node, engine.sender()).map_err(|source| {
                    StartError::Store(claudemesh_store::StoreError::Open {
                        path: "listener thread".into(),
                        reason: source.to_string(),
                    })
                })?,
            ),
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let shared = Arc::new(state::Shared {
            rate_limiter: ratelimit::RateLimiter::new(config.rate_limits.clone()),
            http_limiter: ratelimit::HttpLimiter::new(config.rate_limits.enabled),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            config,
            engine,
            metrics,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            dashboard: Default::default(),
            figures: Default::default(),
            logins: Default::default(),
            clock: Default::default(),
            password_work: Arc::new(Semaphore::new(2)),
            started: Instant::now(),
        });
        shared
            .tasks
            .spawn(http::dashboard::follow_removals(shared.clone()));
        let app = http::router(shared.clone());
        let routers = http::serve::Routers {
            lobby: http::lobby_router(shared.clone(), app.clone()),
            app,
            ops: http::ops_router(shared.clone()),
        };
        let stop = shared.shutdown.clone();
        let certs = match &shared.config.tls {
            Some(files) => Some(tls::CertStore::open(files.clone())?),
            None => None,
        };
        let c = &shared.config;
        let per_source = if c.trust_proxy {
            c.max_unauthenticated
        } else {
            c.max_unauthenticated_per_source
        };
        let admission =
            http::serve::Admission::new(c.max_unauthenticated, per_source, c.max_queued);
        shared
            .tasks
            .spawn(figures::run(shared.clone(), admission.clone()));
        let (tasks, m) = (shared.tasks.clone(), shared.metrics.clone());
        let server = match &certs {
            Some(certs) => {
                let listener = tls::TlsListener::new(listener, certs, stop.clone(), tasks.clone())?;
                tokio::spawn(http::serve::serve(
                    listener, routers, stop, tasks, admission, m,
                ))
            }
            None => {
                // Messages are small and latency-sensitive: no Nagle delay.
                let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "could not set TCP_NODELAY");
                    }
                });
                tokio::spawn(http::serve::serve(
                    listener, routers, stop, tasks, admission, m,
                ))
            }
        };
        tracing::info!(%addr, tls = certs.is_some(), "broker listening");
        Ok(BrokerHandle {
            addr,
            certs,
            lock: None,
            listener: peers_listener,
            shared,
            server,
            engine: engine_thread,
        })
    }
}

impl BrokerHandle {
    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR/ws`, or `wss://` when the broker serves TLS.
    pub fn ws_url(&self) -> String {
        let scheme = if self.certs.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}/ws", self.addr)
    }

    /// `http://ADDR`, or `https://` when the broker serves TLS.
    pub fn http_url(&self) -> String {
        let scheme = if self.certs.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Read the TLS certificate and key again (SIGHUP); connections already open keep
    /// theirs. A broker without TLS has nothing to reload.
    pub fn reload_tls(&self) -> Result<(), tls::TlsLoadError> {
        match &self.certs {
            Some(certs) => certs.reload(),
            None => Ok(()),
        }
    }

    /// Stop accepting, close every WebSocket with 1001, wait for connection tasks, then
    /// let the engine commit what it holds and stop. Nothing acknowledged is lost.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        // The accept loop first, so nothing is spawned after the tracker is waited on.
        let _ = self.server.await;
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        // The listener holds an inbox sender too; the engine stops only once it is gone.
        if let Some(listener) = self.listener {
            let _ = tokio::task::spawn_blocking(move || listener.stop()).await;
        }
        // The last EngineHandle lives in `shared`; dropping it closes the engine inbox.
        drop(self.shared);
        let engine = self.engine;
        let _ = tokio::task::spawn_blocking(move || engine.join()).await;
        tracing::info!("broker stopped");
    }
}
