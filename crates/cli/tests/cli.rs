//! The real `claudemesh` binary against a real broker (port 0, SQLite in a temp dir):
//! create a mesh, invite, join, send by name to an offline peer, read with `inbox`,
//! encrypted broadcast, `verify`, invite errors, revocation, and DMs with a client that
//! speaks only WIRE-V1 frames.

// Integration tests: helpers outside #[test] fns may unwrap and panic like the tests do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use claudemesh_crypto::{PublicKey, SecretKey, box_open, box_seal, random_nonce};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_dm_by_name_broadcast_verify_and_whoami() {
    let (b, broker_dir) = broker().await;
    let (owner, alice, bob) = mesh(&b).await;

    // Bob has never connected: alice sends to him by name; he reads it later.
    let sent = alice
        .json(&[
            "send",
            "bob",
            "the stripe webhook signature bug is in verify()",
            "--priority",
            "now",
        ])
        .await;
    assert_eq!(
        (
            sent["to"].as_str(),
            sent["recipients"].as_u64(),
            sent["delivery"].as_str()
        ),
        (Some("bob"), Some(1), Some("direct"))
    );
    let inbox = bob.json(&["inbox"]).await;
    let msgs = inbox.as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{inbox}");
    assert_eq!(
        msgs[0]["text"],
        "the stripe webhook signature bug is in verify()"
    );
    assert_eq!(msgs[0]["kind"], "verified");
    assert_eq!(msgs[0]["from"], "alice");
    // Read messages are not shown again; the history still has them.
    assert_eq!(bob.json(&["inbox"]).await.as_array().unwrap().len(), 0);
    assert_eq!(
        bob.json(&["inbox", "--all"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let text = bob.ok(&["inbox", "--all"]).await;
    assert!(
        text.contains("alice") && text.contains("verify()"),
        "{text}"
    );

    // A broadcast reaches bob later; on the broker it is ciphertext only.
    let bc = alice
        .json(&["send", "*", "who has seen the flaky checkout test?"])
        .await;
    assert_eq!(bc["delivery"], "sealed-multicast");
    assert!(bc["recipients"].as_u64().unwrap() >= 2, "{bc}");
    let got = bob.json(&["inbox"]).await;
    assert_eq!(
        got[0]["text"], "who has seen the flaky checkout test?",
        "{got}"
    );
    assert_eq!(
        owner.json(&["inbox"]).await[0]["text"],
        "who has seen the flaky checkout test?"
    );
    let db = stored_bodies(&broker_dir.path().join("claudemesh.db"));
    assert!(
        !db.contains("flaky checkout") && !db.contains("stripe webhook"),
        "plaintext reached the broker"
    );

    // Safety numbers agree on both sides.
    let a = alice.json(&["verify", "bob"]).await;
    let bv = bob.json(&["verify", "alice"]).await;
    assert_eq!(a["safetyNumber"], bv["safetyNumber"]);
    assert_eq!(a["safetyNumber"].as_str().unwrap().split(' ').count(), 12);

    let me = alice.json(&["whoami"]).await;
    assert_eq!(
        (
            me["name"].as_str(),
            me["mesh"].as_str(),
            me["role"].as_str()
        ),
        (Some("alice"), Some("acme-payments"), Some("member"))
    );
    let members = owner.json(&["members"]).await;
    assert_eq!(members.as_array().unwrap().len(), 3);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_summary_and_name_errors() {
    let (b, _d) = broker().await;
    let (_owner, alice, bob) = mesh(&b).await;
    let out = alice.ok(&["peers"]).await;
    assert!(out.contains("NAME") && out.contains("alice (you)"), "{out}");
    alice.ok(&["summary", "fixing the webhook bug"]).await;
    alice.ok(&["status", "set", "working"]).await;
    let unknown = alice.fails(&["send", "carol", "hi"]).await;
    assert!(
        unknown.contains("no peer matches 'carol'") && unknown.contains("bob"),
        "{unknown}"
    );
    let group = alice.fails(&["send", "@", "hi"]).await;
    assert!(group.contains("group name"), "{group}");
    let _ = bob;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_invites_give_one_clear_line() {
    let (b, _d) = broker().await;
    let (owner, _alice, _bob) = mesh(&b).await;
    let carol = User::new();
    assert!(
        carol
            .fails(&["join", "not-a-link!!"])
            .await
            .contains("not a claudemesh invite link")
    );

    let link = owner.ok(&["invite"]).await.trim().to_owned();
    let token = link.strip_prefix("ic://join/").unwrap();
    let mut payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .unwrap(),
    )
    .unwrap();
    payload["mesh_slug"] = json!("evil-mesh");
    let tampered = format!(
        "ic://join/{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    assert!(
        carol
            .fails(&["join", &tampered])
            .await
            .contains("altered or forged")
    );

    let short = owner
        .ok(&["invite", "--expires", "1s"])
        .await
        .trim()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert!(carol.fails(&["join", &short]).await.contains("expired"));

    // Single use: the second person finds it used up.
    let once = owner.ok(&["invite", "--uses", "1"]).await.trim().to_owned();
    carol.ok(&["join", &once, "--name", "carol"]).await;
    let dave = User::new();
    assert!(dave.fails(&["join", &once]).await.contains("used up"));

    // Unreachable broker.
    let lost = User::new();
    let err = lost
        .fails(&["mesh", "create", "x", "--broker", "ws://127.0.0.1:9/ws"])
        .await;
    assert!(err.contains("cannot reach the broker"), "{err}");
    // Not joined at all.
    assert!(lost.fails(&["peers"]).await.contains("not joined a mesh"));
    let ws_url = b.ws_url();
    b.shutdown().await;
    // An admin command against a broker that is gone names the URL the user gave (the
    // WebSocket one), not the HTTP base derived from it.
    let err = owner.fails(&["members"]).await;
    assert!(
        err.contains(&format!(
            "cannot reach the broker at {ws_url}: connection refused"
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_member_can_no_longer_send_and_invites_can_be_managed() {
    let (b, _d) = broker().await;
    let (owner, alice, bob) = mesh(&b).await;
    alice.ok(&["send", "bob", "before"]).await;
    assert!(
        alice.fails(&["kick", "bob"]).await.contains("forbidden"),
        "members cannot remove others"
    );
    owner.ok(&["revoke", "alice"]).await;
    let err = alice.fails(&["send", "bob", "after"]).await;
    assert!(err.contains("revoked"), "{err}");
    let inbox = bob.json(&["inbox"]).await;
    assert_eq!(inbox.as_array().unwrap().len(), 1);

    let list = owner.json(&["invite", "list"]).await;
    assert!(list.as_array().unwrap().len() >= 2);
    let id = owner.json(&["invite"]).await["inviteId"]
        .as_str()
        .unwrap()
        .to_owned();
    owner.ok(&["invite", "revoke", &id]).await;
    let revoked = owner.json(&["invite", "list"]).await;
    assert!(
        revoked
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["inviteId"] == id.as_str() && i["revoked"] == true)
    );

    // Leaving forgets the mesh locally and on the broker.
    bob.ok(&["leave"]).await;
    assert!(bob.fails(&["peers"]).await.contains("not joined"));
    let members = owner.json(&["members"]).await;
    assert!(
        members
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["displayName"] == "bob" && m["removed"] == "kicked")
    );
    b.shutdown().await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Next non-system JSON frame, within 10 s.
async fn next(ws: &mut Ws) -> Value {
    let fut = async {
        loop {
            if let Message::Text(t) = ws.next().await.unwrap().unwrap() {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["subtype"] != "system" {
                    return v;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("no frame within 10 s")
}

/// Open a push as a v1 client does (crypto_box from senderPubkey) and ack it.
async fn open_and_ack(ws: &mut Ws, push: &Value, me: &SecretKey) -> String {
    let nonce: [u8; 24] = B64
        .decode(push["nonce"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let sender = PublicKey::from_hex(push["senderPubkey"].as_str().unwrap()).unwrap();
    let ct = B64.decode(push["ciphertext"].as_str().unwrap()).unwrap();
    let plain = box_open(&ct, &nonce, &sender, me).unwrap();
    let ack = json!({ "type": "client_ack", "brokerMessageId": push["messageId"] });
    ws.send(Message::Text(ack.to_string().into()))
        .await
        .unwrap();
    String::from_utf8(plain).unwrap()
}

/// A client that knows only WIRE-V1: raw JSON frames and libsodium crypto_box.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_both_ways_with_a_wire_v1_client() {
    let (b, _d) = broker().await;
    let (owner, alice, _bob) = mesh(&b).await;

    // The v1 client enrolls with POST /join using an invite from the CLI.
    let link = owner.ok(&["invite"]).await.trim().to_owned();
    let token = link.strip_prefix("ic://join/").unwrap().to_owned();
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&token)
            .unwrap(),
    )
    .unwrap();
    let v1 = SecretKey::generate();
    let v1_pk = v1.public().to_hex();
    let http = b.http_url();
    let joined: Value = reqwest::Client::new()
        .post(format!("{http}/join"))
        .json(&json!({ "invite_token": token, "invite_payload": payload, "peer_pubkey": v1_pk, "display_name": "legacy-bot" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let member_id = joined["memberId"].as_str().unwrap().to_owned();
    let mesh_id = payload["mesh_id"].as_str().unwrap().to_owned();
    let (mut ws, _) = tokio_tungstenite::connect_async(b.ws_url()).await.unwrap();
    let ts = claudemesh_proto::time::now_ms();
    let sig = v1
        .sign_str(&format!("{mesh_id}|{member_id}|{v1_pk}|{ts}"))
        .to_hex();
    ws.send(Message::Text(json!({ "type": "hello", "meshId": mesh_id, "memberId": member_id, "pubkey": v1_pk, "sessionId": "bot", "pid": 1, "cwd": "/", "timestamp": ts, "signature": sig }).to_string().into())).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "hello_ack");

    // CLI → v1 client: a plain v1 body inside crypto_box, readable by libsodium.
    alice.ok(&["send", "legacy-bot", "hello old friend"]).await;
    let push = next(&mut ws).await;
    assert_eq!(push["type"], "push");
    let sender = PublicKey::from_hex(push["senderPubkey"].as_str().unwrap()).unwrap();
    assert_eq!(open_and_ack(&mut ws, &push, &v1).await, "hello old friend");

    // A broadcast from the CLI reaches the v1 client as a readable v1 body too (boxed).
    let bc = alice.json(&["send", "*", "all hands at noon"]).await;
    assert_eq!(bc["delivery"], "sealed-multicast");
    let push = next(&mut ws).await;
    assert!(
        push.get("sealedKey").is_none(),
        "a v1 client cannot open sealed keys: {push}"
    );
    assert_eq!(open_and_ack(&mut ws, &push, &v1).await, "all hands at noon");

    // v1 client → CLI: shown, marked legacy.
    let nonce = random_nonce();
    let ct = box_seal(b"hi from v1", &nonce, &sender, &v1);
    ws.send(Message::Text(json!({ "type": "send", "targetSpec": sender.to_hex(), "priority": "next", "nonce": B64.encode(nonce), "ciphertext": B64.encode(ct), "id": "v1-1" }).to_string().into())).await.unwrap();
    assert_eq!(next(&mut ws).await["queued"], true);
    let inbox = alice.json(&["inbox"]).await;
    assert_eq!(inbox[0]["text"], "hi from v1", "{inbox}");
    assert_eq!(inbox[0]["kind"], "legacy");
    assert!(
        alice
            .ok(&["inbox", "--all"])
            .await
            .contains("legacy, unverified")
    );
    b.shutdown().await;
}

/// The small things a new user hit, each answered with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn papercuts_a_new_user_hit() {
    let (b, _dir) = broker().await;
    let (_owner, alice, _bob) = mesh(&b).await;
    let empty = alice.fails(&["send", "bob", "  "]).await;
    assert!(empty.contains("empty"), "{empty}");
    let invite = alice.fails(&["invite"]).await;
    assert!(invite.contains("only the owner or an admin"), "{invite}");
    let damaged = User::new()
        .fails(&["join", "ic://join/not-a-token!!"])
        .await;
    assert!(damaged.contains("damaged"), "{damaged}");
    let peers = alice.ok(&["peers"]).await;
    assert!(!peers.contains("control-plane"), "{peers}");
}
