//! The brand's login in the tests: a real OpenID provider (npm `oidc-provider`, run by
//! tests/node/idp.mjs over HTTPS with a certificate of the test's CA), and a small browser that
//! logs a consumer in through brandgate and it the way a person's browser would: following
//! redirects, keeping each site's cookies, submitting the provider's login and consent forms.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::TestEnv;
use super::client::{Answer, Client};

/// The host name brandgate's public URL uses in tests: the provider only ever sees it in
/// redirect URIs, and the browser maps it to the daemon's loopback address.
pub const BRANDGATE_HOST: &str = "brandgate.test";
pub const BRANDGATE_ISSUER: &str = "https://brandgate.test";
/// brandgate's client at the provider.
pub const UPSTREAM_CLIENT: &str = "brandgate";
pub const UPSTREAM_SECRET: &str = "upstream-client-s3cret-0123456789";

fn script() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node/idp.mjs"))
}

/// A running provider. Killed when dropped.
pub struct Idp {
    child: tokio::process::Child,
    pub issuer: String,
    client: Client,
}

impl Idp {
    /// Starts the provider with brandgate registered as a confidential client (HTTP Basic
    /// only: idp.mjs enforces the registered method), plus `extra_clients`, and `accounts` (login name → extra claims).
    pub async fn start(env: &TestEnv, extra_clients: Vec<Value>, accounts: Value) -> Idp {
        Self::start_on(env, extra_clients, accounts, 0).await
    }

    /// [`Idp::start`] on loopback `port` (0: any free one), so its issuer URL is known before
    /// it runs.
    pub async fn start_on(
        env: &TestEnv,
        extra_clients: Vec<Value>,
        accounts: Value,
        port: u16,
    ) -> Idp {
        let mut clients = vec![json!({
            "client_id": UPSTREAM_CLIENT,
            "client_secret": UPSTREAM_SECRET,
            "redirect_uris": [format!("{BRANDGATE_ISSUER}/callback")],
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
        })];
        clients.extend(extra_clients);
        let (cert, key) = env.ca.server().write(env.path(), "idp-server");
        let config = json!({
            "tls": {"cert": cert, "key": key},
            "clients": clients,
            "accounts": accounts,
            "port": port,
        });
        let file = env.file("idp.json", &config.to_string());
        // oidc-provider's start-up sometimes stalls on Node 20 (REFERENCE.md); the script
        // avoids the known path, and one bounded retry covers the rest.
        for attempt in 0..2 {
            if let Some(idp) = Self::spawn(env, &file).await {
                return idp;
            }
            eprintln!("idp: no ready line (attempt {})", attempt + 1);
        }
        panic!("the test OpenID provider did not start (tests/node: npm ci --prefix tests/node)");
    }

    async fn spawn(env: &TestEnv, config: &Path) -> Option<Idp> {
        let mut child = tokio::process::Command::new("node")
            .arg(script())
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node");
        let stdout = child.stdout.take()?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .ok()?
            .ok()??;
        let ready: Value = serde_json::from_str(&line).ok()?;
        Some(Idp {
            child,
            issuer: ready["issuer"].as_str()?.to_string(),
            client: env.client(),
        })
    }

    /// Calls the provider's test admin API.
    pub async fn admin(&self, path: &str, body: Value) -> Value {
        let answer = self
            .client
            .post_json(&format!("{}/__test/{path}", self.issuer), &[], &body)
            .await;
        assert_eq!(answer.status, 200, "idp admin {path}: {}", answer.body);
        answer.json()
    }

    /// What brandgate sent the provider so far (`authorization` and `token` requests).
    pub async fn requests(&self) -> Value {
        self.client
            .get(&format!("{}/__test/requests", self.issuer))
            .await
            .json()
    }

    /// An ID token signed by the provider's published key (or `key`: "unknown", "rotated").
    pub async fn sign(&self, claims: Value, key: &str) -> String {
        self.admin("sign", json!({"claims": claims, "key": key}))
            .await["id_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The `[identity.upstream]` section for this provider.
    pub fn upstream_config(&self, env: &TestEnv, extra: &str) -> String {
        let secret = env.secret("upstream-secret", &format!("{UPSTREAM_SECRET}\n"));
        let ca = env.ca.write(env.path(), "idp-ca");
        format!(
            r#"
[identity.upstream]
issuer = "{issuer}"
client_id = "{UPSTREAM_CLIENT}"
client_secret_file = "{secret}"
scopes = ["openid", "profile", "email", "brand"]
extra_trust_anchors = ["{ca}"]
{extra}
"#,
            issuer = self.issuer,
            secret = secret.display(),
            ca = ca.display(),
        )
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// brandgate's client for the agents' single sign-on, registered at the provider with
/// `redirect_uri` (confidential, HTTP Basic, code flow).
pub fn agents_client(client_id: &str, redirect_uri: &str) -> Value {
    json!({
        "client_id": client_id,
        "client_secret": UPSTREAM_SECRET,
        "redirect_uris": [redirect_uri],
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
    })
}

/// Where a walk through redirects stopped.
#[derive(Debug)]
pub enum Landing {
    /// A redirect to a URL outside brandgate and the provider (the app's callback).
    App(String),
    /// An answer that is not a redirect, from brandgate or the provider.
    Page(Answer),
}

/// A browser: one cookie jar per site, redirects followed by hand, brandgate's public name
/// mapped to the daemon's address.
pub struct Browser {
    client: Client,
    brandgate: String,
    idp: String,
    jars: HashMap<String, HashMap<String, String>>,
    /// URLs starting with this end a walk (as [`Landing::App`]) instead of being requested.
    stop_at: Option<String>,
}

impl Browser {
    /// `brandgate_base` is the daemon's real URL (`https://127.0.0.1:<port>`).
    pub fn new(env: &TestEnv, brandgate_base: &str, idp: &Idp) -> Browser {
        Browser {
            client: env.client(),
            brandgate: brandgate_base.trim_end_matches('/').to_string(),
            idp: idp.issuer.clone(),
            jars: HashMap::new(),
            stop_at: None,
        }
    }

    /// Ends every walk at URLs starting with `prefix` (a page whose address matters, such as
    /// the workspace with its fragment), as [`Landing::App`].
    pub fn stop_at(&mut self, prefix: &str) {
        self.stop_at = Some(prefix.to_string());
    }

    /// The site a URL belongs to and the URL to actually connect to, or `None` for a URL
    /// outside both (an app's callback).
    fn route(&self, url: &str) -> Option<(String, String)> {
        if self
            .stop_at
            .as_ref()
            .is_some_and(|p| url.starts_with(p.as_str()))
        {
            return None;
        }
        if let Some(rest) = url.strip_prefix(BRANDGATE_ISSUER) {
            return Some(("brandgate".into(), format!("{}{rest}", self.brandgate)));
        }
        if url.starts_with(&self.brandgate) {
            return Some(("brandgate".into(), url.to_string()));
        }
        if url.starts_with(&self.idp) {
            return Some(("idp".into(), url.to_string()));
        }
        None
    }

    fn absolute(&self, base: &str, location: &str) -> String {
        if location.starts_with('/') {
            let origin = base.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
            format!("{origin}{location}")
        } else {
            location.to_string()
        }
    }

    pub fn idp_issuer(&self) -> &str {
        &self.idp
    }

    /// The cookies of `site`.
    pub fn cookies(&mut self, site: &str) -> &mut HashMap<String, String> {
        self.jars.entry(site.to_string()).or_default()
    }

    /// One request with the site's cookies; stores what it sets.
    pub async fn request(&mut self, method: Method, url: &str, form: Option<&str>) -> Answer {
        let (site, real) = self
            .route(url)
            .unwrap_or_else(|| panic!("not a site: {url}"));
        let cookie = self
            .cookies(&site)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut headers = vec![("accept", "text/html")];
        if !cookie.is_empty() {
            headers.push(("cookie", cookie.as_str()));
        }
        if form.is_some() {
            headers.push(("content-type", "application/x-www-form-urlencoded"));
        }
        let body = Bytes::from(form.unwrap_or("").to_string());
        let answer = self.client.send(method, &real, &headers, body).await;
        for set in answer.headers.get_all("set-cookie") {
            let text = set.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            if let Some((k, v)) = pair.split_once('=') {
                let expired = text.to_ascii_lowercase().contains("max-age=0")
                    || text
                        .to_ascii_lowercase()
                        .contains("expires=thu, 01 jan 1970");
                if expired {
                    self.cookies(&site).remove(k.trim());
                } else {
                    self.cookies(&site).insert(k.trim().into(), v.into());
                }
            }
        }
        answer
    }

    /// Follows redirects from `url` until it leaves both sites or gets a page.
    pub async fn follow(&mut self, url: &str) -> Landing {
        let mut url = url.to_string();
        let mut method = Method::GET;
        let mut form: Option<String> = None;
        for _ in 0..20 {
            if self.route(&url).is_none() {
                return Landing::App(url);
            }
            let answer = self.request(method.clone(), &url, form.as_deref()).await;
            if !(300..400).contains(&answer.status) {
                return Landing::Page(answer);
            }
            let location = answer.headers["location"].to_str().unwrap().to_string();
            url = self.absolute(&url, &location);
            method = Method::GET;
            form = None;
        }
        panic!("too many redirects");
    }

    /// Logs `login` in at the provider, starting at brandgate's `/login?{query}`, and returns
    /// where the browser lands in the end (normally the app's callback with a code).
    pub async fn login(&mut self, query: &str, login: &str) -> Landing {
        let start = format!("{BRANDGATE_ISSUER}/login?{query}");
        let landing = self.follow(&start).await;
        self.finish_at_provider(landing, login).await
    }

    /// From the provider's interaction page: the login form, then consent, then back.
    pub async fn finish_at_provider(&mut self, landing: Landing, login: &str) -> Landing {
        let mut landing = landing;
        for prompt in ["login", "consent"] {
            let Landing::Page(page) = &landing else {
                return landing;
            };
            let Some(action) = form_action(&page.body) else {
                return landing;
            };
            let url = self.absolute(&self.idp.clone(), &action);
            let form = match prompt {
                "login" => format!("prompt=login&login={login}&password=any"),
                _ => "prompt=consent".to_string(),
            };
            let answer = self.request(Method::POST, &url, Some(&form)).await;
            landing = if (300..400).contains(&answer.status) {
                let location = answer.headers["location"].to_str().unwrap().to_string();
                let next = self.absolute(&url, &location);
                self.follow(&next).await
            } else {
                Landing::Page(answer)
            };
        }
        landing
    }
}

/// The `action` of the first form on a page (oidc-provider's interaction pages).
fn form_action(html: &str) -> Option<String> {
    let start = html.find("<form")?;
    let tag = &html[start..start + html[start..].find('>')?];
    let at = tag.find("action=\"")? + 8;
    let end = tag[at..].find('"')?;
    Some(tag[at..at + end].replace("&amp;", "&"))
}

/// The query (or fragment) parameters of a URL.
pub fn url_params(url: &str) -> HashMap<String, String> {
    let part = url
        .split_once('#')
        .map(|(_, f)| f)
        .or_else(|| url.split_once('?').map(|(_, q)| q))
        .unwrap_or("");
    form_urlencoded::parse(part.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}
