//! Egress through the brand's HTTP proxy (a real tinyproxy): pushes and the provider's token
//! calls tunnel through it with CONNECT (TLS end to end), with credentials from a file; a
//! proxy that asks for other credentials, one that refuses the tunnel, and one that dies
//! mid-run are each named in the log and cost nothing once mended; `no_proxy` and a role's own
//! `[push.egress]` go direct; the environment's HTTPS_PROXY is used only when asked.

use crate::support::daemon::Daemon;
use crate::support::fake_apns::FakeApns;
use crate::support::fake_fcm::FakeFcm;
use crate::support::proxy::{Proxy, ProxyRules, authority};
use crate::support::{TestEnv, android_push, apns, ios_push, platform_auth};

const IOS: &str = "com.brand.app";
const ANDROID: &str = "com.brand.android";

struct World {
    env: TestEnv,
    daemon: Daemon,
    apns: FakeApns,
    fcm: FakeFcm,
}

impl World {
    /// An iOS app on a fake APNs and an Android app on a fake FCM, with `egress` (TOML that
    /// goes before `[push]`) and `push_extra` (in `[push]`), and `vars` in the environment.
    async fn start(env: TestEnv, egress: &str, push_extra: &str, vars: &[(&str, &str)]) -> World {
        let (apns, key) = apns(IOS).await;
        let fcm = FakeFcm::start("brand-project").await;
        let config = env.config(&format!(
            "{egress}\n[push]\n{push_extra}\n{}{}",
            env.apns_app(IOS, &apns, &key, "", &env.basic_auth(), ""),
            env.fcm_app(ANDROID, &fcm, "", &env.basic_auth()),
        ));
        let daemon = Daemon::start_with_env(env.path(), &config, vars).await;
        World {
            env,
            daemon,
            apns,
            fcm,
        }
    }

    async fn push_ios(&self, token: &str, seq: i64) -> u16 {
        self.push(IOS, &ios_push(token, "hello", "c1", seq)).await
    }

    async fn push_android(&self, token: &str, seq: i64) -> u16 {
        self.push(ANDROID, &android_push(token, "hello", "c2", seq))
            .await
    }

    async fn push(&self, app: &str, body: &serde_json::Value) -> u16 {
        self.env
            .client()
            .post_json(
                &self.daemon.url(&format!("/push/{app}")),
                &[("authorization", &platform_auth())],
                body,
            )
            .await
            .status
    }

    /// `host:port` of the fake providers, as a CONNECT names them.
    fn providers(&self) -> (String, String) {
        (authority(&self.apns.url()), authority(&self.fcm.url()))
    }
}

fn egress(proxy: &Proxy, extra: &str) -> String {
    format!("[egress]\nproxy = \"{}\"\n{extra}\n", proxy.url())
}

#[tokio::test]
async fn pushes_and_token_calls_tunnel_through_the_proxy_with_its_credentials() {
    let env = TestEnv::new();
    let mut proxy = Proxy::start(
        env.path(),
        ProxyRules {
            credentials: Some(("brandgate".into(), "proxy-pass-1".into())),
            ..ProxyRules::default()
        },
    )
    .await;
    let credentials = env.secret("proxy-credentials", "brandgate:proxy-pass-1\n");
    let w = World::start(
        env,
        &egress(
            &proxy,
            &format!("proxy_credentials_file = \"{}\"", credentials.display()),
        ),
        "",
        &[],
    )
    .await;
    assert_eq!(w.push_ios("aa01", 1).await, 200);
    assert_eq!(w.push_android("fcm-token-1", 1).await, 200);
    assert_eq!(w.apns.delivered_to("aa01").len(), 1);
    assert_eq!(w.fcm.delivered_to("fcm-token-1").len(), 1);
    let (apns, fcm) = w.providers();
    let mut tunnels = proxy.stop_and_tunnels().await;
    tunnels.sort();
    tunnels.dedup();
    let mut expected = vec![apns, fcm];
    expected.sort();
    // The APNs pool, and FCM's token call and send (one host): nothing went around the proxy.
    assert_eq!(tunnels, expected);
}

#[tokio::test]
async fn a_proxy_that_wants_other_credentials_is_named_and_nothing_is_lost() {
    let env = TestEnv::new();
    let proxy = Proxy::start(
        env.path(),
        ProxyRules {
            credentials: Some(("brandgate".into(), "the-real-one".into())),
            ..ProxyRules::default()
        },
    )
    .await;
    let credentials = env.secret("proxy-credentials", "brandgate:an-old-one\n");
    let mut w = World::start(
        env,
        &egress(
            &proxy,
            &format!("proxy_credentials_file = \"{}\"", credentials.display()),
        ),
        "",
        &[],
    )
    .await;
    // Not delivered: the platform is told to send it again (5xx), the provider saw nothing.
    assert_eq!(w.push_ios("ab01", 1).await, 500);
    assert!(w.apns.delivered_to("ab01").is_empty());
    // The operator mends the file and reloads: the same push goes through.
    std::fs::write(&credentials, "brandgate:the-real-one\n").unwrap();
    w.daemon.reload().await;
    w.daemon.wait_log("configuration reloaded").await;
    assert_eq!(w.push_ios("ab01", 1).await, 200);
    assert_eq!(w.apns.delivered_to("ab01").len(), 1);
    let log = w.daemon.stop().await;
    assert!(
        log.contains("the proxy refused the credentials (HTTP/1.0 401 Unauthorized): check proxy_credentials_file"),
        "{log}"
    );
    assert!(
        !log.contains("the-real-one") && !log.contains("an-old-one"),
        "{log}"
    );
}

#[tokio::test]
async fn a_proxy_that_refuses_the_tunnel_is_named() {
    let env = TestEnv::new();
    // Tunnels only to 443: the fake providers' ports are refused (403).
    let proxy = Proxy::start(
        env.path(),
        ProxyRules {
            connect_ports: vec![443],
            ..ProxyRules::default()
        },
    )
    .await;
    let mut w = World::start(env, &egress(&proxy, ""), "", &[]).await;
    assert_eq!(w.push_ios("ac01", 1).await, 500);
    assert!(w.apns.delivered_to("ac01").is_empty());
    let log = w.daemon.stop().await;
    assert!(
        log.contains("the proxy refused the tunnel (HTTP/1.1 403 Access violation)"),
        "{log}"
    );
}

#[tokio::test]
async fn a_proxy_that_dies_mid_run_costs_only_the_pushes_sent_while_it_is_down() {
    let env = TestEnv::new();
    let mut proxy = Proxy::start(env.path(), ProxyRules::default()).await;
    let w = World::start(env, &egress(&proxy, ""), "", &[]).await;
    assert_eq!(w.push_ios("ad01", 1).await, 200);
    proxy.kill().await;
    // The tunnel went with it; a new one cannot be opened: not delivered, re-sent later.
    assert_eq!(w.push_ios("ad02", 1).await, 500);
    assert!(w.apns.delivered_to("ad02").is_empty());
    proxy.restart().await;
    // The platform's re-send goes through the proxy again.
    assert_eq!(w.push_ios("ad02", 1).await, 200);
    assert_eq!(w.apns.delivered_to("ad02").len(), 1);
    let (apns, _) = w.providers();
    // (The killed proxy may not have written out its log: its tunnel is not counted.)
    let mut tunnels = proxy.stop_and_tunnels().await;
    tunnels.dedup();
    assert_eq!(tunnels, [apns]);
}

/// Destinations in `no_proxy`, and a role whose own `[push.egress]` says direct, never touch
/// the proxy (here one that nothing answers on, so any use of it would fail the push).
#[tokio::test]
async fn no_proxy_and_a_roles_own_egress_go_direct() {
    let env = TestEnv::new();
    let dead = "[egress]\nproxy = \"http://127.0.0.1:9\"\n";
    let w = World::start(
        env,
        &format!("{dead}no_proxy = [\"localhost\", \"127.0.0.0/8\"]\n"),
        "",
        &[],
    )
    .await;
    assert_eq!(w.push_ios("ae01", 1).await, 200);
    assert_eq!(w.push_android("fcm-token-2", 1).await, 200);

    let env = TestEnv::new();
    let w = World::start(env, dead, "[push.egress]\n", &[]).await;
    assert_eq!(w.push_ios("ae02", 1).await, 200);
    assert_eq!(w.push_android("fcm-token-3", 1).await, 200);
}

/// HTTPS_PROXY in the service's environment is ignored unless the config says
/// `from_environment`; then it is used, and NO_PROXY with it.
#[tokio::test]
async fn the_environment_is_used_only_when_the_config_says_so() {
    // The proxy's files outlive the first daemon's directory.
    let proxy_dir = TestEnv::new();
    let mut proxy = Proxy::start(proxy_dir.path(), ProxyRules::default()).await;
    let env = TestEnv::new();
    let vars = [("HTTPS_PROXY", proxy.url())];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let w = World::start(env, "", "", &vars).await;
    assert_eq!(w.push_ios("af01", 1).await, 200);
    drop(w);

    let env = TestEnv::new();
    let w = World::start(env, "[egress]\nfrom_environment = true\n", "", &vars).await;
    assert_eq!(w.push_ios("af02", 1).await, 200);
    let (apns, _) = w.providers();
    // Only the second daemon's tunnel: the first went direct.
    assert_eq!(proxy.stop_and_tunnels().await, [apns]);
}

#[tokio::test]
async fn check_config_names_each_egress_problem_and_says_where_traffic_goes() {
    let env = TestEnv::new();
    let path = env.file(
        "egress.toml",
        &env.config(
            "[egress]\nproxy = \"https://proxy.brand.internal:3128\"\n\
             [push.egress]\nproxy = \"http://proxy.brand.internal:3128\"\n\
             proxy_credentials_file = \"/nonexistent/proxy-credentials\"\n",
        ),
    );
    let (code, _, err) =
        crate::support::daemon::run(&["check-config", "--config", path.to_str().unwrap()], &[])
            .await;
    assert_eq!(code, 78);
    assert!(
        err.lines()
            .any(|l| l.contains("egress.proxy:") && l.contains("https:// proxy is not supported")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("push.egress.proxy_credentials_file")
                && l.contains("/nonexistent/proxy-credentials")),
        "{err}"
    );
    let credentials = env.secret("proxy-credentials", "brandgate:pw\n");
    // The environment's proxy is held to the config's rules; credentials need a proxy.
    let path = env.file(
        "egress-env.toml",
        &env.config(&format!(
            "[egress]\nfrom_environment = true\nproxy_credentials_file = \"{}\"\n",
            credentials.display()
        )),
    );
    let (code, _, err) = crate::support::daemon::run(
        &["check-config", "--config", path.to_str().unwrap()],
        &[("HTTPS_PROXY", "https://proxy.brand.internal:3128")],
    )
    .await;
    assert_eq!(code, 78);
    assert!(
        err.lines().any(
            |l| l.contains("egress.from_environment: the environment's proxy")
                && l.contains("https:// proxy is not supported")
        ),
        "{err}"
    );
    let (code, _, err) =
        crate::support::daemon::run(&["check-config", "--config", path.to_str().unwrap()], &[])
            .await;
    assert_eq!(code, 78);
    assert!(
        err.lines()
            .any(|l| l.contains("egress.proxy_credentials_file") && l.contains("no proxy is")),
        "{err}"
    );
    let path = env.file(
        "egress-ok.toml",
        &env.config(&format!(
            "[egress]\nproxy = \"http://proxy.brand.internal:3128\"\n\
             proxy_credentials_file = \"{}\"\n",
            credentials.display()
        )),
    );
    let (code, out, err) =
        crate::support::daemon::run(&["check-config", "--config", path.to_str().unwrap()], &[])
            .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "egress push: through proxy http://proxy.brand.internal:3128/ with credentials"
        ),
        "{out}"
    );
}
