//! `GET /ws`: the WebSocket upgrade, under the connection cap, with small buffers; each
//! upgraded socket is served by a tracked `conn` task.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::{State, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use claudemesh_proto::codes::Code;
use claudemesh_proto::limits;

use super::error::HttpError;
use crate::refusal::Refusal;
use crate::state::Shared;

/// Initial WebSocket read buffer per connection.
const WS_READ_BUFFER: usize = 2 * 1024;
/// Bytes buffered before a WebSocket write goes to the socket (a flush always writes).
const WS_WRITE_BUFFER: usize = 8 * 1024;

pub async fn upgrade(
    State(shared): State<Arc<Shared>>,
    slot: Option<axum::Extension<super::serve::PreAuthSlot>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        let r = Refusal::new(Code::Unavailable, "too many connections");
        return HttpError::api(r).into_response();
    };
    if shared.shutdown.is_cancelled() {
        return HttpError::api(Refusal::shutting_down()).into_response();
    }
    // Counted as unauthenticated until its hello succeeds (see `serve.rs`); taken only
    // now, so a refused upgrade leaves the connection counted.
    let preauth = slot.and_then(|s| s.0.take());
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
            tasks.track_future(crate::conn::serve(socket, shared, id, preauth, permit))
        })
}
