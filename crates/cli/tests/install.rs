//! `claudemesh install`, `uninstall`, `launch` and `doctor` on a temporary HOME that
//! already holds other MCP servers, other hooks and other settings: everything else
//! survives both commands, installing twice adds nothing twice, uninstall restores the
//! files, `--print` changes nothing, and the `claude` CLI is used when it is on PATH.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use serde_json::{Value, json};

/// A home directory with Claude Code files in it, and a PATH of our choosing.
struct Home {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Home {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(dir.path().join(".claude")).unwrap();
        Self { path: bin, dir }
    }

    fn claude_json(&self) -> PathBuf {
        self.dir.path().join(".claude.json")
    }

    fn settings(&self) -> PathBuf {
        self.dir.path().join(".claude/settings.json")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("cfg")
    }

    /// Put an executable `claude` script on this home's PATH.
    fn fake_claude(&self, script: &str) {
        let p = self.path.join("claude");
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn run(&self, args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_claudemesh"))
            .args(args)
            .env("HOME", self.dir.path())
            .env("PATH", &self.path)
            .env("CLAUDEMESH_CONFIG_DIR", self.config())
            .env_remove("CLAUDE_PID")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn read(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

fn existing_files(home: &Home) -> (Value, Value) {
    let claude = json!({
        "numStartups": 42,
        "theme": "dark",
        "mcpServers": {"github": {"type": "stdio", "command": "npx", "args": ["-y", "@modelcontextprotocol/server-github"], "env": {"GITHUB_TOKEN": "x"}}},
        "projects": {"/src/app": {"mcpServers": {}, "allowedTools": ["Bash"]}}
    });
    let settings = json!({
        "model": "opus",
        "permissions": {"allow": ["Bash(git status)"]},
        "hooks": {
            "UserPromptSubmit": [{"hooks": [{"type": "command", "command": "~/bin/log-prompt"}]}],
            "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "audit-bash"}]}]
        }
    });
    std::fs::write(
        home.claude_json(),
        serde_json::to_string_pretty(&claude).unwrap(),
    )
    .unwrap();
    std::fs::set_permissions(home.claude_json(), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        home.settings(),
        serde_json::to_string_pretty(&settings).unwrap(),
    )
    .unwrap();
    (claude, settings)
}

fn exe() -> String {
    std::fs::canonicalize(env!("CARGO_BIN_EXE_claudemesh"))
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn install_and_uninstall_keep_everything_else() {
    let home = Home::new();
    let (claude, settings) = existing_files(&home);
    let (before_claude, before_settings) = (bytes(&home.claude_json()), bytes(&home.settings()));

    // --print only prints.
    let plan = home.ok(&["install", "--print"]);
    assert!(
        plan.contains("would:") && plan.contains("mcpServers.claudemesh"),
        "{plan}"
    );
    assert_eq!(bytes(&home.claude_json()), before_claude);
    assert_eq!(bytes(&home.settings()), before_settings);

    home.ok(&["install"]);
    let c = read(&home.claude_json());
    assert_eq!(c["numStartups"], 42);
    assert_eq!(c["projects"], claude["projects"]);
    assert_eq!(c["mcpServers"]["github"], claude["mcpServers"]["github"]);
    let ours = &c["mcpServers"]["claudemesh"];
    assert_eq!(ours["command"], exe());
    assert_eq!(ours["args"], json!(["mcp"]));
    assert_eq!(
        ours["env"]["CLAUDEMESH_CONFIG_DIR"],
        home.config()
            .canonicalize()
            .unwrap_or(home.config())
            .display()
            .to_string()
    );
    let mode = std::fs::metadata(home.claude_json())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the file keeps its mode");
    assert!(
        home.dir
            .path()
            .join(".claude.json.claudemesh-backup")
            .exists()
    );

    let s = read(&home.settings());
    assert_eq!(s["model"], "opus");
    assert_eq!(s["permissions"], settings["permissions"]);
    assert_eq!(s["hooks"]["PreToolUse"], settings["hooks"]["PreToolUse"]);
    let prompt = s["hooks"]["UserPromptSubmit"].as_array().unwrap();
    assert_eq!(prompt.len(), 2, "the other prompt hook stays: {prompt:?}");
    assert_eq!(prompt[0], settings["hooks"]["UserPromptSubmit"][0]);
    let prompt_cmd = prompt[1]["hooks"][0]["command"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        prompt_cmd.ends_with(" hook prompt-submit") && prompt_cmd.contains(&exe()),
        "{prompt_cmd}"
    );
    let stop = s["hooks"]["Stop"].as_array().unwrap();
    assert_eq!(stop.len(), 1);
    assert!(
        stop[0]["hooks"][0]["command"]
            .as_str()
            .unwrap()
            .ends_with(" hook stop")
    );
    // Keys stay in their order.
    let text = std::fs::read_to_string(home.settings()).unwrap();
    assert!(text.find("\"model\"").unwrap() < text.find("\"permissions\"").unwrap());

    // The installed hook runs through a shell as Claude Code runs it, and with no server
    // for this session it is silent and succeeds.
    let out = std::process::Command::new("sh")
        .args(["-c", &prompt_cmd])
        .env("HOME", home.dir.path())
        .env("CLAUDE_PID", "1")
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");

    // Twice adds nothing twice.
    let (after_claude, after_settings) = (bytes(&home.claude_json()), bytes(&home.settings()));
    let again = home.ok(&["install"]);
    assert!(again.contains("nothing to do"), "{again}");
    assert_eq!(bytes(&home.claude_json()), after_claude);
    assert_eq!(bytes(&home.settings()), after_settings);

    // Uninstall removes exactly what install added.
    let removed = home.ok(&["uninstall"]);
    assert!(removed.contains("remove"), "{removed}");
    assert_eq!(read(&home.claude_json()), claude);
    assert_eq!(read(&home.settings()), settings);
    assert!(home.ok(&["uninstall"]).contains("nothing to do"));
}

#[test]
fn install_on_a_fresh_home_and_refusal_of_a_broken_file() {
    let home = Home::new();
    home.ok(&["install"]);
    assert!(read(&home.claude_json())["mcpServers"]["claudemesh"].is_object());
    home.ok(&["uninstall"]);
    assert_eq!(read(&home.claude_json()), json!({}));
    assert_eq!(read(&home.settings()), json!({}));

    std::fs::write(home.settings(), "{ not json").unwrap();
    let out = home.run(&["install"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not valid JSON") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(home.settings()).unwrap(),
        "{ not json"
    );
}

#[test]
fn the_claude_cli_is_used_when_it_is_on_path() {
    let home = Home::new();
    existing_files(&home);
    let log = home.dir.path().join("claude.log");
    home.fake_claude(&format!("echo \"$@\" >> '{}'", log.display()));
    let before = bytes(&home.claude_json());
    let out = home.ok(&["install"]);
    assert!(
        out.contains("register the MCP server") && out.contains(": claude mcp add"),
        "{out}"
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    let cfg = home.config().display().to_string();
    assert_eq!(
        calls.trim(),
        format!(
            "mcp add --scope user claudemesh -e CLAUDEMESH_CONFIG_DIR={cfg} -- {} mcp",
            exe()
        )
    );
    assert_eq!(
        bytes(&home.claude_json()),
        before,
        "the claude CLI owns that file"
    );

    // Uninstall asks the CLI to remove its entry.
    let mut c = read(&home.claude_json());
    c["mcpServers"]["claudemesh"] =
        json!({"type": "stdio", "command": exe(), "args": ["mcp"], "env": {}});
    std::fs::write(home.claude_json(), c.to_string()).unwrap();
    std::fs::remove_file(&log).unwrap();
    home.ok(&["uninstall"]);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().trim(),
        "mcp remove --scope user claudemesh"
    );

    // A failing CLI: install says so and writes the entry itself.
    home.fake_claude("echo 'boom' >&2; exit 1");
    let out = home.run(&["install"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("boom"));
    assert_eq!(
        read(&home.claude_json())["mcpServers"]["claudemesh"]["command"],
        exe()
    );
}

#[test]
fn launch_starts_claude_with_channels_for_claudemesh() {
    let home = Home::new();
    home.fake_claude("echo \"$CLAUDEMESH_LAUNCH_PID $$ $@\"");
    let out = home.run(&["launch", "--", "--model", "opus"]);
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = printed.split_whitespace().collect();
    assert_eq!(
        words[0], words[1],
        "claude runs in launch's own process: {printed}"
    );
    assert_eq!(
        words[2..],
        [
            "--dangerously-load-development-channels",
            "server:claudemesh",
            "--model",
            "opus"
        ]
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("claudemesh install"),
        "warns when not installed"
    );
    std::fs::remove_file(home.path.join("claude")).unwrap();
    let out = home.run(&["launch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not on PATH"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_whole_setup_and_says_what_to_fix() {
    let (b, _dir) = broker().await;
    let home = Home::new();
    // Join a mesh with this home's config dir.
    let owner = User::new();
    owner
        .ok(&[
            "mesh",
            "create",
            "Acme",
            "--broker",
            &b.ws_url(),
            "--as",
            "olivia",
        ])
        .await;
    let link = owner.ok(&["invite"]).await.trim().to_owned();
    let run = |args: &[&str]| tokio::task::block_in_place(|| home.run(args));
    let ok = |args: &[&str]| tokio::task::block_in_place(|| home.ok(args));
    ok(&["join", &link, "--name", "alice"]);

    // Not installed yet: doctor fails and says how to fix it.
    let out = run(&["doctor"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ok    broker   acme: http://127.0.0.1"),
        "{text}"
    );
    assert!(
        text.contains("ok    member   acme: signed in as alice"),
        "{text}"
    );
    assert!(text.contains("ok    clock"), "{text}");
    assert!(
        text.contains("FAIL  mcp") && text.contains("run `claudemesh install`"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).lines().count() == 1);

    ok(&["install"]);
    let text = ok(&["doctor"]);
    assert!(!text.contains("FAIL"), "{text}");
    assert!(
        text.contains("UserPromptSubmit hook installed") && text.contains("Stop hook installed"),
        "{text}"
    );
    assert!(
        text.contains("warn  claude"),
        "claude is not on PATH here: {text}"
    );

    // A config dir others can read is a failure with the exact fix.
    std::fs::set_permissions(home.config(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(&["doctor", "--json"]);
    assert!(!out.status.success());
    let checks: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fail = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["level"] == "FAIL")
        .unwrap();
    assert!(
        fail["text"].as_str().unwrap().contains("chmod 700"),
        "{fail}"
    );

    // An unreachable broker.
    std::fs::set_permissions(home.config(), std::fs::Permissions::from_mode(0o700)).unwrap();
    b.shutdown().await;
    let out = run(&["doctor"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("cannot reach"));
}
