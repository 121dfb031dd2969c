//! Per-member token buckets, one per frame type, shared by all of a member's connections.
//! Checked in the connection task before a frame reaches the engine.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::RateLimits;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Shared limiter keyed by (mesh id, member id, frame type).
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    buckets: Mutex<HashMap<(String, String, &'static str), Bucket>>,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one token; false when the member is over its limit for this frame type.
    pub fn allow(&self, mesh_id: &str, member_id: &str, kind: &'static str) -> bool {
        if !self.limits.enabled {
            return true;
        }
        let rate = self.limits.rate_for(kind);
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > 100_000 {
            // Bound memory: forget buckets that have refilled completely.
            buckets.retain(|_, b| {
                now.duration_since(b.last).as_secs_f64() * rate.per_sec < rate.burst
            });
        }
        let bucket = buckets
            .entry((mesh_id.to_owned(), member_id.to_owned(), kind))
            .or_insert(Bucket {
                tokens: rate.burst,
                last: now,
            });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_sec).min(rate.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;

    #[test]
    fn burst_then_refuse() {
        let mut limits = RateLimits::default();
        limits.by_type.insert(
            "send".into(),
            Rate {
                per_sec: 0.001,
                burst: 3.0,
            },
        );
        let rl = RateLimiter::new(limits);
        assert!((0..3).all(|_| rl.allow("m", "a", "send")));
        assert!(!rl.allow("m", "a", "send"));
        // Another member has its own bucket.
        assert!(rl.allow("m", "b", "send"));
    }
}
