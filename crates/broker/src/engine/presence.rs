//! Presence after attach (see `attach.rs`): one presence per key with a grace period
//! across reconnects, status, summary and groups, `peers_list`, `members_list` and the
//! system presence events.

use claudemesh_proto::authority::PeerKind;
use claudemesh_proto::codes::Code;
use std::time::Instant;

use claudemesh_proto::frames::{
    BrokerFrame, ErrorFrame, GroupRef, JoinGroup, MemberInfo, MembersList, PeerInfo, PeersList,
    PresenceInfo, Reach, ReqId, Status, event,
};
use claudemesh_proto::limits;

use super::cluster::PresenceData;
use super::delivery::Mailbox;
use super::directory::{Mesh, Presence, groups_json, parse_groups};
use super::{ConnId, Engine, ReplySlot, TimerKind};
use crate::auth::Role;
use claudemesh_proto::time::{iso8601, now_ms};

/// Why a request from a mesh the broker no longer has is refused.
const NO_MESH: &str = "no such mesh on this broker";

impl Engine {
    /// A connection is gone: detach it; the presence enters its grace period if it was
    /// the last one. Unacked deliveries stay in the database for the next connection.
    pub(super) fn detach(&mut self, conn: ConnId, left: bool) {
        let Some(entry) = self.conns.remove(&conn) else {
            return;
        };
        self.metrics.connections_active.dec();
        let grace = self.timings.grace;
        let fresh = self.fresh_epoch();
        let Some(presence) = self
            .dir
            .mesh_mut(&entry.mesh_id)
            .and_then(|m| m.presences.get_mut(&entry.key))
        else {
            return;
        };
        presence.conns.retain(|c| *c != conn);
        if presence.conns.is_empty() {
            presence.mailbox = None;
            presence.epoch = fresh;
            let epoch = fresh;
            if left {
                // Closed on purpose: gone now, no grace (PROTOCOL.md §5.2).
                return self.end_grace(&entry.mesh_id, &entry.key, epoch);
            }
            self.publish(&entry.mesh_id, &entry.key);
            self.timer(
                Instant::now() + grace,
                TimerKind::Grace {
                    mesh: entry.mesh_id,
                    key: entry.key,
                    epoch,
                },
            );
        } else {
            // Another connection of the same key takes over; re-push what was in flight.
            presence.mailbox = Some(Mailbox::unloaded());
            self.publish(&entry.mesh_id, &entry.key);
            self.pump(&entry.mesh_id, &entry.key);
        }
    }

    /// After the state was loaded (at start, or rebuilt after a failed commit), with no
    /// other nodes: every identity that had a presence when its row was last written gets
    /// one back, in its grace period. To the peers that were connected, a broker restart
    /// is a drop of every connection, so a reconnect within the grace period is a
    /// re-attach (no event), and an identity that does not come back is announced as
    /// gone when the period ends: a restart storm costs no presence events, and leaves no
    /// ghosts. (With several nodes the `presences` rows of a dead node do the same; see
    /// `cluster.rs`.)
    pub(super) fn restore_presences(&mut self) {
        if self.cluster.is_some() {
            return;
        }
        let ends = Instant::now() + self.timings.grace;
        let epoch = self.fresh_epoch();
        let mut restored = Vec::new();
        for (mesh_id, mesh) in &mut self.dir.meshes {
            for peer in mesh.peers.values() {
                let member = mesh
                    .members
                    .get(&peer.member_id)
                    .filter(|m| m.removed.is_none());
                let Some(member) = member.filter(|_| peer.online && peer.retired_at.is_none())
                else {
                    continue;
                };
                let presence = Presence {
                    key: peer.pubkey.clone(),
                    member_id: member.id.clone(),
                    member_pubkey: member.pubkey.clone(),
                    role: match peer.kind {
                        PeerKind::Session => Role::Session,
                        PeerKind::Member => Role::ControlPlane,
                    },
                    info: PresenceInfo {
                        display_name: Some(peer.display_name.clone()),
                        ..PresenceInfo::default()
                    },
                    display_name: peer.display_name.clone(),
                    status: Status::Idle,
                    summary: None,
                    groups: parse_groups(&peer.groups_json),
                    connected_at: peer.last_seen,
                    conns: Vec::new(),
                    epoch,
                    mailbox: None,
                };
                restored.push((mesh_id.clone(), presence));
            }
        }
        if restored.is_empty() {
            return;
        }
        for (mesh_id, presence) in restored {
            if let Some(mesh) = self.dir.mesh_mut(&mesh_id) {
                mesh.presences.insert(presence.key.clone(), presence);
            }
        }
        // One timer for all of them (a rebuild after a failed commit restores again,
        // with a new epoch: an older restore's timer then finds nothing).
        self.timer(ends, TimerKind::RestoredGrace { epoch });
    }

    /// The grace period of one restore is over: whoever of it has not come back is gone.
    pub(super) fn end_restored_grace(&mut self, epoch: u64) {
        let gone: Vec<(String, String)> = self
            .dir
            .meshes
            .iter()
            .flat_map(|(id, m)| {
                m.presences
                    .values()
                    .filter(|p| p.epoch == epoch && p.conns.is_empty())
                    .map(move |p| (id.clone(), p.key.clone()))
            })
            .collect();
        for (mesh, key) in gone {
            self.end_grace(&mesh, &key, epoch);
        }
    }

    /// Grace over: if nobody re-attached, the presence is gone and peers hear `peer_left`.
    pub(super) fn end_grace(&mut self, mesh_id: &str, key: &str, epoch: u64) {
        let Some(mesh) = self.dir.mesh_mut(mesh_id) else {
            return;
        };
        let gone = mesh
            .presences
            .get(key)
            .is_some_and(|p| p.conns.is_empty() && p.epoch == epoch);
        if !gone {
            return;
        }
        let Some(p) = mesh.presences.remove(key) else {
            return;
        };
        let elsewhere = mesh.held_elsewhere(key);
        if let Some(peer) = mesh.peers.get_mut(key) {
            peer.last_seen = now_ms();
            peer.online = false;
            let peer = peer.clone();
            if let Err(e) = self.store.upsert_peer(&peer) {
                self.poison(&e);
            }
        }
        self.publish(mesh_id, key);
        // Still present on another node: nobody hears it leave.
        if !elsewhere {
            self.announce(mesh_id, key, event::PEER_LEFT, &p.display_name, &p.groups);
        }
    }

    pub(super) fn list_peers(
        &mut self,
        conn: ConnId,
        slot: ReplySlot,
        mesh_id: &str,
        req_id: Option<ReqId>,
    ) {
        let Some(mesh) = self.dir.mesh(mesh_id) else {
            return self.reply_error(conn, slot, Code::Unauthorized, NO_MESH, req_id);
        };
        let peers = self.peer_infos(mesh);
        self.reply(
            conn,
            slot,
            BrokerFrame::PeersList(PeersList { peers, req_id }),
        );
    }

    pub(super) fn list_members(
        &mut self,
        conn: ConnId,
        slot: ReplySlot,
        mesh_id: &str,
        req_id: Option<ReqId>,
    ) {
        let Some(mesh) = self.dir.mesh(mesh_id) else {
            return self.reply_error(conn, slot, Code::Unauthorized, NO_MESH, req_id);
        };
        let members = self.member_infos(mesh);
        let list = MembersList { members, req_id };
        self.reply(conn, slot, BrokerFrame::MembersList(list));
    }

    /// The live peers of a mesh, on this node and the others (`list_peers`).
    pub(super) fn peer_infos(&self, mesh: &Mesh) -> Vec<PeerInfo> {
        let mut peers: Vec<PeerInfo> = mesh
            .presences
            .values()
            .filter(|p| !p.conns.is_empty())
            .map(|p| PresenceData::of(p).peer_info(&p.key, self.v1_only))
            .collect();
        // Live on other nodes (several nodes on one database).
        peers.extend(self.remote_peers(mesh));
        peers
    }

    /// The members of a mesh and their sessions, with how each is reached (`list_members`).
    pub(super) fn member_infos(&self, mesh: &Mesh) -> Vec<MemberInfo> {
        let reach = |key: &str| {
            Some(
                match mesh.presences.get(key).filter(|p| !p.conns.is_empty()) {
                    Some(p) => p.info.reach.unwrap_or(Reach::Live),
                    None => self.live_elsewhere(mesh, key).unwrap_or(Reach::Queued),
                },
            )
        };
        let online = |key: &str| {
            mesh.presences.get(key).is_some_and(|p| !p.conns.is_empty())
                || self.live_elsewhere(mesh, key).is_some()
        };
        let mut members: Vec<MemberInfo> = Vec::new();
        for m in mesh.members.values().filter(|m| m.removed.is_none()) {
            let peer = mesh.peers.get(&m.pubkey);
            members.push(MemberInfo {
                pubkey: m.pubkey.clone(),
                member_id: m.id.clone(),
                member_pubkey: m.pubkey.clone(),
                display_name: m.display_name.clone(),
                role: m.role.as_str().to_owned(),
                kind: PeerKind::Member.as_str().to_owned(),
                groups: peer
                    .map(|p| parse_groups(&p.groups_json))
                    .unwrap_or_default(),
                online: online(&m.pubkey),
                e2e_multicast: peer.is_some_and(|p| p.e2e_multicast),
                seen: peer.is_some(),
                reach: reach(&m.pubkey),
                last_seen: peer.map(|p| iso8601(p.last_seen)),
            });
        }
        for p in mesh
            .peers
            .values()
            .filter(|p| p.kind == PeerKind::Session && mesh.is_recipient(&p.pubkey))
        {
            let Some(m) = mesh.active_member(&p.member_id) else {
                continue;
            };
            let live = mesh.presences.get(&p.pubkey);
            members.push(MemberInfo {
                pubkey: p.pubkey.clone(),
                member_id: m.id.clone(),
                member_pubkey: m.pubkey.clone(),
                display_name: p.display_name.clone(),
                role: m.role.as_str().to_owned(),
                kind: PeerKind::Session.as_str().to_owned(),
                groups: live
                    .map(|l| l.groups.clone())
                    .unwrap_or_else(|| parse_groups(&p.groups_json)),
                online: online(&p.pubkey),
                e2e_multicast: p.e2e_multicast,
                seen: true,
                reach: reach(&p.pubkey),
                last_seen: Some(iso8601(p.last_seen)),
            });
        }
        members.sort_by(|a, b| a.pubkey.cmp(&b.pubkey));
        members
    }

    pub(super) fn set_status(&mut self, mesh_id: &str, key: &str, status: Status) {
        let Some(p) = self
            .dir
            .mesh_mut(mesh_id)
            .and_then(|m| m.presences.get_mut(key))
        else {
            return;
        };
        let became_idle = p.status != Status::Idle && status == Status::Idle;
        let changed = p.status != status;
        p.status = status;
        if changed {
            self.publish(mesh_id, key);
        }
        if became_idle {
            self.pump(mesh_id, key);
        }
    }

    /// Extension `reachability`: how messages reach this presence now.
    pub(super) fn set_reach(&mut self, mesh_id: &str, key: &str, reach: Reach) {
        if let Some(p) = self
            .dir
            .mesh_mut(mesh_id)
            .and_then(|m| m.presences.get_mut(key))
        {
            p.info.reach = Some(reach);
            self.publish(mesh_id, key);
        }
    }

    pub(super) fn set_summary(
        &mut self,
        conn: ConnId,
        mesh_id: &str,
        key: &str,
        summary: Option<String>,
    ) {
        if summary
            .as_ref()
            .is_some_and(|s| s.len() > limits::MAX_SUMMARY_BYTES)
        {
            let err = ErrorFrame::new(
                Code::PayloadTooLarge,
                format!("summary is longer than {} bytes", limits::MAX_SUMMARY_BYTES),
            );
            return self.out(conn, BrokerFrame::Error(err));
        }
        if let Some(p) = self
            .dir
            .mesh_mut(mesh_id)
            .and_then(|m| m.presences.get_mut(key))
        {
            p.summary = summary.filter(|s| !s.is_empty());
            self.publish(mesh_id, key);
        }
    }

    pub(super) fn join_group(&mut self, conn: ConnId, mesh_id: &str, key: &str, g: JoinGroup) {
        if g.name.is_empty() || g.name.len() > limits::MAX_SHORT_TEXT_BYTES {
            return self.out(
                conn,
                BrokerFrame::Error(
                    ErrorFrame::new(Code::Malformed, "bad group name").with_req_id(g.req_id),
                ),
            );
        }
        let Some(p) = self
            .dir
            .mesh_mut(mesh_id)
            .and_then(|m| m.presences.get_mut(key))
        else {
            return;
        };
        if let Some(existing) = p.groups.iter_mut().find(|x| x.name == g.name) {
            existing.role = g.role;
        } else {
            if p.groups.len() >= limits::MAX_GROUPS {
                return self.out(
                    conn,
                    BrokerFrame::Error(
                        ErrorFrame::new(Code::Malformed, "too many groups").with_req_id(g.req_id),
                    ),
                );
            }
            p.groups.push(GroupRef {
                name: g.name,
                role: g.role,
            });
        }
        self.persist_groups(mesh_id, key);
    }

    pub(super) fn leave_group(&mut self, mesh_id: &str, key: &str, name: &str) {
        let Some(p) = self
            .dir
            .mesh_mut(mesh_id)
            .and_then(|m| m.presences.get_mut(key))
        else {
            return;
        };
        p.groups.retain(|g| g.name != name);
        self.persist_groups(mesh_id, key);
    }

    /// Group memberships are durable so an offline member of `@name` still gets its messages.
    fn persist_groups(&mut self, mesh_id: &str, key: &str) {
        let Some(mesh) = self.dir.mesh_mut(mesh_id) else {
            return;
        };
        let Some(groups) = mesh.presences.get(key).map(|p| groups_json(&p.groups)) else {
            return;
        };
        if let Some(peer) = mesh.peers.get_mut(key) {
            peer.groups_json = groups;
            let peer = peer.clone();
            if let Err(e) = self.store.upsert_peer(&peer) {
                self.poison(&e);
            }
        }
        self.publish(mesh_id, key);
        self.note_peer(mesh_id, key);
    }
}
