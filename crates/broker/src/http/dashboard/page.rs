//! The dashboard's HTML, rendered on the server and only here: the whole page on a
//! load, and the same [`Sections`] again for every live update (the event stream carries
//! them and `app.js` swaps them in). Every value from a peer (names, summaries,
//! hostnames, paths) goes through [`escape`], so one function guards both paths.

use std::fmt::Write as _;

use claudemesh_proto::frames::{DeliveryState, PeerInfo};
use serde::Serialize;

use crate::engine::{MemberView, MeshView, MessageView};

/// HTML-escape text for an element body or a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A value's serde name (`idle`, `live`, …).
fn word<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The frame around every page.
pub fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · claudemesh</title>\
         <link rel=\"stylesheet\" href=\"/dashboard/assets/app.css\">\
         <script src=\"/dashboard/assets/app.js\" defer></script></head>\
         <body><header><a class=\"brand\" href=\"/dashboard\">claudemesh</a></header>\n{body}\n</body></html>\n",
        escape(title)
    )
}

/// A page that only says something (signed out, not signed in, a spent code).
pub fn notice(title: &str, text: &str) -> String {
    layout(
        title,
        &format!(
            "<main><h1>{}</h1><p>{}</p>\
             <p>Sign in from a terminal with <code>claudemesh dashboard</code>.</p></main>",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_peer_text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
