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
    pub fn spawn(bin: Option<PathBuf>, database_url: Option<&str>) -> anyhow::Result<Self> {
        let bin = program(
            bin,
            "claudemesh-broker",
            "claudemesh-broker",
            "--broker-bin",
        )?;
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new(&bin);
        cmd.args(["--listen", "127.0.0.1:0", "--no-rate-limits", "--data-dir"])
            .arg(dir.path());
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
        Ok(Self {
            http_url: http_of(&ws_url),
            ws_url,
            child: Some(child),
            data_dir: Some(dir),
        })
    }

    /// An already running broker.
    pub fn external(ws_url: &str) -> Self {
        Self {
            http_url: http_of(ws_url),
            ws_url: ws_url.to_owned(),
            child: None,
            data_dir: None,
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
