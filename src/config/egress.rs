//! The `[egress]` section: how brandgate reaches the outside (providers, the brand's OpenID
//! provider and JWKS, SAML metadata, webhooks): directly, or through the brand's HTTP proxy
//! (CONNECT tunnels: TLS stays end to end). `[push.egress]`, `[identity.egress]` and
//! `[relay.egress]` replace it for one role. Shape only; `crate::egress` reads the credentials.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// `http://host:port` of an HTTP proxy that tunnels with CONNECT. Unset: direct, unless
    /// `from_environment`.
    pub proxy: Option<String>,
    /// Destinations reached directly, not through the proxy: host names (each also covers its
    /// subdomains; a leading dot is the same), IP addresses, CIDR ranges, or `*` (everything).
    /// Plain `http://` (allowed to loopback only) never goes through the proxy.
    #[serde(default)]
    pub no_proxy: Vec<String>,
    /// A file whose first line is `user:password` for the proxy (HTTP Basic). Without it, no
    /// credentials are sent.
    pub proxy_credentials_file: Option<PathBuf>,
    /// When `proxy` is unset, take the proxy from `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` and
    /// `NO_PROXY` (either case) of the service's environment (credentials in its URL are used
    /// when there is no `proxy_credentials_file`). Off: the environment is ignored.
    #[serde(default)]
    pub from_environment: bool,
}
