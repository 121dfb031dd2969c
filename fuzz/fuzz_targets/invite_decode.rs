//! `invite_decode`: invite links and `POST /join` bodies, the two ways an invite arrives
//! from outside (a link pasted by a user, a join request from any address).
//!
//! Mode 0 (first byte % 3): the rest is link text for `InvitePayload::from_link`, then
//! `verify`, `check_expiry`, `invite_id`; an accepted invite must pass the oracle and
//! survive a token round trip. Mode 1: the rest is a `POST /join` body, parsed and checked
//! as far as the engine's stateless checks (`fuzzing::join_request`). Mode 2: structured
//! fields from which the target signs an invite; its link must decode to the same payload
//! and verify, and a tampered field must not.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use claudemesh_broker::fuzzing::join_request;
use claudemesh_fuzz::{NOW_S, OWNER, assert_invite_sound, pick, split_mode};
use claudemesh_proto::invite::{InvitePayload, InviteRole};
use libfuzzer_sys::fuzz_target;

fn decoded(p: &InvitePayload) {
    let _ = p.check_expiry(NOW_S);
    let _ = p.invite_id();
    if p.verify().is_ok() {
        assert_invite_sound(p);
    }
    let again =
        InvitePayload::from_token(&p.token()).expect("a decoded invite's token does not decode");
    assert_eq!(&again, p, "an invite changed in a token round trip");
    assert_eq!(InvitePayload::from_link(&p.link()).as_ref(), Ok(p));
}

fn link(text: &str) {
    if let Ok(p) = InvitePayload::from_link(text) {
        decoded(&p);
    }
    if let Ok(p) = InvitePayload::from_token(text) {
        decoded(&p);
    }
}

#[derive(Debug, Arbitrary)]
struct Fields {
    signer: u8,
    mesh_id: String,
    mesh_slug: String,
    broker_url: String,
    expires_at: i64,
    root: Vec<u8>,
    admin: bool,
    /// Change a field after signing: 0 none, 1 slug, 2 expiry, 3 role, 4 owner key.
    tamper: u8,
    /// Wrap the token as `ic://join/…` (0), `https://host/join/…` (1) or bare (2).
    form: u8,
}

fn structured(f: Fields) {
    let role = if f.admin {
        InviteRole::Admin
    } else {
        InviteRole::Member
    };
    let mut p = claudemesh_fuzz::invite(
        pick(f.signer),
        &f.mesh_id,
        &f.mesh_slug,
        &f.broker_url,
        f.expires_at,
        &f.root,
        role,
    );
    let tampered = match f.tamper % 5 {
        1 => {
            p.mesh_slug.push('x');
            true
        }
        2 => {
            p.expires_at = p.expires_at.wrapping_add(1);
            true
        }
        3 => {
            p.role = if f.admin {
                InviteRole::Member
            } else {
                InviteRole::Admin
            };
            true
        }
        4 => {
            let other = if pick(f.signer).public() == OWNER.public() {
                pick(0)
            } else {
                &OWNER
            };
            p.owner_pubkey = other.public().to_hex();
            true
        }
        _ => false,
    };
    let token = p.token();
    let text = match f.form % 3 {
        0 => p.link(),
        1 => format!("https://broker.example/join/{token}"),
        _ => token,
    };
    let back = InvitePayload::from_link(&text).expect("a link we wrote does not decode");
    assert_eq!(back, p, "an invite changed between link and decode");
    assert_eq!(
        back.verify().is_ok(),
        !tampered,
        "tampering not detected, or an honest invite refused"
    );
    assert_eq!(back.check_expiry(NOW_S).is_ok(), NOW_S < back.expires_at);
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                link(text);
            }
        }
        1 => {
            if let Ok((invite, peer, _name)) = join_request(rest) {
                assert_invite_sound(&invite);
                assert_eq!(peer.len(), 64, "a joining key that is not 64 hex");
            }
        }
        _ => {
            if let Ok(f) = Fields::arbitrary_take_rest(Unstructured::new(rest)) {
                structured(f);
            }
        }
    }
});
