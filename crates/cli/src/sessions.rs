//! `claudemesh sessions [prune]`: this identity's Claude Code session identities, as this
//! machine keeps them (`sessions/<name>/`) and as each mesh's broker sees them.
//!
//! A session is *live* (its `claudemesh mcp` runs, or the broker has it online),
//! *resumable* (offline; the broker still queues for it until it retires), or *retired*
//! (the broker no longer lists it: too long offline, over the per-member cap, or pruned).
//! `prune` retires every session that is not live, on the broker (`retire_sessions`) and
//! here (its directory is removed), so nothing is queued for keys nobody will read.
//!
//! What it must not do: touch a session whose lock a running server holds.

use std::collections::{HashMap, HashSet};

use anyhow::Context as _;
use claudemesh_proto::codes::cap;
use serde_json::json;

use crate::commands::live::connect;
use crate::config::{Config, ConfigDir};
use crate::mcp::session::{Local, Session};
use crate::output::{out, short, table};

/// How the broker of one mesh sees one session key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Online,
    Resumable,
    Retired,
    /// The broker could not be asked.
    Unknown,
}

impl Seen {
    fn as_str(self) -> &'static str {
        match self {
            Seen::Online => "live",
            Seen::Resumable => "resumable",
            Seen::Retired => "retired",
            Seen::Unknown => "unknown (broker unreachable)",
        }
    }
}

/// Per mesh id: key → (online, display name) as its broker lists them, `None` when the
/// broker could not be asked.
type BrokerView = HashMap<String, Option<HashMap<String, (bool, String)>>>;

/// One member connection per mesh asks its broker.
async fn broker_view(config: &Config, only: Option<&str>) -> BrokerView {
    let mut view = HashMap::new();
    for entry in config.meshes.values() {
        if only.is_some_and(|m| m != entry.slug) {
            continue;
        }
        let members = match connect(entry).await {
            Ok(live) => {
                let list = live.conn.members().await.ok();
                live.conn.close().await;
                list
            }
            Err(e) => {
                eprintln!("claudemesh: warning: mesh '{}': {e:#}", entry.slug);
                None
            }
        };
        let keys = members.map(|list| {
            list.into_iter()
                .map(|m| (m.pubkey, (m.online, m.display_name)))
                .collect()
        });
        view.insert(entry.mesh_id.clone(), keys);
    }
    view
}

fn state(local: &Local, mesh: &str, key: &str, view: &BrokerView) -> (Seen, String) {
    match view.get(mesh) {
        Some(Some(keys)) => match keys.get(key) {
            Some((true, name)) => (Seen::Online, name.clone()),
            Some((false, name)) if local.running => (Seen::Online, name.clone()),
            Some((false, name)) => (Seen::Resumable, name.clone()),
            None => (Seen::Retired, String::new()),
        },
        _ if local.running => (Seen::Online, String::new()),
        _ => (Seen::Unknown, String::new()),
    }
}

/// One session key: its session here, mesh id, key, how the broker sees it, its name there.
type Row<'a> = (&'a Local, String, String, Seen, String);

pub async fn run(
    dir: &ConfigDir,
    config: &Config,
    only: Option<&str>,
    json: bool,
    prune: Option<bool>,
) -> anyhow::Result<()> {
    let locals = Session::list(dir);
    let view = broker_view(config, only).await;
    let mut rows = Vec::new();
    for local in &locals {
        for (mesh, key) in &local.keys {
            if !view.contains_key(mesh) {
                continue;
            }
            let (seen, name) = state(local, mesh, key, &view);
            rows.push((local, mesh.clone(), key.clone(), seen, name));
        }
    }
    match prune {
        None => {
            list(config, json, &rows);
            Ok(())
        }
        Some(print_only) => {
            // Every session that is not live anywhere.
            let stale: Vec<&Local> = locals
                .iter()
                .filter(|l| !l.running)
                .filter(|l| {
                    !rows.iter().any(|(r, _, _, seen, _)| {
                        r.name == l.name && matches!(seen, Seen::Online | Seen::Unknown)
                    })
                })
                .collect();
            prune_stale(config, only, json, print_only, &stale, &view).await
        }
    }
}

/// `claudemesh sessions`: one row per session key.
fn list(config: &Config, json: bool, rows: &[Row<'_>]) {
    let slug_of = |mesh: &str| {
        config
            .meshes
            .values()
            .find(|m| m.mesh_id == mesh)
            .map_or_else(|| short(mesh), |m| m.slug.clone())
    };
    let value = json!(
        rows.iter()
            .map(|(l, mesh, key, seen, name)| json!({
                "session": l.name, "mesh": slug_of(mesh), "name": name, "state": seen.as_str(),
                "lastUsed": l.last_used, "key": key, "running": l.running,
            }))
            .collect::<Vec<_>>()
    );
    out(json, &value, || {
        let lines: Vec<Vec<String>> = rows
            .iter()
            .map(|(l, mesh, key, seen, name)| {
                vec![
                    l.name.clone(),
                    slug_of(mesh),
                    name.clone(),
                    seen.as_str().to_owned(),
                    claudemesh_proto::time::readable(l.last_used),
                    short(key),
                ]
            })
            .collect();
        table(
            &["SESSION", "MESH", "NAME", "STATE", "LAST USED", "KEY"],
            &lines,
        )
    });
}

/// Retire the keys of `stale` sessions on their brokers. Returns how many the brokers
/// retired, and the keys that are gone: retired, or on a broker without retirement that
/// forgets them by itself.
async fn retire(
    config: &Config,
    only: Option<&str>,
    stale: &[&Local],
) -> anyhow::Result<(usize, HashSet<String>)> {
    let mut retired = 0usize;
    let mut gone = HashSet::new();
    for entry in config.meshes.values() {
        if only.is_some_and(|m| m != entry.slug) {
            continue;
        }
        let keys: Vec<String> = stale
            .iter()
            .filter_map(|l| l.keys.get(&entry.mesh_id).cloned())
            .collect();
        if keys.is_empty() {
            continue;
        }
        let live = connect(entry).await?;
        if live.conn.has_capability(cap::SESSION_RETIRE) {
            let done = live
                .conn
                .retire_sessions(keys)
                .await
                .with_context(|| format!("retiring sessions in mesh '{}'", entry.slug))?;
            retired += done.len();
            gone.extend(done);
        } else {
            gone.extend(keys);
            eprintln!(
                "claudemesh: note: the broker of mesh '{}' cannot retire sessions; it forgets them by itself",
                entry.slug
            );
        }
        live.conn.close().await;
    }
    Ok((retired, gone))
}

/// `claudemesh sessions prune [--print]`: retire the stale sessions on their brokers,
/// then remove the directory of every session all of whose keys are gone.
async fn prune_stale(
    config: &Config,
    only: Option<&str>,
    json: bool,
    print_only: bool,
    stale: &[&Local],
    view: &BrokerView,
) -> anyhow::Result<()> {
    let (retired, gone) = if print_only {
        (0, HashSet::new())
    } else {
        retire(config, only, stale).await?
    };
    let mut names: Vec<&str> = Vec::new();
    for l in stale {
        let all_gone = l
            .keys
            .iter()
            .filter(|(mesh, _)| view.contains_key(*mesh))
            .all(|(_, key)| gone.contains(key));
        if print_only || (all_gone && Session::remove_if_idle(&l.dir)?) {
            names.push(&l.name);
        } else {
            eprintln!(
                "claudemesh: note: kept session {} (its broker did not retire it, or it is running again)",
                l.name
            );
        }
    }
    out(
        json,
        &json!({ "pruned": names, "retiredOnBroker": retired, "printOnly": print_only }),
        || {
            if names.is_empty() {
                "no stale sessions: every session here is live".to_owned()
            } else if print_only {
                format!(
                    "would retire {} session(s): {}",
                    names.len(),
                    names.join(", ")
                )
            } else {
                format!(
                    "retired {} session(s) ({} key(s) on brokers): {}",
                    names.len(),
                    retired,
                    names.join(", ")
                )
            }
        },
    );
    Ok(())
}
