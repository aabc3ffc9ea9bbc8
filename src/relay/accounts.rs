//! Agent accounts and their sessions (placeholder until the accounts module lands).

use std::time::SystemTime;

/// The agent a session belongs to.
#[derive(Debug, Clone)]
#[allow(dead_code)] // until the accounts module lands
pub struct AgentPrincipal {
    pub agent_id: String,
    pub username: String,
    pub expires_at: SystemTime,
}

#[derive(Debug, thiserror::Error)]
#[allow(dead_code)] // until the accounts module lands
pub enum AgentAuthError {
    #[error("the session is not valid")]
    Invalid,
    #[error("sessions cannot be checked right now")]
    Unavailable,
}

pub struct Accounts;

impl Accounts {
    pub async fn authenticate(&self, _bearer: &str) -> Result<AgentPrincipal, AgentAuthError> {
        Err(AgentAuthError::Invalid)
    }
}
