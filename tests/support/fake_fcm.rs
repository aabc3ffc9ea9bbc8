//! A fake FCM speaking the real HTTP v1 API over TLS (HTTP/2 and HTTP/1.1): the OAuth token
//! endpoint of a service account (JWT-bearer grant, RS256 assertion verified with the test key,
//! `iss`/`aud`/`scope`/lifetime checked) and `POST /v1/projects/{p}/messages:send` (bearer
//! checked against issued tokens, message checked as FCM does, Google's error bodies).
//! Answers are scriptable per registration token; issued tokens can be revoked.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use serde_json::{Value, json};

use super::fake::{self, Behaviour, ConnControl, Listening, Script};
use super::pki::{ServiceAccount, TestCa};

#[derive(Clone, Debug)]
pub struct FcmRequest {
    pub token: String,
    pub message: Value,
    pub answered: u16,
}

struct State {
    project: String,
    public_pem: Mutex<String>,
    client_email: Mutex<String>,
    token_uri: Mutex<String>,
    issued: Mutex<HashSet<String>>,
    /// Every access token issued, revoked ones included.
    ever_issued: Mutex<Vec<String>>,
    /// Every JWT-bearer assertion presented to the token endpoint.
    assertions: Mutex<Vec<String>>,
    token_calls: AtomicUsize,
    token_lifetime: std::sync::atomic::AtomicU64,
    token_script: Script,
    script: Script,
    received: Mutex<Vec<FcmRequest>>,
}

pub struct FakeFcm {
    pub listening: Listening,
    pub ca: TestCa,
    pub account: ServiceAccount,
    state: Arc<State>,
}

impl FakeFcm {
    pub async fn start(project: &str) -> FakeFcm {
        let ca = TestCa::new("fake FCM CA");
        let tls = fake::server_tls(&ca.server(), &[b"h2", b"http/1.1"], None);
        let state = Arc::new(State {
            project: project.to_string(),
            public_pem: Mutex::new(String::new()),
            client_email: Mutex::new(String::new()),
            token_uri: Mutex::new(String::new()),
            issued: Mutex::new(HashSet::new()),
            ever_issued: Mutex::new(Vec::new()),
            assertions: Mutex::new(Vec::new()),
            token_calls: AtomicUsize::new(0),
            token_lifetime: std::sync::atomic::AtomicU64::new(3599),
            token_script: Script::default(),
            script: Script::default(),
            received: Mutex::new(Vec::new()),
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
        let token_uri = format!("{}/token", listening.url());
        let account = ServiceAccount::new(project, &token_uri);
        *state.public_pem.lock().unwrap() = account.public_pem.clone();
        *state.client_email.lock().unwrap() = account.client_email.clone();
        *state.token_uri.lock().unwrap() = token_uri;
        FakeFcm {
            listening,
            ca,
            account,
            state,
        }
    }

    pub fn url(&self) -> String {
        self.listening.url()
    }

    pub fn script(&self, token: &str, answers: Vec<Behaviour>) {
        self.state.script.set(token, answers);
    }

    /// Scripts the token endpoint's answers (key: the service account's e-mail).
    pub fn script_token_endpoint(&self, answers: Vec<Behaviour>) {
        self.state
            .token_script
            .set(&self.account.client_email, answers);
    }

    /// Invalidates every access token issued so far (as if revoked or expired early).
    pub fn revoke_tokens(&self) {
        self.state.issued.lock().unwrap().clear();
    }

    /// The `expires_in` the token endpoint answers from now on (seconds).
    pub fn set_token_lifetime(&self, seconds: u64) {
        self.state.token_lifetime.store(seconds, Ordering::SeqCst);
    }

    /// Every access token the token endpoint issued (for checking they are never logged).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.ever_issued.lock().unwrap().clone()
    }

    /// Every signed assertion brandgate presented to the token endpoint.
    pub fn assertions(&self) -> Vec<String> {
        self.state.assertions.lock().unwrap().clone()
    }

    pub fn token_calls(&self) -> usize {
        self.state.token_calls.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<FcmRequest> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn delivered_to(&self, token: &str) -> Vec<FcmRequest> {
        self.received()
            .into_iter()
            .filter(|r| r.token == token && r.answered == 200)
            .collect()
    }
}

/// Google's error body for FCM, with the `FcmError` detail.
pub fn fcm_error(status: u16, code: &str, message: &str) -> Behaviour {
    Behaviour::Status {
        status,
        body: google_error(status, code, message),
        retry_after: None,
    }
}

fn google_error(status: u16, code: &str, message: &str) -> Value {
    let canonical = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    json!({"error": {"code": status, "message": message, "status": canonical, "details": [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
    ]}})
}

async fn handle(state: &State, req: Request<Bytes>, ctl: &ConnControl) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    if parts.method != http::Method::POST {
        return fake::json(405, &json!({"error": "method"}), None);
    }
    let path = parts.uri.path().to_string();
    if path == "/token" {
        return token_endpoint(state, &parts.headers, &body, ctl).await;
    }
    let expected = format!("/v1/projects/{}/messages:send", state.project);
    if path != expected {
        return fake::json(
            404,
            &google_error(404, "UNSPECIFIED_ERROR", "Requested entity was not found."),
            None,
        );
    }
    let bearer = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let authorized = bearer.is_some_and(|b| state.issued.lock().unwrap().contains(&b));
    if !authorized {
        let body = json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}});
        return fake::json(401, &body, None);
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return fake::json(
            400,
            &google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received."),
            None,
        );
    };
    let message = &request["message"];
    let Some(token) = message["token"].as_str().map(str::to_string) else {
        return fake::json(
            400,
            &google_error(
                400,
                "INVALID_ARGUMENT",
                "Recipient of the message is not set.",
            ),
            None,
        );
    };
    // FCM requires string values in `data`, and at most 4096 bytes of keys and values.
    if let Some(data) = message["data"].as_object() {
        if data.values().any(|v| !v.is_string()) {
            return fake::json(
                400,
                &google_error(400, "INVALID_ARGUMENT", "Invalid value at 'message.data'"),
                None,
            );
        }
        let size: usize = data
            .iter()
            .map(|(k, v)| k.len() + v.as_str().unwrap_or("").len())
            .sum();
        if size > 4096 {
            return fake::json(
                400,
                &google_error(400, "INVALID_ARGUMENT", "Message is too big"),
                None,
            );
        }
    }
    let answer = fake::act(state.script.next(&token), ctl).await;
    let (response, answered) = match answer {
        None | Some(Behaviour::Ok) => {
            let name = format!(
                "projects/{}/messages/{}",
                state.project,
                uuid::Uuid::new_v4()
            );
            (fake::json(200, &json!({ "name": name }), None), 200)
        }
        Some(Behaviour::Status {
            status,
            body,
            retry_after,
        }) => (fake::json(status, &body, retry_after), status),
        Some(other) => unreachable!("act resolves {other:?}"),
    };
    state.received.lock().unwrap().push(FcmRequest {
        token,
        message: message.clone(),
        answered,
    });
    response
}

async fn token_endpoint(
    state: &State,
    headers: &http::HeaderMap,
    body: &[u8],
    ctl: &ConnControl,
) -> Response<Full<Bytes>> {
    state.token_calls.fetch_add(1, Ordering::SeqCst);
    let refuse = |e: &str| {
        fake::json(
            400,
            &json!({"error": e, "error_description": "refused by the fake"}),
            None,
        )
    };
    if headers.get("content-type").and_then(|v| v.to_str().ok())
        != Some("application/x-www-form-urlencoded")
    {
        return refuse("invalid_request");
    }
    let form: Vec<(String, String)> = url_decode_form(body);
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    if get("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return refuse("unsupported_grant_type");
    }
    let Some(assertion) = get("assertion") else {
        return refuse("invalid_request");
    };
    state.assertions.lock().unwrap().push(assertion.clone());
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(state.public_pem.lock().unwrap().as_bytes())
        .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    let token_uri = state.token_uri.lock().unwrap().clone();
    validation.set_audience(&[token_uri]);
    validation.set_issuer(&[state.client_email.lock().unwrap().clone()]);
    let Ok(data) = jsonwebtoken::decode::<Value>(&assertion, &key, &validation) else {
        return refuse("invalid_grant");
    };
    let claims = data.claims;
    let scope_ok = claims["scope"].as_str().is_some_and(|s| {
        s.split(' ')
            .any(|s| s == "https://www.googleapis.com/auth/firebase.messaging")
    });
    let lifetime_ok = match (claims["iat"].as_u64(), claims["exp"].as_u64()) {
        (Some(iat), Some(exp)) => exp > iat && exp - iat <= 3600,
        _ => false,
    };
    if !scope_ok || !lifetime_ok {
        return refuse("invalid_scope");
    }
    let email = state.client_email.lock().unwrap().clone();
    match fake::act(state.token_script.next(&email), ctl).await {
        None | Some(Behaviour::Ok) => {}
        Some(Behaviour::Status {
            status,
            body,
            retry_after,
        }) => return fake::json(status, &body, retry_after),
        Some(other) => unreachable!("act resolves {other:?}"),
    }
    let access = format!("ya29.fake-{}", uuid::Uuid::new_v4());
    state.issued.lock().unwrap().insert(access.clone());
    state.ever_issued.lock().unwrap().push(access.clone());
    fake::json(
        200,
        &json!({"access_token": access, "expires_in": state.token_lifetime.load(Ordering::SeqCst), "token_type": "Bearer"}),
        None,
    )
}

/// Decodes an `application/x-www-form-urlencoded` body.
fn url_decode_form(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}
