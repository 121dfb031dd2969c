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
//! This module is the handle ([`Connection`]) and what a caller gives and gets back;
//! `hello` builds the authenticating frames (pure, no I/O), `actor` is the task that owns
//! the socket.
//!
//! What it must not do: decrypt, decide what to show, or print anything.

use claudemesh_proto::codes::AnyCode;
mod actor;
mod hello;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use claudemesh_crypto::SecretKey;
use claudemesh_proto::codes::cap;
use claudemesh_proto::frames::{
    Ack, BrokerFrame, ClientAck, ClientFrame, GroupRef, HelloAck, JoinGroup, LeaveGroup,
    MemberInfo, MessageStatusReply, MessageStatusRequest, PeerInfo, PresenceInfo, Push, Reach,
    Request, RetireSessions, Send, SetReach, SetStatus, SetSummary, Status,
};
use claudemesh_proto::limits;
use tokio::sync::{mpsc, oneshot, watch};

use actor::Cmd;

/// How long a request waits for its reply before giving up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Every client WebSocket's buffers. tungstenite zeroes its whole read buffer (128 KiB by
/// default) before every read, even one that finds nothing: in a reconnect storm of
/// 10 000 clients that `memset` was the clients' largest cost. Frames are small; a larger
/// one grows the buffer as it arrives.
pub fn websocket_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024)
}
/// Pushes buffered for the caller before the connection stops reading.
const PUSH_BUFFER: usize = 1_024;

/// Errors of the connection layer.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The broker could not be reached: this attempt's socket or hello failed.
    #[error("cannot reach the broker at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: TransportError,
    },
    /// A background handle ([`Connection::spawn`]) is not connected yet: `reason` is why
    /// its last attempt failed (the attempt's error stays with the task that made it).
    #[error("cannot reach the broker at {url}: {reason}")]
    NotConnected { url: String, reason: String },
    /// The broker refused the hello (`code` as in PROTOCOL.md, e.g. `unauthorized`, `revoked`).
    #[error("the broker refused this identity ({code}): {message}")]
    Refused { code: AnyCode, message: String },
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
    Rejected { code: AnyCode, message: String },
    /// The broker answered the request (by its wire type) with a reply the protocol does
    /// not allow, e.g. a `send` neither queued nor refused with a code.
    #[error("the broker answered {0} with a reply the protocol does not allow")]
    UnexpectedReply(&'static str),
}

/// Why a socket to the broker could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No WebSocket within the connect timeout.
    #[error("timed out")]
    TimedOut,
    /// The TCP connection failed or broke (tungstenite's I/O error, unwrapped so the
    /// cause is not printed twice).
    #[error(transparent)]
    Io(std::io::Error),
    /// The WebSocket handshake or protocol failed.
    #[error(transparent)]
    WebSocket(tokio_tungstenite::tungstenite::Error),
    /// The TLS trust could not be set up (a bad `CLAUDEMESH_CA_FILE`).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

impl From<tokio_tungstenite::tungstenite::Error> for TransportError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        match e {
            tokio_tungstenite::tungstenite::Error::Io(io) => Self::Io(io),
            other => Self::WebSocket(other),
        }
    }
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
    /// When a silent socket counts as dead.
    pub liveness: Liveness,
}

/// How the client tells a dead socket from a quiet one. A partition or a sleeping laptop
/// leaves the TCP connection open with nothing coming through, and the broker may already
/// have given this connection up; without a deadline of its own the client would wait on
/// it forever and never reconnect. After `ping_after` without a frame from the broker the
/// client sends a WebSocket ping (any broker answers it with a pong); after `dead_after`
/// without a frame it drops the socket and reconnects. The defaults mirror the broker's
/// own ([`limits::PING_INTERVAL`], [`limits::DEAD_SOCKET_AFTER`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub ping_after: Duration,
    pub dead_after: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            ping_after: limits::PING_INTERVAL,
            dead_after: limits::DEAD_SOCKET_AFTER,
        }
    }
}

/// What the connection reports besides pushes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Connecting,
    Connected {
        capabilities: Vec<String>,
    },
    /// Gave up: the broker refused the identity, or a one-shot connection dropped.
    Failed(Failure),
}

/// Why a connection gave up for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The broker refused the identity (`code` as in PROTOCOL.md: `revoked`,
    /// `unauthorized`…); no retry can fix it.
    #[error("{code}: {message}")]
    Refused { code: AnyCode, message: String },
    /// The socket of a connection without reconnect (a one-shot command) closed.
    #[error("connection closed")]
    Dropped,
    /// The member was removed from the mesh while connected: the broker closed the
    /// socket with `close_code` 4001 (kicked) or 4002 (revoked). No retry can fix it.
    #[error("removed from the mesh ({close_code}: {reason})")]
    Removed { close_code: u16, reason: String },
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

impl Connection {
    /// Connect and authenticate. Returns the handle and the stream of pushes (deliveries
    /// and system events) for the caller to decrypt, record and ack. Fails if this first
    /// connection fails.
    pub async fn connect(
        opts: ConnectOptions,
    ) -> Result<(Self, mpsc::Receiver<Push>), ConnectError> {
        let (ws, hello) = actor::open(&opts).await?;
        Ok(actor::start(opts, Some((ws, hello))))
    }

    /// Start connecting in the background and return at once: the handle reports
    /// [`State::Connecting`] until the broker answers, retrying with backoff for as long as
    /// it is unreachable. A refusal (revoked, removed…) ends in [`State::Failed`].
    pub fn spawn(opts: ConnectOptions) -> (Self, mpsc::Receiver<Push>) {
        actor::start(opts, None)
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
                    State::Failed(Failure::Refused { code, message }) => {
                        return Err(ConnectError::Refused {
                            code: code.clone(),
                            message: message.clone(),
                        });
                    }
                    State::Failed(Failure::Dropped | Failure::Removed { .. }) => {
                        return Err(ConnectError::Closed);
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
            Err(_) => Err(ConnectError::NotConnected {
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

    /// Follow the state as it changes (a drop, a reconnect, giving up).
    pub fn watch_state(&self) -> watch::Receiver<State> {
        self.state.clone()
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

    /// One request and its reply. Refused at once as [`ConnectError::Unsupported`] when
    /// the broker did not announce `needs`; else sent with a fresh `_reqId` (assigned by
    /// the actor) and answered by the frame `pick` accepts, or by an `error` frame, which
    /// becomes [`ConnectError::Rejected`] with the broker's code.
    async fn request<T>(
        &self,
        needs: Option<&str>,
        frame: ClientFrame,
        pick: fn(BrokerFrame) -> Option<T>,
    ) -> Result<T, ConnectError> {
        if let Some(capability) = needs
            && !self.has_capability(capability)
        {
            return Err(ConnectError::Unsupported(frame.kind()));
        }
        let kind = frame.kind();
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Request(frame, tx))
            .await
            .map_err(|_| ConnectError::Closed)?;
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, rx)
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(|_| ConnectError::Closed)?;
        match reply {
            BrokerFrame::Error(e) => Err(ConnectError::Rejected {
                code: AnyCode::parse(&e.code),
                message: e.message,
            }),
            other => pick(other).ok_or(ConnectError::UnexpectedReply(kind)),
        }
    }

    /// Live peers (`list_peers`).
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, ConnectError> {
        let frame = ClientFrame::ListPeers(Request::default());
        self.request(None, frame, |reply| match reply {
            BrokerFrame::PeersList(p) => Some(p.peers),
            _ => None,
        })
        .await
    }

    /// Every recipient identity, online or not (extension `list-members`).
    pub async fn members(&self) -> Result<Vec<MemberInfo>, ConnectError> {
        let frame = ClientFrame::ListMembers(Request::default());
        self.request(Some(cap::LIST_MEMBERS), frame, |reply| match reply {
            BrokerFrame::MembersList(m) => Some(m.members),
            _ => None,
        })
        .await
    }

    /// Where each recipient's copy of a message this identity sent stands (extension
    /// `message-status`).
    pub async fn message_status(
        &self,
        message_id: &str,
    ) -> Result<MessageStatusReply, ConnectError> {
        let frame = ClientFrame::MessageStatus(MessageStatusRequest {
            message_id: message_id.to_owned(),
            req_id: None,
        });
        self.request(Some(cap::MESSAGE_STATUS), frame, |reply| match reply {
            BrokerFrame::MessageStatus(m) => Some(m),
            _ => None,
        })
        .await
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
        let frame = ClientFrame::RetireSessions(RetireSessions {
            pubkeys,
            req_id: None,
        });
        self.request(Some(cap::SESSION_RETIRE), frame, |reply| match reply {
            BrokerFrame::SessionsRetired(r) => Some(r.retired),
            _ => None,
        })
        .await
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
