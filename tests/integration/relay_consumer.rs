//! The relay, consumer side: real WebSocket clients over TLS against the running daemon,
//! authenticated with identity tokens brandgate minted (anonymous sign-ups), every frame
//! checked against the platform's published JSON schemas.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::messaging::{
    CHAT_STATE_WITHOUT_SEQUENCE, CONSUMER_GET_CLOCK, Difference, TOKEN_EXPIRED,
};
use crate::support::messaging::{MessagingClient, Side};
use crate::support::relay_world::{PLATFORM_PATH, Relay, publish, text};

/// Deliberate differences from the published schemas, named for the reader.
const DIFFERS: &[Difference] = &[
    CONSUMER_GET_CLOCK,
    TOKEN_EXPIRED,
    CHAT_STATE_WITHOUT_SEQUENCE,
];

#[tokio::test]
async fn a_consumer_converses_over_the_platform_protocol() {
    let relay = Relay::start("1h").await;
    let (mut c, conv, _) = relay.consumer().await;
    // One open conversation per consumer: asking again gives the same one.
    let again = c.request("cm.ConsumerRequestConversation", json!({})).await;
    assert_eq!(again["body"]["conversationId"], conv.as_str());

    let sub = c
        .request(
            "cqm.SubscribeExConversations",
            json!({"convState": ["OPEN", "CLOSE"]}),
        )
        .await;
    assert_eq!(sub["code"], 200);
    let listed = c.notification("cqm.ExConversationChangeNotification").await;
    let details = &listed["body"]["changes"][0]["result"]["conversationDetails"];
    assert_eq!(
        listed["body"]["changes"][0]["result"]["convId"],
        conv.as_str()
    );
    assert_eq!(details["state"], "OPEN");
    assert_eq!(details["participants"][0]["role"], "CONSUMER");

    let subscribed = c
        .request(
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": conv, "fromSeq": 0}),
        )
        .await;
    assert_eq!(subscribed["code"], 200, "{subscribed}");

    let sent = publish(&mut c, &conv, text("hello, brand")).await;
    assert_eq!(sent["code"], 200, "{sent}");
    assert_eq!(sent["body"]["sequence"], 0);
    let changes = c.changes(1).await;
    assert_eq!(changes[0]["sequence"], 0);
    assert_eq!(changes[0]["event"]["message"], "hello, brand");
    assert_eq!(changes[0]["dialogId"], conv.as_str());
    assert_eq!(changes[0]["originatorMetadata"]["role"], "CONSUMER");

    // Typing is not stored: it carries no sequence and takes none.
    let typing = publish(
        &mut c,
        &conv,
        json!({"type": "ChatStateEvent", "chatState": "COMPOSING"}),
    )
    .await;
    assert_eq!(typing["code"], 200, "{typing}");
    assert_eq!(typing["body"], json!({}));
    let read = publish(
        &mut c,
        &conv,
        json!({"type": "AcceptStatusEvent", "status": "READ", "sequenceList": [0]}),
    )
    .await;
    assert_eq!(read["body"]["sequence"], 1);
    let changes = c.changes(1).await;
    assert_eq!(changes[0]["event"]["chatState"], "COMPOSING");
    assert!(changes[0].get("sequence").is_none(), "{}", changes[0]);
    assert_eq!(changes[1]["event"]["status"], "READ");
    assert_eq!(changes[1]["sequence"], 1);

    // The clock, as the schema's string body: Unix milliseconds.
    let clock = c.request("GetClock", Value::Null).await;
    assert_eq!(clock["code"], 200);
    let millis: u64 = clock["body"].as_str().unwrap().parse().unwrap();
    assert!(millis > 1_700_000_000_000);

    let closed = c
        .request(
            "cm.UpdateConversationField",
            json!({"conversationId": conv, "conversationField": [
                {"field": "ConversationStateField", "conversationState": "CLOSE"}]}),
        )
        .await;
    assert_eq!(closed["code"], 200, "{closed}");
    let change = c.notification("cqm.ExConversationChangeNotification").await;
    let details = &change["body"]["changes"][0]["result"]["conversationDetails"];
    assert_eq!(details["state"], "CLOSE");
    assert!(details["endTs"].as_i64().unwrap() >= details["startTs"].as_i64().unwrap());
    let late = publish(&mut c, &conv, text("anyone?")).await;
    assert_eq!(late["code"], 409);

    // A new request after the close opens a new conversation.
    let next = c.request("cm.ConsumerRequestConversation", json!({})).await;
    assert_ne!(next["body"]["conversationId"], conv.as_str());
    c.check_schemas(DIFFERS).await;
}

#[tokio::test]
async fn browsers_authenticate_with_init_connection() {
    let relay = Relay::start("1h").await;
    let token = relay.token().await;
    let mut c = relay.connect(None).await;
    c.send(
        json!({"kind": "req", "id": "0", "type": "InitConnection", "headers": [
        {"type": ".ams.headers.ClientProperties", "deviceFamily": "DESKTOP", "os": "LINUX"},
        {"type": ".ams.headers.ConsumerAuthentication", "jwt": token}]}),
    )
    .await;
    let ok = c.response_to("0").await;
    assert_eq!(ok["code"], 200, "{ok}");
    let r = c.request("cm.ConsumerRequestConversation", json!({})).await;
    assert_eq!(r["code"], 200);
    c.check_schemas(DIFFERS).await;

    // No InitConnection within relay.auth_timeout (1 s): closed with 4401.
    let mut silent = relay.connect(None).await;
    assert_eq!(silent.closed().await.0, 4401);

    // A request before authenticating: 401, closed.
    let mut eager = relay.connect(None).await;
    let r = eager
        .request("cm.ConsumerRequestConversation", json!({}))
        .await;
    assert_eq!(r["code"], 401);
    assert_eq!(eager.closed().await.0, 4401);

    // A token brandgate did not issue, in-band and on the upgrade.
    let mut forged = relay.connect(None).await;
    let bad = format!("{}x", &token[..token.len() - 1]);
    forged
        .send(
            json!({"kind": "req", "id": "0", "type": "InitConnection", "headers": [
            {"type": ".ams.headers.ConsumerAuthentication", "jwt": bad}]}),
        )
        .await;
    assert_eq!(forged.response_to("0").await["code"], 401);
    assert_eq!(forged.closed().await.0, 4401);
    let refused = MessagingClient::connect(
        &relay.env.ca.cert_pem,
        relay.daemon.public,
        "/ws/consumer",
        Some(&format!("jwt {bad}")),
        Side::Consumer,
    )
    .await
    .err()
    .expect("refused on the upgrade");
    assert_eq!(refused.status, 401);
    // Another account's path does not exist here.
    let other = MessagingClient::connect(
        &relay.env.ca.cert_pem,
        relay.daemon.public,
        "/ws_api/account/other/messaging/consumer",
        Some(&format!("jwt {token}")),
        Side::Consumer,
    )
    .await
    .err()
    .expect("unknown account");
    assert_eq!(other.status, 404);
}

#[tokio::test]
async fn a_consumer_only_ever_sees_its_own_conversations() {
    let relay = Relay::start("1h").await;
    let (mut alice, conv, alice_token) = relay.consumer().await;
    publish(&mut alice, &conv, text("private to alice")).await;
    let (mut bob, bob_conv, bob_token) = relay.consumer().await;
    for (kind, body) in [
        (
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": conv, "fromSeq": 0}),
        ),
        (
            "ms.PublishEvent",
            json!({"dialogId": conv, "event": text("hi alice")}),
        ),
        (
            "cm.UpdateConversationField",
            json!({"conversationId": conv, "conversationField": [
                {"field": "ConversationStateField", "conversationState": "CLOSE"}]}),
        ),
    ] {
        let r = bob.request(kind, body).await;
        assert_eq!(r["code"], 404, "{kind}: {r}");
    }
    // History over REST: the owner's, and nobody else's.
    let path = format!("/api/v1/conversations/{conv}/events?fromSeq=0");
    let client = relay.env.client();
    let history = client
        .send(
            http::Method::GET,
            &relay.daemon.url(&path),
            &[("authorization", &format!("jwt {alice_token}"))],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(history.status, 200, "{}", history.body);
    assert_eq!(
        history.json()["events"][0]["event"]["message"],
        "private to alice"
    );
    let refused = client
        .send(
            http::Method::GET,
            &relay.daemon.url(&path),
            &[("authorization", &format!("jwt {bob_token}"))],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(refused.status, 404);
    assert!(!refused.body.contains("private"));
    let anonymous = client.get(&relay.daemon.url(&path)).await;
    assert_eq!(anonymous.status, 401);

    // bob's conversation list and its changes never show alice's conversation: bob watches,
    // alice writes and closes, then bob closes his own. Changes reach a watcher in order, so
    // anything of alice's would come before bob's own close.
    bob.request("cqm.SubscribeExConversations", json!({})).await;
    publish(&mut alice, &conv, text("more for alice")).await;
    let close = |id: &str| {
        json!({"conversationId": id, "conversationField": [
            {"field": "ConversationStateField", "conversationState": "CLOSE"}]})
    };
    assert_eq!(
        alice
            .request("cm.UpdateConversationField", close(&conv))
            .await["code"],
        200
    );
    assert_eq!(
        bob.request("cm.UpdateConversationField", close(&bob_conv))
            .await["code"],
        200
    );
    loop {
        let n = bob
            .notification("cqm.ExConversationChangeNotification")
            .await;
        let result = &n["body"]["changes"][0]["result"];
        assert_eq!(result["convId"], bob_conv.as_str(), "bob saw {n}");
        if result["conversationDetails"]["state"] == "CLOSE" {
            break;
        }
    }
    bob.check_schemas(DIFFERS).await;
}

#[tokio::test]
async fn a_reconnect_with_from_seq_misses_nothing_and_repeats_nothing() {
    let relay = Relay::start("1h").await;
    let token = relay.token().await;
    let mut first = relay.connect(Some(&token)).await;
    let conv = first
        .request("cm.ConsumerRequestConversation", json!({}))
        .await["body"]["conversationId"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..5 {
        let r = publish(&mut first, &conv, text(&format!("m{i}"))).await;
        assert_eq!(r["body"]["sequence"], i);
    }
    // The same consumer on a second socket catches up from sequence 2, then follows live
    // while the first socket keeps writing.
    let mut second = relay.connect(Some(&token)).await;
    second
        .request(
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": conv, "fromSeq": 2}),
        )
        .await;
    for i in 5..30 {
        publish(&mut first, &conv, text(&format!("m{i}"))).await;
    }
    let seen: Vec<i64> = second
        .changes(28)
        .await
        .iter()
        .map(|c| c["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seen, (2..30).collect::<Vec<i64>>());
    second.check_schemas(DIFFERS).await;
}

#[tokio::test]
async fn a_resent_event_id_is_stored_once() {
    let relay = Relay::start("1h").await;
    let (mut c, conv, _) = relay.consumer().await;
    let mut event = text("sent twice after a lost ack");
    event["eventId"] = Value::from("client-event-1");
    let first = publish(&mut c, &conv, event.clone()).await;
    let again = publish(&mut c, &conv, event).await;
    assert_eq!(first["body"]["sequence"], again["body"]["sequence"]);
    let next = publish(&mut c, &conv, text("next")).await;
    assert_eq!(next["body"]["sequence"], 1);
    c.request("ms.SubscribeMessagingEvents", json!({"dialogId": conv}))
        .await;
    let seen: Vec<i64> = c
        .changes(2)
        .await
        .iter()
        .map(|c| c["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seen, [0, 1], "stored once");
    c.check_schemas(DIFFERS).await;
}

#[tokio::test]
async fn bad_frames_get_a_400_with_the_reason_and_the_socket_stays() {
    let relay = Relay::start("1h").await;
    let (mut c, conv, _) = relay.consumer().await;
    c.send_raw("this is not json").await;
    let r = c.response_to("invalid").await;
    assert_eq!(r["code"], 400);
    assert!(r["body"].as_str().unwrap().contains("JSON"), "{r}");
    c.send_raw(r#"{"kind":"req","id":"n1","type":"no.SuchRequest"}"#)
        .await;
    let r = c.response_to("n1").await;
    assert_eq!(r["code"], 400);
    assert!(r["body"].as_str().unwrap().contains("unknown request type"));
    for (event, why) in [
        (text(&"x".repeat(2001)), "longer than 2000"),
        (text("bell\u{7}"), "control characters"),
        (text(""), "empty"),
        (
            json!({"type": "ContentEvent", "contentType": "text/html", "message": "<b>"}),
            "text/plain",
        ),
        (
            json!({"type": "AcceptStatusEvent", "status": "READ"}),
            "sequenceList",
        ),
        (
            json!({"type": "ChatStateEvent", "chatState": "TYPING"}),
            "chatState",
        ),
    ] {
        let r = publish(&mut c, &conv, event).await;
        assert_eq!(r["code"], 400, "{why}: {r}");
        assert!(r["body"].as_str().unwrap().contains(why), "{why}: {r}");
    }
    // Still open, still answering.
    let r = publish(&mut c, &conv, text("still here")).await;
    assert_eq!(r["code"], 200);
    assert_eq!(r["body"]["sequence"], 0, "nothing refused took a sequence");
    // A frame beyond max_frame_bytes ends the socket (1009: too big).
    c.send_raw(&format!(
        r#"{{"id":"big","type":"x","body":"{}"}}"#,
        "y".repeat(20_000)
    ))
    .await;
    assert_eq!(c.closed().await.0, 1009);
}

/// The `exp` of a token, read without checking it (the test made it).
fn exp_of(token: &str) -> u64 {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["exp"].as_u64().unwrap()
}

#[tokio::test]
async fn an_expired_token_ends_the_socket_unless_renewed_in_band() {
    let relay = Relay::start("4s").await;
    let token = relay.token_for("consumer-42").await;
    let mut idle = relay.connect(Some(&token)).await;
    let mut renewing = relay.connect(Some(&token)).await;
    renewing
        .request("cm.ConsumerRequestConversation", json!({}))
        .await;

    // A token of another consumer is refused in-band and changes nothing.
    let other = relay.token_for("consumer-7").await;
    renewing
        .send(
            json!({"kind": "req", "id": "r1", "type": "InitConnection", "headers": [
            {"type": ".ams.headers.ConsumerAuthentication", "jwt": other}]}),
        )
        .await;
    assert_eq!(renewing.response_to("r1").await["code"], 403);

    // Two seconds before the first token runs out, a fresh one (4 s from then, so at least
    // 2 s past the first) is sent in-band.
    let exp = exp_of(&token);
    let renew_at = std::time::UNIX_EPOCH + Duration::from_secs(exp - 2);
    if let Ok(wait) = renew_at.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let fresh = relay.token_for("consumer-42").await;
    assert!(exp_of(&fresh) >= exp + 2);
    renewing
        .send(
            json!({"kind": "req", "id": "r2", "type": "InitConnection", "headers": [
            {"type": ".ams.headers.ConsumerAuthentication", "jwt": fresh}]}),
        )
        .await;
    assert_eq!(renewing.response_to("r2").await["code"], 200);

    // The first token runs out: the socket that kept it is told and closed with 4410 ...
    let expiry = idle.notification("brandgate.TokenExpired").await;
    assert!(expiry["body"]["reason"].is_string());
    assert_eq!(idle.closed().await.0, 4410);
    // ... while the renewed one still answers, until its own token runs out.
    let clock = renewing.request("GetClock", Value::Null).await;
    assert_eq!(clock["code"], 200, "{clock}");
    assert_eq!(renewing.closed().await.0, 4410);
    renewing.check_schemas(DIFFERS).await;
}

#[tokio::test]
async fn a_follower_that_falls_behind_still_gets_everything_once() {
    // A small socket queue (the overflow itself is pinned down in relay::bus's unit test).
    let relay = Relay::start_with(
        "1h",
        "",
        "requests_per_second = 100000\nsend_queue_bytes = 16384",
    )
    .await;
    let token = relay.token().await;
    let mut writer = relay.connect(Some(&token)).await;
    let conv = writer
        .request("cm.ConsumerRequestConversation", json!({}))
        .await["body"]["conversationId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut follower = relay.connect(Some(&token)).await;
    // From beyond the end: starts at the next event, not later.
    follower
        .request(
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": conv, "fromSeq": 100}),
        )
        .await;
    // More events than the live channel holds (256), written without waiting for the
    // follower, which does not read meanwhile.
    for i in 0..600 {
        writer
            .send(
                json!({"kind": "req", "id": format!("w{i}"), "type": "ms.PublishEvent",
                "body": {"dialogId": conv, "event": text(&format!("m{i}"))}}),
            )
            .await;
    }
    for i in 0..600 {
        assert_eq!(writer.response_to(&format!("w{i}")).await["code"], 200);
    }
    let seen: Vec<i64> = follower
        .changes(600)
        .await
        .iter()
        .map(|c| c["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seen, (0..600).collect::<Vec<i64>>());
}

#[tokio::test]
async fn message_text_never_reaches_the_database_in_clear() {
    let relay = Relay::start("1h").await;
    let (mut c, conv, _) = relay.consumer().await;
    let secret = "the-account-number-is-4711-0815";
    assert_eq!(publish(&mut c, &conv, text(secret)).await["code"], 200);
    c.close_now().await;
    let mut daemon = relay.daemon;
    daemon.stop().await;
    let state = relay.env.path().join("state");
    let mut searched = 0;
    for name in ["brandgate.db", "brandgate.db-wal"] {
        if let Ok(bytes) = std::fs::read(state.join(name)) {
            searched += bytes.len();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{name} holds the message text"
            );
        }
    }
    assert!(searched > 0, "the database files were read");
}

/// Twenty acknowledged messages, a `kill -9` right after the last acknowledgement, a start on
/// the same store: all twenty are there.
async fn kill_and_restart_loses_nothing(store_extra: &str) {
    let relay = Relay::start_with("1h", store_extra, "").await;
    let token = relay.token().await;
    let mut c = relay.connect(Some(&token)).await;
    let conv =
        c.request("cm.ConsumerRequestConversation", json!({})).await["body"]["conversationId"]
            .as_str()
            .unwrap()
            .to_string();
    for i in 0..20 {
        let r = publish(&mut c, &conv, text(&format!("m{i}"))).await;
        assert_eq!(r["code"], 200);
    }
    let Relay { env, mut daemon } = relay;
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit(Duration::from_secs(10)).await;
    let config = std::fs::read_to_string(&daemon.config_path).unwrap();
    let daemon = Daemon::start(env.path(), &config).await;
    let relay = Relay { env, daemon };
    let mut again = relay.connect(Some(&token)).await;
    let r = again
        .request(
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": conv, "fromSeq": 0}),
        )
        .await;
    assert_eq!(r["code"], 200);
    let seen: Vec<String> = again
        .changes(20)
        .await
        .iter()
        .map(|c| c["event"]["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, (0..20).map(|i| format!("m{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn acknowledged_messages_survive_a_kill_on_sqlite() {
    kill_and_restart_loses_nothing("").await;
}

#[tokio::test]
async fn acknowledged_messages_survive_a_kill_on_postgresql() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    kill_and_restart_loses_nothing(&db.store_line()).await;
    db.drop().await;
}

#[tokio::test]
async fn requests_are_rate_limited_per_socket() {
    let relay = Relay::start_with("1h", "", "requests_per_second = 5").await;
    let token = relay.token().await;
    let mut c = relay.connect(Some(&token)).await;
    for i in 0..50 {
        c.send(json!({"kind": "req", "id": format!("g{i}"), "type": "GetClock"}))
            .await;
    }
    let mut limited = 0;
    for i in 0..50 {
        let r = c.response_to(&format!("g{i}")).await;
        if r["code"] == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 30, "{limited} of 50 limited");
}

#[tokio::test]
async fn one_address_cannot_hold_many_sockets_without_authenticating() {
    let relay = Relay::start_with(
        "1h",
        "",
        "unauthenticated_per_source = 2\nauth_timeout = \"30s\"",
    )
    .await;
    let first = relay.connect(None).await;
    let mut second = relay.connect(None).await;
    let refused = MessagingClient::connect(
        &relay.env.ca.cert_pem,
        relay.daemon.public,
        PLATFORM_PATH,
        None,
        Side::Consumer,
    )
    .await
    .err()
    .expect("a third silent socket is refused");
    assert_eq!(refused.status, 429);
    // A socket with a token on the upgrade needs no slot.
    let token = relay.token().await;
    let _authenticated = relay.connect(Some(&token)).await;
    // Authenticating gives the slot back.
    second
        .send(
            json!({"kind": "req", "id": "0", "type": "InitConnection", "headers": [
            {"type": ".ams.headers.ConsumerAuthentication", "jwt": token}]}),
        )
        .await;
    assert_eq!(second.response_to("0").await["code"], 200);
    let _third = relay.connect(None).await;
    drop(first);
}
