//! Golden JSON tests for every frame shape of WIRE-V1, both directions.
//!
//! Each fixture is written the way a v1 TypeScript client/broker puts it on the wire
//! (camelCase, except the snake_case `client_message_id` / `request_fingerprint`). A test
//! parses it into the typed frame, checks field values, serializes it back and requires the
//! result to equal the fixture as a `serde_json::Value` — no field added, dropped or
//! renamed. Larger fixtures live in `tests/golden/*.json`. The parsing rules (unknown
//! `type`s, missing fields, defaults, unknown-field tolerance, `Target::parse`) are guarded
//! in `tests/parsing.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use claudemesh_proto::frames::*;
use claudemesh_proto::{BrokerFrame, ClientFrame};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const ALICE: &str = "d5c76d9662bb010b2814c8a483a7ca9db766851bf559ceb79fd65dbf1ae86cf5";
const BOB: &str = "cd85269136f269fcac4b11651312ce16eb2b0bf4ea93aa1eeeb7e458a9074d7c";
const CAROL_SESSION: &str = "77ffd9fa0fafa7f43f401f253d8b343b964923011a7049d4a6ec070b4dc7e013";
const MESH: &str = "mK3x9Qm2Lr8TzV4nHs7YcB1dPfW6aJ0e";

/// Parse `json`, serialize back, require the exact same JSON value; return the frame.
fn golden<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(json: &str) -> T {
    let frame: T =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("parse failed: {e}\n{json}"));
    let expected: Value = serde_json::from_str(json).unwrap();
    let back = serde_json::to_value(&frame).unwrap();
    assert_eq!(
        back, expected,
        "re-serialized frame differs from the wire JSON"
    );
    let again: T = serde_json::from_str(&serde_json::to_string(&frame).unwrap()).unwrap();
    assert_eq!(again, frame);
    frame
}

fn client(json: &str) -> ClientFrame {
    golden(json)
}

fn broker(json: &str) -> BrokerFrame {
    golden(json)
}

// ---------------------------------------------------------------- client → broker

#[test]
fn hello_minimal() {
    let ClientFrame::Hello(h) = client(include_str!("golden/hello_minimal.json")) else {
        panic!("not a hello")
    };
    assert_eq!(h.mesh_id, MESH);
    assert_eq!(h.member_id, "Zr4tY8uI2oP6aS1dF5gH9jK3lQ7wE0xC");
    assert_eq!(h.pubkey, ALICE);
    assert_eq!(h.session_pubkey, None);
    assert_eq!(h.presence.session_id, "sess-1");
    assert_eq!(h.presence.pid, 4242);
    assert_eq!(h.presence.cwd, "/home/alice/proj");
    assert_eq!(h.presence.display_name, None);
    assert_eq!(h.presence.groups, None);
    assert_eq!(
        h.presence.protocol_version, None,
        "missing protocolVersion means 1"
    );
    assert_eq!(h.presence.capabilities, None);
    assert_eq!(h.timestamp, 1_764_374_400_123);
    assert_eq!(h.signature.len(), 128);
    assert_eq!(h.req_id, None);
}

#[test]
fn hello_with_every_optional_field() {
    let frame = client(include_str!("golden/hello_full.json"));
    assert_eq!(frame.kind(), "hello");
    assert_eq!(frame.req_id(), Some(&ReqId::Str("req-hello-1".into())));
    let ClientFrame::Hello(h) = frame else {
        panic!("not a hello")
    };
    assert_eq!(h.session_pubkey.as_deref(), Some(CAROL_SESSION));
    let p = &h.presence;
    assert_eq!(p.display_name.as_deref(), Some("alice-laptop"));
    assert_eq!(p.hostname.as_deref(), Some("alice-mbp.local"));
    assert_eq!(p.peer_type.as_deref(), Some("ai"));
    assert_eq!(p.channel.as_deref(), Some("claude-code"));
    assert_eq!(p.model.as_deref(), Some("claude-opus-4"));
    assert_eq!(
        p.groups,
        Some(vec![
            GroupRef {
                name: "backend".into(),
                role: Some("lead".into())
            },
            GroupRef {
                name: "reviewers".into(),
                role: None
            },
        ])
    );
    assert_eq!(p.protocol_version, Some(1));
    assert_eq!(
        p.capabilities,
        Some(vec!["e2e-multicast".into(), "list-members".into()])
    );
}

#[test]
fn session_hello_with_parent_attestation() {
    let ClientFrame::SessionHello(s) = client(include_str!("golden/session_hello.json")) else {
        panic!("not a session_hello")
    };
    assert_eq!(s.mesh_id, MESH);
    assert_eq!(s.parent_member_pubkey, ALICE);
    assert_eq!(s.session_pubkey, CAROL_SESSION);
    assert_eq!(s.parent_attestation.session_pubkey, CAROL_SESSION);
    assert_eq!(s.parent_attestation.parent_member_pubkey, ALICE);
    assert_eq!(s.parent_attestation.expires_at, 1_764_417_600_123);
    assert_eq!(s.parent_attestation.signature.len(), 128);
    assert_eq!(
        s.presence.session_id,
        "7f0c2a9e-3b1d-4c55-9e1a-2f6d8b0c4e11"
    );
    assert_eq!(s.presence.pid, 31337);
    assert_eq!(
        s.presence.groups,
        Some(vec![GroupRef {
            name: "backend".into(),
            role: None
        }])
    );
    assert_eq!(s.timestamp, 1_764_374_400_123);
    assert_eq!(s.req_id, None);
}

fn send(json: &str) -> Send {
    match client(json) {
        ClientFrame::Send(s) => s,
        other => panic!("not a send: {other:?}"),
    }
}

#[test]
fn send_direct_with_ids() {
    let s = send(include_str!("golden/send_direct.json"));
    assert_eq!(s.target_spec, BOB);
    assert_eq!(Target::parse(&s.target_spec), Some(Target::Direct(BOB)));
    assert_eq!(s.priority, Priority::Now);
    assert_eq!(s.nonce, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX");
    assert_eq!(s.ciphertext, "q83vEjRWeJCrze8SNFZ4kA==");
    assert_eq!(s.id.as_deref(), Some("m-1"));
    assert_eq!(s.client_message_id.as_deref(), Some("cm-0001"));
    assert_eq!(s.request_fingerprint.as_deref(), Some("fp-9a8b7c"));
    assert_eq!(s.sealed_keys, None);
}

#[test]
fn send_broadcast_star_and_at_all() {
    let s = send(include_str!("golden/send_broadcast_star.json"));
    assert_eq!(s.target_spec, "*");
    assert_eq!(s.priority, Priority::Next);
    assert_eq!(
        (s.id, s.client_message_id, s.request_fingerprint),
        (None, None, None)
    );
    assert_eq!(Target::parse("*"), Some(Target::Broadcast));

    let s = send(include_str!("golden/send_broadcast_all.json"));
    assert_eq!(s.target_spec, "@all");
    assert_eq!(s.priority, Priority::Low);
    assert_eq!(s.id.as_deref(), Some("m-2"));
    assert!(Target::parse(&s.target_spec).unwrap().is_multicast());
}

#[test]
fn send_group() {
    let s = send(include_str!("golden/send_group.json"));
    assert_eq!(
        Target::parse(&s.target_spec),
        Some(Target::Group("backend"))
    );
    assert_eq!(s.client_message_id.as_deref(), Some("cm-0002"));
}

#[test]
fn send_with_sealed_keys_extension() {
    let s = send(include_str!("golden/send_sealed_keys.json"));
    let keys = s.sealed_keys.as_ref().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[BOB], "c2VhbGVkLWtleS1mb3ItYm9i");
    assert_eq!(keys[CAROL_SESSION], "c2VhbGVkLWtleS1mb3ItY2Fyb2w=");
    assert_eq!(s.req_id, Some(ReqId::Str("req-send-3".into())));
}

#[test]
fn client_ack_by_either_id() {
    let ClientFrame::ClientAck(a) = client(r#"{"type":"client_ack","clientMessageId":"cm-0001"}"#)
    else {
        panic!("not a client_ack")
    };
    assert_eq!(a.client_message_id.as_deref(), Some("cm-0001"));
    assert_eq!(a.broker_message_id, None);

    let ClientFrame::ClientAck(a) =
        client(r#"{"type":"client_ack","brokerMessageId":"msg_01HZY"}"#)
    else {
        panic!("not a client_ack")
    };
    assert_eq!(a.client_message_id, None);
    assert_eq!(a.broker_message_id.as_deref(), Some("msg_01HZY"));
}

#[test]
fn list_peers_with_and_without_req_id() {
    let f = client(r#"{"type":"list_peers"}"#);
    assert_eq!(f, ClientFrame::ListPeers(Request { req_id: None }));
    let f = client(r#"{"type":"list_peers","_reqId":"r-17"}"#);
    assert_eq!(f.req_id(), Some(&ReqId::Str("r-17".into())));
    let f = client(r#"{"type":"list_peers","_reqId":17}"#);
    assert_eq!(
        f,
        ClientFrame::ListPeers(Request {
            req_id: Some(ReqId::Num(17))
        })
    );
    // A numeric id is echoed as a number, a numeric-looking string as a string.
    let f = client(r#"{"type":"list_peers","_reqId":"17"}"#);
    assert_eq!(f.req_id(), Some(&ReqId::Str("17".into())));
}

#[test]
fn set_status_each_value() {
    for (text, status) in [
        ("idle", Status::Idle),
        ("working", Status::Working),
        ("dnd", Status::Dnd),
    ] {
        let json = format!(r#"{{"type":"set_status","status":"{text}"}}"#);
        assert_eq!(
            client(&json),
            ClientFrame::SetStatus(SetStatus {
                status,
                req_id: None
            })
        );
        assert_eq!(status.as_str(), text);
    }
}

#[test]
fn set_summary_string_and_null() {
    let f = client(r#"{"type":"set_summary","summary":"reviewing PR #12 — ünïcødé"}"#);
    let ClientFrame::SetSummary(s) = f else {
        panic!("not a set_summary")
    };
    assert_eq!(s.summary.as_deref(), Some("reviewing PR #12 — ünïcødé"));

    // `null` clears, and must go back out as an explicit null.
    let f = client(r#"{"type":"set_summary","summary":null}"#);
    assert_eq!(
        f,
        ClientFrame::SetSummary(SetSummary {
            summary: None,
            req_id: None
        })
    );
}

#[test]
fn join_leave_group_and_list_members() {
    let f = client(r#"{"type":"join_group","name":"backend","role":"lead"}"#);
    let ClientFrame::JoinGroup(j) = f else {
        panic!("not a join_group")
    };
    assert_eq!(
        (j.name.as_str(), j.role.as_deref()),
        ("backend", Some("lead"))
    );

    let f = client(r#"{"type":"join_group","name":"reviewers"}"#);
    let ClientFrame::JoinGroup(j) = f else {
        panic!("not a join_group")
    };
    assert_eq!((j.name.as_str(), j.role), ("reviewers", None));

    let f = client(r#"{"type":"leave_group","name":"backend"}"#);
    assert_eq!(
        f,
        ClientFrame::LeaveGroup(LeaveGroup {
            name: "backend".into(),
            req_id: None
        })
    );

    let f = client(r#"{"type":"list_members","_reqId":"m-1"}"#);
    assert_eq!(f.kind(), "list_members");
    assert_eq!(
        f,
        ClientFrame::ListMembers(Request {
            req_id: Some(ReqId::Str("m-1".into()))
        })
    );
}

// ---------------------------------------------------------------- broker → client

#[test]
fn hello_ack_plain_and_with_restore_fields() {
    let BrokerFrame::HelloAck(a) = broker(include_str!("golden/hello_ack.json")) else {
        panic!("not a hello_ack")
    };
    assert_eq!(a.presence_id, "pr_01HZX");
    assert_eq!(a.member_display_name, "alice");
    assert_eq!(a.protocol_version, 1);
    assert_eq!(a.capabilities.len(), 5);
    assert_eq!(
        (a.member_id, a.status, a.summary, a.groups),
        (None, None, None, None)
    );

    let BrokerFrame::HelloAck(a) = broker(include_str!("golden/hello_ack_restore.json")) else {
        panic!("not a hello_ack")
    };
    assert!(a.capabilities.is_empty());
    assert_eq!(a.member_role.as_deref(), Some("owner"));
    assert_eq!(a.status, Some(Status::Working));
    assert_eq!(a.summary.as_deref(), Some("refactoring the router"));
    assert_eq!(a.req_id, Some(ReqId::Str("req-hello-1".into())));
}

#[test]
fn ack_queued_and_refused() {
    let BrokerFrame::Ack(a) = broker(include_str!("golden/ack_queued.json")) else {
        panic!("not an ack")
    };
    assert_eq!(
        (a.id.as_str(), a.message_id.as_str(), a.queued),
        ("m-1", "msg_01HZY", true)
    );
    assert_eq!(a.error, None);

    let BrokerFrame::Ack(a) = broker(include_str!("golden/ack_refused.json")) else {
        panic!("not an ack")
    };
    assert!(!a.queued);
    assert_eq!(a.message_id, "");
    assert_eq!(a.error.as_deref(), Some("rate limit exceeded"));
}

#[test]
fn push_direct() {
    let BrokerFrame::Push(p) = broker(include_str!("golden/push_direct.json")) else {
        panic!("not a push")
    };
    assert_eq!(p.message_id, "msg_01HZY");
    assert_eq!(p.mesh_id, MESH);
    assert_eq!(p.sender_pubkey, CAROL_SESSION);
    assert_eq!(p.priority, Priority::Now);
    assert_eq!(p.created_at, "2025-11-29T00:00:00.123Z");
    assert_eq!(p.client_message_id.as_deref(), Some("cm-0001"));
    assert_eq!(
        (p.sender_member_pubkey, p.sender_name, p.subtype),
        (None, None, None)
    );
}

#[test]
fn push_multicast() {
    let BrokerFrame::Push(p) = broker(include_str!("golden/push_multicast.json")) else {
        panic!("not a push")
    };
    assert_eq!(p.sender_member_pubkey.as_deref(), Some(ALICE));
    assert_eq!(p.sender_name.as_deref(), Some("alice"));
    assert_eq!(p.client_message_id, None);
}

#[test]
fn push_system_peer_joined() {
    let BrokerFrame::Push(p) = broker(include_str!("golden/push_system.json")) else {
        panic!("not a push")
    };
    assert_eq!(p.subtype.as_deref(), Some("system"));
    assert_eq!(p.event.as_deref(), Some(event::PEER_JOINED));
    assert_eq!(p.sender_pubkey, "system");
    assert_eq!((p.nonce.as_str(), p.ciphertext.as_str()), ("", ""));
    assert_eq!(p.priority, Priority::Low);
    let data = p.event_data.unwrap();
    assert_eq!((data.name.as_str(), data.pubkey.as_str()), ("bob", BOB));
    assert_eq!(data.groups.unwrap()[0].role.as_deref(), Some("member"));
}

#[test]
fn peers_list_summary_null_is_serialized() {
    let BrokerFrame::PeersList(l) = broker(include_str!("golden/peers_list.json")) else {
        panic!("not a peers_list")
    };
    assert_eq!(l.req_id, Some(ReqId::Str("req-peers-1".into())));
    let [a, c] = &l.peers[..] else {
        panic!("expected two peers")
    };
    assert_eq!(a.summary, None);
    assert_eq!(
        (a.role.as_str(), a.peer_role.as_str()),
        ("control-plane", "control-plane")
    );
    assert_eq!(a.hostname, None);
    assert_eq!(c.pubkey, CAROL_SESSION);
    assert_eq!(c.member_pubkey, ALICE);
    assert_eq!(c.status, Status::Working);
    assert_eq!(c.summary.as_deref(), Some("refactoring the router"));
    assert_eq!(c.peer_type.as_deref(), Some("ai"));

    // Built in Rust, an unset summary still goes out as an explicit `null`.
    let v = serde_json::to_value(a).unwrap();
    assert_eq!(v.get("summary"), Some(&Value::Null));
}

#[test]
fn error_with_and_without_ids() {
    let BrokerFrame::Error(e) = broker(include_str!("golden/error_minimal.json")) else {
        panic!("not an error")
    };
    assert_eq!(e, ErrorFrame::new("no_hello", "send hello first"));

    let BrokerFrame::Error(e) = broker(include_str!("golden/error_full.json")) else {
        panic!("not an error")
    };
    assert_eq!(e.code, "unknown_recipient");
    assert_eq!(e.id.as_deref(), Some("m-7"));
    assert_eq!(e.req_id, Some(ReqId::Num(42)));
}

#[test]
fn members_list() {
    let BrokerFrame::MembersList(m) = broker(include_str!("golden/members_list.json")) else {
        panic!("not a members_list")
    };
    assert_eq!(m.req_id, Some(ReqId::Str("req-members-1".into())));
    let [owner, session] = &m.members[..] else {
        panic!("expected two members")
    };
    assert_eq!(
        (owner.kind.as_str(), owner.online, owner.e2e_multicast),
        ("member", true, true)
    );
    assert_eq!((session.kind.as_str(), session.online), ("session", false));
    assert_eq!(session.member_pubkey, ALICE);
}

#[test]
fn message_status_request_and_reply() {
    let f = client(
        r#"{"type":"message_status","messageId":"9f1c2b7a4d3e5f60718293a4b5c6d7e8","_reqId":"st-1"}"#,
    );
    assert_eq!(f.kind(), "message_status");
    assert_eq!(f.req_id(), Some(&ReqId::Str("st-1".into())));
    let BrokerFrame::MessageStatus(m) = broker(include_str!("golden/message_status.json")) else {
        panic!("not a message_status")
    };
    assert_eq!(m.target_spec, "@backend");
    let states: Vec<DeliveryState> = m.recipients.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [
            DeliveryState::Acked,
            DeliveryState::Delivered,
            DeliveryState::Queued
        ]
    );
    assert_eq!(m.recipients[0].display_name.as_deref(), Some(BOB_NAME));
    assert_eq!(m.recipients[1].pubkey, CAROL_SESSION);
    assert_eq!(m.recipients[2].pubkey, ALICE);
    assert!(m.recipients[2].display_name.is_none());
}

const BOB_NAME: &str = "bob";
