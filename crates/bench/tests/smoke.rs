//! The benchmark tool works and counts correctly: a tiny run of the real
//! `claudemesh-bench` binary against a real broker delivers everything it sent, once.
//! No timing thresholds: performance is measured by running the tool, not by tests.

// Integration tests: helpers outside #[test] fns may unwrap and panic like the tests do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use claudemesh_broker::{Broker, BrokerConfig};
use serde_json::Value;

async fn bench(url: &str, args: &[&str]) -> Value {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_claudemesh-bench"))
        .args(["--broker-url", url, "--json", "--drain-timeout", "30"])
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_burst_fanout_and_latency_count_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig::for_tests(dir.path().into());
    config.rate_limits.enabled = false;
    let b = Broker::spawn(config).await.unwrap();

    let r = bench(&b.ws_url(), &["--peers", "5", "--messages", "20"]).await;
    for key in [
        "peers",
        "messages_per_peer",
        "sent",
        "delivered",
        "lost",
        "duplicates",
        "e2e_p50_ms",
        "e2e_p95_ms",
        "e2e_p99_ms",
        "ack_p50_ms",
        "ack_p99_ms",
        "throughput_msgs_per_s",
        "broker_peak_rss_mb",
        "broker_max_fds",
    ] {
        assert!(r.get(key).is_some(), "missing {key} in {r}");
    }
    assert_eq!(
        (
            r["sent"].as_u64(),
            r["delivered"].as_u64(),
            r["lost"].as_u64(),
            r["duplicates"].as_u64()
        ),
        (Some(100), Some(100), Some(0), Some(0)),
        "{r}"
    );
    assert_eq!(r["rejected"], 0);

    let f = bench(
        &b.ws_url(),
        &["--scenario", "fanout", "--peers", "4", "--messages", "10"],
    )
    .await;
    assert_eq!(
        (
            f["sent"].as_u64(),
            f["delivered"].as_u64(),
            f["duplicates"].as_u64()
        ),
        (Some(10), Some(30), Some(0)),
        "{f}"
    );

    let l = bench(
        &b.ws_url(),
        &["--scenario", "idle-latency", "--messages", "20"],
    )
    .await;
    assert_eq!(
        (l["sent"].as_u64(), l["delivered"].as_u64()),
        (Some(20), Some(20)),
        "{l}"
    );
    b.shutdown().await;
}

/// The hooks scenario runs the real CLI: a session server and hook processes. Needs the
/// `claudemesh` binary next to the bench (`cargo test --workspace` builds both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_scenario_times_real_hook_processes() {
    let cli =
        std::path::Path::new(env!("CARGO_BIN_EXE_claudemesh-bench")).with_file_name("claudemesh");
    assert!(
        cli.exists(),
        "{} is missing: run the workspace tests (cargo test --workspace builds it)",
        cli.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::spawn(BrokerConfig::for_tests(dir.path().into()))
        .await
        .unwrap();
    let r = bench(&b.ws_url(), &["--scenario", "hooks", "--messages", "5"]).await;
    assert_eq!(r["hook_runs"], 5, "{r}");
    for key in [
        "process_start_p50_ms",
        "hook_prompt_submit_p50_ms",
        "hook_prompt_submit_p99_ms",
        "hook_stop_p50_ms",
    ] {
        assert!(r[key].as_f64().is_some_and(|ms| ms > 0.0), "{key} in {r}");
    }
}
