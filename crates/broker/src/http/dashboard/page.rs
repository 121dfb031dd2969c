//! The dashboard's HTML, rendered on the server: every value from a peer (names,
//! summaries, hostnames, paths) goes through [`escape`]. The page works without
//! JavaScript; `app.js` then keeps it live from the event stream, writing text only
//! (`textContent`), so nothing a peer wrote is ever parsed as HTML in either path.

use std::fmt::Write as _;

use claudemesh_proto::frames::{MemberInfo, PeerInfo};

use crate::engine::MeshView;

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

fn member_row(m: &MemberInfo) -> String {
    format!(
        "<tr data-key=\"{key}\"><td class=\"name\">{name}</td><td>{kind}</td><td>{role}</td>\
         <td>{online}</td><td>{seen}</td></tr>",
        key = escape(&m.pubkey),
        name = escape(&m.display_name),
        kind = escape(&m.kind),
        role = escape(&m.role),
        online = if m.online { "online" } else { "offline" },
        seen = escape(m.last_seen.as_deref().unwrap_or("never")),
    )
}

/// One mesh, as its signed-in member sees it. `csrf` goes into the page's forms.
pub fn mesh(view: &MeshView, csrf: &str) -> String {
    let mut peers = String::new();
    for p in &view.peers {
        peers.push_str(&peer_row(p));
    }
    let mut members = String::new();
    for m in &view.members {
        members.push_str(&member_row(m));
    }
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
         <section><h2>Members and sessions</h2>\
         <div class=\"scroll\"><table id=\"members\"><thead><tr><th>Name</th><th>Kind</th>\
         <th>Role</th><th>Online</th><th>Last seen</th></tr></thead>\
         <tbody>{members}</tbody></table></div></section></main>",
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
        npeers = view.peers.len(),
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
