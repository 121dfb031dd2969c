//! The HTTP side: one axum router. Rooms: `ws` (the WebSocket upgrade), `ops`
//! (`/health`, `/metrics`), `join` (`POST /join`, v1), `admin` (the signed mesh-admin API
//! under `/api/meshes`, through the one [`signed::Verified`] extractor), `error` (the one
//! type that renders every refusal as a status and a JSON body). Handlers check what is
//! stateless and hand the rest to the engine with [`EngineHandle::request`].
//!
//! [`EngineHandle::request`]: crate::engine::EngineHandle::request

mod admin;
pub mod dashboard;
mod error;
mod join;
mod ops;
pub mod serve;
mod signed;
mod ws;

use std::sync::Arc;

use admin::{ListInvites, ListMembers, RevokeInvite, handle};
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
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
        .merge(dashboard::routes())
        .layer(DefaultBodyLimit::max(limits::MAX_FRAME_BYTES))
        .with_state(shared)
}

/// What a queued connection is served (see [`serve`]): `app` behind a gate. `/health` and
/// `/metrics` are answered at once; a WebSocket upgrade waits up to
/// [`serve::QUEUE_WAIT`] for a place; anything else is served if a place is free now.
/// Without a place: 503 `unavailable`.
pub fn lobby_router(shared: Arc<Shared>, app: Router) -> Router {
    app.layer(axum::middleware::from_fn_with_state(shared, lobby_gate))
}

async fn lobby_gate(
    State(shared): State<Arc<Shared>>,
    slot: Option<axum::Extension<serve::PreAuthSlot>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let upgrade = req.method() == axum::http::Method::GET && req.uri().path() == "/ws";
    let wait = match req.uri().path() {
        "/health" | "/metrics" => return next.run(req).await,
        // Waiting is for a connection that can be served: none while the cap is full.
        _ if upgrade && shared.connections.available_permits() > 0 => serve::QUEUE_WAIT,
        _ => std::time::Duration::ZERO,
    };
    let placed = match &slot {
        Some(slot) => tokio::select! {
            placed = slot.0.place(wait) => placed,
            () = shared.shutdown.cancelled() => false,
        },
        None => false,
    };
    if placed {
        return next.run(req).await;
    }
    crate::metrics::Metrics::inc(&shared.metrics.preauth_queue_timeouts_total);
    axum::response::IntoResponse::into_response(full_house())
}

/// The answer when the unauthenticated places are taken.
fn full_house() -> error::HttpError {
    error::HttpError::api(crate::refusal::Refusal::new(
        claudemesh_proto::codes::Code::Unavailable,
        "the broker is at its limit of unauthenticated connections; retry in a few seconds",
    ))
}

/// What a connection from the operators' reserve is served (see [`serve`]): `/health` and
/// `/metrics`, and 503 `unavailable` for anything else.
pub fn ops_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { full_house() })
        .with_state(shared)
}

/// The signed admin routes of [`router`], by the body type each one's [`signed::Verified`]
/// extractor reads. Only the fuzz targets (`crate::fuzzing`) name routes this way; a new
/// admin route is added here too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRoute {
    CreateMesh,
    RegisterInvite,
    ListInvites,
    RevokeInvite,
    ListMembers,
    RemoveMember,
    DashboardLogin,
}

impl AdminRoute {
    pub const ALL: [AdminRoute; 7] = [
        AdminRoute::CreateMesh,
        AdminRoute::RegisterInvite,
        AdminRoute::ListInvites,
        AdminRoute::RevokeInvite,
        AdminRoute::ListMembers,
        AdminRoute::RemoveMember,
        AdminRoute::DashboardLogin,
    ];

    /// What the route's extractor does once path and body are read (parse, stateless
    /// checks, skew against `now`, signature); see [`signed::Verified::from_body`].
    pub(crate) fn verify(
        self,
        path: signed::PathIds,
        body: &[u8],
        config: &crate::config::BrokerConfig,
        now: i64,
    ) -> Result<(), crate::refusal::Refusal> {
        use signed::Verified;
        match self {
            AdminRoute::CreateMesh => {
                Verified::<CreateMeshRequest>::from_body(path, body, config, now).map(drop)
            }
            AdminRoute::RegisterInvite => {
                Verified::<RegisterInviteRequest>::from_body(path, body, config, now).map(drop)
            }
            AdminRoute::ListInvites => {
                Verified::<ListInvites>::from_body(path, body, config, now).map(drop)
            }
            AdminRoute::RevokeInvite => {
                Verified::<RevokeInvite>::from_body(path, body, config, now).map(drop)
            }
            AdminRoute::ListMembers => {
                Verified::<ListMembers>::from_body(path, body, config, now).map(drop)
            }
            AdminRoute::RemoveMember => {
                Verified::<RemoveMemberRequest>::from_body(path, body, config, now).map(drop)
            }
            AdminRoute::DashboardLogin => {
                Verified::<admin::DashboardLogin>::from_body(path, body, config, now).map(drop)
            }
        }
    }
}

/// The client address the per-source limits count for a request with these headers and
/// no TCP peer (see [`error::peer_of`]). For the fuzz targets.
pub(crate) fn forwarded_source(
    headers: axum::http::HeaderMap,
    trust_proxy: bool,
) -> Option<std::net::IpAddr> {
    let mut request = axum::http::Request::new(());
    *request.headers_mut() = headers;
    let (parts, ()) = request.into_parts();
    error::peer_of(&parts, trust_proxy)
}
