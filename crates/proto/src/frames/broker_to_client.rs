//! Frames the broker sends to a client.

use serde::{Deserialize, Serialize};

use super::{GroupRef, Priority, Reach, ReqId, Status};

/// Every frame the broker may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BrokerFrame {
    HelloAck(HelloAck),
    Ack(Ack),
    Push(Push),
    PeersList(PeersList),
    Error(ErrorFrame),
    /// Extension `list-members`.
    MembersList(MembersList),
    /// Extension `message-status`: the reply to a `message_status` request.
    MessageStatus(MessageStatusReply),
    /// Extension `session-retire`: the reply to `retire_sessions`.
    SessionsRetired(SessionsRetired),
    /// Extension `presence-batch`: the presence events of one mesh, coalesced. Sent only
    /// to clients that announced the capability; the others get one system `push` each.
    Presence(PresenceBatch),
}

impl BrokerFrame {
    /// The `_reqId` this frame answers, if any (pushes answer nothing).
    pub fn req_id(&self) -> Option<&ReqId> {
        match self {
            BrokerFrame::HelloAck(f) => f.req_id.as_ref(),
            BrokerFrame::Ack(f) => f.req_id.as_ref(),
            BrokerFrame::Push(_) => None,
            BrokerFrame::PeersList(f) => f.req_id.as_ref(),
            BrokerFrame::Error(f) => f.req_id.as_ref(),
            BrokerFrame::MembersList(f) => f.req_id.as_ref(),
            BrokerFrame::MessageStatus(f) => f.req_id.as_ref(),
            BrokerFrame::SessionsRetired(f) => f.req_id.as_ref(),
            BrokerFrame::Presence(_) => None,
        }
    }
}

/// Reply to a successful `hello` / `session_hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloAck {
    pub presence_id: String,
    pub member_display_name: String,
    pub protocol_version: u32,
    pub capabilities: Vec<String>,
    /// Extension (restore field): the member id the broker resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// Extension (restore field): the member's role in the mesh (`owner|admin|member`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_role: Option<String>,
    /// Extension (restore field): the presence's restored status after a reconnect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Extension (restore field): the presence's restored summary after a reconnect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<GroupRef>>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// Reply to `send`: the message is durably committed (`queued: true`) or refused (`error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    /// The send's `id`, or "".
    pub id: String,
    /// The broker message id, or "" when refused.
    pub message_id: String,
    pub queued: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Extension: how many per-recipient deliveries were created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<u32>,
    #[serde(
        rename = "client_message_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_message_id: Option<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// A delivery (or, with `subtype: "system"`, a presence event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Push {
    pub message_id: String,
    pub mesh_id: String,
    /// The sender connection's session key, else its member key; `"system"` for events.
    pub sender_pubkey: String,
    pub priority: Priority,
    pub nonce: String,
    pub ciphertext: String,
    /// ISO 8601 (UTC, milliseconds).
    pub created_at: String,
    #[serde(
        rename = "client_message_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_message_id: Option<String>,
    /// Multicast only: the sender's member key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_member_pubkey: Option<String>,
    /// Multicast only: the sender's display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    /// Extension: the `targetSpec` the sender used (`*`, `@name` or a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_spec: Option<String>,
    /// Extension `e2e-multicast`: base64(nonce ‖ crypto_box of the message key) for this
    /// recipient; the body is then `crypto_secretbox` under that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_key: Option<String>,
    /// `"system"` for presence events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_data: Option<EventData>,
}

/// Presence event payload of a system push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventData {
    pub name: String,
    pub pubkey: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<GroupRef>>,
}

/// Extension `presence-batch` (PROTOCOL.md §6): what changed in a mesh's presence since
/// the last such frame, in order, one event per key at most. It may name the recipient
/// itself, which ignores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceBatch {
    pub mesh_id: String,
    /// ISO 8601 (UTC, milliseconds).
    pub created_at: String,
    pub events: Vec<PresenceEvent>,
    /// Events that did not fit (a storm past the frame's share): leaves among them
    /// follow in the next frames, joins are not sent (`list_peers` shows them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more: Option<u64>,
}

/// One event of a [`PresenceBatch`]: a system push's `event` and `eventData` in one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEvent {
    /// One of [`event`]'s names.
    pub event: String,
    pub name: String,
    pub pubkey: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<GroupRef>>,
}

impl PresenceBatch {
    /// The events as the system pushes a v1 client would have received, one each (with
    /// fresh message ids), leaving out `own` (the recipient's own key).
    pub fn into_pushes(self, own: &str) -> impl Iterator<Item = Push> + use<'_> {
        let PresenceBatch {
            mesh_id,
            created_at,
            events,
            more: _,
        } = self;
        events
            .into_iter()
            .filter(move |e| e.pubkey != own)
            .map(move |e| Push::system(&mesh_id, &created_at, e))
    }
}

impl Push {
    /// A system push (a presence event) as v1 defines it.
    pub fn system(mesh_id: &str, created_at: &str, e: PresenceEvent) -> Push {
        Push {
            message_id: crate::ids::new_id(),
            mesh_id: mesh_id.to_owned(),
            sender_pubkey: "system".into(),
            priority: Priority::Low,
            nonce: String::new(),
            ciphertext: String::new(),
            created_at: created_at.to_owned(),
            client_message_id: None,
            sender_member_pubkey: None,
            sender_name: None,
            target_spec: None,
            sealed_key: None,
            subtype: Some("system".into()),
            event: Some(e.event),
            event_data: Some(EventData {
                name: e.name,
                pubkey: e.pubkey,
                groups: e.groups,
            }),
        }
    }
}

/// System event names.
pub mod event {
    pub const PEER_JOINED: &str = "peer_joined";
    pub const PEER_LEFT: &str = "peer_left";
    pub const PEER_RETURNED: &str = "peer_returned";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersList {
    pub peers: Vec<PeerInfo>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// One live presence in `peers_list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerInfo {
    /// Session key, else member key: the key to address and to encrypt to.
    pub pubkey: String,
    pub member_pubkey: String,
    pub display_name: String,
    pub status: Status,
    /// Serialized as `null` when unset, as v1 does.
    pub summary: Option<String>,
    pub groups: Vec<GroupRef>,
    pub session_id: String,
    /// ISO 8601.
    pub connected_at: String,
    pub cwd: String,
    /// `control-plane`, `session` or `service`.
    pub role: String,
    /// Same value as `role`.
    pub peer_role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Extension `reachability`: how a message reaches this peer now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reach: Option<Reach>,
}

/// Extension `list-members`: every identity a multicast would reach, online or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersList {
    pub members: Vec<MemberInfo>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// One recipient identity: a member key or a known session key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberInfo {
    /// The key deliveries are addressed to (member or session key).
    pub pubkey: String,
    pub member_id: String,
    pub member_pubkey: String,
    pub display_name: String,
    /// `owner`, `admin` or `member`.
    pub role: String,
    /// `member` or `session`.
    pub kind: String,
    pub groups: Vec<GroupRef>,
    pub online: bool,
    /// Whether this identity's client announced `e2e-multicast` when it last connected.
    pub e2e_multicast: bool,
    /// Whether this identity has ever connected (if not, its client's abilities are unknown).
    #[serde(default)]
    pub seen: bool,
    /// Extension `reachability`: how a message reaches this identity now (`queued` when
    /// it is not connected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reach: Option<Reach>,
    /// When this identity was last connected (ISO 8601), if it ever was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
}

/// Extension `session-retire`: how many of the requested session keys were retired now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionsRetired {
    pub retired: Vec<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// Extension `message-status`: per-recipient delivery state of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageStatusReply {
    pub message_id: String,
    /// The `targetSpec` it was sent to.
    pub target_spec: String,
    /// ISO 8601 (UTC, milliseconds).
    pub created_at: String,
    pub recipients: Vec<RecipientStatus>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// One recipient's copy of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecipientStatus {
    /// The key the delivery is addressed to (member or session key).
    pub pubkey: String,
    /// The recipient's display name, when the broker knows the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    pub state: DeliveryState,
    /// When the recipient acknowledged it (ISO 8601), for `acked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_at: Option<String>,
}

/// Where one delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Stored durably, not pushed to the recipient yet (offline, held by status, or queued).
    Queued,
    /// Pushed to the recipient's live connection; its `client_ack` has not arrived.
    Delivered,
    /// The recipient's client acknowledged it.
    Acked,
    /// Its 7-day TTL ran out before the recipient acknowledged it.
    Expired,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Acked => "acked",
            DeliveryState::Expired => "expired",
        }
    }
}

/// An error reply. Never contains internals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

impl ErrorFrame {
    pub fn new(code: impl AsRef<str>, message: impl Into<String>) -> Self {
        Self {
            code: code.as_ref().to_owned(),
            message: message.into(),
            id: None,
            req_id: None,
        }
    }

    pub fn with_req_id(mut self, req_id: Option<ReqId>) -> Self {
        self.req_id = req_id;
        self
    }
}
