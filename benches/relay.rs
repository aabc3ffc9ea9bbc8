//! Relay benchmarks against the release binary on the embedded store (SQLite), over TLS on
//! loopback, client and server sharing the machine:
//!
//! - idle sockets: consumers connected and authenticated, doing nothing; the daemon's resident
//!   memory per socket (target: 20,000 sockets at <= 16 KiB each);
//! - throughput: 1, 16 and 64 consumers publish as fast as acknowledgements allow (16 requests
//!   in flight each); messages per second from the first send until the agents following the
//!   conversations (16 per agent socket, as the workspace follows them) have received every
//!   one (each committed before its acknowledgement; target >= 3,000/s);
//! - latency: the same path paced at 1,000 messages/s; time from the consumer's send to the
//!   agent's receipt, p50/p99/max (target p99 <= 20 ms);
//! - the outbox: webhooks delivered per second to a local receiver (plain HTTP on loopback,
//!   answering at once), draining a backlog: 16 conversations' messages are committed while
//!   the receiver holds its first calls, then it lets go and the clock runs until every
//!   webhook (one per conversation and one per message) is answered. On SQLite, and on
//!   PostgreSQL when it runs on 127.0.0.1:5432.
//!
//!   cargo bench --bench relay            full run (20,000 sockets, 30,000 messages, 10 s paced)
//!   cargo bench --bench relay -- --quick  CI smoke run (1,000 sockets, 3,000 messages, 2 s)

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use support::TestEnv;
use support::daemon::Daemon;
use support::messaging::{MessagingClient, Stream};
use support::relay_world::{PLATFORM_PATH, Relay, config};

/// Conversations (consumers) in the latency run and the outbox run.
const CONVERSATIONS: usize = 16;
/// Conversations one agent socket follows (the workspace's limit); more consumers get more
/// agents.
const PER_AGENT: usize = 16;
/// Consumers in the throughput runs, each with its own conversation.
const THROUGHPUT_CONSUMERS: [usize; 3] = [1, 16, 64];
/// Requests each consumer keeps in flight in the throughput run.
const WINDOW: usize = 16;

struct Settings {
    idle_sockets: usize,
    messages: usize,
    paced_seconds: u64,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let settings = if quick {
        Settings {
            idle_sockets: 1_000,
            messages: 3_000,
            paced_seconds: 2,
        }
    } else {
        Settings {
            idle_sockets: 20_000,
            messages: 30_000,
            paced_seconds: 10,
        }
    };
    let open_files = raise_open_files();
    // Each socket is a descriptor here and one in the daemon; keep room for the rest.
    let settings = Settings {
        idle_sockets: settings
            .idle_sockets
            .min((open_files as usize).saturating_sub(500)),
        ..settings
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("relay ({})", if quick { "quick" } else { "full" });
    runtime.block_on(run(settings));
}

/// Sockets need file descriptors on both ends: the limit goes up to 65,536 where allowed
/// (root), else the soft limit to the hard one (the daemon, started from here, inherits it).
/// Returns the limit in force.
fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        let wanted = libc::rlimit {
            rlim_cur: 65_536,
            rlim_max: limit.rlim_max.max(65_536),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            return wanted.rlim_cur;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        limit.rlim_cur
    }
}

async fn run(s: Settings) {
    let env = TestEnv::new();
    let config = config(
        &env,
        "1h",
        "",
        "requests_per_second = 1000000\nmax_sockets = 100000",
    );
    let daemon = Daemon::start_with_env(
        env.path(),
        &config,
        &[
            ("BRANDGATE_SERVER__MAX_CONNECTIONS", "100000"),
            // Benchmarks measure the relay, not the log.
            ("BRANDGATE_LOG__LEVEL", "warn"),
        ],
    )
    .await;
    let relay = Arc::new(Relay { env, daemon });
    let tls = Arc::new(MessagingClient::tls(&relay.env.ca.cert_pem));

    throughput_and_latency(&relay, &tls, &s).await;
    idle_sockets(&relay, &tls, s.idle_sockets).await;
    drop(relay);

    outbox_drain(&s, "SQLite", "").await;
    match support::postgres::Database::create().await {
        Some(db) => {
            outbox_drain(&s, "PostgreSQL", &db.store_line()).await;
            db.drop().await;
        }
        None => println!("  outbox on PostgreSQL: skipped (no server on 127.0.0.1:5432)"),
    }
}

/// A webhook receiver on loopback (HTTPS, a certificate of the test CA) that holds every
/// call until [`HeldReceiver::let_go`], then answers each at once; counts the calls it
/// answered.
#[derive(Clone)]
struct HeldReceiver {
    open: Arc<tokio::sync::watch::Sender<bool>>,
    answered: Arc<std::sync::atomic::AtomicUsize>,
}

impl HeldReceiver {
    async fn start(env: &TestEnv) -> (HeldReceiver, String) {
        let receiver = HeldReceiver {
            open: Arc::new(tokio::sync::watch::channel(false).0),
            answered: Arc::default(),
        };
        let r = receiver.clone();
        let handler: support::fake::Handler = Arc::new(move |_request, _connection| {
            let r = r.clone();
            Box::pin(async move {
                let mut open = r.open.subscribe();
                let _ = open.wait_for(|open| *open).await;
                r.answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                http::Response::builder()
                    .status(204)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap()
            })
        });
        let tls = support::fake::server_tls(&env.ca.server(), &[b"h2", b"http/1.1"], None);
        let listening = support::fake::serve(tls, handler).await;
        (receiver, format!("{}/hook", listening.url()))
    }

    fn let_go(&self) {
        self.open.send_replace(true);
    }

    fn answered(&self) -> usize {
        self.answered.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The outbox draining a backlog of webhooks (see the module's doc).
async fn outbox_drain(s: &Settings, store_name: &str, store_extra: &str) {
    let env = TestEnv::new();
    let (receiver, url) = HeldReceiver::start(&env).await;
    let secret = env.secret("webhook-secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let ca = env.ca.write(env.path(), "receiver-ca");
    let relay_extra = format!(
        "requests_per_second = 1000000\n[relay.webhooks]\nurl = \"{url}\"\nsecret_file = \"{}\"\nextra_trust_anchors = [\"{}\"]\ntimeout = \"60s\"\nmax_in_flight = {CONVERSATIONS}",
        secret.display(),
        ca.display()
    );
    let config = config(&env, "1h", store_extra, &relay_extra);
    let daemon =
        Daemon::start_with_env(env.path(), &config, &[("BRANDGATE_LOG__LEVEL", "warn")]).await;
    let relay = Arc::new(Relay { env, daemon });
    let tls = Arc::new(MessagingClient::tls(&relay.env.ca.cert_pem));
    let (consumers, agents) = setup(&relay, &tls, CONVERSATIONS, "outbox").await;
    // Nobody reads the agents' side here.
    drop(agents);
    let per_consumer = s.messages / CONVERSATIONS;
    let epoch = Instant::now();
    publish_all(consumers, per_consumer, epoch).await;
    let expected = CONVERSATIONS + per_consumer * CONVERSATIONS;
    let started = Instant::now();
    receiver.let_go();
    let deadline = started + Duration::from_secs(600);
    while receiver.answered() < expected {
        assert!(
            Instant::now() < deadline,
            "the outbox delivered {} of {expected} webhooks",
            receiver.answered()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "  outbox on {store_name}: {:.0} webhooks/s delivered ({expected} in {:.2} s, {CONVERSATIONS} conversations, {CONVERSATIONS} in flight)",
        expected as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}

/// The daemon's resident memory, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn idle_sockets(relay: &Arc<Relay>, tls: &Arc<rustls::ClientConfig>, n: usize) {
    let token = relay.token().await;
    let auth = format!("jwt {token}");
    // A few sockets first, so the measured ones do not pay for one-time allocations.
    let mut warm = Vec::new();
    for _ in 0..50 {
        warm.push(
            MessagingClient::socket(tls, relay.daemon.public, PLATFORM_PATH, Some(&auth))
                .await
                .unwrap(),
        );
    }
    let before = rss_kib(relay.daemon.pid());
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(64));
    let opening: Vec<_> = (0..n)
        .map(|_| {
            let gate = gate.clone();
            let tls = tls.clone();
            let addr = relay.daemon.public;
            let auth = auth.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let open = MessagingClient::socket(&tls, addr, PLATFORM_PATH, Some(&auth));
                tokio::time::timeout(Duration::from_secs(30), open)
                    .await
                    .expect("a socket opens within 30 s")
                    .unwrap()
            })
        })
        .collect();
    let mut sockets = Vec::with_capacity(n);
    for o in opening {
        sockets.push(o.await.unwrap());
    }
    let opened_in = started.elapsed();
    // Every socket is alive: a sample answers a request.
    for socket in sockets.iter_mut().step_by((n / 100).max(1)) {
        clock(socket).await;
    }
    let after = rss_kib(relay.daemon.pid());
    let per_socket = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    println!(
        "  idle sockets: {n} held (opened in {:.1} s); daemon RSS {before} KiB -> {after} KiB: {:.1} KiB per socket",
        opened_in.as_secs_f64(),
        per_socket / 1024.0
    );
    drop(sockets);
    drop(warm);
}

async fn clock(socket: &mut Stream) {
    socket
        .send(Message::Text(
            json!({"kind": "req", "id": "c", "type": "GetClock"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"reqId\":\"c\"") => return,
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// One consumer's socket and conversation.
struct Consumer {
    socket: Stream,
    conversation: String,
}

async fn request(socket: &mut Stream, id: &str, kind: &str, body: Value) -> Value {
    socket
        .send(Message::Text(
            json!({"kind": "req", "id": id, "type": kind, "body": body})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["reqId"] == id {
                    return v;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// `n` consumers with a conversation each, taken by agents (named `<tag>-<k>`) whose sockets
/// follow [`PER_AGENT`] of them each: consumer `i` is followed by agent `i / PER_AGENT`.
async fn setup(
    relay: &Arc<Relay>,
    tls: &Arc<rustls::ClientConfig>,
    n: usize,
    tag: &str,
) -> (Vec<Consumer>, Vec<Stream>) {
    let mut agents = Vec::new();
    for k in 0..n.div_ceil(PER_AGENT) {
        let bearer = relay.agent(&format!("{tag}-{k}")).await;
        let agent_path = format!(
            "/ws_api/account/{}/messaging/brand/{bearer}",
            support::relay_world::ACCOUNT
        );
        agents.push(
            MessagingClient::socket(tls, relay.daemon.public, &agent_path, None)
                .await
                .unwrap(),
        );
    }
    let mut consumers = Vec::new();
    for i in 0..n {
        let agent = &mut agents[i / PER_AGENT];
        let token = relay.token().await;
        let auth = format!("jwt {token}");
        let mut socket =
            MessagingClient::socket(tls, relay.daemon.public, PLATFORM_PATH, Some(&auth))
                .await
                .unwrap();
        let r = request(
            &mut socket,
            "r",
            "cm.ConsumerRequestConversation",
            json!({}),
        )
        .await;
        let conversation = r["body"]["conversationId"].as_str().unwrap().to_string();
        let r = request(
            agent,
            &format!("a{i}"),
            "routing.UpdateRingState",
            json!({"ringId": conversation, "ringState": "ACCEPTED"}),
        )
        .await;
        assert_eq!(r["code"], 200, "{r}");
        let r = request(
            agent,
            &format!("f{i}"),
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": conversation, "fromSeq": 0}),
        )
        .await;
        assert_eq!(r["code"], 200, "{r}");
        consumers.push(Consumer {
            socket,
            conversation,
        });
    }
    (consumers, agents)
}

/// The agent's side: counts content events; for paced runs, the latency of each from the send
/// time carried in its text (microseconds since `epoch`).
async fn receive(mut agent: Stream, expected: usize, epoch: Instant) -> (Stream, Vec<u64>) {
    let mut latencies = Vec::with_capacity(expected);
    let mut seen = 0;
    while seen < expected {
        let frame = match tokio::time::timeout(Duration::from_secs(60), agent.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            other => panic!("agent socket: {other:?} after {seen} of {expected}"),
        };
        let v: Value = serde_json::from_str(&frame).unwrap();
        if v["type"] != "ms.MessagingEventNotification" {
            continue;
        }
        let now = epoch.elapsed().as_micros() as u64;
        for change in v["body"]["changes"].as_array().unwrap() {
            if change["event"]["type"] != "ContentEvent" {
                continue;
            }
            seen += 1;
            if let Some(sent) = change["event"]["message"]
                .as_str()
                .and_then(|m| m.strip_prefix("t"))
                .and_then(|t| t.parse::<u64>().ok())
            {
                latencies.push(now.saturating_sub(sent));
            }
        }
    }
    (agent, latencies)
}

async fn send_message(c: &mut Consumer, id: usize, epoch: Instant) {
    let body = json!({"dialogId": c.conversation, "event": {
        "type": "ContentEvent", "contentType": "text/plain",
        "message": format!("t{}", epoch.elapsed().as_micros())}});
    c.socket
        .send(Message::Text(
            json!({"kind": "req", "id": id.to_string(), "type": "ms.PublishEvent", "body": body})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
}

/// Whether a frame was an acknowledgement (checked to be a success).
fn acknowledgement(frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> bool {
    match frame {
        Some(Ok(Message::Text(t))) => {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["kind"] == "resp" {
                assert_eq!(v["code"], 200, "{v}");
                true
            } else {
                false
            }
        }
        Some(Ok(_)) => false,
        other => panic!("consumer socket: {other:?}"),
    }
}

/// One consumer publishing `count` messages: with `WINDOW` in flight, or one per `pace`.
async fn publish(
    mut c: Consumer,
    count: usize,
    epoch: Instant,
    pace: Option<Duration>,
) -> Consumer {
    let (mut sent, mut acked) = (0, 0);
    match pace {
        None => {
            while acked < count {
                while sent < count && sent - acked < WINDOW {
                    send_message(&mut c, sent, epoch).await;
                    sent += 1;
                }
                if acknowledgement(c.socket.next().await) {
                    acked += 1;
                }
            }
        }
        Some(pace) => {
            let mut ticker = tokio::time::interval(pace);
            while acked < count {
                tokio::select! {
                    _ = ticker.tick(), if sent < count => {
                        send_message(&mut c, sent, epoch).await;
                        sent += 1;
                    }
                    frame = c.socket.next() => {
                        if acknowledgement(frame) {
                            acked += 1;
                        }
                    }
                }
            }
        }
    }
    c
}

/// Every consumer publishes `count` messages at once, as fast as acknowledgements allow.
async fn publish_all(consumers: Vec<Consumer>, count: usize, epoch: Instant) -> Vec<Consumer> {
    let publishers: Vec<_> = consumers
        .into_iter()
        .map(|c| tokio::spawn(publish(c, count, epoch, None)))
        .collect();
    let mut done = Vec::new();
    for p in publishers {
        done.push(p.await.unwrap());
    }
    done
}

async fn throughput_and_latency(relay: &Arc<Relay>, tls: &Arc<rustls::ClientConfig>, s: &Settings) {
    let epoch = Instant::now();
    // Throughput: every consumer at once, with 1, 16 and 64 consumers.
    for n in THROUGHPUT_CONSUMERS {
        let (consumers, agents) = setup(relay, tls, n, &format!("throughput-{n}")).await;
        let per_consumer = s.messages / n;
        let total = per_consumer * n;
        let started = Instant::now();
        let receivers: Vec<_> = agents
            .into_iter()
            .enumerate()
            .map(|(k, agent)| {
                let followed = (n - k * PER_AGENT).min(PER_AGENT);
                tokio::spawn(receive(agent, per_consumer * followed, epoch))
            })
            .collect();
        publish_all(consumers, per_consumer, epoch).await;
        for r in receivers {
            r.await.unwrap();
        }
        let elapsed = started.elapsed();
        println!(
            "  consumer -> agent, committed before each acknowledgement, {n:>2} consumers: {:.0} msgs/s ({total} in {:.2} s, {WINDOW} in flight each, {} agent socket(s))",
            total as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64(),
            n.div_ceil(PER_AGENT),
        );
    }

    let (consumers, mut agents) = setup(relay, tls, CONVERSATIONS, "latency").await;
    let agent = agents.remove(0);
    // Latency at 1,000 messages/s in all (each consumer 1,000/16 per second).
    let per_consumer = 1000 * s.paced_seconds as usize / CONVERSATIONS;
    let total = per_consumer * CONVERSATIONS;
    let interval = Duration::from_micros(1_000_000 * CONVERSATIONS as u64 / 1000);
    let receiver = tokio::spawn(receive(agent, total, epoch));
    let publishers: Vec<_> = consumers
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            tokio::spawn(async move {
                // Spread the consumers over one interval.
                tokio::time::sleep(interval * i as u32 / CONVERSATIONS as u32).await;
                publish(c, per_consumer, epoch, Some(interval)).await
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let (_agent, mut latencies) = receiver.await.unwrap();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "  delivery latency at 1,000 msgs/s ({total} messages): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.50) as f64 / 1000.0,
        at(0.99) as f64 / 1000.0,
        *latencies.last().unwrap() as f64 / 1000.0
    );
}
