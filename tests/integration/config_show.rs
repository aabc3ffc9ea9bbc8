//! `brandgate config show`: the effective configuration (file, environment, defaults) as TOML
//! that loads back to the same settings, with credentials in URLs redacted.

use crate::support::TestEnv;
use crate::support::daemon::run;
use crate::support::relay_world;

async fn show(path: &std::path::Path, vars: &[(&str, &str)]) -> (i32, String, String) {
    run(
        &["config", "show", "--config", path.to_str().unwrap()],
        vars,
    )
    .await
}

fn parse(text: &str) -> toml::Table {
    text.parse()
        .unwrap_or_else(|e| panic!("config show printed TOML that does not parse: {e}\n{text}"))
}

fn at<'a>(table: &'a toml::Table, path: &str) -> &'a toml::Value {
    let mut keys = path.split('.');
    let first = keys.next().unwrap();
    let mut value = table
        .get(first)
        .unwrap_or_else(|| panic!("{path}: no {first}"));
    for key in keys {
        value = value
            .get(key)
            .unwrap_or_else(|| panic!("{path}: no {key} in {value}"));
    }
    value
}

/// What is shown loads back to itself, and what the file and the environment set is what is
/// shown: a relay with the identity bridge (durations, networks, enums, nested tables, lists).
#[tokio::test]
async fn the_effective_configuration_loads_back_to_itself() {
    let env = TestEnv::new();
    let original = relay_world::config(
        &env,
        "90s",
        "",
        "[relay.agents]\nallowed_networks = [\"10.0.0.0/8\", \"::1/128\"]",
    );
    let path = env.file("original.toml", &original);
    let vars = [
        ("BRANDGATE_OPS__LISTEN", "127.0.0.1:19998"),
        ("BRANDGATE_PUSH__DEDUPE_WINDOW", "1h30m"),
    ];
    let (code, shown, err) = show(&path, &vars).await;
    assert_eq!(code, 0, "{err}");
    let table = parse(&shown);
    // The environment's overrides, the file's values, and defaults the file never named.
    assert_eq!(at(&table, "ops.listen").as_str(), Some("127.0.0.1:19998"));
    assert_eq!(at(&table, "push.dedupe_window").as_str(), Some("1h30m"));
    assert_eq!(
        at(&table, "identity.token_lifetime").as_str(),
        Some("1m30s")
    );
    assert_eq!(
        at(&table, "relay.account").as_str(),
        Some(relay_world::ACCOUNT)
    );
    let networks: Vec<&str> = at(&table, "relay.agents.allowed_networks")
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(networks, ["10.0.0.0/8", "::1/128"]);
    let original_table = parse(&original);
    assert!(
        original_table["server"].get("max_connections").is_none(),
        "the test needs a default the file does not set"
    );
    assert!(at(&table, "server.max_connections").as_integer().is_some());

    // Shown again from what was shown (without the environment): the same text, and a
    // configuration check accepts it.
    let again = env.file("shown.toml", &shown);
    let (code, second, err) = show(&again, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(second, shown);
    let (code, out, err) = run(&["check-config", "--config", again.to_str().unwrap()], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn passwords_and_credentials_in_urls_are_redacted() {
    let env = TestEnv::new();
    let config = env.config(
        r#"
[store]
url = "postgres://brandgate:hunter2-db@127.0.0.1:5432/brandgate?sslmode=disable"
[push.feedback.webhook]
url = "https://hooks.example/dead-tokens?team=7&token=hunter2-hook"
"#,
    );
    let path = env.file("secret-urls.toml", &config);
    let (code, shown, err) = show(&path, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!shown.contains("hunter2"), "{shown}");
    let table = parse(&shown);
    assert_eq!(
        at(&table, "store.url").as_str(),
        Some("postgres://brandgate:[redacted]@127.0.0.1:5432/brandgate?sslmode=disable")
    );
    assert_eq!(
        at(&table, "push.feedback.webhook.url").as_str(),
        Some("https://hooks.example/dead-tokens?team=7&token=[redacted]")
    );
}

#[tokio::test]
async fn a_configuration_that_cannot_be_used_is_not_shown() {
    let env = TestEnv::new();
    let path = env.file("typo.toml", &env.config("[push]\ndedup_window = \"1m\"\n"));
    let (code, shown, err) = show(&path, &[]).await;
    assert_eq!(code, 78);
    assert_eq!(shown, "");
    assert!(err.contains("dedup_window"), "{err}");
}
