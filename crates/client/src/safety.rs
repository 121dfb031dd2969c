//! Safety numbers and key fingerprints that people compare out of band (`claudemesh
//! verify <peer>`) to detect a broker that substitutes keys.
//!
//! [`safety_number`] is symmetric: both peers compute the same 60 digits from the two
//! public keys. [`fingerprint`] is a short, human-readable prefix of one key, for display
//! only; it is not a substitute for comparing the safety number. This module derives
//! values from public keys only: it must never take or print secret keys, and does no
//! I/O.

use claudemesh_crypto::PublicKey;
use sha2::{Digest, Sha256};

/// Domain-separation prefix of the safety-number hash.
const SAFETY_DOMAIN: &[u8] = b"claudemesh-safety-v1";

/// The safety number of a pair of keys: 12 groups of 5 decimal digits separated by single
/// spaces. The same for `(a, b)` and `(b, a)`.
///
/// SHA-256 over `"claudemesh-safety-v1" ‖ min(a, b) ‖ max(a, b)` (keys compared as bytes);
/// the first 30 bytes of the digest are taken as six 5-byte big-endian numbers, each
/// reduced mod 10^10 and written as two zero-padded 5-digit groups.
pub fn safety_number(a: &PublicKey, b: &PublicKey) -> String {
    let (lo, hi) = if a.as_bytes() <= b.as_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    let digest = Sha256::new()
        .chain_update(SAFETY_DOMAIN)
        .chain_update(lo.as_bytes())
        .chain_update(hi.as_bytes())
        .finalize();
    let mut groups = Vec::with_capacity(12);
    for chunk in digest.chunks_exact(5).take(6) {
        let value = chunk
            .iter()
            .fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte))
            % 10_000_000_000;
        groups.push(format!("{:05}", value / 100_000));
        groups.push(format!("{:05}", value % 100_000));
    }
    groups.join(" ")
}

/// The first 16 hex characters of `key`, in groups of four: `"d5c7 6d96 62bb 010b"`.
pub fn fingerprint(key: &PublicKey) -> String {
    key.as_bytes()
        .chunks_exact(2)
        .take(4)
        .map(|pair| pair.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use claudemesh_crypto::SecretKey;

    /// `alice` and `bob` from `testdata/libsodium-v1.json`.
    const ALICE: &str = "d5c76d9662bb010b2814c8a483a7ca9db766851bf559ceb79fd65dbf1ae86cf5";
    const BOB: &str = "cd85269136f269fcac4b11651312ce16eb2b0bf4ea93aa1eeeb7e458a9074d7c";

    fn key(hex: &str) -> PublicKey {
        PublicKey::from_hex(hex).unwrap()
    }

    fn assert_format(n: &str) {
        let groups: Vec<&str> = n.split(' ').collect();
        assert_eq!(groups.len(), 12, "{n}");
        for g in groups {
            assert_eq!(g.len(), 5, "{n}");
            assert!(g.bytes().all(|c| c.is_ascii_digit()), "{n}");
        }
        assert_eq!(n.len(), 12 * 5 + 11);
    }

    #[test]
    fn symmetric_and_well_formed() {
        for _ in 0..20 {
            let a = SecretKey::generate().public();
            let b = SecretKey::generate().public();
            let n = safety_number(&a, &b);
            assert_eq!(n, safety_number(&b, &a));
            assert_format(&n);
        }
        let a = key(ALICE);
        assert_format(&safety_number(&a, &a));
    }

    #[test]
    fn differs_for_different_pairs() {
        let (a, b, c) = (key(ALICE), key(BOB), SecretKey::generate().public());
        let ab = safety_number(&a, &b);
        assert_ne!(ab, safety_number(&a, &c));
        assert_ne!(ab, safety_number(&b, &c));
        assert_ne!(ab, safety_number(&a, &a));
        assert_ne!(safety_number(&a, &a), safety_number(&b, &b));
    }

    #[test]
    fn known_value_for_vector_keys() {
        // Pinned; cross-checked once with an independent Python implementation.
        let pinned = "32477 17633 29999 86440 86503 32054 35243 96624 62063 98612 16119 77413";
        assert_eq!(safety_number(&key(ALICE), &key(BOB)), pinned);
        assert_eq!(safety_number(&key(BOB), &key(ALICE)), pinned);
    }

    #[test]
    fn known_value_matches_the_documented_construction() {
        // Recompute independently: one hash over domain ‖ sorted keys, 5-byte chunks.
        let (a, b) = (key(ALICE), key(BOB));
        let mut input = SAFETY_DOMAIN.to_vec();
        input.extend_from_slice(b.as_bytes()); // "cd85…" sorts before "d5c7…"
        input.extend_from_slice(a.as_bytes());
        let digest = Sha256::digest(&input);
        let first = u64::from_be_bytes([
            0, 0, 0, digest[0], digest[1], digest[2], digest[3], digest[4],
        ]);
        let first = first % 10_000_000_000;
        let expected = format!("{:05} {:05}", first / 100_000, first % 100_000);
        assert!(safety_number(&a, &b).starts_with(&expected));
    }

    #[test]
    fn fingerprint_format() {
        assert_eq!(fingerprint(&key(ALICE)), "d5c7 6d96 62bb 010b");
        assert_eq!(fingerprint(&key(BOB)), "cd85 2691 36f2 69fc");
    }
}
