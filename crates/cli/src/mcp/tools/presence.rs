//! The presence tools, one function each: `list_peers` (who is online, per mesh),
//! `set_summary`, `set_status`, `join_group` and `leave_group`. Changes apply to every
//! mesh of the session; summary and groups are remembered for a restart of the session.
//! A change made while a mesh is not connected is kept by its connection and applied on
//! reconnect, and the reply says so.
//!
//! What it must not do: announce presence fields past the broker's limits (a refused
//! hello would keep the session offline).

use std::sync::Arc;

use claudemesh_proto::frames::GroupRef;
use claudemesh_proto::limits::{MAX_GROUPS, MAX_SHORT_TEXT_BYTES, MAX_SUMMARY_BYTES};

use super::ToolResult;
use super::args::{GroupArgs, ListPeersArgs, StatusArgs, SummaryArgs};
use crate::mcp::link::{self, CONNECT_WAIT};
use crate::mcp::peer::Peer;
use crate::mcp::render::{self, replies};

/// `list_peers`: who is online, per mesh (a mesh whose broker is unreachable says so
/// and does not hide the others).
pub async fn list_peers(peer: &Arc<Peer>, args: ListPeersArgs) -> ToolResult {
    peer.ready_for_tools().await?;
    peer.confirm().await;
    let links = peer.links();
    let indexes: Vec<usize> = match args.mesh.as_deref() {
        Some(m) => vec![link::named(links, m)?],
        None => (0..links.len()).collect(),
    };
    let mut sections = vec![replies::delivery(peer.shown.channels().describe())];
    let mut failures = 0;
    for i in &indexes {
        let Some(link) = links.get(*i) else {
            continue;
        };
        let listed = match link.ready().await {
            Ok(()) => link
                .conn
                .peers()
                .await
                .map_err(|e| replies::peers_failed(&link.slug, &e)),
            Err(e) => Err(e),
        };
        match listed {
            Ok(peers) => sections.push(render::peers(&link.slug, &link.me, &peers)),
            Err(e) => {
                failures += 1;
                sections.push(e);
            }
        }
    }
    let text = sections.join("\n\n");
    if failures == indexes.len() {
        Err(text)
    } else {
        Ok(text)
    }
}

/// `set_summary`: on every mesh, remembered for a restart of this session.
pub async fn set_summary(peer: &Arc<Peer>, args: SummaryArgs) -> ToolResult {
    peer.ready_for_tools().await?;
    let summary = args.summary.trim();
    if summary.len() > MAX_SUMMARY_BYTES {
        return Err(replies::summary_too_long(summary.len(), MAX_SUMMARY_BYTES));
    }
    let value = (!summary.is_empty()).then(|| summary.to_owned());
    for link in peer.links() {
        link.conn
            .set_summary(value.clone())
            .await
            .map_err(|e| replies::could_not("set the summary", &e))?;
    }
    peer.remember(|s, _| *s = value.clone());
    Ok(replies::summary_set(value.as_deref(), &offline_note(peer)))
}

/// `set_status`.
pub async fn set_status(peer: &Arc<Peer>, args: StatusArgs) -> ToolResult {
    peer.ready_for_tools().await?;
    link::set_status(peer.links(), args.status, CONNECT_WAIT).await;
    Ok(replies::status_set(args.status, &offline_note(peer)))
}

/// `join_group`: on every mesh, remembered for a restart.
pub async fn join_group(peer: &Arc<Peer>, args: GroupArgs) -> ToolResult {
    group(peer, args, true).await
}

/// `leave_group`: on every mesh, remembered for a restart.
pub async fn leave_group(peer: &Arc<Peer>, args: GroupArgs) -> ToolResult {
    group(peer, args, false).await
}

async fn group(peer: &Arc<Peer>, args: GroupArgs, join: bool) -> ToolResult {
    peer.ready_for_tools().await?;
    let GroupArgs { name, role } = args;
    let name = name.trim().trim_start_matches('@');
    let limit = MAX_SHORT_TEXT_BYTES;
    if name.is_empty() || name.len() > limit || role.as_ref().is_some_and(|r| r.len() > limit) {
        return Err(replies::bad_group(limit));
    }
    let current = peer.groups();
    if join && !current.iter().any(|g| g.name == name) && current.len() >= MAX_GROUPS {
        return Err(replies::too_many_groups(MAX_GROUPS));
    }
    for link in peer.links() {
        let r = if join {
            link.conn.join_group(name, role.clone()).await
        } else {
            link.conn.leave_group(name).await
        };
        r.map_err(|e| replies::could_not("change groups", &e))?;
    }
    peer.remember(|_, groups| {
        groups.retain(|g| g.name != name);
        if join {
            groups.push(GroupRef {
                name: name.to_owned(),
                role: role.clone(),
            });
        }
    });
    let note = offline_note(peer);
    Ok(if join {
        replies::joined_group(name, &note)
    } else {
        replies::left_group(name, &note)
    })
}

/// See [`replies::offline_note`].
fn offline_note(peer: &Peer) -> String {
    replies::offline_note(&link::down(peer.links()))
}
