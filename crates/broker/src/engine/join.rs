//! Enrollment (`POST /join`, WIRE-V1): verify the invite, check that its signer may
//! invite, and spend one use in one conditional statement ([`Store::claim_invite_use`]),
//! so exactly one of two concurrent claims of the last use wins, even across nodes.
//! Re-joining with the same key returns the existing member and spends nothing.
//!
//! [`Store::claim_invite_use`]: claudemesh_store::Store::claim_invite_use

use claudemesh_crypto::PublicKey;
use claudemesh_proto::authority::{Removal, Role};
use claudemesh_proto::codes::Code;
use claudemesh_proto::http::{JoinRequest, JoinResponse};
use claudemesh_proto::ids::new_id;
use claudemesh_proto::invite::InvitePayload;
use claudemesh_proto::limits;
use claudemesh_proto::time::{now_ms, now_s};
use claudemesh_store::{Claim, MemberRow};

use super::Engine;
use super::admin::{Reply, Standing, standing};
use crate::refusal::Refusal;

fn joined(member: &MemberRow, already: bool) -> JoinResponse {
    JoinResponse {
        ok: true,
        member_id: Some(member.id.clone()),
        already_member: Some(already),
        mesh_id: Some(member.mesh_id.clone()),
        role: Some(member.role.as_str().to_owned()),
        error: None,
    }
}

/// The invite a join request carries, signature verified.
pub(crate) fn invite_of(req: &JoinRequest) -> Result<InvitePayload, Refusal> {
    let invite = match (&req.invite_token, &req.invite_payload) {
        (Some(token), _) => InvitePayload::from_link(token)
            .map_err(|_| Refusal::new(Code::InviteBadSignature, "invite token is malformed"))?,
        (None, Some(payload)) => payload.clone(),
        (None, None) => {
            return Err(Refusal::new(
                Code::Malformed,
                "invite_token or invite_payload is required",
            ));
        }
    };
    invite
        .verify()
        .map_err(|_| Refusal::new(Code::InviteBadSignature, "invite signature does not verify"))?;
    Ok(invite)
}

/// The joining key and the display name it asks for. The key is checked, not
/// normalised: `PublicKey::from_hex` takes only 64 lowercase hex characters (PROTOCOL
/// §1: uppercase is refused), so the key returned is `peer_pubkey` as sent.
pub(crate) fn joiner(req: JoinRequest) -> Result<(String, String), Refusal> {
    let peer = PublicKey::from_hex(&req.peer_pubkey)
        .map_err(|_| Refusal::new(Code::Malformed, "peer_pubkey is not a 64-hex ed25519 key"))?
        .to_hex();
    let display_name = req
        .display_name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("member-{}", peer.get(..8).unwrap_or_default()));
    if display_name.len() > limits::MAX_SHORT_TEXT_BYTES || display_name.contains('|') {
        return Err(Refusal::new(
            Code::Malformed,
            "display_name is too long or contains '|'",
        ));
    }
    Ok((peer, display_name))
}

/// Why a claim of an invite use did not spend one.
fn claim_refused(claim: Claim) -> Option<Refusal> {
    let (code, message) = match claim {
        Claim::Claimed => return None,
        Claim::NotFound => (
            Code::InviteNotFound,
            "this invite was never registered with the broker",
        ),
        Claim::Revoked => (Code::InviteRevoked, "this invite has been revoked"),
        Claim::Expired => (Code::InviteExpired, "this invite has expired"),
        Claim::Exhausted => (Code::InviteExhausted, "this invite has no uses left"),
    };
    Some(Refusal::new(code, message))
}

impl Engine {
    /// Spend one use of the invite, decided by the store in one statement.
    fn spend_use(&mut self, mesh_id: &str, invite_id: &str) -> Result<(), Refusal> {
        let claim = self
            .store
            .claim_invite_use(mesh_id, invite_id, now_s())
            .map_err(|e| self.unavailable(&e))?;
        claim_refused(claim).map_or(Ok(()), Err)
    }

    pub(super) fn join(&mut self, req: JoinRequest, reply: Reply<JoinResponse>) {
        let r = self.enroll(req);
        self.reply_after_commit(reply, r);
    }

    fn enroll(&mut self, req: JoinRequest) -> Result<JoinResponse, Refusal> {
        let invite = invite_of(&req)?;
        let (peer, display_name) = joiner(req)?;
        self.read_through(&invite.mesh_id, None);
        // A key that joined through another node a moment ago is that member here too.
        self.read_through_key(&invite.mesh_id, &peer);
        let mesh = self.dir.mesh(&invite.mesh_id).ok_or_else(|| {
            Refusal::new(
                Code::MeshNotFound,
                "the invite's mesh does not exist on this broker",
            )
        })?;
        if !matches!(
            standing(mesh, &invite.owner_pubkey),
            Some(Standing::Owner | Standing::Admin)
        ) {
            return Err(Refusal::new(
                Code::InviteOwnerMismatch,
                "the invite is not signed by the mesh owner or an admin",
            ));
        }
        let existing = mesh.member_by_key(&peer).cloned();
        let row = self
            .store
            .invite(&invite.invite_id())
            .map_err(|e| self.unavailable(&e))?
            .ok_or_else(|| {
                Refusal::new(
                    Code::InviteNotFound,
                    "this invite was never registered with the broker",
                )
            })?;
        if row.mesh_id != invite.mesh_id {
            return Err(Refusal::new(
                Code::InviteMeshMismatch,
                "the invite belongs to another mesh",
            ));
        }
        // Re-joining with the same key returns the existing member and spends nothing,
        // even if the invite has since expired or been revoked (WIRE-V1).
        if let Some(m) = &existing {
            match m.removed {
                None => return Ok(joined(m, true)),
                Some(Removal::Revoked) => {
                    return Err(Refusal::new(
                        Code::MemberRevoked,
                        "this key has been revoked from the mesh",
                    ));
                }
                // Kicked: may re-join with a valid invite.
                Some(Removal::Kicked) => {}
            }
        }
        self.spend_use(&invite.mesh_id, &row.id)?;
        let member = MemberRow {
            id: existing.map(|m| m.id).unwrap_or_else(new_id),
            mesh_id: invite.mesh_id.clone(),
            pubkey: peer.clone(),
            display_name,
            role: Role::granted_by(invite.role),
            joined_at: now_ms(),
            removed: None,
        };
        self.store
            .upsert_member(&member)
            .map_err(|e| self.unavailable(&e))?;
        let resp = joined(&member, false);
        self.note_member(&invite.mesh_id, &member.id);
        if let Some(mesh) = self.dir.mesh_mut(&invite.mesh_id) {
            mesh.put_member(member);
        }
        Ok(resp)
    }
}
