//! Turning what a person types (`bob`, `1a2b`, `@backend`, `*`) into a target. Display
//! names are resolved here, never by the broker; an ambiguous or unknown name is an error
//! that lists the candidates.
//!
//! A name matches exactly (case-insensitive), and a member name also matches that
//! member's sessions (`alice` matches `alice` and `alice/payments-api`). When several
//! identities match and exactly one is online, it wins: a session that restarted a few
//! times, or a member whose CLI is offline, does not make a live peer unreachable.

use anyhow::bail;
use claudemesh_client::{Connection, Target};
use claudemesh_crypto::PublicKey;
use claudemesh_proto::codes::cap;

/// A named identity that can be addressed.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub key: String,
    pub member_key: String,
    pub kind: String,
    /// False when the identity's client is known to speak only v1 (no envelope).
    pub modern: bool,
    pub online: bool,
}

/// Everyone `conn` can address, `me` (the connection key) excluded: every recipient
/// identity with `list-members`, else the live peers (a v1 broker).
pub async fn candidates(conn: &Connection, me: &str) -> anyhow::Result<Vec<Candidate>> {
    let list = if conn.has_capability(cap::LIST_MEMBERS) {
        conn.members()
            .await?
            .into_iter()
            .map(|m| Candidate {
                name: m.display_name,
                key: m.pubkey,
                member_key: m.member_pubkey,
                kind: m.kind,
                modern: m.e2e_multicast || !m.seen,
                online: m.online,
            })
            .collect::<Vec<_>>()
    } else {
        conn.peers()
            .await?
            .into_iter()
            .map(|p| Candidate {
                name: p.display_name,
                key: p.pubkey,
                member_key: p.member_pubkey,
                kind: p.role,
                modern: true,
                online: true,
            })
            .collect()
    };
    Ok(list.into_iter().filter(|c| c.key != me).collect())
}

fn short(key: &str) -> &str {
    key.get(..8).unwrap_or(key)
}

fn describe(c: &[&Candidate]) -> String {
    c.iter()
        .map(|c| {
            let online = if c.online { ", online" } else { "" };
            format!("{} ({}, {}{online})", c.name, c.kind, short(&c.key))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolve `to` among `candidates` (yourself excluded by the caller).
pub fn resolve(to: &str, candidates: &[Candidate]) -> anyhow::Result<(Target, Option<Candidate>)> {
    match to {
        "*" | "@all" => return Ok((Target::Broadcast, None)),
        _ => {}
    }
    if let Some(group) = to.strip_prefix('@') {
        if group.is_empty() {
            bail!("'@' needs a group name, e.g. @backend");
        }
        return Ok((Target::Group(group.to_owned()), None));
    }
    // `alice` names the member and each of her sessions (`alice/payments-api`).
    let mut by_name: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| {
            c.name.eq_ignore_ascii_case(to)
                || (!to.contains('/')
                    && c.name
                        .split_once('/')
                        .is_some_and(|(member, _)| member.eq_ignore_ascii_case(to)))
        })
        .collect();
    if by_name.len() > 1 && by_name.iter().filter(|c| c.online).count() == 1 {
        by_name.retain(|c| c.online);
    }
    let matches: Vec<&Candidate> = if by_name.is_empty() {
        let lower = to.to_ascii_lowercase();
        let is_hex = lower.len() >= 4 && lower.bytes().all(|b| b.is_ascii_hexdigit());
        if is_hex {
            candidates
                .iter()
                .filter(|c| c.key.starts_with(&lower))
                .collect()
        } else {
            Vec::new()
        }
    } else {
        by_name
    };
    match matches.as_slice() {
        [one] => {
            let key = PublicKey::from_hex(&one.key)
                .map_err(|_| anyhow::anyhow!("peer '{}' has an invalid key", one.name))?;
            let target = if one.modern {
                Target::Key(key)
            } else {
                Target::LegacyKey(key)
            };
            Ok((target, Some((*one).clone())))
        }
        [] if candidates.is_empty() => {
            bail!("no peer matches '{to}': nobody else is in this mesh yet")
        }
        [] => {
            let all: Vec<&Candidate> = candidates.iter().collect();
            bail!("no peer matches '{to}'; known peers: {}", describe(&all))
        }
        many => bail!(
            "'{to}' is ambiguous: it matches {}; use a longer key prefix",
            describe(many)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, key: &str) -> Candidate {
        Candidate {
            name: name.into(),
            key: key.repeat(64 / key.len()),
            member_key: String::new(),
            kind: "member".into(),
            modern: true,
            online: false,
        }
    }

    #[test]
    fn names_prefixes_groups_and_errors() {
        let key_a = claudemesh_crypto::SecretKey::generate().public().to_hex();
        let key_b = claudemesh_crypto::SecretKey::generate().public().to_hex();
        let cands = vec![
            Candidate {
                name: "alice".into(),
                key: key_a.clone(),
                member_key: key_a.clone(),
                kind: "member".into(),
                modern: true,
                online: true,
            },
            Candidate {
                name: "bob".into(),
                key: key_b.clone(),
                member_key: key_b.clone(),
                kind: "member".into(),
                modern: true,
                online: true,
            },
            Candidate {
                name: "bob".into(),
                key: key_a.clone(),
                member_key: key_a.clone(),
                kind: "session".into(),
                modern: true,
                online: true,
            },
        ];
        assert!(matches!(resolve("*", &cands).unwrap().0, Target::Broadcast));
        assert!(matches!(resolve("@ops", &cands).unwrap().0, Target::Group(g) if g == "ops"));
        assert!(
            matches!(resolve("Alice", &cands).unwrap().0, Target::Key(k) if k.to_hex() == key_a)
        );
        assert!(
            resolve("bob", &cands)
                .unwrap_err()
                .to_string()
                .contains("ambiguous")
        );
        assert!(
            matches!(resolve(&key_b[..10], &cands).unwrap().0, Target::Key(k) if k.to_hex() == key_b)
        );
        let err = resolve("carol", &cands).unwrap_err().to_string();
        assert!(err.contains("alice") && err.contains("bob"), "{err}");
        assert!(resolve("@", &cands).is_err());
        let _ = c("x", "ab");
    }

    #[test]
    fn session_names_and_online_preference() {
        let key = |_: u8| claudemesh_crypto::SecretKey::generate().public().to_hex();
        let cand = |name: &str, online: bool| Candidate {
            name: name.into(),
            key: key(0),
            member_key: String::new(),
            kind: "session".into(),
            modern: true,
            online,
        };
        let old = cand("alice/payments", false);
        let live = cand("alice/payments", true);
        let other = cand("alice/frontend", false);
        let cands = vec![old.clone(), live.clone(), other.clone()];
        // Two identities share the exact name; the online one wins.
        let (t, who) = resolve("alice/payments", &cands).unwrap();
        assert!(matches!(t, Target::Key(k) if k.to_hex() == live.key));
        assert!(who.unwrap().online);
        // The member part matches all three; still exactly one is online.
        assert_eq!(resolve("Alice", &cands).unwrap().1.unwrap().key, live.key);
        // With nobody online it is ambiguous and lists them.
        let offline = vec![old, other];
        let err = resolve("alice", &offline).unwrap_err().to_string();
        assert!(
            err.contains("alice/payments") && err.contains("alice/frontend"),
            "{err}"
        );
    }
}
