//! The command line: parses arguments and calls `brandgate::app`. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use brandgate::app::{self, EXIT_CONFIG, StartError};
use brandgate::push::{Attempt, Provider};
use brandgate::relay::AgentState;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

/// brandgate: the brand's own gateway to the messaging platform (push proxy, identity bridge,
/// self-hosted relay). One binary, one config file.
#[derive(Parser)]
#[command(
    name = "brandgate",
    version,
    long_version = brandgate::LONG_VERSION,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (under systemd: Type=notify; SIGHUP reloads, SIGTERM drains and stops).
    Serve {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG, value_name = "FILE")]
        config: PathBuf,
    },
    /// Ask the running daemon to reload (SIGHUP) and wait for the outcome: exit 0 when the new
    /// configuration was applied, 1 with every problem printed when it was refused (the running
    /// one stays). The unit's ExecReload=, so `systemctl reload brandgate` reports a refusal.
    Reload {
        /// The daemon's process id (systemd gives $MAINPID).
        #[arg(long, value_parser = clap::value_parser!(i32).range(2..))]
        pid: i32,
        /// Where the daemon writes its reload status. Default: $RUNTIME_DIRECTORY (set by the
        /// unit's RuntimeDirectory=).
        #[arg(long, value_name = "DIR")]
        runtime_dir: Option<PathBuf>,
        /// How long to wait for the outcome.
        #[arg(long, default_value = "30s", value_parser = parse_span)]
        timeout: std::time::Duration,
    },
    /// Check the configuration and every file it names, then exit: 0 when usable, 78 when not.
    CheckConfig {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG, value_name = "FILE")]
        config: PathBuf,
    },
    /// Send one push through the same pipeline the proxy uses and print the provider's answer.
    PushTest {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG, value_name = "FILE")]
        config: PathBuf,
        /// The app id, as in [[push.apps]].
        #[arg(long)]
        app: String,
        /// The device token (APNs hex token, FCM registration token or Huawei Push Kit token).
        #[arg(long)]
        token: String,
        /// Notification text (the app's mask text replaces it if configured).
        #[arg(long)]
        text: Option<String>,
        /// Which provider, when the app has both.
        #[arg(long, value_enum)]
        provider: Option<ProviderArg>,
    },
    /// The identity bridge's signing key ring.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The relay's agent accounts (their passwords are read from --password-file, or else
    /// from the first line of standard input).
    Agents {
        #[command(subcommand)]
        command: AgentsCommand,
    },
    /// The store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Work waiting in the store's outbox (webhooks, away pushes): what is pending or parked,
    /// and trying parked items again.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// The configuration as brandgate reads it.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a completion script for a shell: `brandgate completions bash >
    /// /etc/bash_completion.d/brandgate` (the packages install them).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (brandgate.1 and one per subcommand) into a directory; the packages
    /// install them.
    ManPages {
        /// The directory to write them into (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (the file, BRANDGATE_* environment overrides and every
    /// default) as TOML that loads back to the same settings; passwords and credentials in
    /// URLs are redacted. Exit 78 when the configuration cannot be used.
    Show {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Show the items, oldest first: id, kind, state, attempts, next attempt (or when parked),
    /// last error.
    List {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG, value_name = "FILE")]
        config: PathBuf,
        /// Only the parked ones (attempts used up or refused by the receiver).
        #[arg(long)]
        parked: bool,
        /// Show at most this many.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
        limit: i64,
    },
    /// Put parked items back to work, due now with their attempts counted from zero.
    Retry {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG, value_name = "FILE")]
        config: PathBuf,
        /// The item's id (as listed); or --all.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every parked item.
        #[arg(long)]
        all: bool,
    },
}

/// Which agent.
#[derive(clap::Args)]
struct AgentArgs {
    /// The configuration file.
    #[arg(long, short, default_value = DEFAULT_CONFIG, value_name = "FILE")]
    config: PathBuf,
    /// The account id (the relay's `relay.account`).
    #[arg(long)]
    account: String,
    /// The agent's username (as it signs in).
    #[arg(long)]
    username: String,
}

#[derive(Subcommand)]
enum AgentsCommand {
    /// Add an agent.
    Add {
        #[command(flatten)]
        agent: AgentArgs,
        /// A file holding the password (else: the first line of standard input).
        #[arg(long, value_name = "FILE", conflicts_with = "sso_only")]
        password_file: Option<PathBuf>,
        /// No password: the agent signs in with single sign-on ([relay.agents.sso]) only.
        #[arg(long)]
        sso_only: bool,
    },
    /// Show every agent of the account: username, id, state, last login.
    List {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG, value_name = "FILE")]
        config: PathBuf,
        /// The account id (the relay's `relay.account`).
        #[arg(long)]
        account: String,
    },
    /// Refuse the agent's logins and end its sessions.
    Disable {
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Accept the agent's logins again.
    Enable {
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Set a new password: ends the agent's sessions and lifts a lock-out.
    ResetPassword {
        #[command(flatten)]
        agent: AgentArgs,
        /// A file holding the password (else: the first line of standard input).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Seal again, under the active data key, everything sealed under an older one (after
    /// rotating the data key; then the old key can leave the data-key file).
    Reseal {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Show every key: kid, algorithm, state (next, active, retired) and its times.
    List {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG, value_name = "FILE")]
        config: PathBuf,
    },
    /// Schedule a new key: published now, signing after identity.keys.rotation_lead.
    Rotate {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ProviderArg {
    Apns,
    Fcm,
    Huawei,
}

const DEFAULT_CONFIG: &str = "/etc/brandgate/brandgate.toml";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("brandgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve { config } => match app::serve(&config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::Reload {
            pid,
            runtime_dir,
            timeout,
        } => reload(pid, runtime_dir, timeout).await,
        Command::CheckConfig { config } => match app::check_config(&config).await {
            Ok((notes, summary)) => {
                for note in notes {
                    println!("note: {note}");
                }
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(problems) => fail(StartError::Config(problems)),
        },
        Command::PushTest {
            config,
            app: app_id,
            token,
            text,
            provider,
        } => {
            let provider = provider.map(|p| match p {
                ProviderArg::Apns => Provider::Apns,
                ProviderArg::Fcm => Provider::Fcm,
                ProviderArg::Huawei => Provider::Huawei,
            });
            push_test(config, app_id, token, text, provider).await
        }
        Command::Keys { command } => keys(command).await,
        Command::Agents { command } => agents(command).await,
        Command::Store {
            command: StoreCommand::Reseal { config },
        } => reseal(&config).await,
        Command::Outbox { command } => outbox(command).await,
        Command::Config {
            command: ConfigCommand::Show { config },
        } => match app::show_config(&config) {
            Ok(toml) => {
                print!("{toml}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "brandgate", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::ManPages { dir } => {
            let written = std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir));
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(StartError::Runtime(format!(
                    "cannot write the man pages into {}: {e}",
                    dir.display()
                ))),
            }
        }
    }
}

fn parse_span(text: &str) -> Result<std::time::Duration, String> {
    brandgate::duration::parse(text).map_err(|e| e.to_string())
}

async fn reload(pid: i32, dir: Option<PathBuf>, timeout: std::time::Duration) -> ExitCode {
    match app::reload(pid, dir, timeout).await {
        Ok(status) if status.outcome == app::ReloadOutcome::Refused => {
            eprintln!("brandgate: reload refused; the running configuration stays:");
            for p in &status.problems {
                eprintln!("brandgate: {p}");
            }
            ExitCode::FAILURE
        }
        Ok(_) => {
            println!("configuration reloaded");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn outbox(command: OutboxCommand) -> ExitCode {
    let config = match &command {
        OutboxCommand::List { config, .. } | OutboxCommand::Retry { config, .. } => config,
    };
    let store = match app::outbox_store(config).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let done = match &command {
        OutboxCommand::List { parked, limit, .. } => store
            .list_outbox(parked.then_some(true), *limit)
            .await
            .map(|items| {
                println!(
                    "{:<36} {:<10} {:<8} {:>8} {:<22} LAST ERROR",
                    "ID", "KIND", "STATE", "ATTEMPTS", "NEXT / PARKED AT"
                );
                for i in items {
                    println!(
                        "{:<36} {:<10} {:<8} {:>8} {:<22} {}",
                        i.id,
                        i.kind,
                        if i.parked { "parked" } else { "pending" },
                        i.attempts,
                        time(Some(i.next_at.0 / 1000)),
                        i.last_error.as_deref().unwrap_or("-"),
                    );
                }
            }),
        OutboxCommand::Retry { id, .. } => {
            let now = brandgate::clock::UnixMillis::of(std::time::SystemTime::now());
            match store.retry_parked_outbox(id.as_deref(), now).await {
                Ok(0) if id.is_some() => {
                    store.close().await;
                    return fail(StartError::Runtime(format!(
                        "no parked outbox item {:?}",
                        id.as_deref().unwrap_or_default()
                    )));
                }
                Ok(n) => {
                    println!("{n} parked item(s) due again now");
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    };
    store.close().await;
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(StartError::Runtime(e.to_string())),
    }
}

async fn push_test(
    config: PathBuf,
    app_id: String,
    token: String,
    text: Option<String>,
    provider: Option<Provider>,
) -> ExitCode {
    match app::push_test(&config, &app_id, &token, text, provider).await {
        Ok(d) => {
            let status = d
                .last
                .status()
                .map_or("no answer".to_string(), |s| format!("HTTP {s}"));
            let provider = d.provider;
            match &d.last {
                Attempt::Delivered { id, .. } => {
                    println!(
                        "{provider} answered {status}: delivered (id {})",
                        id.as_deref().unwrap_or("-")
                    );
                    return ExitCode::SUCCESS;
                }
                Attempt::DeadToken { reason, .. } => {
                    println!(
                        "{provider} answered {status} {reason}: this device token cannot receive pushes"
                    )
                }
                Attempt::Transient { reason, .. } => {
                    println!(
                        "{provider}: not delivered after {} attempt(s), last {status} {reason}; try again later",
                        d.attempts
                    )
                }
                Attempt::Permanent { reason, .. } => {
                    println!(
                        "{provider} answered {status} {reason}: the credential or request is refused; check the app's configuration"
                    )
                }
            }
            ExitCode::FAILURE
        }
        Err(e) => fail(e),
    }
}

async fn keys(command: KeysCommand) -> ExitCode {
    let config = match &command {
        KeysCommand::List { config } | KeysCommand::Rotate { config } => config.clone(),
    };
    let (ring, store) = match app::key_ring(&config).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let code = match command {
        KeysCommand::List { .. } => match ring.view().await {
            Ok(keys) => {
                println!(
                    "{:<24} {:<6} {:<8} {:<22} {:<22} {:<22}",
                    "KID", "ALG", "STATE", "ACTIVATES", "RETIRED", "REMOVED"
                );
                for k in keys {
                    println!(
                        "{:<24} {:<6} {:<8} {:<22} {:<22} {:<22}",
                        k.row.kid,
                        k.row.algorithm,
                        k.state.as_str(),
                        time(Some(k.row.activates_at)),
                        time(k.retired_at),
                        time(k.remove_at),
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(StartError::Runtime(e.to_string())),
        },
        KeysCommand::Rotate { .. } => match ring.rotate().await {
            Ok(k) => {
                println!(
                    "scheduled key {} ({}): published now, signs from {}",
                    k.row.kid,
                    k.row.algorithm,
                    time(Some(k.row.activates_at))
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(StartError::Runtime(e.to_string())),
        },
    };
    store.close().await;
    code
}

async fn reseal(config: &std::path::Path) -> ExitCode {
    match app::reseal(config).await {
        Ok(done) => {
            for (what, n) in done {
                println!("re-sealed {n} {what} under the active data key");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn agents(command: AgentsCommand) -> ExitCode {
    let (config, account) = match &command {
        AgentsCommand::Add { agent, .. }
        | AgentsCommand::Disable { agent }
        | AgentsCommand::Enable { agent }
        | AgentsCommand::ResetPassword { agent, .. } => (&agent.config, &agent.account),
        AgentsCommand::List { config, account } => (config, account),
    };
    // The password first: a bad one should not wait for the store.
    let password = match &command {
        AgentsCommand::Add { sso_only: true, .. } => None,
        AgentsCommand::Add { password_file, .. }
        | AgentsCommand::ResetPassword { password_file, .. } => {
            match app::read_password(password_file.as_deref()) {
                Ok(p) => Some(p),
                Err(e) => return fail(e),
            }
        }
        _ => None,
    };
    let (accounts, store) = match app::agent_accounts(config, account).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let done = match (&command, &password) {
        (AgentsCommand::Add { agent, .. }, password) => accounts
            .add_agent(&agent.username, password.as_ref())
            .await
            .map(|a| match password {
                Some(_) => println!("added agent {} (id {})", a.username, a.id),
                None => println!(
                    "added agent {} (id {}), single sign-on only",
                    a.username, a.id
                ),
            }),
        (AgentsCommand::ResetPassword { agent, .. }, Some(password)) => accounts
            .reset_password(&agent.username, password)
            .await
            .map(|()| println!("password of {} reset; its sessions ended", agent.username)),
        (AgentsCommand::Disable { agent }, _) => accounts
            .set_disabled(&agent.username, true)
            .await
            .map(|()| println!("disabled {}; its sessions ended", agent.username)),
        (AgentsCommand::Enable { agent }, _) => accounts
            .set_disabled(&agent.username, false)
            .await
            .map(|()| println!("enabled {}", agent.username)),
        (AgentsCommand::List { .. }, _) => accounts.list_agents().await.map(|list| {
            println!(
                "{:<24} {:<36} {:<32} {:<22}",
                "USERNAME", "ID", "STATE", "LAST LOGIN"
            );
            for a in list {
                let state = match a.state {
                    AgentState::Active => "active".to_string(),
                    AgentState::Disabled => "disabled".to_string(),
                    AgentState::LockedUntil(t) => format!("locked until {}", system_time(t)),
                };
                let last = a.last_login_at.map_or("-".to_string(), system_time);
                println!("{:<24} {:<36} {:<32} {:<22}", a.username, a.id, state, last);
            }
        }),
        // Reset-password always reads a password above.
        (AgentsCommand::ResetPassword { .. }, None) => Ok(()),
    };
    store.close().await;
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(StartError::Runtime(e.to_string())),
    }
}

fn system_time(t: std::time::SystemTime) -> String {
    time(Some(brandgate::clock::unix_seconds(t) as i64))
}

/// A Unix time as UTC, `YYYY-MM-DD HH:MM:SS`.
fn time(t: Option<i64>) -> String {
    let Some(t) = t else { return "-".into() };
    match time::OffsetDateTime::from_unix_timestamp(t) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        Err(_) => t.to_string(),
    }
}

fn fail(e: StartError) -> ExitCode {
    match e {
        StartError::Config(problems) => {
            for p in &problems.0 {
                eprintln!("brandgate: {p}");
            }
            ExitCode::from(EXIT_CONFIG)
        }
        StartError::Runtime(message) => {
            eprintln!("brandgate: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand says what it does and every flag what it means (`--help`, the man
    /// pages and the completions all show these).
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            if command.get_about().is_none() && path != " brandgate" {
                missing.push(format!("{path}: no about"));
            }
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{path} {id}: no help"));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &path, missing);
                }
            }
        }
        let command = Cli::command();
        command.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&command, "", &mut missing);
        assert_eq!(missing, Vec::<String>::new());
    }
}
