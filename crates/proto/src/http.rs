//! Bodies of the broker's HTTP endpoints: `POST /join` (v1) and the signed mesh-admin
//! API (extension `mesh-admin`). Every admin request carries `signerPubkey`, `timestamp`
//! and a `signature` over [`crate::canonical::admin`]. Also the rules a new mesh's slug
//! and names must meet ([`valid_slug`], [`valid_name`]), which the broker checks.

use serde::{Deserialize, Serialize};

use crate::invite::{InvitePayload, InviteRole};
use crate::limits;

/// `POST /join` request (v1, snake_case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite_payload: Option<InvitePayload>,
    pub peer_pubkey: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// `POST /join` response: 200 `{ok:true, memberId, alreadyMember?}` or 400 `{ok:false, error}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub already_member: Option<bool>,
    /// Extension: the mesh joined and the role granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The signature envelope shared by every admin request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Signed {
    pub signer_pubkey: String,
    pub timestamp: i64,
    pub signature: String,
}

/// `POST /api/meshes`. Signed by `ownerPubkey` (= `signerPubkey`), args `{slug}|{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateMeshRequest {
    pub name: String,
    pub slug: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_display_name: Option<String>,
    /// Required when the broker is not open for mesh creation (see PROTOCOL.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_token: Option<String>,
    #[serde(flatten)]
    pub signed: Signed,
}

/// Whether `slug` is a valid [`CreateMeshRequest::slug`] (PROTOCOL.md, `create_mesh`
/// pre-checks): 1-64 characters of `a-z`, `0-9` and `-`, not starting with `-`.
pub fn valid_slug(slug: &str) -> bool {
    (1..=64).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
}

/// Whether `name` is a valid mesh name or owner display name of a [`CreateMeshRequest`]
/// (PROTOCOL.md, `create_mesh` pre-checks): not empty or only whitespace, at most
/// [`limits::MAX_SHORT_TEXT_BYTES`] bytes, without `|` or control characters.
pub fn valid_name(name: &str) -> bool {
    !name.trim().is_empty()
        && name.len() <= limits::MAX_SHORT_TEXT_BYTES
        && !name.contains('|')
        && !name.chars().any(char::is_control)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateMeshResponse {
    pub ok: bool,
    pub mesh_id: String,
    pub slug: String,
    /// The owner key is enrolled as a member with role `owner`.
    pub owner_member_id: String,
}

/// `POST /api/meshes/{meshId}/invites`. Args `{inviteId}|{maxUses}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterInviteRequest {
    pub invite: InvitePayload,
    /// 0 means unlimited.
    pub max_uses: u32,
    #[serde(flatten)]
    pub signed: Signed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterInviteResponse {
    pub ok: bool,
    pub invite_id: String,
}

/// `POST /api/meshes/{meshId}/members/{memberId}/remove`. Args `{memberId}|{mode}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveMemberRequest {
    pub mode: RemoveMode,
    #[serde(flatten)]
    pub signed: Signed,
}

crate::text_enum! {
    /// `kick` removes the member (close 4001; may re-join with a new invite); `revoke`
    /// bans the key (close 4002; hello answers `revoked`, joins answer `member_revoked`).
    pub enum RemoveMode {
        Kick = "kick",
        Revoke = "revoke",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InviteSummary {
    pub invite_id: String,
    pub role: InviteRole,
    pub max_uses: u32,
    pub uses: u32,
    pub expires_at: i64,
    pub revoked: bool,
    pub created_by: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InviteListResponse {
    pub ok: bool,
    pub invites: Vec<InviteSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberSummary {
    pub member_id: String,
    pub pubkey: String,
    pub display_name: String,
    pub role: String,
    pub joined_at: i64,
    /// `null`, `"kicked"` or `"revoked"`.
    pub removed: Option<String>,
    pub online: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberListResponse {
    pub ok: bool,
    pub members: Vec<MemberSummary>,
}

/// Any HTTP error: `{ok:false, error:<code>, message}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub ok: bool,
    pub error: String,
    pub message: String,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    /// `up` or `down`.
    pub db: String,
    /// The database backend: `sqlite` or `postgres` (extension; absent from v1 brokers).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend: String,
    /// The answering node's name (extension; absent from v1 brokers).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Nodes up on the shared database, this one included (extension; PostgreSQL only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<usize>,
    pub version: String,
    /// Seconds since start.
    pub uptime: u64,
}
