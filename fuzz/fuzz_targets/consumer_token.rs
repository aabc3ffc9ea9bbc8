//! Consumer identity tokens through the door the relay uses, `IdentityService::verify_consumer`:
//! brandgate's own tokens (its key ring in a SQLite store of this process) and those of two
//! external issuers whose JWKS a loopback HTTP server of this process publishes, so the JWKS
//! fetch, cache and parsing run as in the daemon, without the network.
//!
//! An input is text; its first line chooses what the rest is:
//! - `raw`: the token, as is;
//! - `own`: a header and a payload (JSON, one line each) and a signature: base64url-encoded
//!   into a token, with `$KID` in the header replaced by the ring's active kid;
//! - `mint`: a subject, an audience (empty for none) and a lifetime in seconds, at most the
//!   configured `token_lifetime` (the longest the service mints with; larger numbers are taken
//!   modulo it): minted by the service, then verified (a token it minted for a subject it may
//!   use must verify);
//! - `ext`: a header and a payload, signed with the external issuers' Ed25519 key;
//! - `jwks`: a JWKS (one line) that the issuer `https://dyn.example` publishes from now on
//!   (it reads its JWKS again for every token), then a header and a payload signed as `ext`.
//!
//! Any other input is a raw token. The service's clock is fixed, so a verdict depends on the
//! input alone.
#![no_main]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use brandgate::clock::Clock;
use brandgate::config::IdentityConfig;
use brandgate::identity::{Claims, IdentityMetrics, IdentityService};
use brandgate::store::seal::DataKeys;
use brandgate::store::{Store, StoreOptions};
use libfuzzer_sys::fuzz_target;

/// The service's now: 2026-05-28, whatever the machine's clock says.
const NOW: u64 = 1_780_000_000;
/// The longest token the service reads (`MAX_TOKEN` in src/identity/verify.rs).
const MAX_TOKEN: usize = 2048;
/// `identity.token_lifetime`, in seconds.
const TOKEN_LIFETIME: u32 = 3600;
/// The external issuers' signing key (a fixed seed, so the seed corpus can name its JWK).
const EXTERNAL_SEED: [u8; 32] = [7; 32];

struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
    }
}

struct Bench {
    runtime: tokio::runtime::Runtime,
    service: IdentityService,
    own_kid: String,
    external_key: Ed25519KeyPair,
    /// What `/dynamic` answers.
    dynamic_jwks: Arc<Mutex<Vec<u8>>>,
}

fn bench() -> &'static Bench {
    static BENCH: OnceLock<Bench> = OnceLock::new();
    BENCH.get_or_init(Bench::start)
}

impl Bench {
    fn start() -> Bench {
        let external_key =
            Ed25519KeyPair::from_seed_unchecked(&EXTERNAL_SEED).expect("an Ed25519 seed");
        let x = B64.encode(external_key.public_key().as_ref());
        let static_jwks = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "shop-1", "use": "sig", "alg": "EdDSA", "x": x},
        ]})
        .to_string()
        .into_bytes();
        let dynamic_jwks = Arc::new(Mutex::new(static_jwks.clone()));
        let port = serve_jwks(static_jwks, dynamic_jwks.clone());

        let config: IdentityConfig = serde_json::from_value(serde_json::json!({
            "issuer": "https://id.brand.example",
            "audience": "platform",
            "algorithm": "EdDSA",
            "token_lifetime": format!("{TOKEN_LIFETIME}s"),
            "external_issuers": [
                {"id": "shop", "issuer": "https://login.shop.example",
                 "jwks_url": format!("http://127.0.0.1:{port}/static"),
                 "audiences": ["platform"], "algorithms": ["EdDSA", "ES256", "RS256"]},
                {"id": "dyn", "issuer": "https://dyn.example",
                 "jwks_url": format!("http://127.0.0.1:{port}/dynamic"),
                 "audiences": ["platform", "other"],
                 "algorithms": ["EdDSA", "ES256", "ES384", "RS256", "PS256"],
                 "max_token_lifetime": "1h", "jwks_refresh": "0s", "jwks_min_refetch": "0s"},
            ],
        }))
        .expect("the identity config");
        let clock: Arc<dyn Clock> = Arc::new(FixedClock);
        let prepared = IdentityService::prepare(&config, false, clock.clone())
            .unwrap_or_else(|p| panic!("the identity config is refused: {p}"));

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let dir = state_dir();
        let data_keys = DataKeys::parse(
            DataKeys::generate_line("fuzz1")
                .expect("a data key")
                .as_bytes(),
            None,
        )
        .expect("the data key");
        let (service, own_kid) = runtime.block_on(async {
            let store = Store::open(StoreOptions {
                url: &Store::default_url(&dir),
                password: None,
                max_connections: 2,
            })
            .await
            .expect("a SQLite store");
            let service = IdentityService::start(
                &config,
                prepared,
                store,
                Arc::new(data_keys),
                clock,
                IdentityMetrics::default(),
            )
            .await
            .expect("the identity service");
            let kid = service.ring().active().await.expect("an active key").kid;
            (service, kid)
        });
        Bench {
            runtime,
            service,
            own_kid,
            external_key,
            dynamic_jwks,
        }
    }

    fn verify(&self, token: &str) {
        let verdict = self.runtime.block_on(self.service.verify_consumer(token));
        if let Ok(who) = verdict {
            assert!(!who.subject.as_str().is_empty(), "a token accepted for no one");
        }
    }

    /// `header.payload.signature`, signed by the external issuers' key.
    fn external_token(&self, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
        let signature = self.external_key.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(signature.as_ref()))
    }

    fn run(&self, text: &str) {
        let (mode, rest) = text.split_once('\n').unwrap_or((text, ""));
        let mut lines = rest.split('\n');
        let mut line = || lines.next().unwrap_or("");
        match mode {
            "raw" => self.verify(rest),
            "own" => {
                let header = line().replace("$KID", &self.own_kid);
                let payload = line();
                let signature = line();
                let token = format!("{}.{}.{signature}", B64.encode(header), B64.encode(payload));
                self.verify(&token);
            }
            "mint" => {
                let subject = line().to_string();
                let audience = Some(line()).filter(|a| !a.is_empty()).map(str::to_string);
                let lifetime = line().parse::<u32>().unwrap_or(600) % (TOKEN_LIFETIME + 1);
                self.mint_and_verify(subject, audience, lifetime);
            }
            "ext" => {
                let (header, payload) = (line(), line());
                self.verify(&self.external_token(header, payload));
            }
            "jwks" => {
                let jwks = line();
                *self.dynamic_jwks.lock().unwrap_or_else(|e| e.into_inner()) =
                    jwks.as_bytes().to_vec();
                let (header, payload) = (line(), line());
                self.verify(&self.external_token(header, payload));
            }
            _ => self.verify(text),
        }
    }

    /// A token the service minted verifies, unless it is too long for a consumer token, has
    /// no audience (the platform's is configured), or names a subject reserved for an external
    /// issuer's consumers.
    fn mint_and_verify(&self, subject: String, audience: Option<String>, lifetime: u32) {
        let claims = Claims {
            subject: subject.clone(),
            audience: audience.clone(),
            lifetime: Duration::from_secs(lifetime.into()),
            profile: Default::default(),
        };
        let Ok(minted) = self.runtime.block_on(self.service.mint(&claims)) else {
            return;
        };
        let verdict = self
            .runtime
            .block_on(self.service.verify_consumer(&minted.jwt));
        let reserved = ["shop:", "dyn:"].iter().any(|p| subject.starts_with(p));
        let must_verify = minted.jwt.len() <= MAX_TOKEN
            && audience.as_deref() == Some("platform")
            && !subject.is_empty()
            && !reserved;
        if must_verify {
            match verdict {
                Ok(who) => assert_eq!(who.subject.as_str(), subject),
                Err(e) => panic!("a token the service minted is refused: {e}"),
            }
        } else if reserved || subject.is_empty() {
            assert!(verdict.is_err(), "a reserved or empty subject was accepted");
        }
    }
}

/// The directory of this process's store, in `$TMPDIR`.
fn state_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("brandgate-fuzz-token-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a state directory");
    dir
}

/// A plain HTTP/1.1 server on a loopback port: `/static` answers `fixed`, `/dynamic` what
/// `dynamic` holds at the time. Keep-alive, one thread per connection.
fn serve_jwks(fixed: Vec<u8>, dynamic: Arc<Mutex<Vec<u8>>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let port = listener.local_addr().expect("its address").port();
    let fixed = Arc::new(fixed);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (fixed, dynamic) = (fixed.clone(), dynamic.clone());
            std::thread::spawn(move || {
                let _ = answer(stream, &fixed, &dynamic);
            });
        }
    });
    port
}

fn answer(stream: TcpStream, fixed: &[u8], dynamic: &Mutex<Vec<u8>>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        // Headers up to the empty line; a GET has no body.
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
        }
        let body = if request_line.contains(" /dynamic ") {
            dynamic.lock().unwrap_or_else(|e| e.into_inner()).clone()
        } else {
            fixed.to_vec()
        };
        // One write, without Nagle's delay: the client waits for the whole answer.
        let mut response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        writer.write_all(&response)?;
    }
}

fuzz_target!(|data: &[u8]| {
    // Only UTF-8 reaches the service (the relay reads a token from a header or a text frame).
    if let Ok(text) = std::str::from_utf8(data) {
        bench().run(text);
    }
});
