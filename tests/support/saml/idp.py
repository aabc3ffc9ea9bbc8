#!/usr/bin/python3
"""A real SAML 2.0 identity provider for the tests: Debian's pysaml2 (python3-pysaml2), which
signs with the xmlsec1 CLI. Not written by brandgate: it parses our AuthnRequest (and refuses
one not addressed to it), reads our SP metadata, and signs its answers itself.

  idp.py CONFIG.json     prints one line, "ready <port>", when it serves

GET /metadata                 the IdP's metadata
GET /sso/redirect?SAMLRequest=...&user=NAME&sign=assertion|response|both[&nameid=transient]
                              the HTTP-Redirect SSO endpoint: answers the auto-posting form
                              with a Response for NAME, signed where asked; without `user`,
                              a sign-in page asking for it (no password: a test provider)

Config keys: entity_id, key_pem, cert_pem, sp_metadata_file (read at the first
sign-in, so brandgate's own metadata can be written after brandgate starts), port, tls_cert,
tls_key, sha1 (sign with RSA-SHA1/SHA1), users
{name: {email: [..], groups: [..]}}.
"""
import html, json, ssl, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.config import IdPConfig
from saml2.metadata import create_metadata_string
from saml2.saml import NAME_FORMAT_URI, NAMEID_FORMAT_TRANSIENT, NAMEID_FORMAT_UNSPECIFIED, NameID
from saml2.server import Server
from saml2.authn_context import PASSWORD
from saml2.xmldsig import SIG_RSA_SHA256, DIGEST_SHA256, SIG_RSA_SHA1, DIGEST_SHA1

CFG = json.load(open(sys.argv[1]))
# Bound first: the metadata names the port.
SRV = ThreadingHTTPServer(("127.0.0.1", int(CFG.get("port", 0))), None)
PORT = SRV.server_address[1]
BASE = "%s://127.0.0.1:%d" % ("https" if CFG.get("tls_cert") else "http", PORT)


def idp_config(with_sp):
    sha1 = CFG.get("sha1", False)
    conf = {
        "entityid": CFG["entity_id"],
        "xmlsec_binary": "/usr/bin/xmlsec1",
        "key_file": CFG["key_pem"],
        "cert_file": CFG["cert_pem"],
        "metadata": {"local": [CFG["sp_metadata_file"]]} if with_sp else {},
        "accepted_time_diff": 60,
        "service": {"idp": {
            # pysaml2 7 defaults to SHA-1, and reads the algorithms only here.
            "signing_algorithm": SIG_RSA_SHA1 if sha1 else SIG_RSA_SHA256,
            "digest_algorithm": DIGEST_SHA1 if sha1 else DIGEST_SHA256,
            "endpoints": {"single_sign_on_service": [(BASE + "/sso/redirect", BINDING_HTTP_REDIRECT)]},
            "policy": {"default": {"lifetime": {"minutes": 5}, "name_form": NAME_FORMAT_URI}},
            "want_authn_requests_signed": False,
        }},
    }
    c = IdPConfig()
    c.load(conf)
    return c


_md = create_metadata_string(None, config=idp_config(False))
METADATA = _md.decode() if isinstance(_md, bytes) else _md
LOCK = threading.Lock()
STATE = {"server": None}


def server():
    with LOCK:
        if STATE["server"] is None:
            STATE["server"] = Server(config=idp_config(True))
        return STATE["server"]


def authn_response(saml_request, relay_state, user, signed, name_format):
    idp = server()
    req = idp.parse_authn_request(saml_request, BINDING_HTTP_REDIRECT)
    args = idp.response_args(req.message, [BINDING_HTTP_POST])
    person = CFG.get("users", {}).get(user, {"email": [user + "@brand.test"], "groups": []})
    resp = idp.create_authn_response(
        identity={"email": person["email"], "groups": person["groups"]},
        in_response_to=args["in_response_to"],
        destination=args["destination"],
        sp_entity_id=args["sp_entity_id"],
        name_id=NameID(format=name_format, text=user),
        authn={"class_ref": PASSWORD, "authn_auth": CFG["entity_id"]},
        sign_assertion=signed in ("assertion", "both"),
        sign_response=signed in ("response", "both"),
    )
    return idp.apply_binding(BINDING_HTTP_POST, str(resp), args["destination"],
                             relay_state=relay_state, response=True)


# The provider's own sign-in page, for a person in a browser (no password: a test IdP).
LOGIN_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>Brand IdP</title></head>
<body><h1>Brand identity provider</h1>
<form method="get" action="/sso/redirect">
<input type="hidden" name="SAMLRequest" value="{request}">
<input type="hidden" name="RelayState" value="{relay}">
<label>Username <input name="user" id="idp-user"></label>
<button type="submit" id="idp-submit">Sign in</button>
</form></body></html>"""


class Handler(BaseHTTPRequestHandler):
    def _send(self, status, ctype, body):
        b = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def do_GET(self):
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        if url.path == "/metadata":
            return self._send(200, "application/samlmetadata+xml", METADATA)
        if url.path == "/sso/redirect" and "SAMLRequest" in q and "user" not in q:
            return self._send(200, "text/html", LOGIN_PAGE.format(
                request=html.escape(q["SAMLRequest"][0], quote=True),
                relay=html.escape(q.get("RelayState", [""])[0], quote=True)))
        if url.path == "/sso/redirect" and "SAMLRequest" in q:
            user = q["user"][0]
            signed = q.get("sign", ["assertion"])[0]
            name_format = NAMEID_FORMAT_TRANSIENT if q.get("nameid") == ["transient"] \
                else NAMEID_FORMAT_UNSPECIFIED
            try:
                info = authn_response(q["SAMLRequest"][0], q.get("RelayState", [""])[0], user,
                                      signed, name_format)
            except Exception as e:  # the refusal, for the test to read
                return self._send(400, "text/plain", "refused: %r" % e)
            return self._send(200, "text/html", info["data"])
        self._send(404, "text/plain", "not found")

    def log_message(self, *a):
        pass


SRV.RequestHandlerClass = Handler
if CFG.get("tls_cert"):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(CFG["tls_cert"], CFG["tls_key"])
    SRV.socket = ctx.wrap_socket(SRV.socket, server_side=True)
print("ready", PORT, flush=True)
SRV.serve_forever()
