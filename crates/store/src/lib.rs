//! Durable state of the broker behind one [`Store`] trait.
//!
//! The store is synchronous and owned by exactly one thread (the broker's engine), which
//! makes group commit trivial: every mutating call joins an implicitly open transaction,
//! and the engine calls [`Store::commit`] once per batch of frames. Nothing is durable
//! (and nothing may be acknowledged to a client) until `commit` returns `Ok`.
//!
//! What the store must not do: interpret the protocol, decide authorisation, or hold any
//! secret key. It stores public keys and ciphertext.

//!
//! Decisions that two broker nodes could race on are made by the database: claiming an
//! invite use ([`Store::claim_invite_use`]), revoking an invite
//! ([`Store::revoke_invite`]) and removing a member ([`Store::remove_member`]) are one
//! conditional statement each; storing a message with all its deliveries
//! ([`Store::insert_message`]) is one call inside the batch's transaction.
//!
//! Backends are cargo features: `sqlite` (default, the embedded backend) and `postgres`
//! (`PgStore`, the backend several broker nodes can share).

#[cfg(feature = "postgres")]
pub mod pg;
mod rows;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "postgres")]
pub use pg::{PgListener, PgStore};
pub use rows::*;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// Errors from a storage backend, whatever the backend. The text may name tables or SQL;
/// callers must not forward it to clients.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused or failed an operation.
    #[error("database error: {0}")]
    Db(Box<dyn std::error::Error + Send + Sync>),
    /// The database file or directory could not be prepared.
    #[error("cannot open database at {path}: {reason}")]
    Open { path: String, reason: String },
    /// The on-disk schema is newer than this binary understands.
    #[error("database schema version {found} is newer than supported version {supported}")]
    SchemaTooNew { found: i64, supported: i64 },
    /// Stored data that contradicts itself (e.g. a message id that is already taken).
    /// An unknown value in a closed set (say a role) is reported as `Db`, by the row
    /// mapping that found it.
    #[error("database holds an unexpected value in {what}")]
    Corrupt { what: String },
}

impl StoreError {
    /// Wrap a backend's own error.
    pub fn db(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Db(Box::new(e))
    }
}

use claudemesh_proto::authority::Removal;

pub type Result<T> = std::result::Result<T, StoreError>;

/// Outcome of [`Store::insert_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// A new body; the sequence number of each delivery, in the order given. Sequence
    /// numbers increase in commit order (FIFO per recipient follows from it).
    New(Vec<i64>),
    /// A resend: the broker id of the message already stored; nothing was inserted.
    Existing(String),
}

/// What [`Store::insert_message`] returns when its insert stored nothing because a unique
/// index was taken: the broker id of this sender's message with the same
/// `client_message_id` (an idempotent resend), else a duplicate-id error (only the broker
/// message id can have collided: 128 random bits, so this is a bug). Shared by the
/// backends, so both answer a conflict alike.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn existing_or_duplicate_id<S: Store + ?Sized>(
    store: &mut S,
    m: &MessageRow,
) -> Result<Inserted> {
    let existing = match m.client_message_id.as_deref() {
        Some(cmid) => store.find_message_by_client_id(&m.mesh_id, &m.sender_pubkey, cmid)?,
        None => None,
    };
    existing
        .map(Inserted::Existing)
        .ok_or_else(|| StoreError::Corrupt {
            what: "messages (duplicate message id)".into(),
        })
}

/// One recipient's copy of a message being stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery<'a> {
    pub recipient: &'a str,
    pub sealed_key: Option<&'a str>,
}

/// Outcome of [`Store::claim_invite_use`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// One use was spent.
    Claimed,
    /// No such invite in this mesh.
    NotFound,
    Revoked,
    Expired,
    /// Every use is spent.
    Exhausted,
}

/// Everything the broker persists. All timestamps are milliseconds since the epoch except
/// invite expiry, which is in seconds as in the invite payload.
pub trait Store: Send + 'static {
    /// Make everything since the last commit durable (fsync per the backend's policy).
    fn commit(&mut self) -> Result<()>;
    /// Discard everything since the last commit.
    fn rollback(&mut self) -> Result<()>;
    /// A cheap round trip proving the database answers.
    fn ping(&mut self) -> Result<()>;

    // ---- meshes, members, invites, peers (loaded into memory at start) ----
    fn load_meshes(&mut self) -> Result<Vec<MeshRow>>;
    fn load_members(&mut self) -> Result<Vec<MemberRow>>;
    fn load_peers(&mut self) -> Result<Vec<PeerRow>>;
    fn insert_mesh(&mut self, mesh: &MeshRow) -> Result<()>;
    fn upsert_member(&mut self, member: &MemberRow) -> Result<()>;
    fn upsert_peer(&mut self, peer: &PeerRow) -> Result<()>;
    fn invite(&mut self, invite_id: &str) -> Result<Option<InviteRow>>;
    fn invites(&mut self, mesh_id: &str) -> Result<Vec<InviteRow>>;
    fn upsert_invite(&mut self, invite: &InviteRow) -> Result<()>;
    /// Spend one use of an invite of `mesh_id` if it is registered, not revoked, not
    /// expired at `now_s` (seconds) and has a use left, in one conditional statement, so
    /// of two concurrent claims of the last use exactly one wins.
    fn claim_invite_use(&mut self, mesh_id: &str, invite_id: &str, now_s: i64) -> Result<Claim>;
    /// Revoke an invite of `mesh_id` in one statement (never rewriting its use count).
    /// Returns whether the mesh has such an invite.
    fn revoke_invite(&mut self, mesh_id: &str, invite_id: &str) -> Result<bool>;
    /// Mark a member removed, in one conditional statement: never the owner, and never a
    /// downgrade (a revoked member stays revoked). Returns whether the row changed.
    fn remove_member(&mut self, mesh_id: &str, member_id: &str, removal: Removal) -> Result<bool>;

    // ---- messages and deliveries ----
    /// Store a message body once with one delivery per recipient, in one call. If this
    /// sender already sent a message with the same `client_message_id` in this mesh,
    /// nothing is inserted and the existing broker message id is returned instead
    /// (idempotent resend).
    fn insert_message(
        &mut self,
        message: &MessageRow,
        deliveries: &[NewDelivery<'_>],
    ) -> Result<Inserted>;
    /// [`Store::insert_message`] for several messages, in the order given (their
    /// deliveries' seqs increase in that order), one outcome each. A backend with round
    /// trips (PostgreSQL) does it in one statement; the default calls `insert_message`.
    fn insert_messages(
        &mut self,
        batch: &[(&MessageRow, &[NewDelivery<'_>])],
    ) -> Result<Vec<Inserted>> {
        batch
            .iter()
            .map(|(m, d)| self.insert_message(m, d))
            .collect()
    }
    /// The broker id of a message this sender already sent with this `client_message_id`
    /// (idempotent resend after a lost ack).
    fn find_message_by_client_id(
        &mut self,
        mesh_id: &str,
        sender_pubkey: &str,
        client_message_id: &str,
    ) -> Result<Option<String>>;
    /// Mark `recipient`'s delivery of `message_id` acked. Returns false when there is no
    /// such unacked delivery (already acked, or not this recipient's).
    fn ack_delivery(
        &mut self,
        mesh_id: &str,
        recipient: &str,
        message_id: &str,
        now: i64,
    ) -> Result<bool>;
    /// Mark these deliveries acked (the fast path, once per batch: the broker knows the
    /// sequence number of every delivery it pushed, and passes only the acker's own).
    /// Returns how many were unacked.
    fn ack_deliveries(&mut self, seqs: &[i64], now: i64) -> Result<u64>;
    /// Same, addressed by the sender's `client_message_id`.
    fn ack_delivery_by_client_id(
        &mut self,
        mesh_id: &str,
        recipient: &str,
        client_message_id: &str,
        now: i64,
    ) -> Result<Option<String>>;
    /// Unacked, unexpired deliveries of `recipient` with `seq > after`, oldest first.
    fn pending(
        &mut self,
        mesh_id: &str,
        recipient: &str,
        after: i64,
        limit: usize,
        now: i64,
    ) -> Result<Vec<PendingDelivery>>;
    /// The message with this broker id in this mesh and its deliveries in `seq` order
    /// (at most `limit`), or `None` if there is no such message (never sent or purged).
    fn message_deliveries(
        &mut self,
        mesh_id: &str,
        message_id: &str,
        limit: usize,
    ) -> Result<Option<MessageDeliveries>>;
    /// Number of unacked, unexpired deliveries (the `broker_queue_depth` gauge).
    fn queue_depth(&mut self, now: i64) -> Result<i64>;
    /// Unacked, unexpired deliveries per recipient of one mesh (the dashboard's queue
    /// depths), recipients with none left out, in key order.
    fn queue_depths(&mut self, mesh_id: &str, now: i64) -> Result<Vec<(String, i64)>>;
    /// Delete `recipient`'s unacked, unexpired deliveries in this mesh (a session identity
    /// retired: nobody will read them; expired ones go with the purge, and message bodies
    /// with the normal expiry). Returns how many: exactly what the queue depth counted.
    fn drop_undelivered(&mut self, mesh_id: &str, recipient: &str, now: i64) -> Result<u64>;
    /// Delete expired messages, deliveries and replay records. Returns rows removed.
    fn purge_expired(&mut self, now: i64) -> Result<u64>;

    // ---- operator accounts (the dashboard) ----
    /// Create or replace an operator account (a reset replaces it whole).
    fn put_operator(&mut self, operator: &OperatorRow) -> Result<()>;
    fn operator(&mut self, name: &str) -> Result<Option<OperatorRow>>;
    /// Every operator account, by name.
    fn operators(&mut self) -> Result<Vec<OperatorRow>>;
    /// Returns whether there was such an account.
    fn remove_operator(&mut self, name: &str) -> Result<bool>;
    /// Set the password of `name` and spend its setup token, in one conditional
    /// statement: only while the token hashes to `setup_hash` and has not expired at
    /// `now` (so a link is used once, also with several nodes). Returns whether it did.
    fn set_operator_password(
        &mut self,
        name: &str,
        setup_hash: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<bool>;

    // ---- replay protection ----
    /// Remember a signature until `expires_at`. Returns false if it was already seen.
    fn remember_signature(&mut self, signature: &str, expires_at: i64) -> Result<bool>;

    /// The state several broker nodes share, on a backend they can share (PostgreSQL);
    /// `None` on an embedded one (SQLite), where one broker is the whole cluster.
    fn cluster(&mut self) -> Option<&mut dyn Cluster> {
        None
    }
}

/// The shared side of a store several broker nodes use at once: node heartbeats, every
/// node's presences, notifications between nodes, and single-row reads for refreshing a
/// cache when another node says a row changed. Writes join the open transaction like
/// every other store call; a notification is delivered only if that transaction commits.
pub trait Cluster {
    /// Record this node (at start).
    fn register_node(&mut self, node: &NodeRow) -> Result<()>;
    /// Refresh this node's heartbeat (stamped with the database's clock, so the nodes'
    /// own clocks never matter) with its `figures`; every node as it stands now, and the
    /// database's time (ms since the epoch).
    fn heartbeat(&mut self, node_id: i64, figures: &str) -> Result<(Vec<NodeRow>, i64)>;
    /// Forget nodes silent for `silent_ms` or more by the database's clock, with their
    /// presences, in one statement; the ids forgotten (empty when another node reaped
    /// them first).
    fn reap_nodes(&mut self, silent_ms: i64) -> Result<Vec<i64>>;
    /// Delete every presence row of one node (it dropped them all); how many.
    fn drop_node_presences(&mut self, node_id: i64) -> Result<u64>;
    /// Take the lock that orders delivery seqs across nodes now, before the batch takes
    /// any row lock (taken lazily by the first delivery insert otherwise, which two
    /// nodes holding each other's row locks could deadlock on).
    fn lock_seqs(&mut self) -> Result<()>;
    /// Insert or replace a node's presence of a key.
    fn put_presence(&mut self, presence: &PresenceRow) -> Result<()>;
    /// Delete a node's presence of a key; whether there was one.
    fn drop_presence(&mut self, mesh_id: &str, pubkey: &str, node_id: i64) -> Result<bool>;
    /// Every node's presences.
    fn presences(&mut self) -> Result<Vec<PresenceRow>>;
    /// One node's presence of a key.
    fn presence(
        &mut self,
        mesh_id: &str,
        pubkey: &str,
        node_id: i64,
    ) -> Result<Option<PresenceRow>>;
    /// Announce `payload` to every node (at most 7 900 bytes; delivered after commit).
    fn notify(&mut self, payload: &str) -> Result<()>;
    /// One mesh, member or known identity, as committed now.
    fn mesh(&mut self, mesh_id: &str) -> Result<Option<MeshRow>>;
    fn member(&mut self, mesh_id: &str, member_id: &str) -> Result<Option<MemberRow>>;
    /// The member of a mesh with this key, as committed now.
    fn member_by_key(&mut self, mesh_id: &str, pubkey: &str) -> Result<Option<MemberRow>>;
    fn peer(&mut self, mesh_id: &str, pubkey: &str) -> Result<Option<PeerRow>>;
    /// Every member and every known identity of one mesh (a mesh another node created).
    fn mesh_members(&mut self, mesh_id: &str) -> Result<(Vec<MemberRow>, Vec<PeerRow>)>;
}
