//! Live traffic for the dashboard, as metadata only: the last [`RECENT`] messages of a
//! mesh someone is watching (sender, target, priority, size, time) and where each
//! recipient's copy stands (queued, delivered, acked, expired, redeliveries). The engine
//! records it from the events it already handles (stored, pushed, acked), and only for
//! meshes a dashboard read in the last [`KEEP_UNREAD`]; every other mesh costs one empty
//! map lookup per event. No body, nonce or sealed key is kept.
//!
//! With several nodes, a node sees the sends it stored and the pushes and acks of its own
//! connections; a copy whose recipient is held elsewhere is read back from the database
//! (its `acked_at`) while the view is built, so acks on other nodes show too.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use claudemesh_proto::frames::{DeliveryState, Priority};
use claudemesh_proto::limits;
use claudemesh_proto::time::{iso8601, now_ms};
use claudemesh_store::MessageRow;
use serde::Serialize;

use super::Engine;
use super::directory::Mesh;

/// Messages kept per watched mesh.
pub const RECENT: usize = 50;
/// Recipients tracked per message (a broadcast to more counts the rest only).
pub const MAX_COPIES: usize = 64;
/// A mesh's traffic is kept this long after its dashboard last read it.
pub const KEEP_UNREAD: Duration = Duration::from_secs(300);

/// One recipient's copy, as recorded.
#[derive(Debug, Clone)]
struct Copy {
    key: String,
    seq: i64,
    pushes: u32,
    acked: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    message_id: String,
    created_at: i64,
    expires_at: i64,
    sender_key: String,
    sender_name: String,
    target_spec: String,
    priority: Priority,
    size: usize,
    copies: Vec<Copy>,
    /// Recipients beyond [`MAX_COPIES`].
    untracked: usize,
}

impl Entry {
    fn of(m: &MessageRow) -> Self {
        Self {
            message_id: m.message_id.clone(),
            created_at: m.created_at,
            expires_at: m.expires_at,
            sender_key: m.sender_pubkey.clone(),
            sender_name: m.sender_name.clone(),
            target_spec: m.target_spec.clone(),
            priority: m.priority,
            size: decoded_len(&m.ciphertext),
            copies: Vec::new(),
            untracked: 0,
        }
    }

    fn add_copy(&mut self, key: &str, seq: i64) -> Option<&mut Copy> {
        if self.copies.len() >= MAX_COPIES {
            self.untracked += 1;
            return None;
        }
        self.copies.push(Copy {
            key: key.to_owned(),
            seq,
            pushes: 0,
            acked: false,
        });
        self.copies.last_mut()
    }
}

/// Bytes of the ciphertext a base64 string carries.
fn decoded_len(b64: &str) -> usize {
    let pad = b64.bytes().rev().take_while(|&b| b == b'=').count();
    (b64.len() / 4 * 3).saturating_sub(pad)
}

/// One watched mesh's recent messages, oldest first, with an index by delivery seq.
#[derive(Debug)]
struct Ring {
    read_at: Instant,
    /// Number of the first entry in `entries` (entries are numbered as they arrive).
    first: u64,
    entries: VecDeque<Entry>,
    by_seq: HashMap<i64, u64>,
    by_id: HashMap<String, u64>,
}

impl Ring {
    fn new() -> Self {
        Self {
            read_at: Instant::now(),
            first: 0,
            entries: VecDeque::new(),
            by_seq: HashMap::new(),
            by_id: HashMap::new(),
        }
    }

    fn get_mut(&mut self, n: u64) -> Option<&mut Entry> {
        let i = usize::try_from(n.checked_sub(self.first)?).ok()?;
        self.entries.get_mut(i)
    }

    /// Append an entry (dropping the oldest past [`RECENT`]); its number.
    fn push(&mut self, entry: Entry) -> u64 {
        if self.entries.len() >= RECENT
            && let Some(old) = self.entries.pop_front()
        {
            for c in &old.copies {
                self.by_seq.remove(&c.seq);
            }
            self.by_id.remove(&old.message_id);
            self.first += 1;
        }
        let n = self.first + self.entries.len() as u64;
        for c in &entry.copies {
            self.by_seq.insert(c.seq, n);
        }
        self.by_id.insert(entry.message_id.clone(), n);
        self.entries.push_back(entry);
        n
    }

    /// The copy with this delivery seq, if it is still kept.
    fn copy_mut(&mut self, seq: i64) -> Option<&mut Copy> {
        let n = *self.by_seq.get(&seq)?;
        self.get_mut(n)?.copies.iter_mut().find(|c| c.seq == seq)
    }
}

/// Every watched mesh's ring.
#[derive(Debug, Default)]
pub(super) struct Traffic {
    meshes: HashMap<String, Ring>,
}

impl Traffic {
    /// No mesh is watched (the common case: the hooks return at once).
    pub fn is_empty(&self) -> bool {
        self.meshes.is_empty()
    }
}

/// One recipient's copy, as the dashboard shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CopyView {
    pub pubkey: String,
    pub display_name: String,
    pub state: DeliveryState,
    /// Pushes after the first (lease expiries, reconnects).
    pub redeliveries: u32,
}

/// One message, as the dashboard shows it: metadata, never a body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    pub message_id: String,
    pub at: String,
    pub sender_pubkey: String,
    pub sender_name: String,
    /// The target as sent: a key, `*`, or `@group`.
    pub target_spec: String,
    /// The recipient's name for a direct message, else the target.
    pub to: String,
    pub priority: Priority,
    /// Ciphertext bytes.
    pub size: usize,
    /// The least advanced state among the tracked copies.
    pub state: DeliveryState,
    pub acked: usize,
    pub recipients: Vec<CopyView>,
    /// Recipients not tracked one by one (a large broadcast).
    pub untracked: usize,
}

/// How far a state is along the way, for the message's overall state.
fn progress(s: DeliveryState) -> u8 {
    match s {
        DeliveryState::Queued => 0,
        DeliveryState::Delivered => 1,
        DeliveryState::Expired => 2,
        DeliveryState::Acked => 3,
    }
}

/// A key's display name in a mesh, as far as the directory knows it.
pub(super) fn display_name(mesh: &Mesh, key: &str) -> Option<String> {
    mesh.presences
        .get(key)
        .map(|p| p.display_name.clone())
        .or_else(|| mesh.peers.get(key).map(|p| p.display_name.clone()))
        .or_else(|| mesh.member_by_key(key).map(|m| m.display_name.clone()))
}

/// [`display_name`], or the key's first characters.
fn name_of(mesh: &Mesh, key: &str) -> String {
    display_name(mesh, key).unwrap_or_else(|| key.chars().take(12).collect())
}

impl Engine {
    /// A dashboard read this mesh: keep (or start) its traffic.
    pub(super) fn watch_traffic(&mut self, mesh_id: &str) {
        self.traffic
            .meshes
            .entry(mesh_id.to_owned())
            .or_insert_with(Ring::new)
            .read_at = Instant::now();
    }

    /// Forget the traffic of meshes nobody read for [`KEEP_UNREAD`] (and, after a
    /// failed commit, all of it: it may record what did not happen).
    pub(super) fn forget_traffic(&mut self, all: bool) {
        let now = Instant::now();
        self.traffic
            .meshes
            .retain(|_, r| !all && now.duration_since(r.read_at) < KEEP_UNREAD);
    }

    fn ring(&mut self, mesh_id: &str) -> Option<&mut Ring> {
        if self.traffic.meshes.is_empty() {
            return None;
        }
        self.traffic.meshes.get_mut(mesh_id)
    }

    /// A message was stored with these copies (recipient, seq).
    pub(super) fn traffic_stored<'a>(
        &mut self,
        message: &MessageRow,
        copies: impl Iterator<Item = (&'a str, i64)>,
    ) {
        let Some(ring) = self.ring(&message.mesh_id) else {
            return;
        };
        let mut entry = Entry::of(message);
        for (key, seq) in copies {
            entry.add_copy(key, seq);
        }
        ring.push(entry);
        let mesh_id = message.mesh_id.clone();
        self.mesh_changed(&mesh_id);
    }

    /// A copy was pushed to its recipient (first push or a redelivery).
    pub(super) fn traffic_pushed(&mut self, key: &str, seq: i64, message: &MessageRow) {
        let Some(ring) = self.ring(&message.mesh_id) else {
            return;
        };
        if let Some(copy) = ring.copy_mut(seq) {
            copy.pushes += 1;
        } else if let Some(n) = ring.by_id.get(&message.message_id).copied() {
            // Stored on another node (or before the mesh was watched): add this copy.
            let Some(entry) = ring.get_mut(n) else { return };
            if let Some(c) = entry.add_copy(key, seq) {
                c.pushes = 1;
                ring.by_seq.insert(seq, n);
            }
        } else {
            let mut entry = Entry::of(message);
            if let Some(c) = entry.add_copy(key, seq) {
                c.pushes = 1;
            }
            ring.push(entry);
        }
        let mesh_id = message.mesh_id.clone();
        self.mesh_changed(&mesh_id);
    }

    /// `key` acked its copy of `message_id`.
    pub(super) fn traffic_acked(&mut self, mesh_id: &str, key: &str, message_id: &str) {
        let Some(ring) = self.ring(mesh_id) else {
            return;
        };
        let Some(n) = ring.by_id.get(message_id).copied() else {
            return;
        };
        if let Some(c) = ring
            .get_mut(n)
            .and_then(|e| e.copies.iter_mut().find(|c| c.key == key))
        {
            c.acked = true;
        }
        self.mesh_changed(mesh_id);
    }

    /// Acks made on other nodes, read back for copies whose recipient is not held here.
    fn traffic_refresh(&mut self, mesh_id: &str) {
        if self.cluster.is_none() {
            return;
        }
        let Some(ring) = self.traffic.meshes.get(mesh_id) else {
            return;
        };
        let mesh = self.dir.mesh(mesh_id);
        let held_here = |key: &str| {
            mesh.and_then(|m| m.presences.get(key))
                .is_some_and(|p| p.mailbox.is_some())
        };
        let wanted: Vec<String> = ring
            .entries
            .iter()
            .filter(|e| e.copies.iter().any(|c| !c.acked && !held_here(&c.key)))
            .map(|e| e.message_id.clone())
            .collect();
        for message_id in wanted {
            let found =
                match self
                    .store
                    .message_deliveries(mesh_id, &message_id, limits::MAX_SEALED_KEYS)
                {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading a message's deliveries failed");
                        return;
                    }
                };
            let Some(found) = found else { continue };
            let Some(ring) = self.traffic.meshes.get_mut(mesh_id) else {
                return;
            };
            for d in found.deliveries.iter().filter(|d| d.acked_at.is_some()) {
                if let Some(c) = ring.copy_mut(d.seq) {
                    c.acked = true;
                }
            }
        }
    }

    /// The watched mesh's recent messages, newest first.
    pub(super) fn traffic_view(&mut self, mesh_id: &str) -> Vec<MessageView> {
        self.traffic_refresh(mesh_id);
        let (Some(ring), Some(mesh)) = (self.traffic.meshes.get(mesh_id), self.dir.mesh(mesh_id))
        else {
            return Vec::new();
        };
        let now = now_ms();
        let inflight = |key: &str, seq: i64| {
            mesh.presences
                .get(key)
                .and_then(|p| p.mailbox.as_ref())
                .is_some_and(|mb| mb.pushed(seq))
        };
        ring.entries
            .iter()
            .rev()
            .map(|e| {
                let recipients: Vec<CopyView> = e
                    .copies
                    .iter()
                    .map(|c| CopyView {
                        pubkey: c.key.clone(),
                        display_name: name_of(mesh, &c.key),
                        state: if c.acked {
                            DeliveryState::Acked
                        } else if e.expires_at <= now {
                            DeliveryState::Expired
                        } else if inflight(&c.key, c.seq) {
                            DeliveryState::Delivered
                        } else {
                            DeliveryState::Queued
                        },
                        redeliveries: c.pushes.saturating_sub(1),
                    })
                    .collect();
                let state = recipients
                    .iter()
                    .map(|c| c.state)
                    .min_by_key(|s| progress(*s))
                    .unwrap_or(DeliveryState::Queued);
                let to = match recipients.as_slice() {
                    [only] if e.target_spec == only.pubkey => only.display_name.clone(),
                    _ => e.target_spec.clone(),
                };
                MessageView {
                    message_id: e.message_id.clone(),
                    at: iso8601(e.created_at),
                    sender_pubkey: e.sender_key.clone(),
                    sender_name: e.sender_name.clone(),
                    target_spec: e.target_spec.clone(),
                    to,
                    priority: e.priority,
                    size: e.size,
                    state,
                    acked: recipients
                        .iter()
                        .filter(|c| c.state == DeliveryState::Acked)
                        .count(),
                    recipients,
                    untracked: e.untracked,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, seqs: &[i64]) -> Entry {
        Entry {
            message_id: id.into(),
            created_at: 0,
            expires_at: i64::MAX,
            sender_key: "s".into(),
            sender_name: "s".into(),
            target_spec: "*".into(),
            priority: Priority::Next,
            size: 3,
            copies: seqs
                .iter()
                .map(|&seq| Copy {
                    key: format!("k{seq}"),
                    seq,
                    pushes: 0,
                    acked: false,
                })
                .collect(),
            untracked: 0,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_and_its_indexes_follow() {
        let mut ring = Ring::new();
        for i in 0..(RECENT as i64 + 5) {
            ring.push(entry(&format!("m{i}"), &[i * 10, i * 10 + 1]));
        }
        assert_eq!(ring.entries.len(), RECENT);
        assert!(ring.copy_mut(0).is_none(), "the oldest is gone");
        assert!(!ring.by_id.contains_key("m4"));
        assert_eq!(ring.by_seq.len(), RECENT * 2);
        let last = (RECENT as i64 + 4) * 10 + 1;
        ring.copy_mut(last).unwrap().acked = true;
        assert!(ring.entries.back().unwrap().copies[1].acked);
    }

    #[test]
    fn ciphertext_size_is_the_decoded_length() {
        assert_eq!(decoded_len(""), 0);
        assert_eq!(decoded_len("YQ=="), 1);
        assert_eq!(decoded_len("YWI="), 2);
        assert_eq!(decoded_len("YWJj"), 3);
    }
}
