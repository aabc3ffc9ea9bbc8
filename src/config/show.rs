//! `brandgate config show`: the effective configuration (file, environment and defaults) as
//! TOML that loads back to the same configuration.
//!
//! The configuration names files and never holds a secret, so little needs hiding; what can
//! still carry one is a URL an operator wrote with a password in its user part
//! (`postgres://user:pw@host/db`) or a credential in its query (`?token=`). Both are replaced
//! by `[redacted]` wherever a string value holds a URL.

use super::Config;
use crate::secret::redact_url;

/// Why the configuration could not be written out.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the configuration as TOML: {0}")]
pub struct ShowError(#[from] toml::ser::Error);

impl Config {
    /// The configuration as TOML, every default filled in and every URL's credentials
    /// redacted.
    pub fn to_redacted_toml(&self) -> Result<String, ShowError> {
        let mut value = toml::Value::try_from(self)?;
        redact(&mut value);
        Ok(toml::to_string_pretty(&value)?)
    }
}

fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::String(s) => {
            if let Some(clean) = redact_url(s) {
                *s = clean;
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        toml::Value::Table(table) => table.iter_mut().for_each(|(_, v)| redact(v)),
        _ => {}
    }
}
