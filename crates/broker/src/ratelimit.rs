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

/// Tracked keys per limiter beyond which fully refilled ones are forgotten.
const PRUNE_ABOVE: usize = 100_000;
/// The longest refill period times burst that governor can represent (its arithmetic is
/// in u64 nanoseconds, ~584 years); slower rates are "never refills" in practice anyway.
const MAX_HORIZON_NANOS: f64 = 1.0e19;

/// (mesh id, member id, frame type).
type Key = (String, String, &'static str);

/// One limit over keys `K`: a token bucket per key, or none at all (a burst below one
/// token).
#[derive(Debug)]
enum Limit<K: std::hash::Hash + Eq + Clone> {
    Bucket(DefaultKeyedRateLimiter<K>),
    Never,
}

impl<K: std::hash::Hash + Eq + Clone> Limit<K> {
    /// Take one token for `key`; false when it has none left.
    fn check(&self, key: &K) -> bool {
        match self {
            Limit::Never => false,
            Limit::Bucket(limiter) => {
                if limiter.len() > PRUNE_ABOVE {
                    limiter.retain_recent();
                }
                limiter.check_key(key).is_ok()
            }
        }
    }
}

/// The GCRA limiter for a token-bucket rate: `floor(burst)` tokens at once, one more every
/// `1 / per_sec` seconds. A burst below one never admits anything (as a bucket that can
/// never hold a whole token). Never panics, whatever the numbers.
fn limit<K: std::hash::Hash + Eq + Clone>(rate: Rate) -> Limit<K> {
    let burst = rate.burst.floor();
    if burst.is_nan() || burst < 1.0 {
        return Limit::Never;
    }
    let burst = burst.min(f64::from(u32::MAX));
    let per_sec = if rate.per_sec.is_finite() {
        rate.per_sec.max(0.0)
    } else {
        0.0
    };
    let max_period = MAX_HORIZON_NANOS / burst;
    let period_nanos = if per_sec > 0.0 {
        (1e9 / per_sec).min(max_period)
    } else {
        max_period
    };
    let period = Duration::from_nanos(period_nanos.max(1.0) as u64);
    let (Some(quota), Some(burst)) = (Quota::with_period(period), NonZeroU32::new(burst as u32))
    else {
        return Limit::Never;
    };
    Limit::Bucket(Gcra::keyed(quota.allow_burst(burst)))
}

/// Shared limiter keyed by (mesh id, member id, frame type).
#[derive(Debug)]
pub struct RateLimiter {
    enabled: bool,
    by_type: HashMap<String, Limit<Key>>,
    default: Limit<Key>,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        Self {
            enabled: limits.enabled,
            by_type: limits
                .by_type
                .iter()
                .map(|(kind, rate)| (kind.clone(), limit(*rate)))
                .collect(),
            default: limit(limits.default),
        }
    }

    /// Take one token; false when the member is over its limit for this frame type.
    pub fn allow(&self, mesh_id: &str, member_id: &str, kind: &'static str) -> bool {
        if !self.enabled {
            return true;
        }
        let key = (mesh_id.to_owned(), member_id.to_owned(), kind);
        self.by_type.get(kind).unwrap_or(&self.default).check(&key)
    }
}

/// The HTTP endpoint families limited per source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpKind {
    /// `POST /join`.
    Join,
    /// `POST /api/meshes` (creating a mesh).
    CreateMesh,
    /// The rest of the signed admin API.
    Admin,
}

/// The "source" that per-address limits count: an IPv4 address (an IPv4-mapped IPv6
/// address counts as its IPv4 one), or an IPv6 address's /64 — one subscriber usually holds
/// a whole /64, so counting single IPv6 addresses would let one host take 2^64 places.
pub fn source_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !0u128 << 64)),
        },
    }
}

/// Per-source-address limits on the HTTP endpoints (`/health` and `/metrics` have none,
/// so an operator can still look at a broker under load). Off with the frame limits.
#[derive(Debug)]
pub struct HttpLimiter {
    enabled: bool,
    join: Limit<std::net::IpAddr>,
    create: Limit<std::net::IpAddr>,
    admin: Limit<std::net::IpAddr>,
}

impl HttpLimiter {
    pub fn new(enabled: bool) -> Self {
        let rate = |per_sec: f64, burst: f64| limit(Rate { per_sec, burst });
        Self {
            enabled,
            join: rate(20.0, 100.0),
            create: rate(2.0, 20.0),
            admin: rate(50.0, 200.0),
        }
    }

    /// Take one token for a request of `kind` from `ip`.
    pub fn allow(&self, kind: HttpKind, ip: std::net::IpAddr) -> bool {
        if !self.enabled {
            return true;
        }
        let limit = match kind {
            HttpKind::Join => &self.join,
            HttpKind::CreateMesh => &self.create,
            HttpKind::Admin => &self.admin,
        };
        limit.check(&source_of(ip))
    }
}

/// Password sign-ins of the dashboard, per account and per source address: 5 attempts
/// per account, then one a minute; 20 per address, then one every 6 s. Every attempt
/// counts (right or wrong), and it is checked before any password is hashed, so a
/// guesser costs no CPU once throttled. Always on, also with `--no-rate-limits`.
#[derive(Debug)]
pub struct LoginLimiter {
    account: Limit<String>,
    source: Limit<std::net::IpAddr>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self {
            account: limit(Rate {
                per_sec: 1.0 / 60.0,
                burst: 5.0,
            }),
            source: limit(Rate {
                per_sec: 1.0 / 6.0,
                burst: 20.0,
            }),
        }
    }
}

impl LoginLimiter {
    /// Take one attempt for `account` from `ip`; false when either is throttled.
    pub fn allow(&self, account: &str, ip: Option<std::net::IpAddr>) -> bool {
        let source_ok = ip.is_none_or(|ip| self.source.check(&source_of(ip)));
        source_ok && self.account.check(&account.to_owned())
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
        // Types without their own rate still have a bucket each.
        assert!(rl.allow("m", "a", "y"));
    }

    #[test]
    fn odd_rates_neither_panic_nor_round_up() {
        for (per_sec, burst) in [
            (0.0, 3.0),
            (1e-12, 3.0),
            (f64::NAN, 2.0),
            (0.001, 1e9),
            (-1.0, 2.5),
            (5.0, 0.5),
        ] {
            let limits = RateLimits {
                default: Rate { per_sec, burst },
                ..RateLimits::default()
            };
            let rl = RateLimiter::new(limits);
            let admitted = (0..10).filter(|_| rl.allow("m", "a", "x")).count();
            let expected = if burst >= 1.0 {
                (burst.floor() as usize).min(10)
            } else {
                0
            };
            assert_eq!(admitted, expected, "per_sec {per_sec} burst {burst}");
        }
    }
}
