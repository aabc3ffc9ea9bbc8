#!/usr/bin/python3
"""Attack fixtures from one real signed pysaml2 Response (assertion signed).
Needs Debian's python3-lxml and the xmlsec1 CLI. Usage:
  make-fixtures.py RESPONSE.xml IDP_KEY.pem IDP_CERT.pem OTHER_KEY.pem OTHER_CERT.pem OUTDIR \
                   [RESPONSE_SIGNED.xml  (the IdP run with "sign": "response")]"""
import copy, subprocess, sys, os
from lxml import etree

P = "urn:oasis:names:tc:SAML:2.0:protocol"; A = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
NS = {"p": P, "a": A, "ds": DS}
src, key, cert, okey, ocert, out = sys.argv[1:7]
os.makedirs(out, exist_ok=True)
parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=False)

def load():
    return etree.parse(src, parser)

def write(doc, name):
    path = os.path.join(out, name)
    doc.write(path, xml_declaration=True, encoding="UTF-8")
    return path

def resign(doc, name, k=key, c=cert):
    """Edit, then sign again with xmlsec1: a genuine signature over the edited assertion."""
    tmp = write(doc, name + ".unsigned")
    subprocess.run(["xmlsec1", "--sign", "--privkey-pem", f"{k},{c}",
                    "--id-attr:ID", f"{A}:Assertion", "--output", os.path.join(out, name), tmp],
                   check=True, capture_output=True)
    os.remove(tmp)

def one(doc, xp):
    (n,) = doc.xpath(xp, namespaces=NS)
    return n

def forged(assertion, who="admin@brand.com", new_id="_forged1"):
    f = copy.deepcopy(assertion)
    for s in f.xpath("ds:Signature", namespaces=NS):
        f.remove(s)                                  # the forgery carries no signature
    f.set("ID", new_id)
    one(f, "a:Subject/a:NameID").text = who
    return f

write(load(), "valid.xml")

# Re-signed with the IdP key (signature valid; a semantic check must refuse):
for name, xp, attr, value in [
    ("other-audience.xml", "//a:Audience", None, "https://other-sp.test/sp"),
    ("other-recipient.xml", "//a:SubjectConfirmationData", "Recipient", "https://other-sp.test/acs"),
    ("unknown-inresponseto.xml", "//a:SubjectConfirmationData", "InResponseTo", "_never_issued"),
    ("expired.xml", "//a:Conditions", "NotOnOrAfter", "2001-01-01T00:00:00Z"),
    ("not-yet-valid.xml", "//a:Conditions", "NotBefore", "2099-01-01T00:00:00Z"),
    ("other-issuer.xml", "//a:Assertion/a:Issuer", None, "https://evil-idp.test/metadata"),
]:
    d = load(); n = one(d, xp)
    if attr: n.set(attr, value)
    else: n.text = value
    resign(d, name)
d = load(); one(d, "//a:AudienceRestriction").getparent().remove(one(d, "//a:AudienceRestriction"))
resign(d, "no-audience.xml")
d = load(); resign(d, "wrong-key.xml", okey, ocert)          # signed, but not by the pinned cert

# Comment injection: the IdP signs "admin@brand.com.evil.test" (an account the attacker owns),
# then a comment is inserted; exc-c14n drops comments, so the signature still verifies.
d = load(); one(d, "//a:NameID").text = "admin@brand.com.evil.test"; resign(d, "comment-base.xml")
raw = open(os.path.join(out, "comment-base.xml"), encoding="utf-8").read()
raw = raw.replace(">admin@brand.com.evil.test<", ">admin@brand.com<!---->.evil.test<", 1)
open(os.path.join(out, "comment-injection.xml"), "w", encoding="utf-8").write(raw)

# Wrapping (NOT re-signed: the genuine signed assertion stays intact somewhere):
d = load(); resp = d.getroot(); signed = one(d, "/p:Response/a:Assertion")
ext = etree.SubElement(resp, f"{{{P}}}Extensions"); resp.remove(ext)
resp.insert(list(resp).index(signed), forged(signed))     # forgery where readers look
ext.append(signed); resp.insert(1, ext)                    # signed one hidden in Extensions
write(d, "xsw-signed-moved-to-extensions.xml")

d = load(); resp = d.getroot(); signed = one(d, "/p:Response/a:Assertion")
resp.insert(list(resp).index(signed), forged(signed, new_id=signed.get("ID")))
write(d, "xsw-duplicate-id.xml")                            # forgery first, same ID

d = load(); resp = d.getroot(); signed = one(d, "/p:Response/a:Assertion")
sig = one(signed, "ds:Signature"); obj = etree.SubElement(sig, f"{{{DS}}}Object")
obj.append(forged(signed)); write(d, "xsw-forged-inside-signature.xml")

d = load(); one(d, "/p:Response/a:Assertion").addnext(forged(one(d, "/p:Response/a:Assertion")))
write(d, "xsw-second-unsigned-assertion.xml")

d = load(); a = one(d, "/p:Response/a:Assertion"); a.remove(one(a, "ds:Signature"))
write(d, "unsigned.xml")

# XXE / entity expansion (the signature does not matter: refused before it is read):
body = open(src, encoding="utf-8").read().split("?>", 1)[1]
xxe = '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/hostname">]>'
open(os.path.join(out, "xxe.xml"), "w").write(xxe + body.replace(">agent1@brand.com<", ">&x;<", 1))
lol = "<!DOCTYPE r [<!ENTITY a \"aaaaaaaaaa\">" + "".join(
    f"<!ENTITY {chr(98+i)} \"{('&' + chr(97+i) + ';') * 10}\">" for i in range(8)) + "]>"
open(os.path.join(out, "billion-laughs.xml"), "w").write(lol + body.replace(">agent1@brand.com<", ">&i;<", 1))
# A signed Response with an unsigned assertion swapped in (the Response digest must break):
if len(sys.argv) > 7:
    d = etree.parse(sys.argv[7], parser); r = d.getroot(); a = one(d, "/p:Response/a:Assertion")
    r.replace(a, forged(a, new_id=a.get("ID"))); write(d, "response-signed-assertion-swapped.xml")
print("fixtures in", out)
