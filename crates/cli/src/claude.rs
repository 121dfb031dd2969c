//! Claude Code's files as `install`, `uninstall`, `launch` and `doctor` see them:
//! `~/.claude.json` (user-scope MCP servers under `mcpServers`) and
//! `~/.claude/settings.json` (hooks), plus finding the `claude` program on `PATH`.
//!
//! The merges are pure functions over `serde_json::Value` that touch only claudemesh's
//! own entries: the `mcpServers.claudemesh` entry, and hooks whose command runs
//! `claudemesh hook …`. Everything else in those files survives, in its order. Writes are
//! atomic (temp file, fsync, rename, original mode kept) and keep the previous file as
//! `<file>.claudemesh-backup`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Map, Value, json};

/// The MCP server's name in Claude Code (`server:claudemesh` for channels).
pub const SERVER_NAME: &str = "claudemesh";
/// The hooks claudemesh installs: Claude Code event → `claudemesh hook` argument.
pub const HOOKS: [(&str, &str); 3] = [
    ("SessionStart", "session-start"),
    ("UserPromptSubmit", "prompt-submit"),
    ("Stop", "stop"),
];
/// Seconds Claude Code waits for a hook (ours answer in milliseconds).
const HOOK_TIMEOUT_S: u64 = 10;

/// Where Claude Code keeps its user files.
#[derive(Debug, Clone)]
pub struct ClaudeHome {
    home: PathBuf,
}

impl ClaudeHome {
    pub fn from_env() -> anyhow::Result<Self> {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .context("HOME is not set")?;
        Ok(Self {
            home: PathBuf::from(home),
        })
    }

    /// `~/.claude.json`: user-scope MCP servers.
    pub fn claude_json(&self) -> PathBuf {
        self.home.join(".claude.json")
    }

    /// `~/.claude/settings.json`: hooks.
    pub fn settings(&self) -> PathBuf {
        self.home.join(".claude").join("settings.json")
    }
}

/// A JSON file's content: `None` when the file does not exist.
pub fn read_json(path: &Path) -> anyhow::Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(Some(json!({}))),
        Ok(text) => {
            let value: Value = serde_json::from_str(&text).map_err(|e| {
                anyhow!(
                    "{} is not valid JSON ({e}); fix it first — nothing was changed",
                    path.display()
                )
            })?;
            if !value.is_object() {
                bail!(
                    "{} does not hold a JSON object; nothing was changed",
                    path.display()
                );
            }
            Ok(Some(value))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Replace `path` with `value` atomically, keeping its mode and a backup of the old file.
/// Returns the backup's path, if there was an old file.
pub fn write_json(path: &Path, value: &Value) -> anyhow::Result<Option<PathBuf>> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    // A symlinked file (dotfiles kept in a repo) is written where it points.
    let resolved;
    let path = if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        resolved = std::fs::canonicalize(path)
            .with_context(|| format!("{} is a broken symlink", path.display()))?;
        resolved.as_path()
    } else {
        path
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let old_mode = std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777);
    let backup = match old_mode {
        Some(_) => {
            let mut name = path.as_os_str().to_owned();
            name.push(".claudemesh-backup");
            let backup = PathBuf::from(name);
            std::fs::copy(path, &backup)
                .with_context(|| format!("cannot back up {}", path.display()))?;
            Some(backup)
        }
        None => None,
    };
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.claudemesh.{}.tmp",
        std::process::id()
    ));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(old_mode.unwrap_or(0o600))
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    if let Some(mode) = old_mode {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(backup)
}

/// `s` quoted for `sh -c` (Claude Code runs hook commands through a shell).
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:@,".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What install writes, derived from the binary's path and the config dir override.
#[derive(Debug, Clone)]
pub struct Plan {
    pub exe: PathBuf,
    /// `CLAUDEMESH_CONFIG_DIR`, when set: the server and the hooks must use it too.
    pub config_dir: Option<PathBuf>,
}

impl Plan {
    /// The `mcpServers.claudemesh` entry.
    pub fn mcp_entry(&self) -> Value {
        let mut env = Map::new();
        if let Some(dir) = &self.config_dir {
            env.insert(
                "CLAUDEMESH_CONFIG_DIR".into(),
                Value::String(dir.display().to_string()),
            );
        }
        json!({
            "type": "stdio",
            "command": self.exe.display().to_string(),
            "args": ["mcp"],
            "env": env,
        })
    }

    /// The shell command of the hook for `event` (`session-start`, `prompt-submit` or `stop`).
    pub fn hook_command(&self, event: &str) -> String {
        let exe = shell_quote(&self.exe.display().to_string());
        match &self.config_dir {
            Some(dir) => format!(
                "CLAUDEMESH_CONFIG_DIR={} {exe} hook {event}",
                shell_quote(&dir.display().to_string())
            ),
            None => format!("{exe} hook {event}"),
        }
    }

    /// `claude mcp add` arguments that register the same entry.
    pub fn mcp_add_args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["mcp", "add", "--scope", "user", SERVER_NAME]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        if let Some(dir) = &self.config_dir {
            // After the name: `-e` placed before it swallows the name (a known CLI quirk).
            args.push("-e".into());
            args.push(format!("CLAUDEMESH_CONFIG_DIR={}", dir.display()));
        }
        args.push("--".into());
        args.push(self.exe.display().to_string());
        args.push("mcp".into());
        args
    }
}

/// Whether a hook command is one of claudemesh's (any install location).
pub fn is_our_hook(command: &str) -> bool {
    let command = command.trim_end();
    HOOKS
        .iter()
        .any(|(_, event)| command.ends_with(&format!(" hook {event}")))
        && command.contains("claudemesh")
}

/// Whether an `mcpServers` entry is claudemesh's.
pub fn is_our_server(entry: &Value) -> bool {
    let command = entry.get("command").and_then(Value::as_str).unwrap_or("");
    let args = entry.get("args").and_then(Value::as_array);
    Path::new(command)
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("claudemesh"))
        && args.is_some_and(|a| a.first().and_then(Value::as_str) == Some("mcp"))
}

/// The registered claudemesh server entry in `~/.claude.json`, if any.
pub fn registered(claude_json: &Value) -> Option<&Value> {
    claude_json.get("mcpServers")?.get(SERVER_NAME)
}

/// `v` as an object, or an error naming `what` (never silently replaced).
fn object<'a>(v: &'a mut Value, what: &str) -> anyhow::Result<&'a mut Map<String, Value>> {
    v.as_object_mut()
        .ok_or_else(|| anyhow!("`{what}` is not a JSON object; fix it first — nothing was changed"))
}

/// Put the claudemesh entry into `mcpServers`. Returns whether anything changed.
pub fn merge_server(claude_json: &mut Value, entry: &Value) -> anyhow::Result<bool> {
    let root = object(claude_json, "the file")?;
    let servers = object(
        root.entry("mcpServers").or_insert_with(|| json!({})),
        "mcpServers",
    )?;
    if servers.get(SERVER_NAME) == Some(entry) {
        return Ok(false);
    }
    servers.insert(SERVER_NAME.into(), entry.clone());
    Ok(true)
}

/// Remove claudemesh's `mcpServers` entry (and `mcpServers` if that leaves it empty).
pub fn remove_server(claude_json: &mut Value) -> bool {
    let Some(root) = claude_json.as_object_mut() else {
        return false;
    };
    let Some(servers) = root.get_mut("mcpServers").and_then(Value::as_object_mut) else {
        return false;
    };
    if !servers.get(SERVER_NAME).is_some_and(is_our_server) {
        return false;
    }
    servers.shift_remove(SERVER_NAME);
    if servers.is_empty() {
        root.shift_remove("mcpServers");
    }
    true
}

/// Drop claudemesh hooks from one event's matcher groups, and groups left empty.
/// `keep` is a command to leave in place (the current one). Returns whether it changed.
fn strip_hooks(groups: &mut Vec<Value>, keep: Option<&str>) -> bool {
    let before = groups.clone();
    for group in groups.iter_mut() {
        if let Some(hooks) = group.get_mut("hooks").and_then(Value::as_array_mut) {
            hooks.retain(|h| {
                let cmd = h.get("command").and_then(Value::as_str).unwrap_or("");
                !is_our_hook(cmd) || Some(cmd) == keep
            });
        }
    }
    groups.retain(|g| {
        g.get("hooks")
            .and_then(Value::as_array)
            .is_none_or(|h| !h.is_empty())
    });
    *groups != before
}

/// Add the claudemesh hooks to `settings` (replacing claudemesh hooks of an older path).
/// Returns whether anything changed.
pub fn merge_hooks(settings: &mut Value, plan: &Plan) -> anyhow::Result<bool> {
    let root = object(settings, "the file")?;
    let hooks = object(root.entry("hooks").or_insert_with(|| json!({})), "hooks")?;
    let mut changed = false;
    for (event, arg) in HOOKS {
        let command = plan.hook_command(arg);
        let groups = hooks
            .entry(event)
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .ok_or_else(|| {
                anyhow!("`hooks.{event}` is not a JSON array; fix it first — nothing was changed")
            })?;
        changed |= strip_hooks(groups, Some(&command));
        let present = groups.iter().any(|g| {
            g.get("hooks").and_then(Value::as_array).is_some_and(|hs| {
                hs.iter()
                    .any(|h| h.get("command").and_then(Value::as_str) == Some(&command))
            })
        });
        if !present {
            groups.push(json!({
                "hooks": [{"type": "command", "command": command, "timeout": HOOK_TIMEOUT_S}]
            }));
            changed = true;
        }
    }
    Ok(changed)
}

/// Remove every claudemesh hook, and the containers that leaves empty.
pub fn remove_hooks(settings: &mut Value) -> bool {
    let Some(root) = settings.as_object_mut() else {
        return false;
    };
    let Some(hooks) = root.get_mut("hooks").and_then(Value::as_object_mut) else {
        return false;
    };
    let mut changed = false;
    for (event, _) in HOOKS {
        let Some(groups) = hooks.get_mut(event).and_then(Value::as_array_mut) else {
            continue;
        };
        let stripped = strip_hooks(groups, None);
        if stripped && groups.is_empty() {
            hooks.shift_remove(event);
        }
        changed |= stripped;
    }
    if hooks.is_empty() && changed {
        root.shift_remove("hooks");
    }
    changed
}

/// The installed claudemesh hook commands, per event.
pub fn installed_hooks(settings: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (event, _) in HOOKS {
        let groups = settings
            .get("hooks")
            .and_then(|h| h.get(event))
            .and_then(Value::as_array);
        for group in groups.into_iter().flatten() {
            let hooks = group.get("hooks").and_then(Value::as_array);
            for hook in hooks.into_iter().flatten() {
                if let Some(cmd) = hook.get("command").and_then(Value::as_str)
                    && is_our_hook(cmd)
                {
                    out.push((event.to_owned(), cmd.to_owned()));
                }
            }
        }
    }
    out
}

/// `claude` on `PATH`, if installed.
pub fn find_claude() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("claude"))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            exe: PathBuf::from("/opt/my tools/claudemesh"),
            config_dir: Some(PathBuf::from("/home/a/.mesh")),
        }
    }

    #[test]
    fn commands_are_quoted_for_the_shell() {
        let p = plan();
        assert_eq!(
            p.hook_command("stop"),
            "CLAUDEMESH_CONFIG_DIR=/home/a/.mesh '/opt/my tools/claudemesh' hook stop"
        );
        assert!(is_our_hook(&p.hook_command("prompt-submit")));
        assert!(!is_our_hook("other-tool hook stop"));
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let args = p.mcp_add_args();
        let name_at = args.iter().position(|a| a == SERVER_NAME).unwrap();
        let env_at = args.iter().position(|a| a == "-e").unwrap();
        assert!(env_at > name_at, "-e after the name: {args:?}");
        assert_eq!(
            args[args.len() - 2..],
            ["/opt/my tools/claudemesh".to_owned(), "mcp".to_owned()]
        );
    }

    #[test]
    fn merges_keep_everything_else_and_are_idempotent() {
        let p = plan();
        let mut settings = json!({
            "model": "opus",
            "hooks": {
                "Stop": [{"hooks": [{"type": "command", "command": "notify-send done"}]}],
                "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "audit"}]}]
            }
        });
        let original = settings.clone();
        assert!(merge_hooks(&mut settings, &p).unwrap());
        assert!(
            !merge_hooks(&mut settings, &p).unwrap(),
            "second install changes nothing"
        );
        assert_eq!(installed_hooks(&settings).len(), HOOKS.len());
        assert_eq!(settings["hooks"]["Stop"].as_array().unwrap().len(), 2);
        // A moved binary replaces the old hook instead of adding a second one.
        let moved = Plan {
            exe: PathBuf::from("/usr/bin/claudemesh"),
            config_dir: None,
        };
        assert!(merge_hooks(&mut settings, &moved).unwrap());
        assert_eq!(installed_hooks(&settings).len(), HOOKS.len());
        assert!(remove_hooks(&mut settings));
        assert!(!remove_hooks(&mut settings));
        assert_eq!(settings, original);

        let mut claude = json!({"numStartups": 3, "mcpServers": {"other": {"command": "x"}}});
        let original = claude.clone();
        assert!(merge_server(&mut claude, &p.mcp_entry()).unwrap());
        assert!(!merge_server(&mut claude, &p.mcp_entry()).unwrap());
        assert!(is_our_server(registered(&claude).unwrap()));
        assert!(remove_server(&mut claude));
        assert_eq!(claude, original);
        // Someone else's server called claudemesh is not ours to remove.
        let mut foreign =
            json!({"mcpServers": {"claudemesh": {"command": "node", "args": ["x.js"]}}});
        assert!(!remove_server(&mut foreign));
    }

    #[test]
    fn empty_files_gain_only_our_entries_and_lose_them_again() {
        let p = plan();
        let mut settings = json!({});
        merge_hooks(&mut settings, &p).unwrap();
        remove_hooks(&mut settings);
        assert_eq!(settings, json!({}));
        let mut claude = json!({});
        merge_server(&mut claude, &p.mcp_entry()).unwrap();
        remove_server(&mut claude);
        assert_eq!(claude, json!({}));
        // Unexpected shapes are refused, not replaced.
        assert!(merge_hooks(&mut json!({"hooks": []}), &p).is_err());
        assert!(merge_hooks(&mut json!({"hooks": {"Stop": {}}}), &p).is_err());
        assert!(merge_server(&mut json!({"mcpServers": 3}), &p.mcp_entry()).is_err());
    }
}
