//! Push proxy benchmark: an HTTP/2 load generator → brandgate (the release binary) → fake APNs,
//! against the same generator → fake APNs directly.
//!
//! Reports pushes per second both ways and their ratio (closed loop, fixed concurrency), and
//! the p50/p99 latency brandgate adds at a fixed 1,000 pushes/s (open loop).
//!
//!   cargo bench --bench push_throughput            full run (about a minute)
//!   cargo bench --bench push_throughput -- --quick  CI smoke run (a few seconds)
//!   ... -- --store sqlite | --store postgres        de-duplication shared through the store
//!                                                   (PostgreSQL: a fresh database on
//!                                                   127.0.0.1:5432), not only in memory
//!
//! Everything runs on this machine's loopback: generator and fake in this process, brandgate
//! in its own. The fake skips recording and verifies each provider token once. Both paths are
//! built alike: the same number of HTTP/2 connections to the fake (brandgate's pool is set to
//! the generator's), a body serialized per request on each, errors counted and refused on
//! both. The latency run prints its tail (p99.9, max) and its worst one-second slice, so a
//! spike shows.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use support::daemon::Daemon;
use support::{KEY_ID, TEAM_ID, TestEnv, apns, ios_push, platform_auth};

const APP: &str = "com.brand.app";

struct Settings {
    throughput_secs: u64,
    latency_requests: usize,
    connections: usize,
    concurrency: usize,
}

/// Builds the request for the n-th push.
type MakeRequest = Arc<dyn Fn(u64) -> Request<Full<Bytes>> + Send + Sync>;

/// Where de-duplication is kept besides this process's memory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DedupeStore {
    Memory,
    Sqlite,
    Postgres,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let args: Vec<String> = std::env::args().collect();
    let store = match args
        .iter()
        .position(|a| a == "--store")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
    {
        Some("sqlite") => DedupeStore::Sqlite,
        Some("postgres") => DedupeStore::Postgres,
        _ => DedupeStore::Memory,
    };
    let settings = if quick {
        Settings {
            throughput_secs: 2,
            latency_requests: 1000,
            connections: 4,
            concurrency: 128,
        }
    } else {
        Settings {
            throughput_secs: 10,
            latency_requests: 10_000,
            connections: 4,
            concurrency: 256,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(settings, quick, store));
}

async fn run(s: Settings, quick: bool, store: DedupeStore) {
    brandgate::tls::install_crypto_provider();
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    fake.stop_recording();
    let database = match store {
        DedupeStore::Postgres => Some(
            support::postgres::Database::create()
                .await
                .expect("PostgreSQL on 127.0.0.1:5432"),
        ),
        _ => None,
    };
    // A store (the identity bridge's) makes de-duplication shared through it.
    let store_section = match (&database, store) {
        (_, DedupeStore::Memory) => String::new(),
        (db, _) => format!(
            "[store]\ndata_keys_file = \"{}\"\n{}\n[identity]\nissuer = \"https://brandgate.test\"\n",
            env.secret("data-keys", &support::identity_world::data_key_line("k1"))
                .display(),
            db.as_ref().map_or(String::new(), |db| db.store_line()),
        ),
    };
    let config = env
        .config(&format!(
            "{store_section}{}",
            env.apns_app(
                APP,
                &fake,
                &key,
                "mask_text = \"You have a new message\"",
                &env.basic_auth(),
                &format!("connections = {}", s.connections),
            )
        ))
        .replace("level = \"debug\"", "level = \"warn\"");
    let daemon = Daemon::start_with_env(
        env.path(),
        &config,
        &[("BRANDGATE_SERVER__MAX_CONCURRENT_STREAMS", "1000")],
    )
    .await;

    // Via brandgate: the platform's request.
    let auth = platform_auth();
    let via_url = daemon.url(&format!("/push/{APP}"));
    let via: MakeRequest = Arc::new(move |n| {
        let body =
            ios_push(&token(n), "Benchmark message text", "conv-bench", n as i64).to_string();
        Request::post(via_url.as_str())
            .header("authorization", auth.as_str())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    });
    // Direct: what brandgate would send to APNs.
    let bearer = provider_token(&key.p8_pem);
    let direct_base = fake.url();
    let direct: MakeRequest = Arc::new(move |n| {
        let payload = serde_json::json!({
            "aps": {"alert": "You have a new message", "sound": "default", "badge": 3},
            "conversationId": "conv-bench", "sequence": n})
        .to_string();
        Request::post(format!("{direct_base}/3/device/{}", token(n)))
            .header("authorization", bearer.as_str())
            .header("apns-topic", APP)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-collapse-id", "conv-bench")
            .body(Full::new(Bytes::from(payload)))
            .unwrap()
    });

    let daemon_ca = env.ca.cert_pem.clone();
    let fake_ca = fake.ca.cert_pem.clone();
    let via_pool = Generator::connect(daemon.public.port(), &daemon_ca, s.connections).await;
    let direct_pool = Generator::connect(fake.listening.addr.port(), &fake_ca, s.connections).await;

    // Warm up both paths (connections, provider token, caches).
    via_pool
        .closed_loop(&via, s.concurrency, Duration::from_millis(500), 1 << 40)
        .await;
    direct_pool
        .closed_loop(&direct, s.concurrency, Duration::from_millis(500), 2 << 40)
        .await;

    let window = Duration::from_secs(s.throughput_secs);
    let direct_rate = direct_pool
        .closed_loop(&direct, s.concurrency, window, 3 << 40)
        .await;
    let delivered_before = fake.delivered_count();
    let via_rate = via_pool
        .closed_loop(&via, s.concurrency, window, 4 << 40)
        .await;
    let delivered = fake.delivered_count() - delivered_before;

    let rate = 1000.0;
    let mut direct_lat = direct_pool
        .open_loop(&direct, rate, s.latency_requests, 5 << 40)
        .await;
    direct_lat.sort_by(|a, b| a.total_cmp(b));
    let via_lat_in_order = via_pool
        .open_loop(&via, rate, s.latency_requests, 6 << 40)
        .await;
    let mut via_lat = via_lat_in_order.clone();
    via_lat.sort_by(|a, b| a.total_cmp(b));

    let ratio = via_rate.per_second / direct_rate.per_second;
    let added = |q: f64| percentile(&via_lat, q) - percentile(&direct_lat, q);
    println!(
        "push_throughput ({}, de-duplication: {store:?})",
        if quick { "quick" } else { "full" }
    );
    println!(
        "  direct to fake APNs:   {:>9.0} pushes/s  ({} errors)",
        direct_rate.per_second, direct_rate.errors
    );
    println!(
        "  through brandgate:     {:>9.0} pushes/s  ({} errors, {} delivered)",
        via_rate.per_second, via_rate.errors, delivered
    );
    println!("  ratio:                 {ratio:>9.2}   (target >= 0.5; >= 10000 pushes/s)");
    println!(
        "  latency at {rate:.0}/s    direct p50 {:.3} ms  p99 {:.3} ms",
        percentile(&direct_lat, 0.5),
        percentile(&direct_lat, 0.99)
    );
    println!(
        "                         via    p50 {:.3} ms  p99 {:.3} ms",
        percentile(&via_lat, 0.5),
        percentile(&via_lat, 0.99)
    );
    println!(
        "  added by brandgate:    p50 {:.3} ms  p99 {:.3} ms   (target p99 <= 2 ms)",
        added(0.5),
        added(0.99)
    );
    let (worst_second, worst_p99) = worst_slice(&via_lat_in_order, 1000);
    println!(
        "  via tail:              p99.9 {:.3} ms  max {:.3} ms  worst second (#{worst_second}) p99 {worst_p99:.3} ms",
        percentile(&via_lat, 0.999),
        via_lat.last().copied().unwrap_or_default(),
    );
    assert_eq!(direct_rate.errors, 0, "pushes failed on the direct path");
    assert_eq!(via_rate.errors, 0, "pushes failed through brandgate");
    assert_eq!(
        delivered, via_rate.count,
        "every push answered 200 reached the fake exactly once"
    );
    drop(daemon);
    if let Some(db) = database {
        db.drop().await;
    }
}

fn token(n: u64) -> String {
    format!("{:064x}", n % 1000 + 1)
}

/// An ES256 provider token as brandgate would make it.
fn provider_token(p8: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_ec_pem(p8.as_bytes()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(KEY_ID.into());
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"iss": TEAM_ID, "iat": iat}),
        &key,
    )
    .unwrap();
    format!("bearer {jwt}")
}

struct Rate {
    per_second: f64,
    count: u64,
    errors: u64,
}

/// HTTP/2 connections the load comes from.
struct Generator {
    senders: Vec<SendRequest<Full<Bytes>>>,
}

impl Generator {
    async fn connect(port: u16, ca_pem: &str, n: usize) -> Generator {
        let mut tls = support::client::tls_config(ca_pem, None);
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let mut senders = Vec::new();
        for _ in 0..n {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            tcp.set_nodelay(true).unwrap();
            let stream = connector
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap();
            let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            senders.push(sender);
        }
        Generator { senders }
    }

    async fn one(sender: &mut SendRequest<Full<Bytes>>, request: Request<Full<Bytes>>) -> bool {
        match sender.send_request(request).await {
            Ok(r) => {
                let ok = r.status() == 200;
                let _ = r.into_body().collect().await;
                ok
            }
            Err(_) => false,
        }
    }

    /// `concurrency` workers send back to back for `window`. Returns the completion rate.
    /// Push numbers are `base + worker * 2^32 + i`: distinct across calls with distinct bases,
    /// so brandgate never sees a duplicate.
    async fn closed_loop(
        &self,
        make: &MakeRequest,
        concurrency: usize,
        window: Duration,
        base: u64,
    ) -> Rate {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        let started = Instant::now();
        for w in 0..concurrency {
            let mut sender = self.senders[w % self.senders.len()].clone();
            let (stop, done, errors, make) =
                (stop.clone(), done.clone(), errors.clone(), make.clone());
            workers.push(tokio::spawn(async move {
                let mut n = base + ((w as u64) << 32);
                while !stop.load(Ordering::Relaxed) {
                    if Self::one(&mut sender, make(n)).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
            }));
        }
        tokio::time::sleep(window).await;
        stop.store(true, Ordering::Relaxed);
        let count_at_stop = done.load(Ordering::Relaxed);
        let elapsed = started.elapsed();
        for w in workers {
            let _ = w.await;
        }
        Rate {
            per_second: count_at_stop as f64 / elapsed.as_secs_f64(),
            count: done.load(Ordering::Relaxed),
            errors: errors.load(Ordering::Relaxed),
        }
    }

    /// Sends `count` requests at `rate` per second, whatever the answers do; returns each
    /// request's latency in milliseconds, in the order they were sent.
    async fn open_loop(&self, make: &MakeRequest, rate: f64, count: usize, base: u64) -> Vec<f64> {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            tick.tick().await;
            let mut sender = self.senders[i % self.senders.len()].clone();
            let request = make(base + i as u64);
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let ok = Self::one(&mut sender, request).await;
                (ok, started.elapsed().as_secs_f64() * 1000.0)
            }));
        }
        let mut latencies = Vec::with_capacity(count);
        for t in tasks {
            let (ok, ms) = t.await.unwrap();
            assert!(ok, "a request failed during the latency run");
            latencies.push(ms);
        }
        latencies
    }
}

/// The slice of `size` consecutive requests (one second at the latency run's rate) with the
/// highest p99: its index and that p99.
fn worst_slice(in_order: &[f64], size: usize) -> (usize, f64) {
    in_order
        .chunks(size)
        .map(|chunk| {
            let mut sorted = chunk.to_vec();
            sorted.sort_by(|a, b| a.total_cmp(b));
            percentile(&sorted, 0.99)
        })
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or_default()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}
