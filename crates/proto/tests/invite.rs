//! Invite links (WIRE-V1 §Enrollment) against the libsodium reference vectors in
//! `testdata/libsodium-v1.json`: the canonical string, the exact token bytes (field order
//! and compact JSON must match the TypeScript encoder), the three accepted link forms,
//! signature verification and tamper detection, expiry, hostile input, and a fresh
//! sign → link → parse → verify round trip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use claudemesh_crypto::SecretKey;
use claudemesh_proto::invite::{InviteError, InvitePayload, InviteRole};
use proptest::prelude::*;
use serde::Deserialize;

const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/libsodium-v1.json"
));

#[derive(Deserialize)]
struct Vectors {
    invite_v1: Vec<InviteVector>,
}

#[derive(Deserialize)]
struct InviteVector {
    payload: InvitePayload,
    canonical: String,
    token_b64url: String,
    url: String,
}

fn vectors() -> Vec<InviteVector> {
    let v: Vectors = serde_json::from_str(VECTORS).unwrap();
    assert!(!v.invite_v1.is_empty(), "no invite_v1 vectors");
    v.invite_v1
}

#[test]
fn canonical_token_and_link_match_reference() {
    for v in vectors() {
        assert_eq!(v.payload.canonical(), v.canonical);
        assert_eq!(
            v.payload.token(),
            v.token_b64url,
            "token bytes differ from the TS encoder"
        );
        assert_eq!(v.payload.link(), v.url);
        assert_eq!(v.url, format!("ic://join/{}", v.token_b64url));
    }
}

#[test]
fn every_link_form_decodes_to_the_payload() {
    for v in vectors() {
        let https = format!("https://example.com/join/{}", v.token_b64url);
        let forms = [
            v.url.clone(),
            v.token_b64url.clone(),
            https.clone(),
            format!("  {}\n", v.url),
            format!("{https}?ref=mail#top"),
            format!("{https}/"),
        ];
        for form in &forms {
            assert_eq!(
                InvitePayload::from_link(form).as_ref(),
                Ok(&v.payload),
                "{form}"
            );
        }
        assert_eq!(
            InvitePayload::from_token(&v.token_b64url),
            Ok(v.payload.clone())
        );
    }
}

#[test]
fn reference_invite_verifies() {
    for v in vectors() {
        assert_eq!(v.payload.verify(), Ok(()));
        assert_eq!(v.payload.role, InviteRole::Member);
        assert_eq!(v.payload.v, 1);
    }
}

#[test]
fn altering_any_signed_field_breaks_the_signature() {
    type Alter = fn(&mut InvitePayload);
    let alterations: [(&str, Alter); 8] = [
        ("mesh_id", |p| p.mesh_id.push('x')),
        ("mesh_slug", |p| p.mesh_slug = "acme-payment".into()),
        ("broker_url", |p| {
            p.broker_url = "ws://evil.example:7900/ws".into();
        }),
        ("expires_at", |p| p.expires_at += 1),
        ("role", |p| p.role = InviteRole::Admin),
        ("owner_pubkey", |p| {
            p.owner_pubkey = SecretKey::generate().public().to_hex();
        }),
        ("mesh_root_key", |p| p.mesh_root_key = "A".repeat(43)),
        ("signature", |p| {
            let flipped = if p.signature.starts_with('0') {
                "1"
            } else {
                "0"
            };
            p.signature.replace_range(0..1, flipped);
        }),
    ];
    for v in vectors() {
        for (field, alter) in alterations {
            let mut p = v.payload.clone();
            alter(&mut p);
            assert_ne!(p, v.payload);
            assert_eq!(
                p.verify(),
                Err(InviteError::BadSignature),
                "altered {field}"
            );
            // The altered payload still travels through a link intact; only verify catches it.
            assert_eq!(InvitePayload::from_link(&p.link()), Ok(p.clone()));
        }
    }
}

#[test]
fn malformed_key_or_signature_is_bad_signature_and_wrong_version_is_reported() {
    let p = vectors().remove(0).payload;
    for (owner, sig) in [
        ("", p.signature.as_str()),
        ("zz", p.signature.as_str()),
        (&*p.owner_pubkey.to_uppercase(), p.signature.as_str()),
        (p.owner_pubkey.as_str(), ""),
        (p.owner_pubkey.as_str(), &p.signature[..126]),
    ] {
        let q = InvitePayload {
            owner_pubkey: owner.into(),
            signature: sig.into(),
            ..p.clone()
        };
        assert_eq!(q.verify(), Err(InviteError::BadSignature));
    }
    let q = InvitePayload { v: 2, ..p };
    assert_eq!(q.verify(), Err(InviteError::Version(2)));
}

#[test]
fn expiry_is_checked_in_seconds() {
    let p = vectors().remove(0).payload;
    let at = p.expires_at;
    assert_eq!(p.check_expiry(at - 1), Ok(()));
    assert_eq!(p.check_expiry(0), Ok(()));
    assert_eq!(p.check_expiry(at), Err(InviteError::Expired));
    assert_eq!(p.check_expiry(at + 1), Err(InviteError::Expired));
    // A millisecond clock would be far past a seconds expiry.
    assert_eq!(p.check_expiry(at * 1000), Err(InviteError::Expired));
}

#[test]
fn garbage_is_rejected() {
    let not_json = base64_url("not json");
    let wrong_json = base64_url(r#"{"v":1,"mesh_id":"m"}"#);
    let cases: [(&str, InviteError); 9] = [
        ("", InviteError::NotALink),
        ("   ", InviteError::NotALink),
        ("ic://join/", InviteError::NotALink),
        ("ic://join/!!!", InviteError::Malformed),
        ("ftp://x/join/abc", InviteError::NotALink),
        ("https://example.com/invite/abc", InviteError::NotALink),
        ("https://example.com/join/", InviteError::NotALink),
        (&not_json, InviteError::Malformed),
        (&wrong_json, InviteError::Malformed),
    ];
    for (text, err) in cases {
        assert_eq!(InvitePayload::from_link(text), Err(err), "{text:?}");
    }
}

fn base64_url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[test]
fn freshly_signed_invite_verifies_and_round_trips() {
    let owner = SecretKey::generate();
    for role in [InviteRole::Member, InviteRole::Admin] {
        let p = InvitePayload::sign(
            "mesh-ünïcødé-1",
            "team|slug",
            "wss://broker.example/ws",
            1_900_000_000,
            role,
            &owner,
        );
        assert_eq!(p.v, 1);
        assert_eq!(p.role, role);
        assert_eq!(p.owner_pubkey, owner.public().to_hex());
        assert_eq!(
            p.mesh_root_key.len(),
            43,
            "32 bytes as base64url without padding"
        );
        assert_eq!(p.signature.len(), 128);
        assert_eq!(p.verify(), Ok(()));
        assert_eq!(p.check_expiry(1_899_999_999), Ok(()));
        let link = p.link();
        assert!(link.starts_with("ic://join/"));
        assert!(!link.contains('='), "token has no padding");
        let back = InvitePayload::from_link(&link).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.verify(), Ok(()));
        assert_eq!(back.invite_id().len(), 32);
    }
    // Two invites for the same mesh differ (fresh root key), so their ids differ.
    let a = InvitePayload::sign("m", "s", "ws://b/ws", 1, InviteRole::Member, &owner);
    let b = InvitePayload::sign("m", "s", "ws://b/ws", 1, InviteRole::Member, &owner);
    assert_ne!(a.invite_id(), b.invite_id());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn from_link_never_panics_on_text(s in any::<String>()) {
        let _ = InvitePayload::from_link(&s);
        let _ = InvitePayload::from_token(&s);
        let _ = InvitePayload::from_link(&format!("ic://join/{s}"));
        let _ = InvitePayload::from_link(&format!("https://h/join/{s}"));
    }

    #[test]
    fn from_link_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let lossy = String::from_utf8_lossy(&bytes);
        let _ = InvitePayload::from_link(&lossy);
        // Random bytes as a well-formed token: decodes, but is not an invite.
        let token = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes)
        };
        if let Ok(p) = InvitePayload::from_link(&token) {
            let _ = p.verify();
        }
    }
}
