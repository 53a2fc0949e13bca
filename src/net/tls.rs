//! TLS for the QUIC endpoint: the server's certificate (configured, or self-signed into
//! `<data>/certs/` on first start) and the client's ways to trust it: the certificate file, its
//! SHA-256 fingerprint, or nothing at all (`--insecure`, local tests only). TLS 1.3 only, ALPN
//! [`ALPN`], ring as the crypto provider. The server never enables 0-RTT (rustls' default
//! `max_early_data_size` of 0), so authentication and inputs are never replayable.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use thiserror::Error;

use super::protocol::ALPN;

/// Why TLS could not be set up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The certificate could not be generated.
    #[error("generating the self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A fingerprint is not 64 hex digits.
    #[error("fingerprint {0:?} is not 64 hexadecimal digits (SHA-256)")]
    BadFingerprint(String),
    /// quinn refused the TLS configuration.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's certificate chain and key, and the fingerprint clients pin.
#[derive(Debug)]
pub struct ServerIdentity {
    /// Certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf certificate, lowercase hex.
    pub fingerprint: String,
    /// Where the leaf certificate is (for clients that trust it by file).
    pub cert_path: PathBuf,
}

/// SHA-256 of a certificate, lowercase hex.
pub fn fingerprint(cert: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, cert)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses a fingerprint: 64 hex digits, colons allowed (`ab:cd:...`).
///
/// # Errors
/// [`TlsError::BadFingerprint`].
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], TlsError> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bad = || TlsError::BadFingerprint(text.to_owned());
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::File {
        path: path.to_owned(),
        source,
    })
}

fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::File {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut f = options.open(&tmp).map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

/// Loads the configured certificate and key, or (with no paths) the self-signed pair in
/// `<data>/certs/`, generating it on first start for `localhost` and `127.0.0.1`.
///
/// # Errors
/// [`TlsError`] naming the file that is missing or wrong.
pub fn server_identity(
    data: &Path,
    cert_path: Option<&Path>,
    key_path: Option<&Path>,
) -> Result<ServerIdentity, TlsError> {
    let (cert_path, key_path) = match (cert_path, key_path) {
        (Some(c), Some(k)) => (c.to_owned(), k.to_owned()),
        (Some(c), None) | (None, Some(c)) => {
            return Err(TlsError::Pem {
                path: c.to_owned(),
                what: "tls_cert_path and tls_key_path must be configured together".into(),
            });
        }
        (None, None) => {
            let dir = data.join("certs");
            let cert = dir.join("server.crt");
            let key = dir.join("server.key");
            if !cert.exists() || !key.exists() {
                std::fs::create_dir_all(&dir).map_err(|source| TlsError::File {
                    path: dir.clone(),
                    source,
                })?;
                let generated = rcgen::generate_simple_self_signed(vec![
                    "localhost".to_owned(),
                    "127.0.0.1".to_owned(),
                    "::1".to_owned(),
                ])?;
                write_file(&key, generated.signing_key.serialize_pem().as_bytes(), true)?;
                write_file(&cert, generated.cert.pem().as_bytes(), false)?;
                tracing::info!(cert = %cert.display(), "generated a self-signed certificate");
            }
            (cert, key)
        }
    };
    let chain = load_certs(&cert_path)?;
    let key_pem = read_file(&key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: key_path.clone(),
        what: format!("no private key: {e}"),
    })?;
    let fingerprint = fingerprint(&chain[0]);
    Ok(ServerIdentity {
        chain,
        key,
        fingerprint,
        cert_path,
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("bad certificate: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no certificate in the file".into(),
        });
    }
    Ok(chain)
}

fn transport(idle: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok())
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .datagram_receive_buffer_size(Some(256 * 1024))
        .datagram_send_buffer_size(256 * 1024)
        .max_concurrent_uni_streams(0u32.into())
        .max_concurrent_bidi_streams(1u32.into());
    Arc::new(t)
}

/// The QUIC server configuration: TLS 1.3, ALPN `apexsim/1`, one bidirectional stream per
/// connection, no unidirectional streams, idle connections closed after `idle`.
///
/// # Errors
/// [`TlsError`] when rustls refuses the certificate or key.
pub fn quic_server_config(
    identity: &ServerIdentity,
    idle: Duration,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(idle));
    Ok(config)
}

/// How a client trusts the server's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The server's certificate (or its CA) as a PEM file.
    CertFile(PathBuf),
    /// The SHA-256 of the server's certificate.
    Fingerprint([u8; 32]),
    /// Anything (local tests only): signatures are still checked, the certificate is not.
    Insecure,
}

/// The QUIC client configuration for a [`Trust`].
///
/// # Errors
/// [`TlsError`] when the certificate file cannot be read.
pub fn quic_client_config(trust: &Trust) -> Result<quinn::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut tls = match trust {
        Trust::CertFile(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs(path)? {
                roots.add(cert)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Fingerprint(expected) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                expected: Some(*expected),
                algorithms: provider().signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                expected: None,
                algorithms: provider().signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(Duration::from_secs(10)));
    Ok(config)
}

/// Accepts the server certificate whose SHA-256 is `expected` (any when `None`), and checks
/// the handshake signatures as usual.
#[derive(Debug)]
struct Pinned {
    expected: Option<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.expected {
            None => Ok(ServerCertVerified::assertion()),
            Some(expected) => {
                let got = ring::digest::digest(&ring::digest::SHA256, end_entity);
                if got.as_ref() == expected {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(format!(
                        "server certificate fingerprint {} does not match the pinned one",
                        fingerprint(end_entity)
                    )))
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons_and_bad_ones_are_named() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_fingerprint(&hex).expect("hex"), [0xab; 32]);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons).expect("colons"), [0xab; 32]);
        let err = parse_fingerprint("abc").expect_err("short");
        assert!(err.to_string().contains("\"abc\""), "{err}");
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn the_self_signed_certificate_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = server_identity(dir.path(), None, None).expect("generated");
        let again = server_identity(dir.path(), None, None).expect("loaded");
        assert_eq!(first.fingerprint, again.fingerprint);
        assert_eq!(first.fingerprint.len(), 64);
        assert!(dir.path().join("certs/server.key").exists());
        let missing = server_identity(dir.path(), Some(Path::new("/nonexistent.crt")), None);
        assert!(missing.is_err());
    }
}
