//! Presence events (`peer_joined`, `peer_returned`, `peer_left`; PROTOCOL.md §6.2),
//! coalesced. What a batch announces is kept until the batch commits (an event that was
//! rolled back never happened), then queued per mesh, and each mesh's queue goes out at
//! most once per tick: at once when the mesh was quiet, else when its tick comes. The
//! tick is `Timings::presence_tick` (100 ms), longer in a mesh so large that its
//! recipients would cost more than [`PER_RECIPIENT`] each per tick.
//!
//! A key appears at most once in a queue. A change that the next one undoes within the
//! tick (a join and its leave, a drop and its return) is dropped: the recipients' view is
//! the same before and after. Each event is rendered once and the bytes are shared by
//! every recipient. A client that announced `presence-batch` gets the queue as one
//! `presence` frame (at most [`EVENTS_PER_FRAME`] events, fewer in a large mesh: see
//! [`EVENTS_PER_TICK`]; `more` counts the rest: leaves among them go with the next
//! tick, joins are not sent);
//! any other gets one v1 system push per event, at most [`V1_EVENTS_PER_TICK`] per tick.
//! When not all fit, leaves go first: a missed leave would leave a ghost, a missed join
//! only a peer that `list_peers` shows.
//!
//! So a storm of N connections costs each recipient O(ticks) frames of bounded size, not
//! O(N) frames, and the engine at most one frame per recipient per tick.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use claudemesh_proto::frames::{BrokerFrame, GroupRef, PresenceBatch, PresenceEvent, Push, event};
use claudemesh_proto::time::{iso8601, now_ms};

use super::{ConnId, Engine, Outbound, TimerKind};

/// Most v1 system pushes one recipient gets per tick; the rest of a storm is dropped.
pub const V1_EVENTS_PER_TICK: usize = 16;
/// Most events in one `presence` frame (see `more`: leaves past it wait a tick).
pub const EVENTS_PER_FRAME: usize = 256;
/// Events one tick of a mesh may send, summed over its recipients: a frame carries
/// this divided by the recipients (between [`V1_EVENTS_PER_TICK`] and
/// [`EVENTS_PER_FRAME`]), so a storm in a large mesh does not cost O(N²) bytes.
pub const EVENTS_PER_TICK: usize = 8_192;
/// Engine time allowed per recipient per tick: a mesh's tick is at least this times
/// its live presences (100 ms up to 2 000 of them, 0.5 s at 10 000).
pub const PER_RECIPIENT: Duration = Duration::from_micros(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Joined,
    Returned,
    Left,
}

impl Kind {
    fn of(name: &str) -> Self {
        match name {
            event::PEER_JOINED => Kind::Joined,
            event::PEER_LEFT => Kind::Left,
            _ => Kind::Returned,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Joined => event::PEER_JOINED,
            Kind::Returned => event::PEER_RETURNED,
            Kind::Left => event::PEER_LEFT,
        }
    }
}

/// What happened to one key since the mesh's last presence frame.
struct Change {
    key: String,
    first: Kind,
    last: Kind,
    name: String,
    groups: Vec<GroupRef>,
}

impl Change {
    /// The event the recipients should hear, or `None` when the changes cancel out.
    fn net(&self) -> Option<Kind> {
        let before = self.first == Kind::Left; // it was present: it left first
        let after = self.last != Kind::Left;
        match (before, after) {
            (true, true) | (false, false) => None,
            (true, false) => Some(Kind::Left),
            (false, true) if self.first == Kind::Joined => Some(Kind::Joined),
            (false, true) => Some(self.last),
        }
    }
}

#[derive(Default)]
struct MeshQueue {
    changes: Vec<Change>,
    by_key: HashMap<String, usize>,
    /// The next frame may not go before this (a tick after the last one).
    next_at: Option<Instant>,
}

impl MeshQueue {
    fn add(&mut self, c: Change) {
        match self
            .by_key
            .get(&c.key)
            .and_then(|i| self.changes.get_mut(*i))
        {
            Some(existing) => {
                existing.last = c.last;
                existing.name = c.name;
                existing.groups = c.groups;
            }
            None => {
                self.by_key.insert(c.key.clone(), self.changes.len());
                self.changes.push(c);
            }
        }
    }

    /// When the queue goes out: at once (`now`) after a quiet tick, else a tick after
    /// the last frame; `None` when it is empty.
    fn due(&self, now: Instant) -> Option<Instant> {
        if self.changes.is_empty() {
            return None;
        }
        Some(self.next_at.map_or(now, |t| t.max(now)))
    }
}

/// The engine's presence events: this batch's, and what waits for its mesh's tick.
#[derive(Default)]
pub(super) struct Announcements {
    batch: Vec<(String, Change)>,
    meshes: HashMap<String, MeshQueue>,
    /// When the presence timer is set for, if it is.
    timer_at: Option<Instant>,
}

impl Announcements {
    /// Forget everything (the state is being rebuilt and every connection closed).
    pub fn clear(&mut self) {
        self.batch.clear();
        self.meshes.clear();
    }
}

/// One event rendered as a v1 system push, with its key.
struct Rendered {
    key: String,
    text: Utf8Bytes,
}

/// A frame's JSON, the one way the broker renders one (connections use it too).
pub(crate) fn render(frame: &BrokerFrame) -> Utf8Bytes {
    // Serializing our own frame types cannot fail; an empty object would be harmless.
    Utf8Bytes::from(serde_json::to_string(frame).unwrap_or_else(|_| "{}".to_owned()))
}

impl Engine {
    /// A presence event for `key`'s mesh, sent once this batch has committed and the
    /// mesh's tick has come (see the module doc).
    pub(super) fn announce(
        &mut self,
        mesh_id: &str,
        key: &str,
        ev: &str,
        name: &str,
        groups: &[GroupRef],
    ) {
        let kind = Kind::of(ev);
        self.announcements.batch.push((
            mesh_id.to_owned(),
            Change {
                key: key.to_owned(),
                first: kind,
                last: kind,
                name: name.to_owned(),
                groups: groups.to_vec(),
            },
        ));
    }

    /// After the batch's commit: queue its events (or drop them when it failed), send
    /// every mesh's queue whose tick has come, and set the timer for the next one. When
    /// the batch failed, every queue goes out now: the state is about to be rebuilt and
    /// every connection closed, and what was queued did happen.
    pub(super) fn flush_announcements(&mut self, committed: bool) {
        let batch = std::mem::take(&mut self.announcements.batch);
        if committed {
            for (mesh, change) in batch {
                self.announcements
                    .meshes
                    .entry(mesh)
                    .or_default()
                    .add(change);
            }
        }
        let now = Instant::now();
        let due: Vec<String> = self
            .announcements
            .meshes
            .iter()
            .filter(|(_, q)| q.due(now).is_some_and(|at| !committed || at <= now))
            .map(|(m, _)| m.clone())
            .collect();
        for mesh in due {
            let changes = match self.announcements.meshes.get_mut(&mesh) {
                Some(q) => {
                    q.by_key.clear();
                    std::mem::take(&mut q.changes)
                }
                None => continue,
            };
            let (recipients, later) = self.send_changes(&mesh, changes);
            let tick = self.tick_for(recipients);
            if let Some(q) = self.announcements.meshes.get_mut(&mesh) {
                q.next_at = Some(now + tick);
                // What did not fit goes with the next tick (still coalescing with what
                // happens meanwhile).
                for c in later {
                    q.add(c);
                }
            }
        }
        // A quiet mesh whose last frame is a tick old needs no entry any more.
        self.announcements
            .meshes
            .retain(|_, q| !q.changes.is_empty() || q.next_at.is_some_and(|t| now < t));
        let next = self
            .announcements
            .meshes
            .values()
            .filter_map(|q| q.due(now))
            .min();
        if let Some(at) = next
            && self.announcements.timer_at.is_none_or(|t| t > at)
        {
            self.announcements.timer_at = Some(at);
            self.timer(at, TimerKind::Presence);
        }
    }

    /// The presence timer fired: the flush at the end of this turn sends what is due.
    pub(super) fn presence_timer(&mut self) {
        self.announcements.timer_at = None;
    }

    /// The tick of a mesh with `recipients` live presences here: the configured one, or
    /// longer in a large mesh, so that its presence frames cost at most one per
    /// [`PER_RECIPIENT`] of engine time however many peers it has.
    fn tick_for(&self, recipients: usize) -> Duration {
        let scaled = PER_RECIPIENT.saturating_mul(u32::try_from(recipients).unwrap_or(u32::MAX));
        self.timings.presence_tick.max(scaled)
    }

    /// Send one mesh's changes to every live presence of the mesh on this node. Returns
    /// how many presences that is, and the events that did not fit in this tick's frames
    /// (for the next tick).
    fn send_changes(&mut self, mesh_id: &str, changes: Vec<Change>) -> (usize, Vec<Change>) {
        let total = changes.len();
        let mut events: Vec<(Change, Kind)> = changes
            .into_iter()
            .filter_map(|c| c.net().map(|k| (c, k)))
            .collect();
        let cancelled = total - events.len();
        // Leaves first when not all of them fit (see the module doc); otherwise in order.
        if events.len() > V1_EVENTS_PER_TICK {
            events.sort_by_key(|(_, k)| *k != Kind::Left);
        }
        let Some(mesh) = self.dir.mesh(mesh_id) else {
            return (0, Vec::new());
        };
        let targets: Vec<(String, ConnId)> = mesh
            .presences
            .values()
            .filter_map(|p| p.target().map(|c| (p.key.clone(), c)))
            .collect();
        let recipients = targets.len();
        if events.is_empty() || targets.is_empty() {
            self.metrics
                .presence_events_dropped_total
                .inc_by((cancelled * recipients) as u64);
            return (recipients, Vec::new());
        }
        let share = (EVENTS_PER_TICK / recipients).clamp(V1_EVENTS_PER_TICK, EVENTS_PER_FRAME);
        // What does not fit: leaves wait for the next tick (a missed leave is a ghost);
        // joins and returns are not sent (a missed one is a peer `list_peers` shows, and
        // every recipient hearing every join of a storm would cost O(N²) bytes).
        let overflow = events.split_off(events.len().min(share));
        let left_out = overflow.len();
        let later: Vec<Change> = overflow
            .into_iter()
            .filter(|(_, k)| *k == Kind::Left)
            .map(|(c, k)| Change {
                first: k,
                last: k,
                ..c
            })
            .collect();
        let in_frame = events.len();
        let created_at = iso8601(now_ms());
        let event_of = |c: &Change, k: Kind| PresenceEvent {
            event: k.name().to_owned(),
            name: c.name.clone(),
            pubkey: c.key.clone(),
            groups: Some(c.groups.clone()),
        };
        let mut batch: Option<Utf8Bytes> = None;
        let mut singles: Option<Vec<Rendered>> = None;
        let mut frames = 0u64;
        let mut dropped = (cancelled * targets.len()) as u64;
        for (own, conn) in targets {
            let wants_batch = self.conns.get(&conn).is_some_and(|e| e.presence_batch);
            if wants_batch {
                if events.iter().all(|(c, _)| c.key == own) {
                    continue;
                }
                let text = batch.get_or_insert_with(|| {
                    render(&BrokerFrame::Presence(PresenceBatch {
                        mesh_id: mesh_id.to_owned(),
                        created_at: created_at.clone(),
                        events: events
                            .iter()
                            .take(in_frame)
                            .map(|(c, k)| event_of(c, *k))
                            .collect(),
                        more: (left_out > 0).then_some(left_out as u64),
                    }))
                });
                let text = text.clone();
                frames += 1;
                dropped += (left_out - later.len()) as u64;
                self.deliver_now(conn, Outbound::Text(Box::new(text)));
                continue;
            }
            let rendered = singles.get_or_insert_with(|| {
                // At most one more than a client's share: its own may be among them.
                events
                    .iter()
                    .take(V1_EVENTS_PER_TICK + 1)
                    .map(|(c, k)| Rendered {
                        key: c.key.clone(),
                        text: render(&BrokerFrame::Push(Push::system(
                            mesh_id,
                            &created_at,
                            event_of(c, *k),
                        ))),
                    })
                    .collect()
            });
            let mine: Vec<Utf8Bytes> = rendered
                .iter()
                .filter(|r| r.key != own)
                .take(V1_EVENTS_PER_TICK)
                .map(|r| r.text.clone())
                .collect();
            // Past a v1 client's share (the rest of the frame's share is not sent to it).
            let about_me = events.iter().any(|(c, _)| c.key == own);
            dropped += (in_frame - usize::from(about_me) - mine.len()) as u64;
            frames += mine.len() as u64;
            for text in mine {
                self.deliver_now(conn, Outbound::Text(Box::new(text)));
            }
        }
        self.metrics.presence_frames_total.inc_by(frames);
        self.metrics.presence_events_dropped_total.inc_by(dropped);
        (recipients, later)
    }
}

#[cfg(test)]
mod tests {
    use super::{Change, Kind};

    fn change(first: Kind, last: Kind) -> Change {
        Change {
            key: "k".into(),
            first,
            last,
            name: "n".into(),
            groups: Vec::new(),
        }
    }

    #[test]
    fn a_change_undone_within_the_tick_is_not_sent() {
        use Kind::{Joined, Left, Returned};
        // (first, last) → what the recipients hear.
        let cases = [
            (Joined, Joined, Some(Joined)),
            (Returned, Returned, Some(Returned)),
            (Left, Left, Some(Left)),
            (Joined, Left, None),
            (Returned, Left, None),
            (Left, Returned, None),
            (Left, Joined, None),
            (Joined, Returned, Some(Joined)),
        ];
        for (first, last, heard) in cases {
            assert_eq!(change(first, last).net(), heard, "{first:?} then {last:?}");
        }
    }
}
