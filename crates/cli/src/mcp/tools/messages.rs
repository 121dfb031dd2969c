//! The message tools, one function each: `send_message` (resolve the target across the
//! session's meshes, the loop guard, seal and send), `check_messages` (everything not yet
//! shown) and `message_status` (per recipient, for what this session sent).
//!
//! What it must not do: mark a message read before its text is returned, or send past
//! the loop guard.

use claudemesh_proto::codes::Code;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use claudemesh_client::envelope::Body;
use claudemesh_client::{ConnectError, Target};

use super::ToolResult;
use super::args::{CheckArgs, MessageStatusArgs, SendArgs};
use crate::mcp::link;
use crate::mcp::peer::Peer;
use crate::mcp::render::{self, replies};
use crate::resolve::{self, Candidate};

/// Sends remembered for `message_status`.
const SENT_LOG: usize = 256;

/// A message this session sent.
struct Sent {
    message_ids: Vec<String>,
    /// The index of its link.
    mesh: usize,
    /// Who it went to, as shown.
    to: String,
}

/// The last [`SENT_LOG`] messages this session sent.
#[derive(Default)]
pub struct SentLog(Mutex<VecDeque<Sent>>);

impl SentLog {
    fn push(&self, sent: Sent) {
        if let Ok(mut log) = self.0.lock() {
            if log.len() >= SENT_LOG {
                log.pop_front();
            }
            log.push_back(sent);
        }
    }

    /// The ids, link and recipient of the last message sent, or of the last one with an
    /// id starting with `wanted`.
    fn find(&self, wanted: Option<&str>) -> Option<(Vec<String>, usize, String)> {
        let log = self.0.lock().ok()?;
        log.iter()
            .rev()
            .find(|s| {
                wanted.is_none_or(|w| {
                    s.message_ids
                        .iter()
                        .any(|id| id.starts_with(&w.to_ascii_lowercase()))
                })
            })
            .map(|s| (s.message_ids.clone(), s.mesh, s.to.clone()))
    }
}

/// `check_messages`: everything not yet shown, `low` included, as much as fits.
pub async fn check_messages(peer: &Arc<Peer>, _args: CheckArgs) -> ToolResult {
    peer.ready_for_tools().await?;
    peer.settle().await;
    let unread = peer.unread();
    let rejected = peer.shown.take_rejected();
    let list = peer.labelled(&unread);
    let (text, shown) = replies::checked(&list, rejected);
    let ids = peer.shown.handed(&list, shown, true);
    peer.shown.mark_read(&ids);
    Ok(text)
}

/// `send_message`.
pub async fn send_message(peer: &Arc<Peer>, args: SendArgs) -> ToolResult {
    let SendArgs {
        to,
        message,
        priority,
        mesh,
    } = args;
    peer.ready_for_tools().await?;
    if message.trim().is_empty() {
        return Err(replies::EMPTY_MESSAGE.into());
    }
    let depth = peer.shown.send_depth()?;
    let (index, target, who) = resolve_target(peer, &to, mesh.as_deref()).await?;
    let Some(link) = peer.links().get(index) else {
        return Err(replies::NO_MESH_TO_SEND_TO.into());
    };
    let body = Body {
        text: &message,
        depth,
    };
    let report = link
        .send(&target, body, priority)
        .await
        .map_err(|e| replies::send_failed(&to, e))?;
    let name = render::line(&who.map_or_else(|| target.spec(), |c| c.name));
    peer.sent.push(Sent {
        message_ids: report.message_ids.clone(),
        mesh: index,
        to: name.clone(),
    });
    Ok(replies::sent(&name, &link.slug, &report))
}

/// Pick the mesh and resolve `to` in it. Without `mesh`, every mesh whose broker is
/// reachable is searched; unreachable ones are only reported if nothing matched.
async fn resolve_target(
    peer: &Peer,
    to: &str,
    mesh: Option<&str>,
) -> Result<(usize, Target, Option<Candidate>), String> {
    let to = to.trim();
    let multicast = to == "*" || to.starts_with('@');
    let links = peer.links();
    let indexes: Vec<usize> = match mesh {
        Some(m) => vec![link::named(links, m)?],
        None if multicast || links.len() == 1 => vec![peer.default_link],
        None => (0..links.len()).collect(),
    };
    let single = indexes.len() == 1;
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for i in indexes {
        let Some(link) = links.get(i) else {
            continue;
        };
        let candidates = match link.ready().await {
            Ok(()) => link.candidates().await,
            Err(e) => Err(e),
        };
        let candidates = match candidates {
            Ok(c) => c,
            Err(e) if !single => {
                errors.push(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        match resolve::resolve(to, &candidates) {
            Ok((target, who)) => found.push((i, target, who)),
            Err(e) => errors.push(replies::unresolved(&e)),
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(replies::nothing_matched(&errors)),
        _ => {
            let slugs: Vec<&str> = found.iter().map(|(i, _, _)| peer.slug(*i)).collect();
            Err(replies::several_meshes(to, &slugs))
        }
    }
}

/// `message_status`: per recipient of a message this session sent (the last one by
/// default; an id prefix is enough for one sent in this process).
pub async fn message_status(peer: &Arc<Peer>, args: MessageStatusArgs) -> ToolResult {
    peer.ready_for_tools().await?;
    let wanted = args.message_id.as_deref().map(str::trim);
    let (ids, index, to) = match (peer.sent.find(wanted), wanted) {
        (Some((ids, mesh, to)), _) => (ids, mesh, Some(to)),
        (None, Some(id)) => (vec![id.to_owned()], peer.default_link, None),
        (None, None) => return Err(replies::NOTHING_SENT_YET.into()),
    };
    let Some(link) = peer.links().get(index) else {
        return Err(replies::NO_MESH.into());
    };
    link.ready().await?;
    let mut out = Vec::new();
    for id in &ids {
        match link.conn.message_status(id).await {
            Ok(reply) => out.push(render::status(&reply, to.as_deref())),
            Err(ConnectError::Unsupported(_)) => {
                return Ok(replies::status_unsupported(&link.slug, id));
            }
            Err(ConnectError::Rejected { code, .. }) if code == Code::NotFound => {
                return Err(replies::unknown_message(id));
            }
            Err(e) => return Err(replies::could_not("get the status", &e)),
        }
    }
    Ok(out.join("\n\n"))
}
