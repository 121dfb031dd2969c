//! Serving TLS directly (`--tls-cert` / `--tls-key`, PEM): a rustls server whose
//! certificate can be replaced while it runs ([`CertStore::reload`], on SIGHUP), and an
//! axum [`Listener`] that completes TLS handshakes off the accept path, so one slow or
//! silent client cannot hold up everybody else's accept. Handshakes are bounded in number,
//! per source address and in time; a failed one is logged at debug level and dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::serve::Listener;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once, and from one source address; past either a new socket
/// is closed at once (so one address cannot occupy the handshake stage).
pub(crate) const MAX_HANDSHAKES: usize = 256;
const MAX_HANDSHAKES_PER_SOURCE: usize = 16;

/// The certificate and key files the broker serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("TLS certificate {path}: {reason}")]
pub struct TlsLoadError {
    pub path: PathBuf,
    pub reason: String,
}

fn load(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsLoadError> {
    let bad = |path: &Path, reason: String| TlsLoadError {
        path: path.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad(&files.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&files.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(&files.cert, "no PEM certificate in it".into()));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad(&files.key, e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(&files.key, e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| bad(&files.key, format!("does not match the certificate: {e}")))?;
    Ok(Arc::new(certified))
}

/// The certificate being served; replaced whole on reload, so a handshake always sees one
/// consistent chain and key. Existing connections keep the one they started with.
#[derive(Debug)]
pub struct CertStore {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    pub fn open(files: TlsFiles) -> Result<Arc<Self>, TlsLoadError> {
        let current = RwLock::new(load(&files)?);
        Ok(Arc::new(Self { files, current }))
    }

    /// Read the files again; on failure the old certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsLoadError> {
        let fresh = load(&self.files)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }

    fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsLoadError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsLoadError {
                path: self.files.cert.clone(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

/// An axum listener that yields sockets whose TLS handshake has completed.
#[derive(Debug)]
pub struct TlsListener {
    addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Accept on `tcp` until `stop`; handshakes run in tasks tracked by `tasks`.
    pub fn new(
        tcp: TcpListener,
        certs: &Arc<CertStore>,
        stop: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Self, TlsLoadError> {
        let addr = tcp.local_addr().map_err(|e| TlsLoadError {
            path: certs.files.cert.clone(),
            reason: e.to_string(),
        })?;
        let acceptor = TlsAcceptor::from(certs.server_config()?);
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let slots =
            crate::http::serve::Admission::new(MAX_HANDSHAKES, MAX_HANDSHAKES_PER_SOURCE, 0);
        let inner = tasks.clone();
        tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => break,
                    a = tcp.accept() => a,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let Some(slot) = slots.admit(peer.ip()) else {
                    tracing::debug!(%peer, "too many TLS handshakes in progress; closed");
                    continue;
                };
                let (acceptor, tx, stop) = (acceptor.clone(), tx.clone(), stop.clone());
                inner.spawn(async move {
                    let _slot = slot;
                    let handshake = async {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => {
                                let _ = tx.send((tls, peer)).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    };
                    // At shutdown a pending handshake (or a socket nobody will take) is
                    // simply dropped.
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = handshake => {}
                    }
                });
            }
        });
        Ok(Self { addr, ready })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop has stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
