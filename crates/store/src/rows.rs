//! Plain row types exchanged with a [`crate::Store`]. No behaviour, no validation; closed
//! sets (roles, removals, kinds, priorities) are the protocol's enums, stored as text.

use claudemesh_proto::authority::{PeerKind, Removal, Role};
use claudemesh_proto::frames::Priority;
use claudemesh_proto::invite::InviteRole;

/// A mesh. The broker holds only its owner's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshRow {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub owner_pubkey: String,
    pub created_at: i64,
}

/// An enrolled member identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    pub id: String,
    pub mesh_id: String,
    pub pubkey: String,
    pub display_name: String,
    pub role: Role,
    pub joined_at: i64,
    /// `None` while active.
    pub removed: Option<Removal>,
}

/// An operator account of the dashboard. The password is stored only as an Argon2id PHC
/// string; until it is chosen, only the SHA-256 (hex) of the single-use setup token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRow {
    pub name: String,
    pub password_hash: Option<String>,
    pub setup_hash: Option<String>,
    /// Milliseconds since the epoch; the setup token is void after it (0 = none).
    pub setup_expires_at: i64,
    pub created_at: i64,
}

/// A registered invite (the signed payload itself is never stored; only its id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRow {
    pub id: String,
    pub mesh_id: String,
    pub role: InviteRole,
    /// 0 = unlimited.
    pub max_uses: u32,
    pub uses: u32,
    /// Seconds since the epoch.
    pub expires_at: i64,
    pub revoked: bool,
    /// Public key of the signer.
    pub created_by: String,
    pub created_at: i64,
}

/// A recipient identity known to the broker: a member key or a session key that has
/// connected. Multicast recipients are computed from these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRow {
    pub pubkey: String,
    pub mesh_id: String,
    pub member_id: String,
    pub kind: PeerKind,
    pub display_name: String,
    /// JSON array of `{name, role?}`.
    pub groups_json: String,
    pub last_seen: i64,
    /// The identity's client announced `e2e-multicast`.
    pub e2e_multicast: bool,
    /// When a session identity retired (no longer a recipient; see PROTOCOL.md §5.9).
    /// A retired session that connects again is un-retired.
    pub retired_at: Option<i64>,
    /// The identity had a presence (live or in its grace period) when this row was last
    /// written: a broker that restarts finds who was present before (see the engine's
    /// `presence.rs`), so a reconnect after a restart is a re-attach, not a new join.
    pub online: bool,
}

/// A message body, stored once however many recipients it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    pub message_id: String,
    pub mesh_id: String,
    pub sender_pubkey: String,
    pub sender_member_pubkey: String,
    pub sender_name: String,
    pub target_spec: String,
    pub priority: Priority,
    pub nonce: String,
    pub ciphertext: String,
    pub client_message_id: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// One unacked delivery, joined with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDelivery {
    pub seq: i64,
    pub message_rowid: i64,
    pub sealed_key: Option<String>,
    pub message: MessageRow,
}

/// One recipient's delivery of a message, as `message-status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub seq: i64,
    pub recipient: String,
    pub expires_at: i64,
    pub acked_at: Option<i64>,
}

/// A message and every delivery it still has (expired ones may have been purged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageDeliveries {
    pub message: MessageRow,
    pub deliveries: Vec<DeliveryRecord>,
}

/// A broker node sharing the database with others (PostgreSQL): its random id for this
/// process, its name, and its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub id: i64,
    pub name: String,
    pub started_at: i64,
    pub seen_at: i64,
    /// The node's own figures as of its last heartbeat (the broker's JSON, which the
    /// store does not read; empty until its first heartbeat).
    pub figures: String,
}

/// One node's presence of one key (several nodes may each hold one). `data` is the
/// broker's own description of it (JSON the store does not read); `live` is false while
/// the presence is in its grace period on that node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRow {
    pub mesh_id: String,
    pub pubkey: String,
    pub node_id: i64,
    pub session_id: String,
    pub live: bool,
    pub data: String,
    pub updated_at: i64,
}
