//! Who may ask the identity bridge for tokens, and how each proves it:
//! - **clients** of the code flow (the platform's connector): `client_id` + secret, by HTTP
//!   Basic or by form fields (RFC 6749 §2.3.1), and the redirect URIs their logins return to;
//! - **backends** (the brand's own systems) at `POST /identity/v1/token`: HTTP Basic with their
//!   id and secret, and/or a client certificate with an accepted name.
//!
//! Secrets are compared in constant time; an unknown id costs the same as a wrong secret.

use crate::config::{BackendConfig, ClientConfig, Problems};
use crate::http_auth::certificate_matches;
use crate::secret::{Secret, read_secret_for};
use crate::tls::PeerIdentity;

/// A client of the code flow.
pub struct Client {
    pub id: String,
    secret: Option<Secret<Vec<u8>>>,
    pub redirect_uris: Vec<String>,
    pub implicit: bool,
}

/// A brand system that may ask for tokens.
pub struct Backend {
    pub id: String,
    secret: Option<Secret<Vec<u8>>>,
    cert_names: Vec<String>,
    pub trusted: bool,
    /// Audiences besides brandgate's client id accepted on the ID tokens it presents.
    pub accepted_audiences: Vec<String>,
}

/// Every configured client and backend.
pub struct Callers {
    clients: Vec<Client>,
    backends: Vec<Backend>,
    /// Compared against when the id is unknown, so that costs what a wrong secret costs.
    decoy: Secret<Vec<u8>>,
}

impl Callers {
    pub fn build(
        clients: &[ClientConfig],
        backends: &[BackendConfig],
        client_ca_configured: bool,
        problems: &mut Problems,
    ) -> Callers {
        let clients = clients
            .iter()
            .enumerate()
            .map(|(i, c)| Client {
                id: c.id.clone(),
                secret: read_secret_for(
                    format!("identity.clients[{i}].secret_file"),
                    &c.secret_file,
                    problems,
                ),
                redirect_uris: c.redirect_uris.clone(),
                implicit: c.implicit,
            })
            .collect();
        let backends = backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if !b.client_cert_names.is_empty() && !client_ca_configured {
                    problems.push(
                        format!("identity.backends[{i}].client_cert_names"),
                        "needs server.tls.client_ca, or no client certificate is ever asked for",
                    );
                }
                Backend {
                    id: b.id.clone(),
                    secret: b.secret_file.as_ref().and_then(|f| {
                        read_secret_for(format!("identity.backends[{i}].secret_file"), f, problems)
                    }),
                    cert_names: b.client_cert_names.clone(),
                    trusted: b.trusted,
                    accepted_audiences: b.accepted_audiences.clone(),
                }
            })
            .collect();
        Callers {
            clients,
            backends,
            decoy: Secret::new(b"no such caller".to_vec()),
        }
    }

    /// The configured client `id`.
    pub fn client(&self, id: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.id == id)
    }

    /// The client a login names, or the only client when it names none.
    pub fn client_for_login(&self, id: Option<&str>) -> Option<&Client> {
        match id {
            Some(id) => self.client(id),
            None if self.clients.len() == 1 => self.clients.first(),
            None => None,
        }
    }

    /// The client whose id and secret these are.
    pub fn authenticate_client(&self, id: &str, secret: &str) -> Option<&Client> {
        let client = self.client(id);
        let expected = client
            .and_then(|c| c.secret.as_ref())
            .unwrap_or(&self.decoy);
        let ok = expected.matches(secret.as_bytes());
        client.filter(|_| ok)
    }

    /// The backend that `basic` (user, password) and the connection's certificate identify.
    /// Every method the backend has configured must pass.
    pub fn authenticate_backend(
        &self,
        basic: Option<(&str, &str)>,
        peer: Option<&PeerIdentity>,
    ) -> Option<&Backend> {
        let backend = match basic {
            Some((user, _)) => self.backends.iter().find(|b| b.id == user),
            None => self
                .backends
                .iter()
                .find(|b| !b.cert_names.is_empty() && certificate_matches(peer, &b.cert_names)),
        };
        // Both checks always run, so the timing does not tell which failed.
        let secret_ok = match backend.and_then(|b| b.secret.as_ref()) {
            Some(expected) => basic.is_some_and(|(_, p)| expected.matches(p.as_bytes())),
            None => {
                let _ = self.decoy.matches(b"");
                backend.is_some()
            }
        };
        let cert_ok = backend
            .is_some_and(|b| b.cert_names.is_empty() || certificate_matches(peer, &b.cert_names));
        backend.filter(|_| secret_ok && cert_ok)
    }
}

impl Client {
    /// Whether a login may return to `uri` (exact comparison, RFC 6749 §3.1.2.3).
    pub fn allows_redirect(&self, uri: &str) -> bool {
        self.redirect_uris.iter().any(|r| r == uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callers(dir: &std::path::Path) -> Callers {
        std::fs::write(dir.join("c"), "client-secret\n").unwrap();
        std::fs::write(dir.join("b"), "backend-secret").unwrap();
        let clients = [ClientConfig {
            id: "platform".into(),
            secret_file: dir.join("c"),
            redirect_uris: vec!["com.brand.app://cb".into()],
            implicit: false,
        }];
        let backends = [
            BackendConfig {
                id: "login".into(),
                secret_file: Some(dir.join("b")),
                client_cert_names: vec![],
                trusted: false,
                accepted_audiences: vec![],
            },
            BackendConfig {
                id: "crm".into(),
                secret_file: None,
                client_cert_names: vec!["crm.brand.example".into()],
                trusted: true,
                accepted_audiences: vec![],
            },
        ];
        let mut problems = Problems::default();
        let c = Callers::build(&clients, &backends, true, &mut problems);
        assert!(problems.is_empty(), "{problems}");
        c
    }

    #[test]
    fn clients_authenticate_with_their_secret_only() {
        let dir = tempfile::tempdir().unwrap();
        let c = callers(dir.path());
        assert!(c.authenticate_client("platform", "client-secret").is_some());
        assert!(
            c.authenticate_client("platform", "client-secret\n")
                .is_none()
        );
        assert!(
            c.authenticate_client("platform", "backend-secret")
                .is_none()
        );
        assert!(c.authenticate_client("nobody", "no such caller").is_none());
        assert!(c.client_for_login(None).is_some(), "the only client");
        assert!(c.client_for_login(Some("other")).is_none());
    }

    #[test]
    fn backends_by_secret_or_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let c = callers(dir.path());
        let crm = PeerIdentity {
            names: vec!["crm.brand.example".into()],
        };
        let stranger = PeerIdentity {
            names: vec!["other.example".into()],
        };
        assert_eq!(
            c.authenticate_backend(Some(("login", "backend-secret")), None)
                .map(|b| b.id.as_str()),
            Some("login")
        );
        assert!(
            c.authenticate_backend(Some(("login", "wrong")), None)
                .is_none()
        );
        assert_eq!(
            c.authenticate_backend(None, Some(&crm))
                .map(|b| b.id.as_str()),
            Some("crm")
        );
        assert!(c.authenticate_backend(None, Some(&stranger)).is_none());
        assert!(c.authenticate_backend(None, None).is_none());
        // Naming the certificate backend without its certificate fails.
        assert!(
            c.authenticate_backend(Some(("crm", "")), Some(&stranger))
                .is_none()
        );
    }
}
