//! Enrollment (`POST /join`) and the signed mesh-admin API: create a mesh, register,
//! list and revoke invites, list and remove members. Signatures and clock skew are checked
//! by the HTTP layer; here we check what needs state: who the signer is in the mesh,
//! replay, invite use counts (exactly one winner, because one thread decides) and the
//! effect of a removal on live connections.

use claudemesh_crypto::PublicKey;
use claudemesh_proto::codes;
use claudemesh_proto::http::{
    CreateMeshRequest, CreateMeshResponse, InviteListResponse, InviteSummary, JoinRequest,
    JoinResponse, MemberListResponse, MemberSummary, RegisterInviteRequest, RegisterInviteResponse,
    RemoveMode, Signed,
};
use claudemesh_proto::invite::{InvitePayload, InviteRole};
use claudemesh_proto::limits;
use claudemesh_store::{InviteRow, MemberRow, MeshRow};
use serde::Serialize;
use tokio::sync::oneshot;

use super::directory::Mesh;
use super::{Effect, Engine};
use claudemesh_proto::time::now_ms;

/// An API error: HTTP status, stable code, human message (never internals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiFailure {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn unavailable() -> Self {
        Self::new(
            503,
            codes::UNAVAILABLE,
            "broker storage unavailable; try again",
        )
    }
}

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
        signed: Signed,
    },
    ListMembers {
        mesh_id: String,
        signed: Signed,
    },
    RemoveMember {
        mesh_id: String,
        member_id: String,
        mode: RemoveMode,
        signed: Signed,
    },
}

type Reply<T> = oneshot::Sender<Result<T, ApiFailure>>;

/// The signer's standing in a mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Standing {
    Member,
    Admin,
    Owner,
}

fn standing(mesh: &Mesh, signer: &str) -> Option<Standing> {
    if mesh.row.owner_pubkey == signer {
        return Some(Standing::Owner);
    }
    let m = mesh.member_by_key(signer).filter(|m| m.removed.is_none())?;
    Some(if m.role == "admin" || m.role == "owner" {
        Standing::Admin
    } else {
        Standing::Member
    })
}

impl Engine {
    /// Reply after commit: the value if it committed, `unavailable` if not.
    fn reply_after_commit<T: Send + 'static>(
        &mut self,
        reply: Reply<T>,
        value: Result<T, ApiFailure>,
    ) {
        self.effects.push(Effect::Reply(Box::new(move |ok| {
            let _ = reply.send(if ok {
                value
            } else {
                Err(ApiFailure::unavailable())
            });
        })));
    }

    fn json_reply<T: Serialize>(
        &mut self,
        reply: Reply<serde_json::Value>,
        value: Result<T, ApiFailure>,
    ) {
        let value =
            value.and_then(|v| serde_json::to_value(v).map_err(|_| ApiFailure::unavailable()));
        self.reply_after_commit(reply, value);
    }

    /// A storage error: poison the batch (it rolls back) and answer `unavailable`.
    fn unavailable(&mut self, e: &claudemesh_store::StoreError) -> ApiFailure {
        self.poison(e);
        ApiFailure::unavailable()
    }

    /// Refuse a replayed admin signature (the HTTP layer already checked skew).
    fn fresh(&mut self, signed: &Signed) -> Result<(), ApiFailure> {
        match self.store.remember_signature(
            &signed.signature,
            signed.timestamp + 2 * limits::MAX_CLOCK_SKEW_MS,
        ) {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiFailure::new(
                401,
                codes::REPLAY,
                "this signed request was already used",
            )),
            Err(_) => Err(ApiFailure::unavailable()),
        }
    }

    fn mesh_standing(
        &self,
        mesh_id: &str,
        signer: &str,
        needed: Standing,
    ) -> Result<&Mesh, ApiFailure> {
        let mesh = self
            .dir
            .mesh(mesh_id)
            .ok_or_else(|| ApiFailure::new(404, codes::MESH_NOT_FOUND, "no such mesh"))?;
        match standing(mesh, signer) {
            Some(s) if s >= needed => Ok(mesh),
            _ => Err(ApiFailure::new(
                403,
                codes::FORBIDDEN,
                "the signing key may not do this in this mesh",
            )),
        }
    }

    pub(super) fn admin(&mut self, cmd: AdminCommand, reply: Reply<serde_json::Value>) {
        match cmd {
            AdminCommand::CreateMesh(req) => {
                let r = self.create_mesh(req);
                self.json_reply(reply, r);
            }
            AdminCommand::RegisterInvite { mesh_id, req } => {
                let r = self.register_invite(&mesh_id, &req);
                self.json_reply(reply, r);
            }
            AdminCommand::ListInvites { mesh_id, signed } => {
                let r = self.list_invites(&mesh_id, &signed);
                self.json_reply(reply, r);
            }
            AdminCommand::RevokeInvite {
                mesh_id,
                invite_id,
                signed,
            } => {
                let r = self.revoke_invite(&mesh_id, &invite_id, &signed);
                self.json_reply(reply, r.map(|()| serde_json::json!({ "ok": true })));
            }
            AdminCommand::ListMembers { mesh_id, signed } => {
                let r = self.list_mesh_members(&mesh_id, &signed);
                self.json_reply(reply, r);
            }
            AdminCommand::RemoveMember {
                mesh_id,
                member_id,
                mode,
                signed,
            } => {
                let r = self.remove_member(&mesh_id, &member_id, mode, &signed);
                self.json_reply(reply, r.map(|()| serde_json::json!({ "ok": true })));
            }
        }
    }

    fn create_mesh(&mut self, req: CreateMeshRequest) -> Result<CreateMeshResponse, ApiFailure> {
        if self.dir.slugs.contains_key(&req.slug) {
            return Err(ApiFailure::new(
                409,
                codes::SLUG_TAKEN,
                format!("a mesh with slug '{}' already exists", req.slug),
            ));
        }
        self.fresh(&req.signed)?;
        let now = now_ms();
        let mesh = MeshRow {
            id: claudemesh_proto::ids::new_id(),
            slug: req.slug.clone(),
            name: req.name.clone(),
            owner_pubkey: req.signed.signer_pubkey.clone(),
            created_at: now,
        };
        let owner = MemberRow {
            id: claudemesh_proto::ids::new_id(),
            mesh_id: mesh.id.clone(),
            pubkey: mesh.owner_pubkey.clone(),
            display_name: req
                .owner_display_name
                .clone()
                .unwrap_or_else(|| "owner".into()),
            role: "owner".into(),
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
        m.member_by_key
            .insert(owner.pubkey.clone(), owner.id.clone());
        m.members.insert(owner.id.clone(), owner);
        self.dir.meshes.insert(resp.mesh_id.clone(), m);
        tracing::info!(mesh = %resp.mesh_id, slug = %resp.slug, "mesh created");
        Ok(resp)
    }

    fn register_invite(
        &mut self,
        mesh_id: &str,
        req: &RegisterInviteRequest,
    ) -> Result<RegisterInviteResponse, ApiFailure> {
        let signer = &req.signed.signer_pubkey;
        let needed = if req.invite.role == InviteRole::Admin {
            Standing::Owner
        } else {
            Standing::Admin
        };
        self.mesh_standing(mesh_id, signer, needed)?;
        if req.invite.mesh_id != mesh_id {
            return Err(ApiFailure::new(
                400,
                codes::INVITE_MESH_MISMATCH,
                "the invite names another mesh",
            ));
        }
        if &req.invite.owner_pubkey != signer {
            return Err(ApiFailure::new(
                400,
                codes::INVITE_OWNER_MISMATCH,
                "the invite must be signed by the key registering it",
            ));
        }
        let id = req.invite.invite_id();
        if self
            .store
            .invite(&id)
            .map_err(|e| self.unavailable(&e))?
            .is_some()
        {
            return Err(ApiFailure::new(
                409,
                codes::CONFLICT,
                "this invite is already registered",
            ));
        }
        self.fresh(&req.signed)?;
        let row = InviteRow {
            id: id.clone(),
            mesh_id: mesh_id.to_owned(),
            role: req.invite.role.as_str().to_owned(),
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
        Ok(RegisterInviteResponse {
            ok: true,
            invite_id: id,
        })
    }

    fn list_invites(
        &mut self,
        mesh_id: &str,
        signed: &Signed,
    ) -> Result<InviteListResponse, ApiFailure> {
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
                role: if r.role == "admin" {
                    InviteRole::Admin
                } else {
                    InviteRole::Member
                },
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
        signed: &Signed,
    ) -> Result<(), ApiFailure> {
        self.mesh_standing(mesh_id, &signed.signer_pubkey, Standing::Admin)?;
        let mut row = self
            .store
            .invite(invite_id)
            .map_err(|e| self.unavailable(&e))?
            .filter(|r| r.mesh_id == mesh_id)
            .ok_or_else(|| {
                ApiFailure::new(404, codes::INVITE_NOT_FOUND, "no such invite in this mesh")
            })?;
        self.fresh(signed)?;
        row.revoked = true;
        self.store
            .upsert_invite(&row)
            .map_err(|e| self.unavailable(&e))
    }

    fn list_mesh_members(
        &mut self,
        mesh_id: &str,
        signed: &Signed,
    ) -> Result<MemberListResponse, ApiFailure> {
        let mesh = self.mesh_standing(mesh_id, &signed.signer_pubkey, Standing::Member)?;
        let mut members: Vec<MemberSummary> = mesh
            .members
            .values()
            .map(|m| MemberSummary {
                member_id: m.id.clone(),
                pubkey: m.pubkey.clone(),
                display_name: m.display_name.clone(),
                role: m.role.clone(),
                joined_at: m.joined_at,
                removed: m.removed.clone(),
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

    fn remove_member(
        &mut self,
        mesh_id: &str,
        member_id: &str,
        mode: RemoveMode,
        signed: &Signed,
    ) -> Result<(), ApiFailure> {
        // A member may leave (kick itself); everything else needs an admin or the owner.
        let leaving = mode == RemoveMode::Kick
            && self
                .dir
                .mesh(mesh_id)
                .and_then(|m| m.members.get(member_id))
                .is_some_and(|m| {
                    m.pubkey == signed.signer_pubkey && m.removed.is_none() && m.role != "owner"
                });
        let needed = if leaving {
            Standing::Member
        } else {
            Standing::Admin
        };
        let mesh = self.mesh_standing(mesh_id, &signed.signer_pubkey, needed)?;
        let mut member =
            mesh.members.get(member_id).cloned().ok_or_else(|| {
                ApiFailure::new(404, codes::NOT_FOUND, "no such member in this mesh")
            })?;
        if member.role == "owner" {
            return Err(ApiFailure::new(
                403,
                codes::FORBIDDEN,
                "the mesh owner cannot be removed",
            ));
        }
        if !leaving
            && member.role == "admin"
            && standing(mesh, &signed.signer_pubkey) != Some(Standing::Owner)
        {
            return Err(ApiFailure::new(
                403,
                codes::FORBIDDEN,
                "only the owner can remove an admin",
            ));
        }
        self.fresh(signed)?;
        member.removed = Some(match mode {
            RemoveMode::Kick => "kicked".to_owned(),
            RemoveMode::Revoke => "revoked".to_owned(),
        });
        self.store
            .upsert_member(&member)
            .map_err(|e| self.unavailable(&e))?;
        let close = match mode {
            RemoveMode::Kick => codes::close::KICKED,
            RemoveMode::Revoke => codes::close::REVOKED,
        };
        let conns: Vec<std::sync::Arc<super::Kill>> = self
            .conns
            .iter()
            .filter(|(_, c)| c.mesh_id == mesh_id)
            .filter(|(_, c)| {
                self.dir
                    .mesh(mesh_id)
                    .and_then(|m| m.presences.get(&c.key))
                    .is_some_and(|p| p.member_id == member.id)
            })
            .map(|(_, c)| c.handle.kill.clone())
            .collect();
        for kill in conns {
            self.effects.push(Effect::Close {
                kill,
                code: close,
                reason: mode.as_str().to_owned(),
            });
        }
        if let Some(m) = self.dir.mesh_mut(mesh_id) {
            m.members.insert(member.id.clone(), member);
        }
        Ok(())
    }

    pub(super) fn join(&mut self, req: JoinRequest, reply: Reply<JoinResponse>) {
        let r = self.enroll(req);
        self.reply_after_commit(reply, r);
    }

    fn enroll(&mut self, req: JoinRequest) -> Result<JoinResponse, ApiFailure> {
        let bad = |code: &'static str, msg: &str| ApiFailure::new(400, code, msg);
        let invite = match (&req.invite_token, &req.invite_payload) {
            (Some(token), _) => InvitePayload::from_link(token)
                .map_err(|_| bad(codes::INVITE_BAD_SIGNATURE, "invite token is malformed"))?,
            (None, Some(payload)) => payload.clone(),
            (None, None) => {
                return Err(bad(
                    codes::MALFORMED,
                    "invite_token or invite_payload is required",
                ));
            }
        };
        invite.verify().map_err(|_| {
            bad(
                codes::INVITE_BAD_SIGNATURE,
                "invite signature does not verify",
            )
        })?;
        let peer = PublicKey::from_hex(&req.peer_pubkey)
            .map_err(|_| bad(codes::MALFORMED, "peer_pubkey is not a 64-hex ed25519 key"))?
            .to_hex();
        let display_name = req
            .display_name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("member-{}", peer.get(..8).unwrap_or_default()));
        if display_name.len() > limits::MAX_SHORT_TEXT_BYTES || display_name.contains('|') {
            return Err(bad(
                codes::MALFORMED,
                "display_name is too long or contains '|'",
            ));
        }
        let mesh = self.dir.mesh(&invite.mesh_id).ok_or_else(|| {
            bad(
                codes::MESH_NOT_FOUND,
                "the invite's mesh does not exist on this broker",
            )
        })?;
        let signer_ok = matches!(
            standing(mesh, &invite.owner_pubkey),
            Some(Standing::Owner | Standing::Admin)
        );
        let existing = mesh.member_by_key(&peer).cloned();
        if !signer_ok {
            return Err(bad(
                codes::INVITE_OWNER_MISMATCH,
                "the invite is not signed by the mesh owner or an admin",
            ));
        }
        let row = match self.store.invite(&invite.invite_id()) {
            Ok(row) => row,
            Err(e) => return Err(self.unavailable(&e)),
        };
        let mut row = row.ok_or_else(|| {
            bad(
                codes::INVITE_NOT_FOUND,
                "this invite was never registered with the broker",
            )
        })?;
        if row.mesh_id != invite.mesh_id {
            return Err(bad(
                codes::INVITE_MESH_MISMATCH,
                "the invite belongs to another mesh",
            ));
        }
        // Re-joining with the same key returns the existing member and spends nothing,
        // even if the invite has since expired or been revoked (WIRE-V1).
        if let Some(m) = &existing {
            match m.removed.as_deref() {
                None => {
                    return Ok(JoinResponse {
                        ok: true,
                        member_id: Some(m.id.clone()),
                        already_member: Some(true),
                        mesh_id: Some(invite.mesh_id.clone()),
                        role: Some(m.role.clone()),
                        error: None,
                    });
                }
                Some("revoked") => {
                    return Err(bad(
                        codes::MEMBER_REVOKED,
                        "this key has been revoked from the mesh",
                    ));
                }
                Some(_) => {} // kicked: may re-join with a valid invite
            }
        }
        if row.revoked {
            return Err(bad(codes::INVITE_REVOKED, "this invite has been revoked"));
        }
        if now_ms() / 1000 >= invite.expires_at {
            return Err(bad(codes::INVITE_EXPIRED, "this invite has expired"));
        }
        if row.max_uses > 0 && row.uses >= row.max_uses {
            return Err(bad(codes::INVITE_EXHAUSTED, "this invite has no uses left"));
        }
        row.uses += 1;
        self.store
            .upsert_invite(&row)
            .map_err(|e| self.unavailable(&e))?;
        let member = MemberRow {
            id: existing
                .map(|m| m.id)
                .unwrap_or_else(claudemesh_proto::ids::new_id),
            mesh_id: invite.mesh_id.clone(),
            pubkey: peer.clone(),
            display_name,
            role: invite.role.as_str().to_owned(),
            joined_at: now_ms(),
            removed: None,
        };
        self.store
            .upsert_member(&member)
            .map_err(|e| self.unavailable(&e))?;
        let resp = JoinResponse {
            ok: true,
            member_id: Some(member.id.clone()),
            already_member: Some(false),
            mesh_id: Some(invite.mesh_id.clone()),
            role: Some(member.role.clone()),
            error: None,
        };
        if let Some(mesh) = self.dir.mesh_mut(&invite.mesh_id) {
            mesh.member_by_key.insert(peer, member.id.clone());
            mesh.members.insert(member.id.clone(), member);
        }
        Ok(resp)
    }
}
