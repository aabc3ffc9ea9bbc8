//! How outbound connections leave: directly, or through the brand's HTTP proxy with a CONNECT
//! tunnel, so TLS to APNs, FCM, Huawei, the OpenID provider and webhook receivers stays end to
//! end and the proxy sees only host names and ports. Which destinations go through the proxy
//! is hyper-util's `Matcher` (curl's NO_PROXY rules); the CONNECT exchange is ours, so a
//! refusal can be told with the proxy's own status line.
//!
//! The policy is one per role (push, identity, relay: `[egress]`, or the role's own
//! `[<role>.egress]`), built from the configuration with every problem named, and installed
//! for the whole process at start and on each applied reload. Every connection looks it up
//! when it is opened, so a reload reaches pooled clients' next connection too.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::config::{Config, EgressConfig, Problems};

/// Whose connection it is: each role may leave its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Providers (APNs, FCM, Huawei), their token calls, the dead-token webhook, away pushes.
    Push,
    /// The brand's OpenID provider and the external issuers' JWKS.
    Identity,
    /// The relay's webhooks and the agents' sign-in provider.
    Relay,
}

/// One role's way out.
#[derive(Clone, Default)]
struct Route {
    /// Which destinations go through which proxy (`None`: all direct).
    matcher: Option<Arc<Matcher>>,
    /// `Proxy-Authorization` for the CONNECT request.
    auth: Option<HeaderValue>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("matcher", &self.matcher)
            .field("auth", &self.auth.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// Every role's way out.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    push: Route,
    identity: Route,
    relay: Route,
}

static CURRENT: RwLock<Option<Arc<Policy>>> = RwLock::new(None);

impl Policy {
    /// Reads the egress settings (and proxy credentials) of `config`; every problem is named.
    pub fn build(config: &Config, problems: &mut Problems) -> Policy {
        let role = |own: Option<&EgressConfig>, key: &str, problems: &mut Problems| match own {
            Some(own) => route(own, key, problems),
            None => route(&config.egress, "egress", problems),
        };
        Policy {
            push: role(config.push.egress.as_ref(), "push.egress", problems),
            identity: role(
                config.identity.as_ref().and_then(|i| i.egress.as_ref()),
                "identity.egress",
                problems,
            ),
            relay: role(
                config.relay.as_ref().and_then(|r| r.egress.as_ref()),
                "relay.egress",
                problems,
            ),
        }
    }

    /// [`Policy::build`] for the commands that stop at the first bad config: the policy, or
    /// every egress problem.
    pub fn checked(config: &Config) -> Result<Policy, Problems> {
        let mut problems = Problems::default();
        let policy = Policy::build(config, &mut problems);
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(problems)
        }
    }

    /// Makes this the policy every connection opened from now on follows.
    pub fn install(self) {
        *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(self));
    }

    /// What `check-config` and the start log say: which roles go through which proxy.
    pub fn describe(&self) -> Vec<String> {
        [
            ("push", &self.push),
            ("identity", &self.identity),
            ("relay", &self.relay),
        ]
        .into_iter()
        .filter_map(|(name, route)| {
            let matcher = route.matcher.as_ref()?;
            let probe: Uri = "https://egress.probe.invalid/".parse().ok()?;
            let proxy = matcher.intercept(&probe).map(|i| i.uri().to_string());
            Some(format!(
                "{name}: through proxy {}{}",
                proxy.as_deref().unwrap_or("(none for most destinations)"),
                if route.auth.is_some() {
                    " with credentials"
                } else {
                    ""
                }
            ))
        })
        .collect()
    }

    fn route(&self, role: Role) -> &Route {
        match role {
            Role::Push => &self.push,
            Role::Identity => &self.identity,
            Role::Relay => &self.relay,
        }
    }
}

fn current(role: Role) -> Route {
    CURRENT
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|p| p.route(role).clone())
        .unwrap_or_default()
}

fn route(cfg: &EgressConfig, key: &str, problems: &mut Problems) -> Route {
    let auth = cfg.proxy_credentials_file.as_ref().and_then(|file| {
        let key = format!("{key}.proxy_credentials_file");
        match crate::secret::read_secret_file(file) {
            Ok(secret) => basic_auth(secret.expose()).or_else(|| {
                problems.push(&key, "must hold one line `user:password`");
                None
            }),
            Err(e) => {
                problems.push(&key, e);
                None
            }
        }
    });
    let no_proxy = cfg.no_proxy.join(",");
    // `*`: everything direct (hyper-util's `*` covers host names only, not addresses).
    if cfg.no_proxy.iter().any(|n| n.trim() == "*") {
        return Route {
            matcher: None,
            auth,
        };
    }
    let matcher = match &cfg.proxy {
        Some(proxy) => match check_proxy_url(proxy) {
            Ok(()) => Some(
                Matcher::builder()
                    .http(proxy.clone())
                    .https(proxy.clone())
                    .no(no_proxy)
                    .build(),
            ),
            Err(why) => {
                problems.push(format!("{key}.proxy"), why);
                None
            }
        },
        None if cfg.from_environment => {
            let matcher = Matcher::from_env();
            // The environment's proxy is held to the same rules as the config's.
            for probe in [
                "https://egress.probe.invalid/",
                "http://egress.probe.invalid/",
            ] {
                if let Some(i) = probe.parse().ok().and_then(|p: Uri| matcher.intercept(&p))
                    && let Err(why) = check_proxy_url(&i.uri().to_string())
                {
                    problems.push(
                        format!("{key}.from_environment"),
                        format!("the environment's proxy: {why}"),
                    );
                }
            }
            Some(matcher)
        }
        None => None,
    };
    let proxies_something = matcher.as_ref().is_some_and(|m| {
        "https://egress.probe.invalid/"
            .parse()
            .ok()
            .and_then(|p: Uri| m.intercept(&p))
            .is_some()
    });
    if auth.is_some() && !proxies_something {
        problems.push(
            format!("{key}.proxy_credentials_file"),
            "is set but no proxy is (set proxy, or from_environment with HTTPS_PROXY)",
        );
    }
    Route {
        matcher: matcher.map(Arc::new),
        auth,
    }
}

/// `Basic base64(user:password)` from a `user:password` line.
fn basic_auth(line: &[u8]) -> Option<HeaderValue> {
    let text = std::str::from_utf8(line).ok()?.trim_end();
    let (user, _) = text.split_once(':')?;
    if user.is_empty() || text.contains(['\n', '\r']) {
        return None;
    }
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, text);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// A proxy brandgate can tunnel through: `http://host:port`, nothing else.
fn check_proxy_url(text: &str) -> Result<(), String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{text:?}: give the proxy as http://host:port (CONNECT tunnels keep TLS end to end; \
             an https:// proxy is not supported)"
        ));
    }
    match uri.authority() {
        Some(a) if a.as_str().contains('@') => Err(format!(
            "{text:?}: no credentials in the URL; put `user:password` in proxy_credentials_file"
        )),
        Some(a) if a.port_u16().is_some() && !a.host().is_empty() => {
            if uri.path() == "/" || uri.path().is_empty() {
                Ok(())
            } else {
                Err(format!("{text:?}: a proxy URL has no path"))
            }
        }
        _ => Err(format!("{text:?}: give the proxy as http://host:port")),
    }
}

/// Why an outbound connection could not be opened.
pub type ConnectError = Box<dyn std::error::Error + Send + Sync>;

/// A connector for hyper's client: direct, or through the role's proxy, decided per
/// destination when each connection opens.
#[derive(Clone)]
pub struct EgressConnector {
    role: Role,
    http: HttpConnector,
}

impl EgressConnector {
    pub fn new(role: Role) -> EgressConnector {
        // Small requests and answers: Nagle's algorithm would hold a request's last segment
        // until the peer's delayed ACK (tens of milliseconds per call).
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        EgressConnector { role, http }
    }
}

impl Service<Uri> for EgressConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let route = current(self.role);
        let mut http = self.http.clone();
        Box::pin(async move {
            let (proxy, auth) = match way_out(&route, &dst) {
                Some((proxy, auth)) => (Some(proxy), auth),
                None => (None, None),
            };
            tracing::debug!(
                destination = %format!("{}:{}", dst.host().unwrap_or("?"), dst.port_u16().unwrap_or(0)),
                proxy = ?proxy.as_ref().map(ToString::to_string),
                "opening a connection"
            );
            match proxy {
                None => http.call(dst).await.map_err(Into::into),
                Some(proxy) => {
                    let to_proxy = http.call(proxy.clone()).await.map_err(|e| {
                        format!(
                            "cannot connect to the proxy {proxy}: {}",
                            crate::http_client::error_chain(&e)
                        )
                    })?;
                    let stream = tunnel(to_proxy.into_inner(), &dst, auth.as_ref())
                        .await
                        .map_err(|e| format!("proxy {proxy}: {e}"))?;
                    Ok(TokioIo::new(stream))
                }
            }
        })
    }
}

/// The proxy `route` sends `dst` through, with the credentials to give it; `None`: direct.
fn way_out(route: &Route, dst: &Uri) -> Option<(Uri, Option<HeaderValue>)> {
    // Plain http is allowed only to this host's loopback: never through a proxy (the body
    // would cross the network in the clear, to the proxy's own loopback).
    if dst.scheme_str() == Some("http") && dst.host().is_some_and(crate::http_client::is_loopback) {
        return None;
    }
    let intercept = route.matcher.as_ref()?.intercept(dst)?;
    // The file's credentials, else those in the environment's proxy URL.
    let auth = route
        .auth
        .clone()
        .or_else(|| intercept.basic_auth().cloned());
    Some((intercept.uri().clone(), auth))
}

/// Longest a proxy may take to answer a CONNECT, and the most it may say.
const PROXY_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const MAX_PROXY_ANSWER: usize = 8192;

/// Asks the proxy on `stream` for a tunnel to `dst`; the stream is the tunnel once it answers
/// 2xx.
async fn tunnel(
    mut stream: TcpStream,
    dst: &Uri,
    auth: Option<&HeaderValue>,
) -> Result<TcpStream, String> {
    let host = dst.host().ok_or("the destination has no host")?;
    let port = dst
        .port_u16()
        .unwrap_or(if dst.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    let target = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = auth.and_then(|a| a.to_str().ok()) {
        request.push_str("Proxy-Authorization: ");
        request.push_str(auth);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let exchange = async {
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send CONNECT: {e}"))?;
        let mut answer = Vec::with_capacity(256);
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("no answer to CONNECT: {e}"))?;
            if n == 0 {
                return Err("the proxy closed the connection before answering CONNECT".to_string());
            }
            answer.extend_from_slice(&chunk[..n]);
            if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                let more = end + 4 != answer.len();
                return Ok((answer, more));
            }
            if answer.len() > MAX_PROXY_ANSWER {
                return Err(format!(
                    "the proxy's answer to CONNECT is over {MAX_PROXY_ANSWER} bytes"
                ));
            }
        }
    };
    let (answer, more) = tokio::time::timeout(PROXY_ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer to CONNECT within {PROXY_ANSWER_TIMEOUT:?}"))??;
    let status_line = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        // The server speaks only after our TLS hello: nothing may follow a 2xx answer.
        Some(200..=299) if more => {
            Err("the proxy sent more than its answer to CONNECT".to_string())
        }
        Some(200..=299) => Ok(stream),
        Some(407) => Err(format!(
            "the proxy asks for credentials ({status_line}): check proxy_credentials_file"
        )),
        Some(401) if auth.is_some() => Err(format!(
            "the proxy refused the credentials ({status_line}): check proxy_credentials_file"
        )),
        Some(_) => Err(format!("the proxy refused the tunnel ({status_line})")),
        None => Err(format!(
            "the proxy's answer to CONNECT is not HTTP: {status_line:?}"
        )),
    }
}

/// Opens a TCP connection for `role` to `host:port`, directly or through its proxy (the
/// HTTP/2 pools put TLS on it themselves).
pub async fn connect(role: Role, host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let dst: Uri = format!("https://{authority}/").parse()?;
    let io = EgressConnector::new(role).call(dst).await?;
    Ok(io.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_are_http_host_and_port_without_credentials() {
        assert_eq!(check_proxy_url("http://proxy.brand.internal:3128"), Ok(()));
        assert_eq!(check_proxy_url("http://10.0.0.1:8080/"), Ok(()));
        for (url, why) in [
            ("https://proxy:3128", "https:// proxy is not supported"),
            ("http://user:pw@proxy:3128", "proxy_credentials_file"),
            ("http://proxy", "http://host:port"),
            ("http://proxy:3128/path", "no path"),
            ("socks5://proxy:1080", "http://host:port"),
        ] {
            let said = check_proxy_url(url).unwrap_err();
            assert!(said.contains(why), "{url}: {said}");
        }
    }

    #[test]
    fn what_goes_through_the_proxy() {
        let mut problems = Problems::default();
        let cfg = EgressConfig {
            proxy: Some("http://proxy.brand.internal:3128".into()),
            no_proxy: vec![".brand.internal".into(), "10.0.0.0/8".into()],
            ..EgressConfig::default()
        };
        let route = route(&cfg, "egress", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let via = |url: &str| way_out(&route, &url.parse().unwrap()).map(|(p, _)| p.to_string());
        let proxy = Some("http://proxy.brand.internal:3128/".to_string());
        assert_eq!(via("https://api.push.apple.com/3/device/x"), proxy);
        assert_eq!(via("https://127.0.0.1:8443/"), proxy);
        assert_eq!(via("https://idp.brand.internal/jwks"), None);
        assert_eq!(via("https://10.1.2.3/hook"), None);
        // Plain http (loopback only) never leaves the host.
        assert_eq!(via("http://127.0.0.1:9000/hook"), None);
        assert_eq!(via("http://[::1]:9000/hook"), None);
        assert_eq!(via("http://localhost/hook"), None);

        // `*`: nothing through the proxy, addresses included.
        let all_direct = EgressConfig {
            no_proxy: vec!["*".into()],
            ..cfg.clone()
        };
        let route = super::route(&all_direct, "egress", &mut problems);
        assert!(way_out(&route, &"https://10.1.2.3/".parse().unwrap()).is_none());
        assert!(way_out(&route, &"https://api.push.apple.com/".parse().unwrap()).is_none());
    }

    #[test]
    fn credentials_are_one_user_password_line() {
        let value = basic_auth(b"brandgate:s3cret").unwrap();
        assert_eq!(value.to_str().unwrap(), "Basic YnJhbmRnYXRlOnMzY3JldA==");
        assert!(value.is_sensitive());
        assert!(basic_auth(b"no-colon").is_none());
        assert!(basic_auth(b":no-user").is_none());
        assert!(basic_auth(b"a:b\nc:d").is_none());
    }

    /// A proxy that answers each CONNECT with `answer`; returns what `tunnel` made of it and
    /// the request the proxy read.
    async fn through(answer: &'static [u8], auth: Option<&str>) -> (Result<(), String>, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = socket.read(&mut chunk).await.unwrap();
                request.extend_from_slice(&chunk[..n]);
            }
            socket.write_all(answer).await.unwrap();
            String::from_utf8(request).unwrap()
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let dst: Uri = "https://api.push.apple.com/".parse().unwrap();
        let auth = auth.map(|a| HeaderValue::from_str(a).unwrap());
        let made = tunnel(stream, &dst, auth.as_ref()).await.map(|_| ());
        (made, proxy.await.unwrap())
    }

    #[tokio::test]
    async fn a_tunnel_opens_on_2xx_and_each_refusal_says_what_the_proxy_said() {
        let (made, request) = through(
            b"HTTP/1.1 200 Connection established\r\n\r\n",
            Some("Basic dXNlcjpwdw=="),
        )
        .await;
        assert_eq!(made, Ok(()));
        assert_eq!(
            request,
            "CONNECT api.push.apple.com:443 HTTP/1.1\r\nHost: api.push.apple.com:443\r\n\
             Proxy-Authorization: Basic dXNlcjpwdw==\r\n\r\n"
        );
        for (answer, auth, said) in [
            (
                &b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"[..],
                None,
                "the proxy asks for credentials (HTTP/1.1 407 Proxy Authentication Required): check proxy_credentials_file",
            ),
            (
                b"HTTP/1.0 401 Unauthorized\r\nContent-Length: 5\r\n\r\nnope!",
                Some("Basic eDp5"),
                "the proxy refused the credentials (HTTP/1.0 401 Unauthorized): check proxy_credentials_file",
            ),
            (
                b"HTTP/1.1 403 Forbidden\r\n\r\n<html>",
                None,
                "the proxy refused the tunnel (HTTP/1.1 403 Forbidden)",
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\n\x16\x03",
                None,
                "the proxy sent more than its answer to CONNECT",
            ),
            (
                b"SSH-2.0-OpenSSH\r\n\r\n",
                None,
                "the proxy's answer to CONNECT is not HTTP: \"SSH-2.0-OpenSSH\"",
            ),
        ] {
            let (made, _) = through(answer, auth).await;
            assert_eq!(made, Err(said.to_string()));
        }
    }
}
