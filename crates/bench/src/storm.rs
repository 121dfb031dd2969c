//! The reconnect-storm scenario: `--meshes` M × `--peers` N peers, each a real
//! `claudemesh_client::connection::Connection` (its own reconnect with jittered backoff),
//! connected and settled; then the broker is SIGKILLed and started again on the same
//! address and data, and every peer comes back by itself. Reported: how long until every
//! peer is connected again and until each has had a message acked after the restart, the
//! restarted broker's CPU and peak RSS until then, and the presence events (and, from the
//! broker's metrics, the presence frames) the peers received during the storm.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use claudemesh_client::connection::{ConnectOptions, Connection, Identity, Liveness, State};
use claudemesh_crypto::PublicKey;
use claudemesh_proto::frames::{PresenceInfo, Priority, Send};
use claudemesh_proto::time::now_ms;
use futures_util::StreamExt as _;
use serde_json::json;

use crate::broker::{self, Broker};
use crate::setup::{self, Enrolled};

/// Connections opened (or enrollments made) at once.
const PARALLEL: usize = 64;

/// What every peer counts, shared with the report.
#[derive(Default)]
struct Counters {
    /// System pushes (presence events) received since the counter was last reset.
    events: AtomicU64,
}

struct Peer {
    conn: Connection,
    secret: claudemesh_crypto::SecretKey,
    mesh: usize,
    mesh_id: String,
}

fn is_connected(s: &State) -> bool {
    matches!(s, State::Connected { .. })
}

/// Connect one peer with the client library and count what it receives (acking
/// deliveries, as a real client does).
async fn connect(
    url: String,
    mesh_id: String,
    identity: setup::PeerIdentity,
    name: String,
    counters: Arc<Counters>,
) -> anyhow::Result<Connection> {
    let opts = ConnectOptions {
        url,
        identity: Identity {
            mesh_id,
            member_id: identity.member_id.clone(),
            member_key: identity.key.clone(),
            session_key: None,
        },
        presence: PresenceInfo {
            display_name: Some(name.clone()),
            session_id: name,
            ..PresenceInfo::default()
        },
        reconnect: true,
        liveness: Liveness::default(),
    };
    let (conn, mut pushes) = Connection::connect(opts).await?;
    let acker = conn.clone();
    tokio::spawn(async move {
        while let Some(p) = pushes.recv().await {
            if p.subtype.as_deref() == Some("system") {
                counters.events.fetch_add(1, Relaxed);
            } else {
                let _ = acker.ack(&p.message_id).await;
            }
        }
    });
    Ok(conn)
}

/// After the restart: wait for the drop, the reconnect, then send one message to the
/// next peer of the mesh and wait for its ack. Returns (connected, acked) since `t0`.
/// `state` was marked seen before the kill, so any change since is the drop (the peer
/// may already be back by the time this task runs).
async fn come_back(
    conn: Connection,
    mut state: tokio::sync::watch::Receiver<State>,
    to: PublicKey,
    mesh_id: String,
    me: claudemesh_crypto::SecretKey,
    t0: Instant,
) -> anyhow::Result<(Duration, Duration)> {
    tokio::time::timeout(Duration::from_secs(30), state.changed())
        .await
        .context("a peer never noticed the broker going away")??;
    tokio::time::timeout(Duration::from_secs(120), state.wait_for(is_connected))
        .await
        .context("a peer did not reconnect within 120 s")??;
    let connected = t0.elapsed();
    let id = claudemesh_proto::ids::new_id();
    let sealed =
        claudemesh_client::envelope::seal_direct(&me, &to, &mesh_id, &id, now_ms(), "back");
    let ack = conn
        .send(Send {
            target_spec: to.to_hex(),
            priority: Priority::Now,
            nonce: sealed.nonce,
            ciphertext: sealed.ciphertext,
            id: None,
            client_message_id: Some(id),
            request_fingerprint: None,
            sealed_keys: None,
            req_id: None,
        })
        .await?;
    anyhow::ensure!(
        ack.queued,
        "the send after the restart was refused: {:?}",
        ack.error
    );
    Ok((connected, t0.elapsed()))
}

/// Run the scenario against `broker` (started by the bench: it is killed and restarted).
pub async fn run(
    broker: &mut Broker,
    meshes: usize,
    peers: usize,
) -> anyhow::Result<serde_json::Value> {
    let (meshes, peers) = (meshes.max(1), peers.max(2));
    let (http, ws) = (broker.http_url.clone(), broker.ws_url.clone());
    let enrolled: Vec<Enrolled> = futures_util::stream::iter(0..meshes)
        .map(|_| setup::enroll(&http, &ws, peers))
        .buffered(PARALLEL.min(8))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()
        .context("enrolling peers")?;
    let counters = Arc::new(Counters::default());
    let mut todo = Vec::new();
    for (m, e) in enrolled.iter().enumerate() {
        for (i, p) in e.peers.iter().enumerate() {
            todo.push((m, e.mesh_id.clone(), p.clone(), format!("m{m}-p{i}")));
        }
    }
    let connect_started = Instant::now();
    let cpu_before = broker.pid().and_then(broker::cpu_seconds);
    let all: Vec<Peer> = futures_util::stream::iter(todo)
        .map(|(m, mesh_id, identity, name)| {
            let (url, counters) = (ws.clone(), counters.clone());
            async move {
                let secret = identity.key.clone();
                let conn = connect(url, mesh_id.clone(), identity, name, counters).await?;
                anyhow::Ok(Peer {
                    conn,
                    secret,
                    mesh: m,
                    mesh_id,
                })
            }
        })
        // In order: the peers of a mesh stay contiguous.
        .buffered(PARALLEL)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()
        .context("connecting peers")?;
    let connect_s = connect_started.elapsed().as_secs_f64();
    let connect_cpu = broker
        .pid()
        .and_then(broker::cpu_seconds)
        .zip(cpu_before)
        .map(|(a, b)| a - b);
    // Let the joins' presence events go out before counting the storm's.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connect_events = counters.events.swap(0, Relaxed);

    let states: Vec<_> = all
        .iter()
        .map(|p| {
            let mut s = p.conn.watch_state();
            s.borrow_and_update();
            s
        })
        .collect();
    let t0 = Instant::now();
    broker.restart()?;
    let restarted = t0.elapsed();
    let pid = broker.pid().context("the restarted broker has no pid")?;
    let mut tasks = Vec::with_capacity(all.len());
    for ((i, p), state) in all.iter().enumerate().zip(states) {
        // The next peer of the same mesh (peers of a mesh are contiguous).
        let next = all
            .get(i + 1)
            .filter(|q| q.mesh == p.mesh)
            .or_else(|| all.iter().find(|q| q.mesh == p.mesh))
            .context("no peer to send to")?;
        tasks.push(tokio::spawn(come_back(
            p.conn.clone(),
            state,
            next.secret.public(),
            p.mesh_id.clone(),
            p.secret.clone(),
            t0,
        )));
    }
    let mut connected = Vec::with_capacity(tasks.len());
    let mut acked = Vec::with_capacity(tasks.len());
    for t in tasks {
        let (c, a) = t.await??;
        connected.push(c);
        acked.push(a);
    }
    let storm_cpu = broker::cpu_seconds(pid);
    let rss = broker::rss_kib(pid).map(|(_, peak)| peak as f64 / 1024.0);
    // Anything still on its way (a presence tick, a late leave).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let storm_events = counters.events.load(Relaxed);
    let names = [
        "broker_presence_frames",
        "broker_preauth_refused",
        "broker_hello_rejected",
        "broker_preauth_queued",
        "broker_preauth_queue_timeouts",
    ];
    let [frames, refused, rejected, queued, queue_timeouts] =
        broker_counters(&broker.http_url, &names).await[..]
    else {
        anyhow::bail!("reading the broker's counters");
    };
    connected.sort_unstable();
    acked.sort_unstable();
    let n = all.len();
    let pct = |v: &[Duration], p: f64| {
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v.get(i).map_or(0.0, |d| d.as_secs_f64())
    };
    for p in &all {
        p.conn.close().await;
    }
    Ok(json!({
        "scenario": "reconnect-storm",
        "meshes": meshes,
        "peers": n,
        "peers_per_mesh": peers,
        "messages_per_peer": 1,
        // Each peer's message after the restart was acked (stored); its delivery is not
        // what this scenario measures.
        "sent": n, "acked": n, "delivered": null, "lost": null, "duplicates": null,
        "connect_s": connect_s,
        "connect_broker_cpu_s": connect_cpu,
        "connect_presence_events_per_peer": connect_events as f64 / n as f64,
        "restart_s": restarted.as_secs_f64(),
        "all_connected_s": pct(&connected, 1.0),
        "connected_p50_s": pct(&connected, 0.5),
        "all_sent_s": pct(&acked, 1.0),
        "storm_broker_cpu_s": storm_cpu,
        "storm_broker_peak_rss_mb": rss,
        // The restarted broker is another process: these replace the common fields.
        "broker_cpu_s": storm_cpu,
        "broker_cpu_us_per_msg": null,
        "broker_peak_rss_mb": rss,
        "storm_presence_events_per_peer": storm_events as f64 / n as f64,
        "storm_presence_frames_per_peer": frames.map(|f| f as f64 / n as f64),
        "storm_preauth_refused": refused,
        "storm_hello_rejected": rejected,
        "storm_preauth_queued": queued,
        "storm_preauth_queue_timeouts": queue_timeouts,
    }))
}

/// These counters of the (restarted) broker, from `/metrics`.
async fn broker_counters(http: &str, names: &[&str]) -> Vec<Option<u64>> {
    let text = match reqwest::get(format!("{http}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    names
        .iter()
        .map(|name| {
            text.lines()
                .find(|l| l.starts_with(&format!("{name}_total{{")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
        })
        .collect()
}
