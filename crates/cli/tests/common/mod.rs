//! Helpers shared by the CLI integration tests: a user with its own config directory
//! running the real `claudemesh` binary, a broker on port 0, a mesh of three, and the
//! broker's stored message bodies for plaintext checks.

#![allow(
    dead_code, // each test binary uses a different subset
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod browser;
pub mod pki;

use std::process::Output;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use claudemesh_broker::{Broker, BrokerConfig, BrokerHandle};
use serde_json::Value;

pub struct User {
    pub dir: tempfile::TempDir,
    /// Extra environment for every run (e.g. `CLAUDEMESH_CA_FILE`).
    pub env: Vec<(String, String)>,
}

impl User {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            env: Vec::new(),
        }
    }

    /// A user whose runs also get `key=value` in their environment.
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The command line of `claudemesh ARGS` as this user.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_claudemesh"));
        cmd.args(args)
            .env("CLAUDEMESH_CONFIG_DIR", self.dir.path().join("cfg"))
            .env_remove("CLAUDEMESH_LOG")
            .env("USER", "tester")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    /// Start a long-running `claudemesh ARGS` (killed when dropped), stdout piped.
    pub fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        self.command(args)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    pub async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("claudemesh hung")
            .unwrap()
    }

    /// Run, require success, return stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "claudemesh {args:?} failed:\nstdout: {stdout}\nstderr: {stderr}"
        );
        stdout.into_owned()
    }

    pub async fn json(&self, args: &[&str]) -> Value {
        let mut with = args.to_vec();
        with.push("--json");
        let text = self.ok(&with).await;
        serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"))
    }

    /// Run, require failure with exactly one line on stderr (no panic, no backtrace); return it.
    pub async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "claudemesh {args:?} should have failed; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains("warning:")).collect();
        assert_eq!(
            lines.len(),
            1,
            "one actionable line expected, got: {stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
            "{stderr}"
        );
        lines[0].to_owned()
    }
}

pub async fn broker() -> (BrokerHandle, tempfile::TempDir) {
    broker_with(|_| {}).await
}

/// A broker whose test config is first adjusted by `tweak`.
pub async fn broker_with(
    tweak: impl FnOnce(&mut BrokerConfig),
) -> (BrokerHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig::for_tests(dir.path().to_path_buf());
    tweak(&mut config);
    let b = Broker::spawn(config).await.unwrap();
    (b, dir)
}

/// Owner creates a mesh; alice and bob join with their own invites.
pub async fn mesh(b: &BrokerHandle) -> (User, User, User) {
    mesh_with_env(b, &[]).await
}

/// [`mesh`], every user running with `env` (e.g. `CLAUDEMESH_CA_FILE`).
pub async fn mesh_with_env(b: &BrokerHandle, env: &[(&str, &str)]) -> (User, User, User) {
    let user = || env.iter().fold(User::new(), |u, (k, v)| u.with_env(k, v));
    let owner = user();
    let created = owner
        .json(&[
            "mesh",
            "create",
            "Acme Payments",
            "--broker",
            &b.ws_url(),
            "--as",
            "olivia",
        ])
        .await;
    assert_eq!(created["slug"], "acme-payments");
    let (alice, bob) = (user(), user());
    for (user, name) in [(&alice, "alice"), (&bob, "bob")] {
        let link = owner.ok(&["invite"]).await.trim().to_owned();
        assert!(link.starts_with("ic://join/"), "{link}");
        let joined = user.json(&["join", &link, "--name", name]).await;
        assert_eq!(joined["role"], "member");
    }
    (owner, alice, bob)
}

/// Every stored message body and nonce as the broker holds it, plus their base64 decodings.
/// Panics if nothing is stored, so the plaintext check cannot pass vacuously.
pub fn stored_bodies(path: &std::path::Path) -> String {
    let db = rusqlite::Connection::open(path).unwrap();
    let mut stmt = db
        .prepare("SELECT nonce, ciphertext FROM messages")
        .unwrap();
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        rows.len() >= 2,
        "expected at least two stored messages, found {}",
        rows.len()
    );
    let mut text = String::new();
    for (nonce, ct) in rows {
        for field in [nonce, ct] {
            text.push_str(&field);
            if let Ok(bytes) = B64.decode(&field) {
                text.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    text
}
