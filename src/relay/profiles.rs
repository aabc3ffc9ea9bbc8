//! What a consumer's identity token says about it (its profile claims, as the identity bridge
//! or an external issuer minted them, and whether it logged in or is anonymous), kept sealed
//! in the store at each authentication, for the agent who holds one of its conversations:
//! `GET /api/v1/conversations/{id}/consumer`.
//!
//! Only the agent holding the conversation gets it (the same `404` as for a conversation that
//! does not exist otherwise). Never logs a claim.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::RelayService;
use super::conversations::{Participant, RelayError};
use super::rest::caller;
use crate::clock::Clock;
use crate::http_answer::{json_error, no_store};
use crate::identity::ConsumerIdentity;
use crate::store::Store;
use crate::store::seal::DataKeys;

/// The associated data a consumer's profile is sealed with.
pub(super) fn seal_context(account: &str, consumer_id: &str) -> Vec<u8> {
    format!("consumer_profile:{account}:{consumer_id}").into_bytes()
}

/// The consumers' profiles of one account.
pub struct Profiles {
    account: String,
    store: Store,
    data_keys: Arc<DataKeys>,
    clock: Arc<dyn Clock>,
}

impl Profiles {
    pub fn new(
        account: String,
        store: Store,
        data_keys: Arc<DataKeys>,
        clock: Arc<dyn Clock>,
    ) -> Profiles {
        Profiles {
            account,
            store,
            data_keys,
            clock,
        }
    }

    /// Keeps what `identity` says (a failure is logged: the consumer still chats).
    pub async fn record(&self, identity: &ConsumerIdentity) {
        let value = json!({
            "authenticated": identity.authenticated,
            "claims": identity.profile,
        });
        let context = seal_context(&self.account, &identity.subject);
        let sealed = match self.data_keys.seal(&context, value.to_string().as_bytes()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot seal a consumer's profile");
                return;
            }
        };
        let at = crate::clock::unix_millis(self.clock.now());
        if let Err(e) = self
            .store
            .put_consumer_profile(&self.account, &identity.subject, &sealed, at)
            .await
        {
            tracing::warn!(error = %e, "cannot keep a consumer's profile");
        }
    }

    /// The consumer's profile as last recorded: `{"authenticated", "claims"}`.
    pub async fn get(&self, consumer_id: &str) -> Result<Option<Value>, RelayError> {
        let Some(sealed) = self
            .store
            .get_consumer_profile(&self.account, consumer_id)
            .await?
        else {
            return Ok(None);
        };
        let plain = self
            .data_keys
            .open(&seal_context(&self.account, consumer_id), &sealed)
            .map_err(|e| RelayError::Seal(e.to_string()))?;
        serde_json::from_slice(plain.expose())
            .map(Some)
            .map_err(|e| RelayError::Seal(e.to_string()))
    }
}

/// `GET /api/v1/conversations/{id}/consumer`: who the conversation's consumer is, for the
/// agent holding it. `{"consumerId", "authenticated", "claims": {...}}`; a consumer whose
/// profile was never recorded shows as not authenticated with no claims.
pub async fn consumer(
    State(relay): State<RelayService>,
    Path(conversation): Path<String>,
    headers: HeaderMap,
) -> Response {
    let who = match caller(&relay, &headers).await {
        Ok(who @ Participant::Agent(_)) => who,
        Ok(Participant::Consumer(_)) => {
            return json_error(
                StatusCode::FORBIDDEN,
                "this is for the conversation's agent",
            );
        }
        Err(response) => return response,
    };
    let row = match relay.inner.conversations.get(&who, &conversation).await {
        Ok(row) => row,
        Err(RelayError::NotFound) => {
            return json_error(StatusCode::NOT_FOUND, "no such conversation");
        }
        Err(e) => return unavailable(e),
    };
    match relay.inner.profiles.get(&row.consumer_id).await {
        Ok(profile) => {
            let profile = profile.unwrap_or_else(|| json!({"authenticated": false, "claims": {}}));
            no_store(
                axum::Json(json!({
                    "consumerId": row.consumer_id,
                    "authenticated": profile["authenticated"],
                    "claims": profile["claims"],
                }))
                .into_response(),
            )
        }
        Err(e) => unavailable(e),
    }
}

fn unavailable(e: RelayError) -> Response {
    tracing::error!(error = %e, "cannot read a consumer's profile");
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the service cannot answer right now",
    )
}
