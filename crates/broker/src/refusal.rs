//! [`Refusal`]: why the broker said no, in domain terms (a protocol [`Code`] and a
//! message for people). The engine and the stateless checks produce it; only the HTTP
//! layer (`http/error.rs`) turns it into a status code and a JSON body, and only the
//! connection task into an `error` frame.

use claudemesh_proto::codes::Code;

/// A refusal: stable code, human message (never internals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
}

impl Refusal {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Storage failed (the batch rolls back) or the engine has stopped.
    pub fn unavailable() -> Self {
        Self::new(Code::Unavailable, "broker storage unavailable; try again")
    }

    pub fn shutting_down() -> Self {
        Self::new(Code::Unavailable, "shutting down")
    }
}
