//! The broker's dashboard in a real headless Chromium (see `common/browser.rs`): a
//! member signs in with `claudemesh dashboard --print`, sees the live peers, sees a peer
//! arrive and leave without a reload, sees a summary with markup as text; the sign-in
//! link works once; a state-changing request without the CSRF token is refused; a
//! revoked member's page stops. Each test saves a screenshot under
//! `target/dashboard-screenshots/`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use claudemesh_client::{ConnectOptions, Connection, Identity, Liveness};
use claudemesh_crypto::SecretKey;
use claudemesh_proto::frames::PresenceInfo;
use common::User;
use common::browser::Browser;
use serde_json::{Value, json};

/// A live connection of `user`'s member key to its mesh (read from its config).
async fn live(user: &User, session: &str) -> Connection {
    let config: Value =
        serde_json::from_slice(&std::fs::read(user.dir.path().join("cfg/config.json")).unwrap())
            .unwrap();
    let entry = config["meshes"]
        .as_object()
        .and_then(|m| m.values().next())
        .cloned()
        .expect("a mesh in the config");
    let s = |k: &str| entry[k].as_str().unwrap().to_owned();
    let options = ConnectOptions {
        url: s("broker_url"),
        identity: Identity {
            mesh_id: s("mesh_id"),
            member_id: s("member_id"),
            member_key: SecretKey::from_sk64_hex(&s("secret_key")).unwrap(),
            session_key: None,
        },
        presence: PresenceInfo {
            display_name: Some(s("display_name")),
            session_id: session.to_owned(),
            ..PresenceInfo::default()
        },
        reconnect: false,
        liveness: Liveness::default(),
    };
    Connection::connect(options).await.unwrap().0
}

/// The sign-in link `claudemesh dashboard --print` gives `user`.
async fn sign_in_link(user: &User) -> String {
    let url = user.ok(&["dashboard", "--print"]).await.trim().to_owned();
    assert!(url.contains("/dashboard/login?code="), "{url}");
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_signs_in_and_sees_peers_arrive_and_leave_live() {
    let (b, _dir) = common::broker().await;
    let (_owner, alice, bob) = common::mesh(&b).await;
    let browser = Browser::start().await;
    let link = sign_in_link(&alice).await;
    browser.goto(&link).await;
    assert!(browser.url().await.contains("/dashboard/m/"), "signed in");
    browser
        .wait_text("#live", Duration::from_secs(5), "the stream is live", |t| {
            t == "live"
        })
        .await;
    assert!(!browser.text("#peers").await.unwrap().contains("bob"));

    // A peer arrives, with a summary that is markup: it shows as text, nothing runs.
    let summary = "<script>document.title='pwned'</script><b>bold?</b>";
    let bob_conn = live(&bob, "bob-session").await;
    bob_conn
        .set_summary(Some(summary.to_owned()))
        .await
        .unwrap();
    let arrived = browser
        .wait_text("#peers tbody", Duration::from_secs(2), "bob appears", |t| {
            t.contains("bob") && t.contains(summary)
        })
        .await;
    let title = browser.eval("return document.title;", json!([])).await;
    assert_ne!(title, "pwned");
    let bold = browser
        .eval(
            "return document.querySelectorAll('#peers b').length;",
            json!([]),
        )
        .await;
    assert_eq!(bold, 0, "the summary's markup was not parsed");
    browser.screenshot("member-peers").await;

    // And leaves.
    bob_conn.close().await;
    let left = browser
        .wait_text("#peers tbody", Duration::from_secs(2), "bob goes", |t| {
            !t.contains("bob")
        })
        .await;
    eprintln!("peer shown {arrived:?} after connecting, gone {left:?} after closing");

    // The members table lists everyone, online or not.
    let members = browser.text("#members").await.unwrap();
    for name in ["olivia", "alice", "bob"] {
        assert!(members.contains(name), "{name} in {members}");
    }
    browser.close().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_works_once_and_logout_needs_the_csrf_token() {
    let (b, _dir) = common::broker().await;
    let (_owner, alice, _bob) = common::mesh(&b).await;
    let browser = Browser::start().await;
    let link = sign_in_link(&alice).await;
    browser.goto(&link).await;
    assert!(browser.url().await.contains("/dashboard/m/"));

    // A second browser profile would need its own link: this one is spent.
    let spent = reqwest::get(&link).await.unwrap();
    assert_eq!(spent.status(), 400);

    // The page's policy allows no inline script and no other origin.
    let page = reqwest::get(format!("{}/dashboard", b.http_url()))
        .await
        .unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );

    // A logout posted from the page without the token (same origin, same cookie) is
    // refused and the session survives; the page's own form signs out.
    let status = browser
        .eval(
            "return fetch('/dashboard/logout', {method: 'POST', \
               headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'csrf=wrong'})\
             .then(r => r.status);",
            json!([]),
        )
        .await;
    assert_eq!(status, 403, "a wrong CSRF token is refused");
    browser.goto(&format!("{}/dashboard", b.http_url())).await;
    assert!(
        browser.url().await.contains("/dashboard/m/"),
        "still signed in"
    );
    browser
        .click("form[action='/dashboard/logout'] button")
        .await;
    browser
        .wait_text("h1", Duration::from_secs(5), "signed out", |t| {
            t == "Signed out"
        })
        .await;
    browser.screenshot("signed-out").await;
    browser.goto(&format!("{}/dashboard", b.http_url())).await;
    assert_eq!(browser.text("h1").await.as_deref(), Some("Not signed in"));
    browser.close().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_members_dashboard_stops_at_once() {
    let (b, _dir) = common::broker().await;
    let (owner, alice, _bob) = common::mesh(&b).await;
    let browser = Browser::start().await;
    browser.goto(&sign_in_link(&alice).await).await;
    browser
        .wait_text("#live", Duration::from_secs(5), "the stream is live", |t| {
            t == "live"
        })
        .await;
    owner.ok(&["revoke", "alice"]).await;
    browser
        .wait_text("#live", Duration::from_secs(2), "the stream ends", |t| {
            t.starts_with("signed out")
        })
        .await;
    browser.screenshot("revoked").await;
    browser.goto(&format!("{}/dashboard", b.http_url())).await;
    assert_eq!(browser.text("h1").await.as_deref(), Some("Not signed in"));
    browser.close().await;
    b.shutdown().await;
}
