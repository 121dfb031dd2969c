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

/// Message priority. `now` interrupts; `next` and `low` wait while the recipient is
/// `working` or `dnd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Now,
    #[default]
    Next,
    Low,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Now => "now",
            Priority::Next => "next",
            Priority::Low => "low",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "now" => Some(Priority::Now),
            "next" => Some(Priority::Next),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }
}

/// Presence status, set by hooks (`working` on prompt, `idle` on stop) or by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Idle,
    Working,
    Dnd,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Idle => "idle",
            Status::Working => "working",
            Status::Dnd => "dnd",
        }
    }

    /// Whether a message of this priority may be pushed to a peer in this status.
    pub fn admits(self, priority: Priority) -> bool {
        self == Status::Idle || priority == Priority::Now
    }
}

/// Extension `reachability`: how a message reaches a peer right now. A peer's own client
/// announces `live` or `next_prompt`; the broker reports `queued` for an identity that is
/// not connected, and `live` for a connected one that announced nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reach {
    /// Pushed to a running client at once (a Claude Code session with working channels,
    /// a CLI waiting in `inbox --wait`, a bot).
    Live,
    /// Shown when the session's user next submits a prompt (Claude Code hooks only).
    NextPrompt,
    /// Not connected: stored by the broker until the identity returns.
    Queued,
}

impl Reach {
    pub fn as_str(self) -> &'static str {
        match self {
            Reach::Live => "live",
            Reach::NextPrompt => "next_prompt",
            Reach::Queued => "queued",
        }
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
