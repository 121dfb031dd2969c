//! Stateless checks of `hello` and `session_hello`: shapes, clock skew, attestation and
//! signatures. They run in the connection task (in parallel, off the engine thread); the
//! engine then checks what needs state: membership, revocation and replay.

use claudemesh_crypto::{PublicKey, Signature};
use claudemesh_proto::codes;
use claudemesh_proto::codes::Code;
use claudemesh_proto::frames::{Hello, PresenceInfo, ReqId, SessionHello};
use claudemesh_proto::{canonical, limits};

/// Presence role of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Member-keyed connection (`hello`).
    ControlPlane,
    /// Session-keyed connection (`session_hello`).
    Session,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Session => "session",
        }
    }
}

/// A hello whose signatures and timing are valid. Membership is not yet checked.
#[derive(Debug, Clone)]
pub struct VerifiedHello {
    pub mesh_id: String,
    pub member_id: String,
    pub member_pubkey: String,
    /// The key this connection is addressed by and stamps as `senderPubkey`.
    pub key: String,
    pub role: Role,
    pub presence: PresenceInfo,
    /// The hello signature, remembered to refuse replays.
    pub signature: String,
    pub timestamp: i64,
    pub req_id: Option<ReqId>,
}

impl VerifiedHello {
    pub fn capabilities(&self) -> &[String] {
        self.presence.capabilities.as_deref().unwrap_or_default()
    }
}

/// Why a hello was refused: an error code and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: Code,
    pub message: String,
    /// Close code to use (1008, or 4002 for a revoked member).
    pub close: u16,
}

impl Rejection {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            close: codes::close::REJECTED,
        }
    }
}

fn key(hex: &str, code: Code, what: &str) -> Result<PublicKey, Rejection> {
    PublicKey::from_hex(hex)
        .map_err(|_| Rejection::new(code, format!("{what} is not a 64-hex ed25519 key")))
}

fn sig(hex: &str) -> Result<Signature, Rejection> {
    Signature::from_hex(hex)
        .map_err(|_| Rejection::new(Code::BadSignature, "signature is not 128 hex characters"))
}

fn check_skew(timestamp: i64, now: i64) -> Result<(), Rejection> {
    if now.abs_diff(timestamp) > limits::MAX_CLOCK_SKEW_MS.unsigned_abs() {
        return Err(Rejection::new(
            Code::TimestampSkew,
            format!(
                "timestamp is {} ms away from the broker clock (limit ±{} ms)",
                now.saturating_sub(timestamp),
                limits::MAX_CLOCK_SKEW_MS
            ),
        ));
    }
    Ok(())
}

fn check_presence(p: &PresenceInfo) -> Result<(), Rejection> {
    let short = [
        p.display_name.as_deref(),
        Some(p.session_id.as_str()),
        Some(p.cwd.as_str()),
        p.hostname.as_deref(),
    ];
    if short
        .iter()
        .flatten()
        .any(|s| s.len() > limits::MAX_SHORT_TEXT_BYTES)
    {
        return Err(Rejection::new(
            Code::Malformed,
            "a presence field is too long",
        ));
    }
    if p.groups.as_ref().is_some_and(|g| {
        g.len() > limits::MAX_GROUPS
            || g.iter()
                .any(|g| g.name.is_empty() || g.name.len() > limits::MAX_SHORT_TEXT_BYTES)
    }) {
        return Err(Rejection::new(
            Code::Malformed,
            "too many groups or a bad group name",
        ));
    }
    Ok(())
}

/// Verify a member `hello` at broker time `now` (ms).
pub fn verify_hello(h: Hello, now: i64) -> Result<VerifiedHello, Rejection> {
    check_skew(h.timestamp, now)?;
    check_presence(&h.presence)?;
    let member = key(&h.pubkey, Code::Malformed, "pubkey")?;
    let signature = sig(&h.signature)?;
    member
        .verify_str(
            &canonical::hello(&h.mesh_id, &h.member_id, &h.pubkey, h.timestamp),
            &signature,
        )
        .map_err(|_| Rejection::new(Code::BadSignature, "hello signature does not verify"))?;
    let key = match &h.session_pubkey {
        Some(s) => self::key(s, Code::BadSessionPubkey, "sessionPubkey")?.to_hex(),
        None => h.pubkey.clone(),
    };
    Ok(VerifiedHello {
        mesh_id: h.mesh_id,
        member_id: h.member_id,
        member_pubkey: h.pubkey,
        key,
        role: Role::ControlPlane,
        presence: h.presence,
        signature: h.signature,
        timestamp: h.timestamp,
        req_id: h.req_id,
    })
}

/// Verify a `session_hello` (attestation and session signature) at broker time `now`.
pub fn verify_session_hello(h: SessionHello, now: i64) -> Result<VerifiedHello, Rejection> {
    check_skew(h.timestamp, now)?;
    check_presence(&h.presence)?;
    let session = key(&h.session_pubkey, Code::BadSessionPubkey, "sessionPubkey")?;
    let parent = key(
        &h.parent_member_pubkey,
        Code::Malformed,
        "parentMemberPubkey",
    )?;
    let att = &h.parent_attestation;
    if att.session_pubkey != h.session_pubkey || att.parent_member_pubkey != h.parent_member_pubkey
    {
        return Err(Rejection::new(
            Code::AttestationMismatch,
            "attestation names other keys than the hello",
        ));
    }
    parent
        .verify_str(
            &canonical::session_attestation(
                &att.parent_member_pubkey,
                &att.session_pubkey,
                att.expires_at,
            ),
            &sig(&att.signature)?,
        )
        .map_err(|_| Rejection::new(Code::BadSignature, "attestation signature does not verify"))?;
    if att.expires_at <= now {
        return Err(Rejection::new(
            Code::Expired,
            "session attestation has expired; mint a new one",
        ));
    }
    if att.expires_at > now + limits::MAX_ATTESTATION_TTL_MS {
        return Err(Rejection::new(
            Code::TtlTooLong,
            "session attestation is valid for more than 24 h",
        ));
    }
    session
        .verify_str(
            &canonical::session_hello(
                &h.mesh_id,
                &h.parent_member_pubkey,
                &h.session_pubkey,
                h.timestamp,
            ),
            &sig(&h.signature)?,
        )
        .map_err(|_| {
            Rejection::new(
                Code::BadSignature,
                "session_hello signature does not verify",
            )
        })?;
    Ok(VerifiedHello {
        mesh_id: h.mesh_id,
        member_id: h.parent_member_id,
        member_pubkey: h.parent_member_pubkey,
        key: h.session_pubkey,
        role: Role::Session,
        presence: h.presence,
        signature: h.signature,
        timestamp: h.timestamp,
        req_id: h.req_id,
    })
}
