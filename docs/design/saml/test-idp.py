#!/usr/bin/python3
"""Test SAML IdP for brandgate's CI (Debian's python3-pysaml2 7.0.1 + xmlsec1, no network).
Usage: test-idp.py CONFIG.json     (config keys: see load_config below)"""
import json, os, ssl, sys, tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.config import IdPConfig
from saml2.metadata import create_metadata_string
from saml2.saml import NAME_FORMAT_URI, NAMEID_FORMAT_UNSPECIFIED, NameID
from saml2.server import Server
from saml2.authn_context import PASSWORD
from saml2.xmldsig import SIG_RSA_SHA256, DIGEST_SHA256, SIG_RSA_SHA1, DIGEST_SHA1

SP_MD = """<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="{eid}">
<md:SPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
<md:AssertionConsumerService Binding="{post}" Location="{acs}" index="0"/>
</md:SPSSODescriptor></md:EntityDescriptor>"""

def load_config(path):
    c = json.load(open(path))
    base = c["base_url"].rstrip("/")            # e.g. https://127.0.0.1:8443
    sp_md = c.get("sp_metadata_file")
    if not sp_md:                                # no SP metadata file: build one
        fd, sp_md = tempfile.mkstemp(suffix=".xml")
        os.write(fd, SP_MD.format(eid=c["sp_entity_id"], acs=c["sp_acs_url"],
                                  post=BINDING_HTTP_POST).encode()); os.close(fd)
    sha1 = c.get("sha1", False)                  # for the "SHA-1 refused" test
    conf = {
        "entityid": c["entity_id"],
        "xmlsec_binary": "/usr/bin/xmlsec1",
        "key_file": c["key_pem"], "cert_file": c["cert_pem"],
        "metadata": {"local": [sp_md]},
        "accepted_time_diff": 60,
        "service": {"idp": {   # algorithms only count here (read as config._idp_signing_algorithm)
            "signing_algorithm": SIG_RSA_SHA1 if sha1 else SIG_RSA_SHA256,  # 7.0.1 defaults to SHA-1
            "digest_algorithm": DIGEST_SHA1 if sha1 else DIGEST_SHA256,
            "endpoints": {"single_sign_on_service": [(base + "/sso/redirect", BINDING_HTTP_REDIRECT)]},
            "policy": {"default": {"lifetime": {"minutes": 5}, "name_form": NAME_FORMAT_URI}},
            "want_authn_requests_signed": False,
        }},
    }
    idpc = IdPConfig(); idpc.load(conf)
    return c, idpc

CFG, IDPCONF = load_config(sys.argv[1])
IDP = Server(config=IDPCONF)
_md = create_metadata_string(None, config=IDPCONF)   # bytes (to_string) in 7.0.1
METADATA = _md.decode() if isinstance(_md, bytes) else _md

def authn_response(saml_request, relay_state, user):
    req = IDP.parse_authn_request(saml_request, BINDING_HTTP_REDIRECT)  # checks Destination
    args = IDP.response_args(req.message, [BINDING_HTTP_POST])  # destination = SP's ACS from SP metadata
    users = CFG.get("users", {})
    u = users.get(user, {"email": [user], "groups": CFG.get("default_groups", [])})
    signed = CFG.get("sign", "assertion")        # "assertion" | "response" | "both"
    resp = IDP.create_authn_response(
        identity={"email": u["email"], "groups": u["groups"]},
        in_response_to=args["in_response_to"], destination=args["destination"],
        sp_entity_id=args["sp_entity_id"],
        name_id=NameID(format=NAMEID_FORMAT_UNSPECIFIED, text=user),
        authn={"class_ref": PASSWORD, "authn_auth": CFG["entity_id"]},
        sign_assertion=signed in ("assertion", "both"),
        sign_response=signed in ("response", "both"),
    )
    if CFG.get("dump_dir"):                      # raw signed XML for the attack fixtures
        with open(os.path.join(CFG["dump_dir"], "last-response.xml"), "w") as f: f.write(str(resp))
    # auto-posting HTML form (saml2.pack.http_form_post_message) to the SP's ACS
    return IDP.apply_binding(BINDING_HTTP_POST, str(resp), args["destination"],
                             relay_state=relay_state, response=True)

class Handler(BaseHTTPRequestHandler):
    def _send(self, status, ctype, body):
        b = body.encode(); self.send_response(status)
        self.send_header("Content-Type", ctype); self.send_header("Content-Length", str(len(b)))
        self.end_headers(); self.wfile.write(b)
    def do_GET(self):
        url = urlsplit(self.path); q = parse_qs(url.query)
        if url.path == "/metadata":
            return self._send(200, "application/samlmetadata+xml", METADATA)
        if url.path == "/sso/redirect" and "SAMLRequest" in q:
            user = q.get("user", [CFG.get("user", "agent1")])[0]   # test picks the user
            try:
                info = authn_response(q["SAMLRequest"][0], q.get("RelayState", [""])[0], user)
            except Exception as e:                   # a bad request: say why, as text
                return self._send(400, "text/plain", "refused: %r" % e)
            return self._send(200, "text/html", info["data"])
        self._send(404, "text/plain", "not found")
    def log_message(self, *a): pass

srv = ThreadingHTTPServer((CFG.get("listen", "127.0.0.1"), int(CFG["port"])), Handler)
if CFG.get("tls_cert"):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(CFG["tls_cert"], CFG["tls_key"])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)                       # the test waits for this line
srv.serve_forever()
