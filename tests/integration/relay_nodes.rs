//! The relay on two nodes sharing one PostgreSQL, as behind a load balancer: two real daemons
//! on one database, the same consumer connected to both. What one node commits reaches the
//! other's followers and watchers (LISTEN/NOTIFY), every event once and in order, also when
//! the listener's connection is cut while the other node publishes.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::TestEnv;
use crate::support::daemon::Daemon;
use crate::support::identity_world::data_key_line;
use crate::support::messaging::{CHAT_STATE_WITHOUT_SEQUENCE, Difference};
use crate::support::messaging::{MessagingClient, Side};
use crate::support::postgres::Database;

const PLATFORM_PATH: &str = "/ws_api/account/acme/messaging/consumer?v=3";
/// Frames outside the published schemas on purpose (see `relay_consumer`): none here.
const DIFFERS: &[Difference] = &[CHAT_STATE_WITHOUT_SEQUENCE];
/// Longest wait for something the test polls the database or the metrics for.
const DEADLINE: Duration = Duration::from_secs(20);
const SECRET: &str = "the-account-number-is-4711-0815";

struct Node {
    env: TestEnv,
    daemon: Daemon,
}

/// Two nodes, `a` and `b`, on one fresh database, with the same data keys; the store URL
/// names each (`application_name`), so the test can find a node's connections.
struct Nodes {
    db: Database,
    a: Node,
    b: Node,
    /// The database role node a logs in as, when it has one of its own.
    a_role: Option<String>,
}

/// A database role's password (the test server may trust local connections and ignore it).
const ROLE_PASSWORD: &str = "node-a-password";

impl Nodes {
    async fn start() -> Option<Nodes> {
        Self::start_with(false).await
    }

    /// With `own_role_for_a`, node a logs in as a role of its own, so the test can stop that
    /// node alone from connecting (`ALTER ROLE ... NOLOGIN`).
    async fn start_with(own_role_for_a: bool) -> Option<Nodes> {
        let db = Database::create().await?;
        let keys = data_key_line("k1");
        // b first: it migrates and makes the signing key, which a then loads, so a's tokens
        // are good on b.
        let b = Node::start("node-b", &keys, &db.url, None).await;
        let (a, a_role) = if own_role_for_a {
            let role = format!("{}_a", db.name());
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{ROLE_PASSWORD}'"
            )))
            .execute(db.admin())
            .await
            .unwrap();
            // postgres://[user[:password]@]host[:port]/name, as user `role`.
            let rest = db.url.split_once("://").map_or(db.url.as_str(), |r| r.1);
            let host = rest.rsplit_once('@').map_or(rest, |r| r.1);
            let url = format!("postgres://{role}@{host}");
            let a = Node::start("node-a", &keys, &url, Some(ROLE_PASSWORD)).await;
            (a, Some(role))
        } else {
            (Node::start("node-a", &keys, &db.url, None).await, None)
        };
        Some(Nodes { db, a, b, a_role })
    }

    /// Stops both nodes and drops the database (and node a's role).
    async fn end(self) {
        drop(self.a);
        drop(self.b);
        let admin = self.db.admin().clone();
        self.db.drop().await;
        if let Some(role) = self.a_role {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
                .execute(&admin)
                .await
                .unwrap();
        }
    }
}

impl Node {
    async fn start(name: &str, keys: &str, url: &str, password: Option<&str>) -> Node {
        let env = TestEnv::new();
        let keys = env.secret("data-keys", keys);
        let password = password.map_or(String::new(), |p| {
            format!(
                "password_file = \"{}\"",
                env.secret("db-password", p).display()
            )
        });
        let config = env.config(&format!(
            r#"
[store]
data_keys_file = "{keys}"
url = "{url}?application_name={name}"
{password}
[identity]
issuer = "https://brandgate.test"
token_lifetime = "1h"
[identity.anonymous]
enabled = true
token_lifetime = "1h"
per_minute = 1000
[relay]
account = "acme"
max_message_bytes = 2000
requests_per_second = 100000
"#,
            keys = keys.display(),
        ));
        let daemon = Daemon::start(env.path(), &config).await;
        Node { env, daemon }
    }

    /// A new consumer's identity token (an anonymous sign-up).
    async fn token(&self) -> String {
        let answer = self
            .env
            .client()
            .send(
                http::Method::POST,
                &self.daemon.url("/identity/v1/signup"),
                &[],
                bytes::Bytes::new(),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()["jwt"].as_str().unwrap().to_string()
    }

    async fn connect(&self, token: &str) -> MessagingClient {
        MessagingClient::connect(
            &self.env.ca.cert_pem,
            self.daemon.public,
            PLATFORM_PATH,
            Some(&format!("jwt {token}")),
            Side::Consumer,
        )
        .await
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.body))
    }

    /// A counter from `/metrics` (0 until it appears).
    async fn metric(&self, series: &str) -> u64 {
        let body = crate::support::client::Client::http1("")
            .get(&self.daemon.ops_url("/metrics"))
            .await
            .body;
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }
}

const SENT: &str = "brandgate_relay_fanout_notifications_total{outcome=\"sent\"}";
const RECONNECTS: &str = "brandgate_relay_fanout_listener_reconnects_total";

fn text(message: &str) -> Value {
    json!({"type": "ContentEvent", "contentType": "text/plain", "message": message})
}

async fn open_conversation(c: &mut MessagingClient) -> String {
    let r = c.request("cm.ConsumerRequestConversation", json!({})).await;
    assert_eq!(r["code"], 200, "{r}");
    r["body"]["conversationId"].as_str().unwrap().to_string()
}

async fn publish(c: &mut MessagingClient, dialog: &str, event: Value) -> i64 {
    let r = c
        .request(
            "ms.PublishEvent",
            json!({"dialogId": dialog, "event": event}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    r["body"]["sequence"].as_i64().unwrap()
}

async fn follow(c: &mut MessagingClient, dialog: &str) {
    let r = c
        .request(
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": dialog, "fromSeq": 0}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
}

/// The PIDs of a node's relay listener connections, as PostgreSQL lists them.
async fn listener_backends(db: &Database, node: &str) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 \
         AND query LIKE 'LISTEN%'",
    )
    .bind(db.name())
    .bind(format!("{node} relay listener"))
    .fetch_all(db.admin())
    .await
    .unwrap()
}

/// Polls (bounded) until `check` holds.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn events_and_typing_published_on_one_node_reach_a_follower_on_the_other() {
    let Some(nodes) = Nodes::start().await else {
        return;
    };
    let token = nodes.a.token().await;
    let mut on_a = nodes.a.connect(&token).await;
    let conv = open_conversation(&mut on_a).await;
    follow(&mut on_a, &conv).await;
    let mut on_b = nodes.b.connect(&token).await;
    // One store: b finds the conversation a opened.
    assert_eq!(open_conversation(&mut on_b).await, conv);
    // The test listens too, to see what travels between the nodes.
    let mut wiretap = sqlx::postgres::PgListener::connect(&nodes.db.url)
        .await
        .unwrap();
    wiretap.listen("brandgate_relay").await.unwrap();

    for i in 0..30 {
        let message = if i == 13 {
            SECRET.to_string()
        } else {
            format!("m{i}")
        };
        assert_eq!(publish(&mut on_b, &conv, text(&message)).await, i);
        if i == 9 {
            let typing = json!({"type": "ChatStateEvent", "chatState": "COMPOSING"});
            let r = on_b
                .request(
                    "ms.PublishEvent",
                    json!({"dialogId": conv, "event": typing}),
                )
                .await;
            assert_eq!((&r["code"], &r["body"]), (&json!(200), &json!({})), "{r}");
        }
    }
    let mut changes = on_a.changes(30).await;
    // The typing state may come after the stored events: a follower that read ahead from the
    // store delivers them before the typing hint is handled.
    while !changes
        .iter()
        .any(|c| c["event"]["type"] == "ChatStateEvent")
    {
        let n = on_a.notification("ms.MessagingEventNotification").await;
        changes.extend(n["body"]["changes"].as_array().unwrap().iter().cloned());
    }
    let stored: Vec<i64> = changes
        .iter()
        .filter(|c| c["event"]["type"] == "ContentEvent")
        .map(|c| c["sequence"].as_i64().unwrap())
        .collect();
    // Every event once, in order: a repeat would have ended the count early.
    assert_eq!(stored, (0..30).collect::<Vec<_>>());
    let messages: Vec<&str> = changes
        .iter()
        .filter_map(|c| c["event"]["message"].as_str())
        .collect();
    assert_eq!(messages[13], SECRET);
    assert_eq!(messages[29], "m29");
    let typing: Vec<&Value> = changes
        .iter()
        .filter(|c| c["event"]["type"] == "ChatStateEvent")
        .collect();
    assert_eq!(typing.len(), 1, "{changes:?}");
    assert_eq!(typing[0]["event"]["chatState"], "COMPOSING");
    assert_eq!(typing[0]["originatorMetadata"]["role"], "CONSUMER");
    // A chat state is no stored event: it carries no sequence a client could take for one.
    assert!(typing[0].get("sequence").is_none(), "{}", typing[0]);
    // The next event is the next sequence, nothing repeated in between.
    assert_eq!(publish(&mut on_b, &conv, text("last")).await, 30);
    let next = on_a.changes(1).await;
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0]["sequence"], 30);
    on_a.check_schemas(DIFFERS).await;
    on_b.check_schemas(DIFFERS).await;

    // Every notification up to the last event's: small, and never the message text.
    loop {
        let n = tokio::time::timeout(DEADLINE, wiretap.recv())
            .await
            .expect("the last event's notification")
            .unwrap();
        let payload = n.payload();
        assert!(!payload.contains(SECRET), "{payload}");
        assert!(payload.len() < 1000, "{payload}");
        let wire: Value = serde_json::from_str(payload).unwrap();
        if wire["kind"] == "event" && wire["seq"] == 30 {
            break;
        }
    }
    // Both stop cleanly (the fan-out sends what is queued, then lets go), never having
    // logged the text.
    let mut nodes = nodes;
    for log in [nodes.a.daemon.stop().await, nodes.b.daemon.stop().await] {
        assert!(!log.contains(SECRET));
    }
    nodes.end().await;
}

#[tokio::test]
async fn a_close_on_one_node_reaches_a_watcher_on_the_other() {
    let Some(nodes) = Nodes::start().await else {
        return;
    };
    let token = nodes.a.token().await;
    let mut on_a = nodes.a.connect(&token).await;
    let conv = open_conversation(&mut on_a).await;
    let r = on_a
        .request(
            "cqm.SubscribeExConversations",
            json!({"convState": ["OPEN", "CLOSE"]}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    let mut on_b = nodes.b.connect(&token).await;
    assert_eq!(open_conversation(&mut on_b).await, conv);
    let r = on_b
        .request(
            "cm.UpdateConversationField",
            json!({"conversationId": conv, "conversationField": [
                {"field": "ConversationStateField", "conversationState": "CLOSE"}]}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    // The list comes first (and again if a's listener connected meanwhile: an UPSERT of
    // the same state); then the close, by its notification or, if a was started so
    // recently that it did not listen yet, by the re-check its listener makes on connecting.
    loop {
        let n = on_a
            .notification("cqm.ExConversationChangeNotification")
            .await;
        let result = &n["body"]["changes"][0]["result"];
        assert_eq!(result["convId"], conv.as_str());
        if result["conversationDetails"]["state"] == "CLOSE" {
            break;
        }
    }
    on_a.check_schemas(DIFFERS).await;
    nodes.end().await;
}

/// Node a's listener connection is ended by PostgreSQL and cannot come back (a's database
/// role may not log in for a while) while node b publishes: those notifications are lost.
/// Once a reconnects, its follower re-checks the store and gets every event, once, in order.
#[tokio::test]
async fn a_follower_misses_nothing_when_its_nodes_listener_reconnects() {
    let Some(nodes) = Nodes::start_with(true).await else {
        return;
    };
    let (db, a, b) = (&nodes.db, &nodes.a, &nodes.b);
    let token = a.token().await;
    let mut on_a = a.connect(&token).await;
    let conv = open_conversation(&mut on_a).await;
    follow(&mut on_a, &conv).await;
    let mut on_b = b.connect(&token).await;
    assert_eq!(open_conversation(&mut on_b).await, conv);
    until("a listens", || async {
        !listener_backends(db, "node-a").await.is_empty()
    })
    .await;
    for i in 0..5 {
        publish(&mut on_b, &conv, text(&format!("m{i}"))).await;
    }
    let seen: Vec<i64> = on_a
        .changes(5)
        .await
        .iter()
        .map(|c| c["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seen, (0..5).collect::<Vec<_>>());
    // b counts a notification once PostgreSQL has answered, which may be after a got it.
    until("b counted its five notifications", || async {
        b.metric(SENT).await >= 5
    })
    .await;
    let sent_before = b.metric(SENT).await;

    let role = nodes.a_role.as_deref().unwrap_or_default();
    let login = |allow: bool| {
        let how = if allow { "LOGIN" } else { "NOLOGIN" };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER ROLE {role} {how}"))).execute(db.admin())
    };
    login(false).await.unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name = 'node-a relay listener'",
    )
    .bind(db.name())
    .fetch_all(db.admin())
    .await
    .unwrap();
    assert!(ended.contains(&true), "{ended:?}");
    until("a's listener is gone", || async {
        listener_backends(db, "node-a").await.is_empty()
    })
    .await;
    // Published and notified while a does not listen: a never gets these notifications.
    for i in 5..10 {
        assert_eq!(publish(&mut on_b, &conv, text(&format!("m{i}"))).await, i);
    }
    until("b notified the five events", || async {
        b.metric(SENT).await >= sent_before + 5
    })
    .await;
    login(true).await.unwrap();

    let seen: Vec<i64> = on_a
        .changes(5)
        .await
        .iter()
        .map(|c| c["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seen, (5..10).collect::<Vec<_>>());
    assert!(a.metric(RECONNECTS).await >= 1);
    // And live again: the next one arrives by its notification, once.
    assert_eq!(publish(&mut on_b, &conv, text("m10")).await, 10);
    let next = on_a.changes(1).await;
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0]["sequence"], 10);
    on_a.check_schemas(DIFFERS).await;
    nodes.end().await;
}

/// The plain case: PostgreSQL ends node a's listener connection while node b publishes, and
/// a may reconnect at once (sqlx makes the connection again inside the listener). a counts
/// the reconnect, and its follower gets every event once, in order: what was lost in between
/// by the re-check or the next event's hint, which a hears only because it listens again.
/// (The test above is the one that needs the re-check itself.)
#[tokio::test]
async fn a_listener_ended_by_postgresql_reconnects_and_its_follower_misses_nothing() {
    let Some(nodes) = Nodes::start().await else {
        return;
    };
    let (db, a, b) = (&nodes.db, &nodes.a, &nodes.b);
    let token = a.token().await;
    let mut on_a = a.connect(&token).await;
    let conv = open_conversation(&mut on_a).await;
    follow(&mut on_a, &conv).await;
    let mut on_b = b.connect(&token).await;
    assert_eq!(open_conversation(&mut on_b).await, conv);
    until("a listens", || async {
        !listener_backends(db, "node-a").await.is_empty()
    })
    .await;
    for i in 0..40 {
        if i == 20 {
            let ended: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = 'node-a relay listener'",
            )
            .bind(db.name())
            .fetch_all(db.admin())
            .await
            .unwrap();
            assert!(ended.contains(&true), "{ended:?}");
        }
        assert_eq!(publish(&mut on_b, &conv, text(&format!("m{i}"))).await, i);
    }
    until("a reconnected", || async {
        a.metric(RECONNECTS).await >= 1
    })
    .await;
    // Sent after the reconnect, so a gets this one (and anything missed) for certain.
    assert_eq!(publish(&mut on_b, &conv, text("m40")).await, 40);
    let seen: Vec<i64> = on_a
        .changes(41)
        .await
        .iter()
        .map(|c| c["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seen, (0..41).collect::<Vec<_>>());
    on_a.check_schemas(DIFFERS).await;
    nodes.end().await;
}
