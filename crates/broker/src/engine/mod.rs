//! The engine: one OS thread that owns the [`Store`] and all routing state (meshes,
//! members, presences, mailboxes, leases) and applies commands in batches.
//!
//! Each turn it takes every queued command (up to [`MAX_BATCH`]), applies them against
//! an open transaction and the in-memory state, commits once (group commit), and only then
//! carries out the collected [`Effect`]s: acks, pushes, replies, closes. So nothing is
//! acknowledged before it is durable, and because one thread decides everything, per
//! (sender, recipient) FIFO and exactly-one-wins invite use need no locks.
//!
//! When a commit fails, memory may disagree with the database: every connection is closed
//! and the state reloaded. If the database cannot even be read (PostgreSQL down), the state
//! is *stale*: every command is answered `unavailable` without touching the store, and a
//! timer retries the reload every [`RECOVER_EVERY`] until it works; `/health` says 503
//! meanwhile. Nothing is acknowledged from a state the database does not back.
//!
//! What it must not do: block on the network (outbound frames go through bounded
//! channels with `try_send`; a full channel means a slow reader, which is disconnected),
//! parse JSON from clients, or verify signatures (connection tasks do that in parallel).

mod admin;
mod announce;
mod attach;
pub(crate) mod cluster;
mod dashboard;
mod delivery;
mod directory;
pub(crate) mod join;
mod presence;
mod reply;
mod sessions;
mod traffic;

use claudemesh_proto::codes::Code;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use claudemesh_proto::frames::{Ack, BrokerFrame, ClientFrame, ErrorFrame};
use claudemesh_proto::http::JoinRequest;
use claudemesh_store::Store;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::auth::{Rejection, VerifiedHello};
use crate::config::BrokerConfig;
use crate::metrics::Metrics;
use crate::refusal::Refusal;
use claudemesh_proto::time::now_ms;

pub use admin::{Actor, AdminCommand, AdminReply};
pub(crate) use announce::render;
pub use cluster::ClusterEvent;
pub use dashboard::{Change, MemberView, MeshView, Overview, ViewAs};
#[cfg(test)]
pub use delivery::Body;
pub use delivery::Delivery;
use directory::Directory;
pub use reply::{Budget, MAX_AWAITING_REPLIES, ReplySlot, Request};
pub use traffic::MessageView;

/// Most commands applied in one transaction.
pub const MAX_BATCH: usize = 4_096;
/// Capacity of the engine's inbox; senders wait (backpressure) when it is full.
pub const INBOX_CAPACITY: usize = 16_384;
/// How often a stale engine tries to reload its state from the database.
pub const RECOVER_EVERY: Duration = Duration::from_millis(500);

/// Identifies one WebSocket connection for the engine.
pub type ConnId = u64;

/// What the engine sends to a connection task.
#[derive(Debug)]
pub enum Outbound {
    /// Boxed so a channel slot is pointer-sized (frames are large enums).
    Frame(Box<BrokerFrame>),
    /// The answer to a counted request (see [`reply`]): writing or dropping it frees one
    /// slot of the connection's reply budget.
    Reply(Box<BrokerFrame>, reply::Answered),
    /// A delivery; the connection task renders the `push` JSON.
    Deliver(Arc<Delivery>),
    /// A frame rendered once and shared by many connections (presence events). Boxed
    /// like the others: every connection's channel allocates its slots in blocks.
    Text(Box<axum::extract::ws::Utf8Bytes>),
}

/// Asks a connection to close with a code and reason. Set once; later requests are ignored.
#[derive(Debug, Default)]
pub struct Kill {
    token: CancellationToken,
    reason: Mutex<Option<(u16, String)>>,
}

impl Kill {
    pub fn kill(&self, code: u16, reason: &str) {
        let mut r = self
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.is_none() {
            *r = Some((code, reason.to_owned()));
        }
        self.token.cancel();
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn reason(&self) -> Option<(u16, String)> {
        self.reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The engine's view of a connection: where to send frames and how to close it.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    pub tx: mpsc::Sender<Outbound>,
    pub kill: Arc<Kill>,
    /// Deliveries queued in `tx` and not yet written (the connection decrements it).
    pub queued_pushes: Arc<std::sync::atomic::AtomicUsize>,
}

/// Result of a successful attach.
#[derive(Debug, Clone)]
pub struct Attached {
    pub mesh_id: String,
    pub member_id: String,
    pub key: String,
}

/// Commands the engine accepts.
#[derive(Debug)]
pub enum Command {
    /// Authenticate a verified hello (membership, revocation, replay) and attach the
    /// connection to its presence. `hello_ack` is sent through the connection's channel.
    Attach {
        hello: VerifiedHello,
        conn: ConnHandle,
        reply: oneshot::Sender<Result<Attached, Rejection>>,
    },
    /// A request from an attached connection; answered through `slot`, exactly once.
    Request {
        conn: ConnId,
        request: Request,
        slot: ReplySlot,
    },
    /// Any other frame from an attached connection (none of them is answered on success).
    Frame { conn: ConnId, frame: ClientFrame },
    /// The connection is gone; `left` when the client closed it on purpose (no grace).
    Detach { conn: ConnId, left: bool },
    Join {
        req: JoinRequest,
        reply: oneshot::Sender<Result<claudemesh_proto::http::JoinResponse, Refusal>>,
    },
    Admin {
        cmd: AdminCommand,
        reply: oneshot::Sender<Result<AdminReply, Refusal>>,
    },
    /// Round trip to the database; replies whether it answered and the last commit worked,
    /// and how many nodes are up (with several nodes on one database).
    Health {
        reply: oneshot::Sender<(bool, Option<usize>)>,
    },
    /// What another node announced (see `cluster.rs`).
    Cluster(ClusterEvent),
    /// A mesh as the dashboard shows it to `viewer`, if it still may see it.
    Dashboard {
        mesh_id: String,
        viewer: ViewAs,
        reply: oneshot::Sender<Result<MeshView, Refusal>>,
    },
    /// An operator account, read now.
    OperatorAccount {
        name: String,
        reply: oneshot::Sender<Option<claudemesh_store::OperatorRow>>,
    },
    /// Choose an operator's password through its setup token (answered after commit).
    SetOperatorPassword {
        name: String,
        setup_hash: String,
        password_hash: String,
        reply: oneshot::Sender<Result<bool, Refusal>>,
    },
    /// Every mesh in a line, for operators.
    Overview { reply: oneshot::Sender<Overview> },
}

/// What a reply becomes when its batch did not commit: an ack refused as `unavailable`
/// (the client may resend; nothing was stored), any other answer an `unavailable` error
/// for the same `_reqId`.
fn failed_reply(frame: BrokerFrame) -> BrokerFrame {
    match frame {
        BrokerFrame::Ack(ack) => BrokerFrame::Ack(Ack {
            queued: false,
            message_id: String::new(),
            recipients: None,
            error: Some(Code::Unavailable.as_str().to_owned()),
            ..ack
        }),
        other => {
            let err = ErrorFrame::new(Code::Unavailable, "broker storage unavailable");
            BrokerFrame::Error(err.with_req_id(other.req_id().cloned()))
        }
    }
}

/// Something to do once the batch's commit has returned.
enum Effect {
    /// Send to a connection once the batch committed. If it did not, a reply goes out
    /// as `unavailable` (see [`failed_reply`]) and anything else is dropped.
    Out { conn: ConnId, out: Outbound },
    /// Run with `true` when the commit succeeded, `false` when it failed.
    Reply(Box<dyn FnOnce(bool) + Send>),
    /// Close a connection (kick, revoke, replacement) once the change is durable.
    Close {
        kill: Arc<Kill>,
        code: u16,
        reason: String,
    },
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    /// Check a mailbox for expired leases.
    Leases {
        mesh: String,
        key: String,
    },
    /// A presence's grace period may have ended.
    Grace {
        mesh: String,
        key: String,
        epoch: u64,
    },
    Purge,
    /// The state is stale: try to reload it.
    Recover,
    /// Refresh this node's heartbeat; reap dead nodes.
    Heartbeat,
    /// A mesh's presence events are due (see `announce.rs`).
    Presence,
    /// The grace period of the presences one restore brought back (see `presence.rs`).
    RestoredGrace {
        epoch: u64,
    },
}

/// The handle connection tasks and HTTP handlers use to reach the engine.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: flume::Sender<Command>,
    changes: tokio::sync::broadcast::Sender<Change>,
}

/// The engine has stopped (the broker is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

impl EngineHandle {
    /// Follow the changes dashboards re-read for (sent after their batch commits).
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// The inbox itself, for a thread that is not async (the cluster listener).
    pub(crate) fn sender(&self) -> flume::Sender<Command> {
        self.tx.clone()
    }

    /// Queue a command, waiting while the inbox is full.
    pub async fn send(&self, cmd: Command) -> Result<(), Stopped> {
        self.tx.send_async(cmd).await.map_err(|_| Stopped)
    }

    /// Queue a command at once if the inbox has room; else hand it back (boxed, so a
    /// caller's future that waits with [`EngineHandle::send`] only then holds it).
    pub fn try_send(&self, cmd: Command) -> Result<(), Result<Box<Command>, Stopped>> {
        match self.tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(flume::TrySendError::Full(cmd)) => Err(Ok(Box::new(cmd))),
            Err(flume::TrySendError::Disconnected(_)) => Err(Err(Stopped)),
        }
    }

    /// Queue a command where waiting is impossible (a `Drop`): at once if the inbox has
    /// room, else from a task tracked by `tasks`.
    pub fn send_from_drop(&self, cmd: Command, tasks: &tokio_util::task::TaskTracker) {
        match self.tx.try_send(cmd) {
            Ok(()) | Err(flume::TrySendError::Disconnected(_)) => {}
            Err(flume::TrySendError::Full(cmd)) => {
                let tx = self.tx.clone();
                tasks.spawn(async move {
                    let _ = tx.send_async(cmd).await;
                });
            }
        }
    }

    /// Send a command that answers through a oneshot, and wait for the answer.
    pub async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.send(command(reply)).await?;
        rx.await.map_err(|_| Stopped)
    }
}

/// Start the engine thread and wait until it has loaded its state (and, on a shared
/// database, joined the cluster; its node id is returned) (on that thread: a
/// synchronous database client must not block, or start a runtime, on an async one). It
/// stops when every [`EngineHandle`] is dropped and the inbox is drained, committing what
/// it has.
pub async fn start(
    store: Box<dyn Store>,
    config: &BrokerConfig,
    metrics: Arc<Metrics>,
) -> Result<(EngineHandle, std::thread::JoinHandle<()>, Option<i64>), claudemesh_store::StoreError>
{
    let (tx, rx) = flume::bounded(INBOX_CAPACITY);
    let (changes, _) = tokio::sync::broadcast::channel(dashboard::CHANGES_CAPACITY);
    let engine_changes = changes.clone();
    let (loaded_tx, loaded) = oneshot::channel();
    let config = config.clone();
    let thread = std::thread::Builder::new()
        .name("claudemesh-engine".into())
        .spawn(
            move || match Engine::new(store, &config, metrics, engine_changes) {
                Ok(mut engine) => {
                    let _ = loaded_tx.send(Ok(engine.node_id()));
                    engine.run(&rx);
                }
                Err(e) => {
                    let _ = loaded_tx.send(Err(e));
                }
            },
        )
        .map_err(|e| claudemesh_store::StoreError::Open {
            path: "engine thread".into(),
            reason: e.to_string(),
        })?;
    match loaded.await {
        Ok(Ok(node)) => Ok((EngineHandle { tx, changes }, thread, node)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(claudemesh_store::StoreError::Open {
            path: "engine thread".into(),
            reason: "it stopped while loading the state".into(),
        }),
    }
}

pub(crate) struct Engine {
    store: Box<dyn Store>,
    dir: Directory,
    conns: HashMap<ConnId, ConnEntry>,
    effects: Vec<Effect>,
    timers: BinaryHeap<Reverse<(Instant, TimerKind)>>,
    metrics: Arc<Metrics>,
    timings: crate::config::Timings,
    window: usize,
    /// Queued pushes per connection beyond which the reader counts as too slow.
    outbound_limit: usize,
    /// Announce no extensions and refuse them (compatibility mode).
    v1_only: bool,
    /// The last commit worked and the state is not stale.
    db_healthy: bool,
    /// The state could not be reloaded after a failed commit (see the module doc).
    stale: bool,
    /// Unacked deliveries (the queue-depth gauge), kept exact between purges.
    queue_depth: i64,
    /// A statement failed during this batch: roll the whole batch back instead of
    /// committing a part of it.
    batch_failed: bool,
    /// Acks of in-flight deliveries in this batch, written with one statement.
    pending_acks: Vec<i64>,
    /// What open dashboards should re-read once this batch commits.
    changes: dashboard::Changes,
    /// Non-retired session identities one member may have (see `sessions.rs`).
    sessions_per_member: usize,
    /// Pushes of one delivery on one connection before it parks (see `delivery.rs`).
    max_pushes: u32,
    /// This node's part in a cluster of nodes on one database (see `cluster.rs`).
    cluster: Option<cluster::ClusterState>,
    /// This node's shared presence rows must all be deleted (a rebuild dropped its
    /// presences): done at the start of a batch, until a batch doing it commits.
    reset_presences: bool,
    /// This batch deleted them.
    reset_in_batch: bool,
    /// Sends of this batch waiting to be stored together (see `delivery.rs`).
    queued_sends: Vec<delivery::QueuedSend>,
    /// Recent messages of meshes a dashboard is watching (see `traffic.rs`).
    traffic: traffic::Traffic,
    /// Presence events waiting for their batch's commit or their mesh's tick.
    announcements: announce::Announcements,
    /// The last presence epoch handed out: epochs are unique for the engine's life, so a
    /// grace timer can only ever end the period it was set for.
    epochs: u64,
}

/// An attached connection.
struct ConnEntry {
    handle: ConnHandle,
    mesh_id: String,
    key: String,
    session_id: String,
    /// The client announced `presence-batch` (see `announce.rs`).
    presence_batch: bool,
}

impl Engine {
    fn new(
        mut store: Box<dyn Store>,
        config: &BrokerConfig,
        metrics: Arc<Metrics>,
        changes: tokio::sync::broadcast::Sender<Change>,
    ) -> Result<Self, claudemesh_store::StoreError> {
        let dir = Directory::load(store.as_mut())?;
        let queue_depth = store.queue_depth(now_ms())?;
        metrics.queue_depth.set(queue_depth);
        let mut timers = BinaryHeap::new();
        timers.push(Reverse((
            Instant::now() + Duration::from_secs(5),
            TimerKind::Purge,
        )));
        let mut engine = Self {
            changes: dashboard::Changes::new(changes),
            store,
            dir,
            conns: HashMap::new(),
            effects: Vec::new(),
            timers,
            metrics,
            timings: config.timings,
            window: config.inflight_window.max(1),
            // A normal burst is one window of pushes; a smaller bound would drop every reader.
            outbound_limit: config.outbound_buffer.max(config.inflight_window).max(1),
            v1_only: config.v1_only,
            db_healthy: true,
            stale: false,
            queue_depth,
            batch_failed: false,
            pending_acks: Vec::new(),
            sessions_per_member: config.sessions_per_member.max(1),
            max_pushes: config.timings.max_pushes.max(1),
            cluster: None,
            reset_presences: false,
            reset_in_batch: false,
            queued_sends: Vec::new(),
            traffic: traffic::Traffic::default(),
            announcements: announce::Announcements::default(),
            epochs: 0,
        };
        engine.join_cluster(&config.node_name)?;
        engine.restore_presences();
        Ok(engine)
    }

    fn run(&mut self, rx: &flume::Receiver<Command>) {
        let mut batch = Vec::with_capacity(256);
        loop {
            let wait = self
                .next_timer()
                .map(|at| at.saturating_duration_since(Instant::now()));
            let first = match wait {
                Some(d) => match rx.recv_timeout(d) {
                    Ok(cmd) => Some(cmd),
                    Err(flume::RecvTimeoutError::Timeout) => None,
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(cmd) => Some(cmd),
                    Err(_) => break,
                },
            };
            batch.extend(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            let n = batch.len();
            self.begin_batch(&batch);
            for cmd in batch.drain(..) {
                self.apply(cmd);
            }
            self.store_sends();
            self.fire_timers();
            self.finish_batch(n);
        }
        // Inbox closed: everything applied has been committed by finish_batch.
        tracing::info!("engine stopped");
    }

    /// A presence epoch never handed out before.
    fn fresh_epoch(&mut self) -> u64 {
        self.epochs += 1;
        self.epochs
    }

    fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    fn timer(&mut self, at: Instant, kind: TimerKind) {
        self.timers.push(Reverse((at, kind)));
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, kind))) = self.timers.pop() else {
                break;
            };
            match kind {
                TimerKind::Leases { mesh, key } => self.expire_leases(&mesh, &key, now),
                TimerKind::Grace { mesh, key, epoch } => self.end_grace(&mesh, &key, epoch),
                TimerKind::RestoredGrace { epoch } => self.end_restored_grace(epoch),
                TimerKind::Purge => {
                    let ms = now_ms();
                    match self.store.purge_expired(ms) {
                        Ok(n) if n > 0 => tracing::info!(rows = n, "purged expired messages"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "purge failed"),
                    }
                    self.retire_stale(ms);
                    self.forget_traffic(false);
                    if let Ok(depth) = self.store.queue_depth(ms) {
                        self.queue_depth = depth;
                    }
                    self.timer(now + self.timings.purge_interval, TimerKind::Purge);
                }
                // Only the state that went stale reloads (a failed commit may have queued
                // more than one of these timers).
                TimerKind::Recover if self.stale => self.reload(),
                TimerKind::Recover => {}
                TimerKind::Heartbeat => self.heartbeat(),
                TimerKind::Presence => self.presence_timer(),
            }
        }
    }

    fn apply(&mut self, cmd: Command) {
        if self.stale {
            return self.refuse_stale(cmd);
        }
        // Consecutive sends (and the acks that arrive between them, which cannot concern
        // them) are stored together; anything else sees them stored first.
        let joins_sends = matches!(
            &cmd,
            Command::Request {
                request: Request::Send(_),
                ..
            } | Command::Frame {
                frame: ClientFrame::ClientAck(_),
                ..
            }
        );
        if !joins_sends {
            self.store_sends();
        }
        match cmd {
            Command::Attach { hello, conn, reply } => self.attach(hello, conn, reply),
            Command::Request {
                conn,
                request,
                slot,
            } => self.request(conn, request, slot),
            Command::Frame { conn, frame } => self.frame(conn, frame),
            Command::Detach { conn, left } => self.detach(conn, left),
            Command::Join { req, reply } => self.join(req, reply),
            Command::Admin { cmd, reply } => self.admin(cmd, reply),
            Command::Health { reply } => {
                let ok = self.db_healthy && self.store.ping().is_ok();
                let _ = reply.send((ok, self.nodes_up()));
            }
            Command::Cluster(ev) => self.on_cluster(ev),
            Command::Dashboard {
                mesh_id,
                viewer,
                reply,
            } => {
                let _ = reply.send(self.mesh_view(&mesh_id, &viewer));
            }
            Command::OperatorAccount { name, reply } => {
                let _ = reply.send(self.operator_account(&name));
            }
            Command::SetOperatorPassword {
                name,
                setup_hash,
                password_hash,
                reply,
            } => {
                let done = self
                    .store
                    .set_operator_password(&name, &setup_hash, &password_hash, now_ms())
                    .map_err(|e| self.unavailable(&e));
                self.reply_after_commit(reply, done);
            }
            Command::Overview { reply } => {
                let _ = reply.send(self.overview());
            }
        }
    }

    /// Answer a command `unavailable` without touching the store (the state is stale).
    fn refuse_stale(&mut self, cmd: Command) {
        let down = || Refusal::unavailable();
        match cmd {
            Command::Attach { reply, .. } => {
                let _ = reply.send(Err(Rejection::new(down().code, down().message)));
            }
            Command::Request {
                conn,
                request,
                slot,
            } => {
                let req_id = request.req_id().cloned();
                let frame = match request {
                    Request::Send(mut send) => {
                        failed_reply(BrokerFrame::Ack(delivery::blank_ack(&mut send)))
                    }
                    _ => BrokerFrame::Error(
                        ErrorFrame::new(Code::Unavailable, &down().message).with_req_id(req_id),
                    ),
                };
                self.reply(conn, slot, frame);
            }
            Command::Join { reply, .. } => {
                let _ = reply.send(Err(down()));
            }
            Command::Admin { reply, .. } => {
                let _ = reply.send(Err(down()));
            }
            Command::Dashboard { reply, .. } => {
                let _ = reply.send(Err(down()));
            }
            Command::SetOperatorPassword { reply, .. } => {
                let _ = reply.send(Err(down()));
            }
            Command::OperatorAccount { reply, .. } => {
                let _ = reply.send(None);
            }
            // The caller sees the engine as unavailable.
            Command::Overview { .. } => {}
            Command::Health { reply } => {
                let _ = reply.send((false, None));
            }
            // Connections were all closed when the state went stale, and the reload reads
            // the shared state afresh; nothing to do.
            Command::Frame { .. } | Command::Detach { .. } | Command::Cluster(_) => {}
        }
    }

    fn request(&mut self, conn: ConnId, request: Request, slot: ReplySlot) {
        let Some((mesh, key)) = self
            .conns
            .get(&conn)
            .map(|e| (e.mesh_id.clone(), e.key.clone()))
        else {
            // The connection is gone; the answer is dropped with it.
            return self.reply_error(conn, slot, Code::Unavailable, "connection closed", None);
        };
        match request {
            Request::Send(send) => self.send(conn, slot, &mesh, &key, send),
            Request::ListPeers(req_id) => self.list_peers(conn, slot, &mesh, req_id),
            // Extensions a v1-only broker does not offer.
            r @ (Request::ListMembers(_)
            | Request::MessageStatus(_)
            | Request::RetireSessions(_))
                if self.v1_only =>
            {
                let req_id = r.req_id().cloned();
                self.reply_error(
                    conn,
                    slot,
                    Code::UnknownMessageType,
                    "unknown message type",
                    req_id,
                );
            }
            Request::ListMembers(req_id) => self.list_members(conn, slot, &mesh, req_id),
            Request::MessageStatus(req) => self.message_status(conn, slot, &mesh, &key, req),
            Request::RetireSessions(r) => self.retire_sessions(conn, slot, &mesh, &key, r),
        }
    }

    fn frame(&mut self, conn: ConnId, frame: ClientFrame) {
        let Some(entry) = self.conns.get(&conn) else {
            return;
        };
        let (mesh, key) = (entry.mesh_id.clone(), entry.key.clone());
        match frame {
            ClientFrame::ClientAck(ack) => self.client_ack(&mesh, &key, &ack),
            ClientFrame::SetStatus(s) => self.set_status(&mesh, &key, s.status),
            ClientFrame::SetSummary(s) => self.set_summary(conn, &mesh, &key, s.summary),
            ClientFrame::JoinGroup(g) => self.join_group(conn, &mesh, &key, g),
            ClientFrame::LeaveGroup(g) => self.leave_group(&mesh, &key, &g.name),
            ClientFrame::SetReach(r) if !self.v1_only => self.set_reach(&mesh, &key, r.reach),
            ClientFrame::SetReach(_) => {}
            ClientFrame::Hello(_) | ClientFrame::SessionHello(_) => {
                let err = ErrorFrame::new(
                    Code::AlreadyAuthenticated,
                    "this connection is already authenticated",
                );
                self.out(conn, BrokerFrame::Error(err));
            }
            // Requests arrive as `Command::Request`; unknown frames are answered by the
            // connection task, which still has the raw `_reqId`.
            ClientFrame::Send(_)
            | ClientFrame::ListPeers(_)
            | ClientFrame::ListMembers(_)
            | ClientFrame::MessageStatus(_)
            | ClientFrame::RetireSessions(_)
            | ClientFrame::Unknown => {}
        }
    }

    /// Record a storage failure: the batch will be rolled back and every reply in it failed.
    fn poison(&mut self, e: &claudemesh_store::StoreError) {
        tracing::error!(error = %e, "store operation failed; the batch will be rolled back");
        self.batch_failed = true;
    }

    fn out(&mut self, conn: ConnId, frame: BrokerFrame) {
        self.effects.push(Effect::Out {
            conn,
            out: Outbound::Frame(Box::new(frame)),
        });
    }

    /// Answer a counted request, once the batch has committed (see [`reply`]).
    fn reply(&mut self, conn: ConnId, slot: ReplySlot, frame: BrokerFrame) {
        self.effects.push(Effect::Out {
            conn,
            out: slot.answer(frame),
        });
    }

    /// Answer a request with an `error` for its `_reqId`.
    fn reply_error(
        &mut self,
        conn: ConnId,
        slot: ReplySlot,
        code: Code,
        message: &str,
        req_id: Option<claudemesh_proto::frames::ReqId>,
    ) {
        let err = ErrorFrame::new(code, message).with_req_id(req_id);
        self.reply(conn, slot, BrokerFrame::Error(err));
    }

    /// Commit, then carry out effects; on failure, fail replies and rebuild state.
    fn finish_batch(&mut self, commands: usize) {
        self.flush_cluster();
        let acks = std::mem::take(&mut self.pending_acks);
        if let Err(e) = self.store.ack_deliveries(&acks, now_ms()) {
            self.poison(&e);
        }
        let result = if std::mem::take(&mut self.batch_failed) {
            Err("a statement in the batch failed".to_owned())
        } else {
            let started = Instant::now();
            let r = self.store.commit().map_err(|e| e.to_string());
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.metrics.commit_micros_total.inc_by(micros);
            r
        };
        let committed = match result {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "batch not committed; failing its replies and rebuilding state");
                Metrics::inc(&self.metrics.commit_failures_total);
                false
            }
        };
        if commands > 0 {
            Metrics::inc(&self.metrics.commits_total);
            self.metrics
                .commit_batch_frames_total
                .inc_by(commands as u64);
        }
        self.db_healthy = committed && !self.stale;
        self.changes.finish(committed);
        if committed && self.reset_in_batch {
            self.reset_presences = false;
        }
        self.reset_in_batch = false;
        let effects = std::mem::take(&mut self.effects);
        for effect in effects {
            match effect {
                Effect::Out { conn, out } if committed => self.deliver_now(conn, out),
                Effect::Out {
                    conn,
                    out: Outbound::Reply(frame, slot),
                } => self.deliver_now(conn, Outbound::Reply(Box::new(failed_reply(*frame)), slot)),
                Effect::Out { .. } => {}
                Effect::Reply(f) => f(committed),
                Effect::Close { kill, code, reason } if committed => kill.kill(code, &reason),
                Effect::Close { .. } => {}
            }
        }
        self.flush_announcements(committed);
        self.metrics.queue_depth.set(self.queue_depth);
        if !committed {
            self.rebuild();
        }
    }

    /// After a failed commit memory may disagree with the database: close every
    /// connection (clients reconnect and everything unacked is pushed again) and reload.
    fn rebuild(&mut self) {
        let _ = self.store.rollback();
        self.forget_traffic(true);
        self.announcements.clear();
        // Every local presence goes with the rebuild; so must their shared rows.
        self.reset_presences = self.cluster.is_some();
        for (_, c) in self.conns.drain() {
            c.handle.kill.kill(
                claudemesh_proto::codes::close::GOING_AWAY,
                "broker storage error",
            );
        }
        self.metrics.connections_active.set(0);
        self.reload();
    }

    /// Load the state from the database; on failure the engine is stale and tries again
    /// in [`RECOVER_EVERY`].
    fn reload(&mut self) {
        let loaded = Directory::load(self.store.as_mut()).and_then(|dir| {
            let depth = self.store.queue_depth(now_ms())?;
            let remote = self.store.cluster().map(|c| c.presences()).transpose()?;
            Ok((dir, depth, remote.unwrap_or_default()))
        });
        match loaded {
            Ok((dir, depth, remote)) => {
                if self.stale {
                    tracing::info!("storage is back; state reloaded");
                }
                self.dir = dir;
                let me = self.node_id();
                for row in remote.into_iter().filter(|r| Some(r.node_id) != me) {
                    self.cache_remote(row);
                }
                self.queue_depth = depth;
                self.stale = false;
                self.db_healthy = true;
                self.restore_presences();
            }
            Err(e) => {
                if !self.stale {
                    tracing::error!(error = %e, "reloading state failed; refusing everything until it works");
                }
                self.stale = true;
                self.db_healthy = false;
                self.timer(Instant::now() + RECOVER_EVERY, TimerKind::Recover);
            }
        }
    }

    /// Hand a frame to a connection's bounded channel; a full channel marks a slow reader,
    /// which is disconnected (its unacked deliveries come back when it reconnects).
    fn deliver_now(&mut self, conn: ConnId, out: Outbound) {
        let Some(entry) = self.conns.get(&conn) else {
            return;
        };
        let is_push = matches!(out, Outbound::Deliver(_));
        let queued = &entry.handle.queued_pushes;
        let result = if is_push && queued.load(Relaxed) >= self.outbound_limit {
            Err(mpsc::error::TrySendError::Full(out))
        } else {
            entry.handle.tx.try_send(out)
        };
        match result {
            Ok(()) => {
                if is_push {
                    queued.fetch_add(1, Relaxed);
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                Metrics::inc(&self.metrics.slow_consumers_total);
                tracing::warn!(conn, "outbound buffer full; disconnecting slow reader");
                entry
                    .handle
                    .kill
                    .kill(claudemesh_proto::codes::close::REJECTED, "slow_consumer");
                self.detach(conn, false);
            }
            // The connection task has ended; its own `Detach` (sent when it drops, whatever
            // the way out, and saying whether the client left on purpose) is on its way.
            // Detaching here would race it and turn a deliberate leave into a drop with a
            // grace period.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}
