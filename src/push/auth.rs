//! Caller authentication for one app: HTTP Basic (password from a file), a client certificate
//! whose names match, and up to 4 custom headers with fixed values (from files). Every configured
//! method must pass. All secret comparisons are constant-time, and every configured check runs
//! even after one failed, so the timing does not tell which one did.
//!
//! The reasons a caller failed are for the log, never for the answer.

use http::{HeaderMap, HeaderName};

use crate::config::{CallerAuthConfig, Problems};
use crate::http_auth::{basic_credentials, certificate_matches};
use crate::secret::{SecretDigest, read_secret_for};
use crate::tls::PeerIdentity;

/// The platform allows at most 4 custom headers per app.
const MAX_HEADERS: usize = 4;

/// The expected user name and secrets are kept as digests: each request hashes only what it
/// presents.
pub struct CallerAuth {
    basic: Option<(SecretDigest, SecretDigest)>,
    cert_names: Option<Vec<String>>,
    headers: Vec<(HeaderName, SecretDigest)>,
}

/// Which check failed, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure(pub Vec<&'static str>);

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

impl CallerAuth {
    /// Reads the secrets; `client_ca_configured` tells whether the listener asks for client
    /// certificates at all.
    pub fn build(
        key: &str,
        cfg: &CallerAuthConfig,
        client_ca_configured: bool,
        problems: &mut Problems,
    ) -> CallerAuth {
        let basic = cfg.basic.as_ref().and_then(|b| {
            let pw = read_secret_for(
                format!("{key}.basic.password_file"),
                &b.password_file,
                problems,
            )?;
            Some((
                SecretDigest::of(b.username.as_bytes()),
                SecretDigest::of(pw.expose()),
            ))
        });
        let mut headers = Vec::new();
        for (i, h) in cfg.headers.iter().enumerate() {
            let field = format!("{key}.headers[{i}]");
            let value = read_secret_for(format!("{field}.value_file"), &h.value_file, problems);
            match HeaderName::from_bytes(h.name.as_bytes()) {
                Ok(name) => {
                    if let Some(v) = value {
                        headers.push((name, SecretDigest::of(v.expose())));
                    }
                }
                Err(_) => problems.push(
                    format!("{field}.name"),
                    format!("{:?} is not a header name", h.name),
                ),
            }
        }
        if let Some(b) = &cfg.basic
            && (b.username.is_empty() || b.username.contains(':'))
        {
            problems.push(
                format!("{key}.basic.username"),
                "must be non-empty and have no ':'",
            );
        }
        if cfg.headers.len() > MAX_HEADERS {
            problems.push(
                format!("{key}.headers"),
                format!(
                    "{} headers configured, but the platform sends at most {MAX_HEADERS}: \
                     remove {}",
                    cfg.headers.len(),
                    cfg.headers.len() - MAX_HEADERS
                ),
            );
        }
        let cert_names = cfg.client_cert.as_ref().map(|c| c.names.clone());
        if let Some(names) = &cert_names {
            if names.is_empty() {
                problems.push(
                    format!("{key}.client_cert.names"),
                    "list at least one accepted name",
                );
            }
            if !client_ca_configured {
                problems.push(
                    format!("{key}.client_cert"),
                    "needs server.tls.client_ca, or no client certificate is ever asked for",
                );
            }
        }
        let nothing = cfg.basic.is_none() && cfg.client_cert.is_none() && cfg.headers.is_empty();
        if nothing && !cfg.allow_unauthenticated {
            problems.push(
                key,
                "no caller authentication configured: add basic, client_cert or headers \
                 (or set allow_unauthenticated = true to accept anyone)",
            );
        }
        if !nothing && cfg.allow_unauthenticated {
            problems.push(
                format!("{key}.allow_unauthenticated"),
                "contradicts the configured authentication; remove one",
            );
        }
        CallerAuth {
            basic,
            cert_names,
            headers,
        }
    }

    /// Checks a request. `peer` is the verified client certificate of the connection, if any.
    pub fn check(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerIdentity>,
    ) -> Result<(), AuthFailure> {
        let mut failed = Vec::new();
        if let Some((user, password)) = &self.basic {
            let ok = match basic_credentials(headers) {
                // Both comparisons always run.
                Some((u, p)) => user.matches(u.as_bytes()) & password.matches(p.as_bytes()),
                None => {
                    // Same work as wrong credentials, so a missing header is not faster.
                    let _ = user.matches(b"") & password.matches(b"");
                    false
                }
            };
            if !ok {
                failed.push("basic credentials missing or wrong");
            }
        }
        if let Some(names) = &self.cert_names
            && !certificate_matches(peer, names)
        {
            failed.push("client certificate missing or not an accepted name");
        }
        for (name, value) in &self.headers {
            let presented = headers.get(name).map(|v| v.as_bytes()).unwrap_or(b"");
            if !value.matches(presented) {
                failed.push("custom header missing or wrong");
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(AuthFailure(failed))
        }
    }

    /// Whether a failure should invite the caller to send Basic credentials.
    pub fn uses_basic(&self) -> bool {
        self.basic.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BasicAuthConfig, HeaderAuthConfig};
    use base64::Engine;

    fn basic_header(u: &str, p: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        h.insert(
            http::header::AUTHORIZATION,
            format!("Basic {v}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn every_configured_method_must_pass() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
        std::fs::write(dir.path().join("hv"), "k-123").unwrap();
        let cfg = CallerAuthConfig {
            basic: Some(BasicAuthConfig {
                username: "platform".into(),
                password_file: dir.path().join("pw"),
            }),
            headers: vec![HeaderAuthConfig {
                name: "X-Brand-Key".into(),
                value_file: dir.path().join("hv"),
            }],
            ..Default::default()
        };
        let mut problems = Problems::default();
        let auth = CallerAuth::build("a", &cfg, false, &mut problems);
        assert!(problems.is_empty(), "{problems}");

        let mut ok = basic_header("platform", "s3cret");
        ok.insert("x-brand-key", "k-123".parse().unwrap());
        assert!(auth.check(&ok, None).is_ok());

        let mut wrong_header = basic_header("platform", "s3cret");
        wrong_header.insert("x-brand-key", "k-124".parse().unwrap());
        assert_eq!(auth.check(&wrong_header, None).unwrap_err().0.len(), 1);

        let mut wrong_pw = basic_header("platform", "s3cret!");
        wrong_pw.insert("x-brand-key", "k-123".parse().unwrap());
        assert!(auth.check(&wrong_pw, None).is_err());
        assert_eq!(auth.check(&HeaderMap::new(), None).unwrap_err().0.len(), 2);
    }

    #[test]
    fn no_authentication_must_be_explicit() {
        let mut problems = Problems::default();
        CallerAuth::build(
            "push.apps[0].auth",
            &CallerAuthConfig::default(),
            false,
            &mut problems,
        );
        assert_eq!(problems.0[0].key, "push.apps[0].auth");
    }
}
