//! Counters and gauges exposed at `/metrics` in the Prometheus text format. Plain atomics:
//! cheap to bump from any thread, no registry, no allocation on the hot path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_active: AtomicI64,
    pub messages_routed_total: AtomicU64,
    pub messages_rejected_total: AtomicU64,
    pub deliveries_pushed_total: AtomicU64,
    pub deliveries_redelivered_total: AtomicU64,
    pub deliveries_acked_total: AtomicU64,
    pub queue_depth: AtomicI64,
    pub commits_total: AtomicU64,
    pub commit_batch_frames_total: AtomicU64,
    pub commit_failures_total: AtomicU64,
    pub slow_consumers_total: AtomicU64,
    pub rate_limited_total: AtomicU64,
    pub hello_rejected_total: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Render in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "broker_connections_active",
            "Authenticated WebSocket connections.",
            self.connections_active.load(Relaxed),
        );
        gauge(
            "broker_queue_depth",
            "Unacked, unexpired deliveries.",
            self.queue_depth.load(Relaxed),
        );
        let counters: [(&str, &str, &AtomicU64); 11] = [
            (
                "broker_messages_routed_total",
                "Messages accepted and committed.",
                &self.messages_routed_total,
            ),
            (
                "broker_messages_rejected_total",
                "Sends refused (unknown recipient, rate limit, malformed…).",
                &self.messages_rejected_total,
            ),
            (
                "broker_deliveries_pushed_total",
                "Pushes of deliveries, first attempts.",
                &self.deliveries_pushed_total,
            ),
            (
                "broker_deliveries_redelivered_total",
                "Pushes after a lease expired.",
                &self.deliveries_redelivered_total,
            ),
            (
                "broker_deliveries_acked_total",
                "Deliveries acked by their recipient.",
                &self.deliveries_acked_total,
            ),
            (
                "broker_commits_total",
                "Group commits.",
                &self.commits_total,
            ),
            (
                "broker_commit_batch_frames_total",
                "Commands applied across all group commits.",
                &self.commit_batch_frames_total,
            ),
            (
                "broker_commit_failures_total",
                "Commits that failed.",
                &self.commit_failures_total,
            ),
            (
                "broker_slow_consumers_total",
                "Connections dropped because their outbound buffer was full.",
                &self.slow_consumers_total,
            ),
            (
                "broker_rate_limited_total",
                "Frames refused by rate limits.",
                &self.rate_limited_total,
            ),
            (
                "broker_hello_rejected_total",
                "Hellos refused.",
                &self.hello_rejected_total,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        out
    }
}
