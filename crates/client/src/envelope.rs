//! The end-to-end plaintext format (PROTOCOL.md §8.3) and sealing / opening of messages.
//!
//! Every message this product's clients send carries, inside the ciphertext, a JSON
//! [`Envelope`] naming sender, recipient (or multicast target), mesh, client message id
//! and time. Direct messages are one `crypto_box` (§8.1); multicast messages are a
//! `crypto_secretbox` under a fresh per-message key, sealed to each recipient with
//! `crypto_box` (§8.2, `e2e-multicast`). [`open`] decrypts a push and checks the header
//! against what the broker stamped (`senderPubkey`, `meshId`, `targetSpec`), so a box
//! reflected to its sender, replayed to another peer or moved to another mesh is rejected.
//!
//! This module must never return text for a message that failed to decrypt or verify: a
//! failure is an [`Opened::Rejected`] carrying only a reason. Plaintext that decrypts but
//! is not an envelope (a v1 client's body) is returned as [`Opened::Legacy`] so callers
//! can mark it as unverified. Replay of an envelope id under a new broker message id is
//! detected by the inbox, not here. This module does no I/O, never logs plaintext, and
//! never panics on any input.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use claudemesh_crypto::{
    KEY_LEN, NONCE_LEN, PublicKey, SecretKey, SharedBox, random_key, random_nonce, secretbox_open,
    secretbox_seal,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The only envelope version this client writes and verifies.
pub const ENVELOPE_VERSION: u32 = 1;

/// The inner header plus body, serialized as JSON inside every ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope version, always [`ENVELOPE_VERSION`].
    pub v: u32,
    /// Sender key hex: the key the broker stamps as `senderPubkey`.
    pub from: String,
    /// Recipient key hex (direct), or the exact `targetSpec` (`*`, `@all`, `@name`).
    pub to: String,
    /// The mesh id.
    pub mesh: String,
    /// The client message id (equal to the send's `client_message_id`).
    pub id: String,
    /// Milliseconds since the Unix epoch, as the sender's clock saw it.
    pub ts: i64,
    /// The message text.
    pub body: String,
    /// Causal depth (the loop guard, PROTOCOL.md §8.4): 0 for a message written after a
    /// person's prompt, one more than the deepest peer message it answers otherwise.
    /// Omitted when 0, so such envelopes are byte-identical to those without it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub depth: u32,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What a message says: its text and its causal depth. A bare `&str` is depth 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Body<'a> {
    pub text: &'a str,
    pub depth: u32,
}

impl<'a> From<&'a str> for Body<'a> {
    fn from(text: &'a str) -> Self {
        Self { text, depth: 0 }
    }
}

impl<'a> From<&'a String> for Body<'a> {
    fn from(text: &'a String) -> Self {
        Self {
            text: text.as_str(),
            depth: 0,
        }
    }
}

/// A sealed direct message: the `nonce` and `ciphertext` of a `send` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedDirect {
    /// Standard base64 of the 24-byte nonce.
    pub nonce: String,
    /// Standard base64 of `crypto_box_easy(envelope JSON)`.
    pub ciphertext: String,
}

/// A sealed multicast message: `nonce`, `ciphertext` and `sealedKeys` of a `send` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedMulticast {
    /// Standard base64 of the 24-byte body nonce.
    pub nonce: String,
    /// Standard base64 of `crypto_secretbox_easy(envelope JSON, nonce, K)`.
    pub ciphertext: String,
    /// Recipient key hex → base64(24-byte nonce ‖ `crypto_box_easy(K)`).
    pub sealed_keys: BTreeMap<String, String>,
}

/// What a `push` carries, borrowed (field names as in the `push` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming<'a> {
    /// `senderPubkey`, stamped by the broker from the authenticated connection.
    pub sender_pubkey: &'a str,
    /// `meshId`.
    pub mesh_id: &'a str,
    /// `targetSpec` (extension; absent from v1 brokers).
    pub target_spec: Option<&'a str>,
    /// `nonce`, standard base64.
    pub nonce: &'a str,
    /// `ciphertext`, standard base64.
    pub ciphertext: &'a str,
    /// `sealedKey` (extension `e2e-multicast`).
    pub sealed_key: Option<&'a str>,
}

impl<'a> From<&'a claudemesh_proto::frames::Push> for Incoming<'a> {
    fn from(push: &'a claudemesh_proto::frames::Push) -> Self {
        Self {
            sender_pubkey: &push.sender_pubkey,
            mesh_id: &push.mesh_id,
            target_spec: push.target_spec.as_deref(),
            nonce: &push.nonce,
            ciphertext: &push.ciphertext,
            sealed_key: push.sealed_key.as_deref(),
        }
    }
}

/// The outcome of [`open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// A verified envelope from this product's clients.
    Verified(Envelope),
    /// A v1 body: decrypted (or v1 plaintext multicast) text that is not our envelope.
    /// Authenticity of the header fields is not established; show it marked legacy.
    Legacy(String),
    /// Failed to decrypt or verify. Never shown as text.
    Rejected(Rejection),
}

/// Why a message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Rejection {
    /// Box or secretbox failed, or a nonce, key or ciphertext was malformed.
    #[error("message could not be decrypted")]
    Undecryptable,
    /// `senderPubkey` is not a public key.
    #[error("sender is not a valid public key")]
    BadSender,
    /// The envelope's `from` is not the broker-stamped sender (e.g. a reflected box).
    #[error("envelope sender does not match the connection that sent it")]
    SpoofedSender,
    /// The envelope's `to` is neither my key (direct) nor the push's target (multicast).
    #[error("envelope is addressed to someone else")]
    WrongRecipient,
    /// The envelope's `mesh` is not the push's mesh.
    #[error("envelope belongs to another mesh")]
    WrongMesh,
    /// The envelope has a version this client does not understand.
    #[error("unsupported envelope version")]
    UnsupportedVersion,
    /// The decrypted text is not UTF-8.
    #[error("message text is not valid UTF-8")]
    NotUtf8,
}

impl Rejection {
    /// A stable machine-readable name (for storage and logs).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Undecryptable => "undecryptable",
            Self::BadSender => "bad_sender",
            Self::SpoofedSender => "spoofed_sender",
            Self::WrongRecipient => "wrong_recipient",
            Self::WrongMesh => "wrong_mesh",
            Self::UnsupportedVersion => "unsupported_version",
            Self::NotUtf8 => "not_utf8",
        }
    }
}

/// Whether a `targetSpec` addresses many recipients: `*`, `@all` or `@name`.
pub fn is_multicast_spec(spec: &str) -> bool {
    spec == "*" || spec.starts_with('@')
}

/// The envelope JSON for the given fields.
fn envelope_json(
    from: &PublicKey,
    to: &str,
    mesh_id: &str,
    id: &str,
    ts: i64,
    body: Body<'_>,
) -> Vec<u8> {
    let envelope = Envelope {
        v: ENVELOPE_VERSION,
        from: from.to_hex(),
        to: to.to_owned(),
        mesh: mesh_id.to_owned(),
        id: id.to_owned(),
        ts,
        body: body.text.to_owned(),
        depth: body.depth,
    };
    #[allow(clippy::expect_used)]
    // Invariant: `Envelope` holds only strings and integers and derives `Serialize`;
    // serde_json fails only on non-string map keys or failing custom serializers.
    serde_json::to_vec(&envelope).expect("serializing a plain struct to JSON cannot fail")
}

/// Seal a direct message from `me` to `to` (§8.1) with an envelope addressed to `to`.
/// One-shot; a long-lived client keeps a [`Keyring`] instead.
pub fn seal_direct<'b>(
    me: &SecretKey,
    to: &PublicKey,
    mesh_id: &str,
    id: &str,
    ts_ms: i64,
    body: impl Into<Body<'b>>,
) -> SealedDirect {
    Keyring::new(me.clone()).seal_direct(to, mesh_id, id, ts_ms, body)
}

/// Seal a multicast message (§8.2): the body is `crypto_secretbox(envelope JSON, nonce, K)`
/// under a fresh `K`, and `sealed_keys[hex(recipient)] = base64(n ‖ crypto_box(K, n,
/// recipient, me))` with a fresh nonce `n` per recipient. The envelope's `to` is
/// `target_spec`. Duplicate recipients collapse to one entry; the caller chooses the set
/// (PROTOCOL.md says it never includes the sender itself).
pub fn seal_multicast<'b>(
    me: &SecretKey,
    recipients: &[PublicKey],
    target_spec: &str,
    mesh_id: &str,
    id: &str,
    ts_ms: i64,
    body: impl Into<Body<'b>>,
) -> SealedMulticast {
    Keyring::new(me.clone()).seal_multicast(recipients, target_spec, mesh_id, id, ts_ms, body)
}

/// Precomputed crypto_box keys (libsodium's `crypto_box_beforenm`) per peer, so messages
/// with a peer already seen cost no new key agreement. Bounded: the cache is dropped when
/// it reaches [`Keyring::MAX_PEERS`] entries.
pub struct Keyring {
    me: SecretKey,
    my_hex: String,
    shared: std::collections::HashMap<PublicKey, SharedBox>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("me", &self.my_hex)
            .field("peers", &self.shared.len())
            .finish()
    }
}

impl Keyring {
    pub const MAX_PEERS: usize = 4_096;

    pub fn new(me: SecretKey) -> Self {
        let my_hex = me.public().to_hex();
        Self {
            me,
            my_hex,
            shared: std::collections::HashMap::new(),
        }
    }

    /// My public key as hex (the key the broker stamps on my sends).
    pub fn my_key(&self) -> &str {
        &self.my_hex
    }

    fn with(&mut self, peer: &PublicKey) -> &SharedBox {
        if self.shared.len() >= Self::MAX_PEERS && !self.shared.contains_key(peer) {
            self.shared.clear();
        }
        let me = &self.me;
        self.shared
            .entry(*peer)
            .or_insert_with(|| SharedBox::new(me, peer))
    }

    /// [`seal_direct`] with the cached shared key.
    pub fn seal_direct<'b>(
        &mut self,
        to: &PublicKey,
        mesh_id: &str,
        id: &str,
        ts_ms: i64,
        body: impl Into<Body<'b>>,
    ) -> SealedDirect {
        let plaintext = envelope_json(
            &self.me.public(),
            &to.to_hex(),
            mesh_id,
            id,
            ts_ms,
            body.into(),
        );
        let nonce = random_nonce();
        let ciphertext = self.with(to).seal(&nonce, &plaintext);
        SealedDirect {
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(ciphertext),
        }
    }

    /// A plain v1 body: `plaintext` itself inside crypto_box, no envelope. Only for peers
    /// known to run a v1 client, which cannot read an envelope.
    pub fn seal_legacy(&mut self, to: &PublicKey, plaintext: &[u8]) -> SealedDirect {
        let nonce = random_nonce();
        let ciphertext = self.with(to).seal(&nonce, plaintext);
        SealedDirect {
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(ciphertext),
        }
    }

    /// [`seal_multicast`] with the cached shared keys.
    pub fn seal_multicast<'b>(
        &mut self,
        recipients: &[PublicKey],
        target_spec: &str,
        mesh_id: &str,
        id: &str,
        ts_ms: i64,
        body: impl Into<Body<'b>>,
    ) -> SealedMulticast {
        let plaintext = envelope_json(
            &self.me.public(),
            target_spec,
            mesh_id,
            id,
            ts_ms,
            body.into(),
        );
        let key = random_key();
        let nonce = random_nonce();
        let ciphertext = secretbox_seal(&key, &nonce, &plaintext);
        let sealed_keys = recipients
            .iter()
            .map(|recipient| {
                let n = random_nonce();
                let mut sealed = n.to_vec();
                sealed.extend_from_slice(&self.with(recipient).seal(&n, key.as_slice()));
                (recipient.to_hex(), STANDARD.encode(sealed))
            })
            .collect();
        SealedMulticast {
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(ciphertext),
            sealed_keys,
        }
    }

    /// [`open`] with the cached shared keys.
    pub fn open(&mut self, incoming: &Incoming<'_>) -> Opened {
        match open_inner(self, incoming) {
            Ok(opened) => opened,
            Err(rejection) => Opened::Rejected(rejection),
        }
    }
}

/// How a decrypted plaintext parses.
enum Parsed {
    Envelope(Envelope),
    OtherVersion,
    NotEnvelope(String),
}

/// Classify decrypted bytes: our envelope, an envelope of another version, or legacy text.
///
/// A JSON object with a `"v"` member other than the integer 1 is a future envelope. A
/// `"v":1` object that lacks fields or has mistyped ones is not an envelope (legacy).
fn parse_plaintext(bytes: Vec<u8>) -> Result<Parsed, Rejection> {
    let text = String::from_utf8(bytes).map_err(|_| Rejection::NotUtf8)?;
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&text) else {
        return Ok(Parsed::NotEnvelope(text));
    };
    match map.get("v") {
        None => Ok(Parsed::NotEnvelope(text)),
        Some(v) if v.as_u64() == Some(u64::from(ENVELOPE_VERSION)) => {
            match serde_json::from_value::<Envelope>(Value::Object(map)) {
                Ok(envelope) => Ok(Parsed::Envelope(envelope)),
                Err(_) => Ok(Parsed::NotEnvelope(text)),
            }
        }
        Some(_) => Ok(Parsed::OtherVersion),
    }
}

/// Decode standard base64 into exactly `N` bytes.
fn decode_array<const N: usize>(s: &str) -> Result<[u8; N], Rejection> {
    let bytes = STANDARD.decode(s).map_err(|_| Rejection::Undecryptable)?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| Rejection::Undecryptable)
}

/// Decode standard base64 of any length.
fn decode(s: &str) -> Result<Vec<u8>, Rejection> {
    STANDARD.decode(s).map_err(|_| Rejection::Undecryptable)
}

/// Open a push addressed to `me` (rules in PROTOCOL.md §8 and the module docs).
///
/// - `sealed_key` present: e2e multicast; the envelope's `to` must equal `target_spec`
///   (or, when the push has no `target_spec`, be a multicast spec).
/// - no `sealed_key` and a multicast `target_spec`: v1 plaintext multicast → `Legacy`.
/// - otherwise: direct `crypto_box`; the envelope's `to` must be my key.
///
/// In every envelope, `from` must equal `sender_pubkey` and `mesh` must equal `mesh_id`.
pub fn open(me: &SecretKey, incoming: &Incoming<'_>) -> Opened {
    Keyring::new(me.clone()).open(incoming)
}

fn open_inner(ring: &mut Keyring, incoming: &Incoming<'_>) -> Result<Opened, Rejection> {
    let sender = PublicKey::from_hex(incoming.sender_pubkey).map_err(|_| Rejection::BadSender)?;
    if let Some(sealed_key) = incoming.sealed_key {
        let plaintext = open_multicast(ring, &sender, incoming, sealed_key)?;
        let expected_to = |to: &str| match incoming.target_spec {
            Some(spec) => to == spec,
            None => is_multicast_spec(to),
        };
        return verify(parse_plaintext(plaintext)?, incoming, expected_to);
    }
    if incoming.target_spec.is_some_and(is_multicast_spec) {
        let bytes = decode(incoming.ciphertext)?;
        let text = String::from_utf8(bytes).map_err(|_| Rejection::NotUtf8)?;
        return Ok(Opened::Legacy(text));
    }
    let nonce = decode_array::<NONCE_LEN>(incoming.nonce)?;
    let ciphertext = decode(incoming.ciphertext)?;
    let plaintext = ring
        .with(&sender)
        .open(&nonce, &ciphertext)
        .map_err(|_| Rejection::Undecryptable)?;
    let my_hex = ring.my_hex.clone();
    verify(parse_plaintext(plaintext)?, incoming, |to| to == my_hex)
}

/// Recover the message key from `sealed_key`, then open the body with it.
fn open_multicast(
    ring: &mut Keyring,
    sender: &PublicKey,
    incoming: &Incoming<'_>,
    sealed_key: &str,
) -> Result<Vec<u8>, Rejection> {
    let sealed = decode(sealed_key)?;
    let (key_nonce, key_box) = sealed
        .split_first_chunk::<NONCE_LEN>()
        .ok_or(Rejection::Undecryptable)?;
    let key = ring
        .with(sender)
        .open(key_nonce, key_box)
        .map_err(|_| Rejection::Undecryptable)?;
    let key = <[u8; KEY_LEN]>::try_from(key.as_slice()).map_err(|_| Rejection::Undecryptable)?;
    let nonce = decode_array::<NONCE_LEN>(incoming.nonce)?;
    let ciphertext = decode(incoming.ciphertext)?;
    secretbox_open(&key, &nonce, &ciphertext).map_err(|_| Rejection::Undecryptable)
}

/// Check a parsed plaintext's header against the push.
fn verify(
    parsed: Parsed,
    incoming: &Incoming<'_>,
    to_ok: impl Fn(&str) -> bool,
) -> Result<Opened, Rejection> {
    let envelope = match parsed {
        Parsed::NotEnvelope(text) => return Ok(Opened::Legacy(text)),
        Parsed::OtherVersion => return Err(Rejection::UnsupportedVersion),
        Parsed::Envelope(envelope) => envelope,
    };
    if envelope.from != incoming.sender_pubkey {
        return Err(Rejection::SpoofedSender);
    }
    if envelope.mesh != incoming.mesh_id {
        return Err(Rejection::WrongMesh);
    }
    if !to_ok(&envelope.to) {
        return Err(Rejection::WrongRecipient);
    }
    Ok(Opened::Verified(envelope))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_plaintext_classifies() {
        let env = |v: &str| {
            format!(
                r#"{{"v":{v},"from":"a","to":"b","mesh":"m","id":"i","ts":5,"body":"x","extra":[1]}}"#
            )
        };
        assert!(matches!(
            parse_plaintext(env("1").into_bytes()),
            Ok(Parsed::Envelope(e)) if e.body == "x" && e.ts == 5
        ));
        for v in ["2", "0", "1.0", "\"1\"", "null", "-1"] {
            assert!(
                matches!(
                    parse_plaintext(env(v).into_bytes()),
                    Ok(Parsed::OtherVersion)
                ),
                "{v}"
            );
        }
        for text in [
            "hello",
            "",
            "42",
            "[1]",
            "{}",
            r#"{"v":1,"body":"x"}"#,
            r#"{"v":1,"from":"a","to":"b","mesh":"m","id":"i","ts":"5","body":"x"}"#,
        ] {
            assert!(
                matches!(parse_plaintext(text.as_bytes().to_vec()), Ok(Parsed::NotEnvelope(t)) if t == text),
                "{text}"
            );
        }
        assert!(matches!(
            parse_plaintext(vec![0xff, 0xfe]),
            Err(Rejection::NotUtf8)
        ));
    }

    #[test]
    fn multicast_spec_detection() {
        for s in ["*", "@all", "@backend", "@"] {
            assert!(is_multicast_spec(s), "{s}");
        }
        for s in [
            "",
            "all",
            "**",
            "d5c76d9662bb010b2814c8a483a7ca9db766851bf559ceb79fd65dbf1ae86cf5",
        ] {
            assert!(!is_multicast_spec(s), "{s}");
        }
    }

    proptest! {
        #[test]
        fn open_never_panics_on_arbitrary_strings(
            sender in any::<String>(),
            mesh in any::<String>(),
            target in proptest::option::of(any::<String>()),
            nonce in any::<String>(),
            ciphertext in any::<String>(),
            sealed in proptest::option::of(any::<String>()),
        ) {
            let me = SecretKey::from_seed(&[3u8; 32]);
            let inc = Incoming {
                sender_pubkey: &sender,
                mesh_id: &mesh,
                target_spec: target.as_deref(),
                nonce: &nonce,
                ciphertext: &ciphertext,
                sealed_key: sealed.as_deref(),
            };
            let _ = open(&me, &inc);
        }

        #[test]
        fn open_never_panics_or_verifies_on_random_bytes_from_a_real_sender(
            nonce in proptest::collection::vec(any::<u8>(), 0..40),
            ciphertext in proptest::collection::vec(any::<u8>(), 0..200),
            sealed in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..100)),
            target in proptest::option::of(prop_oneof![Just("*".to_owned()), Just("@g".to_owned()), any::<String>()]),
        ) {
            let me = SecretKey::from_seed(&[3u8; 32]);
            let sender = SecretKey::from_seed(&[4u8; 32]).public().to_hex();
            let (nonce, ciphertext) = (STANDARD.encode(nonce), STANDARD.encode(ciphertext));
            let sealed = sealed.map(|s| STANDARD.encode(s));
            let inc = Incoming {
                sender_pubkey: &sender,
                mesh_id: "m",
                target_spec: target.as_deref(),
                nonce: &nonce,
                ciphertext: &ciphertext,
                sealed_key: sealed.as_deref(),
            };
            prop_assert!(!matches!(open(&me, &inc), Opened::Verified(_)));
        }
    }
}
