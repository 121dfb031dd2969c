//! The client library against the real broker: session identities with minted
//! attestations, reconnect across a broker restart without losing or duplicating a send,
//! end-to-end messaging with dedupe, and the multicast fallback on a v1-only broker.

// Integration tests: helpers outside #[test] fns may unwrap and panic like the tests do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use claudemesh_broker::{Broker, BrokerConfig, BrokerHandle};
use claudemesh_client::envelope::Keyring;
use claudemesh_client::inbox::{Inbox, Kind};
use claudemesh_client::{
    ConnectError, ConnectOptions, Connection, Delivery, Failure, Identity, Liveness, State, Target,
    messaging,
};
use claudemesh_crypto::SecretKey;
use claudemesh_proto::frames::{PresenceInfo, Priority, Push, Status};
use common::Mesh;
use tokio::sync::mpsc;

/// A mesh with `n` enrolled members, display names `m0`, `m1`…
async fn mesh(b: &BrokerHandle, n: usize) -> Mesh {
    let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    common::mesh(&b.http_url(), &b.ws_url(), "m", &names).await
}

async fn connect(
    url: &str,
    mesh: &Mesh,
    i: usize,
    session: Option<SecretKey>,
    reconnect: bool,
) -> (Connection, mpsc::Receiver<Push>, SecretKey) {
    let (member_id, key) = mesh.members[i].clone();
    let identity = Identity {
        mesh_id: mesh.id.clone(),
        member_id,
        member_key: key,
        session_key: session,
    };
    let me = identity.connection_key().clone();
    let presence = PresenceInfo {
        display_name: Some(format!("m{i}")),
        session_id: format!("s{i}"),
        capabilities: Some(vec!["e2e-multicast".into(), "list-members".into()]),
        ..PresenceInfo::default()
    };
    let (c, rx) = Connection::connect(ConnectOptions {
        url: url.to_owned(),
        identity,
        presence,
        reconnect,
        liveness: Liveness::default(),
    })
    .await
    .unwrap();
    (c, rx, me)
}

/// A broker for tests over a fresh database (keep the directory alive).
async fn broker() -> (BrokerHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::spawn(BrokerConfig::for_tests(dir.path().into()))
        .await
        .unwrap();
    (b, dir)
}

/// Options for a member connection that reconnects, with an empty presence.
fn member_options(url: &str, mesh_id: &str, member_id: &str, key: SecretKey) -> ConnectOptions {
    ConnectOptions {
        url: url.to_owned(),
        identity: Identity {
            mesh_id: mesh_id.to_owned(),
            member_id: member_id.to_owned(),
            member_key: key,
            session_key: None,
        },
        presence: PresenceInfo::default(),
        reconnect: true,
        liveness: Liveness::default(),
    }
}

async fn next(rx: &mut mpsc::Receiver<Push>) -> Push {
    loop {
        let p = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no push within 10 s")
            .unwrap();
        if p.subtype.as_deref() != Some("system") {
            return p;
        }
    }
}

#[tokio::test]
async fn session_identity_and_e2e_with_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::spawn(BrokerConfig::for_tests(dir.path().into()))
        .await
        .unwrap();
    let m = mesh(&b, 2).await;
    let session = SecretKey::generate();
    let (a, _arx, a_key) = connect(&b.ws_url(), &m, 0, Some(session.clone()), false).await;
    assert_eq!(a.hello().unwrap().presence_id, session.public().to_hex());
    let (bc, mut brx, b_key) = connect(&b.ws_url(), &m, 1, None, false).await;
    let peers = bc.peers().await.unwrap();
    assert!(
        peers
            .iter()
            .any(|p| p.pubkey == session.public().to_hex() && p.role == "session")
    );

    let report = messaging::send_text(
        &a,
        &mut Keyring::new(a_key.clone()),
        &m.id,
        &Target::Key(b_key.public()),
        "from a session",
        Priority::Now,
    )
    .await
    .unwrap();
    assert_eq!(report.delivery, Delivery::Direct);
    let push = next(&mut brx).await;
    assert_eq!(push.sender_pubkey, session.public().to_hex());
    let inbox_dir = tempfile::tempdir().unwrap();
    let mut inbox = Inbox::open(&inbox_dir.path().join("inbox.db")).unwrap();
    let rec = messaging::receive(&mut Keyring::new(b_key.clone()), &push, &mut inbox)
        .unwrap()
        .expect("new");
    assert_eq!(
        (rec.kind, rec.text.as_deref()),
        (Kind::Verified, Some("from a session"))
    );
    // A redelivery of the same push is not shown twice.
    assert!(
        messaging::receive(&mut Keyring::new(b_key.clone()), &push, &mut inbox)
            .unwrap()
            .is_none()
    );
    bc.ack(&push.message_id).await.unwrap();
}

#[tokio::test]
async fn reconnects_across_a_broker_restart_without_losing_or_duplicating_a_send() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::spawn(BrokerConfig::for_tests(dir.path().into()))
        .await
        .unwrap();
    let addr = b.addr();
    let url = b.ws_url();
    let m = mesh(&b, 2).await;
    let (a, _arx, a_key) = connect(&url, &m, 0, None, true).await;
    let b_pub = m.members[1].1.public();

    b.shutdown().await;
    // While the broker is down, a send waits; it completes after the reconnect.
    let a2 = a.clone();
    let key = a_key.clone();
    let mesh_id = m.id.clone();
    let pending = tokio::spawn(async move {
        messaging::send_text(
            &a2,
            &mut Keyring::new(key.clone()),
            &mesh_id,
            &Target::Key(b_pub),
            "sent during the outage",
            Priority::Now,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.state(), State::Connecting);

    let mut config = BrokerConfig::for_tests(dir.path().into());
    config.listen = addr;
    let b = Broker::spawn(config).await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(a.state(), State::Connected { .. }));

    let (_bc, mut brx, b_key) = connect(&url, &m, 1, None, false).await;
    let push = next(&mut brx).await;
    assert_eq!(push.message_id, report.message_ids[0]);
    let inbox_dir = tempfile::tempdir().unwrap();
    let mut inbox = Inbox::open(&inbox_dir.path().join("i.db")).unwrap();
    assert_eq!(
        messaging::receive(&mut Keyring::new(b_key.clone()), &push, &mut inbox)
            .unwrap()
            .unwrap()
            .text
            .as_deref(),
        Some("sent during the outage")
    );
    // Exactly one copy: nothing else is queued for b.
    let extra = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match brx.recv().await {
                Some(p) if p.subtype.as_deref() == Some("system") => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(extra.is_err(), "a second copy arrived: {extra:?}");
    b.shutdown().await;
}

#[tokio::test]
async fn multicast_falls_back_to_per_peer_messages_on_a_v1_only_broker() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig::for_tests(dir.path().into());
    config.v1_only = true;
    let b = Broker::spawn(config).await.unwrap();
    let m = mesh(&b, 3).await;
    let (a, _arx, a_key) = connect(&b.ws_url(), &m, 0, None, false).await;
    assert!(
        a.hello().unwrap().capabilities.is_empty(),
        "a v1 broker announces nothing"
    );
    assert!(a.members().await.is_err(), "list_members is unavailable");
    let (_bc, mut brx, b_key) = connect(&b.ws_url(), &m, 1, None, false).await;

    let report = messaging::send_text(
        &a,
        &mut Keyring::new(a_key.clone()),
        &m.id,
        &Target::Broadcast,
        "to whoever is online",
        Priority::Now,
    )
    .await
    .unwrap();
    match &report.delivery {
        Delivery::PerPeer { unreachable } => assert!(
            unreachable.contains("offline members will not receive it"),
            "{unreachable}"
        ),
        other => panic!("expected the per-peer fallback, got {other:?}"),
    }
    assert_eq!(report.recipients, 1, "only the online peer");
    let push = next(&mut brx).await;
    let inbox_dir = tempfile::tempdir().unwrap();
    let mut inbox = Inbox::open(&inbox_dir.path().join("i.db")).unwrap();
    let rec = messaging::receive(&mut Keyring::new(b_key.clone()), &push, &mut inbox)
        .unwrap()
        .unwrap();
    assert_eq!(
        (rec.kind, rec.text.as_deref()),
        (Kind::Verified, Some("to whoever is online"))
    );
    // Direct messages still work as usual.
    let r = messaging::send_text(
        &a,
        &mut Keyring::new(a_key.clone()),
        &m.id,
        &Target::Key(m.members[2].1.public()),
        "queued for later",
        Priority::Now,
    )
    .await
    .unwrap();
    assert_eq!(r.recipients, 1);
}

/// A spawned handle starts while the broker is down, connects when it comes up, and
/// after a broker restart puts back the status, summary and groups it had set.
#[tokio::test]
async fn spawned_connection_waits_for_the_broker_and_restores_its_presence() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::spawn(BrokerConfig::for_tests(dir.path().into()))
        .await
        .unwrap();
    let (addr, url) = (b.addr(), b.ws_url());
    let m = mesh(&b, 2).await;
    b.shutdown().await;

    let session = SecretKey::generate();
    let (member_id, key) = m.members[0].clone();
    let (a, _arx) = Connection::spawn(ConnectOptions {
        url: url.clone(),
        identity: Identity {
            mesh_id: m.id.clone(),
            member_id,
            member_key: key,
            session_key: Some(session.clone()),
        },
        presence: PresenceInfo {
            display_name: Some("m0/repo".into()),
            session_id: "spawned".into(),
            ..PresenceInfo::default()
        },
        reconnect: true,
        liveness: Liveness::default(),
    });
    assert_eq!(a.state(), State::Connecting);
    assert!(a.hello().is_none());
    // Commands keep being taken while disconnected: far more than the command queue holds
    // complete at once, and only the last status counts.
    tokio::time::timeout(Duration::from_secs(2), async {
        for i in 0..600 {
            let s = if i % 2 == 0 {
                Status::Working
            } else {
                Status::Idle
            };
            a.set_status(s).await.unwrap();
        }
    })
    .await
    .expect("status updates piled up while disconnected");
    let err = a
        .wait_connected(Duration::from_millis(400))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("refused") || err.to_string().contains("connect"),
        "{err}"
    );

    let restart = |dir: &std::path::Path| {
        let mut config = BrokerConfig::for_tests(dir.into());
        config.listen = addr;
        Broker::spawn(config)
    };
    let b = restart(dir.path()).await.unwrap();
    a.wait_connected(Duration::from_secs(20)).await.unwrap();
    a.set_status(Status::Dnd).await.unwrap();
    a.set_summary(Some("fixing the stripe bug".into()))
        .await
        .unwrap();
    a.join_group("backend", None).await.unwrap();
    a.sync().await.unwrap();

    b.shutdown().await;
    let b = restart(dir.path()).await.unwrap();
    let (bc, _brx, _) = connect(&url, &m, 1, None, false).await;
    let me = session.public().to_hex();
    let mut seen = None;
    for _ in 0..100 {
        let peers = bc.peers().await.unwrap();
        if let Some(p) = peers.into_iter().find(|p| p.pubkey == me)
            && p.status == Status::Dnd
            && p.summary.is_some()
        {
            seen = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = seen.expect("the session came back with its status and summary");
    assert_eq!(p.status, Status::Dnd, "the last status set wins");
    assert_eq!(p.summary.as_deref(), Some("fixing the stripe bug"));
    assert_eq!(
        p.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
        ["backend"]
    );
    b.shutdown().await;
}

/// A hello the broker refuses for a field (not for the identity) is retried, not final:
/// the handle keeps reporting why, and a `close` still ends it at once.
#[tokio::test]
async fn a_refused_field_is_retried_not_final() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::spawn(BrokerConfig::for_tests(dir.path().into()))
        .await
        .unwrap();
    let m = mesh(&b, 1).await;
    let (member_id, key) = m.members[0].clone();
    let (a, _rx) = Connection::spawn(ConnectOptions {
        url: b.ws_url(),
        identity: Identity {
            mesh_id: m.id.clone(),
            member_id,
            member_key: key,
            session_key: Some(SecretKey::generate()),
        },
        presence: PresenceInfo {
            session_id: "long".into(),
            cwd: "d/".repeat(400), // over the broker's 512-byte limit
            ..PresenceInfo::default()
        },
        reconnect: true,
        liveness: Liveness::default(),
    });
    let err = a.wait_connected(Duration::from_secs(2)).await.unwrap_err();
    assert!(err.to_string().contains("malformed"), "{err}");
    assert_eq!(a.state(), State::Connecting, "still retrying");
    tokio::time::timeout(Duration::from_secs(2), a.close())
        .await
        .expect("close is honoured while reconnecting");
    b.shutdown().await;
}

/// A final refusal is reported with the broker's own code, by the state and by
/// `wait_connected`; a one-shot connection that drops reports that it closed.
#[tokio::test]
async fn refusals_carry_the_brokers_code_and_a_drop_is_not_a_refusal() {
    let (b, _dir) = broker().await;
    let m = mesh(&b, 1).await;
    let (_, key) = m.members[0].clone();
    let (a, _rx) = Connection::spawn(member_options(&b.ws_url(), &m.id, "not-a-member", key));
    let err = a.wait_connected(Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(&err, ConnectError::Refused { code, .. } if code == "unauthorized"),
        "{err:?}"
    );
    assert!(
        matches!(a.state(), State::Failed(Failure::Refused { code, .. }) if code == "unauthorized")
    );

    let (c, _crx, _) = connect(&b.ws_url(), &m, 0, None, false).await;
    b.shutdown().await;
    let failure = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let State::Failed(f) = c.state() {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a one-shot connection gives up when its socket closes");
    assert_eq!(failure, Failure::Dropped);
    let err = c.wait_connected(Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, ConnectError::Closed), "{err:?}");
}

/// An unreachable broker is reported with the cause as the error's source, named once:
/// the display says what failed, the source why.
#[tokio::test]
async fn an_unreachable_broker_keeps_the_cause_as_the_source() {
    // Port 9 (discard): nothing listens.
    let opts = member_options("ws://127.0.0.1:9/ws", "m", "member", SecretKey::generate());
    let err = Connection::connect(opts).await.map(|_| ()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot reach the broker at ws://127.0.0.1:9/ws"
    );
    let mut chain = Vec::new();
    let mut cause = std::error::Error::source(&err);
    while let Some(e) = cause {
        chain.push(e.to_string());
        cause = e.source();
    }
    assert_eq!(chain.len(), 1, "one cause, not repeated: {chain:?}");
    assert!(
        matches!(
            &err,
            ConnectError::Unreachable {
                source: claudemesh_client::TransportError::Io(_),
                ..
            }
        ),
        "{err:?}"
    );
}
