//! The MCP server's end of the hook socket (see `crate::hook`): one listener per Claude
//! Code process at `CONFIG_DIR/run/<claude pid>.sock`, mode 0600 in a 0700 directory.
//! A connection is served only if the peer process (`SO_PEERCRED`) runs as this user
//! and, where `/proc` tells, descends from this session's Claude Code process at most
//! `MAX_DEPTH` levels down, so one session's hooks — a nested session's included — can
//! never drive another session's peer.
//!
//! Requests are served one at a time with short timeouts; a hook that stalls is cut off.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::peer::{HookInfo, Peer};
use crate::config::ConfigDir;
use crate::hook::{HookReply, HookRequest, MAX_REQUEST, descends_from, socket_path};

/// How long one hook request may take, end to end.
const REQUEST_WAIT: Duration = Duration::from_secs(3);

/// The bound socket; removed from disk when dropped, unless another server has
/// replaced it since.
pub struct HookSocket {
    pub listener: UnixListener,
    pub path: PathBuf,
    uid: u32,
    inode: u64,
}

impl Drop for HookSocket {
    fn drop(&mut self) {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn info(req: &HookRequest) -> HookInfo {
    HookInfo {
        transcript: req.transcript_path.as_ref().map(PathBuf::from),
        human: req.human,
    }
}

/// Remove sockets whose Claude Code process is gone (a server that was killed cannot
/// remove its own). Only `<pid>.sock` names are touched.
fn remove_stale(run_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".sock"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(pid, "removing the socket of a session that is gone");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Bind this session's socket, replacing a stale one.
pub fn bind(config: &ConfigDir, claude_pid: u32) -> anyhow::Result<HookSocket> {
    config.ensure_private_dir(&config.run_dir())?;
    remove_stale(&config.run_dir());
    let path = socket_path(config, claude_pid);
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::info!(path = %path.display(), "replaced an earlier hook socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let meta = std::fs::metadata(&path)?;
    Ok(HookSocket {
        listener,
        path,
        uid: meta.uid(),
        inode: meta.ino(),
    })
}

/// Whether the connecting process may act for this session.
fn authorized(stream: &UnixStream, uid: u32, claude_pid: u32) -> bool {
    let Ok(cred) = stream.peer_cred() else {
        return false;
    };
    if cred.uid() != uid {
        return false;
    }
    if !Path::new("/proc/self/stat").exists() {
        return true; // no process tree to check here; the 0600 socket still limits it to this user
    }
    cred.pid()
        .and_then(|p| u32::try_from(p).ok())
        .is_some_and(|p| descends_from(p, claude_pid))
}

/// Serve hook requests until the task is cancelled.
pub async fn serve(socket: HookSocket, peer: Arc<Peer>, claude_pid: u32) {
    loop {
        let stream = match socket.listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "hook socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !authorized(&stream, socket.uid, claude_pid) {
            tracing::warn!("refused a hook connection from outside this session");
            continue;
        }
        if tokio::time::timeout(REQUEST_WAIT, handle(stream, &peer))
            .await
            .is_err()
        {
            tracing::warn!("a hook request timed out");
        }
    }
}

async fn handle(stream: UnixStream, peer: &Arc<Peer>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    if BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await
        .is_err()
    {
        return;
    }
    // Messages the reply shows are marked read only once the reply is written.
    let mut shown = Vec::new();
    let reply = match serde_json::from_str::<HookRequest>(&line) {
        Ok(req) => match req.event.as_str() {
            "session-start" => {
                peer.session_started(&info(&req)).await;
                HookReply {
                    ok: true,
                    ..HookReply::default()
                }
            }
            "prompt-submit" => {
                let (context, ids) = peer.prompt_submitted(&info(&req)).await;
                shown = ids;
                HookReply {
                    ok: true,
                    context: Some(context),
                    ..HookReply::default()
                }
            }
            "stop" => {
                peer.stopped(&info(&req)).await;
                HookReply {
                    ok: true,
                    ..HookReply::default()
                }
            }
            "ping" => HookReply {
                ok: true,
                status: std::iter::once(format!("session {}", peer.display_name))
                    .chain(peer.connection_report())
                    .collect(),
                ..HookReply::default()
            },
            other => HookReply {
                error: Some(format!("unknown hook event '{other}'")),
                ..HookReply::default()
            },
        },
        Err(_) => HookReply {
            error: Some("unreadable hook request".into()),
            ..HookReply::default()
        },
    };
    let Ok(mut bytes) = serde_json::to_vec(&reply) else {
        return;
    };
    bytes.push(b'\n');
    let written = write.write_all(&bytes).await.is_ok() && write.flush().await.is_ok();
    if written && !shown.is_empty() {
        peer.shown.mark_read(&shown);
    }
}
