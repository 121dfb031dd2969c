//! `signed_request`: the signed admin API's checks (`http/signed.rs`: body parsing, each
//! route's stateless checks, clock skew, the signature over the admin canonical string)
//! and the source-address headers the per-address limits read (`X-Forwarded-For`,
//! `Forwarded`).
//!
//! Mode 0 (first byte % 2): a request as text. The second byte picks the route (% 6),
//! `--trust-proxy` (bit 3) and the creation policy (bits 4-5: open, closed, token
//! `letmein`); then header lines `name: value` up to an empty line, where the pseudo
//! headers `:mesh_id`, `:invite_id` and `:member_id` are the path parameters; the rest is
//! the body. Mode 1: structured fields from which the target builds and signs a body for
//! the route (signer, clock offset, arguments, tampering chosen by the fuzzer). Every
//! accepted request must pass the oracle; a well-formed, correctly signed one must pass.

#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use arbitrary::{Arbitrary, Unstructured};
use claudemesh_broker::fuzzing::{AdminRoute, admin_request, source_address};
use claudemesh_broker::{BrokerConfig, MeshCreation};
use claudemesh_fuzz::{NOW_MS, action, admin_signed, assert_admin_sound, pick, split_mode};
use claudemesh_proto::http::{
    CreateMeshRequest, RegisterInviteRequest, RemoveMemberRequest, RemoveMode, valid_name,
    valid_slug,
};
use claudemesh_proto::invite::InviteRole;
use claudemesh_proto::limits;
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "letmein";

fn config(policy: u8, trust_proxy: bool) -> BrokerConfig {
    let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let mut config = BrokerConfig::new(listen, std::env::temp_dir());
    config.mesh_creation = match policy % 3 {
        0 => MeshCreation::Open,
        1 => MeshCreation::Closed,
        _ => MeshCreation::Token(TOKEN.to_owned()),
    };
    config.trust_proxy = trust_proxy;
    config
}

fn route(byte: u8) -> AdminRoute {
    AdminRoute::ALL[usize::from(byte) % AdminRoute::ALL.len()]
}

fn raw(rest: &[u8]) {
    let Some((&flags, rest)) = rest.split_first() else {
        return;
    };
    let route = route(flags & 0x07);
    let trust_proxy = flags & 0x08 != 0;
    let config = config(flags >> 4, trust_proxy);
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (&[][..], rest),
    };
    let mut headers = Vec::new();
    let mut path = HashMap::new();
    for line in head.split(|&b| b == b'\n') {
        let (name, value) = match line.iter().skip(1).position(|&b| b == b':') {
            Some(i) => (&line[..=i], &line[i + 2..]),
            None => (line, &[][..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match name.strip_prefix(b":") {
            Some(param) => {
                path.insert(
                    String::from_utf8_lossy(param).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                );
            }
            None => headers.push((name, value)),
        }
    }
    let _ = source_address(&headers, trust_proxy);
    if admin_request(route, path.clone(), body, &config, NOW_MS).is_ok() {
        assert_admin_sound(route, &path, body, NOW_MS);
    }
}

#[derive(Debug, Arbitrary)]
struct Fields {
    route: u8,
    policy: u8,
    signer: u8,
    /// Milliseconds between the request's timestamp and the broker clock.
    offset: i32,
    mesh_id: String,
    invite_id: String,
    member_id: String,
    slug: String,
    name: String,
    owner_display_name: Option<String>,
    creation_token: Option<String>,
    invite_signer: u8,
    invite_expires_at: i64,
    max_uses: u32,
    revoke: bool,
    /// Sign other arguments than the body carries (0 honest, else one changed).
    tamper: u8,
}

fn structured(f: Fields) {
    let route = route(f.route);
    let config = config(f.policy, false);
    let signer = pick(f.signer);
    let timestamp = NOW_MS + i64::from(f.offset);
    let mesh_id = if route == AdminRoute::CreateMesh {
        String::new()
    } else {
        f.mesh_id.clone()
    };
    let mut path = HashMap::new();
    if route != AdminRoute::CreateMesh {
        path.insert("mesh_id".to_owned(), mesh_id.clone());
    }
    if route == AdminRoute::RevokeInvite {
        path.insert("invite_id".to_owned(), f.invite_id.clone());
    }
    if route == AdminRoute::RemoveMember {
        path.insert("member_id".to_owned(), f.member_id.clone());
    }
    let mode = if f.revoke {
        RemoveMode::Revoke
    } else {
        RemoveMode::Kick
    };
    let invite = claudemesh_fuzz::invite(
        pick(f.invite_signer),
        &mesh_id,
        &f.slug,
        "wss://broker.example/ws",
        f.invite_expires_at,
        &[7; 32],
        InviteRole::Member,
    );
    let args: Vec<String> = match route {
        AdminRoute::CreateMesh => vec![f.slug.clone(), f.name.clone()],
        AdminRoute::RegisterInvite => vec![invite.invite_id(), f.max_uses.to_string()],
        AdminRoute::ListInvites | AdminRoute::ListMembers | AdminRoute::DashboardLogin => vec![],
        AdminRoute::RevokeInvite => vec![f.invite_id.clone()],
        AdminRoute::RemoveMember => vec![f.member_id.clone(), mode.as_str().to_owned()],
    };
    let mut signed_args = args.clone();
    let tampered = !f.tamper.is_multiple_of(4);
    if tampered {
        // A changed argument, or one more (an empty one would not change the string).
        match signed_args.first_mut() {
            Some(a) => a.push('x'),
            None => signed_args.push("x".to_owned()),
        }
    }
    let signed_args_ref: Vec<&str> = signed_args.iter().map(String::as_str).collect();
    let signed = admin_signed(signer, action(route), &mesh_id, timestamp, &signed_args_ref);
    let body = match route {
        AdminRoute::CreateMesh => serde_json::to_vec(&CreateMeshRequest {
            name: f.name.clone(),
            slug: f.slug.clone(),
            owner_display_name: f.owner_display_name.clone(),
            creation_token: f.creation_token.clone(),
            signed,
        }),
        AdminRoute::RegisterInvite => serde_json::to_vec(&RegisterInviteRequest {
            invite,
            max_uses: f.max_uses,
            signed,
        }),
        AdminRoute::RemoveMember => serde_json::to_vec(&RemoveMemberRequest { mode, signed }),
        _ => serde_json::to_vec(&signed),
    }
    .unwrap();
    let checks_pass = match route {
        AdminRoute::CreateMesh => {
            let allowed = match &config.mesh_creation {
                MeshCreation::Open => true,
                MeshCreation::Closed => false,
                MeshCreation::Token(t) => f.creation_token.as_deref() == Some(t.as_str()),
            };
            // PROTOCOL §10 pre-checks of `create_mesh`; the slug and name rules are proto's.
            allowed
                && valid_slug(&f.slug)
                && valid_name(&f.name)
                && f.owner_display_name.as_deref().is_none_or(valid_name)
        }
        // The invite is signed by a reference identity, so it verifies.
        _ => true,
    };
    let well_formed =
        !tampered && checks_pass && i64::from(f.offset).abs() <= limits::MAX_CLOCK_SKEW_MS;
    match admin_request(route, path.clone(), &body, &config, NOW_MS) {
        Ok(()) => {
            assert!(!tampered, "accepted a request signed over other arguments");
            assert_admin_sound(route, &path, &body, NOW_MS);
        }
        Err(r) => assert!(
            !well_formed,
            "refused a well-formed {route:?} request: {r:?}"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    if mode % 2 == 0 {
        raw(rest);
    } else if let Ok(f) = Fields::arbitrary_take_rest(Unstructured::new(rest)) {
        structured(f);
    }
});
