//! [`HttpError`]: the one way a [`Refusal`] becomes an HTTP response. The status follows
//! from the code (one table, [`status`]); the body is `{ok:false, error, message}`, and for
//! `POST /join` the v1 shape `{ok:false, error}` plus our `message` (v1 answers every join
//! refusal with 400).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use claudemesh_proto::codes::Code;
use claudemesh_proto::http::ApiError;

use crate::engine::Stopped;
use crate::refusal::Refusal;

/// Which endpoint family the refusal answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The admin API and everything else.
    Api,
    /// `POST /join` (v1).
    Join,
}

#[derive(Debug)]
pub struct HttpError {
    pub refusal: Refusal,
    pub shape: Shape,
}

impl HttpError {
    pub fn api(refusal: Refusal) -> Self {
        Self {
            refusal,
            shape: Shape::Api,
        }
    }

    pub fn join(refusal: Refusal) -> Self {
        Self {
            refusal,
            shape: Shape::Join,
        }
    }
}

impl From<Refusal> for HttpError {
    fn from(refusal: Refusal) -> Self {
        Self::api(refusal)
    }
}

impl From<Stopped> for HttpError {
    fn from(_: Stopped) -> Self {
        Self::api(Refusal::shutting_down())
    }
}

/// The HTTP status of a refusal.
pub fn status(code: Code, shape: Shape) -> StatusCode {
    match (code, shape) {
        (Code::Unavailable | Code::Internal, _) => StatusCode::SERVICE_UNAVAILABLE,
        (Code::RateLimited, _) => StatusCode::TOO_MANY_REQUESTS,
        (Code::PayloadTooLarge, _) => StatusCode::PAYLOAD_TOO_LARGE,
        (_, Shape::Join) => StatusCode::BAD_REQUEST,
        (Code::TimestampSkew | Code::BadSignature | Code::Replay, Shape::Api) => {
            StatusCode::UNAUTHORIZED
        }
        (Code::Forbidden | Code::CreationDisabled, Shape::Api) => StatusCode::FORBIDDEN,
        (Code::MeshNotFound | Code::NotFound | Code::InviteNotFound, Shape::Api) => {
            StatusCode::NOT_FOUND
        }
        (Code::SlugTaken | Code::Conflict, Shape::Api) => StatusCode::CONFLICT,
        (_, Shape::Api) => StatusCode::BAD_REQUEST,
    }
}

/// The address a request came from, for per-source limits: the TCP peer, or with
/// `--trust-proxy` the client address the proxy reports (`X-Forwarded-For`, rightmost
/// entry, which the proxy itself appended; else `Forwarded: for=`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<std::net::IpAddr>);

impl axum::extract::FromRequestParts<std::sync::Arc<crate::state::Shared>> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        shared: &std::sync::Arc<crate::state::Shared>,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(peer_of(parts, shared.config.trust_proxy)))
    }
}

fn forwarded_for(headers: &axum::http::HeaderMap) -> Option<std::net::IpAddr> {
    let xff = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()
        .and_then(|a| a.trim().parse().ok());
    xff.or_else(|| {
        headers
            .get_all("forwarded")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .filter_map(|kv| kv.trim().strip_prefix("for="))
            .map(|a| {
                a.trim_matches('"')
                    .trim_start_matches('[')
                    .split(']')
                    .next()
                    .unwrap_or("")
            })
            .filter_map(|a| a.parse().ok())
            .next_back()
    })
}

/// The source address of a request (see [`Peer`]).
pub fn peer_of(parts: &axum::http::request::Parts, trust_proxy: bool) -> Option<std::net::IpAddr> {
    let tcp = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if trust_proxy {
        forwarded_for(&parts.headers).or(tcp)
    } else {
        tcp
    }
}

/// Refuse a request from `peer` that is over its address's limit for `kind`.
pub fn limit(
    shared: &crate::state::Shared,
    kind: crate::ratelimit::HttpKind,
    peer: Option<std::net::IpAddr>,
) -> Result<(), Refusal> {
    match peer {
        Some(ip) if !shared.http_limiter.allow(kind, ip) => {
            crate::metrics::Metrics::inc(&shared.metrics.rate_limited_total);
            Err(Refusal::new(
                Code::RateLimited,
                "too many requests from this address; retry in a few seconds",
            ))
        }
        _ => Ok(()),
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let Refusal { code, message } = self.refusal;
        let status = status(code, self.shape);
        let body = ApiError {
            ok: false,
            error: code.as_str().to_owned(),
            message,
        };
        // The join shape is the same object: v1 clients read `ok` and `error`.
        (status, axum::Json(body)).into_response()
    }
}
