//! Micro-benchmarks of the hot paths, so a change's cost is visible without a full burst:
//! `cargo bench -p claudemesh-bench`. The harness is `divan` (median, mean and spread per
//! operation over many samples). Numbers are for comparing two builds on the same
//! machine in the same session.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)] // a bench binary

use std::sync::LazyLock;

use claudemesh_client::envelope::{self, Incoming, Keyring, SealedDirect};
use claudemesh_crypto::SecretKey;
use claudemesh_proto::frames::{BrokerFrame, ClientFrame, Priority, Push};
use claudemesh_store::{Inserted, MessageRow, NewDelivery, SqliteStore, Store};
use divan::{Bencher, black_box};

fn main() {
    divan::main();
}

/// Two identities, a 200-byte body and one sealed copy of it, shared by every bench.
struct Fixture {
    alice: SecretKey,
    bob: SecretKey,
    body: String,
    sealed: SealedDirect,
}

static FIX: LazyLock<Fixture> = LazyLock::new(|| {
    let alice = SecretKey::generate();
    let bob = SecretKey::generate();
    let body = "x".repeat(200);
    let sealed = envelope::seal_direct(&alice, &bob.public(), "mesh", "id-1", 1, &body);
    Fixture {
        alice,
        bob,
        body,
        sealed,
    }
});

#[divan::bench]
fn proto_parse_send_frame(b: Bencher) {
    let f = &*FIX;
    let json = serde_json::json!({
        "type": "send", "targetSpec": f.bob.public().to_hex(), "priority": "now",
        "nonce": f.sealed.nonce, "ciphertext": f.sealed.ciphertext, "id": "7", "client_message_id": "c-7"
    })
    .to_string();
    b.bench(|| serde_json::from_str::<ClientFrame>(black_box(&json)).unwrap());
}

#[divan::bench]
fn proto_render_push_frame(b: Bencher) {
    let f = &*FIX;
    let push = BrokerFrame::Push(Push {
        message_id: "0123456789abcdef0123456789abcdef".into(),
        mesh_id: "mesh".into(),
        sender_pubkey: f.alice.public().to_hex(),
        priority: Priority::Now,
        nonce: f.sealed.nonce.clone(),
        ciphertext: f.sealed.ciphertext.clone(),
        created_at: "2026-11-29T18:00:00.000Z".into(),
        client_message_id: Some("c-7".into()),
        sender_member_pubkey: None,
        sender_name: None,
        target_spec: Some(f.bob.public().to_hex()),
        sealed_key: None,
        subtype: None,
        event: None,
        event_data: None,
    });
    b.bench(|| serde_json::to_string(black_box(&push)).unwrap());
}

#[divan::bench]
fn envelope_seal_direct_one_shot(b: Bencher) {
    let f = &*FIX;
    let bob = f.bob.public();
    b.bench(|| envelope::seal_direct(&f.alice, &bob, "mesh", "id", 1, black_box(&f.body)));
}

#[divan::bench]
fn envelope_seal_direct_keyring(b: Bencher) {
    let f = &*FIX;
    let bob = f.bob.public();
    let mut ring = Keyring::new(f.alice.clone());
    b.bench_local(|| ring.seal_direct(&bob, "mesh", "id", 1, black_box(&f.body)));
}

#[divan::bench]
fn envelope_open_verify_keyring(b: Bencher) {
    let f = &*FIX;
    let (alice_hex, bob_hex) = (f.alice.public().to_hex(), f.bob.public().to_hex());
    let incoming = Incoming {
        sender_pubkey: &alice_hex,
        mesh_id: "mesh",
        target_spec: Some(&bob_hex),
        nonce: &f.sealed.nonce,
        ciphertext: &f.sealed.ciphertext,
        sealed_key: None,
    };
    let mut ring = Keyring::new(f.bob.clone());
    b.bench_local(|| ring.open(black_box(&incoming)));
}

/// 1 000 direct messages, each stored with its delivery, then one commit.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn store_1000_sends_and_commit(b: Bencher) {
    let f = &*FIX;
    let (alice_hex, bob_hex) = (f.alice.public().to_hex(), f.bob.public().to_hex());
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(&dir.path().join("bench.db")).unwrap();
    let mut n = 0u64;
    b.bench_local(|| {
        for _ in 0..1000 {
            n += 1;
            let m = MessageRow {
                message_id: format!("{n:032x}"),
                mesh_id: "mesh".into(),
                sender_pubkey: alice_hex.clone(),
                sender_member_pubkey: alice_hex.clone(),
                sender_name: "alice".into(),
                target_spec: bob_hex.clone(),
                priority: Priority::Now,
                nonce: f.sealed.nonce.clone(),
                ciphertext: f.sealed.ciphertext.clone(),
                client_message_id: Some(format!("c-{n}")),
                created_at: 1,
                expires_at: i64::MAX,
            };
            let copy = NewDelivery {
                recipient: &bob_hex,
                sealed_key: None,
            };
            let inserted = store.insert_message(&m, &[copy]).unwrap();
            assert!(matches!(inserted, Inserted::New(_)));
        }
        store.commit().unwrap();
    });
}
