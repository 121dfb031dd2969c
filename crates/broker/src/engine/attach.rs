//! Attaching a verified hello (PROTOCOL.md §5.2), in four steps: **admit** (the mesh, the
//! member and its standing, the key's ownership, the session cap, replay), **bind** the
//! connection to the key's presence (replacing an older connection of the same session
//! id), build the **hello_ack**, and **remember** the identity as a known recipient. The
//! `hello_ack` and the caller's answer go out only after the batch commits.

use claudemesh_proto::authority::{PeerKind, Removal};
use claudemesh_proto::codes::{self, Code};
use claudemesh_proto::frames::{BrokerFrame, GroupRef, HelloAck, Status, event};
use claudemesh_proto::limits;
use claudemesh_proto::time::now_ms;
use claudemesh_store::{MemberRow, PeerRow};
use tokio::sync::oneshot;

use super::delivery::Mailbox;
use super::directory::{Mesh, Presence, groups_json, parse_groups};
use super::{Attached, ConnEntry, ConnHandle, ConnId, Effect, Engine, Outbound};
use crate::auth::{Rejection, Role, VerifiedHello};

/// What admission decided: who the hello is, and which offline sessions make room for it.
struct Admitted {
    member: MemberRow,
    kind: PeerKind,
    evict: Vec<String>,
}

/// What binding changed.
struct Bound {
    /// The presence existed (live or in its grace period) before this hello.
    existing: bool,
    /// Connections of the same session id that this one replaces.
    replaced: Vec<ConnId>,
    /// The key had connected before (it is a known recipient).
    known: bool,
    /// The presence as it is now bound.
    status: Status,
    summary: Option<String>,
    groups: Vec<GroupRef>,
    display_name: String,
}

/// A key that is a member key cannot be used as another identity's session key (this
/// covers `hello.sessionPubkey` too, which carries no proof of possession), and a session
/// key belongs to one member for good.
fn key_owned_by(mesh: &Mesh, key: &str, member: &MemberRow) -> Result<(), Rejection> {
    if key != member.pubkey && mesh.member_by_key.contains_key(key) {
        return Err(Rejection::new(
            Code::BadSessionPubkey,
            "sessionPubkey is a member key",
        ));
    }
    if mesh
        .peers
        .get(key)
        .is_some_and(|p| p.member_id != member.id)
    {
        return Err(Rejection::new(
            Code::BadSessionPubkey,
            "sessionPubkey belongs to another member",
        ));
    }
    Ok(())
}

impl Engine {
    pub(super) fn attach(
        &mut self,
        hello: VerifiedHello,
        conn: ConnHandle,
        reply: oneshot::Sender<Result<Attached, Rejection>>,
    ) {
        self.read_through(&hello.mesh_id, Some(&hello.member_id));
        let admitted = match self.admit(&hello) {
            Ok(a) => a,
            Err(r) => {
                let _ = reply.send(Err(r));
                return;
            }
        };
        let now = now_ms();
        for old in &admitted.evict {
            self.retire(&hello.mesh_id, old, now);
        }
        let Some(bound) = self.bind(&hello, &admitted.member, conn.id, now) else {
            let r = Rejection::new(Code::Unauthorized, "no such mesh on this broker");
            let _ = reply.send(Err(r));
            return;
        };
        let ack = self.hello_ack(&hello, &admitted.member, &bound);
        self.remember(&hello, &admitted, &bound, now);
        self.register_conn(&hello, conn.clone(), &bound.replaced);
        self.publish(&hello.mesh_id, &hello.key);
        self.effects.push(Effect::Out {
            conn: conn.id,
            out: Outbound::Frame(Box::new(BrokerFrame::HelloAck(ack))),
        });
        let attached = Attached {
            mesh_id: hello.mesh_id.clone(),
            member_id: admitted.member.id.clone(),
            key: hello.key.clone(),
        };
        self.effects.push(Effect::Reply(Box::new(move |ok| {
            let _ = reply.send(if ok {
                Ok(attached)
            } else {
                Err(Rejection::new(
                    Code::Unavailable,
                    "broker storage unavailable",
                ))
            });
        })));
        if !bound.existing {
            let ev = if bound.known {
                event::PEER_RETURNED
            } else {
                event::PEER_JOINED
            };
            self.announce(
                &hello.mesh_id,
                &hello.key,
                ev,
                &bound.display_name,
                &bound.groups,
            );
        }
        self.pump(&hello.mesh_id, &hello.key);
    }

    /// Membership, standing, key ownership, the session cap and replay.
    fn admit(&mut self, hello: &VerifiedHello) -> Result<Admitted, Rejection> {
        let mesh = self
            .dir
            .mesh(&hello.mesh_id)
            .ok_or_else(|| Rejection::new(Code::Unauthorized, "no such mesh on this broker"))?;
        let member = match mesh.members.get(&hello.member_id) {
            Some(m) if m.pubkey == hello.member_pubkey => m.clone(),
            Some(_) if hello.role == Role::Session => {
                return Err(Rejection::new(
                    Code::ParentMemberIdMismatch,
                    "parentMemberId does not belong to parentMemberPubkey",
                ));
            }
            _ => {
                return Err(Rejection::new(
                    Code::Unauthorized,
                    "not a member of this mesh",
                ));
            }
        };
        match member.removed {
            Some(Removal::Revoked) => {
                let mut r =
                    Rejection::new(Code::Revoked, "this member has been revoked from the mesh");
                r.close = codes::close::REVOKED;
                return Err(r);
            }
            Some(Removal::Kicked) => {
                return Err(Rejection::new(
                    Code::Unauthorized,
                    "this member was removed from the mesh",
                ));
            }
            None => {}
        }
        key_owned_by(mesh, &hello.key, &member)?;
        let kind = if hello.role == Role::Session || hello.key != member.pubkey {
            PeerKind::Session
        } else {
            PeerKind::Member
        };
        let evict = match kind {
            PeerKind::Session => self.sessions_to_evict(&hello.mesh_id, &member.id, &hello.key)?,
            PeerKind::Member => Vec::new(),
        };
        let until = hello.timestamp + 2 * limits::MAX_CLOCK_SKEW_MS;
        match self.store.remember_signature(&hello.signature, until) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Rejection::new(
                    Code::Replay,
                    "this signed hello was already used",
                ));
            }
            Err(e) => {
                self.poison(&e);
                return Err(Rejection::new(
                    Code::Unavailable,
                    "broker storage unavailable",
                ));
            }
        }
        Ok(Admitted {
            member,
            kind,
            evict,
        })
    }

    /// Attach connection `conn` to the key's presence, creating it (or refreshing it from
    /// this hello); an older connection with the same session id is replaced.
    fn bind(
        &mut self,
        hello: &VerifiedHello,
        member: &MemberRow,
        conn: ConnId,
        now: i64,
    ) -> Option<Bound> {
        let mesh = self.dir.mesh_mut(&hello.mesh_id)?;
        let known = mesh.peers.get(&hello.key);
        let groups = known
            .map(|p| parse_groups(&p.groups_json))
            .unwrap_or_default();
        let known = known.is_some();
        let replaced: Vec<ConnId> = mesh
            .presences
            .get(&hello.key)
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
        // Present already, here or on another node (a session moving between nodes keeps its
        // status and summary, and nobody hears it leave and join).
        let existing = mesh.present(&hello.key);
        let restored = mesh
            .remote
            .get(&hello.key)
            .and_then(|rows| rows.iter().max_by_key(|r| r.data.connected_at))
            .map(|r| r.data.clone());
        let groups = restored
            .as_ref()
            .map(|r| r.groups.clone())
            .unwrap_or(groups);
        let presence = mesh
            .presences
            .entry(hello.key.clone())
            .or_insert_with(|| Presence {
                key: hello.key.clone(),
                member_id: member.id.clone(),
                member_pubkey: member.pubkey.clone(),
                role: hello.role,
                info: hello.presence.clone(),
                display_name: String::new(),
                status: restored.as_ref().map_or(Status::Idle, |r| r.status),
                summary: restored.as_ref().and_then(|r| r.summary.clone()),
                groups,
                connected_at: now,
                conns: Vec::new(),
                epoch: 0,
                mailbox: None,
            });
        presence.info = hello.presence.clone();
        presence.display_name = hello
            .presence
            .display_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| member.display_name.clone());
        presence.role = hello.role;
        if let Some(groups) = hello.presence.groups.clone() {
            presence.groups = groups;
        }
        presence.conns.retain(|c| !replaced.contains(c));
        presence.conns.push(conn);
        // A new hello starts a fresh window: everything unacked is pushed again, parked
        // deliveries included (PROTOCOL §7.4), even when it replaces a live connection.
        presence.mailbox = Some(Mailbox::unloaded());
        Some(Bound {
            existing,
            replaced,
            known,
            status: presence.status,
            summary: presence.summary.clone(),
            groups: presence.groups.clone(),
            display_name: presence.display_name.clone(),
        })
    }

    /// The `hello_ack`, with the restore fields of a presence that already existed.
    fn hello_ack(&self, hello: &VerifiedHello, member: &MemberRow, bound: &Bound) -> HelloAck {
        let existing = bound.existing;
        HelloAck {
            presence_id: hello.key.clone(),
            member_display_name: member.display_name.clone(),
            protocol_version: claudemesh_proto::PROTOCOL_VERSION,
            capabilities: if self.v1_only {
                Vec::new()
            } else {
                codes::cap::ALL.iter().map(|c| (*c).to_owned()).collect()
            },
            member_id: Some(member.id.clone()),
            member_role: Some(member.role.as_str().to_owned()),
            status: existing.then_some(bound.status),
            summary: bound.summary.clone().filter(|_| existing),
            groups: Some(bound.groups.clone()),
            req_id: hello.req_id.clone(),
        }
    }

    /// Record the key as a known recipient identity (durable), as the presence now is.
    fn remember(
        &mut self,
        hello: &VerifiedHello,
        admitted: &Admitted,
        bound: &Bound,
        now: i64,
    ) -> PeerRow {
        let e2e = hello
            .capabilities()
            .iter()
            .any(|c| c == codes::cap::E2E_MULTICAST);
        let peer = PeerRow {
            pubkey: hello.key.clone(),
            mesh_id: hello.mesh_id.clone(),
            member_id: admitted.member.id.clone(),
            kind: admitted.kind,
            display_name: bound.display_name.clone(),
            groups_json: groups_json(&bound.groups),
            last_seen: now,
            e2e_multicast: e2e,
            retired_at: None,
            online: true,
        };
        let mut changed = true;
        if let Some(mesh) = self.dir.mesh_mut(&hello.mesh_id) {
            let before = mesh.peers.insert(peer.pubkey.clone(), peer.clone());
            changed = before.is_none_or(|b| {
                PeerRow {
                    last_seen: now,
                    online: true,
                    ..b
                } != peer
            });
        }
        if let Err(e) = self.store.upsert_peer(&peer) {
            self.poison(&e);
        }
        if changed {
            self.note_peer(&hello.mesh_id, &hello.key);
        }
        peer
    }

    /// Track the connection; close the ones it replaces once the batch commits.
    fn register_conn(&mut self, hello: &VerifiedHello, conn: ConnHandle, replaced: &[ConnId]) {
        let id = conn.id;
        self.conns.insert(
            id,
            ConnEntry {
                handle: conn,
                mesh_id: hello.mesh_id.clone(),
                key: hello.key.clone(),
                session_id: hello.presence.session_id.clone(),
                presence_batch: !self.v1_only
                    && hello
                        .capabilities()
                        .iter()
                        .any(|c| c == codes::cap::PRESENCE_BATCH),
            },
        );
        self.metrics.connections_active.inc();
        for old in replaced {
            if let Some(entry) = self.conns.remove(old) {
                self.metrics.connections_active.dec();
                self.effects.push(Effect::Close {
                    kill: entry.handle.kill,
                    code: codes::close::NORMAL,
                    reason: "session_replaced".into(),
                });
            }
        }
    }
}
