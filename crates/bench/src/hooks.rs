//! The `hooks` scenario: how long Claude Code waits for claudemesh's hooks. It creates a
//! mesh with the real `claudemesh` CLI, starts a real `claudemesh mcp` session server
//! (initialized over stdio as Claude Code does), then times whole `claudemesh hook
//! prompt-submit` and `claudemesh hook stop` processes, from spawn to exit, with nothing
//! pending. The baseline, in the same run, is `claudemesh --version`: the cost of
//! starting the binary at all.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::broker::Broker;

/// Run `bin args` with this config dir, feeding `stdin`; the wall time from spawn to exit.
fn timed(bin: &Path, config: &Path, args: &[&str], stdin: &[u8]) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .env("CLAUDEMESH_CONFIG_DIR", config)
        .env("CLAUDE_PID", std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("claudemesh {args:?} failed: {status}");
    }
    Ok(start.elapsed())
}

fn ms(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len().max(1) as f64 - 1.0) * p).round() as usize;
    sorted
        .get(idx)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn series(
    n: usize,
    mut one: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = (0..n).map(|_| one()).collect::<anyhow::Result<Vec<_>>>()?;
    out.sort_unstable();
    Ok(out)
}

pub fn run(broker: &Broker, bin: Option<PathBuf>, n: usize) -> anyhow::Result<serde_json::Value> {
    let bin = crate::broker::program(bin, "claudemesh", "claudemesh-cli", "--claudemesh-bin")?;
    let home = tempfile::tempdir()?;
    let config = home.path().join("cfg");
    let created = Command::new(&bin)
        .args([
            "mesh",
            "create",
            "bench",
            "--broker",
            &broker.ws_url,
            "--as",
            "bench",
        ])
        .env("CLAUDEMESH_CONFIG_DIR", &config)
        .output()?;
    if !created.status.success() {
        bail!(
            "creating the mesh failed: {}",
            String::from_utf8_lossy(&created.stderr)
        );
    }
    // The session server, as Claude Code starts it; this process plays Claude Code.
    let mut server = Command::new(&bin)
        .arg("mcp")
        .env("CLAUDEMESH_CONFIG_DIR", &config)
        .env("CLAUDEMESH_SESSION", "bench")
        .env("CLAUDEMESH_CHANNELS", "off")
        .env("CLAUDE_PID", std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting claudemesh mcp")?;
    let result = (|| {
        let mut stdin = server.stdin.take().context("no stdin")?;
        let mut stdout = BufReader::new(server.stdout.take().context("no stdout")?);
        let mut rpc = |v: serde_json::Value| -> anyhow::Result<()> {
            writeln!(stdin, "{v}")?;
            stdin.flush()?;
            Ok(())
        };
        rpc(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "claudemesh-bench", "version": "1"}}}),
        )?;
        rpc(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
        // A tool call proves the session is connected to the broker.
        rpc(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "list_peers", "arguments": {}}}),
        )?;
        let mut line = String::new();
        loop {
            line.clear();
            if stdout.read_line(&mut line)? == 0 {
                bail!("claudemesh mcp exited");
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v.get("id") == Some(&json!(2)) {
                if v.pointer("/result/isError") == Some(&json!(true)) {
                    let why = v
                        .pointer("/result/content/0/text")
                        .cloned()
                        .unwrap_or_default();
                    bail!("the session is not connected: {why}");
                }
                break;
            }
        }
        let input = br#"{"session_id":"bench","hook_event_name":"UserPromptSubmit","prompt":"hi"}"#;
        let baseline = series(n, || timed(&bin, &config, &["--version"], b""))?;
        let prompt = series(n, || {
            timed(&bin, &config, &["hook", "prompt-submit"], input)
        })?;
        let stop = series(n, || timed(&bin, &config, &["hook", "stop"], input))?;
        drop(stdin);
        Ok(json!({
            "scenario": "hooks",
            "peers": 1,
            "messages_per_peer": 0,
            "sent": 0, "delivered": 0, "lost": 0, "duplicates": 0,
            "e2e_p50_ms": 0.0, "e2e_p95_ms": 0.0, "e2e_p99_ms": 0.0, "ack_p50_ms": 0.0, "ack_p99_ms": 0.0,
            "throughput_msgs_per_s": 0.0,
            "hook_runs": n,
            "process_start_p50_ms": ms(&baseline, 0.5),
            "process_start_p99_ms": ms(&baseline, 0.99),
            "hook_prompt_submit_p50_ms": ms(&prompt, 0.5),
            "hook_prompt_submit_p99_ms": ms(&prompt, 0.99),
            "hook_stop_p50_ms": ms(&stop, 0.5),
            "hook_stop_p99_ms": ms(&stop, 0.99),
        }))
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}
