//! End-to-end envelope behaviour through the public API: round trips, the attacks the
//! inner header must stop (reflection, replay to a third peer, wrong recipient, wrong
//! mesh), legacy v1 bodies, and the libsodium reference vectors in
//! `testdata/libsodium-v1.json` (a v1 libsodium client's DM must be readable).
//! These tests only read the vector file; they never regenerate or edit it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use claudemesh_client::envelope::{
    Envelope, Incoming, Opened, Rejection, SealedDirect, SealedMulticast, open, seal_direct,
    seal_multicast,
};
use claudemesh_crypto::{PublicKey, SecretKey, box_seal, random_nonce};
use serde::Deserialize;

const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/libsodium-v1.json"
));

const MESH: &str = "mK3x9Qm2Lr8TzV4nHs7YcB1dPfW6aJ0e";

#[derive(Deserialize)]
struct Vectors {
    identities: Vec<Identity>,
    #[serde(rename = "box")]
    boxes: Vec<BoxVector>,
}

#[derive(Deserialize)]
struct Identity {
    label: String,
    seed_hex: String,
    ed25519_pk_hex: String,
}

#[derive(Deserialize)]
struct BoxVector {
    from: String,
    to: String,
    plaintext_utf8: String,
    nonce_b64: String,
    ciphertext_b64: String,
}

fn vectors() -> Vectors {
    serde_json::from_str(VECTORS).unwrap()
}

fn identity(v: &Vectors, label: &str) -> SecretKey {
    let id = v.identities.iter().find(|i| i.label == label).unwrap();
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&id.seed_hex[2 * i..2 * i + 2], 16).unwrap();
    }
    let sk = SecretKey::from_seed(&seed);
    assert_eq!(sk.public().to_hex(), id.ed25519_pk_hex);
    sk
}

fn direct<'a>(sender: &'a str, mesh: &'a str, sealed: &'a SealedDirect) -> Incoming<'a> {
    Incoming {
        sender_pubkey: sender,
        mesh_id: mesh,
        target_spec: None,
        nonce: &sealed.nonce,
        ciphertext: &sealed.ciphertext,
        sealed_key: None,
    }
}

fn multicast<'a>(
    sender: &'a str,
    target: Option<&'a str>,
    sealed: &'a SealedMulticast,
    recipient: &PublicKey,
) -> Incoming<'a> {
    Incoming {
        sender_pubkey: sender,
        mesh_id: MESH,
        target_spec: target,
        nonce: &sealed.nonce,
        ciphertext: &sealed.ciphertext,
        sealed_key: sealed
            .sealed_keys
            .get(&recipient.to_hex())
            .map(String::as_str),
    }
}

/// A direct box from `from` to `to` with an arbitrary plaintext.
fn raw_box(from: &SecretKey, to: &PublicKey, plaintext: &[u8]) -> SealedDirect {
    let nonce = random_nonce();
    SealedDirect {
        nonce: STANDARD.encode(nonce),
        ciphertext: STANDARD.encode(box_seal(plaintext, &nonce, to, from)),
    }
}

#[test]
fn direct_round_trip_verifies_every_field() {
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let a = alice.public().to_hex();
    let sealed = seal_direct(
        &alice,
        &bob.public(),
        MESH,
        "01J-1",
        1_764_374_400_123,
        "hi bob ✓",
    );
    assert_eq!(STANDARD.decode(&sealed.nonce).unwrap().len(), 24);
    let expected = Envelope {
        v: 1,
        from: a.clone(),
        to: bob.public().to_hex(),
        mesh: MESH.to_owned(),
        id: "01J-1".to_owned(),
        ts: 1_764_374_400_123,
        body: "hi bob ✓".to_owned(),
        depth: 0,
    };
    let mut inc = direct(&a, MESH, &sealed);
    assert_eq!(open(&bob, &inc), Opened::Verified(expected.clone()));
    let target = bob.public().to_hex();
    inc.target_spec = Some(&target);
    assert_eq!(open(&bob, &inc), Opened::Verified(expected));
    // Two seals of the same message never share a nonce or ciphertext.
    let again = seal_direct(
        &alice,
        &bob.public(),
        MESH,
        "01J-1",
        1_764_374_400_123,
        "hi bob ✓",
    );
    assert_ne!(again.nonce, sealed.nonce);
    assert_ne!(again.ciphertext, sealed.ciphertext);
}

#[test]
fn multicast_to_three_recipients_and_not_to_others() {
    let alice = SecretKey::generate();
    let members: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate()).collect();
    let keys: Vec<PublicKey> = members.iter().map(SecretKey::public).collect();
    let a = alice.public().to_hex();
    let sealed = seal_multicast(&alice, &keys, "@backend", MESH, "m-1", 42, "deploy done");
    assert_eq!(sealed.sealed_keys.len(), 3);
    for value in sealed.sealed_keys.values() {
        assert_eq!(STANDARD.decode(value).unwrap().len(), 24 + 48);
    }
    for (member, key) in members.iter().zip(&keys) {
        for target in [Some("@backend"), None] {
            match open(member, &multicast(&a, target, &sealed, key)) {
                Opened::Verified(e) => {
                    assert_eq!((e.from.as_str(), e.to.as_str()), (a.as_str(), "@backend"));
                    assert_eq!(
                        (e.body.as_str(), e.id.as_str(), e.ts),
                        ("deploy done", "m-1", 42)
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        // The broker moving the message to another target is caught.
        assert_eq!(
            open(member, &multicast(&a, Some("@frontend"), &sealed, key)),
            Opened::Rejected(Rejection::WrongRecipient)
        );
    }
    // A non-recipient handed a member's sealed key cannot open it.
    let eve = SecretKey::generate();
    assert_eq!(
        open(&eve, &multicast(&a, Some("@backend"), &sealed, &keys[0])),
        Opened::Rejected(Rejection::Undecryptable)
    );
    // A member's sealed key presented with the wrong sender fails too.
    let m1 = keys[1].to_hex();
    assert_eq!(
        open(
            &members[0],
            &multicast(&m1, Some("@backend"), &sealed, &keys[0])
        ),
        Opened::Rejected(Rejection::Undecryptable)
    );
    // A sealed key of one message does not open another message's body.
    let other = seal_multicast(&alice, &keys, "@backend", MESH, "m-2", 43, "other");
    let mut mixed = multicast(&a, Some("@backend"), &sealed, &keys[0]);
    mixed.ciphertext = &other.ciphertext;
    assert_eq!(
        open(&members[0], &mixed),
        Opened::Rejected(Rejection::Undecryptable)
    );
}

#[test]
fn reflected_box_is_a_spoofed_sender() {
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let sealed = seal_direct(&alice, &bob.public(), MESH, "id", 1, "to bob");
    // The broker hands alice's own box back to her, claiming bob sent it.
    let b = bob.public().to_hex();
    assert_eq!(
        open(&alice, &direct(&b, MESH, &sealed)),
        Opened::Rejected(Rejection::SpoofedSender)
    );
}

#[test]
fn box_replayed_to_a_third_peer_does_not_decrypt() {
    let (alice, bob, carol) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    let sealed = seal_direct(&alice, &bob.public(), MESH, "id", 1, "to bob");
    let a = alice.public().to_hex();
    assert_eq!(
        open(&carol, &direct(&a, MESH, &sealed)),
        Opened::Rejected(Rejection::Undecryptable)
    );
}

#[test]
fn envelope_naming_another_recipient_is_rejected() {
    let (alice, bob, carol) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    let a = alice.public().to_hex();
    let envelope = Envelope {
        v: 1,
        from: a.clone(),
        to: carol.public().to_hex(),
        mesh: MESH.to_owned(),
        id: "id".to_owned(),
        ts: 1,
        body: "meant for carol".to_owned(),
        depth: 0,
    };
    let sealed = raw_box(
        &alice,
        &bob.public(),
        &serde_json::to_vec(&envelope).unwrap(),
    );
    assert_eq!(
        open(&bob, &direct(&a, MESH, &sealed)),
        Opened::Rejected(Rejection::WrongRecipient)
    );
    // A direct envelope addressed to a multicast target is not for me either.
    let to_all = Envelope {
        to: "*".to_owned(),
        ..envelope.clone()
    };
    let sealed = raw_box(&alice, &bob.public(), &serde_json::to_vec(&to_all).unwrap());
    assert_eq!(
        open(&bob, &direct(&a, MESH, &sealed)),
        Opened::Rejected(Rejection::WrongRecipient)
    );
    // ...while the same envelope addressed to bob verifies.
    let to_bob = Envelope {
        to: bob.public().to_hex(),
        ..envelope
    };
    let sealed = raw_box(&alice, &bob.public(), &serde_json::to_vec(&to_bob).unwrap());
    assert_eq!(
        open(&bob, &direct(&a, MESH, &sealed)),
        Opened::Verified(to_bob)
    );
}

#[test]
fn causal_depth_travels_inside_the_box_and_is_omitted_at_zero() {
    use claudemesh_client::envelope::{Body, Keyring};
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let a = alice.public().to_hex();
    let mut ring = Keyring::new(alice);
    let deep = ring.seal_direct(
        &bob.public(),
        MESH,
        "d1",
        1,
        Body {
            text: "again?",
            depth: 5,
        },
    );
    match open(&bob, &direct(&a, MESH, &deep)) {
        Opened::Verified(env) => assert_eq!((env.body.as_str(), env.depth), ("again?", 5)),
        other => panic!("{other:?}"),
    }
    // Depth 0 adds nothing to the plaintext: older clients see the same envelope.
    let plain = Envelope {
        v: 1,
        from: a,
        to: bob.public().to_hex(),
        mesh: MESH.to_owned(),
        id: "x".to_owned(),
        ts: 1,
        body: "b".to_owned(),
        depth: 0,
    };
    let json = serde_json::to_string(&plain).unwrap();
    assert!(!json.contains("depth"), "{json}");
    let with: Envelope =
        serde_json::from_str(&json.replace("\"v\":1", "\"v\":1,\"depth\":2")).unwrap();
    assert_eq!(with.depth, 2);
}

#[test]
fn message_moved_to_another_mesh_is_rejected() {
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let a = alice.public().to_hex();
    let sealed = seal_direct(&alice, &bob.public(), MESH, "id", 1, "hi");
    assert_eq!(
        open(&bob, &direct(&a, "other-mesh", &sealed)),
        Opened::Rejected(Rejection::WrongMesh)
    );
    let keys = [bob.public()];
    let multi = seal_multicast(&alice, &keys, "*", MESH, "id", 1, "hi");
    let mut inc = multicast(&a, Some("*"), &multi, &keys[0]);
    assert!(matches!(open(&bob, &inc), Opened::Verified(_)));
    inc.mesh_id = "other-mesh";
    assert_eq!(open(&bob, &inc), Opened::Rejected(Rejection::WrongMesh));
}

#[test]
fn plain_v1_box_is_legacy() {
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let a = alice.public().to_hex();
    let sealed = raw_box(&alice, &bob.public(), b"hello");
    assert_eq!(
        open(&bob, &direct(&a, MESH, &sealed)),
        Opened::Legacy("hello".to_owned())
    );
    // JSON that is not an envelope is legacy text too, verbatim.
    let sealed = raw_box(&alice, &bob.public(), br#"{"text":"hi"}"#);
    assert_eq!(
        open(&bob, &direct(&a, MESH, &sealed)),
        Opened::Legacy(r#"{"text":"hi"}"#.to_owned())
    );
}

#[test]
fn v1_plaintext_multicast_is_legacy() {
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let a = alice.public().to_hex();
    let ciphertext = STANDARD.encode("hi all");
    let mut inc = Incoming {
        sender_pubkey: &a,
        mesh_id: MESH,
        target_spec: Some("*"),
        nonce: "",
        ciphertext: &ciphertext,
        sealed_key: None,
    };
    assert_eq!(open(&bob, &inc), Opened::Legacy("hi all".to_owned()));
    inc.target_spec = Some("@backend");
    assert_eq!(open(&bob, &inc), Opened::Legacy("hi all".to_owned()));
    let not_utf8 = STANDARD.encode([0xffu8, 0x00]);
    inc.ciphertext = &not_utf8;
    assert_eq!(open(&bob, &inc), Opened::Rejected(Rejection::NotUtf8));
    inc.ciphertext = "hi all";
    assert_eq!(open(&bob, &inc), Opened::Rejected(Rejection::Undecryptable));
}

#[test]
fn libsodium_v1_direct_messages_are_readable_as_legacy() {
    let v = vectors();
    assert!(!v.boxes.is_empty());
    for vector in &v.boxes {
        let sender = identity(&v, &vector.from);
        let recipient = identity(&v, &vector.to);
        let s = sender.public().to_hex();
        let inc = Incoming {
            sender_pubkey: &s,
            mesh_id: MESH,
            target_spec: None,
            nonce: &vector.nonce_b64,
            ciphertext: &vector.ciphertext_b64,
            sealed_key: None,
        };
        assert_eq!(
            open(&recipient, &inc),
            Opened::Legacy(vector.plaintext_utf8.clone())
        );
        // The same box is unreadable for a third party.
        let carol = identity(&v, "carol-session");
        assert_eq!(
            open(&carol, &inc),
            Opened::Rejected(Rejection::Undecryptable)
        );
    }
}

#[test]
fn future_version_and_non_utf8_direct_bodies_are_rejected() {
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let a = alice.public().to_hex();
    let v2 = raw_box(
        &alice,
        &bob.public(),
        br#"{"v":2,"from":"x","body":"future"}"#,
    );
    assert_eq!(
        open(&bob, &direct(&a, MESH, &v2)),
        Opened::Rejected(Rejection::UnsupportedVersion)
    );
    let bin = raw_box(&alice, &bob.public(), &[0xc3, 0x28, 0x00]);
    assert_eq!(
        open(&bob, &direct(&a, MESH, &bin)),
        Opened::Rejected(Rejection::NotUtf8)
    );
}

#[test]
fn malformed_fields_are_rejected_not_panicking() {
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let a = alice.public().to_hex();
    let good = seal_direct(&alice, &bob.public(), MESH, "i", 1, "hi");
    let mut inc = direct(&a, MESH, &good);
    assert!(matches!(open(&bob, &inc), Opened::Verified(_)));
    let upper = a.to_uppercase();
    for bad_sender in ["", "system", upper.as_str(), &a[..63]] {
        inc.sender_pubkey = bad_sender;
        assert_eq!(
            open(&bob, &inc),
            Opened::Rejected(Rejection::BadSender),
            "{bad_sender}"
        );
    }
    inc.sender_pubkey = &a;
    let short_nonce = STANDARD.encode([0u8; 23]);
    for bad_nonce in ["", "!!!", short_nonce.as_str()] {
        inc.nonce = bad_nonce;
        assert_eq!(open(&bob, &inc), Opened::Rejected(Rejection::Undecryptable));
    }
    inc.nonce = &good.nonce;
    inc.ciphertext = "not base64";
    assert_eq!(open(&bob, &inc), Opened::Rejected(Rejection::Undecryptable));
    // A sealed key that is too short, not base64, or seals a key of the wrong length.
    inc.ciphertext = &good.ciphertext;
    let n = random_nonce();
    let mut short_key = n.to_vec();
    short_key.extend(box_seal(&[7u8; 31], &n, &bob.public(), &alice));
    let short_key = STANDARD.encode(short_key);
    for bad_sealed in ["", "AAAA", "%%", short_key.as_str()] {
        inc.sealed_key = Some(bad_sealed);
        assert_eq!(open(&bob, &inc), Opened::Rejected(Rejection::Undecryptable));
    }
}

#[test]
fn rejection_names_are_distinct() {
    use Rejection::*;
    let all = [
        Undecryptable,
        BadSender,
        SpoofedSender,
        WrongRecipient,
        WrongMesh,
        UnsupportedVersion,
        NotUtf8,
    ];
    let names: std::collections::BTreeSet<_> = all.iter().map(Rejection::as_str).collect();
    assert_eq!(names.len(), all.len());
    assert!(all.iter().all(|r| !r.to_string().is_empty()));
}
