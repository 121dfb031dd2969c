//! Mesh and peers for a run, created through the real HTTP endpoints with real keys: a
//! signed mesh creation, one registered unlimited invite, and one `POST /join` per peer.

use claudemesh_proto::time::now_ms;

use anyhow::{Context as _, bail};
use claudemesh_crypto::SecretKey;
use claudemesh_proto::canonical::{self, AdminAction};
use claudemesh_proto::invite::{InvitePayload, InviteRole};
use serde_json::{Value, json};

pub struct Enrolled {
    pub mesh_id: String,
    pub peers: Vec<PeerIdentity>,
}

#[derive(Clone)]
pub struct PeerIdentity {
    pub member_id: String,
    pub key: SecretKey,
}

async fn post(
    client: &reqwest::Client,
    url: String,
    mut body: Value,
    signed: Option<(&SecretKey, AdminAction, &str, &[&str])>,
) -> anyhow::Result<Value> {
    if let Some((key, action, mesh, args)) = signed {
        let ts = now_ms();
        let pk = key.public().to_hex();
        let sig = key
            .sign_str(&canonical::admin(action, mesh, &pk, ts, args))
            .to_hex();
        if let Some(o) = body.as_object_mut() {
            o.insert("signerPubkey".into(), json!(pk));
            o.insert("timestamp".into(), json!(ts));
            o.insert("signature".into(), json!(sig));
        }
    }
    let resp = client
        .post(&url)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let v: Value = resp.json().await?;
    if !status.is_success() {
        bail!("POST {url}: {status} {v}");
    }
    Ok(v)
}

/// Create a mesh and enroll `n` peers.
pub async fn enroll(http: &str, ws: &str, n: usize) -> anyhow::Result<Enrolled> {
    let tls = claudemesh_client::tls::client_config()?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()?;
    let owner = SecretKey::generate();
    let slug = format!("bench-{:08x}", rand::random::<u32>());
    let created = post(
        &client,
        format!("{http}/api/meshes"),
        json!({ "name": slug, "slug": slug }),
        Some((&owner, AdminAction::CreateMesh, "", &[&slug, &slug])),
    )
    .await?;
    let mesh_id = created
        .get("meshId")
        .and_then(serde_json::Value::as_str)
        .context("no meshId")?
        .to_owned();
    let invite = InvitePayload::sign(
        &mesh_id,
        &slug,
        ws,
        now_ms() / 1000 + 3600,
        InviteRole::Member,
        &owner,
    );
    let id = invite.invite_id();
    post(
        &client,
        format!("{http}/api/meshes/{mesh_id}/invites"),
        json!({ "invite": invite, "maxUses": 0 }),
        Some((&owner, AdminAction::RegisterInvite, &mesh_id, &[&id, "0"])),
    )
    .await?;
    let mut peers = Vec::with_capacity(n);
    for i in 0..n {
        let key = SecretKey::generate();
        let joined = post(&client, format!("{http}/join"), json!({ "invite_token": invite.token(), "peer_pubkey": key.public().to_hex(), "display_name": format!("peer-{i}") }), None).await?;
        peers.push(PeerIdentity {
            member_id: joined
                .get("memberId")
                .and_then(serde_json::Value::as_str)
                .context("no memberId")?
                .to_owned(),
            key,
        });
    }
    Ok(Enrolled { mesh_id, peers })
}
