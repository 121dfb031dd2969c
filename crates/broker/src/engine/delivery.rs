//! Durable at-least-once delivery: `send` (store the body once, one delivery per
//! recipient), per-recipient mailboxes with a bounded in-memory window over the database
//! queue, leases re-pushed on expiry, priority gating by status, and scoped `client_ack`.
//!
//! Invariant: for an online recipient, every unacked delivery with `seq <= read_upto` is
//! in `pending`, `inflight` or `parked` (pushed `max_pushes` times on this connection
//! without an ack); anything newer is in the database only when `spilled`.
//! Seqs increase in commit order (on PostgreSQL across nodes too, see the store's seq
//! lock), and a refill reads everything unacked above `read_upto`, so FIFO per
//! (sender, recipient) holds for first pushes. On one node a delivery this engine stores
//! is also taken straight into memory, moving `read_upto`; with several nodes it is taken
//! into memory but `read_upto` stays: a smaller seq another node committed may not have
//! been read yet, and the next refill must not jump it.

use claudemesh_proto::codes::Code;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use claudemesh_proto::frames::{
    Ack, BrokerFrame, ClientAck, DeliveryState, MessageStatusReply, MessageStatusRequest, Priority,
    RecipientStatus, Send, Target,
};
use claudemesh_proto::limits;
use claudemesh_store::{Inserted, MessageRow, NewDelivery, PendingDelivery};

use super::{ConnId, Effect, Engine, Outbound, ReplySlot, TimerKind};
use claudemesh_proto::ids::new_id;

use crate::metrics::Metrics;
use claudemesh_proto::time::{iso8601, now_ms};

/// Most deliveries held in memory per mailbox before the rest stays in the database.
const MAX_PENDING: usize = 1_024;
/// Refill from the database when fewer than this many are pending.
const REFILL_BELOW: usize = 256;

/// A send the engine accepted, stored with the batch's other sends by one store call
/// ([`Engine::store_sends`]) before anything that could depend on it runs.
pub(super) struct QueuedSend {
    conn: ConnId,
    slot: ReplySlot,
    mesh_id: String,
    ack: Ack,
    message: Arc<Body>,
    priority: Priority,
    to: Vec<(String, Option<String>)>,
}

/// A message as its recipients' deliveries share it, with a multicast's `push` frame
/// rendered once, by the first connection that writes it (`conn.rs`): a multicast to N
/// peers renders its body once, not N times. (Copies read back from the database each
/// have their own body, and are rendered each.)
#[derive(Debug)]
pub struct Body {
    pub row: MessageRow,
    /// Addressed to `*` or a group (several recipients share this body).
    pub multicast: bool,
    /// A multicast's `push` JSON without `sealedKey` (each recipient's own, spliced in).
    pub rendered: std::sync::OnceLock<axum::extract::ws::Utf8Bytes>,
}

impl Body {
    pub fn new(row: MessageRow) -> Self {
        let multicast = claudemesh_proto::frames::Target::parse(&row.target_spec)
            .is_some_and(|t| t.is_multicast());
        Self {
            row,
            multicast,
            rendered: std::sync::OnceLock::new(),
        }
    }
}

impl std::ops::Deref for Body {
    type Target = MessageRow;

    fn deref(&self) -> &MessageRow {
        &self.row
    }
}

/// One recipient's copy of a message, as pushed.
#[derive(Debug)]
pub struct Delivery {
    pub seq: i64,
    pub message: Arc<Body>,
    pub priority: Priority,
    pub sealed_key: Option<String>,
}

struct Inflight {
    delivery: Arc<Delivery>,
    deadline: Instant,
    /// Times pushed on this connection.
    pushes: u32,
}

/// A delivery that was pushed `max_pushes` times on this connection without an ack.
struct Parked {
    message_id: String,
    /// Milliseconds since the epoch, as the message's.
    expires_at: i64,
}

/// The in-memory window over one online recipient's queue.
#[derive(Default)]
pub(super) struct Mailbox {
    pending: VecDeque<Arc<Delivery>>,
    inflight: BTreeMap<i64, Inflight>,
    inflight_by_id: HashMap<String, i64>,
    /// Pushed `max_pushes` times without an ack: not pushed again on this connection
    /// (by message id; the delivery stays unacked in the database).
    parked: BTreeMap<i64, Parked>,
    /// Everything unacked up to this seq is in the window (see the module doc).
    read_upto: i64,
    spilled: bool,
    /// Reload everything unacked, skipping what is held (notifications may have been lost).
    rescan: bool,
    lease_timer: Option<Instant>,
}

impl Mailbox {
    /// Another node committed deliveries for this recipient: read what is new. (Its seqs
    /// are above `read_upto`: everything at or below it was committed when it was read.)
    pub fn arrived(&mut self) {
        self.spilled = true;
    }

    /// Reload everything unacked (notifications may have been lost), skipping what is held.
    pub fn rescan(&mut self) {
        self.spilled = true;
        self.rescan = true;
    }

    /// Whether the delivery with this seq was pushed on this connection and not acked.
    pub fn pushed(&self, seq: i64) -> bool {
        self.inflight.contains_key(&seq) || self.parked.contains_key(&seq)
    }

    /// Whether the delivery with this seq is in the window (pending, in flight or parked).
    fn holds(&self, seq: i64) -> bool {
        self.inflight.contains_key(&seq)
            || self.parked.contains_key(&seq)
            || self.pending_at(seq).is_ok()
    }

    /// Where `seq` is in `pending` (kept sorted by seq), or where it would go.
    fn pending_at(&self, seq: i64) -> Result<usize, usize> {
        self.pending.binary_search_by_key(&seq, |d| d.seq)
    }

    /// Whether the next refill may read a delivery memory took and that was acked in
    /// this batch, before the ack is written: after a rescan, or with several nodes
    /// (where `read_upto` stays below what memory took from this engine's sends).
    fn rereads(&self, clustered: bool) -> bool {
        self.spilled && (self.rescan || (clustered && self.pending.len() < REFILL_BELOW))
    }

    /// A fresh mailbox whose whole queue is still in the database.
    pub fn unloaded() -> Self {
        Self {
            spilled: true,
            ..Self::default()
        }
    }

    /// Load the next deliveries from the database when the in-memory queue runs low.
    fn refill(
        &mut self,
        store: &mut dyn claudemesh_store::Store,
        mesh_id: &str,
        key: &str,
    ) -> claudemesh_store::Result<()> {
        if std::mem::take(&mut self.rescan) {
            self.read_upto = 0;
        }
        if !self.spilled || self.pending.len() >= REFILL_BELOW {
            return Ok(());
        }
        let want = MAX_PENDING.saturating_sub(self.pending.len()).max(1);
        let rows = store.pending(mesh_id, key, self.read_upto, want, now_ms())?;
        if rows.len() < want {
            self.spilled = false;
        }
        for row in rows {
            self.read_upto = self.read_upto.max(row.seq);
            // What memory took straight from this engine's own sends is met again here.
            let elsewhere =
                self.inflight.contains_key(&row.seq) || self.parked.contains_key(&row.seq);
            if let (Err(at), false) = (self.pending_at(row.seq), elsewhere) {
                self.pending.insert(at, delivery_from(row));
            }
        }
        Ok(())
    }
}

fn delivery_from(p: PendingDelivery) -> Arc<Delivery> {
    Arc::new(Delivery {
        seq: p.seq,
        priority: p.message.priority,
        message: Arc::new(Body::new(p.message)),
        sealed_key: p.sealed_key,
    })
}

impl Engine {
    /// Refuse a send: an ack with `queued: false` and the error code.
    fn refuse(&mut self, conn: ConnId, slot: ReplySlot, mut ack: Ack, code: Code) {
        Metrics::inc(&self.metrics.messages_rejected_total);
        ack.error = Some(code.as_str().to_owned());
        self.reply(conn, slot, BrokerFrame::Ack(ack));
    }

    /// Who a send reaches, each recipient with the key sealed for it (extension
    /// e2e-multicast), or the code it is refused with.
    fn recipients(
        &self,
        mesh_id: &str,
        sender: &str,
        send: &mut Send,
    ) -> Result<Vec<(String, Option<String>)>, Code> {
        let mesh = self.dir.mesh(mesh_id).ok_or(Code::Unauthorized)?;
        let target = Target::parse(&send.target_spec).ok_or(Code::BadTarget)?;
        let cmid_too_long = send
            .client_message_id
            .as_ref()
            .is_some_and(|c| c.len() > limits::MAX_SHORT_TEXT_BYTES);
        if send.nonce.len() > 64 || cmid_too_long {
            return Err(Code::Malformed);
        }
        let recipients = match target {
            Target::Direct(key) if mesh.is_recipient(key) => vec![key.to_owned()],
            Target::Direct(_) => return Err(Code::UnknownRecipient),
            Target::Broadcast => mesh.broadcast_recipients(sender),
            Target::Group(name) => mesh.group_recipients(name, sender),
        };
        // Extension e2e-multicast: only recipients the sender sealed a key for.
        let sealed = send.sealed_keys.take();
        match sealed.filter(|_| target.is_multicast() && !self.v1_only) {
            None => Ok(recipients.into_iter().map(|r| (r, None)).collect()),
            Some(sealed) if sealed.len() > limits::MAX_SEALED_KEYS => Err(Code::PayloadTooLarge),
            Some(mut sealed) => Ok(recipients
                .into_iter()
                .filter_map(|r| sealed.remove(&r).map(|k| (r, Some(k))))
                .collect()),
        }
    }

    /// The stored form of a send from `sender` (stamped from its presence, not the frame).
    fn message_row(&self, mesh_id: &str, sender: &str, send: Send, now: i64) -> MessageRow {
        let (sender_member_pubkey, sender_name) = self
            .dir
            .mesh(mesh_id)
            .and_then(|m| m.presences.get(sender))
            .map(|p| (p.member_pubkey.clone(), p.display_name.clone()))
            .unwrap_or_default();
        MessageRow {
            message_id: new_id(),
            mesh_id: mesh_id.to_owned(),
            sender_pubkey: sender.to_owned(),
            sender_member_pubkey,
            sender_name,
            target_spec: send.target_spec,
            priority: send.priority,
            nonce: send.nonce,
            ciphertext: send.ciphertext,
            client_message_id: send.client_message_id,
            created_at: now,
            expires_at: now + limits::MESSAGE_TTL_MS,
        }
    }

    /// `send`: decide the recipients now; the body (once) and one delivery per recipient
    /// are stored with the other sends of the batch ([`Engine::store_sends`]), acked once
    /// committed, and each delivery offered to its recipient's mailbox.
    pub(super) fn send(
        &mut self,
        conn: ConnId,
        slot: ReplySlot,
        mesh_id: &str,
        sender: &str,
        mut send: Send,
    ) {
        let mut ack = blank_ack(&mut send);
        let to = match self.recipients(mesh_id, sender, &mut send) {
            Ok(to) => to,
            Err(code) => return self.refuse(conn, slot, ack, code),
        };
        // A multicast that reaches nobody stores nothing, so it has no message id.
        if to.is_empty() {
            Metrics::inc(&self.metrics.messages_routed_total);
            ack.queued = true;
            ack.recipients = Some(0);
            return self.reply(conn, slot, BrokerFrame::Ack(ack));
        }
        let priority = send.priority;
        let message = Arc::new(Body::new(self.message_row(mesh_id, sender, send, now_ms())));
        self.queued_sends.push(QueuedSend {
            conn,
            slot,
            mesh_id: mesh_id.to_owned(),
            ack,
            message,
            priority,
            to,
        });
    }

    /// Store every queued send in one store call (one statement on PostgreSQL, so a batch
    /// of sends costs one round trip, not one per message), then answer and enqueue each
    /// in the order they came.
    pub(super) fn store_sends(&mut self) {
        if self.queued_sends.is_empty() {
            return;
        }
        let sends = std::mem::take(&mut self.queued_sends);
        let result = {
            let copies: Vec<Vec<NewDelivery<'_>>> = sends
                .iter()
                .map(|q| {
                    q.to.iter()
                        .map(|(recipient, sealed_key)| NewDelivery {
                            recipient,
                            sealed_key: sealed_key.as_deref(),
                        })
                        .collect()
                })
                .collect();
            let batch: Vec<(&MessageRow, &[NewDelivery<'_>])> = sends
                .iter()
                .zip(&copies)
                .map(|(q, c)| (&q.message.row, c.as_slice()))
                .collect();
            self.store.insert_messages(&batch)
        };
        let outcomes = match result {
            Ok(o) if o.len() == sends.len() => o,
            Ok(_) => {
                let e = claudemesh_store::StoreError::Corrupt {
                    what: "insert_messages answered for another number of messages".into(),
                };
                return self.sends_failed(sends, &e);
            }
            Err(e) => return self.sends_failed(sends, &e),
        };
        for (q, outcome) in sends.into_iter().zip(outcomes) {
            self.stored(q, outcome);
        }
    }

    /// The store refused the batch's sends: all of it rolls back, every ack `unavailable`.
    fn sends_failed(&mut self, sends: Vec<QueuedSend>, e: &claudemesh_store::StoreError) {
        self.poison(e);
        for q in sends {
            self.reply(q.conn, q.slot, BrokerFrame::Ack(q.ack));
        }
    }

    /// One queued send, stored: answer it and offer its deliveries to their mailboxes.
    fn stored(&mut self, q: QueuedSend, outcome: Inserted) {
        let QueuedSend {
            conn,
            slot,
            mesh_id,
            mut ack,
            message,
            priority,
            to,
        } = q;
        let seqs = match outcome {
            Inserted::New(seqs) => seqs,
            // Idempotent resend: the same client_message_id from the same sender is one
            // message; answer with its id and create nothing.
            Inserted::Existing(existing) => {
                ack.message_id = existing;
                ack.queued = true;
                return self.reply(conn, slot, BrokerFrame::Ack(ack));
            }
        };
        let stored: Vec<(String, Arc<Delivery>)> = to
            .into_iter()
            .zip(seqs)
            .map(|((recipient, sealed_key), seq)| {
                let delivery = Delivery {
                    seq,
                    message: message.clone(),
                    priority,
                    sealed_key,
                };
                (recipient, Arc::new(delivery))
            })
            .collect();
        ack.message_id = message.message_id.clone();
        self.traffic_stored(
            &message,
            stored.iter().map(|(key, d)| (key.as_str(), d.seq)),
        );
        Metrics::inc(&self.metrics.messages_routed_total);
        self.queue_depth += stored.len() as i64;
        ack.queued = true;
        ack.recipients = Some(u32::try_from(stored.len()).unwrap_or(u32::MAX));
        self.reply(conn, slot, BrokerFrame::Ack(ack));
        for (recipient, delivery) in stored {
            self.enqueue(&mesh_id, &recipient, delivery);
        }
    }

    /// Offer a freshly stored delivery to its recipient's mailbox, if the recipient is online.
    fn enqueue(&mut self, mesh_id: &str, key: &str, delivery: Arc<Delivery>) {
        let clustered = self.cluster.is_some();
        let Some(mb) = self.mailbox(mesh_id, key) else {
            // Online on another node, perhaps: wake it (see `cluster.rs`).
            return self.wake_elsewhere(mesh_id, key, delivery.seq);
        };
        if mb.holds(delivery.seq) || delivery.seq <= mb.read_upto {
            return; // already read from the database in this batch
        }
        if mb.spilled || mb.pending.len() >= MAX_PENDING {
            mb.spilled = true;
        } else {
            if !clustered {
                mb.read_upto = delivery.seq;
            }
            if let Err(at) = mb.pending_at(delivery.seq) {
                mb.pending.insert(at, delivery);
            }
        }
        self.pump(mesh_id, key);
    }

    fn mailbox(&mut self, mesh_id: &str, key: &str) -> Option<&mut Mailbox> {
        self.dir
            .mesh_mut(mesh_id)?
            .presences
            .get_mut(key)?
            .mailbox
            .as_mut()
    }

    /// Push as much as the window, the status and the connection allow; refill from the
    /// database when the in-memory queue runs low.
    pub(super) fn pump(&mut self, mesh_id: &str, key: &str) {
        let now = Instant::now();
        let lease = self.timings.lease;
        let window = self.window;
        let Some(mesh) = self.dir.meshes.get_mut(mesh_id) else {
            return;
        };
        let Some(presence) = mesh.presences.get_mut(key) else {
            return;
        };
        let (Some(conn), status) = (presence.target(), presence.status) else {
            return;
        };
        let Some(mb) = presence.mailbox.as_mut() else {
            return;
        };

        if !self.pending_acks.is_empty() && mb.rereads(self.cluster.is_some()) {
            // Write this batch's acks first, or the refill would load them again.
            let acks = std::mem::take(&mut self.pending_acks);
            if let Err(e) = self.store.ack_deliveries(&acks, now_ms()) {
                tracing::error!(error = %e, "writing acks failed; rolling back the batch");
                self.batch_failed = true;
            }
        }
        if let Err(e) = mb.refill(self.store.as_mut(), mesh_id, key) {
            tracing::error!(error = %e, "loading pending deliveries failed; rolling back the batch");
            self.batch_failed = true;
        }

        let mut pushed = 0u64;
        let mut shown = Vec::new();
        let mut i = 0;
        while mb.inflight.len() < window && i < mb.pending.len() {
            let admitted = mb.pending.get(i).is_some_and(|d| status.admits(d.priority));
            if !admitted {
                i += 1;
                continue;
            }
            let Some(d) = mb.pending.remove(i) else { break };
            mb.inflight_by_id
                .insert(d.message.message_id.clone(), d.seq);
            mb.inflight.insert(
                d.seq,
                super::delivery::Inflight {
                    delivery: d.clone(),
                    deadline: now + lease,
                    pushes: 1,
                },
            );
            if !self.traffic.is_empty() {
                shown.push(d.clone());
            }
            self.effects.push(Effect::Out {
                conn,
                out: Outbound::Deliver(d),
            });
            pushed += 1;
        }
        let schedule = (pushed > 0 && mb.lease_timer.is_none()).then(|| {
            mb.lease_timer = Some(now + lease);
            now + lease
        });
        self.metrics.deliveries_pushed_total.inc_by(pushed);
        for d in shown {
            self.traffic_pushed(key, d.seq, &d.message);
        }
        if let Some(at) = schedule {
            self.timer(
                at,
                TimerKind::Leases {
                    mesh: mesh_id.to_owned(),
                    key: key.to_owned(),
                },
            );
        }
    }

    /// Re-push every delivery of this mailbox whose lease has expired.
    pub(super) fn expire_leases(&mut self, mesh_id: &str, key: &str, now: Instant) {
        let lease = self.timings.lease;
        let Some(presence) = self
            .dir
            .mesh_mut(mesh_id)
            .and_then(|m| m.presences.get_mut(key))
        else {
            return;
        };
        let Some(conn) = presence.target() else {
            return;
        };
        let Some(mb) = presence.mailbox.as_mut() else {
            return;
        };
        mb.lease_timer = None;
        let mut repushed = Vec::new();
        let mut park = Vec::new();
        for (seq, lease_entry) in &mut mb.inflight {
            if lease_entry.deadline > now {
                continue;
            }
            if lease_entry.pushes >= self.max_pushes {
                park.push(*seq);
            } else {
                lease_entry.pushes += 1;
                lease_entry.deadline = now + lease;
                repushed.push(lease_entry.delivery.clone());
            }
        }
        for seq in &park {
            if let Some(l) = mb.inflight.remove(seq) {
                let message_id = l.delivery.message.message_id.clone();
                mb.inflight_by_id.remove(&message_id);
                let expires_at = l.delivery.message.expires_at;
                mb.parked.insert(
                    *seq,
                    Parked {
                        message_id,
                        expires_at,
                    },
                );
            }
        }
        // Parked copies that expired are gone from the database too: forget them here.
        let now_wall = now_ms();
        mb.parked.retain(|_, p| p.expires_at > now_wall);
        let next = mb.inflight.values().map(|l| l.deadline).min();
        mb.lease_timer = next;
        let n = repushed.len() as u64;
        for d in repushed {
            self.traffic_pushed(key, d.seq, &d.message);
            self.effects.push(Effect::Out {
                conn,
                out: Outbound::Deliver(d),
            });
        }
        self.metrics.deliveries_redelivered_total.inc_by(n);
        if !park.is_empty() {
            self.metrics
                .deliveries_parked_total
                .inc_by(park.len() as u64);
            tracing::info!(key = %key, parked = park.len(), "deliveries parked: never acked");
            // Their window slots are free again.
            self.pump(mesh_id, key);
        }
        if let Some(at) = next {
            self.timer(
                at,
                TimerKind::Leases {
                    mesh: mesh_id.to_owned(),
                    key: key.to_owned(),
                },
            );
        }
    }

    fn inflight_seq(&mut self, mesh_id: &str, key: &str, message_id: &str) -> Option<i64> {
        self.mailbox(mesh_id, key)?
            .inflight_by_id
            .get(message_id)
            .copied()
    }

    /// `client_ack`: mark the acker's own delivery done. A foreign or unknown id changes nothing.
    pub(super) fn client_ack(&mut self, mesh_id: &str, key: &str, ack: &ClientAck) {
        let now = now_ms();
        let message_id = match (&ack.broker_message_id, &ack.client_message_id) {
            (Some(id), _) => match self.inflight_seq(mesh_id, key, id) {
                // Fast path: the delivery is in flight, so its primary key is known.
                // An in-flight delivery is unacked in the database (the first ack removes it
                // from the in-flight set), so this ack succeeds; the update is batched.
                Some(seq) => {
                    self.pending_acks.push(seq);
                    Some(id.clone())
                }
                None => match self.store.ack_delivery(mesh_id, key, id, now) {
                    Ok(true) => Some(id.clone()),
                    Ok(false) => None,
                    Err(e) => {
                        self.poison(&e);
                        None
                    }
                },
            },
            (None, Some(cid)) => match self.store.ack_delivery_by_client_id(mesh_id, key, cid, now)
            {
                Ok(found) => found,
                Err(e) => {
                    self.poison(&e);
                    None
                }
            },
            (None, None) => None,
        };
        let Some(message_id) = message_id else { return };
        self.traffic_acked(mesh_id, key, &message_id);
        self.queue_depth -= 1;
        Metrics::inc(&self.metrics.deliveries_acked_total);
        if let Some(mb) = self.mailbox(mesh_id, key) {
            if let Some(seq) = mb.inflight_by_id.remove(&message_id) {
                mb.inflight.remove(&seq);
            } else if let Some(seq) = mb
                .parked
                .iter()
                .find_map(|(seq, p)| (p.message_id == message_id).then_some(*seq))
            {
                mb.parked.remove(&seq);
            } else {
                mb.pending.retain(|d| d.message.message_id != message_id);
            }
        }
        self.pump(mesh_id, key);
    }

    /// `message_status`: where each recipient's copy of a message stands. Only the
    /// sender, or another connection of the sender's member, may ask; for anyone else the
    /// message does not exist (`not_found`), so ids reveal nothing.
    pub(super) fn message_status(
        &mut self,
        conn: ConnId,
        slot: ReplySlot,
        mesh_id: &str,
        asker: &str,
        req: MessageStatusRequest,
    ) {
        let MessageStatusRequest { message_id, req_id } = req;
        let found =
            match self
                .store
                .message_deliveries(mesh_id, &message_id, limits::MAX_SEALED_KEYS)
            {
                Ok(found) => found,
                Err(e) => {
                    // A read failed: answer, but do not fail the batch's writes for it.
                    tracing::warn!(error = %e, "reading a message's deliveries failed");
                    return self.reply_error(
                        conn,
                        slot,
                        Code::Unavailable,
                        "storage is unavailable",
                        req_id,
                    );
                }
            };
        let mesh = self.dir.mesh(mesh_id);
        let asker_member = mesh
            .and_then(|m| m.presences.get(asker))
            .map_or(asker, |p| p.member_pubkey.as_str());
        let found = found.filter(|f| {
            f.message.sender_pubkey == asker || f.message.sender_member_pubkey == asker_member
        });
        let (Some(mesh), Some(found)) = (mesh, found) else {
            let why = "no message with this id was sent by you";
            return self.reply_error(conn, slot, Code::NotFound, why, req_id);
        };
        let now = now_ms();
        let recipients = found
            .deliveries
            .into_iter()
            .map(|d| {
                let presence = mesh.presences.get(&d.recipient);
                let inflight = presence.and_then(|p| p.mailbox.as_ref()).is_some_and(|mb| {
                    mb.inflight.contains_key(&d.seq) || mb.parked.contains_key(&d.seq)
                });
                // Acks of this batch are written just before its commit.
                let acked_now = self.pending_acks.contains(&d.seq);
                let state = match d.acked_at {
                    Some(_) => DeliveryState::Acked,
                    None if acked_now => DeliveryState::Acked,
                    None if inflight => DeliveryState::Delivered,
                    None if d.expires_at <= now => DeliveryState::Expired,
                    None => DeliveryState::Queued,
                };
                let display_name = super::traffic::display_name(mesh, &d.recipient);
                RecipientStatus {
                    pubkey: d.recipient,
                    display_name,
                    state,
                    acked_at: d.acked_at.or(acked_now.then_some(now)).map(iso8601),
                }
            })
            .collect();
        let reply = MessageStatusReply {
            message_id,
            target_spec: found.message.target_spec,
            created_at: iso8601(found.message.created_at),
            recipients,
            req_id,
        };
        self.reply(conn, slot, BrokerFrame::MessageStatus(reply));
    }
}

/// The ack of `send` before anything is decided (not queued, no message id), carrying the
/// send's own ids.
pub(super) fn blank_ack(send: &mut Send) -> Ack {
    Ack {
        id: send.id.take().unwrap_or_default(),
        message_id: String::new(),
        queued: false,
        error: None,
        recipients: None,
        client_message_id: send.client_message_id.clone(),
        req_id: send.req_id.take(),
    }
}
