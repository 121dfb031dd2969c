//! Schema migrations, applied in order and recorded in `PRAGMA user_version`. A migration
//! is never edited once released; add a new one instead.

use rusqlite::Connection;

use crate::{Result, StoreError};

const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE meshes (
        id TEXT PRIMARY KEY,
        slug TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        owner_pubkey TEXT NOT NULL,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE members (
        id TEXT PRIMARY KEY,
        mesh_id TEXT NOT NULL REFERENCES meshes(id),
        pubkey TEXT NOT NULL,
        display_name TEXT NOT NULL,
        role TEXT NOT NULL,
        joined_at INTEGER NOT NULL,
        removed TEXT,
        UNIQUE (mesh_id, pubkey)
     );
     CREATE TABLE invites (
        id TEXT PRIMARY KEY,
        mesh_id TEXT NOT NULL REFERENCES meshes(id),
        role TEXT NOT NULL,
        max_uses INTEGER NOT NULL,
        uses INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        revoked INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL
     );
     CREATE INDEX invites_by_mesh ON invites (mesh_id);
     CREATE TABLE peers (
        pubkey TEXT NOT NULL,
        mesh_id TEXT NOT NULL REFERENCES meshes(id),
        member_id TEXT NOT NULL REFERENCES members(id),
        kind TEXT NOT NULL,
        display_name TEXT NOT NULL,
        groups_json TEXT NOT NULL,
        last_seen INTEGER NOT NULL,
        e2e_multicast INTEGER NOT NULL,
        PRIMARY KEY (mesh_id, pubkey)
     );
     CREATE TABLE messages (
        message_id TEXT NOT NULL UNIQUE,
        mesh_id TEXT NOT NULL,
        sender_pubkey TEXT NOT NULL,
        sender_member_pubkey TEXT NOT NULL,
        sender_name TEXT NOT NULL,
        target_spec TEXT NOT NULL,
        priority TEXT NOT NULL,
        nonce TEXT NOT NULL,
        ciphertext TEXT NOT NULL,
        client_message_id TEXT,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
     );
     CREATE INDEX messages_by_expiry ON messages (expires_at);
     CREATE INDEX messages_by_client_id ON messages (mesh_id, sender_pubkey, client_message_id) WHERE client_message_id IS NOT NULL;
     CREATE TABLE deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        mesh_id TEXT NOT NULL,
        message_rowid INTEGER NOT NULL,
        recipient TEXT NOT NULL,
        sealed_key TEXT,
        expires_at INTEGER NOT NULL,
        acked_at INTEGER
     );
     CREATE INDEX deliveries_pending ON deliveries (recipient, mesh_id, seq) WHERE acked_at IS NULL;
     CREATE INDEX deliveries_by_message ON deliveries (message_rowid);
     CREATE INDEX deliveries_by_expiry ON deliveries (expires_at);
     CREATE TABLE seen_signatures (
        signature TEXT PRIMARY KEY,
        expires_at INTEGER NOT NULL
     );",
    // 2: a resend with the same client_message_id is found by the insert itself.
    "DROP INDEX messages_by_client_id;
     CREATE UNIQUE INDEX messages_by_client_id ON messages (mesh_id, sender_pubkey, client_message_id)
       WHERE client_message_id IS NOT NULL;",
    // 3: expiry is purged by key range (see `purge_expired`); these indexes only cost writes.
    "DROP INDEX messages_by_expiry;
     DROP INDEX deliveries_by_expiry;
     DROP INDEX deliveries_by_message;",
    // 4: session identities retire (PROTOCOL.md §5.9).
    "ALTER TABLE peers ADD COLUMN retired_at INTEGER;",
    // 5: operator accounts of the dashboard.
    "CREATE TABLE operators (
        name TEXT PRIMARY KEY,
        password_hash TEXT,
        setup_hash TEXT,
        setup_expires_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL
     );",
    // 6: who was present when the broker stopped (restart storms need no presence events).
    "ALTER TABLE peers ADD COLUMN online INTEGER NOT NULL DEFAULT 0;",
];

/// Bring the database to the newest schema, each migration in its own transaction.
pub fn migrate(conn: &Connection) -> Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if current > supported {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        let version = i64::try_from(i).unwrap_or(i64::MAX) + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {version}; COMMIT;"
        ))?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}
