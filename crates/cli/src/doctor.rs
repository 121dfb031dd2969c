//! `claudemesh doctor`: checks what a working setup needs and says how to fix what is
//! not: config permissions, keys, each broker's reachability and clock skew, membership
//! (a real signed hello), the Claude Code registration and hooks, and — when run inside
//! a Claude Code session — that session's MCP server. Exits non-zero if a check fails.

use claudemesh_proto::codes::AnyCode;
use std::time::Duration;

use anyhow::anyhow;
use claudemesh_client::{ConnectError, ConnectOptions, Connection, Identity};
use claudemesh_proto::frames::PresenceInfo;
use serde_json::{Value, json};

use crate::claude::{self, ClaudeHome, SERVER_NAME};
use crate::config::{Config, ConfigDir, MeshEntry};
use crate::output::out;

/// Signed hellos are refused beyond ±60 s; warn well before.
const SKEW_WARN_S: i64 = 20;
const SKEW_FAIL_S: i64 = 60;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Check {
    level: Level,
    area: &'static str,
    text: String,
}

#[derive(Default)]
struct Report(Vec<Check>);

impl Report {
    fn add(&mut self, level: Level, area: &'static str, text: impl Into<String>) {
        self.0.push(Check {
            level,
            area,
            text: text.into(),
        });
    }
}

/// The broker's health and clock, then (when it is healthy) membership.
async fn check_broker(report: &mut Report, entry: &MeshEntry) {
    let mesh = &entry.slug;
    let base = match entry.http_base() {
        Ok(b) => b,
        Err(e) => return report.add(Level::Fail, "broker", format!("{mesh}: {e:#}")),
    };
    let client = crate::api::http_client(&base, Duration::from_secs(5));
    let response = match client {
        Ok(c) => c.get(format!("{base}/health")).send().await,
        Err(e) => return report.add(Level::Fail, "broker", format!("{mesh}: {e:#}")),
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            let why = crate::api::unreachable(&entry.broker_url, &e);
            return report.add(Level::Fail, "broker", format!("{mesh}: {why}"));
        }
    };
    let status = response.status();
    let date = response
        .headers()
        .get("date")
        .and_then(|d| d.to_str().ok())
        .and_then(claudemesh_proto::time::parse_http_date);
    if status.is_success() {
        report.add(Level::Ok, "broker", format!("{mesh}: {base} is up"));
    } else {
        report.add(
            Level::Fail,
            "broker",
            format!("{mesh}: {base}/health answered {status}; the broker's database is down (see its log)"),
        );
    }
    check_clock(report, mesh, date);
    if status.is_success() {
        check_member(report, entry).await;
    }
}

/// The clock against the broker's `Date` header (seconds since the epoch, if it sent one).
fn check_clock(report: &mut Report, mesh: &str, date: Option<i64>) {
    match date {
        Some(t) => {
            let skew = claudemesh_proto::time::now_s() - t;
            let level = match skew.abs() {
                s if s >= SKEW_FAIL_S => Level::Fail,
                s if s >= SKEW_WARN_S => Level::Warn,
                _ => Level::Ok,
            };
            let text = if level == Level::Ok {
                format!("{mesh}: clock within {}s of the broker", skew.abs().max(1))
            } else {
                format!(
                    "{mesh}: this clock is {skew:+}s off the broker's; signed hellos fail beyond 60 s — sync the system time (e.g. timedatectl set-ntp true)"
                )
            };
            report.add(level, "clock", text);
        }
        None => report.add(
            Level::Warn,
            "clock",
            format!("{mesh}: the broker sent no Date header; skew not checked"),
        ),
    }
}

/// Membership: a real signed hello as the member.
async fn check_member(report: &mut Report, entry: &MeshEntry) {
    let mesh = &entry.slug;
    let key = match entry.key() {
        Ok(k) => k,
        Err(e) => return report.add(Level::Fail, "keys", format!("{e:#}")),
    };
    let opts = ConnectOptions {
        url: entry.broker_url.clone(),
        identity: Identity {
            mesh_id: entry.mesh_id.clone(),
            member_id: entry.member_id.clone(),
            member_key: key,
            session_key: None,
        },
        presence: PresenceInfo {
            display_name: Some(entry.display_name.clone()),
            session_id: format!("doctor-{}", std::process::id()),
            peer_type: Some("human".into()),
            channel: Some("cli".into()),
            ..PresenceInfo::default()
        },
        reconnect: false,
        liveness: claudemesh_client::Liveness::default(),
    };
    match Connection::connect(opts).await {
        Ok((conn, _)) => {
            let role = conn
                .hello()
                .and_then(|h| h.member_role)
                .unwrap_or_else(|| entry.role.as_str().to_owned());
            report.add(
                Level::Ok,
                "member",
                format!("{mesh}: signed in as {} ({role})", entry.display_name),
            );
            conn.close().await;
        }
        Err(ConnectError::Refused {
            code: AnyCode::Known(code),
            ..
        }) => report.add(Level::Fail, "member", format!("{mesh}: {}", code.explain())),
        Err(e) => report.add(
            Level::Fail,
            "member",
            format!("{mesh}: {:#}", anyhow::Error::from(e)),
        ),
    }
}

fn check_config(report: &mut Report, dir: &ConfigDir, config: &Config) {
    let problems = dir.permission_problems();
    if problems.is_empty() {
        report.add(
            Level::Ok,
            "config",
            format!("{} is private (0700, files 0600)", dir.path().display()),
        );
    }
    for p in problems {
        report.add(Level::Fail, "config", p);
    }
    if config.meshes.is_empty() {
        report.add(
            Level::Fail,
            "config",
            "no mesh joined: run `claudemesh join LINK` or `claudemesh mesh create NAME --broker URL`",
        );
    }
    for entry in config.meshes.values() {
        match entry.key() {
            Ok(_) => report.add(
                Level::Ok,
                "keys",
                format!("{}: member key readable", entry.slug),
            ),
            Err(e) => report.add(Level::Fail, "keys", format!("{e:#}")),
        }
    }
}

fn executable(path: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn check_claude(report: &mut Report) {
    match claude::find_claude() {
        Some(p) => report.add(
            Level::Ok,
            "claude",
            format!("Claude Code found at {}", p.display()),
        ),
        None => report.add(
            Level::Warn,
            "claude",
            "`claude` is not on PATH; `claudemesh launch` needs it",
        ),
    }
    let Ok(home) = ClaudeHome::from_env() else {
        return report.add(Level::Fail, "mcp", "HOME is not set");
    };
    let this = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    match claude::read_json(&home.claude_json()) {
        Err(e) => report.add(Level::Fail, "mcp", format!("{e:#}")),
        Ok(file) => match file.as_ref().and_then(claude::registered) {
            None => report.add(
                Level::Fail,
                "mcp",
                format!(
                    "the MCP server is not registered in {}: run `claudemesh install`",
                    home.claude_json().display()
                ),
            ),
            Some(entry) => {
                let command = entry.get("command").and_then(Value::as_str).unwrap_or("");
                if !executable(command) {
                    report.add(Level::Fail, "mcp", format!("the registered server {command} does not exist: run `claudemesh install`"));
                } else if command != this {
                    report.add(Level::Warn, "mcp", format!("the registered server is {command}, not this binary ({this}); run `claudemesh install` to switch"));
                } else {
                    report.add(
                        Level::Ok,
                        "mcp",
                        format!("MCP server '{SERVER_NAME}' registered for this user"),
                    );
                }
            }
        },
    }
    match claude::read_json(&home.settings()) {
        Err(e) => report.add(Level::Fail, "hooks", format!("{e:#}")),
        Ok(settings) => {
            let hooks = settings
                .as_ref()
                .map(claude::installed_hooks)
                .unwrap_or_default();
            for (event, _) in claude::HOOKS {
                if hooks.iter().any(|(e, _)| e == event) {
                    report.add(Level::Ok, "hooks", format!("{event} hook installed"));
                } else {
                    report.add(
                        Level::Fail,
                        "hooks",
                        format!(
                            "no {event} hook in {}: run `claudemesh install`",
                            home.settings().display()
                        ),
                    );
                }
            }
        }
    }
}

/// Inside a Claude Code session: ask its MCP server how it is doing.
fn check_session(report: &mut Report, dir: &ConfigDir) {
    let Some(pid) = std::env::var("CLAUDE_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return;
    };
    let socket = crate::hook::socket_path(dir, pid);
    if !socket.exists() {
        return report.add(
            Level::Warn,
            "session",
            "this Claude Code session has no claudemesh MCP server running; check /mcp in Claude Code",
        );
    }
    let ping = crate::hook::HookRequest {
        event: "ping".into(),
        ..crate::hook::HookRequest::default()
    };
    match crate::hook::ask(&socket, &ping) {
        Ok(reply) if reply.ok => {
            // Claude Code dropping channel events is worth a warning: messages still
            // arrive, one prompt later.
            let dropped = reply
                .status
                .iter()
                .any(|l| l.contains("live push unavailable"));
            let level = if dropped { Level::Warn } else { Level::Ok };
            report.add(level, "session", reply.status.join("; "));
        }
        Ok(reply) => report.add(Level::Fail, "session", reply.error.unwrap_or_default()),
        Err(e) => report.add(Level::Fail, "session", e),
    }
}

pub async fn doctor(dir: &ConfigDir, config: &Config, json: bool) -> anyhow::Result<()> {
    let mut report = Report::default();
    check_config(&mut report, dir, config);
    for entry in config.meshes.values() {
        check_broker(&mut report, entry).await;
    }
    check_claude(&mut report);
    check_session(&mut report, dir);
    let label = |l: Level| match l {
        Level::Ok => "ok",
        Level::Warn => "warn",
        Level::Fail => "FAIL",
    };
    let value = json!(
        report
            .0
            .iter()
            .map(|c| json!({ "level": label(c.level), "area": c.area, "text": c.text }))
            .collect::<Vec<_>>()
    );
    out(json, &value, || {
        report
            .0
            .iter()
            .map(|c| format!("{:<4}  {:<7}  {}", label(c.level), c.area, c.text))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let failed = report.0.iter().filter(|c| c.level == Level::Fail).count();
    if failed > 0 {
        return Err(anyhow!(
            "{failed} problem(s) found; each FAIL line says how to fix it"
        ));
    }
    Ok(())
}
