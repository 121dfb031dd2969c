//! Meshes and invites: `mesh create | list | use` and `invite [list | revoke]`. Creating
//! a mesh makes a new owner key; an invite is signed here with the member key and only
//! registered (by id, with its use limit) on the broker.

use anyhow::{Context as _, bail};
use claudemesh_crypto::SecretKey;
use claudemesh_proto::authority::Role;
use claudemesh_proto::invite::{InvitePayload, InviteRole};
use claudemesh_proto::time::{now_ms, readable};
use serde_json::{Value, json};

use super::Ctx;
use super::input::{default_name, parse_duration, slugify};
use crate::api::{self, Admin};
use crate::config::MeshEntry;
use crate::output::{out, table_or};

pub(super) async fn mesh_create(
    ctx: &mut Ctx,
    name: &str,
    broker: &str,
    slug: Option<String>,
    display_name: Option<String>,
    token: Option<String>,
) -> anyhow::Result<()> {
    let slug = slug.unwrap_or_else(|| slugify(name));
    if slug.is_empty() {
        bail!("cannot derive a slug from '{name}'; pass --slug");
    }
    if ctx.config.meshes.contains_key(&slug) {
        bail!("you already have a mesh called '{slug}'; pick another --slug");
    }
    api::check_broker(broker).await?;
    let key = SecretKey::generate();
    let display_name = display_name.unwrap_or_else(default_name);
    let resp = api::create_mesh(broker, &key, name, &slug, &display_name, token)
        .await
        .context("creating the mesh failed")?;
    ctx.add_mesh(MeshEntry {
        mesh_id: resp.mesh_id.clone(),
        slug: resp.slug.clone(),
        broker_url: broker.to_owned(),
        member_id: resp.owner_member_id.clone(),
        display_name,
        role: Role::Owner,
        secret_key: key.to_sk64_hex().to_string(),
        joined_at: now_ms(),
    })?;
    out(
        ctx.json,
        &json!({ "slug": resp.slug, "meshId": resp.mesh_id, "broker": broker, "role": "owner" }),
        || {
            format!(
                "created mesh '{}' (id {}); you are its owner\nnext: claudemesh invite",
                resp.slug, resp.mesh_id
            )
        },
    );
    Ok(())
}

pub(super) fn mesh_list(ctx: &Ctx) -> anyhow::Result<()> {
    let current = ctx.config.current.clone().unwrap_or_default();
    let list: Vec<Value> = ctx
        .config
        .meshes
        .values()
        .map(|m| json!({ "slug": m.slug, "meshId": m.mesh_id, "broker": m.broker_url, "role": m.role, "name": m.display_name, "current": m.slug == current }))
        .collect();
    out(ctx.json, &json!(list), || {
        let rows: Vec<Vec<String>> = ctx
            .config
            .meshes
            .values()
            .map(|m| {
                vec![
                    if m.slug == current {
                        "*".into()
                    } else {
                        String::new()
                    },
                    m.slug.clone(),
                    m.display_name.clone(),
                    m.role.as_str().to_owned(),
                    m.broker_url.clone(),
                ]
            })
            .collect();
        table_or(
            "no meshes yet",
            &["", "MESH", "YOU", "ROLE", "BROKER"],
            &rows,
        )
    });
    Ok(())
}

pub(super) fn mesh_use(ctx: &mut Ctx, slug: &str) -> anyhow::Result<()> {
    ctx.config.mesh(Some(slug))?;
    ctx.config.current = Some(slug.to_owned());
    ctx.dir.save(&ctx.config)?;
    out(ctx.json, &json!({ "current": slug }), || {
        format!("current mesh: {slug}")
    });
    Ok(())
}

pub(super) async fn invite_create(
    ctx: &Ctx,
    role: InviteRole,
    uses: u32,
    expires: &str,
) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    if !entry.role.is_admin() {
        bail!(
            "only the owner or an admin of '{}' can invite (you are a {})",
            entry.slug,
            entry.role
        );
    }
    let expires_at = now_ms() / 1000 + parse_duration(expires)?;
    let admin = Admin::new(entry)?;
    let invite = InvitePayload::sign(
        &entry.mesh_id,
        &entry.slug,
        &entry.broker_url,
        expires_at,
        role,
        admin.key(),
    );
    let id = invite.invite_id();
    admin
        .register_invite(&invite, uses)
        .await
        .context("creating the invite failed")?;
    let link = invite.link();
    out(
        ctx.json,
        &json!({ "link": link, "inviteId": id, "role": role.as_str(), "maxUses": uses, "expiresAt": expires_at }),
        || link.clone(),
    );
    if !ctx.json {
        let uses = if uses == 0 {
            "unlimited uses".to_owned()
        } else {
            format!("{uses} use(s)")
        };
        eprintln!(
            "invite {id}: {} role, {uses}, expires {}",
            role.as_str(),
            readable(expires_at.saturating_mul(1000))
        );
    }
    Ok(())
}

pub(super) async fn invite_list(ctx: &Ctx) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    let resp = Admin::new(entry)?
        .list_invites()
        .await
        .context("listing invites failed")?;
    out(ctx.json, &serde_json::to_value(&resp.invites)?, || {
        let now = now_ms() / 1000;
        let rows: Vec<Vec<String>> = resp
            .invites
            .iter()
            .map(|i| {
                let state = if i.revoked {
                    "revoked"
                } else if i.expires_at <= now {
                    "expired"
                } else if i.max_uses > 0 && i.uses >= i.max_uses {
                    "used up"
                } else {
                    "open"
                };
                let uses = if i.max_uses == 0 {
                    format!("{}/∞", i.uses)
                } else {
                    format!("{}/{}", i.uses, i.max_uses)
                };
                vec![
                    i.invite_id.clone(),
                    i.role.as_str().into(),
                    uses,
                    readable(i.expires_at.saturating_mul(1000)),
                    state.into(),
                ]
            })
            .collect();
        table_or(
            "no invites",
            &["INVITE", "ROLE", "USES", "EXPIRES", "STATE"],
            &rows,
        )
    });
    Ok(())
}

pub(super) async fn invite_revoke(ctx: &Ctx, invite_id: &str) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    Admin::new(entry)?
        .revoke_invite(invite_id)
        .await
        .context("revoking the invite failed")?;
    out(ctx.json, &json!({ "revoked": invite_id }), || {
        format!("invite {invite_id} revoked")
    });
    Ok(())
}
