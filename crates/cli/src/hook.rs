//! Claude Code hooks: `claudemesh hook session-start` (SessionStart), `claudemesh hook
//! prompt-submit` (UserPromptSubmit) and `claudemesh hook stop` (Stop). Each forwards
//! what the server needs from the hook input (the transcript path; whether a person
//! typed the prompt), and its arrival is the evidence that the session is real. A hook reaches its own session's MCP server over the
//! unix socket `CONFIG_DIR/run/<claude pid>.sock`, which that server created (0600 in a
//! 0700 directory) and which accepts only processes of the same user descended from the
//! same Claude Code process. There is no other endpoint, and nothing unauthenticated.
//!
//! A hook must be fast and must never get in Claude's way: it loads no config, opens no
//! network connection, gives up within a few seconds, and always exits 0 (a Stop hook
//! exiting 2 would keep Claude from stopping). When no MCP server runs for this session
//! it prints nothing.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigDir;

/// How long a hook waits for its MCP server.
const REPLY_WAIT: Duration = Duration::from_secs(3);
/// Hook input larger than this is not read (Claude Code sends a small JSON object).
const MAX_INPUT: u64 = 1 << 20;
/// A request line larger than this is refused by the server.
pub const MAX_REQUEST: u64 = 64 * 1024;

/// A hook's request to its session's MCP server (one JSON line).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HookRequest {
    /// `session-start`, `prompt-submit`, `stop` or `ping`.
    pub event: String,
    /// Claude Code's transcript of the session (`transcript_path` of the hook input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_path: Option<String>,
    /// `prompt-submit`: a person typed the prompt (it is not a channel event).
    #[serde(default)]
    pub human: bool,
}

/// The fields of Claude Code's hook input that matter here.
#[derive(Debug, Default, Deserialize)]
struct HookInput {
    #[serde(default)]
    transcript_path: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
}

impl HookInput {
    fn request(self, event: &str) -> HookRequest {
        let human = self
            .prompt
            .as_deref()
            .is_some_and(|p| !p.trim_start().starts_with("<channel"));
        HookRequest {
            event: event.to_owned(),
            transcript_path: self.transcript_path.filter(|p| !p.is_empty()),
            human,
        }
    }
}

/// The server's answer (one JSON line).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HookReply {
    pub ok: bool,
    /// Text to add to the prompt's context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `ping`: the session name and one line per mesh connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<String>,
}

/// The socket of the MCP server serving Claude Code process `pid`.
pub fn socket_path(config: &ConfigDir, pid: u32) -> PathBuf {
    config.run_dir().join(format!("{pid}.sock"))
}

/// The parent of `pid` (Linux `/proc`; elsewhere only this process's parent is known).
pub fn parent_of(pid: u32) -> Option<u32> {
    if pid == std::process::id() {
        return Some(std::os::unix::process::parent_id());
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// How far up a hook's Claude Code process may be: Claude runs hooks through `sh -c`
/// (the hook is 2 levels down) and its Bash tool runs `doctor` the same way. A Claude
/// session started from another session's Bash tool is 4 levels below that outer one,
/// so its hooks can never reach the outer session.
pub const MAX_DEPTH: usize = 3;

/// Whether `ancestor` is `pid` or one of its `MAX_DEPTH` nearest ancestors.
pub fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut current = pid;
    for _ in 0..=MAX_DEPTH {
        if current == ancestor {
            return true;
        }
        match parent_of(current) {
            Some(p) if p != current && p != 0 => current = p,
            _ => return false,
        }
    }
    false
}

/// This hook's session socket: `CLAUDE_PID`'s (Claude Code sets it), else — for an
/// older Claude Code — the nearest of `MAX_DEPTH` ancestors that has one.
fn find_socket(config: &ConfigDir) -> Option<PathBuf> {
    if let Some(pid) = std::env::var("CLAUDE_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    {
        let path = socket_path(config, pid);
        return path.exists().then_some(path);
    }
    let mut pid = std::process::id();
    for _ in 0..MAX_DEPTH {
        pid = parent_of(pid).filter(|p| *p > 1)?;
        let path = socket_path(config, pid);
        if path.exists() {
            return Some(path);
        }
    }
    None
}

/// Send one request to the server at `socket` and read its reply.
pub fn ask(socket: &Path, request: &HookRequest) -> Result<HookReply, String> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach the MCP server at {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(REPLY_WAIT))
        .and_then(|()| stream.set_write_timeout(Some(REPLY_WAIT)))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_string(request).map_err(|e| e.to_string())?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|e| format!("cannot talk to the MCP server: {e}"))?;
    let mut reply = String::new();
    BufReader::new(stream.take(MAX_REQUEST * 4))
        .read_line(&mut reply)
        .map_err(|e| format!("the MCP server did not answer: {e}"))?;
    serde_json::from_str(&reply).map_err(|_| "the MCP server sent an unreadable reply".to_owned())
}

/// Read the hook input Claude Code writes on stdin (all of it, so it never sees a broken
/// pipe); give up quickly if stdin stays open. Unreadable input is an empty one.
fn read_input() -> HookInput {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut input = Vec::new();
        let _ = std::io::stdin().take(MAX_INPUT).read_to_end(&mut input);
        let _ = tx.send(input);
    });
    rx.recv_timeout(Duration::from_millis(300))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// `claudemesh hook EVENT`. Always succeeds; see the module doc.
pub fn run(event: &str) {
    let request = read_input().request(event);
    let Ok(config) = ConfigDir::from_env() else {
        return;
    };
    let Some(socket) = find_socket(&config) else {
        return; // no claudemesh MCP server in this session: nothing to do
    };
    match ask(&socket, &request) {
        Ok(reply) if !reply.ok => {
            eprintln!(
                "claudemesh hook {event}: {}",
                reply.error.unwrap_or_default()
            );
        }
        Ok(reply) => {
            let context = reply.context.filter(|c| !c.is_empty());
            if let (Some(context), "prompt-submit") = (context, event) {
                let out = serde_json::json!({
                    "hookSpecificOutput": {
                        "hookEventName": "UserPromptSubmit",
                        "additionalContext": context,
                    }
                });
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "{out}");
            }
        }
        Err(e) => eprintln!("claudemesh hook {event}: {e}"),
    }
}
