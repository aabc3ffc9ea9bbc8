//! What start-up reads and checks before anything runs, in one pass that gathers every problem:
//! `serve` builds the daemon from it, `check-config` reports it. Neither binds a port here, and
//! nothing is written: a development certificate or data key is made later, by `serve` only.

use std::path::Path;

use crate::config::{Config, Problems};
use crate::identity::{IdentityService, Prepared as PreparedIdentity};
use crate::push::{PushMetrics, PushService};
use crate::relay::{PreparedRelay, RelayService};
use crate::secret::Secret;
use crate::store::seal::DataKeys;

/// The store's settings, read and checked: the data keys (when a file is configured), the
/// password (UTF-8), the URL (SQLite or PostgreSQL).
pub(super) struct StoreSettings {
    pub data_keys: Option<DataKeys>,
    pub password: Option<Secret<String>>,
    pub url: Option<String>,
}

/// Every role built or prepared from one config.
pub(super) struct Prepared {
    pub push: PushService,
    /// With the relay's, when `[identity]` is configured (the relay needs it).
    pub identity: Option<PreparedIdentity>,
    pub relay: Option<PreparedRelay>,
    /// When `[identity]` is configured: only the identity bridge and the relay keep a store.
    pub store: Option<StoreSettings>,
    /// What is worth knowing (what tokens carry, a development key to come).
    pub notes: Vec<String>,
}

/// Reads and checks everything `config` names, for a daemon whose dead-token records go to
/// `record_dir` (`None`: none written). Returns every problem at once.
pub(super) fn prepare(
    config: &Config,
    record_dir: Option<&Path>,
    push_metrics: PushMetrics,
) -> Result<Prepared, Problems> {
    let mut problems = Problems::default();
    let mut notes = Vec::new();
    let client_ca = config.server.tls.client_ca.is_some();
    let push = PushService::build(
        &config.push,
        record_dir,
        client_ca,
        push_metrics,
        crate::clock::system(),
    )
    .map_err(|p| problems.0.extend(p.0))
    .ok();
    let mut identity = None;
    let mut store = None;
    if let Some(cfg) = &config.identity {
        match IdentityService::prepare(cfg, client_ca, crate::clock::system()) {
            Ok(prepared) => {
                notes.push(prepared.claims_note());
                identity = Some(prepared);
            }
            Err(p) => problems.0.extend(p.0),
        }
        store = store_settings(config)
            .map_err(|p| problems.0.extend(p.0))
            .ok();
        if config.store.data_keys_file.is_none() {
            let dev_key = config.server.state_dir.join("data-keys");
            notes.push(if dev_key.exists() {
                format!(
                    "store.data_keys_file: not configured; the development data key in {} is used",
                    dev_key.display()
                )
            } else {
                format!(
                    "store.data_keys_file: not configured; a development data key will be generated in {}",
                    config.server.state_dir.display()
                )
            });
        }
    }
    let relay = match config
        .relay
        .as_ref()
        .map(|r| RelayService::prepare(r, config.identity.as_ref()))
    {
        Some(Ok(prepared)) => Some(prepared),
        Some(Err(p)) => {
            problems.0.extend(p.0);
            None
        }
        None => None,
    };
    match push {
        Some(push) if problems.is_empty() => Ok(Prepared {
            push,
            identity,
            relay,
            store,
            notes,
        }),
        _ => Err(problems),
    }
}

/// The store's settings from `config`, every problem at once.
pub(super) fn store_settings(config: &Config) -> Result<StoreSettings, Problems> {
    let mut problems = Problems::default();
    let data_keys = match &config.store.data_keys_file {
        Some(file) => DataKeys::load(file, config.store.active_data_key.as_deref())
            .map_err(|e| problems.push("store.data_keys_file", e.to_string()))
            .ok(),
        None => None,
    };
    let password = match &config.store.password_file {
        Some(f) => match crate::secret::read_secret_file(f) {
            Ok(bytes) => match String::from_utf8(bytes.expose().clone()) {
                Ok(text) => Some(Secret::new(text)),
                Err(_) => {
                    problems.push("store.password_file", "the password is not UTF-8");
                    None
                }
            },
            Err(e) => {
                problems.push("store.password_file", e.to_string());
                None
            }
        },
        None => None,
    };
    if let Some(url) = &config.store.url
        && !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
    {
        problems.push("store.url", "must be a sqlite: or postgres:// URL");
    }
    problems.into_result(StoreSettings {
        data_keys,
        password,
        url: config.store.url.clone(),
    })
}
