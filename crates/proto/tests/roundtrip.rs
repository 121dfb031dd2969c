//! Property tests: every `ClientFrame` and `BrokerFrame` variant survives
//! `to_string` → `from_str` unchanged (arbitrary unicode strings, optional fields present
//! and absent, negative and extreme numbers, `_reqId` as string or number), and parsing
//! arbitrary text or arbitrary JSON as a frame never panics.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use claudemesh_proto::frames::*;
use claudemesh_proto::{BrokerFrame, ClientFrame};
use proptest::collection::{btree_map, vec};
use proptest::option::of;
use proptest::prelude::*;
use serde_json::Value;

fn reach() -> impl Strategy<Value = Option<Reach>> {
    of(prop_oneof![
        Just(Reach::Live),
        Just(Reach::NextPrompt),
        Just(Reach::Queued)
    ])
}

fn text() -> impl Strategy<Value = String> {
    // Any unicode, including control characters, quotes, backslashes and newlines.
    "(?s).{0,16}"
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    of(text())
}

fn req_id() -> impl Strategy<Value = Option<ReqId>> {
    of(prop_oneof![
        text().prop_map(ReqId::Str),
        any::<i64>().prop_map(ReqId::Num)
    ])
}

fn priority() -> impl Strategy<Value = Priority> {
    prop_oneof![
        Just(Priority::Now),
        Just(Priority::Next),
        Just(Priority::Low)
    ]
}

fn status() -> impl Strategy<Value = Status> {
    prop_oneof![Just(Status::Idle), Just(Status::Working), Just(Status::Dnd)]
}

fn group() -> impl Strategy<Value = GroupRef> {
    (text(), opt_text()).prop_map(|(name, role)| GroupRef { name, role })
}

fn groups() -> impl Strategy<Value = Vec<GroupRef>> {
    vec(group(), 0..3)
}

fn presence() -> impl Strategy<Value = PresenceInfo> {
    (
        (
            opt_text(),
            text(),
            any::<i64>(),
            text(),
            opt_text(),
            opt_text(),
        ),
        (
            opt_text(),
            opt_text(),
            of(groups()),
            of(any::<u32>()),
            of(vec(text(), 0..3)),
            reach(),
        ),
    )
        .prop_map(
            |(
                (display_name, session_id, pid, cwd, hostname, peer_type),
                (channel, model, groups, protocol_version, capabilities, reach),
            )| PresenceInfo {
                display_name,
                session_id,
                pid,
                cwd,
                hostname,
                peer_type,
                channel,
                model,
                groups,
                protocol_version,
                capabilities,
                reach,
            },
        )
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        text(),
        text(),
        text(),
        opt_text(),
        presence(),
        any::<i64>(),
        text(),
        req_id(),
    )
        .prop_map(
            |(
                mesh_id,
                member_id,
                pubkey,
                session_pubkey,
                presence,
                timestamp,
                signature,
                req_id,
            )| {
                Hello {
                    mesh_id,
                    member_id,
                    pubkey,
                    session_pubkey,
                    presence,
                    timestamp,
                    signature,
                    req_id,
                }
            },
        )
}

fn session_hello() -> impl Strategy<Value = SessionHello> {
    let attestation =
        (text(), text(), any::<i64>(), text()).prop_map(|(s, p, e, sig)| Attestation {
            session_pubkey: s,
            parent_member_pubkey: p,
            expires_at: e,
            signature: sig,
        });
    (
        (text(), text(), text(), text(), attestation),
        (presence(), any::<i64>(), text(), req_id()),
    )
        .prop_map(
            |(
                (
                    mesh_id,
                    parent_member_id,
                    parent_member_pubkey,
                    session_pubkey,
                    parent_attestation,
                ),
                (presence, timestamp, signature, req_id),
            )| SessionHello {
                mesh_id,
                parent_member_id,
                parent_member_pubkey,
                session_pubkey,
                parent_attestation,
                presence,
                timestamp,
                signature,
                req_id,
            },
        )
}

fn send() -> impl Strategy<Value = Send> {
    let target = prop_oneof![
        Just("*".to_owned()),
        Just("@all".to_owned()),
        "@[a-z]{1,8}",
        "[0-9a-f]{64}",
        text(),
    ];
    (
        (target, priority(), text(), text()),
        (
            opt_text(),
            opt_text(),
            opt_text(),
            of(btree_map(text(), text(), 0..4)),
            req_id(),
        ),
    )
        .prop_map(
            |(
                (target_spec, priority, nonce, ciphertext),
                (id, client_message_id, request_fingerprint, sealed_keys, req_id),
            )| Send {
                target_spec,
                priority,
                nonce,
                ciphertext,
                id,
                client_message_id,
                request_fingerprint,
                sealed_keys,
                req_id,
            },
        )
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        hello().prop_map(ClientFrame::Hello),
        session_hello().prop_map(ClientFrame::SessionHello),
        send().prop_map(ClientFrame::Send),
        (opt_text(), opt_text(), req_id()).prop_map(|(c, b, req_id)| {
            ClientFrame::ClientAck(ClientAck {
                client_message_id: c,
                broker_message_id: b,
                req_id,
            })
        }),
        req_id().prop_map(|req_id| ClientFrame::ListPeers(Request { req_id })),
        (status(), req_id())
            .prop_map(|(status, req_id)| ClientFrame::SetStatus(SetStatus { status, req_id })),
        (opt_text(), req_id())
            .prop_map(|(summary, req_id)| ClientFrame::SetSummary(SetSummary { summary, req_id })),
        (text(), opt_text(), req_id()).prop_map(|(name, role, req_id)| {
            ClientFrame::JoinGroup(JoinGroup { name, role, req_id })
        }),
        (text(), req_id())
            .prop_map(|(name, req_id)| ClientFrame::LeaveGroup(LeaveGroup { name, req_id })),
        req_id().prop_map(|req_id| ClientFrame::ListMembers(Request { req_id })),
        (text(), req_id()).prop_map(|(message_id, req_id)| {
            ClientFrame::MessageStatus(MessageStatusRequest { message_id, req_id })
        }),
        (reach(), req_id()).prop_map(|(reach, req_id)| ClientFrame::SetReach(SetReach {
            reach: reach.unwrap_or(Reach::Live),
            req_id
        })),
        (vec(text(), 0..3), req_id()).prop_map(|(pubkeys, req_id)| ClientFrame::RetireSessions(
            RetireSessions { pubkeys, req_id }
        )),
        // `Unknown` goes out as `{"type":"unknown"}`, which parses back as `Unknown`.
        Just(ClientFrame::Unknown),
    ]
}

fn hello_ack() -> impl Strategy<Value = HelloAck> {
    (
        (text(), text(), any::<u32>(), vec(text(), 0..4), opt_text()),
        (opt_text(), of(status()), opt_text(), of(groups()), req_id()),
    )
        .prop_map(
            |(
                (presence_id, member_display_name, protocol_version, capabilities, member_id),
                (member_role, status, summary, groups, req_id),
            )| HelloAck {
                presence_id,
                member_display_name,
                protocol_version,
                capabilities,
                member_id,
                member_role,
                status,
                summary,
                groups,
                req_id,
            },
        )
}

fn ack() -> impl Strategy<Value = Ack> {
    (
        text(),
        text(),
        any::<bool>(),
        opt_text(),
        of(any::<u32>()),
        opt_text(),
        req_id(),
    )
        .prop_map(
            |(id, message_id, queued, error, recipients, client_message_id, req_id)| Ack {
                id,
                message_id,
                queued,
                error,
                recipients,
                client_message_id,
                req_id,
            },
        )
}

fn push() -> impl Strategy<Value = Push> {
    let event_data = (text(), text(), of(groups())).prop_map(|(name, pubkey, groups)| EventData {
        name,
        pubkey,
        groups,
    });
    (
        (text(), text(), text(), priority(), text(), text(), text()),
        (opt_text(), opt_text(), opt_text(), opt_text(), opt_text()),
        (opt_text(), opt_text(), of(event_data)),
    )
        .prop_map(
            |(
                (message_id, mesh_id, sender_pubkey, priority, nonce, ciphertext, created_at),
                (client_message_id, sender_member_pubkey, sender_name, target_spec, sealed_key),
                (subtype, event, event_data),
            )| Push {
                message_id,
                mesh_id,
                sender_pubkey,
                priority,
                nonce,
                ciphertext,
                created_at,
                client_message_id,
                sender_member_pubkey,
                sender_name,
                target_spec,
                sealed_key,
                subtype,
                event,
                event_data,
            },
        )
}

fn peer() -> impl Strategy<Value = PeerInfo> {
    (
        (
            text(),
            text(),
            text(),
            status(),
            opt_text(),
            groups(),
            text(),
        ),
        (text(), text(), text(), text()),
        (opt_text(), opt_text(), opt_text(), opt_text(), reach()),
    )
        .prop_map(
            |(
                (pubkey, member_pubkey, display_name, status, summary, groups, session_id),
                (connected_at, cwd, role, peer_role),
                (hostname, peer_type, channel, model, reach),
            )| PeerInfo {
                pubkey,
                member_pubkey,
                display_name,
                status,
                summary,
                groups,
                session_id,
                connected_at,
                cwd,
                role,
                peer_role,
                hostname,
                peer_type,
                channel,
                model,
                reach,
            },
        )
}

fn recipient_status() -> impl Strategy<Value = RecipientStatus> {
    let state = prop_oneof![
        Just(DeliveryState::Queued),
        Just(DeliveryState::Delivered),
        Just(DeliveryState::Acked),
        Just(DeliveryState::Expired),
    ];
    (text(), opt_text(), state, opt_text()).prop_map(|(pubkey, display_name, state, acked_at)| {
        RecipientStatus {
            pubkey,
            display_name,
            state,
            acked_at,
        }
    })
}

fn member() -> impl Strategy<Value = MemberInfo> {
    (
        text(),
        text(),
        text(),
        text(),
        text(),
        text(),
        groups(),
        any::<bool>(),
        (any::<bool>(), reach(), opt_text()),
    )
        .prop_map(
            |(
                pubkey,
                member_id,
                member_pubkey,
                display_name,
                role,
                kind,
                groups,
                online,
                (e2e, reach, last_seen),
            )| {
                MemberInfo {
                    pubkey,
                    member_id,
                    member_pubkey,
                    display_name,
                    role,
                    kind,
                    groups,
                    online,
                    e2e_multicast: e2e,
                    seen: e2e || online,
                    reach,
                    last_seen,
                }
            },
        )
}

fn broker_frame() -> impl Strategy<Value = BrokerFrame> {
    prop_oneof![
        hello_ack().prop_map(BrokerFrame::HelloAck),
        ack().prop_map(BrokerFrame::Ack),
        push().prop_map(BrokerFrame::Push),
        (vec(peer(), 0..3), req_id())
            .prop_map(|(peers, req_id)| BrokerFrame::PeersList(PeersList { peers, req_id })),
        (text(), text(), opt_text(), req_id()).prop_map(|(code, message, id, req_id)| {
            BrokerFrame::Error(ErrorFrame {
                code,
                message,
                id,
                req_id,
            })
        }),
        (vec(member(), 0..3), req_id()).prop_map(|(members, req_id)| BrokerFrame::MembersList(
            MembersList { members, req_id }
        )),
        (
            text(),
            text(),
            text(),
            vec(recipient_status(), 0..3),
            req_id()
        )
            .prop_map(
                |(message_id, target_spec, created_at, recipients, req_id)| {
                    BrokerFrame::MessageStatus(MessageStatusReply {
                        message_id,
                        target_spec,
                        created_at,
                        recipients,
                        req_id,
                    })
                }
            ),
        (vec(text(), 0..3), req_id()).prop_map(|(retired, req_id)| {
            BrokerFrame::SessionsRetired(SessionsRetired { retired, req_id })
        }),
    ]
}

/// Arbitrary JSON, nested a few levels.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // non-finite become null
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(text(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const TYPES: &str = "hello session_hello send client_ack list_peers set_status set_summary \
    join_group leave_group list_members unknown";

const FIELDS: &str = "meshId memberId pubkey sessionPubkey displayName sessionId pid cwd groups \
    protocolVersion capabilities timestamp signature parentAttestation targetSpec priority \
    nonce ciphertext client_message_id sealedKeys status summary name role _reqId";

/// A frame-like object: a known `type` and known field names with arbitrary values.
fn frame_like() -> impl Strategy<Value = Value> {
    let ty = prop::sample::select(TYPES.split_whitespace().collect::<Vec<_>>());
    let keys = prop::sample::select(FIELDS.split_whitespace().collect::<Vec<_>>());
    let fields = btree_map(keys, json(), 0..12);
    (ty, fields).prop_map(|(ty, fields)| {
        let mut obj: serde_json::Map<String, Value> =
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        obj.insert("type".into(), Value::from(ty));
        Value::Object(obj)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        let text = serde_json::to_string(&frame).unwrap();
        let back: ClientFrame = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &frame, "{}", text);
        // The wire `type` is what `kind()` says.
        let v: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(v["type"].as_str(), Some(frame.kind()));
    }

    #[test]
    fn broker_frames_round_trip(frame in broker_frame()) {
        let text = serde_json::to_string(&frame).unwrap();
        let back: BrokerFrame = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(back, frame, "{}", text);
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(s in any::<String>()) {
        let _ = serde_json::from_str::<ClientFrame>(&s);
        let _ = serde_json::from_str::<BrokerFrame>(&s);
    }

    #[test]
    fn parsing_arbitrary_json_never_panics(v in json()) {
        let text = v.to_string();
        let _ = serde_json::from_str::<ClientFrame>(&text);
        let _ = serde_json::from_str::<BrokerFrame>(&text);
    }

    #[test]
    fn parsing_frame_like_objects_never_panics(v in frame_like()) {
        let text = v.to_string();
        if let Ok(frame) = serde_json::from_str::<ClientFrame>(&text) {
            // Whatever parses must serialize and re-parse to the same frame.
            let again = serde_json::to_string(&frame).unwrap();
            prop_assert_eq!(serde_json::from_str::<ClientFrame>(&again).unwrap(), frame);
        }
    }
}

#[test]
fn sealed_keys_map_is_preserved_exactly() {
    let mut keys = BTreeMap::new();
    keys.insert("b".repeat(64), "a2V5".to_owned());
    keys.insert("a".repeat(64), "".to_owned());
    let frame = ClientFrame::Send(Send {
        target_spec: "@all".into(),
        priority: Priority::Low,
        nonce: String::new(),
        ciphertext: String::new(),
        id: None,
        client_message_id: None,
        request_fingerprint: None,
        sealed_keys: Some(keys),
        req_id: Some(ReqId::Num(i64::MIN)),
    });
    let text = serde_json::to_string(&frame).unwrap();
    assert_eq!(serde_json::from_str::<ClientFrame>(&text).unwrap(), frame);
}
