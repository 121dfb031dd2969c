//! Presence: attaching authenticated connections (membership, revocation and replay
//! checks), one presence per key with a grace period across reconnects, status, summary
//! and groups, `peers_list`, `members_list` and the system presence events.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use claudemesh_proto::codes;
use claudemesh_proto::frames::{
    BrokerFrame, ErrorFrame, EventData, GroupRef, HelloAck, JoinGroup, MemberInfo, MembersList,
    PeerInfo, PeersList, Priority, Push, Reach, ReqId, Status, event,
};
use claudemesh_proto::limits;
use claudemesh_store::PeerRow;
use tokio::sync::oneshot;

use super::delivery::Mailbox;
use super::directory::{Presence, groups_json, parse_groups};
use super::{
    Attached, ConnEntry, ConnHandle, ConnId, Effect, Engine, Outbound, ReplySlot, TimerKind,
};
use crate::auth::{Rejection, Role, VerifiedHello};
use claudemesh_proto::time::{iso8601, now_ms};

/// Protocol version this broker speaks; extensions are negotiated by capability.
pub const PROTOCOL_VERSION: u32 = 1;

/// Capabilities this broker announces in `hello_ack`.
pub fn capabilities() -> Vec<String> {
    use claudemesh_proto::codes::cap;
    [
        cap::E2E_MULTICAST,
        cap::LIST_MEMBERS,
        cap::OFFLINE_QUEUE,
        cap::LEASES,
        cap::MESH_ADMIN,
        cap::MESSAGE_STATUS,
        cap::REACHABILITY,
        cap::SESSION_RETIRE,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

impl Engine {
    fn reject(&mut self, reply: oneshot::Sender<Result<Attached, Rejection>>, r: Rejection) {
        let _ = reply.send(Err(r));
    }

    pub(super) fn attach(
        &mut self,
        hello: VerifiedHello,
        conn: ConnHandle,
        reply: oneshot::Sender<Result<Attached, Rejection>>,
    ) {
        let now = now_ms();
        let Some(mesh) = self.dir.mesh(&hello.mesh_id) else {
            return self.reject(
                reply,
                Rejection::new(codes::UNAUTHORIZED, "no such mesh on this broker"),
            );
        };
        let member = match mesh.members.get(&hello.member_id) {
            Some(m) if m.pubkey == hello.member_pubkey => m.clone(),
            Some(_) if hello.role == Role::Session => {
                return self.reject(
                    reply,
                    Rejection::new(
                        codes::PARENT_MEMBER_ID_MISMATCH,
                        "parentMemberId does not belong to parentMemberPubkey",
                    ),
                );
            }
            _ => {
                return self.reject(
                    reply,
                    Rejection::new(codes::UNAUTHORIZED, "not a member of this mesh"),
                );
            }
        };
        match member.removed.as_deref() {
            Some("revoked") => {
                let mut r =
                    Rejection::new(codes::REVOKED, "this member has been revoked from the mesh");
                r.close = codes::close::REVOKED;
                return self.reject(reply, r);
            }
            Some(_) => {
                return self.reject(
                    reply,
                    Rejection::new(codes::UNAUTHORIZED, "this member was removed from the mesh"),
                );
            }
            None => {}
        }
        // A key that is a member key cannot be used as another identity's session key
        // (this covers hello.sessionPubkey too, which carries no proof of possession).
        if hello.key != member.pubkey && mesh.member_by_key.contains_key(&hello.key) {
            return self.reject(
                reply,
                Rejection::new(codes::BAD_SESSION_PUBKEY, "sessionPubkey is a member key"),
            );
        }
        if let Some(p) = mesh.peers.get(&hello.key)
            && p.member_id != member.id
        {
            return self.reject(
                reply,
                Rejection::new(
                    codes::BAD_SESSION_PUBKEY,
                    "sessionPubkey belongs to another member",
                ),
            );
        }
        let session_key = hello.role == Role::Session || hello.key != member.pubkey;
        let evict = if session_key {
            match self.sessions_to_evict(&hello.mesh_id, &member.id, &hello.key) {
                Ok(evict) => evict,
                Err(r) => return self.reject(reply, r),
            }
        } else {
            Vec::new()
        };
        match self.store.remember_signature(
            &hello.signature,
            hello.timestamp + 2 * limits::MAX_CLOCK_SKEW_MS,
        ) {
            Ok(true) => {}
            Ok(false) => {
                return self.reject(
                    reply,
                    Rejection::new(codes::REPLAY, "this signed hello was already used"),
                );
            }
            Err(e) => {
                self.poison(&e);
                return self.reject(
                    reply,
                    Rejection::new(codes::UNAVAILABLE, "broker storage unavailable"),
                );
            }
        }

        let mesh_id = hello.mesh_id.clone();
        let key = hello.key.clone();
        for old in &evict {
            self.retire(&mesh_id, old, now);
        }
        let e2e = hello
            .capabilities()
            .iter()
            .any(|c| c == codes::cap::E2E_MULTICAST);
        let display_name = hello
            .presence
            .display_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| member.display_name.clone());
        let Some(mesh) = self.dir.mesh_mut(&mesh_id) else {
            return;
        };
        let known = mesh.peers.get(&key).cloned();
        let hello_groups = hello.presence.groups.clone();

        // Replace an older connection of the same presence and session id.
        let replaced: Vec<ConnId> = mesh
            .presences
            .get(&key)
            .map(|p| {
                p.conns
                    .iter()
                    .copied()
                    .filter(|c| {
                        self.conns
                            .get(c)
                            .is_some_and(|e| e.session_id == hello.presence.session_id)
                    })
                    .collect()
            })
            .unwrap_or_default();

        let existing = mesh.presences.contains_key(&key);
        let presence = mesh
            .presences
            .entry(key.clone())
            .or_insert_with(|| Presence {
                key: key.clone(),
                member_id: member.id.clone(),
                member_pubkey: member.pubkey.clone(),
                role: hello.role,
                info: hello.presence.clone(),
                display_name: display_name.clone(),
                status: Status::Idle,
                summary: None,
                groups: known
                    .as_ref()
                    .map(|p| parse_groups(&p.groups_json))
                    .unwrap_or_default(),
                connected_at: now,
                conns: Vec::new(),
                epoch: 0,
                mailbox: None,
            });
        presence.info = hello.presence.clone();
        presence.display_name = display_name.clone();
        presence.role = hello.role;
        if let Some(groups) = hello_groups {
            presence.groups = groups;
        }
        let was_live = !presence.conns.is_empty();
        presence.conns.retain(|c| !replaced.contains(c));
        presence.conns.push(conn.id);
        if presence.mailbox.is_none() {
            presence.mailbox = Some(Mailbox::unloaded());
        }
        let ack = HelloAck {
            presence_id: key.clone(),
            member_display_name: member.display_name.clone(),
            protocol_version: PROTOCOL_VERSION,
            capabilities: if self.v1_only {
                Vec::new()
            } else {
                capabilities()
            },
            member_id: Some(member.id.clone()),
            member_role: Some(member.role.clone()),
            status: existing.then_some(presence.status),
            summary: if existing {
                presence.summary.clone()
            } else {
                None
            },
            groups: Some(presence.groups.clone()),
            req_id: hello.req_id.clone(),
        };
        let groups = presence.groups.clone();
        let peer = PeerRow {
            pubkey: key.clone(),
            mesh_id: mesh_id.clone(),
            member_id: member.id.clone(),
            kind: if session_key { "session" } else { "member" }.to_owned(),
            display_name: display_name.clone(),
            groups_json: groups_json(&groups),
            last_seen: now,
            e2e_multicast: e2e,
            retired_at: None,
        };
        mesh.peers.insert(key.clone(), peer.clone());
        if let Err(e) = self.store.upsert_peer(&peer) {
            self.poison(&e);
        }

        self.conns.insert(
            conn.id,
            ConnEntry {
                handle: conn.clone(),
                mesh_id: mesh_id.clone(),
                key: key.clone(),
                session_id: hello.presence.session_id.clone(),
            },
        );
        self.metrics.connections_active.fetch_add(1, Relaxed);
        for old in replaced {
            if let Some(entry) = self.conns.remove(&old) {
                self.metrics.connections_active.fetch_sub(1, Relaxed);
                let kill = entry.handle.kill;
                self.effects.push(Effect::Close {
                    kill,
                    code: codes::close::NORMAL,
                    reason: "session_replaced".into(),
                });
            }
        }
        self.effects.push(Effect::Out {
            conn: conn.id,
            out: Outbound::Frame(Box::new(BrokerFrame::HelloAck(ack))),
        });
        let attached = Attached {
            mesh_id: mesh_id.clone(),
            member_id: member.id.clone(),
            key: key.clone(),
        };
        self.effects.push(Effect::Reply(Box::new(move |ok| {
            let _ = reply.send(if ok {
                Ok(attached)
            } else {
                Err(Rejection::new(
                    codes::UNAVAILABLE,
                    "broker storage unavailable",
                ))
            });
        })));
        if !existing {
            let ev = if known.is_some() {
                event::PEER_RETURNED
            } else {
                event::PEER_JOINED
            };
            self.announce(&mesh_id, &key, ev, &display_name, &groups);
        } else if !was_live {
            tracing::debug!(key = %key, "presence re-attached within grace");
        }
        self.pump(&mesh_id, &key);
    }

    /// A connection is gone: detach it; the presence enters its grace period if it was
    /// the last one. Unacked deliveries stay in the database for the next connection.
    pub(super) fn detach(&mut self, conn: ConnId, left: bool) {
        let Some(entry) = self.conns.remove(&conn) else {
            return;
        };
        self.metrics.connections_active.fetch_sub(1, Relaxed);
        let grace = self.timings.grace;
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
            presence.epoch += 1;
            let epoch = presence.epoch;
            if left {
                // Closed on purpose: gone now, no grace (PROTOCOL.md §5.2).
                return self.end_grace(&entry.mesh_id, &entry.key, epoch);
            }
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
            self.pump(&entry.mesh_id, &entry.key);
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
        if let Some(peer) = mesh.peers.get_mut(key) {
            peer.last_seen = now_ms();
            let peer = peer.clone();
            if let Err(e) = self.store.upsert_peer(&peer) {
                self.poison(&e);
            }
        }
        self.announce(mesh_id, key, event::PEER_LEFT, &p.display_name, &p.groups);
    }

    /// Push a system event to every other live presence of the mesh (not durable).
    fn announce(&mut self, mesh_id: &str, key: &str, ev: &str, name: &str, groups: &[GroupRef]) {
        let Some(mesh) = self.dir.mesh(mesh_id) else {
            return;
        };
        let now = now_ms();
        let targets: Vec<ConnId> = mesh
            .presences
            .values()
            .filter(|p| p.key != key)
            .filter_map(Presence::target)
            .collect();
        for conn in targets {
            let push = Push {
                message_id: claudemesh_proto::ids::new_id(),
                mesh_id: mesh_id.to_owned(),
                sender_pubkey: "system".into(),
                priority: Priority::Low,
                nonce: String::new(),
                ciphertext: String::new(),
                created_at: iso8601(now),
                client_message_id: None,
                sender_member_pubkey: None,
                sender_name: None,
                target_spec: None,
                sealed_key: None,
                subtype: Some("system".into()),
                event: Some(ev.to_owned()),
                event_data: Some(EventData {
                    name: name.to_owned(),
                    pubkey: key.to_owned(),
                    groups: Some(groups.to_vec()),
                }),
            };
            self.out(conn, BrokerFrame::Push(push));
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
            let err = ErrorFrame::new(codes::UNAUTHORIZED, "no such mesh on this broker");
            return self.reply(conn, slot, BrokerFrame::Error(err.with_req_id(req_id)));
        };
        let peers = mesh
            .presences
            .values()
            .filter(|p| !p.conns.is_empty())
            .map(|p| PeerInfo {
                pubkey: p.key.clone(),
                member_pubkey: p.member_pubkey.clone(),
                display_name: p.display_name.clone(),
                status: p.status,
                summary: p.summary.clone(),
                groups: p.groups.clone(),
                session_id: p.info.session_id.clone(),
                connected_at: iso8601(p.connected_at),
                cwd: p.info.cwd.clone(),
                role: p.role.as_str().to_owned(),
                peer_role: p.role.as_str().to_owned(),
                hostname: p.info.hostname.clone(),
                peer_type: p.info.peer_type.clone(),
                channel: p.info.channel.clone(),
                model: p.info.model.clone(),
                reach: (!self.v1_only).then(|| p.info.reach.unwrap_or(Reach::Live)),
            })
            .collect();
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
            let err = ErrorFrame::new(codes::UNAUTHORIZED, "no such mesh on this broker");
            return self.reply(conn, slot, BrokerFrame::Error(err.with_req_id(req_id)));
        };
        let reach = |key: &str| {
            Some(
                match mesh.presences.get(key).filter(|p| !p.conns.is_empty()) {
                    Some(p) => p.info.reach.unwrap_or(Reach::Live),
                    None => Reach::Queued,
                },
            )
        };
        let mut members: Vec<MemberInfo> = Vec::new();
        for m in mesh.members.values().filter(|m| m.removed.is_none()) {
            let peer = mesh.peers.get(&m.pubkey);
            members.push(MemberInfo {
                pubkey: m.pubkey.clone(),
                member_id: m.id.clone(),
                member_pubkey: m.pubkey.clone(),
                display_name: m.display_name.clone(),
                role: m.role.clone(),
                kind: "member".into(),
                groups: peer
                    .map(|p| parse_groups(&p.groups_json))
                    .unwrap_or_default(),
                online: mesh
                    .presences
                    .get(&m.pubkey)
                    .is_some_and(|p| !p.conns.is_empty()),
                e2e_multicast: peer.is_some_and(|p| p.e2e_multicast),
                seen: peer.is_some(),
                reach: reach(&m.pubkey),
                last_seen: peer.map(|p| iso8601(p.last_seen)),
            });
        }
        for p in mesh
            .peers
            .values()
            .filter(|p| p.kind == "session" && mesh.is_recipient(&p.pubkey))
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
                role: m.role.clone(),
                kind: "session".into(),
                groups: live
                    .map(|l| l.groups.clone())
                    .unwrap_or_else(|| parse_groups(&p.groups_json)),
                online: live.is_some_and(|l| !l.conns.is_empty()),
                e2e_multicast: p.e2e_multicast,
                seen: true,
                reach: reach(&p.pubkey),
                last_seen: Some(iso8601(p.last_seen)),
            });
        }
        members.sort_by(|a, b| a.pubkey.cmp(&b.pubkey));
        let list = MembersList { members, req_id };
        self.reply(conn, slot, BrokerFrame::MembersList(list));
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
        p.status = status;
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
                codes::PAYLOAD_TOO_LARGE,
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
        }
    }

    pub(super) fn join_group(&mut self, conn: ConnId, mesh_id: &str, key: &str, g: JoinGroup) {
        if g.name.is_empty() || g.name.len() > limits::MAX_SHORT_TEXT_BYTES {
            return self.out(
                conn,
                BrokerFrame::Error(
                    ErrorFrame::new(codes::MALFORMED, "bad group name").with_req_id(g.req_id),
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
                        ErrorFrame::new(codes::MALFORMED, "too many groups").with_req_id(g.req_id),
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
    }
}
