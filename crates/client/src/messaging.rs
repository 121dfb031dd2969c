//! Text messaging on top of a [`Connection`]: every send is end-to-end encrypted with the
//! verified inner header, and every push is opened, checked, deduped in the local
//! [`Inbox`] and acked.
//!
//! Multicast uses the `e2e-multicast` extension (body sealed once, a sealed key for every
//! current recipient, online or not). Against a broker that does not offer it (v1), a
//! multicast becomes one direct message per *online* peer, and the report says who could
//! not be reached — this product never sends multicast in plaintext.

use claudemesh_proto::codes::AnyCode;
use claudemesh_proto::time::now_ms;

use claudemesh_crypto::PublicKey;
use claudemesh_proto::codes::cap;
use claudemesh_proto::frames::{Priority, Push, Send};

use crate::connection::{ConnectError, Connection};
use crate::envelope::{Body, Incoming, Keyring, Opened};
use crate::inbox::{Inbox, InboxError, Kind, Record};

/// Where a message goes (names are resolved by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Key(PublicKey),
    /// A key whose client is known to speak only v1 (it announced no `e2e-multicast`):
    /// the body is sent as plain v1 text inside the crypto_box, without our envelope,
    /// so that client can display it. Still end-to-end encrypted.
    LegacyKey(PublicKey),
    /// `*`
    Broadcast,
    /// `@name`
    Group(String),
}

impl Target {
    pub fn spec(&self) -> String {
        match self {
            Target::Key(k) | Target::LegacyKey(k) => k.to_hex(),
            Target::Broadcast => "*".into(),
            Target::Group(g) => format!("@{g}"),
        }
    }

    /// The group name of `@name`, `None` for any other target.
    fn group(&self) -> Option<&str> {
        match self {
            Target::Group(g) => Some(g),
            _ => None,
        }
    }
}

/// How a send went out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// One crypto_box to one key.
    Direct,
    /// Sealed once, a key per recipient (offline recipients included).
    SealedMulticast,
    /// v1 broker: one direct message per online peer; `unreachable` explains the gap.
    PerPeer { unreachable: String },
}

/// The outcome of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReport {
    /// Broker message ids (one per message actually sent).
    pub message_ids: Vec<String>,
    /// Deliveries the broker created.
    pub recipients: u32,
    pub delivery: Delivery,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Connection(#[from] ConnectError),
    /// The broker refused the message (`unknown_recipient`, `rate_limited`, …).
    #[error("the broker refused the message: {0}")]
    Refused(AnyCode),
    #[error("no one to send to: {0}")]
    NoRecipients(String),
}

async fn send_one(conn: &Connection, frame: Send) -> Result<(String, u32), SendError> {
    let ack = conn.send(frame).await?;
    match (ack.queued, ack.error) {
        (true, _) => Ok((ack.message_id, ack.recipients.unwrap_or(1))),
        (false, Some(code)) => Err(SendError::Refused(AnyCode::parse(&code))),
        // Not queued and no code says why: the broker broke the protocol.
        (false, None) => Err(ConnectError::UnexpectedReply("send").into()),
    }
}

fn frame(
    target_spec: String,
    priority: Priority,
    nonce: String,
    ciphertext: String,
    id: &str,
) -> Send {
    Send {
        target_spec,
        priority,
        nonce,
        ciphertext,
        id: None,
        client_message_id: Some(id.to_owned()),
        request_fingerprint: None,
        sealed_keys: None,
        req_id: None,
    }
}

/// Seal `text` for one key and send it: in our envelope, or (`legacy`) as a plain v1 body
/// inside crypto_box for a peer known to run a v1 client.
async fn send_direct(
    conn: &Connection,
    ring: &mut Keyring,
    to: &PublicKey,
    mesh_id: &str,
    body: Body<'_>,
    priority: Priority,
    legacy: bool,
) -> Result<(String, u32), SendError> {
    let id = claudemesh_proto::ids::new_id();
    let sealed = if legacy {
        ring.seal_legacy(to, body.text.as_bytes())
    } else {
        ring.seal_direct(to, mesh_id, &id, now_ms(), body)
    };
    send_one(
        conn,
        frame(to.to_hex(), priority, sealed.nonce, sealed.ciphertext, &id),
    )
    .await
}

/// Encrypt and send `body` (a `&str` is depth 0). `ring` holds the connection key
/// (session key, else member key) and caches the shared key of every peer already
/// written to. Plain v1 bodies (for v1 clients) cannot carry the depth.
pub async fn send_text<'b>(
    conn: &Connection,
    ring: &mut Keyring,
    mesh_id: &str,
    target: &Target,
    body: impl Into<Body<'b>>,
    priority: Priority,
) -> Result<SendReport, SendError> {
    let text = body.into();
    let multicast = Multicast {
        mesh_id,
        target,
        group: target.group(),
        my_key: ring.my_key().to_owned(),
        text,
        priority,
    };
    match target {
        Target::Key(to) | Target::LegacyKey(to) => {
            let legacy = matches!(target, Target::LegacyKey(_));
            let (mid, n) = send_direct(conn, ring, to, mesh_id, text, priority, legacy).await?;
            Ok(SendReport {
                message_ids: vec![mid],
                recipients: n,
                delivery: Delivery::Direct,
            })
        }
        Target::Broadcast | Target::Group(_)
            if conn.has_capability(cap::E2E_MULTICAST)
                && conn.has_capability(cap::LIST_MEMBERS) =>
        {
            send_sealed_multicast(conn, ring, multicast).await
        }
        Target::Broadcast | Target::Group(_) => send_per_peer(conn, ring, multicast).await,
    }
}

/// A multicast as `send_text` was asked for it.
struct Multicast<'a> {
    mesh_id: &'a str,
    target: &'a Target,
    /// The group of `@name`; `None` for everyone.
    group: Option<&'a str>,
    /// The connection key, never a recipient of its own multicast.
    my_key: String,
    text: Body<'a>,
    priority: Priority,
}

/// Multicast with `e2e-multicast`: the body sealed once with a key for every recipient,
/// online or not.
async fn send_sealed_multicast(
    conn: &Connection,
    ring: &mut Keyring,
    msg: Multicast<'_>,
) -> Result<SendReport, SendError> {
    // Identities known to run a v1 client (connected, never announced the extension)
    // cannot open a sealed key: they get a plain v1 body, still boxed.
    let mut modern = Vec::new();
    let mut legacy = Vec::new();
    for m in conn.members().await? {
        if m.pubkey == msg.my_key
            || !msg
                .group
                .is_none_or(|g| m.groups.iter().any(|x| x.name == g))
        {
            continue;
        }
        let Ok(key) = PublicKey::from_hex(&m.pubkey) else {
            continue;
        };
        if m.e2e_multicast || !m.seen {
            modern.push(key);
        } else {
            legacy.push(key);
        }
    }
    if modern.is_empty() && legacy.is_empty() {
        return Err(SendError::NoRecipients(format!(
            "nobody else is in {}",
            msg.target.spec()
        )));
    }
    let mut ids = Vec::new();
    let mut total = 0;
    if !modern.is_empty() {
        let id = claudemesh_proto::ids::new_id();
        let spec = msg.target.spec();
        let sealed = ring.seal_multicast(&modern, &spec, msg.mesh_id, &id, now_ms(), msg.text);
        let mut f = frame(spec, msg.priority, sealed.nonce, sealed.ciphertext, &id);
        f.sealed_keys = Some(sealed.sealed_keys);
        let (mid, n) = send_one(conn, f).await?;
        ids.push(mid);
        total += n;
    }
    for to in &legacy {
        let (mid, n) =
            send_direct(conn, ring, to, msg.mesh_id, msg.text, msg.priority, true).await?;
        ids.push(mid);
        total += n;
    }
    Ok(SendReport {
        message_ids: ids,
        recipients: total,
        delivery: Delivery::SealedMulticast,
    })
}

/// Multicast on a v1 broker (no sealed multicast): one E2E direct message per online peer.
async fn send_per_peer(
    conn: &Connection,
    ring: &mut Keyring,
    msg: Multicast<'_>,
) -> Result<SendReport, SendError> {
    let peers: Vec<PublicKey> = conn
        .peers()
        .await?
        .into_iter()
        .filter(|p| p.pubkey != msg.my_key)
        .filter(|p| {
            msg.group
                .is_none_or(|g| p.groups.iter().any(|x| x.name == g))
        })
        .filter_map(|p| PublicKey::from_hex(&p.pubkey).ok())
        .collect();
    if peers.is_empty() {
        return Err(SendError::NoRecipients(format!(
            "no online peer in {} (this broker cannot queue encrypted multicast for offline members)",
            msg.target.spec()
        )));
    }
    let mut ids = Vec::new();
    for to in &peers {
        let (mid, _) =
            send_direct(conn, ring, to, msg.mesh_id, msg.text, msg.priority, false).await?;
        ids.push(mid);
    }
    let n = u32::try_from(ids.len()).unwrap_or(u32::MAX);
    Ok(SendReport {
        message_ids: ids,
        recipients: n,
        delivery: Delivery::PerPeer {
            unreachable: "this broker does not offer e2e-multicast: sent as direct messages to online peers only; offline members will not receive it".into(),
        },
    })
}

/// Open a push, record it in the inbox (deduped) and say whether it is new. The caller
/// acks every non-system push afterwards, new or not, valid or not, so nothing loops.
pub fn receive(
    ring: &mut Keyring,
    push: &Push,
    inbox: &mut Inbox,
) -> Result<Option<Record>, InboxError> {
    let system = push.subtype.as_deref() == Some("system");
    let (kind, text, reason, envelope_id, depth) = if system {
        let ev = push.event.clone().unwrap_or_default();
        let who = push
            .event_data
            .as_ref()
            .map(|d| d.name.clone())
            .unwrap_or_default();
        (Kind::System, Some(format!("{ev}: {who}")), None, None, 0)
    } else {
        let incoming = Incoming::from(push);
        match ring.open(&incoming) {
            Opened::Verified(env) => (
                Kind::Verified,
                Some(env.body),
                None,
                Some(env.id),
                env.depth,
            ),
            Opened::Legacy(text) => (Kind::Legacy, Some(text), None, None, 0),
            Opened::Rejected(r) => {
                tracing::warn!(message_id = %push.message_id, reason = %r, "rejected an inbound message");
                (Kind::Rejected, None, Some(r.to_string()), None, 0)
            }
        }
    };
    let record = Record {
        message_id: push.message_id.clone(),
        mesh_id: push.mesh_id.clone(),
        sender_pubkey: push.sender_pubkey.clone(),
        sender_name: push.sender_name.clone(),
        target_spec: push.target_spec.clone(),
        priority: push.priority.as_str().to_owned(),
        created_at: push.created_at.clone(),
        received_at: now_ms(),
        kind,
        text,
        reason,
        envelope_id,
        depth,
    };
    Ok(inbox.record(&record)?.then_some(record))
}
