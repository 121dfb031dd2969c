//! Session identities' lifetime on the real broker (PROTOCOL.md §5.9): the per-member
//! cap (oldest offline retires first, all live → refused), the hello rate limit per
//! member, retirement (no new copies, queue dropped, not listed), a close frame ending a
//! presence at once, and reachability in presence.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[macro_use]
mod common;

use std::time::Duration;

use base64::Engine as _;

use base64::engine::general_purpose::STANDARD as B64;

use claudemesh_broker::Rate;

use common::*;

use futures_util::SinkExt as _;

use serde_json::{Value, json};

use tokio_tungstenite::tungstenite::Message;

use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A v1 hello with `sessionPubkey`: a session identity without proof of possession.
async fn v1_session(b: &TestBroker, m: &Member, sid: &str) -> (V1Client, String, Value) {
    let key = Ident::new().pk;
    let mut hello = hello_frame(m, sid, now_ms());
    hello["sessionPubkey"] = json!(key);
    let mut c = V1Client {
        ws: V1Client::raw(&b.ws()).await,
        key: key.clone(),
    };
    c.send(hello).await;
    let reply = c.recv().await;
    (c, key, reply)
}

/// Close on purpose (a close frame), as `claudemesh mcp` does when its session ends.
async fn leave(mut c: V1Client) {
    c.ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    let _ = c.closed(Duration::from_secs(5)).await;
}

/// Wait until the broker has processed `key`'s departure (its presence is gone).
async fn gone_from_peers(c: &mut V1Client, key: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.peers().await.iter().any(|p| p["pubkey"] == key) {
        assert!(tokio::time::Instant::now() < deadline, "{key} never left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn member_keys(c: &mut V1Client) -> Vec<String> {
    c.send(json!({"type": "list_members", "_reqId": "m"})).await;
    let list = c.recv_type("members_list").await;
    list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["pubkey"].as_str().unwrap().to_owned())
        .collect()
}

async fn broadcast(c: &mut V1Client, id: &str) -> Value {
    c.send(json!({ "type": "send", "targetSpec": "*", "priority": "now", "nonce": "", "ciphertext": B64.encode("hi all"), "id": id }))
        .await;
    c.recv_type("ack").await
}

on_every_backend! {
    #[tokio::test]
    async fn the_cap_retires_the_oldest_offline_session_and_refuses_when_all_are_live() {
        let b = TestBroker::start_with(|c| c.sessions_per_member = 3).await;
        let mesh = create_mesh(&b, "cap").await;
        let alice = enroll(&b, &mesh, "alice").await;
        let bob = enroll(&b, &mesh, "bob").await;
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        let (s1, k1, r1) = v1_session(&b, &alice, "s1").await;
        assert_eq!(r1["type"], "hello_ack", "{r1}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (s2, k2, _) = v1_session(&b, &alice, "s2").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (_s3, k3, _) = v1_session(&b, &alice, "s3").await;
        leave(s1).await;
        gone_from_peers(&mut bc, &k1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        leave(s2).await;
        gone_from_peers(&mut bc, &k2).await;
        // A fourth: the one offline longest (s1) retires to make room.
        let (_s4, k4, r4) = v1_session(&b, &alice, "s4").await;
        assert_eq!(r4["type"], "hello_ack", "{r4}");
        let keys = member_keys(&mut bc).await;
        assert!(
            !keys.contains(&k1),
            "s1 retired: k1={k1} k2={k2} k3={k3} k4={k4} keys={keys:?}"
        );
        assert!(keys.contains(&k2) && keys.contains(&k3) && keys.contains(&k4));
        let (_s5, k5, r5) = v1_session(&b, &alice, "s5").await;
        assert_eq!(r5["type"], "hello_ack", "{r5}");
        let keys = member_keys(&mut bc).await;
        assert!(!keys.contains(&k2) && keys.contains(&k5), "then s2");
        // s3, s4, s5 are live: a sixth is refused, and nothing live is retired for it.
        let (_s6, _, r6) = v1_session(&b, &alice, "s6").await;
        assert_eq!(
            (r6["type"].as_str(), r6["code"].as_str()),
            (Some("error"), Some("too_many_sessions")),
            "{r6}"
        );
        assert_eq!(
            member_keys(&mut bc).await.len(),
            3 + 3,
            "owner, alice, bob and 3 live sessions"
        );
    }

    #[tokio::test]
    async fn hellos_are_rate_limited_per_member() {
        let b = TestBroker::start_with(|c| {
            c.rate_limits.by_type.insert(
                "hello".into(),
                Rate {
                    per_sec: 0.01,
                    burst: 3.0,
                },
            );
        })
        .await;
        let mesh = create_mesh(&b, "hellos").await;
        let alice = enroll(&b, &mesh, "alice").await;
        let bob = enroll(&b, &mesh, "bob").await;
        for i in 0..3 {
            let (_c, _, r) = v1_session(&b, &alice, &format!("s{i}")).await;
            assert_eq!(r["type"], "hello_ack", "{r}");
        }
        let (_c, _, r) = v1_session(&b, &alice, "s-over").await;
        assert_eq!(
            (r["type"].as_str(), r["code"].as_str()),
            (Some("error"), Some("rate_limited")),
            "{r}"
        );
        // Another member's budget is its own.
        let (_c, _, r) = v1_session(&b, &bob, "b1").await;
        assert_eq!(r["type"], "hello_ack", "{r}");
    }

    #[tokio::test]
    async fn a_retired_session_gets_no_new_copies_and_its_queue_is_dropped() {
        let b = TestBroker::start().await;
        let mesh = create_mesh(&b, "retire").await;
        let alice = enroll(&b, &mesh, "alice").await;
        let bob = enroll(&b, &mesh, "bob").await;
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        let (s, key, _) = v1_session(&b, &alice, "gone").await;
        leave(s).await;
        // The owner, alice (member key) and alice's session; bob's own excluded.
        let before = broadcast(&mut bc, "b1").await;
        assert_eq!(before["recipients"], 3, "{before}");
        // Alice retires that session from her member connection.
        let mut ac = V1Client::connect(&b.ws(), &alice).await;
        ac.send(json!({"type": "retire_sessions", "pubkeys": [key, bob.ident.pk], "_reqId": "r"}))
            .await;
        let reply = ac.recv_type("sessions_retired").await;
        assert_eq!(
            reply["retired"],
            json!([key]),
            "only her own, offline session: {reply}"
        );
        assert_eq!(reply["_reqId"], "r");
        let after = broadcast(&mut bc, "b2").await;
        assert_eq!(
            after["recipients"], 2,
            "no copy for the retired key: {after}"
        );
        assert!(!member_keys(&mut bc).await.contains(&key));
        // Its queued copy is gone: message_status no longer lists it.
        let mid = before["messageId"].as_str().unwrap();
        bc.send(json!({"type": "message_status", "messageId": mid, "_reqId": "st"}))
            .await;
        let status = bc.recv_type("message_status").await;
        let listed: Vec<&str> = status["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["pubkey"].as_str().unwrap())
            .collect();
        assert!(!listed.contains(&key.as_str()), "{status}");
    }

    #[tokio::test]
    async fn sessions_offline_past_the_retention_retire_by_themselves() {
        let b = TestBroker::start_with(|c| {
            c.timings.session_retention = Duration::from_millis(100);
            c.timings.purge_interval = Duration::from_millis(200);
        })
        .await;
        let mesh = create_mesh(&b, "sweep").await;
        let alice = enroll(&b, &mesh, "alice").await;
        let bob = enroll(&b, &mesh, "bob").await;
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        let (s, key, _) = v1_session(&b, &alice, "old").await;
        leave(s).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while member_keys(&mut bc).await.contains(&key) {
            assert!(tokio::time::Instant::now() < deadline, "never retired");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            broadcast(&mut bc, "b").await["recipients"],
            2,
            "owner and alice"
        );
    }

    #[tokio::test]
    async fn a_close_frame_ends_the_presence_at_once() {
        // The default grace is 90 s: peer_left within seconds can only be the close frame.
        let b = TestBroker::start().await;
        let mesh = create_mesh(&b, "bye").await;
        let alice = enroll(&b, &mesh, "alice").await;
        let bob = enroll(&b, &mesh, "bob").await;
        let mut ac = V1Client::connect(&b.ws(), &alice).await;
        let bc = V1Client::connect(&b.ws(), &bob).await;
        assert_eq!(ac.recv().await["event"], "peer_joined");
        leave(bc).await;
        let left = ac.recv().await;
        assert_eq!(left["event"], "peer_left", "{left}");
        assert_eq!(ac.peers().await.len(), 1);
    }

    #[tokio::test]
    async fn presence_says_how_a_message_reaches_each_peer() {
        let b = TestBroker::start().await;
        let mesh = create_mesh(&b, "reach").await;
        let alice = enroll(&b, &mesh, "alice").await;
        let bob = enroll(&b, &mesh, "bob").await;
        let carol = enroll(&b, &mesh, "carol").await;
        let mut hello = hello_frame(&alice, "a1", now_ms());
        hello["reach"] = json!("next_prompt");
        let mut ac = V1Client {
            ws: V1Client::raw(&b.ws()).await,
            key: alice.ident.pk.clone(),
        };
        ac.send(hello).await;
        assert_eq!(ac.recv().await["type"], "hello_ack");
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        let reach_of = |peers: &[Value], key: &str| {
            peers
                .iter()
                .find(|p| p["pubkey"] == key)
                .map(|p| p["reach"].clone())
        };
        let peers = bc.peers().await;
        assert_eq!(
            reach_of(&peers, &alice.ident.pk),
            Some(json!("next_prompt"))
        );
        assert_eq!(
            reach_of(&peers, &bob.ident.pk),
            Some(json!("live")),
            "announced nothing"
        );
        ac.send(json!({"type": "set_reach", "reach": "live"})).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while reach_of(&bc.peers().await, &alice.ident.pk) != Some(json!("live")) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "set_reach never applied"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Offline identities are queued.
        bc.send(json!({"type": "list_members", "_reqId": "m"}))
            .await;
        let members = bc.recv_type("members_list").await;
        let c = members["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["pubkey"] == carol.ident.pk)
            .unwrap();
        assert_eq!(c["reach"], "queued", "{c}");
    }
}
