//! SAML 2.0 for the agents' sign-in, with no HTTP in it: the strict reading of XML (`xml`),
//! the checks of a provider's answer (`response`), metadata both ways (`metadata`), the
//! AuthnRequest (`request`), and the provider as the relay holds it (`provider`). The sign-in
//! pages that use them are in `sso`; brandgate's choice of library and why are in
//! `docs/design/agent-saml.md`.

pub mod metadata;
mod provider;
pub mod request;
pub mod response;
mod xml;

pub use metadata::IdpMetadata;
pub use provider::{SamlProvider, Unavailable, acs_path, metadata_path, start_path};
