//! `claudemesh`: the command line. Arguments are parsed here into a [`Command`]; mesh
//! and messaging commands live in `commands`, the Claude Code integration in `mcp` (the
//! MCP server), `hook`, `install`, `claude` and `doctor`. `main` turns any error into one
//! actionable line on stderr and a non-zero exit code — never a panic or a backtrace.
//! Data goes to stdout (a table, or JSON with `--json`); logs go to stderr and are off
//! unless `CLAUDEMESH_LOG` is set (the MCP server logs warnings by default, since its
//! stdout is the protocol).

mod api;
mod claude;
mod commands;
mod config;
mod doctor;
mod hook;
mod install;
mod mcp;
mod output;
mod resolve;
mod sessions;

use claudemesh_proto::frames::{Priority, Status};
use claudemesh_proto::invite::InviteRole;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "claudemesh",
    version,
    about = "A mesh of AI coding agents: end-to-end encrypted messages between peers"
)]
pub struct Cli {
    /// Act on this mesh instead of the current one.
    #[arg(long, global = true, value_name = "SLUG")]
    pub mesh: Option<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or manage meshes.
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// Create an invite link (owner or admin), or list / revoke invites.
    #[command(args_conflicts_with_subcommands = true)]
    Invite {
        #[command(subcommand)]
        action: Option<InviteCommand>,
        /// Role the invite grants.
        #[arg(long, value_enum, default_value_t = InviteRole::Member)]
        role: InviteRole,
        /// How many people may use it (0 = unlimited).
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it stays valid: 30m, 12h, 7d…
        #[arg(long, default_value = "7d")]
        expires: String,
    },
    /// Join a mesh with an invite link.
    Join {
        link: String,
        /// Your display name in the mesh.
        #[arg(long)]
        name: Option<String>,
    },
    /// Leave the current mesh (tells the broker, forgets the key).
    Leave,
    /// Show this identity and its meshes.
    Whoami,
    /// List the mesh's members (any member may).
    Members,
    /// Remove a member; they may re-join with a new invite (owner or admin).
    Kick { member: String },
    /// Ban a member's key from the mesh (owner or admin).
    Revoke { member: String },
    /// List peers that are online now.
    Peers,
    /// Send an end-to-end encrypted message to a name, key prefix, @group or *.
    Send {
        to: String,
        message: String,
        #[arg(long, value_enum, default_value_t = Priority::Next)]
        priority: Priority,
    },
    /// Fetch and show new messages.
    Inbox {
        /// Wait up to this many seconds for a new message.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
        /// Show history, including messages that failed verification.
        #[arg(long)]
        all: bool,
    },
    /// Set your status.
    #[command(subcommand)]
    Status(StatusCommand),
    /// Set the summary peers see next to your name ("" clears it).
    Summary { text: String },
    /// Show the safety number you share with a peer; compare it out of band.
    Verify { peer: String },
    /// Register the MCP server and status hooks with Claude Code for this user.
    Install {
        /// Only print what would be done.
        #[arg(long)]
        print: bool,
    },
    /// Remove exactly what `install` added.
    Uninstall {
        /// Only print what would be done.
        #[arg(long)]
        print: bool,
    },
    /// Start `claude` with live message push (development channels) for claudemesh.
    Launch {
        /// Arguments passed on to claude (after --).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The stdio MCP server Claude Code starts (one per session).
    Mcp,
    /// This identity's Claude Code session identities: live, resumable or retired.
    Sessions {
        #[command(subcommand)]
        command: Option<SessionsCommand>,
    },
    /// Sign in to the broker's web dashboard for this mesh (a single-use link, valid 60 s),
    /// or with --local serve this identity's decrypted conversations on 127.0.0.1.
    Dashboard {
        /// Print the link instead of opening a browser.
        #[arg(long)]
        print: bool,
        /// Serve the local view (decrypted history from this machine's inboxes) until
        /// Ctrl-C, instead of signing in to the broker's.
        #[arg(long)]
        local: bool,
        /// The local view's port on 127.0.0.1 (default: any free one).
        #[arg(long, default_value_t = 0, requires = "local")]
        port: u16,
    },
    /// Check config, keys, brokers, clock, membership and the Claude Code setup.
    Doctor,
    /// Claude Code hook entry point (installed by `install`).
    #[command(hide = true)]
    Hook {
        #[arg(value_parser = ["session-start", "prompt-submit", "stop"])]
        event: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MeshCommand {
    /// Create a mesh on a broker; you become its owner.
    Create {
        name: String,
        /// ws://HOST:PORT/ws
        #[arg(long)]
        broker: String,
        /// URL-safe short name (default: derived from NAME).
        #[arg(long)]
        slug: Option<String>,
        /// Your display name (default: $USER).
        #[arg(long = "as", value_name = "DISPLAY_NAME")]
        display_name: Option<String>,
        /// Token if the broker requires one to create meshes.
        #[arg(long, env = "CLAUDEMESH_CREATE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// List the meshes this identity belongs to.
    List,
    /// Make a mesh the current one.
    Use { slug: String },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Retire every session that is not running (on the broker and on this machine).
    Prune {
        /// Only print what would be retired.
        #[arg(long)]
        print: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum InviteCommand {
    /// List this mesh's invites.
    List,
    /// Revoke an invite by id.
    Revoke { invite_id: String },
}

#[derive(Debug, Subcommand)]
pub enum StatusCommand {
    /// idle, working or dnd.
    Set {
        #[arg(value_enum)]
        status: Status,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Hook { event } = &cli.command {
        // Hooks must be fast: no runtime, no config, always exit 0.
        hook::run(event);
        return ExitCode::SUCCESS;
    }
    let default_filter = matches!(cli.command, Command::Mcp).then(|| "warn".to_owned());
    if let Some(filter) = std::env::var("CLAUDEMESH_LOG").ok().or(default_filter) {
        tracing_subscriber::fmt()
            // The WebSocket library logs whole frames at debug/trace: it stops at info.
            .with_env_filter(
                ["tungstenite=info", "tokio_tungstenite=info"]
                    .iter()
                    .filter_map(|d| d.parse().ok())
                    .fold(
                        tracing_subscriber::EnvFilter::new(filter),
                        tracing_subscriber::EnvFilter::add_directive,
                    ),
            )
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("claudemesh: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(commands::run(cli));
    // Do not wait for a blocking read of stdin (the MCP server's) to finish.
    runtime.shutdown_timeout(std::time::Duration::from_millis(10));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context and its causes, joined.
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("claudemesh: {line}");
            ExitCode::FAILURE
        }
    }
}
