//! The strict reading of SAML XML, before and after the signature check: a byte screen that
//! refuses everything a SAML message never needs (DTDs, entities, comments, CDATA, processing
//! instructions), a pure-Rust parse with no DTD support, and helpers that find elements by
//! namespace URI (never by prefix) and read a value only when it is exactly one piece of text.
//!
//! libxml2 (inside xmlsec) sees a message only after this screen accepted it, so the two
//! parsers cannot be played against each other with markup one of them repairs or expands.

use roxmltree::{Document, Node, ParsingOptions};

pub const PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
pub const ASSERTION: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
pub const METADATA: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
pub const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
pub const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";

/// Largest XML document read (an answer, or the provider's metadata).
pub const MAX_XML_BYTES: usize = 192 * 1024;
/// Most nodes a document may have (elements, attributes' text, text).
const MAX_NODES: u32 = 20_000;

/// Why a document was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("the XML is larger than {MAX_XML_BYTES} bytes")]
    TooLarge,
    #[error("the XML is not UTF-8")]
    NotUtf8,
    #[error("the XML has a DTD, an entity, a comment or CDATA (`<!`), which SAML never needs")]
    Declarations,
    #[error("the XML has a processing instruction (`<?`) other than its declaration")]
    ProcessingInstruction,
    #[error("the XML declaration must be version 1.0 in UTF-8 (no other encoding is read)")]
    Declaration,
    #[error("the XML is not well-formed: {0}")]
    Malformed(String),
}

/// `bytes` as text, when it passes the screen: UTF-8, no more than [`MAX_XML_BYTES`], no
/// `<!` anywhere (DOCTYPE, ENTITY, comments, CDATA) and no `<?` but a leading `<?xml …?>` that
/// declares nothing but version 1.0, UTF-8 and `standalone`. `<` cannot appear raw in text or
/// attribute values, so these are markup wherever found.
///
/// The declaration matters: libxml2 (inside xmlsec) decodes the bytes by the encoding it
/// names, roxmltree reads UTF-8 whatever it says, so `encoding="UTF-7"` would show libxml2
/// elements (a signature reference to any URL) that this screen and the shape check never saw.
pub fn screen(bytes: &[u8]) -> Result<&str, XmlError> {
    screen_with(bytes, false)
}

/// [`screen`] for metadata the operator configured: a UTF-8 byte order mark is dropped and
/// comments are let through (providers' metadata files often have both); DTDs and CDATA are
/// still refused.
pub fn screen_metadata(bytes: &[u8]) -> Result<&str, XmlError> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    screen_with(bytes, true)
}

fn screen_with(bytes: &[u8], comments: bool) -> Result<&str, XmlError> {
    if bytes.len() > MAX_XML_BYTES {
        return Err(XmlError::TooLarge);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| XmlError::NotUtf8)?;
    let declarations = text
        .match_indices("<!")
        .any(|(at, _)| !(comments && text[at..].starts_with("<!--")));
    if declarations {
        return Err(XmlError::Declarations);
    }
    let declared = text
        .strip_prefix("<?xml")
        .filter(|rest| rest.starts_with([' ', '\t', '\r', '\n']));
    let body = match declared {
        Some(rest) => {
            let end = rest.find("?>").ok_or(XmlError::ProcessingInstruction)?;
            check_declaration(&rest[..end])?;
            &rest[end + 2..]
        }
        None => text,
    };
    if body.contains("<?") {
        return Err(XmlError::ProcessingInstruction);
    }
    if !body
        .trim_start_matches([' ', '\t', '\r', '\n'])
        .starts_with('<')
    {
        return Err(XmlError::Malformed(
            "the document does not start with an element".into(),
        ));
    }
    Ok(text)
}

/// The pseudo-attributes of `<?xml …?>` (what is between `<?xml` and `?>`): `version="1.0"`, optionally `encoding="UTF-8"` (any
/// case) and `standalone`, nothing else.
fn check_declaration(inside: &str) -> Result<(), XmlError> {
    let mut version = false;
    let mut rest = inside.trim_start();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=').ok_or(XmlError::Declaration)?;
        let after = after.trim_start();
        let quote = after
            .chars()
            .next()
            .filter(|q| *q == '"' || *q == '\'')
            .ok_or(XmlError::Declaration)?;
        let (value, tail) = after[1..].split_once(quote).ok_or(XmlError::Declaration)?;
        match (name.trim(), value) {
            ("version", "1.0") => version = true,
            ("encoding", e) if e.eq_ignore_ascii_case("UTF-8") => {}
            ("standalone", "yes" | "no") => {}
            _ => return Err(XmlError::Declaration),
        }
        rest = tail.trim_start();
    }
    if version {
        Ok(())
    } else {
        Err(XmlError::Declaration)
    }
}

/// Parses screened text with no DTD and a bound on the nodes.
pub fn parse(text: &str) -> Result<Document<'_>, XmlError> {
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    Document::parse_with_options(text, options).map_err(|e| XmlError::Malformed(e.to_string()))
}

/// Whether `node` is the element `name` in namespace `ns`.
pub fn is(node: Node, ns: &str, name: &str) -> bool {
    node.is_element() && node.tag_name().namespace() == Some(ns) && node.tag_name().name() == name
}

/// The element children of `node` named `name` in `ns`.
pub fn children<'a, 'i>(
    node: Node<'a, 'i>,
    ns: &'a str,
    name: &'a str,
) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    node.children().filter(move |c| is(*c, ns, name))
}

/// The one element child of `node` named `name`; `None` if there is none or several.
pub fn only_child<'a, 'i>(node: Node<'a, 'i>, ns: &'a str, name: &'a str) -> Option<Node<'a, 'i>> {
    let mut found = children(node, ns, name);
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// The value of an element that holds exactly one piece of text (or nothing: `""`). An
/// element with child elements, or text split by anything, is not a value: `None`.
pub fn text_value<'a>(node: Node<'a, '_>) -> Option<&'a str> {
    let mut children = node.children();
    match (children.next(), children.next()) {
        (None, _) => Some(""),
        (Some(only), None) if only.is_text() => only.text(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_screen_refuses_what_saml_never_needs_and_keeps_the_rest() {
        let fine = br#"<?xml version="1.0" encoding="UTF-8"?><a x="1">b &amp; c</a>"#;
        assert!(screen(fine).is_ok());
        assert!(screen(b"<?xml version='1.0' encoding='utf-8' standalone='no'?>\n<a/>").is_ok());
        assert!(screen(b"<?xml version=\"1.0\"?>\n<a/>").is_ok());
        // Metadata files: a byte order mark and comments are fine, a DTD is not.
        assert!(screen_metadata(b"\xef\xbb\xbf<!-- exported --><a/>").is_ok());
        assert_eq!(
            screen(b"<!-- exported --><a/>"),
            Err(XmlError::Declarations)
        );
        assert_eq!(
            screen_metadata(b"<!DOCTYPE a><a/>"),
            Err(XmlError::Declarations)
        );
        assert_eq!(
            screen_metadata(b"<a><![CDATA[x]]></a>"),
            Err(XmlError::Declarations)
        );
        assert!(screen(b"<a>b</a>").is_ok());
        for (bytes, why) in [
            (&b"<!DOCTYPE a><a/>"[..], XmlError::Declarations),
            (
                b"<?xml version=\"1.0\"?><!DOCTYPE a [<!ENTITY e \"x\">]><a>&e;</a>",
                XmlError::Declarations,
            ),
            (
                b"<a>admin@brand.com<!---->.evil</a>",
                XmlError::Declarations,
            ),
            (b"<a><![CDATA[x]]></a>", XmlError::Declarations),
            (b"<a><?pi x?></a>", XmlError::ProcessingInstruction),
            (
                b"<?xml-stylesheet href=\"x\"?><a/>",
                XmlError::ProcessingInstruction,
            ),
            (b"<?xml version=\"1.0\"", XmlError::ProcessingInstruction),
            (
                b"<?xml version=\"1.0\" encoding=\"UTF-7\"?><a>+ADw-b/+AD4-</a>",
                XmlError::Declaration,
            ),
            (
                b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>",
                XmlError::Declaration,
            ),
            (
                b"<?xml version=\"1.0\" encoding=\"HZ-GB-2312\"?><a/>",
                XmlError::Declaration,
            ),
            (b"<?xml encoding=\"UTF-8\"?><a/>", XmlError::Declaration),
            (b"<?xml version=\"1.1\"?><a/>", XmlError::Declaration),
            (
                b"<?xmlfoo version=\"1.0\"?><a/>",
                XmlError::ProcessingInstruction,
            ),
            (
                b"\xef\xbb\xbf<a/>",
                XmlError::Malformed("the document does not start with an element".into()),
            ),
            (b"<a>\xff</a>", XmlError::NotUtf8),
        ] {
            assert_eq!(
                screen(bytes),
                Err(why),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        let big = vec![b' '; MAX_XML_BYTES + 1];
        assert_eq!(screen(&big), Err(XmlError::TooLarge));
    }

    #[test]
    fn a_value_is_one_piece_of_text_or_nothing() {
        let doc = parse("<r><a>one</a><b/><c>x<d/>y</c><e><d/></e></r>").unwrap();
        let get = |name: &str| {
            let node = doc
                .descendants()
                .find(|n| n.tag_name().name() == name)
                .unwrap();
            text_value(node)
        };
        assert_eq!(get("a"), Some("one"));
        assert_eq!(get("b"), Some(""));
        assert_eq!(get("c"), None);
        assert_eq!(get("e"), None);
    }

    #[test]
    fn elements_are_found_by_namespace_never_by_prefix() {
        let doc = parse(
            r#"<r xmlns:s="urn:oasis:names:tc:SAML:2.0:assertion" xmlns:evil="urn:evil"><evil:Issuer>x</evil:Issuer><s:Issuer>y</s:Issuer></r>"#,
        )
        .unwrap();
        let issuer = only_child(doc.root_element(), ASSERTION, "Issuer").unwrap();
        assert_eq!(text_value(issuer), Some("y"));
    }
}
