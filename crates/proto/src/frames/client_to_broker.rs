//! Frames a client sends to the broker.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{GroupRef, Priority, Reach, ReqId, Status};

/// Every frame a client may send. Unknown `type`s parse as [`ClientFrame::Unknown`] so the
/// broker can answer `unknown_message_type` and keep the connection open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Hello(Hello),
    SessionHello(SessionHello),
    Send(Send),
    ClientAck(ClientAck),
    ListPeers(Request),
    SetStatus(SetStatus),
    SetSummary(SetSummary),
    JoinGroup(JoinGroup),
    LeaveGroup(LeaveGroup),
    /// Extension `list-members`.
    ListMembers(Request),
    /// Extension `message-status`.
    MessageStatus(MessageStatusRequest),
    /// Extension `reachability`: how messages reach this peer now.
    SetReach(SetReach),
    /// Extension `session-retire`: retire session identities of the caller's own member.
    RetireSessions(RetireSessions),
    #[serde(other)]
    Unknown,
}

impl ClientFrame {
    /// The wire `type` of this frame (`"unknown"` for unrecognised ones).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Hello(_) => "hello",
            ClientFrame::SessionHello(_) => "session_hello",
            ClientFrame::Send(_) => "send",
            ClientFrame::ClientAck(_) => "client_ack",
            ClientFrame::ListPeers(_) => "list_peers",
            ClientFrame::SetStatus(_) => "set_status",
            ClientFrame::SetSummary(_) => "set_summary",
            ClientFrame::JoinGroup(_) => "join_group",
            ClientFrame::LeaveGroup(_) => "leave_group",
            ClientFrame::ListMembers(_) => "list_members",
            ClientFrame::MessageStatus(_) => "message_status",
            ClientFrame::SetReach(_) => "set_reach",
            ClientFrame::RetireSessions(_) => "retire_sessions",
            ClientFrame::Unknown => "unknown",
        }
    }

    /// The `_reqId` the frame carried, if any.
    pub fn req_id(&self) -> Option<&ReqId> {
        match self {
            ClientFrame::Hello(f) => f.req_id.as_ref(),
            ClientFrame::SessionHello(f) => f.req_id.as_ref(),
            ClientFrame::Send(f) => f.req_id.as_ref(),
            ClientFrame::ClientAck(f) => f.req_id.as_ref(),
            ClientFrame::ListPeers(f) | ClientFrame::ListMembers(f) => f.req_id.as_ref(),
            ClientFrame::SetStatus(f) => f.req_id.as_ref(),
            ClientFrame::SetSummary(f) => f.req_id.as_ref(),
            ClientFrame::JoinGroup(f) => f.req_id.as_ref(),
            ClientFrame::LeaveGroup(f) => f.req_id.as_ref(),
            ClientFrame::MessageStatus(f) => f.req_id.as_ref(),
            ClientFrame::SetReach(f) => f.req_id.as_ref(),
            ClientFrame::RetireSessions(f) => f.req_id.as_ref(),
            ClientFrame::Unknown => None,
        }
    }
}

/// Fields shared by `hello` and `session_hello` that describe the presence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default)]
    pub session_id: String,
    #[serde(default)]
    pub pid: i64,
    #[serde(default)]
    pub cwd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `ai`, `human` or `connector`; kept as text so a newer client is never refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<GroupRef>>,
    /// Missing means 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    /// Extension `reachability`: how messages reach this peer (`live` or `next_prompt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reach: Option<Reach>,
}

/// `hello`: a member-keyed connection (presence role `control-plane`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    pub mesh_id: String,
    pub member_id: String,
    pub pubkey: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_pubkey: Option<String>,
    #[serde(flatten)]
    pub presence: PresenceInfo,
    pub timestamp: i64,
    pub signature: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// The member's signed statement that a session key acts for it until `expiresAt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attestation {
    pub session_pubkey: String,
    pub parent_member_pubkey: String,
    pub expires_at: i64,
    pub signature: String,
}

/// `session_hello`: a per-session connection (presence role `session`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionHello {
    pub mesh_id: String,
    pub parent_member_id: String,
    pub parent_member_pubkey: String,
    pub session_pubkey: String,
    pub parent_attestation: Attestation,
    #[serde(flatten)]
    pub presence: PresenceInfo,
    pub timestamp: i64,
    pub signature: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// `send`: one message to a key, `*`/`@all`, or `@group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Send {
    pub target_spec: String,
    #[serde(default)]
    pub priority: Priority,
    pub nonce: String,
    pub ciphertext: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(
        rename = "client_message_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_message_id: Option<String>,
    #[serde(
        rename = "request_fingerprint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub request_fingerprint: Option<String>,
    /// Extension `e2e-multicast`: recipient key (64 hex) → base64(nonce ‖ crypto_box of
    /// the message key). When present on a multicast, only the named recipients (that are
    /// also in the target set) get a delivery, each with its own sealed key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_keys: Option<BTreeMap<String, String>>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// `client_ack`: the acker's own delivery is done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientAck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_message_id: Option<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// A frame whose only field is the optional `_reqId` (`list_peers`, `list_members`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetStatus {
    pub status: Status,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSummary {
    /// `null` clears the summary.
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinGroup {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveGroup {
    pub name: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// Extension `message-status`: where each recipient's copy of a message the asker sent
/// stands. Answered with [`super::MessageStatusReply`], or `error` `not_found`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageStatusRequest {
    /// The broker message id from the send's `ack`.
    pub message_id: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// Extension `reachability`: a change of how messages reach this peer (fire-and-forget,
/// like `set_status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetReach {
    pub reach: Reach,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}

/// Extension `session-retire`: retire these session keys of the caller's member. Answered
/// with `sessions_retired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetireSessions {
    pub pubkeys: Vec<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
}
