//! [`Verified`]: the one extractor for signed admin requests. It parses the body, runs the
//! request's own stateless checks, then checks clock skew and the signature over the
//! admin canonical string (PROTOCOL.md §10) once, for every admin route. A handler that
//! receives a `Verified<T>` knows the request was signed by `signed.signer_pubkey`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request};
use claudemesh_crypto::{PublicKey, Signature};
use claudemesh_proto::canonical::{self, AdminAction};
use claudemesh_proto::codes::Code;
use claudemesh_proto::http::Signed;
use claudemesh_proto::limits;
use claudemesh_proto::time::now_ms;
use serde::de::DeserializeOwned;

use super::error::HttpError;
use crate::config::BrokerConfig;
use crate::engine::AdminCommand;
use crate::refusal::Refusal;
use crate::state::Shared;

/// The route's path parameters (`mesh_id`, `invite_id`, `member_id`).
#[derive(Debug, Default)]
pub struct PathIds(HashMap<String, String>);

impl From<HashMap<String, String>> for PathIds {
    fn from(ids: HashMap<String, String>) -> Self {
        Self(ids)
    }
}

impl PathIds {
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map(String::as_str).unwrap_or_default()
    }
}

/// A request body that is signed with the admin canonical string.
pub trait SignedBody: DeserializeOwned + Send + 'static {
    const ACTION: AdminAction;
    /// Which per-address limit the route spends.
    const LIMIT: crate::ratelimit::HttpKind = crate::ratelimit::HttpKind::Admin;
    /// The engine command this verified request asks for.
    fn command(self, path: &PathIds) -> AdminCommand;
    fn signed(&self) -> &Signed;
    /// The action's canonical arguments, from the path and the body.
    fn args(&self, path: &PathIds) -> Vec<String>;
    /// Stateless checks that come before the signature (shape, policy).
    fn check(&self, _config: &BrokerConfig) -> Result<(), Refusal> {
        Ok(())
    }
}

/// A parsed, checked and signature-verified admin request.
#[derive(Debug)]
pub struct Verified<T> {
    pub path: PathIds,
    pub body: T,
}

fn malformed(message: impl Into<String>) -> Refusal {
    Refusal::new(Code::Malformed, message)
}

/// Check skew against `now` (ms) and the signature over the admin canonical string.
fn verify(
    signed: &Signed,
    action: AdminAction,
    mesh_id: &str,
    args: &[String],
    now: i64,
) -> Result<(), Refusal> {
    if now.abs_diff(signed.timestamp) > limits::MAX_CLOCK_SKEW_MS.unsigned_abs() {
        return Err(Refusal::new(
            Code::TimestampSkew,
            "timestamp is too far from the broker clock; check your system time",
        ));
    }
    let key = PublicKey::from_hex(&signed.signer_pubkey)
        .map_err(|_| malformed("signerPubkey is not a 64-hex ed25519 key"))?;
    let sig = Signature::from_hex(&signed.signature)
        .map_err(|_| Refusal::new(Code::BadSignature, "signature is not 128 hex characters"))?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = canonical::admin(
        action,
        mesh_id,
        &signed.signer_pubkey,
        signed.timestamp,
        &args,
    );
    key.verify_str(&text, &sig)
        .map_err(|_| Refusal::new(Code::BadSignature, "request signature does not verify"))
}

impl<T: SignedBody> FromRequest<Arc<Shared>> for Verified<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, shared: &Arc<Shared>) -> Result<Self, HttpError> {
        let (mut parts, body) = req.into_parts();
        let peer = super::error::peer_of(&parts, shared.config.trust_proxy);
        super::error::limit(shared, T::LIMIT, peer)?;
        let path = <Path<HashMap<String, String>> as axum::extract::FromRequestParts<_>>::from_request_parts(&mut parts, shared)
            .await
            .map(|Path(p)| PathIds(p))
            .map_err(|e| malformed(format!("bad path: {e}")))?;
        let bytes = Bytes::from_request(Request::from_parts(parts, body), shared)
            .await
            .map_err(|e| {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    Refusal::new(Code::PayloadTooLarge, "request body is too large")
                } else {
                    malformed(format!("request body could not be read: {e}"))
                }
            })?;
        Ok(Self::from_body(path, &bytes, &shared.config, now_ms())?)
    }
}

impl<T: SignedBody> Verified<T> {
    /// The stateless core of the extractor, once the path and body are read: parse the
    /// body, run its checks, then skew (against `now`, ms) and signature. Everything here
    /// is what the peer sent; the fuzz targets call it through `crate::fuzzing`.
    pub(crate) fn from_body(
        path: PathIds,
        bytes: &[u8],
        config: &BrokerConfig,
        now: i64,
    ) -> Result<Self, Refusal> {
        let body: T = serde_json::from_slice(bytes)
            .map_err(|e| malformed(format!("request body is not valid: {e}")))?;
        body.check(config)?;
        verify(
            body.signed(),
            T::ACTION,
            path.get("mesh_id"),
            &body.args(&path),
            now,
        )?;
        Ok(Self { path, body })
    }
}
