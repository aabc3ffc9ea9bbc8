//! The platform's push proxy request, in both its shapes, parsed into one [`PushRequest`].
//!
//! iOS shape: `push-service: 1`, `device-token`, `notificationType: "apn"` and the conversation
//! fields at the top level, with the APNs object in `aps`. Android/Huawei shape: `push-service`,
//! `device-token` and `notificationType` at the top level, the text in `data.message`, the rest in
//! `data.payload`. Every field is type-checked and a malformed request is refused with a reason
//! that names the field. Unknown fields are ignored (the platform may add some) and never forwarded.

use std::fmt;

use serde_json::{Map, Value};

/// Which push service the platform asks for (`push-service`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// 1: Apple Push Notification service.
    Apns,
    /// 2: Firebase Cloud Messaging.
    Fcm,
    /// 3: Huawei Push Kit.
    Huawei,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Apns => "apns",
            Provider::Fcm => "fcm",
            Provider::Huawei => "huawei",
        }
    }
}

/// Why a device token cannot be its provider's (the text is for the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenShape {
    #[error("an APNs device token is 1 to 200 hexadecimal digits")]
    Apns,
    #[error("an FCM registration token is 1 to 4096 printable ASCII characters")]
    Fcm,
    #[error("a Huawei push token is 1 to 4096 printable ASCII characters")]
    Huawei,
}

impl Provider {
    /// The provider named as [`Provider::as_str`] writes it (`apns`, `fcm`, `huawei`): how the
    /// relay's device registrations name theirs.
    pub fn from_name(name: &str) -> Option<Provider> {
        [Provider::Apns, Provider::Fcm, Provider::Huawei]
            .into_iter()
            .find(|p| p.as_str() == name)
    }

    /// The one rule for a device token of this provider, wherever a token comes in (the push
    /// proxy's requests, the relay's device registrations). An APNs token goes into the
    /// request path, so nothing but hex digits may pass.
    pub fn check_token(self, token: &str) -> Result<(), TokenShape> {
        let fits = match self {
            Provider::Apns => {
                (1..=200).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_hexdigit())
            }
            Provider::Fcm | Provider::Huawei => {
                (1..=MAX_TOKEN_LEN).contains(&token.len())
                    && token.bytes().all(|b| b.is_ascii_graphic())
            }
        };
        if fits {
            Ok(())
        } else {
            Err(match self {
                Provider::Apns => TokenShape::Apns,
                Provider::Fcm => TokenShape::Fcm,
                Provider::Huawei => TokenShape::Huawei,
            })
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device token. Shown in logs only as its first 8 characters and a short hash.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceToken(String);

impl DeviceToken {
    pub fn new(token: impl Into<String>) -> Self {
        DeviceToken(token.into())
    }

    /// The full token, for the provider request only.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Hex SHA-256 of the token: how dead tokens are recorded and reported.
    pub fn sha256_hex(&self) -> String {
        crate::hex::encode(&crate::digest::sha256(self.0.as_bytes()))
    }
}

/// Logs and errors see `01408800…#3f9a1c`: enough to correlate, not enough to push.
impl fmt::Display for DeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix: String = self.0.chars().take(8).collect();
        let hash = self.sha256_hex();
        write!(f, "{prefix}…#{}", &hash[..6])
    }
}

impl fmt::Debug for DeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceToken({self})")
    }
}

/// The notification text as the platform sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum Alert {
    None,
    /// `aps.alert` as a string, or `data.message`.
    Text(String),
    /// `aps.alert` as an object (`title`, `body`, `loc-key`, ...).
    Fields(Map<String, Value>),
}

/// The conversation fields the platform sends with every push; they pass through to the app.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushMeta {
    pub backend_service: Option<String>,
    pub conversation_id: Option<String>,
    pub dialog_id: Option<String>,
    pub originator_id: Option<String>,
    pub brand_id: Option<String>,
    pub badge: Option<u32>,
    pub sequence: Option<i64>,
}

/// One push, whichever shape it arrived in.
#[derive(Debug, Clone)]
pub struct PushRequest {
    pub provider: Provider,
    pub device_token: DeviceToken,
    pub alert: Alert,
    /// The other members of `aps` (sound, badge, category, thread-id, ...), iOS shape only.
    pub aps: Map<String, Value>,
    pub meta: PushMeta,
}

impl PushRequest {
    /// A plain text push, as `brandgate push-test` and the relay send.
    pub fn text(provider: Provider, token: DeviceToken, text: Option<String>) -> Self {
        PushRequest {
            provider,
            device_token: token,
            alert: text.map_or(Alert::None, Alert::Text),
            aps: Map::new(),
            meta: PushMeta::default(),
        }
    }
}

/// Why a request body was refused. The text is for the caller: it names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

fn bad(msg: impl Into<String>) -> Malformed {
    Malformed(msg.into())
}

/// Longest identifier accepted in a conversation field.
const MAX_ID_LEN: usize = 256;
/// Longest device token accepted (FCM tokens are around 160 characters, APNs 64 hex digits).
const MAX_TOKEN_LEN: usize = 4096;

/// The members of a request body (or of Android's `data.payload`) that brandgate reads; the
/// others are skipped unread (the platform may add some) and never copied. Each stays a JSON
/// value until it is checked, so a wrong type is refused with the field's name.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct Members {
    #[serde(rename = "push-service")]
    push_service: Option<Value>,
    #[serde(rename = "notificationType")]
    notification_type: Option<Value>,
    #[serde(rename = "device-token")]
    device_token: Option<Value>,
    data: Option<Value>,
    aps: Option<Value>,
    #[serde(rename = "backendService")]
    backend_service: Option<Value>,
    #[serde(rename = "conversationId")]
    conversation_id: Option<Value>,
    #[serde(rename = "dialogId")]
    dialog_id: Option<Value>,
    #[serde(rename = "originatorId")]
    originator_id: Option<Value>,
    #[serde(rename = "brandId")]
    brand_id: Option<Value>,
    badge: Option<Value>,
    sequence: Option<Value>,
}

/// Reads the members of a JSON object; anything else (an array, a number) is `Err(None)`, and
/// JSON that does not parse is `Err(Some(reason))`.
fn members(json: &[u8]) -> Result<Members, Option<String>> {
    // A struct would also take an array (its members by position): only an object may pass.
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(serde_json::from_slice::<serde::de::IgnoredAny>(json)
            .err()
            .map(|e| e.to_string()));
    }
    serde_json::from_slice(json).map_err(|e| Some(e.to_string()))
}

/// Parses a request body.
pub fn parse(body: &[u8]) -> Result<PushRequest, Malformed> {
    let mut top = members(body).map_err(|e| match e {
        Some(reason) => bad(format!("body is not valid JSON: {reason}")),
        None => bad("body must be a JSON object"),
    })?;
    let provider = provider_of(&top)?;
    let device_token = match top.device_token.take() {
        Some(Value::String(s)) if !s.is_empty() => {
            if s.len() > MAX_TOKEN_LEN {
                return Err(bad(format!(
                    "device-token is longer than {MAX_TOKEN_LEN} characters"
                )));
            }
            if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(bad(
                    "device-token contains whitespace or control characters",
                ));
            }
            DeviceToken::new(s)
        }
        Some(Value::String(_)) | None => return Err(bad("device-token is missing or empty")),
        Some(_) => return Err(bad("device-token must be a string")),
    };

    if let Some(data) = top.data.take() {
        // Android/Huawei shape.
        let Value::Object(mut data) = data else {
            return Err(bad("data must be an object"));
        };
        let alert = match data.remove("message") {
            None | Some(Value::Null) => Alert::None,
            Some(Value::String(s)) => Alert::Text(s),
            Some(_) => return Err(bad("data.message must be a string")),
        };
        let not_object = || bad("data.payload must be an object");
        let payload = match data.remove("payload") {
            None | Some(Value::Null) => Members::default(),
            Some(m @ Value::Object(_)) => serde_json::from_value(m).map_err(|_| not_object())?,
            // Some senders put the payload object in a JSON string.
            Some(Value::String(s)) => members(s.as_bytes()).map_err(|_| not_object())?,
            Some(_) => return Err(not_object()),
        };
        Ok(PushRequest {
            provider,
            device_token,
            alert,
            aps: Map::new(),
            meta: meta_from(payload, "data.payload.")?,
        })
    } else {
        // iOS shape.
        let mut aps = match top.aps.take() {
            None => Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => return Err(bad("aps must be an object")),
        };
        let alert = match aps.remove("alert") {
            None | Some(Value::Null) => Alert::None,
            Some(Value::String(s)) => Alert::Text(s),
            Some(Value::Object(m)) => Alert::Fields(m),
            Some(_) => return Err(bad("aps.alert must be a string or an object")),
        };
        if let Some(badge) = aps.get("badge")
            && badge.as_u64().is_none_or(|b| b > u32::MAX as u64)
        {
            return Err(bad("aps.badge must be a non-negative integer"));
        }
        Ok(PushRequest {
            provider,
            device_token,
            alert,
            aps,
            meta: meta_from(top, "")?,
        })
    }
}

/// `push-service` decides; `notificationType` must agree with it when both are present.
fn provider_of(top: &Members) -> Result<Provider, Malformed> {
    let by_service = match &top.push_service {
        None | Some(Value::Null) => None,
        Some(v) => Some(match integer(v) {
            Some(1) => Provider::Apns,
            Some(2) => Provider::Fcm,
            Some(3) => Provider::Huawei,
            _ => return Err(bad("push-service must be 1 (APNs), 2 (FCM) or 3 (Huawei)")),
        }),
    };
    let by_type = match &top.notification_type {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "apn" | "apns" => Provider::Apns,
            "gcm" | "fcm" => Provider::Fcm,
            "huawei" => Provider::Huawei,
            _ => {
                return Err(bad(
                    "notificationType must be \"apn\", \"gcm\" or \"huawei\"",
                ));
            }
        }),
        Some(_) => return Err(bad("notificationType must be a string")),
    };
    match (by_service, by_type) {
        (Some(a), Some(b)) if a != b => Err(bad(format!(
            "push-service says {a} but notificationType says {b}"
        ))),
        (Some(p), _) | (None, Some(p)) => Ok(p),
        (None, None) => Err(bad("push-service is missing")),
    }
}

/// Reads an integer written as a JSON number or a numeric string.
fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn meta_from(m: Members, prefix: &str) -> Result<PushMeta, Malformed> {
    let badge = match &m.badge {
        None | Some(Value::Null) => None,
        Some(v) => match integer(v) {
            Some(b) if (0..=u32::MAX as i64).contains(&b) => Some(b as u32),
            _ => return Err(bad(format!("{prefix}badge must be a non-negative integer"))),
        },
    };
    let sequence = match &m.sequence {
        None | Some(Value::Null) => None,
        Some(v) => {
            Some(integer(v).ok_or_else(|| bad(format!("{prefix}sequence must be an integer")))?)
        }
    };
    let id = |key: &str, value: Option<Value>| -> Result<Option<String>, Malformed> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() <= MAX_ID_LEN => Ok(Some(s)),
            Some(Value::String(_)) => Err(bad(format!(
                "{prefix}{key} is longer than {MAX_ID_LEN} characters"
            ))),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(bad(format!("{prefix}{key} must be a string"))),
        }
    };
    Ok(PushMeta {
        backend_service: id("backendService", m.backend_service)?,
        conversation_id: id("conversationId", m.conversation_id)?,
        dialog_id: id("dialogId", m.dialog_id)?,
        originator_id: id("originatorId", m.originator_id)?,
        brand_id: id("brandId", m.brand_id)?,
        badge,
        sequence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The two examples from the platform's documentation (REFERENCE.md).
    const IOS: &str = r#"{"aps":{"alert":"My Test: 123","sound":"default"},"push-service":1,
        "device-token":"01408800000259","backendService":"ams","conversationId":"13a1",
        "dialogId":"13a1","originatorId":"90588718.2333061110","brandId":"90588711","badge":1,
        "sequence":8,"notificationType":"apn"}"#;
    const ANDROID: &str = r#"{"data":{"message":"My Test: 456","payload":{"backendService":"ams",
        "conversationId":"ff81","dialogId":"13a1","originatorId":"90588718.2333061110",
        "brandId":"90588711","badge":4,"sequence":6}},"push-service":2,
        "device-token":"01408800000259","notificationType":"gcm"}"#;

    #[test]
    fn ios_shape() {
        let r = parse(IOS.as_bytes()).unwrap();
        assert_eq!(r.provider, Provider::Apns);
        assert_eq!(r.device_token.as_str(), "01408800000259");
        assert_eq!(r.alert, Alert::Text("My Test: 123".into()));
        assert_eq!(r.aps.get("sound"), Some(&Value::from("default")));
        assert_eq!(r.meta.conversation_id.as_deref(), Some("13a1"));
        assert_eq!(r.meta.badge, Some(1));
        assert_eq!(r.meta.sequence, Some(8));
    }

    #[test]
    fn android_shape() {
        let r = parse(ANDROID.as_bytes()).unwrap();
        assert_eq!(r.provider, Provider::Fcm);
        assert_eq!(r.alert, Alert::Text("My Test: 456".into()));
        assert_eq!(r.meta.conversation_id.as_deref(), Some("ff81"));
        assert_eq!(r.meta.badge, Some(4));
        assert_eq!(r.meta.sequence, Some(6));
    }

    #[test]
    fn a_payload_sent_as_a_json_string_is_read_as_its_object() {
        let body = r#"{"push-service":2,"device-token":"ab","data":{"message":"Hi",
            "payload":"{\"conversationId\":\"c9\",\"sequence\":\"12\",\"badge\":2}"}}"#;
        let r = parse(body.as_bytes()).unwrap();
        assert_eq!(r.meta.conversation_id.as_deref(), Some("c9"));
        assert_eq!(r.meta.sequence, Some(12));
        assert_eq!(r.meta.badge, Some(2));
    }

    #[test]
    fn malformed_requests_name_the_field() {
        let cases = [
            ("[]", "JSON object"),
            ("{", "not valid JSON"),
            (r#"{"device-token":"ab"}"#, "push-service is missing"),
            (
                r#"{"push-service":7,"device-token":"ab"}"#,
                "push-service must be",
            ),
            (r#"{"push-service":1}"#, "device-token is missing"),
            (
                r#"{"push-service":1,"device-token":5}"#,
                "device-token must be a string",
            ),
            (
                r#"{"push-service":1,"device-token":"ab","aps":3}"#,
                "aps must be an object",
            ),
            (
                r#"{"push-service":1,"device-token":"ab","aps":{"alert":1}}"#,
                "aps.alert",
            ),
            (
                r#"{"push-service":1,"device-token":"ab","badge":-1}"#,
                "badge",
            ),
            (
                r#"{"push-service":2,"device-token":"ab","data":{"message":1}}"#,
                "data.message",
            ),
            (
                r#"{"push-service":2,"device-token":"ab","data":{"payload":{"sequence":"x"}}}"#,
                "data.payload.sequence",
            ),
            (
                r#"{"push-service":1,"notificationType":"gcm","device-token":"ab"}"#,
                "notificationType says fcm",
            ),
            (r#"{"push-service":1,"device-token":"a b"}"#, "whitespace"),
            // A member given twice is ambiguous (parsers differ on which one counts).
            (
                r#"{"push-service":1,"device-token":"ab","device-token":"cd"}"#,
                "duplicate field `device-token`",
            ),
            (
                r#"{"push-service":2,"device-token":"ab","data":{"payload":"[1]"}}"#,
                "data.payload must be an object",
            ),
            (
                r#"{"push-service":2,"device-token":"ab","data":[]}"#,
                "data must be an object",
            ),
        ];
        for (body, expected) in cases {
            let e = parse(body.as_bytes()).unwrap_err();
            assert!(e.0.contains(expected), "{body}: {e}");
        }
    }

    #[test]
    fn device_tokens_follow_their_provider_rule() {
        let apns = |t: &str| Provider::Apns.check_token(t);
        assert_eq!(apns(&"ab".repeat(32)), Ok(()));
        assert_eq!(apns("1d01"), Ok(()));
        assert_eq!(apns(&"A".repeat(200)), Ok(()));
        assert_eq!(apns("abc"), Ok(()));
        for bad in ["", "not-hex", "0g", &"a".repeat(201), "ab cd"] {
            assert_eq!(apns(bad), Err(TokenShape::Apns), "{bad:?}");
        }
        let fcm = |t: &str| Provider::Fcm.check_token(t);
        assert_eq!(fcm("dXJnZW50:APA91b-_x"), Ok(()));
        assert_eq!(fcm(&"x".repeat(4096)), Ok(()));
        for bad in ["", "a b", "a\u{7f}", "tok\u{e9}n", &"x".repeat(4097)] {
            assert_eq!(fcm(bad), Err(TokenShape::Fcm), "{bad:?}");
        }
        assert_eq!(Provider::Huawei.check_token("0862xQ-_:AbC"), Ok(()));
        assert_eq!(Provider::Huawei.check_token("a b"), Err(TokenShape::Huawei));
    }

    #[test]
    fn providers_are_found_by_the_names_they_write() {
        for p in [Provider::Apns, Provider::Fcm, Provider::Huawei] {
            assert_eq!(Provider::from_name(p.as_str()), Some(p));
        }
        assert_eq!(Provider::from_name("gcm"), None);
        assert_eq!(Provider::from_name("APNS"), None);
    }

    #[test]
    fn token_is_shortened_in_display() {
        let t = DeviceToken::new("0123456789abcdef0123456789abcdef");
        let shown = format!("{t} {t:?}");
        assert!(!shown.contains("0123456789abcdef0123"));
        assert!(shown.starts_with("01234567…#"));
    }
}
