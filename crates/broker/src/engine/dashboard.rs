//! What the dashboard reads from the engine: one mesh's members and live peers, built
//! by the same code that answers `list_members` and `list_peers`, for a viewer whose
//! standing is checked on every read (a removed member's dashboard stops at once); and
//! the [`Change`]s it follows, sent after the batch that made them commits.

use claudemesh_proto::codes::Code;
use claudemesh_proto::frames::{MemberInfo, PeerInfo};
use serde::Serialize;
use tokio::sync::broadcast;

use super::Engine;
use super::admin::{Standing, standing};
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

/// One mesh as a signed-in viewer sees it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshView {
    pub mesh_id: String,
    pub slug: String,
    pub name: String,
    /// `owner`, `admin` or `member`: what the viewer may do on the page.
    pub standing: &'static str,
    pub viewer_member_id: String,
    pub viewer_name: String,
    pub peers: Vec<PeerInfo>,
    pub members: Vec<MemberInfo>,
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

    /// The mesh as `viewer` (a member key) sees it, or why it may not.
    pub(super) fn mesh_view(&mut self, mesh_id: &str, viewer: &str) -> Result<MeshView, Refusal> {
        self.read_through(mesh_id, None);
        let refused = || Refusal::new(Code::Unauthorized, "not a member of this mesh any more");
        let mesh = self.dir.mesh(mesh_id).ok_or_else(refused)?;
        let standing = standing(mesh, viewer).ok_or_else(refused)?;
        let me = mesh.member_by_key(viewer);
        Ok(MeshView {
            mesh_id: mesh.row.id.clone(),
            slug: mesh.row.slug.clone(),
            name: mesh.row.name.clone(),
            standing: standing.as_str(),
            viewer_member_id: me.map(|m| m.id.clone()).unwrap_or_default(),
            viewer_name: me.map(|m| m.display_name.clone()).unwrap_or_default(),
            peers: self.peer_infos(mesh),
            members: self.member_infos(mesh),
        })
    }
}
