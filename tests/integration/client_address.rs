//! Whose request it is, through the real listener: clients on other loopback addresses
//! (127.0.0.2, 127.0.0.3 playing a load balancer), forwarding headers believed only from
//! `server.trusted_proxies`, the PROXY protocol v2 from a trusted balancer, and the account's
//! `allowed_networks` refusing logins, REST calls and sockets from outside (403, audited).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use brandgate::store::Store;
use bytes::Bytes;
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::TestEnv;
use crate::support::client::{Answer, Client};
use crate::support::messaging::{MessagingClient, Side, tcp_from};
use crate::support::relay_world::{ACCOUNT, Relay, config};

/// What a refusal from outside the allowed networks says.
const OUTSIDE: &str = "this account's agents may sign in and work only from its allowed networks; this client address is not in them";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A relay whose `[server]` has `server_extra` and whose `[relay.agents]` has `agents_extra`.
async fn relay(server_extra: &str, agents_extra: &str) -> Relay {
    let mut env = TestEnv::new();
    env.server_extra = server_extra.to_string();
    let config = config(
        &env,
        "1h",
        "",
        &format!("requests_per_second = 1000\n[relay.agents]\n{agents_extra}"),
    );
    Relay::start_on(env, &config).await
}

async fn login(client: &Client, relay: &Relay, password: &str, headers: &[(&str, &str)]) -> Answer {
    client
        .post_json(
            &relay.daemon.url(&format!("/api/account/{ACCOUNT}/login")),
            headers,
            &json!({ "username": "ann", "password": password }),
        )
        .await
}

fn error(a: &Answer) -> String {
    a.json()["error"].as_str().unwrap_or_default().to_string()
}

/// An agent socket at either path, from `local`; its refusal (status, reason) if refused.
async fn agent_socket(
    relay: &Relay,
    local: IpAddr,
    bearer: &str,
    own_path: bool,
) -> Option<(u16, String)> {
    let auth = format!("Bearer {bearer}");
    let (path, authorization) = if own_path {
        ("/ws/agent".to_string(), Some(auth.as_str()))
    } else {
        (
            format!("/ws_api/account/{ACCOUNT}/messaging/brand/{bearer}?v=2.0"),
            None,
        )
    };
    match MessagingClient::connect_from(
        &relay.env.ca.cert_pem,
        Some(local),
        relay.daemon.public,
        &path,
        authorization,
        Side::Agent,
    )
    .await
    {
        Ok(_) => None,
        Err(r) => Some((
            r.status,
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["error"]
                .as_str()
                .unwrap()
                .to_string(),
        )),
    }
}

/// Stops the daemon and opens its embedded store (for the audit).
async fn stop(mut relay: Relay) -> (String, Store, TestEnv) {
    let (log, store) = relay.stop_and_open_store().await;
    (log, store, relay.env)
}

/// The audit's network refusals and successes, oldest first: (outcome, username, source).
async fn audit(store: &Store) -> Vec<(String, String, Option<String>)> {
    let rows = store.list_agent_audit(ACCOUNT, 1000).await.unwrap();
    rows.into_iter()
        .rev()
        .filter(|r| r.outcome != "added")
        .map(|r| (r.outcome, r.username, r.source))
        .collect()
}

#[tokio::test]
async fn outside_the_allowed_networks_logins_rest_calls_and_sockets_are_refused_and_audited() {
    let relay = relay(
        "",
        r#"allowed_networks = ["127.0.0.2/32", "2001:db8::/32"]"#,
    )
    .await;
    let password = relay.add_agent("ann").await;
    let outside = relay.env.client_from(ip("127.0.0.1"));
    let inside = relay.env.client_from(ip("127.0.0.2"));

    // From outside, even the right password: 403 with the reason, whatever headers say.
    let spoofed = [
        ("x-forwarded-for", "127.0.0.2"),
        ("forwarded", "for=127.0.0.2"),
    ];
    let a = login(&outside, &relay, &password, &spoofed).await;
    assert_eq!((a.status, error(&a)), (403, OUTSIDE.to_string()));
    assert!(!a.headers.contains_key("set-cookie"));

    // Inside: a session, usable inside.
    let a = login(&inside, &relay, &password, &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let bearer = a.json()["bearer"].as_str().unwrap().to_string();
    let csrf = a.json()["csrf"].as_str().unwrap().to_string();
    let by_bearer = format!("Bearer {bearer}");
    let workspace = relay.daemon.url("/api/v1/workspace");
    let conversations = relay.daemon.url("/api/v1/conversations");
    let a = inside
        .get_with_headers(&workspace, &[("authorization", &by_bearer)])
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        agent_socket(&relay, ip("127.0.0.2"), &bearer, true).await,
        None
    );

    // The same session from outside: every door refuses it with 403 and the reason.
    let cookie = format!("__Host-brandgate_agent={bearer}");
    let by_cookie = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    for (url, headers) in [
        (&workspace, vec![("authorization", by_bearer.as_str())]),
        (&workspace, by_cookie.to_vec()),
        (&conversations, vec![("authorization", by_bearer.as_str())]),
    ] {
        let a = outside.get_with_headers(url, &headers).await;
        assert_eq!((a.status, error(&a)), (403, OUTSIDE.to_string()), "{url}");
    }
    let refresh = relay.daemon.url(&format!("/api/account/{ACCOUNT}/refresh"));
    let a = outside
        .send(
            http::Method::POST,
            &refresh,
            &[("authorization", &by_bearer)],
            Bytes::new(),
        )
        .await;
    assert_eq!((a.status, error(&a)), (403, OUTSIDE.to_string()));
    for own_path in [true, false] {
        assert_eq!(
            agent_socket(&relay, ip("127.0.0.1"), &bearer, own_path).await,
            Some((403, OUTSIDE.to_string()))
        );
    }
    // Still fine inside: the refusals ended nothing.
    let a = inside
        .get_with_headers(&conversations, &[("authorization", &by_bearer)])
        .await;
    assert_eq!(a.status, 200, "{}", a.body);

    let (_log, store, _env) = stop(relay).await;
    let refused = |user: &str| {
        (
            "network_not_allowed".to_string(),
            user.to_string(),
            Some("127.0.0.1".to_string()),
        )
    };
    let mut expected = vec![
        refused("ann"),
        (
            "success".to_string(),
            "ann".to_string(),
            Some("127.0.0.2".to_string()),
        ),
    ];
    // Three REST calls, the refresh, two sockets: each audited with the session's agent.
    expected.extend(std::iter::repeat_n(refused("ann"), 6));
    assert_eq!(audit(&store).await, expected);
}

#[tokio::test]
async fn a_forged_forwarding_header_from_an_untrusted_peer_changes_nothing() {
    // No trusted proxies: the limits count the peer, whatever it claims to forward.
    let relay = relay("", "login_attempts_per_minute = 3").await;
    relay.add_agent("ann").await;
    let client = relay.env.client_from(ip("127.0.0.1"));
    for n in 0..3 {
        let forged = format!("198.51.100.{n}");
        let a = login(
            &client,
            &relay,
            "wrong password",
            &[("x-forwarded-for", &forged)],
        )
        .await;
        assert_eq!(a.status, 401, "{}", a.body);
    }
    let a = login(
        &client,
        &relay,
        "wrong password",
        &[("x-forwarded-for", "198.51.100.99")],
    )
    .await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(
        error(&a),
        "too many login attempts from this address; try again in a minute"
    );
    // Another address has its own budget.
    let other = relay.env.client_from(ip("127.0.0.2"));
    let a = login(&other, &relay, "wrong password", &[]).await;
    assert_eq!(a.status, 401, "{}", a.body);

    let (_log, store, _env) = stop(relay).await;
    let sources: Vec<Option<String>> = audit(&store).await.into_iter().map(|r| r.2).collect();
    let local = |s: &str| Some(s.to_string());
    assert_eq!(
        sources,
        [
            local("127.0.0.1"),
            local("127.0.0.1"),
            local("127.0.0.1"),
            local("127.0.0.2")
        ]
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_limited_listed_and_audited() {
    let relay = relay(
        r#"trusted_proxies = ["127.0.0.3/32"]"#,
        "login_attempts_per_minute = 2\nallowed_networks = [\"198.51.100.0/24\"]",
    )
    .await;
    let password = relay.add_agent("ann").await;
    let proxy = relay.env.client_from(ip("127.0.0.3"));

    // The proxy appended the real client; what the client wrote to the left is not believed.
    let a = login(
        &proxy,
        &relay,
        &password,
        &[("x-forwarded-for", "203.0.113.9, 198.51.100.7")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = login(
        &proxy,
        &relay,
        &password,
        &[("x-forwarded-for", "198.51.100.7, 203.0.113.9")],
    )
    .await;
    assert_eq!((a.status, error(&a)), (403, OUTSIDE.to_string()));
    // Only the configured header: `Forwarded` is not read in x-forwarded-for mode, and a
    // proxy that names no client is not taken for the client (0.0.0.0: unknown).
    let a = login(
        &proxy,
        &relay,
        &password,
        &[("forwarded", "for=198.51.100.8")],
    )
    .await;
    assert_eq!((a.status, error(&a)), (403, OUTSIDE.to_string()));
    // Bytes the client wrote into its own part of the line spoil nothing after them.
    let spoiled = [("x-forwarded-for", "\u{fc}nkn\u{f6}wn, 198.51.100.20")];
    let a = login(&proxy, &relay, &password, &spoiled).await;
    assert_eq!(a.status, 200, "{}", a.body);

    // Each client behind the proxy has its own login budget (2 a minute): 198.51.100.7
    // used one to sign in.
    let from = |c: &'static str| [("x-forwarded-for", c)];
    for client in ["198.51.100.7", "198.51.100.8", "198.51.100.8"] {
        let a = login(&proxy, &relay, "wrong password", &from(client)).await;
        assert_eq!(a.status, 401, "{client}: {}", a.body);
    }
    for client in ["198.51.100.7", "198.51.100.8"] {
        let a = login(&proxy, &relay, "wrong password", &from(client)).await;
        assert_eq!(a.status, 429, "{client}: {}", a.body);
    }

    // The same header from a peer that is not a trusted proxy is not believed.
    let direct = relay.env.client_from(ip("127.0.0.2"));
    let a = login(&direct, &relay, &password, &from("198.51.100.9")).await;
    assert_eq!((a.status, error(&a)), (403, OUTSIDE.to_string()));

    let (_log, store, _env) = stop(relay).await;
    let s = |o: &str, src: &str| (o.to_string(), "ann".to_string(), Some(src.to_string()));
    assert_eq!(
        audit(&store).await,
        [
            s("success", "198.51.100.7"),
            s("network_not_allowed", "203.0.113.9"),
            s("network_not_allowed", "0.0.0.0"),
            s("success", "198.51.100.20"),
            s("wrong_password", "198.51.100.7"),
            s("wrong_password", "198.51.100.8"),
            s("wrong_password", "198.51.100.8"),
            s("network_not_allowed", "127.0.0.2"),
        ]
    );
}

#[tokio::test]
async fn in_forwarded_mode_only_the_standard_header_is_read() {
    let relay = relay(
        "trusted_proxies = [\"127.0.0.3/32\"]\nclient_address_header = \"forwarded\"",
        r#"allowed_networks = ["2001:db8:cafe::/48"]"#,
    )
    .await;
    let password = relay.add_agent("ann").await;
    let proxy = relay.env.client_from(ip("127.0.0.3"));
    let a = login(
        &proxy,
        &relay,
        &password,
        &[(
            "forwarded",
            "for=192.0.2.1, for=\"[2001:db8:cafe::17]:4711\";proto=https",
        )],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = login(
        &proxy,
        &relay,
        &password,
        &[("x-forwarded-for", "2001:db8:cafe::17")],
    )
    .await;
    assert_eq!((a.status, error(&a)), (403, OUTSIDE.to_string()));
    let (_log, store, _env) = stop(relay).await;
    let sources: Vec<Option<String>> = audit(&store).await.into_iter().map(|r| r.2).collect();
    assert_eq!(
        sources,
        [
            Some("2001:db8:cafe::17".to_string()),
            Some("0.0.0.0".to_string())
        ]
    );
}

#[tokio::test]
async fn sign_ups_behind_a_trusted_proxy_are_counted_per_client() {
    let mut env = TestEnv::new();
    env.server_extra = r#"trusted_proxies = ["127.0.0.3/32"]"#.into();
    let store = env.store_section(&crate::support::identity_world::data_key_line("k1"), "");
    let config = env.config(&format!(
        "{store}[identity.anonymous]\nenabled = true\nper_minute = 2\n"
    ));
    let mut daemon = crate::support::daemon::Daemon::start(env.path(), &config).await;
    let proxy = env.client_from(ip("127.0.0.3"));
    let signup = |client: &Client, forwarded: &'static str| {
        let client = client.clone();
        let url = daemon.url("/identity/v1/signup");
        async move {
            client
                .send(
                    http::Method::POST,
                    &url,
                    &[("x-forwarded-for", forwarded)],
                    Bytes::new(),
                )
                .await
        }
    };
    for _ in 0..2 {
        assert_eq!(signup(&proxy, "198.51.100.1").await.status, 200);
    }
    let a = signup(&proxy, "198.51.100.1").await;
    assert_eq!(
        (a.status, error(&a)),
        (
            429,
            "too many sign-ups from this address; retry later".to_string()
        )
    );
    assert_eq!(signup(&proxy, "198.51.100.2").await.status, 200);
    // A peer that is not trusted is one client, whatever it forwards.
    let direct = env.client_from(ip("127.0.0.2"));
    for forwarded in ["198.51.100.3", "198.51.100.4"] {
        assert_eq!(signup(&direct, forwarded).await.status, 200);
    }
    assert_eq!(signup(&direct, "198.51.100.5").await.status, 429);
    daemon.stop().await;
}

/// A raw HTTP/1.1 login over TLS on `tcp` (after whatever was written to it), with the
/// header lines `headers`; the status and body, or `None` when the connection was closed
/// before an answer.
async fn raw_login(
    relay: &Relay,
    mut tcp: tokio::net::TcpStream,
    preamble: &[u8],
    password: &str,
    headers: &str,
) -> Option<(u16, String)> {
    tcp.write_all(preamble).await.unwrap();
    let mut tls = MessagingClient::tls(&relay.env.ca.cert_pem);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let mut stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .ok()?;
    let body = json!({ "username": "ann", "password": password }).to_string();
    let request = format!(
        "POST /api/account/{ACCOUNT}/login HTTP/1.1\r\nhost: localhost\r\n{headers}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((status, body))
}

#[tokio::test]
async fn a_trusted_balancer_gives_the_client_address_with_the_proxy_protocol() {
    let relay = relay(
        "trusted_proxies = [\"127.0.0.3/32\", \"10.0.0.0/8\"]\nproxy_protocol = true",
        r#"allowed_networks = ["198.51.100.0/24"]"#,
    )
    .await;
    let password = relay.add_agent("ann").await;
    let server = relay.daemon.public;
    let header = |source: &str| {
        brandgate::proxy_protocol::encode(source.parse::<SocketAddr>().unwrap(), server)
    };
    let balancer = || tcp_from(Some(ip("127.0.0.3")), server);

    // The status of a login through the balancer, which sends `preamble`, with `headers`.
    let through_balancer = |preamble: Vec<u8>, headers: &'static str| {
        let (relay, password) = (&relay, &password);
        async move {
            let tcp = balancer().await;
            let answer = raw_login(relay, tcp, &preamble, password, headers).await;
            let (status, body) = answer.expect("an answer");
            (status, body)
        }
    };
    let (status, body) = through_balancer(header("198.51.100.7:40000"), "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = through_balancer(header("203.0.113.5:40000"), "").await;
    assert_eq!(status, 403, "{body}");
    // Behind the balancer every header is the client's own: not read, even from a client
    // whose address is a trusted one.
    let xff = "x-forwarded-for: 198.51.100.7\r\n";
    let (status, body) = through_balancer(header("10.1.2.3:40000"), xff).await;
    assert_eq!(status, 403, "{body}");
    // LOCAL (a health check) names no client: not the balancer's address, an unknown one.
    let local = [&b"\r\n\r\n\0\r\nQUIT\n"[..], &[0x20, 0, 0, 0]].concat();
    let (status, body) = through_balancer(local, "").await;
    assert_eq!(status, 403, "{body}");
    // The balancer must send the header: without it the connection is closed unanswered.
    assert_eq!(
        raw_login(&relay, balancer().await, b"", &password, "").await,
        None
    );
    // A direct client is not read for a header, and is itself the client.
    let direct = tcp_from(Some(ip("127.0.0.2")), server).await;
    let (status, body) = raw_login(&relay, direct, b"", &password, "")
        .await
        .expect("an answer");
    assert_eq!(status, 403, "{body}");
    // A header from a peer that is not trusted is not read: its TLS handshake fails.
    let direct = tcp_from(Some(ip("127.0.0.2")), server).await;
    assert_eq!(
        raw_login(&relay, direct, &header("198.51.100.7:1"), &password, "").await,
        None
    );

    let (log, store, _env) = stop(relay).await;
    let sources: Vec<Option<String>> = audit(&store).await.into_iter().map(|r| r.2).collect();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        sources,
        [
            s("198.51.100.7"),
            s("203.0.113.5"),
            s("10.1.2.3"),
            s("0.0.0.0"),
            s("127.0.0.2")
        ]
    );
    assert!(
        log.contains("a trusted proxy's connection was closed")
            && log.contains("did not start with a PROXY protocol v2 header"),
        "{log}"
    );
}
