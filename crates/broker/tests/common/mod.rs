//! Test harness: a real broker on port 0 over a real database, signed admin calls, and
//! a v1 client that speaks only raw WIRE-V1 JSON (built with `serde_json::json!`, not the
//! project's frame types), so these tests check compatibility rather than round-tripping
//! our own structs.
//!
//! The database is the test's backend: tests written inside [`on_every_backend!`] run
//! twice, as `sqlite::name` (a SQLite file in a temporary directory) and `postgres::name`
//! (a PostgreSQL database of the test's own, dropped afterwards; skipped loudly without
//! PostgreSQL, a failure with `CLAUDEMESH_REQUIRE_POSTGRES=1`). Tests outside it (the
//! SQLite-specific ones: lock files, data directory permissions) run on SQLite.

#![allow(dead_code)]
// each test binary uses a different subset
// A harness whose setup fails must fail the test loudly, so it may unwrap and panic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use claudemesh_broker::{Broker, BrokerConfig, BrokerHandle};
use claudemesh_crypto::{PublicKey, SecretKey, box_open, box_seal, random_nonce};
use claudemesh_proto::canonical::{self, AdminAction};
use claudemesh_proto::invite::{InvitePayload, InviteRole};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod traffic;

pub const WAIT: Duration = Duration::from_secs(5);

/// Write each test inside once; it runs on every backend, as `sqlite::name` and
/// `postgres::name`, with the brokers it starts on that backend.
#[allow(unused_macros)] // not every test binary has backend-independent tests
macro_rules! on_every_backend {
    ($($(#[$attr:meta])* async fn $name:ident() $body:block)*) => {
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$attr])*
                async fn $name() {
                    $crate::common::on_backend(
                        $crate::common::Backend::Sqlite,
                        stringify!($name),
                        async move $body,
                    )
                    .await
                }
            )*
        }
        mod postgres {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$attr])*
                async fn $name() {
                    $crate::common::on_backend(
                        $crate::common::Backend::Postgres,
                        stringify!($name),
                        async move $body,
                    )
                    .await
                }
            )*
        }
    };
}

/// The database the brokers of a test run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

tokio::task_local! {
    static BACKEND: Backend;
}

/// The running test's backend (SQLite outside [`on_every_backend!`]).
pub fn backend() -> Backend {
    BACKEND.try_with(|b| *b).unwrap_or(Backend::Sqlite)
}

/// Run a test body on `backend`, or skip it (loudly) when that backend is missing.
pub async fn on_backend(backend: Backend, test: &str, body: impl std::future::Future<Output = ()>) {
    if backend == Backend::Postgres && claudemesh_testdb::postgres_or_skip(test).is_none() {
        return;
    }
    BACKEND.scope(backend, body).await;
}

/// Where one broker under test keeps its state, kept across its restarts: a temporary
/// directory and, on PostgreSQL, a database of its own.
pub struct Data {
    pub dir: tempfile::TempDir,
    pub pg: Option<claudemesh_testdb::TestDb>,
}

impl Data {
    /// Fresh state on the running test's backend.
    pub fn new() -> Self {
        let pg = match backend() {
            Backend::Sqlite => None,
            Backend::Postgres => Some(
                claudemesh_testdb::TestDb::create("broker test")
                    .expect("on_backend checked PostgreSQL"),
            ),
        };
        Self {
            dir: tempfile::tempdir().unwrap(),
            pg,
        }
    }

    /// A broker config over this state.
    pub fn config(&self) -> BrokerConfig {
        let mut config = BrokerConfig::for_tests(self.dir.path().to_path_buf());
        config.database_url = self.pg.as_ref().map(|db| db.url().to_owned());
        config
    }

    /// The `claudemesh-broker` flags that name this state.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        let mut args = vec!["--data-dir".into(), self.dir.path().into()];
        if let Some(db) = &self.pg {
            args.extend(["--database-url".into(), db.url().into()]);
        }
        args
    }

    /// A store over this state, opened directly (for wrappers that inject faults).
    pub fn open_store(&self) -> Box<dyn claudemesh_store::Store> {
        match &self.pg {
            Some(db) => claudemesh_testdb::off_runtime(|| {
                Box::new(claudemesh_store::PgStore::open(db.url()).unwrap())
            }),
            None => Box::new(
                claudemesh_store::SqliteStore::open(&self.dir.path().join("claudemesh.db"))
                    .unwrap(),
            ),
        }
    }

    /// (message bodies, deliveries) stored for a mesh, read straight from the database.
    pub fn stored(&self, mesh_id: &str) -> (i64, i64) {
        const COUNTS: &str = "SELECT (SELECT COUNT(*) FROM messages WHERE mesh_id = $1), \
                              (SELECT COUNT(*) FROM deliveries WHERE mesh_id = $1)";
        match &self.pg {
            Some(db) => claudemesh_testdb::off_runtime(|| {
                let row = db.client().query_one(COUNTS, &[&mesh_id]).unwrap();
                (row.get(0), row.get(1))
            }),
            None => rusqlite::Connection::open(self.dir.path().join("claudemesh.db"))
                .unwrap()
                .query_row(&COUNTS.replace("$1", "?1"), [mesh_id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .unwrap(),
        }
    }
}

pub use claudemesh_proto::time::now_ms;

/// A broker under test: in-process (library handle) or a real `claudemesh-broker` process.
pub struct TestBroker {
    pub handle: Option<BrokerHandle>,
    pub child: Option<std::process::Child>,
    pub ws_url: String,
    pub data: Data,
}

impl TestBroker {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut BrokerConfig)) -> Self {
        Self::start_in(Data::new(), tweak).await
    }

    /// In-process broker on port 0 over `data`.
    pub async fn start_in(data: Data, tweak: impl FnOnce(&mut BrokerConfig)) -> Self {
        let mut config = data.config();
        tweak(&mut config);
        let handle = Broker::spawn(config).await.unwrap();
        Self::serving(handle, data)
    }

    /// An in-process broker the caller started over `data`.
    pub fn serving(handle: BrokerHandle, data: Data) -> Self {
        Self {
            ws_url: handle.ws_url(),
            handle: Some(handle),
            child: None,
            data,
        }
    }

    /// The real binary on port 0 over `data`; the URL is read from its stdout.
    pub fn spawn_process(data: Data) -> Self {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_claudemesh-broker"))
            .args(["--listen", "127.0.0.1:0"])
            .args(data.args())
            .env("CLAUDEMESH_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Self::adopt(child, data)
    }

    /// A broker process started by the caller (stdout piped): its URL is read from stdout.
    pub fn adopt(mut child: std::process::Child, data: Data) -> Self {
        use std::io::BufRead as _;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ws_url = line
            .split_whitespace()
            .find(|w| w.starts_with("ws://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_owned();
        Self {
            handle: None,
            child: Some(child),
            ws_url,
            data,
        }
    }

    pub fn ws(&self) -> String {
        self.ws_url.clone()
    }

    pub fn http(&self) -> String {
        self.ws_url
            .replace("ws://", "http://")
            .trim_end_matches("/ws")
            .to_owned()
    }

    /// Graceful shutdown of an in-process broker; returns its state.
    pub async fn stop(mut self) -> Data {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
        self.take_data()
    }

    /// SIGKILL the broker process; returns its state.
    pub fn kill9(mut self) -> Data {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        self.take_data()
    }

    fn take_data(&mut self) -> Data {
        let empty = Data {
            dir: tempfile::tempdir().unwrap(),
            pg: None,
        };
        std::mem::replace(&mut self.data, empty)
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Ident {
    pub sk: SecretKey,
    pub pk: String,
}

impl Ident {
    pub fn new() -> Self {
        let sk = SecretKey::generate();
        let pk = sk.public().to_hex();
        Self { sk, pk }
    }

    pub fn from_seed_hex(seed: &str) -> Self {
        let seed: [u8; 32] = hex::decode(seed).unwrap().try_into().unwrap();
        let sk = SecretKey::from_seed(&seed);
        let pk = sk.public().to_hex();
        Self { sk, pk }
    }

    pub fn signed(&self, action: AdminAction, mesh_id: &str, args: &[&str]) -> Value {
        let ts = now_ms();
        let sig = self
            .sk
            .sign_str(&canonical::admin(action, mesh_id, &self.pk, ts, args))
            .to_hex();
        json!({ "signerPubkey": self.pk, "timestamp": ts, "signature": sig })
    }
}

/// The broker's `/metrics` text, with the `{node="…"}` label every series carries taken
/// out (after checking it is there), so tests can look for `name value`.
pub async fn metrics(b: &TestBroker) -> String {
    let text = reqwest::get(format!("{}/metrics", b.http()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        match line.split_once("{node=\"") {
            Some((name, rest)) if !line.starts_with('#') => {
                let (_, value) = rest.split_once("\"}").expect("a closed node label");
                out.push_str(name);
                out.push_str(value);
            }
            _ => {
                assert!(
                    line.starts_with('#') || line.is_empty(),
                    "a series without its node label: {line}"
                );
                out.push_str(line);
            }
        }
        out.push('\n');
    }
    out
}

/// The value of series `name` in [`metrics`]'s text (which has the node label taken out).
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

pub async fn post(url: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

pub struct Mesh {
    pub id: String,
    pub slug: String,
    pub owner: Ident,
    pub owner_member_id: String,
}

pub async fn create_mesh(broker: &TestBroker, slug: &str) -> Mesh {
    let owner = Ident::new();
    let body = merge(
        json!({ "name": format!("{slug} mesh"), "slug": slug, "ownerDisplayName": "owner" }),
        owner.signed(
            AdminAction::CreateMesh,
            "",
            &[slug, &format!("{slug} mesh")],
        ),
    );
    let (status, v) = post(&format!("{}/api/meshes", broker.http()), &body).await;
    assert_eq!(status, 200, "{v}");
    Mesh {
        id: v["meshId"].as_str().unwrap().into(),
        slug: slug.into(),
        owner,
        owner_member_id: v["ownerMemberId"].as_str().unwrap().into(),
    }
}

/// Sign (as the owner) and register an invite; returns the payload.
pub async fn invite(
    broker: &TestBroker,
    mesh: &Mesh,
    max_uses: u32,
    expires_in_secs: i64,
) -> InvitePayload {
    let payload = InvitePayload::sign(
        &mesh.id,
        &mesh.slug,
        &broker.ws(),
        now_ms() / 1000 + expires_in_secs,
        InviteRole::Member,
        &mesh.owner.sk,
    );
    let args = [payload.invite_id(), max_uses.to_string()];
    let body = merge(
        json!({ "invite": payload, "maxUses": max_uses }),
        mesh.owner
            .signed(AdminAction::RegisterInvite, &mesh.id, &[&args[0], &args[1]]),
    );
    let (status, v) = post(
        &format!("{}/api/meshes/{}/invites", broker.http(), mesh.id),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    payload
}

/// `POST /join` exactly as WIRE-V1 describes it.
pub async fn join_raw(
    broker: &TestBroker,
    invite: &InvitePayload,
    peer: &Ident,
    name: &str,
) -> (u16, Value) {
    let body = json!({
        "invite_token": invite.token(),
        "invite_payload": serde_json::to_value(invite).unwrap(),
        "peer_pubkey": peer.pk,
        "display_name": name,
    });
    post(&format!("{}/join", broker.http()), &body).await
}

pub struct Member {
    pub ident: Ident,
    pub member_id: String,
    pub mesh_id: String,
    pub name: String,
}

pub async fn enroll(broker: &TestBroker, mesh: &Mesh, name: &str) -> Member {
    enroll_ident(broker, mesh, name, Ident::new()).await
}

pub async fn enroll_ident(broker: &TestBroker, mesh: &Mesh, name: &str, ident: Ident) -> Member {
    let inv = invite(broker, mesh, 1, 3600).await;
    let (status, v) = join_raw(broker, &inv, &ident, name).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], true);
    Member {
        ident,
        member_id: v["memberId"].as_str().unwrap().into(),
        mesh_id: mesh.id.clone(),
        name: name.into(),
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A client built only from WIRE-V1 frames.
pub struct V1Client {
    pub ws: Ws,
    pub key: String,
}

pub fn hello_frame(m: &Member, session_id: &str, ts: i64) -> Value {
    let sig = m
        .ident
        .sk
        .sign_str(&format!(
            "{}|{}|{}|{}",
            m.mesh_id, m.member_id, m.ident.pk, ts
        ))
        .to_hex();
    json!({
        "type": "hello", "meshId": m.mesh_id, "memberId": m.member_id, "pubkey": m.ident.pk,
        "displayName": m.name, "sessionId": session_id, "pid": 4242, "cwd": "/tmp/repo",
        "hostname": "test-host", "peerType": "ai", "channel": "cli", "model": "test",
        "timestamp": ts, "signature": sig,
    })
}

impl V1Client {
    pub async fn raw(url: &str) -> Ws {
        tokio_tungstenite::connect_async(url).await.unwrap().0
    }

    /// Connect and say hello; panics unless hello_ack comes back.
    pub async fn connect(url: &str, m: &Member) -> Self {
        Self::connect_session(url, m, "sess-1").await
    }

    pub async fn connect_session(url: &str, m: &Member, session_id: &str) -> Self {
        let mut c = Self {
            ws: Self::raw(url).await,
            key: m.ident.pk.clone(),
        };
        c.send(hello_frame(m, session_id, now_ms())).await;
        let ack = c.recv().await;
        assert_eq!(ack["type"], "hello_ack", "{ack}");
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// Next JSON frame (pings are answered by tungstenite); panics after WAIT.
    pub async fn recv(&mut self) -> Value {
        self.try_recv(WAIT)
            .await
            .expect("timed out waiting for a frame")
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??
                .ok()?;
            match msg {
                Message::Text(t) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Next frame of `type`, skipping system pushes and other types.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == ty && v["subtype"] != "system" {
                return v;
            }
        }
    }

    /// Next non-system push within `wait`, or None.
    pub async fn next_push(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.try_recv(left).await?;
            if v["type"] == "push" && v["subtype"] != "system" {
                return Some(v);
            }
        }
    }

    /// crypto_box a text to `to` and send it; returns the ack.
    pub async fn send_dm(&mut self, sk: &SecretKey, to: &str, text: &str, priority: &str) -> Value {
        let nonce = random_nonce();
        let ct = box_seal(
            text.as_bytes(),
            &nonce,
            &PublicKey::from_hex(to).unwrap(),
            sk,
        );
        let id = format!("c-{}", now_ms());
        self.send(json!({ "type": "send", "targetSpec": to, "priority": priority, "nonce": B64.encode(nonce), "ciphertext": B64.encode(ct), "id": id })).await;
        self.recv_type("ack").await
    }

    pub async fn ack(&mut self, push: &Value) {
        self.send(json!({ "type": "client_ack", "brokerMessageId": push["messageId"] }))
            .await;
    }

    pub async fn peers(&mut self) -> Vec<Value> {
        self.send(json!({ "type": "list_peers", "_reqId": "p1" }))
            .await;
        let v = self.recv_type("peers_list").await;
        assert_eq!(v["_reqId"], "p1");
        v["peers"].as_array().unwrap().clone()
    }

    /// Wait for the close frame; returns its code.
    pub async fn closed(&mut self, wait: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?
            {
                Some(Ok(Message::Close(Some(f)))) => return Some(u16::from(f.code)),
                Some(Ok(Message::Close(None))) | None => return Some(1005),
                Some(Ok(_)) => continue,
                Some(Err(_)) => return Some(1006),
            }
        }
    }
}

/// Open a crypto_box push addressed to `me`.
pub fn open_push(push: &Value, me: &SecretKey) -> String {
    let nonce: [u8; 24] = B64
        .decode(push["nonce"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let ct = B64.decode(push["ciphertext"].as_str().unwrap()).unwrap();
    let sender = PublicKey::from_hex(push["senderPubkey"].as_str().unwrap()).unwrap();
    String::from_utf8(box_open(&ct, &nonce, &sender, me).unwrap()).unwrap()
}

/// Kick or revoke `member` (signed by the mesh owner).
pub async fn remove(b: &TestBroker, mesh: &Mesh, member: &Member, mode: &str) -> (u16, Value) {
    let body = merge(
        json!({ "mode": mode }),
        mesh.owner.signed(
            canonical::AdminAction::RemoveMember,
            &mesh.id,
            &[&member.member_id, mode],
        ),
    );
    post(
        &format!(
            "{}/api/meshes/{}/members/{}/remove",
            b.http(),
            mesh.id,
            member.member_id
        ),
        &body,
    )
    .await
}
