//! The connection actor: one task owns the WebSocket. It opens it (connect, then the
//! hello of [`super::hello`]), serves it in one `select!` loop (commands from the handle
//! out, pushes and replies in), and after a drop reconnects with jittered backoff,
//! re-applies the presence the handle set and re-sends unacked sends. Replies find their
//! caller by `send.id` ↔ `ack.id` and by `_reqId`.
//!
//! What it must not do: decrypt, decide what to show, print anything, or block on the
//! caller (pushes go through a bounded channel; a closed handle ends the task).

use claudemesh_proto::codes::AnyCode;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claudemesh_proto::codes::{self, cap, close};
use claudemesh_proto::frames::{
    Ack, BrokerFrame, ClientFrame, GroupRef, HelloAck, Push, ReqId, Send, SetStatus, SetSummary,
    Status,
};
use claudemesh_proto::time::now_ms;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use super::{
    ConnectError, ConnectOptions, Connection, Failure, PUSH_BUFFER, REQUEST_TIMEOUT, State,
    TransportError, hello,
};

/// What the handle asks of the actor.
pub(super) enum Cmd {
    Send(Send, oneshot::Sender<Ack>),
    Request(ClientFrame, oneshot::Sender<BrokerFrame>),
    Notify(ClientFrame),
    Close,
}

pub(super) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn text(frame: &ClientFrame) -> Message {
    Message::Text(serde_json::to_string(frame).unwrap_or_default().into())
}

/// Start the actor (on `first`, an open socket, if there is one) and return its handle.
pub(super) fn start(
    opts: ConnectOptions,
    first: Option<(Ws, HelloAck)>,
) -> (Connection, mpsc::Receiver<Push>) {
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (push_tx, push_rx) = mpsc::channel(PUSH_BUFFER);
    let state = match &first {
        Some((_, hello)) => State::Connected {
            capabilities: hello.capabilities.clone(),
        },
        None => State::Connecting,
    };
    let (state_tx, state_rx) = watch::channel(state);
    let (ws, hello) = first.map_or((None, None), |(ws, hello)| (Some(ws), Some(hello)));
    let (hello_tx, hello_rx) = watch::channel(hello);
    let last_error = Arc::new(Mutex::new(None));
    let url = opts.url.clone();
    let task = Actor {
        groups: opts.presence.groups.clone(),
        opts,
        cmd_rx,
        push_tx,
        state_tx,
        hello_tx,
        last_error: last_error.clone(),
        pending_sends: BTreeMap::new(),
        pending_requests: HashMap::new(),
        seq: 0,
        status: None,
        summary: None,
    };
    tokio::spawn(task.run(ws));
    (
        Connection {
            cmd: cmd_tx,
            state: state_rx,
            hello: hello_rx,
            last_error,
            url,
        },
        push_rx,
    )
}

/// Open a socket and complete the hello. Refusals are final; network errors are not.
pub(super) async fn open(opts: &ConnectOptions) -> Result<(Ws, HelloAck), ConnectError> {
    let unreachable = |source: TransportError| ConnectError::Unreachable {
        url: opts.url.clone(),
        source,
    };
    let connector = if opts.url.starts_with("wss://") {
        let config = crate::tls::client_config().map_err(|e| unreachable(e.into()))?;
        Some(tokio_tungstenite::Connector::Rustls(config))
    } else {
        None
    };
    let (mut ws, _) = tokio::time::timeout(
        REQUEST_TIMEOUT,
        tokio_tungstenite::connect_async_tls_with_config(
            opts.url.as_str(),
            Some(super::websocket_config()),
            true,
            connector,
        ),
    )
    .await
    .map_err(|_| unreachable(TransportError::TimedOut))?
    .map_err(|e| unreachable(e.into()))?;
    ws.send(text(&hello::hello_frame(
        &opts.identity,
        &opts.presence,
        now_ms(),
    )))
    .await
    .map_err(|e| unreachable(e.into()))?;
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| ConnectError::Timeout)?;
        let Some(Ok(msg)) = msg else {
            return Err(ConnectError::Closed);
        };
        let Message::Text(t) = msg else { continue };
        match serde_json::from_str::<BrokerFrame>(t.as_str()) {
            Ok(BrokerFrame::HelloAck(ack)) => return Ok((ws, ack)),
            Ok(BrokerFrame::Error(e)) => {
                return Err(ConnectError::Refused {
                    code: AnyCode::parse(&e.code),
                    message: e.message,
                });
            }
            _ => continue,
        }
    }
}

pub(super) struct Actor {
    opts: ConnectOptions,
    cmd_rx: mpsc::Receiver<Cmd>,
    push_tx: mpsc::Sender<Push>,
    state_tx: watch::Sender<State>,
    hello_tx: watch::Sender<Option<HelloAck>>,
    last_error: Arc<Mutex<Option<String>>>,
    /// Unacked sends by id, in send order; re-sent after a reconnect.
    pending_sends: BTreeMap<u64, (Send, oneshot::Sender<Ack>)>,
    pending_requests: HashMap<String, oneshot::Sender<BrokerFrame>>,
    seq: u64,
    /// What the handle set, re-applied after a reconnect; `None` = never set.
    status: Option<Status>,
    summary: Option<Option<String>>,
    /// The groups the handle joined, carried by every later hello.
    groups: Option<Vec<GroupRef>>,
}

enum Exit {
    Closed,
    Dropped,
    /// Closed by the broker with 4001 or 4002: the member is no longer in the mesh.
    Removed(u16, String),
}

/// Hello refusals that no retry can fix: the identity itself is not (or no longer)
/// accepted. Anything else — storage trouble on the broker, clock skew after a laptop
/// wakes, a field the broker refused — is retried with backoff, and reported meanwhile.
const FINAL_REFUSALS: &[&str] = &[
    codes::UNAUTHORIZED,
    codes::REVOKED,
    codes::BAD_SIGNATURE,
    codes::ATTESTATION_MISMATCH,
    codes::BAD_SESSION_PUBKEY,
    codes::PARENT_MEMBER_ID_MISMATCH,
];
/// A connection that lasted this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// The longest wait between two connection attempts (before jitter).
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Actor {
    pub(super) async fn run(mut self, mut ws: Option<Ws>) {
        let mut backoff = Duration::from_millis(100);
        // A spawned handle tries at once; a reconnect after a drop waits first.
        let mut wait_first = false;
        loop {
            let Some(mut socket) = ws.take() else {
                match self.reconnect(&mut backoff, wait_first).await {
                    Some(socket) => ws = Some(socket),
                    None => return,
                }
                continue;
            };
            let since = tokio::time::Instant::now();
            match self.serve(&mut socket).await {
                Exit::Closed => {
                    let bye = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                        reason: "bye".into(),
                    };
                    let _ = socket.close(Some(bye)).await;
                    return;
                }
                Exit::Dropped if !self.opts.reconnect => {
                    let _ = self.state_tx.send(State::Failed(Failure::Dropped));
                    return;
                }
                Exit::Dropped => {}
                Exit::Removed(close_code, reason) => {
                    tracing::warn!(close_code, %reason, "removed from the mesh; not reconnecting");
                    let failure = Failure::Removed { close_code, reason };
                    let _ = self.state_tx.send(State::Failed(failure));
                    return;
                }
            }
            // A broker that drops us right after the hello must not be hammered.
            if since.elapsed() >= STABLE_AFTER {
                backoff = Duration::from_millis(100);
            }
            self.pending_requests.clear(); // their callers see Closed and may retry
            let _ = self.state_tx.send(State::Connecting);
            wait_first = true;
        }
    }

    /// Connect with jittered exponential backoff until it works (then re-apply state and
    /// re-send unacked sends), the broker refuses the identity for good, or the handle
    /// closes. Commands keep being taken meanwhile (see [`Actor::absorb`]), so nothing
    /// piles up and `close` is honoured at once.
    async fn reconnect(&mut self, backoff: &mut Duration, mut wait: bool) -> Option<Ws> {
        loop {
            if wait {
                let jitter = Duration::from_millis(
                    rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1),
                );
                self.absorbing(tokio::time::sleep(*backoff + jitter))
                    .await?;
                *backoff = (*backoff * 2).min(MAX_BACKOFF);
            }
            wait = true;
            let opts = self.opts.clone();
            match self.absorbing(open(&opts)).await? {
                Ok((mut ws, ack)) => {
                    if let Ok(mut e) = self.last_error.lock() {
                        *e = None;
                    }
                    if self.restore(&mut ws, &ack).await.is_err() {
                        continue;
                    }
                    let _ = self.state_tx.send(State::Connected {
                        capabilities: ack.capabilities.clone(),
                    });
                    let _ = self.hello_tx.send(Some(ack));
                    return Some(ws);
                }
                Err(ConnectError::Refused { code, message })
                    if FINAL_REFUSALS.contains(&code.as_str()) =>
                {
                    tracing::warn!(%code, "broker refused the identity; not reconnecting");
                    let _ = self
                        .state_tx
                        .send(State::Failed(Failure::Refused { code, message }));
                    return None;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "connect failed");
                    // Said after "cannot reach the broker at …" by wait_connected.
                    let reason = match e {
                        ConnectError::Unreachable { source, .. } => source.to_string(),
                        other => other.to_string(),
                    };
                    if let Ok(mut last) = self.last_error.lock() {
                        *last = Some(reason);
                    }
                }
            }
        }
    }

    /// Wait for `fut` while taking commands as [`Actor::absorb`] does; `None` when the
    /// handle closed first.
    async fn absorbing<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                cmd = self.cmd_rx.recv() => if !self.absorb(cmd) { return None },
            }
        }
    }

    /// A command that arrives while disconnected: sends wait for the next connection (in
    /// `pending_sends`), requests fail at once, presence changes are remembered and
    /// applied by [`Actor::restore`] (acks are dropped: unacked deliveries come again).
    /// Returns false when the handle closed.
    fn absorb(&mut self, cmd: Option<Cmd>) -> bool {
        match cmd {
            None | Some(Cmd::Close) => false,
            Some(Cmd::Send(frame, reply)) => {
                self.track_send(frame, reply);
                true
            }
            Some(Cmd::Request(_, reply)) => {
                drop(reply); // the caller sees Closed
                true
            }
            Some(Cmd::Notify(frame)) => {
                self.remember(&frame);
                true
            }
        }
    }

    /// Give a send its id and idempotency key and keep it until its ack.
    fn track_send(&mut self, mut frame: Send, reply: oneshot::Sender<Ack>) -> Send {
        self.seq += 1;
        frame.id = Some(format!("s{}", self.seq));
        if frame.client_message_id.is_none() {
            frame.client_message_id = Some(claudemesh_proto::ids::new_id());
        }
        self.pending_sends.insert(self.seq, (frame.clone(), reply));
        frame
    }

    /// After a reconnect: put back the status and summary the broker forgot (a restart
    /// loses them; a re-attach within grace keeps them, which `hello_ack` reports), then
    /// re-send unacked sends. Same client_message_id → the broker answers with the
    /// original message.
    async fn restore(&mut self, ws: &mut Ws, ack: &HelloAck) -> Result<(), ()> {
        let mut frames = Vec::new();
        if let Some(status) = self.status.filter(|s| ack.status != Some(*s)) {
            frames.push(ClientFrame::SetStatus(SetStatus {
                status,
                req_id: None,
            }));
        }
        if let Some(summary) = self.summary.clone().filter(|s| ack.summary != *s) {
            frames.push(ClientFrame::SetSummary(SetSummary {
                summary,
                req_id: None,
            }));
        }
        frames.extend(
            self.pending_sends
                .values()
                .map(|(f, _)| ClientFrame::Send(f.clone())),
        );
        for frame in frames {
            ws.send(text(&frame)).await.map_err(|_| ())?;
        }
        Ok(())
    }

    /// Remember what a fire-and-forget frame changes, so a reconnect can restore it.
    fn remember(&mut self, frame: &ClientFrame) {
        match frame {
            ClientFrame::SetStatus(s) => self.status = Some(s.status),
            ClientFrame::SetSummary(s) => {
                self.summary = Some(s.summary.clone().filter(|t| !t.is_empty()));
            }
            ClientFrame::JoinGroup(g) => {
                let groups = self.current_groups();
                groups.retain(|x| x.name != g.name);
                groups.push(GroupRef {
                    name: g.name.clone(),
                    role: g.role.clone(),
                });
                self.opts.presence.groups = self.groups.clone();
            }
            ClientFrame::LeaveGroup(g) => {
                self.current_groups().retain(|x| x.name != g.name);
                self.opts.presence.groups = self.groups.clone();
            }
            // Carried by the next hello, which a reconnect sends anyway.
            ClientFrame::SetReach(r) => self.opts.presence.reach = Some(r.reach),
            _ => {}
        }
    }

    /// Whether the broker of the current connection announced `capability`.
    fn broker_has(&self, capability: &str) -> bool {
        self.hello_tx
            .borrow()
            .as_ref()
            .is_some_and(|h| h.capabilities.iter().any(|c| c == capability))
    }

    /// The groups as the broker last reported them, unless the handle changed them since.
    fn current_groups(&mut self) -> &mut Vec<GroupRef> {
        let reported = self
            .hello_tx
            .borrow()
            .as_ref()
            .and_then(|h| h.groups.clone());
        self.groups
            .get_or_insert_with(|| reported.unwrap_or_default())
    }

    /// Serve one connection until it drops or the handle closes it.
    /// A socket silent for `liveness.dead_after` is dropped (see [`super::Liveness`]); so
    /// is one whose write does not complete in that time (a full send buffer on a dead
    /// link would otherwise hold the loop).
    async fn serve(&mut self, ws: &mut Ws) -> Exit {
        let live = self.opts.liveness;
        let tick = live
            .ping_after
            .min(live.dead_after / 4)
            .max(Duration::from_millis(10));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = tokio::time::Instant::now();
        let mut last_ping = last_heard;
        loop {
            let out = tokio::select! {
                cmd = self.cmd_rx.recv() => match cmd {
                    None | Some(Cmd::Close) => return Exit::Closed,
                    Some(cmd) => self.outgoing(cmd).map(|f| text(&f)),
                },
                msg = ws.next() => {
                    let Some(Ok(msg)) = msg else { return Exit::Dropped };
                    last_heard = tokio::time::Instant::now();
                    match msg {
                        Message::Text(t) => self.incoming(t.as_str()).await,
                        Message::Close(Some(f))
                            if matches!(u16::from(f.code), close::KICKED | close::REVOKED) =>
                        {
                            return Exit::Removed(u16::from(f.code), f.reason.to_string());
                        }
                        Message::Close(_) => return Exit::Dropped,
                        _ => {}
                    }
                    None
                }
                _ = ticks.tick() => {
                    let silent = last_heard.elapsed();
                    if silent >= live.dead_after {
                        tracing::info!(silent_ms = silent.as_millis() as u64, "nothing from the broker: dropping the connection");
                        return Exit::Dropped;
                    }
                    (silent >= live.ping_after && last_ping.elapsed() >= live.ping_after).then(|| {
                        last_ping = tokio::time::Instant::now();
                        Message::Ping(Default::default())
                    })
                }
            };
            if let Some(msg) = out {
                match tokio::time::timeout(live.dead_after, ws.send(msg)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => return Exit::Dropped,
                }
            }
        }
    }

    /// What a command writes on a live connection (`None`: nothing). Sends and requests
    /// are tracked until their reply; presence changes are remembered for a reconnect.
    fn outgoing(&mut self, cmd: Cmd) -> Option<ClientFrame> {
        match cmd {
            Cmd::Close => None,
            Cmd::Send(frame, reply) => Some(ClientFrame::Send(self.track_send(frame, reply))),
            Cmd::Request(frame, reply) => Some(self.track_request(frame, reply)),
            Cmd::Notify(frame) => {
                self.remember(&frame);
                // A broker without the extension would answer an error.
                let unsupported = matches!(frame, ClientFrame::SetReach(_))
                    && !self.broker_has(cap::REACHABILITY);
                (!unsupported).then_some(frame)
            }
        }
    }

    /// Give a request its `_reqId` and keep its caller until the reply with that id.
    fn track_request(
        &mut self,
        mut frame: ClientFrame,
        reply: oneshot::Sender<BrokerFrame>,
    ) -> ClientFrame {
        self.seq += 1;
        let id = format!("r{}", self.seq);
        let req_id = Some(ReqId::Str(id.clone()));
        match &mut frame {
            ClientFrame::ListPeers(r) | ClientFrame::ListMembers(r) => r.req_id = req_id,
            ClientFrame::MessageStatus(r) => r.req_id = req_id,
            ClientFrame::RetireSessions(r) => r.req_id = req_id,
            _ => {}
        }
        self.pending_requests.insert(id, reply);
        frame
    }

    async fn incoming(&mut self, text: &str) {
        // Unknown broker frame types (a newer broker) are ignored, not fatal.
        let Ok(frame) = serde_json::from_str::<BrokerFrame>(text) else {
            return;
        };
        match frame {
            BrokerFrame::Push(p) => {
                let _ = self.push_tx.send(p).await;
            }
            BrokerFrame::Presence(batch) => {
                let own = self.opts.identity.connection_key().public().to_hex();
                for p in batch.into_pushes(&own) {
                    let _ = self.push_tx.send(p).await;
                }
            }
            BrokerFrame::Ack(ack) => {
                let seq = ack.id.strip_prefix('s').and_then(|n| n.parse::<u64>().ok());
                if let Some((_, reply)) = seq.and_then(|s| self.pending_sends.remove(&s)) {
                    let _ = reply.send(ack);
                }
            }
            BrokerFrame::PeersList(ref p) => self.reply(p.req_id.clone(), frame),
            BrokerFrame::MembersList(ref m) => self.reply(m.req_id.clone(), frame),
            BrokerFrame::MessageStatus(ref m) => self.reply(m.req_id.clone(), frame),
            BrokerFrame::SessionsRetired(ref r) => self.reply(r.req_id.clone(), frame),
            BrokerFrame::Error(ref e) => self.reply(e.req_id.clone(), frame),
            BrokerFrame::HelloAck(_) => {}
        }
    }

    fn reply(&mut self, req_id: Option<ReqId>, frame: BrokerFrame) {
        if let Some(ReqId::Str(id)) = req_id
            && let Some(tx) = self.pending_requests.remove(&id)
        {
            let _ = tx.send(frame);
        }
    }
}
