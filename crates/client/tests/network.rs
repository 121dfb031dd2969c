//! Across real network hops. The broker and two peers each live in their own Linux network
//! namespace (made by this test), joined to the broker by veth pairs that add 50 ms and
//! 2 % loss in each direction. Peer A sends a steady stream to peer B; B is then cut off
//! for 10 s (every packet both ways dropped) and healed. Every message the broker acked to
//! A must reach B's inbox exactly once, and A must see B leave only after the grace
//! period, and come back.
//!
//! The impairment: this machine's kernel is built without `sch_netem`, so `tc netem` is not
//! available. Instead every packet on a peer's veth end goes through an NFQUEUE
//! (`iptables-legacy -j NFQUEUE`) to a thread of this test that holds it 50 ms and then
//! accepts it, or drops it (2 %, from a seeded generator, so a run is repeatable; all of
//! them during the partition). The kernel's TCP sees real delay and real loss.
//!
//! Needs root, iproute2 (`ip`) and iptables (`iptables-legacy`). Without them the test says
//! it was skipped; `CLAUDEMESH_REQUIRE_NETNS=1` (set by `.ci/run`) makes that a failure.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::VecDeque;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use claudemesh_broker::{Broker, BrokerConfig, MeshCreation, Timings};
use claudemesh_client::envelope::Keyring;
use claudemesh_client::inbox::Inbox;
use claudemesh_client::{ConnectOptions, Connection, Identity, Liveness, State, Target, messaging};
use claudemesh_crypto::SecretKey;
use claudemesh_proto::frames::{PresenceInfo, Priority};

/// The broker's side of each pair is 10.77.N.1, the peer's 10.77.N.2.
const BROKER_IP_FOR_A: &str = "10.77.1.1";
const DELAY: Duration = Duration::from_millis(50);
const LOSS_PER_MILLE: u64 = 20;
const PARTITION: Duration = Duration::from_secs(10);

fn broker_timings() -> Timings {
    Timings {
        lease: Duration::from_secs(2),
        grace: Duration::from_secs(3),
        ping_interval: Duration::from_millis(500),
        dead_after: Duration::from_secs(2),
        ..Timings::default()
    }
}

fn client_liveness() -> Liveness {
    Liveness {
        ping_after: Duration::from_millis(500),
        dead_after: Duration::from_secs(2),
    }
}

/// Run a command, panicking with its stderr when it fails.
fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Why this machine cannot make namespaces, if it cannot.
fn missing_requirement() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not running as root".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("iptables-legacy", "iptables")] {
        let found = Command::new(tool).arg("-V").output().is_ok();
        if !found {
            return Some(format!("`{tool}` ({package}) is not installed"));
        }
    }
    None
}

/// The namespaces and links of one test; removed on drop (deleting a namespace removes
/// its veth ends and its iptables rules too).
struct Net {
    names: Vec<String>,
    links: Vec<Impaired>,
}

impl Net {
    fn ns(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// Broker in namespace 0; peers in 1 and 2, each on its own veth pair.
    fn build() -> Self {
        let tag = std::process::id() % 100_000;
        let names: Vec<String> = ["b", "p1", "p2"]
            .iter()
            .map(|n| format!("cm{tag}{n}"))
            .collect();
        let mut net = Net {
            names,
            links: Vec::new(),
        };
        for name in &net.names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            run("ip", &["netns", "add", name]);
            run("ip", &["-n", name, "link", "set", "lo", "up"]);
        }
        for peer in 1..=2 {
            let (b_if, p_if) = (format!("vb{peer}"), format!("vp{peer}"));
            run(
                "ip",
                &[
                    "link",
                    "add",
                    &b_if,
                    "netns",
                    net.ns(0),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &p_if,
                    "netns",
                    net.ns(peer),
                ],
            );
            for (ns, dev, host) in [(net.ns(0), &b_if, 1), (net.ns(peer), &p_if, 2)] {
                run(
                    "ip",
                    &[
                        "-n",
                        ns,
                        "addr",
                        "add",
                        &format!("10.77.{peer}.{host}/24"),
                        "dev",
                        dev,
                    ],
                );
                run("ip", &["-n", ns, "link", "set", dev, "up"]);
            }
            let queue = peer.to_string();
            for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
                run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        net.ns(peer),
                        "iptables-legacy",
                        "-A",
                        chain,
                        dir,
                        &p_if,
                        "-j",
                        "NFQUEUE",
                        "--queue-num",
                        &queue,
                    ],
                );
            }
            let link = Impaired::start(net.ns(peer), peer as u16);
            net.links.push(link);
        }
        net
    }

    /// Cut `peer` off (every packet both ways dropped) or heal it.
    fn cut(&self, peer: usize, cut: bool) {
        self.links[peer - 1].cut.store(cut, Ordering::SeqCst);
    }
}

/// One peer's impaired link: a thread in the peer's namespace serving NFQUEUE `queue`.
struct Impaired {
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    passed: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Impaired {
    fn start(ns: &str, queue: u16) -> Self {
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (passed, dropped) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (c, s, p, d) = (cut.clone(), stop.clone(), passed.clone(), dropped.clone());
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{ns}");
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut q = nfq::Queue::open().unwrap();
            q.bind(queue).unwrap();
            q.set_nonblocking(true);
            bound_tx.send(()).unwrap();
            let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(queue);
            let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
            while !s.load(Ordering::SeqCst) {
                while held.front().is_some_and(|(due, _)| *due <= Instant::now()) {
                    let (_, msg) = held.pop_front().unwrap();
                    q.verdict(msg).unwrap();
                    p.fetch_add(1, Ordering::Relaxed);
                }
                match q.recv() {
                    Ok(mut msg) => {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        if c.load(Ordering::SeqCst) || rng % 1000 < LOSS_PER_MILLE {
                            msg.set_verdict(nfq::Verdict::Drop);
                            q.verdict(msg).unwrap();
                            d.fetch_add(1, Ordering::Relaxed);
                        } else {
                            msg.set_verdict(nfq::Verdict::Accept);
                            held.push_back((Instant::now() + DELAY, msg));
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                    Err(e) => panic!("nfqueue {queue}: {e}"),
                }
            }
        });
        bound_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Self {
            cut,
            stop,
            passed,
            dropped,
            thread: Some(thread),
        }
    }
}

impl Drop for Impaired {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Namespaces first: their rules go with them, so no packet waits on a stopped queue.
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// Run `f` on a new thread inside network namespace `ns`, on its own tokio runtime:
/// every socket it opens (and every thread the runtime starts) lives in that namespace.
fn in_netns<T, F>(ns: &str, f: impl FnOnce() -> F + Send + 'static) -> std::thread::JoinHandle<T>
where
    T: Send + 'static,
    F: Future<Output = T>,
{
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f())
    })
}

fn options(url: String, mesh_id: &str, member: &(String, SecretKey), name: &str) -> ConnectOptions {
    ConnectOptions {
        url,
        identity: Identity {
            mesh_id: mesh_id.to_owned(),
            member_id: member.0.clone(),
            member_key: member.1.clone(),
            session_key: None,
        },
        presence: PresenceInfo {
            display_name: Some(name.into()),
            session_id: format!("{name}-session"),
            ..PresenceInfo::default()
        },
        reconnect: true,
        liveness: client_liveness(),
    }
}

/// What peer B's inbox took in: per message id, how often it was pushed and how often the
/// inbox called it new.
#[derive(Default)]
struct Received {
    pushes: BTreeMap<String, u32>,
    new: BTreeMap<String, u32>,
}

/// What peer A saw: acked message ids, failed sends, and B's presence events with times.
#[derive(Default)]
struct SenderLog {
    acked: Vec<String>,
    failed: Vec<String>,
    events: Vec<(String, Instant)>,
}

#[test]
fn acked_messages_survive_latency_loss_and_a_partition_exactly_once() {
    if let Some(why) = missing_requirement() {
        if std::env::var("CLAUDEMESH_REQUIRE_NETNS").as_deref() == Ok("1") {
            panic!("the network-namespace test cannot run: {why} (CLAUDEMESH_REQUIRE_NETNS=1)");
        }
        eprintln!(
            "SKIPPED acked_messages_survive_latency_loss_and_a_partition_exactly_once: {why}"
        );
        return;
    }
    let net = Net::build();

    // The broker, in its own namespace, listening on both links.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let (stop_broker, broker_stopped) = tokio::sync::oneshot::channel::<()>();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_path_buf();
    let broker = in_netns(net.ns(0), move || async move {
        let mut config = BrokerConfig::new(SocketAddr::from(([0, 0, 0, 0], 0)), data_dir);
        config.mesh_creation = MeshCreation::Open;
        config.timings = broker_timings();
        let handle = Broker::spawn(config).await.unwrap();
        addr_tx.send(handle.addr()).unwrap();
        let _ = broker_stopped.await;
        handle.shutdown().await;
    });
    let port = addr_rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap()
        .port();

    // Peer A makes the mesh, hands B its identity, waits for B, then sends until told.
    let (b_ident_tx, b_ident_rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (stop_sending, sending_stopped) = tokio::sync::watch::channel(false);
    let (finish_a, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let log = Arc::new(Mutex::new(SenderLog::default()));
    let a_log = log.clone();
    let a = in_netns(net.ns(1), move || async move {
        let http = format!("http://{BROKER_IP_FOR_A}:{port}");
        let ws = format!("ws://{BROKER_IP_FOR_A}:{port}/ws");
        // A mesh with two members, made over HTTP from peer A's namespace.
        let common::Mesh {
            id: mesh_id,
            members,
        } = common::mesh(&http, &ws, "net", &["a", "b"]).await;
        b_ident_tx
            .send((mesh_id.clone(), members[1].clone()))
            .unwrap();
        let (conn, mut rx) = Connection::connect(options(ws, &mesh_id, &members[0], "a"))
            .await
            .unwrap();
        let b_key = members[1].1.public();
        let b_hex = b_key.to_hex();
        let b_result = b_hex.clone();
        let watcher_log = a_log.clone();
        let watcher = tokio::spawn(async move {
            while let Some(push) = rx.recv().await {
                if push.subtype.as_deref() != Some("system") {
                    continue;
                }
                let pubkey = push.event_data.as_ref().map(|d| d.pubkey.as_str());
                if pubkey == Some(b_hex.as_str()) {
                    let event = push.event.clone().unwrap_or_default();
                    watcher_log
                        .lock()
                        .unwrap()
                        .events
                        .push((event, Instant::now()));
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !conn
            .peers()
            .await
            .unwrap_or_default()
            .iter()
            .any(|p| p.pubkey == members[1].1.public().to_hex())
        {
            assert!(Instant::now() < deadline, "peer B never came online");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ready_tx.send(()).unwrap();
        let mut ring = Keyring::new(members[0].1.clone());
        let target = Target::Key(b_key);
        let mut i = 0;
        while !*sending_stopped.borrow() {
            i += 1;
            let text = format!("message {i}");
            match messaging::send_text(&conn, &mut ring, &mesh_id, &target, &text, Priority::Now)
                .await
            {
                Ok(report) => a_log.lock().unwrap().acked.extend(report.message_ids),
                Err(e) => a_log.lock().unwrap().failed.push(format!("{text}: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Keep watching presence until B has everything.
        let _ = finish_rx.await;
        // Presence as A's broker connection sees it now.
        let online = conn.peers().await.unwrap();
        conn.close().await;
        watcher.abort();
        let online: HashSet<String> = online.iter().map(|p| p.pubkey.clone()).collect();
        (online, b_result)
    });

    // Peer B records every push in a real inbox (deduped) and acks it.
    let received = Arc::new(Mutex::new(Received::default()));
    let b_received = received.clone();
    let (stop_b, b_stopped) = tokio::sync::oneshot::channel::<()>();
    let states = Arc::new(Mutex::new(Vec::<(bool, Instant)>::new()));
    let b_states = states.clone();
    let inbox_dir = tempfile::tempdir().unwrap();
    let inbox_path = inbox_dir.path().join("inbox.db");
    let b = in_netns(net.ns(2), move || async move {
        let (mesh_id, member) = b_ident_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        let ws = format!("ws://10.77.2.1:{port}/ws");
        let (conn, mut rx) = Connection::connect(options(ws, &mesh_id, &member, "b"))
            .await
            .unwrap();
        // Note when the connection stops counting itself connected.
        let watched = conn.clone();
        let states = b_states.clone();
        let monitor = tokio::spawn(async move {
            let mut was_connected = true;
            loop {
                let connected = matches!(watched.state(), State::Connected { .. });
                if connected != was_connected {
                    states.lock().unwrap().push((connected, Instant::now()));
                    was_connected = connected;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut ring = Keyring::new(member.1.clone());
        let mut inbox = Inbox::open(&inbox_path).unwrap();
        let mut b_stopped = b_stopped;
        loop {
            let push = tokio::select! {
                _ = &mut b_stopped => break,
                push = rx.recv() => match push { Some(p) => p, None => break },
            };
            if push.subtype.as_deref() == Some("system") {
                continue;
            }
            let new = messaging::receive(&mut ring, &push, &mut inbox)
                .unwrap()
                .is_some();
            {
                let mut r = b_received.lock().unwrap();
                *r.pushes.entry(push.message_id.clone()).or_default() += 1;
                if new {
                    *r.new.entry(push.message_id.clone()).or_default() += 1;
                }
            }
            let _ = conn.ack(&push.message_id).await;
        }
        monitor.abort();
        let state = conn.state();
        conn.close().await;
        state
    });

    // The timeline: steady traffic, a partition of B, healed, steady traffic again.
    ready_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    net.cut(2, true);
    let cut = Instant::now();
    std::thread::sleep(PARTITION);
    net.cut(2, false);
    let healed = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    stop_sending.send(true).unwrap();
    // Let A's last send finish before reading what was acked.
    std::thread::sleep(Duration::from_secs(1));

    // Wait for B to have everything A was told is stored, then a little longer for any
    // late duplicate (a lease expiring after the reconnect).
    let acked: Vec<String> = log.lock().unwrap().acked.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = {
            let r = received.lock().unwrap();
            acked.iter().filter(|id| !r.new.contains_key(*id)).count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acked messages never reached B",
            acked.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(broker_timings().lease * 2);
    let _ = finish_a.send(());
    let (online_at_end, b_pubkey) = a.join().unwrap();
    let _ = stop_b.send(());
    let b_state = b.join().unwrap();
    let _ = stop_broker.send(());
    broker.join().unwrap();

    let log = log.lock().unwrap();
    let r = received.lock().unwrap();
    for (i, link) in net.links.iter().enumerate() {
        eprintln!(
            "link {}: {} packets passed after {DELAY:?}, {} dropped",
            i + 1,
            link.passed.load(Ordering::Relaxed),
            link.dropped.load(Ordering::Relaxed)
        );
    }
    let grace = broker_timings().grace;
    eprintln!(
        "acked {} (failed sends {}), B got {} distinct in {} pushes; B events: {:?}",
        acked.len(),
        log.failed.len(),
        r.new.len(),
        r.pushes.values().sum::<u32>(),
        log.events
            .iter()
            .map(|(e, t)| (e.clone(), t.duration_since(cut).as_millis() as i64))
            .collect::<Vec<_>>()
    );
    assert!(
        acked.len() >= 50,
        "too few sends were acked: {}",
        acked.len()
    );
    assert!(
        log.failed.len() <= 2,
        "sends from an unpartitioned peer failed: {:?}",
        log.failed
    );
    // Exactly once: each acked message entered B's inbox once; nothing else came.
    for id in &acked {
        assert_eq!(
            r.new.get(id),
            Some(&1),
            "message {id} entered the inbox {:?} times",
            r.new.get(id)
        );
    }
    assert!(
        r.new.len() <= acked.len() + log.failed.len(),
        "B took in messages nobody was told were stored"
    );
    assert!(
        acked.iter().collect::<HashSet<_>>().len() == acked.len(),
        "the broker acked one message id twice"
    );
    // Presence: no flap under loss before the cut; B leaves only after the grace period,
    // then comes back after the heal.
    let left: Vec<Instant> = log
        .events
        .iter()
        .filter(|(e, _)| e == "peer_left")
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(
        left.len(),
        1,
        "B should leave exactly once: {:?}",
        log.events
    );
    assert!(
        left[0] > cut + grace,
        "B was shown leaving {:?} after the cut, before the grace period ({grace:?})",
        left[0] - cut
    );
    assert!(
        left[0] < healed,
        "B was not shown leaving during a {PARTITION:?} partition"
    );
    // A known identity coming back after it left is announced as `peer_returned`.
    let back = log
        .events
        .iter()
        .find(|(e, t)| e == "peer_returned" && *t > left[0]);
    let Some((_, back)) = back else {
        panic!("B never came back: {:?}", log.events)
    };
    eprintln!(
        "B was back online {:?} after the heal",
        back.saturating_duration_since(healed)
    );
    assert!(
        matches!(b_state, State::Connected { .. }),
        "B ended {b_state:?}"
    );
    // B's own client noticed the silent link (nothing the broker sends can arrive during
    // the cut) within its liveness deadline, and reconnected after the heal.
    let states = states.lock().unwrap();
    let dropped = states
        .iter()
        .find(|(connected, t)| !connected && *t > cut)
        .map(|(_, t)| *t - cut);
    let limit = client_liveness().dead_after + Duration::from_secs(1);
    assert!(
        dropped.is_some_and(|d| d <= limit),
        "B's client did not notice the dead link within {limit:?}: {dropped:?}"
    );
    assert!(
        states
            .iter()
            .any(|(connected, t)| *connected && *t > healed),
        "B's client never reconnected"
    );
    assert!(
        online_at_end.contains(&b_pubkey),
        "B is not online at the end: {online_at_end:?}"
    );
    drop(net);
}
