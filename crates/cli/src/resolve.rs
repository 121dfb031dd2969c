//! Turning what a person types (`bob`, `bob/checkout`, `1a2b`, `@backend`, `*`) into a
//! target. Display names are resolved here, never by the broker; an ambiguous or unknown
//! name is an error that lists the candidates.
//!
//! Names resolve the way a person means them:
//! - a member name (`alice`) reaches alice's one live session; several live sessions are
//!   listed as candidates with their repos; with none live it reaches alice herself (her
//!   member key, queued for her CLI inbox);
//! - any other name matches display names exactly (case-insensitive); among several
//!   matches the live one wins, and with none live the member key, else the session seen
//!   most recently: offline sessions never make a name ambiguous (retired ones are not
//!   even listed by the broker);
//! - a hex prefix of at least 4 characters matches keys;
//! - naming yourself is refused with a clear message.

use anyhow::bail;
use claudemesh_client::{Connection, Target};
use claudemesh_crypto::PublicKey;
use claudemesh_proto::codes::cap;
use claudemesh_proto::frames::Reach;

/// A named identity that can be addressed.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub key: String,
    pub member_key: String,
    /// `member` or `session` (v1 brokers: the presence role).
    pub kind: String,
    /// False when the identity's client is known to speak only v1 (no envelope).
    pub modern: bool,
    pub online: bool,
    /// How a message reaches it now, when the broker says.
    pub reach: Option<Reach>,
    /// When it was last connected (ISO 8601), when the broker says.
    pub last_seen: Option<String>,
    /// This is the identity doing the resolving.
    pub me: bool,
}

impl Candidate {
    fn is_session(&self) -> bool {
        self.kind == "session"
    }
}

/// Everyone `conn` can address, plus `me` (the connection key, marked): every recipient
/// identity with `list-members`, else the live peers (a v1 broker).
pub async fn candidates(conn: &Connection, me: &str) -> anyhow::Result<Vec<Candidate>> {
    let list = if conn.has_capability(cap::LIST_MEMBERS) {
        conn.members()
            .await?
            .into_iter()
            .map(|m| Candidate {
                me: m.pubkey == me,
                name: m.display_name,
                key: m.pubkey,
                member_key: m.member_pubkey,
                kind: m.kind,
                modern: m.e2e_multicast || !m.seen,
                online: m.online,
                reach: m.reach,
                last_seen: m.last_seen,
            })
            .collect::<Vec<_>>()
    } else {
        conn.peers()
            .await?
            .into_iter()
            .map(|p| Candidate {
                me: p.pubkey == me,
                name: p.display_name,
                key: p.pubkey,
                member_key: p.member_pubkey,
                kind: if p.role == "session" {
                    "session".into()
                } else {
                    p.role
                },
                modern: true,
                online: true,
                reach: p.reach,
                last_seen: None,
            })
            .collect()
    };
    Ok(list)
}

fn short(key: &str) -> &str {
    key.get(..8).unwrap_or(key)
}

fn describe(c: &[&Candidate]) -> String {
    c.iter()
        .map(|c| {
            let online = if c.online { ", online" } else { "" };
            let reach = c
                .reach
                .filter(|_| c.online)
                .map(|r| format!(", reached {}", r.as_str().replace('_', " ")))
                .unwrap_or_default();
            format!("{} ({}, {}{online}{reach})", c.name, c.kind, short(&c.key))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Pick one of several identities that share a name: the live one; with none live the
/// member key, else the session seen most recently. Several live ones are ambiguous.
fn pick<'a>(matches: &[&'a Candidate]) -> Result<&'a Candidate, Vec<&'a Candidate>> {
    let live: Vec<&Candidate> = matches.iter().copied().filter(|c| c.online).collect();
    match live.as_slice() {
        [one] => return Ok(one),
        [] => {}
        _ => return Err(live),
    }
    if let Some(member) = matches.iter().find(|c| !c.is_session()) {
        return Ok(member);
    }
    matches
        .iter()
        .copied()
        .max_by(|a, b| a.last_seen.cmp(&b.last_seen))
        .ok_or_else(Vec::new)
}

/// Resolve `to` among `candidates` (which may include the resolver itself, marked `me`).
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
    let others: Vec<&Candidate> = candidates.iter().filter(|c| !c.me).collect();
    let exact: Vec<&Candidate> = others
        .iter()
        .copied()
        .filter(|c| c.name.eq_ignore_ascii_case(to))
        .collect();
    // `alice` names the member and each of her sessions (`alice/payments-api`).
    let sessions_of: Vec<&Candidate> = if to.contains('/') {
        Vec::new()
    } else {
        others
            .iter()
            .copied()
            .filter(|c| c.is_session())
            .filter(|c| {
                c.name
                    .split_once('/')
                    .is_some_and(|(member, _)| member.eq_ignore_ascii_case(to))
            })
            .collect()
    };
    let live_sessions: Vec<&Candidate> = sessions_of.iter().copied().filter(|c| c.online).collect();
    let chosen: Result<Option<&Candidate>, Vec<&Candidate>> = match live_sessions.as_slice() {
        [one] => Ok(Some(one)),
        [] if !exact.is_empty() => pick(&exact).map(Some),
        [] if !sessions_of.is_empty() => pick(&sessions_of).map(Some),
        [] => Ok(None),
        _ => Err(live_sessions),
    };
    let one = match chosen {
        Ok(Some(one)) => one,
        Err(many) => bail!(
            "'{to}' is ambiguous: it matches {}; use the full name (member/repo) or a key prefix",
            describe(&many)
        ),
        Ok(None) => by_prefix(to, candidates, &others)?,
    };
    let key = PublicKey::from_hex(&one.key)
        .map_err(|_| anyhow::anyhow!("peer '{}' has an invalid key", one.name))?;
    let target = if one.modern {
        Target::Key(key)
    } else {
        Target::LegacyKey(key)
    };
    Ok((target, Some(one.clone())))
}

/// No name matched: a unique key prefix, or an error that says why.
fn by_prefix<'a>(
    to: &str,
    all: &[Candidate],
    others: &[&'a Candidate],
) -> anyhow::Result<&'a Candidate> {
    let lower = to.to_ascii_lowercase();
    let is_hex = lower.len() >= 4 && lower.bytes().all(|b| b.is_ascii_hexdigit());
    let matches: Vec<&Candidate> = if is_hex {
        others
            .iter()
            .copied()
            .filter(|c| c.key.starts_with(&lower))
            .collect()
    } else {
        Vec::new()
    };
    let yourself = all.iter().any(|c| {
        c.me && (c.name.eq_ignore_ascii_case(to)
            || (is_hex && c.key.starts_with(&lower))
            || c.name
                .split_once('/')
                .is_some_and(|(m, _)| m.eq_ignore_ascii_case(to)))
    });
    match matches.as_slice() {
        [one] => Ok(one),
        [] if yourself => bail!(
            "'{to}' is you: a message to yourself is not sent (another of your sessions is reached by its full name, member/repo)"
        ),
        [] if others.is_empty() => {
            bail!("no peer matches '{to}': nobody else is in this mesh yet")
        }
        [] => bail!("no peer matches '{to}'; known peers: {}", describe(others)),
        many => bail!(
            "'{to}' is ambiguous: it matches {}; use a longer key prefix",
            describe(many)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        claudemesh_crypto::SecretKey::generate().public().to_hex()
    }

    fn cand(name: &str, kind: &str, online: bool, last_seen: &str) -> Candidate {
        Candidate {
            name: name.into(),
            key: key(),
            member_key: String::new(),
            kind: kind.into(),
            modern: true,
            online,
            reach: None,
            last_seen: Some(last_seen.into()),
            me: false,
        }
    }

    fn to_key(r: anyhow::Result<(Target, Option<Candidate>)>) -> String {
        match r.unwrap().0 {
            Target::Key(k) | Target::LegacyKey(k) => k.to_hex(),
            other => panic!("not a key: {other:?}"),
        }
    }

    #[test]
    fn names_prefixes_groups_and_errors() {
        let alice = cand("alice", "member", true, "1");
        let bob = cand("bob", "member", true, "1");
        let bob_too = Candidate {
            kind: "session".into(),
            ..cand("bob", "session", true, "1")
        };
        let cands = vec![alice.clone(), bob.clone(), bob_too];
        assert!(matches!(resolve("*", &cands).unwrap().0, Target::Broadcast));
        assert!(matches!(resolve("@ops", &cands).unwrap().0, Target::Group(g) if g == "ops"));
        assert_eq!(to_key(resolve("Alice", &cands)), alice.key);
        let err = resolve("bob", &cands).unwrap_err().to_string();
        assert!(
            err.contains("ambiguous"),
            "two live identities named bob: {err}"
        );
        assert_eq!(to_key(resolve(&bob.key[..10], &cands)), bob.key);
        let err = resolve("carol", &cands).unwrap_err().to_string();
        assert!(err.contains("alice") && err.contains("bob"), "{err}");
        assert!(resolve("@", &cands).is_err());
    }

    #[test]
    fn a_member_name_reaches_her_one_live_session() {
        let member = cand("alice", "member", false, "5");
        let live = cand("alice/payments", "session", true, "9");
        let old = cand("alice/frontend", "session", false, "3");
        let cands = vec![member.clone(), live.clone(), old.clone()];
        // The exact member name does not make it ambiguous: her one live session wins.
        assert_eq!(to_key(resolve("alice", &cands)), live.key);
        // A full name is exact.
        assert_eq!(to_key(resolve("alice/frontend", &cands)), old.key);
        // Nothing live: the member key (queued for her inbox).
        let offline = vec![member.clone(), old];
        assert_eq!(to_key(resolve("alice", &offline)), member.key);
    }

    #[test]
    fn several_live_sessions_are_listed_with_their_repos() {
        let cands = vec![
            cand("alice", "member", false, "1"),
            cand("alice/payments", "session", true, "1"),
            cand("alice/frontend", "session", true, "1"),
        ];
        let err = resolve("alice", &cands).unwrap_err().to_string();
        assert!(
            err.contains("ambiguous")
                && err.contains("alice/payments")
                && err.contains("alice/frontend"),
            "{err}"
        );
    }

    #[test]
    fn offline_sessions_never_make_a_name_ambiguous() {
        let older = cand(
            "alice/payments",
            "session",
            false,
            "2026-12-01T10:00:00.000Z",
        );
        let newer = cand(
            "alice/payments",
            "session",
            false,
            "2026-12-02T10:00:00.000Z",
        );
        let live = cand(
            "alice/payments",
            "session",
            true,
            "2026-11-30T10:00:00.000Z",
        );
        let cands = vec![older.clone(), newer.clone()];
        assert_eq!(
            to_key(resolve("alice/payments", &cands)),
            newer.key,
            "most recently seen"
        );
        assert_eq!(to_key(resolve("alice", &cands)), newer.key);
        let cands = vec![older, newer, live.clone()];
        assert_eq!(
            to_key(resolve("alice/payments", &cands)),
            live.key,
            "the live one wins"
        );
    }

    #[test]
    fn messaging_yourself_is_refused_clearly() {
        let me = Candidate {
            me: true,
            ..cand("alice/payments", "session", true, "1")
        };
        let member = cand("alice", "member", false, "1");
        let bob = cand("bob", "member", true, "1");
        let cands = vec![me.clone(), bob];
        let err = resolve("alice/payments", &cands).unwrap_err().to_string();
        assert!(err.contains("is you"), "{err}");
        let err = resolve("alice", &cands).unwrap_err().to_string();
        assert!(err.contains("is you"), "{err}");
        let err = resolve(&me.key[..12], &cands).unwrap_err().to_string();
        assert!(err.contains("is you"), "{err}");
        // With her member identity there, `alice` reaches it (queued for the CLI inbox).
        let cands = vec![me, member.clone()];
        assert_eq!(to_key(resolve("alice", &cands)), member.key);
    }
}
