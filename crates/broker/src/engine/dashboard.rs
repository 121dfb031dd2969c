//! What the dashboard reads from the engine: one mesh's members and live peers, built
//! by the same code that answers `list_members` and `list_peers`, with each identity's
//! queue depth, the mesh's recent traffic (`traffic.rs`) and, for owners and admins, its
//! invites; for a viewer whose standing is checked on every read (a removed member's
//! dashboard stops at once); and the [`Change`]s it follows, sent after the batch that
//! made them commits.

use std::collections::HashMap;

use claudemesh_proto::codes::Code;
use claudemesh_proto::frames::{MemberInfo, PeerInfo};
use claudemesh_proto::invite::InviteRole;
use claudemesh_proto::time::{iso8601, now_ms};
use serde::Serialize;
use tokio::sync::broadcast;

use super::Engine;
use super::admin::{Standing, standing};
use super::traffic::MessageView;
use crate::refusal::Refusal;

/// Changes waiting for a slow dashboard before it must re-read everything (`Lagged`).
pub const CHANGES_CAPACITY: usize = 1_024;

/// Something a dashboard showing this mesh should re-read for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Presence, status, summary or membership in the mesh changed.
    Mesh(String),
    /// A member was kicked or revoked: its dashboard sessions end.
    Removed { mesh_id: String, member_id: String },
}

/// Who reads a mesh's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewAs {
    /// A member (or owner) key: its standing in the mesh decides what it may do.
    Key(String),
    /// An operator account (its name and `created_at`): every mesh, read only.
    Operator(String, i64),
}

/// Every mesh in a line, for operators.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshLine {
    pub mesh_id: String,
    pub slug: String,
    pub name: String,
    pub members: usize,
    pub online: usize,
}

/// One broker node on the database, as its last heartbeat described it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeLine {
    pub name: String,
    /// The node answering this page.
    pub this: bool,
    pub up: bool,
    pub seen_secs_ago: i64,
    pub figures: Option<crate::figures::Sample>,
    /// Between its last two heartbeats.
    pub rates: Option<crate::figures::Rates>,
}

/// The broker as operators see it (this node's live figures come from `figures.rs`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    pub meshes: Vec<MeshLine>,
    pub members: usize,
    /// Nodes sharing the database that sent a heartbeat lately (None on SQLite).
    pub nodes_up: Option<usize>,
    /// Every node on the database (empty on SQLite, where this one is the whole broker).
    pub nodes: Vec<NodeLine>,
}

/// One mesh as a signed-in viewer sees it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshView {
    pub mesh_id: String,
    pub slug: String,
    pub name: String,
    /// `owner`, `admin`, `member` or `operator`: what the viewer may do on the page.
    pub standing: &'static str,
    pub viewer_member_id: String,
    pub viewer_name: String,
    pub peers: Vec<PeerInfo>,
    pub members: Vec<MemberView>,
    /// Recent messages, newest first (metadata only).
    pub traffic: Vec<MessageView>,
    /// The mesh's invites, for owners and admins (who may revoke them); else empty.
    pub invites: Vec<InviteView>,
}

/// A member or session identity, with what waits for it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    #[serde(flatten)]
    pub info: MemberInfo,
    /// When the member joined (ISO 8601); absent for a session identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joined_at: Option<String>,
    /// Unacked, unexpired deliveries waiting for this identity.
    pub queued: i64,
}

/// An invite as the page lists it (its link is not here: only the signer had it).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InviteView {
    pub invite_id: String,
    pub role: InviteRole,
    pub uses: u32,
    /// 0 = unlimited.
    pub max_uses: u32,
    pub expires_at: String,
    /// `usable`, `used up`, `expired` or `revoked`.
    pub state: &'static str,
}

impl Standing {
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Member => "member",
            Standing::Admin => "admin",
            Standing::Owner => "owner",
        }
    }
}

/// The changes a batch made, sent once it commits.
#[derive(Debug)]
pub(super) struct Changes {
    tx: broadcast::Sender<Change>,
    pending: Vec<Change>,
}

impl Changes {
    pub fn new(tx: broadcast::Sender<Change>) -> Self {
        Self {
            tx,
            pending: Vec::new(),
        }
    }

    /// Note a change (nothing is kept when no dashboard is open).
    pub fn note(&mut self, change: Change) {
        if self.tx.receiver_count() > 0 && !self.pending.contains(&change) {
            self.pending.push(change);
        }
    }

    /// After the commit: send (or, if it failed, forget) what the batch noted.
    pub fn finish(&mut self, committed: bool) {
        for change in self.pending.drain(..) {
            if committed {
                let _ = self.tx.send(change);
            }
        }
    }
}

impl Engine {
    /// Tell open dashboards of this mesh to re-read it (after the commit).
    pub(super) fn mesh_changed(&mut self, mesh_id: &str) {
        self.changes.note(Change::Mesh(mesh_id.to_owned()));
    }

    /// An operator account, read now: a removed account's sessions stop at their next
    /// read.
    pub(super) fn operator_account(&mut self, name: &str) -> Option<claudemesh_store::OperatorRow> {
        self.store
            .operator(name)
            .inspect_err(|e| tracing::warn!(error = %e, "reading an operator account failed"))
            .ok()
            .flatten()
    }

    /// Every mesh in a line, for operators.
    pub(super) fn overview(&self) -> Overview {
        let mut meshes: Vec<MeshLine> = self
            .dir
            .meshes
            .values()
            .map(|m| MeshLine {
                mesh_id: m.row.id.clone(),
                slug: m.row.slug.clone(),
                name: m.row.name.clone(),
                members: m.members.values().filter(|m| m.removed.is_none()).count(),
                online: self.peer_infos(m).len(),
            })
            .collect();
        meshes.sort_by(|a, b| a.slug.cmp(&b.slug));
        Overview {
            members: meshes.iter().map(|m| m.members).sum(),
            meshes,
            nodes_up: self.nodes_up(),
            nodes: self.node_lines(),
        }
    }

    /// The mesh as `viewer` sees it, or why it may not. Reading it keeps the mesh's
    /// traffic recorded (see `traffic.rs`).
    pub(super) fn mesh_view(
        &mut self,
        mesh_id: &str,
        viewer: &ViewAs,
    ) -> Result<MeshView, Refusal> {
        self.read_through(mesh_id, None);
        let refused = || Refusal::new(Code::Unauthorized, "not a member of this mesh any more");
        let (standing, key) = match viewer {
            ViewAs::Key(key) => (
                Some(
                    standing(self.dir.mesh(mesh_id).ok_or_else(refused)?, key)
                        .ok_or_else(refused)?,
                ),
                key.as_str(),
            ),
            ViewAs::Operator(name, since) => {
                self.operator_account(name)
                    .filter(|o| o.password_hash.is_some() && o.created_at == *since)
                    .ok_or_else(|| Refusal::new(Code::Unauthorized, "this account was removed"))?;
                self.dir
                    .mesh(mesh_id)
                    .ok_or_else(|| Refusal::new(Code::MeshNotFound, "no such mesh"))?;
                (None, "")
            }
        };
        self.watch_traffic(mesh_id);
        let traffic = self.traffic_view(mesh_id);
        let now = now_ms();
        // Reads only: a failure shows as an empty list and never fails the batch.
        let depths: HashMap<String, i64> = self
            .store
            .queue_depths(mesh_id, now)
            .inspect_err(|e| tracing::warn!(error = %e, "reading queue depths failed"))
            .unwrap_or_default()
            .into_iter()
            .collect();
        let invites = if standing >= Some(Standing::Admin) {
            self.store
                .invites(mesh_id)
                .inspect_err(|e| tracing::warn!(error = %e, "reading invites failed"))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let mesh = self.dir.mesh(mesh_id).ok_or_else(refused)?;
        let me = mesh.member_by_key(key);
        let members = self
            .member_infos(mesh)
            .into_iter()
            .map(|info| MemberView {
                joined_at: (info.kind == "member")
                    .then(|| mesh.members.get(&info.member_id))
                    .flatten()
                    .map(|m| iso8601(m.joined_at)),
                queued: depths.get(&info.pubkey).copied().unwrap_or(0),
                info,
            })
            .collect();
        let now_s = now / 1_000;
        let mut invites: Vec<InviteView> = invites
            .into_iter()
            .map(|r| InviteView {
                state: if r.revoked {
                    "revoked"
                } else if r.expires_at <= now_s {
                    "expired"
                } else if r.max_uses != 0 && r.uses >= r.max_uses {
                    "used up"
                } else {
                    "usable"
                },
                invite_id: r.id,
                role: r.role,
                uses: r.uses,
                max_uses: r.max_uses,
                expires_at: iso8601(r.expires_at.saturating_mul(1_000)),
            })
            .collect();
        invites.sort_by_key(|i| i.state != "usable");
        Ok(MeshView {
            mesh_id: mesh.row.id.clone(),
            slug: mesh.row.slug.clone(),
            name: mesh.row.name.clone(),
            standing: standing.map_or("operator", Standing::as_str),
            viewer_member_id: me.map(|m| m.id.clone()).unwrap_or_default(),
            viewer_name: match viewer {
                ViewAs::Key(_) => me.map(|m| m.display_name.clone()).unwrap_or_default(),
                ViewAs::Operator(name, _) => name.clone(),
            },
            peers: self.peer_infos(mesh),
            members,
            traffic,
            invites,
        })
    }
}
