//! The relay's routes on the public listener: the consumer's and the agent's WebSockets at
//! both paths, history and devices over REST, the agents' login, the workspace's summary.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};

use super::refusal::MAX_BODY_BYTES;
use super::service::RelayService;
use super::{agent, consumer, devices, login, rest, sso};

impl RelayService {
    /// The routes: the consumer's and the agent's WebSockets at both paths, history over
    /// REST, consumers' devices, and the agents' login.
    pub fn router(&self) -> Router {
        let agents = Router::new()
            .route("/api/account/{account}/login", post(login::login))
            .route("/api/account/{account}/refresh", post(login::refresh))
            .route("/api/account/{account}/logout", post(login::logout))
            .route("/api/account/{account}/sso/oidc", get(sso::oidc_start))
            .route(
                "/api/account/{account}/sso/oidc/callback",
                get(sso::oidc_callback),
            )
            .route("/api/account/{account}/sso/saml", get(sso::saml_start))
            .route(
                "/api/account/{account}/sso/saml/metadata",
                get(sso::saml_metadata),
            )
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
        // The provider's answer is a form of up to a few hundred KiB.
        let saml_acs = Router::new()
            .route("/api/account/{account}/sso/saml/acs", post(sso::saml_acs))
            .layer(DefaultBodyLimit::max(sso::SAML_MAX_ACS_BYTES));
        Router::new()
            .merge(agents)
            .merge(saml_acs)
            .route("/ws/consumer", get(consumer::own_path))
            .route("/ws/agent", get(agent::own_path))
            .route(
                "/ws_api/account/{account}/messaging/brand/{bearer}",
                get(agent::platform_path),
            )
            .route("/api/v1/conversations", get(rest::list))
            .route("/api/v1/workspace", get(login::workspace))
            .route("/api/v1/push-registrations", get(devices::list))
            .route(
                "/api/v1/push-registrations/{app}",
                put(devices::register)
                    .delete(devices::unregister)
                    .layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
            )
            .route("/api/v1/conversations/{id}/events", get(rest::events))
            .route(
                "/api/v1/conversations/{id}/consumer",
                get(rest::consumer_profile),
            )
            .route(
                "/ws_api/account/{account}/messaging/consumer",
                get(consumer::platform_path),
            )
            .with_state(self.clone())
    }
}
