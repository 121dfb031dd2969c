//! The broker link of one mesh: this session's live connection there and what it takes
//! to use it. [`Link::spawn`] starts it (`Connection::spawn`: a `session_hello` vouched
//! for by the member key, jittered reconnects for as long as the session lives; only an
//! identity refusal such as `revoked` is final); [`Link::ready`] waits for it or says
//! why it is not there; the link keeps the names of the mesh's peers, seals and sends
//! messages, and reports its state. The functions over `&[Link]` act on every mesh at
//! once: presence changes and leaving on purpose.
//!
//! What it must not do: hold a lock across a network wait (the keyring is taken out for a
//! send and put back after it), log message text, or decide what Claude is shown.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use claudemesh_client::envelope::{Body, Keyring};
use claudemesh_client::{
    ConnectOptions, Connection, Identity, SendError, SendReport, State, Target, messaging,
};
use claudemesh_crypto::SecretKey;
use claudemesh_proto::frames::{PresenceInfo, Priority, Push, Reach, Status};
use tokio::sync::mpsc;

use super::render::replies;
use crate::config::MeshEntry;
use crate::resolve::{self, Candidate};

/// How long a tool waits for a connection that is still (re)connecting.
pub const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// The name cache is refreshed at most this often when an unknown key shows up.
const NAMES_REFRESH: Duration = Duration::from_secs(2);

/// `text` cut to at most `max` bytes at a character boundary: the broker refuses a hello
/// whose presence fields are longer, and a refused hello would keep the session offline.
pub fn fit(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}

/// One mesh this session is in: its live connection and what is needed to use it.
pub struct Link {
    pub slug: String,
    pub mesh_id: String,
    pub url: String,
    /// This session's key in the mesh (hex).
    pub me: String,
    pub conn: Connection,
    /// The session key: a send that finds the keyring taken seals with a fresh one.
    key: SecretKey,
    /// Seals outgoing messages (the receive loop has its own keyring). Taken out for the
    /// length of a send, so no lock is held while the broker answers.
    send_ring: Mutex<Option<Keyring>>,
    /// Key → display name, for pushes that carry no sender name (direct messages).
    names: Mutex<(HashMap<String, String>, Option<Instant>)>,
}

impl Link {
    /// Start the connection of `entry` as `session_key`, announcing `presence`. Returns
    /// the link, its pushes and a keyring for the receive loop.
    pub fn spawn(
        entry: &MeshEntry,
        session_key: SecretKey,
        presence: PresenceInfo,
    ) -> anyhow::Result<(Self, mpsc::Receiver<Push>, Keyring)> {
        let identity = Identity {
            mesh_id: entry.mesh_id.clone(),
            member_id: entry.member_id.clone(),
            member_key: entry.key()?,
            session_key: Some(session_key.clone()),
        };
        let (conn, pushes) = Connection::spawn(ConnectOptions {
            url: entry.broker_url.clone(),
            identity,
            presence,
            reconnect: true,
            liveness: claudemesh_client::Liveness::default(),
        });
        let link = Self {
            slug: entry.slug.clone(),
            mesh_id: entry.mesh_id.clone(),
            url: entry.broker_url.clone(),
            me: session_key.public().to_hex(),
            conn,
            send_ring: Mutex::new(Some(Keyring::new(session_key.clone()))),
            key: session_key.clone(),
            names: Mutex::new((HashMap::new(), None)),
        };
        Ok((link, pushes, Keyring::new(session_key)))
    }

    /// Wait for the connection, or explain why it is not there.
    pub async fn ready(&self) -> Result<(), String> {
        self.conn
            .wait_connected(CONNECT_WAIT)
            .await
            .map_err(|e| replies::not_connected(&self.slug, &self.url, &e))
    }

    /// Everyone this session can address in the mesh; refreshes the name cache.
    pub async fn candidates(&self) -> Result<Vec<Candidate>, String> {
        let list = resolve::candidates(&self.conn, &self.me)
            .await
            .map_err(|e| replies::no_candidates(&self.slug, &e))?;
        if let Ok(mut names) = self.names.lock() {
            names.0 = list
                .iter()
                .map(|c| (c.key.clone(), c.name.clone()))
                .collect();
            names.1 = Some(Instant::now());
        }
        Ok(list)
    }

    /// The display name of `key`, refreshing the cache (rate-limited) on a miss.
    pub async fn name_of(&self, key: &str) -> Option<String> {
        let stale = {
            let names = self.names.lock().ok()?;
            if let Some(n) = names.0.get(key) {
                return Some(n.clone());
            }
            names.1.is_none_or(|at| at.elapsed() >= NAMES_REFRESH)
        };
        if stale {
            let _ = self.candidates().await;
        }
        self.names.lock().ok()?.0.get(key).cloned()
    }

    /// Seal `body` for `target` and send it. The keyring is out of its slot while the
    /// broker answers; a send that overlaps another seals with a fresh keyring.
    pub async fn send(
        &self,
        target: &Target,
        body: Body<'_>,
        priority: Priority,
    ) -> Result<SendReport, SendError> {
        let taken = self.send_ring.lock().ok().and_then(|mut slot| slot.take());
        let mut ring = taken.unwrap_or_else(|| Keyring::new(self.key.clone()));
        let report =
            messaging::send_text(&self.conn, &mut ring, &self.mesh_id, target, body, priority)
                .await;
        if let Ok(mut slot) = self.send_ring.lock() {
            slot.get_or_insert(ring);
        }
        report
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.conn.state(), State::Connected { .. })
    }

    /// `slug: connected`, `slug: connecting (why)` or `slug: refused: why`.
    pub fn state_line(&self) -> String {
        let state = match self.conn.state() {
            State::Connected { .. } => "connected".to_owned(),
            State::Connecting => format!(
                "connecting ({})",
                self.conn
                    .last_error()
                    .unwrap_or_else(|| "first attempt".into())
            ),
            State::Failed(why) => format!("refused: {why}"),
        };
        format!("{}: {state}", self.slug)
    }
}

/// The link for an explicit `mesh` argument (slug, any case, or mesh id).
pub fn named(links: &[Link], mesh: &str) -> Result<usize, String> {
    links
        .iter()
        .position(|l| l.slug.eq_ignore_ascii_case(mesh) || l.mesh_id == mesh)
        .ok_or_else(|| replies::not_in_mesh(mesh, &slugs(links)))
}

/// The meshes' slugs, comma-separated.
pub fn slugs(links: &[Link]) -> String {
    links
        .iter()
        .map(|l| l.slug.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The slugs of the meshes not connected right now.
pub fn down(links: &[Link]) -> Vec<&str> {
    links
        .iter()
        .filter(|l| !l.is_connected())
        .map(|l| l.slug.as_str())
        .collect()
}

/// Set `status` on every mesh, giving up on each after `wait`.
pub async fn set_status(links: &[Link], status: Status, wait: Duration) {
    for link in links {
        if tokio::time::timeout(wait, link.conn.set_status(status))
            .await
            .is_err()
        {
            tracing::warn!(mesh = %link.slug, "status update timed out");
        }
    }
}

/// Tell every mesh how a `now` message reaches this session.
pub async fn set_reach(links: &[Link], reach: Reach) {
    for link in links {
        let _ = link.conn.set_reach(reach).await;
    }
}

/// Leave every mesh on purpose (a close frame each, so peers hear `peer_left` at once);
/// gives up after `wait`.
pub async fn leave(links: &[Link], wait: Duration) {
    let close = async {
        for link in links {
            link.conn.close().await;
        }
        for link in links {
            link.conn.closed().await;
        }
    };
    let _ = tokio::time::timeout(wait, close).await;
}
