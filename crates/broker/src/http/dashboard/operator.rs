//! Operator accounts on the dashboard: the setup page a `claudemesh-broker account add`
//! link opens (the password is chosen there, hashed with Argon2id on a blocking thread),
//! the password sign-in (throttled per account and per address before anything is
//! hashed; an unknown account costs the same hash as a wrong password), and the
//! operators' page: this node's figures, charts of the last hour and every mesh, kept
//! live by an event stream that re-renders them every second and ends when the account
//! is removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::session::{self, Viewer};
use super::{notice, page, secure, session as current, set_cookie};
use crate::accounts;
use crate::engine::{Command, Overview};
use crate::figures::{Rates, Sample};
use crate::http::error::Peer;
use crate::state::Shared;

/// The operators' page.
pub const PATH: &str = "/dashboard/operator";
/// How often the operators' page is refreshed.
const TICK: Duration = Duration::from_secs(1);
/// Hashed when the account does not exist, so that costs what a wrong password does.
const DUMMY_PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
                         Pv5BOYmrBs1XfUStw2JORgkkSz6i8WSS1PTyjZ4r8jA";

pub fn routes() -> axum::Router<Arc<Shared>> {
    use axum::routing::get;
    axum::Router::new()
        .route("/dashboard/setup", get(setup_page).post(setup))
        .route("/dashboard/operator/login", get(login_page).post(login))
        .route(PATH, get(overview_page))
        .route("/dashboard/operator/events", get(events))
}

/// Run a password hash (or check) on a blocking thread, two at most at once.
async fn hashing<T: Send + 'static>(
    shared: &Shared,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    // Owned and moved into the task: a caller that goes away does not free the place of
    // a hash still running.
    let permit = shared.password_work.clone().acquire_owned().await.ok()?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .ok()
}

async fn setup_page(Query(q): Query<HashMap<String, String>>) -> Response {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    Html(page::setup_form(get("account"), get("token"), None)).into_response()
}

/// `POST /dashboard/setup` (form: account, token, password, confirm). The token is the
/// authority, so no session or CSRF token is involved; it is spent by the same statement
/// that sets the password.
async fn setup(
    State(shared): State<Arc<Shared>>,
    Peer(peer): Peer,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let (name, token, password) = (get("account"), get("token"), get("password"));
    let again = |status: StatusCode, why: &str| {
        (status, Html(page::setup_form(&name, &token, Some(why)))).into_response()
    };
    if !accounts::valid_name(&name) {
        return again(StatusCode::BAD_REQUEST, "This setup link is not valid.");
    }
    if password != get("confirm") {
        return again(StatusCode::BAD_REQUEST, "The two passwords differ.");
    }
    if !accounts::valid_password(&password) {
        let why = accounts::AccountError::BadPassword.to_string();
        return again(StatusCode::BAD_REQUEST, &why);
    }
    if !shared.logins.allow(&format!("setup:{name}"), peer) {
        return again(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts; wait a minute.",
        );
    }
    let Some(Ok(password_hash)) =
        hashing(&shared, move || accounts::hash_password(&password)).await
    else {
        return again(
            StatusCode::SERVICE_UNAVAILABLE,
            "The password could not be hashed; try again.",
        );
    };
    let setup_hash = accounts::token_hash(&token);
    let done = shared
        .engine
        .request(|reply| Command::SetOperatorPassword {
            name: name.clone(),
            setup_hash,
            password_hash,
            reply,
        })
        .await;
    match done {
        Ok(Ok(true)) => {
            tracing::info!(account = %name, "operator password set");
            Redirect::to("/dashboard/operator/login").into_response()
        }
        Ok(Ok(false)) => notice(
            StatusCode::BAD_REQUEST,
            "This setup link is spent",
            "A setup link works once, within a day. Ask for a new one: \
             claudemesh-broker account add NAME --reset.",
        ),
        _ => again(
            StatusCode::SERVICE_UNAVAILABLE,
            "The broker's storage is unavailable; try again.",
        ),
    }
}

async fn login_page() -> Response {
    Html(page::login_form(None)).into_response()
}

/// `POST /dashboard/operator/login` (form: account, password).
async fn login(
    State(shared): State<Arc<Shared>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    let refuse =
        |status: StatusCode, why: &str| (status, Html(page::login_form(Some(why)))).into_response();
    if !super::same_origin(&headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            "This form must be sent from this page.",
        );
    }
    let name = form.get("account").cloned().unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    if !accounts::valid_name(&name) {
        // No such account can exist (and the throttle keys only real names).
        return refuse(StatusCode::UNAUTHORIZED, "Wrong account name or password.");
    }
    if !shared.logins.allow(&name, peer) {
        tracing::info!(account = %name, ?peer, "operator sign-in throttled");
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-in attempts for this account or from this address; wait a minute.",
        );
    }
    let account = shared
        .engine
        .request(|reply| Command::OperatorAccount {
            name: name.clone(),
            reply,
        })
        .await
        .ok()
        .flatten();
    let phc = account
        .as_ref()
        .and_then(|a| a.password_hash.clone())
        .unwrap_or_else(|| DUMMY_PHC.to_owned());
    let known = account.as_ref().is_some_and(|a| a.password_hash.is_some());
    let since = account.as_ref().map_or(0, |a| a.created_at);
    let ok = hashing(&shared, move || accounts::verify_password(&password, &phc))
        .await
        .unwrap_or(false);
    if !(ok && known) {
        tracing::info!(account = %name, ?peer, "operator sign-in refused");
        return refuse(StatusCode::UNAUTHORIZED, "Wrong account name or password.");
    }
    let (id, _) = match shared.dashboard.open_operator(&name, since) {
        Ok(s) => s,
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    tracing::info!(account = %name, "operator signed in");
    let mut r = Redirect::to(PATH).into_response();
    let cookie = set_cookie(
        &id,
        session::SESSION_TTL.as_secs(),
        secure(&shared, &headers),
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// The signed-in operator, if the account still exists; else the page that says so.
async fn operator_session(
    shared: &Shared,
    headers: &HeaderMap,
) -> Result<(String, session::Session), Response> {
    let not_in = || Redirect::to("/dashboard/operator/login").into_response();
    let Some((id, s)) = current(shared, headers) else {
        return Err(not_in());
    };
    let Viewer::Operator { name, since } = &s.viewer else {
        return Err(notice(
            StatusCode::FORBIDDEN,
            "Operators only",
            "This page is for the broker's operators.",
        ));
    };
    if !account_live(shared, name, *since).await {
        shared.dashboard.end(&id);
        return Err(not_in());
    }
    let name = name.clone();
    Ok((name, s))
}

/// Whether the account a session opened still exists as it was (not removed, not reset).
async fn account_live(shared: &Shared, name: &str, since: i64) -> bool {
    shared
        .engine
        .request(|reply| Command::OperatorAccount {
            name: name.to_owned(),
            reply,
        })
        .await
        .ok()
        .flatten()
        .is_some_and(|a| a.password_hash.is_some() && a.created_at == since)
}

/// Render this node's figures now (against the latest sample) with `render`.
async fn with_figures<T>(
    shared: &Shared,
    render: impl FnOnce(&page::OperatorFigures<'_>) -> T,
) -> Option<T> {
    let (now, rates, history, overview) = figures(shared).await?;
    Some(render(&page::OperatorFigures {
        now: &now,
        rates: &rates,
        history: &history,
        overview: &overview,
        node: &shared.config.node_name,
    }))
}

/// This node's figures now, against the latest sample.
async fn figures(shared: &Shared) -> Option<(Sample, Rates, Vec<Sample>, Overview)> {
    let overview = shared
        .engine
        .request(|reply| Command::Overview { reply })
        .await
        .ok()?;
    let history = shared.figures.history();
    let now = Sample::take(&shared.metrics, None);
    let now = Sample {
        unauthenticated: history.last().map_or(0, |s| s.unauthenticated),
        ..now
    };
    let rates = history
        .last()
        .map_or_else(Rates::default, |last| Rates::between(last, &now));
    Some((now, rates, history, overview))
}

async fn overview_page(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let (name, s) = match operator_session(&shared, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match with_figures(&shared, |f| page::operator(&name, f, &s.csrf)).await {
        Some(html) => Html(html).into_response(),
        None => notice(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The broker is stopping.",
        ),
    }
}

/// `GET /dashboard/operator/events`: a `view` (the page's [`page::OperatorSections`])
/// every second, one `end` when the account or session ends.
async fn events(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let (name, s) = match operator_session(&shared, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let since = match s.viewer {
        Viewer::Operator { since, .. } => since,
        Viewer::Member(_) => return notice(StatusCode::FORBIDDEN, "Operators only", ""),
    };
    let token = super::cookie(&headers).unwrap_or_default();
    let stream = futures_util::stream::unfold(
        (shared, name, token, false),
        move |(shared, name, token, ended)| async move {
            if ended {
                return None;
            }
            tokio::select! {
                () = shared.shutdown.cancelled() => return None,
                () = tokio::time::sleep(TICK) => {}
            }
            let live =
                shared.dashboard.get(&token).is_some() && account_live(&shared, &name, since).await;
            if !live {
                shared.dashboard.end(&token);
                let e = Event::default()
                    .event("end")
                    .data("the account or session ended");
                return Some((
                    Ok::<_, std::convert::Infallible>(e),
                    (shared, name, token, true),
                ));
            }
            let data = with_figures(&shared, |f| {
                serde_json::to_string(&page::operator_sections(f)).unwrap_or_else(|_| "{}".into())
            })
            .await?;
            let event = Event::default().event("view").data(data);
            Some((Ok(event), (shared, name, token, false)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stand_in_hash_parses_so_an_unknown_account_costs_a_full_check() {
        assert!(argon2::password_hash::PasswordHash::new(DUMMY_PHC).is_ok());
        assert!(!accounts::verify_password("anything at all", DUMMY_PHC));
    }
}
