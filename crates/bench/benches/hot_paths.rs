//! Micro-benchmarks of the hot paths, so a change's cost is visible without a full burst:
//! `cargo bench -p claudemesh-bench`. Each case runs in batches and reports the median
//! time per operation over several samples (criterion-style, without the dependency).
//! Numbers are for comparing two builds on the same machine in the same session.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)] // a bench binary

use std::hint::black_box;
use std::time::Instant;

use claudemesh_client::envelope::{self, Incoming, Keyring};
use claudemesh_crypto::SecretKey;
use claudemesh_proto::frames::{BrokerFrame, ClientFrame, Priority, Push};
use claudemesh_store::{MessageRow, SqliteStore, Store};

/// Median nanoseconds per call of `f` over 7 samples of `iters` calls.
fn bench(name: &str, iters: u32, mut f: impl FnMut()) {
    for _ in 0..iters / 10 + 1 {
        f();
    }
    let mut samples: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(iters)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    let median = samples.get(samples.len() / 2).copied().unwrap_or_default();
    let (unit, value) = if median > 1e6 {
        ("ms", median / 1e6)
    } else if median > 1e3 {
        ("µs", median / 1e3)
    } else {
        ("ns", median)
    };
    println!("{name:<44} {value:>9.2} {unit}/op");
}

fn main() {
    let alice = SecretKey::generate();
    let bob = SecretKey::generate();
    let body = "x".repeat(200);

    let sealed = envelope::seal_direct(&alice, &bob.public(), "mesh", "id-1", 1, &body);
    let send_json = serde_json::json!({
        "type": "send", "targetSpec": bob.public().to_hex(), "priority": "now",
        "nonce": sealed.nonce, "ciphertext": sealed.ciphertext, "id": "7", "client_message_id": "c-7"
    })
    .to_string();
    bench("proto: parse a send frame", 20_000, || {
        black_box(serde_json::from_str::<ClientFrame>(black_box(&send_json)).unwrap());
    });

    let push = BrokerFrame::Push(Push {
        message_id: "0123456789abcdef0123456789abcdef".into(),
        mesh_id: "mesh".into(),
        sender_pubkey: alice.public().to_hex(),
        priority: Priority::Now,
        nonce: sealed.nonce.clone(),
        ciphertext: sealed.ciphertext.clone(),
        created_at: "2026-11-29T18:00:00.000Z".into(),
        client_message_id: Some("c-7".into()),
        sender_member_pubkey: None,
        sender_name: None,
        target_spec: Some(bob.public().to_hex()),
        sealed_key: None,
        subtype: None,
        event: None,
        event_data: None,
    });
    bench("proto: render a push frame", 20_000, || {
        black_box(serde_json::to_string(black_box(&push)).unwrap());
    });

    bench("envelope: seal direct, one-shot", 2_000, || {
        black_box(envelope::seal_direct(
            &alice,
            &bob.public(),
            "mesh",
            "id",
            1,
            &body,
        ));
    });
    let mut ring = Keyring::new(alice.clone());
    bench("envelope: seal direct, keyring", 20_000, || {
        black_box(ring.seal_direct(&bob.public(), "mesh", "id", 1, &body));
    });
    let alice_hex = alice.public().to_hex();
    let bob_hex = bob.public().to_hex();
    let incoming = Incoming {
        sender_pubkey: &alice_hex,
        mesh_id: "mesh",
        target_spec: Some(&bob_hex),
        nonce: &sealed.nonce,
        ciphertext: &sealed.ciphertext,
        sealed_key: None,
    };
    let mut bob_ring = Keyring::new(bob);
    bench("envelope: open + verify direct, keyring", 20_000, || {
        black_box(bob_ring.open(&incoming));
    });

    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(&dir.path().join("bench.db")).unwrap();
    let mut n = 0u64;
    bench("store: 1000 sends (body + delivery) + commit", 5, || {
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
                nonce: sealed.nonce.clone(),
                ciphertext: sealed.ciphertext.clone(),
                client_message_id: Some(format!("c-{n}")),
                created_at: 1,
                expires_at: i64::MAX,
            };
            let copy = claudemesh_store::NewDelivery {
                recipient: &bob_hex,
                sealed_key: None,
            };
            let inserted = store.insert_message(&m, &[copy]).unwrap();
            assert!(matches!(inserted, claudemesh_store::Inserted::New(_)));
        }
        store.commit().unwrap();
    });
}
