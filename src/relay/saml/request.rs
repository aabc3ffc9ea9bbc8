//! The AuthnRequest brandgate sends (HTTP-Redirect binding): unsigned, as the SP metadata says,
//! with an ID that is a fresh 256-bit handle (the answer's `InResponseTo` finds the pending
//! sign-in by it), our ACS URL and the HTTP-POST binding for the answer.

use std::io::Write;
use std::time::SystemTime;

use base64::Engine;

use super::metadata::{POST_BINDING, escape};
use super::xml::{ASSERTION, PROTOCOL};

/// The URL the browser is sent to: the provider's SSO URL with the deflated, base64 request.
pub fn redirect_url(
    sso_url: &str,
    request_id: &str,
    sp_entity_id: &str,
    acs_url: &str,
    now: SystemTime,
) -> std::io::Result<String> {
    let xml = authn_request(sso_url, request_id, sp_entity_id, acs_url, now);
    let mut deflate =
        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    deflate.write_all(xml.as_bytes())?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(deflate.finish()?);
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("SAMLRequest", &encoded)
        .finish();
    let joiner = if sso_url.contains('?') { '&' } else { '?' };
    Ok(format!("{sso_url}{joiner}{query}"))
}

fn authn_request(
    destination: &str,
    request_id: &str,
    sp_entity_id: &str,
    acs_url: &str,
    now: SystemTime,
) -> String {
    format!(
        concat!(
            r#"<samlp:AuthnRequest xmlns:samlp="{p}" xmlns:saml="{a}" ID="{id}" Version="2.0" "#,
            r#"IssueInstant="{instant}" Destination="{destination}" "#,
            r#"AssertionConsumerServiceURL="{acs}" ProtocolBinding="{post}">"#,
            "<saml:Issuer>{issuer}</saml:Issuer>",
            r#"<samlp:NameIDPolicy AllowCreate="true"/>"#,
            "</samlp:AuthnRequest>"
        ),
        p = PROTOCOL,
        a = ASSERTION,
        id = escape(request_id),
        instant = instant(now),
        destination = escape(destination),
        acs = escape(acs_url),
        post = POST_BINDING,
        issuer = escape(sp_entity_id),
    )
}

/// `xs:dateTime` in UTC, whole seconds.
fn instant(now: SystemTime) -> String {
    let at = time::OffsetDateTime::from(now)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_request_is_deflated_onto_the_sso_url_and_says_where_to_answer() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_765_000_000_500);
        let url = redirect_url(
            "https://idp.test/sso?tenant=a",
            "_abc",
            "https://b.test/sp",
            "https://b.test/acs",
            now,
        )
        .unwrap();
        let (base, query) = url.split_once("?tenant=a&").unwrap();
        assert_eq!(base, "https://idp.test/sso");
        let (key, value) = form_urlencoded::parse(query.as_bytes()).next().unwrap();
        assert_eq!(key, "SAMLRequest");
        let deflated = base64::engine::general_purpose::STANDARD
            .decode(value.as_bytes())
            .unwrap();
        let mut xml = String::new();
        flate2::read::DeflateDecoder::new(&deflated[..])
            .read_to_string(&mut xml)
            .unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let request = doc.root_element();
        assert_eq!(request.tag_name().namespace(), Some(PROTOCOL));
        assert_eq!(request.tag_name().name(), "AuthnRequest");
        assert_eq!(request.attribute("ID"), Some("_abc"));
        assert_eq!(
            request.attribute("Destination"),
            Some("https://idp.test/sso?tenant=a")
        );
        assert_eq!(
            request.attribute("AssertionConsumerServiceURL"),
            Some("https://b.test/acs")
        );
        assert_eq!(
            request.attribute("IssueInstant"),
            Some("2025-12-06T05:46:40Z")
        );
        let issuer = request
            .children()
            .find(|n| n.tag_name().name() == "Issuer")
            .unwrap();
        assert_eq!(issuer.text(), Some("https://b.test/sp"));
    }
}
