//! The HTTP side: one axum router. Rooms: `ws` (the WebSocket upgrade), `ops`
//! (`/health`, `/metrics`), `join` (`POST /join`, v1), `admin` (the signed mesh-admin API
//! under `/api/meshes`, through the one [`signed::Verified`] extractor), `error` (the one
//! type that renders every refusal as a status and a JSON body). Handlers check what is
//! stateless and hand the rest to the engine with [`EngineHandle::request`].
//!
//! [`EngineHandle::request`]: crate::engine::EngineHandle::request

mod admin;
mod error;
mod join;
mod ops;
pub mod serve;
mod signed;
mod ws;

use std::sync::Arc;

use admin::{ListInvites, ListMembers, RevokeInvite, handle};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use claudemesh_proto::http::{CreateMeshRequest, RegisterInviteRequest, RemoveMemberRequest};
use claudemesh_proto::limits;

use crate::state::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .route("/join", post(join::join))
        .route("/api/meshes", post(handle::<CreateMeshRequest>))
        .route(
            "/api/meshes/{mesh_id}/invites",
            post(handle::<RegisterInviteRequest>),
        )
        .route(
            "/api/meshes/{mesh_id}/invites/list",
            post(handle::<ListInvites>),
        )
        .route(
            "/api/meshes/{mesh_id}/invites/{invite_id}/revoke",
            post(handle::<RevokeInvite>),
        )
        .route(
            "/api/meshes/{mesh_id}/members/list",
            post(handle::<ListMembers>),
        )
        .route(
            "/api/meshes/{mesh_id}/members/{member_id}/remove",
            post(handle::<RemoveMemberRequest>),
        )
        .layer(DefaultBodyLimit::max(limits::MAX_FRAME_BYTES))
        .with_state(shared)
}

/// What a connection from the operators' reserve is served (see [`serve`]): `/health` and
/// `/metrics`, and 503 `unavailable` for anything else.
pub fn ops_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async {
            error::HttpError::api(crate::refusal::Refusal::new(
                claudemesh_proto::codes::Code::Unavailable,
                "the broker is at its limit of unauthenticated connections; retry in a few seconds",
            ))
        })
        .with_state(shared)
}
