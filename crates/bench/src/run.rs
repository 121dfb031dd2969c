//! One measured run: N peers on N WebSockets, each with a writer task (the socket's only
//! writer), a reader task (acks, pushes: decrypt, verify, dedupe, `client_ack`) and, for
//! senders, a sender task. Every message body carries its sender, sequence number and
//! send time, so the receiver measures end-to-end latency and counts loss and duplicates.
//! One mechanism serves every scenario: an optional global in-flight limit (1 = idle
//! latency), an optional pace per sender, and direct-to-random-peer or broadcast targets.

use claudemesh_proto::time::now_ms;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use claudemesh_client::envelope::{Incoming, Keyring, Opened};
use claudemesh_crypto::PublicKey;
use claudemesh_proto::canonical;
use claudemesh_proto::codes::cap;
use claudemesh_proto::frames::{
    BrokerFrame, ClientAck, ClientFrame, Hello, PresenceInfo, Priority, Send,
};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::setup::{Enrolled, PeerIdentity};

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Every sender sends to random other peers.
    Direct,
    /// Every sender broadcasts (`*`, sealed multicast) to all other peers.
    Broadcast,
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub messages_per_sender: usize,
    /// Peers that send (by index); the others only receive.
    pub senders: usize,
    pub pattern: Pattern,
    /// At most this many messages in flight across the run (None = unlimited burst).
    pub inflight: Option<usize>,
    /// Messages per second per sender (None = as fast as possible).
    pub rate: Option<f64>,
    /// Give up waiting for deliveries after this long once sending is done.
    pub drain_timeout: Duration,
    /// Bytes of padding in each body (message size).
    pub body_bytes: usize,
}

/// Counters and samples shared by all tasks of a run.
#[derive(Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub refused: AtomicU64,
    /// Deliveries the broker said it created (sum of `ack.recipients`).
    pub expected: AtomicU64,
    pub delivered: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    pub e2e_us: Mutex<Vec<u32>>,
    pub ack_us: Mutex<Vec<u32>>,
    pub last_delivery_us: AtomicU64,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn text(frame: &ClientFrame) -> Message {
    Message::Text(serde_json::to_string(frame).unwrap_or_default().into())
}

/// How a benchmark connection says hello.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dial {
    /// Announce no `presence-batch` (a plain v1 client's presence events).
    pub v1_presence: bool,
    /// Connect from this local address (a `ws://` broker on loopback): one address has
    /// only ~28 000 ephemeral ports, so 100 000 connections come from several.
    pub source: Option<std::net::IpAddr>,
}

/// Open a socket and say hello as `peer`, announcing what this project's client does
/// (`presence-batch` too, unless `dial.v1_presence`).
pub async fn connect(
    url: &str,
    mesh_id: &str,
    peer: &PeerIdentity,
    name: &str,
    dial: Dial,
) -> anyhow::Result<Ws> {
    let v1_presence = dial.v1_presence;
    let mut ws = match dial.source {
        Some(source) if url.starts_with("ws://") => {
            let addr: std::net::SocketAddr = url
                .trim_start_matches("ws://")
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .context("--source needs a ws://IP:PORT broker URL")?;
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(std::net::SocketAddr::new(source, 0))?;
            let stream = socket
                .connect(addr)
                .await
                .context("connecting to the broker")?;
            let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
            let config = Some(claudemesh_client::connection::websocket_config());
            tokio_tungstenite::client_async_with_config(url, stream, config)
                .await?
                .0
        }
        _ => {
            let connector = if url.starts_with("wss://") {
                let tls = claudemesh_client::tls::client_config()?;
                Some(tokio_tungstenite::Connector::Rustls(tls))
            } else {
                None
            };
            let config = Some(claudemesh_client::connection::websocket_config());
            tokio_tungstenite::connect_async_tls_with_config(url, config, true, connector)
                .await
                .context("connecting to the broker")?
                .0
        }
    };
    let ts = now_ms();
    let pk = peer.key.public().to_hex();
    let hello = ClientFrame::Hello(Hello {
        mesh_id: mesh_id.to_owned(),
        member_id: peer.member_id.clone(),
        pubkey: pk.clone(),
        session_pubkey: None,
        presence: PresenceInfo {
            display_name: Some(name.to_owned()),
            session_id: name.to_owned(),
            capabilities: Some(
                [cap::E2E_MULTICAST, cap::LIST_MEMBERS, cap::PRESENCE_BATCH]
                    .into_iter()
                    .filter(|c| !v1_presence || *c != cap::PRESENCE_BATCH)
                    .map(str::to_owned)
                    .collect(),
            ),
            ..PresenceInfo::default()
        },
        timestamp: ts,
        signature: peer
            .key
            .sign_str(&canonical::hello(mesh_id, &peer.member_id, &pk, ts))
            .to_hex(),
        req_id: None,
    });
    ws.send(text(&hello)).await?;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no hello_ack")?;
        let Some(Ok(Message::Text(t))) = msg else {
            bail!("connection closed during hello")
        };
        match serde_json::from_str::<BrokerFrame>(t.as_str()) {
            Ok(BrokerFrame::HelloAck(_)) => return Ok(ws),
            Ok(BrokerFrame::Error(e)) => bail!("hello refused: {} {}", e.code, e.message),
            _ => continue,
        }
    }
}

/// Run the scenario over already connected sockets; returns when everything acked was
/// delivered or the drain timeout passed.
pub async fn run(
    enrolled: &Enrolled,
    sockets: Vec<Ws>,
    cfg: &RunConfig,
    stats: Arc<Stats>,
    start: Instant,
) -> anyhow::Result<Duration> {
    let keys: Arc<Vec<PublicKey>> =
        Arc::new(enrolled.peers.iter().map(|p| p.key.public()).collect());
    let permits = cfg.inflight.map(|n| Arc::new(Semaphore::new(n)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut senders = Vec::new();
    let mut others = Vec::new();
    for (idx, (ws, identity)) in sockets.into_iter().zip(&enrolled.peers).enumerate() {
        let (sink, stream) = ws.split();
        let (out_tx, out_rx) = mpsc::channel::<Message>(8_192);
        others.push(tokio::spawn(writer(sink, out_rx, stop_rx.clone())));
        let send_times: Arc<Vec<AtomicU64>> = Arc::new(
            (0..cfg.messages_per_sender)
                .map(|_| AtomicU64::new(0))
                .collect(),
        );
        let ring = Keyring::new(identity.key.clone());
        others.push(tokio::spawn(reader(
            stream,
            out_tx.clone(),
            ring,
            send_times.clone(),
            stats.clone(),
            permits.clone(),
            start,
            stop_rx.clone(),
        )));
        if idx < cfg.senders {
            let ring = Keyring::new(identity.key.clone());
            let task = sender(
                idx,
                out_tx,
                ring,
                keys.clone(),
                enrolled.mesh_id.clone(),
                cfg.clone(),
                send_times,
                stats.clone(),
                permits.clone(),
                start,
            );
            senders.push(tokio::spawn(task));
        }
    }
    for s in senders {
        s.await??;
    }
    let sending_done = Instant::now();
    // Wait until every acked delivery arrived, or the drain timeout.
    while sending_done.elapsed() < cfg.drain_timeout {
        let (acked, refused) = (stats.acked.load(Relaxed), stats.refused.load(Relaxed));
        let all_acked = acked + refused >= stats.sent.load(Relaxed);
        if all_acked && stats.delivered.load(Relaxed) >= stats.expected.load(Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    for t in others {
        let _ = t.await;
    }
    Ok(Duration::from_micros(stats.last_delivery_us.load(Relaxed)))
}

async fn writer(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    mut rx: mpsc::Receiver<Message>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                if sink.feed(msg).await.is_err() {
                    break;
                }
                while let Ok(more) = rx.try_recv() {
                    if sink.feed(more).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
            _ = stop.changed() => break,
        }
    }
    let _ = sink.close().await;
}

#[allow(clippy::too_many_arguments)] // a task entry point: each argument is one shared piece of the run
async fn sender(
    idx: usize,
    out: mpsc::Sender<Message>,
    mut ring: Keyring,
    keys: Arc<Vec<PublicKey>>,
    mesh_id: String,
    cfg: RunConfig,
    send_times: Arc<Vec<AtomicU64>>,
    stats: Arc<Stats>,
    permits: Option<Arc<Semaphore>>,
    start: Instant,
) -> anyhow::Result<()> {
    let others: Vec<PublicKey> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != idx)
        .map(|(_, k)| *k)
        .collect();
    let pad = "x".repeat(cfg.body_bytes);
    let mut pace = cfg
        .rate
        .map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r.max(0.001))));
    for seq in 0..cfg.messages_per_sender {
        if let Some(p) = &mut pace {
            p.tick().await;
        }
        if let Some(permits) = &permits {
            permits.acquire().await?.forget();
        }
        let t = start.elapsed().as_micros() as u64;
        let body = format!("{idx}:{seq}:{t}:{pad}");
        let cmid = format!("{idx}-{seq}");
        let (target_spec, nonce, ciphertext, sealed_keys) = match cfg.pattern {
            Pattern::Direct => {
                let to = others
                    .get(rand::random::<usize>() % others.len().max(1))
                    .context("a run needs at least two peers")?;
                let sealed = ring.seal_direct(to, &mesh_id, &cmid, now_ms(), &body);
                (to.to_hex(), sealed.nonce, sealed.ciphertext, None)
            }
            Pattern::Broadcast => {
                let sealed = ring.seal_multicast(&others, "*", &mesh_id, &cmid, now_ms(), &body);
                (
                    "*".to_owned(),
                    sealed.nonce,
                    sealed.ciphertext,
                    Some(sealed.sealed_keys),
                )
            }
        };
        let frame = ClientFrame::Send(Send {
            target_spec,
            priority: Priority::Now,
            nonce,
            ciphertext,
            id: Some(seq.to_string()),
            client_message_id: Some(cmid),
            request_fingerprint: None,
            sealed_keys,
            req_id: None,
        });
        if let Some(slot) = send_times.get(seq) {
            slot.store(start.elapsed().as_micros() as u64, Relaxed);
        }
        stats.sent.fetch_add(1, Relaxed);
        if out.send(text(&frame)).await.is_err() {
            bail!("the connection of peer {idx} closed while sending");
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)] // a task entry point: each argument is one shared piece of the run
async fn reader(
    mut stream: futures_util::stream::SplitStream<Ws>,
    out: mpsc::Sender<Message>,
    mut ring: Keyring,
    send_times: Arc<Vec<AtomicU64>>,
    stats: Arc<Stats>,
    permits: Option<Arc<Semaphore>>,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen: HashSet<(u32, u32)> = HashSet::new();
    let mut e2e = Vec::new();
    let mut acks = Vec::new();
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = stop.changed() => break,
        };
        let Some(Ok(Message::Text(t))) = msg else {
            if msg.is_none() {
                break;
            }
            continue;
        };
        let Ok(frame) = serde_json::from_str::<BrokerFrame>(t.as_str()) else {
            continue;
        };
        let now = start.elapsed().as_micros() as u64;
        match frame {
            BrokerFrame::Ack(ack) => {
                let sent_at = ack
                    .id
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| send_times.get(i))
                    .map(|t| t.load(Relaxed));
                if let Some(sent_at) = sent_at {
                    acks.push(now.saturating_sub(sent_at) as u32);
                }
                if ack.queued {
                    stats.acked.fetch_add(1, Relaxed);
                    stats
                        .expected
                        .fetch_add(u64::from(ack.recipients.unwrap_or(1)), Relaxed);
                } else {
                    stats.refused.fetch_add(1, Relaxed);
                    if let Some(p) = &permits {
                        p.add_permits(1);
                    }
                }
            }
            BrokerFrame::Push(push) if push.subtype.is_none() => {
                let incoming = Incoming::from(&push);
                match ring.open(&incoming) {
                    Opened::Verified(env) => {
                        let mut parts = env.body.splitn(4, ':');
                        let (Some(Ok(from)), Some(Ok(seq)), Some(Ok(t))) = (
                            parts.next().map(str::parse::<u32>),
                            parts.next().map(str::parse::<u32>),
                            parts.next().map(str::parse::<u64>),
                        ) else {
                            stats.rejected.fetch_add(1, Relaxed);
                            continue;
                        };
                        if seen.insert((from, seq)) {
                            stats.delivered.fetch_add(1, Relaxed);
                            stats.last_delivery_us.fetch_max(now, Relaxed);
                            e2e.push(now.saturating_sub(t) as u32);
                            if let Some(p) = &permits {
                                p.add_permits(1);
                            }
                        } else {
                            stats.duplicates.fetch_add(1, Relaxed);
                        }
                    }
                    _ => {
                        stats.rejected.fetch_add(1, Relaxed);
                    }
                }
                let ack = ClientFrame::ClientAck(ClientAck {
                    client_message_id: None,
                    broker_message_id: Some(push.message_id),
                    req_id: None,
                });
                if out.send(text(&ack)).await.is_err() {
                    break;
                }
            }
            _ => {}
        }
    }
    if let Ok(mut v) = stats.e2e_us.lock() {
        v.extend(e2e);
    }
    if let Ok(mut v) = stats.ack_us.lock() {
        v.extend(acks);
    }
}
