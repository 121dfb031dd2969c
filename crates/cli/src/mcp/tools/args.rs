//! The arguments of every tool, one struct each, deserialized from the `tools/call`
//! arguments by [`parse`] with errors that say which argument is wrong and how:
//! "`to` is required.", "`to` must be a string.", or the tool's own words for a value it
//! does not know ("Unknown priority 'x'; use now, next or low.").
//!
//! Every argument of these tools is a string. Arguments are read in the order the struct
//! declares them, so the first wrong one is the one named; one that is left out reads as
//! absent (an `Option` takes it as `None`, anything else says it is required); optional
//! ones treat null and blank alike as not given; arguments a tool does not have are
//! ignored.
//!
//! What it must not do: accept a value the tool would have to check again.

use std::fmt;

use claudemesh_proto::frames::{Priority, Status};
use rmcp::model::JsonObject;
use serde::de::value::MapDeserializer;
use serde::de::{self, DeserializeOwned, Deserializer, IntoDeserializer, Visitor};
use serde::{Deserialize, forward_to_deserialize_any};
use serde_json::Value;

/// `list_peers`.
#[derive(Debug, Deserialize)]
pub struct ListPeersArgs {
    #[serde(deserialize_with = "optional")]
    pub mesh: Option<String>,
}

/// `send_message`.
#[derive(Debug, Deserialize)]
pub struct SendArgs {
    pub to: String,
    pub message: String,
    /// `next` when not given.
    #[serde(deserialize_with = "priority")]
    pub priority: Priority,
    #[serde(deserialize_with = "optional")]
    pub mesh: Option<String>,
}

/// `check_messages` takes no arguments.
#[derive(Debug, Deserialize)]
pub struct CheckArgs {}

/// `set_summary` (an empty one clears it).
#[derive(Debug, Deserialize)]
pub struct SummaryArgs {
    pub summary: String,
}

/// `set_status`.
#[derive(Debug, Deserialize)]
pub struct StatusArgs {
    #[serde(deserialize_with = "status")]
    pub status: Status,
}

/// `join_group` and `leave_group` (which reads `role` too, and ignores it).
#[derive(Debug, Deserialize)]
pub struct GroupArgs {
    pub name: String,
    #[serde(deserialize_with = "optional")]
    pub role: Option<String>,
}

/// `message_status` (the last message sent when not given).
#[derive(Debug, Deserialize)]
pub struct MessageStatusArgs {
    #[serde(deserialize_with = "optional")]
    pub message_id: Option<String>,
}

/// The arguments of a tool as its struct `T`, or the tool error that says what is wrong.
pub fn parse<T: DeserializeOwned>(args: &JsonObject) -> Result<T, String> {
    T::deserialize(Args(args)).map_err(|e| e.0)
}

/// A string, or `None` when it is null, blank or not given.
fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.trim().is_empty()))
}

fn priority<'de, D: Deserializer<'de>>(d: D) -> Result<Priority, D::Error> {
    match optional(d)? {
        None => Ok(Priority::Next),
        Some(p) => Priority::parse(&p).ok_or_else(|| {
            de::Error::custom(format!("Unknown priority '{p}'; use now, next or low."))
        }),
    }
}

fn status<'de, D: Deserializer<'de>>(d: D) -> Result<Status, D::Error> {
    match String::deserialize(d)?.as_str() {
        "idle" => Ok(Status::Idle),
        "working" => Ok(Status::Working),
        "dnd" => Ok(Status::Dnd),
        other => Err(de::Error::custom(format!(
            "Unknown status '{other}'; use idle, working or dnd."
        ))),
    }
}

/// A bad argument, already worded for the model.
#[derive(Debug)]
pub struct ArgError(String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArgError {}

impl de::Error for ArgError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        Self(format!("`{field}` is required."))
    }
}

/// The whole arguments object: a struct's fields, in its order, absent ones included.
struct Args<'a>(&'a JsonObject);

impl<'de> Deserializer<'de> for Args<'de> {
    type Error = ArgError;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ArgError> {
        let args = self.0;
        let fields = fields.iter().map(|key| {
            let arg = Arg {
                key,
                value: args.get(*key),
            };
            (*key, arg)
        });
        visitor.visit_map(MapDeserializer::new(fields))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, ArgError> {
        Err(de::Error::custom("tool arguments are read into a struct"))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// One argument, named for its errors; `None` when it was not given.
struct Arg<'a> {
    key: &'static str,
    value: Option<&'a Value>,
}

impl<'de> Deserializer<'de> for Arg<'de> {
    type Error = ArgError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        match self.value {
            Some(Value::String(s)) => visitor.visit_borrowed_str(s),
            None => Err(de::Error::missing_field(self.key)),
            Some(_) => Err(ArgError(format!("`{}` must be a string.", self.key))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        match self.value {
            None | Some(Value::Null) => visitor.visit_none(),
            Some(_) => visitor.visit_some(self),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
        ignored_any
    }
}

impl<'de> IntoDeserializer<'de, ArgError> for Arg<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> JsonObject {
        match v {
            Value::Object(map) => map,
            _ => JsonObject::new(),
        }
    }

    fn send(v: Value) -> Result<SendArgs, String> {
        parse(&args(v))
    }

    #[test]
    fn arguments_read_into_their_struct() {
        let a = send(json!({"to": "bob", "message": "hi", "extra": 3})).unwrap();
        assert_eq!((a.to.as_str(), a.message.as_str()), ("bob", "hi"));
        assert_eq!((a.priority, a.mesh), (Priority::Next, None));
        let a = send(json!({"to": "", "message": "hi", "priority": "now", "mesh": " acme "}));
        let a = a.unwrap();
        assert_eq!(a.to, "");
        assert_eq!(
            (a.priority, a.mesh.as_deref()),
            (Priority::Now, Some(" acme "))
        );
        let a = send(json!({"to": "b", "message": "m", "priority": "  ", "mesh": null}));
        assert_eq!(a.map(|a| (a.priority, a.mesh)), Ok((Priority::Next, None)));
        assert!(parse::<CheckArgs>(&args(json!({"anything": [1]}))).is_ok());
        let g: GroupArgs = parse(&args(json!({"name": "backend", "role": ""}))).unwrap();
        assert_eq!((g.name.as_str(), g.role), ("backend", None));
    }

    #[test]
    fn a_bad_argument_is_named_first_in_declared_order() {
        let err = |v: Value| send(v).err().unwrap_or_default();
        assert_eq!(err(json!({})), "`to` is required.");
        assert_eq!(err(json!({"message": 3})), "`to` is required.");
        assert_eq!(
            err(json!({"to": null, "message": "m"})),
            "`to` must be a string."
        );
        assert_eq!(err(json!({"mesh": 1, "to": "b"})), "`message` is required.");
        assert_eq!(
            err(json!({"to": "b", "message": "m", "mesh": 1})),
            "`mesh` must be a string."
        );
        assert_eq!(
            err(json!({"to": "b", "message": "m", "priority": "urgent"})),
            "Unknown priority 'urgent'; use now, next or low."
        );
        assert_eq!(
            err(json!({"to": "b", "message": "m", "priority": 1})),
            "`priority` must be a string."
        );
        let status = |v: Value| parse::<StatusArgs>(&args(v)).err().unwrap_or_default();
        assert_eq!(status(json!({})), "`status` is required.");
        assert_eq!(
            status(json!({"status": "busy"})),
            "Unknown status 'busy'; use idle, working or dnd."
        );
        let group = |v: Value| parse::<GroupArgs>(&args(v)).err().unwrap_or_default();
        assert_eq!(group(json!({"role": 1})), "`name` is required.");
        assert_eq!(
            group(json!({"name": "b", "role": 1})),
            "`role` must be a string."
        );
    }
}
