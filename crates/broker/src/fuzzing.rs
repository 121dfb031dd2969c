//! Entry points for the coverage-guided fuzz targets in `fuzz/` (see README, Development).
//! Hidden from the docs and not a stable API: nothing outside `fuzz/` should call it.
//!
//! Each function is the broker's own code for bytes a network peer sends, reached without
//! a socket, the engine or the store: a WebSocket text frame as `conn.rs` parses it, a
//! hello as `auth.rs` verifies it, an admin request as the `Verified` extractor checks it,
//! a `POST /join` body as far as the engine's stateless checks go. This module must not
//! grow logic of its own (it only adapts arguments), so that a fuzzed path is the real one.

use std::collections::HashMap;
use std::net::IpAddr;

use axum::extract::ws::Message;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use claudemesh_proto::frames::ClientFrame;
use claudemesh_proto::http::JoinRequest;
use claudemesh_proto::invite::InvitePayload;

pub use crate::auth::{Rejection, Role, VerifiedHello, verify_hello, verify_session_hello};
use crate::config::BrokerConfig;
pub use crate::http::AdminRoute;
pub use crate::refusal::Refusal;

/// A WebSocket text frame as the connection task parses it (`attached`: after a
/// successful hello). `Err` is the text of the `error` frame the broker would answer.
pub fn parse_frame(text: &str, attached: bool) -> Result<ClientFrame, String> {
    crate::conn::parse(text, attached).map_err(|reply| match reply {
        Message::Text(t) => t.to_string(),
        other => format!("{other:?}"),
    })
}

/// The source address the per-address limits count for a request that carries these
/// headers (name, value; pairs hyper would refuse are skipped) and has no TCP peer.
pub fn source_address(headers: &[(&[u8], &[u8])], trust_proxy: bool) -> Option<IpAddr> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    crate::http::forwarded_source(map, trust_proxy)
}

/// A signed admin request for `route` with these path parameters (`mesh_id`,
/// `invite_id`, `member_id`) and body, checked as the broker would at time `now` (ms).
pub fn admin_request(
    route: AdminRoute,
    path: HashMap<String, String>,
    body: &[u8],
    config: &BrokerConfig,
    now: i64,
) -> Result<(), Refusal> {
    route.verify(path.into(), body, config, now)
}

/// A `POST /join` body: parsed as `http/join.rs` does, then the engine's stateless checks
/// (the invite's signature, the joining key, the display name). Returns the invite, the
/// joining key (as sent: only lowercase hex is accepted) and the display name;
/// membership, registration and use counts need the store and are not reached.
pub fn join_request(body: &[u8]) -> Result<(InvitePayload, String, String), Refusal> {
    let req: JoinRequest = serde_json::from_slice(body)
        .map_err(|e| Refusal::new(claudemesh_proto::codes::Code::Malformed, e.to_string()))?;
    let invite = crate::engine::join::invite_of(&req)?;
    let (peer, name) = crate::engine::join::joiner(req)?;
    Ok((invite, peer, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use claudemesh_proto::codes::Code;

    // The fuzz targets are built only on nightly; these keep the entry points honest on
    // stable (`fuzz/examples/seeds.rs` checks the accepting paths with signed inputs).
    #[test]
    fn entry_points_reach_the_real_checks() {
        let reply = parse_frame("{not json", false).unwrap_err();
        assert!(reply.contains("\"malformed\""), "{reply}");
        assert!(parse_frame(r#"{"type":"list_peers"}"#, true).is_ok());
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let config = BrokerConfig::new(listen, std::env::temp_dir());
        for route in AdminRoute::ALL {
            let refusal = admin_request(route, HashMap::new(), b"{}", &config, 0).unwrap_err();
            assert_eq!(refusal.code, Code::Malformed, "{route:?}");
        }
        let headers: [(&[u8], &[u8]); 2] = [
            (b"x-forwarded-for", b"10.0.0.1, 203.0.113.7"),
            (b"bad name", b"ignored"),
        ];
        assert_eq!(source_address(&headers, true), "203.0.113.7".parse().ok());
        assert_eq!(source_address(&headers, false), None);
        assert_eq!(join_request(b"[]").unwrap_err().code, Code::Malformed);
    }
}
