//! SPEC.md §4 delivery semantics against the real broker: offline queueing for direct and
//! multicast messages, leases re-pushed with no other traffic, scoped acks, FIFO, priority
//! gating, unknown recipients, revocation, presence grace, E2E multicast stored once, and
//! group commit.

// Integration tests: helpers outside #[test] fns may unwrap and panic like the tests do.
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

use claudemesh_crypto::{
    PublicKey, box_open, box_seal, random_key, random_nonce, secretbox_open, secretbox_seal,
};

use claudemesh_proto::canonical::AdminAction;

use common::*;

use serde_json::{Value, json};

async fn trio(b: &TestBroker, slug: &str) -> (Mesh, Member, Member, Member) {
    let mesh = create_mesh(b, slug).await;
    let a = enroll(b, &mesh, "alice").await;
    let bo = enroll(b, &mesh, "bob").await;
    let c = enroll(b, &mesh, "carol").await;
    (mesh, a, bo, c)
}

async fn message_status(c: &mut V1Client, id: &str, req: &str) -> Value {
    c.send(json!({ "type": "message_status", "messageId": id, "_reqId": req }))
        .await;
    loop {
        let v = c.recv().await;
        if v["_reqId"] == req {
            return v;
        }
    }
}

on_every_backend! {
    #[tokio::test]
    async fn direct_message_to_offline_member_is_delivered_on_return() {
        let b = TestBroker::start().await;
        let (_m, alice, bob, _c) = trio(&b, "offline").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let ack = a
            .send_dm(&alice.ident.sk, &bob.ident.pk, "while you were out", "next")
            .await;
        assert_eq!(ack["queued"], true, "{ack}");
        assert_eq!(ack["recipients"], 1);

        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        let push = bc
            .next_push(WAIT)
            .await
            .expect("queued DM delivered on hello");
        assert_eq!(push["messageId"], ack["messageId"]);
        assert_eq!(open_push(&push, &bob.ident.sk), "while you were out");
    }

    #[tokio::test]
    async fn v1_broadcast_reaches_a_member_who_was_offline() {
        let b = TestBroker::start().await;
        let (_m, alice, bob, carol) = trio(&b, "bcast").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        // v1 plaintext multicast: base64 of the text, relayed unchanged.
        a.send(json!({ "type": "send", "targetSpec": "*", "priority": "now", "nonce": "", "ciphertext": B64.encode("hello all"), "id": "b1" })).await;
        let ack = a.recv_type("ack").await;
        assert_eq!(ack["queued"], true);
        assert_eq!(
            ack["recipients"], 3,
            "bob, carol and the owner; not the sender"
        );
        let push = bc.next_push(WAIT).await.unwrap();
        assert_eq!(push["senderMemberPubkey"], alice.ident.pk);
        assert_eq!(push["senderName"], "alice");
        assert_eq!(
            B64.decode(push["ciphertext"].as_str().unwrap()).unwrap(),
            b"hello all"
        );
        assert!(
            a.next_push(Duration::from_millis(200)).await.is_none(),
            "no echo to the sender"
        );

        let mut cc = V1Client::connect(&b.ws(), &carol).await;
        let push = cc
            .next_push(WAIT)
            .await
            .expect("carol gets the broadcast when she returns");
        assert_eq!(push["messageId"], ack["messageId"]);
    }

    #[tokio::test]
    async fn unacked_delivery_is_pushed_again_after_its_lease() {
        let b = TestBroker::start_with(|c| c.timings.lease = Duration::from_millis(600)).await;
        let (_m, alice, bob, _c) = trio(&b, "lease").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        a.send_dm(&alice.ident.sk, &bob.ident.pk, "ack me", "now")
            .await;
        let first = bc.next_push(WAIT).await.unwrap();
        // No ack and no other traffic: the broker pushes it again by itself.
        let again = bc
            .next_push(WAIT)
            .await
            .expect("re-pushed after lease expiry");
        assert_eq!(again["messageId"], first["messageId"]);
        bc.ack(&again).await;
        assert!(
            bc.next_push(Duration::from_millis(1_500)).await.is_none(),
            "acked deliveries stay done"
        );
    }

    #[tokio::test]
    async fn a_foreign_client_ack_changes_nothing() {
        let b = TestBroker::start().await;
        let (_m, alice, bob, carol) = trio(&b, "foreign").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        let mut cc = V1Client::connect(&b.ws(), &carol).await;
        let ack = a
            .send_dm(&alice.ident.sk, &bob.ident.pk, "for bob only", "now")
            .await;
        let push = bc.next_push(WAIT).await.unwrap();
        // Carol (and alice, the sender) try to ack bob's delivery.
        cc.send(json!({ "type": "client_ack", "brokerMessageId": ack["messageId"] }))
            .await;
        a.send(json!({ "type": "client_ack", "brokerMessageId": ack["messageId"] }))
            .await;
        cc.peers().await; // a round trip so the acks were processed
        a.peers().await;
        // Bob reconnects without acking: the delivery is still his and comes again.
        drop(bc);
        let mut bc = V1Client::connect_session(&b.ws(), &bob, "sess-2").await;
        let again = bc
            .next_push(WAIT)
            .await
            .expect("still unacked after foreign acks");
        assert_eq!(again["messageId"], push["messageId"]);
        bc.ack(&again).await;
        bc.peers().await;
        let text = metrics(&b).await;
        assert!(text.contains("broker_deliveries_acked_total 1"), "{text}");
    }

    #[tokio::test]
    async fn fifo_per_sender_and_recipient_offline_then_online() {
        let b = TestBroker::start().await;
        let (_m, alice, bob, _c) = trio(&b, "fifo").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        for i in 0..60 {
            a.send_dm(&alice.ident.sk, &bob.ident.pk, &format!("m{i}"), "now")
                .await;
        }
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        for i in 60..120 {
            a.send_dm(&alice.ident.sk, &bob.ident.pk, &format!("m{i}"), "now")
                .await;
        }
        for i in 0..120 {
            let push = bc
                .next_push(WAIT)
                .await
                .unwrap_or_else(|| panic!("missing m{i}"));
            assert_eq!(open_push(&push, &bob.ident.sk), format!("m{i}"));
            bc.ack(&push).await;
        }
    }

    #[tokio::test]
    async fn next_and_low_wait_while_working_and_flow_on_idle() {
        let b = TestBroker::start().await;
        let (_m, alice, bob, _c) = trio(&b, "prio").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        bc.send(json!({ "type": "set_status", "status": "working" }))
            .await;
        bc.peers().await;
        a.send_dm(&alice.ident.sk, &bob.ident.pk, "later", "next")
            .await;
        a.send_dm(&alice.ident.sk, &bob.ident.pk, "quietly", "low")
            .await;
        a.send_dm(&alice.ident.sk, &bob.ident.pk, "urgent", "now")
            .await;
        let push = bc.next_push(WAIT).await.unwrap();
        assert_eq!(open_push(&push, &bob.ident.sk), "urgent");
        assert_eq!(push["priority"], "now");
        bc.ack(&push).await;
        assert!(
            bc.next_push(Duration::from_millis(300)).await.is_none(),
            "next/low held while working"
        );
        bc.send(json!({ "type": "set_status", "status": "idle" }))
            .await;
        let p1 = bc.next_push(WAIT).await.unwrap();
        let p2 = bc.next_push(WAIT).await.unwrap();
        assert_eq!(
            (
                open_push(&p1, &bob.ident.sk).as_str(),
                open_push(&p2, &bob.ident.sk).as_str()
            ),
            ("later", "quietly")
        );
    }

    #[tokio::test]
    async fn unknown_recipient_and_bad_target_are_rejected() {
        let b = TestBroker::start().await;
        let (_m, alice, _bob, _c) = trio(&b, "unknown").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let ack = a
            .send_dm(&alice.ident.sk, &Ident::new().pk, "to nobody", "now")
            .await;
        assert_eq!(
            (
                ack["queued"].as_bool(),
                ack["error"].as_str(),
                ack["messageId"].as_str()
            ),
            (Some(false), Some("unknown_recipient"), Some(""))
        );
        a.send(
            json!({ "type": "send", "targetSpec": "Bob", "nonce": "", "ciphertext": "", "id": "x" }),
        )
        .await;
        let ack = a.recv_type("ack").await;
        assert_eq!(
            (ack["id"].as_str(), ack["error"].as_str()),
            (Some("x"), Some("bad_target"))
        );
    }

    #[tokio::test]
    async fn revoked_member_is_closed_at_once_and_refused() {
        let b = TestBroker::start().await;
        let (mesh, alice, bob, carol) = trio(&b, "revoke").await;
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        let mut cc = V1Client::connect(&b.ws(), &carol).await;
        let started = std::time::Instant::now();
        let (status, v) = remove(&b, &mesh, &bob, "revoke").await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            bc.closed(Duration::from_secs(1)).await,
            Some(4002),
            "closed with 4002 within a second"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        let mut again = V1Client {
            ws: V1Client::raw(&b.ws()).await,
            key: String::new(),
        };
        again.send(hello_frame(&bob, "s9", now_ms())).await;
        assert_eq!(again.recv().await["code"], "revoked");
        assert_eq!(again.closed(WAIT).await, Some(4002));
        // A revoked key cannot re-join, and cannot be messaged.
        let inv = invite(&b, &mesh, 1, 3600).await;
        assert_eq!(
            join_raw(&b, &inv, &bob.ident, "bob").await.1["error"],
            "member_revoked"
        );
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        assert_eq!(
            a.send_dm(&alice.ident.sk, &bob.ident.pk, "x", "now").await["error"],
            "unknown_recipient"
        );

        // Kick: 4001, hello unauthorized, may re-join with a new invite.
        assert_eq!(remove(&b, &mesh, &carol, "kick").await.0, 200);
        assert_eq!(cc.closed(Duration::from_secs(1)).await, Some(4001));
        let mut again = V1Client {
            ws: V1Client::raw(&b.ws()).await,
            key: String::new(),
        };
        again.send(hello_frame(&carol, "s9", now_ms())).await;
        assert_eq!(again.recv().await["code"], "unauthorized");
        let inv = invite(&b, &mesh, 1, 3600).await;
        assert_eq!(join_raw(&b, &inv, &carol.ident, "carol").await.0, 200);
        V1Client::connect_session(&b.ws(), &carol, "back").await;

        // Only owners/admins may remove; a member's signature is forbidden.
        let body = merge(
            json!({ "mode": "kick" }),
            alice.ident.signed(
                AdminAction::RemoveMember,
                &mesh.id,
                &[&carol.member_id, "kick"],
            ),
        );
        let (s, v) = post(
            &format!(
                "{}/api/meshes/{}/members/{}/remove",
                b.http(),
                mesh.id,
                carol.member_id
            ),
            &body,
        )
        .await;
        assert_eq!((s, v["error"].as_str()), (403, Some("forbidden")));
    }

    #[tokio::test]
    async fn presence_survives_a_blip_and_leaves_after_grace() {
        let b = TestBroker::start_with(|c| c.timings.grace = Duration::from_millis(800)).await;
        let (_m, alice, bob, _c) = trio(&b, "grace").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let bc = V1Client::connect(&b.ws(), &bob).await;
        let joined = a.recv().await;
        assert_eq!(
            (joined["subtype"].as_str(), joined["event"].as_str()),
            (Some("system"), Some("peer_joined"))
        );
        assert_eq!(joined["eventData"]["pubkey"], bob.ident.pk);
        assert_eq!(joined["senderPubkey"], "system");
        // Blip: drop and come back within grace — no events.
        drop(bc);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let bc = V1Client::connect_session(&b.ws(), &bob, "sess-1b").await;
        assert!(
            a.try_recv(Duration::from_millis(1_200)).await.is_none(),
            "no leave/join flapping"
        );
        assert_eq!(a.peers().await.len(), 2);
        // Gone for good: not listed at once (no ghosts), peer_left after grace.
        drop(bc);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            a.peers().await.len(),
            1,
            "disconnected peers are not listed"
        );
        let left = a.recv().await;
        assert_eq!(left["event"], "peer_left");
        // Coming back later is a return, not a first join.
        let _bc = V1Client::connect_session(&b.ws(), &bob, "sess-1c").await;
        assert_eq!(a.recv().await["event"], "peer_returned");
    }

    #[tokio::test]
    async fn e2e_multicast_body_stored_once_with_a_sealed_key_per_recipient() {
        let b = TestBroker::start().await;
        let (mesh, alice, bob, carol) = trio(&b, "e2e").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        a.send(json!({ "type": "list_members", "_reqId": "m" }))
            .await;
        let members = a.recv_type("members_list").await;
        let keys: Vec<&str> = members["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["pubkey"].as_str().unwrap())
            .collect();
        assert!(
            keys.contains(&bob.ident.pk.as_str()) && keys.contains(&carol.ident.pk.as_str()),
            "offline carol listed too"
        );

        let k = random_key();
        let body_nonce = random_nonce();
        let body = secretbox_seal(&k, &body_nonce, b"secret to the team");
        let mut sealed = serde_json::Map::new();
        for to in [&bob.ident.pk, &carol.ident.pk] {
            let n = random_nonce();
            let mut v = n.to_vec();
            v.extend(box_seal(
                &k[..],
                &n,
                &PublicKey::from_hex(to).unwrap(),
                &alice.ident.sk,
            ));
            sealed.insert(to.clone(), json!(B64.encode(v)));
        }
        a.send(json!({ "type": "send", "targetSpec": "*", "priority": "now", "nonce": B64.encode(body_nonce), "ciphertext": B64.encode(&body), "sealedKeys": sealed, "id": "e1" })).await;
        let ack = a.recv_type("ack").await;
        assert_eq!(
            ack["recipients"], 2,
            "only the sealed-for recipients: {ack}"
        );

        let open = |push: &Value, me: &Ident| {
            let sk = B64.decode(push["sealedKey"].as_str().unwrap()).unwrap();
            let (n, boxed) = sk.split_at(24);
            let sender = PublicKey::from_hex(push["senderPubkey"].as_str().unwrap()).unwrap();
            let key: [u8; 32] = box_open(boxed, &n.try_into().unwrap(), &sender, &me.sk)
                .unwrap()
                .try_into()
                .unwrap();
            let nonce: [u8; 24] = B64
                .decode(push["nonce"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
            String::from_utf8(
                secretbox_open(
                    &key,
                    &nonce,
                    &B64.decode(push["ciphertext"].as_str().unwrap()).unwrap(),
                )
                .unwrap(),
            )
            .unwrap()
        };
        let push = bc.next_push(WAIT).await.unwrap();
        assert_eq!(push["targetSpec"], "*");
        assert_eq!(open(&push, &bob.ident), "secret to the team");
        let mut cc = V1Client::connect(&b.ws(), &carol).await;
        let push = cc
            .next_push(WAIT)
            .await
            .expect("offline carol gets it on return");
        assert_eq!(open(&push, &carol.ident), "secret to the team");

        // The body is stored once; two deliveries point at it.
        assert_eq!(b.data.stored(&mesh.id), (1, 2));
    }

    #[tokio::test]
    async fn group_messages_reach_group_members_only() {
        let b = TestBroker::start().await;
        let (_m, alice, bob, carol) = trio(&b, "groups").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        let mut cc = V1Client::connect(&b.ws(), &carol).await;
        bc.send(json!({ "type": "join_group", "name": "backend" }))
            .await;
        bc.peers().await;
        a.send(json!({ "type": "send", "targetSpec": "@backend", "priority": "now", "nonce": "", "ciphertext": B64.encode("db is down"), "id": "g" })).await;
        assert_eq!(a.recv_type("ack").await["recipients"], 1);
        assert!(bc.next_push(WAIT).await.is_some());
        assert!(cc.next_push(Duration::from_millis(300)).await.is_none());
        // Membership is durable: offline bob still gets group messages.
        drop(bc);
        a.send(json!({ "type": "send", "targetSpec": "@backend", "priority": "now", "nonce": "", "ciphertext": B64.encode("still down"), "id": "g2" })).await;
        assert_eq!(a.recv_type("ack").await["recipients"], 1);
    }

    #[tokio::test]
    async fn idempotent_resend_and_rate_limits() {
        let b = TestBroker::start_with(|c| {
            c.rate_limits.by_type.insert(
                "send".into(),
                claudemesh_broker::Rate {
                    per_sec: 0.01,
                    burst: 5.0,
                },
            );
        })
        .await;
        let (_m, alice, bob, _c) = trio(&b, "limits").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let frame = json!({ "type": "send", "targetSpec": bob.ident.pk, "nonce": "", "ciphertext": "", "id": "r", "client_message_id": "cm-1" });
        a.send(frame.clone()).await;
        let first = a.recv_type("ack").await;
        a.send(frame).await;
        let second = a.recv_type("ack").await;
        assert_eq!(
            first["messageId"], second["messageId"],
            "a resend with the same client_message_id is the same message"
        );
        let mut limited = 0;
        for i in 0..6 {
            a.send(json!({ "type": "send", "targetSpec": bob.ident.pk, "nonce": "", "ciphertext": "", "id": format!("n{i}") })).await;
            if a.recv_type("ack").await["error"] == "rate_limited" {
                limited += 1;
            }
        }
        assert!(limited >= 3, "burst of 5 then refused ({limited} refused)");
    }

    #[tokio::test]
    async fn pipelined_sends_share_commits() {
        let b = TestBroker::start().await;
        let (_m, alice, bob, _c) = trio(&b, "group-commit").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let before = metrics(&b).await;
        let nonce = B64.encode(random_nonce());
        let n = 400;
        for i in 0..n {
            a.send(json!({ "type": "send", "targetSpec": bob.ident.pk, "nonce": nonce, "ciphertext": "AAAA", "id": format!("p{i}") })).await;
        }
        for _ in 0..n {
            assert_eq!(a.recv_type("ack").await["queued"], true);
        }
        let after = metrics(&b).await;
        let commits =
            metric(&after, "broker_commits_total ") - metric(&before, "broker_commits_total ");
        let routed = metric(&after, "broker_messages_routed_total ")
            - metric(&before, "broker_messages_routed_total ");
        assert_eq!(routed, n);
        assert!(
            commits < n / 2,
            "{commits} commits for {n} pipelined messages: not grouped"
        );
        eprintln!("group commit: {n} messages in {commits} commits");
    }

    #[tokio::test]
    async fn same_session_id_replaces_the_old_connection() {
        let b = TestBroker::start().await;
        let (_m, alice, bob, _c) = trio(&b, "replace").await;
        let mut first = V1Client::connect_session(&b.ws(), &bob, "same").await;
        let mut second = V1Client::connect_session(&b.ws(), &bob, "same").await;
        assert_eq!(
            first.closed(WAIT).await,
            Some(1000),
            "old connection closed as session_replaced"
        );
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        a.send_dm(&alice.ident.sk, &bob.ident.pk, "to the new one", "now")
            .await;
        let push = second.next_push(WAIT).await.unwrap();
        assert_eq!(open_push(&push, &bob.ident.sk), "to the new one");
    }

    #[tokio::test]
    async fn hello_cannot_claim_another_members_key_as_session_key() {
        let b = TestBroker::start().await;
        let (_m, alice, bob, _c) = trio(&b, "claim").await;
        // Alice signs a valid hello but names bob's member key as her sessionPubkey.
        let mut hello = hello_frame(&alice, "evil", now_ms());
        hello["sessionPubkey"] = json!(bob.ident.pk);
        let mut c = V1Client {
            ws: V1Client::raw(&b.ws()).await,
            key: String::new(),
        };
        c.send(hello).await;
        assert_eq!(c.recv().await["code"], "bad_session_pubkey");
        // Bob is unaffected.
        V1Client::connect(&b.ws(), &bob).await;
    }

    #[tokio::test]
    async fn a_peer_that_stops_answering_pings_is_dropped_and_not_listed() {
        let b = TestBroker::start_with(|c| {
            c.timings.ping_interval = Duration::from_millis(100);
            c.timings.dead_after = Duration::from_millis(600);
        })
        .await;
        let (_m, alice, bob, _c) = trio(&b, "dead").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        // Alice keeps reading (tungstenite answers pings as it reads); bob never reads again,
        // so he never answers a ping.
        let _silent_bob = V1Client::connect(&b.ws(), &bob).await;
        assert_eq!(a.peers().await.len(), 2);
        let mut gone = false;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if a.peers().await.len() == 1 {
                gone = true;
                break;
            }
        }
        assert!(
            gone,
            "a socket silent past dead_after is terminated and its peer no longer listed"
        );
        assert!(metrics(&b).await.contains("broker_connections_active 1"));
    }

    /// Extension `message-status`: per recipient queued → delivered → acked, visible only to
    /// the sender (and its member's other connections); anyone else gets `not_found`.
    #[tokio::test]
    async fn message_status_reports_each_recipient_and_only_to_the_sender() {
        let b = TestBroker::start().await;
        let (_m, alice, bob, carol) = trio(&b, "status").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let ack = a
            .send_dm(&alice.ident.sk, &bob.ident.pk, "are you there?", "now")
            .await;
        let id = ack["messageId"].as_str().unwrap().to_owned();
        let v = message_status(&mut a, &id, "q1").await;
        assert_eq!(v["type"], "message_status", "{v}");
        assert_eq!(v["targetSpec"], bob.ident.pk);
        let r = &v["recipients"][0];
        assert_eq!(
            (r["pubkey"].as_str(), r["state"].as_str()),
            (Some(bob.ident.pk.as_str()), Some("queued"))
        );
        assert_eq!(r["displayName"], "bob");

        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        let push = bc.next_push(WAIT).await.unwrap();
        assert_eq!(
            message_status(&mut a, &id, "q2").await["recipients"][0]["state"],
            "delivered"
        );
        bc.ack(&push).await;
        bc.peers().await; // the ack is processed
        let v = message_status(&mut a, &id, "q3").await;
        assert_eq!(v["recipients"][0]["state"], "acked", "{v}");
        assert!(v["recipients"][0]["ackedAt"].is_string());

        // Neither the recipient nor a third member may ask; an unknown id looks the same.
        for c in [&mut bc, &mut V1Client::connect(&b.ws(), &carol).await] {
            let v = message_status(c, &id, "q4").await;
            assert_eq!(
                (v["type"].as_str(), v["code"].as_str()),
                (Some("error"), Some("not_found")),
                "{v}"
            );
        }
        a.send(json!({ "type": "message_status", "messageId": "0".repeat(32), "_reqId": "q5" }))
            .await;
        assert_eq!(a.recv_type("error").await["code"], "not_found");
    }

    #[tokio::test]
    async fn message_status_is_unknown_to_a_v1_only_broker() {
        let b = TestBroker::start_with(|c| c.v1_only = true).await;
        let (_m, alice, _bob, _c) = trio(&b, "v1status").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        a.send(json!({ "type": "message_status", "messageId": "x", "_reqId": "s1" }))
            .await;
        let e = a.recv_type("error").await;
        assert_eq!(
            (e["code"].as_str(), e["_reqId"].as_str()),
            (Some("unknown_message_type"), Some("s1"))
        );
        // The connection's request budget was given back: it keeps working.
        assert!(!a.peers().await.is_empty());
    }

    /// Refused sends are answered like any other request: a client that keeps messaging a
    /// departed peer must not use up its connection's reply budget (1 024 unanswered requests
    /// stop the broker from reading the socket at all).
    #[tokio::test]
    async fn refused_sends_do_not_use_up_the_reply_budget() {
        let b = TestBroker::start_with(|c| c.rate_limits.enabled = false).await;
        let mesh = create_mesh(&b, "budget").await;
        let alice = enroll(&b, &mesh, "alice").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let gone = claudemesh_crypto::SecretKey::generate().public().to_hex();
        for i in 0..1_100 {
            a.send(json!({ "type": "send", "targetSpec": gone, "priority": "now", "nonce": "bm9uY2U=", "ciphertext": "eA==", "id": format!("r{i}") }))
                .await;
        }
        let mut refused = 0;
        a.send(json!({ "type": "list_peers", "_reqId": "after" }))
            .await;
        loop {
            let v = a.recv().await;
            match v["type"].as_str() {
                Some("ack") => {
                    assert_eq!(v["error"], "unknown_recipient", "{v}");
                    refused += 1;
                }
                Some("peers_list") => {
                    assert_eq!(v["_reqId"], "after");
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(refused, 1_100);
    }

    /// A client that never acks (the v1 SDK's `MeshClient`) is pushed a delivery at most
    /// `max_pushes` times on one connection; after its next hello it comes again, and an ack
    /// still settles it.
    #[tokio::test]
    async fn a_client_that_never_acks_sees_a_message_at_most_max_pushes_times() {
        let b = TestBroker::start_with(|c| {
            c.timings.lease = Duration::from_millis(300);
            c.timings.max_pushes = 3;
        })
        .await;
        let (_m, alice, bob, _c) = trio(&b, "park").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        a.send_dm(&alice.ident.sk, &bob.ident.pk, "never acked", "now")
            .await;
        let first = bc.next_push(WAIT).await.unwrap();
        let mut seen = 1;
        while let Some(p) = bc.next_push(Duration::from_millis(1_500)).await {
            assert_eq!(p["messageId"], first["messageId"]);
            seen += 1;
        }
        assert_eq!(seen, 3, "pushed max_pushes times, then parked");
        let parked = metrics(&b).await;
        assert!(
            parked.contains("broker_deliveries_parked_total 1"),
            "{parked}"
        );
        // Other messages still flow while one is parked.
        a.send_dm(&alice.ident.sk, &bob.ident.pk, "next one", "now")
            .await;
        let next = bc.next_push(WAIT).await.unwrap();
        assert_ne!(next["messageId"], first["messageId"]);
        bc.ack(&next).await;
        // A hello that replaces the live connection (same session id, as a v1 client does
        // when it reconnects before the broker noticed the old socket died) starts afresh.
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        let again = bc
            .next_push(WAIT)
            .await
            .expect("pushed again after a new hello");
        assert_eq!(again["messageId"], first["messageId"]);
        bc.ack(&again).await;
        assert!(bc.next_push(Duration::from_millis(1_000)).await.is_none());
    }
}
