//! The agents' identity providers (`[relay.agents.sso]`): read and checked before the relay
//! starts (client secret, trust anchors, redirect URI; the SAML provider's metadata), held
//! while it runs, with the sign-ins
//! sent to them and not back yet. The sign-in pages themselves are in `sso`.

use std::sync::Arc;

use crate::config::{IdentityConfig, Problems, RelayConfig};
use crate::identity::{Grants, Upstream};

/// The path the OpenID provider sends agents back to, for `account`.
pub fn oidc_callback_path(account: &str) -> String {
    format!("/api/account/{account}/sso/oidc/callback")
}

/// The path that starts an OpenID Connect sign-in, for `account`.
pub fn oidc_start_path(account: &str) -> String {
    format!("/api/account/{account}/sso/oidc")
}

/// What single sign-on needs once the relay runs.
pub(super) struct Sso {
    pub oidc: Option<Arc<Upstream>>,
    pub saml: Option<Arc<super::saml::SamlProvider>>,
    /// Sign-ins sent to the provider and not back yet (in the store: any node finishes them).
    pub grants: Grants,
}

/// The providers, read and checked before the relay starts.
pub struct PreparedSso {
    pub(super) oidc: Option<Upstream>,
    pub(super) saml: Option<super::saml::SamlProvider>,
}

/// Reads the client secret and trust anchors of each configured method.
pub(super) fn prepare(
    relay: &RelayConfig,
    identity: Option<&IdentityConfig>,
    problems: &mut Problems,
) -> Option<PreparedSso> {
    let sso = relay.agents.sso.as_ref()?;
    let oidc = sso.oidc.as_ref().and_then(|cfg| {
        let at = "relay.agents.sso.oidc";
        let path = oidc_callback_path(&relay.account);
        let redirect = crate::config::callback_url(
            cfg.redirect_uri.as_deref(),
            identity,
            &path,
            &format!("{at}.redirect_uri"),
            problems,
        )?;
        let leeway = identity.map_or(std::time::Duration::from_secs(60), |i| i.leeway.0);
        Upstream::build(
            cfg,
            at,
            &redirect,
            leeway,
            crate::clock::system(),
            crate::egress::Role::Relay,
            problems,
        )
    });
    let saml = sso
        .saml
        .as_ref()
        .and_then(|cfg| super::saml::SamlProvider::build(cfg, &relay.account, identity, problems));
    Some(PreparedSso { oidc, saml })
}
