//! The broker's dashboard in a real headless Chromium (see `common/browser.rs`): a
//! member signs in with `claudemesh dashboard --print`, sees the live peers, sees a peer
//! arrive and leave without a reload, sees a summary with markup as text; the sign-in
//! link works once; a state-changing request without the CSRF token is refused; a
//! revoked member's page stops; a message shows in the traffic view as queued, then
//! acked, and never its body; an owner revokes a member and an invite from the page (the
//! member's socket closes with 4002, its own dashboard session stops), and a forged
//! action without the CSRF token changes nothing; `--local` shows a decrypted message the
//! identity received, verified, and the broker's dashboard never does. Each test saves a
//! screenshot under
//! `target/dashboard-screenshots/`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use claudemesh_client::{ConnectOptions, Connection, Failure, Identity, Liveness, State};
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

/// Wait until the page's event stream is live.
async fn wait_live(browser: &Browser) {
    browser
        .wait_text("#live", Duration::from_secs(5), "the stream is live", |t| {
            t == "live"
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_signs_in_and_sees_peers_arrive_and_leave_live() {
    let (b, _dir) = common::broker().await;
    let (_owner, alice, bob) = common::mesh(&b).await;
    let browser = Browser::start().await;
    let link = sign_in_link(&alice).await;
    browser.goto(&link).await;
    assert!(browser.url().await.contains("/dashboard/m/"), "signed in");
    wait_live(&browser).await;
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
    wait_live(&browser).await;
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

/// The text of `column` (1-based) in the members row of the member identity `name`.
async fn member_cell(browser: &Browser, name: &str, column: usize) -> String {
    let v = browser
        .eval(
            "const row = [...document.querySelectorAll('#members tbody tr')].find(r => \
               r.cells[0].textContent === arguments[0] && r.cells[1].textContent === 'member'); \
             return row ? row.cells[arguments[1] - 1].textContent : null;",
            json!([name, column]),
        )
        .await;
    v.as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_shows_a_message_queued_then_acked_and_never_its_body() {
    let (b, _dir) = common::broker().await;
    let (_owner, alice, bob) = common::mesh(&b).await;
    let browser = Browser::start().await;
    browser.goto(&sign_in_link(&alice).await).await;
    wait_live(&browser).await;
    let actions = browser
        .eval(
            "return document.querySelectorAll('#members td.actions form').length;",
            json!([]),
        )
        .await;
    assert_eq!(actions, 0, "a member is offered no kick or revoke");
    assert!(
        browser.text("#invites").await.is_none(),
        "a member sees no invites"
    );

    // Bob is offline: the message waits for him.
    let secret = "the stripe webhook secret rotates on friday";
    alice.ok(&["send", "bob", secret]).await;
    let queued = browser
        .wait_text("#traffic tbody", Duration::from_secs(2), "queued", |t| {
            t.contains("alice") && t.contains("bob") && t.contains("queued") && t.contains("0/1")
        })
        .await;
    assert_eq!(
        member_cell(&browser, "bob", 7).await,
        "1",
        "bob's queue depth"
    );
    browser.click("#traffic details summary").await;
    browser.screenshot("traffic-queued").await;

    // Bob reads his inbox, which acks it.
    let got = bob.json(&["inbox"]).await;
    assert_eq!(got[0]["text"], secret, "{got}");
    let acked = browser
        .wait_text("#traffic tbody", Duration::from_secs(2), "acked", |t| {
            t.contains("acked") && t.contains("1/1 acked") && !t.contains("queued")
        })
        .await;
    eprintln!(
        "traffic showed the message queued {queued:?} after sending, acked {acked:?} after the inbox read"
    );
    let details = browser
        .text("#traffic details ul")
        .await
        .unwrap_or_default();
    assert!(
        details.contains("bob") && details.contains("acked"),
        "the open details stay open and show bob's copy: {details:?}"
    );
    assert_eq!(member_cell(&browser, "bob", 7).await, "0");
    browser.screenshot("traffic-acked").await;

    let html = browser
        .eval("return document.documentElement.outerHTML;", json!([]))
        .await;
    assert!(
        !html.as_str().unwrap().contains("stripe webhook"),
        "the broker's dashboard never shows a body"
    );
    browser.close().await;
    b.shutdown().await;
}

/// A dashboard session made outside the browser: the cookie a sign-in link sets.
async fn cookie_session(user: &User) -> String {
    let link = sign_in_link(user).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http.get(&link).send().await.unwrap();
    assert_eq!(r.status(), 303, "a sign-in redirects to the mesh");
    r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_revokes_a_member_and_an_invite_from_the_page() {
    let (b, _dir) = common::broker().await;
    let (owner, alice, bob) = common::mesh(&b).await;
    let spare = owner.ok(&["invite"]).await;
    assert!(!spare.trim().is_empty(), "an invite link");
    let bob_conn = live(&bob, "bob-session").await;
    let bob_cookie = cookie_session(&bob).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let bob_page = |path: String| {
        http.get(format!("{}{path}", b.http_url()))
            .header("cookie", &bob_cookie)
            .send()
    };
    assert_eq!(bob_page("/dashboard".into()).await.unwrap().status(), 303);

    let browser = Browser::start().await;
    browser.goto(&sign_in_link(&owner).await).await;
    wait_live(&browser).await;
    let command = browser.text("#invite-command").await.unwrap();
    assert_eq!(
        command,
        "claudemesh invite --mesh acme-payments --role member --uses 1 --expires 7d"
    );
    let mesh_path = browser
        .eval("return location.pathname;", json!([]))
        .await
        .as_str()
        .unwrap()
        .to_owned();
    let member_id = |name: &str| {
        let name = name.to_owned();
        let browser = &browser;
        async move {
            browser
                .eval(
                    "const row = [...document.querySelectorAll('#members tbody tr')].find(r => \
                       r.cells[0].textContent === arguments[0] && r.cells[1].textContent === 'member'); \
                     return row.dataset.member;",
                    json!([name]),
                )
                .await
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (alice_id, bob_id) = (member_id("alice").await, member_id("bob").await);

    // A forged kick, same origin and cookie but without the page's token, does nothing.
    let status = browser
        .eval(
            "return fetch(arguments[0], {method: 'POST', \
               headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'csrf=forged'})\
             .then(r => r.status);",
            json!([format!("{mesh_path}/members/{alice_id}/kick")]),
        )
        .await;
    assert_eq!(status, 403, "no CSRF token, no kick");
    assert_eq!(
        member_cell(&browser, "alice", 3).await,
        "member",
        "alice stays"
    );

    // The owner revokes bob from the page (and confirms).
    browser
        .click(&format!(
            "#members tr[data-member='{bob_id}'] form[action$='/revoke'] button"
        ))
        .await;
    browser.accept_dialog().await;
    let closed = tokio::time::timeout(Duration::from_secs(2), bob_conn.closed()).await;
    assert!(closed.is_ok(), "bob's socket closed within 2 s");
    match bob_conn.state() {
        State::Failed(Failure::Removed { close_code, .. }) => assert_eq!(close_code, 4002),
        other => panic!("bob's connection ended as {other:?}, not closed with 4002"),
    }
    browser
        .wait_text(
            "#members tbody",
            Duration::from_secs(2),
            "bob is gone",
            |t| !t.contains("bob") && t.contains("alice"),
        )
        .await;
    let bob_after = bob_page(mesh_path.clone()).await.unwrap();
    assert_eq!(bob_after.status(), 401, "bob's dashboard session ended");

    // And revokes the spare invite.
    browser
        .wait_text(
            "#invites tbody",
            Duration::from_secs(2),
            "the spare invite",
            |t| t.contains("usable"),
        )
        .await;
    browser
        .click("#invites form[action$='/revoke'] button")
        .await;
    browser.accept_dialog().await;
    browser
        .wait_text(
            "#invites tbody",
            Duration::from_secs(2),
            "the invite is revoked",
            |t| t.contains("revoked") && !t.contains("usable"),
        )
        .await;
    browser.screenshot("owner-actions").await;
    let _ = alice;
    browser.close().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_view_shows_a_decrypted_message_the_broker_never_does() {
    let (b, _dir) = common::broker().await;
    let (_owner, alice, bob) = common::mesh(&b).await;
    let secret = "the staging db password is in the vault under payments/stg";
    alice.ok(&["send", "bob", secret]).await;
    assert_eq!(bob.json(&["inbox"]).await[0]["text"], secret);

    let mut server = bob.spawn(&["dashboard", "--local", "--print"]);
    let stdout = server.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let url = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the local dashboard printed its link")
        .unwrap()
        .unwrap();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/?key="),
        "{url}"
    );

    // Without the link's key (or by another host name) there is nothing to see.
    let base = url.split("/?key=").next().unwrap().to_owned();
    assert_eq!(reqwest::get(&base).await.unwrap().status(), 403);

    let browser = Browser::start().await;
    browser.goto(&url).await;
    wait_live(&browser).await;
    assert_eq!(
        reqwest::get(&url).await.unwrap().status(),
        403,
        "the link works once"
    );
    let history = browser.text("#history tbody").await.unwrap();
    assert!(
        history.contains(secret) && history.contains("alice") && history.contains("verified"),
        "{history:?}"
    );
    // A message that arrives while the page is open appears without a reload.
    let later = "and the prod one rotates on monday";
    alice.ok(&["send", "bob", later]).await;
    bob.json(&["inbox"]).await;
    browser
        .wait_text(
            "#history tbody",
            Duration::from_secs(3),
            "the new message",
            |t| t.contains(later),
        )
        .await;
    browser.screenshot("local").await;

    // The broker's dashboard of the same mesh, for the same member (signed in from the
    // local page): metadata only.
    browser.click("form[action='/broker'] button").await;
    browser.click("#broker-link").await;
    wait_live(&browser).await;
    assert!(browser.url().await.contains("/dashboard/m/"));
    let html = browser
        .eval("return document.documentElement.outerHTML;", json!([]))
        .await;
    let html = html.as_str().unwrap();
    assert!(html.contains("Traffic") && !html.contains(secret) && !html.contains(later));
    browser.close().await;
    drop(server);
    b.shutdown().await;
}
