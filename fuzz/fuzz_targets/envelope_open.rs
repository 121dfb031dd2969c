//! `envelope_open`: `claudemesh_client::envelope::open` as bob (fixed secret key) on a
//! push whose every field a sender or a hostile broker controls.
//!
//! Mode 0 (first byte % 3): the rest is a JSON object of the push's fields as the wire
//! names them (`senderPubkey`, `meshId`, `targetSpec`, `nonce`, `ciphertext`,
//! `sealedKey`; a missing string is empty), so base64, lengths and the legacy paths are
//! explored from readable seeds. Modes 1
//! and 2: the target seals fuzzer-chosen plaintext (raw bytes, or an envelope built from
//! fuzzer fields) to bob as a direct `crypto_box` or as a multicast body with a sealed key
//! (whose boxed key the fuzzer may shorten or lengthen), then hands `open` a push whose
//! header fields the fuzzer may change; this reaches plaintext parsing and every header
//! check. Oracles: a `Verified` envelope names the push's sender and mesh and is addressed
//! to bob (direct) or to the push's target (multicast); an honest envelope is `Verified`.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use claudemesh_client::envelope::{Envelope, Incoming, Keyring, Opened, is_multicast_spec, open};
use claudemesh_fuzz::{BOB, envelope_json, pick, seal_direct, seal_multicast, split_mode};
use libfuzzer_sys::fuzz_target;

/// What a `Verified` result must satisfy (PROTOCOL §8.3).
fn check(incoming: &Incoming<'_>, opened: &Opened) {
    if let Opened::Verified(env) = opened {
        assert_eq!(env.v, 1);
        assert_eq!(
            env.from, incoming.sender_pubkey,
            "verified an envelope from another sender"
        );
        assert_eq!(
            env.mesh, incoming.mesh_id,
            "verified an envelope of another mesh"
        );
        if incoming.sealed_key.is_some() {
            match incoming.target_spec {
                Some(spec) => assert_eq!(env.to, spec, "verified a multicast for another target"),
                None => assert!(
                    is_multicast_spec(&env.to),
                    "verified a direct envelope as multicast"
                ),
            }
        } else {
            assert_eq!(
                env.to,
                BOB.public().to_hex(),
                "verified an envelope for someone else"
            );
        }
    }
    // The one-shot function and a long-lived keyring must agree.
    let mut ring = Keyring::new(BOB.clone());
    assert_eq!(&ring.open(incoming), opened);
}

fn raw(rest: &[u8]) {
    let Ok(serde_json::Value::Object(push)) = serde_json::from_slice(rest) else {
        return;
    };
    let field = |name: &str| push.get(name).and_then(serde_json::Value::as_str);
    let incoming = Incoming {
        sender_pubkey: field("senderPubkey").unwrap_or_default(),
        mesh_id: field("meshId").unwrap_or_default(),
        target_spec: field("targetSpec"),
        nonce: field("nonce").unwrap_or_default(),
        ciphertext: field("ciphertext").unwrap_or_default(),
        sealed_key: field("sealedKey"),
    };
    check(&incoming, &open(&BOB, &incoming));
}

#[derive(Debug, Arbitrary)]
enum SenderKey {
    Known(u8),
    Text(String),
}

impl SenderKey {
    fn hex(&self) -> String {
        match self {
            SenderKey::Known(k) => pick(*k).public().to_hex(),
            SenderKey::Text(t) => t.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Plaintext {
    /// Any bytes (a v1 body, broken JSON, invalid UTF-8).
    Bytes(Vec<u8>),
    /// Our envelope; each header field honest or chosen by the fuzzer.
    Envelope {
        from: Option<String>,
        to: Option<String>,
        mesh: Option<String>,
        v: Option<u32>,
        id: String,
        ts: i64,
        body: String,
        depth: u32,
    },
}

#[derive(Debug, Arbitrary)]
struct Sealed {
    /// Who really seals the box (the push may claim another sender).
    sealer: u8,
    claimed: Option<SenderKey>,
    mesh_id: String,
    /// The push's targetSpec; for multicast pushes the honest one is `@name`/`*`.
    target_spec: Option<String>,
    plaintext: Plaintext,
    nonce: [u8; 24],
    key: [u8; 32],
    key_nonce: [u8; 24],
    /// Box this many bytes of the key instead of 32 (multicast).
    key_len: Option<u8>,
}

fn sealed(s: Sealed, multicast: bool) {
    let sealer = pick(s.sealer);
    let sender = s
        .claimed
        .as_ref()
        .map_or_else(|| sealer.public().to_hex(), SenderKey::hex);
    let honest_to = match (&s.target_spec, multicast) {
        (Some(spec), true) => spec.clone(),
        (None, true) => "*".to_owned(),
        (_, false) => BOB.public().to_hex(),
    };
    let (plaintext, honest) = match s.plaintext {
        Plaintext::Bytes(b) => (b, false),
        Plaintext::Envelope {
            from,
            to,
            mesh,
            v,
            id,
            ts,
            body,
            depth,
        } => {
            let honest =
                from.is_none() && to.is_none() && mesh.is_none() && v.is_none_or(|v| v == 1);
            let env = Envelope {
                v: v.unwrap_or(1),
                from: from.unwrap_or_else(|| sealer.public().to_hex()),
                to: to.unwrap_or_else(|| honest_to.clone()),
                mesh: mesh.unwrap_or_else(|| s.mesh_id.clone()),
                id,
                ts,
                body,
                depth,
            };
            (envelope_json(&env), honest)
        }
    };
    let bob = BOB.public();
    let (nonce, ciphertext, sealed_key) = if multicast {
        let len = s.key_len.map_or(32, usize::from);
        let key_bytes: Vec<u8> = s.key.iter().copied().cycle().take(len).collect();
        let (n, c, k) = seal_multicast(
            sealer,
            &bob,
            &s.key,
            &key_bytes,
            &s.nonce,
            &s.key_nonce,
            &plaintext,
        );
        (n, c, Some(k))
    } else {
        let (n, c) = seal_direct(sealer, &bob, &s.nonce, &plaintext);
        (n, c, None)
    };
    let honest = honest
        && s.claimed.is_none()
        && (!multicast || s.key_len.is_none_or(|l| l == 32))
        && (multicast
            || s.target_spec
                .as_deref()
                .is_none_or(|t| !is_multicast_spec(t)));
    let incoming = Incoming {
        sender_pubkey: &sender,
        mesh_id: &s.mesh_id,
        target_spec: s.target_spec.as_deref(),
        nonce: &nonce,
        ciphertext: &ciphertext,
        sealed_key: sealed_key.as_deref(),
    };
    let opened = open(&BOB, &incoming);
    check(&incoming, &opened);
    if honest {
        assert!(
            matches!(opened, Opened::Verified(_)),
            "an honest envelope was not verified: {opened:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    let u = Unstructured::new(rest);
    match mode % 3 {
        0 => raw(rest),
        m => {
            if let Ok(s) = Sealed::arbitrary_take_rest(u) {
                sealed(s, m == 2);
            }
        }
    }
});
