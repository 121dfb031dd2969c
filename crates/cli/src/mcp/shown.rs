//! What the model has been shown, and the evidence for it: the one owner of the
//! session's inbox (what is recorded, unread, read), the channel state, the pushes
//! awaiting confirmation, the count of messages that failed verification, and the causal
//! depth of what this session writes (the loop guard).
//!
//! - Every push is recorded here first (deduped); whether it is pushed as a channel
//!   notification is decided under the same inbox lock, so a prompt hook or
//!   `check_messages` in between never finds a message neither unread nor in flight.
//! - A message counts as shown only on evidence: the text returned by a tool, added by a
//!   hook, or a channel event found in the transcript ([`super::transcript`]). A push
//!   that is written but not confirmed within [`CONFIRM_WAIT`] is offered again at the
//!   next prompt or `check_messages`; while it is younger, it is in flight and offered
//!   nowhere else, so a message that did arrive live is never shown twice.
//! - Channels start `Assumed` when Claude Code was started with our channel flag. The
//!   first confirmed push makes them `Working`; a push that goes unconfirmed while
//!   nothing was ever confirmed makes them `Dropped`: pushing stops for this session and
//!   `doctor`, `list_peers` and presence (`reach`) say so.
//! - Depth: 0 for what is written after a person's prompt; after a peer message of depth
//!   `d` reached the model outside a person's prompt (a push, `check_messages`), what the
//!   session writes carries `d + 1`. Sending past the limit is refused.
//!
//! What it must not do: mark anything read without evidence (it marks confirmed pushes
//! itself; a hook reply or a `check_messages` result is marked by whoever wrote it, once
//! written), talk to the network, or block on I/O for longer than one bounded transcript
//! read or inbox write. Lock order: the inbox, then the state, never the other way.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use claudemesh_client::envelope::Keyring;
use claudemesh_client::inbox::{Inbox, InboxError, Kind, Record};
use claudemesh_client::messaging;
use claudemesh_proto::frames::{Priority, Push, Reach};

use super::render::replies;
use super::transcript::Transcript;

/// How long a written push may take to appear in the transcript before it is offered
/// again (Claude Code writes it within milliseconds when it accepts it).
pub const CONFIRM_WAIT: Duration = Duration::from_secs(1);
/// Default for `CLAUDEMESH_MAX_DEPTH`: the 9th hop of agents answering agents is refused.
pub const DEFAULT_MAX_DEPTH: u32 = 8;
/// From this depth on, a shown message is marked as part of a long agent exchange.
pub const DEEP: u32 = 3;

/// Whether Claude Code shows our channel notifications in this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// Not started with the channel flag: messages wait for the hook and tools.
    Off,
    /// Started with the flag; no evidence yet either way.
    Assumed,
    /// A push was found in the transcript.
    Working,
    /// A push never showed up although nothing ever did: Claude Code drops them.
    Dropped,
}

impl Channels {
    pub fn pushes(self) -> bool {
        matches!(self, Channels::Assumed | Channels::Working)
    }

    /// How a `now` message reaches this session, for presence.
    pub fn reach(self) -> Reach {
        if self.pushes() {
            Reach::Live
        } else {
            Reach::NextPrompt
        }
    }

    /// One line for `doctor` and the tools.
    pub fn describe(self) -> &'static str {
        match self {
            Channels::Off => {
                "messages arrive at the next prompt (hook) or via check_messages; start claude with `claudemesh launch` for live push"
            }
            Channels::Assumed => "live push requested (channels flag); not confirmed yet",
            Channels::Working => "live push works: messages appear in the running session",
            Channels::Dropped => {
                "live push unavailable: Claude Code dropped channel events (API-key or Console login, or an organisation without channels); messages arrive at the next prompt or via check_messages"
            }
        }
    }
}

struct State {
    channels: Channels,
    /// Pushes handed to the writer: `None` until written, then when.
    pushed: HashMap<String, Option<Instant>>,
    transcript: Option<Transcript>,
    /// The deepest peer message shown outside a person's prompt since the last one.
    depth: Option<u32>,
}

/// See the module doc.
pub struct Shown {
    state: Mutex<State>,
    max_depth: u32,
    /// The session's inbox, once the session is a peer.
    inbox: OnceLock<Mutex<Inbox>>,
    /// Messages that failed verification since the last `check_messages`.
    rejected: AtomicU64,
}

/// What became of one inbound push.
#[derive(Debug)]
pub enum Recorded {
    /// New, and to be pushed as a channel notification: in flight until
    /// [`Shown::written`].
    Push(Record),
    /// New, and waits unread for the next prompt or `check_messages` (`low`, or channels
    /// off or dropped).
    Held,
    /// Failed decryption or verification: recorded as rejected and counted, never shown.
    Rejected,
    /// A redelivery or a replay: already shown or pending.
    Known,
}

/// What a confirmation pass found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Confirmed {
    /// Pushes found in the transcript: shown, mark them read.
    pub shown: Vec<String>,
    /// Channels were just found to be dropped (announce the new reach).
    pub dropped_now: bool,
}

impl Shown {
    pub fn new(channels: Channels, max_depth: u32) -> Self {
        Self {
            state: Mutex::new(State {
                channels,
                pushed: HashMap::new(),
                transcript: None,
                depth: None,
            }),
            max_depth,
            inbox: OnceLock::new(),
            rejected: AtomicU64::new(0),
        }
    }

    /// The session became a peer: this is its inbox from now on.
    pub fn open_inbox(&self, inbox: Inbox) {
        let _ = self.inbox.set(Mutex::new(inbox));
    }

    fn with_inbox<T>(&self, f: impl FnOnce(&mut Inbox) -> T) -> Option<T> {
        let mut inbox = self.inbox.get()?.lock().ok()?;
        Some(f(&mut inbox))
    }

    /// Open, verify and record `push` (deduped) and decide, under the inbox lock, whether
    /// to push it. `None` or an error: not recorded, so it must not be acked (the broker
    /// pushes it again).
    pub fn record(&self, ring: &mut Keyring, push: &Push) -> Option<Result<Recorded, InboxError>> {
        self.with_inbox(|inbox| {
            let recorded = match messaging::receive(ring, push, inbox)? {
                None => Recorded::Known,
                Some(record) if record.kind == Kind::Rejected => {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    Recorded::Rejected
                }
                Some(record)
                    if record.priority != Priority::Low.as_str()
                        && self.start_push(&record.message_id) =>
                {
                    Recorded::Push(record)
                }
                Some(_) => Recorded::Held,
            };
            Ok(recorded)
        })
    }

    /// Unread messages of these meshes (by mesh id), oldest first, with the index of
    /// their mesh; not system events, not pushes still awaiting confirmation.
    pub fn unread(&self, mesh_ids: &[&str]) -> Vec<(usize, Record)> {
        self.with_inbox(|inbox| {
            let mut all = Vec::new();
            for (i, mesh_id) in mesh_ids.iter().enumerate() {
                if let Ok(records) = inbox.unread(mesh_id) {
                    all.extend(
                        records
                            .into_iter()
                            .filter(|r| r.kind != Kind::System && !self.in_flight(&r.message_id))
                            .map(|r| (i, r)),
                    );
                }
            }
            all.sort_by_key(|(_, r)| r.received_at);
            all
        })
        .unwrap_or_default()
    }

    /// These messages reached the model: mark them read.
    pub fn mark_read(&self, message_ids: &[String]) {
        if message_ids.is_empty() {
            return;
        }
        if let Some(Err(e)) = self.with_inbox(|inbox| inbox.mark_read(message_ids)) {
            tracing::warn!(error = %crate::output::chain(&e), "could not mark messages read");
        }
    }

    /// How many inbound messages failed verification since the last call.
    pub fn take_rejected(&self) -> u64 {
        self.rejected.swap(0, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn channels(&self) -> Channels {
        self.lock().channels
    }

    /// The transcript the hooks named (the first one wins; a session keeps its file).
    pub fn set_transcript(&self, path: PathBuf) {
        let mut state = self.lock();
        if state.transcript.as_ref().is_none_or(|t| t.path() != path) {
            state.transcript = Some(Transcript::new(path));
        }
    }

    /// Whether to push this message now; if so it is in flight until [`Shown::written`].
    pub fn start_push(&self, message_id: &str) -> bool {
        let mut state = self.lock();
        if !state.channels.pushes() {
            return false;
        }
        state.pushed.insert(message_id.to_owned(), None);
        true
    }

    /// The writer is done with a push: written (awaiting confirmation), or not (offered
    /// through the other paths at once).
    pub fn written(&self, message_id: &str, ok: bool, depth: u32) {
        let mut state = self.lock();
        if ok {
            state
                .pushed
                .insert(message_id.to_owned(), Some(Instant::now()));
            state.depth = Some(state.depth.map_or(depth, |d| d.max(depth)));
        } else {
            state.pushed.remove(message_id);
        }
    }

    /// Read the transcript for evidence and mark what it confirms read; pushes older than
    /// [`CONFIRM_WAIT`] without it stop being in flight (they will be offered again).
    pub fn confirm(&self) -> Confirmed {
        let confirmed = self.scan();
        self.mark_read(&confirmed.shown);
        confirmed
    }

    /// Before showing messages (a prompt, `check_messages`): decide every push, waiting
    /// at most [`CONFIRM_WAIT`] for one just written to appear in the transcript, so a
    /// dropped push is shown now and a live one is never shown twice. `dropped` runs
    /// when channels turn out to be dropped (to announce the new reach).
    pub async fn settle<F: Future<Output = ()>>(&self, dropped: impl Fn() -> F) {
        let deadline = Instant::now() + CONFIRM_WAIT + Duration::from_millis(100);
        loop {
            if self.confirm().dropped_now {
                dropped().await;
            }
            if !self.unsettled() || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// [`Shown::confirm`] under the state lock, without touching the inbox.
    fn scan(&self) -> Confirmed {
        let mut state = self.lock();
        let mut out = Confirmed::default();
        let found = match state.transcript.as_mut().map(Transcript::scan) {
            Some(Ok(ids)) => ids,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "cannot read the session transcript");
                Vec::new()
            }
            None => Vec::new(),
        };
        // Every id found is shown, also one that expired first (Claude Code was slow) or
        // that an earlier server of this session pushed: marking read twice is harmless.
        for id in found {
            state.pushed.remove(&id);
            out.shown.push(id);
            if state.channels == Channels::Assumed {
                state.channels = Channels::Working;
            }
        }
        let now = Instant::now();
        let expired: Vec<String> = state
            .pushed
            .iter()
            .filter(|(_, at)| at.is_some_and(|t| now.duration_since(t) >= CONFIRM_WAIT))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            state.pushed.remove(id);
        }
        // Only a session whose transcript we can read can tell a drop from a slow write.
        if !expired.is_empty() && state.transcript.is_some() && state.channels == Channels::Assumed
        {
            state.channels = Channels::Dropped;
            out.dropped_now = true;
            tracing::info!("channel notifications are not reaching the model; pushing stops");
        }
        out
    }

    /// Whether some push still awaits evidence (see [`Shown::settle`]).
    pub fn unsettled(&self) -> bool {
        !self.lock().pushed.is_empty()
    }

    /// Whether `message_id` is a push still awaiting evidence (offered nowhere else).
    pub fn in_flight(&self, message_id: &str) -> bool {
        self.lock().pushed.contains_key(message_id)
    }

    /// The first `shown` messages of `list` are in what the model is handed now. Returns
    /// their ids, to mark read once it is delivered; `causal` (they reach the model
    /// outside a person's prompt) makes their depth count for what the session writes.
    pub fn handed(&self, list: &[(&str, &Record)], shown: usize, causal: bool) -> Vec<String> {
        let handed = || list.iter().take(shown).map(|(_, r)| *r);
        if causal {
            self.shown_to_model(handed().map(|r| r.depth));
        }
        handed().map(|r| r.message_id.clone()).collect()
    }

    /// A person submitted a prompt: what the session writes next starts a new chain.
    pub fn human_prompt(&self) {
        self.lock().depth = None;
    }

    /// Peer messages of these depths reached the model outside a person's prompt.
    pub fn shown_to_model(&self, depths: impl IntoIterator<Item = u32>) {
        let mut state = self.lock();
        for d in depths {
            state.depth = Some(state.depth.map_or(d, |x| x.max(d)));
        }
    }

    /// The depth of a message written now, or the refusal when it is too deep.
    pub fn send_depth(&self) -> Result<u32, String> {
        let depth = self.lock().depth.map_or(0, |d| d.saturating_add(1));
        if depth >= self.max_depth {
            return Err(replies::too_deep(depth, self.max_depth));
        }
        Ok(depth)
    }
}

/// `CLAUDEMESH_MAX_DEPTH`, else [`DEFAULT_MAX_DEPTH`].
pub fn max_depth_from_env() -> u32 {
    std::env::var("CLAUDEMESH_MAX_DEPTH")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|d| *d >= 1)
        .unwrap_or(DEFAULT_MAX_DEPTH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn the_ninth_hop_is_refused_and_a_person_resets_it() {
        let shown = Shown::new(Channels::Off, DEFAULT_MAX_DEPTH);
        assert_eq!(shown.send_depth(), Ok(0), "a fresh session starts a chain");
        shown.shown_to_model([6]);
        assert_eq!(shown.send_depth(), Ok(7), "hop 8 is still allowed");
        shown.shown_to_model([3]);
        assert_eq!(shown.send_depth(), Ok(7), "the deepest message counts");
        shown.shown_to_model([7]);
        let refused = shown.send_depth().unwrap_err();
        assert!(
            refused.contains("hop 9") && refused.contains("ask your user"),
            "{refused}"
        );
        shown.human_prompt();
        assert_eq!(shown.send_depth(), Ok(0));
    }

    #[test]
    fn a_confirmed_push_is_shown_and_an_unconfirmed_one_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let shown = Shown::new(Channels::Assumed, DEFAULT_MAX_DEPTH);
        shown.set_transcript(path.clone());
        assert!(shown.start_push("m1") && shown.start_push("m2"));
        shown.written("m1", true, 0);
        shown.written("m2", true, 2);
        let mut f = std::fs::File::create(&path).unwrap();
        let content = r#"<channel source="claudemesh" message_id="m1">x</channel>"#;
        writeln!(f, "{}", serde_json::json!({ "content": content })).unwrap();
        let c = shown.confirm();
        assert_eq!(c.shown, vec!["m1".to_owned()]);
        assert_eq!(shown.channels(), Channels::Working);
        assert!(shown.in_flight("m2"), "young and unconfirmed: in flight");
        assert_eq!(
            shown.send_depth(),
            Ok(3),
            "a written push counts as reaching the model"
        );
    }

    #[test]
    fn pushes_that_never_arrive_mean_channels_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let shown = Shown::new(Channels::Assumed, DEFAULT_MAX_DEPTH);
        shown.set_transcript(dir.path().join("t.jsonl"));
        assert!(shown.start_push("m1"));
        shown.written("m1", true, 0);
        // Pretend the wait is over.
        shown
            .lock()
            .pushed
            .insert("m1".into(), Some(Instant::now() - CONFIRM_WAIT));
        let c = shown.confirm();
        assert!(c.shown.is_empty() && c.dropped_now);
        assert!(!shown.in_flight("m1"), "offered again");
        assert_eq!(shown.channels(), Channels::Dropped);
        assert!(!shown.start_push("m2"), "no more pushing");
        assert_eq!(shown.channels().reach(), Reach::NextPrompt);
    }
}
