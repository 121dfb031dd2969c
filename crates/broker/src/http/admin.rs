//! The signed mesh-admin API (extension `mesh-admin`): each route names its canonical
//! action and arguments ([`SignedBody`]), the [`Verified`] extractor checks the signature,
//! and the engine decides; its [`AdminReply`] is rendered here as JSON.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use claudemesh_proto::canonical::AdminAction;
use claudemesh_proto::codes::Code;
use claudemesh_proto::http::{
    CreateMeshRequest, RegisterInviteRequest, RemoveMemberRequest, Signed,
};
use claudemesh_proto::limits;
use serde::Deserialize;

use super::error::HttpError;
use super::signed::{PathIds, SignedBody, Verified};
use crate::config::MeshCreation;
use crate::engine::{AdminCommand, AdminReply, Command};
use crate::refusal::Refusal;
use crate::state::Shared;

fn valid_slug(slug: &str) -> bool {
    (1..=64).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
}

fn valid_name(name: &str) -> bool {
    !name.trim().is_empty()
        && name.len() <= limits::MAX_SHORT_TEXT_BYTES
        && !name.contains('|')
        && !name.chars().any(char::is_control)
}

/// Whether this broker lets `req` create a mesh (PROTOCOL.md, mesh creation policy).
fn creation_allowed(shared: &Shared, req: &CreateMeshRequest) -> Result<(), Refusal> {
    match &shared.config.mesh_creation {
        MeshCreation::Open => Ok(()),
        MeshCreation::Closed => Err(Refusal::new(
            Code::CreationDisabled,
            "mesh creation is disabled on this broker",
        )),
        MeshCreation::Token(expected) => {
            let given = req.creation_token.as_deref().unwrap_or_default();
            if bool::from(subtle::ConstantTimeEq::ct_eq(
                given.as_bytes(),
                expected.as_bytes(),
            )) {
                Ok(())
            } else {
                Err(Refusal::new(
                    Code::CreationDisabled,
                    "a valid creation token is required to create meshes on this broker",
                ))
            }
        }
    }
}

impl SignedBody for CreateMeshRequest {
    const ACTION: AdminAction = AdminAction::CreateMesh;
    fn signed(&self) -> &Signed {
        &self.signed
    }
    fn args(&self, _: &PathIds) -> Vec<String> {
        vec![self.slug.clone(), self.name.clone()]
    }
    fn check(&self, shared: &Shared) -> Result<(), Refusal> {
        creation_allowed(shared, self)?;
        if !valid_slug(&self.slug) {
            return Err(Refusal::new(
                Code::Malformed,
                "slug must be 1-64 characters of a-z, 0-9 and '-'",
            ));
        }
        let names_ok =
            valid_name(&self.name) && self.owner_display_name.as_deref().is_none_or(valid_name);
        if !names_ok {
            return Err(Refusal::new(
                Code::Malformed,
                "names must be non-empty, at most 512 bytes, without '|' or control characters",
            ));
        }
        Ok(())
    }
}

impl SignedBody for RegisterInviteRequest {
    const ACTION: AdminAction = AdminAction::RegisterInvite;
    fn signed(&self) -> &Signed {
        &self.signed
    }
    fn args(&self, _: &PathIds) -> Vec<String> {
        vec![self.invite.invite_id(), self.max_uses.to_string()]
    }
    fn check(&self, _: &Shared) -> Result<(), Refusal> {
        self.invite.verify().map_err(|_| {
            Refusal::new(
                Code::InviteBadSignature,
                "the invite's signature does not verify",
            )
        })
    }
}

impl SignedBody for RemoveMemberRequest {
    const ACTION: AdminAction = AdminAction::RemoveMember;
    fn signed(&self) -> &Signed {
        &self.signed
    }
    fn args(&self, path: &PathIds) -> Vec<String> {
        vec![
            path.get("member_id").to_owned(),
            self.mode.as_str().to_owned(),
        ]
    }
}

/// A body that is only the signature envelope, for the action `A`.
macro_rules! bare_signed {
    ($name:ident, $action:expr, $($arg:literal),*) => {
        #[derive(Debug, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Signed);

        impl SignedBody for $name {
            const ACTION: AdminAction = $action;
            fn signed(&self) -> &Signed {
                &self.0
            }
            fn args(&self, _path: &PathIds) -> Vec<String> {
                vec![$(_path.get($arg).to_owned()),*]
            }
        }
    };
}

bare_signed!(ListInvites, AdminAction::ListInvites,);
bare_signed!(RevokeInvite, AdminAction::RevokeInvite, "invite_id");
bare_signed!(ListMembers, AdminAction::ListMembers,);

/// Hand a verified command to the engine and render its reply.
async fn run(shared: &Shared, cmd: AdminCommand) -> Result<Response, HttpError> {
    let reply = shared
        .engine
        .request(|reply| Command::Admin { cmd, reply })
        .await??;
    let ok = || serde_json::json!({ "ok": true });
    Ok(match reply {
        AdminReply::MeshCreated(r) => axum::Json(r).into_response(),
        AdminReply::InviteRegistered(r) => axum::Json(r).into_response(),
        AdminReply::Invites(r) => axum::Json(r).into_response(),
        AdminReply::Members(r) => axum::Json(r).into_response(),
        AdminReply::Done => axum::Json(ok()).into_response(),
    })
}

pub async fn create_mesh(
    State(shared): State<Arc<Shared>>,
    v: Verified<CreateMeshRequest>,
) -> Result<Response, HttpError> {
    run(&shared, AdminCommand::CreateMesh(v.body)).await
}

pub async fn register_invite(
    State(shared): State<Arc<Shared>>,
    v: Verified<RegisterInviteRequest>,
) -> Result<Response, HttpError> {
    let mesh_id = v.path.get("mesh_id").to_owned();
    run(
        &shared,
        AdminCommand::RegisterInvite {
            mesh_id,
            req: v.body,
        },
    )
    .await
}

pub async fn list_invites(
    State(shared): State<Arc<Shared>>,
    v: Verified<ListInvites>,
) -> Result<Response, HttpError> {
    let mesh_id = v.path.get("mesh_id").to_owned();
    run(
        &shared,
        AdminCommand::ListInvites {
            mesh_id,
            signed: v.body.0,
        },
    )
    .await
}

pub async fn revoke_invite(
    State(shared): State<Arc<Shared>>,
    v: Verified<RevokeInvite>,
) -> Result<Response, HttpError> {
    let cmd = AdminCommand::RevokeInvite {
        mesh_id: v.path.get("mesh_id").to_owned(),
        invite_id: v.path.get("invite_id").to_owned(),
        signed: v.body.0,
    };
    run(&shared, cmd).await
}

pub async fn list_members(
    State(shared): State<Arc<Shared>>,
    v: Verified<ListMembers>,
) -> Result<Response, HttpError> {
    let mesh_id = v.path.get("mesh_id").to_owned();
    run(
        &shared,
        AdminCommand::ListMembers {
            mesh_id,
            signed: v.body.0,
        },
    )
    .await
}

pub async fn remove_member(
    State(shared): State<Arc<Shared>>,
    v: Verified<RemoveMemberRequest>,
) -> Result<Response, HttpError> {
    let cmd = AdminCommand::RemoveMember {
        mesh_id: v.path.get("mesh_id").to_owned(),
        member_id: v.path.get("member_id").to_owned(),
        mode: v.body.mode,
        signed: v.body.signed,
    };
    run(&shared, cmd).await
}
