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
        let tls = Arc::new(Self::tls(ca_pem));
        Ok(MessagingClient {
            stream: Self::socket(&tls, addr, path, authorization).await?,
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
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
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

    /// Checks every logged frame against the published schemas; `differs` names frame types
    /// brandgate deliberately sends or accepts outside them (each with the reason, for the
    /// reader).
    pub async fn check_schemas(&self, differs: &[(&str, &str)]) {
        check_frames(self.side, &self.log, differs).await;
    }
}

/// The schema entry for a frame, with the specific branch for responses (the response entry
/// points accept any object, so the branch is what checks anything).
fn schema_for(side: Side, direction: &str, frame: &Value) -> String {
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
        return requests.to_string();
    }
    match frame["kind"].as_str() {
        Some("notification") => notifications.to_string(),
        _ => {
            let branch = match (side, frame["type"].as_str().unwrap_or("")) {
                (Side::Consumer, "cm.RequestConversationResponse") => Some(0),
                (Side::Consumer, ".ReqBody$StringResp") => Some(2),
                (Side::Consumer, "ms.PublishEventResponse") => Some(3),
                (Side::Consumer, "GenericSubscribeResponse") => Some(4),
                (Side::Consumer, "cqm.SubscribeExConversationsResponse") => Some(5),
                (Side::Agent, "cm.RequestConversationResponse") => Some(0),
                (Side::Agent, ".ReqBody$StringResp") => Some(1),
                (Side::Agent, "ms.PublishEventResponse") => Some(2),
                (Side::Agent, "GenericSubscribeResponse") => Some(3),
                (Side::Agent, "cqm.SubscribeExConversationsResponse") => Some(5),
                _ => None,
            };
            match branch {
                Some(n) => format!("{responses}#/anyOf/{n}"),
                None => responses.to_string(),
            }
        }
    }
}

/// Validates `frames` with tests/python/validate_messages.py; panics naming every failure.
pub async fn check_frames(side: Side, frames: &[(&'static str, Value)], differs: &[(&str, &str)]) {
    let mut input = String::new();
    for (i, (direction, frame)) in frames.iter().enumerate() {
        let kind = frame["type"].as_str().unwrap_or("");
        if differs.iter().any(|(t, _)| *t == kind) {
            continue;
        }
        let item = json!({
            "schema": schema_for(side, direction, frame),
            "instance": frame,
            "label": format!("frame {i} ({direction} {kind})"),
        });
        input.push_str(&item.to_string());
        input.push('\n');
    }
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
