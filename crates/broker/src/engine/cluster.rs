//! Several broker nodes on one database (PostgreSQL): what each engine shares, and what
//! it does with what the others share. Each node keeps its own connections, mailboxes and
//! grace timers; what crosses nodes goes through the database, in the batch's transaction:
//!
//! - **Presence.** Every local presence change writes this node's row of the key
//!   (`presences`, `live` false during grace) and announces `p mesh key`; the other nodes
//!   read the row and keep it in their directory (`Mesh::remote`). A key is *present* while
//!   any node has a row of it; `peer_joined` / `peer_left` are announced on the transition
//!   of that, by every node to its own connections, so a session moving between nodes
//!   causes no flap. A live row for a key this node holds with the same session id means
//!   the session moved: the old connection here is closed (`session_replaced`) and its
//!   presence dropped without an event.
//! - **Nodes.** A heartbeat every [`HEARTBEAT_EVERY`]; a node silent for [`NODE_TIMEOUT`] is
//!   down (its presences are no longer listed), and one silent for that plus the grace
//!   period is reaped with its presences (`N node`), which ends them everywhere.
//! - **Delivery.** A delivery for a key with no mailbox here wakes the node that has one:
//!   `d mesh key:seq…`, sent whether or not this node believes the key is online elsewhere (a
//!   wake is cheap and that belief may be a moment old). Seqs increase in commit order
//!   across nodes (the store's seq lock, taken first in a batch that sends), and the wake
//!   carries them (`key:seq,…`): the woken mailbox loads what is new, and a seq below what
//!   it has already loaded (it pushed a later local delivery before hearing of this one)
//!   is loaded by a rescan that skips what the window holds.
//! - **Catching up.** Each time the listener starts listening the engine re-reads every
//!   shared row and applies the difference as the missed notifications would have. A
//!   rebuild after a failed commit deletes all of this node's presence rows (`N node`).
//! - **Directory rows.** A mesh created (`M`), a member joined or removed (`m`), an identity
//!   first seen, regrouped or retired (`i`): the others re-read the row. A removed member's
//!   connections on every node close at once (4001 / 4002).
//!
//! Notifications carry ids only and leave with the batch's commit (`pg_notify` inside the
//! transaction), so nothing is announced that did not happen. The listener that receives
//! them is `crate::cluster`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use claudemesh_proto::codes::close;
use claudemesh_proto::frames::{GroupRef, PeerInfo, PresenceInfo, Reach, Status, event};
use claudemesh_proto::time::{iso8601, now_ms};
use claudemesh_store::{MemberRow, MeshRow, NodeRow, PeerRow, PresenceRow};
use serde::{Deserialize, Serialize};

use super::directory::{Mesh, Presence};
use super::{Effect, Engine, TimerKind};

/// How often a node refreshes its heartbeat and looks for dead nodes.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A node silent this long is down: its presences stop being listed (and are reaped once
/// the grace period has passed too).
pub const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of one notification payload (PostgreSQL allows 8 000).
const MAX_PAYLOAD: usize = 7_900;

/// This engine's part in a cluster (absent on a store only one broker can use).
pub(crate) struct ClusterState {
    pub node_id: i64,
    name: String,
    /// Last heartbeat of every node, this one included, by the database's clock (ms).
    nodes: HashMap<i64, i64>,
    /// The database's clock minus this machine's, as of the last heartbeat.
    db_offset: i64,
    /// Every node's row as of the last heartbeat (names and figures, for operators),
    /// and as of the one before (for rates).
    pub rows: Vec<NodeRow>,
    pub prev_rows: Vec<NodeRow>,
    /// Notification lines for the open batch, sent just before it commits.
    outbox: Vec<String>,
    /// Keys with no mailbox here that got deliveries in this batch (their seqs), by mesh.
    wake: BTreeMap<String, BTreeMap<String, Vec<i64>>>,
}

/// A presence as the `presences` table's `data` holds it: what another node needs to list
/// the peer, restore it on a hello there, and announce it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PresenceData {
    pub member_id: String,
    pub member_pubkey: String,
    pub role: String,
    pub display_name: String,
    pub status: Status,
    pub summary: Option<String>,
    pub groups: Vec<GroupRef>,
    pub info: PresenceInfo,
    pub connected_at: i64,
}

impl PresenceData {
    pub fn of(p: &Presence) -> Self {
        Self {
            member_id: p.member_id.clone(),
            member_pubkey: p.member_pubkey.clone(),
            role: p.role.as_str().to_owned(),
            display_name: p.display_name.clone(),
            status: p.status,
            summary: p.summary.clone(),
            groups: p.groups.clone(),
            info: p.info.clone(),
            connected_at: p.connected_at,
        }
    }

    /// The `list_peers` entry for `key`.
    pub fn peer_info(&self, key: &str, v1_only: bool) -> PeerInfo {
        PeerInfo {
            pubkey: key.to_owned(),
            member_pubkey: self.member_pubkey.clone(),
            display_name: self.display_name.clone(),
            status: self.status,
            summary: self.summary.clone(),
            groups: self.groups.clone(),
            session_id: self.info.session_id.clone(),
            connected_at: iso8601(self.connected_at),
            cwd: self.info.cwd.clone(),
            role: self.role.clone(),
            peer_role: self.role.clone(),
            hostname: self.info.hostname.clone(),
            peer_type: self.info.peer_type.clone(),
            channel: self.info.channel.clone(),
            model: self.info.model.clone(),
            reach: (!v1_only).then(|| self.info.reach.unwrap_or(Reach::Live)),
        }
    }
}

/// Another node's presence of a key.
pub(super) struct Remote {
    pub node: i64,
    pub live: bool,
    pub data: PresenceData,
}

/// What another node announced, with the row it names as the listener read it.
#[derive(Debug)]
pub enum ClusterEvent {
    /// A node's presence of a key changed (`None`: it is gone).
    Presence {
        node: i64,
        mesh_id: String,
        key: String,
        row: Option<PresenceRow>,
    },
    /// A node was reaped, with all its presences.
    NodeGone(i64),
    /// Deliveries were committed for these keys, with their seqs.
    Wake {
        mesh_id: String,
        keys: Vec<(String, Vec<i64>)>,
    },
    Mesh(MeshRow),
    Member(MemberRow),
    Peer(PeerRow),
    /// The listener lost notifications (it reconnected): re-read everything shared.
    Resync,
}

/// One line of a notification payload: `kind args…` (ids have no spaces).
pub(crate) fn parse_line(line: &str) -> Option<(&str, Vec<&str>)> {
    let mut words = line.split(' ');
    let kind = words.next().filter(|k| !k.is_empty())?;
    Some((kind, words.collect()))
}

impl ClusterState {
    pub fn new(node_id: i64, name: &str) -> Self {
        Self {
            node_id,
            name: name.to_owned(),
            nodes: HashMap::new(),
            db_offset: 0,
            outbox: Vec::new(),
            wake: BTreeMap::new(),
            rows: Vec::new(),
            prev_rows: Vec::new(),
        }
    }

    /// Now by the database's clock (as of the last heartbeat's reading of it).
    fn db_now(&self) -> i64 {
        now_ms() + self.db_offset
    }

    /// Whether `node` has been heard from within [`NODE_TIMEOUT`].
    pub fn is_up(&self, node: i64) -> bool {
        let now = self.db_now();
        self.nodes
            .get(&node)
            .is_some_and(|seen| now - seen < NODE_TIMEOUT.as_millis() as i64)
    }

    /// The nodes up now, for `/health`.
    pub fn nodes_up(&self) -> usize {
        self.nodes.keys().filter(|n| self.is_up(**n)).count()
    }
}

impl Mesh {
    /// Whether another node holds a presence of `key` (live or in its grace period).
    pub fn held_elsewhere(&self, key: &str) -> bool {
        self.remote.get(key).is_some_and(|r| !r.is_empty())
    }

    /// Whether `key` is present anywhere (here or on another node).
    pub fn present(&self, key: &str) -> bool {
        self.presences.contains_key(key) || self.held_elsewhere(key)
    }
}

impl Engine {
    /// Join the cluster at start: record this node, read every other node's presences.
    pub(super) fn join_cluster(
        &mut self,
        node_name: &str,
    ) -> Result<(), claudemesh_store::StoreError> {
        let Some(cluster) = self.store.cluster() else {
            return Ok(());
        };
        let node_id =
            i64::from(rand::random::<u32>()) << 31 | i64::from(rand::random::<u32>() >> 1);
        let now = now_ms();
        cluster.register_node(&NodeRow {
            id: node_id,
            name: node_name.to_owned(),
            started_at: now,
            seen_at: now,
            figures: String::new(),
        })?;
        let rows = cluster.presences()?;
        let (nodes, db_now) = cluster.heartbeat(node_id, "")?;
        self.store.commit()?;
        let mut state = ClusterState::new(node_id, node_name);
        state.nodes = nodes.iter().map(|n| (n.id, n.seen_at)).collect();
        state.rows = nodes;
        state.db_offset = db_now - now_ms();
        self.cluster = Some(state);
        for row in rows.into_iter().filter(|r| r.node_id != node_id) {
            self.cache_remote(row);
        }
        self.timer(Instant::now() + HEARTBEAT_EVERY, TimerKind::Heartbeat);
        tracing::info!(node_id, node = node_name, "joined the cluster");
        Ok(())
    }

    /// This node's id in the cluster, if it is in one.
    pub(super) fn node_id(&self) -> Option<i64> {
        self.cluster.as_ref().map(|c| c.node_id)
    }

    /// Queue a notification line for the open batch.
    fn note(&mut self, line: String) {
        if let Some(c) = self.cluster.as_mut() {
            c.outbox.push(line);
        }
    }

    pub(super) fn note_mesh(&mut self, mesh_id: &str) {
        self.note(format!("M {mesh_id}"));
    }

    pub(super) fn note_member(&mut self, mesh_id: &str, member_id: &str) {
        self.note(format!("m {mesh_id} {member_id}"));
    }

    pub(super) fn note_peer(&mut self, mesh_id: &str, key: &str) {
        self.note(format!("i {mesh_id} {key}"));
    }

    /// A delivery (`seq`) for `key`, which has no mailbox here.
    pub(super) fn wake_elsewhere(&mut self, mesh_id: &str, key: &str, seq: i64) {
        if let Some(c) = self.cluster.as_mut() {
            c.wake
                .entry(mesh_id.to_owned())
                .or_default()
                .entry(key.to_owned())
                .or_default()
                .push(seq);
        }
    }

    /// Write this node's row of `key` as the local presence now is (or delete it when
    /// there is none), and announce it.
    pub(super) fn publish(&mut self, mesh_id: &str, key: &str) {
        self.mesh_changed(mesh_id);
        let Some(node_id) = self.node_id() else {
            return;
        };
        let row = self
            .dir
            .mesh(mesh_id)
            .and_then(|m| m.presences.get(key))
            .map(|p| PresenceRow {
                mesh_id: mesh_id.to_owned(),
                pubkey: key.to_owned(),
                node_id,
                session_id: p.info.session_id.clone(),
                live: !p.conns.is_empty(),
                data: serde_json::to_string(&PresenceData::of(p)).unwrap_or_default(),
                updated_at: now_ms(),
            });
        let Some(cluster) = self.store.cluster() else {
            return;
        };
        let written = match &row {
            Some(row) => cluster.put_presence(row),
            None => cluster.drop_presence(mesh_id, key, node_id).map(|_| ()),
        };
        match written {
            Ok(()) => self.note(format!("p {mesh_id} {key}")),
            Err(e) => self.poison(&e),
        }
    }

    /// Before any command of a batch: delete this node's presence rows if a rebuild
    /// dropped its presences, and take the seq lock first if the batch sends (see
    /// [`claudemesh_store::Cluster::lock_seqs`]).
    pub(super) fn begin_batch(&mut self, batch: &[super::Command]) {
        let Some(node_id) = self.node_id() else {
            return;
        };
        if self.stale {
            return;
        }
        let sends = batch.iter().any(|c| {
            matches!(
                c,
                super::Command::Request {
                    request: super::Request::Send(_),
                    ..
                }
            )
        });
        let reset = self.reset_presences;
        let Some(cluster) = self.store.cluster() else {
            return;
        };
        let done = (|| {
            if reset {
                cluster.drop_node_presences(node_id)?;
            }
            if sends {
                cluster.lock_seqs()?;
            }
            Ok::<_, claudemesh_store::StoreError>(())
        })();
        match done {
            Ok(()) if reset => {
                self.reset_in_batch = true;
                // The others drop every row of this node (re-sent rows follow).
                self.note(format!("N {node_id}"));
            }
            Ok(()) => {}
            Err(e) => self.poison(&e),
        }
    }

    /// Send the batch's notifications (inside its transaction, so they leave with the
    /// commit), packed into as few payloads as fit.
    pub(super) fn flush_cluster(&mut self) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let mut lines = std::mem::take(&mut c.outbox);
        for (mesh, keys) in std::mem::take(&mut c.wake) {
            // Several lines per mesh when its keys do not fit one payload.
            let mut line = format!("d {mesh}");
            for (key, seqs) in keys {
                let seqs: Vec<String> = seqs.iter().map(i64::to_string).collect();
                let word = format!("{key}:{}", seqs.join(","));
                if line.len() + word.len() + 1 > MAX_PAYLOAD / 2 {
                    lines.push(std::mem::replace(&mut line, format!("d {mesh}")));
                }
                line.push(' ');
                line.push_str(&word);
            }
            lines.push(line);
        }
        if lines.is_empty() {
            return;
        }
        let header = c.node_id.to_string();
        let mut payload = header.clone();
        let mut payloads = Vec::new();
        for line in lines {
            if payload.len() + line.len() + 1 > MAX_PAYLOAD {
                payloads.push(std::mem::replace(&mut payload, header.clone()));
            }
            payload.push('\n');
            payload.push_str(&line);
        }
        payloads.push(payload);
        for p in payloads {
            let sent = match self.store.cluster() {
                Some(cluster) => cluster.notify(&p),
                None => Ok(()),
            };
            if let Err(e) = sent {
                self.poison(&e);
            }
        }
    }

    /// The heartbeat: refresh this node's, learn the others', reap the dead.
    pub(super) fn heartbeat(&mut self) {
        let Some(node_id) = self.node_id() else {
            return;
        };
        self.timer(Instant::now() + HEARTBEAT_EVERY, TimerKind::Heartbeat);
        if self.stale {
            // The reload will find out what changed; a failing write here would only fail
            // the batch again.
            return;
        }
        let now = now_ms();
        let silent =
            i64::try_from((NODE_TIMEOUT + self.timings.grace).as_millis()).unwrap_or(i64::MAX);
        let figures = serde_json::to_string(&crate::figures::Sample::take(&self.metrics, None))
            .unwrap_or_default();
        let Some(cluster) = self.store.cluster() else {
            return;
        };
        let result = cluster.heartbeat(node_id, &figures).and_then(|nodes| {
            let reaped = cluster.reap_nodes(silent)?;
            Ok((nodes, reaped))
        });
        let ((nodes, db_now), reaped) = match result {
            Ok(r) => r,
            Err(e) => return self.poison(&e),
        };
        if !nodes.iter().any(|n| n.id == node_id) {
            // This node was silent so long that another reaped it: record it again, with
            // its presences.
            tracing::warn!(node_id, "this node had been reaped; rejoining");
            let row = NodeRow {
                id: node_id,
                name: self
                    .cluster
                    .as_ref()
                    .map(|c| c.name.clone())
                    .unwrap_or_default(),
                started_at: now,
                seen_at: db_now,
                figures,
            };
            if let Some(Err(e)) = self.store.cluster().map(|c| c.register_node(&row)) {
                return self.poison(&e);
            }
            let keys: Vec<(String, String)> = self
                .dir
                .meshes
                .iter()
                .flat_map(|(id, m)| m.presences.keys().map(move |k| (id.clone(), k.clone())))
                .collect();
            for (mesh, key) in keys {
                self.publish(&mesh, &key);
            }
        }
        if let Some(c) = self.cluster.as_mut() {
            c.nodes = nodes.iter().map(|n| (n.id, n.seen_at)).collect();
            c.prev_rows = std::mem::replace(&mut c.rows, nodes);
            c.db_offset = db_now - now_ms();
        }
        for node in reaped.into_iter().filter(|n| *n != node_id) {
            tracing::info!(node, "reaped a node that stopped; its presences end");
            self.note(format!("N {node}"));
            self.node_gone(node);
        }
    }

    /// Apply what another node announced.
    pub(super) fn on_cluster(&mut self, ev: ClusterEvent) {
        match ev {
            ClusterEvent::Presence {
                node,
                mesh_id,
                key,
                row,
            } => self.remote_presence(node, &mesh_id, &key, row),
            ClusterEvent::NodeGone(node) => self.node_gone(node),
            ClusterEvent::Wake { mesh_id, keys } => {
                for (key, _seqs) in keys {
                    let has_mailbox = self
                        .dir
                        .mesh_mut(&mesh_id)
                        .and_then(|m| m.presences.get_mut(&key))
                        .and_then(|p| p.mailbox.as_mut())
                        .map(|mb| mb.arrived())
                        .is_some();
                    if has_mailbox {
                        self.pump(&mesh_id, &key);
                    }
                }
            }
            ClusterEvent::Mesh(row) => {
                if !self.dir.meshes.contains_key(&row.id) {
                    self.dir.slugs.insert(row.slug.clone(), row.id.clone());
                    self.dir.meshes.insert(row.id.clone(), Mesh::new(row));
                }
            }
            ClusterEvent::Member(row) => self.remote_member(row),
            ClusterEvent::Peer(row) => {
                if let Some(mesh) = self.dir.mesh_mut(&row.mesh_id) {
                    mesh.peers.insert(row.pubkey.clone(), row);
                }
            }
            ClusterEvent::Resync => self.resync(),
        }
    }

    /// On a shared database a mesh or member this node has not heard of may have been
    /// created by another node a moment ago (its notification still on the way): read it
    /// before deciding. One indexed read, and only on a miss.
    pub(super) fn read_through(&mut self, mesh_id: &str, member_id: Option<&str>) {
        if self.cluster.is_none() {
            return;
        }
        let mesh = self.dir.mesh(mesh_id);
        let known_mesh = mesh.is_some();
        let known_member =
            member_id.is_none_or(|m| mesh.is_some_and(|x| x.members.contains_key(m)));
        if known_mesh && known_member {
            return;
        }
        let Some(c) = self.store.cluster() else {
            return;
        };
        if !known_mesh {
            let read = c.mesh(mesh_id).and_then(|row| match row {
                Some(row) => Ok(Some((row, c.mesh_members(mesh_id)?))),
                None => Ok(None),
            });
            match read {
                Ok(Some((row, (members, peers)))) => {
                    let mut m = Mesh::new(row);
                    for member in members {
                        m.put_member(member);
                    }
                    for peer in peers {
                        m.peers.insert(peer.pubkey.clone(), peer);
                    }
                    self.dir.slugs.insert(m.row.slug.clone(), m.row.id.clone());
                    self.dir.meshes.insert(mesh_id.to_owned(), m);
                }
                Ok(None) => {}
                Err(e) => self.poison(&e),
            }
        } else if let Some(member_id) = member_id {
            match c.member(mesh_id, member_id) {
                Ok(Some(row)) => {
                    if let Some(m) = self.dir.mesh_mut(mesh_id) {
                        m.put_member(row);
                    }
                }
                Ok(None) => {}
                Err(e) => self.poison(&e),
            }
        }
    }

    /// The same for a member known by its key (a join retried through another node must
    /// find the member the first join made, not insert a second one).
    pub(super) fn read_through_key(&mut self, mesh_id: &str, pubkey: &str) {
        if self.cluster.is_none()
            || self
                .dir
                .mesh(mesh_id)
                .is_none_or(|m| m.member_by_key.contains_key(pubkey))
        {
            return;
        }
        let Some(c) = self.store.cluster() else {
            return;
        };
        match c.member_by_key(mesh_id, pubkey) {
            Ok(Some(row)) => {
                if let Some(m) = self.dir.mesh_mut(mesh_id) {
                    m.put_member(row);
                }
            }
            Ok(None) => {}
            Err(e) => self.poison(&e),
        }
    }

    /// Keep another node's row in the directory (no events).
    pub(super) fn cache_remote(&mut self, row: PresenceRow) {
        let Ok(data) = serde_json::from_str::<PresenceData>(&row.data) else {
            tracing::warn!(mesh = %row.mesh_id, "unreadable presence row from another node");
            return;
        };
        let Some(mesh) = self.dir.mesh_mut(&row.mesh_id) else {
            return;
        };
        let rows = mesh.remote.entry(row.pubkey.clone()).or_default();
        rows.retain(|r| r.node != row.node_id);
        rows.push(Remote {
            node: row.node_id,
            live: row.live,
            data,
        });
    }

    /// Forget another node's row of `key`; what it said, if there was one.
    fn uncache_remote(&mut self, mesh_id: &str, key: &str, node: i64) -> Option<PresenceData> {
        let mesh = self.dir.mesh_mut(mesh_id)?;
        let rows = mesh.remote.get_mut(key)?;
        let at = rows.iter().position(|r| r.node == node)?;
        let gone = rows.remove(at);
        if rows.is_empty() {
            mesh.remote.remove(key);
        }
        Some(gone.data)
    }

    fn remote_presence(&mut self, node: i64, mesh_id: &str, key: &str, row: Option<PresenceRow>) {
        self.mesh_changed(mesh_id);
        let Some(before) = self.dir.mesh(mesh_id).map(|m| m.present(key)) else {
            return;
        };
        let old = self.uncache_remote(mesh_id, key, node);
        let moved_session = row
            .as_ref()
            .filter(|r| r.live)
            .map(|r| r.session_id.clone());
        if let Some(row) = row {
            self.cache_remote(row);
        }
        if let Some(session) = moved_session {
            self.moved_away(mesh_id, key, &session);
        }
        let Some(mesh) = self.dir.mesh(mesh_id) else {
            return;
        };
        let after = mesh.present(key);
        if !before && after {
            let ev = if mesh.peers.contains_key(key) {
                event::PEER_RETURNED
            } else {
                event::PEER_JOINED
            };
            let data = mesh
                .remote
                .get(key)
                .and_then(|r| r.last())
                .map(|r| r.data.clone());
            if let Some(d) = data {
                self.announce(mesh_id, key, ev, &d.display_name, &d.groups);
            }
        } else if before
            && !after
            && let Some(d) = old
        {
            self.announce(mesh_id, key, event::PEER_LEFT, &d.display_name, &d.groups);
        }
    }

    /// The session `session` of `key` is live on another node now: close its connections
    /// here (replaced) and, if nothing of the key is left here, drop the local presence
    /// without an event (the key is still present, there).
    fn moved_away(&mut self, mesh_id: &str, key: &str, session: &str) {
        let replaced: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, e)| e.mesh_id == mesh_id && e.key == key && e.session_id == session)
            .map(|(id, _)| *id)
            .collect();
        for id in &replaced {
            if let Some(entry) = self.conns.remove(id) {
                self.metrics.connections_active.dec();
                self.effects.push(Effect::Close {
                    kill: entry.handle.kill,
                    code: close::NORMAL,
                    reason: "session_replaced".into(),
                });
            }
        }
        let Some(mesh) = self.dir.mesh_mut(mesh_id) else {
            return;
        };
        let Some(p) = mesh.presences.get_mut(key) else {
            return;
        };
        p.conns.retain(|c| !replaced.contains(c));
        if p.conns.is_empty() {
            mesh.presences.remove(key);
            self.publish(mesh_id, key);
        } else if !replaced.is_empty() {
            self.publish(mesh_id, key);
        }
    }

    /// A node was reaped: its presences end (announced where nothing else holds the key).
    fn node_gone(&mut self, node: i64) {
        let held: Vec<(String, String)> = self
            .dir
            .meshes
            .iter()
            .flat_map(|(id, m)| {
                m.remote
                    .iter()
                    .filter(|(_, rows)| rows.iter().any(|r| r.node == node))
                    .map(move |(k, _)| (id.clone(), k.clone()))
            })
            .collect();
        for (mesh, key) in held {
            self.remote_presence(node, &mesh, &key, None);
        }
        if let Some(c) = self.cluster.as_mut() {
            c.nodes.remove(&node);
        }
    }

    /// Another node changed a member (joined, kicked, revoked).
    fn remote_member(&mut self, row: MemberRow) {
        let mesh_id = row.mesh_id.clone();
        let removed = row.removed;
        let Some(mesh) = self.dir.mesh_mut(&mesh_id) else {
            return;
        };
        let member_id = row.id.clone();
        mesh.put_member(row);
        if let Some(removal) = removed {
            self.close_member(&mesh_id, &member_id, removal);
        }
    }

    /// Re-read everything shared after notifications may have been lost.
    fn resync(&mut self) {
        let Some(node_id) = self.node_id() else {
            return;
        };
        let loaded = super::directory::Directory::load(self.store.as_mut()).and_then(|dir| {
            let rows = self.store.cluster().map(|c| c.presences()).transpose()?;
            Ok((dir, rows.unwrap_or_default()))
        });
        let (fresh, rows) = match loaded {
            Ok(x) => x,
            Err(e) => return self.poison(&e),
        };
        for (id, mut mesh) in fresh.meshes {
            match self.dir.meshes.get_mut(&id) {
                Some(have) => {
                    have.row = mesh.row;
                    have.members = std::mem::take(&mut mesh.members);
                    have.member_by_key = std::mem::take(&mut mesh.member_by_key);
                    have.peers = std::mem::take(&mut mesh.peers);
                }
                None => {
                    self.dir.slugs.insert(mesh.row.slug.clone(), id.clone());
                    self.dir.meshes.insert(id, mesh);
                }
            }
        }
        // What the lost notifications would have done: removed members' connections close…
        let removed: Vec<(String, String, claudemesh_proto::authority::Removal)> = self
            .dir
            .meshes
            .iter()
            .flat_map(|(id, m)| {
                m.members
                    .values()
                    .filter_map(|mm| mm.removed.map(|r| (id.clone(), mm.id.clone(), r)))
            })
            .collect();
        for (mesh, member, removal) in removed {
            self.close_member(&mesh, &member, removal);
        }
        // …and presences that came, went or changed are applied as if announced.
        let rows: Vec<PresenceRow> = rows.into_iter().filter(|r| r.node_id != node_id).collect();
        let now: BTreeSet<(&str, &str, i64)> = rows
            .iter()
            .map(|r| (r.mesh_id.as_str(), r.pubkey.as_str(), r.node_id))
            .collect();
        let gone: Vec<(String, String, i64)> = self
            .dir
            .meshes
            .iter()
            .flat_map(|(id, m)| {
                m.remote.iter().flat_map(move |(k, rs)| {
                    rs.iter().map(move |r| (id.clone(), k.clone(), r.node))
                })
            })
            .filter(|(m, k, n)| !now.contains(&(m.as_str(), k.as_str(), *n)))
            .collect();
        for (mesh, key, node) in gone {
            self.remote_presence(node, &mesh, &key, None);
        }
        for row in rows {
            let (node, mesh, key) = (row.node_id, row.mesh_id.clone(), row.pubkey.clone());
            self.remote_presence(node, &mesh, &key, Some(row));
        }
        // Wakes may have been lost too: every local mailbox rescans the database.
        let mut rescanned = Vec::new();
        for (id, mesh) in &mut self.dir.meshes {
            for (key, p) in &mut mesh.presences {
                if let Some(mb) = p.mailbox.as_mut() {
                    mb.rescan();
                    rescanned.push((id.clone(), key.clone()));
                }
            }
        }
        for (mesh, key) in rescanned {
            self.pump(&mesh, &key);
        }
        tracing::info!("re-read the shared state (listening again)");
    }

    /// Live presences of other nodes in a mesh that this node does not hold itself, for
    /// `list_peers`.
    pub(super) fn remote_peers(&self, mesh: &Mesh) -> Vec<PeerInfo> {
        let Some(c) = self.cluster.as_ref() else {
            return Vec::new();
        };
        mesh.remote
            .iter()
            .filter(|(key, _)| mesh.presences.get(*key).is_none_or(|p| p.conns.is_empty()))
            .filter_map(|(key, rows)| {
                rows.iter()
                    .filter(|r| r.live && c.is_up(r.node))
                    .max_by_key(|r| r.data.connected_at)
                    .map(|r| r.data.peer_info(key, self.v1_only))
            })
            .collect()
    }

    /// Whether another node holds a live presence of `key` (for `list_members`).
    pub(super) fn live_elsewhere(&self, mesh: &Mesh, key: &str) -> Option<Reach> {
        let c = self.cluster.as_ref()?;
        mesh.remote
            .get(key)?
            .iter()
            .find(|r| r.live && c.is_up(r.node))
            .map(|r| r.data.info.reach.unwrap_or(Reach::Live))
    }

    /// Nodes up now (this one included), for `/health`.
    pub(super) fn nodes_up(&self) -> Option<usize> {
        self.cluster.as_ref().map(ClusterState::nodes_up)
    }

    /// Every node on the database with its figures as of its last heartbeat (empty on
    /// a store only one broker uses).
    pub(super) fn node_lines(&self) -> Vec<super::dashboard::NodeLine> {
        use crate::figures::{Rates, Sample};
        let Some(c) = self.cluster.as_ref() else {
            return Vec::new();
        };
        let sample = |r: &NodeRow| serde_json::from_str::<Sample>(&r.figures).ok();
        let mut lines: Vec<_> = c
            .rows
            .iter()
            .map(|r| {
                let figures = sample(r);
                let before = c.prev_rows.iter().find(|p| p.id == r.id).and_then(sample);
                super::dashboard::NodeLine {
                    name: r.name.clone(),
                    this: r.id == c.node_id,
                    up: c.is_up(r.id),
                    seen_secs_ago: (c.db_now() - r.seen_at).max(0) / 1_000,
                    rates: figures
                        .zip(before)
                        .filter(|(f, b)| f.at_ms > b.at_ms)
                        .map(|(f, b)| Rates::between(&b, &f)),
                    figures,
                }
            })
            .collect();
        lines.sort_by(|a, b| a.name.cmp(&b.name));
        lines
    }
}
