//! Sealing at rest: AES-256-GCM under a ring of data keys read from a file, so the database
//! alone never yields a secret (private signing keys today; message bodies and credentials as
//! the store grows).
//!
//! A sealed value is `1 | key-id length | key id | 12-byte random nonce | ciphertext and tag`.
//! The key id in the record says which data key opens it; the associated data binds it to the
//! record it belongs to (a sealed value copied into another row does not open). A new data key
//! becomes active by configuration; older records still open and are re-sealed when touched.
//!
//! The data-key file holds one key per line: `<id> <base64 of 32 random bytes>`; blank lines and
//! `#` comments are ignored. This module never prints a key.

use std::collections::HashMap;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;

use crate::secret::{Secret, read_secret_file};

const FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed with data key {0:?}, which the data-key file does not hold")]
    UnknownKey(String),
    #[error("the sealed value is damaged or belongs to another record")]
    Damaged,
}

/// Why a data-key file cannot be used (never shows a key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataKeyError {
    #[error("the data-key file is not text")]
    NotText,
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: LineProblem },
    #[error("active data key {0:?} is not in the file")]
    NoActive(String),
    #[error("the data-key file holds no key")]
    Empty,
    #[error("{0}")]
    Unreadable(String),
    #[error("{file}: {error}")]
    In {
        file: String,
        error: Box<DataKeyError>,
    },
    #[error("no randomness available")]
    NoRandomness,
}

/// What is wrong with one line of a data-key file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("expected \"<id> <base64 key>\"")]
    Shape,
    #[error("key ids are 1-64 letters, digits, '-' or '_'")]
    Id,
    #[error("the key is not base64")]
    NotBase64,
    #[error("a data key is 32 bytes (base64 of 32 random bytes)")]
    Length,
    #[error("not a usable AES-256 key")]
    Unusable,
    #[error("key id {0:?} appears twice")]
    Twice(String),
}

/// The data keys.
pub struct DataKeys {
    keys: HashMap<String, LessSafeKey>,
    active: String,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeys")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

impl DataKeys {
    /// Parses a data-key file. `active` names the key that seals new values (default: the
    /// first in the file).
    pub fn parse(text: &[u8], active: Option<&str>) -> Result<DataKeys, DataKeyError> {
        let text = std::str::from_utf8(text).map_err(|_| DataKeyError::NotText)?;
        let mut keys = HashMap::new();
        let mut first = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |problem| DataKeyError::Line {
                line: n + 1,
                problem,
            };
            let (id, b64) = line
                .split_once(char::is_whitespace)
                .ok_or(bad(LineProblem::Shape))?;
            if id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad(LineProblem::Id));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| bad(LineProblem::NotBase64))?;
            if raw.len() != 32 {
                return Err(bad(LineProblem::Length));
            }
            let key =
                UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| bad(LineProblem::Unusable))?;
            if keys.insert(id.to_string(), LessSafeKey::new(key)).is_some() {
                return Err(bad(LineProblem::Twice(id.to_string())));
            }
            first.get_or_insert_with(|| id.to_string());
        }
        let active = match active {
            Some(a) if keys.contains_key(a) => a.to_string(),
            Some(a) => return Err(DataKeyError::NoActive(a.to_string())),
            None => first.ok_or(DataKeyError::Empty)?,
        };
        Ok(DataKeys { keys, active })
    }

    /// Reads the data-key file.
    pub fn load(path: &Path, active: Option<&str>) -> Result<DataKeys, DataKeyError> {
        let bytes = read_secret_file(path).map_err(|e| DataKeyError::Unreadable(e.to_string()))?;
        DataKeys::parse(bytes.expose(), active).map_err(|e| DataKeyError::In {
            file: path.display().to_string(),
            error: Box::new(e),
        })
    }

    /// A new file's content with one random key, for `brandgate store new-data-key` and the
    /// development key.
    pub fn generate_line(id: &str) -> Result<String, DataKeyError> {
        let mut raw = [0u8; 32];
        aws_lc_rs::rand::fill(&mut raw).map_err(|_| DataKeyError::NoRandomness)?;
        Ok(format!(
            "{id} {}\n",
            base64::engine::general_purpose::STANDARD.encode(raw)
        ))
    }

    /// A ring of one fresh random key (unit tests).
    #[cfg(test)]
    pub fn generate_for_test() -> DataKeys {
        let line = DataKeys::generate_line("test1").expect("randomness");
        DataKeys::parse(line.as_bytes(), None).expect("a generated line parses")
    }

    pub fn active_id(&self) -> &str {
        &self.active
    }

    /// Seals `plaintext` for the record that `context` names.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let key = self
            .keys
            .get(&self.active)
            .ok_or_else(|| SealError::UnknownKey(self.active.clone()))?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::Damaged)?;
        let mut body = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context),
            &mut body,
        )
        .map_err(|_| SealError::Damaged)?;
        let id = self.active.as_bytes();
        let mut out = Vec::with_capacity(2 + id.len() + NONCE_LEN + body.len());
        out.push(FORMAT);
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a sealed value of the record that `context` names.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Secret<Vec<u8>>, SealError> {
        let (id, nonce, body) = split(sealed)?;
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| SealError::UnknownKey(id.to_string()))?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Damaged)?;
        let mut body = body.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(context), &mut body)
            .map_err(|_| SealError::Damaged)?;
        Ok(Secret::new(plain.to_vec()))
    }

    /// Whether a sealed value should be sealed again under the active key.
    pub fn is_stale(&self, sealed: &[u8]) -> bool {
        split(sealed)
            .map(|(id, _, _)| id != self.active)
            .unwrap_or(true)
    }
}

fn split(sealed: &[u8]) -> Result<(&str, &[u8], &[u8]), SealError> {
    let (&format, rest) = sealed.split_first().ok_or(SealError::Damaged)?;
    if format != FORMAT {
        return Err(SealError::Damaged);
    }
    let (&len, rest) = rest.split_first().ok_or(SealError::Damaged)?;
    let len = usize::from(len);
    if rest.len() < len + NONCE_LEN {
        return Err(SealError::Damaged);
    }
    let id = std::str::from_utf8(&rest[..len]).map_err(|_| SealError::Damaged)?;
    Ok((id, &rest[len..len + NONCE_LEN], &rest[len + NONCE_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str, active: Option<&str>) -> DataKeys {
        DataKeys::parse(text.as_bytes(), active).unwrap()
    }

    #[test]
    fn sealed_values_open_only_for_their_record() {
        let k = keys(&DataKeys::generate_line("k1").unwrap(), None);
        let sealed = k.seal(b"signing_key:abc", b"private key bytes").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"private"));
        assert_eq!(
            k.open(b"signing_key:abc", &sealed).unwrap().expose(),
            b"private key bytes"
        );
        assert!(matches!(
            k.open(b"signing_key:abd", &sealed),
            Err(SealError::Damaged)
        ));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(k.open(b"signing_key:abc", &flipped).is_err());
    }

    #[test]
    fn a_new_active_key_still_opens_old_records() {
        let old = DataKeys::generate_line("k1").unwrap();
        let new = DataKeys::generate_line("k2").unwrap();
        let before = keys(&old, None);
        let sealed = before.seal(b"r", b"v").unwrap();
        let after = keys(&format!("{old}{new}"), Some("k2"));
        assert!(after.is_stale(&sealed));
        assert_eq!(after.open(b"r", &sealed).unwrap().expose(), b"v");
        let resealed = after.seal(b"r", b"v").unwrap();
        assert!(!after.is_stale(&resealed));
        // Without the old key, old records do not open, and say why.
        let only_new = keys(&new, None);
        assert!(
            matches!(only_new.open(b"r", &sealed), Err(SealError::UnknownKey(id)) if id == "k1")
        );
    }

    #[test]
    fn bad_files_are_explained() {
        let refused =
            |text: &[u8], active: Option<&str>| DataKeys::parse(text, active).unwrap_err();
        let line = |n, problem| DataKeyError::Line { line: n, problem };
        assert_eq!(
            refused(b"k1 notbase64!", None),
            line(1, LineProblem::NotBase64)
        );
        assert_eq!(
            refused(b"# one\nk1 AAAA", None),
            line(2, LineProblem::Length)
        );
        assert_eq!(refused(b"k1", None), line(1, LineProblem::Shape));
        assert_eq!(refused(b"k/1 AAAA", None), line(1, LineProblem::Id));
        assert_eq!(refused(b"# nothing\n", None), DataKeyError::Empty);
        assert_eq!(refused(b"\xff", None), DataKeyError::NotText);
        let key = DataKeys::generate_line("k1").unwrap();
        assert_eq!(
            refused(format!("{key}{key}").as_bytes(), None),
            line(2, LineProblem::Twice("k1".into()))
        );
        assert_eq!(
            refused(key.as_bytes(), Some("k9")),
            DataKeyError::NoActive("k9".into())
        );
        // The texts an operator reads, as before.
        assert_eq!(
            line(1, LineProblem::Length).to_string(),
            "line 1: a data key is 32 bytes (base64 of 32 random bytes)"
        );
        assert_eq!(
            DataKeyError::NoActive("k9".into()).to_string(),
            "active data key \"k9\" is not in the file"
        );
        assert!(format!("{:?}", keys(&key, None)).contains("k1"));
    }
}
