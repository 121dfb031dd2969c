//! Helpers shared by the client's integration tests against a real broker: a mesh made
//! over the broker's HTTP API (a signed `create_mesh`, then one signed one-use invite and
//! one `POST /join` per member).

// A harness whose setup fails must fail the test loudly, so it may unwrap and panic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use claudemesh_crypto::SecretKey;
use claudemesh_proto::canonical::{self, AdminAction};
use claudemesh_proto::invite::{InvitePayload, InviteRole};
use claudemesh_proto::time::now_ms;
use serde_json::{Value, json};

/// A mesh and its enrolled members, in the order their display names were given.
pub struct Mesh {
    pub id: String,
    /// Member id and member key of each member.
    pub members: Vec<(String, SecretKey)>,
}

/// A mesh whose slug and name are `slug`, made by a fresh owner key over the broker's
/// HTTP API at `http`, with one member per display name in `names`, each enrolled by its
/// own one-use invite for the broker at `ws`.
pub async fn mesh(http: &str, ws: &str, slug: &str, names: &[impl AsRef<str>]) -> Mesh {
    let owner = SecretKey::generate();
    let mut body = json!({ "name": slug, "slug": slug });
    body.as_object_mut().unwrap().extend(signed(
        &owner,
        AdminAction::CreateMesh,
        "",
        &[slug, slug],
    ));
    let id = post(format!("{http}/api/meshes"), body).await["meshId"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut members = Vec::new();
    for name in names.iter().map(AsRef::as_ref) {
        let inv = InvitePayload::sign(
            &id,
            slug,
            ws,
            now_ms() / 1000 + 600,
            InviteRole::Member,
            &owner,
        );
        let mut body = json!({ "invite": inv, "maxUses": 1 });
        body.as_object_mut().unwrap().extend(signed(
            &owner,
            AdminAction::RegisterInvite,
            &id,
            &[&inv.invite_id(), "1"],
        ));
        post(format!("{http}/api/meshes/{id}/invites"), body).await;
        let key = SecretKey::generate();
        let joined = post(
            format!("{http}/join"),
            json!({ "invite_token": inv.token(), "peer_pubkey": key.public().to_hex(), "display_name": name }),
        )
        .await;
        members.push((joined["memberId"].as_str().unwrap().to_owned(), key));
    }
    Mesh { id, members }
}

/// POST `body` as JSON; the response must be a success, and its JSON is returned.
async fn post(url: String, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

/// The signature fields of an admin request by `key`, signed now over the admin
/// canonical string of `action` on `mesh` with `args`.
fn signed(
    key: &SecretKey,
    action: AdminAction,
    mesh: &str,
    args: &[&str],
) -> serde_json::Map<String, Value> {
    let ts = now_ms();
    let pk = key.public().to_hex();
    let sig = key
        .sign_str(&canonical::admin(action, mesh, &pk, ts, args))
        .to_hex();
    json!({ "signerPubkey": pk, "timestamp": ts, "signature": sig })
        .as_object()
        .unwrap()
        .clone()
}
