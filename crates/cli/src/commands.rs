//! One function per command. Each loads the config, talks to the broker (HTTP for
//! enrollment and administration, a short-lived WebSocket for everything else), and
//! prints a table or JSON. Errors carry enough context to be one actionable line.

use claudemesh_proto::time::{now_ms, readable};

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use claudemesh_client::envelope::Keyring;
use claudemesh_client::inbox::{Inbox, Kind, Record};
use claudemesh_client::{ConnectOptions, Connection, Delivery, Identity, messaging, safety};
use claudemesh_crypto::{PublicKey, SecretKey};
use claudemesh_proto::canonical::AdminAction;
use claudemesh_proto::codes::cap;
use claudemesh_proto::frames::{PresenceInfo, Priority, Push, Status};
use claudemesh_proto::http::{
    CreateMeshResponse, InviteListResponse, JoinResponse, MemberListResponse, MemberSummary,
    RegisterInviteResponse,
};
use claudemesh_proto::invite::{InviteError, InvitePayload, InviteRole};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::api::{self, merge, post, signed};
use crate::config::{Config, ConfigDir, MeshEntry, http_base};
use crate::resolve::{self, Candidate, resolve};
use crate::{Cli, Command, InviteCommand, MeshCommand, StatusCommand};

/// Print `value` (with `--json`) or the text, as one write to stdout.
pub(crate) fn out(json: bool, value: &Value, text: impl FnOnce() -> String) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let line = if json { value.to_string() } else { text() };
    let _ = writeln!(stdout, "{line}");
}

pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut lines = vec![line(headers.to_vec())];
    lines.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    lines.join("\n")
}

pub(crate) fn short(key: &str) -> String {
    key.get(..8).unwrap_or(key).to_owned()
}

fn default_name() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "member".into())
}

fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.trim_end_matches('-').chars().take(64).collect()
}

/// `30m`, `12h`, `7d`, `90s` or a number of seconds.
fn parse_duration(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| anyhow!("'{s}' is not a duration; use e.g. 30m, 12h or 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => bail!("'{s}' is not a duration; use e.g. 30m, 12h or 7d"),
    };
    if n <= 0 {
        bail!("the duration must be positive");
    }
    Ok(n * mult)
}

struct Ctx {
    dir: ConfigDir,
    config: Config,
    mesh: Option<String>,
    json: bool,
}

impl Ctx {
    fn entry(&self) -> anyhow::Result<&MeshEntry> {
        self.config.mesh(self.mesh.as_deref())
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = ConfigDir::from_env()?;
    let config = dir.load()?;
    for problem in dir.permission_problems() {
        eprintln!("claudemesh: warning: {problem}");
    }
    let mut ctx = Ctx {
        dir,
        config,
        mesh: cli.mesh,
        json: cli.json,
    };
    match cli.command {
        Command::Mesh(MeshCommand::Create {
            name,
            broker,
            slug,
            display_name,
            token,
        }) => mesh_create(&mut ctx, &name, &broker, slug, display_name, token).await,
        Command::Mesh(MeshCommand::List) => mesh_list(&ctx),
        Command::Mesh(MeshCommand::Use { slug }) => mesh_use(&mut ctx, &slug),
        Command::Invite {
            action: None,
            role,
            uses,
            expires,
        } => invite_create(&ctx, &role, uses, &expires).await,
        Command::Invite {
            action: Some(InviteCommand::List),
            ..
        } => invite_list(&ctx).await,
        Command::Invite {
            action: Some(InviteCommand::Revoke { invite_id }),
            ..
        } => invite_revoke(&ctx, &invite_id).await,
        Command::Join { link, name } => join(&mut ctx, &link, name).await,
        Command::Leave => leave(&mut ctx).await,
        Command::Whoami => whoami(&ctx),
        Command::Members => members(&ctx).await,
        Command::Kick { member } => remove(&ctx, &member, "kick").await,
        Command::Revoke { member } => remove(&ctx, &member, "revoke").await,
        Command::Peers => peers(&ctx).await,
        Command::Send {
            to,
            message,
            priority,
        } => send(&ctx, &to, &message, &priority).await,
        Command::Inbox { wait, all } => inbox(&ctx, wait, all).await,
        Command::Status(StatusCommand::Set { status }) => status_set(&ctx, &status).await,
        Command::Summary { text } => summary(&ctx, &text).await,
        Command::Verify { peer } => verify(&ctx, &peer).await,
        Command::Install { print } => crate::install::install(ctx.json, print),
        Command::Uninstall { print } => crate::install::uninstall(ctx.json, print),
        Command::Launch { args } => crate::install::launch(&args),
        Command::Mcp => crate::mcp::run(ctx.dir, ctx.config, ctx.mesh).await,
        Command::Sessions { command } => {
            let prune = command.map(|crate::SessionsCommand::Prune { print }| print);
            crate::sessions::run(&ctx.dir, &ctx.config, ctx.mesh.as_deref(), ctx.json, prune).await
        }
        Command::Doctor => crate::doctor::doctor(&ctx.dir, &ctx.config, ctx.json).await,
        // Handled in main before any config is read.
        Command::Hook { .. } => Ok(()),
    }
}

// ---------------------------------------------------------------- meshes and invites

async fn mesh_create(
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
    let base = http_base(broker)?;
    let key = SecretKey::generate();
    let display_name = display_name.unwrap_or_else(default_name);
    let body = merge(
        json!({ "name": name, "slug": slug, "ownerDisplayName": display_name, "creationToken": token }),
        signed(&key, AdminAction::CreateMesh, "", &[&slug, name]),
    );
    let resp: CreateMeshResponse = post(&base, "/api/meshes", &body)
        .await
        .context("creating the mesh failed")?;
    ctx.config.insert(MeshEntry {
        mesh_id: resp.mesh_id.clone(),
        slug: resp.slug.clone(),
        broker_url: broker.to_owned(),
        member_id: resp.owner_member_id.clone(),
        display_name,
        role: "owner".into(),
        secret_key: key.to_sk64_hex().to_string(),
        joined_at: now_ms(),
    });
    ctx.dir.save(&ctx.config)?;
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

fn mesh_list(ctx: &Ctx) -> anyhow::Result<()> {
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
                    m.role.clone(),
                    m.broker_url.clone(),
                ]
            })
            .collect();
        if rows.is_empty() {
            "no meshes yet".into()
        } else {
            table(&["", "MESH", "YOU", "ROLE", "BROKER"], &rows)
        }
    });
    Ok(())
}

fn mesh_use(ctx: &mut Ctx, slug: &str) -> anyhow::Result<()> {
    ctx.config.mesh(Some(slug))?;
    ctx.config.current = Some(slug.to_owned());
    ctx.dir.save(&ctx.config)?;
    out(ctx.json, &json!({ "current": slug }), || {
        format!("current mesh: {slug}")
    });
    Ok(())
}

async fn invite_create(ctx: &Ctx, role: &str, uses: u32, expires: &str) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    let role = if role == "admin" {
        InviteRole::Admin
    } else {
        InviteRole::Member
    };
    let expires_at = now_ms() / 1000 + parse_duration(expires)?;
    let key = entry.key()?;
    let invite = InvitePayload::sign(
        &entry.mesh_id,
        &entry.slug,
        &entry.broker_url,
        expires_at,
        role,
        &key,
    );
    let id = invite.invite_id();
    let body = merge(
        json!({ "invite": invite, "maxUses": uses }),
        signed(
            &key,
            AdminAction::RegisterInvite,
            &entry.mesh_id,
            &[&id, &uses.to_string()],
        ),
    );
    let _: RegisterInviteResponse = post(
        &entry.http_base()?,
        &format!("/api/meshes/{}/invites", entry.mesh_id),
        &body,
    )
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
            readable(expires_at * 1000)
        );
    }
    Ok(())
}

async fn invite_list(ctx: &Ctx) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    let key = entry.key()?;
    let resp: InviteListResponse = post(
        &entry.http_base()?,
        &format!("/api/meshes/{}/invites/list", entry.mesh_id),
        &signed(&key, AdminAction::ListInvites, &entry.mesh_id, &[]),
    )
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
                    readable(i.expires_at * 1000),
                    state.into(),
                ]
            })
            .collect();
        if rows.is_empty() {
            "no invites".into()
        } else {
            table(&["INVITE", "ROLE", "USES", "EXPIRES", "STATE"], &rows)
        }
    });
    Ok(())
}

async fn invite_revoke(ctx: &Ctx, invite_id: &str) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    let key = entry.key()?;
    let _: Value = post(
        &entry.http_base()?,
        &format!("/api/meshes/{}/invites/{invite_id}/revoke", entry.mesh_id),
        &signed(
            &key,
            AdminAction::RevokeInvite,
            &entry.mesh_id,
            &[invite_id],
        ),
    )
    .await
    .context("revoking the invite failed")?;
    out(ctx.json, &json!({ "revoked": invite_id }), || {
        format!("invite {invite_id} revoked")
    });
    Ok(())
}

// ---------------------------------------------------------------- membership

async fn join(ctx: &mut Ctx, link: &str, name: Option<String>) -> anyhow::Result<()> {
    // Everything that can be checked offline is checked before any network call.
    let invite = InvitePayload::from_link(link).map_err(|e| match e {
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
            readable(invite.expires_at * 1000)
        );
    }
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
    let body = json!({ "invite_token": invite.token(), "invite_payload": invite, "peer_pubkey": key.public().to_hex(), "display_name": display_name });
    let resp: JoinResponse = post(&http_base(&invite.broker_url)?, "/join", &body).await.map_err(|e| match e.downcast_ref::<api::ApiError>().map(|a| a.code.as_str()) {
        Some("invite_expired") => anyhow!("this invite has expired; ask for a new one"),
        Some("invite_exhausted") => anyhow!("this invite has been used up; ask for a new one"),
        Some("invite_revoked") => anyhow!("this invite was revoked; ask for a new one"),
        Some("invite_not_found") => anyhow!("the broker does not know this invite (it was never registered); ask for a new one"),
        Some("member_revoked") => anyhow!("you have been banned from this mesh"),
        _ => e.context("joining failed"),
    })?;
    let member_id = resp
        .member_id
        .ok_or_else(|| anyhow!("the broker accepted the join but sent no member id"))?;
    let role = resp.role.unwrap_or_else(|| invite.role.as_str().to_owned());
    ctx.config.insert(MeshEntry {
        mesh_id: invite.mesh_id.clone(),
        slug: invite.mesh_slug.clone(),
        broker_url: invite.broker_url.clone(),
        member_id: member_id.clone(),
        display_name: display_name.clone(),
        role: role.clone(),
        secret_key: key.to_sk64_hex().to_string(),
        joined_at: now_ms(),
    });
    ctx.dir.save(&ctx.config)?;
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

async fn leave(ctx: &mut Ctx) -> anyhow::Result<()> {
    let entry = ctx.entry()?.clone();
    if entry.role == "owner" {
        bail!("you own mesh '{}'; the owner cannot leave it", entry.slug);
    }
    let key = entry.key()?;
    let body = merge(
        json!({ "mode": "kick" }),
        signed(
            &key,
            AdminAction::RemoveMember,
            &entry.mesh_id,
            &[&entry.member_id, "kick"],
        ),
    );
    let told: anyhow::Result<Value> = post(
        &entry.http_base()?,
        &format!(
            "/api/meshes/{}/members/{}/remove",
            entry.mesh_id, entry.member_id
        ),
        &body,
    )
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

fn whoami(ctx: &Ctx) -> anyhow::Result<()> {
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

async fn member_list(entry: &MeshEntry) -> anyhow::Result<Vec<MemberSummary>> {
    let key = entry.key()?;
    let resp: MemberListResponse = post(
        &entry.http_base()?,
        &format!("/api/meshes/{}/members/list", entry.mesh_id),
        &signed(&key, AdminAction::ListMembers, &entry.mesh_id, &[]),
    )
    .await
    .context("listing members failed")?;
    Ok(resp.members)
}

async fn members(ctx: &Ctx) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    let list = member_list(entry).await?;
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

async fn remove(ctx: &Ctx, who: &str, mode: &str) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    let list = member_list(entry).await?;
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
    let key = entry.key()?;
    let body = merge(
        json!({ "mode": mode }),
        signed(
            &key,
            AdminAction::RemoveMember,
            &entry.mesh_id,
            &[&target.member_id, mode],
        ),
    );
    let _: Value = post(
        &entry.http_base()?,
        &format!(
            "/api/meshes/{}/members/{}/remove",
            entry.mesh_id, target.member_id
        ),
        &body,
    )
    .await
    .with_context(|| format!("{mode} failed"))?;
    let verb = if mode == "kick" { "removed" } else { "revoked" };
    out(
        ctx.json,
        &json!({ "memberId": target.member_id, "name": target.display_name, "action": mode }),
        || format!("{verb} {} ({})", target.display_name, target.member_id),
    );
    Ok(())
}

// ---------------------------------------------------------------- live commands

pub(crate) struct Live {
    pub(crate) conn: Connection,
    pushes: mpsc::Receiver<Push>,
    key: SecretKey,
}

pub(crate) async fn connect(entry: &MeshEntry) -> anyhow::Result<Live> {
    let key = entry.key()?;
    let presence = PresenceInfo {
        display_name: Some(entry.display_name.clone()),
        session_id: format!("cli-{}", std::process::id()),
        pid: i64::from(std::process::id()),
        cwd: std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        hostname: std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty()),
        peer_type: Some("human".into()),
        channel: Some("cli".into()),
        capabilities: Some(vec![cap::E2E_MULTICAST.into(), cap::LIST_MEMBERS.into()]),
        ..PresenceInfo::default()
    };
    let identity = Identity {
        mesh_id: entry.mesh_id.clone(),
        member_id: entry.member_id.clone(),
        member_key: key.clone(),
        session_key: None,
    };
    let opts = ConnectOptions {
        url: entry.broker_url.clone(),
        identity,
        presence,
        reconnect: false,
    };
    let (conn, pushes) = Connection::connect(opts).await.map_err(|e| match e {
        claudemesh_client::ConnectError::Refused { code, .. } if code == "revoked" => {
            anyhow!("you have been revoked from mesh '{}'", entry.slug)
        }
        claudemesh_client::ConnectError::Refused { code, .. } if code == "unauthorized" => anyhow!(
            "you are not a member of mesh '{}' (removed?); join again with a new invite",
            entry.slug
        ),
        claudemesh_client::ConnectError::Refused { code, .. } if code == "timestamp_skew" => {
            anyhow!("your clock is off by more than a minute; fix the system time")
        }
        other => other.into(), // keeps the cause for main's {:#}
    })?;
    Ok(Live { conn, pushes, key })
}

/// Everyone this connection can address, itself excluded.
async fn candidates(live: &Live) -> anyhow::Result<Vec<Candidate>> {
    resolve::candidates(&live.conn, &live.key.public().to_hex()).await
}

async fn peers(ctx: &Ctx) -> anyhow::Result<()> {
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
                    p.role.clone(),
                    p.reach.map_or("-", |r| r.as_str()).replace('_', " "),
                    place,
                    short(&p.pubkey),
                ]
            })
            .collect();
        table(
            &["NAME", "STATUS", "SUMMARY", "ROLE", "REACH", "WHERE", "KEY"],
            &rows,
        )
    });
    Ok(())
}

async fn send(ctx: &Ctx, to: &str, message: &str, priority: &str) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    let priority = Priority::parse(priority).unwrap_or_default();
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
        messaging::SendError::Refused(code) if code == "unknown_recipient" => {
            anyhow!("the broker does not know '{to}' any more (left or removed)")
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

async fn inbox(ctx: &Ctx, wait: Option<u64>, all: bool) -> anyhow::Result<()> {
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
    let when = r
        .created_at
        .get(..16)
        .unwrap_or(&r.created_at)
        .replace('T', " ");
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

async fn status_set(ctx: &Ctx, status: &str) -> anyhow::Result<()> {
    let entry = ctx.entry()?;
    let status = match status {
        "working" => Status::Working,
        "dnd" => Status::Dnd,
        _ => Status::Idle,
    };
    let live = connect(entry).await?;
    live.conn.set_status(status).await?;
    live.conn.sync().await?;
    live.conn.close().await;
    out(ctx.json, &json!({ "status": status.as_str() }), || {
        format!("status: {}", status.as_str())
    });
    Ok(())
}

async fn summary(ctx: &Ctx, text: &str) -> anyhow::Result<()> {
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

async fn verify(ctx: &Ctx, peer: &str) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_slugs_and_dates() {
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0h").is_err());
        assert_eq!(slugify("Acme Payments!"), "acme-payments");
    }
}
