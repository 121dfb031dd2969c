//! The Store conformance suite: every backend must pass the same functions. Each runs on
//! SQLite (a temporary file) and on PostgreSQL (a uniquely named database created for the
//! test and dropped afterwards, even on panic), gated by
//! `claudemesh_testdb` (a loud skip without PostgreSQL, a failure when it is required).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use claudemesh_proto::authority::{PeerKind, Removal, Role};
use claudemesh_proto::frames::Priority;
use claudemesh_proto::invite::InviteRole;
use claudemesh_store::{
    Claim, Inserted, InviteRow, MemberRow, MeshRow, MessageRow, NewDelivery, OperatorRow, PeerRow,
    PgStore, SqliteStore, Store, StoreError,
};
use claudemesh_testdb::{PgServer, TestDb};

/// Store `m` with one delivery per `(recipient, sealed key)`; the deliveries' seqs.
fn send(store: &mut dyn Store, m: &MessageRow, to: &[(&str, Option<&str>)]) -> Vec<i64> {
    let copies: Vec<NewDelivery<'_>> = to
        .iter()
        .map(|(recipient, sealed_key)| NewDelivery {
            recipient,
            sealed_key: *sealed_key,
        })
        .collect();
    match store.insert_message(m, &copies).unwrap() {
        Inserted::New(seqs) => seqs,
        other => panic!("expected a new message, got {other:?}"),
    }
}

fn message(id: &str, cmid: Option<&str>, expires_at: i64) -> MessageRow {
    MessageRow {
        message_id: id.into(),
        mesh_id: "m1".into(),
        sender_pubkey: "a".repeat(64),
        sender_member_pubkey: "a".repeat(64),
        sender_name: "alice".into(),
        target_spec: "b".repeat(64),
        priority: Priority::Now,
        nonce: "n".into(),
        ciphertext: "c".into(),
        client_message_id: cmid.map(str::to_owned),
        created_at: 1,
        expires_at,
    }
}

fn seed(store: &mut dyn Store) {
    store
        .insert_mesh(&MeshRow {
            id: "m1".into(),
            slug: "one".into(),
            name: "One".into(),
            owner_pubkey: "o".repeat(64),
            created_at: 1,
        })
        .unwrap();
    store
        .upsert_member(&MemberRow {
            id: "u1".into(),
            mesh_id: "m1".into(),
            pubkey: "a".repeat(64),
            display_name: "alice".into(),
            role: Role::Member,
            joined_at: 1,
            removed: None,
        })
        .unwrap();
    store.commit().unwrap();
}

/// Behaviour every backend must have.
pub fn conformance(store: &mut dyn Store) {
    seed(store);
    let (bob, carol) = ("b".repeat(64), "c".repeat(64));

    // Body once, deliveries per recipient, seq increasing in commit order.
    let seqs = send(
        store,
        &message("msg1", Some("cm1"), 1_000),
        &[(&bob, None), (&carol, Some("sealed"))],
    );
    let (s1, s2) = (seqs[0], seqs[1]);
    // A resend with the same client_message_id inserts nothing and names the original.
    let copy = NewDelivery {
        recipient: &bob,
        sealed_key: None,
    };
    assert_eq!(
        store
            .insert_message(&message("msg1-resend", Some("cm1"), 1_000), &[copy])
            .unwrap(),
        Inserted::Existing("msg1".into())
    );
    let s3 = send(store, &message("msg2", None, 1_000), &[(&bob, None)])[0];
    assert!(s1 < s2 && s2 < s3);
    store.commit().unwrap();
    assert_eq!(store.queue_depth(10).unwrap(), 3);
    assert_eq!(
        store.queue_depths("m1", 10).unwrap(),
        [(bob.clone(), 2), (carol.clone(), 1)]
    );
    assert!(store.queue_depths("other-mesh", 10).unwrap().is_empty());
    assert!(
        store
            .queue_depths("m1", 1_000_000_000_000)
            .unwrap()
            .is_empty(),
        "expired"
    );

    // Pending is per (mesh, recipient), oldest first, after a cursor.
    let p: Vec<String> = store
        .pending("m1", &bob, 0, 10, 10)
        .unwrap()
        .into_iter()
        .map(|d| d.message.message_id)
        .collect();
    assert_eq!(p, ["msg1", "msg2"]);
    assert_eq!(store.pending("m1", &bob, s1, 10, 10).unwrap().len(), 1);
    assert!(
        store
            .pending("other-mesh", &bob, 0, 10, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.pending("m1", &carol, 0, 10, 10).unwrap()[0]
            .sealed_key
            .as_deref(),
        Some("sealed")
    );

    // Acks are scoped to the recipient and happen once.
    assert!(
        !store.ack_delivery("m1", &carol, "msg2", 20).unwrap(),
        "carol has no delivery of msg2"
    );
    assert!(store.ack_delivery("m1", &bob, "msg1", 20).unwrap());
    assert!(
        !store.ack_delivery("m1", &bob, "msg1", 21).unwrap(),
        "second ack changes nothing"
    );
    assert_eq!(
        store
            .ack_delivery_by_client_id("m1", &carol, "cm1", 22)
            .unwrap()
            .as_deref(),
        Some("msg1")
    );
    store.commit().unwrap();
    assert_eq!(store.queue_depth(10).unwrap(), 1);
    assert_eq!(store.queue_depths("m1", 10).unwrap(), [(bob.clone(), 1)]);

    // Idempotent resend lookup.
    assert_eq!(
        store
            .find_message_by_client_id("m1", &"a".repeat(64), "cm1")
            .unwrap()
            .as_deref(),
        Some("msg1")
    );
    assert_eq!(
        store.find_message_by_client_id("m1", &bob, "cm1").unwrap(),
        None
    );

    // Rollback discards.
    let s4 = send(store, &message("msg3", None, 1_000), &[(&bob, None)])[0];
    store.rollback().unwrap();
    assert_eq!(store.ack_deliveries(&[s4], 30).unwrap(), 0, "rolled back");
    assert_eq!(store.pending("m1", &bob, 0, 10, 10).unwrap().len(), 1);

    // Replay memory.
    assert!(store.remember_signature("sig", 100).unwrap());
    assert!(!store.remember_signature("sig", 100).unwrap());
    store.commit().unwrap();

    // Invites and peers round-trip.
    let inv = InviteRow {
        id: "i1".into(),
        mesh_id: "m1".into(),
        role: InviteRole::Member,
        max_uses: 1,
        uses: 0,
        expires_at: 9,
        revoked: false,
        created_by: "o".repeat(64),
        created_at: 1,
    };
    store.upsert_invite(&inv).unwrap();
    store
        .upsert_invite(&InviteRow {
            uses: 1,
            ..inv.clone()
        })
        .unwrap();
    assert_eq!(store.invite("i1").unwrap().unwrap().uses, 1);
    assert_eq!(store.invites("m1").unwrap().len(), 1);
    let peer = PeerRow {
        pubkey: "d".repeat(64),
        mesh_id: "m1".into(),
        member_id: "u1".into(),
        kind: PeerKind::Session,
        display_name: "s".into(),
        groups_json: "[]".into(),
        last_seen: 5,
        e2e_multicast: true,
        retired_at: None,
        online: false,
    };
    store.upsert_peer(&peer).unwrap();
    store
        .upsert_peer(&PeerRow {
            last_seen: 6,
            retired_at: Some(7),
            online: true,
            ..peer
        })
        .unwrap();
    store.commit().unwrap();
    assert_eq!(store.load_peers().unwrap()[0].last_seen, 6);
    assert!(store.load_peers().unwrap()[0].online);
    assert_eq!(store.load_peers().unwrap()[0].retired_at, Some(7));
    assert_eq!(store.load_members().unwrap().len(), 1);
    assert_eq!(store.load_meshes().unwrap()[0].slug, "one");

    // Expiry purges deliveries, orphaned bodies and replay records.
    assert!(store.purge_expired(2_000).unwrap() >= 4);
    store.commit().unwrap();
    assert_eq!(store.queue_depth(10).unwrap(), 0);
    assert!(
        store.remember_signature("sig", 3_000).unwrap(),
        "expired replay record purged"
    );
    store.commit().unwrap();
    store.ping().unwrap();
}

/// Expiry purges exactly the expired prefix, for any boundary.
pub fn purge_boundaries(store: &mut dyn Store) {
    seed(store);
    let bob = "b".repeat(64);
    for i in 1..=101 {
        send(
            store,
            &message(&format!("m{i}"), None, i * 10),
            &[(&bob, None)],
        );
    }
    store.commit().unwrap();
    for (now, left) in [
        (0, 101),
        (10, 100),
        (15, 100),
        (505, 51),
        (1_009, 1),
        (1_010, 0),
    ] {
        store.purge_expired(now).unwrap();
        store.commit().unwrap();
        assert_eq!(
            store.pending("m1", &bob, 0, 1_000, 0).unwrap().len(),
            left,
            "deliveries after purge at {now}"
        );
    }
}

/// Batched acks mark exactly the given deliveries, once.
/// Several messages stored by one call: seqs increase in the order given (message by
/// message, delivery by delivery), and a resend among them is answered with the id it
/// had, creating nothing.
pub fn batched_inserts(store: &mut dyn Store) {
    seed(store);
    let b = "b".repeat(64);
    let c = "c".repeat(64);
    let first = send(store, &message("m0", Some("k0"), i64::MAX), &[(&b, None)]);
    store.commit().unwrap();
    let one = [NewDelivery {
        recipient: &b,
        sealed_key: None,
    }];
    let two = [
        NewDelivery {
            recipient: &c,
            sealed_key: Some("sc"),
        },
        NewDelivery {
            recipient: &b,
            sealed_key: Some("sb"),
        },
    ];
    let (m1, again, m2) = (
        message("m1", Some("k1"), i64::MAX),
        message("m0-again", Some("k0"), i64::MAX),
        message("m2", None, i64::MAX),
    );
    let out = store
        .insert_messages(&[(&m1, &one[..]), (&again, &one[..]), (&m2, &two[..])])
        .unwrap();
    store.commit().unwrap();
    let Inserted::New(s1) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(out[1], Inserted::Existing("m0".into()));
    let Inserted::New(s2) = &out[2] else {
        panic!("{out:?}")
    };
    assert_eq!((s1.len(), s2.len()), (1, 2));
    assert!(
        first[0] < s1[0] && s1[0] < s2[0] && s2[0] < s2[1],
        "{first:?} {s1:?} {s2:?}"
    );
    let to_b: Vec<(String, Option<String>)> = store
        .pending("m1", &b, 0, 10, 0)
        .unwrap()
        .into_iter()
        .map(|p| (p.message.message_id, p.sealed_key))
        .collect();
    assert_eq!(
        to_b,
        [
            ("m0".into(), None),
            ("m1".into(), None),
            ("m2".into(), Some("sb".into()))
        ]
    );
}

pub fn batched_acks(store: &mut dyn Store) {
    seed(store);
    let bob = "b".repeat(64);
    let mut seqs = Vec::new();
    for i in 0..3 {
        seqs.extend(send(
            store,
            &message(&format!("b{i}"), None, 1_000),
            &[(&bob, None)],
        ));
    }
    store.commit().unwrap();
    assert_eq!(
        store
            .ack_deliveries(&[seqs[0], seqs[2], seqs[0]], 5)
            .unwrap(),
        2
    );
    assert_eq!(
        store.ack_deliveries(&[seqs[0], seqs[2]], 6).unwrap(),
        0,
        "already acked"
    );
    assert_eq!(store.ack_deliveries(&[], 6).unwrap(), 0);
    store.commit().unwrap();
    let left: Vec<String> = store
        .pending("m1", &bob, 0, 10, 0)
        .unwrap()
        .into_iter()
        .map(|d| d.message.message_id)
        .collect();
    assert_eq!(left, ["b1"]);
}

/// Operator accounts: created with a setup token, the password set once through it (not
/// with a wrong or expired token, not twice), listed, reset and removed.
pub fn operator_accounts(store: &mut dyn Store) {
    let fresh = |name: &str| OperatorRow {
        name: name.into(),
        password_hash: None,
        setup_hash: Some(format!("setup-{name}")),
        setup_expires_at: 1_000,
        created_at: 5,
    };
    store.put_operator(&fresh("root")).unwrap();
    store.put_operator(&fresh("ops")).unwrap();
    store.commit().unwrap();
    let names: Vec<String> = store
        .operators()
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(names, ["ops", "root"]);
    assert_eq!(store.operator("root").unwrap(), Some(fresh("root")));
    assert!(store.operator("nobody").unwrap().is_none());

    assert!(
        !store
            .set_operator_password("root", "wrong", "h1", 10)
            .unwrap()
    );
    assert!(
        !store
            .set_operator_password("root", "setup-root", "h1", 1_000)
            .unwrap(),
        "expired"
    );
    assert!(
        store
            .set_operator_password("root", "setup-root", "h1", 999)
            .unwrap()
    );
    assert!(
        !store
            .set_operator_password("root", "setup-root", "h2", 999)
            .unwrap(),
        "spent"
    );
    store.commit().unwrap();
    let root = store.operator("root").unwrap().unwrap();
    assert_eq!(
        (root.password_hash.as_deref(), root.setup_hash),
        (Some("h1"), None)
    );

    // A reset replaces the account whole: the old password is gone.
    store.put_operator(&fresh("root")).unwrap();
    assert_eq!(store.operator("root").unwrap(), Some(fresh("root")));
    assert!(store.remove_operator("ops").unwrap());
    assert!(!store.remove_operator("ops").unwrap());
    store.commit().unwrap();
    assert_eq!(store.operators().unwrap().len(), 1);
}

/// `message_deliveries` finds exactly one message's deliveries, among many messages with
/// one or several recipients, after purges, and honours the limit and the mesh.
pub fn message_deliveries(store: &mut dyn Store) {
    seed(store);
    let keys: Vec<String> = ["b", "c", "d"].iter().map(|k| k.repeat(64)).collect();
    let mut expected = Vec::new();
    for i in 0..40_i64 {
        // Messages alternate between one and three recipients.
        let n = if i % 2 == 0 { 1 } else { 3 };
        let to: Vec<(&str, Option<&str>)> = keys[..n].iter().map(|k| (k.as_str(), None)).collect();
        let seqs = send(store, &message(&format!("s{i}"), None, 100 + i), &to);
        expected.push(seqs);
    }
    store.commit().unwrap();
    store.ack_deliveries(&[expected[7][1]], 55).unwrap();
    store.commit().unwrap();
    for (i, seqs) in expected.iter().enumerate() {
        let found = store
            .message_deliveries("m1", &format!("s{i}"), 100)
            .unwrap()
            .unwrap();
        assert_eq!(found.message.message_id, format!("s{i}"));
        let got: Vec<i64> = found.deliveries.iter().map(|d| d.seq).collect();
        assert_eq!(&got, seqs, "deliveries of s{i}");
        assert_eq!(found.deliveries[0].recipient, keys[0]);
    }
    let seven = store.message_deliveries("m1", "s7", 100).unwrap().unwrap();
    let acked: Vec<Option<i64>> = seven.deliveries.iter().map(|d| d.acked_at).collect();
    assert_eq!(acked, [None, Some(55), None]);
    assert_eq!(
        store
            .message_deliveries("m1", "s7", 2)
            .unwrap()
            .unwrap()
            .deliveries
            .len(),
        2,
        "limit"
    );
    assert!(
        store
            .message_deliveries("m1", "nope", 10)
            .unwrap()
            .is_none()
    );
    assert!(
        store.message_deliveries("m2", "s3", 10).unwrap().is_none(),
        "another mesh's id"
    );
    // After the first 10 messages expire, the rest are still found exactly.
    store.purge_expired(110).unwrap();
    store.commit().unwrap();
    assert!(store.message_deliveries("m1", "s3", 10).unwrap().is_none());
    let late = store.message_deliveries("m1", "s39", 10).unwrap().unwrap();
    let got: Vec<i64> = late.deliveries.iter().map(|d| d.seq).collect();
    assert_eq!(got, expected[39]);
}

/// A retired identity's unacked copies are dropped; acked ones and other recipients' stay.
fn retirement_drops_undelivered(store: &mut dyn Store) {
    seed(store);
    let (bob, carol) = ("b".repeat(64), "c".repeat(64));
    send(
        store,
        &message("r1", None, 1_000),
        &[(&bob, None), (&carol, None)],
    );
    send(store, &message("r2", None, 1_000), &[(&bob, None)]);
    store.commit().unwrap();
    assert!(store.ack_delivery("m1", &bob, "r1", 5).unwrap());
    assert_eq!(
        store.drop_undelivered("m1", &bob, 0).unwrap(),
        1,
        "only r2 was unacked"
    );
    assert_eq!(
        store.drop_undelivered("m2", &carol, 0).unwrap(),
        0,
        "another mesh"
    );
    assert_eq!(
        store.drop_undelivered("m1", &carol, 1_000).unwrap(),
        0,
        "expired copies are left to the purge"
    );
    store.commit().unwrap();
    assert!(store.pending("m1", &bob, 0, 10, 0).unwrap().is_empty());
    assert_eq!(store.pending("m1", &carol, 0, 10, 0).unwrap().len(), 1);
}

fn invite(id: &str, max_uses: u32, expires_at: i64) -> InviteRow {
    InviteRow {
        id: id.into(),
        mesh_id: "m1".into(),
        role: InviteRole::Member,
        max_uses,
        uses: 0,
        expires_at,
        revoked: false,
        created_by: "o".repeat(64),
        created_at: 1,
    }
}

/// Invite uses and member removal are decided by the store, in one statement each.
pub fn decisions(store: &mut dyn Store) {
    seed(store);
    store.upsert_invite(&invite("two", 2, 100)).unwrap();
    store.upsert_invite(&invite("open", 0, 100)).unwrap();
    store
        .upsert_invite(&InviteRow {
            revoked: true,
            ..invite("gone", 0, 100)
        })
        .unwrap();
    let claim =
        |store: &mut dyn Store, id: &str, now: i64| store.claim_invite_use("m1", id, now).unwrap();
    assert_eq!(claim(store, "two", 50), Claim::Claimed);
    assert_eq!(claim(store, "two", 50), Claim::Claimed);
    assert_eq!(claim(store, "two", 50), Claim::Exhausted);
    assert_eq!(store.invite("two").unwrap().unwrap().uses, 2);
    for _ in 0..5 {
        assert_eq!(claim(store, "open", 50), Claim::Claimed, "0 = unlimited");
    }
    assert_eq!(
        claim(store, "open", 100),
        Claim::Expired,
        "expiry is exclusive"
    );
    assert_eq!(claim(store, "gone", 50), Claim::Revoked);
    assert_eq!(claim(store, "nope", 50), Claim::NotFound);
    assert_eq!(
        store.claim_invite_use("other", "open", 50).unwrap(),
        Claim::NotFound
    );
    // Revoking keeps the use count and stops further claims; only in its own mesh.
    assert!(store.revoke_invite("m1", "two").unwrap());
    assert!(
        store.revoke_invite("m1", "two").unwrap(),
        "already revoked is still found"
    );
    assert!(!store.revoke_invite("other", "open").unwrap());
    assert!(!store.revoke_invite("m1", "nope").unwrap());
    let two = store.invite("two").unwrap().unwrap();
    assert!(two.revoked && two.uses == 2);
    assert_eq!(
        store.claim_invite_use("m1", "two", 50).unwrap(),
        Claim::Revoked
    );
    store.commit().unwrap();

    let owner = MemberRow {
        id: "own".into(),
        mesh_id: "m1".into(),
        pubkey: "o".repeat(64),
        display_name: "owner".into(),
        role: Role::Owner,
        joined_at: 1,
        removed: None,
    };
    store.upsert_member(&owner).unwrap();
    assert!(
        !store.remove_member("m1", "own", Removal::Revoked).unwrap(),
        "never the owner"
    );
    assert!(store.remove_member("m1", "u1", Removal::Kicked).unwrap());
    assert!(
        !store.remove_member("m1", "u1", Removal::Kicked).unwrap(),
        "already kicked"
    );
    assert!(
        store.remove_member("m1", "u1", Removal::Revoked).unwrap(),
        "kick → ban"
    );
    assert!(
        !store.remove_member("m1", "u1", Removal::Kicked).unwrap(),
        "no downgrade"
    );
    assert!(
        !store
            .remove_member("other", "u1", Removal::Revoked)
            .unwrap()
    );
    store.commit().unwrap();
    let members = store.load_members().unwrap();
    let u1 = members.iter().find(|m| m.id == "u1").unwrap();
    assert_eq!(u1.removed, Some(Removal::Revoked));
    assert_eq!(
        members.iter().find(|m| m.id == "own").unwrap().removed,
        None
    );
}

/// Two connections to one database (what two broker nodes would be) race for the last
/// use of an invite: exactly one wins, whatever the interleaving.
fn two_connections_claiming_the_last_use_one_wins(open: &(dyn Fn() -> Box<dyn Store> + Sync)) {
    {
        let mut store = open();
        seed(store.as_mut());
        store.upsert_invite(&invite("last", 1, 100)).unwrap();
        store.commit().unwrap();
    }
    for round in 0..20 {
        let id = format!("last{round}");
        {
            let mut store = open();
            store.upsert_invite(&invite(&id, 1, 100)).unwrap();
            store.commit().unwrap();
        }
        let barrier = std::sync::Barrier::new(2);
        let claims: Vec<Claim> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let mut store = open();
                        barrier.wait();
                        let claim = store.claim_invite_use("m1", &id, 50).unwrap();
                        store.commit().unwrap();
                        claim
                    })
                })
                .collect();
            racers.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let won = claims.iter().filter(|c| **c == Claim::Claimed).count();
        assert_eq!(won, 1, "round {round}: {claims:?}");
        assert!(
            claims.contains(&Claim::Exhausted),
            "round {round}: {claims:?}"
        );
    }
    let mut store = open();
    assert_eq!(store.invite("last0").unwrap().unwrap().uses, 1);
}

/// What was committed is there after reopening; what was not, is not.
fn commits_survive_reopen_and_uncommitted_work_does_not(open: &dyn Fn() -> Box<dyn Store>) {
    {
        let mut store = open();
        seed(store.as_mut());
        send(
            store.as_mut(),
            &message("kept", None, 1_000),
            &[(&"b".repeat(64), None)],
        );
        store.commit().unwrap();
        send(
            store.as_mut(),
            &message("lost", None, 1_000),
            &[(&"b".repeat(64), None)],
        );
        // dropped without commit
    }
    let mut store = open();
    let ids: Vec<String> = store
        .pending("m1", &"b".repeat(64), 0, 10, 10)
        .unwrap()
        .into_iter()
        .map(|d| d.message.message_id)
        .collect();
    assert_eq!(ids, ["kept"]);
}

/// Run `test` on a fresh SQLite file.
fn on_sqlite(test: impl FnOnce(&mut dyn Store)) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
    test(&mut store);
}

#[test]
fn sqlite_conforms() {
    on_sqlite(conformance);
}

#[test]
fn sqlite_purges_exact_prefixes() {
    on_sqlite(purge_boundaries);
}

#[test]
fn sqlite_batches_acks() {
    on_sqlite(batched_acks);
}

#[test]
fn sqlite_keeps_operator_accounts() {
    on_sqlite(operator_accounts);
}

#[test]
fn sqlite_reports_message_deliveries() {
    on_sqlite(message_deliveries);
}

#[test]
fn sqlite_drops_a_retired_identitys_copies() {
    on_sqlite(retirement_drops_undelivered);
}

#[test]
fn sqlite_decides_invite_uses_and_removals() {
    on_sqlite(decisions);
}

#[test]
fn sqlite_two_connections_claiming_the_last_use_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    two_connections_claiming_the_last_use_one_wins(&|| {
        Box::new(SqliteStore::open(&path).unwrap()) as Box<dyn Store>
    });
}

#[test]
fn sqlite_commits_survive_reopen_and_uncommitted_work_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    commits_survive_reopen_and_uncommitted_work_does_not(&|| {
        Box::new(SqliteStore::open(&path).unwrap()) as Box<dyn Store>
    });
    let mode: String = rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

/// Run `test` on a fresh PostgreSQL database, or skip (see `claudemesh_testdb`).
fn on_postgres(name: &str, test: impl FnOnce(&mut dyn Store)) {
    let Some(db) = TestDb::create(name) else {
        return;
    };
    let mut store = PgStore::open(db.url()).unwrap();
    test(&mut store);
}

#[test]
fn postgres_conforms() {
    on_postgres("postgres_conforms", conformance);
}

#[test]
fn postgres_purges_exact_prefixes() {
    on_postgres("postgres_purges_exact_prefixes", purge_boundaries);
}

#[test]
fn postgres_batches_inserts() {
    on_postgres("postgres_batches_inserts", batched_inserts);
}

#[test]
fn sqlite_batches_inserts() {
    on_sqlite(batched_inserts);
}

#[test]
fn postgres_batches_acks() {
    on_postgres("postgres_batches_acks", batched_acks);
}

#[test]
fn postgres_keeps_operator_accounts() {
    on_postgres("postgres_keeps_operator_accounts", operator_accounts);
}

#[test]
fn postgres_reports_message_deliveries() {
    on_postgres("postgres_reports_message_deliveries", message_deliveries);
}

#[test]
fn postgres_drops_a_retired_identitys_copies() {
    on_postgres(
        "postgres_drops_a_retired_identitys_copies",
        retirement_drops_undelivered,
    );
}

#[test]
fn postgres_decides_invite_uses_and_removals() {
    on_postgres("postgres_decides_invite_uses_and_removals", decisions);
}

#[test]
fn postgres_two_connections_claiming_the_last_use_one_wins() {
    let Some(db) = TestDb::create("postgres_two_connections_claiming_the_last_use_one_wins") else {
        return;
    };
    two_connections_claiming_the_last_use_one_wins(&|| {
        Box::new(PgStore::open(db.url()).unwrap()) as Box<dyn Store>
    });
}

#[test]
fn postgres_commits_survive_reopen_and_uncommitted_work_does_not() {
    let Some(db) = TestDb::create("postgres_commits_survive_reopen_and_uncommitted_work_does_not")
    else {
        return;
    };
    commits_survive_reopen_and_uncommitted_work_does_not(&|| {
        Box::new(PgStore::open(db.url()).unwrap()) as Box<dyn Store>
    });
    // Opening twice ran the migrations once.
    let versions: i64 = db
        .client()
        .query_one("SELECT COUNT(*) FROM schema_version", &[])
        .unwrap()
        .get(0);
    assert_eq!(versions, 5, "each of the 5 migrations applied once");
}

/// A failed statement aborts a PostgreSQL transaction; `commit` must then fail (not
/// silently roll back), and the next batch works.
#[test]
fn postgres_commit_after_a_failed_statement_fails() {
    on_postgres("postgres_commit_after_a_failed_statement_fails", |store| {
        seed(store);
        send(
            store,
            &message("ok", None, 1_000),
            &[(&"b".repeat(64), None)],
        );
        // A second mesh with the same slug violates a unique constraint.
        let clash = MeshRow {
            id: "m2".into(),
            slug: "one".into(),
            name: "Two".into(),
            owner_pubkey: "o".repeat(64),
            created_at: 1,
        };
        assert!(store.insert_mesh(&clash).is_err());
        assert!(
            store.commit().is_err(),
            "the aborted batch is not committed"
        );
        assert!(
            store
                .pending("m1", &"b".repeat(64), 0, 10, 10)
                .unwrap()
                .is_empty()
        );
        send(
            store,
            &message("ok2", None, 1_000),
            &[(&"b".repeat(64), None)],
        );
        store.commit().unwrap();
        assert_eq!(
            store
                .pending("m1", &"b".repeat(64), 0, 10, 10)
                .unwrap()
                .len(),
            1
        );
    });
}

#[test]
fn postgres_refuses_a_newer_schema() {
    let Some(db) = TestDb::create("postgres_refuses_a_newer_schema") else {
        return;
    };
    drop(PgStore::open(db.url()).unwrap());
    db.client()
        .execute("INSERT INTO schema_version (version) VALUES (999)", &[])
        .unwrap();
    match PgStore::open(db.url()) {
        Err(StoreError::SchemaTooNew { found: 999, .. }) => {}
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[test]
fn postgres_open_errors_never_show_the_password() {
    // Port 1 on loopback refuses at once; no PostgreSQL needed.
    let err = PgStore::open("postgres://postgres:hunter2@127.0.0.1:1/x").unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
}

/// Ping until the store is connected again (panics after `secs`).
fn await_reconnect(store: &mut PgStore, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while store.ping().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "no reconnection within {secs} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Store and commit one more message to `b`; the ids of everything `b` has pending.
fn commit_one_more(store: &mut PgStore, id: &str) -> Vec<String> {
    send(
        store,
        &message(id, None, i64::MAX),
        &[(&"b".repeat(64), None)],
    );
    store.commit().unwrap();
    store
        .pending("m1", &"b".repeat(64), 0, 10, 0)
        .unwrap()
        .into_iter()
        .map(|p| p.message.message_id)
        .collect()
}

/// A connection PostgreSQL closes (as a restart does) fails the statement that finds it
/// and the transaction it was in, never commits half a batch on a new connection, and is
/// replaced by itself on a later call; what was committed is all there.
#[test]
fn postgres_reconnects_after_its_connection_is_closed() {
    let Some(db) = TestDb::create("postgres_reconnects_after_its_connection_is_closed") else {
        return;
    };
    let mut store = PgStore::open(db.url()).unwrap();
    seed(&mut store);
    send(
        &mut store,
        &message("kept", None, i64::MAX),
        &[(&"b".repeat(64), None)],
    );
    store.commit().unwrap();
    // A batch in progress when the connection goes.
    send(
        &mut store,
        &message("lost", None, i64::MAX),
        &[(&"b".repeat(64), None)],
    );
    assert!(db.terminate_connections() >= 1);
    let later = message("after", None, i64::MAX);
    let to = [NewDelivery {
        recipient: &"b".repeat(64),
        sealed_key: None,
    }];
    assert!(store.insert_message(&later, &to).is_err());
    assert!(
        store.commit().is_err(),
        "a batch cut by the lost connection must not commit"
    );
    assert!(!store.is_connected());
    // Outside a transaction the store connects again (at most one attempt per interval).
    await_reconnect(&mut store, 5);
    assert!(store.is_connected());
    assert_eq!(commit_one_more(&mut store, "again"), ["kept", "again"]);
}

/// The same through a real server restart: a private PostgreSQL stopped (`pg_ctl stop
/// -m fast`) and started again. While it is down every call fails quickly; once it is
/// back the store carries on by itself.
#[test]
fn postgres_survives_a_server_restart() {
    let Some(server) = PgServer::start("postgres_survives_a_server_restart") else {
        return;
    };
    let db = TestDb::create_on(&server.addr());
    let mut store = PgStore::open(db.url()).unwrap();
    seed(&mut store);
    send(
        &mut store,
        &message("before", None, i64::MAX),
        &[(&"b".repeat(64), None)],
    );
    store.commit().unwrap();
    server.stop();
    let started = std::time::Instant::now();
    for _ in 0..5 {
        assert!(store.ping().is_err());
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "calls against a stopped server must fail quickly, took {:?}",
        started.elapsed()
    );
    server.start_again();
    await_reconnect(&mut store, 10);
    assert_eq!(commit_one_more(&mut store, "after"), ["before", "after"]);
    drop(store);
    drop(db);
}
