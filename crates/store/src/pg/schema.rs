//! Schema migrations of the PostgreSQL backend, applied in order and recorded in a
//! `schema_version` table, all in one transaction under an advisory lock so two nodes
//! starting at once migrate once. A migration is never edited once released; add a new
//! one instead. This is the PostgreSQL twin of `sqlite/schema.rs`: same tables and
//! columns, native types (BIGINT, BOOLEAN, identity keys), and the indexes PostgreSQL
//! needs because it purges by `expires_at` instead of by key range.

use postgres::Client;

use crate::{Result, StoreError};

/// Serialises migrations of one database across processes (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x636c_6175_6465_6d31; // "claudem1"

const MIGRATIONS: &[&str] = &[
    // 1: the schema SQLite reached at its migration 4.
    "CREATE TABLE meshes (
        id TEXT PRIMARY KEY,
        slug TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        owner_pubkey TEXT NOT NULL,
        created_at BIGINT NOT NULL
     );
     CREATE TABLE members (
        id TEXT PRIMARY KEY,
        mesh_id TEXT NOT NULL REFERENCES meshes(id),
        pubkey TEXT NOT NULL,
        display_name TEXT NOT NULL,
        role TEXT NOT NULL,
        joined_at BIGINT NOT NULL,
        removed TEXT,
        UNIQUE (mesh_id, pubkey)
     );
     CREATE TABLE invites (
        id TEXT PRIMARY KEY,
        mesh_id TEXT NOT NULL REFERENCES meshes(id),
        role TEXT NOT NULL,
        max_uses BIGINT NOT NULL,
        uses BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        revoked BOOLEAN NOT NULL,
        created_by TEXT NOT NULL,
        created_at BIGINT NOT NULL
     );
     CREATE INDEX invites_by_mesh ON invites (mesh_id);
     CREATE TABLE peers (
        pubkey TEXT NOT NULL,
        mesh_id TEXT NOT NULL REFERENCES meshes(id),
        member_id TEXT NOT NULL REFERENCES members(id),
        kind TEXT NOT NULL,
        display_name TEXT NOT NULL,
        groups_json TEXT NOT NULL,
        last_seen BIGINT NOT NULL,
        e2e_multicast BOOLEAN NOT NULL,
        retired_at BIGINT,
        PRIMARY KEY (mesh_id, pubkey)
     );
     CREATE TABLE messages (
        rowid BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
     );
     CREATE UNIQUE INDEX messages_by_client_id ON messages (mesh_id, sender_pubkey, client_message_id)
       WHERE client_message_id IS NOT NULL;
     CREATE INDEX messages_by_expiry ON messages (expires_at);
     CREATE TABLE deliveries (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        mesh_id TEXT NOT NULL,
        message_rowid BIGINT NOT NULL,
        recipient TEXT NOT NULL,
        sealed_key TEXT,
        expires_at BIGINT NOT NULL,
        acked_at BIGINT
     );
     CREATE INDEX deliveries_pending ON deliveries (recipient, mesh_id, seq) WHERE acked_at IS NULL;
     CREATE INDEX deliveries_by_message ON deliveries (message_rowid, seq);
     CREATE INDEX deliveries_by_expiry ON deliveries (expires_at);
     CREATE TABLE seen_signatures (
        signature TEXT PRIMARY KEY,
        expires_at BIGINT NOT NULL
     );
     CREATE INDEX seen_signatures_by_expiry ON seen_signatures (expires_at);",
    // 2: several broker nodes on one database: their heartbeats and every node's presences.
    "CREATE TABLE nodes (
        id BIGINT PRIMARY KEY,
        name TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        seen_at BIGINT NOT NULL
     );
     CREATE TABLE presences (
        mesh_id TEXT NOT NULL,
        pubkey TEXT NOT NULL,
        node_id BIGINT NOT NULL,
        session_id TEXT NOT NULL,
        live BOOLEAN NOT NULL,
        data TEXT NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (mesh_id, pubkey, node_id)
     );
     CREATE INDEX presences_by_node ON presences (node_id);",
    // 3: operator accounts of the dashboard.
    "CREATE TABLE operators (
        name TEXT PRIMARY KEY,
        password_hash TEXT,
        setup_hash TEXT,
        setup_expires_at BIGINT NOT NULL,
        created_at BIGINT NOT NULL
     );",
    // 4: every node's figures, for the operators' dashboard of any node.
    "ALTER TABLE nodes ADD COLUMN figures TEXT NOT NULL DEFAULT '';",
    // 5: who was present when a broker stopped (kept as on SQLite; with nodes on one
    // database the `presences` rows are what counts).
    "ALTER TABLE peers ADD COLUMN online BOOLEAN NOT NULL DEFAULT FALSE;",
];

/// Bring the database to the newest schema. Idempotent; safe to run from several
/// processes at once.
pub fn migrate(client: &mut Client) -> Result<()> {
    let supported = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version BIGINT PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )?;
    let current: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?
        .try_get(0)?;
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
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )?;
        tracing::info!(version, "applied database migration");
    }
    tx.commit()?;
    Ok(())
}
