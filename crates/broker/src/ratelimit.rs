//! Per-member rate limits, one quota per frame type, shared by all of a member's
//! connections, checked in the connection task before a frame reaches the engine.
//!
//! The buckets are `governor`'s keyed GCRA limiters (one per frame type, keyed by mesh
//! and member): sharded, so connections of different members never contend on one lock,
//! and pruned of keys that have fully refilled once they grow past [`PRUNE_ABOVE`].
//! They count in this process only; several broker nodes each enforce their own.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter as Gcra};

use crate::config::{Rate, RateLimits};

/// Tracked (mesh, member) keys per frame type beyond which refilled ones are forgotten.
const PRUNE_ABOVE: usize = 100_000;

type Key = (String, String);

/// The GCRA quota for a token-bucket rate: one token every `1 / per_sec` seconds, at
/// most `burst` at once (at least one).
fn quota(rate: Rate) -> Quota {
    let burst = NonZeroU32::new(rate.burst.round().clamp(1.0, f64::from(u32::MAX)) as u32)
        .unwrap_or(NonZeroU32::MIN);
    let period = if rate.per_sec > 0.0 {
        Duration::try_from_secs_f64(1.0 / rate.per_sec).unwrap_or(Duration::MAX)
    } else {
        Duration::MAX
    };
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// Shared limiter keyed by (mesh id, member id), one per frame type.
#[derive(Debug)]
pub struct RateLimiter {
    enabled: bool,
    by_type: HashMap<String, DefaultKeyedRateLimiter<Key>>,
    default: DefaultKeyedRateLimiter<Key>,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        Self {
            enabled: limits.enabled,
            by_type: limits
                .by_type
                .iter()
                .map(|(kind, rate)| (kind.clone(), Gcra::keyed(quota(*rate))))
                .collect(),
            default: Gcra::keyed(quota(limits.default)),
        }
    }

    /// Take one token; false when the member is over its limit for this frame type.
    pub fn allow(&self, mesh_id: &str, member_id: &str, kind: &str) -> bool {
        if !self.enabled {
            return true;
        }
        let limiter = self.by_type.get(kind).unwrap_or(&self.default);
        if limiter.len() > PRUNE_ABOVE {
            limiter.retain_recent();
        }
        limiter
            .check_key(&(mesh_id.to_owned(), member_id.to_owned()))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn refills_at_the_rate() {
        let limits = RateLimits {
            default: Rate {
                per_sec: 50.0,
                burst: 1.0,
            },
            ..RateLimits::default()
        };
        let rl = RateLimiter::new(limits);
        assert!(rl.allow("m", "a", "x"));
        assert!(!rl.allow("m", "a", "x"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(rl.allow("m", "a", "x"), "one token per 20 ms");
    }
}
