//! Parsing rules of the typed frames (WIRE-V1 §Transport, §Frames): an unknown `type`
//! parses as `ClientFrame::Unknown` (so the broker can answer `unknown_message_type`), a
//! frame missing a required field or with an invalid enum value fails, `send.priority`
//! defaults to `next`, unknown and `null` optional fields are tolerated (forward
//! compatibility), and `Target::parse` accepts exactly the v1 `targetSpec` forms.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use claudemesh_proto::frames::*;
use claudemesh_proto::{BrokerFrame, ClientFrame};
use serde_json::Value;

const ALICE: &str = "d5c76d9662bb010b2814c8a483a7ca9db766851bf559ceb79fd65dbf1ae86cf5";

#[test]
fn unknown_type_parses_as_unknown() {
    for json in [
        r#"{"type":"subscribe"}"#,
        r#"{"type":"subscribe","_reqId":"x","topic":{"deep":[1,2,3]}}"#,
        r#"{"type":"hello_ack","presenceId":"p"}"#, // a broker frame sent the wrong way
        r#"{"type":""}"#,
    ] {
        let f: ClientFrame = serde_json::from_str(json).unwrap();
        assert_eq!(f, ClientFrame::Unknown, "{json}");
        assert_eq!(f.kind(), "unknown");
    }
}

#[test]
fn missing_or_invalid_required_fields_fail() {
    let bad = [
        r#"{"meshId":"m"}"#,                                    // no type at all
        r#"{"type":7}"#,                                        // type not a string
        r#"{"type":"send","targetSpec":"*","ciphertext":"x"}"#, // no nonce
        r#"{"type":"send","nonce":"n","ciphertext":"x"}"#,      // no targetSpec
        r#"{"type":"send","targetSpec":"*","nonce":"n","ciphertext":"x","priority":"urgent"}"#,
        r#"{"type":"hello","meshId":"m","memberId":"u","pubkey":"k","timestamp":1}"#, // no sig
        r#"{"type":"hello","meshId":"m","memberId":"u","pubkey":"k","signature":"s"}"#, // no ts
        r#"{"type":"hello","meshId":"m","pubkey":"k","timestamp":1,"signature":"s"}"#,
        r#"{"type":"hello","meshId":"m","memberId":"u","pubkey":"k","timestamp":"1","signature":"s"}"#,
        r#"{"type":"session_hello","meshId":"m","parentMemberId":"u","parentMemberPubkey":"k","sessionPubkey":"s","timestamp":1,"signature":"s"}"#,
        r#"{"type":"set_status"}"#,
        r#"{"type":"set_status","status":"busy"}"#,
        r#"{"type":"join_group"}"#,
        r#"{"type":"leave_group","role":"x"}"#,
        r#"{"type":"list_peers","_reqId":true}"#,
    ];
    for json in bad {
        assert!(
            serde_json::from_str::<ClientFrame>(json).is_err(),
            "should not parse: {json}"
        );
    }
    let bad_broker = [
        r#"{"type":"ack","id":"","messageId":""}"#,
        r#"{"type":"push","messageId":"m","meshId":"x","senderPubkey":"s","priority":"now","nonce":"","ciphertext":""}"#,
        r#"{"type":"error","code":"x"}"#,
        r#"{"type":"hello_ack","presenceId":"p","memberDisplayName":"a","protocolVersion":1}"#,
        r#"{"type":"whatever"}"#, // BrokerFrame has no catch-all
    ];
    for json in bad_broker {
        assert!(
            serde_json::from_str::<BrokerFrame>(json).is_err(),
            "should not parse: {json}"
        );
    }
}

#[test]
fn send_priority_defaults_to_next() {
    let json = r#"{"type":"send","targetSpec":"*","nonce":"n","ciphertext":"c"}"#;
    let ClientFrame::Send(s) = serde_json::from_str(json).unwrap() else {
        panic!("not a send")
    };
    assert_eq!(s.priority, Priority::Next);
    let v = serde_json::to_value(ClientFrame::Send(s)).unwrap();
    assert_eq!(v["priority"], "next");
}

#[test]
fn unknown_extra_fields_are_tolerated() {
    let cases: [(&str, &str); 4] = [
        (include_str!("golden/hello_full.json"), "hello"),
        (include_str!("golden/session_hello.json"), "session_hello"),
        (include_str!("golden/send_sealed_keys.json"), "send"),
        (r#"{"type":"set_status","status":"dnd"}"#, "set_status"),
    ];
    for (json, kind) in cases {
        let plain: ClientFrame = serde_json::from_str(json).unwrap();
        let mut v: Value = serde_json::from_str(json).unwrap();
        v["futureField"] = serde_json::json!({"nested": [1, "two", null], "n": -1.5});
        v["future_snake"] = Value::Bool(true);
        let extended: ClientFrame = serde_json::from_value(v).unwrap();
        assert_eq!(extended.kind(), kind);
        assert_eq!(
            extended, plain,
            "unknown fields must be ignored, not change the frame"
        );
    }
    let broker_cases = [
        include_str!("golden/hello_ack.json"),
        include_str!("golden/push_system.json"),
        include_str!("golden/peers_list.json"),
        include_str!("golden/ack_refused.json"),
    ];
    for json in broker_cases {
        let plain: BrokerFrame = serde_json::from_str(json).unwrap();
        let mut v: Value = serde_json::from_str(json).unwrap();
        v["brokerExtension"] = serde_json::json!(["x"]);
        assert_eq!(serde_json::from_value::<BrokerFrame>(v).unwrap(), plain);
    }
    // Unknown fields inside nested objects, too.
    let json = r#"{"type":"join_group","name":"g","role":"r","color":"blue"}"#;
    let ClientFrame::JoinGroup(j) = serde_json::from_str(json).unwrap() else {
        panic!()
    };
    assert_eq!(j.name, "g");
    let mut v: Value = serde_json::from_str(include_str!("golden/peers_list.json")).unwrap();
    v["peers"][0]["lastSeen"] = Value::from(5);
    v["peers"][1]["groups"][0]["joinedAt"] = Value::from(6);
    assert!(serde_json::from_value::<BrokerFrame>(v).is_ok());
}

#[test]
fn null_optional_fields_read_as_absent() {
    // A TS client may write `null` rather than omit an optional field.
    let json = r#"{"type":"hello","meshId":"m","memberId":"u","pubkey":"k","sessionPubkey":null,
        "displayName":null,"hostname":null,"peerType":null,"groups":null,"protocolVersion":null,
        "capabilities":null,"sessionId":"s","pid":1,"cwd":"/","timestamp":1,"signature":"g",
        "_reqId":null}"#;
    let ClientFrame::Hello(h) = serde_json::from_str(json).unwrap() else {
        panic!()
    };
    assert_eq!((h.session_pubkey, h.req_id), (None, None));
    assert_eq!(h.presence.groups, None);
    let json = r#"{"type":"send","targetSpec":"*","nonce":"n","ciphertext":"c","id":null,
        "client_message_id":null,"request_fingerprint":null,"sealedKeys":null}"#;
    let ClientFrame::Send(s) = serde_json::from_str(json).unwrap() else {
        panic!()
    };
    assert_eq!(
        (s.id, s.client_message_id, s.sealed_keys),
        (None, None, None)
    );
    let json = r#"{"type":"push","messageId":"m","meshId":"x","senderPubkey":"s","priority":"now",
        "nonce":"","ciphertext":"","createdAt":"t","senderName":null,"eventData":null}"#;
    let BrokerFrame::Push(p) = serde_json::from_str(json).unwrap() else {
        panic!()
    };
    assert_eq!((p.sender_name, p.event_data), (None, None));
}

#[test]
fn target_parse() {
    let key = "0123456789abcdef".repeat(4);
    assert_eq!(Target::parse(&key), Some(Target::Direct(key.as_str())));
    assert_eq!(Target::parse(ALICE), Some(Target::Direct(ALICE)));
    assert!(!Target::parse(ALICE).unwrap().is_multicast());
    assert_eq!(Target::parse("*"), Some(Target::Broadcast));
    assert_eq!(Target::parse("@all"), Some(Target::Broadcast));
    assert_eq!(Target::parse("@backend"), Some(Target::Group("backend")));
    assert_eq!(Target::parse("@ünï côdé"), Some(Target::Group("ünï côdé")));

    let upper = ALICE.to_uppercase();
    let mixed = format!("{}A", &ALICE[..63]);
    let short = &ALICE[..63];
    let long = format!("{ALICE}0");
    let non_hex = format!("{}g", &ALICE[..63]);
    for bad in [
        upper.as_str(),
        &mixed,
        short,
        &long,
        &non_hex,
        "@",
        "",
        "all",
        "**",
        " *",
    ] {
        assert_eq!(Target::parse(bad), None, "{bad:?}");
    }
}
