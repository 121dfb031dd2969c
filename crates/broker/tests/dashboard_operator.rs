//! Operator accounts of the dashboard, end to end in a real headless Chromium (the
//! browser helper is the CLI tests' own): `claudemesh-broker account add` (the real
//! binary, beside the running broker, on this test's backend) prints a setup link; the
//! password is chosen on that page; the operator signs in and sees the broker's figures,
//! charts and meshes live; wrong passwords are throttled; `account add --reset` ends the
//! session at once. Screenshots go to `target/dashboard-screenshots/`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[macro_use]
mod common;
#[path = "../../cli/tests/common/browser.rs"]
#[allow(dead_code)] // the CLI tests use all of it
mod browser;

use std::process::Command;
use std::time::Duration;

use browser::Browser;
use common::{Data, TestBroker, traffic};

use serde_json::json;

/// Run `claudemesh-broker account ARGS` on the broker's database; its stdout.
fn account(data: &Data, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_claudemesh-broker"))
        .arg("account")
        .args(args)
        .args(data.args())
        .env("CLAUDEMESH_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "account {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Sign in through the login form (the page must be the login page).
async fn sign_in(browser: &Browser, name: &str, password: &str) {
    browser.fill("input[name=account]", name).await;
    browser.fill("input[name=password]", password).await;
    browser.click("form button[type=submit]").await;
}

on_every_backend! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_operator_account_is_made_with_the_cli_signs_in_and_sees_the_figures() {
        let b = TestBroker::start().await;
        let base = b.http();
        let mesh = common::create_mesh(&b, "ops-demo").await;
        let member = common::enroll(&b, &mesh, "alice").await;
        let (alice, _pushes) = traffic::connect(&b.ws_url, &member).await;

        let out = account(&b.data, &["add", "root", "--url", &base]);
        let link = out
            .split_whitespace()
            .find(|w| w.contains("/dashboard/setup?"))
            .unwrap_or_else(|| panic!("no setup link in {out}"))
            .to_owned();
        assert!(account(&b.data, &["list"]).contains("waiting for its setup link"));

        let browser = Browser::start().await;
        browser.goto(&link).await;
        let password = "correct horse battery staple";
        browser.fill("input[name=password]", password).await;
        browser.fill("input[name=confirm]", password).await;
        browser.click("form button[type=submit]").await;
        browser
            .wait_text("h1", Duration::from_secs(5), "the sign-in page", |t| {
                t == "Operator sign-in"
            })
            .await;
        assert!(account(&b.data, &["list"]).contains("active"));
        // The link is spent.
        let again = reqwest::Client::new()
            .post(format!("{base}/dashboard/setup"))
            .form(&[
                ("account", "root"),
                ("token", link.rsplit("token=").next().unwrap()),
                ("password", "another long password"),
                ("confirm", "another long password"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 400, "a setup link works once");

        sign_in(&browser, "root", password).await;
        browser
            .wait_text("#live", Duration::from_secs(5), "the figures are live", |t| {
                t == "live"
            })
            .await;
        let figures = browser.text("#figures").await.unwrap();
        assert!(
            figures.contains("Connections, authenticated\t1"),
            "{figures:?}"
        );
        assert!(figures.contains("Meshes\t1") && figures.contains("Commit latency"));
        let meshes = browser.text("#meshes").await.unwrap();
        assert!(meshes.contains("ops-demo"), "{meshes}");
        let charts = browser
            .eval("return document.querySelectorAll('#charts svg').length;", json!([]))
            .await;
        assert_eq!(charts, 4);

        // Live: alice leaves, the figure follows without a reload.
        alice.close().await;
        browser
            .wait_text("#figures", Duration::from_secs(3), "alice's connection goes", |t| {
                t.contains("Connections, authenticated\t0")
            })
            .await;
        // Operators see a mesh's page too, without its actions.
        browser.click("#meshes a").await;
        browser
            .wait_text(".who", Duration::from_secs(5), "the mesh page", |t| {
                t.contains("(operator)")
            })
            .await;
        let actions = browser
            .eval("return document.querySelectorAll('td.actions form').length;", json!([]))
            .await;
        assert_eq!(actions, 0, "operators watch, they do not act");
        browser.goto(&format!("{base}/dashboard/operator")).await;
        browser.screenshot("operator").await;

        // Wrong passwords are throttled, per account: after 5 attempts, even the right one
        // waits (one attempt is spent by the sign-in above).
        let http = reqwest::Client::new();
        let attempt = |pw: &'static str| {
            http.post(format!("{base}/dashboard/operator/login"))
                .form(&[("account", "root"), ("password", pw)])
                .send()
        };
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(attempt("wrong password!!").await.unwrap().status().as_u16());
        }
        assert_eq!(statuses, [401, 401, 401, 401, 429], "throttled after 5 attempts");
        assert_eq!(attempt(password).await.unwrap().status(), 429);

        // Resetting the account (a stolen password, say) ends its session at once, and
        // so would removing it.
        account(&b.data, &["add", "root", "--reset"]);
        browser
            .wait_text("#live", Duration::from_secs(3), "the session ends", |t| {
                t.starts_with("signed out")
            })
            .await;
        browser.goto(&format!("{base}/dashboard/operator")).await;
        assert_eq!(browser.text("h1").await.as_deref(), Some("Operator sign-in"));
        account(&b.data, &["remove", "root"]);
        assert!(account(&b.data, &["list"]).contains("No operator accounts"));
        browser.close().await;
    }
}

/// The setup link `account add` printed, spent with `password` over plain HTTP; then a
/// signed-in cookie for the account.
async fn operator_cookie(base: &str, link: &str, name: &str, password: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let token = link.rsplit("token=").next().unwrap();
    let set = http
        .post(format!("{base}/dashboard/setup"))
        .form(&[
            ("account", name),
            ("token", token),
            ("password", password),
            ("confirm", password),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 303);
    let login = http
        .post(format!("{base}/dashboard/operator/login"))
        .form(&[("account", name), ("password", password)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// With two nodes on one database, either node's operators' page lists both, each with
/// the figures of its own heartbeat: a peer connected to the other node shows there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_nodes_the_operators_page_shows_every_node() {
    common::on_backend(
        common::Backend::Postgres,
        "with_several_nodes_the_operators_page_shows_every_node",
        async {
            let b = TestBroker::start_with(|c| c.node_name = "node-a".into()).await;
            let mut config = b.data.config();
            config.node_name = "node-b".into();
            let other = claudemesh_broker::Broker::spawn(config).await.unwrap();
            let mesh = common::create_mesh(&b, "two-nodes").await;
            let member = common::enroll(&b, &mesh, "alice").await;
            let (_alice, _pushes) = traffic::connect(&other.ws_url(), &member).await;

            let base = b.http();
            let out = account(&b.data, &["add", "root", "--url", &base]);
            let link = out
                .split_whitespace()
                .find(|w| w.contains("/dashboard/setup?"))
                .unwrap()
                .to_owned();
            let cookie = operator_cookie(&base, &link, "root", "a long enough password").await;
            let http = reqwest::Client::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let page = loop {
                let page = http
                    .get(format!("{base}/dashboard/operator"))
                    .header("cookie", &cookie)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                // node-b's row: up, one connection (alice's), from node-b's own heartbeat.
                let shown = page.contains("node-a (this one)")
                    && page.contains("<td class=\"name\">node-b</td><td>up</td><td>1</td>");
                if shown || std::time::Instant::now() > deadline {
                    break page;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            assert!(
                page.contains("node-a (this one)")
                    && page.contains("<td class=\"name\">node-b</td><td>up</td><td>1</td>"),
                "both nodes, node-b with alice: {page}"
            );
            other.shutdown().await;
        },
    )
    .await;
}
