//! The daemon's life under systemd: notifications and the watchdog, reload on SIGHUP (also under
//! load, also with a bad config, also to replace a provider credential), draining on SIGTERM,
//! the TLS versions it speaks, the development certificate, the ops endpoints, and what its logs
//! must never contain.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::client::Client;
use crate::support::daemon::{Daemon, describe};
use crate::support::fake::Behaviour;
use crate::support::fake_apns::FakeApns;
use crate::support::fake_fcm::FakeFcm;
use crate::support::pki::{ApnsKey, ServiceAccount};
use crate::support::{TestEnv, android_push, apns, ios_push, platform_auth};

const APP: &str = "com.brand.app";

fn app_config(
    env: &TestEnv,
    fake: &FakeApns,
    key: &ApnsKey,
    mask: &str,
    push_extra: &str,
) -> String {
    env.config(&format!(
        "[push]\n{push_extra}\n{}",
        env.apns_app(
            APP,
            fake,
            key,
            &format!("mask_text = \"{mask}\""),
            &env.basic_auth(),
            ""
        )
    ))
}

async fn push(env: &TestEnv, daemon: &Daemon, token: &str, seq: i64) -> u16 {
    env.client()
        .post_json(
            &daemon.url(&format!("/push/{APP}")),
            &[("authorization", &platform_auth())],
            &ios_push(token, "secret text", "c", seq),
        )
        .await
        .status
}

#[tokio::test]
async fn systemd_notifications_and_watchdog() {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    // WatchdogSec=2s: systemd kills a service whose pings are more than 2 s apart.
    let interval = Duration::from_secs(2);
    let mut daemon = Daemon::start_with_env(
        env.path(),
        &app_config(&env, &fake, &key, "m", ""),
        &[("WATCHDOG_USEC", &interval.as_micros().to_string())],
    )
    .await;
    let ready = &daemon.notifications()[0];
    assert!(
        ready.contains("READY=1") && ready.contains("STATUS=listening on https://"),
        "{ready}"
    );
    // Pinged at half the interval, so one late ping is not yet a kill: consecutive pings come
    // at most 0.6 of the interval apart (0.5 plus room for scheduling on a loaded machine).
    // Each wait is bounded by the daemon helper.
    let mut pings = Vec::new();
    for _ in 0..5 {
        pings.push(daemon.wait_notification_timed("WATCHDOG=1").await.0);
    }
    let limit = interval.mul_f64(0.6);
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap <= limit,
            "watchdog pings {gap:?} apart (limit {limit:?})"
        );
    }
    daemon.signal(libc::SIGHUP);
    let reloading = daemon.wait_notification("RELOADING=1").await;
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    daemon.wait_notification("READY=1").await;
    daemon.signal(libc::SIGTERM);
    daemon.wait_notification("STOPPING=1").await;
    let status = daemon.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{}", describe(status));
}

#[tokio::test]
async fn reload_applies_a_new_config_and_refuses_a_bad_one() {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let mut daemon =
        Daemon::start(env.path(), &app_config(&env, &fake, &key, "First mask", "")).await;
    assert_eq!(push(&env, &daemon, "aa01", 1).await, 200);
    assert_eq!(
        fake.delivered_to("aa01")[0].body["aps"]["alert"],
        "First mask"
    );

    daemon.rewrite_config(&app_config(&env, &fake, &key, "Second mask", ""));
    daemon.reload().await;
    assert_eq!(push(&env, &daemon, "aa02", 2).await, 200);
    assert_eq!(
        fake.delivered_to("aa02")[0].body["aps"]["alert"],
        "Second mask"
    );
    // The APNs client was carried over, provider token included (re-signing on every reload
    // could trip Apple's TooManyProviderTokenUpdates).
    let bearer = |token: &str| fake.delivered_to(token)[0].headers["authorization"].clone();
    assert_eq!(bearer("aa01"), bearer("aa02"));

    // A config naming a key file that does not exist is refused; the running one stays.
    let broken = app_config(&env, &fake, &key, "Third mask", "")
        .replace("apns-com.brand.app.p8", "missing.p8");
    daemon.rewrite_config(&broken);
    daemon.reload().await;
    let logs = daemon.wait_log("reload refused").await;
    assert!(logs.contains("missing.p8"), "{logs}");
    assert_eq!(push(&env, &daemon, "aa03", 3).await, 200);
    assert_eq!(
        fake.delivered_to("aa03")[0].body["aps"]["alert"],
        "Second mask"
    );
    // Still ready (the running configuration serves), and the refusal is there to see.
    let ready = env.client().get(&daemon.ops_url("/readyz")).await;
    assert_eq!(ready.status, 200);
    assert_eq!(
        ready.json()["checks"]["config"],
        serde_json::json!({"last_reload": "refused", "problems": 1}),
        "{}",
        ready.body
    );
    let m = env.client().get(&daemon.ops_url("/metrics")).await.body;
    for line in [
        "brandgate_config_reload_total{outcome=\"applied\"} 1",
        "brandgate_config_reload_total{outcome=\"refused\"} 1",
        "brandgate_config_last_success_timestamp_seconds ",
    ] {
        assert!(m.contains(line), "missing {line} in\n{m}");
    }
}

/// `brandgate reload` (the unit's ExecReload=) waits for the outcome: success when applied,
/// failure naming every problem when refused, so `systemctl reload` does not report success
/// for a configuration that was not taken.
#[tokio::test]
async fn the_reload_command_reports_what_became_of_the_reload() {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let runtime = env.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let runtime_var = runtime.to_str().unwrap();
    let daemon = Daemon::start_with_env(
        env.path(),
        &app_config(&env, &fake, &key, "First mask", ""),
        &[("RUNTIME_DIRECTORY", runtime_var)],
    )
    .await;
    let pid = daemon.pid().to_string();
    let reload = |vars: Vec<(&'static str, String)>| {
        let pid = pid.clone();
        async move {
            let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
            crate::support::daemon::run(&["reload", "--pid", &pid, "--timeout", "20s"], &vars).await
        }
    };
    let with_dir = || vec![("RUNTIME_DIRECTORY", runtime_var.to_string())];

    daemon.rewrite_config(&app_config(&env, &fake, &key, "Second mask", ""));
    let (code, out, err) = reload(with_dir()).await;
    assert_eq!((code, out.trim()), (0, "configuration reloaded"), "{err}");
    assert_eq!(push(&env, &daemon, "bb01", 1).await, 200);
    assert_eq!(
        fake.delivered_to("bb01")[0].body["aps"]["alert"],
        "Second mask"
    );

    let broken = app_config(&env, &fake, &key, "Third mask", "")
        .replace("apns-com.brand.app.p8", "missing.p8");
    daemon.rewrite_config(&broken);
    let (code, out, err) = reload(with_dir()).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("reload refused; the running configuration stays"),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("token_key_file") && l.contains("missing.p8")),
        "{err}"
    );
    assert_eq!(push(&env, &daemon, "bb02", 2).await, 200);
    assert_eq!(
        fake.delivered_to("bb02")[0].body["aps"]["alert"],
        "Second mask"
    );

    // Mended, reloaded again: applied.
    daemon.rewrite_config(&app_config(&env, &fake, &key, "Fourth mask", ""));
    let (code, _, err) = reload(with_dir()).await;
    assert_eq!(code, 0, "{err}");
    // The status (it may name files and URLs) is the service user's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(runtime.join("reload-status"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A pid that would signal a process group (0) or everything (-1), or init, is refused.
    for pid in ["0", "-1", "1"] {
        let (code, _, err) = crate::support::daemon::run(
            &["reload", &format!("--pid={pid}")],
            &[("RUNTIME_DIRECTORY", runtime_var)],
        )
        .await;
        assert_eq!(code, 2, "{pid}: {err}");
        assert!(err.contains("invalid value"), "{pid}: {err}");
    }

    // Without a runtime directory it says how to give one; with a directory no daemon writes
    // to, it says so and sends nothing.
    let (code, _, err) = reload(vec![]).await;
    assert_eq!(code, 1);
    assert!(err.contains("RuntimeDirectory=brandgate"), "{err}");
    let elsewhere = env.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let (code, _, err) = reload(vec![(
        "RUNTIME_DIRECTORY",
        elsewhere.to_str().unwrap().to_string(),
    )])
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("is brandgate running with this runtime directory"),
        "{err}"
    );
    let m = env.client().get(&daemon.ops_url("/metrics")).await.body;
    for line in [
        "brandgate_config_reload_total{outcome=\"applied\"} 2",
        "brandgate_config_reload_total{outcome=\"refused\"} 1",
    ] {
        assert!(m.contains(line), "missing {line} in\n{m}");
    }
}

#[tokio::test]
async fn reload_under_load_drops_nothing() {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let mut daemon = Daemon::start(env.path(), &app_config(&env, &fake, &key, "mask 0", "")).await;
    // Some pushes take long enough to be in flight across a reload.
    for i in 0..10 {
        fake.script(
            &format!("bb{i:02}"),
            vec![Behaviour::Delay(
                Duration::from_millis(300),
                Box::new(Behaviour::Ok),
            )],
        );
    }
    let url = daemon.url(&format!("/push/{APP}"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        // Two workers on HTTP/2, two on HTTP/1.1 keep-alive connections.
        let client = if w % 2 == 0 {
            env.client()
        } else {
            Client::http1(&env.ca.cert_pem)
        };
        let (url, stop, sent) = (url.clone(), stop.clone(), sent.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = 0i64;
            // Bounded: at most 400 pushes per worker.
            while !stop.load(Ordering::SeqCst) && i < 400 {
                let token = format!("bb{:02}", (w as i64 * 1000 + i) % 50);
                let body = ios_push(&token, "x", &format!("w{w}"), i);
                match client
                    .try_send(
                        http::Method::POST,
                        &url,
                        &[
                            ("authorization", &platform_auth()),
                            ("content-type", "application/json"),
                        ],
                        bytes::Bytes::from(body.to_string()),
                    )
                    .await
                {
                    Ok(a) if a.status == 200 => {}
                    Ok(a) => failures.push(format!("{} {}", a.status, a.body)),
                    Err(e) => failures.push(e),
                }
                sent.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
            failures
        }));
    }
    for r in 1..=5 {
        // Let load build up between reloads (bounded wait).
        let target = sent.load(Ordering::SeqCst) + 30;
        for _ in 0..500 {
            if sent.load(Ordering::SeqCst) >= target {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        daemon.rewrite_config(&app_config(&env, &fake, &key, &format!("mask {r}"), ""));
        daemon.reload().await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(failures.is_empty(), "{failures:?}");
    let total = sent.load(Ordering::SeqCst);
    assert!(total >= 150, "too little load: {total}");
    assert_eq!(
        fake.received().iter().filter(|r| r.answered == 200).count(),
        total
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_pushes_then_exits_cleanly() {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let mut daemon = Daemon::start(env.path(), &app_config(&env, &fake, &key, "m", "")).await;
    fake.script(
        "cc01",
        vec![Behaviour::Delay(
            Duration::from_millis(1500),
            Box::new(Behaviour::Ok),
        )],
    );
    let client = env.client();
    let url = daemon.url(&format!("/push/{APP}"));
    let in_flight = tokio::spawn(async move {
        client
            .post_json(
                &url,
                &[("authorization", &platform_auth())],
                &ios_push("cc01", "x", "c", 1),
            )
            .await
    });
    daemon.wait_in_flight(1).await;
    daemon.signal(libc::SIGTERM);
    daemon.wait_notification("STOPPING=1").await;
    // While connections finish, the ops listener still answers: not ready, draining.
    let ready = env.client().get(&daemon.ops_url("/readyz")).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.json()["draining"], true);
    let answer = in_flight.await.unwrap();
    assert_eq!(
        answer.status, 200,
        "the in-flight push completes: {}",
        answer.body
    );
    let status = daemon.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{}", describe(status));
    assert_eq!(fake.delivered_to("cc01").len(), 1);
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(daemon.public).await.is_err());
}

/// A push goes on when its caller hangs up, so that the platform's re-send is answered as a
/// duplicate instead of reaching the phone twice; SIGTERM must then wait for that push too, not
/// only for the connections still open.
#[tokio::test]
async fn sigterm_waits_for_a_push_whose_caller_hung_up() {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let mut daemon = Daemon::start(env.path(), &app_config(&env, &fake, &key, "m", "")).await;
    fake.script(
        "cf01",
        vec![Behaviour::Delay(
            Duration::from_secs(3),
            Box::new(Behaviour::Ok),
        )],
    );
    // An HTTP/2 connection of our own, so that hanging up is a real close of the socket.
    let mut tls = crate::support::client::tls_config(&env.ca.cert_pem, None);
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(daemon.public).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(connection);
    let request = http::Request::post(daemon.url(&format!("/push/{APP}")))
        .header("authorization", platform_auth())
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            ios_push("cf01", "x", "c", 1).to_string(),
        )))
        .unwrap();
    let caller = tokio::spawn(async move { sender.send_request(request).await });
    daemon.wait_in_flight(1).await;
    // The caller hangs up: the connection's task ends, which closes the socket.
    caller.abort();
    driver.abort();
    let _ = driver.await;

    let logs = daemon.stop().await;
    assert_eq!(
        fake.delivered_to("cf01").len(),
        1,
        "the push reached APNs before the exit"
    );
    assert!(
        logs.contains("push delivered"),
        "the push finished before the exit:\n{logs}"
    );
}

#[tokio::test]
async fn the_grace_period_bounds_the_drain() {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    // Set through the environment, as an operator's drop-in would.
    let config = app_config(&env, &fake, &key, "m", "");
    let mut daemon = Daemon::start_with_env(
        env.path(),
        &config,
        &[("BRANDGATE_SERVER__SHUTDOWN_GRACE", "500ms")],
    )
    .await;
    fake.script(
        "cd01",
        vec![Behaviour::Delay(
            Duration::from_secs(6),
            Box::new(Behaviour::Ok),
        )],
    );
    let client = env.client();
    let url = daemon.url(&format!("/push/{APP}"));
    let _stuck = tokio::spawn(async move {
        client
            .post_json(
                &url,
                &[("authorization", &platform_auth())],
                &ios_push("cd01", "x", "c", 1),
            )
            .await
    });
    daemon.wait_in_flight(1).await;
    let started = std::time::Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{}", describe(status));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    daemon.wait_log("grace period over").await;
}

#[tokio::test]
async fn tls_1_2_and_1_3_only() {
    let env = TestEnv::new();
    let daemon = Daemon::start(env.path(), &env.config("")).await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        brandgate::tls::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(env.ca.cert_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_protocol_versions(&[version])
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = Client::build(tls, crate::support::client::Protocols::Negotiated);
        let a = client.get(&daemon.url("/push/x")).await;
        assert_eq!(a.status, 405, "{version:?}");
        assert_eq!(a.version, http::Version::HTTP_2, "h2 by ALPN");
    }
    // HTTP/1.1 clients are served too.
    let a = Client::http1(&env.ca.cert_pem)
        .get(&daemon.url("/push/x"))
        .await;
    assert_eq!(a.version, http::Version::HTTP_11);

    // A TLS 1.1 ClientHello is answered with a protocol_version alert.
    let mut tcp = tokio::net::TcpStream::connect(daemon.public).await.unwrap();
    tcp.write_all(&tls11_client_hello()).await.unwrap();
    let mut answer = [0u8; 7];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], 0x15, "an alert record: {answer:?}");
    assert_eq!(&answer[5..], &[2, 70], "fatal protocol_version: {answer:?}");
}

/// A ClientHello offering only TLS 1.1, otherwise acceptable to rustls (shared cipher suites,
/// signature algorithms and groups), so nothing but the version can be refused.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    // ECDHE-ECDSA/RSA-AES128-GCM-SHA256.
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let extensions: Vec<u8> = [
        // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
        &[
            0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01,
        ][..],
        // supported_groups: x25519, secp256r1
        &[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17],
        // ec_point_formats: uncompressed
        &[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00],
    ]
    .concat();
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![0x01, 0, 0, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn a_development_certificate_is_generated_when_none_is_configured() {
    let env = TestEnv::new();
    let state = env.path().join("state");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n[ops]\nlisten = \"127.0.0.1:0\"\n",
        state.display()
    );
    let daemon = Daemon::start(env.path(), &config).await;
    daemon
        .wait_log("generated a self-signed development certificate")
        .await;
    let cert = std::fs::read_to_string(state.join("dev-tls/cert.pem")).unwrap();
    // The certificate served is the one on disk: trusting exactly it, the handshake succeeds.
    let a = Client::new(&cert).get(&daemon.url("/push/x")).await;
    assert_eq!(a.status, 405);
    drop(daemon);
    let again = Daemon::start(env.path(), &config).await;
    again
        .wait_log("using a self-signed development certificate")
        .await;
    assert_eq!(
        std::fs::read_to_string(state.join("dev-tls/cert.pem")).unwrap(),
        cert
    );
}

/// The README's first command: `serve` on the shipped config, with only the addresses and the
/// state directory overridden through the environment. It must become ready on its own,
/// generating its development certificate and (the identity bridge is on as shipped) its store
/// and signing key.
#[tokio::test]
async fn the_shipped_config_serves_as_the_readme_says() {
    let env = TestEnv::new();
    let state = env.path().join("state");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/brandgate.toml");
    let mut daemon = Daemon::start_with_config_file(
        env.path(),
        &shipped,
        &[
            ("BRANDGATE_SERVER__LISTEN", "127.0.0.1:0"),
            ("BRANDGATE_OPS__LISTEN", "127.0.0.1:0"),
            ("BRANDGATE_SERVER__STATE_DIR", state.to_str().unwrap()),
        ],
    )
    .await;
    let ready = Client::http1("").get(&daemon.ops_url("/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json()["ready"], true, "{}", ready.body);
    daemon
        .wait_log("generated a self-signed development certificate")
        .await;
    // The generated certificate is the one served: trusting exactly it, the handshake works.
    let cert = std::fs::read_to_string(state.join("dev-tls/cert.pem")).unwrap();
    let client = Client::new(&cert);
    assert_eq!(client.get(&daemon.url("/push/x")).await.status, 405);
    let jwks = client.get(&daemon.url("/.well-known/jwks.json")).await;
    assert_eq!(jwks.status, 200, "{}", jwks.body);
    assert_eq!(jwks.json()["keys"].as_array().map(Vec::len), Some(1));
    daemon.stop().await;
}

#[tokio::test]
async fn ops_endpoints() {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let daemon = Daemon::start(env.path(), &app_config(&env, &fake, &key, "m", "")).await;
    assert_eq!(push(&env, &daemon, "dd01", 1).await, 200);
    let client = env.client();
    let h = client.get(&daemon.ops_url("/healthz")).await;
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    let r = client.get(&daemon.ops_url("/readyz")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["ready"], true);
    assert_eq!(r.json()["checks"]["push"]["apps"], 1);
    let m = client.get(&daemon.ops_url("/metrics")).await;
    assert!(
        m.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    for family in [
        "brandgate_push_requests_total{app=\"com.brand.app\",status=\"200\"} 1",
        "brandgate_push_deliveries_total{app=\"com.brand.app\",provider=\"apns\",outcome=\"delivered\",reason=\"ok\"} 1",
        "brandgate_push_provider_latency_seconds_bucket",
        "brandgate_push_in_flight 0",
        "brandgate_push_pool_connections_open{app=\"com.brand.app\",provider=\"apns\"} 1",
        "brandgate_push_pool_connects_total{app=\"com.brand.app\",provider=\"apns\"} 1",
    ] {
        assert!(m.body.contains(family), "missing {family} in\n{}", m.body);
    }
    // Requests for unknown apps are counted under one label, whatever the path says.
    let _ = client
        .post_json(
            &daemon.url("/push/random-1"),
            &[],
            &ios_push("dd02", "x", "c", 1),
        )
        .await;
    let m = client.get(&daemon.ops_url("/metrics")).await.body;
    assert!(m.contains("app=\"unknown\",status=\"404\""), "{m}");
    assert!(!m.contains("random-1"));

    // What build this is, in the metrics and in `--version`, from the same facts.
    let (_, long_version, _) = crate::support::daemon::run(&["--version"], &[]).await;
    let fact = |name: &str| {
        long_version
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {long_version}"))
            .to_string()
    };
    assert!(long_version.starts_with(&format!("brandgate {}\n", env!("CARGO_PKG_VERSION"))));
    for name in ["built", "target"] {
        assert_ne!(fact(name), "", "{long_version}");
    }
    let info = format!(
        "brandgate_build_info{{version=\"{}\",commit=\"{}\",rustc=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        fact("commit"),
        fact("compiler"),
    );
    assert!(m.contains(&info), "missing {info} in\n{m}");
    // The process, read from /proc: the daemon's own start time is within this test's run.
    let started = m
        .lines()
        .find_map(|l| l.strip_prefix("process_start_time_seconds "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no process_start_time_seconds in\n{m}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now + 1.0 && started > now - 120.0,
        "{started} vs {now}"
    );
    let expiry = format!(
        "brandgate_tls_certificate_expiry_timestamp_seconds {}",
        crate::support::pki::not_after(env.server_cert())
    );
    assert!(
        m.lines().any(|l| l == expiry || l == format!("{expiry}.0")),
        "missing {expiry} in\n{m}"
    );
    for family in [
        "# TYPE process_cpu_seconds counter",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
    ] {
        assert!(m.contains(family), "missing {family} in\n{m}");
    }
}

#[tokio::test]
async fn logs_never_hold_text_tokens_or_secrets() {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let config = env.config(&env.apns_app(APP, &fake, &key, "", &env.basic_auth(), ""));
    let mut daemon = Daemon::start(env.path(), &config).await;
    let token = "feedfacecafebeef0123456789abcdef";
    let text = "The-Real-Message-Text-4711";
    fake.script(
        "deadbeef99887766",
        vec![crate::support::fake_apns::gone("Unregistered", 1)],
    );
    let client = env.client();
    let url = daemon.url(&format!("/push/{APP}"));
    for (t, s) in [(token, 1), ("deadbeef99887766", 2)] {
        client
            .post_json(
                &url,
                &[("authorization", &platform_auth())],
                &ios_push(t, text, "c", s),
            )
            .await;
    }
    client
        .post_json(
            &url,
            &[("authorization", "Basic cGxhdGZvcm06bm9wZQ==")],
            &ios_push(token, text, "c", 3),
        )
        .await;
    let logs = daemon.stop().await;
    let jwt_seen = fake.received()[0].headers["authorization"]
        .to_str()
        .unwrap()
        .trim_start_matches("bearer ")
        .to_string();
    for secret in [
        text,
        token,
        "deadbeef99887766",
        crate::support::PLATFORM_PASSWORD,
        "cGxhdGZvcm06bm9wZQ",
        jwt_seen.as_str(),
        key.p8_pem.lines().nth(1).unwrap(),
    ] {
        assert!(!logs.contains(secret), "the log holds {secret:?}:\n{logs}");
    }
    // What the log does say: a shortened token and the reason.
    assert!(
        logs.contains("deadbeef…#") && logs.contains("Unregistered"),
        "{logs}"
    );
    assert!(logs.lines().all(|l| !l.is_empty()), "one event per line");
}

#[tokio::test]
async fn reload_picks_up_a_new_certificate_for_new_connections() {
    let env = TestEnv::new();
    let mut daemon = Daemon::start(env.path(), &env.config("")).await;
    let old_client = env.client();
    assert_eq!(old_client.get(&daemon.url("/push/x")).await.status, 405);

    // The operator renews the certificate in place (another CA, to tell them apart) and reloads.
    let renewed = crate::support::pki::TestCa::new("renewed CA");
    renewed.server().write(env.path(), "server");
    daemon.reload().await;

    let a = Client::new(&renewed.cert_pem)
        .get(&daemon.url("/push/x"))
        .await;
    assert_eq!(a.status, 405, "new connections get the new certificate");
    let stale = Client::new(&env.ca.cert_pem)
        .try_send(
            http::Method::GET,
            &daemon.url("/push/x"),
            &[],
            bytes::Bytes::new(),
        )
        .await;
    // The client refuses the new certificate (issued by a CA it does not trust).
    let e = stale.unwrap_err();
    assert!(
        e.contains("invalid peer certificate"),
        "the old certificate is no longer served: {e}"
    );
    // The connection opened before the reload still works.
    assert_eq!(old_client.get(&daemon.url("/push/y")).await.status, 405);
}

#[tokio::test]
async fn reload_reads_credentials_again() {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let mut daemon = Daemon::start(env.path(), &app_config(&env, &fake, &key, "m", "")).await;
    assert_eq!(push(&env, &daemon, "ee01", 1).await, 200);
    // The operator rotates the platform's password; the config file itself does not change.
    env.secret("platform-password", "a-new-password\n");
    daemon.reload().await;
    assert_eq!(
        push(&env, &daemon, "ee01", 2).await,
        401,
        "the old password is refused"
    );
    let a = env
        .client()
        .post_json(
            &daemon.url(&format!("/push/{APP}")),
            &[(
                "authorization",
                &crate::support::client::basic(crate::support::PLATFORM_USER, "a-new-password"),
            )],
            &ios_push("ee01", "x", "c", 3),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

/// The operator put the wrong `.p8` key in place; APNs refuses it. Fixing the file and reloading
/// (no restart) builds the APNs client again from the new key.
#[tokio::test]
async fn reload_replaces_a_refused_apns_key() {
    let env = TestEnv::new();
    let (fake, right) = apns(APP).await;
    let wrong = ApnsKey::new();
    let mut daemon = Daemon::start(env.path(), &app_config(&env, &fake, &wrong, "m", "")).await;
    let url = daemon.url(&format!("/push/{APP}"));
    let push = |seq| {
        let (client, url) = (env.client(), url.clone());
        async move {
            client
                .post_json(
                    &url,
                    &[("authorization", &platform_auth())],
                    &ios_push("ef01", "x", "c", seq),
                )
                .await
        }
    };
    let refused = push(1).await;
    assert_eq!(refused.status, 500, "{}", refused.body);
    assert_eq!(refused.json()["reason"], "InvalidProviderToken");

    // Same path, right content; the config file itself does not change.
    env.secret(&format!("apns-{APP}.p8"), &right.p8_pem);
    daemon.reload().await;
    daemon.wait_log("configuration reloaded").await;
    let delivered = push(2).await;
    assert_eq!(delivered.status, 200, "{}", delivered.body);
    assert_eq!(fake.delivered_to("ef01").len(), 1);
    let ready = env.client().get(&daemon.ops_url("/readyz")).await.json();
    assert_eq!(ready["checks"]["push"]["degraded"], serde_json::json!({}));
}

/// The same for FCM: a service-account file with the wrong key is refused by the token
/// endpoint; the fixed file is used after a reload.
#[tokio::test]
async fn reload_replaces_a_refused_fcm_service_account() {
    const FCM_APP: &str = "com.brand.android";
    const TOKEN: &str = "fcm-registration-token-ef02";
    let env = TestEnv::new();
    let fake = FakeFcm::start("brand-app-12345").await;
    let config = env.config(&env.fcm_app(FCM_APP, &fake, "", &env.basic_auth()));
    // Same project, e-mail and token_uri as the real account, another private key.
    let wrong = ServiceAccount::new("brand-app-12345", &format!("{}/token", fake.url()));
    let account_file = format!("fcm-{FCM_APP}.json");
    env.secret(&account_file, &wrong.json);
    let mut daemon = Daemon::start(env.path(), &config).await;
    let url = daemon.url(&format!("/push/{FCM_APP}"));
    let push = |seq| {
        let (client, url) = (env.client(), url.clone());
        async move {
            client
                .post_json(
                    &url,
                    &[("authorization", &platform_auth())],
                    &android_push(TOKEN, "x", "c", seq),
                )
                .await
        }
    };
    let refused = push(1).await;
    assert_eq!(refused.status, 500, "{}", refused.body);
    assert_eq!(refused.json()["reason"], "oauth_refused");
    assert_eq!(fake.token_calls(), 1);

    env.secret(&account_file, &fake.account.json);
    daemon.reload().await;
    daemon.wait_log("configuration reloaded").await;
    let delivered = push(2).await;
    assert_eq!(delivered.status, 200, "{}", delivered.body);
    assert_eq!(fake.delivered_to(TOKEN).len(), 1);
    assert_eq!(
        fake.token_calls(),
        2,
        "the new file's key asked for a token"
    );
}

#[tokio::test]
async fn a_reload_right_after_ready_is_handled() {
    let env = TestEnv::new();
    let mut daemon = Daemon::start(env.path(), &env.config("")).await;
    // No pause: the signal handler must already be in place when READY=1 goes out.
    daemon.reload().await;
    assert_eq!(
        env.client().get(&daemon.ops_url("/healthz")).await.status,
        200
    );
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let env = TestEnv::new();
    let daemon = Daemon::start_with_env(
        env.path(),
        &env.config(""),
        &[("BRANDGATE_SERVER__IDLE_TIMEOUT", "1s")],
    )
    .await;
    // A raw HTTP/1.1 keep-alive connection: one request, then silence.
    let tls = crate::support::client::tls_config(&env.ca.cert_pem, None);
    let tcp = tokio::net::TcpStream::connect(daemon.public).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    stream
        .write_all(b"GET /push/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    // The server answers, then closes the idle connection: reading ends (bounded wait).
    let read_all =
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut seen)).await;
    assert!(read_all.is_ok(), "the idle connection was never closed");
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 405"));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before it was idle"
    );
}

/// Under journald (`$JOURNAL_STREAM` set), every line carries its syslog priority so that
/// `journalctl -p warning` finds the warnings: `<4>` for a warning, `<6>` for information.
#[tokio::test]
async fn under_journald_every_line_carries_its_priority() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    // A secret file every user can read: start-up warns about it.
    let readable = env.secret("readable-password", "p4ssw0rd-for-the-platform\n");
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (fake, key) = apns("com.brand.app").await;
    let auth = format!(
        "basic = {{ username = \"platform\", password_file = \"{}\" }}\n",
        readable.display()
    );
    let config = env.config(&env.apns_app("com.brand.app", &fake, &key, "", &auth, ""));
    let mut daemon =
        Daemon::start_with_env(env.path(), &config, &[("JOURNAL_STREAM", "8:12345")]).await;
    let log = daemon.stop().await;
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let priority = line.strip_prefix('<').and_then(|l| l.split_once('>'));
        assert!(
            matches!(priority, Some(("3" | "4" | "6" | "7", _))),
            "a line without its priority: {line:?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("readable by every user")),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>") && l.contains("ready")),
        "{log}"
    );
}

/// The alert rules shipped for operators (`packaging/prometheus/brandgate-alerts.yml`) pass
/// `promtool check rules`, the dashboard is Grafana JSON with a query in every panel, and
/// every series either reads is one a running brandgate (push, identity, relay, store)
/// publishes: a renamed metric cannot silently disarm an alert or empty a panel.
#[tokio::test]
async fn the_shipped_alert_rules_check_and_read_only_published_metrics() {
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/prometheus/brandgate-alerts.yml"
    );
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules", rules])
        .output()
        .unwrap_or_else(|e| panic!("{promtool}: {e} (tests/run.sh installs it)"));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("SUCCESS"), "{said}");

    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let app = env.apns_app(APP, &fake, &key, "", &env.basic_auth(), "");
    // A second app with APNs certificate auth, whose certificate's expiry is published.
    let (cert, cert_key) = env
        .ca
        .client("Apple Push Services: com.brand.cert", &["com.brand.cert"])
        .write(env.path(), "apns-cert-app");
    let cert_app = format!(
        "[[push.apps]]\nid = \"com.brand.cert\"\n[push.apps.auth]\n{}[push.apps.apns]\ntopic = \"com.brand.cert\"\nendpoint = \"{}\"\ncertificate_file = \"{}\"\nprivate_key_file = \"{}\"\n",
        env.basic_auth(),
        fake.url(),
        cert.display(),
        cert_key.display()
    );
    let config = crate::support::relay_world::config(&env, "1h", "", &format!("{app}{cert_app}"));
    let daemon = Daemon::start(env.path(), &config).await;
    assert_eq!(push(&env, &daemon, "ee01", 1).await, 200);
    let published = env.client().get(&daemon.ops_url("/metrics")).await.body;
    // What is published passes Prometheus' own lint (names, units, suffixes, help).
    // `promtool check metrics` reads the classic text format, where a counter's HELP and TYPE
    // carry the sample's `_total` name; OpenMetrics (what /metrics serves) names the family
    // without it and adds `# UNIT` and `# EOF`. Only those differences are rewritten.
    let counters: std::collections::HashSet<String> = published
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .map(str::to_string)
        .collect();
    let classic: String = published
        .lines()
        .filter(|l| !l.starts_with("# UNIT ") && *l != "# EOF")
        .map(|l| {
            for prefix in ["# HELP ", "# TYPE "] {
                if let Some(rest) = l.strip_prefix(prefix) {
                    let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                    if counters.contains(name) {
                        return format!("{prefix}{name}_total {tail}\n");
                    }
                }
            }
            format!("{l}\n")
        })
        .collect();
    let mut lint = tokio::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = lint.stdin.take().unwrap();
        stdin.write_all(classic.as_bytes()).await.unwrap();
    }
    let linted = lint.wait_with_output().await.unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );
    assert!(
        linted.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}"
    );
    // The families published (counters and histograms are read with their suffixes).
    let families: std::collections::HashSet<&str> = published
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let dashboard = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/prometheus/brandgate-dashboard.json"
    );
    let board: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard).unwrap()).unwrap();
    let panels = board["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(
            !targets.is_empty() && targets.iter().all(|t| t["expr"].is_string()),
            "{panel}"
        );
    }
    let text =
        std::fs::read_to_string(rules).unwrap() + &std::fs::read_to_string(dashboard).unwrap();
    let mut read = std::collections::BTreeSet::new();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("brandgate_") || word.starts_with("process_") {
            read.insert(word.to_string());
        }
    }
    assert!(read.len() >= 6, "{read:?}");
    for name in &read {
        let family = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            families.contains(family) || families.contains(name.as_str()),
            "the rules or the dashboard read {name}, which brandgate does not publish:\n{published}"
        );
    }
}
