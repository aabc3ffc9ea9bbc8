//! Wires the roles together: the one-shot commands (`commands`), the daemon's lifecycle
//! (`lifecycle`: start, reload, stop) and the public HTTPS server (`server`), with what they
//! share: the start-up error, the state directory and the store.

mod commands;
mod lifecycle;
mod prepare;
mod server;

use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, Problems};
use crate::store::seal::DataKeys;
use crate::store::{Store, StoreOptions};
use crate::tls;

use prepare::{StoreSettings, store_settings};

pub use crate::ops::reload_status::{Outcome as ReloadOutcome, ReloadStatus};
pub use commands::{
    agent_accounts, check_config, key_ring, outbox_store, push_test, read_password, reload, reseal,
    show_config,
};
pub use lifecycle::serve;

/// Exit status for a configuration that cannot be used (sysexits' EX_CONFIG). The unit file
/// lists it in `RestartPreventExitStatus=`, so systemd does not restart-loop on a bad config.
pub const EXIT_CONFIG: u8 = 78;

/// Why the daemon or a command could not run.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(Problems),
    #[error("{0}")]
    Runtime(String),
}

impl From<Problems> for StartError {
    fn from(p: Problems) -> Self {
        StartError::Config(p)
    }
}

fn problem(key: &str, message: impl Into<String>) -> Problems {
    Problems(vec![crate::config::Problem::new(key, message)])
}

/// The state directory exists (created 0750 if missing) and is a directory.
fn ensure_state_dir(dir: &Path) -> Result<(), Problems> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|e| {
            problem(
                "server.state_dir",
                format!(
                    "cannot create {}: {e} (under systemd, StateDirectory= makes it)",
                    dir.display()
                ),
            )
        })
}

/// The store and the data keys that seal what it holds, from settings [`prepare`] checked.
/// Without a data-key file, a development key is made in the state directory (and the log
/// says so).
async fn open_store(
    config: &Config,
    settings: StoreSettings,
    state_dir: &Path,
) -> Result<(Store, Arc<DataKeys>), StartError> {
    let data_keys = match settings.data_keys {
        Some(keys) => keys,
        None => {
            let path = state_dir.join("data-keys");
            if !path.exists() {
                let line = DataKeys::generate_line("dev1")
                    .map_err(|e| StartError::Runtime(e.to_string()))?;
                tls::write_private_file(&path, line.as_bytes())
                    .map_err(|e| StartError::Runtime(e.to_string()))?;
                tracing::warn!(file = %path.display(), "no store.data_keys_file configured: generated a development data key; \
                    what it seals is only as safe as this file: configure store.data_keys_file (LoadCredential=) before production");
            }
            DataKeys::load(&path, config.store.active_data_key.as_deref())
                .map_err(|e| problem("store.data_keys_file", e.to_string()))?
        }
    };
    let url = settings
        .url
        .unwrap_or_else(|| Store::default_url(state_dir));
    let store = Store::open(StoreOptions {
        url: &url,
        password: settings.password.as_ref().map(|p| p.expose().as_str()),
        max_connections: config.store.max_connections,
    })
    .await
    .map_err(|e| {
        StartError::Runtime(format!(
            "store ({}): {e}",
            crate::secret::url_for_display(&url)
        ))
    })?;
    Ok((store, Arc::new(data_keys)))
}

/// The store `config` names, for a one-shot command.
async fn open_configured_store(config: &Config) -> Result<(Store, Arc<DataKeys>), StartError> {
    let settings = store_settings(config)?;
    open_store(config, settings, &config.server.state_dir).await
}
