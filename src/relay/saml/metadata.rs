//! SAML metadata both ways: the provider's (its entity ID, its HTTP-Redirect single sign-on
//! URL and its signing certificates, read with the same strict parser as its answers) and
//! brandgate's own, published for the provider's administrators to import.

use base64::Engine;

use super::xml::{self, DSIG, METADATA};
use crate::digest::sha256;

const REDIRECT_BINDING: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";
pub const POST_BINDING: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";
const PROTOCOL_SUPPORT: &str = "urn:oasis:names:tc:SAML:2.0:protocol";

/// What brandgate uses of the provider's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpMetadata {
    pub entity_id: String,
    /// Where AuthnRequests go (HTTP-Redirect binding).
    pub sso_url: String,
    /// The signing certificates (DER): the only keys an answer's signature is checked with.
    pub certificates: Vec<Vec<u8>>,
}

/// Why the provider's metadata cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error(transparent)]
    Xml(#[from] xml::XmlError),
    #[error(
        "the metadata is not one md:EntityDescriptor with an entityID (or a list with exactly one identity provider)"
    )]
    NotAnEntity,
    #[error("the entity has no IDPSSODescriptor")]
    NotAnIdp,
    #[error(
        "the provider has no SingleSignOnService with the HTTP-Redirect binding and an https Location"
    )]
    NoRedirectService,
    #[error(
        "the provider's metadata has no signing certificate: answers could not be checked, so it is refused"
    )]
    NoSigningCertificate,
    #[error("a signing certificate is not a valid X.509 certificate")]
    BadCertificate,
    #[error("no signing certificate matches idp_cert_sha256")]
    NotPinned,
}

impl IdpMetadata {
    /// Reads metadata bytes; with `pins`, keeps only certificates whose SHA-256 is pinned
    /// (and refuses metadata with none of them).
    pub fn read(bytes: &[u8], pins: &[[u8; 32]]) -> Result<IdpMetadata, MetadataError> {
        let doc = xml::parse(xml::screen_metadata(bytes)?)?;
        let root = doc.root_element();
        // One entity, or a federation's list holding exactly one identity provider.
        let entity = if xml::is(root, METADATA, "EntitiesDescriptor") {
            let mut idps = xml::children(root, METADATA, "EntityDescriptor")
                .filter(|e| xml::only_child(*e, METADATA, "IDPSSODescriptor").is_some());
            match (idps.next(), idps.next()) {
                (Some(one), None) => one,
                _ => return Err(MetadataError::NotAnEntity),
            }
        } else {
            root
        };
        if !xml::is(entity, METADATA, "EntityDescriptor") {
            return Err(MetadataError::NotAnEntity);
        }
        let entity_id = entity
            .attribute("entityID")
            .filter(|e| !e.is_empty())
            .ok_or(MetadataError::NotAnEntity)?;
        let idp =
            xml::only_child(entity, METADATA, "IDPSSODescriptor").ok_or(MetadataError::NotAnIdp)?;
        let sso_url = xml::children(idp, METADATA, "SingleSignOnService")
            .filter(|s| s.attribute("Binding") == Some(REDIRECT_BINDING))
            .filter_map(|s| s.attribute("Location"))
            .find(|l| crate::http_client::check_url(l).is_ok())
            .ok_or(MetadataError::NoRedirectService)?;
        let mut certificates = Vec::new();
        for key in xml::children(idp, METADATA, "KeyDescriptor") {
            if !matches!(key.attribute("use"), None | Some("signing")) {
                continue;
            }
            let found = key
                .descendants()
                .filter(|n| xml::is(*n, DSIG, "X509Certificate"));
            for cert in found {
                let text: String = xml::text_value(cert)
                    .ok_or(MetadataError::BadCertificate)?
                    .chars()
                    .filter(|c| !c.is_ascii_whitespace())
                    .collect();
                let der = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|_| MetadataError::BadCertificate)?;
                if x509_parser::parse_x509_certificate(&der).is_err() {
                    return Err(MetadataError::BadCertificate);
                }
                if !certificates.contains(&der) {
                    certificates.push(der);
                }
            }
        }
        if certificates.is_empty() {
            return Err(MetadataError::NoSigningCertificate);
        }
        if !pins.is_empty() {
            certificates.retain(|der| pins.contains(&sha256(der)));
            if certificates.is_empty() {
                return Err(MetadataError::NotPinned);
            }
        }
        Ok(IdpMetadata {
            entity_id: entity_id.to_string(),
            sso_url: sso_url.to_string(),
            certificates,
        })
    }
}

/// brandgate's metadata as a service provider: its entity ID and ACS URL (HTTP-POST), signed
/// assertions wanted, requests not signed.
pub fn service_provider(entity_id: &str, acs_url: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            "\n",
            r#"<md:EntityDescriptor xmlns:md="{md}" entityID="{entity}">"#,
            r#"<md:SPSSODescriptor AuthnRequestsSigned="false" WantAssertionsSigned="true" protocolSupportEnumeration="{proto}">"#,
            r#"<md:AssertionConsumerService Binding="{post}" Location="{acs}" index="0" isDefault="true"/>"#,
            "</md:SPSSODescriptor></md:EntityDescriptor>\n"
        ),
        md = METADATA,
        entity = escape(entity_id),
        proto = PROTOCOL_SUPPORT,
        post = POST_BINDING,
        acs = escape(acs_url),
    )
}

/// Text made safe for an XML attribute value or element.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["idp.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .to_vec()
    }

    fn metadata(key_descriptors: &str, service: &str) -> String {
        format!(
            r#"<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID="https://idp.test/meta"><md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">{key_descriptors}{service}</md:IDPSSODescriptor></md:EntityDescriptor>"#
        )
    }

    fn key(use_: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!(
            r#"<md:KeyDescriptor{use_}><ds:KeyInfo><ds:X509Data><ds:X509Certificate>
{b64}
</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"#
        )
    }

    const REDIRECT: &str = r#"<md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="https://idp.test/post"/><md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="https://idp.test/sso"/>"#;

    #[test]
    fn reads_the_entity_the_redirect_service_and_the_signing_certificates() {
        let (signing, unspecified, encryption) = (certificate(), certificate(), certificate());
        let keys = [
            key(r#" use="signing""#, &signing),
            key("", &unspecified),
            key(r#" use="encryption""#, &encryption),
        ]
        .concat();
        let read = IdpMetadata::read(metadata(&keys, REDIRECT).as_bytes(), &[]).unwrap();
        assert_eq!(read.entity_id, "https://idp.test/meta");
        assert_eq!(read.sso_url, "https://idp.test/sso");
        assert_eq!(read.certificates, vec![signing.clone(), unspecified]);
        let pinned = IdpMetadata::read(metadata(&keys, REDIRECT).as_bytes(), &[sha256(&signing)]);
        assert_eq!(pinned.unwrap().certificates, vec![signing]);
    }

    #[test]
    fn a_federation_list_with_one_provider_a_byte_order_mark_and_comments_are_read() {
        let entity = metadata(&key("", &certificate()), REDIRECT);
        let sp = r#"<md:EntityDescriptor entityID="https://sp.test"><md:SPSSODescriptor protocolSupportEnumeration="x"/></md:EntityDescriptor>"#;
        let list = |inner: &str| {
            format!(
                "\u{feff}<!-- exported 2026-12-06 --><md:EntitiesDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\">{inner}</md:EntitiesDescriptor>"
            )
        };
        let one = IdpMetadata::read(list(&format!("{sp}{entity}")).as_bytes(), &[]).unwrap();
        assert_eq!(one.entity_id, "https://idp.test/meta");
        assert_eq!(
            IdpMetadata::read(list(&format!("{entity}{entity}")).as_bytes(), &[]),
            Err(MetadataError::NotAnEntity),
            "two providers: which one is meant?"
        );
    }

    #[test]
    fn metadata_without_a_signing_certificate_is_refused() {
        let only_encryption = key(r#" use="encryption""#, &certificate());
        assert_eq!(
            IdpMetadata::read(metadata(&only_encryption, REDIRECT).as_bytes(), &[]),
            Err(MetadataError::NoSigningCertificate)
        );
        assert_eq!(
            IdpMetadata::read(metadata("", REDIRECT).as_bytes(), &[]),
            Err(MetadataError::NoSigningCertificate)
        );
    }

    #[test]
    fn other_refusals_name_what_is_missing() {
        let keys = key("", &certificate());
        let post_only = r#"<md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="https://idp.test/post"/>"#;
        let plain = r#"<md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="http://idp.test/sso"/>"#;
        for (doc, why) in [
            (metadata(&keys, post_only), MetadataError::NoRedirectService),
            (metadata(&keys, plain), MetadataError::NoRedirectService),
            (
                metadata(&key("", b"not a certificate"), REDIRECT),
                MetadataError::BadCertificate,
            ),
            (
                "<md:EntitiesDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\"/>".into(),
                MetadataError::NotAnEntity,
            ),
        ] {
            assert_eq!(IdpMetadata::read(doc.as_bytes(), &[]), Err(why));
        }
        assert_eq!(
            IdpMetadata::read(metadata(&keys, REDIRECT).as_bytes(), &[[7; 32]]),
            Err(MetadataError::NotPinned)
        );
        let doctype = format!("<!DOCTYPE x>{}", metadata(&keys, REDIRECT));
        assert_eq!(
            IdpMetadata::read(doctype.as_bytes(), &[]),
            Err(MetadataError::Xml(xml::XmlError::Declarations))
        );
    }

    #[test]
    fn our_metadata_escapes_what_it_quotes() {
        let md = service_provider("https://b.test/sp?a=1&b=\"2\"", "https://b.test/acs");
        let doc = xml::parse(xml::screen(md.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            doc.root_element().attribute("entityID"),
            Some("https://b.test/sp?a=1&b=\"2\"")
        );
        let acs = doc
            .descendants()
            .find(|n| n.tag_name().name() == "AssertionConsumerService")
            .unwrap();
        assert_eq!(acs.attribute("Location"), Some("https://b.test/acs"));
        assert_eq!(acs.attribute("Binding"), Some(POST_BINDING));
    }
}
