//! The broker under test: a real `claudemesh-broker` process started in a temporary data
//! directory (or an external one), sampled from /proc for resident memory and open file
//! descriptors, plus an fsync probe of the data directory so a slow disk is visible.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A broker the benchmark talks to.
pub struct Broker {
    pub ws_url: String,
    pub http_url: String,
    child: Option<Child>,
    pub data_dir: Option<tempfile::TempDir>,
    /// How it was started, to start it again (`restart`).
    bin: Option<PathBuf>,
    database_url: Option<String>,
    /// Running under `valgrind --tool=callgrind`, which writes here (see [`Broker::instrument`]).
    callgrind_out: Option<PathBuf>,
}

/// The program `explicit`, else `name` next to this binary; an error says how to get it.
pub fn program(
    explicit: Option<PathBuf>,
    name: &str,
    package: &str,
    flag: &str,
) -> anyhow::Result<PathBuf> {
    let bin = match explicit {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name(name),
    };
    if !bin.exists() {
        bail!(
            "{} not found; build it (cargo build --release -p {package}) or pass {flag}",
            bin.display()
        );
    }
    Ok(bin)
}

impl Broker {
    /// Start `claudemesh-broker` (next to this binary unless `bin` is given) on a free port.
    pub fn spawn(
        bin: Option<PathBuf>,
        database_url: Option<&str>,
        callgrind: bool,
    ) -> anyhow::Result<Self> {
        let bin = program(
            bin,
            "claudemesh-broker",
            "claudemesh-broker",
            "--broker-bin",
        )?;
        let dir = tempfile::tempdir()?;
        let callgrind_out = callgrind.then(|| dir.path().join("callgrind.out"));
        let (child, ws_url) = start(
            &bin,
            "127.0.0.1:0",
            dir.path(),
            database_url,
            callgrind_out.as_deref(),
        )?;
        Ok(Self {
            http_url: http_of(&ws_url),
            ws_url,
            child: Some(child),
            data_dir: Some(dir),
            bin: Some(bin),
            database_url: database_url.map(str::to_owned),
            callgrind_out,
        })
    }

    /// Under callgrind: count the broker's instructions from now on (`on`), or stop.
    /// Startup, enrollment and connecting run uninstrumented, so only the measured part
    /// is counted.
    pub fn instrument(&self, on: bool) -> anyhow::Result<()> {
        let (Some(_), Some(pid)) = (&self.callgrind_out, self.pid()) else {
            return Ok(());
        };
        let status = Command::new("callgrind_control")
            .args(["-i", if on { "on" } else { "off" }, &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running callgrind_control (valgrind's package)")?;
        anyhow::ensure!(status.success(), "callgrind_control -i failed: {status}");
        Ok(())
    }

    /// Under callgrind: stop the broker (SIGTERM, so callgrind writes its totals) and
    /// return the instructions counted while instrumented, and where the profile was kept
    /// (for `callgrind_annotate`).
    pub fn instructions(&mut self) -> anyhow::Result<(u64, PathBuf)> {
        let out = self
            .callgrind_out
            .clone()
            .context("not started under callgrind")?;
        let mut child = self.child.take().context("no broker process")?;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed: {status}");
        child.wait()?;
        let text =
            std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
        let kept = std::env::temp_dir().join(format!("claudemesh-callgrind.{}.out", child.id()));
        std::fs::write(&kept, &text)?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        };
        let total = field("totals:")
            .or_else(|| field("summary:"))
            .context("no totals in the callgrind output")?;
        Ok((total, kept))
    }

    /// SIGKILL the broker and start it again on the same address, data directory and
    /// database (a crash and a restart, as a supervisor would do it).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let bin = self.bin.clone().context("only a started broker restarts")?;
        let dir = self.data_dir.as_ref().context("no data directory")?;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let listen = self
            .ws_url
            .trim_start_matches("ws://")
            .trim_end_matches("/ws")
            .to_owned();
        let (child, ws_url) = start(
            &bin,
            &listen,
            dir.path(),
            self.database_url.as_deref(),
            None,
        )?;
        anyhow::ensure!(
            ws_url == self.ws_url,
            "restarted on {ws_url}, not {}",
            self.ws_url
        );
        self.child = Some(child);
        Ok(())
    }

    /// An already running broker.
    pub fn external(ws_url: &str) -> Self {
        Self {
            http_url: http_of(ws_url),
            ws_url: ws_url.to_owned(),
            child: None,
            data_dir: None,
            bin: None,
            database_url: None,
            callgrind_out: None,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Connections a run needs when that is more than a broker serves by default (set
/// once, before any broker starts).
pub static MAX_CONNECTIONS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Start `bin` listening on `listen` (under callgrind, uninstrumented at first, when
/// `callgrind_out` is given); returns the process and the URL it printed.
fn start(
    bin: &Path,
    listen: &str,
    dir: &Path,
    database_url: Option<&str>,
    callgrind_out: Option<&Path>,
) -> anyhow::Result<(Child, String)> {
    let mut cmd = match callgrind_out {
        Some(out) => {
            let mut c = Command::new("valgrind");
            c.args(["--tool=callgrind", "--instr-atstart=no"])
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(bin);
            c
        }
        None => Command::new(bin),
    };
    // One loopback address stands for every peer's own: the per-address cap on
    // connections before their hello is lifted to the total cap.
    cmd.args(["--listen", listen, "--no-rate-limits"])
        .args(["--max-unauthenticated-per-source", "1024", "--data-dir"])
        .arg(dir);
    // Past the default cap, as many as the run needs (the fd limit was raised for it).
    if let Some(n) = MAX_CONNECTIONS.get() {
        cmd.args(["--max-connections", &n.to_string()]);
    }
    if let Some(url) = database_url {
        cmd.args(["--database-url", url]);
    }
    cmd.env("CLAUDEMESH_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let ws_url = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .context("the broker did not print its URL")?
        .to_owned();
    Ok((child, ws_url))
}

fn http_of(ws: &str) -> String {
    ws.replacen("ws://", "http://", 1)
        .trim_end_matches("/ws")
        .to_owned()
}

/// Resident set size in KiB (`VmRSS`) and its peak (`VmHWM`).
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

pub fn open_fds(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

/// Samples the broker processes every 100 ms until stopped.
pub struct Sampler {
    pub peak_rss_kib: Arc<AtomicU64>,
    pub max_fds: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    /// Sample these processes; the figures are sums over them (peak of each).
    pub fn start(pids: Vec<u32>) -> Self {
        let s = Self {
            peak_rss_kib: Arc::default(),
            max_fds: Arc::default(),
            stop: Arc::default(),
        };
        if !pids.is_empty() {
            let (rss, fds, stop) = (s.peak_rss_kib.clone(), s.max_fds.clone(), s.stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    let hwm: u64 = pids
                        .iter()
                        .filter_map(|p| rss_kib(*p))
                        .map(|(_, h)| h)
                        .sum();
                    rss.fetch_max(hwm, Relaxed);
                    let n: u64 = pids.iter().filter_map(|p| open_fds(*p)).sum();
                    fds.fetch_max(n, Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
        s
    }

    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }
}

/// Median time of 20 × (write 4 KiB + fsync) in `dir`, in milliseconds.
pub fn fsync_probe(dir: &Path) -> Option<f64> {
    let path = dir.join("fsync-probe.tmp");
    let mut file = std::fs::File::create(&path).ok()?;
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        file.write_all(&[7u8; 4096]).ok()?;
        file.sync_all().ok()?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = std::fs::remove_file(&path);
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied()
}
