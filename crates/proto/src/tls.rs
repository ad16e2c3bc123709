//! Which certificate authorities a TLS connection trusts: [`TlsConfig`], used by
//! [`Client::connect_tls`](crate::Client::connect_tls).
//!
//! Besides the client, this is the only module of the crate that does I/O: it reads CA
//! files and the operating system's trust store, once, when a [`TlsConfig`] is made.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// What can go wrong while making a [`TlsConfig`]. It is the source of
/// [`ClientError::TlsSetup`](crate::ClientError::TlsSetup).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// The CA file could not be read.
    #[error("cannot read the CA file {}: {source}", path.display())]
    ReadCaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA file is not valid PEM.
    #[error("the CA file {} is not valid PEM: {source}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The CA file holds no `CERTIFICATE` section (a key file given by mistake, say).
    #[error("the CA file {} holds no PEM certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate of the CA file cannot be a trust anchor.
    #[error("the CA file {} holds a certificate that cannot be trusted: {source}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// Only the system's roots were asked for, and it has none this process can read.
    #[error(
        "no trusted root certificates: the system's certificate store is empty or unreadable \
         (give the server's CA file)"
    )]
    NoRoots,
    /// The name to verify is neither a DNS name nor an IP address.
    #[error("not a server name to verify: {name:?}")]
    InvalidServerName {
        /// The name given.
        name: String,
    },
    /// rustls refused the configuration.
    #[error("cannot configure TLS: {0}")]
    Config(#[source] rustls::Error),
}

/// A TLS client configuration: the certificate authorities a connection trusts, loaded once
/// and shared by every connection made with it (cloning is cheap).
///
/// The cryptography is rustls with its `ring` provider; TLS 1.2 and 1.3. The server's
/// certificate must be valid for the name given to
/// [`Client::connect_tls`](crate::Client::connect_tls) (a DNS name or an IP address).
///
/// ```no_run
/// use simpletextim_proto::{Client, TlsConfig};
///
/// # async fn run() -> Result<(), simpletextim_proto::ClientError> {
/// // A server with a certificate from a public authority:
/// let tls = TlsConfig::system_roots()?;
/// let mut client = Client::connect_tls("chat.example.org:5000", "chat.example.org", &tls).await?;
/// client.login("alice", "secret").await?;
///
/// // A test server with a self-signed certificate (`cargo xtask cert`):
/// let tls = TlsConfig::ca_file_only("certs/cert.pem")?;
/// let client = Client::connect_tls("127.0.0.1:5000", "localhost", &tls).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TlsConfig {
    config: Arc<ClientConfig>,
}

impl TlsConfig {
    /// Trusts the operating system's root certificates (those it cannot parse are
    /// skipped, as are unreadable parts of the store).
    ///
    /// # Errors
    /// [`TlsSetupError::NoRoots`] when the system's store yields no usable certificate.
    pub fn system_roots() -> Result<TlsConfig, TlsSetupError> {
        TlsConfig::from_roots(system_store())
    }

    /// Trusts the operating system's root certificates and those of a PEM file (for a
    /// server whose certificate is self-signed, or issued by a private authority).
    ///
    /// # Errors
    /// A [`TlsSetupError`] when the file cannot be read or holds no usable certificate.
    pub fn system_roots_and_ca_file(path: impl AsRef<Path>) -> Result<TlsConfig, TlsSetupError> {
        let mut roots = system_store();
        add_ca_file(&mut roots, path.as_ref())?;
        TlsConfig::from_roots(roots)
    }

    /// Trusts only the certificates of a PEM file, not the system's.
    ///
    /// # Errors
    /// A [`TlsSetupError`] when the file cannot be read or holds no usable certificate.
    pub fn ca_file_only(path: impl AsRef<Path>) -> Result<TlsConfig, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        add_ca_file(&mut roots, path.as_ref())?;
        TlsConfig::from_roots(roots)
    }

    /// Uses a rustls configuration made elsewhere (client certificates, other roots…).
    pub fn from_rustls(config: Arc<ClientConfig>) -> TlsConfig {
        TlsConfig { config }
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    fn from_roots(roots: RootCertStore) -> Result<TlsConfig, TlsSetupError> {
        if roots.is_empty() {
            return Err(TlsSetupError::NoRoots);
        }
        // An explicit provider, so that nothing depends on a process-wide default one.
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(TlsSetupError::Config)?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(TlsConfig {
            config: Arc::new(config),
        })
    }
}

/// The system's roots that parse; errors reading parts of the store are ignored (an empty
/// result is reported by [`TlsConfig::from_roots`] when nothing else is trusted).
fn system_store() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots
}

/// Adds every certificate of a PEM file; refuses a file with none.
fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsSetupError> {
    let pem = std::fs::read(path).map_err(|source| TlsSetupError::ReadCaFile {
        path: path.to_owned(),
        source,
    })?;
    let mut found = false;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|source| TlsSetupError::BadPem {
            path: path.to_owned(),
            source,
        })?;
        roots
            .add(cert)
            .map_err(|source| TlsSetupError::BadCertificate {
                path: path.to_owned(),
                source,
            })?;
        found = true;
    }
    if found {
        Ok(())
    } else {
        Err(TlsSetupError::NoCertificate {
            path: path.to_owned(),
        })
    }
}
