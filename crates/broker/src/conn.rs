//! One actor per WebSocket connection, one `select!` loop: read frames (≤ 64 KiB), enforce
//! the hello deadline, verify hellos, rate-limit, forward frames to the engine, write what
//! the engine sends (bounded channel, write timeout), ping, and close on request (kick,
//! revoke, replacement, slow reader) or shutdown.
//!
//! What it must not do: decide anything that needs shared state (the engine does), log
//! frame contents, or panic on any input.

use claudemesh_proto::codes::Code;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use claudemesh_proto::codes::close;
use claudemesh_proto::frames::{BrokerFrame, ClientFrame, ErrorFrame, Push, ReqId};
use claudemesh_proto::limits;
use futures_util::SinkExt as _;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::auth::{self, Rejection};
use crate::engine::{
    Attached, Budget, Command, ConnHandle, ConnId, Delivery, Kill, MAX_AWAITING_REPLIES, Outbound,
    Request, render,
};
use crate::metrics::Metrics;
use crate::state::Shared;
use claudemesh_proto::time::{iso8601, now_ms};

/// Longest a single write (or batch of writes) may take before the reader counts as dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most queued frames written before one flush.
const WRITE_BATCH: usize = 64;
/// How long the client has to answer our close frame (its in-flight frames are discarded).
const CLOSE_DRAIN: Duration = Duration::from_secs(2);
/// How long queued frames may take to go out when a connection is being closed.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

enum Flow {
    Continue,
    Close(u16, String),
}

/// Serve one upgraded WebSocket until it closes; `permit`, its place under the connection
/// cap, is given back after its `Detach` was queued for the engine.
///
/// An async block, not an `async fn`: an async fn keeps its arguments in its future beside
/// what they were moved into (the socket alone is 368 bytes), and every idle connection's
/// task keeps room for all of it.
pub fn serve(
    socket: WebSocket,
    shared: Arc<Shared>,
    id: ConnId,
    preauth: Option<crate::http::serve::PreAuth>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send + 'static {
    let span = tracing::info_span!("conn", id);
    let mut conn = Connection::new(socket, shared, id, preauth);
    async move {
        conn.run().await;
        drop(conn);
        drop(permit);
    }
    .instrument(span)
}

/// What a frame still needs after [`Connection::take`], on a path rare enough to be boxed:
/// an error to write, a hello to authenticate, a command for an engine whose inbox is full.
enum Slow {
    Refuse(Message),
    Reply(Message),
    Hello(Box<(Result<auth::VerifiedHello, Rejection>, Option<ReqId>)>),
    Engine(Box<Command>),
}

struct Connection {
    socket: WebSocket,
    shared: Arc<Shared>,
    handle: ConnHandle,
    rx: mpsc::Receiver<Outbound>,
    attached: Option<Attached>,
    last_heard: Instant,
    /// Forwarded requests whose reply has not been written yet; past the budget the
    /// socket is not read until replies go out, so TCP pushes back on the client and the
    /// outbound channel only ever has to absorb pushes (bounded by the outbound buffer).
    budget: Budget,
    /// The client sent a close frame: it left on purpose.
    client_closed: bool,
    /// Its place among unauthenticated connections, until the hello succeeds.
    preauth: Option<crate::http::serve::PreAuth>,
    /// Budget for frames that are answered only with an error.
    bad_frames: governor::DefaultDirectRateLimiter,
}

fn text(frame: &BrokerFrame) -> Message {
    Message::Text(render(frame))
}

/// The `push` JSON of a delivery. A multicast's frame is rendered once for all its
/// recipients (without `sealedKey`) and kept with the message, and each recipient's sealed
/// key is spliced in where serde would write it (last). A body no other delivery shares
/// (a direct message, or a copy read back from the database) is rendered as is, and
/// nothing is kept: a burst holds many in flight.
fn push_text(d: &Delivery) -> Utf8Bytes {
    if !d.message.multicast || std::sync::Arc::strong_count(&d.message) < 2 {
        return render(&push_frame(d));
    }
    let shared = d.message.rendered.get_or_init(|| {
        let frame = push_frame(&Delivery {
            sealed_key: None,
            message: d.message.clone(),
            ..*d
        });
        render(&frame)
    });
    let Some(key) = &d.sealed_key else {
        return shared.clone();
    };
    let key = serde_json::to_string(key).unwrap_or_default();
    let head = shared.as_str().strip_suffix('}').unwrap_or_default();
    let mut text = String::with_capacity(head.len() + key.len() + 14);
    text.push_str(head);
    text.push_str(",\"sealedKey\":");
    text.push_str(&key);
    text.push('}');
    Utf8Bytes::from(text)
}

fn push_frame(d: &Delivery) -> BrokerFrame {
    let m = &d.message;
    let multicast = m.multicast;
    BrokerFrame::Push(Push {
        message_id: m.message_id.clone(),
        mesh_id: m.mesh_id.clone(),
        sender_pubkey: m.sender_pubkey.clone(),
        priority: d.priority,
        nonce: m.nonce.clone(),
        ciphertext: m.ciphertext.clone(),
        created_at: iso8601(m.created_at),
        client_message_id: m.client_message_id.clone(),
        sender_member_pubkey: multicast.then(|| m.sender_member_pubkey.clone()),
        sender_name: multicast.then(|| m.sender_name.clone()),
        target_spec: Some(m.target_spec.clone()),
        sealed_key: d.sealed_key.clone(),
        subtype: None,
        event: None,
        event_data: None,
    })
}

fn error(code: Code, message: &str, req_id: Option<ReqId>) -> BrokerFrame {
    BrokerFrame::Error(ErrorFrame::new(code, message).with_req_id(req_id))
}

impl Connection {
    fn new(
        socket: WebSocket,
        shared: Arc<Shared>,
        id: ConnId,
        preauth: Option<crate::http::serve::PreAuth>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(shared.config.outbound_buffer.max(1) + MAX_AWAITING_REPLIES);
        let clock = shared.clock.clone();
        let handle = ConnHandle {
            id,
            tx,
            kill: Arc::new(Kill::default()),
            queued_pushes: Arc::default(),
        };
        Self {
            socket,
            shared,
            handle,
            rx,
            attached: None,
            last_heard: Instant::now(),
            budget: Budget::default(),
            client_closed: false,
            preauth,
            bad_frames: governor::RateLimiter::direct_with_clock(
                governor::Quota::per_second(
                    NonZeroU32::new(limits::GARBAGE_PER_SEC).unwrap_or(NonZeroU32::MIN),
                )
                .allow_burst(NonZeroU32::new(limits::GARBAGE_BURST).unwrap_or(NonZeroU32::MIN)),
                clock,
            ),
        }
    }

    async fn run(&mut self) {
        let timings = self.shared.config.timings;
        let hello_deadline = tokio::time::sleep(timings.hello_deadline);
        tokio::pin!(hello_deadline);
        // Tick often enough that a dead socket is noticed close to `dead_after`; ping only
        // every `ping_interval`.
        let tick = timings
            .ping_interval
            .min(timings.dead_after / 15)
            .max(Duration::from_millis(10));
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
        let mut last_ping = Instant::now();
        let kill = self.handle.kill.clone();
        let shutdown = self.shared.shutdown.clone();

        let (code, reason) = loop {
            let flow = tokio::select! {
                biased;
                () = shutdown.cancelled() => Flow::Close(close::GOING_AWAY, "shutting down".into()),
                () = kill.token().cancelled() => {
                    let (code, reason) = kill.reason().unwrap_or((close::NORMAL, String::new()));
                    Flow::Close(code, reason)
                }
                () = &mut hello_deadline, if self.attached.is_none() => {
                    Flow::Close(close::REJECTED, "hello_timeout".into())
                }
                out = self.rx.recv() => match out {
                    Some(out) => self.write(out).await,
                    None => Flow::Close(close::NORMAL, String::new()),
                },
                msg = self.socket.recv(), if self.budget.has_room() => match msg {
                    Some(Ok(msg)) => {
                        self.last_heard = Instant::now();
                        match self.take(msg) {
                            Ok(flow) => flow,
                            // Boxed: every idle connection's task would keep room for the
                            // rare paths' futures (the hello's alone is 2.4 KB).
                            Err(slow) => Box::pin(self.finish(slow)).await,
                        }
                    }
                    Some(Err(e)) => {
                        // Most often a frame over the size limit; the socket is unusable after it.
                        tracing::debug!(error = %e, "websocket read error");
                        Flow::Close(1009, "frame too large or malformed".into())
                    }
                    None => Flow::Close(close::NORMAL, String::new()),
                },
                _ = ping.tick() => {
                    if self.last_heard.elapsed() > timings.dead_after {
                        Flow::Close(close::GOING_AWAY, "no pong".into())
                    } else if last_ping.elapsed() >= timings.ping_interval {
                        last_ping = Instant::now();
                        self.send_now(Message::Ping(Default::default())).await
                    } else {
                        Flow::Continue
                    }
                }
            };
            if let Flow::Close(code, reason) = flow {
                break (code, reason);
            }
        };
        tracing::debug!(code, reason = %reason, "closing");
        // Whatever was queued before the close (an error ack, a last push) goes out first.
        let _ = tokio::time::timeout(CLOSE_FLUSH, self.flush_queued()).await;
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.socket.send(Message::Close(Some(frame))),
        )
        .await;
        if !self.client_closed {
            // The closing handshake: read and discard what the client still sends until
            // its close reply. Closing the socket over unread data would make the kernel
            // reset the connection, and the client would see a bare drop (1006) instead
            // of our close frame and the frames queued before it.
            let socket = &mut self.socket;
            let drain = async {
                while let Some(Ok(msg)) = socket.recv().await {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_DRAIN, drain).await;
        }
        // The engine hears `Detach` when the connection drops (see the `Drop` impl).
    }

    /// Answer a frame that only earns an error, within the connection's bad-frame budget;
    /// a client that keeps sending them is closed instead of being answered at full speed.
    async fn refuse_bad_frame(&mut self, refusal: Message) -> Flow {
        if self.bad_frames.check().is_err() {
            Metrics::inc(&self.shared.metrics.rate_limited_total);
            return Flow::Close(close::REJECTED, "too_many_bad_frames".into());
        }
        self.send_now(refusal).await
    }

    async fn send_now(&mut self, msg: Message) -> Flow {
        match tokio::time::timeout(WRITE_TIMEOUT, self.socket.send(msg)).await {
            Ok(Ok(())) => Flow::Continue,
            Ok(Err(_)) => Flow::Close(close::NORMAL, String::new()),
            Err(_) => Flow::Close(close::REJECTED, "write timeout".into()),
        }
    }

    fn render(&mut self, out: Outbound) -> Message {
        match out {
            Outbound::Frame(f) => text(&f),
            // The slot returns to the budget when `_slot` drops, after rendering.
            Outbound::Reply(f, _slot) => text(&f),
            Outbound::Deliver(d) => {
                self.handle
                    .queued_pushes
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                Message::Text(push_text(&d))
            }
            Outbound::Text(t) => Message::Text(*t),
        }
    }

    async fn flush_queued(&mut self) {
        while let Ok(out) = self.rx.try_recv() {
            let msg = self.render(out);
            if self.socket.feed(msg).await.is_err() {
                return;
            }
        }
        let _ = self.socket.flush().await;
    }

    /// Write one queued frame plus whatever else is queued (up to a batch), then flush.
    async fn write(&mut self, first: Outbound) -> Flow {
        let mut batch = vec![self.render(first)];
        while batch.len() < WRITE_BATCH {
            match self.rx.try_recv() {
                Ok(out) => {
                    let msg = self.render(out);
                    batch.push(msg);
                }
                Err(_) => break,
            }
        }
        let socket = &mut self.socket;
        let write = async move {
            for msg in batch {
                socket.feed(msg).await?;
            }
            socket.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => Flow::Continue,
            Ok(Err(_)) => Flow::Close(close::NORMAL, String::new()),
            Err(_) => Flow::Close(close::REJECTED, "write timeout".into()),
        }
    }

    /// Take one frame from the client: done at once (most frames: handed to the engine),
    /// or what is still to do ([`Connection::finish`]).
    fn take(&mut self, msg: Message) -> Result<Flow, Slow> {
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                let refusal = text_error(Code::Malformed, "frames must be JSON text", None);
                return Err(Slow::Refuse(refusal));
            }
            Message::Ping(_) | Message::Pong(_) => return Ok(Flow::Continue),
            Message::Close(_) => {
                // A close frame is a deliberate goodbye (a dropped network sends none):
                // the presence ends at once instead of waiting out the grace period.
                self.client_closed = true;
                return Ok(Flow::Close(close::NORMAL, String::new()));
            }
        };
        let frame = parse(text.as_str(), self.attached.is_some()).map_err(Slow::Refuse)?;
        match (&self.attached, frame) {
            (None, ClientFrame::Hello(h)) => {
                let req_id = h.req_id.clone();
                Err(Slow::Hello(Box::new((
                    auth::verify_hello(h, now_ms()),
                    req_id,
                ))))
            }
            (None, ClientFrame::SessionHello(h)) => {
                let req_id = h.req_id.clone();
                let verified = auth::verify_session_hello(h, now_ms());
                Err(Slow::Hello(Box::new((verified, req_id))))
            }
            (None, other) => {
                let req_id = other.req_id().cloned();
                let refusal =
                    text_error(Code::NoHello, "send hello or session_hello first", req_id);
                Err(Slow::Refuse(refusal))
            }
            (Some(a), frame) => {
                let kind = frame.kind();
                if !self
                    .shared
                    .rate_limiter
                    .allow(&a.mesh_id, &a.member_id, kind)
                {
                    Metrics::inc(&self.shared.metrics.rate_limited_total);
                    if matches!(frame, ClientFrame::Send(_)) {
                        Metrics::inc(&self.shared.metrics.messages_rejected_total);
                    }
                    return Err(Slow::Reply(rate_limited(&frame)));
                }
                let conn = self.handle.id;
                let cmd = match Request::from_frame(frame) {
                    Ok(request) => Command::Request {
                        conn,
                        request,
                        slot: self.budget.take(),
                    },
                    Err(frame) => Command::Frame { conn, frame },
                };
                match self.shared.engine.try_send(cmd) {
                    Ok(()) => Ok(Flow::Continue),
                    Err(Ok(cmd)) => Err(Slow::Engine(cmd)),
                    Err(Err(_stopped)) => {
                        Ok(Flow::Close(close::GOING_AWAY, "shutting down".into()))
                    }
                }
            }
        }
    }

    /// The rest of a frame [`Connection::take`] could not finish.
    async fn finish(&mut self, slow: Slow) -> Flow {
        match slow {
            Slow::Refuse(refusal) => self.refuse_bad_frame(refusal).await,
            Slow::Reply(reply) => self.send_now(reply).await,
            Slow::Hello(hello) => {
                let (verified, req_id) = *hello;
                self.authenticate(verified, req_id).await
            }
            Slow::Engine(cmd) => match self.shared.engine.send(*cmd).await {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::Close(close::GOING_AWAY, "shutting down".into()),
            },
        }
    }

    async fn authenticate(
        &mut self,
        verified: Result<auth::VerifiedHello, Rejection>,
        req_id: Option<ReqId>,
    ) -> Flow {
        let result = match verified {
            Ok(hello)
                if !self
                    .shared
                    .rate_limiter
                    .allow(&hello.mesh_id, &hello.member_id, "hello") =>
            {
                Metrics::inc(&self.shared.metrics.rate_limited_total);
                Err(Rejection::new(
                    Code::RateLimited,
                    "too many hellos from this member; retry in a few seconds",
                ))
            }
            Ok(hello) => {
                let conn = self.handle.clone();
                let attach = |reply| Command::Attach { hello, conn, reply };
                match self.shared.engine.request(attach).await {
                    Ok(result) => result,
                    Err(_) => return Flow::Close(close::GOING_AWAY, "shutting down".into()),
                }
            }
            Err(r) => Err(r),
        };
        match result {
            Ok(attached) => {
                tracing::info!(mesh = %attached.mesh_id, member = %attached.member_id, key = %attached.key, "authenticated");
                self.attached = Some(attached);
                self.preauth = None;
                Flow::Continue
            }
            Err(r) => {
                Metrics::inc(&self.shared.metrics.hello_rejected_total);
                tracing::info!(code = r.code.as_str(), "hello refused");
                let _ = self.send_now(text_error(r.code, &r.message, req_id)).await;
                Flow::Close(r.close, r.code.as_str().to_owned())
            }
        }
    }
}

/// A client frame, or the `error` that answers it: malformed JSON, or (once attached) an
/// unknown `type`; both keep the frame's `_reqId` when it has one.
pub(crate) fn parse(text: &str, attached: bool) -> Result<ClientFrame, Message> {
    let raw_req_id = || {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("_reqId").cloned())
            .and_then(|v| serde_json::from_value::<ReqId>(v).ok())
    };
    match serde_json::from_str(text) {
        Ok(ClientFrame::Unknown) if attached => Err(text_error(
            Code::UnknownMessageType,
            "unknown message type",
            raw_req_id(),
        )),
        Ok(frame) => Ok(frame),
        Err(_) => Err(text_error(
            Code::Malformed,
            "frame is not valid JSON of a known shape",
            raw_req_id(),
        )),
    }
}

/// Every way out of a connection task, a panic included, tells the engine the connection
/// is gone, and whether the client left on purpose; the engine relies on it (a closed
/// channel alone does not detach, see `Engine::deliver_now`).
impl Drop for Connection {
    fn drop(&mut self) {
        if self.attached.is_some() {
            let cmd = Command::Detach {
                conn: self.handle.id,
                left: self.client_closed,
            };
            self.shared.engine.send_from_drop(cmd, &self.shared.tasks);
        }
    }
}

fn text_error(code: Code, message: &str, req_id: Option<ReqId>) -> Message {
    text(&error(code, message, req_id))
}

/// A rate-limited `send` gets an `ack` with `error` (as v1 does); other frames an `error`.
fn rate_limited(frame: &ClientFrame) -> Message {
    match frame {
        ClientFrame::Send(s) => text(&BrokerFrame::Ack(claudemesh_proto::frames::Ack {
            id: s.id.clone().unwrap_or_default(),
            message_id: String::new(),
            queued: false,
            error: Some(Code::RateLimited.as_str().to_owned()),
            recipients: None,
            client_message_id: s.client_message_id.clone(),
            req_id: s.req_id.clone(),
        })),
        other => text_error(
            Code::RateLimited,
            "rate limit exceeded for this frame type",
            other.req_id().cloned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use claudemesh_proto::frames::Priority;
    use claudemesh_store::MessageRow;

    use super::{push_frame, push_text};
    use crate::engine::{Body, Delivery};

    fn delivery(sealed_key: Option<&str>, body: &Arc<Body>) -> Delivery {
        Delivery {
            seq: 7,
            message: body.clone(),
            priority: Priority::Now,
            sealed_key: sealed_key.map(str::to_owned),
        }
    }

    fn body(target: &str) -> Arc<Body> {
        Arc::new(Body::new(MessageRow {
            message_id: "m1".into(),
            mesh_id: "mesh".into(),
            sender_pubkey: "a".repeat(64),
            sender_member_pubkey: "b".repeat(64),
            sender_name: "Alice \"the\" sender".into(),
            target_spec: target.into(),
            priority: Priority::Now,
            nonce: "bm9uY2U=".into(),
            ciphertext: "Y2lwaGVy/+==".into(),
            client_message_id: Some("c1".into()),
            created_at: 1_700_000_000_000,
            expires_at: 1_700_000_600_000,
        }))
    }

    #[test]
    fn a_push_rendered_once_is_what_serde_writes_for_each_recipient() {
        let want = |d: &Delivery| serde_json::to_string(&push_frame(d)).unwrap();
        let direct = body(&"c".repeat(64));
        let d = delivery(None, &direct);
        assert_eq!(push_text(&d).as_str(), want(&d));
        // A multicast (its body shared: the test holds one reference, each delivery
        // another): one rendering, each recipient's sealed key spliced in.
        let multi = body("*");
        for key in ["a2V5LW9uZQ==", "a2V5LXR3bw==", "with \"quotes\""] {
            let d = delivery(Some(key), &multi);
            assert_eq!(push_text(&d).as_str(), want(&d));
        }
        assert!(multi.rendered.get().is_some(), "rendered once and kept");
        assert!(
            direct.rendered.get().is_none(),
            "a direct message keeps nothing"
        );
    }
}
