//! The broker's HTTP side as the CLI uses it: `POST /join` and the signed mesh-admin API.
//! Every admin request is signed over its purpose-bound canonical string.

use claudemesh_proto::time::now_ms;

use anyhow::{Context as _, anyhow};
use claudemesh_crypto::SecretKey;
use claudemesh_proto::canonical::{self, AdminAction};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// `{signerPubkey, timestamp, signature}` for an admin action.
pub fn signed(key: &SecretKey, action: AdminAction, mesh_id: &str, args: &[&str]) -> Value {
    let ts = now_ms();
    let pk = key.public().to_hex();
    let signature = key
        .sign_str(&canonical::admin(action, mesh_id, &pk, ts, args))
        .to_hex();
    json!({ "signerPubkey": pk, "timestamp": ts, "signature": signature })
}

pub fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// POST JSON; a 2xx body parses as `T`, anything else becomes one readable error line.
pub async fn post<T: DeserializeOwned>(base: &str, path: &str, body: &Value) -> anyhow::Result<T> {
    let url = format!("{base}{path}");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()?;
    let resp = client.post(&url).json(body).send().await.map_err(|e| {
        if e.is_connect() || e.is_timeout() {
            anyhow!("cannot reach the broker at {base}: is it running, and is the URL right?")
        } else {
            anyhow!("request to {base} failed: {e}")
        }
    })?;
    let status = resp.status();
    let value: Value = resp.json().await.with_context(|| {
        format!("the broker at {base} sent an unreadable reply (HTTP {status})")
    })?;
    if !status.is_success() || value.get("ok") == Some(&Value::Bool(false)) {
        let code = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("error");
        let message = value.get("message").and_then(Value::as_str).unwrap_or(code);
        return Err(anyhow!(ApiError {
            code: code.to_owned(),
            message: message.to_owned()
        }));
    }
    serde_json::from_value(value)
        .with_context(|| format!("the broker at {base} sent an unexpected reply"))
}

/// A refusal from the broker, kept typed so callers can explain specific codes.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code})")]
pub struct ApiError {
    pub code: String,
    pub message: String,
}
