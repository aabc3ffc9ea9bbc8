//! What leaves brandgate for the provider: masking and the 4096-byte limit.
//!
//! When an app has a mask text, the notification text sent to APNs/FCM is the mask text and
//! nothing of the real text (title, body, localisation arguments) leaves the premises. Badge,
//! sound and the conversation fields pass through. A text too long for the provider's 4096-byte
//! payload is cut on a character boundary and ends with `…`; it is never refused for length.

use serde_json::{Map, Value, json};

use super::request::{Alert, PushMeta, PushRequest};

/// APNs and FCM both refuse payloads above 4096 bytes (APNs: the whole JSON body; FCM: the data).
pub const PAYLOAD_LIMIT: usize = 4096;

const ELLIPSIS: &str = "…";

/// How an app wants its notifications presented.
#[derive(Debug, Clone, Copy)]
pub struct Presentation<'a> {
    pub mask_text: Option<&'a str>,
    pub mutable_content: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error(
        "the push is {size} bytes even with its text emptied; the provider limit is {PAYLOAD_LIMIT}"
    )]
    TooLarge { size: usize },
}

/// The APNs request body: `aps` plus the conversation fields as custom keys.
pub fn apns_body(req: &PushRequest, p: Presentation<'_>) -> Result<Vec<u8>, PayloadError> {
    let build = |alert: &Alert| {
        let body = ApnsBody {
            req,
            alert,
            mutable_content: p.mutable_content && !matches!(alert, Alert::None),
        };
        serde_json::to_vec(&body).unwrap_or_default()
    };
    fit(&presented_alert(&req.alert, p.mask_text), build, |b| {
        b.len()
    })
}

/// The APNs body, written straight from the request (every push builds one: no copy of `aps`
/// and no intermediate JSON tree). `aps` carries the platform's members with the presented
/// alert, the badge (the platform's own in `aps` wins over the conversation field's) and
/// `mutable-content` when the app asks for it on a visible push.
struct ApnsBody<'a> {
    req: &'a PushRequest,
    alert: &'a Alert,
    mutable_content: bool,
}

impl serde::Serialize for ApnsBody<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut body = s.serialize_map(None)?;
        body.serialize_entry("aps", &Aps(self))?;
        for (key, value) in meta_fields(&self.req.meta) {
            body.serialize_entry(key, &value)?;
        }
        body.end()
    }
}

struct Aps<'a>(&'a ApnsBody<'a>);

impl serde::Serialize for Aps<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let ApnsBody {
            req,
            alert,
            mutable_content,
        } = self.0;
        let mut aps = s.serialize_map(None)?;
        for (key, value) in &req.aps {
            let replaced = key == "alert" || (*mutable_content && key == "mutable-content");
            if !replaced {
                aps.serialize_entry(key, value)?;
            }
        }
        match alert {
            Alert::None => {}
            Alert::Text(t) => aps.serialize_entry("alert", t)?,
            Alert::Fields(m) => aps.serialize_entry("alert", m)?,
        }
        if let Some(badge) = req.meta.badge
            && !req.aps.contains_key("badge")
        {
            aps.serialize_entry("badge", &badge)?;
        }
        if *mutable_content {
            aps.serialize_entry("mutable-content", &1)?;
        }
        aps.end()
    }
}

/// The FCM v1 `message` for one token: a data message carrying `message` (the text) and
/// `payload` (the conversation fields as a JSON string), as the platform's Android SDK reads it.
pub fn fcm_body(
    req: &PushRequest,
    p: Presentation<'_>,
    android_priority: &str,
    collapse: bool,
) -> Result<Vec<u8>, PayloadError> {
    let data_of = |alert: &Alert| android_data(req, alert);
    // FCM counts the data keys and values against its limit; the rest of the request is ours.
    let alert = presented_alert(&req.alert, p.mask_text);
    let data = fit(&alert, data_of, |d| {
        d.iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum::<usize>()
    })?;
    let mut android = Map::new();
    android.insert("priority".into(), Value::from(android_priority));
    if collapse && let Some(c) = &req.meta.conversation_id {
        android.insert("collapse_key".into(), Value::from(c.as_str()));
    }
    let message = json!({
        "message": {
            "token": req.device_token.as_str(),
            "data": Value::Object(data),
            "android": Value::Object(android),
        }
    });
    Ok(serde_json::to_vec(&message).unwrap_or_default())
}

/// The data the platform's Android SDK reads (FCM and Huawei alike): `message` (the text) and
/// `payload` (the conversation fields as a JSON string).
fn android_data(req: &PushRequest, alert: &Alert) -> Map<String, Value> {
    let mut payload = Map::new();
    insert_meta(&mut payload, &req.meta, true);
    let mut data = Map::new();
    if let Some(text) = alert_text(alert) {
        data.insert("message".into(), Value::from(text));
    }
    data.insert(
        "payload".into(),
        Value::from(Value::Object(payload).to_string()),
    );
    data
}

/// How a Huawei message is sent (`android.*`).
pub struct HuaweiDelivery<'a> {
    pub urgency: &'a str,
    pub category: Option<&'a str>,
    pub ttl: std::time::Duration,
    pub collapse_key: Option<i8>,
}

/// The Huawei Push Kit v1 request for one token: a data message (Huawei's `data` is one JSON
/// string) with the same fields as FCM's. Huawei's limit is on the whole message, so that is
/// what is fitted.
pub fn huawei_body(
    req: &PushRequest,
    p: Presentation<'_>,
    how: &HuaweiDelivery<'_>,
) -> Result<Vec<u8>, PayloadError> {
    let mut android = Map::new();
    android.insert("urgency".into(), Value::from(how.urgency));
    android.insert("ttl".into(), Value::from(format!("{}s", how.ttl.as_secs())));
    if let Some(category) = how.category {
        android.insert("category".into(), Value::from(category));
    }
    if let Some(key) = how.collapse_key {
        android.insert("collapse_key".into(), Value::from(key));
    }
    let message_of = |alert: &Alert| {
        json!({
            "data": Value::Object(android_data(req, alert)).to_string(),
            "android": Value::Object(android.clone()),
            "token": [req.device_token.as_str()],
        })
    };
    let alert = presented_alert(&req.alert, p.mask_text);
    let message = fit(&alert, message_of, |m| m.to_string().len())?;
    let body = json!({ "validate_only": false, "message": message });
    Ok(serde_json::to_vec(&body).unwrap_or_default())
}

/// The alert that may leave the premises: the mask text when the app has one. A push with no
/// text (badge-only, silent) stays without one: masking must not make it visible.
fn presented_alert(alert: &Alert, mask: Option<&str>) -> Alert {
    match (mask, alert) {
        (_, Alert::None) => Alert::None,
        (Some(mask), _) => Alert::Text(mask.to_string()),
        (None, a) => a.clone(),
    }
}

/// Apple's push types: a push that only wakes the app (`content-available`, nothing shown,
/// no sound, no badge) must go as `background` with priority 5; anything else is an `alert`.
pub fn is_background(req: &PushRequest) -> bool {
    let shows_something = !matches!(req.alert, Alert::None)
        || req.aps.contains_key("sound")
        || req.aps.contains_key("badge")
        || req.meta.badge.is_some();
    let wakes = req.aps.get("content-available").and_then(Value::as_u64) == Some(1);
    wakes && !shows_something
}

/// The text of an alert for providers that take one string (FCM data).
fn alert_text(alert: &Alert) -> Option<String> {
    match alert {
        Alert::None => None,
        Alert::Text(t) => Some(t.clone()),
        Alert::Fields(m) => {
            let title = m.get("title").and_then(Value::as_str);
            let body = m.get("body").and_then(Value::as_str);
            match (title, body) {
                (Some(t), Some(b)) => Some(format!("{t}: {b}")),
                (Some(t), None) => Some(t.to_string()),
                (None, Some(b)) => Some(b.to_string()),
                (None, None) => None,
            }
        }
    }
}

fn insert_meta(target: &mut Map<String, Value>, meta: &PushMeta, with_badge: bool) {
    for (key, value) in meta_fields(meta) {
        target.insert(key.into(), value.into());
    }
    if with_badge && let Some(b) = meta.badge {
        target.insert("badge".into(), Value::from(b));
    }
}

/// A conversation field as it is written out.
enum MetaValue<'a> {
    Text(&'a str),
    Number(i64),
}

impl serde::Serialize for MetaValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MetaValue::Text(t) => s.serialize_str(t),
            MetaValue::Number(n) => s.serialize_i64(*n),
        }
    }
}

impl From<MetaValue<'_>> for Value {
    fn from(v: MetaValue<'_>) -> Value {
        match v {
            MetaValue::Text(t) => Value::from(t),
            MetaValue::Number(n) => Value::from(n),
        }
    }
}

/// The conversation fields that pass through to the app (all but the badge), those present.
fn meta_fields(meta: &PushMeta) -> impl Iterator<Item = (&'static str, MetaValue<'_>)> {
    let texts = [
        ("backendService", &meta.backend_service),
        ("conversationId", &meta.conversation_id),
        ("dialogId", &meta.dialog_id),
        ("originatorId", &meta.originator_id),
        ("brandId", &meta.brand_id),
    ];
    texts
        .into_iter()
        .filter_map(|(key, value)| Some((key, MetaValue::Text(value.as_deref()?))))
        .chain(
            meta.sequence
                .map(|seq| ("sequence", MetaValue::Number(seq))),
        )
}

/// Builds with the full alert, or with the alert shortened just enough to fit. The common case
/// (it fits) builds once.
fn fit<T>(
    alert: &Alert,
    build: impl Fn(&Alert) -> T,
    size: impl Fn(&T) -> usize,
) -> Result<T, PayloadError> {
    let full = build(alert);
    if size(&full) <= PAYLOAD_LIMIT {
        return Ok(full);
    }
    let fitted = fit_alert(alert, |a| size(&build(a)))?;
    Ok(build(&fitted))
}

/// The longest version of `alert` whose payload size is within the limit. The body is shortened
/// first; the title only if the payload is still too large with an empty body.
fn fit_alert(alert: &Alert, size_of: impl Fn(&Alert) -> usize) -> Result<Alert, PayloadError> {
    if size_of(alert) <= PAYLOAD_LIMIT {
        return Ok(alert.clone());
    }
    match alert {
        Alert::None => Err(PayloadError::TooLarge {
            size: size_of(alert),
        }),
        Alert::Text(text) => {
            let cut = longest_fitting(text, |t| size_of(&Alert::Text(t)))?;
            Ok(Alert::Text(cut))
        }
        Alert::Fields(fields) => {
            let mut fields = fields.clone();
            // Localisation arguments can carry the text too; they go first.
            fields.remove("loc-args");
            fields.remove("title-loc-args");
            fields.remove("subtitle");
            for key in ["body", "title"] {
                let Some(Value::String(text)) = fields.get(key).cloned() else {
                    continue;
                };
                let with = |t: String| {
                    let mut f = fields.clone();
                    f.insert(key.into(), Value::from(t));
                    Alert::Fields(f)
                };
                if size_of(&with(String::new())) <= PAYLOAD_LIMIT {
                    let cut = longest_fitting(&text, |t| size_of(&with(t)))?;
                    return Ok(with(cut));
                }
                fields.insert(key.into(), Value::from(""));
            }
            let a = Alert::Fields(fields);
            match size_of(&a) {
                s if s <= PAYLOAD_LIMIT => Ok(a),
                size => Err(PayloadError::TooLarge { size }),
            }
        }
    }
}

/// The longest prefix of `text` (on a character boundary, followed by `…`) whose payload fits.
/// Binary search over character positions: about 12 builds for the longest allowed body.
fn longest_fitting(
    text: &str,
    size_with: impl Fn(String) -> usize,
) -> Result<String, PayloadError> {
    let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let candidate = |n: usize| -> String {
        let end = boundaries.get(n).copied().unwrap_or(text.len());
        format!("{}{ELLIPSIS}", &text[..end])
    };
    // Invariant: `lo` characters fit (0 is checked first), `hi` characters do not.
    let mut lo = 0usize;
    let mut hi = boundaries.len();
    let empty = size_with(candidate(0));
    if empty > PAYLOAD_LIMIT {
        return Err(PayloadError::TooLarge { size: empty });
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if size_with(candidate(mid)) <= PAYLOAD_LIMIT {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(candidate(lo))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::request::{DeviceToken, Provider};

    fn request(alert: Alert) -> PushRequest {
        PushRequest {
            provider: Provider::Apns,
            device_token: DeviceToken::new("aabbcc"),
            alert,
            aps: Map::from_iter([("sound".to_string(), Value::from("default"))]),
            meta: PushMeta {
                conversation_id: Some("conv-1".into()),
                badge: Some(3),
                sequence: Some(9),
                ..Default::default()
            },
        }
    }

    const PLAIN: Presentation = Presentation {
        mask_text: None,
        mutable_content: false,
    };

    fn parse(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn mask_replaces_every_text_field() {
        let mut fields = Map::new();
        fields.insert("title".into(), Value::from("Agent Smith"));
        fields.insert("body".into(), Value::from("your PIN is 1234"));
        fields.insert("loc-args".into(), Value::from(vec!["1234"]));
        let req = request(Alert::Fields(fields));
        let p = Presentation {
            mask_text: Some("You have a new message"),
            mutable_content: true,
        };
        let body = apns_body(&req, p).unwrap();
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(!text.contains("1234") && !text.contains("Smith"), "{text}");
        let v = parse(&body);
        assert_eq!(v["aps"]["alert"], "You have a new message");
        assert_eq!(v["aps"]["mutable-content"], 1);
        assert_eq!(v["aps"]["badge"], 3);
        assert_eq!(v["aps"]["sound"], "default");
        assert_eq!(v["conversationId"], "conv-1");
        assert_eq!(v["sequence"], 9);
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary_to_fit() {
        // Multi-byte characters and characters JSON must escape, so bytes != characters.
        let long: String = "é\"ab\n€".repeat(2000);
        for body in [
            apns_body(&request(Alert::Text(long.clone())), PLAIN).unwrap(),
            fcm_body(&request(Alert::Text(long.clone())), PLAIN, "high", true).unwrap(),
        ] {
            let v = parse(&body);
            let sent = v["aps"]["alert"]
                .as_str()
                .or(v["message"]["data"]["message"].as_str())
                .unwrap();
            assert!(sent.ends_with(ELLIPSIS));
            let kept = sent.trim_end_matches(ELLIPSIS);
            assert!(long.starts_with(kept));
            assert!(
                kept.len() > 2000,
                "cut far more than needed: {}",
                kept.len()
            );
        }
        let apns = apns_body(&request(Alert::Text(long.clone())), PLAIN).unwrap();
        assert!(apns.len() <= PAYLOAD_LIMIT);
        // One more character would not have fitted.
        let v = parse(&apns);
        let kept = v["aps"]["alert"]
            .as_str()
            .unwrap()
            .trim_end_matches(ELLIPSIS);
        let next = long[kept.len()..].chars().next().unwrap();
        let mut one_more = v.clone();
        one_more["aps"]["alert"] = Value::from(format!("{kept}{next}{ELLIPSIS}"));
        let b = serde_json::to_vec(&one_more).unwrap();
        assert!(b.len() > PAYLOAD_LIMIT);
    }

    #[test]
    fn a_silent_push_stays_silent_when_masked() {
        let mut req = request(Alert::None);
        req.aps.clear();
        req.aps.insert("content-available".into(), Value::from(1));
        req.meta.badge = None;
        let masked = Presentation {
            mask_text: Some("New message"),
            mutable_content: true,
        };
        let v = parse(&apns_body(&req, masked).unwrap());
        assert!(v["aps"].get("alert").is_none(), "{v}");
        assert!(v["aps"].get("mutable-content").is_none(), "{v}");
        assert!(is_background(&req));
        req.meta.badge = Some(1);
        assert!(!is_background(&req), "a badge is shown: an alert push");
    }

    #[test]
    fn short_text_is_untouched() {
        let body = apns_body(&request(Alert::Text("hello".into())), PLAIN).unwrap();
        assert_eq!(parse(&body)["aps"]["alert"], "hello");
    }

    #[test]
    fn fcm_carries_text_and_payload_as_data() {
        let req = request(Alert::Text("hi there".into()));
        let masked = Presentation {
            mask_text: Some("New message"),
            mutable_content: false,
        };
        let v = parse(&fcm_body(&req, masked, "high", true).unwrap());
        assert_eq!(v["message"]["token"], "aabbcc");
        assert_eq!(v["message"]["data"]["message"], "New message");
        let payload: Value =
            serde_json::from_str(v["message"]["data"]["payload"].as_str().unwrap()).unwrap();
        assert_eq!(payload["conversationId"], "conv-1");
        assert_eq!(payload["badge"], 3);
        assert_eq!(v["message"]["android"]["collapse_key"], "conv-1");
    }

    #[test]
    fn long_title_and_body_both_shrink() {
        let mut fields = Map::new();
        fields.insert("title".into(), Value::from("t".repeat(5000)));
        fields.insert("body".into(), Value::from("b".repeat(5000)));
        let body = apns_body(&request(Alert::Fields(fields)), PLAIN).unwrap();
        assert!(body.len() <= PAYLOAD_LIMIT);
        let v = parse(&body);
        assert_eq!(v["aps"]["alert"]["body"], "");
        assert!(v["aps"]["alert"]["title"].as_str().unwrap().len() > 3000);
    }
}
