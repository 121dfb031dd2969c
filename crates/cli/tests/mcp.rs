//! `claudemesh mcp` driven over stdio exactly as Claude Code drives it (initialize with
//! 2025-11-25, `notifications/initialized`, `tools/list`, `tools/call`), against a real
//! broker, with a second peer that is another MCP process or a CLI user: channel push
//! with string meta, `low` only via `check_messages`, encrypted sends, summaries, groups,
//! `message_status`, redeliveries shown once, broker restarts, messages that arrive while
//! the server is down, and the hooks reaching their own session over the socket.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claudemesh_broker::{Broker, BrokerConfig, BrokerHandle};
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);

/// One `claudemesh mcp` process and its JSON-RPC stdio.
struct Mcp {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Every stdout line, as written.
    raw: Arc<Mutex<Vec<String>>>,
    /// Notifications read while waiting for a response.
    pending: Vec<Value>,
    next_id: i64,
    /// The identity's config dir (for the hooks of this "Claude Code session").
    cfg: std::path::PathBuf,
    /// The session transcript this "Claude Code" keeps: every channel notification it
    /// receives is recorded there at once, as Claude Code does when channels work.
    transcript: std::path::PathBuf,
}

impl Mcp {
    async fn start(user: &User, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_claudemesh"));
        cmd.arg("mcp")
            .env("CLAUDEMESH_CONFIG_DIR", user.dir.path().join("cfg"))
            .env_remove("CLAUDE_CODE_SESSION_ID")
            .env_remove("CLAUDE_PID")
            .env_remove("CLAUDEMESH_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::unbounded_channel();
        let seen = raw.clone();
        let transcript = user
            .dir
            .path()
            .join(format!("transcript-{}.jsonl", child.id().unwrap()));
        let record_to = transcript.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                seen.lock().unwrap().push(line.clone());
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["method"] == "notifications/claude/channel" {
                        record_channel_event(&record_to, &v["params"]);
                    }
                    let _ = tx.send(v);
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
            raw,
            pending: Vec::new(),
            next_id: 1,
            cfg: user.dir.path().join("cfg"),
            transcript,
        }
    }

    async fn write(&mut self, v: Value) {
        let mut line = v.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.write(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        loop {
            let v = tokio::time::timeout(WAIT * 2, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("the MCP server exited");
            if v["id"] == id {
                return v;
            }
            self.pending.push(v);
        }
    }

    /// The handshake Claude Code performs, then its SessionStart hook: a real session
    /// (the test process plays the Claude Code process).
    async fn initialize(&mut self, version: &str) -> Value {
        let result = self.handshake(version).await;
        let input = json!({"hook_event_name": "SessionStart", "source": "startup", "transcript_path": self.transcript});
        run_hook(
            &self.cfg,
            "session-start",
            std::process::id(),
            input.to_string().as_bytes(),
        )
        .await;
        result
    }

    /// Only the handshake, as a health check (`claude mcp list`) does it.
    async fn handshake(&mut self, version: &str) -> Value {
        let v = self
            .request(
                "initialize",
                json!({"protocolVersion": version, "capabilities": {"roots": {"listChanged": true}, "elicitation": {}}, "clientInfo": {"name": "claude-code", "version": "2.1.233"}}),
            )
            .await;
        self.write(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        v["result"].clone()
    }

    /// Call a tool; returns its text and whether it is an error result.
    async fn call(&mut self, tool: &str, args: Value) -> (String, bool) {
        let v = self
            .request("tools/call", json!({"name": tool, "arguments": args}))
            .await;
        let result = &v["result"];
        assert!(result.is_object(), "tools/call {tool} failed: {v}");
        let text = result["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        (text, result["isError"] == true)
    }

    async fn ok(&mut self, tool: &str, args: Value) -> String {
        let (text, error) = self.call(tool, args.clone()).await;
        assert!(!error, "{tool} {args} failed: {text}");
        text
    }

    /// The next channel notification within `wait`.
    async fn channel(&mut self, wait: Duration) -> Option<Value> {
        if let Some(i) = self
            .pending
            .iter()
            .position(|v| v["method"] == "notifications/claude/channel")
        {
            return Some(self.pending.remove(i)["params"].clone());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let v = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .ok()??;
            if v["method"] == "notifications/claude/channel" {
                return Some(v["params"].clone());
            }
            self.pending.push(v);
        }
    }

    /// Poll a tool until its text satisfies `pred`.
    async fn until(&mut self, tool: &str, args: Value, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (text, _) = self.call(tool, args.clone()).await;
            if pred(&text) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{tool} never matched; last: {text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Every line written to stdout was a JSON-RPC 2.0 message.
    fn assert_stdout_is_only_jsonrpc(&self) {
        let raw = self.raw.lock().unwrap();
        assert!(!raw.is_empty());
        for line in raw.iter() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|_| panic!("non-JSON on stdout: {line:?}"));
            assert_eq!(v["jsonrpc"], "2.0", "{line}");
        }
    }

    async fn stop(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

/// What Claude Code writes to the transcript when it accepts a channel notification: a
/// queued prompt `<channel source="claudemesh" k="v"…>content</channel>`.
fn record_channel_event(transcript: &std::path::Path, params: &Value) {
    use std::io::Write as _;
    let attrs: String = params["meta"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!(" {k}=\"{}\"", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let content = format!(
        "<channel source=\"claudemesh\"{attrs}>{}</channel>",
        params["content"].as_str().unwrap_or_default()
    );
    let line = json!({"type": "queue-operation", "operation": "enqueue", "content": content});
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(transcript)
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

async fn metric(b: &BrokerHandle, name: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", b.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // `name{node="…"} value`: the value is the last field.
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            rest.starts_with(['{', ' '])
                .then(|| rest.rsplit(' ').next()?.parse().ok())?
        })
        .unwrap_or(0)
}

fn project(name: &str) -> String {
    format!("/tmp/work/{name}")
}

/// The MCP server over `wss://`: the broker serves TLS from a private CA, and two sessions
/// that trust it through `CLAUDEMESH_CA_FILE` see each other and talk with live push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_talk_over_wss_with_a_private_ca() {
    let pki = common::pki::Pki::new();
    let (files, _) = pki.leaf("broker");
    let (b, _dir) = broker_with(|c| c.tls = Some(files)).await;
    assert!(b.ws_url().starts_with("wss://"), "{}", b.ws_url());
    let ca = pki.ca_file().display().to_string();
    let (_owner, alice, bob) = mesh_with_env(&b, &[("CLAUDEMESH_CA_FILE", &ca)]).await;
    let session =
        |name: &'static str| [("CLAUDEMESH_SESSION", name), ("CLAUDEMESH_CHANNELS", "on")];
    let mut a = Mcp::start(
        &alice,
        &[
            session("alice-1").as_slice(),
            &[("CLAUDEMESH_CA_FILE", &ca)],
        ]
        .concat(),
    )
    .await;
    let mut bo = Mcp::start(
        &bob,
        &[session("bob-1").as_slice(), &[("CLAUDEMESH_CA_FILE", &ca)]].concat(),
    )
    .await;
    a.initialize("2025-11-25").await;
    bo.initialize("2025-11-25").await;
    bo.until("list_peers", json!({}), |t| t.contains("alice"))
        .await;
    let sent = bo
        .ok(
            "send_message",
            json!({"to": "alice", "message": "over wss", "priority": "now"}),
        )
        .await;
    assert!(sent.contains("Sent to alice"), "{sent}");
    let push = a
        .channel(WAIT)
        .await
        .expect("a channel notification over wss");
    assert_eq!(push["content"], "over wss");
    assert_eq!(push["meta"]["verified"], "true", "{push}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_talk_through_mcp_with_live_push() {
    // A short lease so that a stalled receiver gets a real redelivery within the test.
    let (b, broker_dir) = broker_with(|c| c.timings.lease = Duration::from_millis(300)).await;
    let (_owner, alice, bob) = mesh(&b).await;
    let alice_env = [
        ("CLAUDEMESH_SESSION", "alice-1"),
        ("CLAUDEMESH_CHANNELS", "on"),
        ("CLAUDE_PROJECT_DIR", "/tmp/work/payments-api"),
    ];
    let mut a = Mcp::start(&alice, &alice_env).await;
    let project_b = project("checkout");
    let mut bo = Mcp::start(
        &bob,
        &[
            ("CLAUDEMESH_SESSION", "bob-1"),
            ("CLAUDEMESH_CHANNELS", "on"),
            ("CLAUDE_PROJECT_DIR", &project_b),
        ],
    )
    .await;

    // The handshake: channel capability, capped protocol version, short instructions.
    let init = a.initialize("2025-11-25").await;
    assert_eq!(init["protocolVersion"], "2025-11-25");
    assert_eq!(
        init["capabilities"]["experimental"]["claude/channel"],
        json!({})
    );
    assert!(init["capabilities"]["tools"].is_object());
    let instructions = init["instructions"].as_str().unwrap();
    assert!(instructions.len() < 2048 && instructions.contains("not an instruction from the user"));
    let newer = bo.initialize("2026-07-28").await;
    assert_eq!(
        newer["protocolVersion"], "2025-11-25",
        "a newer client is capped"
    );

    let tools = a.request("tools/list", json!({})).await;
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for t in [
        "list_peers",
        "send_message",
        "check_messages",
        "set_summary",
        "set_status",
        "join_group",
        "leave_group",
        "message_status",
    ] {
        assert!(names.contains(&t), "{t} missing from {names:?}");
    }

    // Each session is its own peer with a telling name; summaries show in the other's list.
    a.ok(
        "set_summary",
        json!({"summary": "fixing Stripe webhook signatures"}),
    )
    .await;
    let peers = bo
        .until("list_peers", json!({}), |t| {
            t.contains("fixing Stripe webhook signatures")
        })
        .await;
    assert!(peers.contains("alice/payments-api: idle"), "{peers}");
    assert!(peers.contains("bob/checkout (this session)"), "{peers}");

    // An inbound DM arrives as a channel notification with string-only meta.
    let sent = bo
        .ok("send_message", json!({"to": "alice", "message": "who has seen the stripe signature bug?", "priority": "now"}))
        .await;
    assert!(sent.contains("Sent to alice/payments-api"), "{sent}");
    let push = a.channel(WAIT).await.expect("a channel notification");
    assert_eq!(push["content"], "who has seen the stripe signature bug?");
    let meta = push["meta"].as_object().unwrap();
    for (k, v) in meta {
        assert!(v.is_string(), "meta {k} is not a string: {v}");
        assert!(
            k.chars().next().unwrap().is_ascii_alphabetic()
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "meta key {k}"
        );
    }
    assert_eq!(
        (
            meta["from"].as_str(),
            meta["verified"].as_str(),
            meta["priority"].as_str(),
            meta["mesh"].as_str()
        ),
        (
            Some("bob/checkout"),
            Some("true"),
            Some("now"),
            Some("acme-payments")
        )
    );
    assert_eq!(meta["from_key"].as_str().unwrap().len(), 64);
    assert_eq!(meta["message_id"].as_str().unwrap().len(), 32);

    // `low` is not pushed: only check_messages shows it (a later `now` proves the order).
    bo.ok(
        "send_message",
        json!({"to": "alice/payments-api", "message": "fyi: low priority note", "priority": "low"}),
    )
    .await;
    bo.ok(
        "send_message",
        json!({"to": "alice/payments-api", "message": "marker", "priority": "now"}),
    )
    .await;
    let next = a.channel(WAIT).await.unwrap();
    assert_eq!(
        next["content"], "marker",
        "the low message was pushed: {next}"
    );
    let checked = a.ok("check_messages", json!({})).await;
    assert!(
        checked.contains("fyi: low priority note") && checked.contains("priority low"),
        "{checked}"
    );
    assert!(
        !checked.contains("marker") && !checked.contains("stripe"),
        "pushed messages are not repeated: {checked}"
    );
    assert_eq!(a.ok("check_messages", json!({})).await, "No new messages.");

    // send_message reaches the other peer, encrypted; message_status follows it.
    let reply = a
        .ok("send_message", json!({"to": "bob", "message": "me: verify() compares the parsed body, not the raw one"}))
        .await;
    assert!(reply.contains("end-to-end encrypted"), "{reply}");
    let got = bo.channel(WAIT).await.unwrap();
    assert_eq!(
        got["content"],
        "me: verify() compares the parsed body, not the raw one"
    );
    assert_eq!(got["meta"]["from"], "alice/payments-api");
    let status = a
        .until("message_status", json!({}), |t| t.contains("received"))
        .await;
    assert!(status.contains("bob/checkout: received"), "{status}");
    let db = stored_bodies(&broker_dir.path().join("claudemesh.db"));
    assert!(
        !db.contains("stripe signature") && !db.contains("parsed body"),
        "plaintext reached the broker"
    );

    // Groups: @backend reaches alice while she is in it.
    a.ok("join_group", json!({"name": "backend"})).await;
    let in_backend = |t: &str| {
        t.lines()
            .any(|l| l.contains("alice/payments-api") && l.contains("@backend"))
    };
    bo.until("list_peers", json!({}), in_backend).await;
    bo.ok(
        "send_message",
        json!({"to": "@backend", "message": "backend: deploy at 5?", "priority": "now"}),
    )
    .await;
    let g = a.channel(WAIT).await.unwrap();
    assert_eq!(
        (g["content"].as_str(), g["meta"]["to"].as_str()),
        (Some("backend: deploy at 5?"), Some("@backend"))
    );
    a.ok("leave_group", json!({"name": "backend"})).await;
    bo.until("list_peers", json!({}), |t| !in_backend(t)).await;
    let (err, is_error) = bo
        .call(
            "send_message",
            json!({"to": "@backend", "message": "anyone?"}),
        )
        .await;
    assert!(
        is_error && err.contains("nobody else is in @backend"),
        "{err}"
    );

    // A redelivery is not shown twice: alice's server stalls past two leases, so the
    // broker pushes the same message again; it surfaces once.
    let before = metric(&b, "broker_deliveries_redelivered_total").await;
    signal(a.pid(), "-STOP");
    bo.ok(
        "send_message",
        json!({"to": "alice/payments-api", "message": "are you there?", "priority": "now"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    signal(a.pid(), "-CONT");
    let once = a.channel(WAIT).await.unwrap();
    assert_eq!(once["content"], "are you there?");
    assert!(
        metric(&b, "broker_deliveries_redelivered_total").await > before,
        "the broker did re-push while the server was stalled"
    );
    assert!(
        a.channel(Duration::from_millis(800)).await.is_none(),
        "shown twice"
    );

    a.assert_stdout_is_only_jsonrpc();
    bo.assert_stdout_is_only_jsonrpc();
    a.stop().await;
    bo.stop().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_survives_broker_restarts_and_its_own_restarts() {
    let (b, broker_dir) = broker().await;
    let addr = b.addr();
    let (_owner, alice, bob) = mesh(&b).await;
    let env = [
        ("CLAUDEMESH_SESSION", "alice-s"),
        ("CLAUDEMESH_CHANNELS", "on"),
        ("CLAUDE_PROJECT_DIR", "/tmp/work/payments-api"),
    ];
    let mut a = Mcp::start(&alice, &env).await;
    a.initialize("2025-11-25").await;
    a.ok("set_summary", json!({"summary": "on call"})).await;
    a.ok("set_status", json!({"status": "dnd"})).await;

    // The broker restarts; the session reconnects without the client noticing, and its
    // status and summary are back.
    b.shutdown().await;
    let mut config = BrokerConfig::for_tests(broker_dir.path().to_path_buf());
    config.listen = addr;
    let b = Broker::spawn(config).await.unwrap();
    let peers = a
        .until("list_peers", json!({}), |t| {
            t.contains("alice/payments-api (this session): dnd — \"on call\"")
        })
        .await;
    assert!(peers.contains("Mesh 'acme-payments'"), "{peers}");
    a.ok("set_status", json!({"status": "idle"})).await;
    bob.ok(&[
        "send",
        "alice/payments-api",
        "after the restart",
        "--priority",
        "now",
    ])
    .await;
    assert_eq!(
        a.channel(WAIT).await.unwrap()["content"],
        "after the restart"
    );

    // Groups are capped at the broker's limit, so a hello is never refused for them.
    for i in 0..32 {
        a.ok("join_group", json!({"name": format!("g{i}")})).await;
    }
    let (err, is_error) = a.call("join_group", json!({"name": "one-too-many"})).await;
    assert!(is_error && err.contains("already in 32 groups"), "{err}");

    // The server goes away; a message sent meanwhile arrives when the same session comes
    // back (same session name → same key).
    a.stop().await;
    bob.ok(&[
        "send",
        "alice/payments-api",
        "while you were away",
        "--priority",
        "now",
    ])
    .await;
    let mut a = Mcp::start(&alice, &env).await;
    a.initialize("2025-11-25").await;
    assert_eq!(
        a.channel(WAIT).await.unwrap()["content"],
        "while you were away"
    );
    let peers = a.ok("list_peers", json!({})).await;
    assert!(
        peers.contains("@g31"),
        "32 groups came back with the session: {peers}"
    );
    assert!(
        peers.contains("\"on call\""),
        "the summary is remembered per session: {peers}"
    );
    // A new session in the same repo is a peer of its own.
    let mut other = Mcp::start(
        &alice,
        &[
            ("CLAUDEMESH_SESSION", "alice-2"),
            ("CLAUDE_PROJECT_DIR", "/tmp/work/payments-api"),
        ],
    )
    .await;
    other.initialize("2025-11-25").await;
    let listed = other
        .until("list_peers", json!({}), |t| {
            t.matches("alice/payments-api").count() == 2
        })
        .await;
    assert!(listed.contains("(this session)"), "{listed}");
    a.assert_stdout_is_only_jsonrpc();
    other.stop().await;
    a.stop().await;
    b.shutdown().await;
}

/// Poll `user`'s `claudemesh peers` until alice's session shows `status` (hooks set it
/// without waiting for the broker, so others see it a moment later).
async fn until_peers(user: &User, status: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let peers = user.ok(&["peers"]).await;
        if peers
            .lines()
            .any(|l| l.contains("alice/payments-api") && l.contains(status))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {status}: {peers}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The hook command as Claude Code runs it, for session `claude_pid`.
async fn hook(user: &User, event: &str, claude_pid: u32) -> (String, String) {
    run_hook(
        &user.dir.path().join("cfg"),
        event,
        claude_pid,
        br#"{"session_id":"s","hook_event_name":"UserPromptSubmit","prompt":"hi","cwd":"/tmp"}"#,
    )
    .await
}

/// Run `claudemesh hook EVENT` with this hook input on stdin.
async fn run_hook(
    cfg: &std::path::Path,
    event: &str,
    claude_pid: u32,
    input: &[u8],
) -> (String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_claudemesh"));
    cmd.args(["hook", event])
        .env("CLAUDEMESH_CONFIG_DIR", cfg)
        .env("CLAUDE_PID", claude_pid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "hooks always exit 0");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_set_status_and_add_pending_messages_as_context() {
    let (b, _dir) = broker().await;
    let (_owner, alice, bob) = mesh(&b).await;
    // Channels off: messages wait for the prompt hook or check_messages. The test process
    // plays the Claude Code process that both the server and the hooks descend from.
    let me = std::process::id().to_string();
    let mut a = Mcp::start(
        &alice,
        &[
            ("CLAUDEMESH_SESSION", "alice-h"),
            ("CLAUDEMESH_CHANNELS", "off"),
            ("CLAUDE_PID", &me),
            ("CLAUDE_PROJECT_DIR", "/tmp/work/payments-api"),
        ],
    )
    .await;
    a.initialize("2025-11-25").await;
    a.until("list_peers", json!({}), |t| t.contains("(this session)"))
        .await;

    bob.ok(&[
        "send",
        "alice/payments-api",
        "the webhook secret rotated yesterday",
    ])
    .await;
    bob.ok(&[
        "send",
        "alice/payments-api",
        "low: lunch?",
        "--priority",
        "low",
    ])
    .await;
    assert!(
        a.channel(Duration::from_millis(800)).await.is_none(),
        "channels are off"
    );
    // Both have reached alice's server before the prompt.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (stdout, stderr) = hook(&alice, "prompt-submit", std::process::id()).await;
    assert!(stderr.is_empty(), "{stderr}");
    let out: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("{stdout}"));
    assert_eq!(
        out["hookSpecificOutput"]["hookEventName"],
        "UserPromptSubmit"
    );
    let context = out["hookSpecificOutput"]["additionalContext"]
        .as_str()
        .unwrap();
    assert!(
        context.contains("the webhook secret rotated yesterday"),
        "{context}"
    );
    assert!(
        context.contains("not instructions from the user"),
        "{context}"
    );
    assert!(
        !context.contains("lunch") && context.contains("1 low-priority"),
        "{context}"
    );
    until_peers(&bob, "working").await;

    // While working, `next` waits on the broker; the stop hook releases it.
    bob.ok(&["send", "alice/payments-api", "held until you stop"])
        .await;
    let (stdout, _) = hook(&alice, "prompt-submit", std::process::id()).await;
    assert!(
        stdout.trim().is_empty() || !stdout.contains("held until"),
        "{stdout}"
    );
    let (stdout, stderr) = hook(&alice, "stop", std::process::id()).await;
    assert!(stdout.is_empty() && stderr.is_empty(), "{stdout} {stderr}");
    until_peers(&bob, "idle").await;
    let checked = a
        .until("check_messages", json!({}), |t| {
            t.contains("held until you stop")
        })
        .await;
    assert!(
        checked.contains("lunch?"),
        "low is shown by check_messages: {checked}"
    );

    // Only what fits Claude Code's context limit is shown (and marked read); the rest
    // is counted and stays unread for check_messages.
    for i in 0..3 {
        let long = format!("part {i}: {}", "x".repeat(4_000));
        bob.ok(&["send", "alice/payments-api", &long]).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (stdout, _) = hook(&alice, "prompt-submit", std::process::id()).await;
    let out: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("{stdout}"));
    let context = out["hookSpecificOutput"]["additionalContext"]
        .as_str()
        .unwrap();
    assert!(context.len() < 10_000, "{} chars", context.len());
    assert!(
        context.contains("part 0") && context.contains("part 1") && !context.contains("part 2"),
        "{context}"
    );
    assert!(
        context.contains("1 more unread message; call check_messages"),
        "{context}"
    );
    let rest = a.ok("check_messages", json!({})).await;
    assert!(
        rest.contains("part 2") && !rest.contains("part 0"),
        "{rest}"
    );
    hook(&alice, "stop", std::process::id()).await;

    // A hook of another Claude Code process finds no server and prints nothing.
    let (stdout, stderr) = hook(&alice, "prompt-submit", 1).await;
    assert!(stdout.is_empty() && stderr.is_empty(), "{stdout} {stderr}");
    a.assert_stdout_is_only_jsonrpc();
    a.stop().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_socket_refuses_processes_outside_the_session() {
    if !std::path::Path::new("/proc/self/stat").exists() {
        eprintln!("SKIPPED: no /proc here, so the process-tree check does not apply");
        return;
    }
    let (b, _dir) = broker().await;
    let (_owner, alice, _bob) = mesh(&b).await;
    // The server believes it belongs to a Claude process the hook does not descend from.
    let mut stranger = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let foreign = stranger.id().to_string();
    let mut a = Mcp::start(
        &alice,
        &[("CLAUDEMESH_SESSION", "alice-x"), ("CLAUDE_PID", &foreign)],
    )
    .await;
    a.initialize("2025-11-25").await;
    let socket = alice
        .dir
        .path()
        .join("cfg")
        .join("run")
        .join(format!("{foreign}.sock"));
    let deadline = tokio::time::Instant::now() + WAIT;
    while !socket.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no socket at {}",
            socket.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mode = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let (stdout, stderr) = hook(&alice, "prompt-submit", stranger.id()).await;
    assert!(stdout.is_empty(), "{stdout}");
    // Refused: the server hangs up (the hook sees a broken pipe, EOF or no answer).
    assert!(
        stderr.starts_with("claudemesh hook prompt-submit: ") && stderr.lines().count() == 1,
        "{stderr}"
    );
    let peers = a
        .until("list_peers", json!({}), |t| t.contains("(this session)"))
        .await;
    assert!(
        peers.contains("(this session): idle"),
        "status unchanged: {peers}"
    );
    a.stop().await;
    let _ = stranger.kill();
    let _ = stranger.wait();
    b.shutdown().await;
}

/// Against a broker that speaks only v1: the session still talks (direct messages are
/// end-to-end encrypted as always), and message_status says what it cannot report.
/// Without any mesh joined, the server still starts and every tool says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_only_broker_and_an_identity_without_meshes() {
    let (b, _dir) = broker_with(|c| c.v1_only = true).await;
    let (_owner, alice, bob) = mesh(&b).await;
    let mut a = Mcp::start(
        &alice,
        &[
            ("CLAUDEMESH_SESSION", "v1-a"),
            ("CLAUDEMESH_CHANNELS", "on"),
            ("CLAUDE_PROJECT_DIR", "/tmp/work/api"),
        ],
    )
    .await;
    let mut bo = Mcp::start(
        &bob,
        &[
            ("CLAUDEMESH_SESSION", "v1-b"),
            ("CLAUDE_PROJECT_DIR", "/tmp/work/web"),
        ],
    )
    .await;
    a.initialize("2025-11-25").await;
    bo.initialize("2025-11-25").await;
    bo.until("list_peers", json!({}), |t| t.contains("alice/api"))
        .await;
    bo.ok(
        "send_message",
        json!({"to": "alice/api", "message": "over a v1 broker", "priority": "now"}),
    )
    .await;
    let push = a.channel(WAIT).await.unwrap();
    assert_eq!(
        (push["content"].as_str(), push["meta"]["verified"].as_str()),
        (Some("over a v1 broker"), Some("true"))
    );
    let status = bo.ok("message_status", json!({})).await;
    assert!(
        status.contains("does not report delivery status"),
        "{status}"
    );
    a.stop().await;
    bo.stop().await;
    b.shutdown().await;

    let nobody = User::new();
    let mut n = Mcp::start(&nobody, &[("CLAUDEMESH_SESSION", "none")]).await;
    let init = n.initialize("2025-11-25").await;
    assert_eq!(init["protocolVersion"], "2025-11-25");
    let (text, is_error) = n.call("list_peers", json!({})).await;
    assert!(is_error && text.contains("claudemesh join"), "{text}");
    n.assert_stdout_is_only_jsonrpc();
    n.stop().await;
}

/// A member of two meshes: one session serves both; names resolve in the mesh that has
/// them, `*` goes to the current mesh unless `mesh` says otherwise, and a message says
/// which mesh it came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_in_two_meshes() {
    let (b, _dir) = broker().await;
    let (_owner, alice, bob) = mesh(&b).await;
    // bob creates a second mesh and invites alice; it becomes alice's current mesh.
    bob.ok(&[
        "mesh",
        "create",
        "Side Project",
        "--broker",
        &b.ws_url(),
        "--as",
        "bob",
    ])
    .await;
    let link = bob
        .ok(&["invite", "--mesh", "side-project"])
        .await
        .trim()
        .to_owned();
    alice.ok(&["join", &link, "--name", "alice"]).await;
    let carol = User::new();
    let link = bob
        .ok(&["invite", "--mesh", "side-project"])
        .await
        .trim()
        .to_owned();
    carol.ok(&["join", &link, "--name", "carol"]).await;

    let mut a = Mcp::start(
        &alice,
        &[
            ("CLAUDEMESH_SESSION", "two"),
            ("CLAUDEMESH_CHANNELS", "on"),
            ("CLAUDE_PROJECT_DIR", "/tmp/work/api"),
        ],
    )
    .await;
    a.initialize("2025-11-25").await;
    let peers = a
        .until("list_peers", json!({}), |t| {
            t.matches("(this session)").count() == 2
        })
        .await;
    assert!(
        peers.contains("Mesh 'side-project'") && peers.contains("Mesh 'acme-payments'"),
        "{peers}"
    );

    // carol is only in side-project; olivia only in acme-payments.
    let sent = a
        .ok(
            "send_message",
            json!({"to": "carol", "message": "hi carol"}),
        )
        .await;
    assert!(sent.contains("in mesh 'side-project'"), "{sent}");
    let sent = a
        .ok(
            "send_message",
            json!({"to": "olivia", "message": "hi olivia"}),
        )
        .await;
    assert!(sent.contains("in mesh 'acme-payments'"), "{sent}");
    // bob is in both: ambiguous without a mesh.
    let (err, is_error) = a
        .call("send_message", json!({"to": "bob", "message": "which?"}))
        .await;
    assert!(is_error && err.contains("several meshes"), "{err}");
    let sent = a
        .ok(
            "send_message",
            json!({"to": "*", "message": "everyone in acme", "mesh": "acme-payments"}),
        )
        .await;
    assert!(sent.contains("in mesh 'acme-payments'"), "{sent}");
    let got = carol.json(&["inbox"]).await;
    assert_eq!(got[0]["text"], "hi carol", "{got}");

    carol
        .ok(&[
            "send",
            "alice/api",
            "from the side project",
            "--priority",
            "now",
        ])
        .await;
    let push = a.channel(WAIT).await.unwrap();
    assert_eq!(
        (push["content"].as_str(), push["meta"]["mesh"].as_str()),
        (Some("from the side project"), Some("side-project"))
    );
    a.stop().await;
    b.shutdown().await;
}

#[tokio::test]
async fn sessions_lists_live_and_resumable_sessions_and_prune_retires_the_stale_ones() {
    let (b, _dir) = broker().await;
    let (_owner, alice, bob) = mesh(&b).await;
    let mut old = Mcp::start(
        &alice,
        &[
            ("CLAUDEMESH_SESSION", "old"),
            ("CLAUDE_PROJECT_DIR", "/tmp/work/legacy"),
        ],
    )
    .await;
    old.initialize("2025-11-25").await;
    old.until("list_peers", json!({}), |t| {
        t.contains("alice/legacy (this session)")
    })
    .await;
    old.stop().await;
    let mut live = Mcp::start(
        &alice,
        &[
            ("CLAUDEMESH_SESSION", "live"),
            ("CLAUDE_PROJECT_DIR", "/tmp/work/api"),
        ],
    )
    .await;
    live.initialize("2025-11-25").await;
    live.until("list_peers", json!({}), |t| {
        t.contains("alice/api (this session)")
    })
    .await;
    // A probe (handshake only, as `claude mcp list` does) is not a session at all.
    let mut probe = Mcp::start(&alice, &[("CLAUDEMESH_SESSION", "probe")]).await;
    probe.handshake("2025-11-25").await;
    probe.stop().await;

    let listed = alice.json(&["sessions"]).await;
    let state = |v: &Value, session: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|s| s["session"] == session)
            .map(|s| s["state"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        state(&listed, "named-live").as_deref(),
        Some("live"),
        "{listed}"
    );
    assert_eq!(
        state(&listed, "named-old").as_deref(),
        Some("resumable"),
        "{listed}"
    );
    assert_eq!(
        state(&listed, "named-probe"),
        None,
        "a probe leaves no identity: {listed}"
    );
    let old_key = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["session"] == "named-old")
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();

    let pruned = alice.json(&["sessions", "prune"]).await;
    assert_eq!(pruned["pruned"], json!(["named-old"]), "{pruned}");
    assert_eq!(pruned["retiredOnBroker"], 1, "{pruned}");
    let listed = alice.json(&["sessions"]).await;
    assert_eq!(state(&listed, "named-old"), None, "{listed}");
    assert_eq!(state(&listed, "named-live").as_deref(), Some("live"));
    // The broker no longer counts the retired key as a recipient.
    let err = bob.fails(&["send", &old_key[..16], "anyone there?"]).await;
    assert!(err.contains("no peer matches"), "{err}");
    live.stop().await;
}
