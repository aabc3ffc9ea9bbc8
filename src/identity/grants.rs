//! Single-use handles the identity bridge gives out and later takes back: the `state` of a
//! login sent to the brand's provider, and the one-time `code` the platform exchanges.
//!
//! A handle is 256 random bits (base64url). The store keeps only its SHA-256 (as the record id)
//! and the record sealed under the data keys with that id as associated data, so neither a
//! database dump nor a swapped row yields a usable login or code. Taking a record deletes it
//! in the same statement: a handle works once, on whichever node it is presented.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::{Clock, unix_seconds};
use crate::store::seal::DataKeys;
use crate::store::{Store, StoreError};

/// What a handle stands for; part of the record id, so a login state can never be redeemed
/// as a code.
#[derive(Debug, Clone, Copy)]
pub enum GrantKind {
    Login,
    Code,
    /// An agent's single sign-on sent to the brand's provider.
    AgentLogin,
    /// An agent's SAML sign-in: the AuthnRequest's ID is `_` and the handle.
    AgentSaml,
    /// A SAML assertion already used (kept until it expires, against replay).
    SamlAssertion,
}

impl GrantKind {
    fn as_str(self) -> &'static str {
        match self {
            GrantKind::Login => "login",
            GrantKind::Code => "code",
            GrantKind::AgentLogin => "agent-login",
            GrantKind::AgentSaml => "agent-saml",
            GrantKind::SamlAssertion => "saml-assertion",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a pending grant cannot be sealed or opened: {0}")]
    Seal(String),
}

/// The pending grants of this node (and, through the store, of every node).
pub struct Grants {
    store: Store,
    data_keys: Arc<DataKeys>,
    clock: Arc<dyn Clock>,
}

impl Grants {
    pub fn new(store: Store, data_keys: Arc<DataKeys>, clock: Arc<dyn Clock>) -> Grants {
        Grants {
            store,
            data_keys,
            clock,
        }
    }

    /// A new random handle: 256 bits, base64url without padding (43 characters).
    pub fn new_handle() -> Result<String, GrantError> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| GrantError::Seal("no randomness".into()))?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Whether `text` could be a handle this module made (checked before touching the store).
    pub fn is_handle(text: &str) -> bool {
        text.len() == 43
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    /// The record's id: SHA-256 of the handle and the binding. A caller without the binding
    /// cannot even find the record, so it cannot spend it either.
    fn record_id(kind: GrantKind, handle: &str, binding: &str) -> String {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(handle.as_bytes());
        ctx.update(&[0]);
        ctx.update(binding.as_bytes());
        format!(
            "{}:{}",
            kind.as_str(),
            crate::hex::encode(ctx.finish().as_ref())
        )
    }

    /// Keeps `value` under `handle` for `lifetime`. Only a taker presenting the same
    /// `binding` (the browser's login cookie; empty for codes) finds it again.
    pub async fn put<T: Serialize>(
        &self,
        kind: GrantKind,
        handle: &str,
        binding: &str,
        value: &T,
        lifetime: Duration,
    ) -> Result<(), GrantError> {
        let id = Self::record_id(kind, handle, binding);
        let plain = serde_json::to_vec(value).map_err(|e| GrantError::Seal(e.to_string()))?;
        let sealed = self
            .data_keys
            .seal(id.as_bytes(), &plain)
            .map_err(|e| GrantError::Seal(e.to_string()))?;
        let expires_at = unix_seconds(self.clock.now() + lifetime) as i64;
        self.store
            .create_pending_grant(&id, &sealed, expires_at)
            .await?;
        Ok(())
    }

    /// Takes the value under `handle` and `binding` back: `None` when there is none, it
    /// expired, it was taken before, or the binding differs. When found, the handle is spent.
    pub async fn take<T: DeserializeOwned>(
        &self,
        kind: GrantKind,
        handle: &str,
        binding: &str,
    ) -> Result<Option<T>, GrantError> {
        if !Self::is_handle(handle) {
            return Ok(None);
        }
        let id = Self::record_id(kind, handle, binding);
        let now = unix_seconds(self.clock.now()) as i64;
        let Some(sealed) = self.store.take_pending_grant(&id, now).await? else {
            return Ok(None);
        };
        let plain = self
            .data_keys
            .open(id.as_bytes(), &sealed)
            .map_err(|e| GrantError::Seal(e.to_string()))?;
        serde_json::from_slice(plain.expose())
            .map(Some)
            .map_err(|e| GrantError::Seal(e.to_string()))
    }

    /// Records `key` as used until `until`: `true` the first time, `false` when it was
    /// recorded before and has not expired (on any node: the store's unique key decides).
    pub async fn first_use(
        &self,
        kind: GrantKind,
        key: &str,
        until: SystemTime,
    ) -> Result<bool, GrantError> {
        let id = Self::record_id(kind, key, "");
        let now = unix_seconds(self.clock.now()) as i64;
        // An expired record of the same key must not block it (nor linger).
        self.store.delete_pending_grant_if_expired(&id, now).await?;
        let expires_at = unix_seconds(until) as i64;
        // Sealed like every record (nothing to hide, but `store reseal` opens them all).
        let sealed = self
            .data_keys
            .seal(id.as_bytes(), b"")
            .map_err(|e| GrantError::Seal(e.to_string()))?;
        match self
            .store
            .create_pending_grant(&id, &sealed, expires_at)
            .await
        {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `key` was recorded by [`Grants::first_use`] and has not expired (nothing is
    /// recorded or spent).
    pub async fn is_used(&self, kind: GrantKind, key: &str) -> Result<bool, GrantError> {
        let id = Self::record_id(kind, key, "");
        let now = unix_seconds(self.clock.now()) as i64;
        Ok(self.store.pending_grant_is_live(&id, now).await?)
    }

    /// Forgets every grant past its time (the maintenance task calls this).
    pub async fn delete_expired(&self) -> Result<u64, GrantError> {
        let now = unix_seconds(self.clock.now()) as i64;
        Ok(self.store.delete_expired_pending_grants(now).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::fake::FakeClock;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Value {
        who: String,
    }

    async fn grants(dir: &std::path::Path, clock: Arc<FakeClock>) -> (Grants, Store) {
        let store = Store::open_temporary(dir).await;
        let keys = DataKeys::generate_for_test();
        (Grants::new(store.clone(), Arc::new(keys), clock), store)
    }

    #[tokio::test]
    async fn a_handle_works_once_before_it_expires_and_only_for_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FakeClock::new());
        let (grants, store) = grants(dir.path(), clock.clone()).await;
        let v = Value {
            who: "alice".into(),
        };
        let ttl = Duration::from_secs(60);

        let h = Grants::new_handle().unwrap();
        assert!(Grants::is_handle(&h));
        grants.put(GrantKind::Code, &h, "", &v, ttl).await.unwrap();
        assert_eq!(
            grants
                .take::<Value>(GrantKind::Login, &h, "")
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            grants.take::<Value>(GrantKind::Code, &h, "").await.unwrap(),
            Some(Value {
                who: "alice".into()
            })
        );
        assert_eq!(
            grants.take::<Value>(GrantKind::Code, &h, "").await.unwrap(),
            None,
            "single use"
        );

        // A login bound to one browser: another binding neither finds nor spends it.
        let bound = Grants::new_handle().unwrap();
        grants
            .put(GrantKind::Login, &bound, "browser-a", &v, ttl)
            .await
            .unwrap();
        assert_eq!(
            grants
                .take::<Value>(GrantKind::Login, &bound, "browser-b")
                .await
                .unwrap(),
            None
        );
        assert!(
            grants
                .take::<Value>(GrantKind::Login, &bound, "browser-a")
                .await
                .unwrap()
                .is_some()
        );

        let late = Grants::new_handle().unwrap();
        grants
            .put(GrantKind::Code, &late, "", &v, ttl)
            .await
            .unwrap();
        clock.advance(ttl);
        assert_eq!(
            grants
                .take::<Value>(GrantKind::Code, &late, "")
                .await
                .unwrap(),
            None,
            "expired"
        );

        let old = Grants::new_handle().unwrap();
        grants
            .put(GrantKind::Login, &old, "browser", &v, ttl)
            .await
            .unwrap();
        clock.advance(ttl);
        assert_eq!(grants.delete_expired().await.unwrap(), 1);

        // What the database holds is the handle's hash and a sealed record, never the handle
        // or the value.
        let fresh = Grants::new_handle().unwrap();
        grants
            .put(GrantKind::Code, &fresh, "", &v, ttl)
            .await
            .unwrap();
        store.close().await;
        let raw = std::fs::read(dir.path().join("brandgate.db")).unwrap();
        let wal = std::fs::read(dir.path().join("brandgate.db-wal")).unwrap_or_default();
        for bytes in [raw, wal] {
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(&fresh));
            assert!(!text.contains("alice"));
        }
    }

    #[tokio::test]
    async fn a_key_is_used_once_until_it_expires_then_may_be_recorded_again() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FakeClock::new());
        let (grants, _store) = grants(dir.path(), clock.clone()).await;
        let until = clock.now() + Duration::from_secs(60);
        let kind = GrantKind::SamlAssertion;
        assert!(grants.first_use(kind, "idp _a1", until).await.unwrap());
        assert!(
            !grants.first_use(kind, "idp _a1", until).await.unwrap(),
            "replayed"
        );
        assert!(
            grants.first_use(kind, "idp _a2", until).await.unwrap(),
            "another key"
        );
        assert!(
            grants
                .first_use(GrantKind::AgentSaml, "idp _a1", until)
                .await
                .unwrap(),
            "another kind"
        );
        clock.advance(Duration::from_secs(61));
        assert!(!grants.is_used(kind, "idp _a1").await.unwrap(), "expired");
        let later = clock.now() + Duration::from_secs(60);
        assert!(
            grants.first_use(kind, "idp _a1", later).await.unwrap(),
            "expired"
        );
        assert!(!grants.first_use(kind, "idp _a1", later).await.unwrap());
    }
}
