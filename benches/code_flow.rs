//! Code-flow benchmark: the platform's token call end to end — HTTPS to brandgate (the release
//! binary), client authentication, the code taken from the store, the consumer token minted
//! (RS256) — as exchanges per second at a fixed concurrency.
//!
//! Codes come from real logins: consumers log in at the real OpenID provider (oidc-provider,
//! node) through brandgate, many at once, before the clock starts. Logins per second are
//! printed too; they are bound by the provider.
//!
//!   cargo bench --bench code_flow            full run (2,000 codes)
//!   cargo bench --bench code_flow -- --quick  CI smoke run (200 codes)

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;

use support::identity_world::{APP_CALLBACK, VERIFIER, World};
use tokio::sync::Semaphore;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let codes = if quick { 200 } else { 2000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("code_flow ({})", if quick { "quick" } else { "full" });
    runtime.block_on(run(codes));
}

async fn run(count: usize) {
    // Every login comes from one address here: lift the per-source login limit.
    let world = Arc::new(World::start("", "logins_per_minute = 1000000", "").await);

    // Logins, 16 at a time (each its own browser).
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(16));
    let logins: Vec<_> = (0..count)
        .map(|i| {
            let world = world.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let mut browser = world.browser();
                world
                    .login_for_code(&mut browser, &format!("consumer{i}"))
                    .await
            })
        })
        .collect();
    let mut codes = Vec::with_capacity(count);
    for l in logins {
        codes.push(l.await.unwrap());
    }
    let login_rate = count as f64 / started.elapsed().as_secs_f64();
    println!("  logins through the real provider: {login_rate:.0}/s (16 at a time)");

    // The exchanges, 32 at a time, on shared connections as the platform would.
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(32));
    let calls: Vec<_> = codes
        .into_iter()
        .map(|code| {
            let world = world.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let answer = world.exchange(&code, APP_CALLBACK, Some(VERIFIER)).await;
                assert_eq!(answer.status, 200, "{}", answer.body);
            })
        })
        .collect();
    for c in calls {
        c.await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "  code exchanges end to end: {:.0}/s ({count} in {:.2} s, 32 at a time, RS256)",
        count as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}
