//! systemd notifications (`Type=notify`): READY=1 once listening, RELOADING=1 (with
//! MONOTONIC_USEC, as systemd 253+ asks) then READY=1 around a reload, STOPPING=1 on shutdown,
//! STATUS= lines for `systemctl status`, and WATCHDOG=1 at half of `WATCHDOG_USEC`.
//!
//! Without `$NOTIFY_SOCKET` (not under systemd) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading"),
        ]),
        Err(_) => send(&[NotifyState::Reloading, NotifyState::Status("reloading")]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Starts pinging the watchdog at half its interval, if systemd asked for one. The pings come
/// from a task on the same runtime that serves requests, so a wedged runtime stops them.
pub fn spawn_watchdog(cancel: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(10));
    tracing::info!(?interval, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
            }
        }
    });
}
