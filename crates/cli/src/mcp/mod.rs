//! `claudemesh mcp`: the stdio MCP server Claude Code starts, one per session. It makes
//! the session a peer (its own session key per mesh, vouched for by the member key),
//! serves the tools, pushes inbound messages into the session as channel notifications,
//! and answers the session's hooks over a private unix socket.
//!
//! Layout: `session` (which session, its keys and files), `peer` (activation, receiving,
//! the hooks' actions), `link` (one mesh's broker connection), `shown` (the inbox and
//! what the model has been shown), `tools` (schemas, argument structs, one function per
//! tool), `render` (text for the model), `server` (rmcp handler and the notification
//! writer), `hooks` (the socket), `transcript` (evidence of channel events).
//!
//! What it must not do: write anything but JSON-RPC to stdout, or stop because the
//! broker is unreachable — connections are retried in the background for as long as the
//! session lives.

mod hooks;
mod link;
mod peer;
mod render;
mod server;
pub(crate) mod session;
mod shown;
mod tools;
mod transcript;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use claudemesh_proto::codes::cap;
use claudemesh_proto::frames::PresenceInfo;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::{Config, ConfigDir, MeshEntry};
use link::fit;
use peer::{Peer, Plan};
use shown::{Channels, Shown};

pub use session::{claude_pid, session_name};

/// Channel notifications queued for the writer before receiving waits.
const NOTICE_BUFFER: usize = 256;
/// Claude Code sends SIGKILL 500 ms after SIGINT; leaving takes at most this.
const LEAVE_WAIT: Duration = Duration::from_millis(80);

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

fn hostname() -> Option<String> {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
}

/// Whether Claude Code was asked to show channel notifications in this session:
/// `CLAUDEMESH_CHANNELS=on|off` if set (for a `claude` started by hand with the flag
/// where `/proc` cannot tell); else whether this Claude process is the one
/// `claudemesh launch` started (`CLAUDEMESH_LAUNCH_PID`, which a nested `claude` inherits
/// but does not match); else whether its command line has
/// `--dangerously-load-development-channels server:…claudemesh…`.
/// Asked is not granted: Claude Code may drop them (see `shown.rs`), which the
/// transcript then shows.
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

/// What this session announces in every mesh (display name, session id, groups and reach
/// are set per mesh on activation).
fn presence(claude_pid: u32, project: &str) -> PresenceInfo {
    let max = claudemesh_proto::limits::MAX_SHORT_TEXT_BYTES;
    PresenceInfo {
        pid: i64::from(claude_pid),
        cwd: fit(project, max),
        hostname: hostname().map(|h| fit(&h, max)),
        peer_type: Some("ai".into()),
        channel: Some("claude-code".into()),
        capabilities: Some(vec![
            cap::E2E_MULTICAST.into(),
            cap::LIST_MEMBERS.into(),
            cap::REACHABILITY.into(),
        ]),
        ..PresenceInfo::default()
    }
}

/// Run the server until Claude Code closes stdin or signals it to stop, then leave every
/// mesh on purpose and remove the hook socket, within Claude Code's 100 ms SIGINT window.
pub async fn run(dir: ConfigDir, config: Config, only_mesh: Option<String>) -> anyhow::Result<()> {
    let claude = claude_pid();
    let name = session_name();
    let project = project_dir();
    let repo = std::path::Path::new(&project)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "session".into());
    let entries = meshes(&config, only_mesh.as_deref())?;
    let channels = if channels_enabled(claude) {
        Channels::Assumed
    } else {
        Channels::Off
    };
    let presence = presence(claude, &project);
    let resumed = session::Session::exists(&dir, &name);
    tracing::info!(session = %name, ?channels, resumed, meshes = entries.len(), "claudemesh MCP server starting");

    let (notice_tx, notice_rx) = mpsc::channel(NOTICE_BUFFER);
    let plan = Plan {
        dir: dir.clone(),
        session_name: name,
        entries,
        presence,
        repo,
    };
    let shown = Shown::new(channels, shown::max_depth_from_env());
    let peer = Arc::new(Peer::new(plan, shown, notice_tx));
    // A session that was a peer before (resumed, or its server restarted) is one at
    // once, so what was queued for it flows; a new one waits for proof it is real.
    if resumed && let Err(e) = peer.activate().await {
        tracing::warn!(error = %e, "the session could not become a peer");
    }

    let mut tasks = JoinSet::new();
    let socket = match hooks::bind(&dir, claude) {
        Ok(socket) => Some(socket),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "hooks cannot reach this session");
            None
        }
    };
    if let Some(socket) = socket {
        tasks.spawn(hooks::serve(socket, peer.clone(), claude));
    }

    let (handler, initialized) = server::Handler::new(peer.clone());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    let running = tokio::select! {
        r = rmcp::serve_server(handler, rmcp::transport::stdio()) => Some(r.context("the MCP client did not initialize")?),
        _ = term.recv() => None,
        _ = tokio::signal::ctrl_c() => None,
    };
    if let Some(running) = running {
        tasks.spawn(server::write_notices(
            running.peer().clone(),
            peer.clone(),
            initialized,
            notice_rx,
        ));
        // Claude Code closes stdin when the session ends, after SIGINT/SIGTERM.
        tokio::select! {
            ended = running.waiting() => tracing::info!(?ended, "MCP client disconnected; closing"),
            _ = term.recv() => tracing::info!("SIGTERM; closing"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT; closing"),
        }
    }
    peer.leave(LEAVE_WAIT).await;
    // Dropping the hook task removes the socket (unless a newer server replaced it).
    let _ = tokio::time::timeout(Duration::from_millis(20), tasks.shutdown()).await;
    Ok(())
}
