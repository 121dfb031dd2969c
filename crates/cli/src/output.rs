//! What the commands print: one write to stdout per result (JSON with `--json`, else
//! text), aligned tables, and keys shortened for people. Data only: warnings and notes
//! go to stderr at their call sites, and nothing here reads the config or the network.

use serde_json::Value;

/// An error and its causes on one line (`a: b: c`), as anyhow's `{:#}` prints them, for
/// errors that keep their cause as a `source` rather than in their own text.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Print `value` (with `--json`) or the text, as one write to stdout.
pub(crate) fn out(json: bool, value: &Value, text: impl FnOnce() -> String) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let line = if json { value.to_string() } else { text() };
    let _ = writeln!(stdout, "{line}");
}

/// Left-aligned columns two spaces apart, headers first, no trailing blanks.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut lines = vec![line(headers.to_vec())];
    lines.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    lines.join("\n")
}

/// [`table`], or `none` when there are no rows.
pub(crate) fn table_or(none: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        none.to_owned()
    } else {
        table(headers, rows)
    }
}

/// The first 8 characters of a key, for tables.
pub(crate) fn short(key: &str) -> String {
    key.get(..8).unwrap_or(key).to_owned()
}
