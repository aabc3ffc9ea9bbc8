//! The self-hosted relay role: for brands that keep conversations on their own premises,
//! brandgate is the messaging backend itself. Consumers connect over WebSocket with the
//! identity tokens the identity bridge mints, and speak the platform's published messaging
//! protocol (`protocol`), so clients written for the platform connect unchanged.
//!
//! The door is [`RelayService`] (`service`: what it is built from and its lifecycle; `routes`:
//! [`RelayService::router`] for the listener; [`RelayService::shutdown`] for the end). Inside,
//! no module imports one that imports it back (a test holds this):
//! - `vocabulary`: who acts, the relay's errors, the events and what followers are told;
//!   `protocol`: the envelopes; `close_code`: every code a socket is closed with;
//! - `socket`: what every socket does (requests, rate, follows); `outbox`: its send queue,
//!   bounded in bytes; `subscriptions`: a conversation's events, caught up from the store then
//!   live, never skipping one;
//! - `consumer`: a consumer's socket (authentication, token expiry, its own requests);
//! - `agent`: an agent's socket (session, availability, rings); `routing`: which agent gets a
//!   waiting conversation; `accounts`: agent accounts, passwords, lock-out and sessions
//!   ([`Accounts::authenticate`] tells the agent socket whose bearer it is); `login`: their
//!   login, refresh and logout over HTTPS; `sso`: their single sign-on through the brand's
//!   identity provider (`idp`: the providers, read at start; `saml`: SAML 2.0 itself, no HTTP);
//! - `rest`: history, lists and the consumer's profile over HTTPS; `devices`: consumers' push
//!   registrations; `profiles`: what consumers' tokens said about them, sealed; `away`: pushes
//!   to consumers who do not acknowledge agents' messages;
//! - `conversations`: the only code that writes conversations and events (access rules,
//!   sequences, sealing); `bus`: the hub handing committed events to followers and state
//!   changes to watchers, and what must reach other nodes to an outward sink; `fanout`: that
//!   sink across nodes sharing one PostgreSQL (LISTEN/NOTIFY, through the store);
//! - `webhooks`: signed POSTs to the brand's backend about committed changes, written to the
//!   store's outbox with the change and worked off by [`crate::dispatch`]; `records`: what
//!   each sealed record is bound to, and re-sealing.
//!
//! Away pushes go through the push proxy's door ([`crate::push::PushService::send`]).

mod accounts;
mod agent;
mod away;
mod bus;
pub(crate) mod close_code;
mod consumer;
mod conversations;
mod devices;
mod fanout;
mod idp;
mod login;
mod metrics;
mod outbox;
mod profiles;
pub(crate) mod protocol;
mod records;
mod refusal;
mod requests;
mod rest;
mod routes;
mod routing;
pub(crate) mod saml;
mod service;
mod socket;
mod sso;
mod subscriptions;
mod vocabulary;
mod webhooks;

pub use accounts::{
    AccountError, Accounts, AgentAuthError, AgentPrincipal, AgentState, AgentView, LoginError,
    NewSession, Refusal, SsoIdentity, SsoLoginError,
};
pub use idp::{oidc_callback_path, oidc_start_path};
pub use records::reseal;
pub use saml::{
    acs_path as saml_acs_path, metadata_path as saml_metadata_path, start_path as saml_start_path,
};
pub use service::{PreparedRelay, RelayBase, RelayService};
