//! The account's SAML identity provider as the relay holds it: brandgate's own entity ID and
//! ACS URL, and the provider's metadata — read once from a file at start (a problem stops the
//! start), or from an https URL (pinned CA possible) on first use and again every
//! `metadata_refresh`; a failed read keeps the metadata read before.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::{Method, Request, StatusCode, Uri};

use super::metadata::{IdpMetadata, MetadataError};
use crate::config::{IdentityConfig, Problems, SamlConfig, sha256_fingerprint};
use crate::http_client::HttpClient;

/// Every read of the metadata URL fits in this.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// A failed read of the metadata URL is tried again after this, at the earliest.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// The path of the assertion consumer service, for `account`.
pub fn acs_path(account: &str) -> String {
    format!("/api/account/{account}/sso/saml/acs")
}

/// The path of brandgate's SP metadata, for `account`.
pub fn metadata_path(account: &str) -> String {
    format!("/api/account/{account}/sso/saml/metadata")
}

/// The path that starts a SAML sign-in, for `account`.
pub fn start_path(account: &str) -> String {
    format!("/api/account/{account}/sso/saml")
}

/// The provider's metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("the provider's metadata URL answered {0}")]
    Status(StatusCode),
    #[error("the provider's metadata cannot be read: {0}")]
    Http(#[from] crate::http_client::HttpError),
    #[error("the provider's metadata is refused: {0}")]
    Metadata(#[from] MetadataError),
    #[error("the provider's metadata was not read yet; the last try failed")]
    NotYet,
}

enum Source {
    File,
    Url { uri: Uri, client: Box<HttpClient> },
}

/// What was read last, and when.
struct Read {
    metadata: Option<Arc<IdpMetadata>>,
    at: Option<Instant>,
    failed_at: Option<Instant>,
}

pub struct SamlProvider {
    pub config: SamlConfig,
    pub sp_entity_id: String,
    pub acs_url: String,
    pub leeway: Duration,
    pins: Vec<[u8; 32]>,
    source: Source,
    read: RwLock<Read>,
    refreshing: tokio::sync::Mutex<()>,
    /// Answers checked at once (each holds a blocking thread for the signature check).
    pub checks: tokio::sync::Semaphore,
}

/// How many answers are checked at once.
const CONCURRENT_CHECKS: usize = 4;

impl SamlProvider {
    /// Checks what can be checked before the relay starts: the URLs, the pinned
    /// certificates, the metadata file (with a signing certificate) or the URL's TLS.
    pub fn build(
        cfg: &SamlConfig,
        account: &str,
        identity: Option<&IdentityConfig>,
        problems: &mut Problems,
    ) -> Option<SamlProvider> {
        let at = "relay.agents.sso.saml";
        let path = acs_path(account);
        let acs_url = crate::config::callback_url(
            cfg.acs_url.as_deref(),
            identity,
            &path,
            &format!("{at}.acs_url"),
            problems,
        )?;
        let base = acs_url.strip_suffix(&path).unwrap_or(&acs_url);
        let sp_entity_id = cfg
            .sp_entity_id
            .clone()
            .unwrap_or_else(|| format!("{base}{}", metadata_path(account)));
        let pins: Vec<[u8; 32]> = cfg
            .idp_cert_sha256
            .iter()
            .filter_map(|p| sha256_fingerprint(p))
            .collect();
        let mut read = Read {
            metadata: None,
            at: None,
            failed_at: None,
        };
        let source = match (&cfg.idp_metadata_file, &cfg.idp_metadata_url) {
            (Some(file), _) => {
                let metadata = std::fs::read(file)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| IdpMetadata::read(&bytes, &pins).map_err(|e| e.to_string()));
                match metadata {
                    Ok(m) => read.metadata = Some(Arc::new(m)),
                    Err(e) => {
                        problems.push(
                            format!("{at}.idp_metadata_file"),
                            format!("{}: {e}", file.display()),
                        );
                        return None;
                    }
                }
                Source::File
            }
            (None, Some(url)) => {
                let uri = crate::http_client::check_url(url)
                    .map_err(|e| problems.push(format!("{at}.idp_metadata_url"), e))
                    .ok()?;
                let tls = crate::tls::client_config_pinned(&cfg.metadata_trust_anchors)
                    .map_err(|e| problems.push(format!("{at}.metadata_trust_anchors"), e))
                    .ok()?;
                Source::Url {
                    uri,
                    client: Box::new(HttpClient::new(crate::egress::Role::Relay, tls)),
                }
            }
            (None, None) => return None,
        };
        Some(SamlProvider {
            config: cfg.clone(),
            sp_entity_id,
            acs_url,
            leeway: identity.map_or(Duration::from_secs(60), |i| i.leeway.0),
            pins,
            source,
            read: RwLock::new(read),
            refreshing: tokio::sync::Mutex::new(()),
            checks: tokio::sync::Semaphore::new(CONCURRENT_CHECKS),
        })
    }

    /// The provider's metadata: read from the URL when never read or due for a refresh.
    pub async fn metadata(&self) -> Result<Arc<IdpMetadata>, Unavailable> {
        let Source::Url { uri, client } = &self.source else {
            return self.held().0.ok_or(Unavailable::NotYet);
        };
        let (held, due) = self.held();
        match (&held, due) {
            (Some(m), false) => return Ok(m.clone()),
            (None, false) => return Err(Unavailable::NotYet),
            _ => {}
        }
        // One read at a time; the others use what is held (or wait for the first read).
        let _one = match (&held, self.refreshing.try_lock()) {
            (Some(m), Err(_)) => return Ok(m.clone()),
            (_, Ok(guard)) => guard,
            (None, Err(_)) => self.refreshing.lock().await,
        };
        let (held, due) = self.held();
        if let (Some(m), false) = (&held, due) {
            return Ok(m.clone());
        }
        match self.fetch(uri, client).await {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                if let Ok(mut read) = self.read.write() {
                    match read.metadata.as_deref() {
                        None => {
                            tracing::info!(entity = %fresh.entity_id, "read the agents' SAML provider's metadata")
                        }
                        Some(old) if old.certificates != fresh.certificates => tracing::warn!(
                            entity = %fresh.entity_id,
                            certificates = fresh.certificates.len(),
                            "the agents' SAML provider's signing certificates changed in its metadata"
                        ),
                        Some(_) => {}
                    }
                    *read = Read {
                        metadata: Some(fresh.clone()),
                        at: Some(Instant::now()),
                        failed_at: None,
                    };
                }
                Ok(fresh)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the agents' SAML provider's metadata");
                if let Ok(mut read) = self.read.write() {
                    read.failed_at = Some(Instant::now());
                }
                held.ok_or(e)
            }
        }
    }

    /// What is held, and whether a read of the URL is due.
    fn held(&self) -> (Option<Arc<IdpMetadata>>, bool) {
        let Ok(read) = self.read.read() else {
            return (None, true);
        };
        let refresh = self.config.metadata_refresh.0;
        let stale = read.at.is_none_or(|at| at.elapsed() >= refresh);
        let resting = read.failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER);
        (read.metadata.clone(), stale && !resting)
    }

    async fn fetch(&self, uri: &Uri, client: &HttpClient) -> Result<IdpMetadata, Unavailable> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(uri.clone())
            .header(
                http::header::ACCEPT,
                "application/samlmetadata+xml, application/xml",
            )
            .body(bytes::Bytes::new())
            .map_err(|_| Unavailable::NotYet)?;
        let answer = client.send(request, METADATA_TIMEOUT).await?;
        if answer.status != StatusCode::OK {
            return Err(Unavailable::Status(answer.status));
        }
        Ok(IdpMetadata::read(&answer.body, &self.pins)?)
    }
}
