//! The session peer: what the MCP tools and the hooks act on. It becomes a peer on
//! activation (the session identity, one [`Link`] per mesh, a receive loop per link),
//! receives every push (opened, verified, recorded and decided by [`Shown`], then acked)
//! and hands new messages to the channel writer; it answers the hooks and remembers the
//! session's summary and groups. The tools themselves are in [`super::tools`].
//!
//! A session becomes a peer only when it is used for real (a hook of its Claude Code
//! session, or a tool call), or when it already was one (a resumed session): until then
//! nothing is written under `sessions/` and nothing connects, so the processes that
//! Claude Code only starts to probe (`claude mcp list`, `claude doctor`, inspectors)
//! leave no identity and no presence behind. See [`Peer::activate`].
//!
//! What it must not do: write to stdout (the MCP server owns it), log message text, or
//! show a message that failed verification.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use claudemesh_client::Connection;
use claudemesh_client::envelope::Keyring;
use claudemesh_client::inbox::{Inbox, Record};
use claudemesh_proto::frames::{GroupRef, PresenceInfo, Priority, Push, Status};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::link::{self, Link, fit};
use super::render::{self, replies};
use super::session::Session;
use super::shown::{Recorded, Shown};
use super::tools::messages::SentLog;
use crate::config::{ConfigDir, MeshEntry};

/// Hooks must be fast: status updates give up after this.
const HOOK_WAIT: Duration = Duration::from_millis(500);

/// A message to push into the session as a channel notification.
#[derive(Debug)]
pub struct Notice {
    /// The broker message id: read once the transcript confirms the notification.
    pub message_id: String,
    pub content: String,
    pub meta: serde_json::Map<String, serde_json::Value>,
    /// The message's causal depth (the loop guard).
    pub depth: u32,
}

/// What a hook of this session tells the server besides its event.
#[derive(Debug, Clone, Default)]
pub struct HookInfo {
    /// Claude Code's transcript of the session (evidence of channel events).
    pub transcript: Option<PathBuf>,
    /// The prompt was typed by a person (not injected by a channel event).
    pub human: bool,
}

/// Everything needed to become a peer, kept until the session is used for real.
pub struct Plan {
    pub dir: ConfigDir,
    pub session_name: String,
    pub entries: Vec<MeshEntry>,
    /// What every mesh's hello announces (display name and groups are set per mesh).
    pub presence: PresenceInfo,
    /// The project directory's name, for `member/repo` display names.
    pub repo: String,
}

/// The parts that exist once the session is a peer.
struct Active {
    links: Vec<Link>,
    session: Mutex<Session>,
}

/// What connecting produced, before it is installed.
struct Opened {
    active: Active,
    inbox: Inbox,
    /// Per link: its pushes and the receive loop's keyring.
    receivers: Vec<(mpsc::Receiver<Push>, Keyring)>,
}

/// The session peer.
pub struct Peer {
    plan: Plan,
    active: OnceLock<Active>,
    /// Serializes activation (two tool calls at once activate once).
    activating: tokio::sync::Mutex<()>,
    /// The receive loops, started on activation; shut down with the server.
    tasks: Mutex<JoinSet<()>>,
    /// The link `*`/`@group` and unresolvable names go to when several meshes are joined.
    pub default_link: usize,
    /// What this session sent, for `message_status`.
    pub sent: SentLog,
    /// The inbox and what the model has been shown, channel state, causal depth.
    pub shown: Shown,
    notices: mpsc::Sender<Notice>,
    /// The session's display name (member name / project directory).
    pub display_name: String,
    /// Why there is nothing to connect to (no mesh joined), if so.
    setup_problem: Option<String>,
}

impl Peer {
    pub fn new(plan: Plan, shown: Shown, notices: mpsc::Sender<Notice>) -> Self {
        let member_name = plan
            .entries
            .first()
            .map(|e| e.display_name.clone())
            .unwrap_or_default();
        let setup_problem = plan
            .entries
            .is_empty()
            .then(|| replies::NO_MESH_JOINED.to_owned());
        Self {
            display_name: format!("{member_name}/{}", plan.repo),
            plan,
            active: OnceLock::new(),
            activating: tokio::sync::Mutex::new(()),
            tasks: Mutex::new(JoinSet::new()),
            default_link: 0,
            sent: SentLog::default(),
            shown,
            notices,
            setup_problem,
        }
    }

    /// Become a peer: open (or create) the session identity, connect to every mesh and
    /// start receiving. Idempotent; the first call does the work.
    pub async fn activate(self: &Arc<Self>) -> Result<(), String> {
        if self.active.get().is_some() {
            return Ok(());
        }
        let _one = self.activating.lock().await;
        if self.active.get().is_some() {
            return Ok(());
        }
        let opened = self.connect_all().map_err(|e| {
            tracing::warn!(error = %format!("{e:#}"), "cannot open the session");
            replies::cannot_open(&e)
        })?;
        let summary = opened.active.session.lock().ok().and_then(|s| s.summary());
        self.shown.open_inbox(opened.inbox);
        let _ = self.active.set(opened.active);
        if let Ok(mut tasks) = self.tasks.lock() {
            for (i, (pushes, ring)) in opened.receivers.into_iter().enumerate() {
                tasks.spawn(self.clone().receive(i, pushes, ring));
            }
            if summary.is_some() {
                let conns: Vec<Connection> = self.links().iter().map(|l| l.conn.clone()).collect();
                tasks.spawn(async move {
                    for conn in conns {
                        let _ = conn.set_summary(summary.clone()).await;
                    }
                });
            }
        }
        tracing::info!(session = %self.plan.session_name, "the session is a peer now");
        Ok(())
    }

    /// Whether this session is a peer yet.
    pub fn is_active(&self) -> bool {
        self.active.get().is_some()
    }

    fn connect_all(&self) -> anyhow::Result<Opened> {
        let plan = &self.plan;
        let mut session = Session::open(&plan.dir, &plan.session_name)?;
        let inbox = Inbox::open(&session.inbox_file())?;
        let max = claudemesh_proto::limits::MAX_SHORT_TEXT_BYTES;
        let mut links = Vec::new();
        let mut receivers = Vec::new();
        for entry in &plan.entries {
            let session_key = session.key_for(&entry.mesh_id)?;
            let mut groups = session.groups();
            groups.truncate(claudemesh_proto::limits::MAX_GROUPS);
            let mut presence = plan.presence.clone();
            presence.display_name =
                Some(fit(&format!("{}/{}", entry.display_name, plan.repo), max));
            presence.session_id = fit(&session.name, max);
            presence.groups = Some(groups);
            presence.reach = Some(self.shown.channels().reach());
            let (link, pushes, ring) = Link::spawn(entry, session_key, presence)?;
            links.push(link);
            receivers.push((pushes, ring));
        }
        let active = Active {
            links,
            session: Mutex::new(session),
        };
        Ok(Opened {
            active,
            inbox,
            receivers,
        })
    }

    pub fn links(&self) -> &[Link] {
        self.active
            .get()
            .map(|a| a.links.as_slice())
            .unwrap_or_default()
    }

    /// The slug of link `index` (empty if there is none).
    pub fn slug(&self, index: usize) -> &str {
        self.links()
            .get(index)
            .map(|l| l.slug.as_str())
            .unwrap_or_default()
    }

    /// Leave every mesh on purpose and stop the receive loops; gives up after `wait`.
    pub async fn leave(&self, wait: Duration) {
        link::leave(self.links(), wait).await;
        let tasks = self.tasks.lock().map(|mut t| std::mem::take(&mut *t));
        if let Ok(mut tasks) = tasks {
            tasks.abort_all();
        }
    }

    /// Activate for a tool call and check there is a mesh to act on.
    pub async fn ready_for_tools(self: &Arc<Self>) -> Result<(), String> {
        if let Some(p) = &self.setup_problem {
            return Err(p.clone());
        }
        self.activate().await
    }

    /// The groups this session is in (as last remembered).
    pub fn groups(&self) -> Vec<GroupRef> {
        self.active
            .get()
            .and_then(|a| a.session.lock().ok().map(|s| s.groups()))
            .unwrap_or_default()
    }

    /// Change the remembered summary and groups, for a restart of this session.
    pub fn remember(&self, change: impl FnOnce(&mut Option<String>, &mut Vec<GroupRef>)) {
        if let Some(Ok(mut session)) = self.active.get().map(|a| a.session.lock()) {
            let (mut summary, mut groups) = (session.summary(), session.groups());
            change(&mut summary, &mut groups);
            if let Err(e) = session.remember(summary, groups) {
                tracing::warn!(error = %e, "could not save the session state");
            }
        }
    }

    // ------------------------------------------------------------ receiving

    /// Receive pushes of link `index` until its connection is gone: record (via
    /// [`Shown::record`]), ack, and hand new messages on. Runs as one task per link.
    pub async fn receive(
        self: Arc<Self>,
        index: usize,
        mut pushes: mpsc::Receiver<Push>,
        mut ring: Keyring,
    ) {
        let Some(link) = self.links().get(index) else {
            return;
        };
        while let Some(mut push) = pushes.recv().await {
            if push.subtype.as_deref() == Some("system") {
                continue; // presence events are not durable and need no ack
            }
            if push.sender_name.is_none() {
                push.sender_name = link.name_of(&push.sender_pubkey).await;
            }
            let Some(recorded) = self.shown.record(&mut ring, &push) else {
                continue;
            };
            match recorded {
                Ok(Recorded::Push(record)) => self.push(index, record).await,
                Ok(Recorded::Held | Recorded::Rejected | Recorded::Known) => {}
                Err(e) => {
                    // Not recorded, so not acked: the broker pushes it again later.
                    tracing::warn!(error = %crate::output::chain(&e), "could not record an inbound message");
                    continue;
                }
            }
            if let Err(e) = link.conn.ack(&push.message_id).await {
                tracing::debug!(error = %e, "ack not sent; the delivery will come again");
            }
        }
    }

    /// Hand a new message to the channel writer. It stays unread until the transcript
    /// confirms it (see `shown.rs`); if the writer is gone it is offered elsewhere at once.
    async fn push(&self, index: usize, record: Record) {
        let notice = render::notice(&record, self.slug(index));
        if self.notices.send(notice).await.is_err() {
            self.shown.written(&record.message_id, false, record.depth);
        }
    }

    /// Look for evidence of pushes in the transcript (confirmed ones are read now); if
    /// channels turned out to be dropped, peers are told how messages reach us instead.
    pub async fn confirm(&self) {
        if self.shown.confirm().dropped_now {
            self.announce_reach().await;
        }
    }

    /// Before showing messages: see [`Shown::settle`].
    pub async fn settle(&self) {
        self.shown.settle(|| self.announce_reach()).await;
    }

    async fn announce_reach(&self) {
        link::set_reach(self.links(), self.shown.channels().reach()).await;
    }

    /// Messages with the slug of their mesh, as the renderers take them.
    pub fn labelled<'a>(
        &'a self,
        messages: impl IntoIterator<Item = &'a (usize, Record)>,
    ) -> Vec<(&'a str, &'a Record)> {
        messages
            .into_iter()
            .map(|(i, r)| (self.slug(*i), r))
            .collect()
    }

    /// Unread messages of every mesh, oldest first, with the index of their link.
    pub fn unread(&self) -> Vec<(usize, Record)> {
        let mesh_ids: Vec<&str> = self.links().iter().map(|l| l.mesh_id.as_str()).collect();
        self.shown.unread(&mesh_ids)
    }

    // ------------------------------------------------------------ hooks

    /// A hook of this session ran: the session is real (activate it) and its transcript
    /// is where channel events show up.
    async fn hooked(self: &Arc<Self>, info: &HookInfo) {
        if let Some(path) = &info.transcript {
            self.shown.set_transcript(path.clone());
        }
        if self.setup_problem.is_none() && self.activate().await.is_ok() {
            self.confirm().await;
        }
    }

    /// The session-start hook: Claude Code started (or resumed, cleared, compacted) a
    /// real session, so it becomes a peer now, before its first prompt.
    pub async fn session_started(self: &Arc<Self>, info: &HookInfo) {
        self.hooked(info).await;
    }

    /// The prompt hook: the session is working now; unread `now`/`next` messages that fit
    /// Claude Code's context limit become context for this turn, and `low` ones are only
    /// counted. Returns the text and the ids it shows, to mark read once it is delivered.
    pub async fn prompt_submitted(self: &Arc<Self>, info: &HookInfo) -> (String, Vec<String>) {
        self.hooked(info).await;
        if info.human {
            self.shown.human_prompt();
        }
        self.settle().await;
        link::set_status(self.links(), Status::Working, HOOK_WAIT).await;
        let unread = self.unread();
        let (low, urgent): (Vec<_>, Vec<_>) = unread
            .iter()
            .partition(|(_, r)| r.priority == Priority::Low.as_str());
        let list = self.labelled(urgent);
        let (context, shown) = replies::prompt_context(&list, low.len());
        let ids = self.shown.handed(&list, shown, !info.human);
        (context, ids)
    }

    /// The stop hook: the session is idle, so held messages may come.
    pub async fn stopped(self: &Arc<Self>, info: &HookInfo) {
        self.hooked(info).await;
        link::set_status(self.links(), Status::Idle, HOOK_WAIT).await;
    }

    /// One line per mesh on the connection, then how messages reach the session, for
    /// the log and `doctor`.
    pub fn connection_report(&self) -> Vec<String> {
        let mut lines = if self.is_active() {
            self.links().iter().map(Link::state_line).collect()
        } else {
            vec!["not a peer yet: it becomes one at the session's first hook or tool call".into()]
        };
        lines.push(format!("delivery: {}", self.shown.channels().describe()));
        lines
    }
}
