//! The relay's wire format: JSON envelopes over WebSocket, as the platform's published
//! messaging protocol has them (../shared/schemas/messaging, `infra/req.json`, `resp.json`,
//! `notification.json`):
//!
//! - request `{"kind":"req","id":"1","type":"ms.PublishEvent","body":{...}}`;
//! - response `{"kind":"resp","reqId":"1","code":200,"type":"...","body":{...}}`;
//! - notification `{"kind":"notification","type":"...","body":{...}}`.
//!
//! Parsing never fails the socket: a malformed envelope is a [`Malformed`] carrying the reason
//! and, where it could be read, the request id, for a `400` response.

use serde::Deserialize;
use serde_json::{Value, json};

/// The largest text a `StringResp` body may hold (the schema's limit).
const MAX_STRING_BODY: usize = 128;

/// A request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: String,
    pub kind: String,
    pub body: Value,
    /// `InitConnection` headers (`.ams.headers.ConsumerAuthentication`, ...).
    pub headers: Vec<Value>,
}

/// Why a frame is not a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The request's id when it had a usable one.
    pub id: Option<String>,
    pub reason: String,
}

#[derive(Deserialize)]
struct Envelope {
    kind: Option<Value>,
    id: Option<Value>,
    #[serde(rename = "type")]
    kind_name: Option<Value>,
    body: Option<Value>,
    headers: Option<Value>,
}

/// Whether an id is one the schema allows (a string of 1 to 64 characters).
fn usable_id(v: &Value) -> Option<String> {
    v.as_str()
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .map(str::to_string)
}

/// The request id of a frame that is not valid JSON, when its `"id": "..."` can still be
/// read (a usable id, without escapes), so the client learns which request failed.
fn id_in_broken_json(text: &str) -> Option<String> {
    let mut rest = text;
    while let Some(at) = rest.find("\"id\"") {
        rest = &rest[at + 4..];
        let Some(value) = rest.trim_start().strip_prefix(':') else {
            continue;
        };
        let Some(quoted) = value.trim_start().strip_prefix('"') else {
            continue;
        };
        let end = quoted.find(['"', '\\'])?;
        return (quoted[end..].starts_with('"'))
            .then(|| Value::from(&quoted[..end]))
            .as_ref()
            .and_then(usable_id);
    }
    None
}

/// Reads one text frame as a request.
pub fn parse_request(text: &str) -> Result<Request, Malformed> {
    let envelope: Envelope = serde_json::from_str(text).map_err(|e| Malformed {
        id: id_in_broken_json(text),
        reason: format!("not a JSON object: {e}"),
    })?;
    let id = envelope.id.as_ref().and_then(usable_id);
    let bad = |reason: &str| Malformed {
        id: id.clone(),
        reason: reason.to_string(),
    };
    if let Some(k) = &envelope.kind
        && k.as_str() != Some("req")
    {
        return Err(bad("kind must be \"req\""));
    }
    let Some(id) = id.clone() else {
        return Err(bad("id must be a string of 1 to 64 characters"));
    };
    let kind = match envelope.kind_name {
        Some(Value::String(t)) if !t.is_empty() && t.len() <= 128 => t,
        _ => return Err(bad("type must be a request type")),
    };
    let headers = match envelope.headers {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(h)) => h,
        Some(_) => return Err(bad("headers must be an array")),
    };
    Ok(Request {
        id,
        kind,
        body: envelope.body.unwrap_or(Value::Null),
        headers,
    })
}

/// A response frame.
pub fn response(req_id: &str, code: u16, kind: &str, body: Value) -> String {
    json!({"kind": "resp", "reqId": req_id, "code": code, "type": kind, "body": body}).to_string()
}

/// A response whose body is a short text (`.ReqBody$StringResp`), cut to the schema's limit
/// on a character boundary.
pub fn text_response(req_id: &str, code: u16, text: &str) -> String {
    let mut end = text.len().min(MAX_STRING_BODY);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    response(
        req_id,
        code,
        ".ReqBody$StringResp",
        Value::from(&text[..end]),
    )
}

/// The answer to a malformed request: `400` with the reason. A request whose id cannot be
/// read is answered with the id `"invalid"` (the schema requires a non-empty one).
pub fn malformed_response(m: &Malformed) -> String {
    text_response(m.id.as_deref().unwrap_or("invalid"), 400, &m.reason)
}

/// A notification frame.
pub fn notification(kind: &str, body: Value) -> String {
    json!({"kind": "notification", "type": kind, "body": body}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_and_bad_ones_explained() {
        let r = parse_request(r#"{"kind":"req","id":"1","type":"ms.PublishEvent","body":{"a":1}}"#)
            .unwrap();
        assert_eq!((r.id.as_str(), r.kind.as_str()), ("1", "ms.PublishEvent"));
        assert_eq!(r.body["a"], 1);
        // kind may be left out (the schema only gives it a default).
        assert!(parse_request(r#"{"id":"2","type":"GetClock"}"#).is_ok());

        let e = parse_request("[1,2]").unwrap_err();
        assert_eq!(e.id, None);
        // Not JSON, but its id can be read: the answer names it.
        let e = parse_request(r#"{"kind":"req", "id" : "41","type":"ms.PublishEvent","body":{"#)
            .unwrap_err();
        assert_eq!(e.id.as_deref(), Some("41"));
        assert!(e.reason.starts_with("not a JSON object"), "{e:?}");
        for unreadable in [
            r#"{"id":41,"type":"#,
            r#"{"id":"4\"1","#,
            r#"{"id":"41"#,
            "{",
        ] {
            assert_eq!(
                parse_request(unreadable).unwrap_err().id,
                None,
                "{unreadable}"
            );
        }
        let e = parse_request(r#"{"id":7,"type":"x"}"#).unwrap_err();
        assert!(e.reason.contains("id must be"), "{e:?}");
        let e = parse_request(r#"{"id":"9","type":5}"#).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("9"));
        let e = parse_request(r#"{"kind":"resp","id":"9","type":"x"}"#).unwrap_err();
        assert!(e.reason.contains("kind"));
        let e = parse_request(&format!(r#"{{"id":"{}","type":"x"}}"#, "i".repeat(65))).unwrap_err();
        assert_eq!(e.id, None);
    }

    #[test]
    fn text_bodies_fit_the_schema() {
        let long = "é".repeat(100);
        let frame: Value = serde_json::from_str(&text_response("1", 400, &long)).unwrap();
        assert!(frame["body"].as_str().unwrap().len() <= MAX_STRING_BODY);
        let frame: Value = serde_json::from_str(&malformed_response(&Malformed {
            id: None,
            reason: "x".into(),
        }))
        .unwrap();
        assert_eq!(frame["reqId"], "invalid");
        assert_eq!(frame["code"], 400);
    }
}
