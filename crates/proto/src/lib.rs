//! The claudemesh wire protocol as typed Rust: WebSocket frames in both directions
//! (named by direction), the canonical strings that get signed, invite links, the HTTP
//! enrollment and admin bodies, and every limit as a named constant.
//!
//! This crate is serde only: it performs no I/O and holds no state. It parses; the broker
//! and the client decide. `PROTOCOL.md` at the repository root is the normative text; the
//! types here must match it.

pub mod authority;
pub mod canonical;
pub mod codes;
pub mod frames;
pub mod http;
pub mod ids;
pub mod invite;
pub mod limits;
pub mod text_enum;
pub mod time;

pub use frames::{BrokerFrame, ClientFrame};

/// The protocol version this implementation speaks (`hello_ack.protocolVersion`);
/// extensions are negotiated by capability (see [`codes::cap::ALL`]).
pub const PROTOCOL_VERSION: u32 = 1;
