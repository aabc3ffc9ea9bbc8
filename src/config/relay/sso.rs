//! The `[relay.agents.sso]` section: agents sign in through the brand's own identity provider
//! (OpenID Connect in `[relay.agents.sso.oidc]`, SAML 2.0 in `[relay.agents.sso.saml]`), who
//! may, and whether passwords still work.
//! Shape checks only; the relay reads the client secret and trust anchors when it builds
//! itself.

use serde::{Deserialize, Serialize};

use super::saml::SamlConfig;
use crate::config::{Problems, UpstreamConfig};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SsoConfig {
    /// Agents must sign in with single sign-on: a password login is refused (`401`, saying to
    /// use single sign-on), except for the `break_glass` agents.
    #[serde(default)]
    pub required: bool,
    /// Agents who may still sign in with their password when `required` is on (for when the
    /// provider is down).
    #[serde(default)]
    pub break_glass: Vec<String>,
    /// An agent the provider vouches for but the account does not have is created on its
    /// first sign-in (without a password). Off: only agents added with `brandgate agents add`
    /// get in.
    #[serde(default)]
    pub create_agents: bool,
    /// Agents added with a password (by `brandgate agents add`) may be linked to the provider's
    /// identity of the same username on their first sign-in there. Off: only agents without a
    /// password (`--sso-only`, or created by `create_agents`) are; use it when the provider's
    /// usernames are assigned by the brand's administrators, never chosen by their users.
    #[serde(default)]
    pub link_existing: bool,
    /// Only members of this group get in (from `groups_claim`). None: every agent the
    /// provider vouches for.
    pub required_group: Option<String>,
    /// The ID-token claim whose value is the agent's username (OpenID Connect; SAML has
    /// `saml.username_attribute`).
    #[serde(default = "defaults::username_claim")]
    pub username_claim: String,
    /// The ID-token claim listing the agent's groups (an array of strings, or one string).
    #[serde(default = "defaults::groups_claim")]
    pub groups_claim: String,
    /// The name on the workspace's button: "Sign in with <name>".
    #[serde(default = "defaults::name")]
    pub name: String,
    /// Sign-in with OpenID Connect: the provider and brandgate's client there. Its redirect
    /// URI defaults to `<identity.issuer>/api/account/<account>/sso/oidc/callback`.
    pub oidc: Option<UpstreamConfig>,
    /// Sign-in with SAML 2.0: the provider's metadata and brandgate's service provider.
    pub saml: Option<SamlConfig>,
}

impl SsoConfig {
    pub(super) fn check_shape(&self, p: &mut Problems) {
        if let Some(oidc) = &self.oidc {
            oidc.check_shape("relay.agents.sso.oidc", p);
        }
        if let Some(saml) = &self.saml {
            saml.check_shape("relay.agents.sso.saml", p);
        }
        if self.oidc.is_none() && self.saml.is_none() {
            p.push(
                "relay.agents.sso",
                "configure a provider: [relay.agents.sso.oidc] or [relay.agents.sso.saml]",
            );
        }
        for (i, name) in self.break_glass.iter().enumerate() {
            if name.is_empty() || name.len() > 64 {
                p.push(
                    format!("relay.agents.sso.break_glass[{i}]"),
                    "must be an agent's username (1 to 64 characters)",
                );
            }
        }
        if self.create_agents && self.required_group.is_none() {
            p.push(
                "relay.agents.sso.create_agents",
                "needs required_group: else everyone the provider vouches for becomes an agent",
            );
        }
        if !self.break_glass.is_empty() && !self.required {
            p.push(
                "relay.agents.sso.break_glass",
                "only means something with required = true (every agent may use a password now)",
            );
        }
        for (key, value) in [
            ("name", Some(&self.name)),
            ("username_claim", Some(&self.username_claim)),
            ("groups_claim", Some(&self.groups_claim)),
            ("required_group", self.required_group.as_ref()),
        ] {
            if let Some(v) = value
                && (v.is_empty() || v.len() > 256 || v.chars().any(char::is_control))
            {
                p.push(
                    format!("relay.agents.sso.{key}"),
                    "must be 1 to 256 printable characters",
                );
            }
        }
    }
}

mod defaults {
    pub fn name() -> String {
        "SSO".into()
    }
    pub fn username_claim() -> String {
        "preferred_username".into()
    }
    pub fn groups_claim() -> String {
        "groups".into()
    }
}

/// Where a provider sends its answer back: the configured URL, which must end with `path`
/// (before any query), else `<identity.issuer><path>`; a problem under `key` when neither
/// can be had. For the OIDC redirect URI and the SAML ACS URL alike.
pub fn callback_url(
    configured: Option<&str>,
    identity: Option<&crate::config::IdentityConfig>,
    path: &str,
    key: &str,
    problems: &mut Problems,
) -> Option<String> {
    match (configured, identity) {
        (Some(url), _) => {
            if !url.split('?').next().unwrap_or("").ends_with(path) {
                problems.push(
                    key,
                    format!("must end with {path} (where brandgate takes the provider's answer)"),
                );
            }
            Some(url.to_string())
        }
        (None, Some(identity)) => Some(format!("{}{path}", identity.issuer.trim_end_matches('/'))),
        (None, None) => {
            problems.push(key, "is required without [identity]");
            None
        }
    }
}
