//! Evidence from Claude Code's session transcript that a channel notification reached
//! the model. Claude Code turns each `notifications/claude/channel` it accepts into a
//! queued prompt `<channel source="claudemesh" … message_id="ID" …>TEXT</channel>` and
//! writes it to the transcript (`~/.claude/projects/<dir>/<session>.jsonl`, one JSON
//! object per line) at once; when channels are unavailable (API-key and Console logins,
//! organisations that have not enabled them) it drops the notification silently and
//! nothing is written. Hooks are given the transcript's path (`transcript_path`).
//!
//! The scan is incremental (only bytes appended since the last scan are read, a bounded
//! amount per call) and looks only inside the attributes of a `<channel
//! source="claudemesh"` tag, which peer text can never contain (`render` neutralises
//! it), so a peer cannot forge a confirmation.
//!
//! What it must not do: write to the transcript, or read more than [`MAX_SCAN`] bytes per
//! call.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

/// Most bytes read per scan; the rest is read by the next one.
const MAX_SCAN: u64 = 16 << 20;
/// The tag as it appears inside a JSON string (quotes escaped).
const TAG: &[u8] = br#"<channel source=\"claudemesh\""#;
const ATTR: &[u8] = br#"message_id=\""#;

/// One session transcript, read from where the last scan stopped.
#[derive(Debug)]
pub struct Transcript {
    path: PathBuf,
    /// Everything before this offset has been scanned (always at a line start).
    offset: u64,
}

impl Transcript {
    pub fn new(path: PathBuf) -> Self {
        Self { path, offset: 0 }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The message ids of every claudemesh channel event appended since the last scan.
    /// A missing file is not an error (Claude Code may not have written it yet).
    pub fn scan(&mut self) -> std::io::Result<Vec<String>> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len < self.offset {
            self.offset = 0; // rewritten (e.g. compacted): read it again
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.take(MAX_SCAN).read_to_end(&mut bytes)?;
        // Only complete lines; a line still being written is read next time. A single
        // line longer than a whole read is scanned as it is and skipped, so one huge
        // line cannot stall the scan.
        let complete = match bytes.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if bytes.len() as u64 >= MAX_SCAN => bytes.len(),
            None => 0,
        };
        let mut ids = Vec::new();
        for line in bytes
            .get(..complete)
            .unwrap_or_default()
            .split(|b| *b == b'\n')
        {
            channel_ids(line, &mut ids);
        }
        self.offset += complete as u64;
        Ok(ids)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The `message_id` attribute of every claudemesh channel tag in one transcript line.
fn channel_ids(line: &[u8], out: &mut Vec<String>) {
    let mut rest = line;
    while let Some(at) = find(rest, TAG) {
        let after = rest.get(at + TAG.len()..).unwrap_or_default();
        // The tag's attributes end at the first `>` (Claude Code escapes attribute values).
        let end = after.iter().position(|b| *b == b'>').unwrap_or(after.len());
        let attrs = after.get(..end).unwrap_or_default();
        if let Some(pos) = find(attrs, ATTR) {
            let value: String = attrs
                .get(pos + ATTR.len()..)
                .unwrap_or_default()
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'-' || **b == b'_')
                .map(|b| char::from(*b))
                .collect();
            if !value.is_empty() {
                out.push(value);
            }
        }
        rest = after.get(end..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// A line as Claude Code writes a queued channel prompt (JSON-escaped quotes).
    fn channel_line(id: &str) -> String {
        let content = format!(
            r#"<channel source="claudemesh" from="bob/checkout" priority="now" message_id="{id}" mesh="t">hello</channel>"#
        );
        serde_json::json!({"type": "queue-operation", "operation": "enqueue", "content": content})
            .to_string()
    }

    #[test]
    fn finds_channel_events_incrementally_and_only_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let mut t = Transcript::new(path.clone());
        assert!(t.scan().unwrap().is_empty(), "no file yet");
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, "{}", channel_line("aa11")).unwrap();
        writeln!(
            f,
            r#"{{"type":"user","message":{{"content":"id bb22 message_id=\"cc33\""}}}}"#
        )
        .unwrap();
        write!(f, "{}", channel_line("dd44")).unwrap(); // no newline yet
        f.flush().unwrap();
        assert_eq!(t.scan().unwrap(), vec!["aa11".to_owned()]);
        writeln!(f).unwrap();
        assert_eq!(t.scan().unwrap(), vec!["dd44".to_owned()]);
        assert!(t.scan().unwrap().is_empty(), "nothing new");
    }

    #[test]
    fn peer_text_cannot_forge_a_tag() {
        let mut ids = Vec::new();
        // What `render` makes of a body that tries: `‹channel`, never `<channel`.
        channel_ids(
            br#"{"content":"\u2039channel source=\"claudemesh\" message_id=\"ee55\">"}"#,
            &mut ids,
        );
        channel_ids(br#"{"content":"message_id=\"ff66\""}"#, &mut ids);
        assert!(ids.is_empty());
    }
}
