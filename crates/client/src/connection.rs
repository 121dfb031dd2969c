//! The broker connection: one background task owns the WebSocket, says `hello` (member)
//! or `session_hello` (session, with an attestation minted from the member key on every
//! connect, so a session that lives for days never outlives its attestation), reconnects
//! with jittered backoff, and correlates replies (`send.id` ↔ `ack.id`, `_reqId`).
//!
//! Sends that were not acked when the connection dropped are sent again after the
//! reconnect with the same `client_message_id`, which the broker treats as the same
//! message: a blip neither loses nor duplicates a send. Pushes are handed to the caller
//! through a bounded channel; the caller decrypts, records and acks them.
//!
//! What it must not do: decrypt, decide what to show, or print anything.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use claudemesh_crypto::SecretKey;
use claudemesh_proto::canonical;
use claudemesh_proto::frames::{
    Ack, Attestation, BrokerFrame, ClientAck, ClientFrame, GroupRef, Hello, HelloAck, JoinGroup,
    LeaveGroup, MemberInfo, PeerInfo, PresenceInfo, Push, ReqId, Request, Send, SessionHello,
    SetStatus, SetSummary, Status,
};
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
    hello: HelloAck,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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
    /// and system events) for the caller to decrypt, record and ack.
    pub async fn connect(
        opts: ConnectOptions,
    ) -> Result<(Self, mpsc::Receiver<Push>), ConnectError> {
        let (ws, hello) = open(&opts).await?;
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let (push_tx, push_rx) = mpsc::channel(PUSH_BUFFER);
        let (state_tx, state_rx) = watch::channel(State::Connected {
            capabilities: hello.capabilities.clone(),
        });
        let task = Task {
            opts,
            cmd_rx,
            push_tx,
            state_tx,
            pending_sends: BTreeMap::new(),
            pending_requests: HashMap::new(),
            seq: 0,
        };
        tokio::spawn(task.run(ws));
        Ok((
            Self {
                cmd: cmd_tx,
                state: state_rx,
                hello,
            },
            push_rx,
        ))
    }

    /// The broker's `hello_ack` for the first connection.
    pub fn hello(&self) -> &HelloAck {
        &self.hello
    }

    /// Whether the broker announced `cap` (current connection).
    pub fn has_capability(&self, cap: &str) -> bool {
        match &*self.state.borrow() {
            State::Connected { capabilities } => capabilities.iter().any(|c| c == cap),
            _ => self.hello.capabilities.iter().any(|c| c == cap),
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
            BrokerFrame::Error(e) => Err(ConnectError::Refused {
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
            BrokerFrame::Error(e) => Err(ConnectError::Refused {
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

    /// Close the socket (after writing everything queued before this call).
    pub async fn close(&self) {
        let _ = self.cmd.send(Cmd::Close).await;
    }
}

struct Task {
    opts: ConnectOptions,
    cmd_rx: mpsc::Receiver<Cmd>,
    push_tx: mpsc::Sender<Push>,
    state_tx: watch::Sender<State>,
    /// Unacked sends by id, in send order; re-sent after a reconnect.
    pending_sends: BTreeMap<u64, (Send, oneshot::Sender<Ack>)>,
    pending_requests: HashMap<String, oneshot::Sender<BrokerFrame>>,
    seq: u64,
}

enum Exit {
    Closed,
    Dropped,
}

impl Task {
    async fn run(mut self, mut ws: Ws) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.serve(&mut ws).await {
                Exit::Closed => {
                    let _ = ws.close(None).await;
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
            self.pending_requests.clear(); // their callers see Closed and may retry
            let _ = self.state_tx.send(State::Connecting);
            loop {
                let jitter = Duration::from_millis(
                    rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1),
                );
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                match open(&self.opts).await {
                    Ok((new_ws, ack)) => {
                        ws = new_ws;
                        backoff = Duration::from_millis(100);
                        let _ = self.state_tx.send(State::Connected {
                            capabilities: ack.capabilities,
                        });
                        break;
                    }
                    Err(ConnectError::Refused { code, message }) => {
                        tracing::warn!(%code, "broker refused the identity; not reconnecting");
                        let _ = self
                            .state_tx
                            .send(State::Failed(format!("{code}: {message}")));
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "reconnect failed"),
                }
                if self.cmd_rx.is_closed() {
                    return;
                }
            }
            // Same client_message_id → the broker answers with the original message.
            let resend: Vec<Send> = self
                .pending_sends
                .values()
                .map(|(f, _)| f.clone())
                .collect();
            for frame in resend {
                if ws.send(text(&ClientFrame::Send(frame))).await.is_err() {
                    break;
                }
            }
        }
    }

    /// Serve one connection until it drops or the handle closes it.
    async fn serve(&mut self, ws: &mut Ws) -> Exit {
        loop {
            tokio::select! {
                cmd = self.cmd_rx.recv() => {
                    let frame = match cmd {
                        None | Some(Cmd::Close) => return Exit::Closed,
                        Some(Cmd::Send(mut frame, reply)) => {
                            self.seq += 1;
                            let id = format!("s{}", self.seq);
                            frame.id = Some(id);
                            if frame.client_message_id.is_none() {
                                frame.client_message_id = Some(format!("{:032x}", rand::random::<u128>()));
                            }
                            self.pending_sends.insert(self.seq, (frame.clone(), reply));
                            ClientFrame::Send(frame)
                        }
                        Some(Cmd::Request(mut frame, reply)) => {
                            self.seq += 1;
                            let id = format!("r{}", self.seq);
                            if let ClientFrame::ListPeers(r) | ClientFrame::ListMembers(r) = &mut frame {
                                r.req_id = Some(ReqId::Str(id.clone()));
                            }
                            self.pending_requests.insert(id, reply);
                            frame
                        }
                        Some(Cmd::Notify(frame)) => frame,
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
            BrokerFrame::Error(ref e) => self.reply(e.req_id.clone(), frame),
            BrokerFrame::HelloAck(_) => {}
        }
    }

    fn reply(&mut self, req_id: Option<ReqId>, frame: BrokerFrame) {
        if let Some(ReqId::Str(id)) = req_id {
            if let Some(tx) = self.pending_requests.remove(&id) {
                let _ = tx.send(frame);
            }
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
