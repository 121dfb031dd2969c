//! `claudemesh-bench`: measures the broker the way the original TypeScript broker was
//! measured. It starts real `claudemesh-broker` processes (one on SQLite in a temp dir,
//! or `--nodes N` on one `--database-url postgres://…`; rate limits off) or uses the
//! running brokers given by `--broker-url` (repeatable), spreads N peers over them
//! round-robin, enrolls them with real keys over the real HTTP
//! endpoints, opens N WebSockets, and sends end-to-end encrypted messages that every
//! recipient decrypts, verifies, dedupes and acks. It reports send→ack and send→push
//! latency, delivered / lost / duplicate counts, throughput, the broker's peak RSS and
//! open fds, and an fsync probe of the data directory before and after. The `hooks`
//! scenario times Claude Code's hooks against a real `claudemesh mcp` session instead.

mod broker;
mod hooks;
mod run;
mod setup;
mod storm;

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use futures_util::StreamExt as _;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Every peer sends --messages direct messages to random peers, as fast as it can
    /// (or at --rate per peer).
    Burst,
    /// One message at a time between two peers: the latency floor.
    IdleLatency,
    /// Open --idle-connections authenticated connections and measure broker memory each.
    IdleConnections,
    /// One peer broadcasts --messages sealed multicast messages to all the others.
    Fanout,
    /// Time --messages runs of each Claude Code hook against a live session server,
    /// against `claudemesh --version` as the process-start baseline.
    Hooks,
    /// --meshes × --peers client-library connections; the broker is SIGKILLed and
    /// restarted, and every peer reconnects with its own backoff (see `storm.rs`).
    ReconnectStorm,
}

#[derive(Debug, Parser)]
#[command(
    name = "claudemesh-bench",
    version,
    about = "Load and latency benchmark for the claudemesh broker"
)]
struct Args {
    #[arg(long, value_enum, default_value = "burst")]
    scenario: Scenario,
    /// Number of peers (connections).
    #[arg(long, default_value_t = 10)]
    peers: usize,
    /// Messages each sending peer sends.
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Messages per second per sending peer (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Connections for the idle-connections scenario.
    #[arg(long, default_value_t = 1000)]
    idle_connections: usize,
    /// Meshes: reconnect-storm has --peers in each (default 10 meshes); idle-connections
    /// spreads --idle-connections over them (default 1).
    #[arg(long)]
    meshes: Option<usize>,
    /// Connections of the idle-connections scenario say hello as plain v1 clients (no
    /// `presence-batch`), so presence events go out as one push each.
    #[arg(long)]
    v1_presence: bool,
    /// Keep the idle connections open this long after measuring (to look at the broker
    /// meanwhile, e.g. a heap snapshot with valgrind's `vgdb`).
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
    /// Padding bytes per message body.
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    /// Use running brokers instead of starting any (ws://HOST:PORT/ws); repeat it for
    /// several nodes of one broker: peers are spread over them round-robin.
    #[arg(long)]
    broker_url: Vec<String>,
    /// Brokers to start on the one --database-url (several need PostgreSQL).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// The broker binary to start (default: next to this binary).
    #[arg(long)]
    broker_bin: Option<std::path::PathBuf>,
    /// The `claudemesh` CLI for the hooks scenario (default: next to this binary).
    #[arg(long)]
    claudemesh_bin: Option<std::path::PathBuf>,
    /// Database URL for the started brokers (default: SQLite in a temp dir). Point it at
    /// an empty database; each run makes a new mesh there.
    #[arg(long)]
    database_url: Option<String>,
    /// Seconds to wait for outstanding deliveries after sending ends.
    #[arg(long, default_value_t = 120)]
    drain_timeout: u64,
    /// Repeat the run this many times (a fresh broker each time) and report medians.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Print a JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Run the broker under `valgrind --tool=callgrind` and report the instructions it
    /// executed while messages were sent and drained (`broker_instructions_per_msg`):
    /// a cost that does not drift with the machine's load. Use a small burst; valgrind
    /// is ~50× slower.
    #[arg(long)]
    callgrind: bool,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted.get(idx).copied().unwrap_or(0)) / 1000.0
}

/// A progress bar on stderr (indicatif; hidden when stderr is not a terminal), updated
/// from the shared counters until `stop`.
fn progress(
    stats: Arc<run::Stats>,
    total: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "[{elapsed_precise}] {bar:30} delivered {pos}/{len} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    std::thread::spawn(move || {
        while !stop.load(Relaxed) {
            bar.set_length(stats.expected.load(Relaxed).max(total));
            bar.set_position(stats.delivered.load(Relaxed));
            bar.set_message(format!(
                "sent {} acked {}",
                stats.sent.load(Relaxed),
                stats.acked.load(Relaxed)
            ));
            std::thread::sleep(Duration::from_millis(250));
        }
        bar.finish_and_clear();
    })
}

/// The median of every numeric field across runs (other fields from the first run).
/// Integer fields (counts) stay integers.
fn medians(runs: &[serde_json::Value]) -> serde_json::Value {
    let mut out = runs.first().cloned().unwrap_or_default();
    if runs.len() > 1
        && let Some(o) = out.as_object_mut()
    {
        for (k, v) in o.iter_mut() {
            let values: Vec<&serde_json::Value> = runs.iter().filter_map(|r| r.get(k)).collect();
            if values.len() != runs.len() || !v.is_number() {
                continue;
            }
            let mid = values.len() / 2;
            if let Some(mut ints) = values
                .iter()
                .map(|x| x.as_u64())
                .collect::<Option<Vec<u64>>>()
            {
                ints.sort_unstable();
                *v = json!(ints.get(mid).copied().unwrap_or_default());
            } else if let Some(mut xs) = values
                .iter()
                .map(|x| x.as_f64())
                .collect::<Option<Vec<f64>>>()
            {
                xs.sort_by(f64::total_cmp);
                *v = json!(xs.get(mid).copied().unwrap_or_default());
            }
        }
    }
    if let Some(o) = out.as_object_mut() {
        o.insert("runs".into(), json!(runs.len()));
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_fd_limit(&args)?;
    let mut reports = Vec::new();
    for run in 0..args.runs.max(1) {
        let report = one_run(&args).await?;
        if args.runs > 1 {
            eprintln!("run {}: {report}", run + 1);
        }
        reports.push(report);
    }
    let report = medians(&reports);
    let mut out = std::io::stdout().lock();
    if let Some(o) = report.as_object() {
        for (k, v) in o {
            writeln!(out, "{k:<26} {v}")?;
        }
    }
    if args.json {
        writeln!(out, "{report}")?;
    }
    Ok(())
}

/// Enough file descriptors for the run, for this process and the brokers it starts
/// (they inherit the limit): the soft limit raised to the hard one, and for more
/// connections than that allows, both raised (needs CAP_SYS_RESOURCE).
fn raise_fd_limit(args: &Args) -> anyhow::Result<()> {
    let have = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let connections = match args.scenario {
        Scenario::IdleConnections => args.idle_connections,
        Scenario::ReconnectStorm => args.peers * args.meshes.unwrap_or(10),
        _ => args.peers,
    };
    if connections > 10_000 {
        let _ = broker::MAX_CONNECTIONS.set(connections + 1_024);
    }
    // Each process has its own limit: the bench holds one end of each connection, the
    // broker the other.
    let want = (connections as u64).saturating_add(4_096);
    if want > have {
        rlimit::setrlimit(rlimit::Resource::NOFILE, want, want).with_context(|| {
            format!("{want} file descriptors are needed and the hard limit is {have} (raising it needs CAP_SYS_RESOURCE)")
        })?;
    }
    Ok(())
}

/// The brokers of a run: the given URLs, or `--nodes` started ones.
fn brokers(args: &Args) -> anyhow::Result<Vec<broker::Broker>> {
    if !args.broker_url.is_empty() {
        return Ok(args
            .broker_url
            .iter()
            .map(|u| broker::Broker::external(u))
            .collect());
    }
    let shared = args
        .database_url
        .as_deref()
        .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"));
    anyhow::ensure!(
        args.nodes <= 1 || shared,
        "--nodes {} needs --database-url postgres://… (nodes share the database)",
        args.nodes
    );
    (0..args.nodes.max(1))
        .map(|_| {
            let db = args.database_url.as_deref();
            broker::Broker::spawn(args.broker_bin.clone(), db, args.callgrind)
        })
        .collect()
}

/// CPU seconds all the started brokers have used (None when any is not ours).
fn brokers_cpu(brokers: &[broker::Broker]) -> Option<f64> {
    brokers
        .iter()
        .map(|b| b.pid().and_then(broker::cpu_seconds))
        .sum()
}

/// Add a common field to a report, unless the scenario measured it itself (the
/// reconnect storm's broker is another process after the restart).
fn put(o: &mut serde_json::Map<String, serde_json::Value>, k: String, v: serde_json::Value) {
    o.entry(k).or_insert(v);
}

async fn one_run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let mut brokers = brokers(args)?;
    let first = brokers.first().context("no broker")?;
    let data_dir = first
        .data_dir
        .as_ref()
        .map(|d| d.path().to_path_buf())
        .unwrap_or_else(std::env::temp_dir);
    let fsync_before = broker::fsync_probe(&data_dir);
    let sampler = broker::Sampler::start(brokers.iter().filter_map(broker::Broker::pid).collect());
    let cpu_before = (
        brokers_cpu(&brokers),
        broker::cpu_seconds(std::process::id()),
    );

    let mut report = match args.scenario {
        Scenario::IdleConnections => idle_connections(args, first).await?,
        Scenario::ReconnectStorm => {
            let first = brokers.first_mut().context("no broker")?;
            anyhow::ensure!(
                first.pid().is_some(),
                "reconnect-storm restarts the broker: it cannot use --broker-url"
            );
            storm::run(first, args.meshes.unwrap_or(10), args.peers).await?
        }
        Scenario::Hooks => tokio::task::block_in_place(|| {
            hooks::run(first, args.claudemesh_bin.clone(), args.messages.max(1))
        })?,
        scenario => messaging(args, &brokers, scenario).await?,
    };
    sampler.stop();
    let broker_cpu = brokers_cpu(&brokers).zip(cpu_before.0).map(|(a, b)| a - b);
    if args.callgrind {
        let mut total = 0;
        let mut profiles = Vec::new();
        for b in &mut brokers {
            let (n, kept) = b.instructions()?;
            total += n;
            profiles.push(kept.display().to_string());
        }
        let delivered = report.get("delivered").and_then(serde_json::Value::as_u64);
        if let Some(o) = report.as_object_mut() {
            o.insert("broker_instructions".into(), json!(total));
            o.insert("callgrind_profiles".into(), json!(profiles));
            o.insert(
                "broker_instructions_per_msg".into(),
                json!(delivered.filter(|d| *d > 0).map(|d| total / d)),
            );
        }
    }
    let client_cpu = broker::cpu_seconds(std::process::id())
        .zip(cpu_before.1)
        .map(|(a, b)| a - b);
    let fsync_after = broker::fsync_probe(&data_dir);
    if let Some(o) = report.as_object_mut() {
        put(
            o,
            "broker_peak_rss_mb".into(),
            json!(sampler.peak_rss_kib.load(Relaxed) as f64 / 1024.0),
        );
        put(
            o,
            "broker_max_fds".into(),
            json!(sampler.max_fds.load(Relaxed)),
        );
        put(o, "fsync_before_ms".into(), json!(fsync_before));
        // CPU cost: on a shared 2-core machine the load generator competes with the broker.
        let delivered = o
            .get("delivered")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0) as f64;
        put(o, "broker_cpu_s".into(), json!(broker_cpu));
        put(
            o,
            "broker_cpu_us_per_msg".into(),
            json!(
                broker_cpu
                    .filter(|_| delivered > 0.0)
                    .map(|c| c * 1e6 / delivered)
            ),
        );
        put(o, "bench_client_cpu_s".into(), json!(client_cpu));
        put(o, "fsync_after_ms".into(), json!(fsync_after));
        let db = args.database_url.as_deref().map_or_else(
            || "sqlite".to_owned(),
            |u| u.split("://").next().unwrap_or("").to_owned(),
        );
        put(
            o,
            "broker".into(),
            json!(if args.broker_url.is_empty() {
                format!("started: {} node(s) on {db}", brokers.len())
            } else {
                args.broker_url.join(" ")
            }),
        );
    }
    Ok(report)
}

async fn messaging(
    args: &Args,
    brokers: &[broker::Broker],
    scenario: Scenario,
) -> anyhow::Result<serde_json::Value> {
    let broker = brokers.first().context("no broker")?;
    let (peers, senders, pattern, inflight) = match scenario {
        Scenario::Burst => (
            args.peers.max(2),
            args.peers.max(2),
            run::Pattern::Direct,
            None,
        ),
        Scenario::IdleLatency => (2, 1, run::Pattern::Direct, Some(1)),
        Scenario::Fanout => (args.peers.max(2), 1, run::Pattern::Broadcast, None),
        Scenario::IdleConnections | Scenario::Hooks | Scenario::ReconnectStorm => {
            unreachable_scenario()?
        }
    };
    let enrolled = setup::enroll(&broker.http_url, &broker.ws_url, peers)
        .await
        .context("enrolling peers")?;
    let mut sockets = Vec::with_capacity(peers);
    for (i, p) in enrolled.peers.iter().enumerate() {
        // Round-robin over the nodes; the mesh was made on the first.
        let node = brokers.get(i % brokers.len()).unwrap_or(broker);
        let name = format!("peer-{i}");
        let dial = run::Dial::default();
        sockets.push(run::connect(&node.ws_url, &enrolled.mesh_id, p, &name, dial).await?);
    }
    let cfg = run::RunConfig {
        messages_per_sender: args.messages,
        senders,
        pattern,
        inflight,
        rate: args.rate,
        drain_timeout: Duration::from_secs(args.drain_timeout),
        body_bytes: args.body_bytes,
    };
    let stats = Arc::new(run::Stats::default());
    let per_message = if pattern == run::Pattern::Broadcast {
        (peers - 1) as u64
    } else {
        1
    };
    let total = (senders * args.messages) as u64 * per_message;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bar = progress(stats.clone(), total, stop.clone());
    let start = Instant::now();
    for b in brokers {
        b.instrument(true)?;
    }
    let elapsed = run::run(&enrolled, sockets, &cfg, stats.clone(), start).await?;
    for b in brokers {
        b.instrument(false)?;
    }
    stop.store(true, Relaxed);
    let _ = bar.join();

    let mut e2e = stats.e2e_us.lock().map(|v| v.clone()).unwrap_or_default();
    let mut ack = stats.ack_us.lock().map(|v| v.clone()).unwrap_or_default();
    e2e.sort_unstable();
    ack.sort_unstable();
    let delivered = stats.delivered.load(Relaxed);
    let expected = stats.expected.load(Relaxed);
    let secs = elapsed.as_secs_f64().max(1e-9);
    Ok(json!({
        "scenario": format!("{scenario:?}").to_lowercase(),
        "peers": peers,
        "messages_per_peer": args.messages,
        "senders": senders,
        "sent": stats.sent.load(Relaxed),
        "refused": stats.refused.load(Relaxed),
        "deliveries_expected": expected,
        "delivered": delivered,
        "lost": expected.saturating_sub(delivered),
        "duplicates": stats.duplicates.load(Relaxed),
        "rejected": stats.rejected.load(Relaxed),
        "e2e_p50_ms": percentile(&e2e, 0.50),
        "e2e_p95_ms": percentile(&e2e, 0.95),
        "e2e_p99_ms": percentile(&e2e, 0.99),
        "e2e_max_ms": percentile(&e2e, 1.0),
        "ack_p50_ms": percentile(&ack, 0.50),
        "ack_p99_ms": percentile(&ack, 0.99),
        "duration_s": secs,
        "throughput_msgs_per_s": delivered as f64 / secs,
    }))
}

fn unreachable_scenario() -> anyhow::Result<(usize, usize, run::Pattern, Option<usize>)> {
    anyhow::bail!("idle-connections, hooks and reconnect-storm are not messaging scenarios")
}

/// Count (frames, events) of presence that arrive on `stream` until it closes.
async fn count_presence(
    mut stream: impl futures_util::Stream<
        Item = Result<
            tokio_tungstenite::tungstenite::Message,
            tokio_tungstenite::tungstenite::Error,
        >,
    > + Unpin,
    counts: Arc<(AtomicU64, AtomicU64)>,
) {
    use claudemesh_proto::frames::BrokerFrame;
    while let Some(Ok(msg)) = futures_util::StreamExt::next(&mut stream).await {
        let tokio_tungstenite::tungstenite::Message::Text(t) = msg else {
            continue;
        };
        let events = match serde_json::from_str::<BrokerFrame>(t.as_str()) {
            Ok(BrokerFrame::Presence(b)) => b.events.len() as u64,
            Ok(BrokerFrame::Push(p)) if p.subtype.as_deref() == Some("system") => 1,
            _ => continue,
        };
        counts.0.fetch_add(1, Relaxed);
        counts.1.fetch_add(events, Relaxed);
    }
}

async fn idle_connections(
    args: &Args,
    broker: &broker::Broker,
) -> anyhow::Result<serde_json::Value> {
    // Memory and CPU come from /proc: only for a broker the bench started.
    let pid = broker.pid();
    let meshes = args.meshes.unwrap_or(1).max(1);
    let per_mesh = (args.idle_connections / meshes).max(1);
    let n = per_mesh * meshes;
    let (http, ws) = (&broker.http_url, &broker.ws_url);
    let enrolled: Vec<setup::Enrolled> = futures_util::stream::iter(0..meshes)
        .map(|_| setup::enroll(http, ws, per_mesh))
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = pid.and_then(broker::rss_kib).map(|(rss, _)| rss);
    let cpu_before = pid.and_then(broker::cpu_seconds);
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(n);
    let counts: Arc<(AtomicU64, AtomicU64)> = Arc::default();
    let bar = indicatif::ProgressBar::new(n as u64).with_message("connected");
    let peers = enrolled
        .iter()
        .flat_map(|e| e.peers.iter().map(move |p| (e.mesh_id.as_str(), p)));
    for (i, (mesh_id, p)) in peers.enumerate() {
        let name = format!("idle-{i}");
        let dial = run::Dial {
            v1_presence: args.v1_presence,
            // 127.0.0.1 … 127.0.0.16, round-robin (see `run::Dial`).
            source: Some(std::net::IpAddr::from([127, 0, 0, 1 + (i % 16) as u8])),
        };
        let ws = run::connect(ws, mesh_id, p, &name, dial);
        let (sink, stream) = futures_util::StreamExt::split(ws.await?);
        // A real client reads what it is sent: count the presence frames and events.
        tokio::spawn(count_presence(stream, counts.clone()));
        sockets.push(sink);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let connect_s = started.elapsed().as_secs_f64();
    // The last presence tick goes out, and what it sends is written.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connect_cpu = pid
        .and_then(broker::cpu_seconds)
        .zip(cpu_before)
        .map(|(a, b)| a - b);
    let after = pid.and_then(broker::rss_kib).map(|(rss, _)| rss);
    let fds = pid.and_then(broker::open_fds);
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    drop(sockets);
    Ok(json!({
        "scenario": "idle-connections",
        "meshes": meshes,
        "peers": n,
        "messages_per_peer": 0,
        "sent": 0, "delivered": 0, "lost": 0, "duplicates": 0,
        "e2e_p50_ms": 0.0, "e2e_p95_ms": 0.0, "e2e_p99_ms": 0.0, "ack_p50_ms": 0.0, "ack_p99_ms": 0.0,
        "throughput_msgs_per_s": 0.0,
        "rss_before_mb": before.map(|b| b as f64 / 1024.0),
        "rss_after_mb": after.map(|a| a as f64 / 1024.0),
        "kb_per_connection": after.zip(before).map(|(a, b)| a.saturating_sub(b) as f64 / n as f64),
        "connect_s": connect_s,
        "connect_broker_cpu_s": connect_cpu,
        "v1_presence": args.v1_presence,
        "presence_frames_per_peer": counts.0.load(Relaxed) as f64 / n as f64,
        "presence_events_per_peer": counts.1.load(Relaxed) as f64 / n as f64,
        "fds_open": fds,
    }))
}
