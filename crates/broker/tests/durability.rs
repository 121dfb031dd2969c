//! Nothing acknowledged is lost: a real `claudemesh-broker` process killed with SIGKILL
//! after N acknowledged sends delivers all N after a restart on the same data directory;

//! a graceful shutdown closes sockets with 1001 and keeps the queue.

// Integration tests: helpers outside #[test] fns may unwrap and panic like the tests do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[macro_use]
mod common;

use std::collections::HashSet;

use common::*;

on_every_backend! {
    #[tokio::test]
    async fn kill_9_after_acked_sends_loses_nothing() {
        let b = TestBroker::spawn_process(Data::new());
        let mesh = create_mesh(&b, "durable").await;
        let alice = enroll(&b, &mesh, "alice").await;
        let bob = enroll(&b, &mesh, "bob").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;

        // Pipeline N sends and wait for every ack (each ack means "durably committed").
        const N: usize = 300;
        let bob_key = claudemesh_crypto::PublicKey::from_hex(&bob.ident.pk).unwrap();
        for i in 0..N {
            let nonce = claudemesh_crypto::random_nonce();
            let ct = claudemesh_crypto::box_seal(
                format!("msg {i}").as_bytes(),
                &nonce,
                &bob_key,
                &alice.ident.sk,
            );
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD;
            a.send(serde_json::json!({ "type": "send", "targetSpec": bob.ident.pk, "priority": "now", "nonce": b64.encode(nonce), "ciphertext": b64.encode(ct), "id": i.to_string() })).await;
        }
        let mut acked = HashSet::new();
        for _ in 0..N {
            let ack = a.recv_type("ack").await;
            assert_eq!(ack["queued"], true, "{ack}");
            acked.insert(ack["messageId"].as_str().unwrap().to_owned());
        }
        assert_eq!(acked.len(), N);

        // No graceful anything: SIGKILL, then a new process on the same directory.
        drop(a);
        let dir = b.kill9();
        let b = TestBroker::spawn_process(dir);
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        let mut got = HashSet::new();
        let mut texts = HashSet::new();
        while got.len() < N {
            let push = bc
                .next_push(WAIT)
                .await
                .unwrap_or_else(|| panic!("only {} of {N} delivered after restart", got.len()));
            texts.insert(open_push(&push, &bob.ident.sk));
            got.insert(push["messageId"].as_str().unwrap().to_owned());
            bc.ack(&push).await;
        }
        assert_eq!(got, acked, "exactly the acknowledged messages");
        assert_eq!(texts.len(), N);
    }

    #[tokio::test]
    async fn graceful_shutdown_closes_with_1001_and_keeps_the_queue() {
        let b = TestBroker::start().await;
        let mesh = create_mesh(&b, "graceful").await;
        let alice = enroll(&b, &mesh, "alice").await;
        let bob = enroll(&b, &mesh, "bob").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let ack = a
            .send_dm(&alice.ident.sk, &bob.ident.pk, "survive the restart", "now")
            .await;
        let stopping = tokio::spawn(async move { a.closed(WAIT).await });
        let dir = b.stop().await;
        assert_eq!(stopping.await.unwrap(), Some(1001));

        let b = TestBroker::start_in(dir, |_| {}).await;
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        let push = bc.next_push(WAIT).await.unwrap();
        assert_eq!(push["messageId"], ack["messageId"]);
        assert_eq!(open_push(&push, &bob.ident.sk), "survive the restart");
    }
}
