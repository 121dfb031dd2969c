//! TLS for every client (`claudemesh`, `claudemesh mcp`, the bench): one rustls
//! configuration, built once per process, that trusts the platform's roots plus, for
//! private deployments, the PEM certificates in the file named by `CLAUDEMESH_CA_FILE`.
//! WebSocket connections and the CLI's HTTP calls both use it, so `wss://` and
//! `https://` trust exactly the same certificates.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// Names a PEM file of extra trusted CA certificates.
pub const CA_FILE_ENV: &str = "CLAUDEMESH_CA_FILE";

/// Why the TLS configuration could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    /// `CLAUDEMESH_CA_FILE` names a file that cannot be read or holds no certificate.
    #[error("cannot use the CA file {path} ({CA_FILE_ENV}): {reason}")]
    CaFile { path: PathBuf, reason: String },
    /// rustls refused the configuration.
    #[error("cannot set up TLS: {0}")]
    Config(String),
}

fn extra_roots(roots: &mut RootCertStore) -> Result<(), TlsError> {
    let Some(path) = std::env::var_os(CA_FILE_ENV).filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let path = PathBuf::from(path);
    let bad = |reason: String| TlsError::CaFile {
        path: path.clone(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

fn build() -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    // Unreadable entries of the platform store are skipped; a missing store is fine
    // when a CA file is given.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    extra_roots(&mut roots)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The process's client TLS configuration (built on first use).
pub fn client_config() -> Result<Arc<ClientConfig>, TlsError> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, TlsError>> = OnceLock::new();
    CONFIG.get_or_init(build).clone()
}

/// The rustls error somewhere in `e`'s chain: directly, or wrapped in I/O errors (how
/// TLS handshake failures surface from sockets, sometimes one inside another).
fn rustls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// One line naming a TLS failure in `e`'s chain and what to do about it, if there is one.
pub fn explain(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::CertificateError as C;
    let why = match rustls_cause(e)? {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => format!(
            "TLS handshake failed: the broker's certificate has an unknown issuer; if the broker uses a private CA, set {CA_FILE_ENV} to its PEM file"
        ),
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => "TLS handshake failed: the broker's certificate is not valid for this host name"
            .to_owned(),
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "TLS handshake failed: the broker's certificate has expired".to_owned()
        }
        other => format!("TLS handshake failed: {other}"),
    };
    Some(why)
}
