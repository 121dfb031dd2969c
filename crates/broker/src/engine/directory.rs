//! In-memory directory of meshes, members, known recipient identities and live
//! presences, loaded from the store at start and written through on every change.
//! Multicast recipient sets are computed here.

use std::collections::{BTreeMap, HashMap};

use claudemesh_proto::authority::PeerKind;
use claudemesh_proto::frames::{GroupRef, PresenceInfo, Status};
use claudemesh_store::{MemberRow, MeshRow, PeerRow, Store, StoreError};

use super::ConnId;
use super::cluster::Remote;
use super::delivery::Mailbox;
use crate::auth::Role;

/// All meshes by id, plus a slug index.
#[derive(Default)]
pub(super) struct Directory {
    pub meshes: HashMap<String, Mesh>,
    pub slugs: HashMap<String, String>,
}

pub(super) struct Mesh {
    pub row: MeshRow,
    pub members: HashMap<String, MemberRow>,
    /// Member pubkey → member id.
    pub member_by_key: HashMap<String, String>,
    /// Known recipient identities (member keys that connected, session keys) by key.
    pub peers: HashMap<String, PeerRow>,
    /// Presences by key: live, or within their grace period.
    pub presences: BTreeMap<String, Presence>,
    /// Other nodes' presences by key (several nodes on one database; see `cluster.rs`).
    pub remote: BTreeMap<String, Vec<Remote>>,
}

/// A peer's presence: owned by its key, attached to zero or more connections.
pub(super) struct Presence {
    pub key: String,
    pub member_id: String,
    pub member_pubkey: String,
    pub role: Role,
    pub info: PresenceInfo,
    pub display_name: String,
    pub status: Status,
    pub summary: Option<String>,
    pub groups: Vec<GroupRef>,
    pub connected_at: i64,
    /// Attached connections, newest last; deliveries go to the newest.
    pub conns: Vec<ConnId>,
    /// A fresh one (engine-wide) on every detach of the last connection and every restore,
    /// so a grace timer set for an earlier period is ignored.
    pub epoch: u64,
    /// Present while at least one connection is attached.
    pub mailbox: Option<Mailbox>,
}

impl Presence {
    pub fn target(&self) -> Option<ConnId> {
        self.conns.last().copied()
    }
}

impl Directory {
    pub fn load(store: &mut dyn Store) -> Result<Self, StoreError> {
        let mut dir = Directory::default();
        for row in store.load_meshes()? {
            dir.slugs.insert(row.slug.clone(), row.id.clone());
            dir.meshes.insert(row.id.clone(), Mesh::new(row));
        }
        for m in store.load_members()? {
            if let Some(mesh) = dir.meshes.get_mut(&m.mesh_id) {
                mesh.put_member(m);
            }
        }
        for p in store.load_peers()? {
            if let Some(mesh) = dir.meshes.get_mut(&p.mesh_id) {
                mesh.peers.insert(p.pubkey.clone(), p);
            }
        }
        Ok(dir)
    }

    pub fn mesh(&self, id: &str) -> Option<&Mesh> {
        self.meshes.get(id)
    }

    pub fn mesh_mut(&mut self, id: &str) -> Option<&mut Mesh> {
        self.meshes.get_mut(id)
    }
}

impl Mesh {
    pub fn new(row: MeshRow) -> Self {
        Self {
            row,
            members: HashMap::new(),
            member_by_key: HashMap::new(),
            peers: HashMap::new(),
            presences: BTreeMap::new(),
            remote: BTreeMap::new(),
        }
    }

    /// Cache a member row (new or changed), indexed by id and by key.
    pub fn put_member(&mut self, m: MemberRow) {
        self.member_by_key.insert(m.pubkey.clone(), m.id.clone());
        self.members.insert(m.id.clone(), m);
    }

    pub fn active_member(&self, id: &str) -> Option<&MemberRow> {
        self.members.get(id).filter(|m| m.removed.is_none())
    }

    pub fn member_by_key(&self, key: &str) -> Option<&MemberRow> {
        self.member_by_key
            .get(key)
            .and_then(|id| self.members.get(id))
    }

    /// Whether `key` may receive messages: an active member's key, or a session key of an
    /// active member that has not retired (see `sessions.rs`).
    pub fn is_recipient(&self, key: &str) -> bool {
        if self.member_by_key(key).is_some_and(|m| m.removed.is_none()) {
            return true;
        }
        self.peers.get(key).is_some_and(|p| {
            self.active_member(&p.member_id).is_some()
                && (self.presences.contains_key(key) || p.retired_at.is_none())
        })
    }

    /// Every identity a broadcast reaches (members and retained sessions), sender excluded.
    pub fn broadcast_recipients(&self, sender: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .members
            .values()
            .filter(|m| m.removed.is_none() && m.pubkey != sender)
            .map(|m| m.pubkey.clone())
            .collect();
        keys.extend(
            self.peers
                .values()
                .filter(|p| {
                    p.kind == PeerKind::Session
                        && p.pubkey != sender
                        && self.is_recipient(&p.pubkey)
                })
                .map(|p| p.pubkey.clone()),
        );
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Every identity in group `name` (live presences or persisted memberships), sender excluded.
    pub fn group_recipients(&self, name: &str, sender: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .peers
            .values()
            .filter(|p| p.pubkey != sender && self.is_recipient(&p.pubkey))
            .filter(|p| parse_groups(&p.groups_json).iter().any(|g| g.name == name))
            .map(|p| p.pubkey.clone())
            .collect();
        keys.extend(
            self.presences
                .values()
                .filter(|p| {
                    p.key != sender
                        && !p.conns.is_empty()
                        && p.groups.iter().any(|g| g.name == name)
                })
                .map(|p| p.key.clone()),
        );
        keys.extend(
            self.remote
                .iter()
                .filter(|(key, rows)| {
                    *key != sender
                        && rows
                            .iter()
                            .any(|r| r.live && r.data.groups.iter().any(|g| g.name == name))
                })
                .map(|(key, _)| key.clone()),
        );
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

pub(super) fn parse_groups(json: &str) -> Vec<GroupRef> {
    serde_json::from_str(json).unwrap_or_default()
}

pub(super) fn groups_json(groups: &[GroupRef]) -> String {
    serde_json::to_string(groups).unwrap_or_else(|_| "[]".to_owned())
}
