//! The signed mesh-admin API (extension `mesh-admin`): each route names its canonical
//! action and arguments ([`SignedBody`]), the [`Verified`] extractor checks the signature,
//! and the engine decides; its [`AdminReply`] is rendered here as JSON.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use claudemesh_proto::canonical::AdminAction;
use claudemesh_proto::codes::Code;
use claudemesh_proto::http::{
    CreateMeshRequest, RegisterInviteRequest, RemoveMemberRequest, Signed, valid_name, valid_slug,
};
use serde::Deserialize;

use super::error::HttpError;
use super::signed::{PathIds, SignedBody, Verified};
use crate::config::{BrokerConfig, MeshCreation};
use crate::engine::{Actor, AdminCommand, AdminReply, Command};
use crate::refusal::Refusal;
use crate::state::Shared;

/// Whether this broker lets `req` create a mesh (PROTOCOL.md, mesh creation policy).
fn creation_allowed(config: &BrokerConfig, req: &CreateMeshRequest) -> Result<(), Refusal> {
    match &config.mesh_creation {
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
    const LIMIT: crate::ratelimit::HttpKind = crate::ratelimit::HttpKind::CreateMesh;
    fn command(self, _: &PathIds) -> AdminCommand {
        AdminCommand::CreateMesh(self)
    }
    fn signed(&self) -> &Signed {
        &self.signed
    }
    fn args(&self, _: &PathIds) -> Vec<String> {
        vec![self.slug.clone(), self.name.clone()]
    }
    fn check(&self, config: &BrokerConfig) -> Result<(), Refusal> {
        creation_allowed(config, self)?;
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
    fn command(self, path: &PathIds) -> AdminCommand {
        let mesh_id = path.get("mesh_id").to_owned();
        AdminCommand::RegisterInvite { mesh_id, req: self }
    }
    fn signed(&self) -> &Signed {
        &self.signed
    }
    fn args(&self, _: &PathIds) -> Vec<String> {
        vec![self.invite.invite_id(), self.max_uses.to_string()]
    }
    fn check(&self, _: &BrokerConfig) -> Result<(), Refusal> {
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
    fn command(self, path: &PathIds) -> AdminCommand {
        AdminCommand::RemoveMember {
            mesh_id: path.get("mesh_id").to_owned(),
            member_id: path.get("member_id").to_owned(),
            mode: self.mode,
            actor: Actor::Signed(self.signed),
        }
    }
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

/// A body that is only the signature envelope, for one action.
macro_rules! bare_signed {
    ($name:ident, $action:expr, |$path:ident, $signed:ident| $command:expr, $($arg:literal),*) => {
        #[derive(Debug, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Signed);

        impl SignedBody for $name {
            const ACTION: AdminAction = $action;
            fn command(self, $path: &PathIds) -> AdminCommand {
                let $signed = self.0;
                $command
            }
            fn signed(&self) -> &Signed {
                &self.0
            }
            fn args(&self, _path: &PathIds) -> Vec<String> {
                vec![$(_path.get($arg).to_owned()),*]
            }
        }
    };
}

bare_signed!(ListInvites, AdminAction::ListInvites, |path, signed| {
    AdminCommand::ListInvites {
        mesh_id: path.get("mesh_id").to_owned(),
        signed,
    }
},);
bare_signed!(
    RevokeInvite,
    AdminAction::RevokeInvite,
    |path, signed| AdminCommand::RevokeInvite {
        mesh_id: path.get("mesh_id").to_owned(),
        invite_id: path.get("invite_id").to_owned(),
        actor: Actor::Signed(signed)
    },
    "invite_id"
);
bare_signed!(
    DashboardLogin,
    AdminAction::DashboardLogin,
    |path, signed| {
        AdminCommand::DashboardLogin {
            mesh_id: path.get("mesh_id").to_owned(),
            signed,
        }
    },
);
bare_signed!(ListMembers, AdminAction::ListMembers, |path, signed| {
    AdminCommand::ListMembers {
        mesh_id: path.get("mesh_id").to_owned(),
        signed,
    }
},);

/// Every admin route: a verified request becomes its command; the engine decides, and
/// its reply is rendered as JSON.
pub async fn handle<T: SignedBody>(
    State(shared): State<Arc<Shared>>,
    v: Verified<T>,
) -> Result<Response, HttpError> {
    let cmd = v.body.command(&v.path);
    let reply = shared
        .engine
        .request(|reply| Command::Admin { cmd, reply })
        .await??;
    Ok(match reply {
        AdminReply::MeshCreated(r) => axum::Json(r).into_response(),
        AdminReply::InviteRegistered(r) => axum::Json(r).into_response(),
        AdminReply::Invites(r) => axum::Json(r).into_response(),
        AdminReply::Members(r) => axum::Json(r).into_response(),
        AdminReply::Viewer { .. } => axum::Json(serde_json::json!({ "ok": true })).into_response(),
        AdminReply::Done => axum::Json(serde_json::json!({ "ok": true })).into_response(),
    })
}
