//! The relay's sealed records: what each kind is bound to, and re-sealing them all under the
//! active data key.

use super::{accounts, away, profiles, vocabulary};
use crate::ids::{AgentId, ConsumerId};
use crate::store::Store;
use crate::store::seal::DataKeys;
use crate::store::sealed::{ResealError, SealedColumn};

/// Seals the relay's records again under the active data key (`brandgate store reseal`).
/// Returns how many of each kind it re-sealed.
pub async fn reseal(
    store: &Store,
    data_keys: &DataKeys,
) -> Result<Vec<(&'static str, usize)>, ResealError> {
    let mut done = Vec::new();
    for column in [
        SealedColumn::RelayEvents,
        SealedColumn::AgentPasswords,
        SealedColumn::PushTokens,
        SealedColumn::ConsumerProfiles,
    ] {
        let n = store
            .reseal_column(column, data_keys, |fields| seal_context(column, fields))
            .await?;
        done.push((column.name(), n));
    }
    Ok(done)
}

/// The associated data a relay record's sealed value is bound to, from the fields
/// [`Store::list_sealed`] gives; `None` for a column the relay does not own.
fn seal_context(column: SealedColumn, fields: &[String]) -> Option<Vec<u8>> {
    match (column, fields) {
        (SealedColumn::RelayEvents, [event_id]) => Some(vocabulary::event_seal_context(event_id)),
        (SealedColumn::AgentPasswords, [agent_id]) => {
            Some(accounts::seal_context(&AgentId::new(agent_id.as_str())))
        }
        (SealedColumn::PushTokens, [account, consumer, app]) => Some(away::seal_context(
            account,
            &ConsumerId::new(consumer.as_str()),
            app,
        )),
        (SealedColumn::ConsumerProfiles, [account, consumer]) => Some(profiles::seal_context(
            account,
            &ConsumerId::new(consumer.as_str()),
        )),
        _ => None,
    }
}
