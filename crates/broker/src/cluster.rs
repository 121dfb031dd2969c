//! The listener of a node on a shared database: a thread with its own PostgreSQL
//! connection that `LISTEN`s for the other nodes' notifications, reads the rows they name
//! (on that connection, so the engine's stays free), and hands the engine
//! [`ClusterEvent`]s through its inbox. Its own node's notifications are skipped. Each
//! time it starts listening (the first time too: the engine loaded its state before) it
//! asks the engine to re-read the shared state, since notifications sent while nobody
//! listened are lost; when the connection fails it connects again, once a second. It
//! stops when told to (or dropped), or when the engine is gone.
//!
//! Payload format (written by `engine/cluster.rs`): the sender's node id, then one line
//! per change: `p mesh key` (a presence row), `N node` (a node reaped), `d mesh
//! key:seq,…` (deliveries), `M mesh`, `m mesh member`, `i mesh key`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use claudemesh_store::{Cluster as _, PgListener};

use crate::engine::cluster::parse_line;
use crate::engine::{ClusterEvent, Command};

/// How long one wait for notifications lasts (the stop flag is checked between waits).
const WAIT: Duration = Duration::from_millis(500);
/// Between connection attempts.
const RETRY: Duration = Duration::from_secs(1);

/// The running listener; [`Listener::stop`] ends it.
#[derive(Debug)]
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    /// Start listening on `url` for node `node_id`, feeding `engine`.
    pub fn start(
        url: String,
        node_id: i64,
        engine: flume::Sender<Command>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("claudemesh-listener".into())
            .spawn(move || run(&url, node_id, &engine, &flag))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop and wait for the thread (at most one wait, or a connection attempt).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Listener {
    /// Dropped without [`Listener::stop`] (a start that failed later): the thread ends by
    /// itself after its current wait.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn run(url: &str, node_id: i64, engine: &flume::Sender<Command>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let mut listener = match PgListener::open(url) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other nodes; retrying");
                std::thread::sleep(RETRY);
                continue;
            }
        };
        if engine.send(Command::Cluster(ClusterEvent::Resync)).is_err() {
            return;
        }
        while !stop.load(Ordering::SeqCst) {
            let payloads = match listener.wait(WAIT) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "lost the connection listening for other nodes");
                    break;
                }
            };
            for payload in payloads {
                for ev in events(&mut listener, node_id, &payload) {
                    if engine.send(Command::Cluster(ev)).is_err() {
                        return; // the engine has stopped
                    }
                }
            }
        }
    }
}

/// `key:seq,seq…` of a wake line (a word that does not parse is skipped).
fn wake_word(word: &str) -> Option<(String, Vec<i64>)> {
    let (key, seqs) = word.split_once(':')?;
    let seqs = seqs
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some((key.to_owned(), seqs))
}

/// The events of one payload, with the rows they name read now. Another node's payload
/// only; a line this version does not know is skipped.
fn events(listener: &mut PgListener, me: i64, payload: &str) -> Vec<ClusterEvent> {
    let mut lines = payload.split('\n');
    let Some(origin) = lines.next().and_then(|o| o.parse::<i64>().ok()) else {
        return Vec::new();
    };
    if origin == me {
        return Vec::new();
    }
    let store = listener.store();
    let mut out = Vec::new();
    for line in lines {
        let Some((kind, args)) = parse_line(line) else {
            continue;
        };
        let read = match (kind, args.as_slice()) {
            ("p", [mesh, key]) => store.presence(mesh, key, origin).map(|row| {
                Some(ClusterEvent::Presence {
                    node: origin,
                    mesh_id: (*mesh).to_owned(),
                    key: (*key).to_owned(),
                    row,
                })
            }),
            ("N", [node]) => Ok(node.parse().ok().map(ClusterEvent::NodeGone)),
            ("d", [mesh, keys @ ..]) => Ok(Some(ClusterEvent::Wake {
                mesh_id: (*mesh).to_owned(),
                keys: keys.iter().filter_map(|w| wake_word(w)).collect(),
            })),
            ("M", [mesh]) => store.mesh(mesh).map(|r| r.map(ClusterEvent::Mesh)),
            ("m", [mesh, member]) => store
                .member(mesh, member)
                .map(|r| r.map(ClusterEvent::Member)),
            ("i", [mesh, key]) => store.peer(mesh, key).map(|r| r.map(ClusterEvent::Peer)),
            _ => {
                tracing::debug!(kind, "unknown notification line");
                Ok(None)
            }
        };
        match read {
            Ok(Some(ev)) => out.push(ev),
            Ok(None) => {}
            Err(e) => {
                // The row could not be read: have the engine re-read everything instead.
                tracing::warn!(error = %e, "cannot read what another node changed");
                out.push(ClusterEvent::Resync);
            }
        }
    }
    out
}
