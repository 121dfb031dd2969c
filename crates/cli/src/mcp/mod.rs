//! `claudemesh mcp`: the stdio MCP server Claude Code starts, one per session. It makes
//! the session a peer (its own session key per mesh, vouched for by the member key),
//! serves the tools, pushes inbound messages into the session as channel notifications,
//! and answers the session's hooks over a private unix socket.
//!
//! Layout: `session` (which session, its keys and files), `peer` (connections, inbox,
//! what the tools and hooks do), `render` (text for the model), `tools` (schemas and
//! dispatch), `server` (rmcp handler and the notification writer), `hooks` (the socket).
//!
//! What it must not do: write anything but JSON-RPC to stdout, or stop because the
//! broker is unreachable — connections are retried in the background for as long as the
//! session lives.

mod hooks;
mod peer;
mod render;
mod server;
mod session;
mod tools;

use std::sync::Arc;

use anyhow::Context as _;
use claudemesh_client::envelope::Keyring;
use claudemesh_client::inbox::Inbox;
use claudemesh_client::{ConnectOptions, Connection, Identity};
use claudemesh_proto::codes::cap;
use claudemesh_proto::frames::PresenceInfo;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::{Config, ConfigDir, MeshEntry};
use peer::{Link, Peer, PeerParts};
use session::Session;

pub use session::{claude_pid, session_name};

/// Channel notifications queued for the writer before receiving waits.
const NOTICE_BUFFER: usize = 256;

/// The project directory of this session: `CLAUDE_PROJECT_DIR`, else the working directory.
fn project_dir() -> String {
    std::env::var("CLAUDE_PROJECT_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .or_else(|| {
            std::env::current_dir()
                .ok()
                .map(|d| d.display().to_string())
        })
        .unwrap_or_default()
}

/// `text` cut to at most `max` bytes at a character boundary: the broker refuses a hello
/// whose presence fields are longer, and a refused hello would keep the session offline.
fn fit(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
}

/// Whether Claude Code shows channel notifications in this session:
/// `CLAUDEMESH_CHANNELS=on|off` if set (for a `claude` started by hand with the flag
/// where `/proc` cannot tell); else whether this Claude process is the one
/// `claudemesh launch` started (`CLAUDEMESH_LAUNCH_PID`, which a nested `claude` inherits
/// but does not match); else whether its command line has
/// `--dangerously-load-development-channels server:…claudemesh…`.
/// When off, messages wait for the prompt hook and `check_messages` instead.
pub fn channels_enabled(claude_pid: u32) -> bool {
    match std::env::var("CLAUDEMESH_CHANNELS").ok().as_deref() {
        Some("on" | "1" | "true") => return true,
        Some("off" | "0" | "false") => return false,
        _ => {}
    }
    let launched = std::env::var("CLAUDEMESH_LAUNCH_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok());
    if launched == Some(claude_pid) {
        return true;
    }
    let Ok(raw) = std::fs::read(format!("/proc/{claude_pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    args.iter().enumerate().any(|(i, a)| {
        let value = match a.strip_prefix("--dangerously-load-development-channels") {
            Some(rest) if rest.starts_with('=') => Some(rest.trim_start_matches('=')),
            Some("") => args.get(i + 1).map(String::as_str),
            _ => None,
        };
        value.is_some_and(|v| v.contains("server:") && v.contains("claudemesh"))
    })
}

/// The meshes to serve: `--mesh`, else every mesh of this identity (current first).
fn meshes(config: &Config, only: Option<&str>) -> anyhow::Result<Vec<MeshEntry>> {
    if let Some(slug) = only {
        return Ok(vec![config.mesh(Some(slug))?.clone()]);
    }
    let mut list: Vec<MeshEntry> = config.meshes.values().cloned().collect();
    let current = config.current.clone().unwrap_or_default();
    list.sort_by_key(|m| m.slug != current);
    Ok(list)
}

/// Run the server until Claude Code closes stdin.
pub async fn run(dir: ConfigDir, config: Config, only_mesh: Option<String>) -> anyhow::Result<()> {
    let claude = claude_pid();
    let mut session = Session::open(&dir, &session_name())?;
    let project = project_dir();
    let repo = std::path::Path::new(&project)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "session".into());
    let entries = meshes(&config, only_mesh.as_deref())?;
    let setup_problem = entries.is_empty().then(|| {
        "This identity has not joined a mesh yet. The user can run `claudemesh join LINK` (or `claudemesh mesh create NAME --broker URL`) in a terminal, then restart this session's claudemesh server with /mcp.".to_owned()
    });
    let channels = channels_enabled(claude);
    tracing::info!(session = %session.name, channels, meshes = entries.len(), "claudemesh MCP server starting");

    let mut tasks = JoinSet::new();
    let mut links = Vec::new();
    let mut receivers = Vec::new();
    let member_name = entries
        .first()
        .map(|e| e.display_name.clone())
        .unwrap_or_default();
    for entry in &entries {
        let session_key = session.key_for(&entry.mesh_id)?;
        let max = claudemesh_proto::limits::MAX_SHORT_TEXT_BYTES;
        let display_name = fit(&format!("{}/{repo}", entry.display_name), max);
        let mut groups = session.groups();
        groups.truncate(claudemesh_proto::limits::MAX_GROUPS);
        let presence = PresenceInfo {
            display_name: Some(display_name),
            session_id: fit(&session.name, max),
            pid: i64::from(claude),
            cwd: fit(&project, max),
            hostname: hostname().map(|h| fit(&h, max)),
            peer_type: Some("ai".into()),
            channel: Some("claude-code".into()),
            groups: Some(groups),
            capabilities: Some(vec![cap::E2E_MULTICAST.into(), cap::LIST_MEMBERS.into()]),
            ..PresenceInfo::default()
        };
        let identity = Identity {
            mesh_id: entry.mesh_id.clone(),
            member_id: entry.member_id.clone(),
            member_key: entry.key()?,
            session_key: Some(session_key.clone()),
        };
        let (conn, pushes) = Connection::spawn(ConnectOptions {
            url: entry.broker_url.clone(),
            identity,
            presence,
            reconnect: true,
        });
        if let Some(summary) = session.summary() {
            let _ = conn.set_summary(Some(summary)).await;
        }
        links.push(Link::new(
            &entry.slug,
            &entry.mesh_id,
            &entry.broker_url,
            conn,
            Keyring::new(session_key.clone()),
        ));
        receivers.push((pushes, Keyring::new(session_key)));
    }

    let inbox = Inbox::open(&session.inbox_file()).context("opening the session inbox")?;
    let (notice_tx, notice_rx) = mpsc::channel(NOTICE_BUFFER);
    let peer = Arc::new(Peer::new(PeerParts {
        links,
        default_link: 0,
        inbox,
        session,
        channels,
        notices: notice_tx,
        display_name: format!("{member_name}/{repo}"),
        setup_problem,
    }));
    for (i, (pushes, ring)) in receivers.into_iter().enumerate() {
        tasks.spawn(peer.clone().receive(i, pushes, ring));
    }
    match hooks::bind(&dir, claude) {
        Ok(socket) => {
            tasks.spawn(hooks::serve(socket, peer.clone(), claude));
        }
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "hooks cannot reach this session"),
    }

    let (handler, initialized) = server::Handler::new(peer.clone());
    let running = rmcp::serve_server(handler, rmcp::transport::stdio())
        .await
        .context("the MCP client did not initialize")?;
    tasks.spawn(server::write_notices(
        running.peer().clone(),
        peer.clone(),
        initialized,
        notice_rx,
    ));
    // Claude Code closes stdin when the session ends; SIGTERM/SIGINT end it too.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    tokio::select! {
        ended = running.waiting() => tracing::info!(?ended, "MCP client disconnected; closing"),
        _ = term.recv() => tracing::info!("SIGTERM; closing"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT; closing"),
    }
    for link in peer.links() {
        link.conn.close().await;
    }
    tasks.shutdown().await;
    Ok(())
}
