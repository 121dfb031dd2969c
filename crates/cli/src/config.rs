//! The local identity store: `CLAUDEMESH_CONFIG_DIR` (default `~/.claudemesh`), mode 0700,
//! holding `config.json` (mode 0600, written atomically: temp file, fsync, rename) with one
//! entry per joined mesh and which one is current, `inbox.db` (the CLI's local inbox),
//! `sessions/` (one directory per Claude Code session, see `mcp::session`) and `run/`
//! (the sockets through which hooks reach their session's MCP server).
//!
//! Secret keys live only here. Nothing in this module prints them; `MeshEntry`'s `Debug`
//! omits the key.

use claudemesh_proto::authority::Role;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use claudemesh_crypto::SecretKey;
use serde::{Deserialize, Serialize};

/// One mesh this identity belongs to.
#[derive(Clone, Serialize, Deserialize)]
pub struct MeshEntry {
    pub mesh_id: String,
    pub slug: String,
    /// `ws://host:port/ws`.
    pub broker_url: String,
    pub member_id: String,
    pub display_name: String,
    /// `owner`, `admin` or `member`.
    pub role: Role,
    /// libsodium-style seed‖pk, 128 hex. Never printed.
    pub secret_key: String,
    pub joined_at: i64,
}

impl std::fmt::Debug for MeshEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshEntry")
            .field("slug", &self.slug)
            .field("mesh_id", &self.mesh_id)
            .field("broker_url", &self.broker_url)
            .field("member_id", &self.member_id)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl MeshEntry {
    pub fn key(&self) -> anyhow::Result<SecretKey> {
        SecretKey::from_sk64_hex(&self.secret_key).map_err(|_| {
            anyhow!(
                "the key for mesh '{}' in the config is damaged; re-join the mesh",
                self.slug
            )
        })
    }

    /// `http://host:port` for the broker's HTTP API.
    pub fn http_base(&self) -> anyhow::Result<String> {
        http_base(&self.broker_url)
    }
}

/// `ws://host:port/ws` → `http://host:port` (and `wss` → `https`).
pub fn http_base(ws_url: &str) -> anyhow::Result<String> {
    let (scheme, rest) = if let Some(r) = ws_url.strip_prefix("ws://") {
        ("http", r)
    } else if let Some(r) = ws_url.strip_prefix("wss://") {
        ("https", r)
    } else {
        bail!("broker URL must start with ws:// or wss:// (got '{ws_url}')");
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        bail!("broker URL '{ws_url}' has no host");
    }
    Ok(format!("{scheme}://{host}"))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    pub version: u32,
    /// Slug of the current mesh.
    pub current: Option<String>,
    pub meshes: BTreeMap<String, MeshEntry>,
}

impl Config {
    /// The mesh to act on: `--mesh SLUG`, else the current one.
    pub fn mesh(&self, slug: Option<&str>) -> anyhow::Result<&MeshEntry> {
        let slug = match slug.or(self.current.as_deref()) {
            Some(s) => s,
            None if self.meshes.is_empty() => bail!(
                "you have not joined a mesh yet: run `claudemesh join LINK` or `claudemesh mesh create NAME --broker URL`"
            ),
            None => bail!("no current mesh; pass --mesh (one of: {})", self.slugs()),
        };
        self.meshes.get(slug).ok_or_else(|| {
            anyhow!(
                "you are not a member of a mesh called '{slug}' (yours: {})",
                self.slugs()
            )
        })
    }

    fn slugs(&self) -> String {
        if self.meshes.is_empty() {
            "none".into()
        } else {
            self.meshes.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }

    /// Add or replace a mesh and make it current.
    pub fn insert(&mut self, entry: MeshEntry) {
        self.current = Some(entry.slug.clone());
        self.meshes.insert(entry.slug.clone(), entry);
    }

    pub fn remove(&mut self, slug: &str) -> Option<MeshEntry> {
        let removed = self.meshes.remove(slug);
        if self.current.as_deref() == Some(slug) {
            self.current = self.meshes.keys().next().cloned();
        }
        removed
    }
}

/// The configuration directory.
#[derive(Debug, Clone)]
pub struct ConfigDir {
    path: PathBuf,
}

impl ConfigDir {
    /// A configuration directory at `path`.
    #[cfg(test)]
    pub fn at(path: PathBuf) -> Self {
        Self { path }
    }

    /// `CLAUDEMESH_CONFIG_DIR`, else `~/.claudemesh`.
    pub fn from_env() -> anyhow::Result<Self> {
        if let Some(dir) = std::env::var_os("CLAUDEMESH_CONFIG_DIR").filter(|d| !d.is_empty()) {
            return Ok(Self {
                path: PathBuf::from(dir),
            });
        }
        let home =
            std::env::var_os("HOME").context("HOME is not set; set CLAUDEMESH_CONFIG_DIR")?;
        Ok(Self {
            path: PathBuf::from(home).join(".claudemesh"),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn config_file(&self) -> PathBuf {
        self.path.join("config.json")
    }

    pub fn inbox_file(&self) -> PathBuf {
        self.path.join("inbox.db")
    }

    /// One directory per Claude Code session.
    pub fn sessions_dir(&self) -> PathBuf {
        self.path.join("sessions")
    }

    /// Unix sockets of running MCP servers, one per Claude Code process.
    pub fn run_dir(&self) -> PathBuf {
        self.path.join("run")
    }

    /// Create `dir` (and this config directory) with mode 0700.
    pub fn ensure_private_dir(&self, dir: &Path) -> anyhow::Result<()> {
        self.ensure()?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        set_mode(dir, 0o700)
    }

    /// Create the directory (0700) if needed.
    pub fn ensure(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.path)
            .with_context(|| format!("cannot create {}", self.path.display()))?;
        set_mode(&self.path, 0o700)
    }

    pub fn load(&self) -> anyhow::Result<Config> {
        let file = self.config_file();
        match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not valid; fix or remove it", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config {
                version: 1,
                ..Config::default()
            }),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
        }
    }

    /// Write atomically: a 0600 temp file in the same directory, fsync, rename, fsync dir.
    pub fn save(&self, config: &Config) -> anyhow::Result<()> {
        self.ensure()?;
        write_private(&self.config_file(), &serde_json::to_vec_pretty(config)?)
    }

    /// Permission problems worth fixing (for `doctor` and a warning on use).
    pub fn permission_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (path, want) in [
            (self.path.clone(), 0o700),
            (self.config_file(), 0o600),
            (self.inbox_file(), 0o600),
            (self.sessions_dir(), 0o700),
            (self.run_dir(), 0o700),
        ] {
            if let Some(mode) = mode_of(&path)
                && mode & 0o077 != 0
            {
                out.push(format!(
                    "{} is mode {:o}; run: chmod {:o} {}",
                    path.display(),
                    mode & 0o777,
                    want,
                    path.display()
                ));
            }
        }
        out
    }
}

/// Replace `file` atomically with `bytes`, mode 0600: a temp file beside it, fsync,
/// rename, fsync the directory.
pub fn write_private(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    {
        let mut f = open_private(&tmp)?;
        f.write_all(bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, file).with_context(|| format!("cannot replace {}", file.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(unix)]
fn open_private(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn mode_of(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
}

#[cfg(not(unix))]
fn mode_of(_: &Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(slug: &str) -> MeshEntry {
        MeshEntry {
            mesh_id: "m".into(),
            slug: slug.into(),
            broker_url: "ws://127.0.0.1:1/ws".into(),
            member_id: "u".into(),
            display_name: "me".into(),
            role: Role::Member,
            secret_key: SecretKey::generate().to_sk64_hex().to_string(),
            joined_at: 0,
        }
    }

    #[test]
    fn save_load_permissions_and_current() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ConfigDir {
            path: tmp.path().join("cfg"),
        };
        let mut c = dir.load().unwrap();
        assert!(c.mesh(None).unwrap_err().to_string().contains("join"));
        c.insert(entry("a"));
        c.insert(entry("b"));
        dir.save(&c).unwrap();
        let c = dir.load().unwrap();
        assert_eq!(c.mesh(None).unwrap().slug, "b");
        assert_eq!(c.mesh(Some("a")).unwrap().slug, "a");
        assert!(
            c.mesh(Some("zzz"))
                .unwrap_err()
                .to_string()
                .contains("a, b")
        );
        assert!(
            dir.permission_problems().is_empty(),
            "{:?}",
            dir.permission_problems()
        );
        assert_eq!(mode_of(&dir.config_file()).unwrap() & 0o777, 0o600);
        assert_eq!(mode_of(dir.path()).unwrap() & 0o777, 0o700);
        assert!(!format!("{:?}", c).contains(&c.meshes["a"].secret_key));
    }

    #[test]
    fn http_base_from_ws_url() {
        assert_eq!(
            http_base("ws://127.0.0.1:8787/ws").unwrap(),
            "http://127.0.0.1:8787"
        );
        assert_eq!(
            http_base("wss://mesh.example/ws").unwrap(),
            "https://mesh.example"
        );
        assert!(http_base("http://x").is_err());
    }
}
