//! The HTTP side: one axum router serving `/ws`, `/health`, `/metrics`, `POST /join` and
//! the signed mesh-admin API under `/api/meshes`. Handlers verify what is stateless
//! (JSON shape, clock skew, signatures, the creation policy) and hand the rest to the
//! engine. Error bodies carry a stable code and a human message, never internals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use claudemesh_crypto::{PublicKey, Signature};
use claudemesh_proto::canonical::{self, AdminAction};
use claudemesh_proto::codes;
use claudemesh_proto::http::{
    ApiError, CreateMeshRequest, Health, JoinRequest, JoinResponse, RegisterInviteRequest,
    RemoveMemberRequest, Signed,
};
use claudemesh_proto::limits;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{BrokerConfig, MeshCreation};
use crate::engine::{AdminCommand, ApiFailure, Command, EngineHandle};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use claudemesh_proto::time::now_ms;

/// State shared by every handler and connection task.
#[derive(Debug)]
pub struct Shared {
    pub config: BrokerConfig,
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    pub rate_limiter: RateLimiter,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub connections: Arc<Semaphore>,
    pub next_conn: AtomicU64,
    pub started: Instant,
}

/// Initial WebSocket read buffer per connection.
const WS_READ_BUFFER: usize = 4 * 1024;
/// Bytes buffered before a WebSocket write goes to the socket (a flush always writes).
const WS_WRITE_BUFFER: usize = 8 * 1024;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ws", get(ws))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/join", post(join))
        .route("/api/meshes", post(create_mesh))
        .route("/api/meshes/{mesh_id}/invites", post(register_invite))
        .route("/api/meshes/{mesh_id}/invites/list", post(list_invites))
        .route(
            "/api/meshes/{mesh_id}/invites/{invite_id}/revoke",
            post(revoke_invite),
        )
        .route("/api/meshes/{mesh_id}/members/list", post(list_members))
        .route(
            "/api/meshes/{mesh_id}/members/{member_id}/remove",
            post(remove_member),
        )
        .layer(DefaultBodyLimit::max(limits::MAX_FRAME_BYTES))
        .with_state(shared)
}

async fn ws(State(shared): State<Arc<Shared>>, upgrade: WebSocketUpgrade) -> Response {
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        return api_error(&ApiFailure::new(
            503,
            codes::UNAVAILABLE,
            "too many connections",
        ));
    };
    if shared.shutdown.is_cancelled() {
        return api_error(&ApiFailure::new(503, codes::UNAVAILABLE, "shutting down"));
    }
    let id = shared.next_conn.fetch_add(1, Relaxed);
    // tungstenite's defaults (128 KiB read buffer, 128 KiB write threshold) cost ~160 KiB
    // per idle connection; frames are at most 64 KiB and writes are flushed per batch, so
    // small buffers that grow on demand are enough.
    upgrade
        .max_message_size(limits::MAX_FRAME_BYTES)
        .max_frame_size(limits::MAX_FRAME_BYTES)
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .on_upgrade(move |socket| {
            let tasks = shared.tasks.clone();
            tasks.track_future(async move {
                crate::conn::serve(socket, shared, id).await;
                drop(permit);
            })
        })
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let (reply, rx) = oneshot::channel();
    // The whole round trip, queueing included, must finish within 2 s.
    let round_trip = async {
        shared.engine.send(Command::Health { reply }).await.is_ok() && matches!(rx.await, Ok(true))
    };
    let up = matches!(
        tokio::time::timeout(Duration::from_secs(2), round_trip).await,
        Ok(true)
    );
    let body = Health {
        status: if up { "ok" } else { "degraded" }.into(),
        db: if up { "up" } else { "down" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime: shared.started.elapsed().as_secs(),
    };
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}

fn api_error(f: &ApiFailure) -> Response {
    let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        axum::Json(ApiError {
            ok: false,
            error: f.code.to_owned(),
            message: f.message.clone(),
        }),
    )
        .into_response()
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiFailure> {
    serde_json::from_slice(body).map_err(|e| {
        ApiFailure::new(
            400,
            codes::MALFORMED,
            format!("request body is not valid: {e}"),
        )
    })
}

/// Check skew and the signature over the admin canonical string.
fn verify_signed(
    signed: &Signed,
    action: AdminAction,
    mesh_id: &str,
    args: &[&str],
) -> Result<(), ApiFailure> {
    let now = now_ms();
    if (now - signed.timestamp).abs() > limits::MAX_CLOCK_SKEW_MS {
        return Err(ApiFailure::new(
            401,
            codes::TIMESTAMP_SKEW,
            "timestamp is too far from the broker clock; check your system time",
        ));
    }
    let key = PublicKey::from_hex(&signed.signer_pubkey).map_err(|_| {
        ApiFailure::new(
            400,
            codes::MALFORMED,
            "signerPubkey is not a 64-hex ed25519 key",
        )
    })?;
    let sig = Signature::from_hex(&signed.signature).map_err(|_| {
        ApiFailure::new(
            401,
            codes::BAD_SIGNATURE,
            "signature is not 128 hex characters",
        )
    })?;
    let text = canonical::admin(
        action,
        mesh_id,
        &signed.signer_pubkey,
        signed.timestamp,
        args,
    );
    key.verify_str(&text, &sig).map_err(|_| {
        ApiFailure::new(
            401,
            codes::BAD_SIGNATURE,
            "request signature does not verify",
        )
    })
}

async fn run_admin(shared: &Shared, cmd: AdminCommand) -> Response {
    let (reply, rx) = oneshot::channel();
    if shared
        .engine
        .send(Command::Admin { cmd, reply })
        .await
        .is_err()
    {
        return api_error(&ApiFailure::new(503, codes::UNAVAILABLE, "shutting down"));
    }
    match rx.await {
        Ok(Ok(v)) => (StatusCode::OK, axum::Json(v)).into_response(),
        Ok(Err(f)) => api_error(&f),
        Err(_) => api_error(&ApiFailure::new(503, codes::UNAVAILABLE, "shutting down")),
    }
}

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

async fn create_mesh(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let result = async {
        let req: CreateMeshRequest = parse(&body)?;
        match &shared.config.mesh_creation {
            MeshCreation::Open => {}
            MeshCreation::Closed => {
                return Err(ApiFailure::new(
                    403,
                    codes::CREATION_DISABLED,
                    "mesh creation is disabled on this broker",
                ));
            }
            MeshCreation::Token(expected) => {
                let given = req.creation_token.as_deref().unwrap_or_default();
                if !bool::from(subtle::ConstantTimeEq::ct_eq(
                    given.as_bytes(),
                    expected.as_bytes(),
                )) {
                    return Err(ApiFailure::new(
                        403,
                        codes::CREATION_DISABLED,
                        "a valid creation token is required to create meshes on this broker",
                    ));
                }
            }
        }
        if !valid_slug(&req.slug) {
            return Err(ApiFailure::new(
                400,
                codes::MALFORMED,
                "slug must be 1-64 characters of a-z, 0-9 and '-'",
            ));
        }
        if !valid_name(&req.name)
            || req
                .owner_display_name
                .as_deref()
                .is_some_and(|n| !valid_name(n))
        {
            return Err(ApiFailure::new(
                400,
                codes::MALFORMED,
                "names must be non-empty, at most 512 bytes, without '|' or control characters",
            ));
        }
        verify_signed(
            &req.signed,
            AdminAction::CreateMesh,
            "",
            &[&req.slug, &req.name],
        )?;
        Ok(req)
    }
    .await;
    match result {
        Ok(req) => run_admin(&shared, AdminCommand::CreateMesh(req)).await,
        Err(f) => api_error(&f),
    }
}

async fn register_invite(
    State(shared): State<Arc<Shared>>,
    Path(mesh_id): Path<String>,
    body: Bytes,
) -> Response {
    let result = (|| {
        let req: RegisterInviteRequest = parse(&body)?;
        req.invite.verify().map_err(|_| {
            ApiFailure::new(
                400,
                codes::INVITE_BAD_SIGNATURE,
                "the invite's signature does not verify",
            )
        })?;
        let max_uses = req.max_uses.to_string();
        verify_signed(
            &req.signed,
            AdminAction::RegisterInvite,
            &mesh_id,
            &[&req.invite.invite_id(), &max_uses],
        )?;
        Ok(req)
    })();
    match result {
        Ok(req) => run_admin(&shared, AdminCommand::RegisterInvite { mesh_id, req }).await,
        Err(f) => api_error(&f),
    }
}

async fn list_invites(
    State(shared): State<Arc<Shared>>,
    Path(mesh_id): Path<String>,
    body: Bytes,
) -> Response {
    match parse::<Signed>(&body)
        .and_then(|s| verify_signed(&s, AdminAction::ListInvites, &mesh_id, &[]).map(|()| s))
    {
        Ok(signed) => run_admin(&shared, AdminCommand::ListInvites { mesh_id, signed }).await,
        Err(f) => api_error(&f),
    }
}

async fn revoke_invite(
    State(shared): State<Arc<Shared>>,
    Path((mesh_id, invite_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    match parse::<Signed>(&body).and_then(|s| {
        verify_signed(&s, AdminAction::RevokeInvite, &mesh_id, &[&invite_id]).map(|()| s)
    }) {
        Ok(signed) => {
            run_admin(
                &shared,
                AdminCommand::RevokeInvite {
                    mesh_id,
                    invite_id,
                    signed,
                },
            )
            .await
        }
        Err(f) => api_error(&f),
    }
}

async fn list_members(
    State(shared): State<Arc<Shared>>,
    Path(mesh_id): Path<String>,
    body: Bytes,
) -> Response {
    match parse::<Signed>(&body)
        .and_then(|s| verify_signed(&s, AdminAction::ListMembers, &mesh_id, &[]).map(|()| s))
    {
        Ok(signed) => run_admin(&shared, AdminCommand::ListMembers { mesh_id, signed }).await,
        Err(f) => api_error(&f),
    }
}

async fn remove_member(
    State(shared): State<Arc<Shared>>,
    Path((mesh_id, member_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let result = parse::<RemoveMemberRequest>(&body).and_then(|r| {
        verify_signed(
            &r.signed,
            AdminAction::RemoveMember,
            &mesh_id,
            &[&member_id, r.mode.as_str()],
        )
        .map(|()| r)
    });
    match result {
        Ok(r) => {
            run_admin(
                &shared,
                AdminCommand::RemoveMember {
                    mesh_id,
                    member_id,
                    mode: r.mode,
                    signed: r.signed,
                },
            )
            .await
        }
        Err(f) => api_error(&f),
    }
}

async fn join(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let req: JoinRequest = match parse(&body) {
        Ok(r) => r,
        Err(f) => return join_error(&f),
    };
    let (reply, rx) = oneshot::channel();
    if shared
        .engine
        .send(Command::Join { req, reply })
        .await
        .is_err()
    {
        return join_error(&ApiFailure::new(503, codes::UNAVAILABLE, "shutting down"));
    }
    match rx.await {
        Ok(Ok(resp)) => (StatusCode::OK, axum::Json(resp)).into_response(),
        Ok(Err(f)) => join_error(&f),
        Err(_) => join_error(&ApiFailure::new(503, codes::UNAVAILABLE, "shutting down")),
    }
}

/// v1 shape: `{ok:false, error}` (plus our `message`).
fn join_error(f: &ApiFailure) -> Response {
    let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = JoinResponse {
        ok: false,
        member_id: None,
        already_member: None,
        mesh_id: None,
        role: None,
        error: Some(f.code.to_owned()),
    };
    let mut v = serde_json::to_value(body).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "message".into(),
            serde_json::Value::String(f.message.clone()),
        );
    }
    (status, axum::Json(v)).into_response()
}
