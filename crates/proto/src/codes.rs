//! Error codes used in `error` frames, `ack.error` and HTTP error bodies, plus the
//! WebSocket close codes and capability names. The [`Code`] enum is how code handles
//! them; the string constants are their wire text (and what tests compare against).
//! [`Code::explain`] is the one place a code becomes advice for a person: the CLI, doctor
//! and the MCP server all use it.

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

crate::text_enum! {
    /// Every error code this protocol defines.
    pub enum Code {
        NoHello = NO_HELLO,
        UnknownMessageType = UNKNOWN_MESSAGE_TYPE,
        Malformed = MALFORMED,
        BadSignature = BAD_SIGNATURE,
        TimestampSkew = TIMESTAMP_SKEW,
        Replay = REPLAY,
        Unauthorized = UNAUTHORIZED,
        Revoked = REVOKED,
        AttestationMismatch = ATTESTATION_MISMATCH,
        Expired = EXPIRED,
        TtlTooLong = TTL_TOO_LONG,
        ParentMemberIdMismatch = PARENT_MEMBER_ID_MISMATCH,
        BadSessionPubkey = BAD_SESSION_PUBKEY,
        AlreadyAuthenticated = ALREADY_AUTHENTICATED,
        RateLimited = RATE_LIMITED,
        PayloadTooLarge = PAYLOAD_TOO_LARGE,
        UnknownRecipient = UNKNOWN_RECIPIENT,
        NoRecipients = NO_RECIPIENTS,
        BadTarget = BAD_TARGET,
        Internal = INTERNAL,
        Unavailable = UNAVAILABLE,
        TooManySessions = TOO_MANY_SESSIONS,
        InviteBadSignature = INVITE_BAD_SIGNATURE,
        MeshNotFound = MESH_NOT_FOUND,
        InviteOwnerMismatch = INVITE_OWNER_MISMATCH,
        InviteNotFound = INVITE_NOT_FOUND,
        InviteMeshMismatch = INVITE_MESH_MISMATCH,
        InviteRevoked = INVITE_REVOKED,
        InviteExpired = INVITE_EXPIRED,
        InviteExhausted = INVITE_EXHAUSTED,
        MemberRevoked = MEMBER_REVOKED,
        Forbidden = FORBIDDEN,
        CreationDisabled = CREATION_DISABLED,
        SlugTaken = SLUG_TAKEN,
        NotFound = NOT_FOUND,
        Conflict = CONFLICT,
    }
}

impl Code {
    /// What the code means for the person who met it, and what to do about it.
    pub fn explain(self) -> &'static str {
        match self {
            Code::NoHello
            | Code::UnknownMessageType
            | Code::Malformed
            | Code::AlreadyAuthenticated => {
                "the broker did not understand the request (client and broker versions may differ)"
            }
            Code::BadSignature | Code::AttestationMismatch | Code::BadSessionPubkey => {
                "the broker could not verify this identity's signature; check the mesh's keys with `claudemesh doctor`"
            }
            Code::TimestampSkew => {
                "this machine's clock is too far from the broker's; fix the system time"
            }
            Code::Replay => "the broker saw this signed request before; retry",
            Code::Unauthorized | Code::ParentMemberIdMismatch => {
                "this key is not a member of the mesh (it may have been removed); join again with a new invite"
            }
            Code::Revoked | Code::MemberRevoked => {
                "this member was revoked (banned) from the mesh and may not rejoin"
            }
            Code::Expired | Code::TtlTooLong => {
                "the session attestation expired; restart the session"
            }
            Code::RateLimited => "too many requests; wait a few seconds and retry",
            Code::PayloadTooLarge => "the message is too large; send less text",
            Code::UnknownRecipient => {
                "the broker does not know this recipient (it left or was removed)"
            }
            Code::NoRecipients => "nobody matches that target",
            Code::BadTarget => "the target is not a peer key, `*` or `@group`",
            Code::Internal | Code::Unavailable => {
                "the broker's storage is unavailable; retry shortly"
            }
            Code::TooManySessions => {
                "this member has the most live sessions allowed; close one or run `claudemesh sessions prune`"
            }
            Code::InviteBadSignature | Code::InviteOwnerMismatch | Code::InviteMeshMismatch => {
                "the invite is not valid for this mesh; ask for a new one"
            }
            Code::MeshNotFound => "the broker does not know this mesh; check the broker URL",
            Code::InviteNotFound => {
                "the broker does not know this invite (it was never registered); ask for a new one"
            }
            Code::InviteRevoked => "the invite was revoked; ask for a new one",
            Code::InviteExpired => "the invite expired; ask for a new one",
            Code::InviteExhausted => "the invite has been used up; ask for a new one",
            Code::Forbidden => "your role in this mesh does not allow this",
            Code::CreationDisabled => {
                "this broker does not allow creating meshes (or needs a creation token)"
            }
            Code::SlugTaken => "a mesh with this slug already exists on the broker; pick another",
            Code::NotFound => "no such item",
            Code::Conflict => "this already exists",
        }
    }
}

/// A code as a client receives it: one this protocol defines, or the text of another
/// implementation (a v1 broker's `ack.error` may be free text). Parsed once at the
/// boundary; compared with [`Code`] directly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AnyCode {
    Known(Code),
    Unknown(String),
}

impl AnyCode {
    pub fn parse(s: &str) -> Self {
        Code::parse(s).map_or_else(|| AnyCode::Unknown(s.to_owned()), AnyCode::Known)
    }

    pub fn as_str(&self) -> &str {
        match self {
            AnyCode::Known(c) => c.as_str(),
            AnyCode::Unknown(s) => s,
        }
    }

    pub fn known(&self) -> Option<Code> {
        match self {
            AnyCode::Known(c) => Some(*c),
            AnyCode::Unknown(_) => None,
        }
    }
}

impl From<Code> for AnyCode {
    fn from(c: Code) -> Self {
        AnyCode::Known(c)
    }
}

impl From<&str> for AnyCode {
    fn from(s: &str) -> Self {
        AnyCode::parse(s)
    }
}

impl From<String> for AnyCode {
    fn from(s: String) -> Self {
        AnyCode::parse(&s)
    }
}

impl PartialEq<Code> for AnyCode {
    fn eq(&self, other: &Code) -> bool {
        self.known() == Some(*other)
    }
}

impl PartialEq<str> for AnyCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for AnyCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for AnyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// Presence events coalesced per mesh into one `presence` frame (announced by the
    /// client too: only a client that announces it gets the frame).
    pub const PRESENCE_BATCH: &str = "presence-batch";

    /// Every extension this protocol version defines, as a broker announces them in
    /// `hello_ack` (PROTOCOL.md §3).
    pub const ALL: &[&str] = &[
        E2E_MULTICAST,
        LIST_MEMBERS,
        OFFLINE_QUEUE,
        LEASES,
        MESH_ADMIN,
        MESSAGE_STATUS,
        REACHABILITY,
        SESSION_RETIRE,
        PRESENCE_BATCH,
    ];
}

#[cfg(test)]
mod tests {
    use super::Code;

    #[test]
    fn every_code_has_distinct_text_and_advice() {
        let mut texts: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(texts.len(), Code::ALL.len());
        assert!(Code::ALL.iter().all(|c| !c.explain().is_empty()));
        assert_eq!(Code::parse("rate_limited"), Some(Code::RateLimited));
        assert_eq!(super::AnyCode::from("revoked"), Code::Revoked);
        let other = super::AnyCode::from("rate limit exceeded");
        assert_eq!(other.known(), None);
        assert_eq!(other.to_string(), "rate limit exceeded");
    }
}
