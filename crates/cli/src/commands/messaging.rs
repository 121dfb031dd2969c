//! Talking to peers over a live connection: `peers`, `send`, `inbox`, `status set`,
//! `summary` and `verify`. Every message is end-to-end encrypted; `inbox` records and
//! acks every delivery it receives, so nothing loops and nothing shows twice.

use claudemesh_proto::codes::AnyCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use claudemesh_client::envelope::Keyring;
use claudemesh_client::inbox::{Inbox, Kind, Record};
use claudemesh_client::{Delivery, messaging, safety};
use claudemesh_crypto::PublicKey;
use claudemesh_proto::frames::{Priority, Status};
use serde_json::{Value, json};

use super::Ctx;
use super::live::{candidates, connect};
use crate::output::{out, short, table};
use crate::resolve::resolve;

pub(super) async fn peers(ctx: &Ctx) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    let live = connect(entry).await?;
    let list = live.conn.peers().await?;
    live.conn.close().await;
    let me = live.key.public().to_hex();
    out(ctx.json, &serde_json::to_value(&list)?, || {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|p| {
                let name = if p.pubkey == me {
                    format!("{} (you)", p.display_name)
                } else {
                    p.display_name.clone()
                };
                let place = match &p.hostname {
                    Some(h) => format!("{h}:{}", p.cwd),
                    None => p.cwd.clone(),
                };
                vec![
                    name,
                    p.status.as_str().into(),
                    p.summary.clone().unwrap_or_default(),
                    // v1 calls a member-keyed connection "control-plane"; people say member.
                    if p.role == "session" {
                        "session"
                    } else {
                        "member"
                    }
                    .to_owned(),
                    p.reach.map_or("-", |r| r.as_str()).replace('_', " "),
                    place,
                    short(&p.pubkey),
                ]
            })
            .collect();
        table(
            &["NAME", "STATUS", "SUMMARY", "KIND", "REACH", "WHERE", "KEY"],
            &rows,
        )
    });
    Ok(())
}

pub(super) async fn send(
    ctx: &Ctx,
    to: &str,
    message: &str,
    priority: Priority,
) -> anyhow::Result<()> {
    if message.trim().is_empty() {
        bail!("the message is empty; nothing was sent");
    }
    let entry = ctx.entry()?;
    let live = connect(entry).await?;
    let (target, who) = resolve(to, &candidates(&live).await?)?;
    let mut ring = Keyring::new(live.key.clone());
    let report = messaging::send_text(
        &live.conn,
        &mut ring,
        &entry.mesh_id,
        &target,
        message,
        priority,
    )
    .await
    .map_err(|e| match e {
        messaging::SendError::Refused(AnyCode::Known(code)) => {
            anyhow!("nothing was sent to '{to}': {}", code.explain())
        }
        other => anyhow!("{other}"),
    })?;
    live.conn.close().await;
    let name = who
        .as_ref()
        .map_or_else(|| target.spec(), |c| c.name.clone());
    let (mode, note) = match &report.delivery {
        Delivery::Direct => ("direct", None),
        Delivery::SealedMulticast => ("sealed-multicast", None),
        Delivery::PerPeer { unreachable } => ("per-peer", Some(unreachable.clone())),
    };
    if let Some(note) = &note {
        eprintln!("claudemesh: note: {note}");
    }
    out(
        ctx.json,
        &json!({ "to": name, "target": target.spec(), "messageIds": report.message_ids, "recipients": report.recipients, "delivery": mode, "note": note }),
        || {
            format!(
                "sent to {name} ({} recipient{})",
                report.recipients,
                if report.recipients == 1 { "" } else { "s" }
            )
        },
    );
    Ok(())
}

pub(super) async fn inbox(ctx: &Ctx, wait: Option<u64>, all: bool) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    ctx.dir.ensure()?;
    let mut store = Inbox::open(&ctx.dir.inbox_file()).context("opening the local inbox")?;
    let mut live = connect(entry).await?;
    let mut ring = Keyring::new(live.key.clone());
    let names: std::collections::HashMap<String, String> = candidates(&live)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.key, c.name))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.unwrap_or(0));
    let quiet = Duration::from_millis(400);
    let mut fresh = 0usize;
    loop {
        let until = if fresh > 0 || tokio::time::Instant::now() >= deadline {
            tokio::time::Instant::now() + quiet
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, live.pushes.recv()).await {
            Ok(Some(push)) if push.subtype.as_deref() == Some("system") => {}
            Ok(Some(mut push)) => {
                if push.sender_name.is_none() {
                    push.sender_name = names.get(&push.sender_pubkey).cloned();
                }
                if let Some(rec) = messaging::receive(&mut ring, &push, &mut store)?
                    && rec.kind != Kind::Rejected
                {
                    fresh += 1;
                }
                live.conn.ack(&push.message_id).await?;
            }
            Ok(None) => break,
            Err(_) => break,
        }
    }
    live.conn.sync().await?;
    live.conn.close().await;
    let records = if all {
        store.history(&entry.mesh_id, true, 500)?
    } else {
        store.unread(&entry.mesh_id)?
    };
    let ids: Vec<String> = records.iter().map(|r| r.message_id.clone()).collect();
    store.mark_read(&ids)?;
    let json_records: Vec<Value> = records.iter().map(record_json).collect();
    out(ctx.json, &json!(json_records), || {
        if records.is_empty() {
            return "no new messages".into();
        }
        records
            .iter()
            .map(record_line)
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

fn record_json(r: &Record) -> Value {
    json!({
        "messageId": r.message_id, "from": r.sender_name, "fromKey": r.sender_pubkey, "to": r.target_spec,
        "priority": r.priority, "createdAt": r.created_at, "kind": r.kind.as_str(), "text": r.text, "reason": r.reason,
    })
}

fn record_line(r: &Record) -> String {
    let who = r
        .sender_name
        .clone()
        .unwrap_or_else(|| short(&r.sender_pubkey));
    // The broker's ISO 8601 time is UTC: say so.
    let when = format!(
        "{} UTC",
        r.created_at
            .get(..16)
            .unwrap_or(&r.created_at)
            .replace('T', " ")
    );
    let to = match r.target_spec.as_deref() {
        Some(t) if t.starts_with('@') || t == "*" => format!(" → {t}"),
        _ => String::new(),
    };
    let prio = if r.priority == "now" { " [urgent]" } else { "" };
    match r.kind {
        Kind::Verified => format!(
            "[{when}] {who}{to}{prio}: {}",
            r.text.clone().unwrap_or_default()
        ),
        Kind::Legacy => format!(
            "[{when}] {who}{to}{prio} (legacy, unverified): {}",
            r.text.clone().unwrap_or_default()
        ),
        Kind::Rejected => format!(
            "[{when}] REJECTED message claiming to be from {who}: {}",
            r.reason.clone().unwrap_or_default()
        ),
        Kind::System => format!("[{when}] · {}", r.text.clone().unwrap_or_default()),
    }
}

pub(super) async fn status_set(ctx: &Ctx, status: Status) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    let live = connect(entry).await?;
    live.conn.set_status(status).await?;
    live.conn.sync().await?;
    live.conn.close().await;
    out(ctx.json, &json!({ "status": status.as_str() }), || {
        format!("status: {}", status.as_str())
    });
    Ok(())
}

pub(super) async fn summary(ctx: &Ctx, text: &str) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    let live = connect(entry).await?;
    live.conn
        .set_summary((!text.is_empty()).then(|| text.to_owned()))
        .await?;
    live.conn.sync().await?;
    live.conn.close().await;
    out(ctx.json, &json!({ "summary": text }), || {
        if text.is_empty() {
            "summary cleared".into()
        } else {
            format!("summary: {text}")
        }
    });
    Ok(())
}

pub(super) async fn verify(ctx: &Ctx, peer: &str) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    let live = connect(entry).await?;
    let (_, who) = resolve(peer, &candidates(&live).await?)?;
    live.conn.close().await;
    let who = who.ok_or_else(|| anyhow!("verify needs one peer, not a group"))?;
    let theirs = PublicKey::from_hex(&who.member_key)
        .map_err(|_| anyhow!("peer '{}' has an invalid member key", who.name))?;
    let mine = live.key.public();
    let number = safety::safety_number(&mine, &theirs);
    out(
        ctx.json,
        &json!({ "peer": who.name, "peerKey": theirs.to_hex(), "safetyNumber": number }),
        || {
            format!(
                "safety number with {} ({}):\n  {number}\ncompare it with {} over another channel; they run: claudemesh verify {}",
                who.name,
                safety::fingerprint(&theirs),
                who.name,
                entry.display_name
            )
        },
    );
    Ok(())
}
