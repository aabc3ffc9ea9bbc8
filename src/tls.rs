//! Every rustls configuration in the process: the public listener (TLS 1.2 and 1.3 only, optional
//! client certificates), outbound clients (system roots plus extra trust anchors from the config,
//! optional client certificate), the self-signed development certificate, and reading the
//! identity out of a caller's certificate.
//!
//! One crypto provider (aws-lc-rs) serves the whole binary; [`install_crypto_provider`] runs
//! before any configuration is built. Private keys read here are never logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::ServerTlsConfig;
use crate::secret::read_secret_file;

/// The only protocol versions brandgate speaks, on every connection, in and out.
pub static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Installs aws-lc-rs as the process-wide rustls provider. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Why a certificate, key or trust anchor file cannot be used. Names the file and the usual
/// fix; never shows a key's content.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error(transparent)]
    Read(#[from] crate::secret::SecretFileError),
    #[error("{path} is not a PEM certificate file: {reason}")]
    NotPem { path: String, reason: String },
    #[error("{0} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate(String),
    #[error("{path} {why}")]
    NotAKey { path: String, why: &'static str },
    #[error("{path}: not a usable CA certificate: {reason}")]
    NotACa { path: String, reason: String },
    #[error(
        "no trusted CA certificates: install the system's ca-certificates or configure \
         extra_trust_anchors"
    )]
    NoTrust,
    #[error("client certificate and key do not go together: {0}")]
    Mismatch(String),
}

/// Reads every certificate in a PEM file.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bytes = crate::secret::read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsFileError::NotPem {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate(path.display().to_string()));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1). It is a secret: read through
/// [`read_secret_file`] and never shown, not even in part in an error.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let bytes = read_secret_file(path)?;
    PrivateKeyDer::from_pem_slice(bytes.expose()).map_err(|_| {
        let text = bytes.expose();
        let holds = |label: &[u8]| text.windows(label.len()).any(|w| w == label);
        // The usual mix-ups, each with its fix; only PEM labels are looked at.
        let why = if holds(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            "holds an encrypted private key: brandgate needs it without a passphrase \
             (openssl pkey -in KEY -out KEY.plain), kept readable by the service only"
        } else if holds(b"-----BEGIN CERTIFICATE-----") {
            "holds a certificate, not a private key (are the certificate and key swapped?)"
        } else {
            "holds no PEM private key (expected -----BEGIN PRIVATE KEY-----, or RSA/EC \
             PRIVATE KEY; a DER key converts with: openssl pkey -inform DER -in KEY -out KEY.pem)"
        };
        TlsFileError::NotAKey {
            path: path.display().to_string(),
            why,
        }
    })
}

/// Why the public listener's TLS configuration cannot be built, under the key to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ServerTlsError {
    /// `server.tls.cert`, `server.tls.key`, `server.tls.client_ca`, or `server.tls` for the
    /// development certificate.
    pub key: &'static str,
    pub message: String,
}

impl ServerTlsError {
    fn new(key: &'static str, message: impl std::fmt::Display) -> Self {
        ServerTlsError {
            key,
            message: message.to_string(),
        }
    }
}

impl From<ServerTlsError> for crate::config::Problems {
    fn from(e: ServerTlsError) -> Self {
        crate::config::Problems(vec![crate::config::Problem::new(e.key, e.message)])
    }
}

/// The public listener's TLS configuration, and where its certificate came from.
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    /// Set when brandgate generated (or reused) its own development certificate.
    pub development_certificate: Option<DevCertificate>,
    /// When the listener's certificate expires (seconds since the epoch).
    pub expires_at: Option<i64>,
}

/// Builds the listener's TLS configuration: the configured certificate, or the development one.
pub fn server_config(cfg: &ServerTlsConfig, state_dir: &Path) -> Result<ServerTls, ServerTlsError> {
    let (cert_path, key_path, development_certificate) = match (&cfg.cert, &cfg.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), None),
        _ => {
            let dev = ensure_development_certificate(state_dir).map_err(|e| {
                ServerTlsError::new(
                    "server.tls",
                    format!(
                        "no certificate configured, and the development one cannot be made: \
                         {e} (configure server.tls.cert and server.tls.key)"
                    ),
                )
            })?;
            (dev.cert.clone(), dev.key.clone(), Some(dev))
        }
    };
    let expires_at = load_certificates(&cert_path)
        .ok()
        .and_then(|chain| chain.first().and_then(|c| expires_at(c)));
    Ok(ServerTls {
        config: Arc::new(build_server_config(
            &cert_path,
            &key_path,
            cfg.client_ca.as_deref(),
        )?),
        development_certificate,
        expires_at,
    })
}

/// Checks the configured certificate, key and client CA without touching the state directory.
/// `Ok(None)`: no certificate is configured (a development one would be made).
pub fn check_server_config(cfg: &ServerTlsConfig) -> Result<Option<()>, ServerTlsError> {
    match (&cfg.cert, &cfg.key) {
        (Some(c), Some(k)) => build_server_config(c, k, cfg.client_ca.as_deref()).map(|_| Some(())),
        _ => {
            if let Some(ca) = &cfg.client_ca {
                client_verifier(ca)?;
            }
            Ok(None)
        }
    }
}

fn client_verifier(
    ca: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, ServerTlsError> {
    let problem = |e: TlsFileError| ServerTlsError::new("server.tls.client_ca", e);
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(ca).map_err(problem)? {
        roots.add(cert).map_err(|e| {
            problem(TlsFileError::NotACa {
                path: ca.display().to_string(),
                reason: e.to_string(),
            })
        })?;
    }
    // Callers without a certificate still connect: each app decides whether it needs one.
    WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|e| ServerTlsError::new("server.tls.client_ca", format!("{}: {e}", ca.display())))
}

fn build_server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, ServerTlsError> {
    let chain = load_certificates(cert).map_err(|e| ServerTlsError::new("server.tls.cert", e))?;
    let key_path = key;
    let key = load_private_key(key).map_err(|e| ServerTlsError::new("server.tls.key", e))?;
    let builder = ServerConfig::builder_with_protocol_versions(PROTOCOL_VERSIONS);
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca)?),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        let message = match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "{} is not the key of the certificate in {} (use the key the certificate was \
                 issued for)",
                key_path.display(),
                cert.display()
            ),
            other => format!(
                "cannot use {} with the certificate in {}: {other}",
                key_path.display(),
                cert.display()
            ),
        };
        ServerTlsError::new("server.tls.key", message)
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The self-signed certificate brandgate makes for itself when none is configured.
#[derive(Debug, Clone)]
pub struct DevCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// True when it was made by this start, false when an earlier one was reused.
    pub generated: bool,
}

/// Reuses the development certificate in `state_dir/dev-tls/`, or makes one (valid for a year,
/// for localhost, the loopback addresses and the host name) when there is none or it expired.
pub fn ensure_development_certificate(
    state_dir: &Path,
) -> Result<DevCertificate, DevCertificateError> {
    let dir = state_dir.join("dev-tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() && !development_certificate_expired(&cert) {
        return Ok(DevCertificate {
            cert,
            key,
            generated: false,
        });
    }
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    // /etc/hostname first: under systemd's ProcSubset=pid, /proc/sys is hidden.
    let host = ["/etc/hostname", "/proc/sys/kernel/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_string())
        .filter(|h| {
            !h.is_empty()
                && h != "localhost"
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        });
    names.extend(host);
    let mut params = rcgen::CertificateParams::new(names)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "brandgate development certificate",
    );
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365);
    let key_pair = rcgen::KeyPair::generate()?;
    let certificate = params.self_signed(&key_pair)?;
    create_private_dir(&dir)?;
    write_private_file(&key, key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert, certificate.pem()).map_err(FileError::write(&cert))?;
    Ok(DevCertificate {
        cert,
        key,
        generated: true,
    })
}

/// When a certificate (DER) expires, in seconds since the epoch.
pub fn expires_at(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

fn development_certificate_expired(path: &Path) -> bool {
    let Ok(certs) = load_certificates(path) else {
        return true;
    };
    let Some(first) = certs.first() else {
        return true;
    };
    match x509_parser::parse_x509_certificate(first) {
        Ok((_, cert)) => !cert.validity().is_valid(),
        Err(_) => true,
    }
}

/// Why the development certificate cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum DevCertificateError {
    #[error("cannot make the development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(transparent)]
    File(#[from] FileError),
}

/// A file or directory that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct FileError {
    action: &'static str,
    path: std::path::PathBuf,
    source: std::io::Error,
}

impl FileError {
    fn write(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
        move |source| FileError {
            action: "write",
            path: path.to_path_buf(),
            source,
        }
    }

    fn create(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
        move |source| FileError {
            action: "create",
            path: path.to_path_buf(),
            source,
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(FileError::create(dir))
}

/// Writes a file only its owner can read.
pub fn write_private_file(path: &Path, content: &[u8]) -> Result<(), FileError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // Its directory too, if it is not there yet (a command run before the first start), only
    // for the service.
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        create_private_dir(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(FileError::write(path))?;
    f.write_all(content).map_err(FileError::write(path))
}

/// The system's trust store, read once.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// A client certificate and key an outbound connection authenticates with.
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Builds an outbound TLS configuration trusting the system's roots plus `extra_trust_anchors`.
/// `alpn` lists the protocols offered (`h2` alone for the APNs/FCM pools).
pub fn client_config(
    extra_trust_anchors: &[PathBuf],
    identity: Option<ClientIdentity>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsFileError> {
    client_config_trusting(true, extra_trust_anchors, identity, alpn)
}

/// Builds an outbound TLS configuration trusting `anchors` only (a pinned CA), or the
/// system's roots when `anchors` is empty.
pub fn client_config_pinned(anchors: &[PathBuf]) -> Result<Arc<ClientConfig>, TlsFileError> {
    client_config_trusting(anchors.is_empty(), anchors, None, &[])
}

fn client_config_trusting(
    system: bool,
    extra_trust_anchors: &[PathBuf],
    identity: Option<ClientIdentity>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsFileError> {
    let mut roots = RootCertStore::empty();
    if system {
        roots.add_parsable_certificates(system_roots().iter().cloned());
    }
    for path in extra_trust_anchors {
        for cert in load_certificates(path)? {
            roots.add(cert).map_err(|e| TlsFileError::NotACa {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsFileError::NoTrust);
    }
    let builder = ClientConfig::builder_with_protocol_versions(PROTOCOL_VERSIONS)
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(id.chain, id.key)
            .map_err(|e| TlsFileError::Mismatch(e.to_string()))?,
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The connection a request arrived on; the listener attaches it to every request.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The connection's peer: the TCP peer, or the source a trusted proxy's PROXY header gave.
    pub addr: std::net::SocketAddr,
    /// The client of this request ([`crate::client_address`]): what every per-source limit,
    /// access list and audit uses.
    pub client: std::net::IpAddr,
    /// The verified client certificate's identity, when the caller presented one.
    pub certificate: Option<Arc<PeerIdentity>>,
}

/// Who a caller is, by the certificate it presented on the TLS connection.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity {
    /// The subject common names and subject alternative names (DNS, URI, e-mail).
    pub names: Vec<String>,
}

impl PeerIdentity {
    /// Reads the names out of a DER certificate the TLS layer already verified.
    pub fn from_certificate(der: &[u8]) -> Option<PeerIdentity> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut names: Vec<String> = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_string))
            .collect();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                        names.push(s.to_string())
                    }
                    _ => {}
                }
            }
        }
        Some(PeerIdentity { names })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_certificate_is_made_once_and_reused() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_development_certificate(dir.path()).unwrap();
        assert!(first.generated);
        let again = ensure_development_certificate(dir.path()).unwrap();
        assert!(!again.generated);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the development key must be private");
        let tls = server_config(&ServerTlsConfig::default(), dir.path()).unwrap();
        assert!(tls.development_certificate.is_some());
    }

    #[test]
    fn peer_identity_reads_common_name_and_alt_names() {
        let mut params = rcgen::CertificateParams::new(vec!["push.example.com".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "platform-client");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let id = PeerIdentity::from_certificate(cert.der()).unwrap();
        assert_eq!(id.names, vec!["platform-client", "push.example.com"]);
    }
}
