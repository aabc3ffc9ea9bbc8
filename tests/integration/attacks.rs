//! The attack matrix: hostile tokens and credentials against every surface that takes them,
//! on the running daemon. Consumer JWTs on the WebSocket upgrade (both paths, `jwt` and
//! `Bearer`), in a first `InitConnection`, and on each REST family; external issuers' tokens;
//! the brand provider's ID tokens at `/identity/v1/token`; client credentials and codes at
//! `/oauth/token`.
//!
//! Tokens with a valid signature and bad claims are signed with brandgate's own key, read from
//! its store and opened with the test's data-key file (tests/support/attack_tokens.rs); a
//! token signed that way with good claims is accepted first, so each refusal proves the check
//! it names, not a broken signature. Every refusal is checked for its status and the reason
//! its answer names; every case has a name, and a run lists every case that went wrong. After
//! each surface the daemon is stopped and its whole log is searched for the tokens it was sent;
//! URLs in token headers point at a listener that must never be called.

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use crate::support::TestEnv;
use crate::support::attack_tokens::{
    RsaSigner, Tripwire, assert_never_logged, b64, hmac_jws, jws, logged, now,
    rsa_public_encodings, unb64, x5c_certificate,
};
use crate::support::client::{Answer, Client, basic};
use crate::support::daemon::Daemon;
use crate::support::identity_world::{
    APP_CALLBACK, PLATFORM_CLIENT, PLATFORM_SECRET, VERIFIER, WEB_CALLBACK, World, enc,
};
use crate::support::idp::{BRANDGATE_ISSUER, Idp, Landing, UPSTREAM_CLIENT, url_params};
use crate::support::messaging::{MessagingClient, Side};
use crate::support::relay_world::{self, Relay};

const AUDIENCE: &str = "platform-audience";
/// `identity.token_lifetime` and `identity.leeway` of the relays here.
const LIFETIME: u64 = 600;
const LEEWAY: u64 = 60;
const TEN_YEARS: u64 = 10 * 365 * 86_400;
/// Seconds past the largest a `SystemTime` holds (2^63 - 1), exactly as a JavaScript number.
const BEYOND_SYSTEM_TIME: u64 = 9_223_372_036_854_776_000;

/// What a case must get.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Past authentication (what that looks like depends on the surface).
    Accepted,
    /// Refused, the answer naming one of these reasons.
    Refused(&'static [&'static str]),
}

struct Case {
    name: String,
    token: String,
    expect: Expect,
}

fn case(name: impl Into<String>, token: String, expect: Expect) -> Case {
    Case {
        name: name.into(),
        token,
        expect,
    }
}

const ALG_NONE: Expect = Expect::Refused(&["algorithm", "signature", "not a token"]);
const ALG: Expect = Expect::Refused(&["algorithm", "signature"]);
const KEY_ALG: Expect = Expect::Refused(&["algorithm"]);
const AUD: Expect = Expect::Refused(&["audience"]);
const ISS: Expect = Expect::Refused(&["issuer"]);
const NO_ISS: Expect = Expect::Refused(&["issuer", "claims"]);
const EXPIRED: Expect = Expect::Refused(&["expired"]);
const NOT_YET: Expect = Expect::Refused(&["not valid yet"]);
const LIFE: Expect = Expect::Refused(&["lifetime"]);
const LIFE_NO_IAT: Expect = Expect::Refused(&["lifetime", "issued at"]);
const SUBJECT: Expect = Expect::Refused(&["subject"]);
const NO_SUBJECT: Expect = Expect::Refused(&["subject", "claims"]);
const CLAIMS: Expect = Expect::Refused(&["claims"]);
const UNKNOWN_KEY: Expect = Expect::Refused(&["does not publish"]);
const SIGNATURE: Expect = Expect::Refused(&["signature"]);
const MALFORMED: Expect = Expect::Refused(&["not a token"]);
const DUPLICATE: Expect = Expect::Refused(&["claims", "not a token"]);

/// Subjects with control characters (C0, C1, DEL, and the Unicode line separator).
const CONTROL_SUBJECTS: [(&str, &str); 7] = [
    ("LF", "alice\nadmin"),
    ("CRLF", "alice\r\nadmin"),
    ("BEL", "alice\u{7}"),
    ("ESC", "alice\u{1b}[31m"),
    ("DEL", "alice\u{7f}"),
    ("NEL U+0085", "alice\u{85}admin"),
    ("LS U+2028", "alice\u{2028}admin"),
];

/// `alg: none` as attackers spell it.
const NONE_SPELLINGS: [&str; 4] = ["none", "NONE", "None", "nOnE"];

/// Hostile `kid`s (besides a 10 kB one).
const HOSTILE_KIDS: [(&str, &str); 4] = [
    ("path traversal", "../../../../../../etc/passwd"),
    ("SQL quotes", "' OR '1'='1' --"),
    ("NUL", "k\u{0}1"),
    ("URL", "https://attacker.example/jwks.json"),
];

// ------------------------------------------------------------------ brandgate's own tokens

/// A relay with an audience and a 60 s leeway, brandgate's own key read from its store, a
/// conversation of the control consumer, and a token brandgate minted.
struct OwnWorld {
    relay: Relay,
    key: RsaSigner,
    conversation: String,
    minted: String,
    /// What brandgate serves of its public key: the JWKS document and the one-line PEM.
    served: Vec<(String, Vec<u8>)>,
}

const CONTROL_SUBJECT: &str = "attack-control";

async fn own_world() -> OwnWorld {
    let env = TestEnv::new();
    let config = relay_world::config(
        &env,
        "10m",
        "",
        "requests_per_second = 100000\nauth_timeout = \"5s\"",
    );
    let daemon = Daemon::start_with_env(
        env.path(),
        &config,
        &[
            ("BRANDGATE_IDENTITY__AUDIENCE", AUDIENCE),
            ("BRANDGATE_IDENTITY__LEEWAY", "60s"),
        ],
    )
    .await;
    let relay = Relay { env, daemon };
    // A sign-up makes sure the ring has its key.
    let minted = relay.token().await;
    let key = RsaSigner::brandgates(
        &relay.env.path().join("state"),
        &relay.env.path().join("data-keys"),
    )
    .await;
    let minted_kid = jsonwebtoken::decode_header(&minted).unwrap().kid.unwrap();
    assert_eq!(key.kid, minted_kid, "the store's active key signs");

    // Positive control: a token of ours with brandgate's claims is accepted.
    let control = key.sign_claims(&own_claims(json!({})));
    let mut c = MessagingClient::connect(
        &relay.env.ca.cert_pem,
        relay.daemon.public,
        relay_world::PLATFORM_PATH,
        Some(&format!("jwt {control}")),
        Side::Consumer,
    )
    .await
    .unwrap_or_else(|r| panic!("the control token is refused: {} {}", r.status, r.body));
    let r = c.request("cm.ConsumerRequestConversation", json!({})).await;
    assert_eq!(r["code"], 200, "{r}");
    let conversation = r["body"]["conversationId"].as_str().unwrap().to_string();
    c.close_now().await;
    let client = relay.env.client();
    let mut served = Vec::new();
    for path in ["/.well-known/jwks.json", "/identity/v1/public-key.pem"] {
        let answer = client.get(&relay.daemon.url(path)).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        served.push((
            format!("{path} as served"),
            answer.body.clone().into_bytes(),
        ));
        served.push((
            format!("{path} trimmed"),
            answer.body.trim().as_bytes().to_vec(),
        ));
    }
    OwnWorld {
        relay,
        key,
        conversation,
        minted,
        served,
    }
}

/// brandgate's claims for the control consumer, with `changes` merged (`null` removes).
fn own_claims(changes: Value) -> String {
    let t = now();
    let mut claims = json!({
        "iss": BRANDGATE_ISSUER, "sub": CONTROL_SUBJECT, "aud": AUDIENCE,
        "iat": t, "exp": t + LIFETIME, "jti": "attack-jti",
    });
    merge(&mut claims, changes);
    claims.to_string()
}

fn merge(claims: &mut Value, changes: Value) {
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
}

/// A token of the control's claims signed by `signer`, padded (spaces after the header's
/// JSON, a `pad` claim) to exactly `length` bytes.
fn padded_to(signer: &RsaSigner, length: usize) -> String {
    let signature = b64(&signer.signature("RS256", "{}", "{}")).len();
    for spaces in 0..4 {
        let header = format!("{}{}", signer.header(), " ".repeat(spaces));
        for pad in 0..length {
            let payload = own_claims(json!({ "pad": "p".repeat(pad) }));
            let size = b64(header.as_bytes()).len() + b64(payload.as_bytes()).len() + signature + 2;
            if size == length {
                let token = signer.sign(&header, &payload);
                assert_eq!(token.len(), length);
                return token;
            }
            if size > length {
                break;
            }
        }
    }
    panic!("no padding makes a token of {length} bytes");
}

/// Every case against brandgate's own tokens.
fn own_cases(w: &OwnWorld, attacker: &RsaSigner, tripwire: &Tripwire) -> Vec<Case> {
    let key = &w.key;
    let t = now();
    let sign = |changes: Value| key.sign_claims(&own_claims(changes));
    let good_payload = own_claims(json!({}));
    let mut cases = vec![
        case("control: brandgate's claims", sign(json!({})), Expect::Accepted),
        case(
            "control: iat within the leeway",
            sign(json!({"iat": t + LEEWAY / 2, "exp": t + LEEWAY / 2 + LIFETIME})),
            Expect::Accepted,
        ),
        case(
            "control: nbf now",
            sign(json!({"nbf": t})),
            Expect::Accepted,
        ),
        case(
            "control: a 255-character subject",
            sign(json!({"sub": "s".repeat(255)})),
            Expect::Accepted,
        ),
        case(
            "control: 2048 bytes",
            padded_to(key, 2048),
            Expect::Accepted,
        ),
        case("a token brandgate minted", w.minted.clone(), Expect::Accepted),
        // Audience and issuer.
        case("aud missing", sign(json!({"aud": null})), AUD),
        case("aud another", sign(json!({"aud": "someone-else"})), AUD),
        case(
            "aud a list without ours",
            sign(json!({"aud": ["someone-else", "other"]})),
            AUD,
        ),
        case("aud empty list", sign(json!({"aud": []})), AUD),
        case("iss missing", sign(json!({"iss": null})), NO_ISS),
        case(
            "iss another",
            sign(json!({"iss": "https://attacker.example"})),
            ISS,
        ),
        case(
            "iss with a trailing slash",
            sign(json!({"iss": format!("{BRANDGATE_ISSUER}/")})),
            ISS,
        ),
        // Times.
        case(
            "expired",
            sign(json!({"iat": t - 3 * LIFETIME, "exp": t - 2 * LIFETIME})),
            EXPIRED,
        ),
        case("exp missing", sign(json!({"exp": null})), CLAIMS),
        case(
            "exp a string",
            sign(json!({"exp": (t + LIFETIME).to_string()})),
            CLAIMS,
        ),
        case(
            "iat 1 h ahead",
            sign(json!({"iat": t + 3600, "exp": t + 3600 + LIFETIME})),
            NOT_YET,
        ),
        case(
            "iat 10 years ahead",
            sign(json!({"iat": t + TEN_YEARS, "exp": t + TEN_YEARS + LIFETIME})),
            NOT_YET,
        ),
        case("nbf 1 h ahead", sign(json!({"nbf": t + 3600})), NOT_YET),
        // Past what a SystemTime holds (2^63 s): refused for its reason, not a panic.
        case("exp 2^64 - 1", sign(json!({"exp": u64::MAX})), LIFE),
        case("nbf 2^64 - 1", sign(json!({"nbf": u64::MAX})), NOT_YET),
        case(
            "iat and exp 2^64 - 1",
            sign(json!({"iat": u64::MAX, "exp": u64::MAX})),
            NOT_YET,
        ),
        case(
            "nbf 10 years ahead",
            sign(json!({"nbf": t + TEN_YEARS})),
            NOT_YET,
        ),
        case(
            "lifetime past token_lifetime + leeway",
            sign(json!({"exp": t + LIFETIME + LEEWAY + 60})),
            LIFE,
        ),
        case(
            "lifetime 10 years",
            sign(json!({"exp": t + TEN_YEARS})),
            LIFE,
        ),
        case(
            "exp 10 years ahead without iat",
            sign(json!({"iat": null, "exp": t + TEN_YEARS})),
            LIFE_NO_IAT,
        ),
        // Subjects.
        case("sub empty", sign(json!({"sub": ""})), SUBJECT),
        case("sub missing", sign(json!({"sub": null})), NO_SUBJECT),
        case("sub a number", sign(json!({"sub": 42})), NO_SUBJECT),
        case(
            "sub of 256 characters",
            sign(json!({"sub": "s".repeat(256)})),
            SUBJECT,
        ),
        // Duplicate claims: which one a reader takes differs between parsers.
        case(
            "duplicate sub",
            key.sign_claims(&format!(
                r#"{{"iss":"{BRANDGATE_ISSUER}","sub":"{CONTROL_SUBJECT}","sub":"victim","aud":"{AUDIENCE}","iat":{t},"exp":{}}}"#,
                t + LIFETIME
            )),
            DUPLICATE,
        ),
        case(
            "duplicate exp",
            key.sign_claims(&format!(
                r#"{{"iss":"{BRANDGATE_ISSUER}","sub":"{CONTROL_SUBJECT}","aud":"{AUDIENCE}","iat":{t},"exp":{},"exp":{}}}"#,
                t + LIFETIME,
                t + TEN_YEARS
            )),
            DUPLICATE,
        ),
        case(
            "duplicate aud",
            key.sign_claims(&format!(
                r#"{{"iss":"{BRANDGATE_ISSUER}","sub":"{CONTROL_SUBJECT}","aud":"someone-else","aud":"{AUDIENCE}","iat":{t},"exp":{}}}"#,
                t + LIFETIME
            )),
            DUPLICATE,
        ),
        case(
            "duplicate iss",
            key.sign_claims(&format!(
                r#"{{"iss":"https://attacker.example","iss":"{BRANDGATE_ISSUER}","sub":"{CONTROL_SUBJECT}","aud":"{AUDIENCE}","iat":{t},"exp":{}}}"#,
                t + LIFETIME
            )),
            DUPLICATE,
        ),
        // Size.
        case("2049 bytes", padded_to(key, 2049), MALFORMED),
        case(
            "8 kB of claims",
            sign(json!({"pad": "p".repeat(8 * 1024)})),
            MALFORMED,
        ),
    ];
    for (what, sub) in CONTROL_SUBJECTS {
        cases.push(case(
            format!("sub with {what}"),
            sign(json!({ "sub": sub })),
            SUBJECT,
        ));
    }
    cases.extend(algorithm_cases(key, &good_payload, &w.served));
    cases.extend(kid_cases(key, &good_payload));
    cases.extend(header_url_cases(
        &key.kid,
        attacker,
        tripwire,
        &good_payload,
        SIGNATURE,
    ));
    cases.extend(splice_cases(key, &good_payload, &w.minted));
    cases
}

/// `alg` attacks with `key`'s kid: none in every spelling, HMAC keyed by the public key in
/// every encoding, another RSA algorithm with a valid signature of the same key, and names
/// that are no algorithm. `served` are texts brandgate publishes of its key.
fn algorithm_cases(key: &RsaSigner, payload: &str, served: &[(String, Vec<u8>)]) -> Vec<Case> {
    let mut cases = Vec::new();
    let real = key.signature("RS256", &key.header(), payload);
    for alg in NONE_SPELLINGS {
        let header = json!({"alg": alg, "kid": key.kid, "typ": "JWT"}).to_string();
        cases.push(case(
            format!("alg {alg:?}, no signature"),
            jws(&header, payload, b""),
            ALG_NONE,
        ));
        cases.push(case(
            format!("alg {alg:?}, the real signature"),
            jws(&header, payload, &real),
            ALG_NONE,
        ));
    }
    cases.push(case(
        "alg none, no kid",
        jws(r#"{"alg":"none"}"#, payload, b""),
        ALG_NONE,
    ));
    let jwk = key.public_jwk();
    for (encoding, secret) in rsa_public_encodings(&jwk)
        .into_iter()
        .chain(served.to_vec())
    {
        let header = json!({"alg": "HS256", "kid": key.kid, "typ": "JWT"}).to_string();
        cases.push(case(
            format!("HS256 keyed by the public key as {encoding}"),
            hmac_jws("HS256", &secret, &header, payload),
            ALG,
        ));
    }
    for alg in ["HS384", "HS512"] {
        let spki_pem = &rsa_public_encodings(&jwk)[0].1;
        let header = json!({"alg": alg, "kid": key.kid, "typ": "JWT"}).to_string();
        cases.push(case(
            format!("{alg} keyed by the public key as SPKI PEM"),
            hmac_jws(alg, spki_pem, &header, payload),
            ALG,
        ));
    }
    for alg in ["RS512", "PS256"] {
        let header = json!({"alg": alg, "kid": key.kid, "typ": "JWT"}).to_string();
        cases.push(case(
            format!("{alg}, validly signed by the same key"),
            jws(&header, payload, &key.signature(alg, &header, payload)),
            KEY_ALG,
        ));
    }
    for (what, header) in [
        ("alg rs256", json!({"alg": "rs256", "kid": key.kid})),
        ("alg missing", json!({"kid": key.kid})),
        ("alg empty", json!({"alg": "", "kid": key.kid})),
    ] {
        let header = header.to_string();
        cases.push(case(what, key.sign(&header, payload), MALFORMED));
    }
    cases
}

/// `kid` attacks, signed by `key` (so only the kid is wrong).
fn kid_cases(key: &RsaSigner, payload: &str) -> Vec<Case> {
    let header = |kid: Value| json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
    let mut cases = vec![
        case(
            "kid unknown",
            key.sign(&header(json!("no-such-key")).to_string(), payload),
            UNKNOWN_KEY,
        ),
        case(
            "kid 10 kB",
            key.sign(&header(json!("k".repeat(10_000))).to_string(), payload),
            MALFORMED,
        ),
    ];
    for (what, kid) in HOSTILE_KIDS {
        cases.push(case(
            format!("kid {what}"),
            key.sign(&header(json!(kid)).to_string(), payload),
            UNKNOWN_KEY,
        ));
    }
    let mut no_kid = header(json!(null));
    no_kid.as_object_mut().unwrap().remove("kid");
    cases.push(case(
        "kid missing",
        key.sign(&no_kid.to_string(), payload),
        MALFORMED,
    ));
    cases.push(case(
        "kid a number",
        key.sign(&header(json!(7)).to_string(), payload),
        MALFORMED,
    ));
    cases
}

/// Headers naming where to get a key (`jku`, `x5u`, `jwk`, `x5c`), on tokens an attacker
/// signed: with the attacker's own kid (refused as an unknown key) and with the real kid
/// (refused as a bad signature, `with_real_kid`).
fn header_url_cases(
    real_kid: &str,
    attacker: &RsaSigner,
    tripwire: &Tripwire,
    payload: &str,
    with_real_kid: Expect,
) -> Vec<Case> {
    let mut cases = Vec::new();
    let x5c = x5c_certificate();
    let sets: [(&str, Value); 6] = [
        ("jku", json!({"jku": tripwire.url("/jwks.json")})),
        (
            "jku over http",
            json!({"jku": tripwire.url("/jwks.json").replace("https:", "http:")}),
        ),
        ("x5u", json!({"x5u": tripwire.url("/cert.pem")})),
        ("jwk", json!({"jwk": attacker.public_jwk()})),
        ("x5c", json!({"x5c": [x5c]})),
        (
            "all four",
            json!({"jku": tripwire.url("/k"), "x5u": tripwire.url("/c"),
                "jwk": attacker.public_jwk(), "x5c": [x5c]}),
        ),
    ];
    for (what, extra) in sets {
        for (kid, expect, whose) in [
            (attacker.kid.as_str(), UNKNOWN_KEY, "the attacker's kid"),
            (real_kid, with_real_kid, "the real kid"),
        ] {
            let mut header = json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
            merge(&mut header, extra.clone());
            cases.push(case(
                format!("{what} header, attacker-signed, {whose}"),
                attacker.sign(&header.to_string(), payload),
                expect,
            ));
        }
    }
    cases
}

/// Signatures stripped, altered, or taken from another token; parts of tokens swapped.
fn splice_cases(key: &RsaSigner, payload: &str, minted: &str) -> Vec<Case> {
    let good = key.sign_claims(payload);
    let parts: Vec<&str> = good.split('.').collect();
    let minted_parts: Vec<&str> = minted.split('.').collect();
    // The same fields in another order: other bytes under the same signature.
    let other_header = format!(r#"{{"typ":"JWT","kid":"{}","alg":"RS256"}}"#, key.kid);
    assert_ne!(other_header, key.header());
    let other = key.sign(&other_header, payload);
    let mut flipped = unb64(parts[2]);
    flipped[100] ^= 1;
    let someone_else = own_claims(json!({"sub": "victim"}));
    vec![
        case(
            "signature stripped (a.b.)",
            format!("{}.{}.", parts[0], parts[1]),
            SIGNATURE,
        ),
        case(
            "signature and its dot stripped (a.b)",
            format!("{}.{}", parts[0], parts[1]),
            MALFORMED,
        ),
        case(
            "a bit of the signature flipped",
            format!("{}.{}.{}", parts[0], parts[1], b64(&flipped)),
            SIGNATURE,
        ),
        case(
            "signature of another token",
            format!("{}.{}.{}", parts[0], parts[1], minted_parts[2]),
            SIGNATURE,
        ),
        case(
            "header of another token",
            format!(
                "{}.{}.{}",
                other.split('.').next().unwrap(),
                parts[1],
                parts[2]
            ),
            SIGNATURE,
        ),
        case(
            "payload of another subject under a good signature",
            format!("{}.{}.{}", parts[0], b64(someone_else.as_bytes()), parts[2]),
            SIGNATURE,
        ),
        case("four parts", format!("{good}.{}", parts[2]), MALFORMED),
        // Without a dot, REST takes it for an agent's session bearer.
        case(
            "not a JWT",
            "x".repeat(40),
            Expect::Refused(&["not a token", "session is not valid"]),
        ),
    ]
}

// ------------------------------------------------------------------ the surfaces

/// Where a consumer token is presented.
#[derive(Clone, Copy, Debug)]
enum Surface {
    /// `Authorization: jwt` on the upgrade at the platform's path.
    UpgradePlatformPath,
    /// `Authorization: Bearer` on the upgrade at `/ws/consumer`.
    UpgradeOwnPath,
    /// `.ams.headers.ConsumerAuthentication` in a first `InitConnection`.
    InitConnection,
    /// `GET /api/v1/conversations/{id}/events`, `Authorization: jwt`.
    History,
    /// The same with `Authorization: Bearer`.
    HistoryBearer,
    /// `GET /api/v1/conversations`.
    ConversationList,
    /// `PUT /api/v1/push-registrations/{app}`.
    RegisterDevice,
    /// `GET /api/v1/push-registrations`.
    ListDevices,
    /// `DELETE /api/v1/push-registrations/{app}`.
    RemoveDevice,
}

/// What a surface answered: a status (101 for an upgrade, the response's `code` in-band) and
/// the text that says why (an upgrade's body, the `error` of a JSON body, a response's body).
struct Outcome {
    status: u16,
    reason: String,
}

async fn present(
    relay: &Relay,
    client: &Client,
    conversation: &str,
    surface: Surface,
    token: &str,
) -> Outcome {
    let ca = &relay.env.ca.cert_pem;
    let addr = relay.daemon.public;
    let upgrade = |path: &'static str, auth: String| async move {
        match MessagingClient::connect(ca, addr, path, Some(&auth), Side::Consumer).await {
            Ok(c) => {
                c.close_now().await;
                Outcome {
                    status: 101,
                    reason: String::new(),
                }
            }
            Err(r) => Outcome {
                status: r.status,
                reason: r.body,
            },
        }
    };
    let jwt = format!("jwt {token}");
    let bearer = format!("Bearer {token}");
    let rest = |method: Method, path: String, auth: String, body: &'static str| {
        let client = client.clone();
        let url = relay.daemon.url(&path);
        async move {
            let answer = client
                .send(
                    method,
                    &url,
                    &[
                        ("authorization", auth.as_str()),
                        ("content-type", "application/json"),
                    ],
                    Bytes::from_static(body.as_bytes()),
                )
                .await;
            rest_outcome(&answer)
        }
    };
    const DEVICE: &str = r#"{"provider":"apns","token":"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}"#;
    match surface {
        Surface::UpgradePlatformPath => upgrade(relay_world::PLATFORM_PATH, jwt).await,
        Surface::UpgradeOwnPath => upgrade("/ws/consumer", bearer).await,
        Surface::InitConnection => init_connection(relay, token).await,
        Surface::History => {
            rest(
                Method::GET,
                format!("/api/v1/conversations/{conversation}/events"),
                jwt,
                "",
            )
            .await
        }
        Surface::HistoryBearer => {
            rest(
                Method::GET,
                format!("/api/v1/conversations/{conversation}/events"),
                bearer,
                "",
            )
            .await
        }
        Surface::ConversationList => {
            rest(Method::GET, "/api/v1/conversations".into(), jwt, "").await
        }
        Surface::RegisterDevice => {
            rest(
                Method::PUT,
                "/api/v1/push-registrations/attack-app".into(),
                jwt,
                DEVICE,
            )
            .await
        }
        Surface::ListDevices => {
            rest(Method::GET, "/api/v1/push-registrations".into(), jwt, "").await
        }
        Surface::RemoveDevice => {
            rest(
                Method::DELETE,
                "/api/v1/push-registrations/attack-app".into(),
                jwt,
                "",
            )
            .await
        }
    }
}

fn rest_outcome(answer: &Answer) -> Outcome {
    let reason = serde_json::from_str::<Value>(&answer.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(String::from))
        .unwrap_or_else(|| answer.body.clone());
    Outcome {
        status: answer.status,
        reason,
    }
}

/// A socket without a token, then `InitConnection` with `token`: the response's code and
/// body; a refusal must also close the socket with 4401.
async fn init_connection(relay: &Relay, token: &str) -> Outcome {
    let mut c = relay.connect(None).await;
    c.send(
        json!({"kind": "req", "id": "0", "type": "InitConnection", "headers": [
        {"type": ".ams.headers.ClientProperties", "deviceFamily": "DESKTOP", "os": "LINUX"},
        {"type": ".ams.headers.ConsumerAuthentication", "jwt": token}]}),
    )
    .await;
    let r = c.response_to("0").await;
    let status = r["code"].as_u64().unwrap() as u16;
    let mut reason = r["body"].as_str().unwrap_or_default().to_string();
    if status == 200 {
        c.close_now().await;
    } else {
        let (code, _) = c.closed().await;
        if code != 4401 {
            reason = format!("{reason} (and the socket closed with {code}, not 4401)");
        }
    }
    Outcome { status, reason }
}

/// Whether `outcome` shows the token got past authentication on `surface`.
fn passed(surface: Surface, o: &Outcome) -> bool {
    match surface {
        Surface::UpgradePlatformPath | Surface::UpgradeOwnPath => o.status == 101,
        Surface::InitConnection => o.status == 200,
        // Another subject than the conversation's owner sees no such conversation.
        Surface::History | Surface::HistoryBearer => {
            o.status == 200 || (o.status == 404 && o.reason.contains("no such conversation"))
        }
        Surface::ConversationList => o.status == 403 && o.reason.contains("for agents"),
        Surface::RegisterDevice => o.status == 404 && o.reason.contains("no app"),
        Surface::ListDevices => o.status == 200,
        Surface::RemoveDevice => o.status == 404 && o.reason.contains("no device registered"),
    }
}

/// Runs every case on every surface; returns one line per case that did not get what it must.
async fn run_cases(
    relay: &Relay,
    conversation: &str,
    surfaces: &[Surface],
    cases: &[Case],
) -> Vec<String> {
    let client = relay.env.client();
    let mut wrong = Vec::new();
    for &surface in surfaces {
        for c in cases {
            let o = present(relay, &client, conversation, surface, &c.token).await;
            let ok = match c.expect {
                Expect::Accepted => passed(surface, &o),
                Expect::Refused(reasons) => {
                    o.status == 401 && reasons.iter().any(|r| o.reason.contains(r))
                }
            };
            if !ok {
                wrong.push(format!(
                    "{surface:?} / {}: expected {:?}, got {} {:?}",
                    c.name,
                    c.expect,
                    o.status,
                    shortened(&o.reason)
                ));
            }
        }
    }
    wrong
}

/// The first 120 characters of an answer (a token minted by mistake need not fill the report).
fn shortened(text: &str) -> String {
    match text.char_indices().nth(120) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// Panics listing everything that went wrong: the cases in `wrong` (of `total`), a connection
/// to the tripwire, and any of the cases' tokens in the daemon's whole `log`.
fn verdict(mut wrong: Vec<String>, total: usize, log: &str, cases: &[Case], tripwire: &Tripwire) {
    if tripwire.hits() > 0 {
        wrong.push(format!(
            "a URL from a token header was fetched ({} connections)",
            tripwire.hits()
        ));
    }
    let tokens: Vec<String> = cases.iter().map(|c| c.token.clone()).collect();
    wrong.extend(logged(log, &tokens));
    assert!(
        wrong.is_empty(),
        "{} problem(s) in {total} cases:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Runs `surfaces` × the own-token cases, stops the daemon, and checks the answers, the log
/// and the tripwire.
async fn own_tokens_on(surfaces: &[Surface]) {
    let mut w = own_world().await;
    let attacker = RsaSigner::attacker("attacker-key-1");
    let tripwire = Tripwire::start().await;
    let cases = own_cases(&w, &attacker, &tripwire);
    let wrong = run_cases(&w.relay, &w.conversation, surfaces, &cases).await;
    let log = w.relay.daemon.stop().await;
    verdict(wrong, cases.len() * surfaces.len(), &log, &cases, &tripwire);
}

#[tokio::test]
async fn own_tokens_on_the_websocket_upgrade() {
    own_tokens_on(&[Surface::UpgradePlatformPath, Surface::UpgradeOwnPath]).await;
}

#[tokio::test]
async fn own_tokens_in_init_connection() {
    own_tokens_on(&[Surface::InitConnection]).await;
}

#[tokio::test]
async fn own_tokens_on_the_rest_api() {
    own_tokens_on(&[
        Surface::History,
        Surface::HistoryBearer,
        Surface::ConversationList,
        Surface::RegisterDevice,
        Surface::ListDevices,
        Surface::RemoveDevice,
    ])
    .await;
}

// ------------------------------------------------------------------ the provider's tokens

/// Hostile `kid`s, a 10 kB one included, for tokens signed by the provider.
fn hostile_kids() -> Vec<(String, String)> {
    HOSTILE_KIDS
        .iter()
        .map(|(w, k)| (w.to_string(), k.to_string()))
        .chain([("10 kB".to_string(), "k".repeat(10_000))])
        .collect()
}

/// `claims` signed by the provider's published key under a header naming `kid`.
async fn sign_with_kid(idp: &Idp, claims: Value, kid: &str) -> String {
    idp.admin(
        "sign",
        json!({"claims": claims, "key": "provider", "header": {"kid": kid}}),
    )
    .await["id_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// What a surface that checks the provider's tokens names for each family of header attacks.
struct ProviderReasons {
    none: Expect,
    hmac: Expect,
    /// Another key's signature, or another token's.
    signature: Expect,
    /// No signature at all.
    stripped: Expect,
}

/// What attacks on the provider's tokens need: the provider, a client to read its JWKS, an
/// attacker's key, and the tripwire for key URLs.
struct ProviderKit<'a> {
    idp: &'a Idp,
    client: &'a Client,
    attacker: &'a RsaSigner,
    tripwire: &'a Tripwire,
}

impl ProviderKit<'_> {
    /// Attacks on the header of `control` (a token the provider signed), its claims kept:
    /// alg none, HMAC keyed by the provider's public key in each encoding (and by its JWKS
    /// document), key URLs and embedded keys, the signature stripped or taken from `other`.
    async fn header_cases(&self, control: &str, other: &str, r: ProviderReasons) -> Vec<Case> {
        let parts: Vec<&str> = control.split('.').collect();
        let header: Value = serde_json::from_slice(&unb64(parts[0])).unwrap();
        let kid = header["kid"].as_str().unwrap().to_string();
        let payload = String::from_utf8(unb64(parts[1])).unwrap();
        let mut cases = Vec::new();
        for alg in NONE_SPELLINGS {
            let header = json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string();
            cases.push(case(
                format!("alg {alg:?}"),
                jws(&header, &payload, b""),
                r.none,
            ));
        }
        let jwks_text = self
            .client
            .get(&format!("{}/jwks", self.idp.issuer))
            .await
            .body;
        let jwks: Value = serde_json::from_str(&jwks_text).unwrap();
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .unwrap()
            .clone();
        let served = ("the JWKS document".to_string(), jwks_text.into_bytes());
        for (encoding, secret) in rsa_public_encodings(&jwk).into_iter().chain([served]) {
            let header = json!({"alg": "HS256", "kid": kid, "typ": "JWT"}).to_string();
            cases.push(case(
                format!("HS256 keyed by the provider's public key as {encoding}"),
                hmac_jws("HS256", &secret, &header, &payload),
                r.hmac,
            ));
        }
        cases.extend(header_url_cases(
            &kid,
            self.attacker,
            self.tripwire,
            &payload,
            r.signature,
        ));
        cases.push(case(
            "signature stripped",
            format!("{}.{}.", parts[0], parts[1]),
            r.stripped,
        ));
        cases.push(case(
            "signature of another token",
            format!(
                "{}.{}.{}",
                parts[0],
                parts[1],
                other.split('.').nth(2).unwrap()
            ),
            r.signature,
        ));
        cases
    }
}

// ------------------------------------------------------------------ external issuers

const SHOP_AUDIENCE: &str = "brand-chat";

#[tokio::test]
async fn external_issuer_tokens() {
    let env = TestEnv::new();
    let idp = Idp::start(&env, vec![], json!({})).await;
    let ca = env.ca.write(env.path(), "idp-ca");
    let config = relay_world::config(
        &env,
        "10m",
        "",
        "requests_per_second = 100000\nauth_timeout = \"5s\"",
    ) + &format!(
        r#"
[[identity.external_issuers]]
id = "shop"
issuer = "{issuer}"
jwks_url = "{issuer}/jwks"
audiences = ["{SHOP_AUDIENCE}"]
extra_trust_anchors = ["{ca}"]
jwks_min_refetch = "1s"
"#,
        issuer = idp.issuer,
        ca = ca.display(),
    );
    let daemon = Daemon::start_with_env(
        env.path(),
        &config,
        &[("BRANDGATE_IDENTITY__LEEWAY", "60s")],
    )
    .await;
    let mut relay = Relay { env, daemon };
    let attacker = RsaSigner::attacker("attacker-key-2");
    let tripwire = Tripwire::start().await;

    let t = now();
    let base = json!({"sub": "bob", "aud": SHOP_AUDIENCE, "exp": t + 600});
    let claims = |changes: Value| {
        let mut c = base.clone();
        merge(&mut c, changes);
        c
    };
    let sign = |changes: Value| {
        let c = claims(changes);
        let idp = &idp;
        async move { idp.sign(c, "provider").await }
    };
    let control = sign(json!({})).await;
    let mut cases = vec![
        case("control", control.clone(), Expect::Accepted),
        case(
            "control: nbf within the leeway",
            sign(json!({"nbf": t + LEEWAY / 2})).await,
            Expect::Accepted,
        ),
        case(
            "nbf 1 h ahead",
            sign(json!({"nbf": t + 3600})).await,
            NOT_YET,
        ),
        case(
            "nbf 10 years ahead",
            sign(json!({"nbf": t + TEN_YEARS})).await,
            NOT_YET,
        ),
        // Past what a SystemTime holds (2^63 s; the provider's signer writes numbers as
        // JavaScript does, so not 2^64 - 1 itself): refused for its reason, not a panic.
        case(
            "nbf past 2^63 s",
            sign(json!({"nbf": BEYOND_SYSTEM_TIME})).await,
            NOT_YET,
        ),
        case(
            "exp past 2^63 s",
            sign(json!({"exp": BEYOND_SYSTEM_TIME})).await,
            LIFE,
        ),
        case(
            "iat 1 h ahead",
            sign(json!({"iat": t + 3600, "exp": t + 3600 + 600})).await,
            NOT_YET,
        ),
        case(
            "iat 10 years ahead",
            sign(json!({"iat": t + TEN_YEARS, "exp": t + TEN_YEARS + 600})).await,
            NOT_YET,
        ),
        case(
            "expired",
            sign(json!({"iat": t - 7200, "exp": t - 3600})).await,
            EXPIRED,
        ),
        case(
            "lifetime 2 days",
            sign(json!({"exp": t + 2 * 86_400})).await,
            LIFE,
        ),
        case(
            "lifetime 10 years",
            sign(json!({"exp": t + TEN_YEARS})).await,
            LIFE,
        ),
        case(
            "iat null",
            // Sent as null: the provider's signer adds an iat only when there is none.
            idp.sign(
                json!({"sub": "bob", "aud": SHOP_AUDIENCE, "iat": null, "exp": t + 600}),
                "provider",
            )
            .await,
            Expect::Refused(&["issued at"]),
        ),
        case(
            "aud missing",
            idp.sign(json!({"sub": "bob", "exp": t + 600}), "provider")
                .await,
            Expect::Refused(&["audience", "claims"]),
        ),
        case(
            "aud another",
            sign(json!({"aud": "someone-else"})).await,
            AUD,
        ),
        case("sub empty", sign(json!({"sub": ""})).await, SUBJECT),
        case(
            "sub of 256 characters",
            sign(json!({"sub": "s".repeat(256)})).await,
            SUBJECT,
        ),
        case(
            "signed by a key the issuer does not publish",
            idp.sign(claims(json!({})), "unknown").await,
            UNKNOWN_KEY,
        ),
        case(
            "8 kB of claims",
            sign(json!({"pad": "p".repeat(8 * 1024)})).await,
            MALFORMED,
        ),
    ];
    for (what, sub) in CONTROL_SUBJECTS {
        cases.push(case(
            format!("sub with {what}"),
            sign(json!({ "sub": sub })).await,
            SUBJECT,
        ));
    }
    for (what, kid) in hostile_kids() {
        cases.push(case(
            format!("kid {what}"),
            sign_with_kid(&idp, claims(json!({})), &kid).await,
            if kid.len() > 2048 {
                MALFORMED
            } else {
                UNKNOWN_KEY
            },
        ));
    }

    let other = sign(json!({"sub": "victim"})).await;
    let reasons = ProviderReasons {
        none: ALG_NONE,
        hmac: KEY_ALG,
        signature: SIGNATURE,
        stripped: SIGNATURE,
    };
    let client = relay.env.client();
    let kit = ProviderKit {
        idp: &idp,
        client: &client,
        attacker: &attacker,
        tripwire: &tripwire,
    };
    cases.extend(kit.header_cases(&control, &other, reasons).await);

    let surfaces = [
        Surface::UpgradePlatformPath,
        Surface::InitConnection,
        Surface::ListDevices,
    ];
    let wrong = run_cases(&relay, "none", &surfaces, &cases).await;
    let log = relay.daemon.stop().await;
    idp.stop().await;
    verdict(wrong, cases.len() * surfaces.len(), &log, &cases, &tripwire);
}

// ------------------------------------------------------------------ /identity/v1/token

const BACKEND_SECRET: &str = "attack-backend-s3cret";

#[tokio::test]
async fn presented_id_tokens() {
    let env = TestEnv::new();
    let secret = env.secret("backend-secret", &format!("{BACKEND_SECRET}\n"));
    let backends = format!(
        "[[identity.backends]]\nid = \"login\"\nsecret_file = \"{}\"\n",
        secret.display()
    );
    let mut w = World::start_in(env, "", "", "", &backends).await;
    let attacker = RsaSigner::attacker("attacker-key-3");
    let tripwire = Tripwire::start().await;
    let t = now();
    let base = json!({"sub": "alice", "aud": UPSTREAM_CLIENT, "exp": t + 300});
    let claims = |changes: Value| {
        let mut c = base.clone();
        merge(&mut c, changes);
        c
    };
    let idp = &w.idp;
    let sign = |changes: Value| {
        let c = claims(changes);
        async move { idp.sign(c, "provider").await }
    };
    let control = sign(json!({})).await;
    let mut cases = vec![
        case("control", control.clone(), Expect::Accepted),
        case(
            "signed by a key the provider does not publish",
            idp.sign(claims(json!({})), "unknown").await,
            Expect::Refused(&["does not publish"]),
        ),
        case(
            "expired",
            sign(json!({"iat": t - 7200, "exp": t - 3600})).await,
            Expect::Refused(&["expired"]),
        ),
        case(
            "iat 1 h ahead",
            sign(json!({"iat": t + 3600, "exp": t + 3900})).await,
            Expect::Refused(&["future"]),
        ),
        case(
            "nbf 1 h ahead",
            sign(json!({"nbf": t + 3600})).await,
            Expect::Refused(&["future", "not valid yet"]),
        ),
        case(
            "nbf 10 years ahead",
            sign(json!({"nbf": t + TEN_YEARS})).await,
            Expect::Refused(&["future", "not valid yet"]),
        ),
        case(
            "nbf past 2^63 s",
            sign(json!({"nbf": BEYOND_SYSTEM_TIME})).await,
            Expect::Refused(&["future", "not valid yet"]),
        ),
        case(
            "iss another",
            sign(json!({"iss": "https://attacker.example"})).await,
            Expect::Refused(&["issuer"]),
        ),
        case(
            "iss null",
            // Sent as null: the provider's signer adds an iss only when there is none.
            idp.sign(
                json!({"iss": null, "sub": "alice", "aud": UPSTREAM_CLIENT, "exp": t + 300}),
                "provider",
            )
            .await,
            Expect::Refused(&["issuer", "not a signed JWT"]),
        ),
        case(
            "aud another",
            sign(json!({"aud": "someone-else"})).await,
            Expect::Refused(&["audience"]),
        ),
        case(
            "aud missing",
            idp.sign(json!({"sub": "alice", "exp": t + 300}), "provider")
                .await,
            Expect::Refused(&["audience"]),
        ),
        case(
            "sub empty",
            sign(json!({"sub": ""})).await,
            Expect::Refused(&["subject"]),
        ),
        case(
            "sub of 256 characters",
            sign(json!({"sub": "s".repeat(256)})).await,
            Expect::Refused(&["subject"]),
        ),
    ];
    for (what, sub) in CONTROL_SUBJECTS {
        cases.push(case(
            format!("sub with {what}"),
            sign(json!({ "sub": sub })).await,
            Expect::Refused(&["subject"]),
        ));
    }
    for (what, kid) in hostile_kids() {
        cases.push(case(
            format!("kid {what}"),
            sign_with_kid(idp, claims(json!({})), &kid).await,
            Expect::Refused(&["does not publish"]),
        ));
    }
    let other = sign(json!({"sub": "victim"})).await;
    let reasons = ProviderReasons {
        none: Expect::Refused(&["algorithm", "signature", "not a signed JWT"]),
        hmac: Expect::Refused(&["algorithm"]),
        signature: Expect::Refused(&["bad signature"]),
        stripped: Expect::Refused(&["bad signature", "not a signed JWT"]),
    };
    let client = w.env.client();
    let kit = ProviderKit {
        idp,
        client: &client,
        attacker: &attacker,
        tripwire: &tripwire,
    };
    cases.extend(kit.header_cases(&control, &other, reasons).await);

    let auth = basic("login", BACKEND_SECRET);
    let mut wrong = Vec::new();
    for c in &cases {
        let answer = client
            .post_json(
                &w.daemon.url("/identity/v1/token"),
                &[("authorization", &auth)],
                &json!({ "id_token": c.token }),
            )
            .await;
        let o = rest_outcome(&answer);
        let ok = match c.expect {
            Expect::Accepted => o.status == 200 && answer.json()["jwt"].is_string(),
            Expect::Refused(reasons) => {
                o.status == 400 && reasons.iter().any(|r| o.reason.contains(r))
            }
        };
        if !ok {
            wrong.push(format!(
                "/identity/v1/token / {}: expected {:?}, got {} {:?}",
                c.name,
                c.expect,
                o.status,
                shortened(&o.reason)
            ));
        }
    }
    let log = w.daemon.stop().await;
    if log.contains(BACKEND_SECRET) {
        wrong.push("the log holds the backend's secret".into());
    }
    verdict(wrong, cases.len(), &log, &cases, &tripwire);
}

// ------------------------------------------------------------------ /oauth/token

const WEB_APP: &str = "web-app";
const WEB_APP_SECRET: &str = "web-app s3cret";

/// `POST /oauth/token` with `form` and, when given, exactly this `Authorization` header.
async fn token_call(w: &World, form: &str, authorization: Option<&str>) -> Answer {
    let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
    if let Some(a) = authorization {
        headers.push(("authorization", a));
    }
    w.platform
        .send(
            Method::POST,
            &w.daemon.url("/oauth/token"),
            &headers,
            Bytes::from(form.to_string()),
        )
        .await
}

/// Asserts an RFC 6749 error answer: the status, `error`, and a word of its description.
fn assert_oauth_error(what: &str, answer: &Answer, status: u16, error: &str, why: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
    let body = answer.json();
    assert_eq!(body["error"], error, "{what}: {}", answer.body);
    assert!(
        body["error_description"].as_str().unwrap().contains(why),
        "{what}: expected {why:?}: {}",
        answer.body
    );
}

const FORGED_FORM: &str =
    "grant_type=authorization_code&code=forged-code-0123456789abcdefghijklmnopq";

#[tokio::test]
async fn the_token_endpoint_refuses_hostile_credentials_and_codes() {
    let env = TestEnv::new();
    let web_secret = env.secret("web-app-secret", &format!("{WEB_APP_SECRET}\n"));
    let rest = format!(
        "[[identity.clients]]\nid = \"{WEB_APP}\"\nsecret_file = \"{}\"\nredirect_uris = [\"{WEB_CALLBACK}\"]\n",
        web_secret.display()
    );
    let mut w = World::start_in(env, "", "", "", &rest).await;
    let right = basic(PLATFORM_CLIENT, PLATFORM_SECRET);

    // Hostile client credentials (fewer than 30 per client, below the failure limit).
    let long = "p".repeat(10_000);
    let hostile: Vec<(&str, String)> = vec![
        ("empty id", basic("", "x")),
        ("NUL in the id", basic("plat\0form", PLATFORM_SECRET)),
        ("LF after the id", basic("platform\n", PLATFORM_SECRET)),
        (
            "header injection in the id",
            basic("platform\r\nX-Injected: 1", PLATFORM_SECRET),
        ),
        ("10 kB id", basic(&long, PLATFORM_SECRET)),
        (
            "look-alike id (Cyrillic a)",
            basic("plаtform", PLATFORM_SECRET),
        ),
        ("trailing space", basic("platform ", PLATFORM_SECRET)),
        ("upper case", basic("PLATFORM", PLATFORM_SECRET)),
        ("SQL in the id", basic("' OR '1'='1", PLATFORM_SECRET)),
        ("double-encoded id", basic("pl%2561tform", PLATFORM_SECRET)),
        (
            "another client's secret",
            basic(PLATFORM_CLIENT, WEB_APP_SECRET),
        ),
        ("empty secret", basic(PLATFORM_CLIENT, "")),
        (
            "secret prefix",
            basic(PLATFORM_CLIENT, &PLATFORM_SECRET[..10]),
        ),
        (
            "secret and more",
            basic(PLATFORM_CLIENT, &format!("{PLATFORM_SECRET}x")),
        ),
        (
            "secret with NUL",
            basic(PLATFORM_CLIENT, &format!("{PLATFORM_SECRET}\0")),
        ),
        ("10 kB secret", basic(PLATFORM_CLIENT, &long)),
        ("Basic not base64", "Basic !!!not-base64!!!".to_string()),
        (
            "Basic without a colon",
            format!("Basic {}", b64(b"platform")),
        ),
        (
            "Bearer instead of Basic",
            format!("Bearer {PLATFORM_SECRET}"),
        ),
    ];
    for (what, authorization) in &hostile {
        let answer = token_call(&w, FORGED_FORM, Some(authorization)).await;
        assert_oauth_error(
            what,
            &answer,
            401,
            "invalid_client",
            "authentication failed",
        );
    }
    // The same in the form body.
    let failed = (401, "invalid_client", "authentication failed");
    for (what, form, (status, error, why)) in [
        (
            "form: NUL in the id",
            format!(
                "{FORGED_FORM}&client_id=plat%00form&client_secret={}",
                enc(PLATFORM_SECRET)
            ),
            failed,
        ),
        (
            "form: wrong secret",
            format!("{FORGED_FORM}&client_id=platform&client_secret=wrong"),
            failed,
        ),
        (
            "form: the id twice",
            format!(
                "{FORGED_FORM}&client_id={WEB_APP}&client_id=platform&client_secret={}",
                enc(PLATFORM_SECRET)
            ),
            (400, "invalid_request", "more than once"),
        ),
        (
            "form: the secret without an id",
            format!("{FORGED_FORM}&client_secret={}", enc(PLATFORM_SECRET)),
            failed,
        ),
    ] {
        let answer = token_call(&w, &form, None).await;
        assert_oauth_error(what, &answer, status, error, why);
    }

    // Codes that were never issued, whatever they look like.
    for (what, code) in [
        (
            "forged",
            "forged-code-0123456789abcdefghijklmnopq".to_string(),
        ),
        ("SQL", "' OR '1'='1' --".to_string()),
        ("NUL", "abc\0def".to_string()),
    ] {
        let form = format!("grant_type=authorization_code&code={}", enc(&code));
        let answer = token_call(&w, &form, Some(&right)).await;
        assert_oauth_error(what, &answer, 400, "invalid_grant", "unknown");
    }
    // One far longer than any code: unknown, or not even looked up.
    let form = format!("grant_type=authorization_code&code={}", "c".repeat(10_000));
    let answer = token_call(&w, &form, Some(&right)).await;
    if answer.json()["error"] == "invalid_request" {
        assert_oauth_error("10 kB code", &answer, 400, "invalid_request", "too long");
    } else {
        assert_oauth_error("10 kB code", &answer, 400, "invalid_grant", "unknown");
    }

    // A replayed code.
    let mut browser = w.browser();
    let code = w.login_for_code(&mut browser, "alice").await;
    let first = w.exchange(&code, APP_CALLBACK, Some(VERIFIER)).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let minted = first.json()["id_token"].as_str().unwrap().to_string();
    let again = w.exchange(&code, APP_CALLBACK, Some(VERIFIER)).await;
    assert_oauth_error(
        "replayed code",
        &again,
        400,
        "invalid_grant",
        "already used",
    );

    // Another client's code: refused, and spent for its own client too.
    let query = format!(
        "client_id={WEB_APP}&redirect_uri={}&state=s",
        enc(WEB_CALLBACK)
    );
    let foreign = match browser.login(&query, "alice").await {
        Landing::App(url) => url_params(&url)["code"].clone(),
        Landing::Page(p) => panic!("{} {}", p.status, p.body),
    };
    let form = format!(
        "grant_type=authorization_code&code={}&redirect_uri={}",
        enc(&foreign),
        enc(WEB_CALLBACK)
    );
    let answer = token_call(&w, &form, Some(&right)).await;
    assert_oauth_error(
        "foreign code",
        &answer,
        400,
        "invalid_grant",
        "not issued to this client",
    );
    let answer = token_call(&w, &form, Some(&basic(WEB_APP, WEB_APP_SECRET))).await;
    assert_oauth_error(
        "the foreign code, by its own client",
        &answer,
        400,
        "invalid_grant",
        "already used",
    );

    let log = w.daemon.stop().await;
    for secret in [
        code.as_str(),
        foreign.as_str(),
        PLATFORM_SECRET,
        WEB_APP_SECRET,
        &PLATFORM_SECRET[..10],
    ] {
        assert!(!log.contains(secret), "the log holds a code or secret");
    }
    assert_never_logged(&log, &[minted]);
    assert!(!log.contains("X-Injected"), "the log holds a presented id");
}

/// Spellings of the client id that an RFC 6749 §2.3.1 reading of Basic decodes to it: each
/// a different set of its letters percent-encoded, hex in upper or lower case.
fn spellings(id: &str, n: usize) -> Vec<String> {
    let letters: Vec<char> = id.chars().collect();
    (1u32..)
        .map(|mask| {
            letters
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if mask & (1 << i) == 0 {
                        c.to_string()
                    } else if mask % 2 == 0 {
                        format!("%{:02x}", *c as u32)
                    } else {
                        format!("%{:02X}", *c as u32)
                    }
                })
                .collect::<String>()
        })
        .take(n)
        .collect()
}

/// Asserts a failed-authentication limit answer.
fn assert_limited(what: &str, answer: &Answer) {
    assert_oauth_error(what, answer, 429, "invalid_client", "too many failed");
    assert!(answer.headers.contains_key("retry-after"), "{what}");
}

#[tokio::test]
async fn percent_encoded_client_ids_count_against_the_clients_limit() {
    let mut w = World::start("", "", "").await;
    let names = spellings(PLATFORM_CLIENT, 31);
    assert!(
        names
            .iter()
            .all(|n| n != PLATFORM_CLIENT && n.contains('%'))
    );
    // A spelling with the right secret is the client (the code is what is wrong).
    let answer = token_call(&w, FORGED_FORM, Some(&basic(&names[30], PLATFORM_SECRET))).await;
    assert_oauth_error("an encoded id", &answer, 400, "invalid_grant", "unknown");

    for (i, name) in names.iter().take(30).enumerate() {
        let answer = token_call(&w, FORGED_FORM, Some(&basic(name, &format!("guess-{i}")))).await;
        assert_oauth_error(
            name,
            &answer,
            401,
            "invalid_client",
            "authentication failed",
        );
    }
    // 30 failures of the platform's client, however spelt: now limited, right secret or not.
    let answer = token_call(
        &w,
        FORGED_FORM,
        Some(&basic(PLATFORM_CLIENT, PLATFORM_SECRET)),
    )
    .await;
    assert_limited("the plain id after 30 failures", &answer);
    let answer = token_call(&w, FORGED_FORM, Some(&basic(&names[30], PLATFORM_SECRET))).await;
    assert_limited("a new spelling after 30 failures", &answer);
    let form = format!(
        "{FORGED_FORM}&client_id={PLATFORM_CLIENT}&client_secret={}",
        enc(PLATFORM_SECRET)
    );
    let answer = token_call(&w, &form, None).await;
    assert_limited("form credentials after 30 failures", &answer);
    let log = w.daemon.stop().await;
    assert!(!log.contains(PLATFORM_SECRET));
}

#[tokio::test]
async fn made_up_client_ids_do_not_lift_the_limit() {
    let mut w = World::start("", "", "").await;
    // More made-up ids than the limiter held sources before it failed open (10 000).
    const MADE_UP: usize = 10_050;
    let client = std::sync::Arc::new(w.platform.clone());
    let url = w.daemon.url("/oauth/token");
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut next = 0;
    while next < MADE_UP {
        let batch: Vec<_> = (next..(next + 64).min(MADE_UP))
            .map(|i| {
                let client = client.clone();
                let url = url.clone();
                tokio::spawn(async move {
                    let mut raw = [0u8; 12];
                    aws_lc_rs::rand::fill(&mut raw).unwrap();
                    let auth = basic(&format!("made-up-{i}-{}", b64(&raw)), "guess");
                    client
                        .send(
                            Method::POST,
                            &url,
                            &[
                                ("content-type", "application/x-www-form-urlencoded"),
                                ("authorization", &auth),
                            ],
                            Bytes::from_static(FORGED_FORM.as_bytes()),
                        )
                        .await
                })
            })
            .collect();
        next += batch.len();
        for task in batch {
            let answer = task.await.unwrap();
            match answer.status {
                401 => assert_oauth_error("made up", &answer, 401, "invalid_client", "failed"),
                429 => assert_limited("made up", &answer),
                _ => panic!("a made-up client id: {} {}", answer.status, answer.body),
            }
            *statuses.entry(answer.status).or_default() += 1;
        }
    }
    // The platform's own client is still counted: 30 failures, then limited.
    let mut limited_at = None;
    for i in 0..31 {
        let answer = token_call(
            &w,
            FORGED_FORM,
            Some(&basic(PLATFORM_CLIENT, &format!("guess-{i}"))),
        )
        .await;
        if answer.status == 429 {
            assert_limited("the platform's client", &answer);
            limited_at.get_or_insert(i);
        } else {
            assert_oauth_error(
                "the platform's client",
                &answer,
                401,
                "invalid_client",
                "failed",
            );
        }
    }
    assert!(
        limited_at.is_some(),
        "31 failures of the platform's client after {MADE_UP} made-up ids ({statuses:?}) were never limited"
    );
    let answer = token_call(
        &w,
        FORGED_FORM,
        Some(&basic(PLATFORM_CLIENT, PLATFORM_SECRET)),
    )
    .await;
    assert_limited("the right secret after the failures", &answer);
    w.daemon.stop().await;
}
