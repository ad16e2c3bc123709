//! TLS for the listeners: the certificate and key the server presents, read from PEM files
//! and replaceable while the server runs.
//!
//! One [`Tls`] serves every listener. Its `rustls::ServerConfig` is built once, with a
//! certificate resolver that hands out the current [`CertifiedKey`]; [`Tls::reload`] reads
//! the files again and swaps that key, so new handshakes present the new certificate while
//! established sessions go on with the one they negotiated. A pair that does not load is
//! refused and the current one kept.
//!
//! The handshake and the records are driven by the session's own connection (see
//! `session/conn.rs`): this module only makes the `rustls::ServerConnection` of each accepted
//! socket.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The most TLS bytes (and, before the handshake ends, plaintext) rustls buffers for one
/// connection before the socket takes them: two full records. The rest of what a session
/// has to write waits in its own write buffer, which the outbox limits bound.
pub(crate) const TLS_BUFFER_LIMIT: usize = 2 * 16 * 1024 + 2 * 256;

/// Why a certificate/key pair cannot be used. Each names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file cannot be read or holds no PEM certificate.
    #[error("cannot read the TLS certificate file {}: {reason}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file cannot be read or holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[error("cannot read the TLS key file {}: {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key is of an unsupported kind, or does not belong to the certificate.
    #[error("the TLS key in {} does not fit the certificate in {}: {reason}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls found.
        reason: String,
    },
    /// rustls refused the configuration (no usable protocol version or cipher suite).
    #[error("cannot configure TLS: {0}")]
    Config(String),
}

/// The server's TLS settings, shared by every listener. Cloning shares the certificate:
/// a [`Tls::reload`] on one clone is seen by all.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ServerConfig>,
    resolver: Arc<Resolver>,
    provider: Arc<CryptoProvider>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key itself never reaches a log: only where it comes from.
        f.debug_struct("Tls")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads a certificate chain (PEM, the server's certificate first) and its private key
    /// (PEM: PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519), and makes a TLS 1.2/1.3 server
    /// configuration presenting them. The files are read again by [`Tls::reload`].
    ///
    /// # Errors
    /// A file that cannot be read or parsed, a key rustls cannot use, or a key that is not
    /// the certificate's.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = load_pair(cert, key, &provider)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(certified)),
        });
        let config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        Ok(Tls {
            config: Arc::new(config),
            resolver,
            provider,
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
        })
    }

    /// Reads the certificate and key files again; new handshakes present the new pair,
    /// established connections keep theirs. A pair that does not load changes nothing.
    ///
    /// # Errors
    /// As [`Tls::from_pem_files`]; the pair served before is kept.
    pub fn reload(&self) -> Result<(), TlsError> {
        let certified = load_pair(&self.cert_path, &self.key_path, &self.provider)?;
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(certified);
        Ok(())
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The key file.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The rustls configuration (the HTTP listener's TLS acceptor uses it as it is).
    pub(crate) fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The TLS state of a just-accepted connection, its buffers bounded by
    /// [`TLS_BUFFER_LIMIT`].
    ///
    /// # Errors
    /// rustls refused to start a connection with this configuration.
    pub(crate) fn accept(&self) -> Result<rustls::ServerConnection, rustls::Error> {
        let mut conn = rustls::ServerConnection::new(self.config.clone())?;
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Ok(conn)
    }
}

/// Reads and checks a certificate chain and its key.
fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate {
        path: cert.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM certificate in it".to_owned()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no PEM private key in it (PKCS#8, PKCS#1 or SEC1)".to_owned()
            }
            other => other.to_string(),
        },
    })?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Hands every handshake the current certificate and key.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a whole `Arc` (the write is one assignment).
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn pair(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn ecdsa_and_ed25519_pairs_load_and_a_chain_keeps_its_order() {
        let dir = tempfile::tempdir().unwrap();
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519] {
            let (cert, key) = pair(alg);
            let (other, _) = pair(&rcgen::PKCS_ECDSA_P384_SHA384);
            let cert_path = write(dir.path(), "cert.pem", &format!("{cert}{other}"));
            let key_path = write(dir.path(), "key.pem", &key);
            let tls = Tls::from_pem_files(&cert_path, &key_path).unwrap();
            let current = tls.resolver.current.read().unwrap().clone();
            assert_eq!(current.cert.len(), 2);
        }
    }

    /// One DER element at the start of `der`: its content and what follows it.
    fn der_element(der: &[u8]) -> (&[u8], &[u8]) {
        let (len, header) = match der[1] {
            n if n < 0x80 => (usize::from(n), 2),
            0x81 => (usize::from(der[2]), 3),
            0x82 => (usize::from(der[2]) << 8 | usize::from(der[3]), 4),
            other => panic!("unexpected DER length byte {other:#x}"),
        };
        (&der[header..header + len], &der[header + len..])
    }

    #[test]
    fn a_sec1_ecdsa_key_loads_like_its_pkcs8_form() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        // PKCS#8: SEQUENCE { version, algorithm, OCTET STRING { the SEC1 ECPrivateKey } }.
        let pkcs8 = key.serialize_der();
        let (body, _) = der_element(&pkcs8);
        let (_, rest) = der_element(body);
        let (_, rest) = der_element(rest);
        let (sec1, _) = der_element(rest);
        let pem = pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1.to_vec()));
        let cert_path = write(dir.path(), "cert.pem", &cert.pem());
        let key_path = write(dir.path(), "key.pem", &pem);
        assert!(matches!(
            PrivateKeyDer::from_pem_file(&key_path).unwrap(),
            PrivateKeyDer::Sec1(_)
        ));
        Tls::from_pem_files(&cert_path, &key_path).unwrap();
    }

    #[test]
    fn each_bad_file_is_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, other_key) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let cert_path = write(dir.path(), "cert.pem", &cert);
        let key_path = write(dir.path(), "key.pem", &key);
        let other_key_path = write(dir.path(), "other.pem", &other_key);
        let garbage = write(dir.path(), "garbage.pem", "not a pem file\n");
        let missing = dir.path().join("missing.pem");

        let e = Tls::from_pem_files(&missing, &key_path).unwrap_err();
        assert!(matches!(e, TlsError::Certificate { ref path, .. } if *path == missing));
        let e = Tls::from_pem_files(&garbage, &key_path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot read the TLS certificate file {}: no PEM certificate in it",
                garbage.display()
            )
        );
        let e = Tls::from_pem_files(&cert_path, &garbage).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot read the TLS key file {}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)",
                garbage.display()
            )
        );
        let e = Tls::from_pem_files(&cert_path, &other_key_path).unwrap_err();
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
    }

    #[test]
    fn a_failed_reload_keeps_the_current_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let cert_path = write(dir.path(), "cert.pem", &cert);
        let key_path = write(dir.path(), "key.pem", &key);
        let tls = Tls::from_pem_files(&cert_path, &key_path).unwrap();
        let before = tls.resolver.current.read().unwrap().cert.clone();
        write(dir.path(), "key.pem", "garbage");
        assert!(matches!(tls.reload(), Err(TlsError::Key { .. })));
        assert_eq!(tls.resolver.current.read().unwrap().cert, before);

        let (cert2, key2) = pair(&rcgen::PKCS_ED25519);
        write(dir.path(), "cert.pem", &cert2);
        write(dir.path(), "key.pem", &key2);
        tls.reload().unwrap();
        assert_ne!(tls.resolver.current.read().unwrap().cert, before);
    }
}
