//! Row mapping for the SQLite backend: rusqlite errors into [`StoreError`], text
//! columns into the protocol's enums, rows into row types, and the binary search used to
//! find purge boundaries without an index.

use rusqlite::{Connection, OptionalExtension, params};

use crate::{InviteRow, MessageRow, OperatorRow, Result, StoreError};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::db(e)
    }
}

/// A text column holding one of a closed set of values (a role, a kind, a priority).
pub(super) fn text<T>(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let s: String = row.get(idx)?;
    s.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// The same, for a nullable column.
pub(super) fn opt_text<T>(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Option<T>>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match row.get::<_, Option<String>>(idx)? {
        None => Ok(None),
        Some(_) => text(row, idx).map(Some),
    }
}

pub(super) fn message_from_row(
    row: &rusqlite::Row<'_>,
    base: usize,
) -> rusqlite::Result<MessageRow> {
    Ok(MessageRow {
        message_id: row.get(base)?,
        mesh_id: row.get(base + 1)?,
        sender_pubkey: row.get(base + 2)?,
        sender_member_pubkey: row.get(base + 3)?,
        sender_name: row.get(base + 4)?,
        target_spec: row.get(base + 5)?,
        priority: text(row, base + 6)?,
        nonce: row.get(base + 7)?,
        ciphertext: row.get(base + 8)?,
        client_message_id: row.get(base + 9)?,
        created_at: row.get(base + 10)?,
        expires_at: row.get(base + 11)?,
    })
}

/// The smallest `key` of `table` whose `column` is above `threshold`, for a `column`
/// that never decreases as the key grows: O(log n) primary-key lookups, no index on
/// `column`. Two columns qualify: `expires_at` (a constant TTL after a timestamp taken
/// in commit order) and `deliveries.message_rowid` (a message's deliveries are inserted
/// together, right after the message). `table`, `key` and `column` are constants of this
/// module, never input.
pub(super) fn first_key_above(
    conn: &Connection,
    table: &str,
    key: &str,
    column: &str,
    threshold: i64,
) -> Result<Option<i64>> {
    let bounds: (Option<i64>, Option<i64>) = conn
        .prepare_cached(&format!("SELECT MIN({key}), MAX({key}) FROM {table}"))?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (Some(mut lo), Some(mut hi)) = bounds else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {key}, {column} FROM {table} WHERE {key} >= ?1 ORDER BY {key} LIMIT 1"
    ))?;
    let mut best = None;
    while lo <= hi {
        let mid = lo + (hi - lo) / 2;
        match stmt
            .query_row(params![mid], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()?
        {
            Some((k, value)) if value > threshold => {
                best = Some(k);
                hi = mid - 1;
            }
            Some((k, _)) => lo = k + 1,
            None => hi = mid - 1,
        }
    }
    Ok(best)
}

pub(super) fn invite_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<InviteRow> {
    Ok(InviteRow {
        id: row.get(0)?,
        mesh_id: row.get(1)?,
        role: text(row, 2)?,
        max_uses: row.get(3)?,
        uses: row.get(4)?,
        expires_at: row.get(5)?,
        revoked: row.get(6)?,
        created_by: row.get(7)?,
        created_at: row.get(8)?,
    })
}

pub(super) const OPERATOR_COLS: &str =
    "name, password_hash, setup_hash, setup_expires_at, created_at";

pub(super) fn operator_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<OperatorRow> {
    Ok(OperatorRow {
        name: row.get(0)?,
        password_hash: row.get(1)?,
        setup_hash: row.get(2)?,
        setup_expires_at: row.get(3)?,
        created_at: row.get(4)?,
    })
}

pub(super) const INVITE_COLS: &str =
    "id, mesh_id, role, max_uses, uses, expires_at, revoked, created_by, created_at";
