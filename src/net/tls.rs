//! TLS for the QUIC endpoint: the server's certificate (configured, or self-signed into
//! `<data>/certs/` on first start) and the client's ways to trust it: the certificate file, its
//! SHA-256 fingerprint, or nothing at all (`--insecure`, local tests only). TLS 1.3 only, ALPN
//! [`ALPN`] for ApexSim clients and `h3` for browsers (WebTransport), ring as the crypto
//! provider. The server never enables 0-RTT (rustls' default `max_early_data_size` of 0), so
//! authentication and inputs are never replayable.
//!
//! Browsers get their own certificate ([`Certificates`]): Chromium takes a self-signed one only
//! by its hash (`serverCertificateHashes`), and then only ECDSA P-256 valid for at most 14 days,
//! so the server makes one in memory and replaces it before it expires. A configured
//! certificate (`tls_cert_path`, from a CA the browser trusts) serves both.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
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
    /// Whether it was configured (`tls_cert_path`) rather than self-signed by the server.
    pub configured: bool,
}

/// SHA-256 of a certificate, lowercase hex.
pub fn fingerprint(cert: &[u8]) -> String {
    fingerprint_hex(ring::digest::digest(&ring::digest::SHA256, cert).as_ref())
}

/// A digest as lowercase hex.
pub fn fingerprint_hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
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
    let configured = cert_path.is_some();
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
        configured,
    })
}

/// How long a browser certificate is valid: Chromium takes a certificate by its hash only when
/// it is valid for at most 14 days; one day less leaves room for clocks that disagree.
pub const BROWSER_CERT_VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);

/// The ALPN of HTTP/3, which WebTransport runs on.
pub const ALPN_H3: &[u8] = b"h3";

/// A self-signed WebTransport certificate for browsers: ECDSA P-256, valid for
/// [`BROWSER_CERT_VALIDITY`] from a minute before it was made.
#[derive(Debug)]
pub struct BrowserCert {
    /// The certificate and its signing key.
    pub key: Arc<CertifiedKey>,
    /// SHA-256 of the certificate, what a page passes as `serverCertificateHashes`.
    pub hash: [u8; 32],
    /// Valid from.
    pub not_before: SystemTime,
    /// Valid until.
    pub not_after: SystemTime,
}

fn offset_time(t: SystemTime) -> Result<time::OffsetDateTime, TlsError> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let secs = i64::try_from(secs).map_err(|_| TlsError::Quic("clock out of range".into()))?;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| TlsError::Quic(format!("clock out of range: {e}")))
}

impl BrowserCert {
    /// Makes one, valid from a minute before `now`.
    ///
    /// # Errors
    /// [`TlsError::Generate`] when rcgen fails, [`TlsError::Rustls`] when rustls refuses it.
    pub fn generate(now: SystemTime) -> Result<Self, TlsError> {
        let not_before = now
            .checked_sub(Duration::from_secs(60))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let not_after = not_before + BROWSER_CERT_VALIDITY;
        let mut params = rcgen::CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])?;
        params.not_before = offset_time(not_before)?;
        params.not_after = offset_time(not_after)?;
        let signing = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.self_signed(&signing)?;
        let der = cert.der().clone();
        let mut hash = [0u8; 32];
        hash.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &der).as_ref());
        let key = PrivateKeyDer::try_from(signing.serialize_der())
            .map_err(|e| TlsError::Quic(format!("the generated key: {e}")))?;
        let key = CertifiedKey::from_der(vec![der], key, &provider())?;
        Ok(Self {
            key: Arc::new(key),
            hash,
            not_before,
            not_after,
        })
    }

    /// Whether it is `rotate_after` old or more at `now`.
    pub fn due(&self, now: SystemTime, rotate_after: Duration) -> bool {
        now.duration_since(self.not_before)
            .is_ok_and(|age| age >= rotate_after)
    }
}

/// The endpoint's certificates, picked per handshake by the client's ALPN: the server's
/// identity for ApexSim clients; for browsers (`h3` only) the rotating [`BrowserCert`], or the
/// identity when it was configured.
#[derive(Debug)]
pub struct Certificates {
    native: Arc<CertifiedKey>,
    browser: Option<RwLock<Arc<BrowserCert>>>,
}

impl Certificates {
    /// The identity's certificate, and a browser certificate unless the identity was configured.
    ///
    /// # Errors
    /// [`TlsError`] when rustls refuses the identity or the browser certificate cannot be made.
    pub fn new(identity: &ServerIdentity, now: SystemTime) -> Result<Self, TlsError> {
        let native = CertifiedKey::from_der(
            identity.chain.clone(),
            identity.key.clone_key(),
            &provider(),
        )?;
        let browser = if identity.configured {
            None
        } else {
            Some(RwLock::new(Arc::new(BrowserCert::generate(now)?)))
        };
        Ok(Self {
            native: Arc::new(native),
            browser,
        })
    }

    /// The browser certificate in use, when the server makes its own.
    pub fn browser(&self) -> Option<Arc<BrowserCert>> {
        let lock = self.browser.as_ref()?;
        Some(match lock.read() {
            Ok(cert) => cert.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }

    /// Replaces the browser certificate with a new one when it is `rotate_after` old;
    /// `Ok(true)` when it did. Handshakes already done keep their certificate.
    ///
    /// # Errors
    /// [`TlsError`] when the new certificate cannot be made (the old one stays).
    pub fn rotate_if_due(&self, now: SystemTime, rotate_after: Duration) -> Result<bool, TlsError> {
        let (Some(lock), Some(current)) = (&self.browser, self.browser()) else {
            return Ok(false);
        };
        if !current.due(now, rotate_after) {
            return Ok(false);
        }
        let next = Arc::new(BrowserCert::generate(now)?);
        match lock.write() {
            Ok(mut cert) => *cert = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(true)
    }
}

/// Whether a client offers HTTP/3 and not the ApexSim protocol: a browser.
fn offers_h3_only(hello: &ClientHello<'_>) -> bool {
    let Some(alpn) = hello.alpn() else {
        return false;
    };
    let (mut h3, mut native) = (false, false);
    for protocol in alpn {
        h3 |= protocol == ALPN_H3;
        native |= protocol == ALPN;
    }
    h3 && !native
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if offers_h3_only(&hello)
            && let Some(cert) = self.browser()
        {
            return Some(cert.key.clone());
        }
        Some(self.native.clone())
    }
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

/// Unidirectional streams a WebTransport client needs: HTTP/3 control, QPACK encoder and
/// decoder.
pub const H3_UNI_STREAMS: u32 = 3;

/// Bidirectional streams a WebTransport client needs: the session's CONNECT request and the
/// control stream.
pub const H3_BIDI_STREAMS: u32 = 2;

/// Bytes a peer may send ahead on one stream: a whole control frame.
const STREAM_WINDOW: u32 = super::protocol::MAX_FRAME_BYTES as u32;

fn transport(idle: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok())
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .datagram_receive_buffer_size(Some(256 * 1024))
        .datagram_send_buffer_size(256 * 1024)
        // What HTTP/3 needs from the start (Chromium refuses less): three unidirectional streams
        // and two bidirectional ones; an ApexSim connection gets no more once its ALPN is
        // known, and never more than these windows hold.
        .max_concurrent_uni_streams(H3_UNI_STREAMS.into())
        .max_concurrent_bidi_streams(H3_BIDI_STREAMS.into())
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window((4 * STREAM_WINDOW).into());
    Arc::new(t)
}

/// The QUIC server configuration: TLS 1.3, ALPN `apexsim/1` or `h3`, each handshake's
/// certificate from `certs`, one bidirectional stream per connection and no unidirectional
/// streams (a WebTransport connection is given what HTTP/3 needs once its ALPN is known), idle
/// connections closed after `idle`.
///
/// # Errors
/// [`TlsError`] when rustls or quinn refuse the configuration.
pub fn quic_server_config(
    certs: Arc<Certificates>,
    idle: Duration,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    tls.alpn_protocols = vec![ALPN.to_vec(), ALPN_H3.to_vec()];
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

    #[test]
    fn the_browser_certificate_is_p256_valid_13_days_and_rotates_when_due() {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = server_identity(dir.path(), None, None).expect("identity");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_169_600);
        let certs = Certificates::new(&identity, t0).expect("certificates");
        let first = certs.browser().expect("a browser certificate");
        assert_eq!(
            first
                .not_after
                .duration_since(first.not_before)
                .expect("order"),
            BROWSER_CERT_VALIDITY
        );
        assert!(BROWSER_CERT_VALIDITY <= Duration::from_secs(14 * 24 * 3600));
        assert_eq!(
            first.key.key.algorithm(),
            rustls::SignatureAlgorithm::ECDSA,
            "Chromium takes ECDSA only"
        );
        assert_ne!(
            fingerprint(first.key.end_entity_cert().expect("leaf")),
            identity.fingerprint
        );
        let day = Duration::from_secs(24 * 3600);
        assert!(!certs.rotate_if_due(t0 + day, 6 * day).expect("not due"));
        assert_eq!(certs.browser().expect("same").hash, first.hash);
        assert!(certs.rotate_if_due(t0 + 6 * day, 6 * day).expect("due"));
        let second = certs.browser().expect("rotated");
        assert_ne!(second.hash, first.hash, "a new key and certificate");
        assert!(second.not_before > first.not_before);
    }

    #[test]
    fn a_configured_certificate_serves_browsers_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let made = server_identity(dir.path(), None, None).expect("identity");
        let configured = server_identity(
            dir.path(),
            Some(&made.cert_path),
            Some(&dir.path().join("certs/server.key")),
        )
        .expect("configured");
        assert!(configured.configured && !made.configured);
        let certs = Certificates::new(&configured, SystemTime::now()).expect("certificates");
        assert!(certs.browser().is_none());
        let day = Duration::from_secs(24 * 3600);
        assert!(
            !certs
                .rotate_if_due(SystemTime::now() + 30 * day, day)
                .expect("nothing")
        );
    }
}
