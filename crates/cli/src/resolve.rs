//! Turning what a person types (`bob`, `1a2b`, `@backend`, `*`) into a target. Display
//! names are resolved here, never by the broker; an ambiguous or unknown name is an error
//! that lists the candidates.

use anyhow::bail;
use claudemesh_client::Target;
use claudemesh_crypto::PublicKey;

/// A named identity that can be addressed.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub key: String,
    pub member_key: String,
    pub kind: String,
    /// False when the identity's client is known to speak only v1 (no envelope).
    pub modern: bool,
}

fn short(key: &str) -> &str {
    key.get(..8).unwrap_or(key)
}

fn describe(c: &[&Candidate]) -> String {
    c.iter()
        .map(|c| format!("{} ({}, {})", c.name, c.kind, short(&c.key)))
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
    let by_name: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.name.eq_ignore_ascii_case(to))
        .collect();
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
            },
            Candidate {
                name: "bob".into(),
                key: key_b.clone(),
                member_key: key_b.clone(),
                kind: "member".into(),
                modern: true,
            },
            Candidate {
                name: "bob".into(),
                key: key_a.clone(),
                member_key: key_a.clone(),
                kind: "session".into(),
                modern: true,
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
}
