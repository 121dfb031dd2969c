//! Byte-compatibility with libsodium, checked against `testdata/libsodium-v1.json`
//! (generated with libsodium via PyNaCl).
//!
//! Every value in the `identities`, `signatures`, `box` and `secretbox` sections
//! is checked, plus the signature of `invite_v1` over its canonical string. These
//! tests must only read the vector file; they must not regenerate or edit it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use claudemesh_crypto::{
    CryptoError, MAC_LEN, NONCE_LEN, PublicKey, SecretKey, SharedBox, Signature, box_open,
    box_seal, secretbox_open, secretbox_seal,
};
use serde::Deserialize;

const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/libsodium-v1.json"
));

#[derive(Deserialize)]
struct Vectors {
    identities: Vec<Identity>,
    signatures: Vec<SigVector>,
    #[serde(rename = "box")]
    boxes: Vec<BoxVector>,
    secretbox: Vec<SecretboxVector>,
    invite_v1: Vec<InviteVector>,
}

#[derive(Deserialize)]
struct Identity {
    label: String,
    seed_hex: String,
    ed25519_pk_hex: String,
    ed25519_sk64_hex: String,
    x25519_pk_hex: String,
    x25519_sk_hex: String,
}

#[derive(Deserialize)]
struct SigVector {
    kind: String,
    signer: String,
    canonical: String,
    signature_hex: String,
}

#[derive(Deserialize)]
struct BoxVector {
    from: String,
    to: String,
    plaintext_utf8: String,
    nonce_b64: String,
    ciphertext_b64: String,
}

#[derive(Deserialize)]
struct SecretboxVector {
    key_hex: String,
    nonce_b64: String,
    plaintext_utf8: String,
    ciphertext_b64: String,
}

#[derive(Deserialize)]
struct InviteVector {
    payload: InvitePayload,
    canonical: String,
}

#[derive(Deserialize)]
struct InvitePayload {
    owner_pubkey: String,
    signature: String,
}

fn vectors() -> Vectors {
    serde_json::from_str(VECTORS).expect("vector file parses")
}

fn keys_by_label(v: &Vectors) -> HashMap<String, SecretKey> {
    v.identities
        .iter()
        .map(|id| {
            let sk = SecretKey::from_sk64_hex(&id.ed25519_sk64_hex).unwrap();
            (id.label.clone(), sk)
        })
        .collect()
}

fn b64(s: &str) -> Vec<u8> {
    STANDARD.decode(s).unwrap()
}

fn nonce(s: &str) -> [u8; NONCE_LEN] {
    b64(s).try_into().expect("24-byte nonce")
}

fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn vector_file_has_every_section() {
    let v = vectors();
    assert_eq!(v.identities.len(), 4);
    assert_eq!(v.signatures.len(), 3);
    assert_eq!(v.boxes.len(), 4);
    assert_eq!(v.secretbox.len(), 2);
    assert_eq!(v.invite_v1.len(), 1);
}

#[test]
fn identities_match_libsodium() {
    for id in &vectors().identities {
        let label = &id.label;
        let seed = hex32(&id.seed_hex);
        let from_seed = SecretKey::from_seed(&seed);
        let from_sk64 = SecretKey::from_sk64_hex(&id.ed25519_sk64_hex).unwrap();

        for sk in [&from_seed, &from_sk64] {
            assert_eq!(sk.public().to_hex(), id.ed25519_pk_hex, "{label} pk");
            assert_eq!(hex::encode(*sk.seed()), id.seed_hex, "{label} seed");
            assert_eq!(*sk.to_sk64_hex(), id.ed25519_sk64_hex, "{label} sk64");
            assert_eq!(
                hex::encode(*sk.x25519_secret()),
                id.x25519_sk_hex,
                "{label} x25519 sk"
            );
            assert_eq!(
                hex::encode(sk.public().to_x25519()),
                id.x25519_pk_hex,
                "{label} x25519 pk"
            );
        }

        let pk = PublicKey::from_hex(&id.ed25519_pk_hex).unwrap();
        assert_eq!(pk, from_seed.public());
        assert_eq!(pk.to_string(), id.ed25519_pk_hex);
        assert_eq!(id.ed25519_pk_hex.parse::<PublicKey>().unwrap(), pk);
        assert_eq!(hex::encode(pk.to_x25519()), id.x25519_pk_hex, "{label}");

        // The converted secret really is the scalar for the converted public key.
        let x_sk = crypto_box::SecretKey::from_bytes(hex32(&id.x25519_sk_hex));
        assert_eq!(hex::encode(x_sk.public_key().as_bytes()), id.x25519_pk_hex);

        // The converted values and the seed never show up in Debug output.
        let dbg = format!("{from_sk64:?} {from_sk64:#?}");
        assert!(!dbg.contains(&id.seed_hex), "{label}");
        assert!(!dbg.contains(&id.ed25519_sk64_hex), "{label}");
        assert!(!dbg.contains(&id.x25519_sk_hex), "{label}");

        // Uppercase hex of a valid key is rejected.
        assert_eq!(
            PublicKey::from_hex(&id.ed25519_pk_hex.to_uppercase()),
            Err(CryptoError::BadHex)
        );
        assert_eq!(
            SecretKey::from_sk64_hex(&id.ed25519_sk64_hex.to_uppercase()).unwrap_err(),
            CryptoError::BadHex
        );
    }
}

#[test]
fn sk64_with_another_identitys_public_key_is_rejected() {
    let v = vectors();
    let ids = &v.identities;
    for (i, a) in ids.iter().enumerate() {
        let b = &ids[(i + 1) % ids.len()];
        let mixed = format!("{}{}", a.seed_hex, b.ed25519_pk_hex);
        assert_eq!(
            SecretKey::from_sk64_hex(&mixed).unwrap_err(),
            CryptoError::KeyMismatch
        );
    }
}

#[test]
fn signatures_match_libsodium() {
    let v = vectors();
    let keys = keys_by_label(&v);
    for s in &v.signatures {
        let ctx = format!("{} by {}", s.kind, s.signer);
        let sk = &keys[&s.signer];
        let pk = sk.public();
        let expected = Signature::from_hex(&s.signature_hex).unwrap();
        assert_eq!(expected.to_hex(), s.signature_hex);
        assert_eq!(s.signature_hex.parse::<Signature>().unwrap(), expected);

        // ed25519 is deterministic: we must reproduce libsodium's signature.
        assert_eq!(sk.sign_str(&s.canonical), expected, "{ctx}");
        assert_eq!(sk.sign(s.canonical.as_bytes()), expected, "{ctx}");
        assert_eq!(pk.verify_str(&s.canonical, &expected), Ok(()), "{ctx}");
        assert_eq!(
            pk.verify(s.canonical.as_bytes(), &expected),
            Ok(()),
            "{ctx}"
        );

        // Tampered message, signature, or the wrong signer all fail.
        let tampered_msg = format!("{}x", s.canonical);
        assert_eq!(
            pk.verify_str(&tampered_msg, &expected),
            Err(CryptoError::BadSignature),
            "{ctx}"
        );
        for i in [0, 31, 32, 63] {
            let mut bytes = expected.to_bytes();
            bytes[i] ^= 0x01;
            assert_eq!(
                pk.verify_str(&s.canonical, &Signature::from_bytes(bytes)),
                Err(CryptoError::BadSignature),
                "{ctx} byte {i}"
            );
        }
        for (label, other) in &keys {
            if *label != s.signer {
                assert_eq!(
                    other.public().verify_str(&s.canonical, &expected),
                    Err(CryptoError::BadSignature),
                    "{ctx} verified under {label}"
                );
            }
        }
    }
}

#[test]
fn box_matches_libsodium() {
    let v = vectors();
    let keys = keys_by_label(&v);
    for (n, bx) in v.boxes.iter().enumerate() {
        let ctx = format!("box #{n} {}→{}", bx.from, bx.to);
        let from = &keys[&bx.from];
        let to = &keys[&bx.to];
        let nonce = nonce(&bx.nonce_b64);
        let ct = b64(&bx.ciphertext_b64);
        let pt = bx.plaintext_utf8.as_bytes();
        assert_eq!(ct.len(), pt.len() + MAC_LEN, "{ctx}");

        assert_eq!(box_seal(pt, &nonce, &to.public(), from), ct, "{ctx} seal");
        assert_eq!(
            box_open(&ct, &nonce, &from.public(), to).unwrap(),
            pt,
            "{ctx} open"
        );

        // Precomputed shared key gives identical results from both sides.
        let sender_side = SharedBox::new(from, &to.public());
        let recipient_side = SharedBox::new(to, &from.public());
        assert_eq!(sender_side.seal(&nonce, pt), ct, "{ctx} shared seal");
        assert_eq!(recipient_side.seal(&nonce, pt), ct, "{ctx} shared seal rev");
        assert_eq!(recipient_side.open(&nonce, &ct).unwrap(), pt, "{ctx}");
        assert_eq!(sender_side.open(&nonce, &ct).unwrap(), pt, "{ctx}");

        // Any single-bit flip anywhere (MAC or body) fails.
        for i in 0..ct.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = ct.clone();
                bad[i] ^= bit;
                assert_eq!(
                    box_open(&bad, &nonce, &from.public(), to),
                    Err(CryptoError::Decrypt),
                    "{ctx} flip byte {i}"
                );
            }
        }
        // Truncation, extension, and too-short inputs fail.
        assert_eq!(
            box_open(&ct[..ct.len() - 1], &nonce, &from.public(), to),
            Err(CryptoError::Decrypt)
        );
        let mut longer = ct.clone();
        longer.push(0);
        assert_eq!(
            box_open(&longer, &nonce, &from.public(), to),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            box_open(&ct[..MAC_LEN - 1], &nonce, &from.public(), to),
            Err(CryptoError::Decrypt)
        );
        // Wrong nonce fails.
        let mut other_nonce = nonce;
        other_nonce[NONCE_LEN - 1] ^= 1;
        assert_eq!(
            box_open(&ct, &other_nonce, &from.public(), to),
            Err(CryptoError::Decrypt)
        );
        // Wrong keys: every third party, as recipient or as claimed sender.
        for (label, other) in &keys {
            if *label == bx.from || *label == bx.to {
                continue;
            }
            assert_eq!(
                box_open(&ct, &nonce, &from.public(), other),
                Err(CryptoError::Decrypt),
                "{ctx} opened by {label}"
            );
            assert_eq!(
                box_open(&ct, &nonce, &other.public(), to),
                Err(CryptoError::Decrypt),
                "{ctx} claimed sender {label}"
            );
        }
    }
}

#[test]
fn secretbox_matches_libsodium() {
    let v = vectors();
    for (n, sb) in v.secretbox.iter().enumerate() {
        let key = hex32(&sb.key_hex);
        let nonce = nonce(&sb.nonce_b64);
        let ct = b64(&sb.ciphertext_b64);
        let pt = sb.plaintext_utf8.as_bytes();
        assert_eq!(ct.len(), pt.len() + MAC_LEN, "secretbox #{n}");

        assert_eq!(secretbox_seal(&key, &nonce, pt), ct, "secretbox #{n} seal");
        assert_eq!(
            secretbox_open(&key, &nonce, &ct).unwrap(),
            pt,
            "secretbox #{n} open"
        );

        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                secretbox_open(&key, &nonce, &bad),
                Err(CryptoError::Decrypt),
                "secretbox #{n} flip byte {i}"
            );
        }
        let mut wrong_key = key;
        wrong_key[0] ^= 1;
        assert_eq!(
            secretbox_open(&wrong_key, &nonce, &ct),
            Err(CryptoError::Decrypt)
        );
        // The other vector's key is also wrong for this ciphertext.
        let other = &v.secretbox[(n + 1) % v.secretbox.len()];
        assert_eq!(
            secretbox_open(&hex32(&other.key_hex), &nonce, &ct),
            Err(CryptoError::Decrypt)
        );
        let mut wrong_nonce = nonce;
        wrong_nonce[0] ^= 1;
        assert_eq!(
            secretbox_open(&key, &wrong_nonce, &ct),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            secretbox_open(&key, &nonce, &ct[..MAC_LEN - 1]),
            Err(CryptoError::Decrypt)
        );
    }
}

#[test]
fn invite_v1_signature_verifies_under_mesh_owner() {
    let v = vectors();
    let keys = keys_by_label(&v);
    let owner = &keys["mesh-owner"];
    for inv in &v.invite_v1 {
        let owner_pk = PublicKey::from_hex(&inv.payload.owner_pubkey).unwrap();
        assert_eq!(owner_pk, owner.public());
        let sig = Signature::from_hex(&inv.payload.signature).unwrap();

        assert_eq!(owner_pk.verify_str(&inv.canonical, &sig), Ok(()));
        assert_eq!(owner.sign_str(&inv.canonical), sig);

        let tampered = inv.canonical.replacen("member", "admin", 1);
        assert_ne!(tampered, inv.canonical);
        assert_eq!(
            owner_pk.verify_str(&tampered, &sig),
            Err(CryptoError::BadSignature)
        );
        for (label, other) in &keys {
            if label != "mesh-owner" {
                assert_eq!(
                    other.public().verify_str(&inv.canonical, &sig),
                    Err(CryptoError::BadSignature),
                    "invite verified under {label}"
                );
            }
        }
    }
}
