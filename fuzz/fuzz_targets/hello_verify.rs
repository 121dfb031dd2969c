//! `hello_verify`: the broker's stateless hello checks (`auth::verify_hello`,
//! `auth::verify_session_hello`: skew, presence limits, keys, attestation, signatures).
//!
//! Mode 0 (first byte % 3): the rest is a text frame as a peer sends it, parsed by the
//! connection task's parser and verified when it is a hello. Modes 1 and 2: structured
//! inputs from which the target builds and signs a `hello` / `session_hello` with the
//! reference identities (signer, keys, clock offset, attestation lifetime and presence
//! all chosen by the fuzzer), so every check after the signatures is reached too. Every
//! accepted hello must pass the oracles in `claudemesh_fuzz`; a well-formed, correctly
//! signed one must be accepted.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use claudemesh_broker::fuzzing::{parse_frame, verify_hello, verify_session_hello};
use claudemesh_crypto::PublicKey;
use claudemesh_fuzz::{
    NOW_MS, assert_hello_sound, assert_session_hello_sound, attestation, frame_text, pick,
    split_mode,
};
use claudemesh_proto::canonical;
use claudemesh_proto::frames::{ClientFrame, GroupRef, PresenceInfo, ReqId};
use claudemesh_proto::limits;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Presence {
    display_name: Option<String>,
    session_id: String,
    pid: i64,
    cwd: String,
    hostname: Option<String>,
    peer_type: Option<String>,
    groups: Option<Vec<(String, Option<String>)>>,
    protocol_version: Option<u32>,
    capabilities: Option<Vec<String>>,
}

impl Presence {
    fn info(self) -> PresenceInfo {
        PresenceInfo {
            display_name: self.display_name,
            session_id: self.session_id,
            pid: self.pid,
            cwd: self.cwd,
            hostname: self.hostname,
            peer_type: self.peer_type,
            groups: self.groups.map(|g| {
                g.into_iter()
                    .map(|(name, role)| GroupRef { name, role })
                    .collect()
            }),
            protocol_version: self.protocol_version,
            capabilities: self.capabilities,
            ..PresenceInfo::default()
        }
    }
}

/// PROTOCOL §2 limits on presence fields (restated, not the broker's code).
fn presence_ok(p: &PresenceInfo) -> bool {
    let short = |s: &str| s.len() <= limits::MAX_SHORT_TEXT_BYTES;
    p.display_name.as_deref().is_none_or(short)
        && short(&p.session_id)
        && short(&p.cwd)
        && p.hostname.as_deref().is_none_or(short)
        && p.groups.as_ref().is_none_or(|g| {
            g.len() <= limits::MAX_GROUPS && g.iter().all(|g| !g.name.is_empty() && short(&g.name))
        })
}

fn skew_ok(offset: i32) -> bool {
    i64::from(offset).abs() <= limits::MAX_CLOCK_SKEW_MS
}

#[derive(Debug, Arbitrary)]
enum SessionKey {
    /// A reference identity's key.
    Key(u8),
    /// Anything.
    Text(String),
}

#[derive(Debug, Arbitrary)]
struct HelloInput {
    signer: u8,
    /// The identity the hello names as `pubkey` (another one than the signer fails).
    claimed: u8,
    mesh_id: String,
    member_id: String,
    /// Milliseconds between the hello's timestamp and the broker clock.
    offset: i32,
    session: Option<SessionKey>,
    presence: Presence,
    /// Flip one byte of the signature hex.
    tamper: Option<(u8, u8)>,
    req_id: Option<i64>,
}

#[derive(Debug, Arbitrary)]
struct SessionInput {
    parent: u8,
    session: u8,
    /// Who really signs the attestation and the hello (others than parent/session fail).
    attester: u8,
    session_signer: u8,
    /// The attestation names other keys than the hello.
    attested_session: Option<u8>,
    attested_parent: Option<u8>,
    mesh_id: String,
    parent_member_id: String,
    offset: i32,
    /// Attestation lifetime from the broker clock (ms).
    ttl: i64,
    presence: Presence,
    req_id: Option<String>,
}

fn tamper(hex: &mut String, at: Option<(u8, u8)>) -> bool {
    let Some((index, xor)) = at else { return false };
    let mut bytes = std::mem::take(hex).into_bytes();
    let i = usize::from(index) % bytes.len();
    bytes[i] ^= xor;
    let changed = xor != 0;
    *hex = String::from_utf8_lossy(&bytes).into_owned();
    changed
}

fn raw(text: &str) {
    match parse_frame(text, false) {
        Ok(ClientFrame::Hello(h)) => {
            if let Ok(v) = verify_hello(h.clone(), NOW_MS) {
                assert_hello_sound(&h, &v, NOW_MS);
            }
        }
        Ok(ClientFrame::SessionHello(h)) => {
            if let Ok(v) = verify_session_hello(h.clone(), NOW_MS) {
                assert_session_hello_sound(&h, &v, NOW_MS);
            }
        }
        _ => {}
    }
}

fn structured_hello(input: HelloInput) {
    let presence = input.presence.info();
    let session_pubkey = input.session.as_ref().map(|s| match s {
        SessionKey::Key(k) => pick(*k).public().to_hex(),
        SessionKey::Text(t) => t.clone(),
    });
    let mut h = claudemesh_fuzz::hello(
        pick(input.signer),
        &input.mesh_id,
        &input.member_id,
        NOW_MS + i64::from(input.offset),
        session_pubkey,
        presence,
    );
    h.req_id = input.req_id.map(ReqId::Num);
    let mut honest = pick(input.signer).public() == pick(input.claimed).public();
    if !honest {
        h.pubkey = pick(input.claimed).public().to_hex();
    }
    honest &= !tamper(&mut h.signature, input.tamper);
    let frame = ClientFrame::Hello(h);
    let Ok(ClientFrame::Hello(h)) = parse_frame(&frame_text(&frame), false) else {
        panic!("the broker does not parse a hello a client wrote: {frame:?}");
    };
    assert_eq!(
        ClientFrame::Hello(h.clone()),
        frame,
        "a hello changed on the wire"
    );
    let well_formed = honest
        && skew_ok(input.offset)
        && presence_ok(&h.presence)
        && h.session_pubkey
            .as_deref()
            .is_none_or(|s| PublicKey::from_hex(s).is_ok());
    match verify_hello(h.clone(), NOW_MS) {
        Ok(v) => assert_hello_sound(&h, &v, NOW_MS),
        Err(r) => assert!(!well_formed, "refused a well-formed hello: {r:?}"),
    }
}

fn structured_session(input: SessionInput) {
    let parent = pick(input.parent);
    let session = pick(input.session);
    let expires_at = NOW_MS.saturating_add(input.ttl);
    let timestamp = NOW_MS + i64::from(input.offset);
    let mut h = claudemesh_fuzz::session_hello(
        parent,
        session,
        &input.mesh_id,
        &input.parent_member_id,
        timestamp,
        expires_at,
        input.presence.info(),
    );
    h.req_id = input.req_id.map(ReqId::Str);
    let attester = pick(input.attester);
    if attester.public() != parent.public() {
        // Signed by another key, still naming the parent.
        let mut att = attestation(attester, &h.session_pubkey, expires_at);
        att.parent_member_pubkey = h.parent_member_pubkey.clone();
        h.parent_attestation = att;
    }
    let signer = pick(input.session_signer);
    if signer.public() != session.public() {
        h.signature = signer
            .sign_str(&canonical::session_hello(
                &h.mesh_id,
                &h.parent_member_pubkey,
                &h.session_pubkey,
                timestamp,
            ))
            .to_hex();
    }
    if let Some(k) = input.attested_session {
        h.parent_attestation.session_pubkey = pick(k).public().to_hex();
    }
    if let Some(k) = input.attested_parent {
        h.parent_attestation.parent_member_pubkey = pick(k).public().to_hex();
    }
    let frame = ClientFrame::SessionHello(h);
    let Ok(ClientFrame::SessionHello(h)) = parse_frame(&frame_text(&frame), false) else {
        panic!("the broker does not parse a session_hello a client wrote: {frame:?}");
    };
    assert_eq!(
        ClientFrame::SessionHello(h.clone()),
        frame,
        "a session_hello changed on the wire"
    );
    let att = &h.parent_attestation;
    let well_formed = attester.public() == parent.public()
        && signer.public() == session.public()
        && att.session_pubkey == h.session_pubkey
        && att.parent_member_pubkey == h.parent_member_pubkey
        && input.ttl > 0
        && input.ttl <= limits::MAX_ATTESTATION_TTL_MS
        && skew_ok(input.offset)
        && presence_ok(&h.presence);
    match verify_session_hello(h.clone(), NOW_MS) {
        Ok(v) => assert_session_hello_sound(&h, &v, NOW_MS),
        Err(r) => assert!(!well_formed, "refused a well-formed session_hello: {r:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    let mut u = Unstructured::new(rest);
    match mode % 3 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                raw(text);
            }
        }
        1 => {
            if let Ok(input) = HelloInput::arbitrary_take_rest(u) {
                structured_hello(input);
            }
        }
        _ => {
            if let Ok(input) = SessionInput::arbitrary(&mut u) {
                structured_session(input);
            }
        }
    }
});
