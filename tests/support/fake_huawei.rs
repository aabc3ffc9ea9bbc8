//! A fake Huawei Push Kit speaking the real v1 API over TLS (HTTP/2 and HTTP/1.1): the OAuth
//! client-credentials token endpoint (`POST /oauth2/v3/token`: app id and client secret
//! checked) and `POST /v1/{appId}/messages:send` (bearer checked against issued tokens, the
//! message checked as Huawei does: one token list, `data` a string, at most 4096 bytes), with
//! Huawei's result bodies (`{"code": "80000000", "msg": ..., "requestId": ...}`). Answers are
//! scriptable per device token; issued tokens can be revoked.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use serde_json::{Value, json};

use super::fake::{self, Behaviour, ConnControl, Listening, Script};
use super::pki::TestCa;

pub const HUAWEI_APP_ID: &str = "104812345";
pub const HUAWEI_SECRET: &str = "huawei-client-secret-0123456789abcdef";

#[derive(Clone, Debug)]
pub struct HuaweiRequest {
    pub token: String,
    pub message: Value,
    pub answered: String,
}

struct State {
    issued: Mutex<HashSet<String>>,
    ever_issued: Mutex<Vec<String>>,
    token_calls: AtomicUsize,
    token_script: Script,
    script: Script,
    received: Mutex<Vec<HuaweiRequest>>,
}

pub struct FakeHuawei {
    pub listening: Listening,
    pub ca: TestCa,
    state: Arc<State>,
}

/// Huawei's answer with result `code` (HTTP `status`).
pub fn huawei_result(status: u16, code: &str, msg: &str) -> Behaviour {
    Behaviour::Status {
        status,
        body: json!({"code": code, "msg": msg, "requestId": "fake-request"}),
        retry_after: None,
    }
}

impl FakeHuawei {
    pub async fn start() -> FakeHuawei {
        let ca = TestCa::new("fake Huawei CA");
        let tls = fake::server_tls(&ca.server(), &[b"h2", b"http/1.1"], None);
        let state = Arc::new(State {
            issued: Mutex::new(HashSet::new()),
            ever_issued: Mutex::new(Vec::new()),
            token_calls: AtomicUsize::new(0),
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
        FakeHuawei {
            listening,
            ca,
            state,
        }
    }

    pub fn url(&self) -> String {
        self.listening.url()
    }

    pub fn script(&self, token: &str, answers: Vec<Behaviour>) {
        self.state.script.set(token, answers);
    }

    /// Scripts the token endpoint's answers.
    pub fn script_token_endpoint(&self, answers: Vec<Behaviour>) {
        self.state.token_script.set(HUAWEI_APP_ID, answers);
    }

    /// Invalidates every access token issued so far (as if expired early).
    pub fn revoke_tokens(&self) {
        self.state.issued.lock().unwrap().clear();
    }

    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.ever_issued.lock().unwrap().clone()
    }

    pub fn token_calls(&self) -> usize {
        self.state.token_calls.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<HuaweiRequest> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn delivered_to(&self, token: &str) -> Vec<HuaweiRequest> {
        self.received()
            .into_iter()
            .filter(|r| r.token == token && r.answered == "80000000")
            .collect()
    }
}

async fn handle(state: &State, req: Request<Bytes>, ctl: &ConnControl) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    if parts.method != http::Method::POST {
        return fake::json(405, &json!({"error": "method"}), None);
    }
    let path = parts.uri.path().to_string();
    if path == "/oauth2/v3/token" {
        return token_endpoint(state, &parts.headers, &body, ctl).await;
    }
    let result = |status: u16, code: &str, msg: &str| {
        fake::json(
            status,
            &json!({"code": code, "msg": msg, "requestId": "fake-request"}),
            None,
        )
    };
    if path != format!("/v1/{HUAWEI_APP_ID}/messages:send") {
        return result(404, "80100001", "Illegal app id in the path");
    }
    let bearer = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    if !bearer.is_some_and(|b| state.issued.lock().unwrap().contains(&b)) {
        return result(401, "80200003", "OAuth token expired");
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return result(400, "80100003", "Incorrect message structure");
    };
    let message = &request["message"];
    let tokens: Vec<String> = message["token"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let [token] = &tokens[..] else {
        return result(400, "80100002", "Incorrect number of tokens");
    };
    if message.get("data").is_some_and(|d| !d.is_string()) {
        return result(400, "80100003", "Incorrect message structure");
    }
    if message.to_string().len() > 4096 {
        return result(
            400,
            "80300008",
            "The message body size exceeds the default value",
        );
    }
    let answer = fake::act(state.script.next(token), ctl).await;
    let (response, answered) = match answer {
        None | Some(Behaviour::Ok) => (result(200, "80000000", "Success"), "80000000".to_string()),
        Some(Behaviour::Status {
            status,
            body,
            retry_after,
        }) => {
            let code = body["code"].as_str().unwrap_or("").to_string();
            (fake::json(status, &body, retry_after), code)
        }
        Some(other) => unreachable!("act resolves {other:?}"),
    };
    state.received.lock().unwrap().push(HuaweiRequest {
        token: token.clone(),
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
    let refuse = |code: u32, description: &str| {
        fake::json(
            400,
            &json!({"error": code, "sub_error": 0, "error_description": description}),
            None,
        )
    };
    if headers.get("content-type").and_then(|v| v.to_str().ok())
        != Some("application/x-www-form-urlencoded")
    {
        return refuse(1102, "missing required parameter");
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    if get("grant_type") != Some("client_credentials") {
        return refuse(1102, "unsupported grant type");
    }
    if get("client_id") != Some(HUAWEI_APP_ID) || get("client_secret") != Some(HUAWEI_SECRET) {
        return refuse(1101, "invalid client");
    }
    match fake::act(state.token_script.next(HUAWEI_APP_ID), ctl).await {
        None | Some(Behaviour::Ok) => {}
        Some(Behaviour::Status {
            status,
            body,
            retry_after,
        }) => return fake::json(status, &body, retry_after),
        Some(other) => unreachable!("act resolves {other:?}"),
    }
    let access = format!("CgB6e3x9-fake-{}", uuid::Uuid::new_v4());
    state.issued.lock().unwrap().insert(access.clone());
    state.ever_issued.lock().unwrap().push(access.clone());
    fake::json(
        200,
        &json!({"access_token": access, "expires_in": 3600, "token_type": "Bearer"}),
        None,
    )
}
