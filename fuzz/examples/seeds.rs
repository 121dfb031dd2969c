//! Writes the committed seed corpora, `fuzz/corpus/<target>/seed-*`, and proves each
//! "valid" seed is accepted by the real code, so no target starts stuck at parsing or at
//! a signature check. Every seed is deterministic (fixed keys, nonces and clock), so
//! `--check` regenerates them in memory and fails when a committed file differs or a
//! valid seed stops verifying (a protocol change that left the corpus behind).
//!
//! `cargo +nightly run --manifest-path fuzz/Cargo.toml --example seeds [-- --check]`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use claudemesh_broker::fuzzing::{
    AdminRoute, admin_request, join_request, parse_frame, source_address, verify_hello,
    verify_session_hello,
};
use claudemesh_broker::{BrokerConfig, MeshCreation};
use claudemesh_client::envelope::{Envelope, Incoming, Opened, open};
use claudemesh_fuzz::{
    ALICE, BOB, CAROL_SESSION, MEMBER_ID, MESH, NOW_MS, NOW_S, OWNER, action, admin_signed,
    envelope_json, frame_text, seal_direct, seal_multicast,
};
use claudemesh_proto::frames::{
    BrokerFrame, ClientAck, ClientFrame, JoinGroup, LeaveGroup, MessageStatusRequest, PresenceInfo,
    Reach, ReqId, Request, RetireSessions, SetReach, SetStatus, SetSummary, Status,
};
use claudemesh_proto::http::{
    CreateMeshRequest, JoinRequest, RegisterInviteRequest, RemoveMemberRequest, RemoveMode,
};
use claudemesh_proto::invite::InvitePayload;
use serde_json::{Value, json};

/// One seed: target, name (after `seed-`), bytes.
struct Seed {
    target: &'static str,
    name: String,
    bytes: Vec<u8>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn vectors() -> Value {
    let path = root().join("../testdata/libsodium-v1.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn presence() -> PresenceInfo {
    PresenceInfo {
        display_name: Some("alice".into()),
        session_id: "s-1".into(),
        pid: 4242,
        cwd: "/home/alice/project".into(),
        hostname: Some("laptop".into()),
        peer_type: Some("ai".into()),
        groups: Some(vec![claudemesh_proto::frames::GroupRef {
            name: "backend".into(),
            role: Some("lead".into()),
        }]),
        protocol_version: Some(1),
        capabilities: Some(vec!["e2e-multicast".into()]),
        ..PresenceInfo::default()
    }
}

fn with_mode(mode: u8, text: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(text);
    v
}

/// A direct envelope from alice to bob, as a push's fields.
fn direct_push() -> Value {
    let env = Envelope {
        v: 1,
        from: ALICE.public().to_hex(),
        to: BOB.public().to_hex(),
        mesh: MESH.into(),
        id: "c-1".into(),
        ts: NOW_MS,
        body: "hello bob".into(),
        depth: 1,
    };
    let (nonce, ciphertext) = seal_direct(&ALICE, &BOB.public(), &[1; 24], &envelope_json(&env));
    json!({
        "senderPubkey": ALICE.public().to_hex(), "meshId": MESH,
        "targetSpec": BOB.public().to_hex(), "nonce": nonce, "ciphertext": ciphertext,
    })
}

/// A multicast to `@backend` from alice, with bob's sealed key.
fn multicast_push() -> Value {
    let env = Envelope {
        v: 1,
        from: ALICE.public().to_hex(),
        to: "@backend".into(),
        mesh: MESH.into(),
        id: "c-2".into(),
        ts: NOW_MS,
        body: "hello team".into(),
        depth: 0,
    };
    let key = [9; 32];
    let (nonce, ciphertext, sealed_key) = seal_multicast(
        &ALICE,
        &BOB.public(),
        &key,
        &key,
        &[2; 24],
        &[3; 24],
        &envelope_json(&env),
    );
    json!({
        "senderPubkey": ALICE.public().to_hex(), "meshId": MESH, "targetSpec": "@backend",
        "nonce": nonce, "ciphertext": ciphertext, "sealedKey": sealed_key,
    })
}

fn push_frame(fields: &Value, id: &str) -> Value {
    let mut frame = fields.clone();
    let extra = json!({
        "type": "push", "messageId": id, "priority": "next",
        "createdAt": "2025-11-29T00:00:00.123Z", "client_message_id": "c-1",
    });
    for (k, v) in extra.as_object().unwrap() {
        frame[k] = v.clone();
    }
    frame
}

fn frame_seeds(seeds: &mut Vec<Seed>) {
    let golden = root().join("../crates/proto/tests/golden");
    let mut files: Vec<_> = std::fs::read_dir(golden)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read(&file).unwrap();
        seeds.push(Seed {
            target: "frame_parse",
            name: format!("golden-{stem}"),
            bytes: text,
        });
    }
    let req = Some(ReqId::Str("r1".into()));
    let frames: Vec<(&str, ClientFrame)> = vec![
        (
            "client-ack",
            ClientFrame::ClientAck(ClientAck {
                client_message_id: Some("c-1".into()),
                broker_message_id: None,
                req_id: None,
            }),
        ),
        (
            "list-peers",
            ClientFrame::ListPeers(Request {
                req_id: req.clone(),
            }),
        ),
        (
            "list-members",
            ClientFrame::ListMembers(Request {
                req_id: Some(ReqId::Num(7)),
            }),
        ),
        (
            "set-status",
            ClientFrame::SetStatus(SetStatus {
                status: Status::Working,
                req_id: None,
            }),
        ),
        (
            "set-summary",
            ClientFrame::SetSummary(SetSummary {
                summary: Some("fixing the build".into()),
                req_id: None,
            }),
        ),
        (
            "join-group",
            ClientFrame::JoinGroup(JoinGroup {
                name: "backend".into(),
                role: Some("lead".into()),
                req_id: None,
            }),
        ),
        (
            "leave-group",
            ClientFrame::LeaveGroup(LeaveGroup {
                name: "backend".into(),
                req_id: None,
            }),
        ),
        (
            "message-status",
            ClientFrame::MessageStatus(MessageStatusRequest {
                message_id: "m-1".into(),
                req_id: req.clone(),
            }),
        ),
        (
            "set-reach",
            ClientFrame::SetReach(SetReach {
                reach: Reach::NextPrompt,
                req_id: None,
            }),
        ),
        (
            "retire-sessions",
            ClientFrame::RetireSessions(RetireSessions {
                pubkeys: vec![CAROL_SESSION.public().to_hex()],
                req_id: req,
            }),
        ),
        (
            "hello",
            ClientFrame::Hello(claudemesh_fuzz::hello(
                &ALICE,
                MESH,
                MEMBER_ID,
                NOW_MS,
                None,
                presence(),
            )),
        ),
    ];
    for (name, frame) in frames {
        let text = frame_text(&frame);
        assert_eq!(parse_frame(&text, true).ok(), Some(frame), "{name}");
        seeds.push(Seed {
            target: "frame_parse",
            name: name.into(),
            bytes: text.into_bytes(),
        });
    }
    let unknown = r#"{"type":"future_frame","_reqId":"r9"}"#;
    assert!(parse_frame(unknown, true).is_err() && parse_frame(unknown, false).is_ok());
    seeds.push(Seed {
        target: "frame_parse",
        name: "unknown-type".into(),
        bytes: unknown.into(),
    });
    for (name, fields) in [
        ("push-direct-sealed", direct_push()),
        ("push-multicast-sealed", multicast_push()),
    ] {
        let text = push_frame(&fields, "m-1").to_string();
        let Ok(BrokerFrame::Push(push)) = serde_json::from_str(&text) else {
            panic!("{name}")
        };
        assert!(
            matches!(open(&BOB, &Incoming::from(&push)), Opened::Verified(_)),
            "{name}"
        );
        seeds.push(Seed {
            target: "frame_parse",
            name: name.into(),
            bytes: text.into_bytes(),
        });
    }
}

fn hello_seeds(seeds: &mut Vec<Seed>) {
    let vector = &vectors()["signatures"][0];
    let h = claudemesh_fuzz::hello(&ALICE, MESH, MEMBER_ID, NOW_MS, None, presence());
    let canonical = claudemesh_proto::canonical::hello(MESH, MEMBER_ID, &h.pubkey, NOW_MS);
    assert_eq!(
        vector["canonical"],
        canonical.as_str(),
        "the fixed clock is the vector's"
    );
    assert_eq!(
        vector["signature_hex"],
        h.signature.as_str(),
        "the builder signs like the vector"
    );
    let with_session = claudemesh_fuzz::hello(
        &ALICE,
        MESH,
        MEMBER_ID,
        NOW_MS - 30_000,
        Some(CAROL_SESSION.public().to_hex()),
        PresenceInfo::default(),
    );
    for (name, h) in [("hello", h), ("hello-session-key", with_session)] {
        assert!(verify_hello(h.clone(), NOW_MS).is_ok(), "{name}");
        let text = frame_text(&ClientFrame::Hello(h));
        seeds.push(Seed {
            target: "hello_verify",
            name: name.into(),
            bytes: with_mode(0, text.as_bytes()),
        });
    }
    let sh = claudemesh_fuzz::session_hello(
        &ALICE,
        &CAROL_SESSION,
        MESH,
        MEMBER_ID,
        NOW_MS,
        NOW_MS + 3_600_000,
        presence(),
    );
    assert!(verify_session_hello(sh.clone(), NOW_MS).is_ok());
    let text = frame_text(&ClientFrame::SessionHello(sh));
    seeds.push(Seed {
        target: "hello_verify",
        name: "session-hello".into(),
        bytes: with_mode(0, text.as_bytes()),
    });
    // Structured modes: all-zero fields are alice signing an empty, current hello.
    seeds.push(Seed {
        target: "hello_verify",
        name: "structured-hello".into(),
        bytes: with_mode(1, &[0; 64]),
    });
    seeds.push(Seed {
        target: "hello_verify",
        name: "structured-session".into(),
        bytes: with_mode(2, &[0; 128]),
    });
}

fn invite_seeds(seeds: &mut Vec<Seed>) {
    let vector = &vectors()["invite_v1"][0];
    let url = vector["url"].as_str().unwrap();
    let token = vector["token_b64url"].as_str().unwrap();
    let invite = InvitePayload::from_link(url).unwrap();
    assert!(invite.verify().is_ok() && invite.check_expiry(NOW_S).is_ok());
    let https = format!("https://broker.example/join/{token}?utm=x#frag");
    for (name, text) in [
        ("vector-link", url.to_owned()),
        ("vector-https", https),
        ("vector-token", token.to_owned()),
    ] {
        assert_eq!(
            InvitePayload::from_link(&text).as_ref(),
            Ok(&invite),
            "{name}"
        );
        seeds.push(Seed {
            target: "invite_decode",
            name: name.into(),
            bytes: with_mode(0, text.as_bytes()),
        });
    }
    let by_token = JoinRequest {
        invite_token: Some(url.to_owned()),
        invite_payload: None,
        peer_pubkey: BOB.public().to_hex(),
        display_name: Some("bob".into()),
    };
    let by_payload = JoinRequest {
        invite_token: None,
        invite_payload: Some(invite),
        peer_pubkey: ALICE.public().to_hex(),
        display_name: None,
    };
    for (name, req) in [("join-token", by_token), ("join-payload", by_payload)] {
        let body = serde_json::to_vec(&req).unwrap();
        let verdict = join_request(&body);
        assert!(verdict.is_ok(), "{name}: {verdict:?}");
        seeds.push(Seed {
            target: "invite_decode",
            name: name.into(),
            bytes: with_mode(1, &body),
        });
    }
    seeds.push(Seed {
        target: "invite_decode",
        name: "structured".into(),
        bytes: with_mode(2, &[0; 64]),
    });
}

fn envelope_seeds(seeds: &mut Vec<Seed>) {
    for (name, fields) in [("direct", direct_push()), ("multicast", multicast_push())] {
        let field = |k: &str| fields.get(k).and_then(Value::as_str);
        let incoming = Incoming {
            sender_pubkey: field("senderPubkey").unwrap(),
            mesh_id: field("meshId").unwrap(),
            target_spec: field("targetSpec"),
            nonce: field("nonce").unwrap(),
            ciphertext: field("ciphertext").unwrap(),
            sealed_key: field("sealedKey"),
        };
        assert!(
            matches!(open(&BOB, &incoming), Opened::Verified(_)),
            "{name}"
        );
        seeds.push(Seed {
            target: "envelope_open",
            name: name.into(),
            bytes: with_mode(0, fields.to_string().as_bytes()),
        });
    }
    let legacy = json!({"senderPubkey": ALICE.public().to_hex(), "meshId": MESH, "targetSpec": "*",
        "nonce": "", "ciphertext": "aGVsbG8gZXZlcnlvbmU="});
    seeds.push(Seed {
        target: "envelope_open",
        name: "v1-plaintext-broadcast".into(),
        bytes: with_mode(0, legacy.to_string().as_bytes()),
    });
    seeds.push(Seed {
        target: "envelope_open",
        name: "structured-direct".into(),
        bytes: with_mode(1, &[0; 160]),
    });
    seeds.push(Seed {
        target: "envelope_open",
        name: "structured-multicast".into(),
        bytes: with_mode(2, &[0; 160]),
    });
}

/// One admin request in the target's text form: flags byte, headers, blank line, body.
fn request(
    route: AdminRoute,
    flags: u8,
    path: &[(&str, &str)],
    headers: &str,
    body: &[u8],
) -> Vec<u8> {
    let index = AdminRoute::ALL.iter().position(|r| *r == route).unwrap() as u8;
    let mut head = String::new();
    for (k, v) in path {
        head.push_str(&format!(":{k}: {v}\n"));
    }
    head.push_str(headers);
    let mut bytes = vec![0, index | flags];
    bytes.extend_from_slice(head.trim_end_matches('\n').as_bytes());
    bytes.extend_from_slice(b"\n\n");
    bytes.extend_from_slice(body);
    bytes
}

/// Seed name, route, path parameters, body.
type AdminCase<'a> = (&'a str, AdminRoute, Vec<(&'a str, &'a str)>, Vec<u8>);

fn admin_seeds(seeds: &mut Vec<Seed>) {
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let config = BrokerConfig::new(listen, std::env::temp_dir());
    assert!(matches!(config.mesh_creation, MeshCreation::Open));
    let invite =
        InvitePayload::from_link(vectors()["invite_v1"][0]["url"].as_str().unwrap()).unwrap();
    let sign = |route, mesh_id: &str, args: &[&str]| {
        admin_signed(&OWNER, action(route), mesh_id, NOW_MS - 1_000, args)
    };
    let invite_id = invite.invite_id();
    let cases: Vec<AdminCase<'_>> = vec![
        (
            "create-mesh",
            AdminRoute::CreateMesh,
            vec![],
            serde_json::to_vec(&CreateMeshRequest {
                name: "Acme payments".into(),
                slug: "acme-payments".into(),
                owner_display_name: Some("owner".into()),
                creation_token: None,
                signed: sign(
                    AdminRoute::CreateMesh,
                    "",
                    &["acme-payments", "Acme payments"],
                ),
            })
            .unwrap(),
        ),
        (
            "register-invite",
            AdminRoute::RegisterInvite,
            vec![("mesh_id", MESH)],
            serde_json::to_vec(&RegisterInviteRequest {
                invite: invite.clone(),
                max_uses: 5,
                signed: sign(AdminRoute::RegisterInvite, MESH, &[&invite_id, "5"]),
            })
            .unwrap(),
        ),
        (
            "list-invites",
            AdminRoute::ListInvites,
            vec![("mesh_id", MESH)],
            serde_json::to_vec(&sign(AdminRoute::ListInvites, MESH, &[])).unwrap(),
        ),
        (
            "revoke-invite",
            AdminRoute::RevokeInvite,
            vec![("mesh_id", MESH), ("invite_id", &invite_id)],
            serde_json::to_vec(&sign(AdminRoute::RevokeInvite, MESH, &[&invite_id])).unwrap(),
        ),
        (
            "list-members",
            AdminRoute::ListMembers,
            vec![("mesh_id", MESH)],
            serde_json::to_vec(&sign(AdminRoute::ListMembers, MESH, &[])).unwrap(),
        ),
        (
            "dashboard-login",
            AdminRoute::DashboardLogin,
            vec![("mesh_id", MESH)],
            serde_json::to_vec(&sign(AdminRoute::DashboardLogin, MESH, &[])).unwrap(),
        ),
        (
            "remove-member",
            AdminRoute::RemoveMember,
            vec![("mesh_id", MESH), ("member_id", MEMBER_ID)],
            serde_json::to_vec(&RemoveMemberRequest {
                mode: RemoveMode::Revoke,
                signed: sign(AdminRoute::RemoveMember, MESH, &[MEMBER_ID, "revoke"]),
            })
            .unwrap(),
        ),
    ];
    let proxy_headers = "x-forwarded-for: 10.0.0.1, 203.0.113.7\nforwarded: for=\"[2001:db8::1]:443\";proto=https\n";
    for (name, route, path, body) in cases {
        let ids: HashMap<String, String> = path
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let verdict = admin_request(route, ids, &body, &config, NOW_MS);
        assert!(verdict.is_ok(), "{name}: {verdict:?}");
        let flags = if route == AdminRoute::CreateMesh {
            0x08
        } else {
            0
        };
        let headers = if flags != 0 {
            proxy_headers
        } else {
            "content-type: application/json\n"
        };
        seeds.push(Seed {
            target: "signed_request",
            name: name.into(),
            bytes: request(route, flags, &path, headers, &body),
        });
    }
    let pairs: Vec<(&[u8], &[u8])> = proxy_headers
        .lines()
        .map(|l| l.split_once(": ").unwrap())
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    assert_eq!(source_address(&pairs, true), "203.0.113.7".parse().ok());
    seeds.push(Seed {
        target: "signed_request",
        name: "structured".into(),
        bytes: with_mode(1, &[0; 96]),
    });
}

fn main() {
    let check = std::env::args().any(|a| a == "--check");
    let mut seeds = Vec::new();
    frame_seeds(&mut seeds);
    hello_seeds(&mut seeds);
    invite_seeds(&mut seeds);
    envelope_seeds(&mut seeds);
    admin_seeds(&mut seeds);
    let mut counts = BTreeMap::new();
    let mut stale = Vec::new();
    for seed in &seeds {
        let dir = root().join("corpus").join(seed.target);
        let path = dir.join(format!("seed-{}", seed.name));
        *counts.entry(seed.target).or_insert(0) += 1;
        if check {
            if std::fs::read(&path).ok().as_deref() != Some(seed.bytes.as_slice()) {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &seed.bytes).unwrap();
        }
    }
    for (target, n) in &counts {
        println!("{target}: {n} seeds, the valid ones accepted by the real code");
    }
    if !stale.is_empty() {
        eprintln!(
            "stale or missing seeds (regenerate with the seeds example):\n  {}",
            stale.join("\n  ")
        );
        std::process::exit(1);
    }
}
