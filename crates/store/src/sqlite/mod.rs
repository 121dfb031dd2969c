//! The embedded default backend: one SQLite file in WAL mode with `synchronous=FULL`, so
//! a commit survives power loss. Opened by the single engine thread; every statement uses
//! bound parameters and the prepared-statement cache.

mod rows;
mod schema;

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use claudemesh_proto::authority::{Removal, Role};
use rows::{
    INVITE_COLS, OPERATOR_COLS, first_key_above, invite_from_row, message_from_row,
    operator_from_row, opt_text, text,
};

use crate::{
    Claim, DeliveryRecord, Inserted, InviteRow, MemberRow, MeshRow, MessageDeliveries, MessageRow,
    NewDelivery, OperatorRow, PeerRow, PendingDelivery, Result, Store, StoreError,
};

/// Create `dir` (and missing parents) readable by its owner only (0700 on Unix); an
/// existing directory is left as it is.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    conn: Connection,
    in_tx: bool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("in_tx", &self.in_tx)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            private_dir(dir).map_err(|e| StoreError::Open {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "busy_timeout", 5_000)?;
        // Checkpoint every ~40 MiB of WAL instead of 4 MiB: under load the same hot pages are
        // rewritten by every commit, and copying them into the database file each time
        // doubled the write volume. Durability is unchanged (synchronous=FULL on every commit).
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&conn)?;
        Ok(Self { conn, in_tx: false })
    }

    fn tx(&mut self) -> Result<&Connection> {
        if !self.in_tx {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.in_tx = true;
        }
        Ok(&self.conn)
    }
}

impl Store for SqliteStore {
    fn commit(&mut self) -> Result<()> {
        if self.in_tx {
            // Whatever happens, the transaction is over after COMMIT returns.
            self.in_tx = false;
            if let Err(e) = self.conn.execute_batch("COMMIT") {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e.into());
            }
        }
        Ok(())
    }

    fn rollback(&mut self) -> Result<()> {
        if self.in_tx {
            self.in_tx = false;
            self.conn.execute_batch("ROLLBACK")?;
        }
        Ok(())
    }

    fn ping(&mut self) -> Result<()> {
        let one: i64 = self.conn.query_row("SELECT 1", [], |r| r.get(0))?;
        debug_assert_eq!(one, 1);
        Ok(())
    }

    fn load_meshes(&mut self) -> Result<Vec<MeshRow>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, slug, name, owner_pubkey, created_at FROM meshes")?;
        let rows = stmt.query_map([], |r| {
            Ok(MeshRow {
                id: r.get(0)?,
                slug: r.get(1)?,
                name: r.get(2)?,
                owner_pubkey: r.get(3)?,
                created_at: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn load_members(&mut self) -> Result<Vec<MemberRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, mesh_id, pubkey, display_name, role, joined_at, removed FROM members",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(MemberRow {
                id: r.get(0)?,
                mesh_id: r.get(1)?,
                pubkey: r.get(2)?,
                display_name: r.get(3)?,
                role: text(r, 4)?,
                joined_at: r.get(5)?,
                removed: opt_text(r, 6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn load_peers(&mut self) -> Result<Vec<PeerRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT pubkey, mesh_id, member_id, kind, display_name, groups_json, last_seen, e2e_multicast, retired_at, online FROM peers",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(PeerRow {
                pubkey: r.get(0)?,
                mesh_id: r.get(1)?,
                member_id: r.get(2)?,
                kind: text(r, 3)?,
                display_name: r.get(4)?,
                groups_json: r.get(5)?,
                last_seen: r.get(6)?,
                e2e_multicast: r.get(7)?,
                retired_at: r.get(8)?,
                online: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn insert_mesh(&mut self, mesh: &MeshRow) -> Result<()> {
        self.tx()?
            .prepare_cached(
                "INSERT INTO meshes (id, slug, name, owner_pubkey, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![mesh.id, mesh.slug, mesh.name, mesh.owner_pubkey, mesh.created_at])?;
        Ok(())
    }

    fn upsert_member(&mut self, m: &MemberRow) -> Result<()> {
        self.tx()?
            .prepare_cached(
                "INSERT INTO members (id, mesh_id, pubkey, display_name, role, joined_at, removed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(id) DO UPDATE SET display_name = excluded.display_name,
                   role = excluded.role, removed = excluded.removed",
            )?
            .execute(params![
                m.id,
                m.mesh_id,
                m.pubkey,
                m.display_name,
                m.role.as_str(),
                m.joined_at,
                m.removed.map(Removal::as_str)
            ])?;
        Ok(())
    }

    fn upsert_peer(&mut self, p: &PeerRow) -> Result<()> {
        self.tx()?
            .prepare_cached(
                "INSERT INTO peers (pubkey, mesh_id, member_id, kind, display_name, groups_json, last_seen, e2e_multicast, retired_at, online)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT(mesh_id, pubkey) DO UPDATE SET member_id = excluded.member_id,
                   kind = excluded.kind, display_name = excluded.display_name,
                   groups_json = excluded.groups_json, last_seen = excluded.last_seen,
                   e2e_multicast = excluded.e2e_multicast, retired_at = excluded.retired_at,
                   online = excluded.online",
            )?
            .execute(params![
                p.pubkey,
                p.mesh_id,
                p.member_id,
                p.kind.as_str(),
                p.display_name,
                p.groups_json,
                p.last_seen,
                p.e2e_multicast,
                p.retired_at,
                p.online
            ])?;
        Ok(())
    }

    fn invite(&mut self, invite_id: &str) -> Result<Option<InviteRow>> {
        let sql = format!("SELECT {INVITE_COLS} FROM invites WHERE id = ?1");
        let conn = self.tx()?;
        Ok(conn
            .prepare_cached(&sql)?
            .query_row(params![invite_id], invite_from_row)
            .optional()?)
    }

    fn invites(&mut self, mesh_id: &str) -> Result<Vec<InviteRow>> {
        let sql =
            format!("SELECT {INVITE_COLS} FROM invites WHERE mesh_id = ?1 ORDER BY created_at");
        let conn = self.tx()?;
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![mesh_id], invite_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn upsert_invite(&mut self, i: &InviteRow) -> Result<()> {
        self.tx()?
            .prepare_cached(
                "INSERT INTO invites (id, mesh_id, role, max_uses, uses, expires_at, revoked, created_by, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(id) DO UPDATE SET uses = excluded.uses, revoked = excluded.revoked,
                   max_uses = excluded.max_uses",
            )?
            .execute(params![
                i.id, i.mesh_id, i.role.as_str(), i.max_uses, i.uses, i.expires_at, i.revoked, i.created_by, i.created_at
            ])?;
        Ok(())
    }

    fn claim_invite_use(&mut self, mesh_id: &str, invite_id: &str, now_s: i64) -> Result<Claim> {
        let conn = self.tx()?;
        let claimed = conn
            .prepare_cached(
                "UPDATE invites SET uses = uses + 1
                 WHERE id = ?1 AND mesh_id = ?2 AND revoked = 0 AND expires_at > ?3
                   AND (max_uses = 0 OR uses < max_uses)",
            )?
            .execute(params![invite_id, mesh_id, now_s])?;
        if claimed == 1 {
            return Ok(Claim::Claimed);
        }
        // Not claimed: say why (the row cannot change under us inside this transaction).
        let sql = format!("SELECT {INVITE_COLS} FROM invites WHERE id = ?1 AND mesh_id = ?2");
        let row = conn
            .prepare_cached(&sql)?
            .query_row(params![invite_id, mesh_id], invite_from_row)
            .optional()?;
        Ok(match row {
            None => Claim::NotFound,
            Some(r) if r.revoked => Claim::Revoked,
            Some(r) if r.expires_at <= now_s => Claim::Expired,
            Some(_) => Claim::Exhausted,
        })
    }

    fn revoke_invite(&mut self, mesh_id: &str, invite_id: &str) -> Result<bool> {
        let found = self
            .tx()?
            .prepare_cached("UPDATE invites SET revoked = 1 WHERE id = ?1 AND mesh_id = ?2")?
            .execute(params![invite_id, mesh_id])?;
        Ok(found == 1)
    }

    fn remove_member(&mut self, mesh_id: &str, member_id: &str, removal: Removal) -> Result<bool> {
        let changed = self
            .tx()?
            .prepare_cached(
                "UPDATE members SET removed = ?3
                 WHERE id = ?1 AND mesh_id = ?2 AND role != ?4
                   AND (removed IS NULL OR (removed != ?3 AND ?3 = ?5))",
            )?
            .execute(params![
                member_id,
                mesh_id,
                removal.as_str(),
                Role::Owner.as_str(),
                Removal::Revoked.as_str()
            ])?;
        Ok(changed == 1)
    }

    fn insert_message(
        &mut self,
        m: &MessageRow,
        deliveries: &[NewDelivery<'_>],
    ) -> Result<Inserted> {
        let conn = self.tx()?;
        conn.prepare_cached(
            "INSERT INTO messages (message_id, mesh_id, sender_pubkey, sender_member_pubkey, sender_name,
               target_spec, priority, nonce, ciphertext, client_message_id, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            m.message_id,
            m.mesh_id,
            m.sender_pubkey,
            m.sender_member_pubkey,
            m.sender_name,
            m.target_spec,
            m.priority.as_str(),
            m.nonce,
            m.ciphertext,
            m.client_message_id,
            m.created_at,
            m.expires_at
        ])?;
        if conn.changes() == 1 {
            let rowid = conn.last_insert_rowid();
            let mut stmt = conn.prepare_cached(
                "INSERT INTO deliveries (mesh_id, message_rowid, recipient, sealed_key, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut seqs = Vec::with_capacity(deliveries.len());
            for d in deliveries {
                stmt.execute(params![
                    m.mesh_id,
                    rowid,
                    d.recipient,
                    d.sealed_key,
                    m.expires_at
                ])?;
                seqs.push(conn.last_insert_rowid());
            }
            return Ok(Inserted::New(seqs));
        }
        crate::existing_or_duplicate_id(self, m)
    }

    fn find_message_by_client_id(
        &mut self,
        mesh_id: &str,
        sender_pubkey: &str,
        client_message_id: &str,
    ) -> Result<Option<String>> {
        Ok(self
            .tx()?
            .prepare_cached(
                "SELECT message_id FROM messages
                 WHERE mesh_id = ?1 AND sender_pubkey = ?2 AND client_message_id = ?3 LIMIT 1",
            )?
            .query_row(params![mesh_id, sender_pubkey, client_message_id], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn ack_delivery(
        &mut self,
        mesh_id: &str,
        recipient: &str,
        message_id: &str,
        now: i64,
    ) -> Result<bool> {
        let n = self
            .tx()?
            .prepare_cached(
                "UPDATE deliveries SET acked_at = ?4
                 WHERE recipient = ?2 AND mesh_id = ?1 AND acked_at IS NULL
                   AND message_rowid = (SELECT rowid FROM messages WHERE message_id = ?3)",
            )?
            .execute(params![mesh_id, recipient, message_id, now])?;
        Ok(n > 0)
    }

    fn ack_deliveries(&mut self, seqs: &[i64], now: i64) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        // One statement for the whole batch: the seqs travel as a JSON array parameter.
        let list = serde_json::to_string(seqs).unwrap_or_else(|_| "[]".to_owned());
        let n = self
            .tx()?
            .prepare_cached(
                "UPDATE deliveries SET acked_at = ?1
                 WHERE seq IN (SELECT value FROM json_each(?2)) AND acked_at IS NULL",
            )?
            .execute(params![now, list])?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn ack_delivery_by_client_id(
        &mut self,
        mesh_id: &str,
        recipient: &str,
        client_message_id: &str,
        now: i64,
    ) -> Result<Option<String>> {
        let conn = self.tx()?;
        let found: Option<(i64, String)> = conn
            .prepare_cached(
                "SELECT d.seq, m.message_id FROM deliveries d JOIN messages m ON m.rowid = d.message_rowid
                 WHERE d.recipient = ?1 AND d.mesh_id = ?3 AND d.acked_at IS NULL AND m.client_message_id = ?2
                 ORDER BY d.seq LIMIT 1",
            )?
            .query_row(params![recipient, client_message_id, mesh_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((seq, message_id)) = found else {
            return Ok(None);
        };
        conn.prepare_cached("UPDATE deliveries SET acked_at = ?2 WHERE seq = ?1")?
            .execute(params![seq, now])?;
        Ok(Some(message_id))
    }

    fn pending(
        &mut self,
        mesh_id: &str,
        recipient: &str,
        after: i64,
        limit: usize,
        now: i64,
    ) -> Result<Vec<PendingDelivery>> {
        let conn = self.tx()?;
        let mut stmt = conn.prepare_cached(
            "SELECT d.seq, d.message_rowid, d.sealed_key,
                    m.message_id, m.mesh_id, m.sender_pubkey, m.sender_member_pubkey, m.sender_name,
                    m.target_spec, m.priority, m.nonce, m.ciphertext, m.client_message_id,
                    m.created_at, m.expires_at
             FROM deliveries d JOIN messages m ON m.rowid = d.message_rowid
             WHERE d.recipient = ?1 AND d.mesh_id = ?5 AND d.acked_at IS NULL AND d.seq > ?2 AND d.expires_at > ?3
             ORDER BY d.seq LIMIT ?4",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![recipient, after, now, limit, mesh_id], |r| {
            Ok(PendingDelivery {
                seq: r.get(0)?,
                message_rowid: r.get(1)?,
                sealed_key: r.get(2)?,
                message: message_from_row(r, 3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn message_deliveries(
        &mut self,
        mesh_id: &str,
        message_id: &str,
        limit: usize,
    ) -> Result<Option<MessageDeliveries>> {
        let conn = self.tx()?;
        let found = conn
            .prepare_cached(
                "SELECT rowid, message_id, mesh_id, sender_pubkey, sender_member_pubkey, sender_name,
                        target_spec, priority, nonce, ciphertext, client_message_id, created_at, expires_at
                 FROM messages WHERE message_id = ?1 AND mesh_id = ?2",
            )?
            .query_row(params![message_id, mesh_id], |r| {
                Ok((r.get::<_, i64>(0)?, message_from_row(r, 1)?))
            })
            .optional()?;
        let Some((rowid, message)) = found else {
            return Ok(None);
        };
        let mut deliveries = Vec::new();
        if let Some(first) = first_key_above(conn, "deliveries", "seq", "message_rowid", rowid - 1)?
        {
            // The message's deliveries are contiguous from `first`: read until another
            // message's row (or the limit), never the rest of the table.
            let mut stmt = conn.prepare_cached(
                "SELECT seq, recipient, expires_at, acked_at, message_rowid FROM deliveries
                 WHERE seq >= ?1 ORDER BY seq",
            )?;
            let mut rows = stmt.query(params![first])?;
            while deliveries.len() < limit {
                let Some(r) = rows.next()? else { break };
                if r.get::<_, i64>(4)? != rowid {
                    break;
                }
                deliveries.push(DeliveryRecord {
                    seq: r.get(0)?,
                    recipient: r.get(1)?,
                    expires_at: r.get(2)?,
                    acked_at: r.get(3)?,
                });
            }
        }
        Ok(Some(MessageDeliveries {
            message,
            deliveries,
        }))
    }

    fn queue_depth(&mut self, now: i64) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM deliveries WHERE acked_at IS NULL AND expires_at > ?1",
            )?
            .query_row(params![now], |r| r.get(0))?)
    }

    fn put_operator(&mut self, o: &OperatorRow) -> Result<()> {
        self.tx()?
            .prepare_cached(
                "INSERT OR REPLACE INTO operators
                   (name, password_hash, setup_hash, setup_expires_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                o.name,
                o.password_hash,
                o.setup_hash,
                o.setup_expires_at,
                o.created_at
            ])?;
        Ok(())
    }

    fn operator(&mut self, name: &str) -> Result<Option<OperatorRow>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {OPERATOR_COLS} FROM operators WHERE name = ?1"
            ))?
            .query_row(params![name], operator_from_row)
            .optional()?)
    }

    fn operators(&mut self) -> Result<Vec<OperatorRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {OPERATOR_COLS} FROM operators ORDER BY name"
        ))?;
        let rows = stmt.query_map([], operator_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn remove_operator(&mut self, name: &str) -> Result<bool> {
        let n = self
            .tx()?
            .prepare_cached("DELETE FROM operators WHERE name = ?1")?
            .execute(params![name])?;
        Ok(n == 1)
    }

    fn set_operator_password(
        &mut self,
        name: &str,
        setup_hash: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<bool> {
        let n = self
            .tx()?
            .prepare_cached(
                "UPDATE operators SET password_hash = ?3, setup_hash = NULL, setup_expires_at = 0
                  WHERE name = ?1 AND setup_hash = ?2 AND setup_expires_at > ?4",
            )?
            .execute(params![name, setup_hash, password_hash, now])?;
        Ok(n == 1)
    }

    fn queue_depths(&mut self, mesh_id: &str, now: i64) -> Result<Vec<(String, i64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT recipient, COUNT(*) FROM deliveries
              WHERE acked_at IS NULL AND mesh_id = ?1 AND expires_at > ?2
              GROUP BY recipient ORDER BY recipient",
        )?;
        let rows = stmt.query_map(params![mesh_id, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn drop_undelivered(&mut self, mesh_id: &str, recipient: &str, now: i64) -> Result<u64> {
        let n = self
            .tx()?
            .prepare_cached(
                "DELETE FROM deliveries WHERE recipient = ?1 AND mesh_id = ?2 AND acked_at IS NULL
                   AND expires_at > ?3",
            )?
            .execute(params![recipient, mesh_id, now])?;
        Ok(n as u64)
    }

    fn purge_expired(&mut self, now: i64) -> Result<u64> {
        let conn = self.tx()?;
        let mut n = 0;
        // Messages and deliveries expire a fixed TTL after they were written, in key order,
        // so the expired rows are a prefix of each table: found by binary search on the
        // primary key and deleted as a range, with no expiry index to maintain on insert.
        for (table, key) in [("deliveries", "seq"), ("messages", "rowid")] {
            // Everything before the first unexpired row has expired.
            let keep_from = first_key_above(conn, table, key, "expires_at", now)?;
            n += conn
                .prepare_cached(&format!("DELETE FROM {table} WHERE {key} < ?1"))?
                .execute(params![keep_from.unwrap_or(i64::MAX)])?;
        }
        n += conn
            .prepare_cached("DELETE FROM seen_signatures WHERE expires_at <= ?1")?
            .execute(params![now])?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn remember_signature(&mut self, signature: &str, expires_at: i64) -> Result<bool> {
        let n = self
            .tx()?
            .prepare_cached(
                "INSERT OR IGNORE INTO seen_signatures (signature, expires_at) VALUES (?1, ?2)",
            )?
            .execute(params![signature, expires_at])?;
        Ok(n == 1)
    }
}
