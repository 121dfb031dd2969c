//! Several broker nodes on one PostgreSQL database: three real `claudemesh-broker`
//! processes with the same `--database-url`, peers on different nodes. Messages of every
//! kind cross nodes in order; presence is the same from every node and has no ghosts after
//! a node is killed; a single-use invite is spent once across nodes; a revocation closes
//! the member's socket on another node at once; `kill -9` of a node under load loses
//! nothing acked; a session moving between nodes causes no presence flap.
//!
//! Each test has a database of its own on the machine's PostgreSQL (skipped loudly
//! without one, a failure with `CLAUDEMESH_REQUIRE_POSTGRES=1`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[macro_use]
mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use claudemesh_client::envelope::Keyring;
use claudemesh_client::inbox::Inbox;
use claudemesh_client::{Target, messaging};
use claudemesh_proto::frames::Priority;
use claudemesh_testdb::TestDb;
use common::traffic::{Receiver, Sender, connect};
use common::*;
use serde_json::json;

/// Grace period of the test nodes (the default is 90 s).
const GRACE_SECS: u64 = 3;

/// Three (or `n`) broker processes on one database.
struct Cluster {
    nodes: Vec<Option<TestBroker>>,
    /// Dropped (with its connections) after the nodes: fields drop in order.
    _db: TestDb,
}

impl Cluster {
    fn start(test: &str, n: usize) -> Option<Self> {
        let db = claudemesh_testdb::off_runtime(|| TestDb::create(test))?;
        let nodes = (0..n)
            .map(|i| {
                let data = Data {
                    dir: tempfile::tempdir().unwrap(),
                    pg: None,
                };
                let child = std::process::Command::new(env!("CARGO_BIN_EXE_claudemesh-broker"))
                    .args(["--listen", "127.0.0.1:0", "--no-rate-limits"])
                    .arg("--data-dir")
                    .arg(data.dir.path())
                    .args(["--database-url", db.url()])
                    .args(["--node-name", &format!("n{i}")])
                    .args(["--presence-grace-secs", &GRACE_SECS.to_string()])
                    .env("CLAUDEMESH_LOG", "warn")
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                Some(TestBroker::adopt(child, data))
            })
            .collect();
        Some(Self { nodes, _db: db })
    }

    fn node(&self, i: usize) -> &TestBroker {
        self.nodes[i].as_ref().expect("a running node")
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.node(i)
            .ws()
            .trim_start_matches("ws://")
            .trim_end_matches("/ws")
            .parse()
            .unwrap()
    }

    fn kill9(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("a running node");
        drop(node.kill9());
    }
}

/// Wait until `check` holds, polling; panics with `what` after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "{what} (waited {within:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

async fn peer_keys(c: &mut V1Client) -> HashSet<String> {
    c.peers()
        .await
        .iter()
        .map(|p| p["pubkey"].as_str().unwrap().to_owned())
        .collect()
}

/// A member's receiving side: its real inbox (dedupe), acking what it took.
struct Reader<'c> {
    conn: &'c claudemesh_client::Connection,
    ring: Keyring,
    inbox: Inbox,
    _dir: tempfile::TempDir,
}

impl<'c> Reader<'c> {
    fn new(conn: &'c claudemesh_client::Connection, member: &Member) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            conn,
            ring: Keyring::new(member.ident.sk.clone()),
            inbox: Inbox::open(&dir.path().join("inbox.db")).unwrap(),
            _dir: dir,
        }
    }

    /// The texts of the next `n` new messages (presence events skipped), each acked.
    async fn texts(
        &mut self,
        rx: &mut tokio::sync::mpsc::Receiver<claudemesh_proto::frames::Push>,
        n: usize,
    ) -> Vec<String> {
        let mut got = Vec::new();
        while got.len() < n {
            let push = tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap();
            if push.subtype.as_deref() == Some("system") {
                continue;
            }
            let rec = messaging::receive(&mut self.ring, &push, &mut self.inbox).unwrap();
            got.extend(rec.map(|r| r.text.unwrap_or_default()));
            self.conn.ack(&push.message_id).await.unwrap();
        }
        got
    }
}

/// Wait (up to 5 s) until `c`'s `list_peers` shows `key`.
async fn until_listed(c: &mut V1Client, key: &str) {
    let started = Instant::now();
    while !peer_keys(c).await.contains(key) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{key} never listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP load balancer in front of the nodes: each new connection goes to the next node
/// that accepts it, as a TCP balancer with health checks does. Which node each
/// connection went to is recorded.
struct Balancer {
    addr: SocketAddr,
    routed: Arc<Mutex<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    async fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routed = Arc::new(Mutex::new(Vec::new()));
        let log = routed.clone();
        let task = tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut upstream = None;
                for i in 0..backends.len() {
                    let backend = backends[(next + i) % backends.len()];
                    if let Ok(s) = tokio::net::TcpStream::connect(backend).await {
                        next = (next + i + 1) % backends.len();
                        upstream = Some((s, backend));
                        break;
                    }
                }
                let Some((mut server, backend)) = upstream else {
                    continue; // no node up: the client sees the connection close
                };
                log.lock().unwrap().push(backend);
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Self { addr, routed, task }
    }

    fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Messages of every kind between peers on different nodes arrive as on one node: 50 DMs
/// in order, a v1 broadcast, a sealed multicast and a group message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_message_crosses_nodes_in_order() {
    let Some(c) = Cluster::start("every_kind_of_message_crosses_nodes_in_order", 3) else {
        return;
    };
    let mesh = create_mesh(c.node(0), "cross").await;
    // Each member joins through another node (the mesh is read through on first use).
    let alice = enroll(c.node(0), &mesh, "alice").await;
    let bob = enroll(c.node(1), &mesh, "bob").await;
    let carol = enroll(c.node(2), &mesh, "carol").await;

    let (a, _a_rx) = connect(&c.node(0).ws(), &alice).await;
    let (b, mut b_rx) = connect(&c.node(1).ws(), &bob).await;
    let (cc, mut c_rx) = connect(&c.node(2).ws(), &carol).await;
    cc.join_group("ops", None).await.unwrap();
    eventually(Duration::from_secs(5), "alice sees bob and carol", || {
        let a = a.clone();
        let (bk, ck) = (bob.ident.pk.clone(), carol.ident.pk.clone());
        async move {
            let peers = a.peers().await.unwrap_or_default();
            peers.iter().any(|p| p.pubkey == bk) && peers.iter().any(|p| p.pubkey == ck)
        }
    })
    .await;

    let mut ring = Keyring::new(alice.ident.sk.clone());
    let to_bob = Target::Key(bob.ident.sk.public());
    for i in 0..50 {
        let text = format!("dm {i}");
        messaging::send_text(&a, &mut ring, &mesh.id, &to_bob, &text, Priority::Now)
            .await
            .unwrap();
    }
    let mut bob_in = Reader::new(&b, &bob);
    let want: Vec<String> = (0..50).map(|i| format!("dm {i}")).collect();
    assert_eq!(
        bob_in.texts(&mut b_rx, 50).await,
        want,
        "DMs across nodes, in order"
    );

    // A sealed multicast to everyone, and a message to @ops (carol only).
    let report = messaging::send_text(
        &a,
        &mut ring,
        &mesh.id,
        &Target::Broadcast,
        "to all",
        Priority::Now,
    )
    .await
    .unwrap();
    // bob, carol, and the owner (offline: it is queued for them).
    assert_eq!(report.recipients, 3);
    messaging::send_text(
        &a,
        &mut ring,
        &mesh.id,
        &Target::Group("ops".into()),
        "to ops",
        Priority::Now,
    )
    .await
    .unwrap();
    let mut carol_in = Reader::new(&cc, &carol);
    assert_eq!(carol_in.texts(&mut c_rx, 2).await, ["to all", "to ops"]);
    assert_eq!(bob_in.texts(&mut b_rx, 1).await, ["to all"]);

    // A v1 broadcast (plain body, no sealed keys) from a v1 client on node 2 reaches the
    // v1 client on node 0.
    let dave = enroll(c.node(0), &mesh, "dave").await;
    let erin = enroll(c.node(0), &mesh, "erin").await;
    let mut d = V1Client::connect(&c.node(2).ws(), &dave).await;
    let mut e = V1Client::connect(&c.node(0).ws(), &erin).await;
    until_listed(&mut d, &erin.ident.pk).await;
    d.send(json!({"type": "send", "targetSpec": "*", "priority": "now", "nonce": "", "ciphertext": "djEgYnJvYWRjYXN0", "id": "v1"}))
        .await;
    assert_eq!(d.recv_type("ack").await["queued"], true);
    let push = e
        .next_push(WAIT)
        .await
        .expect("the v1 broadcast crosses nodes");
    assert_eq!(push["ciphertext"], "djEgYnJvYWRjYXN0");
    drop(c);
}

/// `list_peers` on any node shows the peers of every node; after a node is killed its
/// peers stop being listed within the node timeout, and everyone hears them leave once
/// the grace period has passed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_lists_every_peer_and_a_killed_nodes_peers_go() {
    let Some(mut c) = Cluster::start("every_node_lists_every_peer_and_a_killed_nodes_peers_go", 3)
    else {
        return;
    };
    let mesh = create_mesh(c.node(0), "presence").await;
    let members: Vec<Member> =
        futures_util::future::join_all(["a", "b", "c"].iter().map(|n| enroll(c.node(0), &mesh, n)))
            .await;
    let mut clients = Vec::new();
    for (i, m) in members.iter().enumerate() {
        clients.push(V1Client::connect(&c.node(i).ws(), m).await);
    }
    let all: HashSet<String> = members.iter().map(|m| m.ident.pk.clone()).collect();
    // Every node lists every peer of every node, its own included (as one node does).
    for (i, client) in clients.iter_mut().enumerate() {
        let mut keys = HashSet::new();
        let started = Instant::now();
        while keys != all {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "node {i} lists {keys:?}, not {all:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            keys = peer_keys(client).await;
        }
    }
    // Kill node 2 (carol's); carol does not come back.
    let killed = Instant::now();
    c.kill9(2);
    let carol = members[2].ident.pk.clone();
    let mut a = clients.remove(0);
    let mut keys = peer_keys(&mut a).await;
    while keys.contains(&carol) {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "carol is still listed {:?} after her node died",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        keys = peer_keys(&mut a).await;
    }
    let unlisted = killed.elapsed();
    // peer_left, on both surviving nodes.
    let mut b = clients.remove(0);
    for client in [&mut a, &mut b] {
        let deadline = Duration::from_secs(20);
        loop {
            let v = client
                .try_recv(deadline.saturating_sub(killed.elapsed()))
                .await
                .expect("peer_left for carol");
            if v["event"] == "peer_left" && v["eventData"]["pubkey"] == carol.as_str() {
                break;
            }
        }
    }
    let left = killed.elapsed();
    assert!(
        left >= Duration::from_secs(GRACE_SECS),
        "peer_left came before the grace period: {left:?}"
    );
    eprintln!("killed node: its peer unlisted after {unlisted:?}, peer_left after {left:?}");
}

/// 50 concurrent joins with one single-use invite, spread over three nodes: one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_joins_on_one_invite_across_nodes_one_wins() {
    let Some(c) = Cluster::start(
        "fifty_concurrent_joins_on_one_invite_across_nodes_one_wins",
        3,
    ) else {
        return;
    };
    let mesh = create_mesh(c.node(0), "race").await;
    let inv = invite(c.node(0), &mesh, 1, 600).await;
    let joins = (0..50).map(|i| {
        let node = c.node(i % 3);
        let inv = &inv;
        async move { join_raw(node, inv, &Ident::new(), &format!("j{i}")).await }
    });
    let results = futures_util::future::join_all(joins).await;
    let won: Vec<_> = results.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(won.len(), 1, "exactly one join wins: {results:?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(body["error"], "invite_exhausted", "{status} {body}");
    }
}

/// A member revoked through node 0 is disconnected from node 2 with 4002 within 1 s, and
/// cannot connect to any node again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_revoked_on_one_node_is_closed_on_another_within_a_second() {
    let Some(c) = Cluster::start(
        "a_member_revoked_on_one_node_is_closed_on_another_within_a_second",
        3,
    ) else {
        return;
    };
    let mesh = create_mesh(c.node(0), "revoke").await;
    let mallory = enroll(c.node(0), &mesh, "mallory").await;
    let mut m = V1Client::connect(&c.node(2).ws(), &mallory).await;
    m.peers().await;
    let started = Instant::now();
    let (status, body) = remove(c.node(0), &mesh, &mallory, "revoke").await;
    assert_eq!(status, 200, "{body}");
    let code = m.closed(Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert_eq!(code, Some(4002));
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    for i in 0..3 {
        let mut again = V1Client {
            ws: V1Client::raw(&c.node(i).ws()).await,
            key: String::new(),
        };
        again.send(hello_frame(&mallory, "again", now_ms())).await;
        let v = again.recv().await;
        assert_eq!(v["code"], "revoked", "node {i}: {v}");
    }
    eprintln!("revoked on node 0, closed on node 2 after {took:?}");
}

/// `kill -9` of one node, then another, under load, behind a TCP balancer: the peers
/// reconnect to the remaining nodes; every message the broker acked reaches the
/// recipient's inbox exactly once; what the killed nodes had in flight is delivered by
/// the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_nodes_under_load_loses_nothing_acked() {
    let Some(mut c) = Cluster::start("kill_9_of_nodes_under_load_loses_nothing_acked", 3) else {
        return;
    };
    let lb = Balancer::start((0..3).map(|i| c.addr(i)).collect()).await;
    let mesh = create_mesh(c.node(0), "kill9").await;
    let alice = enroll(c.node(0), &mesh, "alice").await;
    let bob = enroll(c.node(0), &mesh, "bob").await;
    // Through the balancer: alice lands on node 0, bob on node 1.
    let (a, _a_rx) = connect(&lb.ws(), &alice).await;
    let (b, b_rx) = connect(&lb.ws(), &bob).await;
    let routed = lb.routed.lock().unwrap().clone();
    assert_eq!(routed, [c.addr(0), c.addr(1)], "round robin");
    let receiver = Receiver::start(b.clone(), b_rx, bob.ident.sk.clone());
    eventually(Duration::from_secs(5), "alice sees bob", || {
        let a = a.clone();
        let k = bob.ident.pk.clone();
        async move {
            a.peers()
                .await
                .unwrap_or_default()
                .iter()
                .any(|p| p.pubkey == k)
        }
    })
    .await;
    let sender = Sender::start(
        a.clone(),
        &alice,
        bob.ident.sk.public(),
        "m",
        Duration::from_millis(5),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = sender.acked();
    assert!(before > 20, "traffic flows: {before} acked");
    c.kill9(1); // bob's node, with his leases
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.kill9(0); // alice's node
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = sender.stop().await;
    assert!(
        sent.acked.len() > before + 20,
        "traffic flowed again after the kills: {} acked, {before} before",
        sent.acked.len()
    );
    receiver
        .expect_all(&sent.acked, Duration::from_secs(30))
        .await;
    let (pushes, new) = {
        let r = receiver.received.lock().unwrap();
        (r.pushes.values().sum::<u32>(), r.new.len())
    };
    eprintln!(
        "kill -9 of 2 of 3 nodes: {} acked, all delivered once ({pushes} pushes for {new} \
         messages; {} sends failed and were retried by the client)",
        sent.acked.len(),
        sent.failed.len()
    );
    a.close().await;
    b.close().await;
    drop(lb);
}

/// A session that reconnects to another node replaces its old connection there (closed
/// with session_replaced), is listed once, and nobody hears it leave or join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moving_to_another_node_does_not_flap() {
    let Some(c) = Cluster::start("a_session_moving_to_another_node_does_not_flap", 3) else {
        return;
    };
    let mesh = create_mesh(c.node(0), "move").await;
    let watcher = enroll(c.node(0), &mesh, "watcher").await;
    let mover = enroll(c.node(0), &mesh, "mover").await;
    let mut w = V1Client::connect(&c.node(2).ws(), &watcher).await;
    let mut old = V1Client::connect_session(&c.node(0).ws(), &mover, "s1").await;
    old.peers().await;
    until_listed(&mut w, &mover.ident.pk).await;
    // Drain the watcher's peer_joined.
    while w.try_recv(Duration::from_millis(300)).await.is_some() {}
    let mut new = V1Client::connect_session(&c.node(1).ws(), &mover, "s1").await;
    new.peers().await;
    assert!(
        old.closed(Duration::from_secs(3)).await.is_some(),
        "the old connection on node 0 is closed"
    );
    // Nothing but the peers_list answers reaches the watcher for a while.
    let quiet_until = Instant::now() + Duration::from_secs(GRACE_SECS + 2);
    while Instant::now() < quiet_until {
        let listed: Vec<String> = w
            .peers()
            .await
            .iter()
            .map(|p| p["pubkey"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            listed.iter().filter(|k| **k == mover.ident.pk).count(),
            1,
            "listed once: {listed:?}"
        );
        if let Some(v) = w.try_recv(Duration::from_millis(500)).await {
            panic!("the watcher heard {v}");
        }
    }
}

/// Two senders on two nodes, one recipient on one of them: the recipient's node pushes
/// its local sender's messages and loads the other node's from the database, none is
/// jumped, and each sender's messages are first pushed in the order it sent them (a
/// refill must not read past a smaller seq committed elsewhere that it has not read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_on_two_nodes_to_one_recipient_lose_nothing() {
    let Some(c) = Cluster::start("senders_on_two_nodes_to_one_recipient_lose_nothing", 2) else {
        return;
    };
    let mesh = create_mesh(c.node(0), "two-senders").await;
    let here = enroll(c.node(0), &mesh, "here").await;
    let there = enroll(c.node(0), &mesh, "there").await;
    let rcpt = enroll(c.node(0), &mesh, "rcpt").await;
    let (h, _h_rx) = connect(&c.node(0).ws(), &here).await;
    let (t, _t_rx) = connect(&c.node(1).ws(), &there).await;
    let (r, r_rx) = connect(&c.node(0).ws(), &rcpt).await;
    let receiver = Receiver::start(r.clone(), r_rx, rcpt.ident.sk.clone());
    let to = rcpt.ident.sk.public();
    let every = Duration::from_millis(2);
    let s1 = Sender::start(h.clone(), &here, to, "here", every);
    let s2 = Sender::start(t.clone(), &there, to, "there", every);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a, b) = (s1.stop().await, s2.stop().await);
    assert!(a.acked.len() > 50 && b.acked.len() > 50, "both sent");
    let all: Vec<String> = a.acked.iter().chain(&b.acked).cloned().collect();
    receiver.expect_all(&all, Duration::from_secs(20)).await;
    receiver.expect_in_order(&a.acked);
    receiver.expect_in_order(&b.acked);
    eprintln!(
        "two senders on two nodes: {} + {} acked, all delivered once",
        a.acked.len(),
        b.acked.len()
    );
}

/// Decisions the database makes hold across nodes: a hello replayed to another node is
/// refused, and a resend through another node (same `client_message_id`) is the same
/// message, not a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_and_resends_are_decided_across_nodes() {
    let Some(c) = Cluster::start("replays_and_resends_are_decided_across_nodes", 2) else {
        return;
    };
    let mesh = create_mesh(c.node(0), "replay").await;
    let m = enroll(c.node(0), &mesh, "m").await;
    let r = enroll(c.node(0), &mesh, "r").await;
    let hello = hello_frame(&m, "s1", now_ms());
    let mut first = V1Client {
        ws: V1Client::raw(&c.node(0).ws()).await,
        key: m.ident.pk.clone(),
    };
    first.send(hello.clone()).await;
    assert_eq!(first.recv_type("hello_ack").await["type"], "hello_ack");
    let mut replayed = V1Client {
        ws: V1Client::raw(&c.node(1).ws()).await,
        key: String::new(),
    };
    replayed.send(hello).await;
    let v = replayed.recv().await;
    assert_eq!(v["code"], "replay", "{v}");

    let send = json!({"type": "send", "targetSpec": r.ident.pk, "priority": "now", "nonce": "", "ciphertext": "AAAA", "id": "x", "client_message_id": "once"});
    first.send(send.clone()).await;
    let ack = first.recv_type("ack").await;
    assert_eq!(ack["queued"], true, "{ack}");
    let mut second = V1Client::connect_session(&c.node(1).ws(), &m, "s2").await;
    second.send(send).await;
    let again = second.recv_type("ack").await;
    assert_eq!(again["messageId"], ack["messageId"], "{again}");
    let mut rc = V1Client::connect(&c.node(1).ws(), &r).await;
    let push = rc.next_push(WAIT).await.expect("delivered once");
    assert_eq!(push["messageId"], ack["messageId"]);
    rc.ack(&push).await;
    assert!(
        rc.next_push(Duration::from_millis(500)).await.is_none(),
        "the resend created no second delivery"
    );
}

/// A key that joined through one node and joins again at once through another (a retry
/// behind a balancer) is the same member (the second node knows it from the first node's
/// notification, or reads it by key if that is still on its way), and the second node's
/// other clients stay connected. (Two joins of one key racing through two nodes at the
/// same instant are not covered: the members table's unique key fails one node's batch.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_retried_through_another_node_is_the_same_member() {
    let Some(c) = Cluster::start("a_join_retried_through_another_node_is_the_same_member", 2)
    else {
        return;
    };
    let mesh = create_mesh(c.node(0), "rejoin").await;
    let bystander = enroll(c.node(1), &mesh, "bystander").await;
    let mut b = V1Client::connect(&c.node(1).ws(), &bystander).await;
    b.peers().await;
    for i in 0..5 {
        let key = Ident::new();
        let first = invite(c.node(0), &mesh, 1, 600).await;
        let second = invite(c.node(0), &mesh, 1, 600).await;
        let (s0, v0) = join_raw(c.node(0), &first, &key, &format!("k{i}")).await;
        let (s1, v1) = join_raw(c.node(1), &second, &key, &format!("k{i}")).await;
        assert_eq!((s0, s1), (200, 200), "{v0} {v1}");
        assert_eq!(v0["memberId"], v1["memberId"], "one member per key");
    }
    // node 1 never failed a batch over it: its client is still connected.
    assert_eq!(b.peers().await.len(), 1);
}
