//! Traffic for the tests that break things underneath it (a PostgreSQL restart, a killed
//! broker node): a sender that sends E2E DMs at a steady pace and records which the broker
//! acked, a receiver that records every push in a real inbox (deduped) before acking it,
//! and the check that every acked message reached the receiver's inbox exactly once.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use claudemesh_client::envelope::Keyring;
use claudemesh_client::inbox::Inbox;
use claudemesh_client::{ConnectOptions, Connection, Identity, Liveness, Target, messaging};
use claudemesh_crypto::{PublicKey, SecretKey};
use claudemesh_proto::frames::{PresenceInfo, Priority, Push};

use super::Member;

/// A real client connection of `member` to `url` (reconnecting, default liveness), and
/// its pushes.
pub async fn connect(
    url: &str,
    member: &Member,
) -> (Connection, tokio::sync::mpsc::Receiver<Push>) {
    Connection::connect(options(url, member)).await.unwrap()
}

/// The options [`connect`] uses.
pub fn options(url: &str, member: &Member) -> ConnectOptions {
    ConnectOptions {
        url: url.to_owned(),
        identity: Identity {
            mesh_id: member.mesh_id.clone(),
            member_id: member.member_id.clone(),
            member_key: member.ident.sk.clone(),
            session_key: None,
        },
        presence: PresenceInfo {
            display_name: Some(member.name.clone()),
            session_id: format!("{}-session", member.name),
            ..PresenceInfo::default()
        },
        reconnect: true,
        liveness: Liveness::default(),
    }
}

/// What a sender saw: broker message ids acked (in order) and sends that failed.
#[derive(Debug, Default)]
pub struct Sent {
    pub acked: Vec<String>,
    pub failed: Vec<String>,
}

/// A task sending "<label> <n>" to one key every `every` until stopped.
pub struct Sender {
    pub log: Arc<Mutex<Sent>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sender {
    pub fn start(
        conn: Connection,
        from: &Member,
        to: PublicKey,
        label: &str,
        every: Duration,
    ) -> Self {
        let key = from.ident.sk.clone();
        let mesh_id = from.mesh_id.clone();
        let log = Arc::new(Mutex::new(Sent::default()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task_log = log.clone();
        let label = label.to_owned();
        let task = tokio::spawn(async move {
            let mut ring = Keyring::new(key);
            let target = Target::Key(to);
            let mut n = 0u64;
            while !*stopped.borrow() {
                n += 1;
                let text = format!("{label} {n}");
                let sent =
                    messaging::send_text(&conn, &mut ring, &mesh_id, &target, &text, Priority::Now)
                        .await;
                match sent {
                    Ok(report) => task_log.lock().unwrap().acked.extend(report.message_ids),
                    Err(e) => task_log.lock().unwrap().failed.push(format!("{text}: {e}")),
                }
                tokio::time::sleep(every).await;
            }
        });
        Self { log, stop, task }
    }

    /// How many sends were acked so far.
    pub fn acked(&self) -> usize {
        self.log.lock().unwrap().acked.len()
    }

    /// Stop after the send in progress; the acked ids.
    pub async fn stop(self) -> Sent {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
        Arc::try_unwrap(self.log)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_default()
    }
}

/// Per broker message id: how often it was pushed, and how often the inbox called it new.
#[derive(Debug, Default)]
pub struct Received {
    pub pushes: BTreeMap<String, u32>,
    pub new: BTreeMap<String, u32>,
    /// Broker message ids in the order of their first push.
    pub order: Vec<String>,
}

/// A task taking `rx`'s pushes into a real inbox, then acking each.
pub struct Receiver {
    pub received: Arc<Mutex<Received>>,
    conn: Connection,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Receiver {
    pub fn start(
        conn: Connection,
        mut rx: tokio::sync::mpsc::Receiver<Push>,
        key: SecretKey,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox = Inbox::open(&dir.path().join("inbox.db")).unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let task_received = received.clone();
        let task_conn = conn.clone();
        let task = tokio::spawn(async move {
            let conn = task_conn;
            let mut ring = Keyring::new(key);
            while let Some(push) = rx.recv().await {
                if push.subtype.as_deref() == Some("system") {
                    continue;
                }
                let new = messaging::receive(&mut ring, &push, &mut inbox)
                    .unwrap()
                    .is_some();
                {
                    let mut r = task_received.lock().unwrap();
                    if !r.pushes.contains_key(&push.message_id) {
                        r.order.push(push.message_id.clone());
                    }
                    *r.pushes.entry(push.message_id.clone()).or_default() += 1;
                    if new {
                        *r.new.entry(push.message_id.clone()).or_default() += 1;
                    }
                }
                let _ = conn.ack(&push.message_id).await;
            }
        });
        Self {
            received,
            conn,
            task,
            _dir: dir,
        }
    }

    /// Wait until every id in `acked` is in the inbox (panicking after `within`), then
    /// check that the inbox took each exactly once.
    pub async fn expect_all(&self, acked: &[String], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let missing: Vec<String> = {
                let r = self.received.lock().unwrap();
                acked
                    .iter()
                    .filter(|id| !r.new.contains_key(*id))
                    .cloned()
                    .collect()
            };
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} acked messages never arrived, e.g. {:?}; the receiver is {:?}",
                missing.len(),
                acked.len(),
                &missing[..missing.len().min(3)],
                self.conn.state()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = self.received.lock().unwrap();
        let twice: Vec<_> = r.new.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "shown twice after dedupe: {twice:?}");
    }

    /// Check that one sender's `acked` ids were first pushed in the order it sent them.
    pub fn expect_in_order(&self, acked: &[String]) {
        let mine: std::collections::HashSet<&String> = acked.iter().collect();
        let r = self.received.lock().unwrap();
        let seen: Vec<&String> = r.order.iter().filter(|id| mine.contains(id)).collect();
        let first_out_of_order = seen.iter().zip(acked).position(|(a, b)| *a != b);
        assert_eq!(
            first_out_of_order,
            None,
            "first pushes out of send order ({} sent)",
            acked.len()
        );
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
