//! The claudemesh client library, used by the CLI, the MCP server and the benchmark:
//! end-to-end encryption with a verified inner header (`envelope`), the local inbox that
//! dedupes redeliveries and keeps history (`inbox`), safety numbers (`safety`), and the
//! broker connection with hello, reconnect and request correlation (`connection`), and
//! the TLS trust every client shares (`tls`).

pub mod connection;
pub mod envelope;
pub mod inbox;
pub mod messaging;
pub mod safety;
pub mod tls;

pub use connection::{
    ConnectError, ConnectOptions, Connection, Failure, Identity, Liveness, State, TransportError,
};
pub use messaging::{Delivery, SendError, SendReport, Target};
