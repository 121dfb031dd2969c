//! Every protocol limit and timing as a named constant. Code elsewhere refers to these
//! names, never to bare numbers, so PROTOCOL.md and the implementation cannot drift apart.

use std::time::Duration;

/// Largest WebSocket text frame either side accepts (WIRE-V1: 65 536 bytes).
pub const MAX_FRAME_BYTES: usize = 65_536;
/// A connection that has not authenticated within this time is closed.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(10);
/// Largest accepted difference between a signed timestamp and the broker clock.
pub const MAX_CLOCK_SKEW_MS: i64 = 60_000;
/// Longest validity a session attestation may claim (24 h).
pub const MAX_ATTESTATION_TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// How long a pushed delivery stays leased before the broker pushes it again.
pub const LEASE: Duration = Duration::from_secs(30);
/// Pushes of one delivery on one connection before it parks (a client that never acks,
/// like the v1 SDK's `MeshClient`); it is pushed again after the recipient's next hello.
pub const MAX_PUSHES: u32 = 5;
/// Frames a connection may send that are answered only with an error (malformed, binary,
/// unknown type, anything before the hello): a burst of this many, then
/// [`GARBAGE_PER_SEC`]; past that the connection is closed (1008 `too_many_bad_frames`).
pub const GARBAGE_BURST: u32 = 20;
pub const GARBAGE_PER_SEC: u32 = 5;
/// The shortest time between two presence frames of one mesh to one recipient: events
/// within it are coalesced (PROTOCOL.md §6.2).
pub const PRESENCE_TICK: Duration = Duration::from_millis(100);
/// How long a presence survives its connection dropping before `peer_left` is announced.
pub const PRESENCE_GRACE: Duration = Duration::from_secs(90);
/// Interval between broker pings.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// A socket that has not answered (any frame, including pong) for this long is terminated.
pub const DEAD_SOCKET_AFTER: Duration = Duration::from_secs(75);
/// Queued messages expire after this long (7 days).
pub const MESSAGE_TTL_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// A session identity that has not connected for this long retires (PROTOCOL.md §5.9):
/// it stops being a recipient and its undelivered copies are dropped. Brokers may
/// configure another value.
pub const SESSION_RETENTION: Duration = Duration::from_secs(72 * 60 * 60);
/// Most session identities one member may have that are not retired (live or resumable);
/// past it the oldest offline one retires. Brokers may configure another value.
pub const MAX_SESSIONS_PER_MEMBER: usize = 32;
/// Longest accepted summary, in bytes.
pub const MAX_SUMMARY_BYTES: usize = 1_024;
/// Longest accepted display name, group name, session id, cwd or hostname, in bytes.
pub const MAX_SHORT_TEXT_BYTES: usize = 512;
/// Most groups one presence may belong to.
pub const MAX_GROUPS: usize = 32;
/// Nonce length in bytes (XSalsa20).
pub const NONCE_BYTES: usize = 24;
/// Most recipients a single multicast `sealedKeys` map may name.
pub const MAX_SEALED_KEYS: usize = 1_000;
