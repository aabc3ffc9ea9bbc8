//! A fake APNs speaking the real provider API: TLS, HTTP/2 only, `POST /3/device/<token>`,
//! Apple's headers checked as Apple checks them, the provider token's ES256 signature verified
//! with the test key (or the client certificate checked, for certificate auth), Apple's error
//! bodies, and a 200 that is a single HEADERS frame with `apns-id`. Answers are scriptable per
//! device token.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use serde_json::{Value, json};

use super::fake::{self, Behaviour, ConnControl, Listening, Script};
use super::pki::TestCa;

/// How the fake authenticates brandgate.
#[derive(Clone)]
pub enum ApnsAuth {
    /// Token auth: the provider token must verify with this public key, carry this key id
    /// (`kid`) and team id (`iss`), and be under an hour old.
    Token {
        public_pem: String,
        key_id: String,
        team_id: String,
    },
    /// Certificate auth: the connection must present a certificate from this CA whose names
    /// include `name`.
    Certificate { client_ca_pem: String, name: String },
}

/// One request the fake accepted for processing.
#[derive(Clone, Debug)]
pub struct ApnsRequest {
    pub token: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub body_len: usize,
    /// The status the fake answered.
    pub answered: u16,
}

struct State {
    topic: String,
    auth: ApnsAuth,
    script: Script,
    received: Mutex<Vec<ApnsRequest>>,
    /// Off for benchmarks: only count.
    recording: std::sync::atomic::AtomicBool,
    delivered: std::sync::atomic::AtomicU64,
    /// Requests that got as far as their answer (counted before it is given, so a test can
    /// wait for a request that is being held).
    arrived: std::sync::atomic::AtomicU64,
    /// Provider tokens already verified. APNs too checks a token once per connection, not per
    /// request; re-verifying ES256 on every request would make the fake the bottleneck.
    verified: Mutex<std::collections::HashMap<String, u64>>,
}

pub struct FakeApns {
    pub listening: Listening,
    pub ca: TestCa,
    state: Arc<State>,
}

impl FakeApns {
    pub async fn start(topic: &str, auth: ApnsAuth) -> FakeApns {
        let ca = TestCa::new("fake APNs CA");
        let client_ca = match &auth {
            ApnsAuth::Certificate { client_ca_pem, .. } => Some(client_ca_pem.clone()),
            ApnsAuth::Token { .. } => None,
        };
        let tls = fake::server_tls(&ca.server(), &[b"h2"], client_ca.as_deref());
        let state = Arc::new(State {
            topic: topic.to_string(),
            auth,
            script: Script::default(),
            received: Mutex::new(Vec::new()),
            recording: std::sync::atomic::AtomicBool::new(true),
            delivered: std::sync::atomic::AtomicU64::new(0),
            arrived: std::sync::atomic::AtomicU64::new(0),
            verified: Mutex::new(std::collections::HashMap::new()),
        });
        let s = state.clone();
        let listening = fake::serve(
            tls,
            Arc::new(move |req, ctl| {
                let s = s.clone();
                Box::pin(async move { handle(&s, req, &ctl).await })
            }),
        )
        .await;
        FakeApns {
            listening,
            ca,
            state,
        }
    }

    pub fn url(&self) -> String {
        self.listening.url()
    }

    /// Scripts the answers for one device token.
    pub fn script(&self, token: &str, answers: Vec<Behaviour>) {
        self.state.script.set(token, answers);
    }

    /// Stops keeping requests (benchmarks); only the count of 200 answers goes on.
    pub fn stop_recording(&self) {
        self.state
            .recording
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many requests were answered 200.
    pub fn delivered_count(&self) -> u64 {
        self.state
            .delivered
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<ApnsRequest> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits (at most 10 s) until `n` requests have reached their answer, held ones included.
    pub async fn wait_arrivals(&self, n: u64) {
        let arrived = || self.state.arrived.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..2000 {
            if arrived() >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("{} requests reached the fake, not {n}", arrived());
    }

    /// Requests for `token` that were answered 200.
    pub fn delivered_to(&self, token: &str) -> Vec<ApnsRequest> {
        self.received()
            .into_iter()
            .filter(|r| r.token == token && r.answered == 200)
            .collect()
    }
}

/// Apple's error answer.
pub fn reason(status: u16, reason: &str) -> Behaviour {
    Behaviour::Status {
        status,
        body: json!({ "reason": reason }),
        retry_after: None,
    }
}

/// 410 with the time (ms) the token stopped being valid.
pub fn gone(reason: &str, timestamp_ms: u64) -> Behaviour {
    Behaviour::Status {
        status: 410,
        body: json!({ "reason": reason, "timestamp": timestamp_ms }),
        retry_after: None,
    }
}

pub fn too_many_requests(retry_after: u64) -> Behaviour {
    Behaviour::Status {
        status: 429,
        body: json!({ "reason": "TooManyRequests" }),
        retry_after: Some(retry_after),
    }
}

fn error(status: u16, reason: &str) -> Response<Full<Bytes>> {
    fake::json(status, &json!({ "reason": reason }), None)
}

async fn handle(state: &State, req: Request<Bytes>, ctl: &ConnControl) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    if parts.method != http::Method::POST {
        return error(405, "MethodNotAllowed");
    }
    let Some(token) = parts.uri.path().strip_prefix("/3/device/") else {
        return error(404, "BadPath");
    };
    if token.is_empty() {
        return error(400, "MissingDeviceToken");
    }
    if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return error(400, "BadDeviceToken");
    }
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(reason) = check_auth(state, &parts.headers, ctl) {
        return error(403, reason);
    }
    match header("apns-topic") {
        None => return error(400, "MissingTopic"),
        Some(t) if t != state.topic => return error(400, "DeviceTokenNotForTopic"),
        Some(_) => {}
    }
    if !matches!(
        header("apns-push-type"),
        None | Some("alert" | "background" | "voip")
    ) {
        return error(400, "InvalidPushType");
    }
    if !matches!(header("apns-priority"), None | Some("10" | "5" | "1")) {
        return error(400, "BadPriority");
    }
    if header("apns-expiration").is_some_and(|e| e.parse::<u64>().is_err()) {
        return error(400, "BadExpirationDate");
    }
    if header("apns-collapse-id").is_some_and(|c| c.len() > 64) {
        return error(400, "BadCollapseId");
    }
    if let Some(id) = header("apns-id")
        && uuid::Uuid::parse_str(id).is_err()
    {
        return error(400, "BadMessageId");
    }
    if body.is_empty() {
        return error(400, "PayloadEmpty");
    }
    if body.len() > 4096 {
        return error(413, "PayloadTooLarge");
    }
    let recording = state.recording.load(std::sync::atomic::Ordering::Relaxed);
    let json = if recording {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => v,
            Err(_) => return error(400, "BadPayload"),
        }
    } else {
        Value::Null
    };
    let behaviour = if recording {
        state.script.next(token)
    } else {
        Behaviour::Ok
    };
    state
        .arrived
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let answer = fake::act(behaviour, ctl).await;
    let (response, answered) = match answer {
        None | Some(Behaviour::Ok) => {
            let id = header("apns-id")
                .map(str::to_string)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            // A 200 is headers only: HEADERS with END_STREAM, no DATA frame.
            let r = Response::builder()
                .status(200)
                .header("apns-id", id)
                .body(Full::new(Bytes::new()))
                .unwrap();
            (r, 200)
        }
        Some(Behaviour::Status {
            status,
            body,
            retry_after,
        }) => (fake::json(status, &body, retry_after), status),
        Some(other) => unreachable!("act resolves {other:?}"),
    };
    if answered == 200 {
        state
            .delivered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if !recording {
        return response;
    }
    state.received.lock().unwrap().push(ApnsRequest {
        token: token.to_string(),
        headers: parts.headers.clone(),
        body: json,
        body_len: body.len(),
        answered,
    });
    response
}

fn check_auth(state: &State, headers: &HeaderMap, ctl: &ConnControl) -> Result<(), &'static str> {
    match &state.auth {
        ApnsAuth::Certificate { name, .. } => {
            if ctl.client_names.iter().any(|n| n == name) {
                Ok(())
            } else {
                Err("BadCertificate")
            }
        }
        ApnsAuth::Token {
            public_pem,
            key_id,
            team_id,
        } => {
            let value = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .ok_or("MissingProviderToken")?;
            let jwt = value
                .strip_prefix("bearer ")
                .ok_or("MissingProviderToken")?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            // The same token string was verified before: only its age is checked again.
            let known = state.verified.lock().unwrap().get(jwt).copied();
            if let Some(iat) = known {
                return if now.saturating_sub(iat) > 3600 {
                    Err("ExpiredProviderToken")
                } else {
                    Ok(())
                };
            }
            let header = jsonwebtoken::decode_header(jwt).map_err(|_| "InvalidProviderToken")?;
            if header.alg != jsonwebtoken::Algorithm::ES256 {
                return Err("InvalidProviderToken");
            }
            if header.kid.as_deref() != Some(key_id) {
                return Err("InvalidProviderToken");
            }
            let key = jsonwebtoken::DecodingKey::from_ec_pem(public_pem.as_bytes()).unwrap();
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            validation.set_issuer(&[team_id]);
            let data = jsonwebtoken::decode::<Value>(jwt, &key, &validation)
                .map_err(|_| "InvalidProviderToken")?;
            let iat = data.claims["iat"].as_u64().ok_or("InvalidProviderToken")?;
            if now.saturating_sub(iat) > 3600 {
                return Err("ExpiredProviderToken");
            }
            let mut verified = state.verified.lock().unwrap();
            // Bounded: a token older than an hour can only be refused.
            if verified.len() >= 1024 {
                verified.retain(|_, at| now.saturating_sub(*at) <= 3600);
                if verified.len() >= 1024 {
                    verified.clear();
                }
            }
            verified.insert(jwt.to_string(), iat);
            Ok(())
        }
    }
}
