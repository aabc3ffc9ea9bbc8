//! Identity benchmark: consumer JWTs minted per second, one core (RS256, ES256, EdDSA), with
//! RS256 compared against `openssl speed rsa2048` signing on the same machine.
//!
//!   cargo bench --bench mint             full run (about half a minute)
//!   cargo bench --bench mint -- --quick  CI smoke run
//!
//! The code-flow exchange benchmark joins this file when the code flow exists.

use std::sync::Arc;
use std::time::{Duration, Instant};

use brandgate::config::IdentityConfig;
use brandgate::identity::{Claims, IdentityMetrics, IdentityService};
use brandgate::store::seal::DataKeys;
use brandgate::store::{Store, StoreOptions};
use figment::providers::Format;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let window = if quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("mint ({})", if quick { "quick" } else { "full" });
    let mut rs256 = 0.0;
    for alg in ["RS256", "ES256", "EdDSA"] {
        let rate = runtime.block_on(mint_rate(alg, window));
        if alg == "RS256" {
            rs256 = rate;
        }
        println!("  {alg:<6} {rate:>9.0} tokens/s (one core)");
    }
    let openssl = openssl_rsa2048_signs(if quick { 1 } else { 5 });
    match openssl {
        Some(o) => println!(
            "  openssl speed rsa2048: {o:.0} signs/s; RS256 minting is {:.0}% of it (target >= 70%)",
            100.0 * rs256 / o
        ),
        None => println!("  openssl speed rsa2048: not available"),
    }
}

async fn mint_rate(algorithm: &str, window: Duration) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreOptions {
        url: &Store::default_url(dir.path()),
        password: None,
        max_connections: 2,
    })
    .await
    .unwrap();
    let keys = DataKeys::parse(DataKeys::generate_line("b1").unwrap().as_bytes(), None).unwrap();
    let config: IdentityConfig = toml_config(algorithm);
    let clock = brandgate::clock::system();
    let prepared = IdentityService::prepare(&config, false, clock.clone()).unwrap();
    let service = IdentityService::start(
        &config,
        prepared,
        store,
        Arc::new(keys),
        clock,
        IdentityMetrics::default(),
    )
    .await
    .unwrap();
    let claims = Claims {
        subject: "4f7a7f0e-3f4e-4a8e-9f3e-2b1c0d9e8f7a".into(),
        audience: Some("platform".into()),
        lifetime: Duration::from_secs(3600),
        profile: Default::default(),
    };
    // Warm: the key is opened on first use.
    service.mint(&claims).await.unwrap();
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < window {
        service.mint(&claims).await.unwrap();
        count += 1;
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn toml_config(algorithm: &str) -> IdentityConfig {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        identity: IdentityConfig,
    }
    let text =
        format!("[identity]\nissuer = \"https://bench.test\"\nalgorithm = \"{algorithm}\"\n");
    let w: Wrapper = figment::Figment::from(figment::providers::Toml::string(&text))
        .extract()
        .unwrap();
    w.identity
}

/// `openssl speed`'s RSA-2048 signatures per second (one core).
fn openssl_rsa2048_signs(seconds: u32) -> Option<f64> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", &seconds.to_string(), "rsa2048"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "rsa 2048 bits 0.000565s 0.000035s   1769.8  28923.4"
    let line = text
        .lines()
        .find(|l| l.starts_with("rsa 2048 bits") || l.starts_with("rsa  2048 bits"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    fields.get(fields.len().checked_sub(2)?)?.parse().ok()
}
