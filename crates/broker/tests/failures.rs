//! Failure paths with real components: a storage failure (injected around the real SQLite
//! store) fails the batch's acks, rolls back, closes connections and turns /health to
//! 503, and the broker recovers when storage does; a reader that stops reading is
//! disconnected and gets everything later.

// Integration tests: helpers outside #[test] fns may unwrap and panic like the tests do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[macro_use]
mod common;

use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use std::time::Duration;

use claudemesh_broker::Broker;

use claudemesh_proto::authority::Removal;

use claudemesh_store::{
    Claim, Inserted, InviteRow, MemberRow, MeshRow, MessageDeliveries, MessageRow, NewDelivery,
    PeerRow, PendingDelivery, Result, Store, StoreError,
};

use common::*;

use serde_json::{Value, json};

/// The real SQLite store, with a switch that makes commits and pings fail.
struct Faulty {
    inner: Box<dyn Store>,
    fail: Arc<AtomicBool>,
}

impl Faulty {
    fn check(&self) -> Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Open {
                path: "injected".into(),
                reason: "disk unplugged".into(),
            });
        }
        Ok(())
    }
}

impl Store for Faulty {
    fn commit(&mut self) -> Result<()> {
        if let Err(e) = self.check() {
            self.inner.rollback()?;
            return Err(e);
        }
        self.inner.commit()
    }
    fn rollback(&mut self) -> Result<()> {
        self.inner.rollback()
    }
    fn ping(&mut self) -> Result<()> {
        self.check()?;
        self.inner.ping()
    }
    fn load_meshes(&mut self) -> Result<Vec<MeshRow>> {
        self.inner.load_meshes()
    }
    fn load_members(&mut self) -> Result<Vec<MemberRow>> {
        self.inner.load_members()
    }
    fn load_peers(&mut self) -> Result<Vec<PeerRow>> {
        self.inner.load_peers()
    }
    fn insert_mesh(&mut self, mesh: &MeshRow) -> Result<()> {
        self.inner.insert_mesh(mesh)
    }
    fn upsert_member(&mut self, member: &MemberRow) -> Result<()> {
        self.inner.upsert_member(member)
    }
    fn upsert_peer(&mut self, peer: &PeerRow) -> Result<()> {
        self.inner.upsert_peer(peer)
    }
    fn invite(&mut self, id: &str) -> Result<Option<InviteRow>> {
        self.inner.invite(id)
    }
    fn invites(&mut self, mesh_id: &str) -> Result<Vec<InviteRow>> {
        self.inner.invites(mesh_id)
    }
    fn upsert_invite(&mut self, invite: &InviteRow) -> Result<()> {
        self.inner.upsert_invite(invite)
    }
    fn claim_invite_use(&mut self, mesh: &str, id: &str, now_s: i64) -> Result<Claim> {
        self.inner.claim_invite_use(mesh, id, now_s)
    }
    fn revoke_invite(&mut self, mesh: &str, id: &str) -> Result<bool> {
        self.inner.revoke_invite(mesh, id)
    }
    fn remove_member(&mut self, mesh: &str, member: &str, removal: Removal) -> Result<bool> {
        self.inner.remove_member(mesh, member, removal)
    }
    fn insert_message(&mut self, m: &MessageRow, copies: &[NewDelivery<'_>]) -> Result<Inserted> {
        self.inner.insert_message(m, copies)
    }
    fn find_message_by_client_id(
        &mut self,
        mesh: &str,
        sender: &str,
        cmid: &str,
    ) -> Result<Option<String>> {
        self.inner.find_message_by_client_id(mesh, sender, cmid)
    }
    fn ack_deliveries(&mut self, seqs: &[i64], now: i64) -> Result<u64> {
        self.inner.ack_deliveries(seqs, now)
    }
    fn ack_delivery(&mut self, mesh: &str, to: &str, id: &str, now: i64) -> Result<bool> {
        self.inner.ack_delivery(mesh, to, id, now)
    }
    fn ack_delivery_by_client_id(
        &mut self,
        mesh: &str,
        to: &str,
        cmid: &str,
        now: i64,
    ) -> Result<Option<String>> {
        self.inner.ack_delivery_by_client_id(mesh, to, cmid, now)
    }
    fn pending(
        &mut self,
        mesh: &str,
        to: &str,
        after: i64,
        limit: usize,
        now: i64,
    ) -> Result<Vec<PendingDelivery>> {
        self.inner.pending(mesh, to, after, limit, now)
    }
    fn message_deliveries(
        &mut self,
        mesh: &str,
        id: &str,
        limit: usize,
    ) -> Result<Option<MessageDeliveries>> {
        self.check()?;
        self.inner.message_deliveries(mesh, id, limit)
    }
    fn queue_depth(&mut self, now: i64) -> Result<i64> {
        self.inner.queue_depth(now)
    }
    fn put_operator(&mut self, o: &claudemesh_store::OperatorRow) -> Result<()> {
        self.inner.put_operator(o)
    }
    fn operator(&mut self, name: &str) -> Result<Option<claudemesh_store::OperatorRow>> {
        self.inner.operator(name)
    }
    fn operators(&mut self) -> Result<Vec<claudemesh_store::OperatorRow>> {
        self.inner.operators()
    }
    fn remove_operator(&mut self, name: &str) -> Result<bool> {
        self.inner.remove_operator(name)
    }
    fn set_operator_password(&mut self, n: &str, s: &str, p: &str, now: i64) -> Result<bool> {
        self.inner.set_operator_password(n, s, p, now)
    }
    fn queue_depths(&mut self, mesh_id: &str, now: i64) -> Result<Vec<(String, i64)>> {
        self.inner.queue_depths(mesh_id, now)
    }
    fn drop_undelivered(&mut self, mesh_id: &str, recipient: &str, now: i64) -> Result<u64> {
        self.inner.drop_undelivered(mesh_id, recipient, now)
    }
    fn purge_expired(&mut self, now: i64) -> Result<u64> {
        self.inner.purge_expired(now)
    }
    fn remember_signature(&mut self, sig: &str, exp: i64) -> Result<bool> {
        self.inner.remember_signature(sig, exp)
    }
}

async fn health(b: &TestBroker) -> (u16, Value) {
    let r = reqwest::get(format!("{}/health", b.http())).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// A broker over the test backend's real store behind [`Faulty`], and its failure switch.
async fn faulty_broker() -> (TestBroker, Arc<AtomicBool>) {
    let data = Data::new();
    let fail = Arc::new(AtomicBool::new(false));
    let store = Faulty {
        inner: data.open_store(),
        fail: fail.clone(),
    };
    let handle = Broker::spawn_with_store(data.config(), Box::new(store))
        .await
        .unwrap();
    (TestBroker::serving(handle, data), fail)
}

on_every_backend! {
    /// Disk trouble while a client pipelines sends: every ack the broker wrote reaches the
    /// client (each one `unavailable`, none claiming the message was stored), and the close
    /// that follows arrives as 1001, not as a bare drop, although the client still had
    /// frames in flight when the broker closed.
    #[tokio::test]
    async fn pipelined_sends_during_a_storage_failure_get_their_acks_and_a_clean_close() {
        use futures_util::{SinkExt as _, StreamExt as _};
        use tokio_tungstenite::tungstenite::Message;
        let (b, fail) = faulty_broker().await;
        let mesh = create_mesh(&b, "faulty").await;
        let alice = enroll(&b, &mesh, "alice").await;
        let bob = enroll(&b, &mesh, "bob").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        fail.store(true, Ordering::SeqCst);
        let frame = |i: usize| json!({"type": "send", "targetSpec": bob.ident.pk, "priority": "now", "nonce": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "ciphertext": "AAAA", "id": format!("p{i}")});
        let frames = (0..300).map(|i| Ok(Message::Text(frame(i).to_string().into())));
        // Written without waiting for answers; some may find the socket already closing.
        let _ = a.ws.send_all(&mut futures_util::stream::iter(frames)).await;
        let mut acks = Vec::new();
        let code = loop {
            match tokio::time::timeout(WAIT, a.ws.next())
                .await
                .expect("no close")
            {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == "ack" {
                        acks.push(v);
                    }
                }
                Some(Ok(Message::Close(f))) => break f.map_or(1005, |f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break 1006,
            }
        };
        assert_eq!(
            code,
            1001,
            "a close frame, not a drop, after {} acks",
            acks.len()
        );
        assert!(!acks.is_empty(), "the failed batch was answered");
        for ack in &acks {
            assert_eq!(
                (ack["queued"].as_bool(), ack["error"].as_str()),
                (Some(false), Some("unavailable")),
                "{ack}"
            );
        }
    }

    #[tokio::test]
    async fn storage_failure_fails_acks_closes_connections_and_recovers() {
        let (b, fail) = faulty_broker().await;
        let mesh = create_mesh(&b, "faulty").await;
        let alice = enroll(&b, &mesh, "alice").await;
        let bob = enroll(&b, &mesh, "bob").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;

        fail.store(true, Ordering::SeqCst);
        let ack = a
            .send_dm(&alice.ident.sk, &bob.ident.pk, "never stored", "now")
            .await;
        assert_eq!(
            (ack["queued"].as_bool(), ack["error"].as_str()),
            (Some(false), Some("unavailable")),
            "{ack}"
        );
        assert_eq!(
            a.closed(WAIT).await,
            Some(1001),
            "connections are closed so state is rebuilt"
        );
        let (status, body) = health(&b).await;
        assert_eq!(
            (status, body["db"].as_str(), body["status"].as_str()),
            (503, Some("down"), Some("degraded"))
        );

        fail.store(false, Ordering::SeqCst);
        let mut recovered = false;
        for _ in 0..50 {
            if health(&b).await.0 == 200 {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(recovered, "health returns to 200 when storage does");
        let mut a = V1Client::connect_session(&b.ws(), &alice, "after").await;
        a.send_dm(&alice.ident.sk, &bob.ident.pk, "stored", "now")
            .await;
        let mut bc = V1Client::connect(&b.ws(), &bob).await;
        let push = bc.next_push(WAIT).await.unwrap();
        assert_eq!(
            open_push(&push, &bob.ident.sk),
            "stored",
            "the failed send was rolled back, not delivered"
        );
        bc.ack(&push).await;
        assert!(bc.next_push(Duration::from_millis(300)).await.is_none());
    }

    #[tokio::test]
    async fn a_reader_that_stops_reading_is_dropped_and_gets_everything_later() {
        // A stalled reader holds 32 unacked pushes; every 300 ms lease they are pushed again,
        // so its queue passes the 64-push bound within a second or two.
        let b = TestBroker::start_with(|c| {
            c.outbound_buffer = 64;
            c.inflight_window = 32;
            c.timings.lease = Duration::from_millis(300);
        })
        .await;
        let mesh = create_mesh(&b, "slow").await;
        let alice = enroll(&b, &mesh, "alice").await;
        let bob = enroll(&b, &mesh, "bob").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let stalled = V1Client::connect(&b.ws(), &bob).await; // never read from again

        // ~18 MB of pushes: far more than the socket buffers and 8 queued frames hold.
        const N: usize = 300;
        let body = "A".repeat(60_000);
        for i in 0..N {
            a.send(json!({ "type": "send", "targetSpec": bob.ident.pk, "priority": "now", "nonce": "", "ciphertext": body, "id": i.to_string() })).await;
        }
        for _ in 0..N {
            assert_eq!(a.recv_type("ack").await["queued"], true);
        }
        let mut dropped = false;
        for _ in 0..100 {
            if metrics(&b).await.contains("broker_slow_consumers_total 1") {
                dropped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(dropped, "the stalled reader was not disconnected");
        drop(stalled);

        // Back with a reader that keeps up: every message arrives, in order.
        let mut bc = V1Client::connect_session(&b.ws(), &bob, "fast").await;
        let mut seen = std::collections::HashSet::new();
        while seen.len() < N {
            let push = bc
                .next_push(WAIT)
                .await
                .unwrap_or_else(|| panic!("{} of {N}", seen.len()));
            seen.insert(push["messageId"].as_str().unwrap().to_owned());
            bc.ack(&push).await;
        }
    }
}
