//! Counters and gauges exposed at `/metrics`, kept in a `prometheus-client` registry and
//! rendered in its OpenMetrics text format. The metrics are atomics (cheap to bump from
//! any thread, no allocation on the hot path); the library owns naming, escaping and the
//! exposition format, and brings histograms and labelled families when the dashboard and
//! several nodes need them.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug)]
pub struct Metrics {
    pub connections_active: Gauge,
    pub messages_routed_total: Counter,
    pub messages_rejected_total: Counter,
    pub deliveries_pushed_total: Counter,
    pub deliveries_redelivered_total: Counter,
    pub deliveries_acked_total: Counter,
    pub deliveries_parked_total: Counter,
    pub queue_depth: Gauge,
    pub commits_total: Counter,
    pub commit_batch_frames_total: Counter,
    pub commit_failures_total: Counter,
    /// Microseconds spent committing, across all group commits.
    pub commit_micros_total: Counter,
    pub slow_consumers_total: Counter,
    pub rate_limited_total: Counter,
    pub hello_rejected_total: Counter,
    pub preauth_refused_total: Counter,
    pub preauth_reserve_total: Counter,
    pub preauth_queued_total: Counter,
    pub preauth_queue_timeouts_total: Counter,
    pub presence_frames_total: Counter,
    pub presence_events_dropped_total: Counter,
    registry: Registry,
}

impl Metrics {
    /// Every series carries `node="<node>"`, so several nodes' figures can be told apart
    /// (and summed) by whatever scrapes them.
    pub fn new(node: &str) -> Self {
        let labels = [(
            std::borrow::Cow::Borrowed("node"),
            std::borrow::Cow::Owned(node.to_owned()),
        )];
        let mut m = Self {
            connections_active: Gauge::default(),
            messages_routed_total: Counter::default(),
            messages_rejected_total: Counter::default(),
            deliveries_pushed_total: Counter::default(),
            deliveries_redelivered_total: Counter::default(),
            deliveries_acked_total: Counter::default(),
            deliveries_parked_total: Counter::default(),
            queue_depth: Gauge::default(),
            commits_total: Counter::default(),
            commit_batch_frames_total: Counter::default(),
            commit_failures_total: Counter::default(),
            commit_micros_total: Counter::default(),
            slow_consumers_total: Counter::default(),
            rate_limited_total: Counter::default(),
            hello_rejected_total: Counter::default(),
            preauth_refused_total: Counter::default(),
            preauth_reserve_total: Counter::default(),
            preauth_queued_total: Counter::default(),
            preauth_queue_timeouts_total: Counter::default(),
            presence_frames_total: Counter::default(),
            presence_events_dropped_total: Counter::default(),
            registry: Registry::with_labels(labels.into_iter()),
        };
        let r = &mut m.registry;
        r.register(
            "broker_connections_active",
            "Authenticated WebSocket connections",
            m.connections_active.clone(),
        );
        r.register(
            "broker_queue_depth",
            "Unacked, unexpired deliveries",
            m.queue_depth.clone(),
        );
        // Counter names get their `_total` suffix from the library.
        let counters = [
            (
                "broker_messages_routed",
                "Messages accepted and committed",
                &m.messages_routed_total,
            ),
            (
                "broker_messages_rejected",
                "Sends refused (unknown recipient, rate limit, malformed...)",
                &m.messages_rejected_total,
            ),
            (
                "broker_deliveries_pushed",
                "Pushes of deliveries, first attempts",
                &m.deliveries_pushed_total,
            ),
            (
                "broker_deliveries_redelivered",
                "Pushes after a lease expired",
                &m.deliveries_redelivered_total,
            ),
            (
                "broker_deliveries_acked",
                "Deliveries acked by their recipient",
                &m.deliveries_acked_total,
            ),
            (
                "broker_deliveries_parked",
                "Deliveries pushed the most times without an ack, held until the next hello",
                &m.deliveries_parked_total,
            ),
            ("broker_commits", "Group commits", &m.commits_total),
            (
                "broker_commit_batch_frames",
                "Commands applied across all group commits",
                &m.commit_batch_frames_total,
            ),
            (
                "broker_commit_failures",
                "Commits that failed",
                &m.commit_failures_total,
            ),
            (
                "broker_commit_micros",
                "Microseconds spent in group commits (divide by broker_commits_total for the mean)",
                &m.commit_micros_total,
            ),
            (
                "broker_slow_consumers",
                "Connections dropped because their outbound buffer was full",
                &m.slow_consumers_total,
            ),
            (
                "broker_rate_limited",
                "Frames refused by rate limits",
                &m.rate_limited_total,
            ),
            (
                "broker_hello_rejected",
                "Hellos refused",
                &m.hello_rejected_total,
            ),
            (
                "broker_preauth_refused",
                "Connections closed at once: too many unauthenticated ones (in total or from one address)",
                &m.preauth_refused_total,
            ),
            (
                "broker_preauth_reserve",
                "Connections served from the operators' reserve (/health and /metrics only) because the unauthenticated cap was full",
                &m.preauth_reserve_total,
            ),
            (
                "broker_preauth_queued",
                "Connections queued because the unauthenticated cap (in total or of their address) was full; a WebSocket waits there for a place",
                &m.preauth_queued_total,
            ),
            (
                "broker_preauth_queue_timeouts",
                "Queued requests answered 503 for want of a place (a WebSocket upgrade waits 5 s for one; anything else takes one only if it is free)",
                &m.preauth_queue_timeouts_total,
            ),
            (
                "broker_presence_frames",
                "Presence frames sent (a v1 system push each, or one coalesced presence frame)",
                &m.presence_frames_total,
            ),
            (
                "broker_presence_events_dropped",
                "Presence events not sent to a recipient: cancelled within a tick, or past a v1 client's share of one",
                &m.presence_events_dropped_total,
            ),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
        m
    }
}

impl Metrics {
    pub fn inc(counter: &Counter) {
        counter.inc();
    }

    /// Render in the OpenMetrics text format (which Prometheus scrapes as is).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_names_values_and_eof() {
        let m = super::Metrics::new("n1");
        m.messages_routed_total.inc_by(3);
        m.queue_depth.set(7);
        let text = m.render();
        assert!(
            text.contains("\nbroker_messages_routed_total{node=\"n1\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("\nbroker_queue_depth{node=\"n1\"} 7\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
