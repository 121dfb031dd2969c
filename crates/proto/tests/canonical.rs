//! The canonical signed strings of WIRE-V1 (hello, session attestation, session_hello)
//! rebuilt with `claudemesh_proto::canonical` from the parts of the reference strings in
//! `testdata/libsodium-v1.json`, and checked against the reference signatures — so the
//! functions the broker and client sign/verify with produce byte-identical strings.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use claudemesh_crypto::{PublicKey, Signature};
use claudemesh_proto::canonical;
use serde::Deserialize;

const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/libsodium-v1.json"
));

#[derive(Deserialize)]
struct Vectors {
    identities: Vec<Identity>,
    signatures: Vec<SigVector>,
}

#[derive(Deserialize)]
struct Identity {
    label: String,
    ed25519_pk_hex: String,
}

#[derive(Deserialize)]
struct SigVector {
    kind: String,
    signer: String,
    canonical: String,
    signature_hex: String,
}

#[test]
fn canonical_strings_match_reference_and_verify() {
    let v: Vectors = serde_json::from_str(VECTORS).unwrap();
    let mut kinds = Vec::new();
    for s in &v.signatures {
        let p: Vec<&str> = s.canonical.split('|').collect();
        let rebuilt = match s.kind.as_str() {
            "hello" => canonical::hello(p[0], p[1], p[2], p[3].parse().unwrap()),
            "session_attestation" => {
                canonical::session_attestation(p[1], p[2], p[3].parse().unwrap())
            }
            "session_hello" => canonical::session_hello(p[1], p[2], p[3], p[4].parse().unwrap()),
            other => panic!("unexpected signature kind {other}"),
        };
        assert_eq!(rebuilt, s.canonical, "{}", s.kind);
        let signer = v.identities.iter().find(|i| i.label == s.signer).unwrap();
        let key = PublicKey::from_hex(&signer.ed25519_pk_hex).unwrap();
        let sig = Signature::from_hex(&s.signature_hex).unwrap();
        assert!(
            key.verify_str(&rebuilt, &sig).is_ok(),
            "{} signature",
            s.kind
        );
        kinds.push(s.kind.as_str());
    }
    kinds.sort_unstable();
    assert_eq!(kinds, ["hello", "session_attestation", "session_hello"]);
}
