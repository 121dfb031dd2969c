//! The frames that open a connection, built from an [`Identity`] with no I/O: `hello`
//! for a member connection, `session_hello` for a session one, with a parent attestation
//! minted from the member key for every connect (PROTOCOL.md §4, §5.1).
//!
//! What it must not do: read the clock (the caller passes `now`), touch the network, or
//! hand a secret key to anything but its own signature.

use claudemesh_crypto::SecretKey;
use claudemesh_proto::canonical;
use claudemesh_proto::codes::cap;
use claudemesh_proto::frames::{Attestation, ClientFrame, Hello, PresenceInfo, SessionHello};
use claudemesh_proto::limits::MAX_ATTESTATION_TTL_MS;

use super::Identity;

/// Validity of each minted session attestation (the protocol allows at most 24 h).
pub(super) const ATTESTATION_TTL_MS: i64 = 12 * 60 * 60 * 1000;
const _: () = assert!(ATTESTATION_TTL_MS > 0 && ATTESTATION_TTL_MS <= MAX_ATTESTATION_TTL_MS);

/// The first frame of a connection for `identity` at `now_ms`: a `session_hello` when it
/// has a session key, else a member `hello`. It announces `presence-batch` whatever the
/// caller's capabilities say: the connection itself turns those frames back into the
/// system pushes a v1 broker would have sent, so callers see one kind of event.
pub(super) fn hello_frame(
    identity: &Identity,
    presence: &PresenceInfo,
    now_ms: i64,
) -> ClientFrame {
    let mut presence = presence.clone();
    let caps = presence.capabilities.get_or_insert_with(Vec::new);
    if !caps.iter().any(|c| c == cap::PRESENCE_BATCH) {
        caps.push(cap::PRESENCE_BATCH.to_owned());
    }
    let presence = &presence;
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

#[cfg(test)]
mod tests {
    use claudemesh_crypto::{PublicKey, Signature};
    use claudemesh_proto::limits::MAX_ATTESTATION_TTL_MS;

    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn identity(session: Option<SecretKey>) -> Identity {
        Identity {
            mesh_id: "mesh-1".into(),
            member_id: "member-1".into(),
            member_key: SecretKey::generate(),
            session_key: session,
        }
    }

    fn presence() -> PresenceInfo {
        PresenceInfo {
            display_name: Some("alice".into()),
            session_id: "s1".into(),
            ..PresenceInfo::default()
        }
    }

    fn verifies(key_hex: &str, signed: &str, sig_hex: &str) -> bool {
        let key = PublicKey::from_hex(key_hex).unwrap();
        key.verify_str(signed, &Signature::from_hex(sig_hex).unwrap())
            .is_ok()
    }

    /// `sig` over `signed` is by `signer`'s key, and does not verify for `other`.
    fn signed_only_by(signer: &str, other: &str, signed: &str, sig: &str) -> bool {
        verifies(signer, signed, sig) && !verifies(other, signed, sig)
    }

    fn session_hello_at(id: &Identity, now_ms: i64) -> SessionHello {
        let ClientFrame::SessionHello(h) = hello_frame(id, &presence(), now_ms) else {
            panic!("a session identity says session_hello");
        };
        h
    }

    #[test]
    fn a_member_hello_verifies_over_its_canonical_string() {
        let id = identity(None);
        let ClientFrame::Hello(h) = hello_frame(&id, &presence(), NOW) else {
            panic!("a member identity says hello");
        };
        assert_eq!(h.pubkey, id.member_key.public().to_hex());
        assert_eq!(
            (h.mesh_id.as_str(), h.member_id.as_str()),
            ("mesh-1", "member-1")
        );
        assert_eq!((h.timestamp, h.session_pubkey), (NOW, None));
        // The caller's presence, plus the capability the connection handles itself.
        let mut expected = presence();
        expected.capabilities = Some(vec![cap::PRESENCE_BATCH.to_owned()]);
        assert_eq!(h.presence, expected);
        let signed = canonical::hello("mesh-1", "member-1", &h.pubkey, NOW);
        assert!(verifies(&h.pubkey, &signed, &h.signature));
        // Bound to its timestamp: the same signature says nothing about another time.
        let later = canonical::hello("mesh-1", "member-1", &h.pubkey, NOW + 1);
        assert!(!verifies(&h.pubkey, &later, &h.signature));
    }

    #[test]
    fn a_session_hello_carries_an_attestation_by_the_parent_key() {
        let session = SecretKey::generate();
        let id = identity(Some(session.clone()));
        let h = session_hello_at(&id, NOW);
        let member_pk = id.member_key.public().to_hex();
        let session_pk = session.public().to_hex();
        assert_eq!(h.parent_member_pubkey, member_pk);
        assert_eq!(h.session_pubkey, session_pk);
        assert_eq!(h.parent_member_id, "member-1");
        assert_eq!(h.timestamp, NOW);

        let a = &h.parent_attestation;
        assert_eq!(
            (&a.parent_member_pubkey, &a.session_pubkey),
            (&member_pk, &session_pk)
        );
        let attested = canonical::session_attestation(&member_pk, &session_pk, a.expires_at);
        assert!(
            signed_only_by(&member_pk, &session_pk, &attested, &a.signature),
            "the attestation is signed by the parent"
        );

        let signed = canonical::session_hello("mesh-1", &member_pk, &session_pk, NOW);
        assert!(
            signed_only_by(&session_pk, &member_pk, &signed, &h.signature),
            "the hello is signed by the session"
        );
    }

    #[test]
    fn the_attestation_expires_within_the_protocol_window() {
        let id = identity(Some(SecretKey::generate()));
        let h = session_hello_at(&id, NOW);
        let expires_at = h.parent_attestation.expires_at;
        assert_eq!(expires_at, NOW + ATTESTATION_TTL_MS);
        // The broker accepts `now < expiresAt <= now + 24 h` (PROTOCOL.md §4).
        assert!(expires_at > NOW && expires_at <= NOW + MAX_ATTESTATION_TTL_MS);
        // Minted afresh for every connect: a later hello carries a later expiry.
        let later = session_hello_at(&id, NOW + 5_000);
        assert_eq!(later.parent_attestation.expires_at, expires_at + 5_000);
    }

    #[test]
    fn attestation_signs_exactly_what_it_states() {
        let member = SecretKey::generate();
        let session_pk = SecretKey::generate().public().to_hex();
        let a = attestation(&member, &session_pk, NOW);
        let other_expiry =
            canonical::session_attestation(&a.parent_member_pubkey, &session_pk, NOW + 1);
        assert!(!verifies(
            &a.parent_member_pubkey,
            &other_expiry,
            &a.signature
        ));
        let stated = canonical::session_attestation(&a.parent_member_pubkey, &session_pk, NOW);
        assert!(verifies(&a.parent_member_pubkey, &stated, &a.signature));
    }
}
