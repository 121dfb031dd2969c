//! A v1 client built only from WIRE-V1 frames: enrollment, hello, peers, crypto_box DMs
//! checked against the libsodium vectors, acks, and the refusals v1 defines (no_hello,
//! replayed and skewed hellos, oversized frames, unknown types, bad invites).

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

use common::*;

use serde_json::{Value, json};

const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/libsodium-v1.json"
));

fn vector_seed(label: &str) -> String {
    let v: Value = serde_json::from_str(VECTORS).unwrap();
    v["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["label"] == label)
        .unwrap()["seed_hex"]
        .as_str()
        .unwrap()
        .to_owned()
}

on_every_backend! {
    #[tokio::test]
    async fn enroll_hello_peers_and_vector_dm_round_trip() {
        let b = TestBroker::start().await;
        let mesh = create_mesh(&b, "acme").await;
        let alice = enroll_ident(
            &b,
            &mesh,
            "alice",
            Ident::from_seed_hex(&vector_seed("alice")),
        )
        .await;
        let bob = enroll_ident(&b, &mesh, "bob", Ident::from_seed_hex(&vector_seed("bob"))).await;

        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        let peers = a.peers().await;
        let names: Vec<&str> = peers
            .iter()
            .map(|p| p["displayName"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"alice") && names.contains(&"bob"),
            "{peers:?}"
        );
        let bob_entry = peers.iter().find(|p| p["displayName"] == "bob").unwrap();
        assert_eq!(bob_entry["pubkey"], bob.ident.pk);
        assert_eq!(bob_entry["memberPubkey"], bob.ident.pk);
        assert_eq!(bob_entry["role"], "control-plane");
        assert_eq!(bob_entry["peerRole"], "control-plane");
        assert_eq!(bob_entry["summary"], Value::Null);
        assert_eq!(bob_entry["status"], "idle");

        // Relay the exact libsodium ciphertexts alice→bob; bob sees them byte for byte.
        let vectors: Value = serde_json::from_str(VECTORS).unwrap();
        for (i, v) in vectors["box"].as_array().unwrap().iter().enumerate() {
            let id = format!("vec-{i}");
            a.send(json!({ "type": "send", "targetSpec": bob.ident.pk, "priority": "now", "nonce": v["nonce_b64"], "ciphertext": v["ciphertext_b64"], "id": id })).await;
            let ack = a.recv_type("ack").await;
            assert_eq!(ack["id"], id);
            assert_eq!(ack["queued"], true, "{ack}");
            assert!(ack["messageId"].as_str().unwrap().len() >= 16);
            let push = bc.recv_type("push").await;
            assert_eq!(
                push["senderPubkey"], alice.ident.pk,
                "stamped from the authenticated connection"
            );
            assert_eq!(push["meshId"], mesh.id);
            assert_eq!(push["messageId"], ack["messageId"]);
            assert_eq!(push["nonce"], v["nonce_b64"]);
            assert_eq!(push["ciphertext"], v["ciphertext_b64"]);
            assert!(push["createdAt"].as_str().unwrap().ends_with('Z'));
            assert_eq!(
                open_push(&push, &bob.ident.sk),
                v["plaintext_utf8"].as_str().unwrap()
            );
            bc.ack(&push).await;
        }

        // And the other way, with fresh nonces.
        let ack = bc
            .send_dm(&bob.ident.sk, &alice.ident.pk, "hi alice", "now")
            .await;
        assert_eq!(ack["queued"], true);
        let push = a.recv_type("push").await;
        assert_eq!(open_push(&push, &alice.ident.sk), "hi alice");
        a.ack(&push).await;
        // Acked: nothing comes back.
        assert!(a.next_push(Duration::from_millis(300)).await.is_none());
    }

    #[tokio::test]
    async fn session_hello_with_attestation() {
        let b = TestBroker::start().await;
        let mesh = create_mesh(&b, "sess").await;
        let alice = enroll(&b, &mesh, "alice").await;
        let bob = enroll(&b, &mesh, "bob").await;
        let session = Ident::from_seed_hex(&vector_seed("carol-session"));
        let ts = now_ms();
        let expires = ts + 12 * 3600 * 1000;
        let att_sig = alice
            .ident
            .sk
            .sign_str(&format!(
                "claudemesh-session-attest|{}|{}|{}",
                alice.ident.pk, session.pk, expires
            ))
            .to_hex();
        let sig = session
            .sk
            .sign_str(&format!(
                "claudemesh-session-hello|{}|{}|{}|{}",
                mesh.id, alice.ident.pk, session.pk, ts
            ))
            .to_hex();
        let hello = json!({
            "type": "session_hello", "meshId": mesh.id, "parentMemberId": alice.member_id,
            "parentMemberPubkey": alice.ident.pk, "sessionPubkey": session.pk,
            "parentAttestation": { "sessionPubkey": session.pk, "parentMemberPubkey": alice.ident.pk, "expiresAt": expires, "signature": att_sig },
            "displayName": "alice/payments", "sessionId": "cc-1", "pid": 1, "cwd": "/repo/payments",
            "groups": [{ "name": "backend" }], "timestamp": ts, "signature": sig,
        });
        let mut s = V1Client {
            ws: V1Client::raw(&b.ws()).await,
            key: session.pk.clone(),
        };
        s.send(hello.clone()).await;
        let ack = s.recv().await;
        assert_eq!(ack["type"], "hello_ack", "{ack}");
        assert_eq!(ack["presenceId"], session.pk);

        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        let peers = bc.peers().await;
        let me = peers
            .iter()
            .find(|p| p["pubkey"] == session.pk)
            .expect("session listed");
        assert_eq!(me["memberPubkey"], alice.ident.pk);
        assert_eq!(me["role"], "session");
        assert_eq!(me["groups"][0]["name"], "backend");

        // Bob's DM to the session key is stamped and opened with the session key.
        bc.send_dm(&bob.ident.sk, &session.pk, "to the session", "now")
            .await;
        let push = s.recv_type("push").await;
        assert_eq!(open_push(&push, &session.sk), "to the session");
        // The session's sends are stamped with the session key.
        s.send_dm(&session.sk, &bob.ident.pk, "from the session", "now")
            .await;
        let push = bc.recv_type("push").await;
        assert_eq!(push["senderPubkey"], session.pk);
        assert_eq!(open_push(&push, &bob.ident.sk), "from the session");

        // The same signed session_hello again is a replay.
        let mut r = V1Client {
            ws: V1Client::raw(&b.ws()).await,
            key: String::new(),
        };
        r.send(hello).await;
        let err = r.recv().await;
        assert_eq!(err["code"], "replay", "{err}");
    }

    #[tokio::test]
    async fn refusals_before_and_at_hello() {
        let b = TestBroker::start().await;
        let mesh = create_mesh(&b, "refuse").await;
        let alice = enroll(&b, &mesh, "alice").await;

        // A frame before hello gets no_hello, echoing _reqId, and the connection stays open.
        let mut c = V1Client {
            ws: V1Client::raw(&b.ws()).await,
            key: String::new(),
        };
        c.send(json!({ "type": "list_peers", "_reqId": "early" }))
            .await;
        let err = c.recv().await;
        assert_eq!(
            (
                err["type"].as_str(),
                err["code"].as_str(),
                err["_reqId"].as_str()
            ),
            (Some("error"), Some("no_hello"), Some("early"))
        );
        // Then a valid hello still works on the same connection.
        let hello = hello_frame(&alice, "s1", now_ms());
        c.send(hello.clone()).await;
        assert_eq!(c.recv().await["type"], "hello_ack");

        // Replaying the same signed hello is refused.
        let mut r = V1Client {
            ws: V1Client::raw(&b.ws()).await,
            key: String::new(),
        };
        r.send(hello).await;
        assert_eq!(r.recv().await["code"], "replay");
        assert_eq!(r.closed(WAIT).await, Some(1008));

        // A hello two minutes old is refused for skew.
        let mut s = V1Client {
            ws: V1Client::raw(&b.ws()).await,
            key: String::new(),
        };
        s.send(hello_frame(&alice, "s2", now_ms() - 120_000)).await;
        assert_eq!(s.recv().await["code"], "timestamp_skew");

        // A bad signature.
        let mut bad = hello_frame(&alice, "s3", now_ms());
        bad["timestamp"] = json!(now_ms() + 1);
        let mut s = V1Client {
            ws: V1Client::raw(&b.ws()).await,
            key: String::new(),
        };
        s.send(bad).await;
        assert_eq!(s.recv().await["code"], "bad_signature");

        // A stranger with a valid signature is not a member.
        let stranger = Member {
            ident: Ident::new(),
            member_id: "nobody".into(),
            mesh_id: mesh.id.clone(),
            name: "x".into(),
        };
        let mut s = V1Client {
            ws: V1Client::raw(&b.ws()).await,
            key: String::new(),
        };
        s.send(hello_frame(&stranger, "s4", now_ms())).await;
        assert_eq!(s.recv().await["code"], "unauthorized");

        // Unknown type after hello: error, connection stays open.
        c.send(json!({ "type": "teleport", "_reqId": 7 })).await;
        let err = c.recv().await;
        assert_eq!(err["code"], "unknown_message_type");
        assert_eq!(err["_reqId"], 7);
        // Garbage JSON: malformed, still open.
        futures_util::SinkExt::send(
            &mut c.ws,
            tokio_tungstenite::tungstenite::Message::Text("{not json".into()),
        )
        .await
        .unwrap();
        assert_eq!(c.recv().await["code"], "malformed");
        assert!(!c.peers().await.is_empty());
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_and_broker_stays_healthy() {
        let b = TestBroker::start().await;
        let mesh = create_mesh(&b, "big").await;
        let alice = enroll(&b, &mesh, "alice").await;
        let mut c = V1Client::connect(&b.ws(), &alice).await;
        let huge =
            json!({ "type": "send", "targetSpec": "*", "nonce": "", "ciphertext": "x".repeat(70_000) });
        let _ = futures_util::SinkExt::send(
            &mut c.ws,
            tokio_tungstenite::tungstenite::Message::Text(huge.to_string().into()),
        )
        .await;
        let code = c.closed(WAIT).await;
        assert!(
            matches!(code, Some(1009 | 1006 | 1005)),
            "closed with {code:?}"
        );
        let health = reqwest::get(format!("{}/health", b.http())).await.unwrap();
        assert_eq!(health.status().as_u16(), 200);
        let body: Value = health.json().await.unwrap();
        assert_eq!(body["status"], "ok");
        assert_eq!(body["db"], "up");
        // New connections still work.
        let mut again = V1Client::connect_session(&b.ws(), &alice, "again").await;
        assert!(!again.peers().await.is_empty());
    }

    #[tokio::test]
    async fn hello_deadline_closes_silent_connections() {
        let b = TestBroker::start_with(|c| c.timings.hello_deadline = Duration::from_millis(300)).await;
        let mut c = V1Client {
            ws: V1Client::raw(&b.ws()).await,
            key: String::new(),
        };
        assert_eq!(c.closed(WAIT).await, Some(1008));
    }

    #[tokio::test]
    async fn join_errors_follow_v1() {
        let b = TestBroker::start().await;
        let mesh = create_mesh(&b, "joins").await;
        let peer = Ident::new();

        // Expired.
        let expired = invite(&b, &mesh, 5, -10).await;
        let (s, v) = join_raw(&b, &expired, &peer, "p").await;
        assert_eq!(
            (s, v["ok"].clone(), v["error"].as_str()),
            (400, json!(false), Some("invite_expired"))
        );

        // Tampered: change the slug after signing.
        let mut tampered = invite(&b, &mesh, 5, 3600).await;
        tampered.mesh_slug = "evil".into();
        let (s, v) = join_raw(&b, &tampered, &peer, "p").await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invite_bad_signature"))
        );

        // Signed but never registered.
        let unregistered = claudemesh_proto::invite::InvitePayload::sign(
            &mesh.id,
            &mesh.slug,
            &b.ws(),
            now_ms() / 1000 + 60,
            claudemesh_proto::invite::InviteRole::Member,
            &mesh.owner.sk,
        );
        assert_eq!(
            join_raw(&b, &unregistered, &peer, "p").await.1["error"],
            "invite_not_found"
        );

        // Signed by a stranger.
        let stranger = Ident::new();
        let forged = claudemesh_proto::invite::InvitePayload::sign(
            &mesh.id,
            &mesh.slug,
            &b.ws(),
            now_ms() / 1000 + 60,
            claudemesh_proto::invite::InviteRole::Member,
            &stranger.sk,
        );
        assert_eq!(
            join_raw(&b, &forged, &peer, "p").await.1["error"],
            "invite_owner_mismatch"
        );

        // Single use: the second distinct key finds it exhausted; re-joining spends nothing.
        let once = invite(&b, &mesh, 1, 3600).await;
        let (s, v) = join_raw(&b, &once, &peer, "p").await;
        assert_eq!((s, v["alreadyMember"].as_bool()), (200, Some(false)));
        let (s, again) = join_raw(&b, &once, &peer, "p").await;
        assert_eq!((s, again["alreadyMember"].as_bool()), (200, Some(true)));
        assert_eq!(again["memberId"], v["memberId"]);
        assert_eq!(
            join_raw(&b, &once, &Ident::new(), "q").await.1["error"],
            "invite_exhausted"
        );

        // Garbage body.
        let (s, v) = post(&format!("{}/join", b.http()), &json!({ "nope": 1 })).await;
        assert_eq!((s, v["ok"].clone()), (400, json!(false)));
    }

    #[tokio::test]
    async fn concurrent_joins_on_single_use_invite_exactly_one_wins() {
        let b = TestBroker::start().await;
        let mesh = create_mesh(&b, "race").await;
        let inv = invite(&b, &mesh, 1, 3600).await;
        let idents: Vec<Ident> = (0..16).map(|_| Ident::new()).collect();
        let results =
            futures_util::future::join_all(idents.iter().map(|i| join_raw(&b, &inv, i, "racer"))).await;
        let wins = results.iter().filter(|(s, _)| *s == 200).count();
        let exhausted = results
            .iter()
            .filter(|(_, v)| v["error"] == "invite_exhausted")
            .count();
        assert_eq!((wins, exhausted), (1, 15), "{results:?}");
    }

    #[tokio::test]
    async fn health_and_metrics() {
        let b = TestBroker::start().await;
        let mesh = create_mesh(&b, "metrics").await;
        let alice = enroll(&b, &mesh, "alice").await;
        let bob = enroll(&b, &mesh, "bob").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        a.send_dm(&alice.ident.sk, &bob.ident.pk, "queued", "now")
            .await;
        let text = metrics(&b).await;
        for name in [
            "broker_connections_active 1",
            "broker_messages_routed_total 1",
            "broker_messages_rejected_total 0",
            "broker_queue_depth 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    /// Bodies over the HTTP limit are refused with 413 and a JSON error, on every endpoint.
    #[tokio::test]
    async fn oversized_http_bodies_get_413_with_a_code() {
        let b = TestBroker::start().await;
        let big = json!({ "name": "x".repeat(70_000), "slug": "big" });
        let (status, body) = post(&format!("{}/api/meshes", b.http()), &big).await;
        assert_eq!(status, 413, "{body}");
        assert_eq!(body["error"], "payload_too_large", "{body}");
        let (status, _) = post(&format!("{}/api/meshes/m/members/list", b.http()), &big).await;
        assert_eq!(status, 413);
    }
}
