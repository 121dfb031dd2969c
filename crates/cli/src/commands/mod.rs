//! One function per command, grouped by concern: `mesh` (meshes and invites), `members`
//! (join, leave, whoami, members, kick / revoke), `messaging` (peers, send, inbox,
//! status, summary, verify) over the short-lived connection in `live`. Each loads the
//! config, talks to the broker (HTTP for enrollment and administration through
//! [`crate::api`], a short-lived WebSocket for everything else), and prints a table or
//! JSON through [`crate::output`]. Errors carry enough context to be one actionable line.
//!
//! The Claude Code commands (`install`, `mcp`, `hook`, `doctor`, `sessions`…) live in
//! their own modules; `run` only dispatches to them.

mod input;
pub(crate) mod live;
mod local;
mod members;
mod mesh;
mod messaging;

use claudemesh_proto::http::RemoveMode;

use crate::config::{Config, ConfigDir, MeshEntry};
use crate::{Cli, Command, InviteCommand, MeshCommand, StatusCommand};

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

    /// Keep a mesh just created or joined, in the config file at once.
    fn add_mesh(&mut self, entry: MeshEntry) -> anyhow::Result<()> {
        self.config.insert(entry);
        self.dir.save(&self.config)
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
        }) => mesh::mesh_create(&mut ctx, &name, &broker, slug, display_name, token).await,
        Command::Mesh(MeshCommand::List) => mesh::mesh_list(&ctx),
        Command::Mesh(MeshCommand::Use { slug }) => mesh::mesh_use(&mut ctx, &slug),
        Command::Invite {
            action: None,
            role,
            uses,
            expires,
        } => mesh::invite_create(&ctx, role, uses, &expires).await,
        Command::Invite {
            action: Some(InviteCommand::List),
            ..
        } => mesh::invite_list(&ctx).await,
        Command::Invite {
            action: Some(InviteCommand::Revoke { invite_id }),
            ..
        } => mesh::invite_revoke(&ctx, &invite_id).await,
        Command::Join { link, name } => members::join(&mut ctx, &link, name).await,
        Command::Leave => members::leave(&mut ctx).await,
        Command::Whoami => members::whoami(&ctx),
        Command::Members => members::members(&ctx).await,
        Command::Kick { member } => members::remove(&ctx, &member, RemoveMode::Kick).await,
        Command::Revoke { member } => members::remove(&ctx, &member, RemoveMode::Revoke).await,
        Command::Peers => messaging::peers(&ctx).await,
        Command::Send {
            to,
            message,
            priority,
        } => messaging::send(&ctx, &to, &message, priority).await,
        Command::Inbox { wait, all } => messaging::inbox(&ctx, wait, all).await,
        Command::Status(StatusCommand::Set { status }) => messaging::status_set(&ctx, status).await,
        Command::Summary { text } => messaging::summary(&ctx, &text).await,
        Command::Verify { peer } => messaging::verify(&ctx, &peer).await,
        Command::Install { print } => crate::install::install(ctx.json, print),
        Command::Uninstall { print } => crate::install::uninstall(ctx.json, print),
        Command::Launch { args } => crate::install::launch(&args),
        Command::Mcp => crate::mcp::run(ctx.dir, ctx.config, ctx.mesh).await,
        Command::Sessions { command } => {
            let prune = command.map(|crate::SessionsCommand::Prune { print }| print);
            crate::sessions::run(&ctx.dir, &ctx.config, ctx.mesh.as_deref(), ctx.json, prune).await
        }
        Command::Doctor => crate::doctor::doctor(&ctx.dir, &ctx.config, ctx.json).await,
        Command::Dashboard {
            print,
            local: true,
            port,
        } => local::dashboard(&ctx, port, print).await,
        Command::Dashboard { print, .. } => members::dashboard(&ctx, print).await,
        // Handled in main before any config is read.
        Command::Hook { .. } => Ok(()),
    }
}
