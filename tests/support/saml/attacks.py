#!/usr/bin/python3
"""Attack fixtures from real signed pysaml2 answers, made with tools independent of brandgate:
lxml for the edits and the xmlsec1 CLI for signing again.

  attacks.py SIGNED_ASSERTION.xml SIGNED_RESPONSE.xml IDP_KEY IDP_CERT OTHER_KEY OTHER_CERT OUTDIR

SIGNED_ASSERTION.xml: the IdP's answer with its assertion signed; SIGNED_RESPONSE.xml: one with
the response signed. Writes one file per attack into OUTDIR. Every attack that is signed again
gets a fresh assertion ID, so none of them can spend the genuine assertion's ID.
"""
import copy, os, subprocess, sys
from lxml import etree

P = "urn:oasis:names:tc:SAML:2.0:protocol"
A = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
NS = {"p": P, "a": A, "ds": DS}
src, src_response_signed, key, cert, okey, ocert, out = sys.argv[1:8]
os.makedirs(out, exist_ok=True)
parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=False)
counter = [0]


def load(path=src):
    return etree.parse(path, parser)


def write(doc, name):
    path = os.path.join(out, name)
    doc.write(path, xml_declaration=True, encoding="UTF-8")
    return path


def one(node, xp):
    (n,) = node.xpath(xp, namespaces=NS)
    return n


def fresh_id(assertion):
    counter[0] += 1
    new = "_attack%d" % counter[0]
    assertion.set("ID", new)
    one(assertion, "ds:Signature/ds:SignedInfo/ds:Reference").set("URI", "#" + new)


def resign(doc, name, k=key, c=cert, element="Assertion", ns=A):
    """Signs the (edited) element again with xmlsec1: a genuine signature over the edit."""
    tmp = write(doc, name + ".unsigned")
    subprocess.run(["xmlsec1", "--sign", "--privkey-pem", "%s,%s" % (k, c),
                    "--id-attr:ID", "%s:%s" % (ns, element),
                    "--output", os.path.join(out, name), tmp],
                   check=True, capture_output=True)
    os.remove(tmp)


def edited(name, xp, attr, value):
    d = load(); a = one(d, "/p:Response/a:Assertion"); fresh_id(a)
    n = one(d, xp)
    if attr:
        n.set(attr, value)
    else:
        n.text = value
    resign(d, name)


def forged(assertion, who="admin", new_id="_forged1"):
    f = copy.deepcopy(assertion)
    for s in f.xpath("ds:Signature", namespaces=NS):
        f.remove(s)
    f.set("ID", new_id)
    one(f, "a:Subject/a:NameID").text = who
    return f


# Signed again with the IdP's key: the signature is good, a SAML check must refuse.
edited("other-audience.xml", "//a:Audience", None, "https://other-sp.test/sp")
edited("other-recipient.xml", "//a:SubjectConfirmationData", "Recipient", "https://other-sp.test/acs")
edited("in-response-to-differs.xml", "//a:SubjectConfirmationData", "InResponseTo", "_never_issued")
d = load(); a = one(d, "/p:Response/a:Assertion"); fresh_id(a)
one(d, "//a:SubjectConfirmationData").set("InResponseTo", "_never_issued")
d.getroot().set("InResponseTo", "_never_issued")
resign(d, "unknown-in-response-to.xml")
edited("expired.xml", "//a:Conditions", "NotOnOrAfter", "2001-01-01T00:00:00Z")
edited("not-yet-valid.xml", "//a:Conditions", "NotBefore", "2099-01-01T00:00:00Z")
edited("other-issuer.xml", "//a:Assertion/a:Issuer", None, "https://evil-idp.test/metadata")
d = load(); a = one(d, "/p:Response/a:Assertion"); fresh_id(a)
r = one(d, "//a:AudienceRestriction"); r.getparent().remove(r)
resign(d, "no-audience.xml")
d = load(); a = one(d, "/p:Response/a:Assertion"); fresh_id(a)
one(d, "//a:SubjectConfirmationData").attrib.pop("InResponseTo")
d.getroot().attrib.pop("InResponseTo")
resign(d, "unsolicited.xml")
d = load(); fresh_id(one(d, "/p:Response/a:Assertion"))
resign(d, "wrong-key.xml", okey, ocert)                  # signed, but not by the pinned key
d = load(); a = one(d, "/p:Response/a:Assertion"); fresh_id(a)
one(a, "ds:Signature/ds:SignedInfo/ds:SignatureMethod").set("Algorithm", DS + "rsa-sha1")
one(a, "ds:Signature/ds:SignedInfo/ds:Reference/ds:DigestMethod").set("Algorithm", DS + "sha1")
resign(d, "sha1.xml")                                    # the IdP's key, but SHA-1

d = load(); a = one(d, "/p:Response/a:Assertion"); fresh_id(a)
one(d, "//a:SubjectConfirmationData").set("NotOnOrAfter", "2001-01-01T00:00:00Z")
resign(d, "confirmation-expired.xml")

# The provider's refusal (a Status other than Success; only the assertion is signed).
d = load(); one(d, "/p:Response/p:Status/p:StatusCode").set(
    "Value", "urn:oasis:names:tc:SAML:2.0:status:Responder")
write(d, "status-responder.xml")

# The Response's own Destination changed (only the assertion is signed).
d = load(); d.getroot().set("Destination", "https://other-sp.test/acs")
write(d, "other-destination.xml")

# Comment injection: the IdP signs "admin.evil" (a name the attacker holds), then a comment
# splits it; exclusive canonicalisation drops comments, so xmlsec1 still says the signature
# is good, and a reader of the first text node would see "admin".
d = load(); a = one(d, "/p:Response/a:Assertion"); fresh_id(a)
one(a, "a:Subject/a:NameID").text = "admin.evil"
resign(d, "comment-base.xml")
raw = open(os.path.join(out, "comment-base.xml"), encoding="utf-8").read()
raw = raw.replace(">admin.evil<", ">admin<!---->.evil<", 1)
open(os.path.join(out, "comment-injection.xml"), "w", encoding="utf-8").write(raw)
os.remove(os.path.join(out, "comment-base.xml"))

# Wrapping, not signed again: the genuine signed assertion stays intact somewhere.
d = load(); resp = d.getroot(); signed = one(d, "/p:Response/a:Assertion")
ext = etree.SubElement(resp, "{%s}Extensions" % P); resp.remove(ext)
resp.insert(list(resp).index(signed), forged(signed))
ext.append(signed); resp.insert(1, ext)
write(d, "xsw-signed-moved-to-extensions.xml")

d = load(); resp = d.getroot(); signed = one(d, "/p:Response/a:Assertion")
resp.insert(list(resp).index(signed), forged(signed, new_id=signed.get("ID")))
write(d, "xsw-duplicate-id.xml")

d = load(); resp = d.getroot(); signed = one(d, "/p:Response/a:Assertion")
sig = one(signed, "ds:Signature"); obj = etree.SubElement(sig, "{%s}Object" % DS)
obj.append(forged(signed)); write(d, "xsw-forged-inside-signature.xml")

d = load(); one(d, "/p:Response/a:Assertion").addnext(forged(one(d, "/p:Response/a:Assertion")))
write(d, "xsw-second-unsigned-assertion.xml")

d = load(); resp = d.getroot(); signed = one(d, "/p:Response/a:Assertion")
resp.replace(signed, forged(signed, new_id="_wrapped"))
signed_copy = copy.deepcopy(signed)
one(resp, "a:Assertion").append(signed_copy)        # the signed one nested inside the forgery
write(d, "xsw-signed-nested-in-forgery.xml")

d = load(); a = one(d, "/p:Response/a:Assertion"); a.remove(one(a, "ds:Signature"))
write(d, "unsigned.xml")

# A signed Response with an unsigned assertion swapped in: the Response's digest must break.
d = load(src_response_signed); r = d.getroot(); a = one(d, "/p:Response/a:Assertion")
r.replace(a, forged(a, new_id=a.get("ID")))
write(d, "response-signed-assertion-swapped.xml")

# Another encoding declared: libxml2 would decode UTF-7 ("+ADw-" is "<") where a UTF-8 reader
# sees text, so markup could hide from the checks that run before the signature's.
body_utf7 = open(src, encoding="utf-8").read().split("?>", 1)[-1]
open(os.path.join(out, "utf7-declaration.xml"), "w").write(
    '<?xml version="1.0" encoding="UTF-7"?>' + body_utf7)

# XXE and entity expansion: refused before any signature is looked at.
body = open(src, encoding="utf-8").read().split("?>", 1)[-1]
name_id = one(load(), "//a:NameID").text
xxe = '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/hostname">]>'
open(os.path.join(out, "xxe.xml"), "w").write(
    xxe + body.replace(">%s<" % name_id, ">&x;<", 1))
lol = "<!DOCTYPE r [<!ENTITY a \"aaaaaaaaaa\">" + "".join(
    "<!ENTITY %s \"%s\">" % (chr(98 + i), ("&" + chr(97 + i) + ";") * 10) for i in range(8)) + "]>"
open(os.path.join(out, "billion-laughs.xml"), "w").write(
    lol + body.replace(">%s<" % name_id, ">&i;<", 1))
print("fixtures in", out)
