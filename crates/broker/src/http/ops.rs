//! Operator endpoints: `GET /health` (a round trip through the engine to the database,
//! 503 when it fails or takes over 2 s) and `GET /metrics` (OpenMetrics text).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use claudemesh_proto::http::Health;

use crate::engine::Command;
use crate::state::Shared;

pub async fn health(State(shared): State<Arc<Shared>>) -> Response {
    // The whole round trip, queueing included, must finish within 2 s.
    let round_trip = shared.engine.request(|reply| Command::Health { reply });
    let (up, nodes) = match tokio::time::timeout(Duration::from_secs(2), round_trip).await {
        Ok(Ok(answer)) => answer,
        _ => (false, None),
    };
    let body = Health {
        status: if up { "ok" } else { "degraded" }.into(),
        db: if up { "up" } else { "down" }.into(),
        backend: shared.config.backend().into(),
        node: shared.config.node_name.clone(),
        nodes,
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

pub async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.render(),
    )
        .into_response()
}
