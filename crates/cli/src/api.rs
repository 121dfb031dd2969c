//! The broker's HTTP side as the CLI uses it: `POST /join` and the signed mesh-admin API,
//! one function per endpoint, with the typed bodies of [`claudemesh_proto::http`]. Every
//! admin request is signed here over its purpose-bound canonical string, so the signed
//! arguments stand beside the endpoint they authorize.
//!
//! What it must not do: print anything, or put a secret key in a request or an error.

use claudemesh_proto::codes::AnyCode;
use claudemesh_proto::time::now_ms;

use anyhow::{Context as _, anyhow, bail};
use claudemesh_crypto::SecretKey;
use claudemesh_proto::canonical::{self, AdminAction};
use claudemesh_proto::http::{
    CreateMeshRequest, CreateMeshResponse, InviteListResponse, JoinRequest, JoinResponse,
    MemberListResponse, RegisterInviteRequest, RegisterInviteResponse, RemoveMemberRequest,
    RemoveMode, Signed,
};
use claudemesh_proto::invite::InvitePayload;
use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;

use crate::config::MeshEntry;

/// `{signerPubkey, timestamp, signature}` for an admin action.
fn signed(key: &SecretKey, action: AdminAction, mesh_id: &str, args: &[&str]) -> Signed {
    let timestamp = now_ms();
    let signer_pubkey = key.public().to_hex();
    let signature = key
        .sign_str(&canonical::admin(
            action,
            mesh_id,
            &signer_pubkey,
            timestamp,
            args,
        ))
        .to_hex();
    Signed {
        signer_pubkey,
        timestamp,
        signature,
    }
}

/// `POST /api/meshes` on the broker at `broker_url` (its WebSocket URL, as the user gave
/// it): a new mesh owned by `key` (signed by it, args `{slug}|{name}`).
pub async fn create_mesh(
    broker_url: &str,
    key: &SecretKey,
    name: &str,
    slug: &str,
    owner_display_name: &str,
    creation_token: Option<String>,
) -> anyhow::Result<CreateMeshResponse> {
    let request = CreateMeshRequest {
        name: name.to_owned(),
        slug: slug.to_owned(),
        owner_display_name: Some(owner_display_name.to_owned()),
        creation_token,
        signed: signed(key, AdminAction::CreateMesh, "", &[slug, name]),
    };
    post(broker_url, "/api/meshes", &request).await
}

/// `POST /join` on the broker at `broker_url`: enroll `request.peer_pubkey` with an invite.
pub async fn join(broker_url: &str, request: &JoinRequest) -> anyhow::Result<JoinResponse> {
    post(broker_url, "/join", request).await
}

/// The admin API of one mesh as one of its members: every request is signed with the
/// member key.
pub struct Admin {
    broker_url: String,
    mesh_id: String,
    key: SecretKey,
}

impl Admin {
    /// The member key and the broker of `entry`.
    pub fn new(entry: &MeshEntry) -> anyhow::Result<Self> {
        let key = entry.key()?;
        Ok(Self {
            broker_url: entry.broker_url.clone(),
            mesh_id: entry.mesh_id.clone(),
            key,
        })
    }

    /// The member key (invites are signed with it before they are registered).
    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    fn signed(&self, action: AdminAction, args: &[&str]) -> Signed {
        signed(&self.key, action, &self.mesh_id, args)
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        post(
            &self.broker_url,
            &format!("/api/meshes/{}{path}", self.mesh_id),
            body,
        )
        .await
    }

    /// `POST …/invites`: register a signed invite (args `{inviteId}|{maxUses}`).
    pub async fn register_invite(
        &self,
        invite: &InvitePayload,
        max_uses: u32,
    ) -> anyhow::Result<RegisterInviteResponse> {
        let request = RegisterInviteRequest {
            invite: invite.clone(),
            max_uses,
            signed: self.signed(
                AdminAction::RegisterInvite,
                &[&invite.invite_id(), &max_uses.to_string()],
            ),
        };
        self.post("/invites", &request).await
    }

    /// `POST …/invites/list`.
    pub async fn list_invites(&self) -> anyhow::Result<InviteListResponse> {
        let request = self.signed(AdminAction::ListInvites, &[]);
        self.post("/invites/list", &request).await
    }

    /// `POST …/invites/{inviteId}/revoke`.
    pub async fn revoke_invite(&self, invite_id: &str) -> anyhow::Result<()> {
        let request = self.signed(AdminAction::RevokeInvite, &[invite_id]);
        let _: IgnoredAny = self
            .post(&format!("/invites/{invite_id}/revoke"), &request)
            .await?;
        Ok(())
    }

    /// `POST …/members/list`.
    pub async fn list_members(&self) -> anyhow::Result<MemberListResponse> {
        let request = self.signed(AdminAction::ListMembers, &[]);
        self.post("/members/list", &request).await
    }

    /// `POST …/dashboard/login`: a single-use sign-in code; the full URL to open.
    pub async fn dashboard_login(&self) -> anyhow::Result<String> {
        #[derive(serde::Deserialize)]
        struct Code {
            path: String,
        }
        let request = self.signed(AdminAction::DashboardLogin, &[]);
        let code: Code = self.post("/dashboard/login", &request).await?;
        Ok(format!(
            "{}{}",
            crate::config::http_base(&self.broker_url)?,
            code.path
        ))
    }

    /// `POST …/members/{memberId}/remove` (args `{memberId}|{mode}`).
    pub async fn remove_member(&self, member_id: &str, mode: RemoveMode) -> anyhow::Result<()> {
        let request = RemoveMemberRequest {
            mode,
            signed: self.signed(AdminAction::RemoveMember, &[member_id, mode.as_str()]),
        };
        let _: IgnoredAny = self
            .post(&format!("/members/{member_id}/remove"), &request)
            .await?;
        Ok(())
    }
}

/// An HTTP client for `base`; for `https://` one that trusts what the WebSocket side
/// trusts (the platform's roots plus `CLAUDEMESH_CA_FILE`), loaded only when needed.
pub fn http_client(base: &str, timeout: std::time::Duration) -> anyhow::Result<reqwest::Client> {
    let builder = reqwest::Client::builder().timeout(timeout);
    let builder = if base.starts_with("https://") {
        let tls = claudemesh_client::tls::client_config()?;
        builder.use_preconfigured_tls((*tls).clone())
    } else {
        builder
    };
    Ok(builder.build()?)
}

/// Why a request to `base` failed, in one line a user can act on.
pub fn unreachable(base: &str, e: &reqwest::Error) -> anyhow::Error {
    if let Some(why) = claudemesh_client::tls::explain(e) {
        anyhow!("cannot reach the broker at {base}: {why}")
    } else if let Some(why) = connect_cause(e) {
        anyhow!("cannot reach the broker at {base}: {why}")
    } else if e.is_timeout() {
        anyhow!(
            "cannot reach the broker at {base}: no answer in time (a firewall, or the wrong host?)"
        )
    } else if e.is_connect() {
        anyhow!("cannot reach the broker at {base}: is it running, and is the URL right?")
    } else {
        anyhow!("request to {base} failed: {e}")
    }
}

/// A refused connection or an unresolvable name, told apart from the rest.
fn connect_cause(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return Some(
                        "connection refused: nothing listens on that host and port (is the broker running?)",
                    );
                }
                _ if io.to_string().contains("failed to lookup address") => {
                    return Some("the host name does not resolve (check the URL)");
                }
                _ => {}
            }
        }
        if err.to_string().starts_with("dns error") {
            return Some("the host name does not resolve (check the URL)");
        }
        cur = err.source();
    }
    None
}

/// Check that `ws_url` is a claudemesh broker's WebSocket endpoint before anything is
/// saved: `/health` must answer as a broker does, and the WebSocket path must exist
/// (a plain GET of it is refused as "not an upgrade", never 404).
pub async fn check_broker(ws_url: &str) -> anyhow::Result<()> {
    let base = crate::config::http_base(ws_url)?;
    let client = http_client(&base, std::time::Duration::from_secs(10))?;
    let health = client
        .get(format!("{base}/health"))
        .send()
        .await
        .map_err(|e| unreachable(ws_url, &e))?;
    let looks_like_broker = health
        .json::<claudemesh_proto::http::Health>()
        .await
        .is_ok();
    if !looks_like_broker {
        bail!("{ws_url} is not a claudemesh broker (its /health does not answer as one)");
    }
    let ws_path = ws_url.replacen("ws", "http", 1);
    let probe = client
        .get(&ws_path)
        .send()
        .await
        .map_err(|e| unreachable(ws_url, &e))?;
    if probe.status() == reqwest::StatusCode::NOT_FOUND {
        let hint = format!("{}/ws", ws_url.trim_end_matches('/'));
        bail!("{ws_url} is not the broker's WebSocket path (HTTP 404 there); did you mean {hint}?");
    }
    Ok(())
}

/// POST JSON to `path` on the broker at `broker_url` (its WebSocket URL: errors name the
/// URL the user knows, not the HTTP base derived from it); a 2xx body parses as `T`,
/// anything else becomes one readable error line.
async fn post<B: Serialize, T: DeserializeOwned>(
    broker_url: &str,
    path: &str,
    body: &B,
) -> anyhow::Result<T> {
    let base = crate::config::http_base(broker_url)?;
    let url = format!("{base}{path}");
    let client = http_client(&base, std::time::Duration::from_secs(15))?;
    let resp = client
        .post(&url)
        .json(body)
        .send()
        .await
        .map_err(|e| unreachable(broker_url, &e))?;
    let status = resp.status();
    let value: Value = resp.json().await.with_context(|| {
        format!("the broker at {broker_url} sent an unreadable reply (HTTP {status})")
    })?;
    if !status.is_success() || value.get("ok") == Some(&Value::Bool(false)) {
        let code = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("error");
        let message = value.get("message").and_then(Value::as_str).unwrap_or(code);
        return Err(anyhow!(ApiError {
            code: AnyCode::parse(code),
            message: message.to_owned()
        }));
    }
    serde_json::from_value(value)
        .with_context(|| format!("the broker at {broker_url} sent an unexpected reply"))
}

/// A refusal from the broker, kept typed so callers can explain specific codes.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code})")]
pub struct ApiError {
    pub code: AnyCode,
    pub message: String,
}
