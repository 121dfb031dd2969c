//! The local inbox: a SQLite file that dedupes redeliveries and replays and keeps history.
//!
//! Every push the client receives is recorded once, keyed by the broker message id. A
//! verified envelope is also keyed by `(sender, envelope id)`, so the same message
//! replayed under a new broker id is not shown twice (PROTOCOL.md §8.3). Messages that
//! failed to decrypt or verify are kept as [`Kind::Rejected`] records with a reason but
//! never with text, so they are counted and visible in `inbox --all` without ever being
//! shown as a message.
//!
//! The file holds decrypted plaintext, so it is created with mode 0600 on Unix. This
//! module only stores and reads local data: it never sends anything, never talks to the
//! broker, and never logs message text.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, Row, params};

/// The schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL UNIQUE,
    mesh_id TEXT NOT NULL, sender_pubkey TEXT NOT NULL, sender_name TEXT, target_spec TEXT,
    priority TEXT NOT NULL, created_at TEXT NOT NULL, received_at INTEGER NOT NULL,
    kind TEXT NOT NULL, text TEXT, reason TEXT, envelope_id TEXT,
    read INTEGER NOT NULL DEFAULT 0, depth INTEGER NOT NULL DEFAULT 0);
-- Replay dedupe: one verified record per (sender, envelope id).
CREATE UNIQUE INDEX IF NOT EXISTS messages_verified_envelope ON messages(sender_pubkey, envelope_id)
    WHERE kind = 'verified' AND envelope_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_mesh_seq ON messages(mesh_id, seq);
";

const COLUMNS: &str = "message_id, mesh_id, sender_pubkey, sender_name, target_spec, priority, \
                       created_at, received_at, kind, text, reason, envelope_id, depth";

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A verified envelope from this product's clients.
    Verified,
    /// A v1 body: shown, marked legacy (unverified).
    Legacy,
    /// Failed to decrypt or verify: counted, never shown as text.
    Rejected,
    /// A presence event from the broker.
    System,
}

impl Kind {
    /// The stored name: `"verified"`, `"legacy"`, `"rejected"` or `"system"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Legacy => "legacy",
            Self::Rejected => "rejected",
            Self::System => "system",
        }
    }

    /// The inverse of [`Kind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Verified, Self::Legacy, Self::Rejected, Self::System]
            .into_iter()
            .find(|kind| kind.as_str() == s)
    }
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The broker message id.
    pub message_id: String,
    /// The mesh id.
    pub mesh_id: String,
    /// The broker-stamped sender key (`"system"` for presence events).
    pub sender_pubkey: String,
    /// The sender's display name, when the push carried one.
    pub sender_name: Option<String>,
    /// The push's `targetSpec`, when present.
    pub target_spec: Option<String>,
    /// `now`, `next` or `low`.
    pub priority: String,
    /// The push's `createdAt` (ISO 8601).
    pub created_at: String,
    /// When this client received it, ms since the Unix epoch.
    pub received_at: i64,
    /// What it is.
    pub kind: Kind,
    /// The text; always `None` for [`Kind::Rejected`] (the store drops it).
    pub text: Option<String>,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// The envelope's client message id (verified messages).
    pub envelope_id: Option<String>,
    /// The envelope's causal depth (verified messages; 0 otherwise). See the loop guard.
    pub depth: u32,
}

/// An inbox failure.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// The database failed.
    #[error("inbox database error")]
    Db(#[from] rusqlite::Error),
    /// Creating the file or setting its permissions failed.
    #[error("inbox file error")]
    Io(#[from] std::io::Error),
    /// The file holds data this version cannot read.
    #[error("inbox file is corrupt or from a newer version: {0}")]
    Corrupt(String),
}

/// The local message store.
#[derive(Debug)]
pub struct Inbox {
    conn: Connection,
}

/// Create the file (and its directory) with owner-only permissions before SQLite opens it.
fn create_private_file(path: &Path) -> Result<(), InboxError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        options.open(path)?;
        // The file may have existed with wider permissions.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    options.open(path)?;
    Ok(())
}

fn row_to_record(row: &Row<'_>) -> rusqlite::Result<Record> {
    let kind: String = row.get(8)?;
    let kind = Kind::parse(&kind).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            8,
            rusqlite::types::Type::Text,
            format!("unknown record kind {kind:?}").into(),
        )
    })?;
    Ok(Record {
        message_id: row.get(0)?,
        mesh_id: row.get(1)?,
        sender_pubkey: row.get(2)?,
        sender_name: row.get(3)?,
        target_spec: row.get(4)?,
        priority: row.get(5)?,
        created_at: row.get(6)?,
        received_at: row.get(7)?,
        kind,
        // Defence in depth: rejected records never carry text out of the store.
        text: row
            .get::<_, Option<String>>(9)?
            .filter(|_| kind != Kind::Rejected),
        reason: row.get(10)?,
        envelope_id: row.get(11)?,
        depth: row.get(12)?,
    })
}

impl Inbox {
    /// Open (creating if needed) the inbox at `path`: mode 0600, WAL journal, schema.
    pub fn open(path: &Path) -> Result<Self, InboxError> {
        create_private_file(path)?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let _mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(InboxError::Corrupt(format!("schema version {version}")));
        }
        conn.execute_batch(SCHEMA)?;
        if version == 1 {
            // 2: the loop guard's causal depth.
            conn.execute_batch("ALTER TABLE messages ADD COLUMN depth INTEGER NOT NULL DEFAULT 0")?;
        }
        if version < SCHEMA_VERSION {
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        Ok(Self { conn })
    }

    /// Store a message unless already known. Returns `Ok(false)` and stores nothing when
    /// this broker message id was recorded before, or when a verified record with the same
    /// `(sender_pubkey, envelope_id)` exists (the same message replayed under a new broker
    /// id). The text of a [`Kind::Rejected`] record is never stored.
    pub fn record(&mut self, r: &Record) -> Result<bool, InboxError> {
        let text = r.text.as_deref().filter(|_| r.kind != Kind::Rejected);
        // Both dedupe rules are unique indexes (`message_id`, and `(sender_pubkey,
        // envelope_id)` over verified rows), so the check and the insert are one atomic
        // statement even with several processes sharing the file.
        let inserted = self.conn.execute(
            &format!(
                "INSERT OR IGNORE INTO messages ({COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ),
            params![
                r.message_id,
                r.mesh_id,
                r.sender_pubkey,
                r.sender_name,
                r.target_spec,
                r.priority,
                r.created_at,
                r.received_at,
                r.kind.as_str(),
                text,
                r.reason,
                r.envelope_id,
                r.depth,
            ],
        )?;
        Ok(inserted == 1)
    }

    /// Records of mesh `?1` matching `filter` (an SQL condition plus ordering).
    fn select(
        &self,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Record>, InboxError> {
        let sql = format!("SELECT {COLUMNS} FROM messages WHERE mesh_id = ?1 AND {filter}");
        let mut stmt = self.conn.prepare(&sql)?;
        let records = stmt
            .query_map(params, row_to_record)?
            .collect::<Result<_, _>>()?;
        Ok(records)
    }

    /// Messages of `mesh_id` not yet shown, oldest first: verified, legacy and system only
    /// (rejected records are never shown as text).
    pub fn unread(&self, mesh_id: &str) -> Result<Vec<Record>, InboxError> {
        let filter = "read = 0 AND kind IN ('verified', 'legacy', 'system') ORDER BY seq ASC";
        self.select(filter, params![mesh_id])
    }

    /// Mark these broker message ids as shown. Unknown ids are ignored.
    pub fn mark_read(&mut self, message_ids: &[String]) -> Result<(), InboxError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare("UPDATE messages SET read = 1 WHERE message_id = ?1")?;
            for id in message_ids {
                stmt.execute(params![id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The last `limit` messages of `mesh_id`, newest last. `include_rejected` adds
    /// rejected records (their text is `None`).
    pub fn history(
        &self,
        mesh_id: &str,
        include_rejected: bool,
        limit: usize,
    ) -> Result<Vec<Record>, InboxError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let filter = "(?2 OR kind <> 'rejected') ORDER BY seq DESC LIMIT ?3";
        let mut records = self.select(filter, params![mesh_id, include_rejected, limit])?;
        records.reverse();
        Ok(records)
    }

    /// How many rejected records `mesh_id` has.
    pub fn count_rejected(&self, mesh_id: &str) -> Result<u64, InboxError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM messages WHERE mesh_id = ?1 AND kind = 'rejected'",
            params![mesh_id],
            |row| row.get(0),
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Kind::{Legacy, Rejected, System, Verified};

    fn rec(id: &str, kind: Kind, sender: &str, envelope_id: Option<&str>) -> Record {
        Record {
            message_id: id.to_owned(),
            mesh_id: "mesh".to_owned(),
            sender_pubkey: sender.to_owned(),
            sender_name: Some("alice".to_owned()),
            target_spec: None,
            priority: "next".to_owned(),
            created_at: "2026-11-29T18:00:00.123Z".to_owned(),
            received_at: 1_764_374_400_123,
            kind,
            text: Some(format!("text of {id}")),
            reason: (kind == Rejected).then(|| "spoofed_sender".to_owned()),
            envelope_id: envelope_id.map(str::to_owned),
            depth: 0,
        }
    }

    fn put(inbox: &mut Inbox, id: &str, kind: Kind, sender: &str, env: Option<&str>) -> bool {
        inbox.record(&rec(id, kind, sender, env)).unwrap()
    }

    /// Records `m1`, `m2`, … from alice with these kinds; each must be new.
    fn put_all(inbox: &mut Inbox, kinds: &[Kind]) {
        for (i, kind) in kinds.iter().enumerate() {
            assert!(put(inbox, &format!("m{}", i + 1), *kind, "alice", None));
        }
    }

    fn ids(records: &[Record]) -> Vec<&str> {
        records.iter().map(|r| r.message_id.as_str()).collect()
    }

    fn temp_inbox() -> (tempfile::TempDir, Inbox) {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(&dir.path().join("inbox.db")).unwrap();
        (dir, inbox)
    }

    #[test]
    fn dedupes_by_message_id() {
        for kind in [Verified, Legacy, Rejected, System] {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("Verified"), None);
        let (_dir, mut inbox) = temp_inbox();
        let first = rec("m1", Legacy, "alice", None);
        assert!(inbox.record(&first).unwrap());
        let mut again = rec("m1", Verified, "bob", Some("e9"));
        again.text = Some("different".to_owned());
        assert!(!inbox.record(&again).unwrap());
        assert_eq!(inbox.history("mesh", true, 10).unwrap(), vec![first]);
    }

    #[test]
    fn dedupes_replayed_envelope_from_same_sender_only() {
        let (_dir, mut inbox) = temp_inbox();
        let i = &mut inbox;
        assert!(put(i, "m1", Verified, "alice", Some("e1")));
        // The same envelope replayed under a new broker id.
        assert!(!put(i, "m2", Verified, "alice", Some("e1")));
        // Another sender may use the same envelope id.
        assert!(put(i, "m3", Verified, "bob", Some("e1")));
        // A different envelope id from alice is new.
        assert!(put(i, "m4", Verified, "alice", Some("e2")));
        // Only verified ids count: a rejected record with that id does not block.
        assert!(put(i, "m5", Rejected, "carol", Some("e7")));
        assert!(put(i, "m6", Verified, "carol", Some("e7")));
        // Legacy records carry no envelope id and never collide with each other.
        assert!(put(i, "m7", Legacy, "carol", None));
        assert!(put(i, "m8", Legacy, "carol", None));
        let unread = ids(&inbox.unread("mesh").unwrap()).join(" ");
        assert_eq!(unread, "m1 m3 m4 m6 m7 m8");
    }

    #[test]
    fn unread_and_mark_read() {
        let (_dir, mut inbox) = temp_inbox();
        put_all(&mut inbox, &[Verified, Rejected, Legacy, System]);
        let elsewhere = Record {
            mesh_id: "other".to_owned(),
            ..rec("x1", Verified, "a", None)
        };
        assert!(inbox.record(&elsewhere).unwrap());
        let unread = inbox.unread("mesh").unwrap();
        assert_eq!(ids(&unread), ["m1", "m3", "m4"]);
        assert_eq!(unread[0], rec("m1", Verified, "alice", None));
        let shown = ["m1", "m4", "nope"].map(str::to_owned);
        inbox.mark_read(&shown).unwrap();
        assert_eq!(ids(&inbox.unread("mesh").unwrap()), ["m3"]);
        assert_eq!(ids(&inbox.unread("other").unwrap()), ["x1"]);
        inbox.mark_read(&[]).unwrap();
        inbox.mark_read(&["m3".to_owned()]).unwrap();
        assert!(inbox.unread("mesh").unwrap().is_empty());
        // Marking read does not remove history.
        assert_eq!(inbox.history("mesh", false, 10).unwrap().len(), 3);
    }

    #[test]
    fn history_with_and_without_rejected() {
        let (_dir, mut inbox) = temp_inbox();
        put_all(
            &mut inbox,
            &[Verified, Rejected, Legacy, Rejected, Verified],
        );
        assert_eq!(
            ids(&inbox.history("mesh", false, 10).unwrap()),
            ["m1", "m3", "m5"]
        );
        let all = inbox.history("mesh", true, 10).unwrap();
        assert_eq!(ids(&all), ["m1", "m2", "m3", "m4", "m5"]);
        // Rejected text is never stored, even when the caller passed some.
        assert_eq!(all[1].text, None);
        assert_eq!(all[1].reason.as_deref(), Some("spoofed_sender"));
        assert_eq!(all[0].text.as_deref(), Some("text of m1"));
        // The limit keeps the newest, still newest last.
        assert_eq!(ids(&inbox.history("mesh", true, 2).unwrap()), ["m4", "m5"]);
        assert_eq!(ids(&inbox.history("mesh", false, 2).unwrap()), ["m3", "m5"]);
        assert!(inbox.history("mesh", true, 0).unwrap().is_empty());
        assert_eq!(inbox.history("mesh", true, usize::MAX).unwrap().len(), 5);
        assert!(inbox.history("other", true, 10).unwrap().is_empty());
        assert_eq!(inbox.count_rejected("mesh").unwrap(), 2);
        assert_eq!(inbox.count_rejected("other").unwrap(), 0);
    }

    #[test]
    fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("inbox.db");
        let system = Record {
            sender_name: None,
            target_spec: Some("*".to_owned()),
            ..rec("m3", System, "system", None)
        };
        let records = [
            rec("m1", Verified, "alice", Some("e1")),
            rec("m2", Rejected, "bob", None),
            system,
        ];
        {
            let mut inbox = Inbox::open(&path).unwrap();
            for r in &records {
                assert!(inbox.record(r).unwrap());
            }
            inbox.mark_read(&["m1".to_owned()]).unwrap();
        }
        let mut inbox = Inbox::open(&path).unwrap();
        let mut expected = records.to_vec();
        expected[1].text = None;
        assert_eq!(inbox.history("mesh", true, 10).unwrap(), expected);
        assert_eq!(ids(&inbox.unread("mesh").unwrap()), ["m3"]);
        assert_eq!(inbox.count_rejected("mesh").unwrap(), 1);
        // Dedupe state survives too.
        assert!(!inbox.record(&records[0]).unwrap());
        assert!(!put(&mut inbox, "m9", Verified, "alice", Some("e1")));
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inbox.db");
        drop(Inbox::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(Inbox::open(&path), Err(InboxError::Corrupt(_))));
    }

    #[test]
    fn an_error_names_its_cause_once() {
        // A directory where the file should be: the I/O error is the source, not the text.
        let dir = tempfile::tempdir().unwrap();
        let err = Inbox::open(dir.path()).unwrap_err();
        assert!(matches!(err, InboxError::Io(_)), "{err:?}");
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(err.to_string(), "inbox file error");
        assert!(!err.to_string().contains(&cause));
    }

    #[cfg(unix)]
    #[test]
    fn file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inbox.db");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let mut inbox = Inbox::open(&path).unwrap();
        assert!(put(&mut inbox, "m1", Verified, "alice", None));
        assert_eq!(mode(&path), 0o600);
        let wal = dir.path().join("inbox.db-wal");
        if wal.exists() {
            assert_eq!(mode(&wal), 0o600);
        }
        drop(inbox);
        // An existing file with wider permissions is tightened on open.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Inbox::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
    }
}
