//! Push proxy benchmark: an HTTP/2 load generator → brandgate (the release binary) → fake APNs,
//! against the same generator → fake APNs directly.
//!
//! Reports pushes per second both ways and their ratio (closed loop, fixed concurrency), and
//! the p50/p99 latency brandgate adds at a fixed 1,000 pushes/s (open loop), and brandgate's
//! resident memory idle and after the throughput run.
//!
//!   cargo bench --bench push_throughput            full run (about a minute)
//!   cargo bench --bench push_throughput -- --quick  CI smoke run (a few seconds)
//!   ... -- --callgrind DIR                          brandgate under callgrind: instructions
//!                                                   per push over a fixed number of pushes,
//!                                                   what they are spent on, and the costliest
//!                                                   functions (repeatable, unlike timings)
//!   ... -- --store sqlite | --store postgres        de-duplication shared through the store
//!                                                   (PostgreSQL: a fresh database on
//!                                                   127.0.0.1:5432), not only in memory
//!   ... -- --latency-requests N --latency-rate R    a longer or faster latency run (default
//!                                                   10,000 at 1,000/s; "worst second" is then
//!                                                   the worst slice of R requests)
//!
//! Everything runs on this machine's loopback: generator and fake in this process, brandgate
//! in its own. The fake skips recording and verifies each provider token once. Both paths are
//! built alike: the same number of HTTP/2 connections to the fake (brandgate's pool is set to
//! the generator's), a body serialized per request on each, errors counted and refused on
//! both. The latency run prints its tail (p99.9, max) and its worst one-second slice, so a
//! spike shows. The CPU each side used per push is printed too: the generator, the fake and
//! brandgate share this machine's cores, so that, not brandgate alone, bounds the ratio.

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
    /// Requests per second in the latency run (open loop).
    latency_rate: usize,
    connections: usize,
    concurrency: usize,
    /// Pushes counted under callgrind (`--callgrind`).
    profiled_pushes: u64,
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
    // `--callgrind DIR`: brandgate runs under callgrind; instructions per push are counted
    // over a fixed number of pushes after a warm-up, and the costliest functions printed.
    let profile = args
        .iter()
        .position(|a| a == "--callgrind")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from);
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse::<usize>().expect("a number"))
    };
    let mut settings = if quick {
        Settings {
            throughput_secs: 2,
            latency_requests: 1000,
            latency_rate: 1000,
            connections: 4,
            concurrency: 128,
            profiled_pushes: 2_000,
        }
    } else {
        Settings {
            throughput_secs: 10,
            latency_requests: 10_000,
            latency_rate: 1000,
            connections: 4,
            concurrency: 256,
            profiled_pushes: 20_000,
        }
    };
    // `--latency-requests N --latency-rate R`: a longer or faster latency run, e.g. one that
    // grows brandgate's de-duplication table past a size where a single hash map doubled.
    if let Some(n) = value_of("--latency-requests") {
        settings.latency_requests = n;
    }
    if let Some(r) = value_of("--latency-rate") {
        settings.latency_rate = r;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(settings, quick, store, profile));
}

async fn run(s: Settings, quick: bool, store: DedupeStore, profile: Option<std::path::PathBuf>) {
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
    let daemon_env = [("BRANDGATE_SERVER__MAX_CONCURRENT_STREAMS", "1000")];
    let daemon = match &profile {
        None => Daemon::start_with_env(env.path(), &config, &daemon_env).await,
        Some(out) => {
            std::fs::create_dir_all(out).unwrap();
            let out_file = format!("--callgrind-out-file={}/brandgate.out", out.display());
            let wrapper = ["valgrind", "--tool=callgrind", out_file.as_str()];
            Daemon::start_wrapped(env.path(), &config, &daemon_env, &wrapper).await
        }
    };

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

    let idle_memory = Memory::of(daemon.pid());
    // Warm up both paths (connections, provider token, caches).
    let warm_up = Until::Window(Duration::from_millis(500));
    let via_warm_up = via_pool
        .closed_loop(&via, s.concurrency, warm_up, 1 << 40)
        .await;
    direct_pool
        .closed_loop(&direct, s.concurrency, warm_up, 2 << 40)
        .await;

    if let Some(out) = &profile {
        profile_daemon(&daemon, &via_pool, &via, &s, out).await;
        return;
    }

    let window = Until::Window(Duration::from_secs(s.throughput_secs));
    let meter = CpuMeter::start(daemon.pid());
    let direct_rate = direct_pool
        .closed_loop(&direct, s.concurrency, window, 3 << 40)
        .await;
    let direct_cpu = meter.per_push(direct_rate.count);
    let delivered_before = fake.delivered_count();
    let meter = CpuMeter::start(daemon.pid());
    let via_rate = via_pool
        .closed_loop(&via, s.concurrency, window, 4 << 40)
        .await;
    let via_cpu = meter.per_push(via_rate.count);
    let loaded_memory = Memory::of(daemon.pid());
    let delivered = fake.delivered_count() - delivered_before;

    let rate = s.latency_rate as f64;
    let direct_lat_in_order = direct_pool
        .open_loop(&direct, rate, s.latency_requests, 5 << 40)
        .await;
    let mut direct_lat = direct_lat_in_order.clone();
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
    println!("  ratio:                 {ratio:>9.2}   (target >= 0.7; >= 25000 pushes/s)");
    // Generator, fake and brandgate share this machine's cores and each loop keeps them busy,
    // so the ratio is bounded by the CPU each push costs on either path.
    let cpu_bound = direct_cpu.total() / via_cpu.total();
    println!(
        "  CPU per push:          direct: generator + fake {:.1} us",
        direct_cpu.here_us
    );
    println!(
        "                         via:    generator + fake {:.1} us, brandgate {:.1} us",
        via_cpu.here_us, via_cpu.daemon_us
    );
    println!("  ratio the CPU allows:  {cpu_bound:>9.2}   (CPU per push direct / via)");
    println!(
        "  ... were brandgate free: {:>7.2}   (direct / generator + fake via: what the loop costs itself)",
        direct_cpu.total() / via_cpu.here_us
    );
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
    println!(
        "  brandgate memory:      idle {} ; after the throughput run {} (de-duplication table: {} pushes), peak {:.1} MiB",
        idle_memory,
        loaded_memory,
        via_warm_up.count + via_rate.count,
        loaded_memory.peak_mib
    );
    let (direct_worst_second, direct_worst_p99) = worst_slice(&direct_lat_in_order, s.latency_rate);
    println!(
        "  direct tail:           p99.9 {:.3} ms  max {:.3} ms  worst second (#{direct_worst_second}) p99 {direct_worst_p99:.3} ms",
        percentile(&direct_lat, 0.999),
        direct_lat.last().copied().unwrap_or_default(),
    );
    let (worst_second, worst_p99) = worst_slice(&via_lat_in_order, s.latency_rate);
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

/// When a closed loop ends.
#[derive(Clone, Copy)]
enum Until {
    Window(Duration),
    Count(u64),
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

    /// `concurrency` workers send back to back until `until` (a time window, or an exact
    /// number of pushes). Returns the completion rate (over the window: what completed before
    /// it ended). Push numbers are `base + worker * 2^32 + i`: distinct across calls with
    /// distinct bases, so brandgate never sees a duplicate.
    async fn closed_loop(
        &self,
        make: &MakeRequest,
        concurrency: usize,
        until: Until,
        base: u64,
    ) -> Rate {
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let limit = match until {
            Until::Window(_) => u64::MAX,
            Until::Count(n) => n,
        };
        let mut workers = Vec::new();
        let started = Instant::now();
        for w in 0..concurrency {
            let mut sender = self.senders[w % self.senders.len()].clone();
            let (stop, issued, done, errors, make) = (
                stop.clone(),
                issued.clone(),
                done.clone(),
                errors.clone(),
                make.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut n = base + ((w as u64) << 32);
                while !stop.load(Ordering::Relaxed)
                    && issued.fetch_add(1, Ordering::Relaxed) < limit
                {
                    if Self::one(&mut sender, make(n)).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
            }));
        }
        if let Until::Window(window) = until {
            tokio::time::sleep(window).await;
            stop.store(true, Ordering::Relaxed);
        }
        let count_at_stop = done.load(Ordering::Relaxed);
        let elapsed = started.elapsed();
        for w in workers {
            let _ = w.await;
        }
        let count = done.load(Ordering::Relaxed);
        let (finished, elapsed) = match until {
            Until::Window(_) => (count_at_stop, elapsed),
            Until::Count(_) => (count, started.elapsed()),
        };
        Rate {
            per_second: finished as f64 / elapsed.as_secs_f64(),
            count,
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

/// CPU time used by this process (the generator and the fake) and by brandgate over a span.
struct CpuMeter {
    daemon: i32,
    here: Duration,
    there: Duration,
}

/// CPU per push on each side, in microseconds.
struct CpuPerPush {
    here_us: f64,
    daemon_us: f64,
}

impl CpuPerPush {
    fn total(&self) -> f64 {
        self.here_us + self.daemon_us
    }
}

impl CpuMeter {
    fn start(daemon: i32) -> CpuMeter {
        CpuMeter {
            daemon,
            here: cpu_time("self"),
            there: cpu_time(&daemon.to_string()),
        }
    }

    fn per_push(&self, pushes: u64) -> CpuPerPush {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / pushes.max(1) as f64;
        CpuPerPush {
            here_us: per(cpu_time("self") - self.here),
            daemon_us: per(cpu_time(&self.daemon.to_string()) - self.there),
        }
    }
}

/// Resident memory of a process (`/proc/PID/status`), in MiB.
struct Memory {
    rss_mib: f64,
    anon_mib: f64,
    peak_mib: f64,
}

impl Memory {
    fn of(pid: i32) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .unwrap_or_default()
                / 1024.0
        };
        Memory {
            rss_mib: field("VmRSS:"),
            anon_mib: field("RssAnon:"),
            peak_mib: field("VmHWM:"),
        }
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} MiB ({:.1} anonymous)",
            self.rss_mib, self.anon_mib
        )
    }
}

/// User + system CPU time of every thread of process `pid` (`/proc/PID/stat`).
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at field 3 (state); utime
    // and stime are fields 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Duration::from_secs_f64(ticks as f64 / per_second)
}

/// Counts brandgate's instructions per push under callgrind: a warm-up, counters zeroed, a
/// fixed number of pushes, a dump; then prints the total per push and the functions that
/// cost the most (self cost), with the allocator's and the copies' shares.
async fn profile_daemon(
    daemon: &Daemon,
    pool: &Generator,
    via: &MakeRequest,
    s: &Settings,
    out: &std::path::Path,
) {
    let pid = daemon.pid().to_string();
    let control = |what: &str| {
        let status = std::process::Command::new("callgrind_control")
            .args([what, pid.as_str()])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("callgrind_control");
        assert!(status.success(), "callgrind_control {what} failed");
    };
    let concurrency = 32;
    let warm = pool
        .closed_loop(
            via,
            concurrency,
            Until::Count(s.profiled_pushes / 4),
            7 << 40,
        )
        .await;
    assert_eq!(warm.errors, 0, "pushes failed during the warm-up");
    control("--zero");
    let counted = pool
        .closed_loop(via, concurrency, Until::Count(s.profiled_pushes), 8 << 40)
        .await;
    control("--dump");
    assert_eq!(counted.errors, 0, "pushes failed while counted");
    let dump = std::fs::read_dir(out)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("brandgate.out."))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("a callgrind dump");
    let costs = self_costs(&dump);
    let total: u64 = costs.iter().map(|c| c.instructions).sum();
    let per_push = |ir: u64| ir / s.profiled_pushes;
    let share = |ir: u64| ir as f64 * 100.0 / total.max(1) as f64;
    println!(
        "push_throughput under callgrind: {} pushes, {} instructions per push in brandgate",
        s.profiled_pushes,
        per_push(total)
    );
    let mut by_kind: Vec<(&str, u64)> = Vec::new();
    for c in &costs {
        let kind = kind_of(&c.function, &c.object);
        match by_kind.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, ir)) => *ir += c.instructions,
            None => by_kind.push((kind, c.instructions)),
        }
    }
    by_kind.sort_by_key(|k| std::cmp::Reverse(k.1));
    println!("  where they go (self cost):");
    for (kind, ir) in &by_kind {
        println!("  {:>6.1}%  {:>7} /push  {kind}", share(*ir), per_push(*ir));
    }
    println!("  costliest functions (self cost):");
    for c in costs.iter().take(20) {
        println!(
            "  {:>6.2}%  {:>7} /push  {}",
            share(c.instructions),
            per_push(c.instructions),
            c.function
        );
    }
    println!("  dump: {}", dump.display());
}

/// One function's own instructions in a callgrind dump, and the object file it is in.
struct SelfCost {
    function: String,
    object: String,
    instructions: u64,
}

/// Reads the self cost of every function from a callgrind dump (costlier first). Each cost
/// line counts for the function it is under, except the line after `calls=`, which is the
/// inclusive cost of that call (already counted in the callee).
fn self_costs(dump: &std::path::Path) -> Vec<SelfCost> {
    use std::collections::HashMap;
    let text = std::fs::read_to_string(dump).expect("the callgrind dump");
    let (mut functions, mut objects) = (HashMap::new(), HashMap::new());
    let mut costs: HashMap<(String, String), u64> = HashMap::new();
    let (mut function, mut object) = (String::new(), String::new());
    let mut call_cost_next = false;
    for line in text.lines() {
        if std::mem::take(&mut call_cost_next) {
            continue;
        }
        if let Some(spec) = line.strip_prefix("fn=") {
            function = compressed_name(spec, &mut functions);
        } else if let Some(spec) = line.strip_prefix("cfn=") {
            compressed_name(spec, &mut functions);
        } else if let Some(spec) = line.strip_prefix("ob=") {
            object = compressed_name(spec, &mut objects);
        } else if let Some(spec) = line.strip_prefix("cob=") {
            compressed_name(spec, &mut objects);
        } else if line.starts_with("calls=") {
            call_cost_next = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c))
            && let Some(ir) = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        {
            *costs.entry((function.clone(), object.clone())).or_default() += ir;
        }
    }
    let mut costs: Vec<SelfCost> = costs
        .into_iter()
        .map(|((function, object), instructions)| SelfCost {
            function,
            object,
            instructions,
        })
        .collect();
    costs.sort_by_key(|c| std::cmp::Reverse(c.instructions));
    costs
}

/// callgrind's name compression: `(id) name` defines a name, `(id)` refers to it.
fn compressed_name(spec: &str, names: &mut std::collections::HashMap<String, String>) -> String {
    match spec.strip_prefix('(').and_then(|r| r.split_once(')')) {
        Some((id, name)) if !name.trim().is_empty() => {
            names.insert(id.to_string(), name.trim().to_string());
            name.trim().to_string()
        }
        Some((id, _)) => names.get(id).cloned().unwrap_or_default(),
        None => spec.to_string(),
    }
}

/// What a function's cost is spent on, for the profile's summary.
fn kind_of(function: &str, object: &str) -> &'static str {
    let has = |needles: &[&str]| needles.iter().any(|n| function.contains(n));
    if object.contains("libc.so") {
        return if has(&["mem", "str"]) {
            "memcpy, memset, memcmp (libc)"
        } else if has(&[
            "malloc", "free", "alloc", "_int_", "unlink", "tcache", "arena",
        ]) {
            "allocator (glibc malloc, free)"
        } else {
            "libc (system calls, locks)"
        };
    }
    if has(&["aws_lc", "rustls", "_aesni", "sha256", "gcm", "aes_"]) {
        "TLS and crypto (rustls, aws-lc)"
    } else if has(&["h2::", "hyper::", "hyper_util::", "http::", "httparse"]) {
        "HTTP/2 and HTTP types (h2, hyper, http)"
    } else if has(&["tokio", "mio::"]) {
        "tokio (tasks, timers, I/O)"
    } else if has(&["serde_json", "serde_core", "serde::"]) {
        "JSON (serde_json)"
    } else if has(&["axum", "tower"]) {
        "axum and tower (routing)"
    } else if has(&["brandgate::"]) {
        "brandgate's own code"
    } else if has(&["prometheus", "tracing"]) {
        "metrics and logging"
    } else if has(&["alloc::", "core::", "std::", "__rust", "__rdl", "bytes::"]) {
        "Rust std and bytes (collections, fmt, allocation glue)"
    } else {
        "other"
    }
}
