//! Invite links, v1: `ic://join/<token>` where the token is base64url (no padding) of the
//! compact JSON payload. Encode, decode, sign and verify; expiry is checked against a
//! caller-supplied clock so this module stays pure.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use claudemesh_crypto::{PublicKey, SecretKey, Signature};
use serde::{Deserialize, Serialize};

crate::text_enum! {
    /// The role an invite grants.
    pub enum InviteRole {
        Member = "member",
        Admin = "admin",
    }
}

/// The signed invite payload. Field order is the wire order (it determines the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvitePayload {
    pub v: u32,
    pub mesh_id: String,
    pub mesh_slug: String,
    pub broker_url: String,
    /// Seconds since the epoch (not milliseconds).
    pub expires_at: i64,
    /// 32 random bytes, base64url without padding. Grants nothing in this product.
    pub mesh_root_key: String,
    pub role: InviteRole,
    /// The signer: the mesh owner or an admin member.
    pub owner_pubkey: String,
    pub signature: String,
}

/// Why an invite could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    /// The text is not an `ic://join/…` link, a `https://…/join/…` link or a bare token.
    #[error("not an invite link")]
    NotALink,
    /// The token is not base64url JSON of an invite payload.
    #[error("invite token is malformed")]
    Malformed,
    /// The payload names a version this client does not understand.
    #[error("unsupported invite version {0}")]
    Version(u32),
    /// The signature does not verify against `owner_pubkey` (tampered or forged).
    #[error("invite signature is invalid (the link was altered or forged)")]
    BadSignature,
    /// `expires_at` is in the past.
    #[error("invite expired")]
    Expired,
}

impl InvitePayload {
    /// The canonical string the signature covers (expires_at in seconds).
    pub fn canonical(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}|{}|{}",
            self.v,
            self.mesh_id,
            self.mesh_slug,
            self.broker_url,
            self.expires_at,
            self.mesh_root_key,
            self.role.as_str(),
            self.owner_pubkey
        )
    }

    /// Build and sign a v1 invite with `signer` (the owner or an admin key).
    pub fn sign(
        mesh_id: &str,
        mesh_slug: &str,
        broker_url: &str,
        expires_at_secs: i64,
        role: InviteRole,
        signer: &SecretKey,
    ) -> Self {
        let root: [u8; 32] = claudemesh_crypto::random_bytes();
        let mut payload = InvitePayload {
            v: 1,
            mesh_id: mesh_id.to_owned(),
            mesh_slug: mesh_slug.to_owned(),
            broker_url: broker_url.to_owned(),
            expires_at: expires_at_secs,
            mesh_root_key: URL_SAFE_NO_PAD.encode(root),
            role,
            owner_pubkey: signer.public().to_hex(),
            signature: String::new(),
        };
        payload.signature = signer.sign_str(&payload.canonical()).to_hex();
        payload
    }

    /// Check the version and signature. Expiry is separate ([`Self::check_expiry`]).
    pub fn verify(&self) -> Result<(), InviteError> {
        if self.v != 1 {
            return Err(InviteError::Version(self.v));
        }
        let key = PublicKey::from_hex(&self.owner_pubkey).map_err(|_| InviteError::BadSignature)?;
        let sig = Signature::from_hex(&self.signature).map_err(|_| InviteError::BadSignature)?;
        key.verify_str(&self.canonical(), &sig)
            .map_err(|_| InviteError::BadSignature)
    }

    /// `Err(Expired)` when `now_secs` is at or past `expires_at`.
    pub fn check_expiry(&self, now_secs: i64) -> Result<(), InviteError> {
        if now_secs >= self.expires_at {
            Err(InviteError::Expired)
        } else {
            Ok(())
        }
    }

    /// The token: base64url (no padding) of the compact JSON.
    pub fn token(&self) -> String {
        // Serializing a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    /// `ic://join/<token>`.
    pub fn link(&self) -> String {
        format!("ic://join/{}", self.token())
    }

    /// Decode a token (no signature check).
    pub fn from_token(token: &str) -> Result<Self, InviteError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim().trim_end_matches('='))
            .map_err(|_| InviteError::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| InviteError::Malformed)
    }

    /// Accept `ic://join/<token>`, `https://HOST/join/<token>` (or http) and a bare token.
    pub fn from_link(text: &str) -> Result<Self, InviteError> {
        let text = text.trim();
        let token = if let Some(rest) = text.strip_prefix("ic://join/") {
            rest
        } else if let Some(rest) = text
            .strip_prefix("https://")
            .or_else(|| text.strip_prefix("http://"))
        {
            let (_, token) = rest.split_once("/join/").ok_or(InviteError::NotALink)?;
            token
        } else if text.contains("://") {
            return Err(InviteError::NotALink);
        } else {
            text
        };
        let token = token
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .trim_end_matches('/');
        if token.is_empty() {
            return Err(InviteError::NotALink);
        }
        Self::from_token(token)
    }

    /// A stable identifier of this invite: the first 32 hex characters of SHA-256 over the
    /// signature. The broker registers invites under it; it reveals nothing secret.
    pub fn invite_id(&self) -> String {
        let mut id = claudemesh_crypto::sha256_hex(self.signature.as_bytes());
        id.truncate(32);
        id
    }
}
