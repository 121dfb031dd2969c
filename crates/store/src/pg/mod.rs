//! The PostgreSQL backend: one connection (the synchronous `postgres` client, so the
//! engine thread blocks on it exactly as on SQLite), `synchronous_commit = on`, its own
//! migrations at open, bound parameters and a per-connection prepared-statement cache.
//!
//! The transaction model is SQLite's: the first mutating call opens a transaction and
//! everything joins it until [`Store::commit`] or [`Store::rollback`]. One difference is
//! handled here rather than left to callers: after a failed statement PostgreSQL aborts
//! the whole transaction (and would answer a later `COMMIT` with a silent rollback), so a
//! failure marks the transaction failed and `commit` then rolls back and returns an error.
//!
//! A lost connection (PostgreSQL restarted, the network dropped it) fails the statement
//! that found it and, if a transaction was open, that whole transaction: `commit` returns
//! an error, so nothing of it is acknowledged. The next call outside a transaction
//! connects again (at most one attempt per [`RETRY_EVERY`], each bounded by
//! [`RECONNECT_TIMEOUT`], so a database that is down costs the engine little), with a fresh
//! statement cache. The caller sees errors meanwhile and carries on when they stop.
//!
//! What it must not do: reconnect inside a transaction (a half-applied batch would then
//! commit on the new connection), hold the database password anywhere but the driver's
//! configuration, or put it in an error.

mod rows;
mod schema;

/// Column lists as literals, so every statement stays a `&'static str` (cache keys).
macro_rules! invite_cols {
    () => {
        "id, mesh_id, role, max_uses, uses, expires_at, revoked, created_by, created_at"
    };
}
macro_rules! operator_cols {
    () => {
        "name, password_hash, setup_hash, setup_expires_at, created_at"
    };
}
macro_rules! mesh_cols {
    () => {
        "id, slug, name, owner_pubkey, created_at"
    };
}
macro_rules! member_cols {
    () => {
        "id, mesh_id, pubkey, display_name, role, joined_at, removed"
    };
}
macro_rules! peer_cols {
    () => {
        "pubkey, mesh_id, member_id, kind, display_name, groups_json, last_seen, e2e_multicast, \
         retired_at, online"
    };
}
macro_rules! message_cols {
    () => {
        "message_id, mesh_id, sender_pubkey, sender_member_pubkey, sender_name, target_spec, \
         priority, nonce, ciphertext, client_message_id, created_at, expires_at"
    };
}

mod cluster;
pub use cluster::{CHANNEL, PgListener};

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

use claudemesh_proto::authority::{Removal, Role};
pub use rows::redact_url;
use rows::{
    invite_from_row, member_from_row, mesh_from_row, message_from_row, operator_from_row,
    peer_from_row, redact,
};

use crate::{
    Claim, DeliveryRecord, Inserted, InviteRow, MemberRow, MeshRow, MessageDeliveries, MessageRow,
    NewDelivery, OperatorRow, PeerRow, PendingDelivery, Result, Store, StoreError,
};

/// How long `open` waits for the server when the URL names no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one reconnection attempt may block the caller.
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one reconnection attempt per this interval.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// An earlier statement of this transaction failed, so PostgreSQL has aborted it.
#[derive(Debug, thiserror::Error)]
#[error("transaction aborted by an earlier failed statement; rolled back")]
struct Aborted;

/// Taken (for the rest of the transaction) before the first delivery a transaction
/// inserts: delivery seqs then increase in commit order across every node writing to the
/// database, which per-recipient FIFO relies on (a reader that has seen seq N never finds
/// a smaller one committed later).
const SEQ_LOCK: i64 = 0x636c_6175_6465_7371; // "claudesq"

/// The connection to the database is lost and not yet back.
#[derive(Debug, thiserror::Error)]
#[error("the connection to PostgreSQL is lost; reconnecting")]
struct Disconnected;

/// PostgreSQL-backed [`Store`].
pub struct PgStore {
    /// The driver's configuration (it holds the password; never printed).
    config: postgres::Config,
    /// `None` while the connection is lost.
    client: Option<Client>,
    /// No reconnection attempt before this.
    next_attempt: Instant,
    /// Prepared statements by their SQL text (all `'static`: no SQL is built from input).
    statements: HashMap<&'static str, Statement>,
    in_tx: bool,
    /// A statement failed inside the open transaction.
    failed: bool,
    /// This transaction holds [`SEQ_LOCK`].
    seq_locked: bool,
    /// Connect again after a lost connection (not for a listener, whose LISTEN would not
    /// survive it).
    reconnect: bool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("connected", &self.client.is_some())
            .field("in_tx", &self.in_tx)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connect to `url` (a `postgres://` URL or a key/value connection string, no TLS),
    /// set `synchronous_commit = on` and migrate. A password in `url` never appears in the
    /// error.
    pub fn open(url: &str) -> Result<Self> {
        let open_error = |password: Option<&str>, reason: String| StoreError::Open {
            path: redact(url, password),
            reason: redact(&reason, password),
        };
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e: postgres::Error| open_error(None, with_causes(&e)))?;
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let mut client =
            connect(&config).map_err(|e| open_error(password.as_deref(), with_causes(&e)))?;
        schema::migrate(&mut client)?;
        Ok(Self {
            config,
            client: Some(client),
            next_attempt: Instant::now(),
            statements: HashMap::new(),
            in_tx: false,
            failed: false,
            seq_locked: false,
            reconnect: true,
        })
    }

    /// Take [`SEQ_LOCK`] for the open transaction, once.
    fn lock_seqs_now(&mut self) -> Result<()> {
        if !self.seq_locked {
            self.exec("SELECT pg_advisory_xact_lock($1)", &[&SEQ_LOCK])?;
            self.seq_locked = true;
        }
        Ok(())
    }

    /// Whether the store holds a live connection (it reconnects on the next call if not).
    pub fn is_connected(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// The live connection, reconnecting first when it was lost and no transaction is
    /// open (see the module doc).
    fn client(&mut self) -> Result<&mut Client> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.lost();
        }
        if self.client.is_none() {
            if self.in_tx || !self.reconnect || Instant::now() < self.next_attempt {
                return Err(StoreError::db(Disconnected));
            }
            self.next_attempt = Instant::now() + RETRY_EVERY;
            let mut config = self.config.clone();
            config.connect_timeout(RECONNECT_TIMEOUT);
            // The driver's error names no password: it comes from the connection, not the URL.
            let client = connect(&config)?;
            tracing::info!("reconnected to PostgreSQL");
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::db(Disconnected))
    }

    /// Forget a lost connection and everything prepared on it.
    fn lost(&mut self) {
        if self.client.take().is_some() {
            tracing::warn!("the connection to PostgreSQL is lost");
        }
        self.statements.clear();
    }

    /// Look at a driver result: an error that closed the connection drops it.
    fn check<T>(&mut self, r: std::result::Result<T, postgres::Error>) -> Result<T> {
        if r.as_ref().is_err_and(postgres::Error::is_closed) || !self.is_connected() {
            self.lost();
        }
        Ok(r?)
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        let r = self.client()?.batch_execute(sql);
        self.check(r)
    }

    fn statement(&mut self, sql: &'static str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let r = self.client()?.prepare(sql);
        let s = self.check(r)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    fn begin(&mut self) -> Result<()> {
        if !self.in_tx {
            self.batch("BEGIN")?;
            self.in_tx = true;
            self.failed = false;
        }
        Ok(())
    }

    /// Record a failure inside the open transaction (PostgreSQL has aborted it).
    fn note<T>(&mut self, r: Result<T>) -> Result<T> {
        if r.is_err() && self.in_tx {
            self.failed = true;
        }
        r
    }

    /// Run a statement inside the batch's transaction; rows changed.
    fn exec(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64> {
        self.begin()?;
        let r = self.statement(sql).and_then(|s| {
            let r = self.client()?.execute(&s, params);
            self.check(r)
        });
        self.note(r)
    }

    /// Query inside the batch's transaction.
    fn query(&mut self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        self.begin()?;
        self.read(sql, params)
    }

    /// Query in whatever state the connection is (inside the open transaction if there
    /// is one, else on its own), as SQLite's loads and gauges do.
    fn read(&mut self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        let r = self.statement(sql).and_then(|s| {
            let r = self.client()?.query(&s, params);
            self.check(r)
        });
        self.note(r)
    }

    /// The single row a statement always returns.
    fn one(rows: Vec<Row>) -> Result<Row> {
        rows.into_iter().next().ok_or_else(|| StoreError::Corrupt {
            what: "a statement that returns one row returned none".into(),
        })
    }
}

/// Rows changed, for the trait's `bool` answers.
fn changed(n: u64) -> bool {
    n > 0
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The driver's error with its causes ("error connecting to server: Connection refused"),
/// which its own text leaves out.
fn with_causes(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Open one connection with the session settings every connection of this store has.
fn connect(config: &postgres::Config) -> std::result::Result<Client, postgres::Error> {
    let mut client = config.connect(NoTls)?;
    client.batch_execute("SET synchronous_commit = on")?;
    Ok(client)
}

impl Store for PgStore {
    fn cluster(&mut self) -> Option<&mut dyn crate::Cluster> {
        Some(self)
    }

    fn commit(&mut self) -> Result<()> {
        if !self.in_tx {
            return Ok(());
        }
        // Whatever happens, the transaction is over after this.
        self.in_tx = false;
        self.seq_locked = false;
        if std::mem::take(&mut self.failed) {
            // On a lost connection there is nothing to roll back: the server did.
            if self.is_connected() {
                self.batch("ROLLBACK")?;
            }
            return Err(StoreError::db(Aborted));
        }
        if let Err(e) = self.batch("COMMIT") {
            if self.is_connected() {
                let _ = self.batch("ROLLBACK");
            }
            return Err(e);
        }
        Ok(())
    }

    fn rollback(&mut self) -> Result<()> {
        if self.in_tx {
            self.in_tx = false;
            self.failed = false;
            self.seq_locked = false;
            if self.is_connected() {
                self.batch("ROLLBACK")?;
            }
        }
        Ok(())
    }

    fn ping(&mut self) -> Result<()> {
        if self.in_tx {
            // Inside a transaction a failed ping would abort it; the caller's own
            // statements report a lost connection anyway.
            return self.client().map(|_| ());
        }
        self.batch("SELECT 1")
    }

    fn load_meshes(&mut self) -> Result<Vec<MeshRow>> {
        self.read(concat!("SELECT ", mesh_cols!(), " FROM meshes"), &[])?
            .iter()
            .map(mesh_from_row)
            .collect()
    }

    fn load_members(&mut self) -> Result<Vec<MemberRow>> {
        self.read(concat!("SELECT ", member_cols!(), " FROM members"), &[])?
            .iter()
            .map(member_from_row)
            .collect()
    }

    fn load_peers(&mut self) -> Result<Vec<PeerRow>> {
        self.read(concat!("SELECT ", peer_cols!(), " FROM peers"), &[])?
            .iter()
            .map(peer_from_row)
            .collect()
    }

    fn insert_mesh(&mut self, mesh: &MeshRow) -> Result<()> {
        self.exec(
            "INSERT INTO meshes (id, slug, name, owner_pubkey, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&mesh.id, &mesh.slug, &mesh.name, &mesh.owner_pubkey, &mesh.created_at],
        )?;
        Ok(())
    }

    fn upsert_member(&mut self, m: &MemberRow) -> Result<()> {
        self.exec(
            "INSERT INTO members (id, mesh_id, pubkey, display_name, role, joined_at, removed)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name,
               role = excluded.role, removed = excluded.removed",
            &[
                &m.id,
                &m.mesh_id,
                &m.pubkey,
                &m.display_name,
                &m.role.as_str(),
                &m.joined_at,
                &m.removed.map(Removal::as_str),
            ],
        )?;
        Ok(())
    }

    fn upsert_peer(&mut self, p: &PeerRow) -> Result<()> {
        self.exec(
            "INSERT INTO peers (pubkey, mesh_id, member_id, kind, display_name, groups_json,
               last_seen, e2e_multicast, retired_at, online)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (mesh_id, pubkey) DO UPDATE SET member_id = excluded.member_id,
               kind = excluded.kind, display_name = excluded.display_name,
               groups_json = excluded.groups_json, last_seen = excluded.last_seen,
               e2e_multicast = excluded.e2e_multicast, retired_at = excluded.retired_at,
               online = excluded.online",
            &[
                &p.pubkey,
                &p.mesh_id,
                &p.member_id,
                &p.kind.as_str(),
                &p.display_name,
                &p.groups_json,
                &p.last_seen,
                &p.e2e_multicast,
                &p.retired_at,
                &p.online,
            ],
        )?;
        Ok(())
    }

    fn invite(&mut self, invite_id: &str) -> Result<Option<InviteRow>> {
        const SQL: &str = concat!("SELECT ", invite_cols!(), " FROM invites WHERE id = $1");
        self.query(SQL, &[&invite_id])?
            .first()
            .map(invite_from_row)
            .transpose()
    }

    fn invites(&mut self, mesh_id: &str) -> Result<Vec<InviteRow>> {
        const SQL: &str = concat!(
            "SELECT ",
            invite_cols!(),
            " FROM invites WHERE mesh_id = $1 ORDER BY created_at"
        );
        self.query(SQL, &[&mesh_id])?
            .iter()
            .map(invite_from_row)
            .collect()
    }

    fn upsert_invite(&mut self, i: &InviteRow) -> Result<()> {
        self.exec(
            "INSERT INTO invites (id, mesh_id, role, max_uses, uses, expires_at, revoked, created_by, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE SET uses = excluded.uses, revoked = excluded.revoked,
               max_uses = excluded.max_uses",
            &[
                &i.id,
                &i.mesh_id,
                &i.role.as_str(),
                &i64::from(i.max_uses),
                &i64::from(i.uses),
                &i.expires_at,
                &i.revoked,
                &i.created_by,
                &i.created_at,
            ],
        )?;
        Ok(())
    }

    fn claim_invite_use(&mut self, mesh_id: &str, invite_id: &str, now_s: i64) -> Result<Claim> {
        // One statement claims and, when it did not, reads why from the same snapshot. A
        // concurrent claim of the last use makes this UPDATE wait for that transaction and
        // re-check `uses < max_uses` on the committed row, so exactly one of them wins.
        let row = Self::one(self.query(
            "WITH claimed AS (
               UPDATE invites SET uses = uses + 1
               WHERE id = $1 AND mesh_id = $2 AND NOT revoked AND expires_at > $3
                 AND (max_uses = 0 OR uses < max_uses)
               RETURNING 1)
             SELECT EXISTS (SELECT 1 FROM claimed),
                    (SELECT revoked FROM invites WHERE id = $1 AND mesh_id = $2),
                    (SELECT expires_at FROM invites WHERE id = $1 AND mesh_id = $2)",
            &[&invite_id, &mesh_id, &now_s],
        )?)?;
        let claimed: bool = row.try_get(0)?;
        let revoked: Option<bool> = row.try_get(1)?;
        let expires_at: Option<i64> = row.try_get(2)?;
        Ok(match (claimed, revoked, expires_at) {
            (true, _, _) => Claim::Claimed,
            (false, None, _) | (false, _, None) => Claim::NotFound,
            (false, Some(true), _) => Claim::Revoked,
            (false, _, Some(at)) if at <= now_s => Claim::Expired,
            (false, _, _) => Claim::Exhausted,
        })
    }

    fn revoke_invite(&mut self, mesh_id: &str, invite_id: &str) -> Result<bool> {
        Ok(changed(self.exec(
            "UPDATE invites SET revoked = TRUE WHERE id = $1 AND mesh_id = $2",
            &[&invite_id, &mesh_id],
        )?))
    }

    fn remove_member(&mut self, mesh_id: &str, member_id: &str, removal: Removal) -> Result<bool> {
        Ok(changed(self.exec(
            "UPDATE members SET removed = $3::text
             WHERE id = $1 AND mesh_id = $2 AND role <> $4::text
               AND (removed IS NULL OR (removed <> $3::text AND $3::text = $5::text))",
            &[
                &member_id,
                &mesh_id,
                &removal.as_str(),
                &Role::Owner.as_str(),
                &Removal::Revoked.as_str(),
            ],
        )?))
    }

    fn insert_message(
        &mut self,
        m: &MessageRow,
        deliveries: &[NewDelivery<'_>],
    ) -> Result<Inserted> {
        self.lock_seqs_now()?;
        let recipients: Vec<&str> = deliveries.iter().map(|d| d.recipient).collect();
        let sealed_keys: Vec<Option<&str>> = deliveries.iter().map(|d| d.sealed_key).collect();
        // The body and every delivery in one round trip. The deliveries are inserted in the
        // order given (ORDER BY the array position), so their identity values, sorted, are
        // the seqs in that order. A conflict on either unique index (message id, or this
        // sender's client_message_id) inserts nothing at all.
        let row = Self::one(self.query(
            "WITH msg AS (
               INSERT INTO messages (message_id, mesh_id, sender_pubkey, sender_member_pubkey,
                 sender_name, target_spec, priority, nonce, ciphertext, client_message_id,
                 created_at, expires_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
               ON CONFLICT DO NOTHING
               RETURNING rowid),
             ins AS (
               INSERT INTO deliveries (mesh_id, message_rowid, recipient, sealed_key, expires_at)
               SELECT $2, msg.rowid, d.recipient, d.sealed_key, $12
               FROM msg, unnest($13::text[], $14::text[]) WITH ORDINALITY AS d(recipient, sealed_key, n)
               ORDER BY d.n
               RETURNING seq)
             SELECT (SELECT rowid FROM msg), ARRAY(SELECT seq FROM ins ORDER BY seq)",
            &[
                &m.message_id,
                &m.mesh_id,
                &m.sender_pubkey,
                &m.sender_member_pubkey,
                &m.sender_name,
                &m.target_spec,
                &m.priority.as_str(),
                &m.nonce,
                &m.ciphertext,
                &m.client_message_id,
                &m.created_at,
                &m.expires_at,
                &recipients,
                &sealed_keys,
            ],
        )?)?;
        if row.try_get::<_, Option<i64>>(0)?.is_some() {
            return Ok(Inserted::New(row.try_get(1)?));
        }
        crate::existing_or_duplicate_id(self, m)
    }

    fn insert_messages(
        &mut self,
        batch: &[(&MessageRow, &[NewDelivery<'_>])],
    ) -> Result<Vec<Inserted>> {
        if batch.len() <= 1 {
            return batch
                .iter()
                .map(|(m, d)| self.insert_message(m, d))
                .collect();
        }
        self.lock_seqs_now()?;
        // Column arrays of the bodies, and of the deliveries (each naming its message).
        let col =
            |f: fn(&MessageRow) -> &str| -> Vec<&str> { batch.iter().map(|(m, _)| f(m)).collect() };
        let ids = col(|m| &m.message_id);
        let meshes = col(|m| &m.mesh_id);
        let senders = col(|m| &m.sender_pubkey);
        let member_keys = col(|m| &m.sender_member_pubkey);
        let names = col(|m| &m.sender_name);
        let targets = col(|m| &m.target_spec);
        let priorities: Vec<&str> = batch.iter().map(|(m, _)| m.priority.as_str()).collect();
        let nonces = col(|m| &m.nonce);
        let ciphertexts = col(|m| &m.ciphertext);
        let cmids: Vec<Option<&str>> = batch
            .iter()
            .map(|(m, _)| m.client_message_id.as_deref())
            .collect();
        let created: Vec<i64> = batch.iter().map(|(m, _)| m.created_at).collect();
        let expires: Vec<i64> = batch.iter().map(|(m, _)| m.expires_at).collect();
        let mut d_ids = Vec::new();
        let mut d_recipients = Vec::new();
        let mut d_sealed = Vec::new();
        for (m, ds) in batch {
            for d in *ds {
                d_ids.push(m.message_id.as_str());
                d_recipients.push(d.recipient);
                d_sealed.push(d.sealed_key);
            }
        }
        // Bodies, then every delivery in the order given (so identity values, i.e. seqs,
        // increase in that order), in one statement. A body that conflicts (a resend, by
        // this sender's client_message_id) inserts nothing and returns no row.
        let rows = self.query(
            "WITH m AS (
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                 $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[],
                 $12::bigint[]) WITH ORDINALITY
                 AS m(message_id, mesh_id, sender_pubkey, sender_member_pubkey, sender_name,
                      target_spec, priority, nonce, ciphertext, client_message_id, created_at,
                      expires_at, n)),
             msg AS (
               INSERT INTO messages (message_id, mesh_id, sender_pubkey, sender_member_pubkey,
                 sender_name, target_spec, priority, nonce, ciphertext, client_message_id,
                 created_at, expires_at)
               SELECT message_id, mesh_id, sender_pubkey, sender_member_pubkey, sender_name,
                 target_spec, priority, nonce, ciphertext, client_message_id, created_at,
                 expires_at
               FROM m ORDER BY n
               ON CONFLICT DO NOTHING
               RETURNING rowid, message_id, mesh_id, expires_at),
             ins AS (
               INSERT INTO deliveries (mesh_id, message_rowid, recipient, sealed_key, expires_at)
               SELECT msg.mesh_id, msg.rowid, d.recipient, d.sealed_key, msg.expires_at
               FROM unnest($13::text[], $14::text[], $15::text[]) WITH ORDINALITY
                 AS d(message_id, recipient, sealed_key, n)
               JOIN msg ON msg.message_id = d.message_id
               ORDER BY d.n
               RETURNING message_rowid, recipient, seq)
             SELECT msg.message_id, ins.recipient, ins.seq
             FROM ins JOIN msg ON msg.rowid = ins.message_rowid",
            &[
                &ids,
                &meshes,
                &senders,
                &member_keys,
                &names,
                &targets,
                &priorities,
                &nonces,
                &ciphertexts,
                &cmids,
                &created,
                &expires,
                &d_ids,
                &d_recipients,
                &d_sealed,
            ],
        )?;
        let mut seqs: HashMap<(String, String), i64> = HashMap::with_capacity(rows.len());
        let mut stored = std::collections::HashSet::new();
        for r in &rows {
            let id: String = r.try_get(0)?;
            stored.insert(id.clone());
            seqs.insert((id, r.try_get(1)?), r.try_get(2)?);
        }
        batch
            .iter()
            .map(|(m, ds)| {
                if !stored.contains(&m.message_id) {
                    return crate::existing_or_duplicate_id(self, m);
                }
                ds.iter()
                    .map(|d| {
                        seqs.get(&(m.message_id.clone(), d.recipient.to_owned()))
                            .copied()
                            .ok_or_else(|| StoreError::Corrupt {
                                what: "deliveries (a delivery of a stored message is missing)"
                                    .into(),
                            })
                    })
                    .collect::<Result<Vec<i64>>>()
                    .map(Inserted::New)
            })
            .collect()
    }

    fn find_message_by_client_id(
        &mut self,
        mesh_id: &str,
        sender_pubkey: &str,
        client_message_id: &str,
    ) -> Result<Option<String>> {
        self.query(
            "SELECT message_id FROM messages
             WHERE mesh_id = $1 AND sender_pubkey = $2 AND client_message_id = $3 LIMIT 1",
            &[&mesh_id, &sender_pubkey, &client_message_id],
        )?
        .first()
        .map(|r| Ok(r.try_get(0)?))
        .transpose()
    }

    fn ack_delivery(
        &mut self,
        mesh_id: &str,
        recipient: &str,
        message_id: &str,
        now: i64,
    ) -> Result<bool> {
        Ok(changed(self.exec(
            "UPDATE deliveries SET acked_at = $4
             WHERE recipient = $2 AND mesh_id = $1 AND acked_at IS NULL
               AND message_rowid = (SELECT rowid FROM messages WHERE message_id = $3)",
            &[&mesh_id, &recipient, &message_id, &now],
        )?))
    }

    fn ack_deliveries(&mut self, seqs: &[i64], now: i64) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        // One statement for the whole batch: the seqs travel as one BIGINT[] parameter.
        self.exec(
            "UPDATE deliveries SET acked_at = $1 WHERE seq = ANY($2) AND acked_at IS NULL",
            &[&now, &seqs],
        )
    }

    fn ack_delivery_by_client_id(
        &mut self,
        mesh_id: &str,
        recipient: &str,
        client_message_id: &str,
        now: i64,
    ) -> Result<Option<String>> {
        self.query(
            "UPDATE deliveries d SET acked_at = $4 FROM messages m
             WHERE m.rowid = d.message_rowid AND d.acked_at IS NULL
               AND d.seq = (SELECT d2.seq FROM deliveries d2 JOIN messages m2 ON m2.rowid = d2.message_rowid
                            WHERE d2.recipient = $1 AND d2.mesh_id = $3 AND d2.acked_at IS NULL
                              AND m2.client_message_id = $2
                            ORDER BY d2.seq LIMIT 1)
             RETURNING m.message_id",
            &[&recipient, &client_message_id, &mesh_id, &now],
        )?
        .first()
        .map(|r| Ok(r.try_get(0)?))
        .transpose()
    }

    fn pending(
        &mut self,
        mesh_id: &str,
        recipient: &str,
        after: i64,
        limit_n: usize,
        now: i64,
    ) -> Result<Vec<PendingDelivery>> {
        self.query(
            "SELECT d.seq, d.message_rowid, d.sealed_key,
                    m.message_id, m.mesh_id, m.sender_pubkey, m.sender_member_pubkey, m.sender_name,
                    m.target_spec, m.priority, m.nonce, m.ciphertext, m.client_message_id,
                    m.created_at, m.expires_at
             FROM deliveries d JOIN messages m ON m.rowid = d.message_rowid
             WHERE d.recipient = $1 AND d.mesh_id = $5 AND d.acked_at IS NULL AND d.seq > $2
               AND d.expires_at > $3
             ORDER BY d.seq LIMIT $4",
            &[&recipient, &after, &now, &limit(limit_n), &mesh_id],
        )?
        .iter()
        .map(|r| {
            Ok(PendingDelivery {
                seq: r.try_get(0)?,
                message_rowid: r.try_get(1)?,
                sealed_key: r.try_get(2)?,
                message: message_from_row(r, 3)?,
            })
        })
        .collect()
    }

    fn message_deliveries(
        &mut self,
        mesh_id: &str,
        message_id: &str,
        limit_n: usize,
    ) -> Result<Option<MessageDeliveries>> {
        const SQL: &str = concat!(
            "SELECT rowid, ",
            message_cols!(),
            " FROM messages WHERE message_id = $1 AND mesh_id = $2"
        );
        let found = self.query(SQL, &[&message_id, &mesh_id])?;
        let Some(r) = found.first() else {
            return Ok(None);
        };
        let rowid: i64 = r.try_get(0)?;
        let message = message_from_row(r, 1)?;
        let deliveries = self
            .query(
                "SELECT seq, recipient, expires_at, acked_at FROM deliveries
                 WHERE message_rowid = $1 ORDER BY seq LIMIT $2",
                &[&rowid, &limit(limit_n)],
            )?
            .iter()
            .map(|r| {
                Ok(DeliveryRecord {
                    seq: r.try_get(0)?,
                    recipient: r.try_get(1)?,
                    expires_at: r.try_get(2)?,
                    acked_at: r.try_get(3)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Some(MessageDeliveries {
            message,
            deliveries,
        }))
    }

    fn queue_depth(&mut self, now: i64) -> Result<i64> {
        Ok(Self::one(self.read(
            "SELECT COUNT(*) FROM deliveries WHERE acked_at IS NULL AND expires_at > $1",
            &[&now],
        )?)?
        .try_get(0)?)
    }

    fn put_operator(&mut self, o: &OperatorRow) -> Result<()> {
        self.exec(
            "INSERT INTO operators (name, password_hash, setup_hash, setup_expires_at, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash,
               setup_hash = excluded.setup_hash, setup_expires_at = excluded.setup_expires_at,
               created_at = excluded.created_at",
            &[
                &o.name,
                &o.password_hash,
                &o.setup_hash,
                &o.setup_expires_at,
                &o.created_at,
            ],
        )
        .map(|_| ())
    }

    fn operator(&mut self, name: &str) -> Result<Option<OperatorRow>> {
        const SQL: &str = concat!(
            "SELECT ",
            operator_cols!(),
            " FROM operators WHERE name = $1"
        );
        self.read(SQL, &[&name])?
            .first()
            .map(operator_from_row)
            .transpose()
    }

    fn operators(&mut self) -> Result<Vec<OperatorRow>> {
        const SQL: &str = concat!("SELECT ", operator_cols!(), " FROM operators ORDER BY name");
        self.read(SQL, &[])?.iter().map(operator_from_row).collect()
    }

    fn remove_operator(&mut self, name: &str) -> Result<bool> {
        Ok(self.exec("DELETE FROM operators WHERE name = $1", &[&name])? == 1)
    }

    fn set_operator_password(
        &mut self,
        name: &str,
        setup_hash: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<bool> {
        let n = self.exec(
            "UPDATE operators SET password_hash = $3, setup_hash = NULL, setup_expires_at = 0
              WHERE name = $1 AND setup_hash = $2 AND setup_expires_at > $4",
            &[&name, &setup_hash, &password_hash, &now],
        )?;
        Ok(n == 1)
    }

    fn queue_depths(&mut self, mesh_id: &str, now: i64) -> Result<Vec<(String, i64)>> {
        self.read(
            "SELECT recipient, COUNT(*) FROM deliveries
              WHERE acked_at IS NULL AND mesh_id = $1 AND expires_at > $2
              GROUP BY recipient ORDER BY recipient",
            &[&mesh_id, &now],
        )?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
    }

    fn drop_undelivered(&mut self, mesh_id: &str, recipient: &str, now: i64) -> Result<u64> {
        self.exec(
            "DELETE FROM deliveries WHERE recipient = $1 AND mesh_id = $2 AND acked_at IS NULL
               AND expires_at > $3",
            &[&recipient, &mesh_id, &now],
        )
    }

    fn purge_expired(&mut self, now: i64) -> Result<u64> {
        // By the expiry indexes, in one statement (SQLite finds the expired key prefix by
        // binary search instead; with a constant TTL both delete the same rows).
        let n: i64 = Self::one(self.query(
            "WITH d AS (DELETE FROM deliveries WHERE expires_at <= $1 RETURNING 1),
                  m AS (DELETE FROM messages WHERE expires_at <= $1 RETURNING 1),
                  s AS (DELETE FROM seen_signatures WHERE expires_at <= $1 RETURNING 1)
             SELECT (SELECT COUNT(*) FROM d) + (SELECT COUNT(*) FROM m) + (SELECT COUNT(*) FROM s)",
            &[&now],
        )?)?
        .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn remember_signature(&mut self, signature: &str, expires_at: i64) -> Result<bool> {
        Ok(changed(self.exec(
            "INSERT INTO seen_signatures (signature, expires_at) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
            &[&signature, &expires_at],
        )?))
    }
}
