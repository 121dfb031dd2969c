//! `claudemesh install`, `uninstall` and `launch`: register the MCP server with Claude
//! Code for this user (through `claude mcp add` when `claude` is on `PATH`, else by
//! merging the same entry into `~/.claude.json`), add the status hooks to
//! `~/.claude/settings.json`, remove exactly those again, and start `claude` with live
//! channel push. `--print` shows what would be done and changes nothing.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value, json};

use crate::claude::{self, ClaudeHome, Plan, SERVER_NAME};
use crate::output::out;

/// What install and uninstall act with.
fn plan() -> anyhow::Result<Plan> {
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .context("cannot tell where the claudemesh binary is")?;
    let config_dir = std::env::var_os("CLAUDEMESH_CONFIG_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .map(|d| std::fs::canonicalize(&d).unwrap_or(d));
    Ok(Plan { exe, config_dir })
}

/// Run `claude` with `args`; a failure carries its stderr.
fn run_claude(claude: &PathBuf, args: &[String]) -> anyhow::Result<()> {
    let output = Command::new(claude)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", claude.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output");
    Err(anyhow!("`claude {}` failed: {line}", args.join(" ")))
}

/// One file change, for the report.
struct Step {
    what: String,
    backup: Option<PathBuf>,
}

/// `nothing` is what to say when no step was needed.
fn report(json: bool, print: bool, steps: &[Step], next: &str, nothing: &str) {
    let lines: Vec<String> = steps
        .iter()
        .map(|s| match &s.backup {
            Some(b) => format!("{} (backup: {})", s.what, b.display()),
            None => s.what.clone(),
        })
        .collect();
    let value = json!({
        "dryRun": print,
        "steps": steps.iter().map(|s| json!({ "what": s.what, "backup": s.backup.as_ref().map(|b| b.display().to_string()) })).collect::<Vec<Value>>(),
    });
    out(json, &value, || {
        let mut text = if lines.is_empty() {
            format!("nothing to do: {nothing}")
        } else if print {
            format!("would:\n  {}", lines.join("\n  "))
        } else {
            lines.join("\n")
        };
        if !next.is_empty() && !print {
            text.push_str(&format!("\nnext: {next}"));
        }
        text
    });
}

/// Load a JSON file for editing (missing → empty object).
fn load(path: &std::path::Path) -> anyhow::Result<Value> {
    Ok(claude::read_json(path)?.unwrap_or_else(|| json!({})))
}

/// Write `value` to `path` (unless only printing) and record the step.
fn save(
    print: bool,
    path: &std::path::Path,
    value: &Value,
    what: String,
    steps: &mut Vec<Step>,
) -> anyhow::Result<()> {
    let backup = if print {
        None
    } else {
        claude::write_json(path, value)?
    };
    steps.push(Step { what, backup });
    Ok(())
}

fn claude_args(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Change the user-scope MCP registration: with `claude` when it is on PATH (each of
/// `calls` in turn), else — or when that fails — by applying `edit` to `~/.claude.json`.
fn change_registration(
    home: &ClaudeHome,
    print: bool,
    calls: &[Vec<String>],
    edit: impl FnOnce(&mut Value) -> anyhow::Result<bool>,
    what: &str,
    steps: &mut Vec<Step>,
) -> anyhow::Result<()> {
    if let Some(cli) = claude::find_claude() {
        let shown: Vec<String> = calls
            .iter()
            .map(|c| format!("claude {}", c.join(" ")))
            .collect();
        if print {
            steps.push(Step {
                what: format!("{what}: {}", shown.join(" && ")),
                backup: None,
            });
            return Ok(());
        }
        match calls.iter().try_for_each(|c| run_claude(&cli, c)) {
            Ok(()) => {
                steps.push(Step {
                    what: format!("{what}: {}", shown.join(" && ")),
                    backup: None,
                });
                return Ok(());
            }
            Err(e) => eprintln!(
                "claudemesh: note: {e:#}; editing {} directly instead",
                home.claude_json().display()
            ),
        }
    }
    // Read afresh: a failed `claude mcp` call may have changed the file.
    let mut file = load(&home.claude_json())?;
    if edit(&mut file)? {
        let what = format!("{what} in {}", home.claude_json().display());
        save(print, &home.claude_json(), &file, what, steps)?;
    }
    Ok(())
}

pub fn install(json: bool, print: bool) -> anyhow::Result<()> {
    let home = ClaudeHome::from_env()?;
    let plan = plan()?;
    let mut steps = Vec::new();

    // 1. The MCP server, for this user.
    let entry = plan.mcp_entry();
    let current = claude::registered(&load(&home.claude_json())?).cloned();
    if current.as_ref().is_some_and(|c| !claude::is_our_server(c)) {
        bail!(
            "{} already has an MCP server named '{SERVER_NAME}' that is not claudemesh; remove or rename it first (nothing was changed)",
            home.claude_json().display()
        );
    }
    if current.as_ref() != Some(&entry) {
        let mut calls = Vec::new();
        if current.is_some() {
            calls.push(claude_args(&[
                "mcp",
                "remove",
                "--scope",
                "user",
                SERVER_NAME,
            ]));
        }
        calls.push(plan.mcp_add_args());
        let what = format!(
            "register the MCP server `{} mcp` as mcpServers.{SERVER_NAME}",
            plan.exe.display()
        );
        change_registration(
            &home,
            print,
            &calls,
            |f| claude::merge_server(f, &entry),
            &what,
            &mut steps,
        )?;
    }

    // 2. The hooks.
    let mut settings = load(&home.settings())?;
    if claude::merge_hooks(&mut settings, &plan)? {
        let what = format!(
            "add hooks to {}: SessionStart → `{}`, UserPromptSubmit → `{}`, Stop → `{}`",
            home.settings().display(),
            plan.hook_command("session-start"),
            plan.hook_command("prompt-submit"),
            plan.hook_command("stop")
        );
        save(print, &home.settings(), &settings, what, &mut steps)?;
    }
    report(
        json,
        print,
        &steps,
        "claudemesh launch   (starts claude with live message push; or restart claude)",
        "already in place",
    );
    Ok(())
}

pub fn uninstall(json: bool, print: bool) -> anyhow::Result<()> {
    let home = ClaudeHome::from_env()?;
    let mut steps = Vec::new();

    if claude::registered(&load(&home.claude_json())?).is_some_and(claude::is_our_server) {
        let calls = [claude_args(&[
            "mcp",
            "remove",
            "--scope",
            "user",
            SERVER_NAME,
        ])];
        let what = format!("remove the MCP server mcpServers.{SERVER_NAME}");
        change_registration(
            &home,
            print,
            &calls,
            |f| Ok(claude::remove_server(f)),
            &what,
            &mut steps,
        )?;
    }

    let mut settings = load(&home.settings())?;
    if claude::remove_hooks(&mut settings) {
        let what = format!(
            "remove the claudemesh hooks from {}",
            home.settings().display()
        );
        save(print, &home.settings(), &settings, what, &mut steps)?;
    }
    report(
        json,
        print,
        &steps,
        "",
        "claudemesh is not installed for Claude Code",
    );
    Ok(())
}

/// `claudemesh launch [-- ARGS]`: replace this process with `claude`, channels on.
pub fn launch(args: &[String]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let Some(claude_bin) = claude::find_claude() else {
        bail!(
            "`claude` is not on PATH; install Claude Code first (https://docs.anthropic.com/claude-code)"
        );
    };
    if let Ok(home) = ClaudeHome::from_env() {
        let registered = claude::read_json(&home.claude_json())
            .ok()
            .flatten()
            .is_some_and(|v| claude::registered(&v).is_some());
        if !registered {
            eprintln!(
                "claudemesh: warning: no user-scope claudemesh MCP server in {}; run `claudemesh install` first unless you registered it per project",
                home.claude_json().display()
            );
        }
    }
    let err = Command::new(&claude_bin)
        .arg("--dangerously-load-development-channels")
        .arg(format!("server:{SERVER_NAME}"))
        .args(args)
        // exec keeps this pid: the session's MCP server sees it as its Claude process.
        .env("CLAUDEMESH_LAUNCH_PID", std::process::id().to_string())
        .exec();
    Err(anyhow!("cannot start {}: {err}", claude_bin.display()))
}
