//! What a consumer's identity token says about it (its profile claims, as the identity bridge
//! or an external issuer minted them, and whether it logged in or is anonymous), kept sealed
//! in the store at each authentication, for the agent who holds one of its conversations
//! (`rest::consumer_profile`). Never logs a claim.

use crate::ids::ConsumerId;
use std::sync::Arc;

use serde_json::{Value, json};

use super::vocabulary::RelayError;
use crate::clock::Clock;
use crate::identity::ConsumerIdentity;
use crate::store::Store;
use crate::store::seal::DataKeys;

/// The associated data a consumer's profile is sealed with.
pub(super) fn seal_context(account: &str, consumer_id: &ConsumerId) -> Vec<u8> {
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
        let at = crate::clock::UnixMillis::of(self.clock.now()).0;
        if let Err(e) = self
            .store
            .put_consumer_profile(&self.account, &identity.subject, &sealed, at)
            .await
        {
            tracing::warn!(error = %e, "cannot keep a consumer's profile");
        }
    }

    /// The consumer's profile as last recorded: `{"authenticated", "claims"}`.
    pub async fn get(&self, consumer_id: &ConsumerId) -> Result<Option<Value>, RelayError> {
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
