//! `claudemesh-broker`: parse flags into a [`BrokerConfig`], start the broker, print the
//! WebSocket URL, and shut down gracefully on SIGINT/SIGTERM; or, with `account`, manage
//! the dashboard's operator accounts in the same database.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

// mimalloc: frames are allocated on I/O threads and freed on the engine thread, which is
// glibc malloc's slow path (measured: ~13% of broker CPU in a 100k-message burst).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::Parser;
use claudemesh_broker::{Broker, BrokerConfig, MeshCreation, Rate};

#[derive(Debug, Parser)]
#[command(
    name = "claudemesh-broker",
    version,
    about = "The claudemesh routing-only broker"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Address to listen on.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:8787",
        env = "CLAUDEMESH_LISTEN"
    )]
    listen: SocketAddr,
    /// Directory for the SQLite database (default: ~/.claudemesh/broker).
    #[arg(long, global = true, env = "CLAUDEMESH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL: postgres://USER[:PASSWORD]@HOST[:PORT]/DB, or sqlite:///path/to/file.db
    /// (default: SQLite in the data directory).
    #[arg(
        long,
        global = true,
        env = "CLAUDEMESH_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// This node's name in /health, the `node` label of /metrics and logs (default: the
    /// host name).
    #[arg(long, env = "CLAUDEMESH_NODE_NAME")]
    node_name: Option<String>,
    /// Token required to create meshes. Without it, creation is open on loopback and
    /// disabled on any other address.
    #[arg(long, env = "CLAUDEMESH_CREATE_TOKEN", hide_env_values = true)]
    create_token: Option<String>,
    /// Allow anyone who can reach the broker to create meshes, even off loopback.
    #[arg(long)]
    open_mesh_creation: bool,
    /// Per-member rate limit for one frame type, TYPE=PER_SEC[:BURST]; repeatable
    /// (e.g. --rate-limit send=1000:5000). TYPE `default` sets the fallback.
    #[arg(long = "rate-limit", value_name = "TYPE=PER_SEC[:BURST]")]
    rate_limits: Vec<String>,
    /// Turn rate limiting off entirely (benchmarks).
    #[arg(long)]
    no_rate_limits: bool,
    /// Behave as a plain v1 broker: announce no extensions (for testing old clients).
    #[arg(long)]
    v1_only: bool,
    /// Session identities one member may keep (live or resumable); past it the one
    /// offline longest retires.
    #[arg(long, default_value_t = claudemesh_proto::limits::MAX_SESSIONS_PER_MEMBER, env = "CLAUDEMESH_SESSIONS_PER_MEMBER")]
    sessions_per_member: usize,
    /// How long a peer whose connection dropped stays present (listed as gone only after
    /// this; a reconnect within it is seamless, also to another node).
    #[arg(long, default_value_t = claudemesh_proto::limits::PRESENCE_GRACE.as_secs(), env = "CLAUDEMESH_PRESENCE_GRACE_SECS")]
    presence_grace_secs: u64,
    /// A session identity offline for this many hours retires (stops receiving
    /// messages; its queued copies are dropped).
    #[arg(long, default_value_t = 72, env = "CLAUDEMESH_SESSION_RETENTION_HOURS")]
    session_retention_hours: u64,
    /// Connections served at once (WebSockets, those before their hello included);
    /// lowered to what the file descriptor limit allows.
    #[arg(long, default_value_t = 10_000, env = "CLAUDEMESH_MAX_CONNECTIONS")]
    max_connections: usize,
    /// Connections not yet authenticated (HTTP, or a WebSocket before its hello), in total.
    #[arg(long, default_value_t = 1_024, env = "CLAUDEMESH_MAX_UNAUTHENTICATED")]
    max_unauthenticated: usize,
    /// Connections not yet authenticated from one source address.
    #[arg(
        long,
        default_value_t = 64,
        env = "CLAUDEMESH_MAX_UNAUTHENTICATED_PER_SOURCE"
    )]
    max_unauthenticated_per_source: usize,
    /// Connections queued past --max-unauthenticated: a WebSocket waits there up to 5 s
    /// for a place instead of being refused (a reconnect storm); /health and /metrics are
    /// answered at once. 0 turns the queue off; lowered to the fds left after
    /// --max-connections.
    #[arg(long, default_value_t = 8_192, env = "CLAUDEMESH_MAX_QUEUED")]
    max_queued: usize,
    /// Behind a TLS-terminating proxy: take client addresses from X-Forwarded-For /
    /// Forwarded for the per-source limits (only set this when the proxy is the only way in).
    #[arg(long, env = "CLAUDEMESH_TRUST_PROXY")]
    trust_proxy: bool,
    /// Pushes of one unacked delivery on one connection before it parks until the
    /// recipient's next hello (clients that never ack).
    #[arg(long, default_value_t = claudemesh_proto::limits::MAX_PUSHES, env = "CLAUDEMESH_MAX_PUSHES")]
    max_pushes: u32,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key. Reloaded on SIGHUP.
    #[arg(long, env = "CLAUDEMESH_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key for --tls-cert (PEM).
    #[arg(long, env = "CLAUDEMESH_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Operator accounts of the web dashboard (in the broker's database; the broker may
    /// be running).
    #[command(subcommand)]
    Account(Account),
}

#[derive(Debug, clap::Subcommand)]
enum Account {
    /// Create an account and print its single-use setup link (valid 24 h), where its
    /// password is chosen.
    Add {
        name: String,
        /// Replace an existing account of this name (a forgotten password): its old
        /// password stops working and a new setup link is printed.
        #[arg(long)]
        reset: bool,
        /// The broker's address as browsers reach it (default: http://LISTEN, or https
        /// with --tls-cert).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// List the accounts.
    List,
    /// Remove an account; its dashboard sessions end at once.
    Remove { name: String },
}

/// `claudemesh-broker account …`.
fn account(action: Account, config: &BrokerConfig) -> anyhow::Result<()> {
    let mut store = claudemesh_broker::open_store_unlocked(config).with_context(|| {
        format!(
            "cannot open the database {}",
            claudemesh_broker::describe_database(config)
        )
    })?;
    let now = claudemesh_proto::time::now_ms();
    let mut out = std::io::stdout().lock();
    match action {
        Account::Add { name, reset, url } => {
            let token = claudemesh_broker::accounts::add(store.as_mut(), &name, reset, now)?;
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let base = url.unwrap_or_else(|| format!("{scheme}://{}", config.listen));
            let base = base.trim_end_matches('/');
            writeln!(
                out,
                "Account {name} is ready. Open this link within 24 hours to choose its \
                 password (it works once):\n  {base}/dashboard/setup?account={name}&token={token}\n\
                 Then sign in at {base}/dashboard/operator/login"
            )?;
        }
        Account::List => {
            let rows = store.operators()?;
            if rows.is_empty() {
                writeln!(
                    out,
                    "No operator accounts. Add one with: claudemesh-broker account add NAME"
                )?;
            }
            for o in rows {
                let state = match (&o.password_hash, o.setup_expires_at > now) {
                    (Some(_), _) => "active".to_owned(),
                    (None, true) => "waiting for its setup link".to_owned(),
                    (None, false) => "setup link expired (add --reset)".to_owned(),
                };
                writeln!(
                    out,
                    "{:<24} {:<36} created {}",
                    o.name,
                    state,
                    claudemesh_proto::time::iso8601(o.created_at)
                )?;
            }
        }
        Account::Remove { name } => {
            claudemesh_broker::accounts::remove(store.as_mut(), &name)?;
            writeln!(out, "Account {name} removed.")?;
        }
    }
    Ok(())
}

fn parse_rate(spec: &str) -> anyhow::Result<(String, Rate)> {
    let (kind, rest) = spec
        .split_once('=')
        .context("expected TYPE=PER_SEC[:BURST]")?;
    let (per_sec, burst) = match rest.split_once(':') {
        Some((r, b)) => (r.parse::<f64>()?, b.parse::<f64>()?),
        None => {
            let r = rest.parse::<f64>()?;
            (r, r * 5.0)
        }
    };
    anyhow::ensure!(
        per_sec > 0.0 && burst >= 1.0,
        "rate must be > 0 and burst >= 1"
    );
    Ok((kind.to_owned(), Rate { per_sec, burst }))
}

fn config(args: Args) -> anyhow::Result<BrokerConfig> {
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .context("HOME is not set; pass --data-dir")?
            .join(".claudemesh")
            .join("broker"),
    };
    let mut config = BrokerConfig::new(args.listen, data_dir);
    config.database_url = args.database_url;
    if let Some(name) = args.node_name {
        anyhow::ensure!(
            !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_graphic()),
            "--node-name must be 1-64 printable ASCII characters without spaces"
        );
        config.node_name = name;
    }
    if let Some(token) = args.create_token {
        config.mesh_creation = MeshCreation::Token(token);
    } else if args.open_mesh_creation {
        config.mesh_creation = MeshCreation::Open;
    }
    for spec in &args.rate_limits {
        let (kind, rate) =
            parse_rate(spec).with_context(|| format!("bad --rate-limit '{spec}'"))?;
        if kind == "default" {
            config.rate_limits.default = rate;
        } else {
            config.rate_limits.by_type.insert(kind, rate);
        }
    }
    config.rate_limits.enabled = !args.no_rate_limits;
    config.v1_only = args.v1_only;
    anyhow::ensure!(
        args.sessions_per_member >= 1,
        "--sessions-per-member must be at least 1"
    );
    config.sessions_per_member = args.sessions_per_member;
    anyhow::ensure!(args.max_pushes >= 1, "--max-pushes must be at least 1");
    config.timings.max_pushes = args.max_pushes;
    config.timings.grace = std::time::Duration::from_secs(args.presence_grace_secs);
    config.max_connections = args.max_connections.max(1);
    config.max_unauthenticated = args.max_unauthenticated.max(1);
    config.trust_proxy = args.trust_proxy;
    config.max_unauthenticated_per_source = args.max_unauthenticated_per_source.max(1);
    config.max_queued = args.max_queued;
    config.tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(claudemesh_broker::tls::TlsFiles { cert, key }),
        _ => None,
    };
    config.timings.session_retention =
        std::time::Duration::from_secs(args.session_retention_hours.saturating_mul(3600));
    Ok(config)
}

/// Reload the TLS certificate on every SIGHUP (connections already open keep theirs).
#[cfg(unix)]
async fn reload_on_sighup(broker: &claudemesh_broker::BrokerHandle) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return std::future::pending().await;
    };
    while hup.recv().await.is_some() {
        match broker.reload_tls() {
            Ok(()) if broker.ws_url().starts_with("wss://") => {
                tracing::info!("TLS certificate reloaded");
            }
            Ok(()) => tracing::info!("SIGHUP: no TLS certificate to reload"),
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; still serving the old certificate");
            }
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup(_: &claudemesh_broker::BrokerHandle) {
    std::future::pending().await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = config(args)?;
    // Raise the soft fd limit to the hard one, and size the connection caps to it.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(nofile) => {
            let (authed, unauth, queued) = config.fit_to_fd_limit(nofile);
            tracing::info!(
                nofile,
                max_connections = authed,
                max_unauthenticated = unauth,
                max_queued = queued,
                "connection capacity"
            );
        }
        Err(e) => tracing::warn!(error = %e, "could not read or raise the file descriptor limit"),
    }
    let creation = match &config.mesh_creation {
        MeshCreation::Open => "open",
        MeshCreation::Token(_) => "token required",
        MeshCreation::Closed => "disabled",
    };
    let where_ = claudemesh_broker::describe_database(&config);
    let broker = Broker::spawn(config).await.context("starting the broker")?;
    // The URL on stdout is this binary's interface; a closed stdout must not kill the broker.
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "claudemesh broker serving {}\ndatabase: {where_}; mesh creation: {creation}",
            broker.ws_url()
        );
        let _ = out.flush();
    }
    tokio::select! {
        () = shutdown_signal() => {}
        () = reload_on_sighup(&broker) => {}
    }
    tracing::info!("shutdown requested");
    broker.shutdown().await;
    Ok(())
}

/// The WebSocket library logs whole frames (signatures, ciphertexts, v1 bodies) at debug
/// and trace; whatever the filter says, it stops at info.
fn without_frame_bodies(filter: tracing_subscriber::EnvFilter) -> tracing_subscriber::EnvFilter {
    ["tungstenite=info", "tokio_tungstenite=info"]
        .iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, tracing_subscriber::EnvFilter::add_directive)
}

fn main() -> ExitCode {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLAUDEMESH_LOG")
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(without_frame_bodies(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let mut args = Args::parse();
    if let Some(Sub::Account(action)) = args.command.take() {
        let done = config(args).and_then(|c| account(action, &c));
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("claudemesh-broker: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("claudemesh-broker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("claudemesh-broker: {e:#}");
            ExitCode::FAILURE
        }
    }
}
