//! The relay, both sides: a real consumer and real agents (tokio-tungstenite over TLS) against
//! the running daemon, agents created with the command line and logged in over HTTPS, every
//! frame checked against the platform's published JSON schemas. The whole conversation runs on
//! both store backends; away pushes reach a fake APNs.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::TestEnv;
use crate::support::messaging::{
    CHAT_STATE_WITHOUT_SEQUENCE, CONSUMER_GET_CLOCK, Difference, SESSION_EXPIRED,
};
use crate::support::messaging::{MessagingClient, Side};
use crate::support::relay_world::{self, ACCOUNT, Relay, config, publish, ring_state, text};

/// Deliberate differences from the published schemas, named for the reader.
const DIFFERS: &[Difference] = &[
    CONSUMER_GET_CLOCK,
    SESSION_EXPIRED,
    CHAT_STATE_WITHOUT_SEQUENCE,
];

const RELAY_EXTRA: &str = "requests_per_second = 100000";

fn close_field() -> Value {
    json!([{"field": "ConversationStateField", "conversationState": "CLOSE"}])
}

/// Request, ring, one of two agents wins the accept, messages both ways, receipts, typing,
/// the agent's history, transfer back to the queue with a skill, the other agent takes it and
/// closes it.
async fn whole_conversation(relay: &Relay) {
    let alice_bearer = relay.agent("alice").await;
    let bob_bearer = relay.agent("bob").await;
    let mut alice = relay.online_agent(&alice_bearer).await;
    let mut bob = relay.online_agent(&bob_bearer).await;

    let (mut consumer, conv, consumer_token) = relay.consumer().await;
    let r = consumer
        .request(
            "cqm.SubscribeExConversations",
            json!({"convState": ["OPEN", "CLOSE"]}),
        )
        .await;
    assert_eq!(r["code"], 200);
    consumer
        .notification("cqm.ExConversationChangeNotification")
        .await;
    let r = consumer
        .request(
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": conv, "fromSeq": 0}),
        )
        .await;
    assert_eq!(r["code"], 200);
    // Typing before anything is stored: no sequence to carry (the schema has none below 0).
    let typing = publish(
        &mut consumer,
        &conv,
        json!({"type": "ChatStateEvent", "chatState": "COMPOSING"}),
    )
    .await;
    assert_eq!(typing["code"], 200, "{typing}");
    assert_eq!(typing["body"].get("sequence"), None, "{typing}");
    consumer.notification("ms.MessagingEventNotification").await;
    let hello = publish(&mut consumer, &conv, text("hello, is anyone there?")).await;
    assert_eq!(hello["body"]["sequence"], 0);
    consumer.changes(1).await;

    // Both online agents are rung.
    let (state, task) = ring_state(&mut alice, &conv).await;
    assert_eq!(state, "WAITING");
    assert_eq!(task["taskCompleted"], false);
    assert_eq!(task["consumerId"], consumer_id(relay, &consumer_token));
    assert_eq!(ring_state(&mut bob, &conv).await.0, "WAITING");
    let ring = task["ringsDetails"][0]["ringId"]
        .as_str()
        .unwrap()
        .to_string();

    // Both accept at once: exactly one wins.
    let accept = json!({"ringId": ring, "ringState": "ACCEPTED"});
    let a = alice
        .send_request("routing.UpdateRingState", accept.clone())
        .await;
    let b = bob.send_request("routing.UpdateRingState", accept).await;
    let a = alice.response_to(&a).await;
    let b = bob.response_to(&b).await;
    let codes = [a["code"].as_u64().unwrap(), b["code"].as_u64().unwrap()];
    assert!(codes.contains(&200) && codes.contains(&409), "{a} {b}");
    let (mut winner, mut loser, winner_bearer, loser_bearer) = if codes[0] == 200 {
        (alice, bob, alice_bearer, bob_bearer)
    } else {
        (bob, alice, bob_bearer, alice_bearer)
    };
    assert_eq!(ring_state(&mut winner, &conv).await.0, "ACCEPTED");
    assert_eq!(ring_state(&mut loser, &conv).await.0, "CANCELLED");

    // The consumer's list now shows the agent.
    let change = consumer
        .notification("cqm.ExConversationChangeNotification")
        .await;
    let participants =
        &change["body"]["changes"][0]["result"]["conversationDetails"]["participants"];
    assert_eq!(participants[1]["role"], "ASSIGNED_AGENT", "{change}");

    // The winner reads from the start; the other agent sees nothing of it.
    let r = winner
        .request(
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": conv, "fromSeq": 0}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    let got = winner.changes(1).await;
    assert_eq!(got[0]["event"]["message"], "hello, is anyone there?");
    assert_eq!(got[0]["originatorMetadata"]["role"], "CONSUMER");
    let r = loser
        .request(
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": conv, "fromSeq": 0}),
        )
        .await;
    assert_eq!(r["code"], 404, "{r}");
    let r = publish(&mut loser, &conv, text("let me butt in")).await;
    assert_eq!(r["code"], 404, "{r}");

    // The agent types, then answers; the consumer sees both as the assigned agent.
    let r = publish(
        &mut winner,
        &conv,
        json!({"type": "ChatStateEvent", "chatState": "COMPOSING"}),
    )
    .await;
    assert_eq!(r["code"], 200);
    let answer = publish(&mut winner, &conv, text("Hi! How can I help?")).await;
    assert_eq!(answer["body"]["sequence"], 1);
    let seen = consumer.changes(1).await;
    let typing = seen
        .iter()
        .find(|c| c["event"]["type"] == "ChatStateEvent")
        .unwrap();
    assert_eq!(typing["originatorMetadata"]["role"], "ASSIGNED_AGENT");
    let reply = seen
        .iter()
        .find(|c| c["event"]["type"] == "ContentEvent")
        .unwrap();
    assert_eq!(reply["event"]["message"], "Hi! How can I help?");
    assert_eq!(reply["originatorMetadata"]["role"], "ASSIGNED_AGENT");

    // Receipts reach the agent.
    let r = publish(
        &mut consumer,
        &conv,
        json!({"type": "AcceptStatusEvent", "status": "READ", "sequenceList": [1]}),
    )
    .await;
    assert_eq!(r["body"]["sequence"], 2);
    // Its own reply, then the receipt.
    let got = winner.changes(2).await;
    let receipt = got
        .iter()
        .find(|c| c["event"]["type"] == "AcceptStatusEvent")
        .unwrap();
    assert_eq!(receipt["event"]["status"], "READ");
    assert_eq!(receipt["event"]["sequenceList"], json!([1]));

    // History over REST: the taking agent reads it, the other agent gets 404; the agent's
    // conversation list holds it.
    let client = relay.env.client();
    let path = relay
        .daemon
        .url(&format!("/api/v1/conversations/{conv}/events"));
    let own = client
        .get_with_headers(
            &path,
            &[("authorization", &format!("Bearer {winner_bearer}"))],
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(own.json()["events"].as_array().unwrap().len(), 3);
    let other = client
        .get_with_headers(
            &path,
            &[("authorization", &format!("Bearer {loser_bearer}"))],
        )
        .await;
    assert_eq!(other.status, 404, "{}", other.body);
    let list = client
        .get_with_headers(
            &relay.daemon.url("/api/v1/conversations"),
            &[("authorization", &format!("Bearer {winner_bearer}"))],
        )
        .await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(
        list.json()["conversations"][0]["conversationId"],
        conv.as_str()
    );

    // The winner's own list holds it, until it lets it go.
    let r = winner
        .request("cqm.SubscribeExConversations", json!({}))
        .await;
    assert_eq!(r["code"], 200, "{r}");
    let listed = winner
        .notification("cqm.ExConversationChangeNotification")
        .await;
    assert_eq!(
        listed["body"]["changes"][0]["result"]["convId"],
        conv.as_str()
    );

    // Transfer back to the queue with a skill: the other agent is rung with that skill and
    // takes it; the first one can no longer write.
    let r = winner
        .request(
            "cm.UpdateConversationField",
            json!({"conversationId": conv, "conversationField": [
                {"field": "ParticipantsChange", "type": "REMOVE", "role": "ASSIGNED_AGENT"},
                {"field": "Skill", "type": "UPDATE", "skill": "billing"}]}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    let (state, task) = ring_state(&mut loser, &conv).await;
    assert_eq!(state, "WAITING");
    assert_eq!(task["skillId"], "billing");
    let gone = winner
        .notification("cqm.ExConversationChangeNotification")
        .await;
    assert_eq!(gone["body"]["changes"][0]["type"], "DELETE", "{gone}");
    assert_eq!(
        gone["body"]["changes"][0]["result"]["convId"],
        conv.as_str()
    );
    let r = loser
        .request(
            "routing.UpdateRingState",
            json!({"ringId": task["ringsDetails"][0]["ringId"], "ringState": "ACCEPTED"}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    let r = publish(&mut winner, &conv, text("still here")).await;
    assert_eq!(r["code"], 404, "{r}");
    let r = loser
        .request(
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": conv, "fromSeq": 0}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    let r = publish(&mut loser, &conv, text("Billing here, I take it from now")).await;
    assert_eq!(r["code"], 200, "{r}");
    // The new agent's own follow delivers it; the same fan-out would have reached the old
    // agent's follow by now, had it not ended with the transfer.
    loop {
        let got = loser.changes(1).await;
        if got
            .iter()
            .any(|c| c["event"]["message"] == "Billing here, I take it from now")
        {
            break;
        }
    }
    winner.request("GetClock", Value::Null).await;
    let leaked: Vec<_> = winner
        .log
        .iter()
        .filter(|(dir, f)| *dir == "got" && f.to_string().contains("Billing here"))
        .collect();
    assert!(
        leaked.is_empty(),
        "the agent who let it go still gets it: {leaked:?}"
    );
    let r = winner
        .request("ms.SubscribeMessagingEvents", json!({"dialogId": conv}))
        .await;
    assert_eq!(r["code"], 404, "{r}");

    // The new agent closes it: the consumer's list shows it closed.
    let r = loser
        .request(
            "cm.UpdateConversationField",
            json!({"conversationId": conv, "conversationField": close_field()}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    loop {
        let change = consumer
            .notification("cqm.ExConversationChangeNotification")
            .await;
        if change["body"]["changes"][0]["result"]["conversationDetails"]["state"] == "CLOSE" {
            break;
        }
    }
    consumer.check_schemas(DIFFERS).await;
    winner.check_schemas(DIFFERS).await;
    loser.check_schemas(DIFFERS).await;
}

/// The consumer id brandgate gives a token's subject (the history answer names it).
fn consumer_id(_relay: &Relay, token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["sub"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_whole_conversation_between_a_consumer_and_an_agent_on_sqlite() {
    let relay = Relay::start_with("1h", "", RELAY_EXTRA).await;
    whole_conversation(&relay).await;
}

#[tokio::test]
async fn a_whole_conversation_between_a_consumer_and_an_agent_on_postgresql() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    let relay = Relay::start_with("1h", &db.store_line(), RELAY_EXTRA).await;
    whole_conversation(&relay).await;
    drop(relay);
    db.drop().await;
}

#[tokio::test]
async fn an_agent_needs_a_valid_session_and_sees_only_what_it_took() {
    let relay = Relay::start_with("1h", "", RELAY_EXTRA).await;
    // No session, or a made-up one: refused at both paths before any frame.
    let refused = MessagingClient::connect(
        &relay.env.ca.cert_pem,
        relay.daemon.public,
        "/ws/agent",
        None,
        Side::Agent,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refused.status, 401);
    let refused = MessagingClient::connect(
        &relay.env.ca.cert_pem,
        relay.daemon.public,
        &format!("/ws_api/account/{ACCOUNT}/messaging/brand/not-a-session"),
        None,
        Side::Agent,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refused.status, 401);
    // A consumer's token is not an agent's session.
    let token = relay.token().await;
    let refused = MessagingClient::connect(
        &relay.env.ca.cert_pem,
        relay.daemon.public,
        "/ws/agent",
        Some(&format!("Bearer {token}")),
        Side::Agent,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refused.status, 401);

    // An agent that is not ONLINE is not rung; a rejected ring is not offered again.
    let bearer = relay.agent("carol").await;
    let mut carol = MessagingClient::connect(
        &relay.env.ca.cert_pem,
        relay.daemon.public,
        "/ws/agent",
        Some(&format!("Bearer {bearer}")),
        Side::Agent,
    )
    .await
    .unwrap();
    let r = carol
        .request("routing.SubscribeAgentsState", json!({}))
        .await;
    assert_eq!(r["code"], 200);
    let state = carol.notification("routing.agentStateNotification").await;
    assert_eq!(
        state["body"]["changes"][0]["result"]["availability"],
        "OFFLINE"
    );
    let r = carol
        .request("routing.SubscribeRoutingTasks", json!({}))
        .await;
    assert_eq!(r["code"], 200);
    let (_c1, first, _) = relay.consumer().await;
    let r = carol
        .request("routing.SetAgentState", json!({"availability": "ONLINE"}))
        .await;
    assert_eq!(r["code"], 200);
    let state = carol.notification("routing.agentStateNotification").await;
    assert_eq!(
        state["body"]["changes"][0]["result"]["availability"],
        "ONLINE"
    );
    // Going online rings for what already waits.
    assert_eq!(ring_state(&mut carol, &first).await.0, "WAITING");
    let r = carol
        .request(
            "routing.UpdateRingState",
            json!({"ringId": first, "ringState": "REJECTED"}),
        )
        .await;
    assert_eq!(r["code"], 200);
    assert_eq!(ring_state(&mut carol, &first).await.0, "REJECTED");
    // A waiting conversation is not the agent's: no events, no close.
    let r = carol
        .request("ms.SubscribeMessagingEvents", json!({"dialogId": first}))
        .await;
    assert_eq!(r["code"], 404);
    let r = carol
        .request(
            "cm.UpdateConversationField",
            json!({"conversationId": first, "conversationField": close_field()}),
        )
        .await;
    assert_eq!(r["code"], 404);
    // The next conversation rings; accepting an unknown ring is a 404.
    let (_c2, second, _) = relay.consumer().await;
    assert_eq!(ring_state(&mut carol, &second).await.0, "WAITING");
    let r = carol
        .request(
            "routing.UpdateRingState",
            json!({"ringId": "nope", "ringState": "ACCEPTED"}),
        )
        .await;
    assert_eq!(r["code"], 404);
    // Outside the schema on purpose (not logged for the schema check).
    carol
        .send_raw(
            &json!({"kind": "req", "id": "dance", "type": "routing.SetAgentState",
                "body": {"availability": "DANCING"}})
            .to_string(),
        )
        .await;
    assert_eq!(carol.response_to("dance").await["code"], 400);
    // Away: its ring is cancelled.
    let r = carol
        .request("routing.SetAgentState", json!({"availability": "AWAY"}))
        .await;
    assert_eq!(r["code"], 200);
    assert_eq!(ring_state(&mut carol, &second).await.0, "CANCELLED");
    carol.check_schemas(DIFFERS).await;
}

/// Waits until the fake APNs has delivered `n` pushes to `token`.
async fn pushes(
    fake: &crate::support::fake_apns::FakeApns,
    token: &str,
    n: usize,
) -> Vec<crate::support::fake_apns::ApnsRequest> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = fake.delivered_to(token);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} pushes, expected {n}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const APP: &str = "com.brand.app";
const DEVICE: &str = "0f744707bebcf74f9b7c25d48e3358945f6aa01da5ddb387462c7eaf61bbad78";
const MASK: &str = "You have a new message";

/// A relay with one push app (a fake APNs, the text masked) and short away delays.
async fn relay_with_push_app() -> (Relay, crate::support::fake_apns::FakeApns) {
    let (fake, key) = crate::support::apns(APP).await;
    let relay = relay_with_push_app_on(&fake, &key, "", "ack_delay = \"1s\"\nburst = \"2s\"").await;
    (relay, fake)
}

/// A relay pushing through `fake` for [`APP`], on `store_extra`, with `away` in
/// `[relay.away]`.
async fn relay_with_push_app_on(
    fake: &crate::support::fake_apns::FakeApns,
    key: &crate::support::pki::ApnsKey,
    store_extra: &str,
    away: &str,
) -> Relay {
    relay_node(fake, key, store_extra, away, None).await
}

/// [`relay_with_push_app_on`], as a further node of `first` (its data keys).
async fn relay_node(
    fake: &crate::support::fake_apns::FakeApns,
    key: &crate::support::pki::ApnsKey,
    store_extra: &str,
    away: &str,
    first: Option<&Relay>,
) -> Relay {
    let env = TestEnv::new();
    let app = env.apns_app(
        APP,
        fake,
        key,
        &format!("mask_text = \"{MASK}\""),
        &env.basic_auth(),
        "",
    );
    let relay_config = config(
        &env,
        "1h",
        store_extra,
        &format!("{RELAY_EXTRA}\n[relay.away]\n{away}"),
    );
    if let Some(first) = first {
        let keys = std::fs::read_to_string(first.env.path().join("data-keys")).unwrap();
        env.secret("data-keys", &keys);
    }
    Relay::start_on(env, &format!("{relay_config}\n{app}")).await
}

/// An agent (`username`) online on `relay` holding a new conversation of a consumer who
/// registered [`DEVICE`]: the agent, the consumer's socket, the conversation, its token.
async fn held_conversation(
    relay: &Relay,
    username: &str,
) -> (MessagingClient, MessagingClient, String, String) {
    let bearer = relay.agent(username).await;
    let mut agent = relay.online_agent(&bearer).await;
    let (consumer, conv, token) = relay.consumer().await;
    let (_, task) = ring_state(&mut agent, &conv).await;
    let r = agent
        .request(
            "routing.UpdateRingState",
            json!({"ringId": task["ringsDetails"][0]["ringId"], "ringState": "ACCEPTED"}),
        )
        .await;
    assert_eq!(r["code"], 200);
    let registered =
        register_device(relay, &token, json!({"provider": "apns", "token": DEVICE})).await;
    assert_eq!(registered, 204);
    (agent, consumer, conv, token)
}

/// Two agent messages to an away consumer, then a stop (`signal`) well inside the burst (10 s;
/// a graceful stop takes a few), then a start on the same store: one push for the burst,
/// exactly one.
async fn an_away_push_outlives_a_stop(store_extra: &str, signal: i32) {
    let (fake, key) = crate::support::apns(APP).await;
    let relay = relay_with_push_app_on(
        &fake,
        &key,
        store_extra,
        "ack_delay = \"1s\"\nburst = \"10s\"",
    )
    .await;
    let (mut agent, consumer, conv, _) = held_conversation(&relay, "fay").await;
    consumer.close_now().await;
    for message in ["first secret reply", "second secret reply"] {
        let r = publish(&mut agent, &conv, text(message)).await;
        assert_eq!(r["code"], 200);
    }
    let Relay { env, mut daemon } = relay;
    daemon.signal(signal);
    daemon.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(
        fake.delivered_to(DEVICE).len(),
        0,
        "stopped inside the burst"
    );
    if signal == libc::SIGTERM {
        let log = daemon.logs();
        assert!(
            log.contains("outbox items wait in the store for the next start"),
            "{log}"
        );
    }
    let config = std::fs::read_to_string(&daemon.config_path).unwrap();
    let mut daemon = crate::support::daemon::Daemon::start(env.path(), &config).await;
    let got = pushes(&fake, DEVICE, 1).await;
    assert_eq!(got[0].body["aps"]["alert"], MASK, "{}", got[0].body);
    assert_eq!(got[0].body["aps"]["badge"], 2, "{}", got[0].body);
    daemon.stop().await;
    assert_eq!(fake.delivered_to(DEVICE).len(), 1, "one push for the burst");
}

/// An away push that no device got for a passing reason (APNs answered 503 until the push's
/// deadline) is tried again later, once: the consumer gets it when APNs is back.
#[tokio::test]
async fn an_away_push_apns_could_not_take_is_tried_again() {
    let (fake, key) = crate::support::apns(APP).await;
    let unavailable = crate::support::fake_apns::reason(503, "ServiceUnavailable");
    fake.script(DEVICE, vec![unavailable]);
    let relay = relay_with_push_app_on(&fake, &key, "", "ack_delay = \"1s\"\nburst = \"1s\"").await;
    let (mut agent, consumer, conv, _) = held_conversation(&relay, "hal").await;
    consumer.close_now().await;
    let sent = publish(&mut agent, &conv, text("are you there?")).await;
    // The first away attempt reaches APNs and is refused for now.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fake
        .received()
        .iter()
        .any(|r| r.token == DEVICE && r.answered == 503)
    {
        assert!(Instant::now() < deadline, "no away push reached APNs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay
        .daemon
        .wait_log("an away push was not delivered")
        .await;
    fake.script(DEVICE, vec![crate::support::fake::Behaviour::Ok]);
    let got = pushes(&fake, DEVICE, 1).await;
    assert_eq!(
        got[0].body["sequence"], sent["body"]["sequence"],
        "{}",
        got[0].body
    );
    let Relay { mut daemon, .. } = relay;
    daemon.stop().await;
    assert_eq!(fake.delivered_to(DEVICE).len(), 1);
}

#[tokio::test]
async fn an_away_push_outlives_a_kill_on_sqlite() {
    an_away_push_outlives_a_stop("", libc::SIGKILL).await;
}

#[tokio::test]
async fn an_away_push_outlives_a_graceful_stop_on_sqlite() {
    an_away_push_outlives_a_stop("", libc::SIGTERM).await;
}

#[tokio::test]
async fn an_away_push_outlives_a_kill_on_postgresql() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    an_away_push_outlives_a_stop(&db.store_line(), libc::SIGKILL).await;
    db.drop().await;
}

#[tokio::test]
async fn an_away_push_outlives_a_graceful_stop_on_postgresql() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    an_away_push_outlives_a_stop(&db.store_line(), libc::SIGTERM).await;
    db.drop().await;
}

/// Two nodes on one PostgreSQL: the consumer connected to node a, its agent on node b. The
/// consumer counts as present on b too: it has `ack_delay` (4 s), not `burst` (1 s), to
/// acknowledge, so its acknowledgement after 2 s prevents the push. Once it is gone, the next
/// message is pushed alone.
#[tokio::test]
async fn a_consumer_connected_to_another_node_is_present() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    let (fake, key) = crate::support::apns(APP).await;
    let store = db.store_line();
    let away = "ack_delay = \"4s\"\nburst = \"1s\"";
    let b = relay_with_push_app_on(&fake, &key, &store, away).await;
    let a = relay_node(&fake, &key, &store, away, Some(&b)).await;
    let (mut agent, consumer_on_b, conv, token) = held_conversation(&b, "gil").await;
    consumer_on_b.close_now().await;
    let mut consumer = a.connect(Some(&token)).await;
    let r = consumer
        .request(
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": conv, "fromSeq": 0}),
        )
        .await;
    assert_eq!(r["code"], 200);

    let first = publish(&mut agent, &conv, text("are you there?")).await;
    let seq = first["body"]["sequence"].as_i64().unwrap();
    consumer.changes(1).await;
    // Past the burst, inside ack_delay: an away consumer would have had its push by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = publish(
        &mut consumer,
        &conv,
        json!({"type": "AcceptStatusEvent", "status": "READ", "sequenceList": [seq]}),
    )
    .await;
    assert_eq!(r["code"], 200);

    consumer.close_now().await;
    let second = publish(&mut agent, &conv, text("still there?")).await;
    let got = pushes(&fake, DEVICE, 1).await;
    assert_eq!(got.len(), 1, "no push for the acknowledged message");
    assert_eq!(
        got[0].body["sequence"], second["body"]["sequence"],
        "{}",
        got[0].body
    );
    assert_eq!(got[0].body["aps"]["badge"], 1, "{}", got[0].body);
    drop((a, b));
    db.drop().await;
}

/// Registers the consumer's device for [`APP`]; returns the answer's status.
async fn register_device(relay: &Relay, token: &str, body: Value) -> u16 {
    relay
        .env
        .client()
        .send(
            http::Method::PUT,
            &relay
                .daemon
                .url(&format!("/api/v1/push-registrations/{APP}")),
            &[
                ("authorization", &format!("jwt {token}")),
                ("content-type", "application/json"),
            ],
            bytes::Bytes::from(body.to_string()),
        )
        .await
        .status
}

#[tokio::test]
async fn an_away_consumer_gets_one_masked_push_per_burst() {
    const TOKEN: &str = DEVICE;
    let (relay, fake) = relay_with_push_app().await;

    let bearer = relay.agent("dave").await;
    let mut agent = relay.online_agent(&bearer).await;
    let (consumer, conv, token) = relay.consumer().await;
    let (_, task) = ring_state(&mut agent, &conv).await;
    let r = agent
        .request(
            "routing.UpdateRingState",
            json!({"ringId": task["ringsDetails"][0]["ringId"], "ringState": "ACCEPTED"}),
        )
        .await;
    assert_eq!(r["code"], 200);

    // The consumer registers its device (REST, its identity token), checked on the way in.
    let client = relay.env.client();
    let auth = format!("jwt {token}");
    let put = |body: Value| register_device(&relay, &token, body);
    assert_eq!(
        put(json!({"provider": "apns", "token": "not-hex"})).await,
        400
    );
    assert_eq!(
        put(json!({"provider": "fcm", "token": "abc"})).await,
        404,
        "the app has no FCM"
    );
    assert_eq!(put(json!({"provider": "apns", "token": TOKEN})).await, 204);
    let listed = client
        .get_with_headers(
            &relay.daemon.url("/api/v1/push-registrations"),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(listed.json()["registrations"][0]["app"], APP);
    assert!(
        !listed.body.contains(TOKEN),
        "the token is never given back"
    );

    // Away (socket closed): two agent messages within the burst make one push, masked, with
    // the unread count as badge, collapsed by conversation.
    consumer.close_now().await;
    for message in ["first secret reply", "second secret reply"] {
        let r = publish(&mut agent, &conv, text(message)).await;
        assert_eq!(r["code"], 200);
    }
    let got = pushes(&fake, TOKEN, 1).await;
    let push = &got[0];
    assert_eq!(push.body["aps"]["alert"], MASK, "{}", push.body);
    assert!(!push.body.to_string().contains("secret"), "{}", push.body);
    assert_eq!(push.body["aps"]["badge"], 2, "{}", push.body);
    assert_eq!(push.headers["apns-collapse-id"], conv.as_str());
    // A third message is a new burst: one more push, badge 3. Had the first burst made two
    // pushes, there would be three by now.
    publish(&mut agent, &conv, text("third secret reply")).await;
    let got = pushes(&fake, TOKEN, 2).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].body["aps"]["badge"], 3);

    // Connected and acknowledging in time: no push for that message; the next one, not
    // acknowledged, is pushed alone after ack_delay.
    let mut back = relay.connect(Some(&token)).await;
    let r = back
        .request(
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": conv, "fromSeq": 3}),
        )
        .await;
    assert_eq!(r["code"], 200);
    let seen = publish(&mut agent, &conv, text("are you back?")).await;
    let seq = seen["body"]["sequence"].as_i64().unwrap();
    back.changes(1).await;
    let r = publish(
        &mut back,
        &conv,
        json!({"type": "AcceptStatusEvent", "status": "ACCEPT", "sequenceList": [seq]}),
    )
    .await;
    assert_eq!(r["code"], 200);
    let unseen = publish(&mut agent, &conv, text("hello?")).await;
    let got = pushes(&fake, TOKEN, 3).await;
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[2].body["sequence"], unseen["body"]["sequence"],
        "{}",
        got[2].body
    );
    assert_eq!(got[2].body["aps"]["badge"], 1);

    // The provider says the token is dead: the registration is removed.
    fake.script(
        TOKEN,
        vec![crate::support::fake_apns::gone(
            "Unregistered",
            1_700_000_000_000,
        )],
    );
    back.close_now().await;
    publish(&mut agent, &conv, text("last one")).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let listed = client
            .get_with_headers(
                &relay.daemon.url("/api/v1/push-registrations"),
                &[("authorization", &auth)],
            )
            .await;
        if listed.json()["registrations"]
            .as_array()
            .unwrap()
            .is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead token is still registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.check_schemas(DIFFERS).await;
}

#[tokio::test]
async fn relay_records_are_resealed_under_a_new_data_key() {
    let (relay, _fake) = relay_with_push_app().await;
    let bearer = relay.agent("erin").await;
    let mut agent = relay.online_agent(&bearer).await;
    let (mut consumer, conv, token) = relay.consumer().await;
    let (_, task) = ring_state(&mut agent, &conv).await;
    let r = agent
        .request(
            "routing.UpdateRingState",
            json!({"ringId": task["ringsDetails"][0]["ringId"], "ringState": "ACCEPTED"}),
        )
        .await;
    assert_eq!(r["code"], 200);
    let sent = publish(&mut consumer, &conv, text("sealed before the rotation")).await;
    assert_eq!(sent["code"], 200);
    let device = json!({"provider": "apns", "token": DEVICE});
    assert_eq!(register_device(&relay, &token, device.clone()).await, 204);
    consumer.close_now().await;
    agent.close_now().await;
    let Relay { env, mut daemon } = relay;
    daemon.stop().await;

    // An agent without a password (single sign-on only) has nothing to re-seal.
    let path = env.path().join("brandgate.toml");
    let add = [
        "agents",
        "add",
        "--sso-only",
        "--username",
        "sso-only",
        "--account",
        ACCOUNT,
        "--config",
        path.to_str().unwrap(),
    ];
    let (code, out, err) = crate::support::daemon::run(&add, &[]).await;
    assert_eq!(code, 0, "{out}{err}");

    // A new data key in front (it becomes active); everything re-sealed under it.
    let old = std::fs::read_to_string(env.path().join("data-keys")).unwrap();
    let new_key = crate::support::identity_world::data_key_line("k2");
    env.secret("data-keys", &format!("{new_key}{old}"));
    let args = ["store", "reseal", "--config", path.to_str().unwrap()];
    let (code, out, err) = crate::support::daemon::run(&args, &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    for line in [
        "re-sealed 1 relay events",
        "re-sealed 1 agent passwords",
        "re-sealed 1 device tokens",
    ] {
        assert!(out.contains(line), "{line:?} in {out}");
    }
    // The old key can go: the agent logs in, the history opens, the device is still there.
    env.secret("data-keys", &new_key);
    let config = std::fs::read_to_string(&path).unwrap();
    let relay = Relay::start_on(env, &config).await;
    let bearer = relay.login("erin", "erin-password-1").await;
    let history = relay
        .env
        .client()
        .get_with_headers(
            &relay
                .daemon
                .url(&format!("/api/v1/conversations/{conv}/events")),
            &[("authorization", &format!("Bearer {bearer}"))],
        )
        .await;
    assert_eq!(history.status, 200, "{}", history.body);
    assert_eq!(
        history.json()["events"][0]["event"]["message"],
        "sealed before the rotation"
    );
    let (_, out, _) = crate::support::daemon::run(&args, &[]).await;
    assert!(out.contains("re-sealed 0 relay events"), "{out}");
    assert!(out.contains("re-sealed 0 device tokens"), "{out}");
}

/// A conversation between a consumer and an agent, both writing; a `kill -9` right after the
/// last acknowledgement; a start on the same store: every acknowledged message is there, in
/// order, for both, and the agent's session survived with it.
async fn a_kill_mid_conversation_loses_nothing(store_extra: &str) {
    let relay = Relay::start_with("1h", store_extra, RELAY_EXTRA).await;
    let bearer = relay.agent("frank").await;
    let mut agent = relay.online_agent(&bearer).await;
    let (mut consumer, conv, token) = relay.consumer().await;
    let (_, task) = ring_state(&mut agent, &conv).await;
    let r = agent
        .request(
            "routing.UpdateRingState",
            json!({"ringId": task["ringsDetails"][0]["ringId"], "ringState": "ACCEPTED"}),
        )
        .await;
    assert_eq!(r["code"], 200);
    let mut sent = Vec::new();
    for i in 0..10 {
        for (who, c) in [("consumer", &mut consumer), ("agent", &mut agent)] {
            let message = format!("{who} {i}");
            assert_eq!(publish(c, &conv, text(&message)).await["code"], 200);
            sent.push(message);
        }
    }
    let Relay { env, mut daemon } = relay;
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit(Duration::from_secs(10)).await;
    let config = std::fs::read_to_string(&daemon.config_path).unwrap();
    let relay = Relay::start_on(env, &config).await;
    for mut c in [
        relay.connect(Some(&token)).await,
        relay.connect_agent(&bearer).await,
    ] {
        let r = c
            .request(
                "ms.SubscribeMessagingEvents",
                json!({"dialogId": conv, "fromSeq": 0}),
            )
            .await;
        assert_eq!(r["code"], 200, "{r}");
        let seen: Vec<String> = c
            .changes(sent.len())
            .await
            .iter()
            .map(|c| c["event"]["message"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(seen, sent);
    }
}

#[tokio::test]
async fn a_kill_mid_conversation_loses_nothing_on_sqlite() {
    a_kill_mid_conversation_loses_nothing("").await;
}

#[tokio::test]
async fn a_kill_mid_conversation_loses_nothing_on_postgresql() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    a_kill_mid_conversation_loses_nothing(&db.store_line()).await;
    db.drop().await;
}

/// Who the consumer is, for the agent holding its conversation only: what its token said
/// (authenticated, the claims as minted), sealed at rest; an anonymous consumer shows as not
/// authenticated.
#[tokio::test]
async fn the_holding_agent_sees_who_the_consumer_is() {
    let env = TestEnv::new();
    let config = relay_world::config(
        &env,
        "1h",
        "",
        &format!(
            "{RELAY_EXTRA}\n[identity.claims]\ngiven_name = \"given_name\"\nemail = \"email\"\n"
        ),
    );
    let relay = Relay::start_on(env, &config).await;
    let alice = relay.agent("alice").await;
    let bob = relay.agent("bob").await;
    let mut agent = relay.online_agent(&alice).await;

    let answer = relay
        .env
        .client()
        .post_json(
            &relay.daemon.url("/identity/v1/token"),
            &[(
                "authorization",
                &crate::support::client::basic("crm", relay_world::BACKEND_SECRET),
            )],
            &json!({"subject": "cust-7", "claims": {"given_name": "Ada", "email": "ada@example.test"}}),
        )
        .await;
    let token = answer.json()["jwt"].as_str().unwrap().to_string();
    let mut consumer = relay.connect(Some(&token)).await;
    let conv = consumer
        .request("cm.ConsumerRequestConversation", json!({}))
        .await["body"]["conversationId"]
        .as_str()
        .unwrap()
        .to_string();
    let url = relay
        .daemon
        .url(&format!("/api/v1/conversations/{conv}/consumer"));
    let get = |auth: String| {
        let client = relay.env.client();
        let url = url.clone();
        async move {
            client
                .get_with_headers(&url, &[("authorization", auth.as_str())])
                .await
        }
    };
    // Not taken yet: nobody's to see.
    assert_eq!(get(format!("Bearer {alice}")).await.status, 404);
    assert_eq!(ring_state(&mut agent, &conv).await.0, "WAITING");
    let r = agent
        .request(
            "routing.UpdateRingState",
            json!({"ringId": conv, "ringState": "ACCEPTED"}),
        )
        .await;
    assert_eq!(r["code"], 200);
    let seen = get(format!("Bearer {alice}")).await;
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert_eq!(seen.headers["cache-control"], "no-store");
    assert_eq!(
        seen.json(),
        json!({"consumerId": "cust-7", "authenticated": true,
            "claims": {"given_name": "Ada", "email": "ada@example.test"}})
    );
    // Another agent, and the consumer itself: not theirs.
    let other = get(format!("Bearer {bob}")).await;
    assert_eq!(
        (other.status, other.json()["error"].clone()),
        (404, json!("no such conversation"))
    );
    assert_eq!(get(format!("jwt {token}")).await.status, 403);

    // Sealed at rest: the email is nowhere in the database files.
    let mut searched = 0;
    for entry in std::fs::read_dir(relay.env.path().join("state")).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().contains("brandgate.db") {
            searched += 1;
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(16).any(|w| w == b"ada@example.test"),
                "{} holds the email",
                path.display()
            );
        }
    }
    assert!(searched > 0);

    // An anonymous consumer: not authenticated, no claims.
    let (_c, anon_conv, _) = relay.consumer().await;
    assert_eq!(ring_state(&mut agent, &anon_conv).await.0, "WAITING");
    agent
        .request(
            "routing.UpdateRingState",
            json!({"ringId": anon_conv, "ringState": "ACCEPTED"}),
        )
        .await;
    let anon = relay
        .env
        .client()
        .get_with_headers(
            &relay
                .daemon
                .url(&format!("/api/v1/conversations/{anon_conv}/consumer")),
            &[("authorization", &format!("Bearer {alice}"))],
        )
        .await;
    assert_eq!(anon.json()["authenticated"], false, "{}", anon.body);
    assert_eq!(anon.json()["claims"], json!({}));
}

/// `brandgate_relay_*`: sockets open by role (while they are open), and the agents' audited
/// events by outcome (of this daemon: `brandgate agents add` audits in its own process).
#[tokio::test]
async fn the_relay_counts_its_sockets_and_its_agents_sign_ins() {
    let relay = Relay::start("1h").await;
    let password = relay.add_agent("mia").await;
    let wrong = relay
        .env
        .client()
        .post_json(
            &relay.daemon.url(&format!("/api/account/{ACCOUNT}/login")),
            &[],
            &serde_json::json!({"username": "mia", "password": "not-her-password"}),
        )
        .await;
    assert_eq!(wrong.status, 401);
    let bearer = relay.login("mia", &password).await;
    let agent = relay.connect_agent(&bearer).await;
    let (consumer, _, _) = relay.consumer().await;
    let metrics = || async {
        relay
            .env
            .client()
            .get(&relay.daemon.ops_url("/metrics"))
            .await
            .body
    };
    let m = metrics().await;
    for line in [
        "brandgate_relay_sockets_open{role=\"agent\"} 1",
        "brandgate_relay_sockets_open{role=\"consumer\"} 1",
        "brandgate_relay_agent_audit_total{outcome=\"wrong_password\"} 1",
        "brandgate_relay_agent_audit_total{outcome=\"success\"} 1",
    ] {
        assert!(m.contains(line), "missing {line} in\n{m}");
    }
    drop(agent);
    drop(consumer);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let m = metrics().await;
        let closed = m.contains("brandgate_relay_sockets_open{role=\"agent\"} 0")
            && m.contains("brandgate_relay_sockets_open{role=\"consumer\"} 0");
        if closed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sockets still counted:\n{m}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Reads one sample from the daemon's metrics, waiting (bounded) until it reaches `at_least`.
async fn metric_reaching(relay: &Relay, sample: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = relay
            .env
            .client()
            .get(&relay.daemon.ops_url("/metrics"))
            .await
            .body;
        let value = m
            .lines()
            .find_map(|l| {
                l.strip_prefix(sample)?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {sample} in\n{m}"));
        if value >= at_least || Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Messages committed by who sent them, events delivered to subscribed sockets, and the time
/// from a ring to its acceptance: each counted once for what happened, no more.
#[tokio::test]
async fn the_relay_counts_messages_deliveries_and_rings_accepted() {
    let relay = Relay::start("1h").await;
    let bearer = relay.agent("ann").await;
    let mut agent = relay.online_agent(&bearer).await;
    let (mut consumer, conv, _) = relay.consumer().await;
    let r = consumer
        .request(
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": conv, "fromSeq": 0}),
        )
        .await;
    assert_eq!(r["code"], 200);
    // Typing (delivered, not a message), then two messages: three deliveries to the consumer.
    let typing = json!({"type": "ChatStateEvent", "chatState": "COMPOSING"});
    assert_eq!(publish(&mut consumer, &conv, typing).await["code"], 200);
    consumer.notification("ms.MessagingEventNotification").await;
    for (seq, words) in [(0, "first"), (1, "second")] {
        let r = publish(&mut consumer, &conv, text(words)).await;
        assert_eq!(r["body"]["sequence"], seq, "{r}");
        consumer.changes(1).await;
    }
    let (_, task) = ring_state(&mut agent, &conv).await;
    let ring = task["ringsDetails"][0]["ringId"]
        .as_str()
        .unwrap()
        .to_string();
    let r = agent
        .request(
            "routing.UpdateRingState",
            json!({"ringId": ring, "ringState": "ACCEPTED"}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(ring_state(&mut agent, &conv).await.0, "ACCEPTED");
    // The agent reads both messages (two deliveries), answers (one to each side).
    let r = agent
        .request(
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": conv, "fromSeq": 0}),
        )
        .await;
    assert_eq!(r["code"], 200);
    assert_eq!(agent.changes(2).await.len(), 2);
    assert_eq!(publish(&mut agent, &conv, text("hello")).await["code"], 200);
    consumer.changes(1).await;
    agent.changes(1).await;

    let sample = |name: &str| format!("brandgate_relay_{name}");
    assert_eq!(
        metric_reaching(&relay, &sample("deliveries_total"), 7.0).await,
        7.0
    );
    assert_eq!(
        metric_reaching(
            &relay,
            &sample("messages_committed_total{role=\"consumer\"}"),
            2.0
        )
        .await,
        2.0
    );
    assert_eq!(
        metric_reaching(
            &relay,
            &sample("messages_committed_total{role=\"agent\"}"),
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        metric_reaching(&relay, &sample("ring_to_accept_seconds_count"), 1.0).await,
        1.0
    );
}
