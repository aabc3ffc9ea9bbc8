//! The `[relay.agents.sso.saml]` section: agents sign in with SAML 2.0 at the brand's identity
//! provider, brandgate being the service provider. Shape checks only; the relay reads the
//! provider's metadata (file or https URL) and pins its signing certificates when it builds
//! itself.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Problems;
use crate::duration::Span;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SamlConfig {
    /// The provider's metadata (its entity ID, single sign-on URL and signing certificates),
    /// from a file the brand downloaded from the provider. One of this or `idp_metadata_url`.
    pub idp_metadata_file: Option<PathBuf>,
    /// The provider's metadata from an https URL, read at start and again every
    /// `metadata_refresh` (a failed read keeps what was read before).
    pub idp_metadata_url: Option<String>,
    /// CA certificates (PEM) trusted for the metadata URL's TLS **instead of** the system's:
    /// pin the provider's CA. Empty: the system's roots.
    #[serde(default)]
    pub metadata_trust_anchors: Vec<PathBuf>,
    /// SHA-256 fingerprints (hex, colons allowed) of the only signing certificates accepted
    /// from the metadata. Recommended with `idp_metadata_url`: a metadata file swapped on the
    /// way then cannot bring its own key.
    #[serde(default)]
    pub idp_cert_sha256: Vec<String>,
    /// How often the metadata URL is read again.
    #[serde(default = "defaults::metadata_refresh")]
    pub metadata_refresh: Span,
    /// brandgate's entity ID at the provider. Default: the metadata URL
    /// (`<base>/api/account/<account>/sso/saml/metadata`).
    pub sp_entity_id: Option<String>,
    /// Where the provider posts its answer (the assertion consumer service). Default:
    /// `<identity.issuer>/api/account/<account>/sso/saml/acs`; register exactly this.
    pub acs_url: Option<String>,
    /// Accept RSA-SHA1 / SHA-1 signatures (refused by default: SHA-1 is broken).
    #[serde(default)]
    pub allow_sha1: bool,
    /// Accept answers the provider sends on its own (IdP-initiated: no request of ours to
    /// match, so someone can sign a person in as someone else — login CSRF). Off by default.
    #[serde(default)]
    pub allow_idp_initiated: bool,
    /// What names the person for good (the agent is linked to it on the first sign-in):
    /// `NameID` (refused when transient), or the `Name` or `FriendlyName` of an attribute the
    /// provider never reassigns (Entra ID: `http://schemas.microsoft.com/identity/claims/objectidentifier`).
    #[serde(default = "defaults::subject_attribute")]
    pub subject_attribute: String,
    /// Where the agent's username comes from: `NameID`, or the `Name` or `FriendlyName` of an
    /// attribute (`email`, `uid`, ...); exactly one value.
    #[serde(default = "defaults::username_attribute")]
    pub username_attribute: String,
    /// The attribute (`Name` or `FriendlyName`) listing the agent's groups.
    #[serde(default = "defaults::groups_attribute")]
    pub groups_attribute: String,
    /// How long an agent may take at the provider between starting and coming back.
    #[serde(default = "defaults::login_timeout")]
    pub login_timeout: Span,
    /// Sign-ins started per source address per minute.
    #[serde(default = "defaults::logins_per_minute")]
    pub logins_per_minute: u32,
}

impl SamlConfig {
    pub(super) fn check_shape(&self, at: &str, p: &mut Problems) {
        match (&self.idp_metadata_file, &self.idp_metadata_url) {
            (Some(_), None) => {}
            (None, Some(url)) => {
                if let Err(e) = crate::http_client::check_url(url) {
                    p.push(format!("{at}.idp_metadata_url"), e);
                }
            }
            _ => p.push(
                at,
                "set exactly one of idp_metadata_file and idp_metadata_url",
            ),
        }
        if self.idp_metadata_url.is_some()
            && self.metadata_trust_anchors.is_empty()
            && self.idp_cert_sha256.is_empty()
        {
            p.push(
                format!("{at}.idp_metadata_url"),
                "needs metadata_trust_anchors (the provider's CA) or idp_cert_sha256 (its signing certificates): whoever serves the metadata chooses the key answers are checked with",
            );
        }
        if !self.metadata_trust_anchors.is_empty() && self.idp_metadata_url.is_none() {
            p.push(
                format!("{at}.metadata_trust_anchors"),
                "only means something with idp_metadata_url",
            );
        }
        for (i, pin) in self.idp_cert_sha256.iter().enumerate() {
            if fingerprint(pin).is_none() {
                p.push(
                    format!("{at}.idp_cert_sha256[{i}]"),
                    "must be a SHA-256 fingerprint: 64 hex digits (colons allowed)",
                );
            }
        }
        for (key, url) in [
            ("acs_url", &self.acs_url),
            ("sp_entity_id", &self.sp_entity_id),
        ] {
            if let Some(url) = url {
                if url.is_empty() || url.len() > 512 || url.chars().any(char::is_control) {
                    p.push(
                        format!("{at}.{key}"),
                        "must be 1 to 512 printable characters",
                    );
                } else if key == "acs_url"
                    && let Err(e) = crate::http_client::check_url(url)
                {
                    p.push(format!("{at}.{key}"), e);
                }
            }
        }
        for (key, v) in [
            ("subject_attribute", &self.subject_attribute),
            ("username_attribute", &self.username_attribute),
            ("groups_attribute", &self.groups_attribute),
        ] {
            if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
                p.push(
                    format!("{at}.{key}"),
                    "must be 1 to 256 printable characters",
                );
            }
        }
        if self.logins_per_minute == 0 {
            p.push(format!("{at}.logins_per_minute"), "must be at least 1");
        }
        if self.login_timeout.0 < Duration::from_secs(30) {
            p.push(format!("{at}.login_timeout"), "must be at least 30s");
        }
        if self.metadata_refresh.0 < Duration::from_secs(60) {
            p.push(format!("{at}.metadata_refresh"), "must be at least 60s");
        }
    }
}

/// The 32 bytes of a SHA-256 fingerprint written as hex, with or without colons.
pub fn fingerprint(text: &str) -> Option<[u8; 32]> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = crate::hex::decode(&digits)?;
    bytes.try_into().ok()
}

mod defaults {
    use crate::duration::Span;
    use std::time::Duration;

    pub fn metadata_refresh() -> Span {
        Span(Duration::from_secs(3600))
    }
    pub fn subject_attribute() -> String {
        "NameID".into()
    }
    pub fn username_attribute() -> String {
        "NameID".into()
    }
    pub fn groups_attribute() -> String {
        "groups".into()
    }
    pub fn login_timeout() -> Span {
        Span(Duration::from_secs(600))
    }
    pub fn logins_per_minute() -> u32 {
        60
    }
}
