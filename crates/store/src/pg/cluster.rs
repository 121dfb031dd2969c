//! The [`Cluster`] side of the PostgreSQL backend: what several broker nodes on one
//! database share (node heartbeats, every node's presences, single-row reads) and how
//! they tell each other about changes: `pg_notify` on one channel inside the writer's
//! transaction, so a notification goes out only if its transaction commits, and a
//! [`PgListener`] on a connection of its own that waits for them.
//!
//! Payloads are the broker's (ids, never ciphertext); this module does not read them.

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator as _;

use super::PgStore;
use super::rows::{member_from_row, mesh_from_row, peer_from_row, presence_from_row};
use crate::{Cluster, MemberRow, MeshRow, NodeRow, PeerRow, PresenceRow, Result, StoreError};

/// The channel every node listens on.
pub const CHANNEL: &str = "claudemesh";

impl Cluster for PgStore {
    fn register_node(&mut self, node: &NodeRow) -> Result<()> {
        self.exec(
            "INSERT INTO nodes (id, name, started_at, seen_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
            &[&node.id, &node.name, &node.started_at, &node.seen_at],
        )?;
        Ok(())
    }

    fn heartbeat(&mut self, node_id: i64, figures: &str) -> Result<(Vec<NodeRow>, i64)> {
        // The update and the read in one statement (the read sees the other nodes as
        // committed, and this node from the RETURNING row), on the database's clock.
        let rows = self.query(
            "WITH t AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT AS now),
                  me AS (UPDATE nodes SET seen_at = (SELECT now FROM t), figures = $2 WHERE id = $1
                         RETURNING id, name, started_at, seen_at, figures)
             SELECT id, name, started_at, seen_at, (SELECT now FROM t), figures FROM me
             UNION ALL
             SELECT id, name, started_at, seen_at, (SELECT now FROM t), figures FROM nodes
              WHERE id <> $1
             UNION ALL
             SELECT NULL, NULL, NULL, NULL, (SELECT now FROM t), NULL",
            &[&node_id, &figures],
        )?;
        let mut now = 0;
        let mut nodes = Vec::new();
        for r in &rows {
            now = r.try_get(4)?;
            if let Some(id) = r.try_get::<_, Option<i64>>(0)? {
                nodes.push(NodeRow {
                    id,
                    name: r.try_get(1)?,
                    started_at: r.try_get(2)?,
                    seen_at: r.try_get(3)?,
                    figures: r.try_get(5)?,
                });
            }
        }
        Ok((nodes, now))
    }

    fn reap_nodes(&mut self, silent_ms: i64) -> Result<Vec<i64>> {
        self.query(
            "WITH dead AS (DELETE FROM nodes
                           WHERE seen_at < (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT - $1
                           RETURNING id),
                  gone AS (DELETE FROM presences WHERE node_id IN (SELECT id FROM dead)
                             OR node_id NOT IN (SELECT id FROM nodes)
                           RETURNING node_id)
             SELECT id FROM dead UNION SELECT node_id FROM gone",
            &[&silent_ms],
        )?
        .iter()
        .map(|r| Ok(r.try_get(0)?))
        .collect()
    }

    fn drop_node_presences(&mut self, node_id: i64) -> Result<u64> {
        self.exec("DELETE FROM presences WHERE node_id = $1", &[&node_id])
    }

    fn lock_seqs(&mut self) -> Result<()> {
        self.lock_seqs_now()
    }

    fn put_presence(&mut self, p: &PresenceRow) -> Result<()> {
        self.exec(
            "INSERT INTO presences (mesh_id, pubkey, node_id, session_id, live, data, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (mesh_id, pubkey, node_id) DO UPDATE SET session_id = excluded.session_id,
               live = excluded.live, data = excluded.data, updated_at = excluded.updated_at",
            &[
                &p.mesh_id,
                &p.pubkey,
                &p.node_id,
                &p.session_id,
                &p.live,
                &p.data,
                &p.updated_at,
            ],
        )?;
        Ok(())
    }

    fn drop_presence(&mut self, mesh_id: &str, pubkey: &str, node_id: i64) -> Result<bool> {
        Ok(self.exec(
            "DELETE FROM presences WHERE mesh_id = $1 AND pubkey = $2 AND node_id = $3",
            &[&mesh_id, &pubkey, &node_id],
        )? > 0)
    }

    fn presences(&mut self) -> Result<Vec<PresenceRow>> {
        self.read(
            "SELECT mesh_id, pubkey, node_id, session_id, live, data, updated_at FROM presences",
            &[],
        )?
        .iter()
        .map(presence_from_row)
        .collect()
    }

    fn presence(
        &mut self,
        mesh_id: &str,
        pubkey: &str,
        node_id: i64,
    ) -> Result<Option<PresenceRow>> {
        self.read(
            "SELECT mesh_id, pubkey, node_id, session_id, live, data, updated_at FROM presences
             WHERE mesh_id = $1 AND pubkey = $2 AND node_id = $3",
            &[&mesh_id, &pubkey, &node_id],
        )?
        .first()
        .map(presence_from_row)
        .transpose()
    }

    fn notify(&mut self, payload: &str) -> Result<()> {
        self.query("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])?;
        Ok(())
    }

    fn mesh(&mut self, mesh_id: &str) -> Result<Option<MeshRow>> {
        const SQL: &str = concat!("SELECT ", mesh_cols!(), " FROM meshes WHERE id = $1");
        self.read(SQL, &[&mesh_id])?
            .first()
            .map(mesh_from_row)
            .transpose()
    }

    fn member(&mut self, mesh_id: &str, member_id: &str) -> Result<Option<MemberRow>> {
        const SQL: &str = concat!(
            "SELECT ",
            member_cols!(),
            " FROM members WHERE mesh_id = $1 AND id = $2"
        );
        self.read(SQL, &[&mesh_id, &member_id])?
            .first()
            .map(member_from_row)
            .transpose()
    }

    fn member_by_key(&mut self, mesh_id: &str, pubkey: &str) -> Result<Option<MemberRow>> {
        const SQL: &str = concat!(
            "SELECT ",
            member_cols!(),
            " FROM members WHERE mesh_id = $1 AND pubkey = $2"
        );
        self.read(SQL, &[&mesh_id, &pubkey])?
            .first()
            .map(member_from_row)
            .transpose()
    }

    fn mesh_members(&mut self, mesh_id: &str) -> Result<(Vec<MemberRow>, Vec<PeerRow>)> {
        const MEMBERS: &str = concat!(
            "SELECT ",
            member_cols!(),
            " FROM members WHERE mesh_id = $1"
        );
        const PEERS: &str = concat!("SELECT ", peer_cols!(), " FROM peers WHERE mesh_id = $1");
        let members = self
            .read(MEMBERS, &[&mesh_id])?
            .iter()
            .map(member_from_row)
            .collect::<Result<_>>()?;
        let peers = self
            .read(PEERS, &[&mesh_id])?
            .iter()
            .map(peer_from_row)
            .collect::<Result<_>>()?;
        Ok((members, peers))
    }

    fn peer(&mut self, mesh_id: &str, pubkey: &str) -> Result<Option<PeerRow>> {
        const SQL: &str = concat!(
            "SELECT ",
            peer_cols!(),
            " FROM peers WHERE mesh_id = $1 AND pubkey = $2"
        );
        self.read(SQL, &[&mesh_id, &pubkey])?
            .first()
            .map(peer_from_row)
            .transpose()
    }
}

/// A connection of its own that `LISTEN`s on [`CHANNEL`], with a [`PgStore`] beside it
/// for the reads a notification calls for. When it fails, open a new one; notifications
/// sent meanwhile are lost, so the caller must then re-read what it caches.
pub struct PgListener {
    store: PgStore,
}

impl std::fmt::Debug for PgListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgListener").finish_non_exhaustive()
    }
}

/// The listening connection is gone.
#[derive(Debug, thiserror::Error)]
#[error("the listening connection to PostgreSQL is closed")]
struct ListenerClosed;

impl PgListener {
    /// Connect to `url` and start listening.
    pub fn open(url: &str) -> Result<Self> {
        let mut store = PgStore::open(url)?;
        // A reconnected connection would not be listening: never reconnect this one.
        store.reconnect = false;
        store.batch(&format!("LISTEN {CHANNEL}"))?;
        Ok(Self { store })
    }

    /// The payloads that arrive within `timeout` (returning as soon as one has, with
    /// whatever else is already buffered); an error when the connection is gone.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<String>> {
        if !self.store.is_connected() {
            return Err(StoreError::db(ListenerClosed));
        }
        let client = self.store.client()?;
        let mut payloads = Vec::new();
        {
            let mut notifications = client.notifications();
            let mut waiting = notifications.timeout_iter(timeout);
            if let Some(n) = waiting.next()? {
                payloads.push(n.payload().to_owned());
            }
        }
        {
            let mut notifications = client.notifications();
            let mut buffered = notifications.iter();
            while let Some(n) = buffered.next()? {
                payloads.push(n.payload().to_owned());
            }
        }
        if client.is_closed() {
            return Err(StoreError::db(ListenerClosed));
        }
        Ok(payloads)
    }

    /// The store on the listener's connection, for reads (never inside a transaction).
    pub fn store(&mut self) -> &mut PgStore {
        &mut self.store
    }
}
