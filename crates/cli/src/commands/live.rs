//! The short-lived member connection every live command opens: one `hello` with a fresh
//! `cli-<pid>` session id and no reconnects, closed when the command is done. Refusals
//! become one line that says what to do.

use anyhow::anyhow;
use claudemesh_client::{ConnectOptions, Connection, Identity};
use claudemesh_crypto::SecretKey;
use claudemesh_proto::codes::AnyCode;
use claudemesh_proto::codes::cap;
use claudemesh_proto::frames::{PresenceInfo, Push};
use tokio::sync::mpsc;

use crate::config::MeshEntry;
use crate::resolve::{self, Candidate};

/// A member connection for one command, with the pushes it receives.
pub(crate) struct Live {
    pub(crate) conn: Connection,
    pub(super) pushes: mpsc::Receiver<Push>,
    pub(super) key: SecretKey,
}

/// Connect to `entry`'s broker as the member (no session key, no reconnects).
pub(crate) async fn connect(entry: &MeshEntry) -> anyhow::Result<Live> {
    let key = entry.key()?;
    let presence = PresenceInfo {
        display_name: Some(entry.display_name.clone()),
        session_id: format!("cli-{}", std::process::id()),
        pid: i64::from(std::process::id()),
        cwd: std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        hostname: std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty()),
        peer_type: Some("human".into()),
        channel: Some("cli".into()),
        capabilities: Some(vec![cap::E2E_MULTICAST.into(), cap::LIST_MEMBERS.into()]),
        ..PresenceInfo::default()
    };
    let identity = Identity {
        mesh_id: entry.mesh_id.clone(),
        member_id: entry.member_id.clone(),
        member_key: key.clone(),
        session_key: None,
    };
    let opts = ConnectOptions {
        url: entry.broker_url.clone(),
        identity,
        presence,
        reconnect: false,
        liveness: claudemesh_client::Liveness::default(),
    };
    let (conn, pushes) = Connection::connect(opts).await.map_err(|e| match e {
        claudemesh_client::ConnectError::Refused {
            code: AnyCode::Known(code),
            message,
        } => anyhow!("mesh '{}': {} ({message})", entry.slug, code.explain()),
        claudemesh_client::ConnectError::Unreachable { url, source }
            if claudemesh_client::tls::explain(&source).is_some() =>
        {
            let why = claudemesh_client::tls::explain(&source).unwrap_or_default();
            anyhow!("cannot reach the broker at {url}: {why}")
        }
        other => other.into(), // keeps the cause for main's {:#}
    })?;
    Ok(Live { conn, pushes, key })
}

/// Everyone this connection can address, itself excluded.
pub(super) async fn candidates(live: &Live) -> anyhow::Result<Vec<Candidate>> {
    resolve::candidates(&live.conn, &live.key.public().to_hex()).await
}
