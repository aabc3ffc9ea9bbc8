//! The push proxy's de-duplication beyond one process: the platform's re-send of a delivered
//! push (same app, device token, conversation and sequence) that lands on another node sharing
//! the PostgreSQL store, or on the same node after a restart on SQLite, answers `duplicate`
//! and never reaches the (fake) APNs again; one that arrives while another node is still
//! delivering waits for that outcome.

use std::time::Duration;

use crate::support::daemon::Daemon;
use crate::support::fake::Behaviour;
use crate::support::fake_apns::FakeApns;
use crate::support::identity_world::data_key_line;
use crate::support::pki::ApnsKey;
use crate::support::{TestEnv, apns, ios_push, platform_auth};

const APP: &str = "com.brand.app";
const TOKEN: &str = "b1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

struct Node {
    env: TestEnv,
    daemon: Daemon,
}

/// A node pushing through `fake` for [`APP`], with a store (`store_extra` in `[store]`) and
/// the data keys `keys`.
async fn node(fake: &FakeApns, key: &ApnsKey, store_extra: &str, keys: &str) -> Node {
    let env = TestEnv::new();
    let store = env.store_section(keys, store_extra);
    let app = env.apns_app(APP, fake, key, "", &env.basic_auth(), "");
    let config = env.config(&format!("{store}{app}"));
    let daemon = Daemon::start(env.path(), &config).await;
    Node { env, daemon }
}

impl Node {
    /// The platform's push for `sequence` of one conversation; the answer's `status` field.
    async fn push(&self, sequence: i64) -> String {
        let answer = self.send(sequence).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()["status"].as_str().unwrap().to_string()
    }

    /// The platform's push for `sequence` of one conversation, as answered.
    async fn send(&self, sequence: i64) -> crate::support::client::Answer {
        self.env
            .client()
            .post_json(
                &self.daemon.url(&format!("/push/{APP}")),
                &[("authorization", &platform_auth())],
                &ios_push(TOKEN, "hello", "conv-shared", sequence),
            )
            .await
    }
}

#[tokio::test]
async fn a_resend_to_another_node_is_a_duplicate() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    let (fake, key) = apns(APP).await;
    let store = db.store_line();
    let keys = data_key_line("k1");
    let a = node(&fake, &key, &store, &keys).await;
    let b = node(&fake, &key, &store, &keys).await;
    assert_eq!(a.push(1).await, "delivered");
    assert_eq!(b.push(1).await, "duplicate");
    assert_eq!(a.push(1).await, "duplicate");
    assert_eq!(
        b.push(2).await,
        "delivered",
        "another sequence is another push"
    );
    let sequences: Vec<_> = fake
        .delivered_to(TOKEN)
        .iter()
        .map(|r| r.body["sequence"].clone())
        .collect();
    assert_eq!(sequences, [1, 2]);
    drop((a, b));
    db.drop().await;
}

/// The same push sent to two nodes at the same moment reaches APNs once: one node sends it,
/// the other finds it being sent there and answers `duplicate` once it is delivered.
#[tokio::test]
async fn the_same_push_to_two_nodes_at_once_is_sent_once() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    let (fake, key) = apns(APP).await;
    let store = db.store_line();
    let keys = data_key_line("k1");
    let a = node(&fake, &key, &store, &keys).await;
    let b = node(&fake, &key, &store, &keys).await;
    for sequence in 1..=5 {
        let (x, y) = tokio::join!(a.push(sequence), b.push(sequence));
        let mut answers = [x, y];
        answers.sort();
        assert_eq!(answers, ["delivered", "duplicate"], "sequence {sequence}");
    }
    let sequences: Vec<_> = fake
        .delivered_to(TOKEN)
        .iter()
        .map(|r| r.body["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences.len(), 5, "{sequences:?}");
    drop((a, b));
    db.drop().await;
}

/// The same push before and after a restart on SQLite: with `shared_dedupe` (the default) a
/// duplicate, without it sent again.
async fn resend_after_a_restart(push_extra: &str) -> String {
    let (fake, key) = apns(APP).await;
    let mut first = node(&fake, &key, "", &data_key_line("k1")).await;
    assert_eq!(first.push(1).await, "delivered");
    first.daemon.stop().await;
    let config = std::fs::read_to_string(&first.daemon.config_path).unwrap();
    let config = format!("{push_extra}{config}");
    let again = Node {
        daemon: Daemon::start(first.env.path(), &config).await,
        env: first.env,
    };
    let status = again.push(1).await;
    let sent = fake.delivered_to(TOKEN).len();
    assert_eq!(sent, if status == "duplicate" { 1 } else { 2 });
    status
}

#[tokio::test]
async fn a_resend_after_a_restart_is_a_duplicate() {
    assert_eq!(resend_after_a_restart("").await, "duplicate");
}

#[tokio::test]
async fn without_shared_dedupe_a_restart_forgets() {
    assert_eq!(
        resend_after_a_restart("[push]\nshared_dedupe = false\n").await,
        "delivered"
    );
}

#[tokio::test]
async fn a_resend_while_another_node_delivers_waits_for_its_outcome() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    let (fake, key) = apns(APP).await;
    // The first delivery takes two seconds at APNs.
    fake.script(
        TOKEN,
        vec![
            Behaviour::Delay(Duration::from_secs(2), Box::new(Behaviour::Ok)),
            Behaviour::Ok,
        ],
    );
    let store = db.store_line();
    let keys = data_key_line("k1");
    let a = std::sync::Arc::new(node(&fake, &key, &store, &keys).await);
    let b = node(&fake, &key, &store, &keys).await;
    let first = tokio::spawn({
        let a = a.clone();
        async move { a.push(1).await }
    });
    // Node a's request is at APNs, held there: its claim is in the store (a node claims in
    // the store before it sends; being in flight is not enough, the claim comes after).
    fake.wait_arrivals(1).await;
    assert_eq!(b.push(1).await, "duplicate", "waited for node a's delivery");
    assert_eq!(first.await.unwrap(), "delivered");
    assert_eq!(fake.delivered_to(TOKEN).len(), 1);
    drop((a, b));
    db.drop().await;
}

/// Not delivered on one node (APNs refused it), the re-send on another node is sent: a failed
/// attempt lets go of its claim.
#[tokio::test]
async fn a_resend_after_a_failed_attempt_on_another_node_is_sent() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    let (fake, key) = apns(APP).await;
    fake.script(
        TOKEN,
        vec![
            crate::support::fake_apns::reason(400, "BadDeviceToken"),
            Behaviour::Ok,
        ],
    );
    let store = db.store_line();
    let keys = data_key_line("k1");
    let a = node(&fake, &key, &store, &keys).await;
    let b = node(&fake, &key, &store, &keys).await;
    let refused = a.send(1).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(b.push(1).await, "delivered");
    assert_eq!(fake.delivered_to(TOKEN).len(), 1);
    drop((a, b));
    db.drop().await;
}
