//! A private PostgreSQL server for one test: `initdb` in a temporary directory, `pg_ctl`
//! to start, stop and restart it on a port of its own, trust authentication on
//! 127.0.0.1. A test that restarts PostgreSQL under load uses this instead of the
//! machine's server, which other tests are using at the same time.
//!
//! PostgreSQL refuses to run as root, so under root the server runs as the `postgres`
//! user (`setpriv`), which owns its directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running private server; stopped (immediately) and deleted when dropped.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// Run the server's programs as this user (when the test runs as root).
    user: Option<String>,
}

/// Where the server programs are: `CLAUDEMESH_PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian) that has `initdb`.
fn bindir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("CLAUDEMESH_PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
    })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl PgServer {
    /// Create and start a private server, or `None` after [`crate::skip`] when the
    /// PostgreSQL server programs are not installed.
    pub fn start(test: &str) -> Option<Self> {
        let Some(bin) = bindir() else {
            crate::skip(
                test,
                "the PostgreSQL server programs (initdb, pg_ctl) are not installed",
            );
            return None;
        };
        let user = is_root().then(|| "postgres".to_owned());
        let dir = std::env::temp_dir().join(crate::unique_name("cm_pgserver"));
        std::fs::create_dir(&dir).unwrap();
        let server = Self {
            bin,
            dir,
            port: free_port(),
            user,
        };
        if let Some(user) = &server.user {
            let chown = Command::new("chown")
                .arg(user)
                .arg(&server.dir)
                .status()
                .unwrap();
            assert!(chown.success(), "chown {user} {}", server.dir.display());
        }
        let data = server.data().display().to_string();
        server.run(
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "-N"],
        );
        server.start_again();
        Some(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// One of the server programs, to run as the server's user.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = match &self.user {
            Some(user) => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid", user, "--regid", user, "--init-groups"])
                    .arg(&path);
                c
            }
            None => Command::new(&path),
        };
        cmd.current_dir(&self.dir);
        cmd
    }

    /// Run one of the server programs, panicking with its output when it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start the (stopped) server on its port, and wait until it accepts connections.
    pub fn start_again(&self) {
        let data = self.data().display().to_string();
        let log = self.dir.join("server.log").display().to_string();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "start"],
        );
    }

    /// Stop the server the way an operator's restart does (`pg_ctl stop -m fast`: open
    /// transactions are rolled back, connections closed).
    pub fn stop(&self) {
        let data = self.data().display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@{}/postgres", self.addr())
    }

    /// The directory holding the server's data and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
