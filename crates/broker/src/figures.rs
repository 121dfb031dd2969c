//! The broker's own figures for the operators' dashboard, kept in memory: a sample of
//! the metrics every [`EVERY`], the last hour of them ([`KEEP`]), and rates derived from
//! two samples. No external metrics system is needed; `/metrics` has the same numbers
//! for one that exists.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claudemesh_proto::time::now_ms;
use serde::{Deserialize, Serialize};

use crate::http::serve::Admission;
use crate::metrics::Metrics;
use crate::state::Shared;

/// How often a sample is taken.
pub const EVERY: Duration = Duration::from_secs(10);
/// Samples kept: one hour.
pub const KEEP: usize = 360;

/// The counters and gauges at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub at_ms: i64,
    pub connections: i64,
    pub unauthenticated: u64,
    pub queue_depth: i64,
    pub routed: u64,
    pub rejected: u64,
    pub pushed: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub commits: u64,
    pub commit_frames: u64,
    pub commit_micros: u64,
    pub commit_failures: u64,
    pub slow_consumers: u64,
    pub rate_limited: u64,
    pub preauth_refused: u64,
}

impl Sample {
    pub fn take(m: &Metrics, admission: Option<&Admission>) -> Self {
        Self {
            at_ms: now_ms(),
            connections: m.connections_active.get(),
            unauthenticated: admission.map_or(0, |a| a.count() as u64),
            queue_depth: m.queue_depth.get(),
            routed: m.messages_routed_total.get(),
            rejected: m.messages_rejected_total.get(),
            pushed: m.deliveries_pushed_total.get(),
            redelivered: m.deliveries_redelivered_total.get(),
            acked: m.deliveries_acked_total.get(),
            commits: m.commits_total.get(),
            commit_frames: m.commit_batch_frames_total.get(),
            commit_micros: m.commit_micros_total.get(),
            commit_failures: m.commit_failures_total.get(),
            slow_consumers: m.slow_consumers_total.get(),
            rate_limited: m.rate_limited_total.get(),
            preauth_refused: m.preauth_refused_total.get(),
        }
    }
}

/// What happened between two samples, per second (or per commit).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rates {
    pub at_ms: i64,
    pub messages_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub acks_per_sec: f64,
    /// Commands per group commit.
    pub batch_size: f64,
    /// Mean commit time, milliseconds.
    pub commit_ms: f64,
    pub refusals_per_sec: f64,
}

impl Rates {
    pub fn between(a: &Sample, b: &Sample) -> Self {
        let secs = ((b.at_ms - a.at_ms) as f64 / 1_000.0).max(0.001);
        let d = |x: u64, y: u64| y.saturating_sub(x) as f64;
        let commits = d(a.commits, b.commits);
        let per_commit = |x: f64| if commits > 0.0 { x / commits } else { 0.0 };
        Self {
            at_ms: b.at_ms,
            messages_per_sec: d(a.routed, b.routed) / secs,
            deliveries_per_sec: d(a.pushed, b.pushed) / secs,
            acks_per_sec: d(a.acked, b.acked) / secs,
            batch_size: per_commit(d(a.commit_frames, b.commit_frames)),
            commit_ms: per_commit(d(a.commit_micros, b.commit_micros)) / 1_000.0,
            refusals_per_sec: (d(a.rate_limited, b.rate_limited)
                + d(a.preauth_refused, b.preauth_refused))
                / secs,
        }
    }
}

/// The last hour of samples.
#[derive(Debug, Default)]
pub struct Figures {
    samples: Mutex<VecDeque<Sample>>,
}

impl Figures {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn record(&self, s: Sample) {
        let mut q = self.lock();
        if q.len() >= KEEP {
            q.pop_front();
        }
        q.push_back(s);
    }

    pub fn history(&self) -> Vec<Sample> {
        self.lock().iter().copied().collect()
    }
}

/// Sample every [`EVERY`] until shutdown.
pub async fn run(shared: Arc<Shared>, admission: Arc<Admission>) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        shared
            .figures
            .record(Sample::take(&shared.metrics, Some(&admission)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_two_samples_and_the_history_is_bounded() {
        let a = Sample {
            at_ms: 0,
            commits: 10,
            ..Sample::default()
        };
        let b = Sample {
            at_ms: 2_000,
            routed: 200,
            commits: 20,
            commit_frames: 100,
            commit_micros: 30_000,
            ..Sample::default()
        };
        let r = Rates::between(&a, &b);
        assert_eq!(r.messages_per_sec, 100.0);
        assert_eq!(r.batch_size, 10.0);
        assert_eq!(r.commit_ms, 3.0);
        let f = Figures::default();
        for _ in 0..(KEEP + 5) {
            f.record(a);
        }
        assert_eq!(f.history().len(), KEEP);
    }
}
