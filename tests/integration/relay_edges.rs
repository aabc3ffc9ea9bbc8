//! The relay protocol's edges an outside attack run found misbehaving: the closing handshake,
//! oversized frames, a rejected ring, typing and sequences, a client event id reused for other
//! content, and the small inconsistencies (negative `fromSeq`, receipts for sequences that do
//! not exist, the id of an unparseable frame). Each test fails on the behaviour it replaced.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::messaging::{MessagingClient, Stream};
use crate::support::relay_world::{ACCOUNT, PLATFORM_PATH, Relay, publish, ring_state, text};

/// How long the test waits for the server's side of a close.
const WAIT: Duration = Duration::from_secs(10);

/// A bare socket (no frame log), at `path` with `authorization`.
async fn raw(relay: &Relay, path: &str, authorization: Option<&str>) -> Stream {
    let tls = std::sync::Arc::new(MessagingClient::tls(&relay.env.ca.cert_pem));
    MessagingClient::socket(&tls, relay.daemon.public, path, authorization)
        .await
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.body))
}

/// What the server sent until the connection ended: its Close frame's code, or `None` when
/// the connection ended without one (what a client reports as 1006).
async fn server_close(stream: &mut Stream) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, stream.next()).await {
            Err(_) => panic!("the server neither closed nor answered within {WAIT:?}"),
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => return None,
        }
    }
}

/// A normal hang-up from the client is answered with a Close (RFC 6455 §5.5.1), on consumer
/// and agent sockets alike, so the client sees 1000, not 1006.
#[tokio::test]
async fn a_clients_close_is_answered_with_a_close() {
    let relay = Relay::start("1h").await;
    let token = relay.token().await;
    let bearer = relay.agent("alice").await;
    let sockets = [
        (PLATFORM_PATH.to_string(), format!("jwt {token}")),
        ("/ws/agent".to_string(), format!("Bearer {bearer}")),
        (
            format!("/ws_api/account/{ACCOUNT}/messaging/brand/{bearer}?v=2.0"),
            String::new(),
        ),
    ];
    for (path, auth) in sockets {
        let auth = (!auth.is_empty()).then_some(auth.as_str());
        let mut stream = raw(&relay, &path, auth).await;
        stream
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            })))
            .await
            .unwrap();
        assert_eq!(server_close(&mut stream).await, Some(1000), "{path}");
    }
}

/// Any frame over `relay.max_frame_bytes` gets 1009 and a proper close: just over the limit,
/// and far over it (past what the WebSocket layer reads at all), unauthenticated or not.
#[tokio::test]
async fn oversized_frames_get_1009() {
    let relay = Relay::start("1h").await; // max_frame_bytes = 16384
    let token = relay.token().await;
    let init = |size: usize| {
        json!({"kind": "req", "id": "0", "type": "InitConnection", "headers": [
            {"type": ".ams.headers.ConsumerAuthentication", "jwt": "x".repeat(size)}]})
        .to_string()
    };
    for (name, size, authenticated) in [
        ("just over, authenticated", 16_400, true),
        ("twice the limit and more, authenticated", 40_000, true),
        ("a 1 MB InitConnection", 1_000_000, false),
        ("5 MB, authenticated", 5_000_000, true),
    ] {
        let auth = format!("jwt {token}");
        let mut stream = raw(
            &relay,
            PLATFORM_PATH,
            authenticated.then_some(auth.as_str()),
        )
        .await;
        // The server may stop reading mid-frame: a failed send is fine, the close is not.
        let _ = stream.send(Message::Text(init(size).into())).await;
        assert_eq!(server_close(&mut stream).await, Some(1009), "{name}");
    }
    // The daemon carries on.
    let mut c = relay.connect(Some(&token)).await;
    let r = c.request("cm.ConsumerRequestConversation", json!({})).await;
    assert_eq!(r["code"], 200);
}

/// An agent's REJECTED sticks: it cannot accept the ring after all, is not rung again on a new
/// subscription or another socket, until the conversation is transferred back to the queue.
#[tokio::test]
async fn a_rejected_ring_stays_rejected_until_the_conversation_is_requeued() {
    let relay = Relay::start("1h").await;
    let alice = relay.agent("alice").await;
    let bob = relay.agent("bob").await;
    let (_consumer, conv, _) = relay.consumer().await;

    let mut first = relay.online_agent(&alice).await;
    let mut second = relay.online_agent(&alice).await;
    assert_eq!(ring_state_of(&mut first, &conv).await, "WAITING");
    assert_eq!(ring_state_of(&mut second, &conv).await, "WAITING");
    let r = ring(&mut first, &conv, "REJECTED").await;
    assert_eq!(r["code"], 200, "{r}");
    // Both of alice's sockets see the ring end.
    assert_eq!(ring_state_of(&mut first, &conv).await, "REJECTED");
    assert_eq!(ring_state_of(&mut second, &conv).await, "REJECTED");

    // Accepting it after all: refused, with the reason.
    let r = ring(&mut second, &conv, "ACCEPTED").await;
    assert_eq!(r["code"], 409, "{r}");
    assert!(
        r["body"]
            .as_str()
            .unwrap()
            .contains("you rejected this ring"),
        "{r}"
    );

    // A new socket does not ring alice for it. What would show it: the queue is offered oldest
    // first, so once a newer conversation rings this socket, an older ring would have come.
    let mut third = relay.online_agent(&alice).await;
    let (_other, newer, _) = relay.consumer().await;
    assert_eq!(ring_state_of(&mut third, &newer).await, "WAITING");
    let rung: Vec<&Value> = third
        .log
        .iter()
        .filter(|(_, f)| f["type"] == "routing.routingTaskNotification")
        .map(|(_, f)| &f["body"]["changes"][0]["result"]["conversationId"])
        .collect();
    assert_eq!(rung, [&json!(newer)], "alice was rung again");
    let mut bobs = relay.online_agent(&bob).await;
    assert_eq!(ring_state_of(&mut bobs, &conv).await, "WAITING");

    // Bob takes it and transfers it back: a new round, alice is rung again and may take it.
    assert_eq!(ring(&mut bobs, &conv, "ACCEPTED").await["code"], 200);
    let transfer = bobs
        .request(
            "cm.UpdateConversationField",
            json!({"conversationId": conv, "conversationField": [
                {"field": "ParticipantsChange", "type": "REMOVE", "role": "ASSIGNED_AGENT"}]}),
        )
        .await;
    assert_eq!(transfer["code"], 200, "{transfer}");
    assert_eq!(ring_state_of(&mut third, &conv).await, "WAITING");
    assert_eq!(ring(&mut third, &conv, "ACCEPTED").await["code"], 200);
}

async fn ring(agent: &mut MessagingClient, conv: &str, state: &str) -> Value {
    agent
        .request(
            "routing.UpdateRingState",
            json!({"ringId": conv, "ringState": state}),
        )
        .await
}

/// Typing takes no sequence and carries none; the receipt after it gets the next one, so a
/// client that de-duplicates by sequence keeps both.
#[tokio::test]
async fn typing_never_carries_a_stored_events_sequence() {
    let relay = Relay::start("1h").await;
    let (mut c, conv, _) = relay.consumer().await;
    let r = c
        .request(
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": conv, "fromSeq": 0}),
        )
        .await;
    assert_eq!(r["code"], 200);
    assert_eq!(
        publish(&mut c, &conv, text("one")).await["body"]["sequence"],
        0
    );
    let typing = publish(
        &mut c,
        &conv,
        json!({"type": "ChatStateEvent", "chatState": "COMPOSING"}),
    )
    .await;
    assert_eq!(typing["body"], json!({}), "{typing}");
    let receipt = publish(
        &mut c,
        &conv,
        json!({"type": "AcceptStatusEvent", "status": "ACCEPT", "sequenceList": [0]}),
    )
    .await;
    assert_eq!(receipt["body"]["sequence"], 1);
    let changes = c.changes(2).await;
    let sequences: Vec<Option<i64>> = changes.iter().map(|c| c["sequence"].as_i64()).collect();
    assert_eq!(sequences, [Some(0), None, Some(1)], "{changes:?}");
}

/// A client event id names one event: a repeat with the same content is idempotent, other
/// content under the same id is refused (409) and stores nothing.
#[tokio::test]
async fn an_event_id_reused_for_other_content_is_refused() {
    let relay = Relay::start("1h").await;
    let (mut c, conv, token) = relay.consumer().await;
    let with_id = |event: Value| {
        let mut e = event;
        e["eventId"] = json!("client-1");
        e
    };
    let first = publish(&mut c, &conv, with_id(text("pay 10 EUR"))).await;
    assert_eq!(first["body"]["sequence"], 0);
    let again = publish(&mut c, &conv, with_id(text("pay 10 EUR"))).await;
    assert_eq!(
        (&again["code"], &again["body"]["sequence"]),
        (&json!(200), &json!(0))
    );

    let other = publish(&mut c, &conv, with_id(text("pay 1000 EUR"))).await;
    assert_eq!(other["code"], 409, "{other}");
    assert!(
        other["body"]
            .as_str()
            .unwrap()
            .contains("eventId was already used"),
        "{other}"
    );
    let receipt =
        with_id(json!({"type": "AcceptStatusEvent", "status": "READ", "sequenceList": [0]}));
    let r = publish(&mut c, &conv, receipt).await;
    assert_eq!(r["code"], 409, "{r}");

    // Nothing else was stored: the history holds the first text only.
    let history = history(&relay, &conv, "fromSeq=0", &token).await;
    assert_eq!(history.status, 200, "{}", history.body);
    let events = history.json();
    let events = events["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"]["message"], "pay 10 EUR");
    let next = publish(&mut c, &conv, text("next")).await;
    assert_eq!(
        next["body"]["sequence"], 1,
        "the refused events took no sequence"
    );
}

/// The small ones: a negative `fromSeq` is refused on the socket as on REST, receipts name
/// sequences that exist, and an unparseable frame's answer echoes its id when it can be read.
#[tokio::test]
async fn small_protocol_edges_agree() {
    let relay = Relay::start("1h").await;
    let (mut c, conv, token) = relay.consumer().await;
    let r = c
        .request(
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": conv, "fromSeq": -5}),
        )
        .await;
    assert_eq!(r["code"], 400, "{r}");
    assert!(
        r["body"]
            .as_str()
            .unwrap()
            .contains("fromSeq must be a sequence (0 or more)")
    );
    let rest = history(&relay, &conv, "fromSeq=-5", &token).await;
    assert_eq!(rest.status, 400);
    assert!(
        rest.body.contains("fromSeq must be a sequence (0 or more)"),
        "{}",
        rest.body
    );

    assert_eq!(
        publish(&mut c, &conv, text("one")).await["body"]["sequence"],
        0
    );
    let r = publish(
        &mut c,
        &conv,
        json!({"type": "AcceptStatusEvent", "status": "READ", "sequenceList": [0, 7]}),
    )
    .await;
    assert_eq!(r["code"], 400, "{r}");
    assert!(r["body"].as_str().unwrap().contains("sequence 7"), "{r}");

    c.send_raw(r#"{"kind":"req","id":"abc-12","type":"ms.PublishEvent","body":{"dialogId":"#)
        .await;
    let answer = c.response_to("abc-12").await;
    assert_eq!(answer["code"], 400);
    assert!(
        answer["body"]
            .as_str()
            .unwrap()
            .starts_with("not a JSON object")
    );
    c.send_raw("{{{ no id at all").await;
    let answer = c.response_to("invalid").await;
    assert_eq!(answer["code"], 400);
    // The socket stays, and nothing else was stored.
    assert_eq!(
        publish(&mut c, &conv, text("two")).await["body"]["sequence"],
        1
    );
}

/// The state of the next routing task of `conv` on this socket.
async fn ring_state_of(agent: &mut MessagingClient, conv: &str) -> String {
    ring_state(agent, conv).await.0
}

/// The history REST with the consumer's token.
async fn history(
    relay: &Relay,
    conv: &str,
    query: &str,
    token: &str,
) -> crate::support::client::Answer {
    relay
        .env
        .client()
        .get_with_headers(
            &relay
                .daemon
                .url(&format!("/api/v1/conversations/{conv}/events?{query}")),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
}
