//! `claudemesh dashboard --local`: the dashboard's pages served from this machine, on
//! 127.0.0.1 only, showing what only the keys can show: this identity's decrypted
//! conversation history in one mesh, from its own inbox and those of its Claude Code
//! sessions, each message with its verification mark (verified, legacy, rejected with
//! the reason and never a text) and its loop-guard depth. Live: the history is re-read
//! every second and sent to the page when it changed. The broker's own view (presence,
//! traffic) is one click away, signed in with the member key as `claudemesh dashboard`.
//!
//! What it must not do: send plaintext anywhere (it talks to the broker only to sign in
//! to the broker's view), listen beyond loopback, or answer a request that does not carry
//! the session cookie of the link it printed (the link works once; the cookie is another
//! secret), or that names another host (a page on some other site cannot reach it, nor a
//! DNS-rebinding name).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use claudemesh_client::inbox::{Inbox, Kind, Record};
use claudemesh_pages::escape;
use rand::RngCore;
use serde_json::json;

use super::Ctx;
use crate::api::Admin;
use crate::config::MeshEntry;
use crate::mcp::session::Session;
use crate::output::{out, short};

/// The cookie the printed link sets.
const COOKIE: &str = "claudemesh_local";
/// Messages shown, newest first, across every inbox.
const SHOWN: usize = 200;
/// How often the inboxes are re-read for the live page.
const TICK: Duration = Duration::from_secs(1);

struct Local {
    entry: MeshEntry,
    /// This identity's public key in the mesh (messages to it read "you").
    me: String,
    /// The inboxes to read: a label and a path.
    inboxes: Vec<(String, std::path::PathBuf)>,
    /// In the printed link: spent by the first browser that opens it.
    key: String,
    key_spent: std::sync::atomic::AtomicBool,
    /// The cookie that first browser gets: the only way in after that.
    token: String,
    /// In the page's forms.
    csrf: String,
    /// `127.0.0.1:PORT`: the only `Host` answered.
    host: String,
}

fn token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn same(a: &str, b: &str) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()))
}

pub(super) async fn dashboard(ctx: &Ctx, port: u16, print: bool) -> anyhow::Result<()> {
    let entry = ctx.entry()?.clone();
    let me = claudemesh_crypto::SecretKey::from_sk64_hex(&entry.secret_key)
        .context("the member key in the config is not valid")?
        .public()
        .to_hex();
    let mut inboxes = vec![("this identity".to_owned(), ctx.dir.inbox_file())];
    for s in Session::list(&ctx.dir) {
        if s.keys.contains_key(&entry.mesh_id) {
            inboxes.push((format!("session {}", s.name), s.dir.join("inbox.db")));
        }
    }
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    let addr = listener.local_addr()?;
    let local = Arc::new(Local {
        entry,
        me,
        inboxes,
        key: token(),
        key_spent: std::sync::atomic::AtomicBool::new(false),
        token: token(),
        csrf: token(),
        host: addr.to_string(),
    });
    let url = format!("http://{addr}/?key={}", local.key);
    let opened = !print && super::members::open_browser(&url);
    out(ctx.json, &json!({ "url": url, "opened": opened }), || {
        if opened {
            format!("opened the local dashboard (http://{addr}/) in your browser; Ctrl-C stops it")
        } else {
            url.clone()
        }
    });
    let app = axum::Router::new()
        .route("/", get(index))
        .route("/events", get(events))
        .route("/broker", post(broker))
        .route(
            "/assets/app.js",
            get(|| asset(claudemesh_pages::APP_JS, "text/javascript")),
        )
        .route(
            "/assets/app.css",
            get(|| asset(claudemesh_pages::APP_CSS, "text/css")),
        )
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(local);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving the local dashboard")
}

async fn secure_headers(mut response: Response) -> Response {
    claudemesh_pages::secure(response.headers_mut());
    response
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// Whether the request is for this server by its own address, with the session cookie.
fn allowed(local: &Local, headers: &HeaderMap) -> bool {
    let host_ok = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|h| h == local.host);
    let cookie_ok =
        claudemesh_pages::cookie(headers, COOKIE).is_some_and(|v| same(v, &local.token));
    host_ok && cookie_ok
}

fn refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        Html(claudemesh_pages::layout(
            "Not signed in",
            "/assets",
            "/",
            "<main><h1>Not signed in</h1><p>Open the link <code>claudemesh dashboard --local</code> \
             printed; it works in the browser that opened it.</p></main>",
        )),
    )
        .into_response()
}

/// `GET /?key=…` spends the printed link's key for the cookie; `GET /` is the page.
async fn index(
    State(local): State<Arc<Local>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let host_ok = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|h| h == local.host);
    if let Some(key) = q.get("key").filter(|_| host_ok) {
        let spent = || {
            local
                .key_spent
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        };
        if !same(key, &local.key) || spent() {
            return refused();
        }
        let mut r = Redirect::to("/").into_response();
        let cookie = format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
            local.token
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        return r;
    }
    if !allowed(&local, &headers) {
        return refused();
    }
    let rows = history(&local).await;
    Html(page(&local, &rows)).into_response()
}

/// One message and the inbox it came from.
struct Shown {
    source: String,
    record: Record,
}

/// Every inbox's history of the mesh, newest first (an inbox that cannot be read is
/// skipped: a session may be creating its own at this moment).
async fn history(local: &Arc<Local>) -> String {
    let local = local.clone();
    tokio::task::spawn_blocking(move || {
        let mut all: Vec<Shown> = Vec::new();
        for (label, path) in &local.inboxes {
            if !path.exists() {
                continue;
            }
            let Ok(inbox) = Inbox::open(path) else {
                continue;
            };
            let Ok(records) = inbox.history(&local.entry.mesh_id, true, SHOWN) else {
                continue;
            };
            all.extend(
                records
                    .into_iter()
                    .filter(|r| r.kind != Kind::System)
                    .map(|record| Shown {
                        source: label.clone(),
                        record,
                    }),
            );
        }
        all.sort_by_key(|s| std::cmp::Reverse(s.record.received_at));
        all.truncate(SHOWN);
        all.iter().map(|s| row(&local, s)).collect::<String>()
    })
    .await
    .unwrap_or_default()
}

fn row(local: &Local, s: &Shown) -> String {
    let r = &s.record;
    let (mark, class, text) = match r.kind {
        Kind::Verified => ("✓ verified", "verified", r.text.clone().unwrap_or_default()),
        Kind::Legacy => (
            "legacy (unverified)",
            "legacy",
            r.text.clone().unwrap_or_default(),
        ),
        Kind::Rejected => (
            "rejected",
            "rejected",
            format!(
                "(not shown: {})",
                r.reason.as_deref().unwrap_or("it did not verify")
            ),
        ),
        Kind::System => ("system", "system", String::new()),
    };
    let from = r
        .sender_name
        .clone()
        .unwrap_or_else(|| short(&r.sender_pubkey));
    let to = match r.target_spec.as_deref() {
        Some(t) if t == local.me => "you".to_owned(),
        Some("*") => "everyone".to_owned(),
        Some(t) if t.starts_with('@') => t.to_owned(),
        Some(t) => short(t),
        None => "you".to_owned(),
    };
    let clock = r.created_at.get(11..19).unwrap_or(&r.created_at);
    format!(
        "<tr data-message=\"{id}\"><td title=\"{at}\">{clock}</td><td>{source}</td>\
         <td class=\"name\">{from}</td><td>{to}</td><td>{priority}</td>\
         <td class=\"mark {class}\">{mark}</td><td>{depth}</td><td class=\"summary\">{text}</td></tr>",
        id = escape(&r.message_id),
        at = escape(&r.created_at),
        clock = escape(clock),
        source = escape(&s.source),
        from = escape(&from),
        to = escape(&to),
        priority = escape(&r.priority),
        depth = r.depth,
        text = escape(&text),
    )
}

fn page(local: &Local, rows: &str) -> String {
    let e = &local.entry;
    claudemesh_pages::layout(
        &e.slug,
        "/assets",
        "/",
        &format!(
            "<main id=\"local\"><div class=\"bar\"><h1>{slug} <small>on this machine</small></h1>\
             <form method=\"post\" action=\"/broker\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\">The broker's live view</button></form></div>\
             <p class=\"who\">{name}'s conversations, decrypted here from this identity's inboxes; \
             nothing on this page leaves this machine. \
             <span id=\"live\" aria-live=\"polite\">connecting…</span></p>\
             <section><h2>Conversations</h2><div class=\"scroll\"><table id=\"history\"><thead><tr>\
             <th>Time</th><th>Inbox</th><th>From</th><th>To</th><th>Priority</th><th>Mark</th>\
             <th>Depth</th><th>Message</th></tr></thead><tbody>{rows}</tbody></table></div></section></main>",
            slug = escape(&e.slug),
            csrf = escape(&local.csrf),
            name = escape(&e.display_name),
        ),
    )
}

/// `GET /events`: a `view` `{history}` (rendered rows) whenever the inboxes changed.
async fn events(State(local): State<Arc<Local>>, headers: HeaderMap) -> Response {
    if !allowed(&local, &headers) {
        return refused();
    }
    let stream =
        futures_util::stream::unfold((local, None::<String>), |(local, last)| async move {
            loop {
                if last.is_some() {
                    tokio::time::sleep(TICK).await;
                }
                let rows = history(&local).await;
                if last.as_deref() != Some(rows.as_str()) {
                    let data = json!({ "history": rows }).to_string();
                    let event = Event::default().event("view").data(data);
                    return Some((Ok::<_, Infallible>(event), (local, Some(rows))));
                }
            }
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// `POST /broker` (form field `csrf`): sign in to the broker's view with the member key,
/// and offer its single-use link (a link, not a redirect: the pages' `form-action 'self'`
/// would stop a form's redirect to the broker's origin).
async fn broker(
    State(local): State<Arc<Local>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    let csrf_ok = form.get("csrf").is_some_and(|t| same(t, &local.csrf));
    if !allowed(&local, &headers) || !csrf_ok {
        return refused();
    }
    let signed_in = async { Admin::new(&local.entry)?.dashboard_login().await };
    match signed_in.await {
        Ok(url) => Html(claudemesh_pages::layout(
            "The broker's view",
            "/assets",
            "/",
            &format!(
                "<main><h1>Signed in to the broker</h1><p><a id=\"broker-link\" href=\"{}\">\
                 Open the broker's live view</a> (the link works once, within a minute). It shows \
                 presence and traffic, never a message body.</p></main>",
                escape(&url)
            ),
        ))
        .into_response(),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            Html(claudemesh_pages::layout(
                "The broker did not answer",
                "/assets",
                "/",
                &format!(
                    "<main><h1>The broker did not answer</h1><p>{}</p></main>",
                    escape(&format!("{e:#}"))
                ),
            )),
        )
            .into_response(),
    }
}
