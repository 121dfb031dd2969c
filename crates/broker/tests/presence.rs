//! Presence events at scale (PROTOCOL.md §6.2): a broker restart is a silent re-attach
//! for everyone who comes back within the grace period and a `peer_left` for whoever does
//! not; events within a tick are coalesced (one `presence` frame for clients that
//! announce `presence-batch`, a capped share of v1 pushes for the others), and a change
//! undone within the tick is never sent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[macro_use]
mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A client that announces `presence-batch` (raw frames, like [`V1Client`]).
async fn batch_client(url: &str, m: &Member) -> V1Client {
    let mut c = V1Client {
        ws: V1Client::raw(url).await,
        key: m.ident.pk.clone(),
    };
    let mut hello = hello_frame(m, "sess-batch", now_ms());
    hello["capabilities"] = json!(["presence-batch"]);
    c.send(hello).await;
    let ack = c.recv().await;
    assert_eq!(ack["type"], "hello_ack", "{ack}");
    c
}

/// Every frame that arrives within `wait`.
async fn drain(c: &mut V1Client, wait: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.try_recv(left).await {
            Some(v) => out.push(v),
            None => return out,
        }
    }
}

/// (event, pubkey) of every presence event in `frames`, v1 pushes and batches alike.
fn events(frames: &[Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in frames {
        if f["type"] == "push" && f["subtype"] == "system" {
            out.push((
                f["event"].as_str().unwrap().to_owned(),
                f["eventData"]["pubkey"].as_str().unwrap().to_owned(),
            ));
        } else if f["type"] == "presence" {
            for e in f["events"].as_array().unwrap() {
                out.push((
                    e["event"].as_str().unwrap().to_owned(),
                    e["pubkey"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

on_every_backend! {
    #[tokio::test]
    async fn a_restart_is_silent_for_who_returns_and_a_leave_for_who_does_not() {
        let grace = Duration::from_millis(1_500);
        let b = TestBroker::start_with(|c| c.timings.grace = grace).await;
        let mesh = create_mesh(&b, "restart").await;
        let alice = enroll(&b, &mesh, "alice").await;
        let bob = enroll(&b, &mesh, "bob").await;
        let carol = enroll(&b, &mesh, "carol").await;
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let bc = V1Client::connect(&b.ws(), &bob).await;
        let cc = V1Client::connect(&b.ws(), &carol).await;
        assert_eq!(events(&drain(&mut a, Duration::from_millis(500)).await).len(), 2);

        let data = b.stop().await;
        drop((a, bc, cc));
        let b = TestBroker::start_in(data, |c| c.timings.grace = grace).await;
        // Alice and Bob come back; Carol does not.
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let mut bc = V1Client::connect_session(&b.ws(), &bob, "sess-2").await;
        let seen = drain(&mut a, Duration::from_millis(400)).await;
        assert!(events(&seen).is_empty(), "a return after a restart is silent: {seen:?}");
        let peers = a.peers().await;
        let listed: HashSet<&str> = peers.iter().filter_map(|p| p["pubkey"].as_str()).collect();
        assert_eq!(listed, HashSet::from([alice.ident.pk.as_str(), bob.ident.pk.as_str()]));
        // Carol's presence ends with the grace period (on PostgreSQL, once the old node is
        // reaped: its timeout plus the grace period): no ghost.
        let wait = grace + Duration::from_secs(8);
        let mut left: Vec<Value> = a.try_recv(wait).await.into_iter().collect();
        left.extend(drain(&mut a, Duration::from_millis(300)).await);
        assert_eq!(
            events(&left),
            vec![("peer_left".to_owned(), carol.ident.pk.clone())],
            "{left:?}"
        );
        assert_eq!(events(&drain(&mut bc, Duration::from_millis(200)).await).len(), 1);
        // A first connection after that is announced as before.
        let dave = enroll(&b, &mesh, "dave").await;
        let _dc = V1Client::connect(&b.ws(), &dave).await;
        assert_eq!(a.recv().await["event"], "peer_joined");
    }

    #[tokio::test]
    async fn events_within_a_tick_are_coalesced_and_a_change_undone_is_not_sent() {
        let tick = Duration::from_millis(1_500);
        let b = TestBroker::start_with(|c| c.timings.presence_tick = tick).await;
        let mesh = create_mesh(&b, "storm").await;
        let alice = enroll(&b, &mesh, "alice").await;
        let bob = enroll(&b, &mesh, "bob").await;
        let zed = enroll(&b, &mesh, "zed").await;
        let yan = enroll(&b, &mesh, "yan").await;
        let mut crowd = Vec::new();
        for i in 0..30 {
            crowd.push(enroll(&b, &mesh, &format!("w{i}")).await);
        }
        let mut a = V1Client::connect(&b.ws(), &alice).await;
        let mut bc = batch_client(&b.ws(), &bob).await;
        drain(&mut a, tick + Duration::from_millis(200)).await;
        drain(&mut bc, Duration::from_millis(10)).await;

        // A quiet mesh: the first event goes out at once, and starts a tick.
        let _zc = V1Client::connect(&b.ws(), &zed).await;
        let first = bc.recv().await;
        assert_eq!(first["type"], "presence", "{first}");
        assert_eq!(events(&[first]), vec![("peer_joined".to_owned(), zed.ident.pk.clone())]);
        assert_eq!(a.recv().await["eventData"]["pubkey"], zed.ident.pk);
        // Within the tick: Yan joins and leaves on purpose, thirty others join at once.
        let mut yc = V1Client::connect(&b.ws(), &yan).await;
        yc.ws
            .send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })))
            .await
            .unwrap();
        let url = b.ws();
        let conns = futures_util::future::join_all(
            crowd.iter().map(|m| V1Client::connect(&url, m)),
        )
        .await;

        let frames = drain(&mut bc, tick * 2 + Duration::from_millis(500)).await;
        assert!(!frames.is_empty() && frames.len() <= 2, "one frame per tick: {} frames", frames.len());
        assert!(frames.iter().all(|f| f["type"] == "presence"), "{frames:?}");
        let got = events(&frames);
        let want: HashSet<(String, String)> = crowd
            .iter()
            .map(|m| ("peer_joined".to_owned(), m.ident.pk.clone()))
            .collect();
        assert_eq!(got.len(), 30, "each key once, Yan not at all: {got:?}");
        assert_eq!(got.into_iter().collect::<HashSet<_>>(), want);

        // The v1 client gets single pushes, a capped share per tick, never Yan.
        let v1 = events(&drain(&mut a, Duration::from_millis(300)).await);
        assert!(!v1.is_empty() && v1.len() <= 32, "{} v1 events", v1.len());
        assert!(v1.iter().all(|(e, k)| e == "peer_joined" && *k != yan.ident.pk), "{v1:?}");
        let m = metrics(&b).await;
        assert!(metric(&m, "broker_presence_events_dropped_total ") >= 30 - 16, "{m}");
        drop(conns);
    }
}

/// A tick with more events than a frame's share: the frame says how many did not fit.
/// Joins past it are not sent (`list_peers` has them); leaves past it follow in the next
/// ticks, so nobody keeps a ghost.
#[tokio::test]
async fn leaves_past_a_frames_share_follow_in_the_next_ticks() {
    let tick = Duration::from_millis(700);
    let b = TestBroker::start_with(|c| {
        c.timings.presence_tick = tick;
        // 300 hellos at once from this one address.
        c.max_unauthenticated_per_source = c.max_unauthenticated;
    })
    .await;
    let mesh = create_mesh(&b, "share").await;
    let alice = enroll(&b, &mesh, "alice").await;
    let zed = enroll(&b, &mesh, "zed").await;
    let mut crowd = Vec::new();
    for i in 0..300 {
        crowd.push(enroll(&b, &mesh, &format!("w{i}")).await);
    }
    let mut a = batch_client(&b.ws(), &alice).await;
    drain(&mut a, tick + Duration::from_millis(100)).await;
    // Zed's join starts a tick; the crowd's 300 joins fall into the next ones.
    let _zc = V1Client::connect(&b.ws(), &zed).await;
    assert_eq!(events(&[a.recv().await]).len(), 1);
    let url = b.ws();
    // 50 hellos at a time: still many joins per tick, and no hello_ack waits on 299
    // others' signatures being checked on a loaded machine.
    let mut conns: Vec<V1Client> = futures_util::stream::iter(&crowd)
        .map(|m| V1Client::connect(&url, m))
        .buffer_unordered(50)
        .collect()
        .await;
    let joins = drain(&mut a, tick * 3).await;
    assert!(
        joins
            .iter()
            .any(|f| f["more"].as_u64().is_some_and(|n| n > 0)),
        "a frame said how many joins did not fit"
    );
    assert_eq!(a.peers().await.len(), 302, "list_peers has everyone");
    drain(&mut a, tick + Duration::from_millis(100)).await;

    // All 300 leave on purpose at once: every leave reaches Alice, over several ticks.
    futures_util::future::join_all(conns.iter_mut().map(|c| {
        c.ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
    }))
    .await;
    let want: HashSet<String> = crowd.iter().map(|m| m.ident.pk.clone()).collect();
    let mut frames = Vec::new();
    let mut left = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while left != want {
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(f) = a.try_recv(wait).await else {
            break;
        };
        for (e, k) in events(std::slice::from_ref(&f)) {
            assert_eq!(e, "peer_left");
            left.insert(k);
        }
        frames.push(f);
    }
    assert_eq!(
        left.len(),
        300,
        "every leave arrives ({} frames)",
        frames.len()
    );
    assert!(
        frames.len() > 1,
        "over more than one frame: {}",
        frames.len()
    );
}
