//! The one-shot commands: `check-config`, `config show`, `push-test`, `keys`, `store reseal`,
//! `agents`. Each
//! loads the config and opens only what it needs; none binds a port.

use std::path::Path;

use prometheus_client::registry::Registry;

use crate::config::{Config, Problems};
use crate::identity::KeyRing;
use crate::push::{self, Delivery, Provider, PushService};
use crate::relay::{Accounts, RelayService};
use crate::secret::Secret;
use crate::store::Store;
use crate::tls;

use super::prepare::prepare;
use super::{StartError, open_configured_store, problem};

/// `brandgate reload`: SIGHUP to the daemon `pid`, then its outcome as written in `dir`
/// (default `$RUNTIME_DIRECTORY`), waited for up to `timeout`.
pub async fn reload(
    pid: i32,
    dir: Option<std::path::PathBuf>,
    timeout: std::time::Duration,
) -> Result<crate::ops::reload_status::ReloadStatus, StartError> {
    use crate::ops::reload_status::{self, ReloadRequestError};
    let runtime_error = |e: ReloadRequestError| StartError::Runtime(e.to_string());
    let dir = dir
        .or_else(reload_status::runtime_dir)
        .ok_or_else(|| runtime_error(ReloadRequestError::NoRuntimeDirectory))?;
    reload_status::request_reload(pid, &dir, timeout)
        .await
        .map_err(runtime_error)
}

/// `brandgate config show`: the effective configuration as TOML, credentials in URLs
/// redacted. Only its shape is checked (as `serve` loads it); nothing it names is opened.
pub fn show_config(path: &Path) -> Result<String, StartError> {
    let config = Config::load(path).map_err(StartError::Config)?;
    config
        .to_redacted_toml()
        .map_err(|e| StartError::Runtime(e.to_string()))
}

/// `brandgate check-config`: everything start-up checks, without binding or writing anything.
/// Returns warnings and a summary on success.
pub async fn check_config(path: &Path) -> Result<(Vec<String>, String), Problems> {
    tls::install_crypto_provider();
    // Keys that are unknown or malformed are named and left out; the rest is checked too, so
    // one run shows every problem (a typo and a missing key file together).
    let (config, mut problems) = Config::load_lenient(path);
    let Some(config) = config else {
        return Err(problems);
    };
    // What is usable but unwise first (secret files every user can read), as `serve` logs it.
    let mut notes = config.warnings();
    let egress = crate::egress::Policy::build(&config, &mut problems);
    notes.extend(
        egress
            .describe()
            .into_iter()
            .map(|way| format!("egress {way}")),
    );
    // Connections made by the checks below leave the configured way.
    egress.install();
    match tls::check_server_config(&config.server.tls) {
        Ok(None) => notes.push(format!(
            "server.tls: no certificate configured; a self-signed development certificate will be \
             generated in {}/dev-tls (not for production)",
            config.server.state_dir.display()
        )),
        Ok(Some(())) => {}
        Err(e) => problems.push(e.key, e.message),
    }
    if config.server.state_dir.exists() && !config.server.state_dir.is_dir() {
        problems.push(
            "server.state_dir",
            format!("{} is not a directory", config.server.state_dir.display()),
        );
    }
    // What `serve` reads and checks before it starts, with no record directory: nothing is
    // written.
    let apps = match prepare(
        &config,
        None,
        push::PushMetrics::register(&mut Registry::default()),
    ) {
        Ok(prepared) => {
            notes.extend(prepared.notes);
            prepared.push.app_count()
        }
        Err(p) => {
            problems.0.extend(p.0);
            0
        }
    };
    problems.into_result((
        notes,
        format!(
            "configuration OK: {apps} push app(s), identity bridge {}; public listener {}, ops listener {}",
            config
                .identity
                .as_ref()
                .map_or("off".to_string(), |i| format!("on (issuer {})", i.issuer)),
            config.server.listen,
            config.ops.listen
        ),
    ))
}

/// `brandgate push-test`: one push through the same pipeline the proxy uses.
pub async fn push_test(
    path: &Path,
    app: &str,
    token: &str,
    text: Option<String>,
    provider: Option<Provider>,
) -> Result<Delivery, StartError> {
    tls::install_crypto_provider();
    let config = Config::load(path)?;
    let Some(app_cfg) = config.push.apps.iter().find(|a| a.id == app) else {
        return Err(problem("--app", format!("no app {app:?} in push.apps")).into());
    };
    let configured: Vec<Provider> = [
        (app_cfg.apns.is_some(), Provider::Apns),
        (app_cfg.fcm.is_some(), Provider::Fcm),
        (app_cfg.huawei.is_some(), Provider::Huawei),
    ]
    .into_iter()
    .filter_map(|(on, p)| on.then_some(p))
    .collect();
    let provider = match (provider, configured.as_slice()) {
        (Some(p), _) => p,
        (None, [only]) => *only,
        (None, _) => {
            return Err(problem(
                "--provider",
                "this app has several providers: say which (apns, fcm or huawei)",
            )
            .into());
        }
    };
    crate::egress::Policy::checked(&config)?.install();
    let service = PushService::build(
        &config.push,
        None,
        config.server.tls.client_ca.is_some(),
        push::PushMetrics::register(&mut Registry::default()),
        crate::clock::system(),
    )?;
    let request = push::PushRequest::text(provider, push::DeviceToken::new(token), text);
    service
        .send(app, request)
        .await
        .map_err(|e| StartError::Runtime(e.to_string()))
}

/// `brandgate keys list|rotate`: the signing key ring, straight from the store.
pub async fn key_ring(path: &Path) -> Result<(KeyRing, Store), StartError> {
    tls::install_crypto_provider();
    let config = Config::load(path)?;
    let Some(identity) = &config.identity else {
        return Err(problem(
            "identity",
            "the identity bridge is not configured ([identity] section)",
        )
        .into());
    };
    let (store, data_keys) = open_configured_store(&config).await?;
    let ring = KeyRing::new(
        store.clone(),
        data_keys,
        crate::identity::ring_settings(identity),
        crate::clock::system(),
    );
    Ok((ring, store))
}

/// `brandgate store reseal`: everything sealed under an older data key (signing keys, relay
/// events, agents' password hashes, device tokens, pending logins), sealed again under the
/// active one. Returns what it re-sealed, by kind.
pub async fn reseal(path: &Path) -> Result<Vec<(&'static str, usize)>, StartError> {
    tls::install_crypto_provider();
    let config = Config::load(path)?;
    let (store, data_keys) = open_configured_store(&config).await?;
    let runtime = |e: String| StartError::Runtime(e);
    let ring = config.identity.as_ref().map(|identity| {
        KeyRing::new(
            store.clone(),
            data_keys.clone(),
            crate::identity::ring_settings(identity),
            crate::clock::system(),
        )
    });
    // Each role re-seals the records it owns: only it knows what they are bound to.
    let mut done = crate::identity::reseal(&store, &data_keys, ring.as_ref())
        .await
        .map_err(|e| runtime(e.to_string()))?;
    done.extend(
        crate::relay::reseal(&store, &data_keys)
            .await
            .map_err(|e| runtime(e.to_string()))?,
    );
    store.close().await;
    Ok(done)
}

/// `brandgate outbox ...`: the configured store, opened (and migrated) on its own.
pub async fn outbox_store(path: &Path) -> Result<Store, StartError> {
    tls::install_crypto_provider();
    let config = Config::load(path)?;
    let (store, _) = open_configured_store(&config).await?;
    Ok(store)
}

/// `brandgate agents ...`: the relay's agent accounts, straight from the store. `account` must
/// be the one the relay serves (agents of another account could never log in here).
pub async fn agent_accounts(path: &Path, account: &str) -> Result<(Accounts, Store), StartError> {
    tls::install_crypto_provider();
    let config = Config::load(path)?;
    let Some(relay) = &config.relay else {
        return Err(problem("relay", "the relay is not configured ([relay] section)").into());
    };
    if relay.account != account {
        return Err(StartError::Runtime(format!(
            "this relay serves account {:?}, not {account:?}",
            relay.account
        )));
    }
    let (store, data_keys) = open_configured_store(&config).await?;
    let accounts = RelayService::accounts(relay, store.clone(), data_keys, crate::clock::system());
    Ok((accounts, store))
}

/// A password for `brandgate agents add|reset-password`: the content of `file` (one trailing
/// newline dropped), or else the first line of standard input. A terminal is refused rather
/// than echoing the password on the screen.
pub fn read_password(file: Option<&Path>) -> Result<Secret<String>, StartError> {
    use std::io::{BufRead, IsTerminal};
    let bytes = match file {
        Some(f) => crate::secret::read_secret_file(f)
            .map_err(|e| StartError::Runtime(e.to_string()))?
            .expose()
            .clone(),
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                return Err(StartError::Runtime(
                    "give the password with --password-file <path>, or on standard input (a pipe); \
                     it is not read from a terminal, where it would show"
                        .into(),
                ));
            }
            let mut line = String::new();
            stdin
                .lock()
                .read_line(&mut line)
                .map_err(|e| StartError::Runtime(format!("cannot read standard input: {e}")))?;
            let line = line.strip_suffix('\n').unwrap_or(&line);
            let line = line.strip_suffix('\r').unwrap_or(line);
            line.as_bytes().to_vec()
        }
    };
    let password = String::from_utf8(bytes)
        .map_err(|_| StartError::Runtime("the password is not UTF-8 text".into()))?;
    if password.is_empty() {
        return Err(StartError::Runtime("the password is empty".into()));
    }
    Ok(Secret::new(password))
}
