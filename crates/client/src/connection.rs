//! The broker connection: one background task owns the WebSocket, says `hello` (member)
//! or `session_hello` (session, with an attestation minted from the member key on every
//! connect, so a session that lives for days never outlives its attestation), reconnects
//! with jittered backoff, and correlates replies (`send.id` ↔ `ack.id`, `_reqId`).
//!
//! Sends that were not acked when the connection dropped are sent again after the
//! reconnect with the same `client_message_id`, which the broker treats as the same
//! message: a blip neither loses nor duplicates a send. Status, summary and groups set
//! through the handle are re-applied after every reconnect (a broker restart forgets
//! them), so a long-lived peer looks the same before and after. Pushes are handed to the
//! caller through a bounded channel; the caller decrypts, records and acks them.
//!
//! [`Connection::connect`] fails if the first connection fails (one-shot commands);
//! [`Connection::spawn`] returns at once and keeps trying in the background (the MCP
//! server, which must start even while the broker is down).
//!
//! What it must not do: decrypt, decide what to show, or print anything.

use claudemesh_proto::time::now_ms;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claudemesh_crypto::SecretKey;
use claudemesh_proto::codes::cap;
use claudemesh_proto::frames::{
    Ack, Attestation, BrokerFrame, ClientAck, ClientFrame, GroupRef, Hello, HelloAck, JoinGroup,
    LeaveGroup, MemberInfo, MessageStatusReply, MessageStatusRequest, PeerInfo, PresenceInfo, Push,
    Reach, ReqId, Request, RetireSessions, Send, SessionHello, SetReach, SetStatus, SetSummary,
    Status,
};
use claudemesh_proto::{canonical, codes};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

/// How long a request waits for its reply before giving up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Validity of each minted session attestation (the protocol allows at most 24 h).
const ATTESTATION_TTL_MS: i64 = 12 * 60 * 60 * 1000;
/// Pushes buffered for the caller before the connection stops reading.
const PUSH_BUFFER: usize = 1_024;

/// Errors of the connection layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The broker could not be reached at all.
    #[error("cannot reach the broker at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The broker refused the hello (`code` as in PROTOCOL.md, e.g. `unauthorized`, `revoked`).
    #[error("the broker refused this identity ({code}): {message}")]
    Refused { code: String, message: String },
    /// The connection closed and the request could not complete.
    #[error("the connection to the broker closed")]
    Closed,
    /// No reply within the request timeout.
    #[error("the broker did not answer in time")]
    Timeout,
    /// The broker does not offer what this call needs (a v1-only broker).
    #[error("the broker does not support {0}")]
    Unsupported(&'static str),
    /// The broker answered the request with an error (`code` as in PROTOCOL.md).
    #[error("the broker answered {code}: {message}")]
    Rejected { code: String, message: String },
}

/// Who this connection speaks for.
#[derive(Clone)]
pub struct Identity {
    pub mesh_id: String,
    pub member_id: String,
    pub member_key: SecretKey,
    /// `Some` for a session connection (`session_hello`), `None` for a member one.
    pub session_key: Option<SecretKey>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("mesh_id", &self.mesh_id)
            .field("member_id", &self.member_id)
            .field("member", &self.member_key.public())
            .field("session", &self.session_key.as_ref().map(SecretKey::public))
            .finish()
    }
}

impl Identity {
    /// The key the broker stamps on this connection's sends and addresses deliveries to.
    pub fn connection_key(&self) -> &SecretKey {
        self.session_key.as_ref().unwrap_or(&self.member_key)
    }
}

/// Everything needed to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `ws://host:port/ws`.
    pub url: String,
    pub identity: Identity,
    pub presence: PresenceInfo,
    /// Reconnect after a drop (long-lived clients); one-shot CLI commands turn it off.
    pub reconnect: bool,
}

/// What the connection reports besides pushes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Connecting,
    Connected {
        capabilities: Vec<String>,
    },
    /// Gave up: the broker refused the identity (revoked, removed…).
    Failed(String),
}

enum Cmd {
    Send(Send, oneshot::Sender<Ack>),
    Request(ClientFrame, oneshot::Sender<BrokerFrame>),
    Notify(ClientFrame),
    Close,
}

/// A handle to the connection task. Dropping every handle closes the connection.
#[derive(Debug, Clone)]
pub struct Connection {
    cmd: mpsc::Sender<Cmd>,
    state: watch::Receiver<State>,
    /// The `hello_ack` of the newest connection.
    hello: watch::Receiver<Option<HelloAck>>,
    /// Why the last connection attempt failed, while reconnecting.
    last_error: Arc<Mutex<Option<String>>>,
    url: String,
}

fn hello_frame(opts: &ConnectOptions) -> ClientFrame {
    let id = &opts.identity;
    let ts = now_ms();
    let member_pk = id.member_key.public().to_hex();
    match &id.session_key {
        None => ClientFrame::Hello(Hello {
            mesh_id: id.mesh_id.clone(),
            member_id: id.member_id.clone(),
            pubkey: member_pk.clone(),
            session_pubkey: None,
            presence: opts.presence.clone(),
            timestamp: ts,
            signature: id
                .member_key
                .sign_str(&canonical::hello(
                    &id.mesh_id,
                    &id.member_id,
                    &member_pk,
                    ts,
                ))
                .to_hex(),
            req_id: None,
        }),
        Some(session) => {
            let session_pk = session.public().to_hex();
            let expires_at = ts + ATTESTATION_TTL_MS;
            let attestation = Attestation {
                session_pubkey: session_pk.clone(),
                parent_member_pubkey: member_pk.clone(),
                expires_at,
                signature: id
                    .member_key
                    .sign_str(&canonical::session_attestation(
                        &member_pk,
                        &session_pk,
                        expires_at,
                    ))
                    .to_hex(),
            };
            let signature = session
                .sign_str(&canonical::session_hello(
                    &id.mesh_id,
                    &member_pk,
                    &session_pk,
                    ts,
                ))
                .to_hex();
            ClientFrame::SessionHello(SessionHello {
                mesh_id: id.mesh_id.clone(),
                parent_member_id: id.member_id.clone(),
                parent_member_pubkey: member_pk,
                session_pubkey: session_pk,
                parent_attestation: attestation,
                presence: opts.presence.clone(),
                timestamp: ts,
                signature,
                req_id: None,
            })
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn text(frame: &ClientFrame) -> Message {
    Message::Text(serde_json::to_string(frame).unwrap_or_default().into())
}

/// Open a socket and complete the hello. Refusals are final; network errors are not.
async fn open(opts: &ConnectOptions) -> Result<(Ws, HelloAck), ConnectError> {
    let unreachable = |reason: String| ConnectError::Unreachable {
        url: opts.url.clone(),
        reason,
    };
    let (mut ws, _) = tokio::time::timeout(
        REQUEST_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(opts.url.as_str(), None, true),
    )
    .await
    .map_err(|_| unreachable("timed out".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    ws.send(text(&hello_frame(opts)))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
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
                    code: e.code,
                    message: e.message,
                });
            }
            _ => continue,
        }
    }
}

impl Connection {
    /// Connect and authenticate. Returns the handle and the stream of pushes (deliveries
    /// and system events) for the caller to decrypt, record and ack. Fails if this first
    /// connection fails.
    pub async fn connect(
        opts: ConnectOptions,
    ) -> Result<(Self, mpsc::Receiver<Push>), ConnectError> {
        let (ws, hello) = open(&opts).await?;
        Ok(Self::start(opts, Some((ws, hello))))
    }

    /// Start connecting in the background and return at once: the handle reports
    /// [`State::Connecting`] until the broker answers, retrying with backoff for as long as
    /// it is unreachable. A refusal (revoked, removed…) ends in [`State::Failed`].
    pub fn spawn(opts: ConnectOptions) -> (Self, mpsc::Receiver<Push>) {
        Self::start(opts, None)
    }

    fn start(opts: ConnectOptions, first: Option<(Ws, HelloAck)>) -> (Self, mpsc::Receiver<Push>) {
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
        let task = Task {
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
            Self {
                cmd: cmd_tx,
                state: state_rx,
                hello: hello_rx,
                last_error,
                url,
            },
            push_rx,
        )
    }

    /// The broker's `hello_ack` for the newest connection (`None` before the first).
    pub fn hello(&self) -> Option<HelloAck> {
        self.hello.borrow().clone()
    }

    /// Why the last connection attempt failed, while the handle is reconnecting.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Wait until the connection is up, at most `wait`. Errors say why it is not: still
    /// unreachable (with the last reason), or refused for good.
    pub async fn wait_connected(&self, wait: Duration) -> Result<(), ConnectError> {
        let mut state = self.state.clone();
        let settled = tokio::time::timeout(wait, async {
            loop {
                match &*state.borrow_and_update() {
                    State::Connected { .. } => return Ok(()),
                    State::Failed(reason) => {
                        return Err(ConnectError::Refused {
                            code: "failed".into(),
                            message: reason.clone(),
                        });
                    }
                    State::Connecting => {}
                }
                if state.changed().await.is_err() {
                    return Err(ConnectError::Closed);
                }
            }
        })
        .await;
        match settled {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Unreachable {
                url: self.url.clone(),
                reason: self
                    .last_error()
                    .unwrap_or_else(|| "still connecting".into()),
            }),
        }
    }

    /// Whether the broker announced `cap` (current connection).
    pub fn has_capability(&self, cap: &str) -> bool {
        match &*self.state.borrow() {
            State::Connected { capabilities } => capabilities.iter().any(|c| c == cap),
            _ => self
                .hello
                .borrow()
                .as_ref()
                .is_some_and(|h| h.capabilities.iter().any(|c| c == cap)),
        }
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Send a frame and wait for its ack. The `id` is assigned here.
    pub async fn send(&self, mut frame: Send) -> Result<Ack, ConnectError> {
        frame.id = None;
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Send(frame, tx))
            .await
            .map_err(|_| ConnectError::Closed)?;
        // Generous: a send survives a reconnect inside this window.
        tokio::time::timeout(REQUEST_TIMEOUT * 4, rx)
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(|_| ConnectError::Closed)
    }

    async fn request(&self, frame: ClientFrame) -> Result<BrokerFrame, ConnectError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Request(frame, tx))
            .await
            .map_err(|_| ConnectError::Closed)?;
        tokio::time::timeout(REQUEST_TIMEOUT, rx)
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(|_| ConnectError::Closed)
    }

    /// Live peers (`list_peers`).
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, ConnectError> {
        match self
            .request(ClientFrame::ListPeers(Request::default()))
            .await?
        {
            BrokerFrame::PeersList(p) => Ok(p.peers),
            BrokerFrame::Error(e) => Err(ConnectError::Rejected {
                code: e.code,
                message: e.message,
            }),
            _ => Err(ConnectError::Closed),
        }
    }

    /// Every recipient identity, online or not (extension `list-members`).
    pub async fn members(&self) -> Result<Vec<MemberInfo>, ConnectError> {
        if !self.has_capability(claudemesh_proto::codes::cap::LIST_MEMBERS) {
            return Err(ConnectError::Unsupported("list_members"));
        }
        match self
            .request(ClientFrame::ListMembers(Request::default()))
            .await?
        {
            BrokerFrame::MembersList(m) => Ok(m.members),
            BrokerFrame::Error(e) => Err(ConnectError::Rejected {
                code: e.code,
                message: e.message,
            }),
            _ => Err(ConnectError::Closed),
        }
    }

    /// Where each recipient's copy of a message this identity sent stands (extension
    /// `message-status`).
    pub async fn message_status(
        &self,
        message_id: &str,
    ) -> Result<MessageStatusReply, ConnectError> {
        if !self.has_capability(claudemesh_proto::codes::cap::MESSAGE_STATUS) {
            return Err(ConnectError::Unsupported("message_status"));
        }
        match self
            .request(ClientFrame::MessageStatus(MessageStatusRequest {
                message_id: message_id.to_owned(),
                req_id: None,
            }))
            .await?
        {
            BrokerFrame::MessageStatus(m) => Ok(m),
            BrokerFrame::Error(e) => Err(ConnectError::Rejected {
                code: e.code,
                message: e.message,
            }),
            _ => Err(ConnectError::Closed),
        }
    }

    async fn notify(&self, frame: ClientFrame) -> Result<(), ConnectError> {
        self.cmd
            .send(Cmd::Notify(frame))
            .await
            .map_err(|_| ConnectError::Closed)
    }

    /// `client_ack` by broker message id (exact, scoped to this connection's key).
    pub async fn ack(&self, message_id: &str) -> Result<(), ConnectError> {
        self.notify(ClientFrame::ClientAck(ClientAck {
            client_message_id: None,
            broker_message_id: Some(message_id.to_owned()),
            req_id: None,
        }))
        .await
    }

    pub async fn set_status(&self, status: Status) -> Result<(), ConnectError> {
        self.notify(ClientFrame::SetStatus(SetStatus {
            status,
            req_id: None,
        }))
        .await
    }

    pub async fn set_summary(&self, summary: Option<String>) -> Result<(), ConnectError> {
        self.notify(ClientFrame::SetSummary(SetSummary {
            summary,
            req_id: None,
        }))
        .await
    }

    pub async fn join_group(&self, name: &str, role: Option<String>) -> Result<(), ConnectError> {
        self.notify(ClientFrame::JoinGroup(JoinGroup {
            name: name.to_owned(),
            role,
            req_id: None,
        }))
        .await
    }

    pub async fn leave_group(&self, name: &str) -> Result<(), ConnectError> {
        self.notify(ClientFrame::LeaveGroup(LeaveGroup {
            name: name.to_owned(),
            req_id: None,
        }))
        .await
    }

    /// A round trip proving every earlier frame was processed (fire-and-forget ones too).
    pub async fn sync(&self) -> Result<(), ConnectError> {
        self.peers().await.map(|_| ())
    }

    /// Extension `reachability`: tell peers how messages reach this identity now. Kept
    /// and carried by every later hello; sent only to a broker that announces it.
    pub async fn set_reach(&self, reach: Reach) -> Result<(), ConnectError> {
        self.notify(ClientFrame::SetReach(SetReach {
            reach,
            req_id: None,
        }))
        .await
    }

    /// Extension `session-retire`: retire these (offline) session keys of this member.
    /// Returns the keys the broker retired now.
    pub async fn retire_sessions(&self, pubkeys: Vec<String>) -> Result<Vec<String>, ConnectError> {
        if !self.has_capability(claudemesh_proto::codes::cap::SESSION_RETIRE) {
            return Err(ConnectError::Unsupported("retire_sessions"));
        }
        match self
            .request(ClientFrame::RetireSessions(RetireSessions {
                pubkeys,
                req_id: None,
            }))
            .await?
        {
            BrokerFrame::SessionsRetired(r) => Ok(r.retired),
            BrokerFrame::Error(e) => Err(ConnectError::Rejected {
                code: e.code,
                message: e.message,
            }),
            _ => Err(ConnectError::Closed),
        }
    }

    /// Close the socket (after writing everything queued before this call) with a close
    /// frame, which tells the broker this identity left on purpose (no grace period).
    pub async fn close(&self) {
        let _ = self.cmd.send(Cmd::Close).await;
    }

    /// Wait until the connection task has ended (after [`Connection::close`], the close
    /// frame has been written by then).
    pub async fn closed(&self) {
        let mut state = self.state.clone();
        while state.changed().await.is_ok() {}
    }
}

struct Task {
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

impl Task {
    async fn run(mut self, mut ws: Option<Ws>) {
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
                    let _ = self
                        .state_tx
                        .send(State::Failed("connection closed".into()));
                    return;
                }
                Exit::Dropped => {}
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
    /// closes. Commands keep being taken meanwhile (see [`Task::absorb`]), so nothing
    /// piles up and `close` is honoured at once.
    async fn reconnect(&mut self, backoff: &mut Duration, mut wait: bool) -> Option<Ws> {
        loop {
            if wait {
                let jitter = Duration::from_millis(
                    rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1),
                );
                let sleep = tokio::time::sleep(*backoff + jitter);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        () = &mut sleep => break,
                        cmd = self.cmd_rx.recv() => if !self.absorb(cmd) { return None },
                    }
                }
                *backoff = (*backoff * 2).min(Duration::from_secs(10));
            }
            wait = true;
            let opts = self.opts.clone();
            let attempt = open(&opts);
            tokio::pin!(attempt);
            let result = loop {
                tokio::select! {
                    r = &mut attempt => break r,
                    cmd = self.cmd_rx.recv() => if !self.absorb(cmd) { return None },
                }
            };
            match result {
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
                        .send(State::Failed(format!("{code}: {message}")));
                    return None;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "connect failed");
                    let reason = match e {
                        ConnectError::Unreachable { reason, .. } => reason,
                        other => other.to_string(),
                    };
                    if let Ok(mut last) = self.last_error.lock() {
                        *last = Some(reason);
                    }
                }
            }
        }
    }

    /// A command that arrives while disconnected: sends wait for the next connection (in
    /// `pending_sends`), requests fail at once, presence changes are remembered and
    /// applied by [`Task::restore`] (acks are dropped: unacked deliveries come again).
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
    async fn serve(&mut self, ws: &mut Ws) -> Exit {
        loop {
            tokio::select! {
                cmd = self.cmd_rx.recv() => {
                    let frame = match cmd {
                        None | Some(Cmd::Close) => return Exit::Closed,
                        Some(Cmd::Send(frame, reply)) => ClientFrame::Send(self.track_send(frame, reply)),
                        Some(Cmd::Request(mut frame, reply)) => {
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
                        Some(Cmd::Notify(frame)) => {
                            self.remember(&frame);
                            if matches!(frame, ClientFrame::SetReach(_)) && !self.broker_has(cap::REACHABILITY) {
                                continue; // a broker without the extension would answer an error
                            }
                            frame
                        }
                    };
                    if ws.send(text(&frame)).await.is_err() {
                        return Exit::Dropped;
                    }
                }
                msg = ws.next() => {
                    let Some(Ok(msg)) = msg else { return Exit::Dropped };
                    match msg {
                        Message::Text(t) => self.incoming(t.as_str()).await,
                        Message::Close(_) => return Exit::Dropped,
                        _ => {}
                    }
                }
            }
        }
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

/// Convenience: the groups field for a presence.
pub fn groups(names: &[&str]) -> Option<Vec<GroupRef>> {
    (!names.is_empty()).then(|| {
        names
            .iter()
            .map(|n| GroupRef {
                name: (*n).to_owned(),
                role: None,
            })
            .collect()
    })
}
