//! The signed mesh-admin API: create a mesh, register, list and revoke invites, list and
//! remove members. Signatures and clock skew are checked by the HTTP layer; here we check
//! what needs state: who the signer is in the mesh, replay, and the effect of a removal on
//! live connections. Replies are domain values ([`AdminReply`] or a [`Refusal`]); the
//! HTTP layer renders them.

use claudemesh_proto::authority::{Removal, Role};
use claudemesh_proto::codes::{Code, close};
use claudemesh_proto::http::{
    CreateMeshRequest, CreateMeshResponse, InviteListResponse, InviteSummary, MemberListResponse,
    MemberSummary, RegisterInviteRequest, RegisterInviteResponse, RemoveMode, Signed,
};
use claudemesh_proto::ids::new_id;
use claudemesh_proto::invite::InviteRole;
use claudemesh_proto::limits;
use claudemesh_proto::time::now_ms;
use claudemesh_store::{InviteRow, MemberRow, MeshRow};
use tokio::sync::oneshot;

use super::directory::Mesh;
use super::{Effect, Engine};
use crate::refusal::Refusal;

/// An admin request whose signature the HTTP layer has verified for `signed.signer_pubkey`.
#[derive(Debug)]
pub enum AdminCommand {
    CreateMesh(CreateMeshRequest),
    RegisterInvite {
        mesh_id: String,
        req: RegisterInviteRequest,
    },
    ListInvites {
        mesh_id: String,
        signed: Signed,
    },
    RevokeInvite {
        mesh_id: String,
        invite_id: String,
        actor: Actor,
    },
    ListMembers {
        mesh_id: String,
        signed: Signed,
    },
    /// Sign in to the dashboard (extension `dashboard`): any member may.
    DashboardLogin {
        mesh_id: String,
        signed: Signed,
    },
    RemoveMember {
        mesh_id: String,
        member_id: String,
        mode: RemoveMode,
        actor: Actor,
    },
}

/// Who asks for an admin action that changes something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A request signed now: its signature is spent (never accepted twice).
    Signed(Signed),
    /// A dashboard session of this key: its sign-in was a signed request, spent then;
    /// the key's standing is checked again now, like a signed request's.
    Session { pubkey: String },
}

impl Actor {
    pub fn key(&self) -> &str {
        match self {
            Actor::Signed(s) => &s.signer_pubkey,
            Actor::Session { pubkey } => pubkey,
        }
    }
}

impl AdminCommand {
    /// The mesh the command is about (none for creating one).
    fn mesh_id(&self) -> Option<&str> {
        match self {
            AdminCommand::CreateMesh(_) => None,
            AdminCommand::RegisterInvite { mesh_id, .. }
            | AdminCommand::ListInvites { mesh_id, .. }
            | AdminCommand::RevokeInvite { mesh_id, .. }
            | AdminCommand::ListMembers { mesh_id, .. }
            | AdminCommand::DashboardLogin { mesh_id, .. }
            | AdminCommand::RemoveMember { mesh_id, .. } => Some(mesh_id),
        }
    }
}

/// What a successful admin request answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminReply {
    MeshCreated(CreateMeshResponse),
    InviteRegistered(RegisterInviteResponse),
    Invites(InviteListResponse),
    Members(MemberListResponse),
    /// The signer may open the dashboard of the mesh, as this member (empty for an owner
    /// key that is not also a member key).
    Viewer {
        member_id: String,
    },
    /// Done; nothing to report (revoke an invite, remove a member).
    Done,
}

pub type Reply<T> = oneshot::Sender<Result<T, Refusal>>;

/// The signer's standing in a mesh, strongest last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Standing {
    Member,
    Admin,
    Owner,
}

pub(super) fn standing(mesh: &Mesh, signer: &str) -> Option<Standing> {
    if mesh.row.owner_pubkey == signer {
        return Some(Standing::Owner);
    }
    let m = mesh.member_by_key(signer).filter(|m| m.removed.is_none())?;
    Some(if m.role.is_admin() {
        Standing::Admin
    } else {
        Standing::Member
    })
}

fn forbidden(message: &str) -> Refusal {
    Refusal::new(Code::Forbidden, message)
}

impl Engine {
    /// Reply after commit: the value if it committed, `unavailable` if not.
    pub(super) fn reply_after_commit<T: Send + 'static>(
        &mut self,
        reply: Reply<T>,
        value: Result<T, Refusal>,
    ) {
        self.effects.push(Effect::Reply(Box::new(move |ok| {
            let _ = reply.send(if ok {
                value
            } else {
                Err(Refusal::unavailable())
            });
        })));
    }

    /// A storage error: poison the batch (it rolls back) and answer `unavailable`.
    pub(super) fn unavailable(&mut self, e: &claudemesh_store::StoreError) -> Refusal {
        self.poison(e);
        Refusal::unavailable()
    }

    /// Refuse a replayed signature of a signed actor (a session's was spent at sign-in).
    fn fresh_actor(&mut self, actor: &Actor) -> Result<(), Refusal> {
        match actor {
            Actor::Signed(signed) => self.fresh(signed),
            Actor::Session { .. } => Ok(()),
        }
    }

    /// Refuse a replayed admin signature (the HTTP layer already checked skew).
    fn fresh(&mut self, signed: &Signed) -> Result<(), Refusal> {
        let until = signed.timestamp + 2 * limits::MAX_CLOCK_SKEW_MS;
        match self.store.remember_signature(&signed.signature, until) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Refusal::new(
                Code::Replay,
                "this signed request was already used",
            )),
            Err(e) => Err(self.unavailable(&e)),
        }
    }

    fn mesh_standing(
        &self,
        mesh_id: &str,
        signer: &str,
        needed: Standing,
    ) -> Result<&Mesh, Refusal> {
        let mesh = self
            .dir
            .mesh(mesh_id)
            .ok_or_else(|| Refusal::new(Code::MeshNotFound, "no such mesh"))?;
        match standing(mesh, signer) {
            Some(s) if s >= needed => Ok(mesh),
            _ => Err(forbidden("the signing key may not do this in this mesh")),
        }
    }

    pub(super) fn admin(&mut self, cmd: AdminCommand, reply: Reply<AdminReply>) {
        if let Some(mesh_id) = cmd.mesh_id().map(str::to_owned) {
            self.read_through(&mesh_id, None);
        }
        let r = match cmd {
            AdminCommand::CreateMesh(req) => self.create_mesh(req).map(AdminReply::MeshCreated),
            AdminCommand::RegisterInvite { mesh_id, req } => self
                .register_invite(&mesh_id, &req)
                .map(AdminReply::InviteRegistered),
            AdminCommand::ListInvites { mesh_id, signed } => self
                .list_invites(&mesh_id, &signed)
                .map(AdminReply::Invites),
            AdminCommand::RevokeInvite {
                mesh_id,
                invite_id,
                actor,
            } => self
                .revoke_invite(&mesh_id, &invite_id, &actor)
                .map(|()| AdminReply::Done),
            AdminCommand::ListMembers { mesh_id, signed } => self
                .list_mesh_members(&mesh_id, &signed)
                .map(AdminReply::Members),
            AdminCommand::DashboardLogin { mesh_id, signed } => self
                .mesh_standing(&mesh_id, &signed.signer_pubkey, Standing::Member)
                .map(|mesh| {
                    mesh.member_by_key(&signed.signer_pubkey)
                        .map(|m| m.id.clone())
                        .unwrap_or_default()
                })
                .and_then(|member_id| {
                    self.fresh(&signed)?;
                    Ok(AdminReply::Viewer { member_id })
                }),
            AdminCommand::RemoveMember {
                mesh_id,
                member_id,
                mode,
                actor,
            } => self
                .remove_member(&mesh_id, &member_id, mode, &actor)
                .map(|()| AdminReply::Done),
        };
        self.reply_after_commit(reply, r);
    }

    fn create_mesh(&mut self, req: CreateMeshRequest) -> Result<CreateMeshResponse, Refusal> {
        if self.dir.slugs.contains_key(&req.slug) {
            return Err(Refusal::new(
                Code::SlugTaken,
                format!("a mesh with slug '{}' already exists", req.slug),
            ));
        }
        self.fresh(&req.signed)?;
        let now = now_ms();
        let mesh = MeshRow {
            id: new_id(),
            slug: req.slug.clone(),
            name: req.name.clone(),
            owner_pubkey: req.signed.signer_pubkey.clone(),
            created_at: now,
        };
        let owner = MemberRow {
            id: new_id(),
            mesh_id: mesh.id.clone(),
            pubkey: mesh.owner_pubkey.clone(),
            display_name: req.owner_display_name.unwrap_or_else(|| "owner".into()),
            role: Role::Owner,
            joined_at: now,
            removed: None,
        };
        self.store
            .insert_mesh(&mesh)
            .map_err(|e| self.unavailable(&e))?;
        self.store
            .upsert_member(&owner)
            .map_err(|e| self.unavailable(&e))?;
        let resp = CreateMeshResponse {
            ok: true,
            mesh_id: mesh.id.clone(),
            slug: mesh.slug.clone(),
            owner_member_id: owner.id.clone(),
        };
        self.dir.slugs.insert(mesh.slug.clone(), mesh.id.clone());
        let mut m = Mesh::new(mesh);
        m.put_member(owner);
        self.dir.meshes.insert(resp.mesh_id.clone(), m);
        self.note_mesh(&resp.mesh_id);
        self.note_member(&resp.mesh_id, &resp.owner_member_id);
        tracing::info!(mesh = %resp.mesh_id, slug = %resp.slug, "mesh created");
        Ok(resp)
    }

    fn register_invite(
        &mut self,
        mesh_id: &str,
        req: &RegisterInviteRequest,
    ) -> Result<RegisterInviteResponse, Refusal> {
        let signer = &req.signed.signer_pubkey;
        let needed = match req.invite.role {
            InviteRole::Admin => Standing::Owner,
            InviteRole::Member => Standing::Admin,
        };
        self.mesh_standing(mesh_id, signer, needed)?;
        if req.invite.mesh_id != mesh_id {
            return Err(Refusal::new(
                Code::InviteMeshMismatch,
                "the invite names another mesh",
            ));
        }
        if &req.invite.owner_pubkey != signer {
            return Err(Refusal::new(
                Code::InviteOwnerMismatch,
                "the invite must be signed by the key registering it",
            ));
        }
        let id = req.invite.invite_id();
        let existing = self.store.invite(&id).map_err(|e| self.unavailable(&e))?;
        if existing.is_some() {
            return Err(Refusal::new(
                Code::Conflict,
                "this invite is already registered",
            ));
        }
        self.fresh(&req.signed)?;
        let row = InviteRow {
            id: id.clone(),
            mesh_id: mesh_id.to_owned(),
            role: req.invite.role,
            max_uses: req.max_uses,
            uses: 0,
            expires_at: req.invite.expires_at,
            revoked: false,
            created_by: signer.clone(),
            created_at: now_ms(),
        };
        self.store
            .upsert_invite(&row)
            .map_err(|e| self.unavailable(&e))?;
        self.mesh_changed(mesh_id);
        Ok(RegisterInviteResponse {
            ok: true,
            invite_id: id,
        })
    }

    fn list_invites(
        &mut self,
        mesh_id: &str,
        signed: &Signed,
    ) -> Result<InviteListResponse, Refusal> {
        self.mesh_standing(mesh_id, &signed.signer_pubkey, Standing::Admin)?;
        self.fresh(signed)?;
        let rows = self
            .store
            .invites(mesh_id)
            .map_err(|e| self.unavailable(&e))?;
        let invites = rows
            .into_iter()
            .map(|r| InviteSummary {
                invite_id: r.id,
                role: r.role,
                max_uses: r.max_uses,
                uses: r.uses,
                expires_at: r.expires_at,
                revoked: r.revoked,
                created_by: r.created_by,
                created_at: r.created_at,
            })
            .collect();
        Ok(InviteListResponse { ok: true, invites })
    }

    fn revoke_invite(
        &mut self,
        mesh_id: &str,
        invite_id: &str,
        actor: &Actor,
    ) -> Result<(), Refusal> {
        self.mesh_standing(mesh_id, actor.key(), Standing::Admin)?;
        let exists = self
            .store
            .invite(invite_id)
            .map_err(|e| self.unavailable(&e))?
            .is_some_and(|r| r.mesh_id == mesh_id);
        if !exists {
            return Err(Refusal::new(
                Code::InviteNotFound,
                "no such invite in this mesh",
            ));
        }
        self.fresh_actor(actor)?;
        // One statement: a concurrent claim of a use is never overwritten.
        self.store
            .revoke_invite(mesh_id, invite_id)
            .map_err(|e| self.unavailable(&e))?;
        self.mesh_changed(mesh_id);
        Ok(())
    }

    fn list_mesh_members(
        &mut self,
        mesh_id: &str,
        signed: &Signed,
    ) -> Result<MemberListResponse, Refusal> {
        let mesh = self.mesh_standing(mesh_id, &signed.signer_pubkey, Standing::Member)?;
        let mut members: Vec<MemberSummary> = mesh
            .members
            .values()
            .map(|m| MemberSummary {
                member_id: m.id.clone(),
                pubkey: m.pubkey.clone(),
                display_name: m.display_name.clone(),
                role: m.role.as_str().to_owned(),
                joined_at: m.joined_at,
                removed: m.removed.map(|r| r.as_str().to_owned()),
                online: mesh
                    .presences
                    .values()
                    .any(|p| p.member_id == m.id && !p.conns.is_empty()),
            })
            .collect();
        members.sort_by_key(|m| m.joined_at);
        self.fresh(signed)?;
        Ok(MemberListResponse { ok: true, members })
    }

    /// Who may remove `member_id`: the member itself may leave (kick itself), an admin may
    /// remove members, only the owner may remove an admin, and nobody the owner.
    fn may_remove(
        &self,
        mesh_id: &str,
        member_id: &str,
        mode: RemoveMode,
        signer: &str,
    ) -> Result<MemberRow, Refusal> {
        let leaving = mode == RemoveMode::Kick
            && self
                .dir
                .mesh(mesh_id)
                .and_then(|m| m.members.get(member_id))
                .is_some_and(|m| {
                    m.pubkey == signer && m.removed.is_none() && m.role != Role::Owner
                });
        let needed = if leaving {
            Standing::Member
        } else {
            Standing::Admin
        };
        let mesh = self.mesh_standing(mesh_id, signer, needed)?;
        let member = mesh
            .members
            .get(member_id)
            .cloned()
            .ok_or_else(|| Refusal::new(Code::NotFound, "no such member in this mesh"))?;
        if member.role == Role::Owner {
            return Err(forbidden("the mesh owner cannot be removed"));
        }
        if !leaving && member.role == Role::Admin && standing(mesh, signer) != Some(Standing::Owner)
        {
            return Err(forbidden("only the owner can remove an admin"));
        }
        Ok(member)
    }

    fn remove_member(
        &mut self,
        mesh_id: &str,
        member_id: &str,
        mode: RemoveMode,
        actor: &Actor,
    ) -> Result<(), Refusal> {
        let mut member = self.may_remove(mesh_id, member_id, mode, actor.key())?;
        self.fresh_actor(actor)?;
        let removal = Removal::from(mode);
        // One conditional statement decides (never the owner, never a downgrade), so a
        // second node cannot race it. When it changes nothing, the member already had
        // this removal or a stronger one (on this node memory agrees; with several nodes
        // the other node's change reaches memory through its notification).
        let changed = self
            .store
            .remove_member(mesh_id, member_id, removal)
            .map_err(|e| self.unavailable(&e))?;
        if changed {
            member.removed = Some(removal);
            self.note_member(mesh_id, member_id);
        }
        let removal = member.removed.unwrap_or(removal);
        if let Some(m) = self.dir.mesh_mut(mesh_id) {
            m.put_member(member);
        }
        self.close_member(mesh_id, member_id, removal);
        Ok(())
    }

    /// Close every connection of a removed member here, once the batch commits: 4002 for
    /// a revoked member, 4001 for a kicked one.
    pub(super) fn close_member(&mut self, mesh_id: &str, member_id: &str, removal: Removal) {
        self.mesh_changed(mesh_id);
        self.changes.note(super::Change::Removed {
            mesh_id: mesh_id.to_owned(),
            member_id: member_id.to_owned(),
        });
        let (code, reason) = match removal {
            Removal::Revoked => (close::REVOKED, RemoveMode::Revoke.as_str()),
            Removal::Kicked => (close::KICKED, RemoveMode::Kick.as_str()),
        };
        let kills: Vec<_> = self
            .conns
            .values()
            .filter(|c| c.mesh_id == mesh_id)
            .filter(|c| {
                self.dir
                    .mesh(mesh_id)
                    .and_then(|m| m.presences.get(&c.key))
                    .is_some_and(|p| p.member_id == member_id)
            })
            .map(|c| c.handle.kill.clone())
            .collect();
        for kill in kills {
            self.effects.push(Effect::Close {
                kill,
                code,
                reason: reason.to_owned(),
            });
        }
    }
}
