//! What the fuzz targets and the seed generator (`examples/seeds.rs`) share: the fixed
//! identities of the reference vectors, one fixed broker clock, builders that sign what a
//! well-behaved peer would send (so a target can get past signature checks), and the
//! oracles the targets assert on every accepted input.
//!
//! The oracles restate the security rules from PROTOCOL.md independently of the code
//! under test (they verify signatures with `claudemesh_crypto` directly), so a fuzzer
//! finds not only panics but also an input the broker or client accepts that it must
//! refuse. Nothing here may be used by the product crates.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: a failure is a finding

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use claudemesh_broker::fuzzing::{AdminRoute, VerifiedHello};
use claudemesh_client::envelope::Envelope;
use claudemesh_crypto::{PublicKey, SecretKey, SharedBox, Signature, secretbox_seal};
use claudemesh_proto::canonical::{self, AdminAction};
use claudemesh_proto::frames::{Attestation, ClientFrame, Hello, PresenceInfo, SessionHello};
use claudemesh_proto::http::{
    CreateMeshRequest, RegisterInviteRequest, RemoveMemberRequest, Signed,
};
use claudemesh_proto::invite::{InvitePayload, InviteRole};
use claudemesh_proto::limits;

/// The broker's clock in every target: the reference vectors' hello timestamp
/// (2025-11-29), at which the reference invite is still valid.
pub const NOW_MS: i64 = 1_764_374_400_123;
/// [`NOW_MS`] in seconds, the unit of invite expiry.
pub const NOW_S: i64 = NOW_MS / 1000;
/// The reference vectors' mesh and member ids.
pub const MESH: &str = "mK3x9Qm2Lr8TzV4nHs7YcB1dPfW6aJ0e";
pub const MEMBER_ID: &str = "Zr4tY8uI2oP6aS1dF5gH9jK3lQ7wE0xC";

fn identity(seed_hex: &str) -> SecretKey {
    let seed: [u8; 32] = hex::decode(seed_hex).unwrap().try_into().unwrap();
    SecretKey::from_seed(&seed)
}

/// `alice` of testdata/libsodium-v1.json: a member.
pub static ALICE: LazyLock<SecretKey> =
    LazyLock::new(|| identity("9875d998a121744cd9a4db5d625c340733b5ed28918c31eee632c9441be0a976"));
/// `bob`: the recipient whose secret key the envelope targets open with.
pub static BOB: LazyLock<SecretKey> =
    LazyLock::new(|| identity("785f587954776437b5879c2d8f7f69c993059058a8d968f6dc5b7793c5d6bcb6"));
/// `carol-session`: a session key attested by alice.
pub static CAROL_SESSION: LazyLock<SecretKey> =
    LazyLock::new(|| identity("5bc43aaa1c675e12e7de1a7741ef593d6039419ee1c7c8e9bf10bef9f201de29"));
/// `mesh-owner`: the signer of the reference invite.
pub static OWNER: LazyLock<SecretKey> =
    LazyLock::new(|| identity("c0470684e578635ae17b780d7d833ba77709e7b5b98be75d2a89251216c1b118"));

/// The identity a fuzzer byte picks (its low two bits).
pub fn pick(byte: u8) -> &'static SecretKey {
    match byte % 4 {
        0 => &ALICE,
        1 => &BOB,
        2 => &CAROL_SESSION,
        _ => &OWNER,
    }
}

/// The first input byte picks how a target reads the rest (a mode), so one corpus holds
/// both the peer's raw bytes and structured inputs the target signs itself.
pub fn split_mode(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(mode, rest)| (*mode, rest))
}

/// A WebSocket text frame, as a client writes it.
pub fn frame_text(frame: &ClientFrame) -> String {
    serde_json::to_string(frame).unwrap()
}

/// A `hello` signed by `member` over the WIRE-V1 canonical string.
pub fn hello(
    member: &SecretKey,
    mesh_id: &str,
    member_id: &str,
    timestamp: i64,
    session_pubkey: Option<String>,
    presence: PresenceInfo,
) -> Hello {
    let pubkey = member.public().to_hex();
    let signature = member
        .sign_str(&canonical::hello(mesh_id, member_id, &pubkey, timestamp))
        .to_hex();
    Hello {
        mesh_id: mesh_id.to_owned(),
        member_id: member_id.to_owned(),
        pubkey,
        session_pubkey,
        presence,
        timestamp,
        signature,
        req_id: None,
    }
}

/// `parent`'s attestation that `session_pubkey` acts for it until `expires_at` (ms).
pub fn attestation(parent: &SecretKey, session_pubkey: &str, expires_at: i64) -> Attestation {
    let parent_member_pubkey = parent.public().to_hex();
    let signature = parent
        .sign_str(&canonical::session_attestation(
            &parent_member_pubkey,
            session_pubkey,
            expires_at,
        ))
        .to_hex();
    Attestation {
        session_pubkey: session_pubkey.to_owned(),
        parent_member_pubkey,
        expires_at,
        signature,
    }
}

/// A `session_hello` of `session`, attested by `parent` until `expires_at`.
pub fn session_hello(
    parent: &SecretKey,
    session: &SecretKey,
    mesh_id: &str,
    parent_member_id: &str,
    timestamp: i64,
    expires_at: i64,
    presence: PresenceInfo,
) -> SessionHello {
    let parent_member_pubkey = parent.public().to_hex();
    let session_pubkey = session.public().to_hex();
    let signature = session
        .sign_str(&canonical::session_hello(
            mesh_id,
            &parent_member_pubkey,
            &session_pubkey,
            timestamp,
        ))
        .to_hex();
    SessionHello {
        mesh_id: mesh_id.to_owned(),
        parent_member_id: parent_member_id.to_owned(),
        parent_attestation: attestation(parent, &session_pubkey, expires_at),
        parent_member_pubkey,
        session_pubkey,
        presence,
        timestamp,
        signature,
        req_id: None,
    }
}

/// Whether `signature_hex` is `pubkey_hex`'s signature over `text` (the oracle's own
/// check, straight from `claudemesh_crypto`).
fn signed_by(pubkey_hex: &str, text: &str, signature_hex: &str) -> bool {
    match (
        PublicKey::from_hex(pubkey_hex),
        Signature::from_hex(signature_hex),
    ) {
        (Ok(key), Ok(sig)) => key.verify_str(text, &sig).is_ok(),
        _ => false,
    }
}

fn within_skew(timestamp: i64, now: i64) -> bool {
    now.abs_diff(timestamp) <= limits::MAX_CLOCK_SKEW_MS.unsigned_abs()
}

/// PROTOCOL §5: an accepted `hello` was signed by its `pubkey` within the skew, and the
/// connection is addressed by that key or by a well-formed session key.
pub fn assert_hello_sound(h: &Hello, v: &VerifiedHello, now: i64) {
    let text = canonical::hello(&h.mesh_id, &h.member_id, &h.pubkey, h.timestamp);
    assert!(
        signed_by(&h.pubkey, &text, &h.signature),
        "accepted a hello with a bad signature"
    );
    assert!(
        within_skew(h.timestamp, now),
        "accepted a hello outside the clock skew"
    );
    assert_eq!(v.member_pubkey, h.pubkey);
    assert_eq!(v.mesh_id, h.mesh_id);
    match &h.session_pubkey {
        None => assert_eq!(v.key, h.pubkey),
        Some(s) => assert!(
            PublicKey::from_hex(s).is_ok() && v.key == PublicKey::from_hex(s).unwrap().to_hex()
        ),
    }
}

/// PROTOCOL §5: an accepted `session_hello` carries an attestation by its parent for the
/// same keys, not expired and at most 24 h long, and the session key's own signature.
pub fn assert_session_hello_sound(h: &SessionHello, v: &VerifiedHello, now: i64) {
    let att = &h.parent_attestation;
    assert_eq!(
        att.session_pubkey, h.session_pubkey,
        "attestation for another session key"
    );
    assert_eq!(
        att.parent_member_pubkey, h.parent_member_pubkey,
        "attestation by another member"
    );
    let att_text = canonical::session_attestation(
        &att.parent_member_pubkey,
        &att.session_pubkey,
        att.expires_at,
    );
    assert!(
        signed_by(&h.parent_member_pubkey, &att_text, &att.signature),
        "accepted an attestation with a bad signature"
    );
    assert!(att.expires_at > now, "accepted an expired attestation");
    assert!(
        att.expires_at - now <= limits::MAX_ATTESTATION_TTL_MS,
        "accepted an attestation longer than 24 h"
    );
    let text = canonical::session_hello(
        &h.mesh_id,
        &h.parent_member_pubkey,
        &h.session_pubkey,
        h.timestamp,
    );
    assert!(
        signed_by(&h.session_pubkey, &text, &h.signature),
        "accepted a session_hello with a bad signature"
    );
    assert!(
        within_skew(h.timestamp, now),
        "accepted a session_hello outside the clock skew"
    );
    assert_eq!(v.key, h.session_pubkey);
    assert_eq!(v.member_pubkey, h.parent_member_pubkey);
}

/// The signature envelope of an admin request: `signer` over the admin canonical string.
pub fn admin_signed(
    signer: &SecretKey,
    action: AdminAction,
    mesh_id: &str,
    timestamp: i64,
    args: &[&str],
) -> Signed {
    let signer_pubkey = signer.public().to_hex();
    let signature = signer
        .sign_str(&canonical::admin(
            action,
            mesh_id,
            &signer_pubkey,
            timestamp,
            args,
        ))
        .to_hex();
    Signed {
        signer_pubkey,
        timestamp,
        signature,
    }
}

/// The canonical action of an admin route (PROTOCOL §10).
pub fn action(route: AdminRoute) -> AdminAction {
    match route {
        AdminRoute::CreateMesh => AdminAction::CreateMesh,
        AdminRoute::RegisterInvite => AdminAction::RegisterInvite,
        AdminRoute::ListInvites => AdminAction::ListInvites,
        AdminRoute::RevokeInvite => AdminAction::RevokeInvite,
        AdminRoute::ListMembers => AdminAction::ListMembers,
        AdminRoute::RemoveMember => AdminAction::RemoveMember,
        AdminRoute::DashboardLogin => AdminAction::DashboardLogin,
    }
}

/// The signature envelope and canonical arguments of an admin body, as PROTOCOL §10
/// defines them (read independently of the broker's `SignedBody` impls). `None` when
/// the body is not that route's JSON.
pub fn admin_args(
    route: AdminRoute,
    path: &std::collections::HashMap<String, String>,
    body: &[u8],
) -> Option<(Signed, Vec<String>)> {
    let get = |k: &str| path.get(k).cloned().unwrap_or_default();
    Some(match route {
        AdminRoute::CreateMesh => {
            let b: CreateMeshRequest = serde_json::from_slice(body).ok()?;
            (b.signed, vec![b.slug, b.name])
        }
        AdminRoute::RegisterInvite => {
            let b: RegisterInviteRequest = serde_json::from_slice(body).ok()?;
            (b.signed, vec![b.invite.invite_id(), b.max_uses.to_string()])
        }
        AdminRoute::ListInvites | AdminRoute::ListMembers | AdminRoute::DashboardLogin => {
            (serde_json::from_slice(body).ok()?, vec![])
        }
        AdminRoute::RevokeInvite => (serde_json::from_slice(body).ok()?, vec![get("invite_id")]),
        AdminRoute::RemoveMember => {
            let b: RemoveMemberRequest = serde_json::from_slice(body).ok()?;
            (b.signed, vec![get("member_id"), b.mode.as_str().to_owned()])
        }
    })
}

/// PROTOCOL §10: an accepted admin request was signed, within the skew, by its
/// `signerPubkey` over the admin string of its route's action, mesh and arguments.
pub fn assert_admin_sound(
    route: AdminRoute,
    path: &std::collections::HashMap<String, String>,
    body: &[u8],
    now: i64,
) {
    let (signed, args) =
        admin_args(route, path, body).expect("accepted an admin body that does not parse");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mesh_id = path.get("mesh_id").map(String::as_str).unwrap_or_default();
    let text = canonical::admin(
        action(route),
        mesh_id,
        &signed.signer_pubkey,
        signed.timestamp,
        &args,
    );
    assert!(
        signed_by(&signed.signer_pubkey, &text, &signed.signature),
        "accepted an admin request with a bad signature"
    );
    assert!(
        within_skew(signed.timestamp, now),
        "accepted an admin request outside the skew"
    );
}

/// A v1 invite signed by `signer`, with a root key from `root` (deterministic, unlike
/// `InvitePayload::sign`).
pub fn invite(
    signer: &SecretKey,
    mesh_id: &str,
    mesh_slug: &str,
    broker_url: &str,
    expires_at: i64,
    root: &[u8],
    role: InviteRole,
) -> InvitePayload {
    let mut payload = InvitePayload {
        v: 1,
        mesh_id: mesh_id.to_owned(),
        mesh_slug: mesh_slug.to_owned(),
        broker_url: broker_url.to_owned(),
        expires_at,
        mesh_root_key: URL_SAFE_NO_PAD.encode(root),
        role,
        owner_pubkey: signer.public().to_hex(),
        signature: String::new(),
    };
    payload.signature = signer.sign_str(&payload.canonical()).to_hex();
    payload
}

/// An accepted invite verifies under its `owner_pubkey` (the oracle's own check).
pub fn assert_invite_sound(p: &InvitePayload) {
    assert_eq!(p.v, 1, "accepted an invite of another version");
    assert!(
        signed_by(&p.owner_pubkey, &p.canonical(), &p.signature),
        "accepted an invite with a bad signature"
    );
}

/// The envelope JSON a claudemesh client seals (PROTOCOL §8.3).
pub fn envelope_json(env: &Envelope) -> Vec<u8> {
    serde_json::to_vec(env).unwrap()
}

/// A direct `crypto_box` from `from` to `to`: (nonce, ciphertext), standard base64.
pub fn seal_direct(
    from: &SecretKey,
    to: &PublicKey,
    nonce: &[u8; 24],
    plaintext: &[u8],
) -> (String, String) {
    let ct = SharedBox::new(from, to).seal(nonce, plaintext);
    (STANDARD.encode(nonce), STANDARD.encode(ct))
}

/// A multicast body under `key` plus its sealed key for `to` (PROTOCOL §8.2): (nonce,
/// ciphertext, sealedKey), standard base64. `key_bytes` is what is boxed as the key; a
/// well-behaved sender boxes `key` itself, the fuzzer may box anything.
pub fn seal_multicast(
    from: &SecretKey,
    to: &PublicKey,
    key: &[u8; 32],
    key_bytes: &[u8],
    body_nonce: &[u8; 24],
    key_nonce: &[u8; 24],
    plaintext: &[u8],
) -> (String, String, String) {
    let ct = secretbox_seal(key, body_nonce, plaintext);
    let mut sealed = key_nonce.to_vec();
    sealed.extend_from_slice(&SharedBox::new(from, to).seal(key_nonce, key_bytes));
    (
        STANDARD.encode(body_nonce),
        STANDARD.encode(ct),
        STANDARD.encode(sealed),
    )
}
