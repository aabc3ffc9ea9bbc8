//! Every column that holds a sealed value, listed so that `brandgate store reseal` reaches them
//! all after a data-key rotation without knowing what the values mean. The store hands out the
//! sealed bytes with the fields their owner binds them to (the associated data) and swaps in a
//! re-sealed value only if the old one is still there, so a concurrent write is never undone.
//! (Signing keys have their own, `replace_signing_key_seal`.)

use sqlx::Row;

use super::seal::{DataKeys, SealError};
use super::{Store, StoreError};

/// A sealed column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedColumn {
    /// Relay event bodies, bound to the event id.
    RelayEvents,
    /// Agents' password hashes, bound to the agent id.
    AgentPasswords,
    /// Consumers' device tokens, bound to account, consumer and app.
    PushTokens,
    /// The identity bridge's pending logins and codes, bound to their id.
    PendingGrants,
    /// What consumers' tokens said about them, bound to account and consumer.
    ConsumerProfiles,
}

/// One sealed value and the fields it is bound to, in the column's order.
#[derive(Debug, Clone)]
pub struct SealedRow {
    /// Where the next page starts (the rows' order).
    pub position: String,
    pub fields: Vec<String>,
    pub sealed: Vec<u8>,
}

impl SealedColumn {
    pub const ALL: [SealedColumn; 5] = [
        SealedColumn::RelayEvents,
        SealedColumn::AgentPasswords,
        SealedColumn::PushTokens,
        SealedColumn::PendingGrants,
        SealedColumn::ConsumerProfiles,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SealedColumn::RelayEvents => "relay events",
            SealedColumn::AgentPasswords => "agent passwords",
            SealedColumn::PushTokens => "device tokens",
            SealedColumn::PendingGrants => "pending logins and codes",
            SealedColumn::ConsumerProfiles => "consumer profiles",
        }
    }

    /// (page query, replace statement, number of bound fields). Literal SQL only.
    fn sql(self) -> (&'static str, &'static str, usize) {
        match self {
            SealedColumn::RelayEvents => (
                "SELECT event_id AS position, event_id AS f0, sealed AS s FROM events \
                 WHERE event_id > $1 ORDER BY event_id LIMIT $2",
                "UPDATE events SET sealed = $1 WHERE sealed = $2 AND event_id = $3",
                1,
            ),
            SealedColumn::AgentPasswords => (
                // An agent without a password (single sign-on only) has nothing sealed.
                "SELECT id AS position, id AS f0, password_sealed AS s FROM agents \
                 WHERE id > $1 AND length(password_sealed) > 0 ORDER BY id LIMIT $2",
                "UPDATE agents SET password_sealed = $1 WHERE password_sealed = $2 AND id = $3",
                1,
            ),
            SealedColumn::PushTokens => (
                "SELECT account || '|' || consumer_id || '|' || app AS position, account AS f0, \
                 consumer_id AS f1, app AS f2, token_sealed AS s FROM push_registrations \
                 WHERE account || '|' || consumer_id || '|' || app > $1 \
                 ORDER BY account || '|' || consumer_id || '|' || app LIMIT $2",
                "UPDATE push_registrations SET token_sealed = $1 WHERE token_sealed = $2 \
                 AND account = $3 AND consumer_id = $4 AND app = $5",
                3,
            ),
            SealedColumn::PendingGrants => (
                "SELECT id AS position, id AS f0, sealed AS s FROM pending_grants \
                 WHERE id > $1 ORDER BY id LIMIT $2",
                "UPDATE pending_grants SET sealed = $1 WHERE sealed = $2 AND id = $3",
                1,
            ),
            SealedColumn::ConsumerProfiles => (
                "SELECT account || '|' || consumer_id AS position, account AS f0, \
                 consumer_id AS f1, sealed AS s FROM consumer_profiles \
                 WHERE account || '|' || consumer_id > $1 \
                 ORDER BY account || '|' || consumer_id LIMIT $2",
                "UPDATE consumer_profiles SET sealed = $1 WHERE sealed = $2 \
                 AND account = $3 AND consumer_id = $4",
                2,
            ),
        }
    }
}

impl Store {
    /// Sealed values of `column` after `position` (`""` for the first page), at most `limit`.
    pub async fn list_sealed(
        &self,
        column: SealedColumn,
        position: &str,
        limit: i64,
    ) -> Result<Vec<SealedRow>, StoreError> {
        let (select, _, fields) = column.sql();
        let rows = on_pool!(self, pool => {
            sqlx::query(select)
                .bind(position)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| -> Result<SealedRow, sqlx::Error> {
                    Ok(SealedRow {
                        position: r.try_get("position")?,
                        fields: (0..fields)
                            .map(|i| r.try_get(format!("f{i}").as_str()))
                            .collect::<Result<_, _>>()?,
                        sealed: r.try_get("s")?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Puts `new` in the row `fields` name (as [`Store::list_sealed`] gave them) if `old` is
    /// still there. Returns whether it did.
    pub async fn replace_sealed(
        &self,
        column: SealedColumn,
        fields: &[String],
        old: &[u8],
        new: &[u8],
    ) -> Result<bool, StoreError> {
        let (_, update, count) = column.sql();
        if fields.len() != count {
            return Err(StoreError::NotFound);
        }
        let done = on_pool!(self, pool => {
            let mut query = sqlx::query(update).bind(new).bind(old);
            for f in fields {
                query = query.bind(f);
            }
            query
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// Seals again, under the active data key, every value of `column` sealed under an older
    /// one; `context_of` gives the context a row is bound to (the column's owner knows it).
    /// Returns how many were re-sealed; a row changed meanwhile by someone else is left alone.
    pub async fn reseal_column(
        &self,
        column: SealedColumn,
        data_keys: &DataKeys,
        context_of: impl Fn(&[String]) -> Option<Vec<u8>>,
    ) -> Result<usize, ResealError> {
        let mut count = 0;
        let mut position = String::new();
        loop {
            let page = self.list_sealed(column, &position, 500).await?;
            let Some(last) = page.last() else { break };
            position = last.position.clone();
            for row in page.iter().filter(|r| data_keys.is_stale(&r.sealed)) {
                let context =
                    context_of(&row.fields).ok_or(ResealError::NoContext(column.name()))?;
                let plain = data_keys
                    .open(&context, &row.sealed)
                    .map_err(|e| ResealError::Open(column.name(), e))?;
                let sealed = data_keys
                    .seal(&context, plain.expose())
                    .map_err(|e| ResealError::Seal(column.name(), e))?;
                if self
                    .replace_sealed(column, &row.fields, &row.sealed, &sealed)
                    .await?
                {
                    count += 1;
                }
            }
        }
        Ok(count)
    }
}

/// Why re-sealing stopped.
#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}: a row whose fields do not say what it is bound to")]
    NoContext(&'static str),
    #[error("{0} do not open with the data keys: {1}")]
    Open(&'static str, SealError),
    #[error("{0}: {1}")]
    Seal(&'static str, SealError),
}
