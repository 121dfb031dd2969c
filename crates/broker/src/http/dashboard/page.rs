//! The dashboard's HTML, rendered on the server and only here: the whole page on a
//! load, and the same [`Sections`] again for every live update (the event stream carries
//! them and `app.js` swaps them in). Every value from a peer (names, summaries,
//! hostnames, paths) goes through [`escape`], so one function guards both paths.

use std::fmt::Write as _;

use claudemesh_proto::frames::{DeliveryState, PeerInfo};
use serde::Serialize;

use crate::engine::{MemberView, MeshView, MessageView};

pub use claudemesh_pages::escape;

/// A value's serde name (`idle`, `live`, …).
fn word<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The frame around every page of the broker's dashboard.
pub fn layout(title: &str, body: &str) -> String {
    claudemesh_pages::layout(title, "/dashboard/assets", "/dashboard", body)
}

/// A page that only says something (signed out, not signed in, a spent code).
pub fn notice(title: &str, text: &str) -> String {
    layout(
        title,
        &format!(
            "<main><h1>{}</h1><p>{}</p>\
             <p>Members sign in from a terminal with <code>claudemesh dashboard</code>; \
             operators at <a href=\"/dashboard/operator/login\">the operator sign-in</a>.</p></main>",
            escape(title),
            escape(text)
        ),
    )
}

/// A form that posts one action with the session's CSRF token.
fn action(path: &str, label: &str, csrf: &str, confirm: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{path}\" data-confirm=\"{confirm}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\">{label}</button></form>",
        path = escape(path),
        csrf = escape(csrf),
        confirm = escape(confirm),
        label = escape(label),
    )
}

fn peer_row(p: &PeerInfo) -> String {
    let reach = p.reach.as_ref().map(word).unwrap_or_else(|| "live".into());
    format!(
        "<tr data-key=\"{key}\"><td class=\"name\">{name}</td><td class=\"status\">{status}</td>\
         <td class=\"summary\">{summary}</td><td>{role}</td><td>{host}</td><td>{reach}</td></tr>",
        key = escape(&p.pubkey),
        name = escape(&p.display_name),
        status = escape(&word(&p.status)),
        summary = escape(p.summary.as_deref().unwrap_or("")),
        role = escape(&p.peer_role),
        host = escape(p.hostname.as_deref().unwrap_or("")),
        reach = escape(&reach),
    )
}

/// Whether the viewer may remove this member from the page (the engine decides again).
fn removable(view: &MeshView, m: &MemberView) -> bool {
    let admin = matches!(view.standing, "owner" | "admin");
    let role_ok = match m.info.role.as_str() {
        "owner" => false,
        "admin" => view.standing == "owner",
        _ => true,
    };
    admin && role_ok && m.info.kind == "member" && m.info.member_id != view.viewer_member_id
}

fn member_row(view: &MeshView, m: &MemberView, csrf: &str) -> String {
    let i = &m.info;
    let actions = if removable(view, m) {
        let base = format!("/dashboard/m/{}/members/{}", view.mesh_id, i.member_id);
        let who = &i.display_name;
        format!(
            "{}{}",
            action(
                &format!("{base}/kick"),
                "Kick",
                csrf,
                &format!("Kick {who}? They may join again with a new invite.")
            ),
            action(
                &format!("{base}/revoke"),
                "Revoke",
                csrf,
                &format!("Revoke {who}? Their key is banned from this mesh.")
            )
        )
    } else {
        String::new()
    };
    format!(
        "<tr data-key=\"{key}\" data-member=\"{member}\"><td class=\"name\">{name}</td>\
         <td>{kind}</td><td>{role}</td><td>{joined}</td><td>{online}</td><td>{seen}</td>\
         <td class=\"queued\">{queued}</td><td class=\"actions\">{actions}</td></tr>",
        key = escape(&i.pubkey),
        member = escape(&i.member_id),
        name = escape(&i.display_name),
        kind = escape(&i.kind),
        role = escape(&i.role),
        joined = escape(m.joined_at.as_deref().unwrap_or("")),
        online = if i.online { "online" } else { "offline" },
        seen = escape(i.last_seen.as_deref().unwrap_or("never")),
        queued = m.queued,
    )
}

/// `12:34:56` of an ISO 8601 time (the full time is the cell's title).
fn clock(iso: &str) -> &str {
    iso.get(11..19).unwrap_or(iso)
}

fn message_row(m: &MessageView) -> String {
    let total = m.recipients.len() + m.untracked;
    let state = word(&m.state);
    let mut copies = String::new();
    for c in &m.recipients {
        let again = match c.redeliveries {
            0 => String::new(),
            1 => ", 1 redelivery".into(),
            n => format!(", {n} redeliveries"),
        };
        let _ = write!(
            copies,
            "<li><span class=\"name\">{}</span> <span class=\"state {s}\">{s}</span>{again}</li>",
            escape(&c.display_name),
            s = escape(&word(&c.state)),
        );
    }
    if m.untracked > 0 {
        let _ = write!(copies, "<li>and {} more</li>", m.untracked);
    }
    let all_acked = m.state == DeliveryState::Acked;
    format!(
        "<tr data-message=\"{id}\"><td title=\"{at}\">{clock}</td><td class=\"name\">{from}</td>\
         <td class=\"name\">{to}</td><td>{priority}</td><td>{size} B</td>\
         <td><details data-message=\"{id}\"><summary><span class=\"state {state}\">{state}</span> \
         <span class=\"count\">{acked}/{total} acked</span></summary><ul>{copies}</ul></details></td></tr>",
        id = escape(&m.message_id),
        at = escape(&m.at),
        clock = escape(clock(&m.at)),
        from = escape(&m.sender_name),
        to = escape(&m.to),
        priority = escape(&word(&m.priority)),
        size = m.size,
        state = escape(&state),
        acked = if all_acked { total } else { m.acked },
    )
}

/// The parts of a mesh page that change, as HTML (the page on a load, the stream after).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sections {
    pub peer_count: usize,
    pub peers: String,
    pub traffic: String,
    pub members: String,
    pub invites: String,
}

pub fn sections(view: &MeshView, csrf: &str) -> Sections {
    let mut peers = String::new();
    for p in &view.peers {
        peers.push_str(&peer_row(p));
    }
    let mut traffic = String::new();
    for m in &view.traffic {
        traffic.push_str(&message_row(m));
    }
    let mut members = String::new();
    for m in &view.members {
        members.push_str(&member_row(view, m, csrf));
    }
    let mut invites = String::new();
    for i in &view.invites {
        let revoke = if i.state == "usable" {
            action(
                &format!(
                    "/dashboard/m/{}/invites/{}/revoke",
                    view.mesh_id, i.invite_id
                ),
                "Revoke",
                csrf,
                "Revoke this invite? Nobody can join with it any more.",
            )
        } else {
            String::new()
        };
        let uses = match i.max_uses {
            0 => format!("{} (unlimited)", i.uses),
            max => format!("{} of {max}", i.uses),
        };
        let _ = write!(
            invites,
            "<tr data-invite=\"{id}\"><td><code>{short}</code></td><td>{role}</td><td>{uses}</td>\
             <td>{expires}</td><td>{state}</td><td class=\"actions\">{revoke}</td></tr>",
            id = escape(&i.invite_id),
            short = escape(&i.invite_id.chars().take(12).collect::<String>()),
            role = escape(&word(&i.role)),
            uses = escape(&uses),
            expires = escape(&i.expires_at),
            state = escape(i.state),
        );
    }
    Sections {
        peer_count: view.peers.len(),
        peers,
        traffic,
        members,
        invites,
    }
}

/// For owners and admins: the invites section, with the commands that make new ones
/// (an invite is signed with the owner's or an admin's key, which the broker never holds).
fn invites_section(view: &MeshView, rows: &str) -> String {
    if !matches!(view.standing, "owner" | "admin") {
        return String::new();
    }
    let slug = escape(&view.slug);
    let admin = if view.standing == "owner" {
        format!(
            "<br><code>claudemesh invite --mesh {slug} --role admin --uses 1 --expires 1d</code>"
        )
    } else {
        String::new()
    };
    format!(
        "<section><h2>Invites</h2>\
         <p class=\"hint\">An invite is signed with your key, which only your machine holds: \
         make one in a terminal, then send the link it prints.<br>\
         <code id=\"invite-command\">claudemesh invite --mesh {slug} --role member --uses 1 --expires 7d</code>{admin}</p>\
         <div class=\"scroll\"><table id=\"invites\"><thead><tr><th>Invite</th><th>Role</th>\
         <th>Uses</th><th>Expires</th><th>State</th><th></th></tr></thead>\
         <tbody>{rows}</tbody></table></div></section>"
    )
}

/// One mesh, as its signed-in member sees it. `csrf` goes into the page's forms.
pub fn mesh(view: &MeshView, csrf: &str) -> String {
    let s = sections(view, csrf);
    let mut body = String::new();
    let _ = write!(
        body,
        "<main id=\"mesh\" data-mesh=\"{id}\">\
         <div class=\"bar\"><h1>{name} <small>{slug}</small></h1>\
         <form method=\"post\" action=\"/dashboard/logout\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\">Sign out</button></form></div>\
         <p class=\"who\">Signed in as <b>{viewer}</b> ({standing}). \
         <span id=\"live\" aria-live=\"polite\">connecting…</span></p>\
         <section><h2>Online now <span id=\"peer-count\">{npeers}</span></h2>\
         <div class=\"scroll\"><table id=\"peers\"><thead><tr><th>Name</th><th>Status</th>\
         <th>Summary</th><th>Role</th><th>Host</th><th>Reach</th></tr></thead>\
         <tbody>{peers}</tbody></table></div></section>\
         <section><h2>Traffic</h2>\
         <p class=\"hint\">The latest messages as the broker sees them: who, to whom, how big, \
         and where each copy stands. Never a body: the broker only holds ciphertext.</p>\
         <div class=\"scroll\"><table id=\"traffic\"><thead><tr><th>Time</th><th>From</th>\
         <th>To</th><th>Priority</th><th>Size</th><th>State</th></tr></thead>\
         <tbody>{traffic}</tbody></table></div></section>\
         <section><h2>Members and sessions</h2>\
         <div class=\"scroll\"><table id=\"members\"><thead><tr><th>Name</th><th>Kind</th>\
         <th>Role</th><th>Joined</th><th>Online</th><th>Last seen</th><th>Queued</th><th></th>\
         </tr></thead><tbody>{members}</tbody></table></div></section>{invites}</main>",
        id = escape(&view.mesh_id),
        name = escape(&view.name),
        slug = escape(&view.slug),
        csrf = escape(csrf),
        viewer = escape(if view.viewer_name.is_empty() {
            "the owner key"
        } else {
            &view.viewer_name
        }),
        standing = view.standing,
        npeers = s.peer_count,
        peers = s.peers,
        traffic = s.traffic,
        members = s.members,
        invites = invites_section(view, &s.invites),
    );
    layout(&view.name, &body)
}

// ---- operators ----

/// The form that chooses an operator's password through its setup link.
pub fn setup_form(account: &str, token: &str, problem: Option<&str>) -> String {
    let problem = problem.map_or(String::new(), |p| {
        format!("<p class=\"problem\" role=\"alert\">{}</p>", escape(p))
    });
    layout(
        "Choose a password",
        &format!(
            "<main><h1>Choose a password for {name}</h1>{problem}\
             <form method=\"post\" action=\"/dashboard/setup\" class=\"stack\">\
             <input type=\"hidden\" name=\"account\" value=\"{name}\">\
             <input type=\"hidden\" name=\"token\" value=\"{token}\">\
             <label>Password (at least {min} characters)\
             <input type=\"password\" name=\"password\" autocomplete=\"new-password\" required autofocus></label>\
             <label>Again<input type=\"password\" name=\"confirm\" autocomplete=\"new-password\" required></label>\
             <button type=\"submit\">Set the password</button></form></main>",
            name = escape(account),
            token = escape(token),
            min = crate::accounts::MIN_PASSWORD_CHARS,
        ),
    )
}

/// The operators' sign-in form.
pub fn login_form(problem: Option<&str>) -> String {
    let problem = problem.map_or(String::new(), |p| {
        format!("<p class=\"problem\" role=\"alert\">{}</p>", escape(p))
    });
    layout(
        "Operator sign-in",
        &format!(
            "<main><h1>Operator sign-in</h1>{problem}\
             <form method=\"post\" action=\"/dashboard/operator/login\" class=\"stack\">\
             <label>Account<input name=\"account\" autocomplete=\"username\" required autofocus></label>\
             <label>Password<input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
             <button type=\"submit\">Sign in</button></form>\
             <p class=\"hint\">Members sign in from a terminal with <code>claudemesh dashboard</code>; \
             operator accounts are made with <code>claudemesh-broker account add NAME</code>.</p></main>"
        ),
    )
}

/// A small line chart of `values` (oldest first) as inline SVG, with its last value.
fn chart(title: &str, unit: &str, values: &[f64]) -> String {
    let (w, h) = (240.0_f64, 48.0_f64);
    let max = values.iter().copied().fold(0.0_f64, f64::max).max(1e-9);
    let n = values.len().max(2) - 1;
    let mut points = String::new();
    for (i, v) in values.iter().enumerate() {
        let x = w * i as f64 / n as f64;
        let y = h - (v / max) * (h - 2.0) - 1.0;
        let _ = write!(points, "{x:.1},{y:.1} ");
    }
    let last = values.last().copied().unwrap_or(0.0);
    format!(
        "<figure class=\"chart\"><figcaption>{title} <b>{last}</b> {unit} \
         <small>(max {max})</small></figcaption>\
         <svg viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{title}\">\
         <polyline fill=\"none\" stroke=\"currentColor\" stroke-width=\"1.5\" points=\"{points}\"/></svg></figure>",
        title = escape(title),
        unit = escape(unit),
        last = number(last),
        max = number(max),
    )
}

/// A figure for people: no more than one decimal, none for large numbers.
fn number(v: f64) -> String {
    if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// What the operators' page shows, live.
pub struct OperatorFigures<'a> {
    pub now: &'a crate::figures::Sample,
    pub rates: &'a crate::figures::Rates,
    pub history: &'a [crate::figures::Sample],
    pub overview: &'a crate::engine::Overview,
    pub node: &'a str,
}

/// The parts of the operators' page that change.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorSections {
    pub figures: String,
    pub charts: String,
    pub meshes: String,
    /// Every node on the database, from its heartbeat (empty rows on SQLite).
    pub nodes: String,
}

pub fn operator_sections(f: &OperatorFigures<'_>) -> OperatorSections {
    let (now, r, o) = (f.now, f.rates, f.overview);
    let row = |k: &str, v: String| {
        format!(
            "<tr><th scope=\"row\">{}</th><td>{}</td></tr>",
            escape(k),
            escape(&v)
        )
    };
    let nodes = o
        .nodes_up
        .map_or_else(|| "1 (SQLite)".to_owned(), |n| n.to_string());
    let figures = [
        row("Node", f.node.to_owned()),
        row("Nodes up", nodes),
        row("Connections, authenticated", now.connections.to_string()),
        row(
            "Connections, not authenticated",
            now.unauthenticated.to_string(),
        ),
        row("Meshes", o.meshes.len().to_string()),
        row("Members", o.members.to_string()),
        row("Messages / s", number(r.messages_per_sec)),
        row("Deliveries / s", number(r.deliveries_per_sec)),
        row("Acks / s", number(r.acks_per_sec)),
        row("Queue depth", now.queue_depth.to_string()),
        row("Commit batch (commands)", number(r.batch_size)),
        row("Commit latency (ms)", number(r.commit_ms)),
        row("Slow consumers dropped", now.slow_consumers.to_string()),
        row(
            "Rate-limit refusals",
            (now.rate_limited + now.preauth_refused).to_string(),
        ),
        row("Commit failures", now.commit_failures.to_string()),
    ]
    .concat();
    let rates: Vec<crate::figures::Rates> = f
        .history
        .iter()
        .zip(f.history.iter().skip(1))
        .map(|(a, b)| crate::figures::Rates::between(a, b))
        .chain(std::iter::once(*r))
        .collect();
    let series = |get: &dyn Fn(&crate::figures::Rates) -> f64| -> Vec<f64> {
        rates.iter().map(get).collect()
    };
    let gauges = |get: &dyn Fn(&crate::figures::Sample) -> f64| -> Vec<f64> {
        f.history
            .iter()
            .chain(std::iter::once(now))
            .map(get)
            .collect()
    };
    let charts = [
        chart("Messages", "/ s", &series(&|r| r.messages_per_sec)),
        chart("Connections", "", &gauges(&|s| s.connections as f64)),
        chart("Queue depth", "", &gauges(&|s| s.queue_depth as f64)),
        chart("Commit latency", "ms", &series(&|r| r.commit_ms)),
    ]
    .concat();
    let mut meshes = String::new();
    for m in &o.meshes {
        let _ = write!(
            meshes,
            "<tr><td><a href=\"/dashboard/m/{id}\">{slug}</a></td><td class=\"name\">{name}</td>\
             <td>{members}</td><td>{online}</td></tr>",
            id = escape(&m.mesh_id),
            slug = escape(&m.slug),
            name = escape(&m.name),
            members = m.members,
            online = m.online,
        );
    }
    let mut nodes = String::new();
    for n in &o.nodes {
        let fig = |get: &dyn Fn(&crate::figures::Sample) -> String| {
            n.figures.as_ref().map_or_else(String::new, get)
        };
        let rate = |get: &dyn Fn(&crate::figures::Rates) -> f64| {
            n.rates
                .as_ref()
                .map_or_else(String::new, |r| number(get(r)))
        };
        let _ = write!(
            nodes,
            "<tr><td class=\"name\">{name}{this}</td><td>{state}</td><td>{conns}</td>\
             <td>{msgs}</td><td>{queue}</td><td>{commit}</td><td>{slow}</td><td>{refused}</td></tr>",
            name = escape(&n.name),
            this = if n.this { " (this one)" } else { "" },
            state = if n.up {
                "up".to_owned()
            } else {
                format!("silent {} s", n.seen_secs_ago)
            },
            conns = fig(&|s| s.connections.to_string()),
            msgs = rate(&|r| r.messages_per_sec),
            queue = fig(&|s| s.queue_depth.to_string()),
            commit = rate(&|r| r.commit_ms),
            slow = fig(&|s| s.slow_consumers.to_string()),
            refused = fig(&|s| (s.rate_limited + s.preauth_refused).to_string()),
        );
    }
    OperatorSections {
        figures,
        charts,
        meshes,
        nodes,
    }
}

/// The operators' page: the broker's figures, charts of the last hour, every mesh.
pub fn operator(name: &str, f: &OperatorFigures<'_>, csrf: &str) -> String {
    let s = operator_sections(f);
    layout(
        "Broker",
        &format!(
            "<main id=\"operator\">\
             <div class=\"bar\"><h1>Broker <small>{node}</small></h1>\
             <form method=\"post\" action=\"/dashboard/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\">Sign out</button></form></div>\
             <p class=\"who\">Signed in as operator <b>{name}</b>. \
             <span id=\"live\" aria-live=\"polite\">connecting…</span></p>\
             <section><h2>Now</h2><div class=\"scroll\"><table id=\"figures\"><tbody>{figures}</tbody></table></div></section>\
             <section><h2>The last hour</h2><div id=\"charts\" class=\"charts\">{charts}</div></section>\
             {nodes}<section><h2>Meshes</h2><div class=\"scroll\"><table id=\"meshes\"><thead><tr><th>Slug</th>\
             <th>Name</th><th>Members</th><th>Online</th></tr></thead><tbody>{meshes}</tbody></table></div></section></main>",
            node = escape(f.node),
            csrf = escape(csrf),
            name = escape(name),
            figures = s.figures,
            charts = s.charts,
            meshes = s.meshes,
            nodes = if f.overview.nodes.is_empty() {
                String::new()
            } else {
                format!(
                    "<section><h2>Every node</h2><p class=\"hint\">As each node's last heartbeat \
                     (every second) reported it.</p><div class=\"scroll\"><table id=\"nodes\"><thead><tr>\
                     <th>Node</th><th>State</th><th>Connections</th><th>Messages / s</th>\
                     <th>Queue depth</th><th>Commit ms</th><th>Slow consumers</th>\
                     <th>Refusals</th></tr></thead><tbody>{}</tbody></table></div></section>",
                    s.nodes
                )
            },
        ),
    )
}
