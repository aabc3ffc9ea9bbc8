//! Overload: about ten times what the daemon is configured to carry at once, on the push
//! ingress and on the relay. The excess is refused with a status and a reason (never a
//! dropped connection or a queue that grows), memory reaches a plateau instead of growing
//! with the load, and once the load stops the daemon serves as before, by itself.
//!
//! "Nominal" here is the configured capacity (pushes in flight, sockets, requests per second
//! per socket), made small so that ten times it fits a test; every loop is bounded.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;

use crate::support::daemon::Daemon;
use crate::support::fake::Behaviour;
use crate::support::messaging::MessagingClient;
use crate::support::relay_world::{PLATFORM_PATH, Relay};
use crate::support::{TestEnv, apns, ios_push, platform_auth};

const APP: &str = "com.brand.app";

/// The daemon's resident memory, in KiB (Linux).
fn rss_kib(daemon: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Ten times the pushes in flight (8), in rounds, against a provider that takes 300 ms: the
/// excess gets 503 with its reason and Retry-After, what is admitted is delivered, memory
/// levels off, and afterwards a push goes through at once.
#[tokio::test]
async fn ten_times_the_pushes_in_flight_are_refused_not_queued() {
    const IN_FLIGHT: usize = 8;
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let config = env.config(&format!(
        "[push]\nmax_in_flight = {IN_FLIGHT}\n{}",
        env.apns_app(APP, &fake, &key, "", &env.basic_auth(), "")
    ));
    let daemon = Daemon::start(env.path(), &config).await;
    fake.script(
        "0a0a",
        vec![Behaviour::Delay(
            Duration::from_millis(300),
            Box::new(Behaviour::Ok),
        )],
    );
    let client = Arc::new(env.client());
    let url = daemon.url(&format!("/push/{APP}"));
    let auth = platform_auth();
    let mut sequence = 0;
    let mut round = |n: usize| {
        let pushes: Vec<_> = (0..n)
            .map(|_| {
                sequence += 1;
                let (client, url, auth) = (client.clone(), url.clone(), auth.clone());
                let body = ios_push("0a0a", "hi", "conv-overload", sequence);
                async move {
                    client
                        .post_json(&url, &[("authorization", &auth)], &body)
                        .await
                }
            })
            .collect();
        join_all(pushes)
    };
    // Warm up (connections, pools), then measure.
    for a in round(IN_FLIGHT).await {
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let mut rss = vec![rss_kib(&daemon)];
    let (mut delivered, mut refused) = (0, 0);
    for set in 0..2 {
        for _ in 0..5 {
            for a in round(10 * IN_FLIGHT).await {
                match a.status {
                    200 => delivered += 1,
                    503 => {
                        refused += 1;
                        assert_eq!(
                            a.json()["error"],
                            "too many pushes in flight; retry shortly"
                        );
                        assert_eq!(a.headers["retry-after"], "1");
                    }
                    other => panic!("set {set}: {other} {}", a.body),
                }
            }
        }
        rss.push(rss_kib(&daemon));
    }
    assert!(delivered >= 10 * IN_FLIGHT, "{delivered} delivered");
    assert!(refused >= 10 * 5 * IN_FLIGHT, "{refused} refused");
    // The second set of rounds costs no more memory than the first left behind (a plateau,
    // with room for allocator noise).
    assert!(
        rss[2] <= rss[1] + 8 * 1024,
        "RSS grew with the load: {rss:?} KiB"
    );

    // Load gone: the next push is delivered, and the daemon is ready.
    let answer = round(1).await.remove(0);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let ready = env.client().get(&daemon.ops_url("/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
}

/// Ten times the sockets the relay takes (40), and a socket sending ten times its request
/// rate: the sockets past the limit get 503 with a reason and Retry-After, the flood gets 429
/// answers on a socket that stays open, memory levels off, and when the load is gone a new
/// consumer connects and converses.
#[tokio::test]
async fn ten_times_the_relays_sockets_and_requests_are_refused_with_a_reason() {
    const SOCKETS: usize = 40;
    const PER_SECOND: usize = 20;
    let relay = Relay::start_with(
        "1h",
        "",
        &format!(
            "max_sockets = {SOCKETS}\nrequests_per_second = {PER_SECOND}\nauth_timeout = \"5s\""
        ),
    )
    .await;
    let token = relay.token().await;
    let tls = Arc::new(MessagingClient::tls(&relay.env.ca.cert_pem));
    let auth = format!("jwt {token}");
    let mut rss = vec![rss_kib(&relay.daemon)];
    for set in 0..2 {
        // The relay's whole capacity, held...
        let open = all_sockets(&relay, &token, SOCKETS).await;
        // ...and nine times as many more at once: each refused with its reason.
        let attempts: Vec<_> = (0..9 * SOCKETS)
            .map(|_| MessagingClient::socket(&tls, relay.daemon.public, PLATFORM_PATH, Some(&auth)))
            .collect();
        for attempt in join_all(attempts).await {
            let r = attempt
                .err()
                .unwrap_or_else(|| panic!("set {set}: a socket past the limit"));
            assert_eq!(r.status, 503, "set {set}: {}", r.body);
            assert!(r.body.contains("too many connections"), "{}", r.body);
        }
        drop(open);
        rss.push(rss_kib(&relay.daemon));
    }
    assert!(
        rss[2] <= rss[1] + 8 * 1024,
        "RSS grew with the load: {rss:?} KiB"
    );

    // One socket sends ten times its rate in one burst: the excess is answered 429 with the
    // reason, and the socket stays.
    let mut c = relay.connect(Some(&token)).await;
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..10 * PER_SECOND {
            ids.push(c.send_request("GetClock", serde_json::Value::Null).await);
        }
        ids
    };
    let (mut ok, mut limited) = (0, 0);
    for id in &ids {
        let r = c.response_to(id).await;
        match r["code"].as_u64() {
            Some(200) => ok += 1,
            Some(429) => {
                assert_eq!(r["body"], "too many requests; slow down", "{r}");
                limited += 1;
            }
            _ => panic!("{r}"),
        }
    }
    assert!((PER_SECOND..=2 * PER_SECOND).contains(&ok), "{ok} answered");
    assert_eq!(ok + limited, 10 * PER_SECOND);
    // A second later the socket is served again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = c.request("cm.ConsumerRequestConversation", json!({})).await;
    assert_eq!(r["code"], 200, "{r}");
}

/// `n` sockets open at once: the relay's capacity once the sockets of an earlier round have
/// given back their slots (their tasks end a moment after the client goes); bounded.
async fn all_sockets(
    relay: &Relay,
    token: &str,
    n: usize,
) -> Vec<crate::support::messaging::Stream> {
    let tls = Arc::new(MessagingClient::tls(&relay.env.ca.cert_pem));
    let auth = format!("jwt {token}");
    for _ in 0..50 {
        let opened = join_all((0..n).map(|_| {
            MessagingClient::socket(&tls, relay.daemon.public, PLATFORM_PATH, Some(&auth))
        }))
        .await;
        if opened.iter().all(Result::is_ok) {
            return opened.into_iter().map(Result::unwrap).collect();
        }
        drop(opened);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the relay never took {n} sockets at once");
}
