//! The checks of a provider's `<samlp:Response>`, in order, each with its own refusal:
//! 1. the byte screen and strict parse (`xml`);
//! 2. the shape: one Response, exactly one Assertion (its direct child), no encrypted or
//!    extension content, unique IDs, and each signature a child of the Response or the
//!    Assertion with one reference to its parent, exclusive canonicalisation, allowed
//!    algorithms, and nothing in `KeyInfo` but certificates;
//! 3. the signature, by xmlsec with the provider's pinned certificates only
//!    (`samael`'s `reduce_xml_to_signed`): what comes back is a new document holding only
//!    what was signed, and from here on only that is read (signature wrapping cannot place
//!    unsigned content where it is read);
//! 4. the SAML checks on the signed content: Destination, Issuer, Status, Audience, the bearer
//!    confirmation's Recipient and times, the Conditions' times, the authentication statement.
//!
//! The caller matches `InResponseTo` to a request it issued and keeps the assertion ID against
//! replay; this module only reads them out. Runs xmlsec, so call it off the async threads.

use std::time::{Duration, SystemTime};

use roxmltree::Node;

use super::xml::{self, ASSERTION, DSIG, EXC_C14N, PROTOCOL, XmlError};

const SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
const BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";
const TRANSIENT: &str = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";

/// Signature methods accepted (RSA-SHA1 only with `allow_sha1`).
const SIGNATURE_METHODS: &[&str] = &[
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512",
];
const DIGEST_METHODS: &[&str] = &[
    "http://www.w3.org/2001/04/xmlenc#sha256",
    "http://www.w3.org/2001/04/xmldsig-more#sha384",
    "http://www.w3.org/2001/04/xmlenc#sha512",
];
/// How deep elements may nest (a SAML answer needs about 10 levels).
const MAX_DEPTH: usize = 32;
/// Most child elements of one element (a long group list is a few hundred values).
const MAX_CHILDREN: usize = 512;
const SHA1_SIGNATURE: &str = "http://www.w3.org/2000/09/xmldsig#rsa-sha1";
const SHA1_DIGEST: &str = "http://www.w3.org/2000/09/xmldsig#sha1";

/// What an answer must match.
pub struct Expected<'a> {
    pub idp_entity_id: &'a str,
    pub sp_entity_id: &'a str,
    pub acs_url: &'a str,
    /// The provider's signing certificates (DER), from its metadata.
    pub certificates: &'a [Vec<u8>],
    pub allow_sha1: bool,
    pub now: SystemTime,
    pub leeway: Duration,
}

/// One attribute of the assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub friendly_name: Option<String>,
    pub values: Vec<String>,
}

/// What the provider vouched for, read from signed content only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vouched {
    pub assertion_id: String,
    /// The request this answers (from the bearer confirmation); `None`: sent unasked.
    pub in_response_to: Option<String>,
    pub name_id: String,
    /// The NameID is transient: another one each sign-in, so it names nobody for good.
    pub transient: bool,
    pub attributes: Vec<Attribute>,
    /// Until when the assertion could be presented (kept that long against replay).
    pub usable_until: SystemTime,
}

impl Vouched {
    /// The values of the attributes whose `Name` is `name`, or when there is none, whose
    /// `FriendlyName` is; `NameID` is the subject's name.
    pub fn values(&self, name: &str) -> Vec<&str> {
        if name == "NameID" {
            return vec![self.name_id.as_str()];
        }
        let by_name = self.attributes.iter().any(|a| a.name == name);
        self.attributes
            .iter()
            .filter(|a| match by_name {
                true => a.name == name,
                false => a.friendly_name.as_deref() == Some(name),
            })
            .flat_map(|a| a.values.iter().map(String::as_str))
            .collect()
    }

    /// The one value of `name` ([`Vouched::values`]); `None` when there is none or several.
    pub fn value(&self, name: &str) -> Option<&str> {
        match self.values(name)[..] {
            [one] => Some(one),
            _ => None,
        }
    }
}

/// Why an answer was refused. The text names the check, never the answer's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Xml(#[from] XmlError),
    #[error("shape: {0}")]
    Shape(&'static str),
    #[error("signature: {0}")]
    SignatureShape(&'static str),
    #[error("algorithm: {0:?} is not allowed")]
    Algorithm(String),
    #[error("signature: not valid with the provider's certificate")]
    Signature,
    #[error("signed content: {0}")]
    SignedContent(&'static str),
    #[error("destination: the answer is not addressed to this service's ACS URL")]
    Destination,
    #[error("issuer: the answer is not from the configured provider")]
    Issuer,
    #[error("status: the provider did not sign the agent in ({0})")]
    Status(String),
    #[error("audience: the assertion is not for this service provider")]
    Audience,
    #[error("recipient: the bearer confirmation is not for this service's ACS URL")]
    Recipient,
    #[error("subject: {0}")]
    Subject(&'static str),
    #[error("time: {0}")]
    Time(&'static str),
    #[error("in-response-to: the answer's request and its assertion's differ")]
    InResponseToDiffers,
}

impl Refusal {
    /// An algorithm refused, named as received (cut short: it came from outside).
    fn algorithm(uri: &str) -> Refusal {
        Refusal::Algorithm(uri.chars().take(80).collect())
    }

    /// The provider answered, but not with a sign-in (its own refusal, not a forgery).
    pub fn is_status(&self) -> bool {
        matches!(self, Refusal::Status(_))
    }
}

/// Checks a decoded `SAMLResponse` and reads what it vouches for.
pub fn check(bytes: &[u8], expected: &Expected) -> Result<Vouched, Refusal> {
    let text = xml::screen(bytes)?;
    let doc = xml::parse(text)?;
    let response = doc.root_element();
    let shape = check_shape(response, expected.allow_sha1)?;
    let signed_text = verify(text, expected)?;
    let signed_doc = xml::parse(xml::screen(signed_text.as_bytes())?)?;
    let root = signed_doc.root_element();
    let (assertion, signed_response) = if xml::is(root, ASSERTION, "Assertion") {
        (root, None)
    } else if xml::is(root, PROTOCOL, "Response") && root.attribute("ID") == Some(shape.response_id)
    {
        let assertion = xml::only_child(root, ASSERTION, "Assertion").ok_or(
            Refusal::SignedContent("the signed response holds no assertion"),
        )?;
        (assertion, Some(root))
    } else {
        return Err(Refusal::SignedContent(
            "neither the response nor its assertion",
        ));
    };
    if assertion.attribute("ID") != Some(shape.assertion_id) {
        return Err(Refusal::SignedContent("not the answer's assertion"));
    }
    if shape.response_signed != signed_response.is_some() {
        return Err(Refusal::SignedContent(
            "the signed parts differ from the answer's",
        ));
    }
    // The signed assertion first: the unsigned parts of a Response (its Status, when only the
    // assertion is signed) are read only for an assertion that is good for us.
    let vouched = check_assertion(assertion, expected, response)?;
    // The response's own fields: signed when its signature is, else as received (its
    // assertion's bearer confirmation carries the same facts, signed).
    check_response_fields(signed_response.unwrap_or(response), expected)?;
    Ok(vouched)
}

/// What the shape check found.
struct Shape<'a> {
    response_id: &'a str,
    assertion_id: &'a str,
    response_signed: bool,
}

fn check_shape<'a>(response: Node<'a, '_>, allow_sha1: bool) -> Result<Shape<'a>, Refusal> {
    if !xml::is(response, PROTOCOL, "Response") {
        return Err(Refusal::Shape("the document is not a samlp:Response"));
    }
    if response.attribute("Version") != Some("2.0") {
        return Err(Refusal::Shape("not SAML 2.0"));
    }
    let response_id = response
        .attribute("ID")
        .ok_or(Refusal::Shape("the response has no ID"))?;
    let mut ids = std::collections::HashSet::new();
    let mut assertions = Vec::new();
    let mut signatures = Vec::new();
    for node in response.descendants() {
        if node.is_comment() || node.is_pi() {
            return Err(Refusal::Shape(
                "comments and processing instructions are refused",
            ));
        }
        if !node.is_element() {
            continue;
        }
        if node.ancestors().count() > MAX_DEPTH {
            return Err(Refusal::Shape("the XML is nested too deep"));
        }
        if node.children().filter(Node::is_element).count() > MAX_CHILDREN {
            return Err(Refusal::Shape("an element has too many children"));
        }
        for attribute in node.attributes() {
            if !attribute.name().eq_ignore_ascii_case("id") {
                continue;
            }
            // libxml2 takes xml:id, and samael any attribute named ID whatever its
            // namespace, as an ID: none may hide beside the plain ones compared here.
            if attribute.namespace().is_some() {
                return Err(Refusal::Shape("an ID attribute in a namespace is refused"));
            }
            if !ids.insert(attribute.value()) {
                return Err(Refusal::Shape("two elements have the same ID"));
            }
        }
        let name = node.tag_name();
        match (name.namespace(), name.name()) {
            (Some(ASSERTION), "Assertion") => assertions.push(node),
            (Some(DSIG), "Signature") => signatures.push(node),
            (Some(ASSERTION), "EncryptedAssertion" | "EncryptedID" | "EncryptedAttribute") => {
                return Err(Refusal::Shape("encrypted content is not supported"));
            }
            (Some(PROTOCOL), "Extensions") | (Some(ASSERTION), "Advice") => {
                return Err(Refusal::Shape("extensions and advice are refused"));
            }
            _ => {}
        }
    }
    let [assertion] = assertions[..] else {
        return Err(Refusal::Shape(
            "the response must hold exactly one assertion",
        ));
    };
    if assertion.parent_element() != Some(response) {
        return Err(Refusal::Shape(
            "the assertion must be a child of the response",
        ));
    }
    let assertion_id = assertion
        .attribute("ID")
        .ok_or(Refusal::Shape("the assertion has no ID"))?;
    if signatures.is_empty() {
        return Err(Refusal::SignatureShape("the answer is not signed"));
    }
    let mut response_signed = false;
    let mut assertion_signed = false;
    for signature in signatures {
        let parent = signature.parent_element();
        let (seen, id) = if parent == Some(response) {
            (&mut response_signed, response_id)
        } else if parent == Some(assertion) {
            (&mut assertion_signed, assertion_id)
        } else {
            return Err(Refusal::SignatureShape(
                "a signature must be a child of the response or the assertion",
            ));
        };
        if std::mem::replace(seen, true) {
            return Err(Refusal::SignatureShape("one signature per element"));
        }
        check_signature(signature, id, allow_sha1)?;
    }
    Ok(Shape {
        response_id,
        assertion_id,
        response_signed,
    })
}

/// One `ds:Signature`: a reference to its parent only, exclusive canonicalisation, the
/// enveloped transform, allowed algorithms, and certificates only in `KeyInfo` (the key used
/// is always the pinned one).
fn check_signature(signature: Node, parent_id: &str, allow_sha1: bool) -> Result<(), Refusal> {
    for child in signature.children().filter(Node::is_element) {
        let known = ["SignedInfo", "SignatureValue", "KeyInfo"]
            .iter()
            .any(|name| xml::is(child, DSIG, name));
        if xml::children(signature, DSIG, child.tag_name().name()).count() > 1 {
            return Err(Refusal::SignatureShape("one of each part in a signature"));
        }
        if !known {
            return Err(Refusal::SignatureShape(
                "only SignedInfo, SignatureValue and KeyInfo may be in a signature",
            ));
        }
    }
    let info = xml::only_child(signature, DSIG, "SignedInfo")
        .ok_or(Refusal::SignatureShape("one SignedInfo"))?;
    if algorithm(xml::only_child(info, DSIG, "CanonicalizationMethod"))? != EXC_C14N {
        return Err(Refusal::SignatureShape(
            "canonicalisation must be exclusive, without comments",
        ));
    }
    let method = algorithm(xml::only_child(info, DSIG, "SignatureMethod"))?;
    if !(SIGNATURE_METHODS.contains(&method) || allow_sha1 && method == SHA1_SIGNATURE) {
        return Err(Refusal::algorithm(method));
    }
    let mut references = xml::children(info, DSIG, "Reference");
    let (Some(reference), None) = (references.next(), references.next()) else {
        return Err(Refusal::SignatureShape("exactly one reference"));
    };
    let target = reference.attribute("URI").and_then(|u| u.strip_prefix('#'));
    if target != Some(parent_id) {
        return Err(Refusal::SignatureShape(
            "the reference must be to the signed element's ID",
        ));
    }
    let digest = algorithm(xml::only_child(reference, DSIG, "DigestMethod"))?;
    if !(DIGEST_METHODS.contains(&digest) || allow_sha1 && digest == SHA1_DIGEST) {
        return Err(Refusal::algorithm(digest));
    }
    if reference.children().filter(Node::is_element).count() > 3
        || xml::children(reference, DSIG, "Transforms").count() > 1
    {
        return Err(Refusal::SignatureShape(
            "a reference holds one Transforms, DigestMethod and DigestValue",
        ));
    }
    if let Some(transforms) = xml::only_child(reference, DSIG, "Transforms") {
        let all: Vec<Node> = transforms.children().filter(Node::is_element).collect();
        if all.len() > 2 || all.iter().any(|t| !xml::is(*t, DSIG, "Transform")) {
            return Err(Refusal::SignatureShape("at most two transforms"));
        }
        for transform in all {
            let method = algorithm(Some(transform))?;
            let fine = match method {
                ENVELOPED => transform.children().all(|c| !c.is_element()),
                EXC_C14N => transform
                    .children()
                    .filter(Node::is_element)
                    .all(|c| xml::is(c, EXC_C14N, "InclusiveNamespaces")),
                _ => false,
            };
            if !fine {
                return Err(Refusal::SignatureShape(
                    "transforms may only be enveloped-signature and exclusive canonicalisation",
                ));
            }
        }
    }
    if let Some(key_info) = xml::only_child(signature, DSIG, "KeyInfo") {
        let only_certificates = key_info.children().filter(Node::is_element).all(|data| {
            xml::is(data, DSIG, "X509Data")
                && data
                    .children()
                    .filter(Node::is_element)
                    .all(|c| xml::is(c, DSIG, "X509Certificate"))
        });
        if !only_certificates {
            return Err(Refusal::SignatureShape(
                "KeyInfo may only hold X509 certificates",
            ));
        }
    }
    Ok(())
}

/// The `Algorithm` of an element that must have one.
fn algorithm<'a>(node: Option<Node<'a, '_>>) -> Result<&'a str, Refusal> {
    node.and_then(|n| n.attribute("Algorithm"))
        .ok_or(Refusal::SignatureShape("an algorithm is missing"))
}

/// xmlsec's check with the pinned certificates; returns the signed content only.
fn verify(text: &str, expected: &Expected) -> Result<String, Refusal> {
    use samael::crypto::{
        AllowedSignatureAlgorithm as A, CertificateDer, Crypto, CryptoProvider, ReduceMode,
    };
    let certificates: Vec<CertificateDer> = expected
        .certificates
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    let strong = [
        A::RsaSha256,
        A::RsaSha384,
        A::RsaSha512,
        A::EcdsaSha256,
        A::EcdsaSha384,
        A::EcdsaSha512,
    ];
    // samael has no SHA-1 entry: with SHA-1 allowed, the shape check's list is the only one.
    let allowed = (!expected.allow_sha1).then_some(&strong[..]);
    Crypto::reduce_xml_to_signed_with_allowed_algorithms(
        text,
        &certificates,
        ReduceMode::ValidateAndMarkNoAncestors,
        allowed,
    )
    .map_err(|e| {
        tracing::debug!(error = %e, "xmlsec refused a SAML signature");
        Refusal::Signature
    })
}

fn check_response_fields(response: Node, expected: &Expected) -> Result<(), Refusal> {
    if response.attribute("Destination") != Some(expected.acs_url) {
        return Err(Refusal::Destination);
    }
    if let Some(issuer) = xml::only_child(response, ASSERTION, "Issuer")
        && xml::text_value(issuer) != Some(expected.idp_entity_id)
    {
        return Err(Refusal::Issuer);
    }
    let code = xml::only_child(response, PROTOCOL, "Status")
        .and_then(|s| xml::only_child(s, PROTOCOL, "StatusCode"))
        .and_then(|c| c.attribute("Value"))
        .ok_or(Refusal::Status("no status".into()))?;
    if code != SUCCESS {
        const KNOWN: &[&str] = &["Requester", "Responder", "VersionMismatch"];
        let short = code.strip_prefix("urn:oasis:names:tc:SAML:2.0:status:");
        let named = short
            .filter(|s| KNOWN.contains(s))
            .unwrap_or("another status");
        return Err(Refusal::Status(named.to_string()));
    }
    Ok(())
}

fn check_assertion(
    assertion: Node,
    expected: &Expected,
    received_response: Node,
) -> Result<Vouched, Refusal> {
    let now = expected.now;
    let leeway = expected.leeway;
    let issuer = xml::only_child(assertion, ASSERTION, "Issuer").and_then(xml::text_value);
    if issuer != Some(expected.idp_entity_id) {
        return Err(Refusal::Issuer);
    }
    // Conditions: times, and every AudienceRestriction must name us.
    let conditions =
        xml::only_child(assertion, ASSERTION, "Conditions").ok_or(Refusal::Audience)?;
    let not_on_or_after = time_attribute(conditions, "NotOnOrAfter")?;
    if let Some(t) = time_attribute(conditions, "NotBefore")?
        && now + leeway < t
    {
        return Err(Refusal::Time("the assertion is not valid yet"));
    }
    if let Some(t) = not_on_or_after
        && now >= t + leeway
    {
        return Err(Refusal::Time("the assertion has expired"));
    }
    let restrictions: Vec<Node> =
        xml::children(conditions, ASSERTION, "AudienceRestriction").collect();
    let ours = |r: &Node| {
        xml::children(*r, ASSERTION, "Audience")
            .any(|a| xml::text_value(a) == Some(expected.sp_entity_id))
    };
    if restrictions.is_empty() || !restrictions.iter().all(ours) {
        return Err(Refusal::Audience);
    }
    // The subject, confirmed as a bearer for our ACS URL.
    let subject = xml::only_child(assertion, ASSERTION, "Subject")
        .ok_or(Refusal::Subject("the assertion has no subject"))?;
    let name_id_element = xml::only_child(subject, ASSERTION, "NameID")
        .ok_or(Refusal::Subject("the subject has no NameID of plain text"))?;
    let name_id = xml::text_value(name_id_element)
        .filter(|n| !n.is_empty())
        .ok_or(Refusal::Subject("the subject has no NameID of plain text"))?;
    let mut bearer_failure = Refusal::Subject("no bearer confirmation");
    let mut confirmed = None;
    for confirmation in xml::children(subject, ASSERTION, "SubjectConfirmation") {
        if confirmation.attribute("Method") != Some(BEARER) {
            continue;
        }
        match check_bearer(confirmation, expected) {
            Ok(found) => {
                confirmed = Some(found);
                break;
            }
            Err(e) => bearer_failure = e,
        }
    }
    let (in_response_to, bearer_until) = confirmed.ok_or(bearer_failure)?;
    if let Some(asked) = received_response.attribute("InResponseTo")
        && Some(asked) != in_response_to.as_deref()
    {
        return Err(Refusal::InResponseToDiffers);
    }
    let statement = xml::only_child(assertion, ASSERTION, "AuthnStatement").ok_or(
        Refusal::Subject("the assertion has no authentication statement"),
    )?;
    if let Some(t) = time_attribute(statement, "SessionNotOnOrAfter")?
        && now >= t + leeway
    {
        return Err(Refusal::Time("the provider's session has ended"));
    }
    let mut attributes = Vec::new();
    for statement in xml::children(assertion, ASSERTION, "AttributeStatement") {
        for attribute in xml::children(statement, ASSERTION, "Attribute") {
            let values = xml::children(attribute, ASSERTION, "AttributeValue")
                .map(|v| xml::text_value(v).map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or(Refusal::Subject("an attribute value is not plain text"))?;
            attributes.push(Attribute {
                name: attribute.attribute("Name").unwrap_or("").to_string(),
                friendly_name: attribute.attribute("FriendlyName").map(str::to_string),
                values,
            });
        }
    }
    Ok(Vouched {
        assertion_id: assertion.attribute("ID").unwrap_or("").to_string(),
        in_response_to,
        name_id: name_id.to_string(),
        transient: name_id_element.attribute("Format") == Some(TRANSIENT),
        attributes,
        usable_until: not_on_or_after.map_or(bearer_until, |t| t.max(bearer_until)) + leeway,
    })
}

/// A bearer `SubjectConfirmationData`: for our ACS, with a `NotOnOrAfter` still ahead and no
/// `NotBefore`. Returns its `InResponseTo` and `NotOnOrAfter`.
fn check_bearer(
    confirmation: Node,
    expected: &Expected,
) -> Result<(Option<String>, SystemTime), Refusal> {
    let data = xml::only_child(confirmation, ASSERTION, "SubjectConfirmationData")
        .ok_or(Refusal::Subject("the bearer confirmation has no data"))?;
    if data.attribute("Recipient") != Some(expected.acs_url) {
        return Err(Refusal::Recipient);
    }
    if data.attribute("NotBefore").is_some() {
        return Err(Refusal::Subject(
            "a bearer confirmation must not have NotBefore",
        ));
    }
    let until = time_attribute(data, "NotOnOrAfter")?.ok_or(Refusal::Subject(
        "the bearer confirmation has no NotOnOrAfter",
    ))?;
    if expected.now >= until + expected.leeway {
        return Err(Refusal::Time("the bearer confirmation has expired"));
    }
    Ok((data.attribute("InResponseTo").map(str::to_string), until))
}

/// An `xs:dateTime` attribute in UTC (`2026-12-06T03:00:00Z`, fractions allowed).
fn time_attribute(node: Node, name: &str) -> Result<Option<SystemTime>, Refusal> {
    let Some(text) = node.attribute(name) else {
        return Ok(None);
    };
    if !text.ends_with('Z') {
        return Err(Refusal::Time("a time is not in UTC"));
    }
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| Refusal::Time("a time is not an xs:dateTime"))?;
    Ok(Some(SystemTime::from(parsed)))
}

#[cfg(test)]
mod tests {
    //! The layers one by one, on fixtures made once from pysaml2's real output and the attack
    //! script (`tests/fixtures/saml/README.md`): the xmlsec layer alone (shape check bypassed)
    //! never yields unsigned content, and the shape check alone refuses each wrapping.
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/saml/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn certificate() -> Vec<u8> {
        let pem = fixture("idp.crt");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).unwrap()
    }

    fn expected(certificates: &[Vec<u8>]) -> Expected<'_> {
        Expected {
            idp_entity_id: "https://idp.brand.test/saml",
            sp_entity_id: "https://brandgate.test/sp",
            acs_url: "https://brandgate.test/acs",
            certificates,
            allow_sha1: false,
            now: SystemTime::now(),
            leeway: Duration::from_secs(60),
        }
    }

    /// Every subject name in what xmlsec returned.
    fn names(signed: &str) -> Vec<String> {
        let doc = roxmltree::Document::parse(signed).unwrap();
        doc.descendants()
            .filter(|n| xml::is(*n, ASSERTION, "NameID"))
            .map(|n| n.text().unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn xmlsec_alone_returns_only_what_the_provider_signed() {
        let certs = [certificate()];
        let expected = expected(&certs);
        for genuine in ["assertion-signed.xml", "response-signed.xml"] {
            let signed = verify(&fixture(genuine), &expected).unwrap();
            assert_eq!(names(&signed), ["ann"], "{genuine}");
        }
        // Wrapping: either refused, or what comes back is the genuine signed assertion only.
        for (name, refused) in [
            ("xsw-signed-moved-to-extensions.xml", false),
            ("xsw-forged-inside-signature.xml", false),
            ("xsw-second-unsigned-assertion.xml", false),
            ("xsw-signed-nested-in-forgery.xml", false),
            ("xsw-duplicate-id.xml", true),
            ("response-signed-assertion-swapped.xml", true),
            ("comment-injection.xml", true),
            ("wrong-key.xml", true),
            ("sha1.xml", true),
            ("unsigned.xml", true),
        ] {
            match verify(&fixture(name), &expected) {
                Err(e) => {
                    assert!(refused, "{name}: refused ({e}), expected the signed part");
                    assert_eq!(e, Refusal::Signature);
                }
                Ok(signed) => {
                    assert!(!refused, "{name}: xmlsec accepted it");
                    assert_eq!(names(&signed), ["ann"], "{name}: {signed}");
                }
            }
        }
    }

    #[test]
    fn sha1_passes_xmlsec_only_when_allowed() {
        let certs = [certificate()];
        let mut e = expected(&certs);
        assert_eq!(verify(&fixture("sha1.xml"), &e), Err(Refusal::Signature));
        e.allow_sha1 = true;
        let signed = verify(&fixture("sha1.xml"), &e).unwrap();
        assert_eq!(names(&signed), ["ann"]);
    }

    #[test]
    fn the_shape_check_alone_refuses_every_wrapping() {
        for (name, why) in [
            (
                "xsw-signed-moved-to-extensions.xml",
                "shape: extensions and advice are refused",
            ),
            (
                "xsw-forged-inside-signature.xml",
                "shape: the response must hold exactly one assertion",
            ),
            (
                "xsw-second-unsigned-assertion.xml",
                "shape: the response must hold exactly one assertion",
            ),
            (
                "xsw-signed-nested-in-forgery.xml",
                "shape: the response must hold exactly one assertion",
            ),
            (
                "xsw-duplicate-id.xml",
                "shape: two elements have the same ID",
            ),
            ("unsigned.xml", "signature: the answer is not signed"),
        ] {
            let text = fixture(name);
            let doc = xml::parse(&text).unwrap();
            let refusal = check_shape(doc.root_element(), false).err();
            assert_eq!(
                refusal.map(|r| r.to_string()).as_deref(),
                Some(why),
                "{name}"
            );
        }
        let text = fixture("sha1.xml");
        let doc = xml::parse(&text).unwrap();
        assert!(matches!(
            check_shape(doc.root_element(), false),
            Err(Refusal::Algorithm(_))
        ));
        assert!(
            check_shape(doc.root_element(), true).is_ok(),
            "SHA-1 when allowed"
        );
        for genuine in ["assertion-signed.xml", "response-signed.xml"] {
            let text = fixture(genuine);
            let doc = xml::parse(&text).unwrap();
            assert!(check_shape(doc.root_element(), false).is_ok(), "{genuine}");
        }
        // Edits of the genuine answer that libxml2 or samael would read differently, or that
        // would cost them too much.
        let genuine = fixture("assertion-signed.xml");
        let issuer_end = genuine.find("</ns1:Issuer>").unwrap() + "</ns1:Issuer>".len();
        let insert =
            |what: &str| format!("{}{what}{}", &genuine[..issuer_end], &genuine[issuer_end..]);
        let deep = format!(
            "{}{}",
            "<ns1:Issuer>".repeat(40),
            "</ns1:Issuer>".repeat(40)
        );
        let wide = "<ns1:Issuer/>".repeat(600);
        for (text, why) in [
            (
                genuine.replacen("<ns0:Status>", "<ns0:Status xml:id=\"x\">", 1),
                "shape: an ID attribute in a namespace is refused",
            ),
            (
                genuine.replacen("<ns0:Status>", "<ns0:Status ns1:ID=\"x\">", 1),
                "shape: an ID attribute in a namespace is refused",
            ),
            (insert(&deep), "shape: the XML is nested too deep"),
            (insert(&wide), "shape: an element has too many children"),
        ] {
            let doc = xml::parse(&text).unwrap();
            let refusal = check_shape(doc.root_element(), false).err();
            assert_eq!(refusal.map(|r| r.to_string()).as_deref(), Some(why));
        }
    }

    #[test]
    fn time_bound_checks_use_the_clock_and_the_leeway() {
        let certs = [certificate()];
        let text = fixture("assertion-signed.xml");
        let doc = xml::parse(&text).unwrap();
        let conditions = doc
            .descendants()
            .find(|n| xml::is(*n, ASSERTION, "Conditions"))
            .unwrap();
        let until = time_attribute(conditions, "NotOnOrAfter").unwrap().unwrap();
        let at = |now: SystemTime| {
            let mut e = expected(&certs);
            e.now = now;
            check(text.as_bytes(), &e).map(|v| v.name_id)
        };
        let leeway = Duration::from_secs(60);
        assert_eq!(at(until - Duration::from_secs(120)), Ok("ann".to_string()));
        assert_eq!(
            at(until + leeway - Duration::from_secs(1)),
            Ok("ann".to_string())
        );
        assert_eq!(
            at(until + leeway),
            Err(Refusal::Time("the assertion has expired"))
        );
    }

    #[test]
    fn many_threads_check_at_once() {
        // libxml2 and xmlsec keep process-wide state; the ACS runs checks on several blocking
        // threads at once.
        let certs = [certificate()];
        let genuine = fixture("assertion-signed.xml");
        let forged = fixture("wrong-key.xml");
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..25 {
                        let signed = verify(&genuine, &expected(&certs)).unwrap();
                        assert_eq!(names(&signed), ["ann"]);
                        assert_eq!(verify(&forged, &expected(&certs)), Err(Refusal::Signature));
                    }
                });
            }
        });
    }
}
