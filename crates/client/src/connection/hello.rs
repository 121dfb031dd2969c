//! The frames that open a connection, built from an [`Identity`] with no I/O: `hello`
//! for a member connection, `session_hello` for a session one, with a parent attestation
//! minted from the member key for every connect (PROTOCOL.md §4, §5.1).
//!
//! What it must not do: read the clock (the caller passes `now`), touch the network, or
//! hand a secret key to anything but its own signature.

use claudemesh_crypto::SecretKey;
use claudemesh_proto::canonical;
use claudemesh_proto::frames::{Attestation, ClientFrame, Hello, PresenceInfo, SessionHello};
use claudemesh_proto::limits::MAX_ATTESTATION_TTL_MS;

use super::Identity;

/// Validity of each minted session attestation (the protocol allows at most 24 h).
pub(super) const ATTESTATION_TTL_MS: i64 = 12 * 60 * 60 * 1000;
const _: () = assert!(ATTESTATION_TTL_MS > 0 && ATTESTATION_TTL_MS <= MAX_ATTESTATION_TTL_MS);

/// The first frame of a connection for `identity` at `now_ms`: a `session_hello` when it
/// has a session key, else a member `hello`.
pub(super) fn hello_frame(
    identity: &Identity,
    presence: &PresenceInfo,
    now_ms: i64,
) -> ClientFrame {
    match &identity.session_key {
        None => ClientFrame::Hello(member_hello(identity, presence, now_ms)),
        Some(session) => {
            ClientFrame::SessionHello(session_hello(identity, session, presence, now_ms))
        }
    }
}

/// `hello`, signed by the member key over `{meshId}|{memberId}|{pubkey}|{timestamp}`.
fn member_hello(identity: &Identity, presence: &PresenceInfo, now_ms: i64) -> Hello {
    let member_pk = identity.member_key.public().to_hex();
    let signed = canonical::hello(&identity.mesh_id, &identity.member_id, &member_pk, now_ms);
    Hello {
        mesh_id: identity.mesh_id.clone(),
        member_id: identity.member_id.clone(),
        pubkey: member_pk,
        session_pubkey: None,
        presence: presence.clone(),
        timestamp: now_ms,
        signature: identity.member_key.sign_str(&signed).to_hex(),
        req_id: None,
    }
}

/// The member's statement that `session_pubkey` acts for it until `expires_at` (ms).
pub(super) fn attestation(
    member: &SecretKey,
    session_pubkey: &str,
    expires_at: i64,
) -> Attestation {
    let member_pk = member.public().to_hex();
    let signed = canonical::session_attestation(&member_pk, session_pubkey, expires_at);
    Attestation {
        session_pubkey: session_pubkey.to_owned(),
        parent_member_pubkey: member_pk,
        expires_at,
        signature: member.sign_str(&signed).to_hex(),
    }
}

/// `session_hello` with a fresh attestation, signed by the session key.
fn session_hello(
    identity: &Identity,
    session: &SecretKey,
    presence: &PresenceInfo,
    now_ms: i64,
) -> SessionHello {
    let member_pk = identity.member_key.public().to_hex();
    let session_pk = session.public().to_hex();
    let parent_attestation = attestation(
        &identity.member_key,
        &session_pk,
        now_ms + ATTESTATION_TTL_MS,
    );
    let signed = canonical::session_hello(&identity.mesh_id, &member_pk, &session_pk, now_ms);
    SessionHello {
        mesh_id: identity.mesh_id.clone(),
        parent_member_id: identity.member_id.clone(),
        parent_member_pubkey: member_pk,
        session_pubkey: session_pk,
        parent_attestation,
        presence: presence.clone(),
        timestamp: now_ms,
        signature: session.sign_str(&signed).to_hex(),
        req_id: None,
    }
}
