//! `POST /join` (WIRE-V1 enrollment): parse, then the engine decides (see
//! `engine/join.rs`). Refusals use the v1 status (400, or 503 when storage is down).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use claudemesh_proto::codes::Code;
use claudemesh_proto::http::JoinRequest;

use super::error::HttpError;
use crate::engine::Command;
use crate::ratelimit::HttpKind;
use crate::refusal::Refusal;
use crate::state::Shared;

pub async fn join(
    State(shared): State<Arc<Shared>>,
    super::error::Peer(peer): super::error::Peer,
    body: axum::body::Body,
) -> Result<Response, HttpError> {
    super::error::limit(&shared, HttpKind::Join, peer).map_err(HttpError::join)?;
    let body: Bytes = axum::body::to_bytes(body, claudemesh_proto::limits::MAX_FRAME_BYTES)
        .await
        .map_err(|_| {
            HttpError::join(Refusal::new(
                Code::PayloadTooLarge,
                "request body is too large",
            ))
        })?;
    let req: JoinRequest = serde_json::from_slice(&body).map_err(|e| {
        HttpError::join(Refusal::new(
            Code::Malformed,
            format!("request body is not valid: {e}"),
        ))
    })?;
    let resp = shared
        .engine
        .request(|reply| Command::Join { req, reply })
        .await
        .map_err(|_| HttpError::join(Refusal::shutting_down()))?
        .map_err(HttpError::join)?;
    Ok(axum::Json(resp).into_response())
}
