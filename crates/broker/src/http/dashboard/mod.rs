//! The dashboard (extension `dashboard`), served by the broker under `/dashboard` from
//! assets compiled into the binary. A member signs in from the CLI: a request signed
//! with the member key (`dashboard_login`, the admin canonical string) obtains a
//! single-use code, the browser spends it at `/dashboard/login` for a session cookie
//! (HttpOnly, SameSite=Strict, Secure under TLS). Pages are rendered on the server
//! (`page`), then kept live by an SSE stream of the mesh's view, re-read from the engine
//! whenever a batch that changed the mesh commits. Every read checks the viewer's
//! standing, so a removed member's pages and stream stop at once. Owners and admins kick
//! and revoke members and revoke invites with plain forms (the engine checks the
//! session key's standing, as for a signed request). Every response carries a strict
//! Content-Security-Policy; state-changing requests need the session's CSRF token and a
//! same-origin `Origin`.

mod operator;
mod page;
pub mod session;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use claudemesh_proto::codes::Code;
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use super::admin::DashboardLogin;
use super::error::HttpError;
use super::signed::{SignedBody, Verified};
use crate::engine::{Actor, AdminCommand, AdminReply, Change, Command, MeshView, ViewAs};
use crate::refusal::Refusal;
use crate::state::Shared;
use session::{Member, Session, Viewer};

/// The session cookie.
const COOKIE: &str = "claudemesh_dashboard";
/// How long changes are gathered before one view is sent.
const COALESCE: Duration = Duration::from_millis(100);
/// A quiet stream re-reads this often anyway (it keeps the mesh's traffic recorded).
const REREAD: Duration = Duration::from_secs(60);

use claudemesh_pages::{APP_CSS, APP_JS};

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/dashboard", get(index))
        .route("/dashboard/login", get(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/m/{mesh_id}", get(mesh_page))
        .route("/dashboard/m/{mesh_id}/events", get(events))
        .route(
            "/dashboard/m/{mesh_id}/members/{member_id}/{mode}",
            post(remove_member),
        )
        .route(
            "/dashboard/m/{mesh_id}/invites/{invite_id}/revoke",
            post(revoke_invite),
        )
        .route(
            "/dashboard/assets/app.js",
            get(|| asset(APP_JS, "text/javascript")),
        )
        .route(
            "/dashboard/assets/app.css",
            get(|| asset(APP_CSS, "text/css")),
        )
        .route("/api/meshes/{mesh_id}/dashboard/login", post(login_code))
        .merge(operator::routes())
        .layer(axum::middleware::map_response(secure_headers))
}

async fn secure_headers(mut response: Response) -> Response {
    claudemesh_pages::secure(response.headers_mut());
    response
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// End this node's sessions of members the engine reports removed, until shutdown.
pub async fn follow_removals(shared: Arc<Shared>) {
    let mut changes = shared.engine.changes();
    loop {
        let change = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            c = changes.recv() => c,
        };
        match change {
            Ok(Change::Removed { mesh_id, member_id }) => {
                shared.dashboard.end_member(&mesh_id, &member_id);
            }
            Ok(Change::Mesh(_)) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LoginCode {
    ok: bool,
    code: String,
    /// Where the browser spends it (relative to the broker's HTTP URL).
    path: String,
    expires_in_secs: u64,
}

/// `POST /api/meshes/{mesh_id}/dashboard/login`, signed by a member key.
async fn login_code(
    State(shared): State<Arc<Shared>>,
    v: Verified<DashboardLogin>,
) -> Result<Response, HttpError> {
    let mesh_id = v.path.get("mesh_id").to_owned();
    let pubkey = v.body.signed().signer_pubkey.clone();
    let cmd = v.body.command(&v.path);
    let reply = shared
        .engine
        .request(|reply| Command::Admin { cmd, reply })
        .await??;
    let AdminReply::Viewer { member_id } = reply else {
        return Err(Refusal::new(Code::Internal, "unexpected engine reply").into());
    };
    let code = shared
        .dashboard
        .issue_code(Member {
            mesh_id,
            pubkey,
            member_id,
        })
        .map_err(|e| Refusal::new(Code::RateLimited, e.to_string()))?;
    Ok(axum::Json(LoginCode {
        ok: true,
        path: format!("/dashboard/login?code={code}"),
        code,
        expires_in_secs: session::CODE_TTL.as_secs(),
    })
    .into_response())
}

/// A page that only says something, with its status (a refusal, a sign-out).
#[derive(Debug)]
struct Notice {
    status: StatusCode,
    title: &'static str,
    text: String,
}

impl Notice {
    fn new(status: StatusCode, title: &'static str, text: &str) -> Self {
        Self {
            status,
            title,
            text: text.to_owned(),
        }
    }
}

impl IntoResponse for Notice {
    fn into_response(self) -> Response {
        (self.status, Html(page::notice(self.title, &self.text))).into_response()
    }
}

fn notice(status: StatusCode, title: &'static str, text: &str) -> Response {
    Notice::new(status, title, text).into_response()
}

/// The session token in the request's cookie.
fn cookie(headers: &HeaderMap) -> Option<String> {
    claudemesh_pages::cookie(headers, COOKIE).map(str::to_owned)
}

fn session(shared: &Shared, headers: &HeaderMap) -> Option<(String, Session)> {
    let id = cookie(headers)?;
    let s = shared.dashboard.get(&id)?;
    Some((id, s))
}

/// Whether the browser reached us over TLS (here, or at a trusted proxy).
fn secure(shared: &Shared, headers: &HeaderMap) -> bool {
    shared.config.tls.is_some()
        || (shared.config.trust_proxy
            && headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("https")))
}

fn set_cookie(value: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{COOKIE}={value}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// `GET /dashboard`: the signed-in mesh, or how to sign in.
async fn index(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match session(&shared, &headers) {
        Some((_, s)) => Redirect::to(&home(&s.viewer)).into_response(),
        None => notice(
            StatusCode::OK,
            "Not signed in",
            "Members sign in with their key, from the machine that holds it.",
        ),
    }
}

/// Where a signed-in viewer starts: its mesh, or the operators' page.
fn home(viewer: &Viewer) -> String {
    match viewer {
        Viewer::Member(m) => mesh_path(&m.mesh_id),
        Viewer::Operator { .. } => operator::PATH.to_owned(),
    }
}

fn mesh_path(mesh_id: &str) -> String {
    // Mesh ids are broker-made (URL-safe); anything else would not match a route.
    format!("/dashboard/m/{mesh_id}")
}

/// `GET /dashboard/login?code=…`: spend a code, set the session cookie.
async fn login(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let code = q.get("code").map(String::as_str).unwrap_or_default();
    match shared.dashboard.redeem(code) {
        Ok(Some((id, s))) => {
            let cookie = set_cookie(
                &id,
                session::SESSION_TTL.as_secs(),
                secure(&shared, &headers),
            );
            let mut r = Redirect::to(&home(&s.viewer)).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Ok(None) => notice(
            StatusCode::BAD_REQUEST,
            "This sign-in link is spent",
            "A sign-in link works once, within a minute of being made.",
        ),
        Err(e) => notice(StatusCode::SERVICE_UNAVAILABLE, "Try again", &e.to_string()),
    }
}

/// Whether a state-changing request comes from this origin with the session's token.
fn csrf_ok(headers: &HeaderMap, session: &Session, token: Option<&String>) -> bool {
    let token_ok = token.is_some_and(|t| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            t.as_bytes(),
            session.csrf.as_bytes(),
        ))
    });
    same_origin(headers) && token_ok
}

/// Whether a form post's `Origin`, if it sent one, is this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        // Not every browser sends it on a same-origin form post (and "null" is what a
        // no-referrer policy makes of it, which is why the pages use `same-origin`).
        None => true,
        Some(origin) => host.is_some_and(|h| {
            origin
                .split_once("://")
                .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(h))
        }),
    }
}

/// `POST /dashboard/logout` (form field `csrf`).
async fn logout(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    let id = match checked(&shared, &headers, &form) {
        Ok((id, _)) => id,
        Err(r) => return r.into_response(),
    };
    shared.dashboard.end(&id);
    let mut r = notice(StatusCode::OK, "Signed out", "This browser is signed out.");
    if let Ok(v) = HeaderValue::from_str(&set_cookie("", 0, secure(&shared, &headers))) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A state-changing request: the signed-in session whose form carried its CSRF token
/// (and the session's token), or the response that refuses it.
fn checked(
    shared: &Shared,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(String, Session), Notice> {
    let Some((id, s)) = session(shared, headers) else {
        return Err(Notice::new(
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            "Your session has ended or this browser never signed in.",
        ));
    };
    if !csrf_ok(headers, &s, form.get("csrf")) {
        return Err(Notice::new(
            StatusCode::FORBIDDEN,
            "Refused",
            "This request did not carry the page's CSRF token.",
        ));
    }
    Ok((id, s))
}

/// [`checked`], for an action on `mesh_id`: only a member of it acts (operators watch).
fn acting(
    shared: &Shared,
    headers: &HeaderMap,
    mesh_id: &str,
    form: &HashMap<String, String>,
) -> Result<Member, Notice> {
    match checked(shared, headers, form)?.1.viewer {
        Viewer::Member(m) if m.mesh_id == mesh_id => Ok(m),
        Viewer::Member(_) => Err(Notice::new(
            StatusCode::FORBIDDEN,
            "Another mesh",
            "This session is for another mesh.",
        )),
        Viewer::Operator { .. } => Err(Notice::new(
            StatusCode::FORBIDDEN,
            "Operators watch",
            "Kicks and revocations are made by a mesh's owner or admins, signed in with their keys.",
        )),
    }
}

/// Run an admin command for a session; back to the mesh page when done.
async fn act(shared: &Shared, mesh_id: &str, cmd: AdminCommand) -> Response {
    let done = shared
        .engine
        .request(|reply| Command::Admin { cmd, reply })
        .await
        .map_err(|_| Refusal::shutting_down())
        .and_then(|r| r);
    match done {
        Ok(_) => Redirect::to(&mesh_path(mesh_id)).into_response(),
        Err(refusal) => {
            let status = match refusal.code {
                Code::Forbidden | Code::Unauthorized => StatusCode::FORBIDDEN,
                Code::NotFound | Code::InviteNotFound | Code::MeshNotFound => StatusCode::NOT_FOUND,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            notice(status, "Not done", &refusal.message)
        }
    }
}

/// `POST /dashboard/m/{mesh_id}/members/{member_id}/{kick|revoke}` (form field `csrf`).
async fn remove_member(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((mesh_id, member_id, mode)): Path<(String, String, String)>,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    let s = match acting(&shared, &headers, &mesh_id, &form) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let mode = match mode.as_str() {
        "kick" => claudemesh_proto::http::RemoveMode::Kick,
        "revoke" => claudemesh_proto::http::RemoveMode::Revoke,
        _ => return notice(StatusCode::NOT_FOUND, "No such action", "Kick or revoke."),
    };
    let cmd = AdminCommand::RemoveMember {
        mesh_id: mesh_id.clone(),
        member_id,
        mode,
        actor: Actor::Session { pubkey: s.pubkey },
    };
    act(&shared, &mesh_id, cmd).await
}

/// `POST /dashboard/m/{mesh_id}/invites/{invite_id}/revoke` (form field `csrf`).
async fn revoke_invite(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((mesh_id, invite_id)): Path<(String, String)>,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    let s = match acting(&shared, &headers, &mesh_id, &form) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let cmd = AdminCommand::RevokeInvite {
        mesh_id: mesh_id.clone(),
        invite_id,
        actor: Actor::Session { pubkey: s.pubkey },
    };
    act(&shared, &mesh_id, cmd).await
}

/// The view of `mesh_id` for this session, or the response that refuses it.
async fn view_for(
    shared: &Shared,
    headers: &HeaderMap,
    mesh_id: &str,
) -> Result<(Session, MeshView), Response> {
    let Some((id, s)) = session(shared, headers) else {
        return Err(notice(
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            "Your session has ended or this browser never signed in.",
        ));
    };
    if matches!(&s.viewer, Viewer::Member(m) if m.mesh_id != mesh_id) {
        return Err(notice(
            StatusCode::FORBIDDEN,
            "Another mesh",
            "This session is for another mesh; sign in with --mesh to see this one.",
        ));
    }
    match mesh_view(shared, &s.viewer, mesh_id).await {
        Ok(view) => Ok((s, view)),
        Err(refusal) => {
            if refusal.code == Code::Unauthorized {
                shared.dashboard.end(&id);
            }
            Err(notice(
                StatusCode::FORBIDDEN,
                "Signed out",
                &refusal.message,
            ))
        }
    }
}

async fn mesh_view(shared: &Shared, viewer: &Viewer, mesh_id: &str) -> Result<MeshView, Refusal> {
    let viewer = match viewer {
        Viewer::Member(m) => ViewAs::Key(m.pubkey.clone()),
        Viewer::Operator { name, since } => ViewAs::Operator(name.clone(), *since),
    };
    shared
        .engine
        .request(|reply| Command::Dashboard {
            mesh_id: mesh_id.to_owned(),
            viewer,
            reply,
        })
        .await
        .map_err(|_| Refusal::shutting_down())?
}

/// `GET /dashboard/m/{mesh_id}`.
async fn mesh_page(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(mesh_id): Path<String>,
) -> Response {
    match view_for(&shared, &headers, &mesh_id).await {
        Ok((s, view)) => Html(page::mesh(&view, &s.csrf)).into_response(),
        Err(r) => r,
    }
}

/// What the event stream does next.
enum Next {
    View,
    End(String),
}

/// `GET /dashboard/m/{mesh_id}/events`: `view` events (the page's [`page::Sections`],
/// JSON) when the mesh changes, and one `end` event when the session may no longer see it.
async fn events(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(mesh_id): Path<String>,
) -> Response {
    let (s, first) = match view_for(&shared, &headers, &mesh_id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let token = cookie(&headers).unwrap_or_default();
    let changes = shared.engine.changes();
    let state = (shared, s, token, changes, Some(first), false, mesh_id);
    let stream = futures_util::stream::unfold(
        state,
        |(shared, s, token, mut changes, first, ended, mesh_id)| async move {
            if ended {
                return None;
            }
            if let Some(view) = first {
                let (ev, _) = view_event(&view, &s.csrf);
                return Some((ev, (shared, s, token, changes, None, false, mesh_id)));
            }
            let viewer = &s.viewer;
            let me = match viewer {
                Viewer::Member(m) => m.member_id.as_str(),
                Viewer::Operator { .. } => "",
            };
            let next = loop {
                let change = tokio::select! {
                    () = shared.shutdown.cancelled() => return None,
                    () = tokio::time::sleep(REREAD) => break Next::View,
                    c = changes.recv() => c,
                };
                match change {
                    Ok(Change::Mesh(m)) if m == mesh_id => break Next::View,
                    Ok(Change::Removed {
                        mesh_id: m,
                        member_id,
                    }) if m == mesh_id && !me.is_empty() && member_id == me => {
                        break Next::End("this member was removed from the mesh".into());
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => break Next::View,
                    Err(RecvError::Closed) => return None,
                }
            };
            let next = match next {
                Next::View if shared.dashboard.get(&token).is_none() => {
                    Next::End("the session ended".into())
                }
                other => other,
            };
            let ev = match next {
                Next::End(why) => end_event(&why),
                Next::View => {
                    tokio::time::sleep(COALESCE).await;
                    while changes.try_recv().is_ok() {}
                    match mesh_view(&shared, viewer, &mesh_id).await {
                        Ok(view) => view_event(&view, &s.csrf),
                        Err(refusal) => end_event(&refusal.message),
                    }
                }
            };
            let ended = ev.1;
            Some((ev.0, (shared, s, token, changes, None, ended, mesh_id)))
        },
    );
    Sse::new(stream_ok(stream))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn stream_ok(s: impl Stream<Item = Event>) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::StreamExt::map(s, Ok)
}

/// A `view` event (and whether the stream ends after it: no).
fn view_event(view: &MeshView, csrf: &str) -> (Event, bool) {
    let data = serde_json::to_string(&page::sections(view, csrf)).unwrap_or_else(|_| "{}".into());
    (Event::default().event("view").data(data), false)
}

/// The last event of a stream.
fn end_event(why: &str) -> (Event, bool) {
    (Event::default().event("end").data(why), true)
}
