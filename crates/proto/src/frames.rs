//! WebSocket frames. Each text frame is one JSON object with a `type`; the two enums
//! here are named by direction: [`ClientFrame`] (client → broker) and [`BrokerFrame`]
//! (broker → client). Field names follow WIRE-V1 exactly (camelCase, except the
//! snake_case `client_message_id` / `request_fingerprint` that v1 uses on `send`/`push`).
//!
//! Nothing here checks signatures or authorisation; see `canonical` for the strings that
//! are signed and the broker for what is enforced.

mod broker_to_client;
mod client_to_broker;

pub use broker_to_client::*;
pub use client_to_broker::*;

use serde::{Deserialize, Serialize};

/// A request id (`_reqId`) that the broker echoes verbatim. v1 clients send strings; we
/// also accept numbers so that no client is refused for its choice of id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReqId {
    Str(String),
    Num(i64),
}

crate::text_enum! {
    /// Message priority. `now` interrupts; `next` and `low` wait while the recipient is
    /// `working` or `dnd`.
    #[derive(Default)]
    pub enum Priority {
        Now = "now",
        #[default]
        Next = "next",
        Low = "low",
    }
}

crate::text_enum! {
    /// Presence status, set by hooks (`working` on prompt, `idle` on stop) or by hand.
    #[derive(Default)]
    pub enum Status {
        #[default]
        Idle = "idle",
        Working = "working",
        Dnd = "dnd",
    }
}

impl Status {
    /// Whether a message of this priority may be pushed to a peer in this status.
    pub fn admits(self, priority: Priority) -> bool {
        self == Status::Idle || priority == Priority::Now
    }
}

crate::text_enum! {
    /// Extension `reachability`: how a message reaches a peer right now. A peer's own
    /// client announces `live` or `next_prompt`; the broker reports `queued` for an
    /// identity that is not connected, and `live` for a connected one that announced
    /// nothing.
    pub enum Reach {
        /// Pushed to a running client at once (a Claude Code session with working
        /// channels, a CLI waiting in `inbox --wait`, a bot).
        Live = "live",
        /// Shown when the session's user next submits a prompt (Claude Code hooks only).
        NextPrompt = "next_prompt",
        /// Not connected: stored by the broker until the identity returns.
        Queued = "queued",
    }
}

/// A group membership as carried in `hello.groups`, `join_group` and `peers_list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// What a `targetSpec` addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// A 64-hex member or session public key.
    Direct(&'a str),
    /// `*` or `@all`.
    Broadcast,
    /// `@name`.
    Group(&'a str),
}

impl<'a> Target<'a> {
    /// Parse a `targetSpec`. Returns `None` for anything that is neither a lowercase
    /// 64-hex key, `*`, `@all`, nor `@name` with a non-empty name.
    pub fn parse(spec: &'a str) -> Option<Self> {
        if spec == "*" || spec == "@all" {
            return Some(Target::Broadcast);
        }
        if let Some(name) = spec.strip_prefix('@') {
            return (!name.is_empty()).then_some(Target::Group(name));
        }
        let is_key = spec.len() == 64
            && spec
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        is_key.then_some(Target::Direct(spec))
    }

    pub fn is_multicast(&self) -> bool {
        !matches!(self, Target::Direct(_))
    }
}
