//! The session identity of one Claude Code session: which session this process serves,
//! the per-mesh session keys (stable across restarts of the same session, new for a new
//! session), the groups and summary to restore, and the session's directory.
//!
//! A session is named, in order of preference, by `CLAUDEMESH_SESSION` (explicit),
//! `CLAUDE_CODE_SESSION_ID` (Claude Code sets it for its MCP servers; `--resume <id>`
//! keeps it), or the Claude process itself (its pid and start time). Its files live in
//! `CONFIG_DIR/sessions/<name>/` (0700): `session.json` (0600, keys and restored state,
//! written atomically) and `inbox.db`. A lock file keeps two live processes from serving
//! the same session identity; the second one gets an identity of its own.
//!
//! What it must not do: print secret keys, or touch anything outside its directory
//! except pruning session directories unused for longer than the broker retains them.

use claudemesh_proto::time::now_ms;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use claudemesh_crypto::SecretKey;
use claudemesh_proto::frames::GroupRef;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigDir, write_private};

/// Session directories unused for longer than this are removed (the broker forgets a
/// session key after 7 days, and its queued messages expire after 7 days too).
const PRUNE_AFTER_MS: i64 = 8 * 24 * 60 * 60 * 1000;

/// What is persisted per session.
#[derive(Default, Serialize, Deserialize)]
struct Stored {
    version: u32,
    created_at: i64,
    last_used: i64,
    /// Mesh id → session secret key (seed‖pk, 128 hex). Never printed.
    keys: BTreeMap<String, String>,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    groups: Vec<GroupRef>,
}

/// The session this process serves.
pub struct Session {
    /// The directory name: `named-…`, `cc-…` or `proc-…`.
    pub name: String,
    pub dir: PathBuf,
    stored: Stored,
    /// Held for the life of the process.
    _lock: std::fs::File,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A file-name-safe form of `raw`: letters, digits, `-` and `_`, at most 64 characters;
/// anything changed gets a short hash of the original so names cannot collide.
fn safe(raw: &str) -> String {
    let cleaned: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(64)
        .collect();
    if cleaned == raw && !cleaned.is_empty() {
        return cleaned;
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(raw.as_bytes());
    let tag: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("{}{tag}", cleaned.get(..48).unwrap_or(&cleaned))
}

/// The Claude Code process this server belongs to: `CLAUDE_PID` (set by Claude Code for
/// its subprocesses), else the parent process (Claude Code starts MCP servers directly).
pub fn claude_pid() -> u32 {
    std::env::var("CLAUDE_PID")
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(std::os::unix::process::parent_id)
}

/// The process's start time in clock ticks since boot (Linux), to tell a pid's reuse apart.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are plain.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The session name for this process, from the environment (see the module doc).
pub fn session_name() -> String {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let Some(name) = var("CLAUDEMESH_SESSION") {
        return format!("named-{}", safe(&name));
    }
    if let Some(id) = var("CLAUDE_CODE_SESSION_ID") {
        return format!("cc-{}", safe(&id));
    }
    let pid = claude_pid();
    match start_time(pid) {
        Some(t) => format!("proc-{pid}-{t}"),
        None => format!("proc-{pid}"),
    }
}

impl Session {
    /// Open (creating if needed) the session `name` under `config`. If another live
    /// process still holds it after a few seconds, a separate identity `name-p<pid>` is
    /// used instead.
    pub fn open(config: &ConfigDir, name: &str) -> anyhow::Result<Self> {
        Self::open_waiting(config, name, std::time::Duration::from_secs(3))
    }

    fn open_waiting(
        config: &ConfigDir,
        name: &str,
        wait: std::time::Duration,
    ) -> anyhow::Result<Self> {
        let root = config.sessions_dir();
        config.ensure_private_dir(&root)?;
        prune(&root, name);
        // A session restarted with /mcp may start before the old process has exited:
        // give it a moment to let go before falling back to an identity of its own.
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            if let Some(s) = Self::open_exact(config, &root, name)? {
                return Ok(s);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        match Self::open_exact(config, &root, name)? {
            Some(s) => Ok(s),
            None => {
                let own = format!("{name}-p{}", std::process::id());
                tracing::warn!(
                    session = name,
                    "session already served by another process; using {own}"
                );
                Self::open_exact(config, &root, &own)?
                    .ok_or_else(|| anyhow!("session {own} is locked by another process"))
            }
        }
    }

    fn open_exact(config: &ConfigDir, root: &Path, name: &str) -> anyhow::Result<Option<Self>> {
        let dir = root.join(name);
        config.ensure_private_dir(&dir)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("session.lock"))
            .with_context(|| format!("cannot open the lock in {}", dir.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", dir.display()));
            }
        }
        let file = dir.join("session.json");
        let mut stored: Stored = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is damaged; remove it", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored {
                version: 1,
                created_at: now_ms(),
                ..Stored::default()
            },
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        };
        stored.last_used = now_ms();
        let session = Self {
            name: name.to_owned(),
            dir,
            stored,
            _lock: lock,
        };
        session.save()?;
        Ok(Some(session))
    }

    fn save(&self) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.stored)?;
        write_private(&self.dir.join("session.json"), &bytes)
    }

    /// This session's key for `mesh_id`, generated and saved on first use.
    pub fn key_for(&mut self, mesh_id: &str) -> anyhow::Result<SecretKey> {
        if let Some(hex) = self.stored.keys.get(mesh_id) {
            return SecretKey::from_sk64_hex(hex)
                .map_err(|_| anyhow!("the session key in {} is damaged", self.dir.display()));
        }
        let key = SecretKey::generate();
        self.stored
            .keys
            .insert(mesh_id.to_owned(), key.to_sk64_hex().to_string());
        self.save()?;
        Ok(key)
    }

    pub fn inbox_file(&self) -> PathBuf {
        self.dir.join("inbox.db")
    }

    pub fn summary(&self) -> Option<String> {
        self.stored.summary.clone()
    }

    pub fn groups(&self) -> Vec<GroupRef> {
        self.stored.groups.clone()
    }

    /// Remember the summary and groups so a restart of this session restores them.
    pub fn remember(
        &mut self,
        summary: Option<String>,
        groups: Vec<GroupRef>,
    ) -> anyhow::Result<()> {
        self.stored.summary = summary;
        self.stored.groups = groups;
        self.stored.last_used = now_ms();
        self.save()
    }
}

/// A session identity kept on this machine, as `claudemesh sessions` lists it.
#[derive(Debug, Clone)]
pub struct Local {
    pub name: String,
    pub dir: PathBuf,
    /// Mesh id → this session's public key there (hex).
    pub keys: BTreeMap<String, String>,
    pub last_used: i64,
    /// A live `claudemesh mcp` holds its lock.
    pub running: bool,
}

impl Session {
    /// Whether session `name` was a peer before (its identity exists on disk).
    pub fn exists(config: &ConfigDir, name: &str) -> bool {
        std::fs::read(config.sessions_dir().join(name).join("session.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Stored>(&b).ok())
            .is_some_and(|s| !s.keys.is_empty())
    }

    /// Every session identity under `config`, most recently used first.
    pub fn list(config: &ConfigDir) -> Vec<Local> {
        let Ok(entries) = std::fs::read_dir(config.sessions_dir()) else {
            return Vec::new();
        };
        let mut all: Vec<Local> = entries
            .flatten()
            .filter_map(|entry| {
                let dir = entry.path();
                let stored: Stored =
                    serde_json::from_slice(&std::fs::read(dir.join("session.json")).ok()?).ok()?;
                let keys = stored
                    .keys
                    .iter()
                    .filter_map(|(mesh, hex)| {
                        Some((
                            mesh.clone(),
                            SecretKey::from_sk64_hex(hex).ok()?.public().to_hex(),
                        ))
                    })
                    .collect();
                Some(Local {
                    name: entry.file_name().to_string_lossy().into_owned(),
                    running: locked(&dir),
                    dir,
                    keys,
                    last_used: stored.last_used,
                })
            })
            .collect();
        all.sort_by_key(|l| std::cmp::Reverse(l.last_used));
        all
    }
}

impl Session {
    /// Remove a session directory unless a server holds it: the lock is taken first, so
    /// a session resuming at the same moment keeps its identity. Returns whether removed.
    pub fn remove_if_idle(dir: &Path) -> anyhow::Result<bool> {
        let Ok(lock) = std::fs::File::open(dir.join("session.lock")) else {
            return Ok(false);
        };
        if lock.try_lock().is_err() {
            return Ok(false);
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        Ok(true)
    }
}

/// Whether a live process holds the session lock in `dir`.
fn locked(dir: &Path) -> bool {
    std::fs::File::open(dir.join("session.lock"))
        .map(|f| f.try_lock().is_err())
        .unwrap_or(false)
}

/// Remove session directories unused for longer than [`PRUNE_AFTER_MS`] (not `keep`,
/// and not one whose lock is held by a live process).
fn prune(root: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let now = now_ms();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_str() == Some(keep) {
            continue;
        }
        let dir = entry.path();
        let last_used = std::fs::read(dir.join("session.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Stored>(&b).ok())
            .map(|s| s.last_used);
        let Some(last_used) = last_used else { continue };
        if now - last_used < PRUNE_AFTER_MS {
            continue;
        }
        if !locked(&dir) {
            tracing::info!(session = ?name, "removing a session unused for over 8 days");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names() {
        assert_eq!(safe("abc-123_x"), "abc-123_x");
        let odd = safe("../../etc/passwd");
        assert!(odd.chars().all(|c| c.is_ascii_alphanumeric()), "{odd}");
        assert_ne!(safe("a/b"), safe("a.b"), "changed names carry a hash");
        assert!(safe(&"x".repeat(200)).len() <= 64);
        assert!(!safe("").is_empty());
    }

    #[test]
    fn start_time_of_this_process() {
        if Path::new("/proc/self/stat").exists() {
            assert!(start_time(std::process::id()).is_some());
        }
        assert!(start_time(u32::MAX).is_none());
    }

    #[test]
    fn keys_are_stable_and_a_second_process_gets_its_own_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let config = ConfigDir::at(tmp.path().join("cfg"));
        let mut s = Session::open(&config, "named-t").unwrap();
        let k1 = s.key_for("mesh1").unwrap().public();
        assert_eq!(s.key_for("mesh1").unwrap().public(), k1);
        assert_ne!(s.key_for("mesh2").unwrap().public(), k1, "one key per mesh");
        s.remember(Some("doing x".into()), vec![]).unwrap();
        // The lock is held: another opener gets a distinct identity.
        let other = Session::open_waiting(&config, "named-t", std::time::Duration::ZERO).unwrap();
        assert_ne!(other.name, "named-t");
        drop(other);
        drop(s);
        let mut again = Session::open(&config, "named-t").unwrap();
        assert_eq!(again.name, "named-t");
        assert_eq!(
            again.key_for("mesh1").unwrap().public(),
            k1,
            "same session, same key"
        );
        assert_eq!(again.summary().as_deref(), Some("doing x"));
        assert!(!format!("{again:?}").contains(&again.stored.keys["mesh1"]));
    }
}
