//! Session identities' lifetime (PROTOCOL.md §5.9): the cap per member, retirement, and
//! `retire_sessions`. A retired session key is no recipient of anything (direct, `*`,
//! `@group`), is not listed by `list_members`, and its undelivered copies are dropped.
//! It retires when it has been offline for the retention period (swept with the purge),
//! when its member asks (`retire_sessions`), or when its member connects a new session
//! past the cap (the longest-offline one goes first). A retired key that connects again
//! is simply a session again, counted against the cap like a new one.
//!
//! What it must not do: retire a member key, or a session that is connected now.

use claudemesh_proto::authority::PeerKind;
use claudemesh_proto::codes::Code;
use claudemesh_proto::frames::{BrokerFrame, RetireSessions, SessionsRetired};

use super::{ConnId, Engine, ReplySlot};
use crate::auth::Rejection;

impl Engine {
    /// Which offline sessions of `member_id` must retire so that a new (or returning)
    /// session `key` fits under the cap; `Err` when every counted session is live.
    pub(super) fn sessions_to_evict(
        &self,
        mesh_id: &str,
        member_id: &str,
        key: &str,
    ) -> Result<Vec<String>, Rejection> {
        let Some(mesh) = self.dir.mesh(mesh_id) else {
            return Ok(Vec::new());
        };
        let mut counted: Vec<(bool, i64, &str)> = mesh
            .peers
            .values()
            .filter(|p| p.member_id == member_id && p.kind == PeerKind::Session)
            .filter(|p| p.retired_at.is_none() && p.pubkey != key)
            .map(|p| {
                // Live here or on another node (several nodes on one database).
                let live = mesh.present(&p.pubkey);
                (live, p.last_seen, p.pubkey.as_str())
            })
            .collect();
        let already_counted = mesh.peers.get(key).is_some_and(|p| p.retired_at.is_none());
        if already_counted || counted.len() < self.sessions_per_member {
            return Ok(Vec::new());
        }
        let excess = counted.len() + 1 - self.sessions_per_member;
        // Offline first, longest offline first.
        counted.sort_unstable();
        let evict: Vec<String> = counted
            .iter()
            .take_while(|(live, _, _)| !live)
            .take(excess)
            .map(|(_, _, k)| (*k).to_owned())
            .collect();
        if evict.len() < excess {
            return Err(Rejection::new(
                Code::TooManySessions,
                format!(
                    "this member already has {} live sessions in this mesh, the most allowed",
                    self.sessions_per_member
                ),
            ));
        }
        Ok(evict)
    }

    /// Retire session `key` now (it must be offline). Returns whether it was retired.
    pub(super) fn retire(&mut self, mesh_id: &str, key: &str, now: i64) -> bool {
        let Some(mesh) = self.dir.mesh_mut(mesh_id) else {
            return false;
        };
        if mesh.present(key) {
            return false;
        }
        let Some(peer) = mesh.peers.get_mut(key) else {
            return false;
        };
        if peer.kind != PeerKind::Session || peer.retired_at.is_some() {
            return false;
        }
        peer.retired_at = Some(now);
        let row = peer.clone();
        if let Err(e) = self.store.upsert_peer(&row) {
            self.poison(&e);
            return false;
        }
        self.note_peer(mesh_id, key);
        match self.store.drop_undelivered(mesh_id, key, now) {
            Ok(n) => {
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                self.queue_depth = (self.queue_depth - n).max(0);
                tracing::info!(mesh = %mesh_id, key = %key, dropped = n, "session identity retired");
            }
            Err(e) => self.poison(&e),
        }
        true
    }

    /// Retire every session offline for longer than the retention period.
    pub(super) fn retire_stale(&mut self, now: i64) {
        let retention =
            i64::try_from(self.timings.session_retention.as_millis()).unwrap_or(i64::MAX);
        let stale: Vec<(String, String)> = self
            .dir
            .meshes
            .values()
            .flat_map(|mesh| {
                mesh.peers
                    .values()
                    .filter(|p| p.kind == PeerKind::Session && p.retired_at.is_none())
                    .filter(|p| !mesh.present(&p.pubkey))
                    .filter(|p| now.saturating_sub(p.last_seen) >= retention)
                    .map(|p| (p.mesh_id.clone(), p.pubkey.clone()))
            })
            .collect();
        for (mesh, key) in stale {
            self.retire(&mesh, &key, now);
        }
    }

    /// `retire_sessions`: retire the listed session keys of the caller's own member that
    /// are offline; answered with the keys retired now.
    pub(super) fn retire_sessions(
        &mut self,
        conn: ConnId,
        slot: ReplySlot,
        mesh_id: &str,
        caller: &str,
        req: RetireSessions,
    ) {
        let member = self.dir.mesh(mesh_id).and_then(|m| {
            m.peers
                .get(caller)
                .map(|p| p.member_id.clone())
                .or_else(|| m.member_by_key.get(caller).cloned())
        });
        let Some(member) = member else {
            return self.reply_error(conn, slot, Code::Unauthorized, "unknown caller", req.req_id);
        };
        if req.pubkeys.len() > 1_000 {
            return self.reply_error(
                conn,
                slot,
                Code::PayloadTooLarge,
                "at most 1000 keys at once",
                req.req_id,
            );
        }
        let now = claudemesh_proto::time::now_ms();
        let mut retired = Vec::new();
        for key in req.pubkeys {
            let own = self
                .dir
                .mesh(mesh_id)
                .and_then(|m| m.peers.get(&key))
                .is_some_and(|p| p.member_id == member);
            if own && self.retire(mesh_id, &key, now) {
                retired.push(key);
            }
        }
        self.reply(
            conn,
            slot,
            BrokerFrame::SessionsRetired(SessionsRetired {
                retired,
                req_id: req.req_id,
            }),
        );
    }
}
