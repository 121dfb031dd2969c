//! The real Claude Code CLI (`claude`, the version pinned in `testdata/claude-code.version`)
//! driving the real `claudemesh mcp` server and hooks, offline: a private temporary HOME,
//! a real broker on port 0, `claudemesh install` run into that HOME with the real `claude`
//! on PATH, and a local stand-in for the Anthropic Messages API that records every request
//! and answers from a script (text, or a `tool_use` of a claudemesh tool).
//!
//! What it proves, with an API key (so Claude Code has no channels, even when started with
//! `--dangerously-load-development-channels server:claudemesh` as `claudemesh launch` does):
//! - a `now` message sent to the session reaches the model exactly once — at the next
//!   prompt, through the prompt hook — and `check_messages` does not show it again;
//! - `claude mcp list` health checks (each spawns the server) leave no ghost peers: the
//!   session stays the only `carol/…` peer, `*` reaches as many peers as before, and
//!   `carol` is not ambiguous;
//! - when the session ends, the server exits on Claude Code's SIGINT/SIGTERM (no SIGKILL
//!   in Claude Code's debug log) and removes its hook socket.
//!
//! Install Claude Code for it locally with `.ci/install-claude-code` (npm; cached in
//! `~/.cache/claudemesh/claude-code/<version>/`), or point `CLAUDEMESH_CLAUDE_CODE` at a
//! `claude` executable. Without either the tests print `SKIPPED: …` and pass, unless
//! `CLAUDEMESH_REQUIRE_CLAUDE_CODE=1` (CI) makes that a failure.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claudemesh_broker::BrokerHandle;
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

/// The pinned Claude Code version.
const VERSION_FILE: &str = include_str!("../../../testdata/claude-code.version");
/// An API key of the right shape; the stand-in accepts anything.
const API_KEY: &str = "sk-ant-test-claudemesh-0123456789abcdefghij";
/// Bound for one turn (includes Claude Code's start and the MCP handshake).
const TURN: Duration = Duration::from_secs(90);
/// Bound for every other wait.
const WAIT: Duration = Duration::from_secs(30);
/// The tools the session may call without a permission prompt.
const ALLOWED_TOOLS: &str =
    "mcp__claudemesh__check_messages,mcp__claudemesh__list_peers,mcp__claudemesh__send_message";

fn version() -> &'static str {
    VERSION_FILE.trim()
}

fn how_to_install() -> String {
    format!(
        "run .ci/install-claude-code to npm-install @anthropic-ai/claude-code@{v} into \
         ~/.cache/claudemesh/claude-code/{v}/, or set CLAUDEMESH_CLAUDE_CODE to a `claude` executable",
        v = version()
    )
}

/// The real `claude`: `CLAUDEMESH_CLAUDE_CODE`, else the pinned version in the cache of the
/// real HOME (read here, before any child gets a HOME of its own).
fn claude_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CLAUDEMESH_CLAUDE_CODE").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    let p = PathBuf::from(home)
        .join(".cache/claudemesh/claude-code")
        .join(version())
        .join("node_modules/.bin/claude");
    p.is_file().then_some(p)
}

/// `claude_bin()`, or `None` after printing why the test is skipped (a panic instead when
/// `CLAUDEMESH_REQUIRE_CLAUDE_CODE=1`).
fn require_claude() -> Option<PathBuf> {
    if let Some(p) = claude_bin() {
        return Some(p);
    }
    if std::env::var("CLAUDEMESH_REQUIRE_CLAUDE_CODE").as_deref() == Ok("1") {
        panic!(
            "CLAUDEMESH_REQUIRE_CLAUDE_CODE=1 but the real Claude Code CLI is not installed: {}",
            how_to_install()
        );
    }
    eprintln!(
        "SKIPPED: real Claude Code CLI not installed ({})",
        how_to_install()
    );
    None
}

/// How many times `needle` occurs in `hay`.
fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

/// Soft assertions: every check is printed, and all failures are reported together at the
/// end, so one run shows every acceptance criterion's state.
#[derive(Default)]
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: &str, detail: impl FnOnce() -> String) {
        if ok {
            eprintln!("PASS: {what}");
        } else {
            let detail = detail();
            eprintln!("FAIL: {what}\n{detail}");
            self.failed.push(format!("{what}\n{detail}"));
        }
    }

    fn finish(self) {
        assert!(
            self.failed.is_empty(),
            "{} check(s) failed:\n\n{}",
            self.failed.len(),
            self.failed.join("\n\n")
        );
    }
}

// ---------------------------------------------------------------------------------------
// The stand-in Messages API
// ---------------------------------------------------------------------------------------

/// What the model answers to the next main-loop request.
#[derive(Debug, Clone)]
enum Reply {
    Text(String),
    /// One `tool_use` block; the turn continues when Claude Code sends the `tool_result`.
    Tool {
        id: String,
        name: String,
        input: Value,
    },
}

fn tool(id: &str, name: &str, input: Value) -> Reply {
    Reply::Tool {
        id: id.to_owned(),
        name: name.to_owned(),
        input,
    }
}

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    body: Value,
}

impl Recorded {
    /// A request of the session's main loop: a message request that offers tools.
    fn is_main(&self) -> bool {
        self.method == "POST"
            && self.path.starts_with("/v1/messages")
            && !self.path.starts_with("/v1/messages/count_tokens")
            && self.body["tools"].as_array().is_some_and(|t| !t.is_empty())
    }

    /// The conversation sent, as JSON text.
    fn messages(&self) -> String {
        self.body["messages"].to_string()
    }
}

/// A scripted reply, optionally held until the test releases it.
struct Scripted {
    reply: Reply,
    hold: Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>,
}

/// The test's side of a held reply: `arrived` fires when the request is in (its prompt
/// hook has run); the reply goes out when `release` is sent or dropped.
struct Held {
    arrived: oneshot::Receiver<()>,
    release: oneshot::Sender<()>,
}

#[derive(Default)]
struct ApiState {
    requests: Vec<Recorded>,
    script: VecDeque<Scripted>,
}

/// A minimal HTTP/1.1 server on 127.0.0.1:0 playing `api.anthropic.com`.
struct Api {
    addr: SocketAddr,
    state: Arc<Mutex<ApiState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Api {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ApiState::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, state).await;
                });
            }
        });
        Self { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queue replies for the next main-loop requests (unscripted ones get "ok").
    fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(
            replies
                .into_iter()
                .map(|reply| Scripted { reply, hold: None }),
        );
    }

    /// Queue a reply that waits for the test: see `Held`.
    fn script_held(&self, reply: Reply) -> Held {
        let (arrived_tx, arrived) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        self.state.lock().unwrap().script.push_back(Scripted {
            reply,
            hold: Some((arrived_tx, release_rx)),
        });
        Held { arrived, release }
    }

    /// A position in the request log.
    fn mark(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    /// The main-loop requests recorded since `mark`.
    fn main_since(&self, mark: usize) -> Vec<Recorded> {
        self.state.lock().unwrap().requests[mark..]
            .iter()
            .filter(|r| r.is_main())
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }
}

/// One connection: requests in turn (keep-alive), each recorded and answered.
async fn serve(stream: TcpStream, state: Arc<Mutex<ApiState>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let (mut length, mut chunked, mut close) = (0usize, false, false);
        loop {
            let mut header = String::new();
            if read.read_line(&mut header).await? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim().to_ascii_lowercase();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" => close = value == "close",
                "expect" if value == "100-continue" => {
                    write.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                }
                _ => {}
            }
        }
        let body = if chunked {
            let mut body = Vec::new();
            loop {
                let mut size = String::new();
                read.read_line(&mut size).await?;
                let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                    .unwrap_or(0);
                let mut chunk = vec![0; size + 2];
                if size == 0 {
                    // Trailers end with an empty line.
                    loop {
                        let mut t = String::new();
                        if read.read_line(&mut t).await? == 0 || t.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                read.read_exact(&mut chunk).await?;
                body.extend_from_slice(&chunk[..size]);
            }
            body
        } else {
            let mut body = vec![0; length];
            read.read_exact(&mut body).await?;
            body
        };
        let body: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        let (content_type, reply) = answer(&state, method, path, body).await;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{}\r\n",
            reply.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        write.write_all(head.as_bytes()).await?;
        write.write_all(reply.as_bytes()).await?;
        write.flush().await?;
        if close {
            return Ok(());
        }
    }
}

/// Log `request`; the scripted reply for it, if it is a main-loop request.
fn record(state: &Mutex<ApiState>, request: Recorded) -> Option<Scripted> {
    let mut state = state.lock().unwrap();
    let scripted = if request.is_main() {
        state.script.pop_front()
    } else {
        None
    };
    state.requests.push(request);
    scripted
}

/// Record the request and build its answer: `(content type, body)`.
async fn answer(
    state: &Mutex<ApiState>,
    method: String,
    path: String,
    body: Value,
) -> (&'static str, String) {
    let request = Recorded { method, path, body };
    let (path, model, stream) = (
        request.path.clone(),
        request.body["model"]
            .as_str()
            .unwrap_or("claude-opus-5-5")
            .to_owned(),
        request.body["stream"] == true,
    );
    let is_messages = request.method == "POST" && path.starts_with("/v1/messages");
    let scripted = record(state, request);
    let reply = match scripted {
        Some(Scripted {
            reply,
            hold: Some((arrived, release)),
        }) => {
            let _ = arrived.send(());
            let _ = tokio::time::timeout(TURN, release).await;
            Some(reply)
        }
        Some(Scripted { reply, hold: None }) => Some(reply),
        None => None,
    };
    if path.starts_with("/v1/messages/count_tokens") {
        return ("application/json", json!({"input_tokens": 10}).to_string());
    }
    if !is_messages {
        return ("application/json", "{}".to_owned());
    }
    let reply = reply.unwrap_or_else(|| Reply::Text("ok".into()));
    let (block, stop) = match &reply {
        Reply::Text(text) => (json!({"type": "text", "text": text}), "end_turn"),
        Reply::Tool { id, name, input } => (
            json!({"type": "tool_use", "id": id, "name": name, "input": input}),
            "tool_use",
        ),
    };
    let usage = json!({"input_tokens": 10, "output_tokens": 5});
    if !stream {
        let message = json!({
            "id": "msg_test", "type": "message", "role": "assistant", "model": model,
            "content": [block], "stop_reason": stop, "stop_sequence": null, "usage": usage,
        });
        return ("application/json", message.to_string());
    }
    let (start, delta) = match &reply {
        Reply::Text(text) => (
            json!({"type": "text", "text": ""}),
            json!({"type": "text_delta", "text": text}),
        ),
        Reply::Tool { id, name, input } => (
            json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
            json!({"type": "input_json_delta", "partial_json": input.to_string()}),
        ),
    };
    let events = [
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_test", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": start}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 5}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    let sse: String = events
        .iter()
        .map(|(event, data)| format!("event: {event}\ndata: {data}\n\n"))
        .collect();
    ("text/event-stream", sse)
}

// ---------------------------------------------------------------------------------------
// The world: broker, mesh, a temporary HOME with Claude Code and claudemesh installed
// ---------------------------------------------------------------------------------------

struct World {
    claude: PathBuf,
    /// Holds `home/`, `work/payments-api/` and the debug logs.
    root: tempfile::TempDir,
    home: PathBuf,
    project: PathBuf,
    path: String,
    api: Api,
    broker: BrokerHandle,
    _broker_dir: tempfile::TempDir,
    alice: User,
    bob: User,
}

impl World {
    /// Broker; alice creates a mesh and invites bob (own config dir) and carol (the temp
    /// HOME's default `~/.claudemesh`, the identity the Claude Code session uses); then
    /// `claudemesh install` with the real `claude` on PATH, and Claude Code's onboarding
    /// and trust answered in `~/.claude.json`.
    async fn new(claude: PathBuf) -> Self {
        let mut root = tempfile::tempdir().unwrap();
        let root_path = std::fs::canonicalize(root.path()).unwrap();
        if std::env::var("CLAUDEMESH_KEEP_TEST_HOME").as_deref() == Ok("1") {
            root.disable_cleanup(true);
        }
        eprintln!(
            "test HOME, project and Claude Code debug logs under {} (CLAUDEMESH_KEEP_TEST_HOME=1 keeps them)",
            root_path.display()
        );
        let home = root_path.join("home");
        let project = root_path.join("work").join("payments-api");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&project).unwrap();
        let cm = PathBuf::from(env!("CARGO_BIN_EXE_claudemesh"));
        let mut path = format!(
            "{}:{}",
            claude.parent().unwrap().display(),
            cm.parent().unwrap().display()
        );
        if let Some(inherited) = std::env::var_os("PATH") {
            path.push(':');
            path.push_str(&inherited.to_string_lossy());
        }
        let api = Api::start().await;
        let (broker, broker_dir) = broker().await;
        let world = Self {
            claude,
            root,
            home,
            project,
            path,
            api,
            broker,
            _broker_dir: broker_dir,
            alice: User::new(),
            bob: User::new(),
        };
        let alice = &world.alice;
        alice
            .json(&[
                "mesh",
                "create",
                "Acme Payments",
                "--broker",
                &world.broker.ws_url(),
                "--as",
                "alice",
            ])
            .await;
        let link = alice.ok(&["invite"]).await.trim().to_owned();
        world.bob.json(&["join", &link, "--name", "bob"]).await;
        let link = alice.ok(&["invite"]).await.trim().to_owned();
        world
            .carol_ok(&["join", &link, "--name", "carol", "--json"])
            .await;

        let installed = world.carol_ok(&["install"]).await;
        assert!(
            installed.contains("claude mcp add"),
            "install should register through the real claude CLI: {installed}"
        );
        world.accept_onboarding();
        world
    }

    /// A command with the child environment: nothing inherited but PATH and TMPDIR (no
    /// CLAUDE_* / CLAUDEMESH_* of an enclosing session), the temp HOME, the stand-in API.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("HOME", &self.home)
            .env("PATH", &self.path)
            .env("USER", "tester")
            .env("LANG", "C.UTF-8")
            .env("ANTHROPIC_BASE_URL", self.api.url())
            .env("ANTHROPIC_API_KEY", API_KEY)
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .current_dir(&self.project)
            .kill_on_drop(true);
        if let Some(tmp) = std::env::var_os("TMPDIR") {
            cmd.env("TMPDIR", tmp);
        }
        cmd
    }

    async fn output(&self, mut cmd: Command, what: &str) -> Output {
        cmd.stdin(Stdio::null());
        tokio::time::timeout(WAIT * 2, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{what} hung"))
            .unwrap()
    }

    /// `claudemesh ARGS` as carol: the temp HOME, default config dir.
    async fn carol_ok(&self, args: &[&str]) -> String {
        let mut cmd = self.command(Path::new(env!("CARGO_BIN_EXE_claudemesh")));
        cmd.args(args);
        let out = self.output(cmd, &format!("claudemesh {args:?}")).await;
        assert!(
            out.status.success(),
            "claudemesh {args:?} (carol) failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `claude ARGS` in the project directory.
    async fn claude(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(&self.claude);
        cmd.args(args);
        self.output(cmd, &format!("claude {args:?}")).await
    }

    fn claude_json(&self) -> PathBuf {
        self.home.join(".claude.json")
    }

    /// `~/.claude.json` as after Claude Code's first run: onboarding done, the API key
    /// approved, the project trusted. Merged into what `claude mcp add` wrote.
    fn accept_onboarding(&self) {
        let path = self.claude_json();
        let mut v: Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| json!({}));
        assert!(
            v["mcpServers"]["claudemesh"].is_object(),
            "claudemesh install did not register the server: {v}"
        );
        v["hasCompletedOnboarding"] = json!(true);
        v["theme"] = json!("dark");
        v["customApiKeyResponses"] = json!({
            "approved": [&API_KEY[API_KEY.len() - 20..]],
            "rejected": [],
        });
        if !v["projects"].is_object() {
            v["projects"] = json!({});
        }
        let project = self.project.display().to_string();
        if !v["projects"][&project].is_object() {
            v["projects"][&project] = json!({});
        }
        v["projects"][&project]["hasTrustDialogAccepted"] = json!(true);
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }

    /// `$HOME/.claudemesh`: carol's config dir, where sessions and hook sockets live.
    fn claudemesh_dir(&self) -> PathBuf {
        self.home.join(".claudemesh")
    }

    /// Start a multi-turn `claude -p` session reading stream-json prompts from stdin.
    fn session(&self, name: &str, channels_flag: bool) -> Session {
        let debug = self.root.path().join(format!("{name}.debug.log"));
        let mut cmd = self.command(&self.claude);
        cmd.args([
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
            "--allowedTools",
            ALLOWED_TOOLS,
        ]);
        if channels_flag {
            // What `claudemesh launch` passes.
            cmd.args([
                "--dangerously-load-development-channels",
                "server:claudemesh",
            ]);
        }
        cmd.arg("--debug-file")
            .arg(&debug)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let v = serde_json::from_str::<Value>(&line).unwrap_or(Value::String(line));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let err = Arc::new(Mutex::new(String::new()));
        let sink = err.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Session {
            child,
            stdin: Some(stdin),
            lines,
            debug,
            stderr: err,
            turns: 0,
        }
    }

    /// `bob: claudemesh ARGS --json`. Every CLI command is a fresh hello and the broker
    /// allows a member 1 hello/s (burst 30), so a refusal for that is waited out.
    async fn bob_json(&self, args: &[&str]) -> Value {
        let mut with = args.to_vec();
        with.push("--json");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let out = self.bob.run(&with).await;
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            if out.status.success() {
                return serde_json::from_str(stdout.trim())
                    .unwrap_or_else(|e| panic!("{with:?}: not JSON ({e}): {stdout}"));
            }
            assert!(
                stderr.contains("rate_limited") && tokio::time::Instant::now() < deadline,
                "claudemesh {with:?} (bob) failed:\nstdout: {stdout}\nstderr: {stderr}"
            );
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }

    /// bob's view of the online peers.
    async fn peers(&self) -> Vec<Value> {
        self.bob_json(&["peers"]).await.as_array().unwrap().clone()
    }

    /// The display names of carol's online sessions, as bob sees them.
    async fn carol_sessions(&self) -> Vec<String> {
        self.peers()
            .await
            .iter()
            .filter_map(|p| p["displayName"].as_str())
            .filter(|n| n.starts_with("carol/"))
            .map(str::to_owned)
            .collect()
    }

    /// Wait until bob sees the session `carol/payments-api` online (polling once a
    /// second, bob's sustained hello rate).
    async fn wait_for_session_peer(&self, session: &Session) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let peers = self.peers().await;
            if peers
                .iter()
                .any(|p| p["displayName"] == "carol/payments-api")
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the session never came online as carol/payments-api; peers: {}\nsession dirs: {:?}\n{}",
                Value::Array(peers),
                self.session_dirs(),
                session.diagnostics()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The session directories under `$HOME/.claudemesh/sessions/`.
    fn session_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.claudemesh_dir().join("sessions"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// `(session dir, read flag)` of every inbox record whose text contains `marker`.
    fn inbox_records(&self, marker: &str) -> Vec<(String, i64)> {
        let mut found = Vec::new();
        for dir in self.session_dirs() {
            let db = dir.join("inbox.db");
            if !db.exists() {
                continue;
            }
            let Ok(conn) = rusqlite::Connection::open_with_flags(
                &db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
            ) else {
                continue;
            };
            let _ = conn.busy_timeout(Duration::from_secs(1));
            let Ok(mut stmt) = conn.prepare("SELECT read FROM messages WHERE instr(text, ?1) > 0")
            else {
                continue;
            };
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            if let Ok(rows) = stmt.query_map([marker], |r| r.get::<_, i64>(0)) {
                found.extend(rows.flatten().map(|read| (name.clone(), read)));
            }
        }
        found
    }

    /// Wait (bounded) until the session's server has recorded the message with `marker`.
    /// Not an assertion: if it never shows, the model-side checks tell what happened.
    async fn wait_for_inbox(&self, marker: &str) -> Vec<(String, i64)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let found = self.inbox_records(marker);
            if !found.is_empty() {
                return found;
            }
            if tokio::time::Instant::now() >= deadline {
                eprintln!("note: the message never showed in a session inbox.db within 15 s");
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `bob: claudemesh send TO TEXT [--priority P] --json`.
    async fn bob_send(&self, to: &str, text: &str, priority: &str) -> Value {
        self.bob_json(&["send", to, text, "--priority", priority])
            .await
    }
}

/// One `claude -p --input-format stream-json` process.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<Value>,
    debug: PathBuf,
    stderr: Arc<Mutex<String>>,
    turns: usize,
}

impl Session {
    /// Send one user prompt and wait for the turn's `result` line; returns it.
    async fn turn(&mut self, prompt: &str) -> Value {
        let line = json!({"type": "user", "message": {"role": "user", "content": prompt}});
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
        self.turns += 1;
        let deadline = tokio::time::Instant::now() + TURN;
        loop {
            let v = match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(v)) => v,
                Ok(None) => panic!(
                    "claude exited during turn {} ({prompt:?})\n{}",
                    self.turns,
                    self.diagnostics()
                ),
                Err(_) => panic!(
                    "turn {} ({prompt:?}) got no result within {TURN:?}\n{}",
                    self.turns,
                    self.diagnostics()
                ),
            };
            if v["type"] == "result" {
                assert!(
                    v["is_error"] != true,
                    "turn {} ended in an error: {v}\n{}",
                    self.turns,
                    self.diagnostics()
                );
                return v;
            }
        }
    }

    fn debug_log(&self) -> String {
        std::fs::read_to_string(&self.debug).unwrap_or_default()
    }

    /// The debug log's lines about hooks, MCP servers and channels, and claude's stderr.
    fn diagnostics(&self) -> String {
        let log = self.debug_log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("Hooks:")
                    || l.contains("claudemesh")
                    || l.contains("hannel")
                    || l.contains("ERROR")
            })
            .collect();
        format!(
            "--- debug log ({}), relevant lines:\n{}\n--- claude stderr:\n{}",
            self.debug.display(),
            lines.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// Wait until the debug log has `n` lines containing all of `parts` (the log is
    /// written asynchronously). Returns how many it has.
    async fn wait_log(&self, parts: &[&str], n: usize) -> usize {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let found = self
                .debug_log()
                .lines()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .count();
            if found >= n || tokio::time::Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Close stdin (ends the session) and wait for claude to exit.
    async fn close(&mut self) -> ExitStatus {
        drop(self.stdin.take());
        match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "claude did not exit within {WAIT:?} of stdin closing\n{}",
                self.diagnostics()
            ),
        }
    }
}

/// The `tool_result` blocks in a request's conversation answering `tool_use_id`, as text.
fn tool_results(request: &Recorded, tool_use_id: &str) -> Vec<String> {
    let mut out = Vec::new();
    for message in request.body["messages"].as_array().into_iter().flatten() {
        for block in message["content"].as_array().into_iter().flatten() {
            if block["type"] == "tool_result" && block["tool_use_id"] == tool_use_id {
                out.push(match &block["content"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            }
        }
    }
    out
}

/// Start the world and a session through turn 1; the session is online as
/// `carol/payments-api` when this returns.
async fn world_with_session(claude: PathBuf, channels_flag: bool) -> (World, Session) {
    let world = World::new(claude).await;
    let mut session = world.session("session", channels_flag);
    world
        .api
        .script([Reply::Text("hello from the model".into())]);
    let mark = world.api.mark();
    let result = session.turn("hello").await;
    assert_eq!(result["result"], "hello from the model", "{result}");
    assert!(
        !world.api.main_since(mark).is_empty(),
        "turn 1 never reached the stand-in API"
    );
    world.wait_for_session_peer(&session).await;
    (world, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_unavailable_message_reaches_the_model_once() {
    let Some(claude) = require_claude() else {
        return;
    };
    let (world, mut session) = world_with_session(claude, true).await;
    let mut checks = Checks::default();

    // The harness itself: our hooks ran in stream-json mode, for turn 1.
    let hooks = session
        .wait_log(
            &["Hooks: UserPromptSubmit", "hook prompt-submit", "status 0"],
            1,
        )
        .await;
    assert!(
        hooks >= 1,
        "the claudemesh prompt hook did not run in turn 1\n{}",
        session.diagnostics()
    );

    // bob sends a `now` message to the session between turns.
    let marker = format!(
        "marker-{:016x}-ledger-reconciliation",
        rand::random::<u64>()
    );
    let sent = world
        .bob_send("carol/payments-api", &format!("{marker} is ready"), "now")
        .await;
    assert_eq!(sent["recipients"], 1, "{sent}");
    let records = world.wait_for_inbox(&marker).await;
    eprintln!("inbox records of the message before turn 2 (session dir, read): {records:?}");

    // Turn 2: any prompt. The message is hook context of exactly this request.
    let mark = world.api.mark();
    world.api.script([Reply::Text("noted".into())]);
    session.turn("what is next?").await;
    let turn2 = world.api.main_since(mark);
    let last2 = turn2.last().expect("turn 2 reached the API");
    let n = count(&last2.messages(), &marker);
    checks.check(
        n == 1,
        "turn 2: the model is sent the message exactly once (prompt hook context)",
        || {
            format!(
                "the marker occurs {n} times in turn 2's request; inbox (dir, read) before the turn: {records:?}\n{}",
                session.diagnostics()
            )
        },
    );

    // Turn 3: the model calls check_messages; the result does not show the message again.
    let mark = world.api.mark();
    world.api.script([
        tool(
            "toolu_check_1",
            "mcp__claudemesh__check_messages",
            json!({}),
        ),
        Reply::Text("nothing else".into()),
    ]);
    let result = session.turn("any other messages?").await;
    let denials = result["permission_denials"].clone();
    assert!(
        denials.as_array().is_none_or(Vec::is_empty),
        "check_messages was not allowed: {denials}"
    );
    let turn3 = world.api.main_since(mark);
    assert!(
        turn3.len() >= 2,
        "turn 3 should be two requests (tool_use, then tool_result): {}",
        turn3.len()
    );
    let last3 = turn3.last().unwrap();
    let results = tool_results(last3, "toolu_check_1");
    assert_eq!(
        results.len(),
        1,
        "the check_messages tool_result came back once: {results:?}"
    );
    let shown = &results[0];
    eprintln!("check_messages tool_result: {shown}");
    checks.check(
        !shown.contains(&marker),
        "turn 3: check_messages does not show the message again",
        || format!("tool_result: {shown}"),
    );
    checks.check(
        shown.contains("No new messages"),
        "turn 3: check_messages says \"No new messages\"",
        || format!("tool_result: {shown}"),
    );
    let total = count(&last3.messages(), &marker);
    checks.check(
        total == 1,
        "the final request holds the message exactly once overall",
        || format!("the marker occurs {total} times in the final request's conversation"),
    );

    let status = session.close().await;
    eprintln!("claude exited: {status}");
    checks.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_unavailable_message_arriving_mid_turn_is_pulled_once_by_check_messages() {
    let Some(claude) = require_claude() else {
        return;
    };
    let (world, mut session) = world_with_session(claude, true).await;
    let mut checks = Checks::default();
    let marker = format!("marker-{:016x}-refund-queue-drained", rand::random::<u64>());

    // Turn 2: the model's first answer is held until the message has reached the server,
    // so the prompt hook of this turn ran before it existed; then it calls check_messages.
    let mark = world.api.mark();
    let held = world.api.script_held(tool(
        "toolu_check_2",
        "mcp__claudemesh__check_messages",
        json!({}),
    ));
    world.api.script([Reply::Text("pulled it".into())]);
    let mid_turn = async {
        tokio::time::timeout(TURN, held.arrived)
            .await
            .expect("turn 2 never reached the API")
            .unwrap();
        let sent = world
            .bob_send("carol/payments-api", &format!("{marker} at 14:02"), "now")
            .await;
        assert_eq!(sent["recipients"], 1, "{sent}");
        let records = world.wait_for_inbox(&marker).await;
        eprintln!(
            "inbox records of the message before check_messages (session dir, read): {records:?}"
        );
        let _ = held.release.send(());
        records
    };
    let (result, records) = tokio::join!(session.turn("check the mesh"), mid_turn);
    assert!(
        result["permission_denials"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "check_messages was not allowed: {result}"
    );
    let turn2 = world.api.main_since(mark);
    assert!(turn2.len() >= 2, "turn 2: tool_use, then tool_result");
    assert_eq!(
        count(&turn2[0].messages(), &marker),
        0,
        "the message was sent only after turn 2's first request"
    );
    let last2 = turn2.last().unwrap();
    let results = tool_results(last2, "toolu_check_2");
    assert_eq!(results.len(), 1, "{results:?}");
    let shown = &results[0];
    eprintln!("check_messages tool_result: {shown}");
    let n = count(shown, &marker);
    checks.check(
        n == 1,
        "turn 2: check_messages shows the message that arrived mid-turn, once",
        || {
            format!(
                "tool_result ({n} occurrences): {shown}\ninbox (dir, read) before the call: {records:?}\n{}",
                session.diagnostics()
            )
        },
    );
    let total = count(&last2.messages(), &marker);
    checks.check(
        total == 1,
        "turn 2: the conversation holds the message exactly once",
        || format!("{total} occurrences"),
    );

    // Turn 3: the prompt hook does not add it again.
    let mark = world.api.mark();
    world.api.script([Reply::Text("ok".into())]);
    session.turn("thanks").await;
    let last3 = world
        .api
        .main_since(mark)
        .pop()
        .expect("turn 3 reached the API");
    let total = count(&last3.messages(), &marker);
    checks.check(
        total == 1,
        "turn 3: still exactly once (the prompt hook does not repeat it)",
        || format!("{total} occurrences in turn 3's request"),
    );

    session.close().await;
    checks.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_leave_no_ghost_peers() {
    let Some(claude) = require_claude() else {
        return;
    };
    let (world, mut session) = world_with_session(claude, false).await;
    let mut checks = Checks::default();

    let before_peers = world.carol_sessions().await;
    let before = world.bob_send("*", "test", "next").await;
    let dirs_before = world.session_dirs().len();
    eprintln!(
        "before: carol sessions {before_peers:?}, `send '*'` recipients {}, session dirs {dirs_before}",
        before["recipients"]
    );

    for i in 1..=5 {
        let out = world.claude(&["mcp", "list"]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "claude mcp list #{i} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find(|l| l.starts_with("claudemesh:"))
            .unwrap_or_else(|| panic!("claude mcp list #{i} does not list claudemesh: {stdout}"));
        assert!(line.contains("Connected"), "claude mcp list #{i}: {line}");
    }

    let after_peers = world.carol_sessions().await;
    checks.check(
        after_peers.len() == 1,
        "after 5 `claude mcp list`: bob sees exactly one carol session",
        || format!("carol sessions online: {after_peers:?}"),
    );
    let after = world.bob_send("*", "test", "next").await;
    checks.check(
        after["recipients"] == before["recipients"],
        "after 5 `claude mcp list`: `send '*'` reaches as many peers as before",
        || format!("before: {before}\nafter: {after}"),
    );
    let out = world.bob.run(&["send", "carol", "hi"]).await;
    checks.check(
        out.status.success(),
        "after 5 `claude mcp list`: `send carol hi` is not ambiguous",
        || {
            format!(
                "stdout: {}stderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        },
    );
    // Reported, not asserted: what the health checks left on disk.
    eprintln!(
        "session dirs under $HOME/.claudemesh/sessions: {dirs_before} before, {} after the health checks",
        world.session_dirs().len()
    );

    session.close().await;
    checks.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_exit_is_clean() {
    let Some(claude) = require_claude() else {
        return;
    };
    let (world, mut session) = world_with_session(claude, true).await;
    let mut checks = Checks::default();
    let run = world.claudemesh_dir().join("run");
    let socks = || -> Vec<String> {
        std::fs::read_dir(&run)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".sock"))
                    .collect()
            })
            .unwrap_or_default()
    };
    eprintln!("hook sockets while the session runs: {:?}", socks());

    let status = session.close().await;
    eprintln!("claude exited: {status}");
    // The shutdown lines are written just before exit; make sure we read them.
    let connected = session
        .wait_log(&["MCP server \"claudemesh\"", "Successfully connected"], 1)
        .await;
    assert!(
        connected >= 1,
        "the debug log never shows the server connected\n{}",
        session.diagnostics()
    );
    let log = session.debug_log();
    let shutdown: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("MCP server \"claudemesh\"") && l.contains("SIG"))
        .collect();
    eprintln!("shutdown lines:\n{}", shutdown.join("\n"));
    let killed: Vec<&&str> = shutdown.iter().filter(|l| l.contains("SIGKILL")).collect();
    checks.check(
        killed.is_empty(),
        "session exit: Claude Code did not have to SIGKILL the claudemesh server",
        || shutdown.join("\n"),
    );
    // The server may still be finishing after claude's exit; give it a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut left = socks();
    while !left.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = socks();
    }
    checks.check(
        left.is_empty(),
        "session exit: no hook socket left in $HOME/.claudemesh/run/",
        || format!("left: {left:?}"),
    );
    // Nothing above may pass vacuously: the API saw the session.
    assert!(world.api.all().iter().any(Recorded::is_main));
    checks.finish();
}
