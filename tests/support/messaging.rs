//! A messaging client for the relay tests: a real WebSocket (tokio-tungstenite) over TLS to the
//! running daemon, speaking the platform's envelopes, that keeps every frame it sent and got so
//! the test can check them all against the platform's published JSON schemas
//! (tests/python/validate_messages.py reads ../shared/schemas/messaging in place).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub type Stream = WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// How long any single wait for a frame may take.
const WAIT: Duration = Duration::from_secs(10);

/// Which published schema a frame is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Consumer,
    Agent,
}

pub struct MessagingClient {
    stream: Stream,
    side: Side,
    /// Frames not yet taken by the test.
    pending: VecDeque<Value>,
    /// Every frame, in order, tagged "sent" or "got", for the schema check.
    pub log: Vec<(&'static str, Value)>,
    next_id: u64,
    /// The server's close frame, once it came.
    close: Option<(u16, String)>,
}

/// What the upgrade answered when it was refused.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl MessagingClient {
    /// Connects to `path` on the daemon (HTTP/1.1, TLS trusting `ca_pem`), with
    /// `Authorization: <authorization>` when given.
    pub async fn connect(
        ca_pem: &str,
        addr: SocketAddr,
        path: &str,
        authorization: Option<&str>,
        side: Side,
    ) -> Result<MessagingClient, Refused> {
        Self::connect_from(ca_pem, None, addr, path, authorization, side).await
    }

    /// [`MessagingClient::connect`] from the local address `local` (127.0.0.2 ...), when given.
    pub async fn connect_from(
        ca_pem: &str,
        local: Option<std::net::IpAddr>,
        addr: SocketAddr,
        path: &str,
        authorization: Option<&str>,
        side: Side,
    ) -> Result<MessagingClient, Refused> {
        let tls = Arc::new(Self::tls(ca_pem));
        Ok(MessagingClient {
            stream: Self::socket_from(&tls, local, addr, path, authorization).await?,
            side,
            pending: VecDeque::new(),
            log: Vec::new(),
            next_id: 1,
            close: None,
        })
    }

    /// The TLS client config sockets use (HTTP/1.1, trusting `ca_pem`).
    pub fn tls(ca_pem: &str) -> rustls::ClientConfig {
        let mut tls = super::client::tls_config(ca_pem, None);
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        tls
    }

    /// A bare WebSocket to `path` (for benchmarks: no frame log, no schema check).
    pub async fn socket(
        tls: &Arc<rustls::ClientConfig>,
        addr: SocketAddr,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<Stream, Refused> {
        Self::socket_from(tls, None, addr, path, authorization).await
    }

    async fn socket_from(
        tls: &Arc<rustls::ClientConfig>,
        local: Option<std::net::IpAddr>,
        addr: SocketAddr,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<Stream, Refused> {
        let tcp = tcp_from(local, addr).await;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let mut request = format!("wss://localhost:{}{path}", addr.port())
            .into_client_request()
            .unwrap();
        if let Some(a) = authorization {
            request
                .headers_mut()
                .insert("authorization", a.parse().unwrap());
        }
        match tokio_tungstenite::client_async(request, stream).await {
            Ok((stream, _)) => Ok(stream),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(Refused {
                status: response.status().as_u16(),
                body: response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            }),
            Err(e) => panic!("websocket handshake: {e}"),
        }
    }

    /// Sends a raw text frame (not logged for the schema check: tests use it for garbage).
    pub async fn send_raw(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.to_string().into()))
            .await
            .unwrap();
    }

    /// Sends a frame (logged for the schema check).
    pub async fn send(&mut self, frame: Value) {
        self.log.push(("sent", frame.clone()));
        self.send_raw(&frame.to_string()).await;
    }

    /// Sends a request and returns its response; notifications that come meanwhile are kept.
    pub async fn request(&mut self, kind: &str, body: Value) -> Value {
        let id = self.send_request(kind, body).await;
        self.response_to(&id).await
    }

    /// Sends a request without waiting; returns its id for [`MessagingClient::response_to`].
    pub async fn send_request(&mut self, kind: &str, body: Value) -> String {
        let id = self.next_id.to_string();
        self.next_id += 1;
        let mut frame = json!({"kind": "req", "id": id, "type": kind});
        if !body.is_null() {
            frame["body"] = body;
        }
        self.send(frame).await;
        id
    }

    /// The response to request `id`.
    pub async fn response_to(&mut self, id: &str) -> Value {
        if let Some(i) = self
            .pending
            .iter()
            .position(|f| f["kind"] == "resp" && f["reqId"] == id)
        {
            return self.pending.remove(i).unwrap();
        }
        loop {
            let frame = self
                .receive()
                .await
                .expect("the socket closed before the response");
            if frame["kind"] == "resp" && frame["reqId"] == id {
                return frame;
            }
            self.pending.push_back(frame);
        }
    }

    /// The next notification of `kind`.
    pub async fn notification(&mut self, kind: &str) -> Value {
        if let Some(i) = self
            .pending
            .iter()
            .position(|f| f["kind"] == "notification" && f["type"] == kind)
        {
            return self.pending.remove(i).unwrap();
        }
        loop {
            let frame = self
                .receive()
                .await
                .unwrap_or_else(|| panic!("the socket closed waiting for {kind}"));
            if frame["kind"] == "notification" && frame["type"] == kind {
                return frame;
            }
            self.pending.push_back(frame);
        }
    }

    /// Message changes (`ms.MessagingEventNotification`) until `n` stored events (content
    /// or receipts) were seen; chat states are returned too, in order.
    pub async fn changes(&mut self, stored: usize) -> Vec<Value> {
        let mut all = Vec::new();
        let mut count = 0;
        while count < stored {
            let n = self.notification("ms.MessagingEventNotification").await;
            for c in n["body"]["changes"].as_array().unwrap() {
                if c["event"]["type"] != "ChatStateEvent" {
                    count += 1;
                }
                all.push(c.clone());
            }
        }
        all
    }

    /// The next frame, or `None` when the socket closed (then [`MessagingClient::close_frame`]).
    async fn receive(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("no frame within the wait")?;
            match message {
                Ok(Message::Text(text)) => {
                    let frame: Value = serde_json::from_str(&text).expect("a JSON frame");
                    self.log.push(("got", frame.clone()));
                    return Some(frame);
                }
                Ok(Message::Close(frame)) => {
                    self.close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    return None;
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Waits for the server to close the socket; returns its close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        while self.receive().await.is_some() {}
        self.close
            .clone()
            .unwrap_or((u16::from(CloseCode::Abnormal), String::new()))
    }

    /// Closes from this side.
    pub async fn close_now(mut self) {
        let _ = self.stream.close(None).await;
        let _ = self.stream.get_mut().shutdown().await;
    }

    /// Checks every logged frame against the published schemas; `differs` are the frames
    /// brandgate deliberately sends or accepts outside them, each checked in its own way.
    pub async fn check_schemas(&self, differs: &[Difference]) {
        check_frames(self.side, &self.log, differs).await;
    }
}

/// A frame brandgate sends or accepts outside the published schemas on purpose: which frames
/// (`applies`), why (for the reader), and how such a frame is checked instead (`instead`: the
/// schema entry and instance to validate in its place, or why it is not what it should be).
pub struct Difference {
    pub why: &'static str,
    pub applies: fn(Side, &str, &Value) -> bool,
    pub instead: fn(&Value) -> Result<(String, Value), String>,
}

/// Consumers may send `GetClock`: the schemas list it for agents only. Checked as the agents'.
pub const CONSUMER_GET_CLOCK: Difference = Difference {
    why: "the schemas list GetClock for agents only; brandgate answers consumers too",
    applies: |side, direction, frame| {
        side == Side::Consumer && direction == "sent" && frame["type"] == "GetClock"
    },
    instead: |frame| Ok(("ws/agentRequests.json".into(), frame.clone())),
};

/// A chat state (typing) is not a stored event and carries no `sequence`, which the schema
/// requires of every change. Checked: every change without a sequence is a chat state, and
/// the frame with a sequence put in passes the schema.
pub const CHAT_STATE_WITHOUT_SEQUENCE: Difference = Difference {
    why: "a chat state has no sequence (it is not stored); the schema requires one",
    applies: |_, direction, frame| {
        direction == "got"
            && frame["type"] == "ms.MessagingEventNotification"
            && frame["body"]["changes"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c.get("sequence").is_none()))
    },
    instead: |frame| {
        let mut patched = frame.clone();
        for change in patched["body"]["changes"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            if change.get("sequence").is_none() {
                if change["event"]["type"] != "ChatStateEvent" {
                    return Err(format!("a stored event without a sequence: {change}"));
                }
                change["sequence"] = json!(0);
            }
        }
        Ok(("ws/consumerNotifications.json".into(), patched))
    },
};

/// brandgate's own expiry notifications (the schemas have none): exactly
/// `{"kind": "notification", "type": <name>, "body": {"reason": <text>}}`.
fn own_notification(frame: &Value) -> Result<(String, Value), String> {
    let reason = frame["body"]["reason"].as_str().unwrap_or("");
    let keys: Vec<&String> = frame
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    if frame["kind"] != "notification"
        || keys.len() != 3
        || frame["body"].as_object().map(|b| b.len()) != Some(1)
        || reason.is_empty()
    {
        return Err(format!("not brandgate's expiry notification: {frame}"));
    }
    // Nothing left for the published schemas to say: an empty object passes any entry.
    Ok((
        "infra/notification.json".into(),
        json!({"kind": "notification", "type": frame["type"], "body": {}}),
    ))
}

pub const TOKEN_EXPIRED: Difference = Difference {
    why: "the schemas have no token-expiry notification; brandgate sends one before closing",
    applies: |_, direction, frame| direction == "got" && frame["type"] == "brandgate.TokenExpired",
    instead: own_notification,
};

pub const SESSION_EXPIRED: Difference = Difference {
    why: "the schemas have no session-expiry notification; brandgate sends one before closing",
    applies: |_, direction, frame| {
        direction == "got" && frame["type"] == "brandgate.SessionExpired"
    },
    instead: own_notification,
};

/// The schema entry for a frame, with the specific branch for responses (the response entry
/// points accept any object, so the branch is what checks anything). A response type without
/// a branch here fails the test: it would otherwise pass unchecked.
fn schema_for(side: Side, direction: &str, frame: &Value) -> Result<String, String> {
    let (requests, responses, notifications) = match side {
        Side::Consumer => (
            "ws/consumerRequests.json",
            "ws/consumerResponses.json",
            "ws/consumerNotifications.json",
        ),
        Side::Agent => (
            "ws/agentRequests.json",
            "ws/agentResponses.json",
            "ws/agentNotifications.json",
        ),
    };
    if direction == "sent" {
        return Ok(requests.to_string());
    }
    if frame["kind"] == "notification" {
        return Ok(notifications.to_string());
    }
    let kind = frame["type"].as_str().unwrap_or("");
    let branch = match (side, kind) {
        (Side::Consumer, "cm.RequestConversationResponse") => 0,
        (Side::Consumer, ".ReqBody$StringResp") => 2,
        (Side::Consumer, "ms.PublishEventResponse") => 3,
        (Side::Consumer, "GenericSubscribeResponse") => 4,
        (Side::Consumer, "cqm.SubscribeExConversationsResponse") => 5,
        (Side::Agent, "cm.RequestConversationResponse") => 0,
        (Side::Agent, ".ReqBody$StringResp") => 1,
        (Side::Agent, "ms.PublishEventResponse") => 2,
        (Side::Agent, "GenericSubscribeResponse") => 3,
        (Side::Agent, "cqm.SubscribeExConversationsResponse") => 5,
        _ => {
            return Err(format!(
                "no schema branch for a {side:?} response of type {kind:?}"
            ));
        }
    };
    Ok(format!("{responses}#/anyOf/{branch}"))
}

/// Validates `frames` with tests/python/validate_messages.py; panics naming every failure.
/// A frame a difference applies to is checked the difference's way; any other frame against
/// its published schema.
pub async fn check_frames(side: Side, frames: &[(&'static str, Value)], differs: &[Difference]) {
    let mut input = String::new();
    let mut problems = Vec::new();
    for (i, (direction, frame)) in frames.iter().enumerate() {
        let kind = frame["type"].as_str().unwrap_or("");
        let label = format!("frame {i} ({direction} {kind})");
        let checked = match differs.iter().find(|d| (d.applies)(side, direction, frame)) {
            Some(d) => (d.instead)(frame).map_err(|e| format!("{e} ({})", d.why)),
            None => schema_for(side, direction, frame).map(|entry| (entry, frame.clone())),
        };
        match checked {
            Ok((schema, instance)) => {
                let item = json!({"schema": schema, "instance": instance, "label": label});
                input.push_str(&item.to_string());
                input.push('\n');
            }
            Err(e) => problems.push(format!("{label}: {e}")),
        }
    }
    assert!(
        problems.is_empty(),
        "frames that cannot be checked:\n{}",
        problems.join("\n")
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/validate_messages.py"
    );
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (tests/python: pip install -r tests/python/requirements.txt)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "frames outside the published schemas:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP connection to `addr`, from `local` when given (another loopback address).
pub async fn tcp_from(local: Option<std::net::IpAddr>, addr: SocketAddr) -> tokio::net::TcpStream {
    let Some(ip) = local else {
        return tokio::net::TcpStream::connect(addr).await.unwrap();
    };
    let socket = if ip.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .unwrap();
    socket.bind(SocketAddr::new(ip, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}
