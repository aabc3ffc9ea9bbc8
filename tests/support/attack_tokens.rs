//! Hostile tokens for the attack matrix (tests/integration/attacks.rs): JWS put together byte
//! by byte (any header text, any payload text — duplicate keys included —, any signature);
//! signed with brandgate's own active key, read from its store and opened with the test's
//! data-key file (the only way to make a token with a valid signature and bad claims), with an
//! attacker's key, or with HMAC keyed by a public key in each of its encodings; a tripwire
//! listener for header URLs (`jku`, `x5u`) that brandgate must never fetch; and the check that
//! a log holds none of the tokens it was sent.
//!
//! The key is read and opened here independently of brandgate's code (sqlx on the SQLite file,
//! aws-lc-rs for AES-256-GCM and RSA), so a broken store or seal cannot hide behind the test.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::signature::{KeyPair as _, RsaEncoding};
use base64::Engine;
use serde_json::{Value, json};

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// base64url without padding (RFC 7515 §2).
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

/// `base64url(header).base64url(payload)`, the bytes a JWS signature covers.
pub fn signing_input(header: &str, payload: &str) -> String {
    format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()))
}

/// A compact JWS of these exact header and payload texts and this signature.
pub fn jws(header: &str, payload: &str, signature: &[u8]) -> String {
    format!("{}.{}", signing_input(header, payload), b64(signature))
}

/// HS256 over `header.payload` keyed by `key` (what a verifier that takes the header's `alg`
/// would check against the public key's bytes).
pub fn hmac_jws(alg: &str, key: &[u8], header: &str, payload: &str) -> String {
    let algorithm = match alg {
        "HS256" => aws_lc_rs::hmac::HMAC_SHA256,
        "HS384" => aws_lc_rs::hmac::HMAC_SHA384,
        "HS512" => aws_lc_rs::hmac::HMAC_SHA512,
        other => panic!("not an HMAC algorithm: {other}"),
    };
    let tag = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(algorithm, key),
        signing_input(header, payload).as_bytes(),
    );
    jws(header, payload, tag.as_ref())
}

/// An RSA signing key: brandgate's own (from its store) or an attacker's (made here).
pub struct RsaSigner {
    pub kid: String,
    pair: aws_lc_rs::rsa::KeyPair,
}

impl RsaSigner {
    /// A fresh 2048-bit key of the attacker's.
    pub fn attacker(kid: &str) -> RsaSigner {
        RsaSigner {
            kid: kid.to_string(),
            pair: aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
        }
    }

    /// brandgate's active signing key, as its store holds it: the row of `signing_keys` in
    /// `<state_dir>/brandgate.db` that activated last, its `private_sealed` opened with the data
    /// key it names from `data_keys_file` (`1 | id length | id | nonce | AES-256-GCM ciphertext
    /// and tag`, associated data `signing_key:<kid>`), the plaintext a PKCS#8 RSA key.
    pub async fn brandgates(state_dir: &Path, data_keys_file: &Path) -> RsaSigner {
        use sqlx::{ConnectOptions, Connection};
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(state_dir.join("brandgate.db"))
            .read_only(true);
        let mut db = options.connect().await.unwrap();
        let rows: Vec<(String, String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT kid, algorithm, private_sealed, activates_at FROM signing_keys \
             ORDER BY activates_at, kid",
        )
        .fetch_all(&mut db)
        .await
        .unwrap();
        db.close().await.unwrap();
        let now = now() as i64;
        let (kid, algorithm, sealed, _) = rows
            .into_iter()
            .rfind(|r| r.3 <= now)
            .expect("an active signing key in the store");
        assert_eq!(algorithm, "RS256", "the attack tokens are RS256");
        let pkcs8 = unseal(
            &std::fs::read_to_string(data_keys_file).unwrap(),
            format!("signing_key:{kid}").as_bytes(),
            &sealed,
        );
        RsaSigner {
            kid,
            pair: aws_lc_rs::rsa::KeyPair::from_pkcs8(&pkcs8).unwrap(),
        }
    }

    /// The public key as a JWK (`kty`, `n`, `e`, and this signer's `kid`).
    pub fn public_jwk(&self) -> Value {
        let public = self.pair.public_key();
        json!({
            "kty": "RSA",
            "kid": self.kid,
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero()),
        })
    }

    /// `{"alg":"RS256","kid":<kid>,"typ":"JWT"}`, as brandgate writes its headers.
    pub fn header(&self) -> String {
        json!({"alg": "RS256", "kid": self.kid, "typ": "JWT"}).to_string()
    }

    /// The signature of `alg` (RS256, RS512 or PS256) over `header.payload`.
    pub fn signature(&self, alg: &str, header: &str, payload: &str) -> Vec<u8> {
        let encoding: &'static dyn RsaEncoding = match alg {
            "RS256" => &aws_lc_rs::signature::RSA_PKCS1_SHA256,
            "RS512" => &aws_lc_rs::signature::RSA_PKCS1_SHA512,
            "PS256" => &aws_lc_rs::signature::RSA_PSS_SHA256,
            other => panic!("not an RSA algorithm here: {other}"),
        };
        let mut signature = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(
                encoding,
                &aws_lc_rs::rand::SystemRandom::new(),
                signing_input(header, payload).as_bytes(),
                &mut signature,
            )
            .unwrap();
        signature
    }

    /// `header.payload` signed RS256 with this key (the header is taken as it is).
    pub fn sign(&self, header: &str, payload: &str) -> String {
        jws(header, payload, &self.signature("RS256", header, payload))
    }

    /// `payload` under this key's usual header.
    pub fn sign_claims(&self, payload: &str) -> String {
        self.sign(&self.header(), payload)
    }
}

/// Opens a value sealed by brandgate's store (store/seal.rs's format), with the key its record
/// names from a data-key file's text.
fn unseal(data_keys: &str, context: &[u8], sealed: &[u8]) -> Vec<u8> {
    assert_eq!(sealed[0], 1, "sealed format 1");
    let id_len = usize::from(sealed[1]);
    let id = std::str::from_utf8(&sealed[2..2 + id_len]).unwrap();
    let nonce = &sealed[2 + id_len..2 + id_len + NONCE_LEN];
    let mut body = sealed[2 + id_len + NONCE_LEN..].to_vec();
    let raw = data_keys
        .lines()
        .filter_map(|l| l.trim().split_once(' '))
        .find(|(k, _)| *k == id)
        .map(|(_, v)| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .unwrap()
        })
        .unwrap_or_else(|| panic!("data key {id:?} is not in the file"));
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).unwrap());
    let plain = key
        .open_in_place(
            Nonce::try_assume_unique_for_key(nonce).unwrap(),
            Aad::from(context),
            &mut body,
        )
        .expect("the sealed key opens with the test's data key");
    plain.to_vec()
}

/// DER of a definite length.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER of an unsigned big-endian number.
fn der_unsigned(n: &[u8]) -> Vec<u8> {
    let n: Vec<u8> = n.iter().copied().skip_while(|b| *b == 0).collect();
    let mut content = Vec::new();
    if n.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend(n);
    der(0x02, &content)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// An RSA public key (a JWK with `n` and `e`) in every encoding a confused verifier might use
/// as an HMAC secret, each with a name: SPKI PEM (with and without the final newline, with
/// CRLF), PKCS#1 PEM, SPKI DER, PKCS#1 DER, the one-line base64 of the SPKI, the JWK as
/// JSON, and the bare modulus. (The texts a server publishes are added by the caller.)
pub fn rsa_public_encodings(jwk: &Value) -> Vec<(String, Vec<u8>)> {
    let n = unb64(jwk["n"].as_str().unwrap());
    let e = unb64(jwk["e"].as_str().unwrap());
    let pkcs1 = der(0x30, &[der_unsigned(&n), der_unsigned(&e)].concat());
    let spki: PublicKeyX509Der = aws_lc_rs::rsa::PublicKey::from_der(&pkcs1)
        .unwrap()
        .as_der()
        .unwrap();
    let spki = spki.as_ref().to_vec();
    let spki_pem = pem("PUBLIC KEY", &spki);
    let one_line = base64::engine::general_purpose::STANDARD.encode(&spki);
    vec![
        ("SPKI PEM".into(), spki_pem.clone().into_bytes()),
        (
            "SPKI PEM without the final newline".into(),
            spki_pem.trim_end().as_bytes().to_vec(),
        ),
        (
            "SPKI PEM with CRLF".into(),
            spki_pem.replace('\n', "\r\n").into_bytes(),
        ),
        (
            "PKCS#1 PEM".into(),
            pem("RSA PUBLIC KEY", &pkcs1).into_bytes(),
        ),
        ("SPKI DER".into(), spki),
        ("PKCS#1 DER".into(), pkcs1),
        ("one-line base64 SPKI".into(), one_line.into_bytes()),
        ("JWK JSON".into(), jwk.to_string().into_bytes()),
        ("modulus".into(), n),
    ]
}

/// A self-signed certificate (DER, standard base64) for an `x5c` header.
pub fn x5c_certificate() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["attacker.example".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(cert.der())
}

/// A listener that counts every connection made to it, for URLs in token headers (`jku`,
/// `x5u`) that must never be fetched. It answers nothing. Its own thread accepts, so a
/// connection is counted whatever the test's runtime is doing.
pub struct Tripwire {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Tripwire {
    pub async fn start() -> Tripwire {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counter, stopped) = (hits.clone(), stop.clone());
        std::thread::spawn(move || {
            for socket in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        Tripwire { addr, hits, stop }
    }

    /// An https URL on the tripwire.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    /// Connections made so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        // Wakes the accepting thread so it sees the stop.
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

/// The parts of `tokens` a log must never hold: each whole token, and each of its
/// base64url parts long enough to be its own (a payload, a signature).
pub fn secrets_of(tokens: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for t in tokens {
        out.push(t.clone());
        out.extend(t.split('.').filter(|p| p.len() >= 16).map(String::from));
    }
    out.sort();
    out.dedup();
    out
}

/// How many of `tokens` (or their parts) `log` holds, with the first of them; `None` if none.
pub fn logged(log: &str, tokens: &[String]) -> Option<String> {
    let leaked: Vec<String> = secrets_of(tokens)
        .into_iter()
        .filter(|s| log.contains(s.as_str()))
        .collect();
    leaked.first().map(|first| {
        format!(
            "the log holds {} part(s) of the tokens it was sent, such as {:?}",
            leaked.len(),
            &first[..first.len().min(80)]
        )
    })
}

/// Panics if `log` holds any of `tokens` or their parts.
pub fn assert_never_logged(log: &str, tokens: &[String]) {
    if let Some(leak) = logged(log, tokens) {
        panic!("{leak}");
    }
}
