//! brandgate: a daemon a brand runs on its own servers between a customer-messaging platform,
//! the brand's apps and login, and Apple/Google push. It holds every brand secret itself; the
//! platform only ever talks to it.
//!
//! # Layout
//! - [`config`]: the one TOML file plus `BRANDGATE_*` environment overrides, typed and validated.
//! - [`app`]: wires the roles to the listeners; reload on SIGHUP, drain on SIGTERM.
//! - [`tls`]: every rustls configuration in the process (TLS 1.2 and 1.3 only).
//! - `ops`: the operator's side: metrics, health and readiness, systemd notifications, logging.
//! - [`push`]: the push proxy role. Its door is [`push::PushService`].
//! - [`identity`]: the identity bridge role. Its door is [`identity::IdentityService`].
//! - [`relay`]: the self-hosted relay role. Its door is [`relay::RelayService`].
//! - [`store`]: SQLite or PostgreSQL behind one handle; [`store::seal`] seals secrets at rest.
//! - `workspace`: the agents' browser workspace and the demo page (files only: they are
//!   clients of the relay).
//!
//! Small shared pieces: [`secret`] (values that must never be printed), [`clock`] (injected time),
//! [`duration`] (human-readable durations in the config), [`http_client`] (outbound HTTPS),
//! `http_auth` (Basic credentials and client-certificate names, read one way),
//! [`hex`], `limiter` (per-source limits), `security_headers` (what every public answer
//! carries), `backoff`, `http_answer`, `webhook_signature` and `webhook_post` (one copy each
//! of what several roles do), `dispatch` (works off the store's outbox for every role),
//! [`problems`] (what is wrong with a config), [`networks`] (CIDR lists),
//! [`client_address`] (whose request it is, behind trusted proxies) and [`proxy_protocol`].
//!
//! Only what the binary, the tests, the benches and the fuzz targets use is `pub`; the shared
//! pieces only roles use are `pub(crate)`.

pub mod app;
pub(crate) mod backoff;
pub mod client_address;
pub mod clock;
pub mod config;
pub mod digest;
pub(crate) mod dispatch;
pub mod duration;
pub mod egress;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod hex;
pub(crate) mod http_answer;
pub(crate) mod http_auth;
pub mod http_client;
pub mod identity;
pub mod ids;
pub(crate) mod limiter;
pub mod networks;
pub(crate) mod ops;
pub mod problems;
pub mod proxy_protocol;
pub mod push;
pub mod relay;
pub mod secret;
pub(crate) mod security_headers;
pub mod store;
pub mod tls;
pub(crate) mod webhook_post;
pub(crate) mod webhook_signature;
pub(crate) mod workspace;

/// `brandgate --version`, long form: version, commit, build date, compiler, target.
pub use ops::build_info::LONG_VERSION;
