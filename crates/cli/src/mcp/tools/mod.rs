//! The MCP tools: names, descriptions that tell Claude when to use each, input schemas,
//! and the dispatch from a `tools/call` to the tool's function. Each tool has one
//! argument struct ([`args`]); a wrong argument is answered with a tool error that says
//! what was expected. The tools themselves, one function each, are in [`messages`]
//! (`send_message`, `check_messages`, `message_status`) and [`presence`] (`list_peers`,
//! `set_summary`, `set_status`, `join_group`, `leave_group`); what they reply is worded
//! in [`super::render`].

pub mod args;
pub mod messages;
pub mod presence;

use std::sync::Arc;

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::peer::Peer;

/// The outcome of a tool: text for the model, and whether it is an error.
pub type ToolResult = Result<String, String>;

fn schema(v: Value) -> JsonObject {
    match v {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    }
}

fn tool(name: &'static str, description: &'static str, input: Value, read_only: bool) -> Tool {
    let mut annotations = ToolAnnotations::default();
    annotations.read_only_hint = Some(read_only);
    annotations.destructive_hint = Some(false);
    annotations.open_world_hint = Some(true);
    Tool::new(name, description, schema(input)).with_annotations(annotations)
}

const MESH: &str = "Mesh slug, only needed when this session is in several meshes.";

/// Every tool this server offers.
pub fn list() -> Vec<Tool> {
    vec![
        tool(
            "list_peers",
            "List the peers (other Claude Code sessions, bots and people) online in the mesh right now: name, status, what they are working on, where. Use it before asking the mesh for help, to find who to ask, or to get the exact name to message.",
            json!({"type": "object", "properties": {"mesh": {"type": "string", "description": MESH}}, "additionalProperties": false}),
            true,
        ),
        tool(
            "send_message",
            "Send an end-to-end encrypted message to a peer. Use it to ask other sessions whether they have seen a problem, to answer a peer's question, or to hand over context. Reply to a message by sending to its `from` name. Offline peers get it when they return. Never include secrets or credentials.",
            json!({
                "type": "object",
                "properties": {
                    "to": {"type": "string", "description": "A peer name (e.g. bob/checkout-frontend, or just bob when unambiguous), a key prefix, @group for a group, or * for everyone."},
                    "message": {"type": "string", "description": "The text to send: self-contained, since the peer cannot see this conversation."},
                    "priority": {"type": "string", "enum": ["now", "next", "low"], "default": "next", "description": "now: interrupts the peer (urgent only). next (default): delivered when the peer pauses. low: the peer sees it only when it checks messages."},
                    "mesh": {"type": "string", "description": MESH}
                },
                "required": ["to", "message"],
                "additionalProperties": false
            }),
            false,
        ),
        tool(
            "check_messages",
            "Show messages from peers that have not been shown yet, including low-priority ones. Use it when told messages are waiting, or before finishing a task that others may have written about. While this session is working, only priority-now messages arrive; the rest come when the turn ends.",
            json!({"type": "object", "properties": {}, "additionalProperties": false}),
            false,
        ),
        tool(
            "set_summary",
            "Set the one-line summary peers see next to this session (what you are working on, e.g. \"fixing Stripe webhook signature checks in payments-api\"). Set it when you start a task; an empty string clears it.",
            json!({"type": "object", "properties": {"summary": {"type": "string", "description": "One line, under 1 KB."}}, "required": ["summary"], "additionalProperties": false}),
            false,
        ),
        tool(
            "set_status",
            "Set this session's status. idle: free, messages arrive at once. working: busy, only priority-now messages interrupt. dnd: do not disturb. Claude Code hooks set working/idle automatically at each turn; use this for dnd or to override.",
            json!({"type": "object", "properties": {"status": {"type": "string", "enum": ["idle", "working", "dnd"]}}, "required": ["status"], "additionalProperties": false}),
            false,
        ),
        tool(
            "join_group",
            "Join a group so messages to @name reach this session (e.g. backend, payments). Groups are how the mesh asks a team rather than one peer.",
            json!({"type": "object", "properties": {"name": {"type": "string", "description": "Group name without @."}, "role": {"type": "string", "description": "Optional role in the group, e.g. lead."}}, "required": ["name"], "additionalProperties": false}),
            false,
        ),
        tool(
            "leave_group",
            "Leave a group; messages to @name stop reaching this session.",
            json!({"type": "object", "properties": {"name": {"type": "string", "description": "Group name without @."}}, "required": ["name"], "additionalProperties": false}),
            false,
        ),
        tool(
            "message_status",
            "Check whether a message this session sent has been received: per recipient queued (offline or busy), delivered, or received. Without an id it reports the last message sent.",
            json!({"type": "object", "properties": {"message_id": {"type": "string", "description": "The id (or its first 8 characters) that send_message returned."}}, "additionalProperties": false}),
            true,
        ),
    ]
}

/// Run tool `name` with `args`. `None` for a tool this server does not have.
pub async fn call(peer: &Arc<Peer>, name: &str, args: &JsonObject) -> Option<ToolResult> {
    let result = match name {
        "list_peers" => run(args, |a| presence::list_peers(peer, a)).await,
        "send_message" => run(args, |a| messages::send_message(peer, a)).await,
        "check_messages" => run(args, |a| messages::check_messages(peer, a)).await,
        "set_summary" => run(args, |a| presence::set_summary(peer, a)).await,
        "set_status" => run(args, |a| presence::set_status(peer, a)).await,
        "join_group" => run(args, |a| presence::join_group(peer, a)).await,
        "leave_group" => run(args, |a| presence::leave_group(peer, a)).await,
        "message_status" => run(args, |a| messages::message_status(peer, a)).await,
        _ => return None,
    };
    Some(result)
}

/// Deserialize the arguments of a tool, then run it; bad arguments are its error.
async fn run<A: DeserializeOwned, F: Future<Output = ToolResult>>(
    args: &JsonObject,
    tool: impl FnOnce(A) -> F,
) -> ToolResult {
    tool(args::parse(args)?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_a_description_and_an_object_schema() {
        let tools = list();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "list_peers",
                "send_message",
                "check_messages",
                "set_summary",
                "set_status",
                "join_group",
                "leave_group",
                "message_status"
            ]
        );
        for t in &tools {
            assert!(
                t.description.as_ref().is_some_and(|d| d.len() > 40),
                "{}",
                t.name
            );
            assert_eq!(
                t.input_schema.get("type"),
                Some(&json!("object")),
                "{}",
                t.name
            );
        }
    }
}
