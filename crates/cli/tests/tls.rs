//! TLS end to end with real components: a private CA and a broker certificate made with
//! rcgen, the real broker serving `wss://` / `https://` from them, and the real CLI
//! trusting the CA through `CLAUDEMESH_CA_FILE`. Without the CA file the CLI names the
//! cause in one line; a certificate reload keeps the connections already open. Also the
//! check `mesh create` makes of a broker URL before saving it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;

use common::pki::Pki;
use common::*;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_flow_runs_over_wss_with_a_private_ca() {
    let pki = Pki::new();
    let (files, _) = pki.leaf("broker");
    let (b, _dir) = broker_with(|c| c.tls = Some(files)).await;
    assert!(b.ws_url().starts_with("wss://"), "{}", b.ws_url());
    let ca = pki.ca_file().display().to_string();
    let owner = User::new().with_env("CLAUDEMESH_CA_FILE", &ca);
    let alice = User::new().with_env("CLAUDEMESH_CA_FILE", &ca);
    owner
        .json(&[
            "mesh",
            "create",
            "Secure",
            "--broker",
            &b.ws_url(),
            "--as",
            "olivia",
        ])
        .await;
    let link = owner.ok(&["invite"]).await.trim().to_owned();
    alice.json(&["join", &link, "--name", "alice"]).await;
    let sent = alice
        .json(&["send", "olivia", "over TLS", "--priority", "now"])
        .await;
    assert_eq!(sent["recipients"], 1, "{sent}");
    let inbox = owner.json(&["inbox"]).await;
    assert_eq!(inbox[0]["text"], "over TLS", "{inbox}");
    assert_eq!(inbox[0]["kind"], "verified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_file_the_cli_says_unknown_issuer_and_what_to_do() {
    let pki = Pki::new();
    let (files, _) = pki.leaf("broker");
    let (b, _dir) = broker_with(|c| c.tls = Some(files)).await;
    let user = User::new();
    let line = user
        .fails(&["mesh", "create", "Nope", "--broker", &b.ws_url()])
        .await;
    assert!(line.contains("unknown issuer"), "{line}");
    assert!(line.contains("CLAUDEMESH_CA_FILE"), "{line}");
}

/// A TLS connection trusting only the test CA; returns it and the certificate it got.
async fn tls_connect(
    pki: &Pki,
    addr: std::net::SocketAddr,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.ca_file()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (tls, der)
}

/// `GET /health` on a kept-alive connection; the status line.
async fn health<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S) -> String {
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_reload_keeps_open_connections_and_serves_the_new_one() {
    let pki = Pki::new();
    let (files, first) = pki.leaf("broker");
    let (b, _dir) = broker_with(|c| c.tls = Some(files.clone())).await;
    let (mut open, seen) = tls_connect(&pki, b.addr()).await;
    assert_eq!(seen, first);
    assert_eq!(health(&mut open).await, "HTTP/1.1 200 OK");

    // Replace the files in place (as certbot does) and reload.
    let (next_files, second) = pki.leaf("next");
    std::fs::copy(&next_files.cert, &files.cert).unwrap();
    std::fs::copy(&next_files.key, &files.key).unwrap();
    b.reload_tls().unwrap();

    let (_fresh, seen) = tls_connect(&pki, b.addr()).await;
    assert_eq!(seen, second, "a new connection gets the new certificate");
    assert_eq!(
        health(&mut open).await,
        "HTTP/1.1 200 OK",
        "the connection opened before the reload still works"
    );

    // A bad file is refused and the current certificate stays.
    std::fs::write(&files.key, "not a key").unwrap();
    assert!(b.reload_tls().is_err());
    let (_third, seen) = tls_connect(&pki, b.addr()).await;
    assert_eq!(seen, second);
}

/// `mesh create` checks the broker before saving anything: a URL without the WebSocket
/// path is refused with the fix, and nothing is left in the config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_create_refuses_a_url_that_is_not_the_websocket_path() {
    let (b, _dir) = broker().await;
    let user = User::new();
    let bare = b.ws_url().trim_end_matches("/ws").to_owned();
    let line = user
        .fails(&["mesh", "create", "Oops", "--broker", &bare])
        .await;
    assert!(line.contains("did you mean"), "{line}");
    assert!(line.contains(&format!("{bare}/ws")), "{line}");
    let meshes = user.json(&["mesh", "list"]).await;
    assert_eq!(meshes.as_array().map(Vec::len), Some(0), "{meshes}");
}

/// A host name that does not resolve is called that, with the URL as typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_is_called_that() {
    let url = "ws://no-such-broker.invalid/ws";
    let line = User::new()
        .fails(&["mesh", "create", "Nowhere", "--broker", url])
        .await;
    assert!(line.contains("does not resolve"), "{line}");
    assert!(line.contains(url), "the URL as typed: {line}");
}

/// A broker that is not there is named as such: connection refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_called_connection_refused() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("ws://127.0.0.1:{port}/ws");
    let line = User::new()
        .fails(&["mesh", "create", "Nowhere", "--broker", &url])
        .await;
    assert!(line.contains("connection refused"), "{line}");
    assert!(line.contains(&url), "the URL as typed: {line}");
}
