//! Membership: `join` (an invite link, checked offline first), `leave`, `whoami`,
//! `members`, and `kick` / `revoke` (owner or admin) by name, member id or key prefix.

use anyhow::{Context as _, anyhow, bail};
use claudemesh_client::safety;
use claudemesh_crypto::SecretKey;
use claudemesh_proto::authority::Role;
use claudemesh_proto::codes::Code;
use claudemesh_proto::http::{JoinRequest, MemberSummary, RemoveMode};
use claudemesh_proto::invite::{InviteError, InvitePayload};
use claudemesh_proto::time::{now_ms, readable};
use serde_json::json;

use super::Ctx;
use super::input::default_name;
use crate::api::{self, Admin};
use crate::config::MeshEntry;
use crate::output::{out, short, table};

/// An invite link, parsed and checked offline: its signature and expiry.
fn checked_invite(link: &str) -> anyhow::Result<InvitePayload> {
    let invite = InvitePayload::from_link(link).map_err(|e| match e {
        // A bare token is accepted too, so only a link that says what it is can be "damaged".
        InviteError::Malformed if link.trim().starts_with("ic://join/") || link.contains("/join/") => anyhow!("this invite link is damaged (its token does not decode); copy the whole link again"),
        InviteError::NotALink | InviteError::Malformed => anyhow!("this is not a claudemesh invite link (expected ic://join/…)"),
        InviteError::Version(v) => anyhow!("this invite uses version {v}, which this claudemesh does not understand; upgrade claudemesh"),
        other => anyhow!("{other}"),
    })?;
    invite.verify().map_err(|e| match e {
        InviteError::BadSignature => anyhow!(
            "this invite was altered or forged (its signature does not verify); ask for a new link"
        ),
        other => anyhow!("{other}"),
    })?;
    if invite.check_expiry(now_ms() / 1000).is_err() {
        bail!(
            "this invite expired on {}; ask for a new one",
            readable(invite.expires_at.saturating_mul(1000))
        );
    }
    Ok(invite)
}

/// A refused join, explained.
fn join_refused(e: anyhow::Error) -> anyhow::Error {
    match e
        .downcast_ref::<api::ApiError>()
        .and_then(|a| a.code.known())
    {
        Some(
            code @ (Code::InviteExpired
            | Code::InviteExhausted
            | Code::InviteRevoked
            | Code::InviteNotFound
            | Code::MemberRevoked),
        ) => anyhow!("{}", code.explain()),
        _ => e.context("joining failed"),
    }
}

pub(super) async fn join(ctx: &mut Ctx, link: &str, name: Option<String>) -> anyhow::Result<()> {
    // Everything that can be checked offline is checked before any network call.
    let invite = checked_invite(link)?;
    if let Some(existing) = ctx
        .config
        .meshes
        .values()
        .find(|m| m.mesh_id == invite.mesh_id)
    {
        out(
            ctx.json,
            &json!({ "slug": existing.slug, "meshId": existing.mesh_id, "alreadyMember": true }),
            || format!("already a member of '{}'", existing.slug),
        );
        return Ok(());
    }
    if ctx.config.meshes.contains_key(&invite.mesh_slug) {
        bail!(
            "you already belong to another mesh called '{}'; leave it first",
            invite.mesh_slug
        );
    }
    let key = SecretKey::generate();
    let display_name = name.unwrap_or_else(default_name);
    let request = JoinRequest {
        invite_token: Some(invite.token()),
        invite_payload: Some(invite.clone()),
        peer_pubkey: key.public().to_hex(),
        display_name: Some(display_name.clone()),
    };
    api::check_broker(&invite.broker_url).await?;
    let resp = api::join(&invite.broker_url, &request)
        .await
        .map_err(join_refused)?;
    let member_id = resp
        .member_id
        .ok_or_else(|| anyhow!("the broker accepted the join but sent no member id"))?;
    let role = resp
        .role
        .as_deref()
        .and_then(Role::parse)
        .unwrap_or(Role::granted_by(invite.role));
    ctx.add_mesh(MeshEntry {
        mesh_id: invite.mesh_id.clone(),
        slug: invite.mesh_slug.clone(),
        broker_url: invite.broker_url.clone(),
        member_id: member_id.clone(),
        display_name: display_name.clone(),
        role,
        secret_key: key.to_sk64_hex().to_string(),
        joined_at: now_ms(),
    })?;
    out(
        ctx.json,
        &json!({ "slug": invite.mesh_slug, "meshId": invite.mesh_id, "memberId": member_id, "name": display_name, "role": role }),
        || {
            format!(
                "joined mesh '{}' as {display_name} ({role})\nnext: claudemesh peers",
                invite.mesh_slug
            )
        },
    );
    Ok(())
}

pub(super) async fn leave(ctx: &mut Ctx) -> anyhow::Result<()> {
    let entry = ctx.entry()?.clone();
    if entry.role == Role::Owner {
        bail!("you own mesh '{}'; the owner cannot leave it", entry.slug);
    }
    let told = Admin::new(&entry)?
        .remove_member(&entry.member_id, RemoveMode::Kick)
        .await;
    ctx.config.remove(&entry.slug);
    ctx.dir.save(&ctx.config)?;
    if let Err(e) = &told {
        eprintln!(
            "claudemesh: warning: the broker was not told ({e:#}); the mesh was forgotten locally"
        );
    }
    out(
        ctx.json,
        &json!({ "left": entry.slug, "brokerInformed": told.is_ok() }),
        || format!("left mesh '{}'", entry.slug),
    );
    Ok(())
}

pub(super) fn whoami(ctx: &Ctx) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    let key = entry.key()?.public();
    let v = json!({
        "mesh": entry.slug, "meshId": entry.mesh_id, "broker": entry.broker_url, "memberId": entry.member_id,
        "name": entry.display_name, "role": entry.role, "pubkey": key.to_hex(), "fingerprint": safety::fingerprint(&key),
        "configDir": ctx.dir.path().display().to_string(),
        "meshes": ctx.config.meshes.keys().collect::<Vec<_>>(),
    });
    out(ctx.json, &v, || {
        format!(
            "{} in mesh '{}' ({})\nbroker:      {}\nmember id:   {}\npublic key:  {}\nfingerprint: {}\nconfig:      {}",
            entry.display_name,
            entry.slug,
            entry.role,
            entry.broker_url,
            entry.member_id,
            key.to_hex(),
            safety::fingerprint(&key),
            ctx.dir.path().display()
        )
    });
    Ok(())
}

async fn member_list(admin: &Admin) -> anyhow::Result<Vec<MemberSummary>> {
    let resp = admin
        .list_members()
        .await
        .context("listing members failed")?;
    Ok(resp.members)
}

pub(super) async fn members(ctx: &Ctx) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    let list = member_list(&Admin::new(entry)?).await?;
    out(ctx.json, &serde_json::to_value(&list)?, || {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|m| {
                let state = m.removed.clone().unwrap_or_else(|| {
                    if m.online {
                        "online".into()
                    } else {
                        "offline".into()
                    }
                });
                vec![
                    m.display_name.clone(),
                    m.role.clone(),
                    state,
                    m.member_id.clone(),
                    short(&m.pubkey),
                ]
            })
            .collect();
        table(&["NAME", "ROLE", "STATE", "MEMBER ID", "KEY"], &rows)
    });
    Ok(())
}

pub(super) async fn remove(ctx: &Ctx, who: &str, mode: RemoveMode) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    let admin = Admin::new(entry)?;
    let list = member_list(&admin).await?;
    let lower = who.to_ascii_lowercase();
    let matches: Vec<&MemberSummary> = list
        .iter()
        .filter(|m| m.removed.is_none())
        .filter(|m| {
            m.display_name.eq_ignore_ascii_case(who)
                || m.member_id == who
                || (lower.len() >= 4 && m.pubkey.starts_with(&lower))
        })
        .collect();
    let target = match matches.as_slice() {
        [one] => *one,
        [] => bail!("no active member matches '{who}'; see `claudemesh members`"),
        many => bail!(
            "'{who}' is ambiguous: {}; use the member id",
            many.iter()
                .map(|m| format!("{} ({})", m.display_name, m.member_id))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    admin
        .remove_member(&target.member_id, mode)
        .await
        .with_context(|| format!("{} failed", mode.as_str()))?;
    let verb = match mode {
        RemoveMode::Kick => "removed",
        RemoveMode::Revoke => "revoked",
    };
    out(
        ctx.json,
        &json!({ "memberId": target.member_id, "name": target.display_name, "action": mode.as_str() }),
        || format!("{verb} {} ({})", target.display_name, target.member_id),
    );
    Ok(())
}

/// `dashboard`: a single-use sign-in link for the broker's dashboard of this mesh,
/// printed (`--print`, or when no browser can be started) or opened in the browser.
pub(super) async fn dashboard(ctx: &Ctx, print: bool) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    let url = Admin::new(entry)?.dashboard_login().await?;
    let opened = !print && open_browser(&url);
    out(ctx.json, &json!({ "url": url, "opened": opened }), || {
        if opened {
            format!("opened the dashboard of {} in your browser", entry.slug)
        } else {
            url.clone()
        }
    });
    Ok(())
}

/// Start the platform's URL opener; whether it started.
pub(super) fn open_browser(url: &str) -> bool {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}
