//! Values derived from what the user typed or left out: a mesh slug from its name, an
//! invite lifetime from `30m` / `12h` / `7d`, the default display name. Pure, apart from
//! reading `$USER`.

use anyhow::{anyhow, bail};

/// `$USER`, else `member`.
pub(super) fn default_name() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "member".into())
}

/// Lowercase letters and digits, other runs become one `-`; at most 64 characters.
pub(super) fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.trim_end_matches('-').chars().take(64).collect()
}

/// `30m`, `12h`, `7d`, `90s` or a number of seconds.
pub(super) fn parse_duration(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| anyhow!("'{s}' is not a duration; use e.g. 30m, 12h or 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => bail!("'{s}' is not a duration; use e.g. 30m, 12h or 7d"),
    };
    if n <= 0 {
        bail!("the duration must be positive");
    }
    Ok(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_slugs_and_dates() {
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0h").is_err());
        assert_eq!(slugify("Acme Payments!"), "acme-payments");
    }
}
