//! A PostgreSQL restart under load, end to end: a broker on a private PostgreSQL server
//! (`claudemesh_testdb::PgServer`, so the machine's server and the tests using it are not
//! disturbed), peer A sending E2E DMs to peer B every 10 ms through real client
//! connections. The server is stopped (`pg_ctl stop -m fast`) for three seconds and started
//! again. While it is down the broker acks nothing, `/health` says 503 and a hello is
//! refused `unavailable`; it recovers by itself; every message acked before, during or
//! after reaches B's inbox exactly once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::{Duration, Instant};

use claudemesh_broker::{Broker, BrokerConfig};
use claudemesh_testdb::{PgServer, TestDb};
use common::traffic::{Receiver, Sender, connect};
use common::*;

async fn health(http: &str) -> u16 {
    match reqwest::get(format!("{http}/health")).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Poll `/health` until it answers `status` (panicking after `within`).
async fn await_health(http: &str, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    while health(http).await != status {
        assert!(
            started.elapsed() < within,
            "/health never said {status} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_under_load_loses_nothing_acked() {
    let test = "a_postgresql_restart_under_load_loses_nothing_acked";
    let Some(server) = claudemesh_testdb::off_runtime(|| PgServer::start(test)) else {
        return;
    };
    let db = TestDb::create_on(&server.addr());
    let data = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig::for_tests(data.path().to_path_buf());
    config.database_url = Some(db.url().to_owned());
    let broker = TestBroker::serving(
        Broker::spawn(config).await.unwrap(),
        Data {
            dir: data,
            pg: None,
        },
    );
    let http = broker.http();
    let mesh = create_mesh(&broker, "pg-restart").await;
    let alice = enroll(&broker, &mesh, "a").await;
    let bob = enroll(&broker, &mesh, "b").await;
    let (a, _a_rx) = connect(&broker.ws(), &alice).await;
    let (b, b_rx) = connect(&broker.ws(), &bob).await;
    let receiver = Receiver::start(b.clone(), b_rx, bob.ident.sk.clone());
    let sender = Sender::start(
        a.clone(),
        &alice,
        bob.ident.sk.public(),
        "before",
        Duration::from_millis(10),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = sender.acked();
    assert!(
        before > 10,
        "traffic flows before the restart: {before} acked"
    );

    claudemesh_testdb::off_runtime(|| server.stop());
    let noticed = await_health(&http, 503, Duration::from_secs(5)).await;
    // Sends already answered when the server went are settled by now; from here on,
    // nothing may be acked until the server is back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_outage = sender.acked();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        sender.acked(),
        at_outage,
        "the broker acked sends while PostgreSQL was down"
    );
    assert_eq!(health(&http).await, 503, "still down");
    // A connection attempt now is refused `unavailable` (not as a stranger), so clients
    // keep retrying; sends from connections cut by the outage wait in the clients.
    let mut probe = V1Client {
        ws: V1Client::raw(&broker.ws()).await,
        key: String::new(),
    };
    probe.send(hello_frame(&alice, "probe", now_ms())).await;
    let refused = probe.recv().await;
    assert_eq!(refused["code"], "unavailable", "{refused}");

    claudemesh_testdb::off_runtime(|| server.start_again());
    let recovered = await_health(&http, 200, Duration::from_secs(15)).await;
    let resumed = Instant::now();
    while sender.acked() == at_outage {
        assert!(
            resumed.elapsed() < Duration::from_secs(30),
            "sends never resumed after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumed_after = resumed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = sender.stop().await;
    assert!(
        sent.acked.len() > at_outage + 10,
        "traffic flows after the restart"
    );
    receiver
        .expect_all(&sent.acked, Duration::from_secs(60))
        .await;
    eprintln!(
        "pg restart: {before} acked before; 503 after {noticed:?}; {} sends refused; \
         200 again {recovered:?} after the restart, sends acked again {resumed_after:?} later; \
         {} acked in all, all delivered once",
        sent.failed.len(),
        sent.acked.len()
    );
    a.close().await;
    b.close().await;
    broker.stop().await;
    drop(db);
    drop(server);
}
