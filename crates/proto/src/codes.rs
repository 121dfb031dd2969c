//! Error codes used in `error` frames, `ack.error` and HTTP error bodies, plus the
//! WebSocket close codes and capability names. Strings on the wire, constants in code.

/// Close codes (WIRE-V1 §Frames, broker → client).
pub mod close {
    /// Normal closure; also "session_replaced".
    pub const NORMAL: u16 = 1000;
    /// Broker shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Policy violation: the connection was rejected (bad hello, deadline, oversized frame…).
    pub const REJECTED: u16 = 1008;
    /// The member was removed from the mesh.
    pub const KICKED: u16 = 4001;
    /// The member was revoked (banned).
    pub const REVOKED: u16 = 4002;
}

pub const NO_HELLO: &str = "no_hello";
pub const UNKNOWN_MESSAGE_TYPE: &str = "unknown_message_type";
pub const MALFORMED: &str = "malformed";
pub const BAD_SIGNATURE: &str = "bad_signature";
pub const TIMESTAMP_SKEW: &str = "timestamp_skew";
pub const REPLAY: &str = "replay";
pub const UNAUTHORIZED: &str = "unauthorized";
pub const REVOKED: &str = "revoked";
pub const ATTESTATION_MISMATCH: &str = "attestation_mismatch";
pub const EXPIRED: &str = "expired";
pub const TTL_TOO_LONG: &str = "ttl_too_long";
pub const PARENT_MEMBER_ID_MISMATCH: &str = "parent_member_id_mismatch";
pub const BAD_SESSION_PUBKEY: &str = "bad_session_pubkey";
pub const ALREADY_AUTHENTICATED: &str = "already_authenticated";
pub const RATE_LIMITED: &str = "rate_limited";
pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
pub const UNKNOWN_RECIPIENT: &str = "unknown_recipient";
pub const NO_RECIPIENTS: &str = "no_recipients";
pub const BAD_TARGET: &str = "bad_target";
pub const INTERNAL: &str = "internal";
pub const UNAVAILABLE: &str = "unavailable";
/// Extension: the member already has the most live session identities it may have.
pub const TOO_MANY_SESSIONS: &str = "too_many_sessions";

// POST /join errors (WIRE-V1 §Enrollment).
pub const INVITE_BAD_SIGNATURE: &str = "invite_bad_signature";
pub const MESH_NOT_FOUND: &str = "mesh_not_found";
pub const INVITE_OWNER_MISMATCH: &str = "invite_owner_mismatch";
pub const INVITE_NOT_FOUND: &str = "invite_not_found";
pub const INVITE_MESH_MISMATCH: &str = "invite_mesh_mismatch";
pub const INVITE_REVOKED: &str = "invite_revoked";
pub const INVITE_EXPIRED: &str = "invite_expired";
pub const INVITE_EXHAUSTED: &str = "invite_exhausted";
/// Extension: the joining key was revoked (banned) from this mesh.
pub const MEMBER_REVOKED: &str = "member_revoked";

// Admin API errors (extension).
pub const FORBIDDEN: &str = "forbidden";
pub const CREATION_DISABLED: &str = "mesh_creation_disabled";
pub const SLUG_TAKEN: &str = "slug_taken";
pub const NOT_FOUND: &str = "not_found";
pub const CONFLICT: &str = "conflict";

/// Capability names announced in `hello.capabilities` / `hello_ack.capabilities`.
pub mod cap {
    /// Multicast bodies sealed once with secretbox plus a sealed key per recipient.
    pub const E2E_MULTICAST: &str = "e2e-multicast";
    /// `list_members` → `members_list`: every current recipient identity, online or not.
    pub const LIST_MEMBERS: &str = "list-members";
    /// Durable per-recipient queues for direct and multicast messages (v1 defect fixed).
    pub const OFFLINE_QUEUE: &str = "offline-queue";
    /// Leases re-pushed by the broker; `client_ack` scoped to the acker.
    pub const LEASES: &str = "leases";
    /// The signed HTTP mesh/invite/member administration API.
    pub const MESH_ADMIN: &str = "mesh-admin";
    /// `message_status` → per-recipient delivery state (queued / delivered / acked).
    pub const MESSAGE_STATUS: &str = "message-status";
    /// `reachability` in presence (`hello.reach`, `set_reach`, `peers_list[].reach`).
    pub const REACHABILITY: &str = "reachability";
    /// Session identities retire (schedule, cap per member) and `retire_sessions`.
    pub const SESSION_RETIRE: &str = "session-retire";
}
