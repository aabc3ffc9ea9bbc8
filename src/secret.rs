//! Secrets: values that must never reach a log line, an error message or an API answer.
//!
//! A [`Secret`] prints as `[redacted]` whatever formatting asks for it, and compares in constant
//! time. Secrets only enter the process through [`read_secret_file`]: the config names files, never
//! values, so systemd's `LoadCredential=` can hand them over (`%d/name` in a path means the
//! credentials directory systemd gives the service; without it, or when the credential is not
//! there, `secrets/name` beside the config file).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A value that is never formatted. Use [`Secret::expose`] at the single place that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The wrapped value. Call sites are the places to review for leaks.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T: AsRef<[u8]>> Secret<T> {
    /// Constant-time comparison with a candidate the caller presented. Both sides are hashed
    /// first, so neither the content nor the length of the secret shows in the timing.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        constant_time_eq(self.0.as_ref(), candidate)
    }
}

/// Compares two byte strings without a timing difference that depends on where they differ or
/// on their lengths: both are reduced to SHA-256 digests, which are then compared in constant time.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    SecretDigest::of(a).matches(b)
}

/// A secret kept only as its SHA-256 digest, for what callers present on every request (the
/// push proxy's Basic password and custom headers): each check hashes the candidate alone and
/// compares the digests in constant time, as [`constant_time_eq`] does with both sides.
#[derive(Clone)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    pub fn of(secret: &[u8]) -> Self {
        SecretDigest(crate::digest::sha256(secret))
    }

    pub fn matches(&self, candidate: &[u8]) -> bool {
        let presented = crate::digest::sha256(candidate);
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, &presented).is_ok()
    }
}

impl fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Why a secret file could not be used. The message names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error(
        "{path} uses %d (the systemd credentials directory) but $CREDENTIALS_DIRECTORY is not set; \
         run under systemd with LoadCredential= or give a full path"
    )]
    NoCredentialsDirectory { path: String },
    #[error("cannot read {}: {source}{}", path.display(), unreadable_hint(source))]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("{} is empty", path.display())]
    Empty { path: PathBuf },
}

/// What an operator can do about an unreadable file.
fn unreadable_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => " (put the file there, or fix the path in the config)",
        io::ErrorKind::PermissionDenied => {
            " (the service runs as user brandgate: chown root:brandgate and chmod 0640 the file, \
             or hand it over with LoadCredential=)"
        }
        _ => "",
    }
}

static CREDENTIALS_FALLBACK: std::sync::RwLock<Option<PathBuf>> = std::sync::RwLock::new(None);

/// Where `%d/name` is looked up when systemd handed over no such credential: the config's own
/// `secrets/` directory (`/etc/brandgate/secrets` for the packages). Set when the config loads.
pub fn set_credentials_fallback(dir: PathBuf) {
    *CREDENTIALS_FALLBACK
        .write()
        .unwrap_or_else(|e| e.into_inner()) = Some(dir);
}

/// Expands a leading `%d/` as systemd does in unit files: `$CREDENTIALS_DIRECTORY/name` when
/// that credential exists, else the fallback directory (see [`set_credentials_fallback`]), so
/// one config works with and without `LoadCredential=`.
pub fn resolve_path(path: &Path) -> Result<PathBuf, SecretFileError> {
    let text = path.to_string_lossy();
    let Some(name) = text.strip_prefix("%d/") else {
        return Ok(path.to_path_buf());
    };
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let candidate = Path::new(&dir).join(name);
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    let fallback = CREDENTIALS_FALLBACK
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match fallback {
        Some(dir) => Ok(dir.join(name)),
        None => Err(SecretFileError::NoCredentialsDirectory {
            path: text.into_owned(),
        }),
    }
}

/// Reads a whole file named in the config (certificates: not secret, but found and reported
/// the same way).
pub fn read_file(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    let resolved = resolve_path(path)?;
    std::fs::read(&resolved).map_err(|source| SecretFileError::Unreadable {
        path: resolved,
        source,
    })
}

/// Reads a whole secret file. A single trailing newline is removed (editors and `echo` add one;
/// it is never part of a password).
pub fn read_secret_file(path: &Path) -> Result<Secret<Vec<u8>>, SecretFileError> {
    let mut bytes = read_file(path)?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(SecretFileError::Empty {
            path: resolve_path(path)?,
        });
    }
    Ok(Secret(bytes))
}

/// Reads the secret file that config key `key` names; when it cannot be used, records a
/// problem naming the key and returns `None`.
pub fn read_secret_for(
    key: impl Into<String>,
    path: &Path,
    problems: &mut crate::problems::Problems,
) -> Option<Secret<Vec<u8>>> {
    read_secret_file(path)
        .map_err(|e| problems.push(key, e.to_string()))
        .ok()
}

/// Whether a file that holds a secret can be read by every user on the machine.
pub fn world_readable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    resolve_path(path)
        .ok()
        .and_then(|p| std::fs::metadata(p).ok())
        .is_some_and(|m| m.permissions().mode() & 0o004 != 0)
}

/// What replaces a secret in anything shown (messages, `config show`).
pub const REDACTED: &str = "[redacted]";

/// Query parameters whose value is taken for a credential.
const SECRET_QUERY_NAMES: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "secret",
    "token",
    "key",
    "apikey",
    "api_key",
    "access_token",
    "client_secret",
    "sig",
    "signature",
    "auth",
];

/// `text` with the password of its user part and the values of credential-like query
/// parameters redacted, when it is a URL that has either; else `None`.
pub fn redact_url(text: &str) -> Option<String> {
    let scheme_end = text.find("://")?;
    let authority_start = scheme_end + 3;
    let rest = &text[authority_start..];
    // The user part ends at the last `@` before any fragment, so a password written unencoded
    // with `/` or `?` in it is still hidden (when in doubt, more is hidden, never less); the
    // host follows it up to the path, query or fragment.
    let host_start = rest[..rest.find('#').unwrap_or(rest.len())]
        .rfind('@')
        .map_or(0, |at| at + 1);
    let authority_len = rest[host_start..]
        .find(['/', '?', '#'])
        .map_or(rest.len(), |end| host_start + end);
    let authority = &text[authority_start..authority_start + authority_len];
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..authority_start]);
    let mut changed = false;
    match authority.rfind('@') {
        Some(at) => {
            let user_info = &authority[..at];
            match user_info.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(REDACTED);
                    changed = true;
                }
                None => out.push_str(user_info),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let rest = &text[authority_start + authority_len..];
    let (before_fragment, fragment) = match rest.find('#') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if is_secret_query_name(name) => {
                        changed = true;
                        format!("{name}={REDACTED}")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
        None => out.push_str(before_fragment),
    }
    out.push_str(fragment);
    changed.then_some(out)
}

fn is_secret_query_name(name: &str) -> bool {
    SECRET_QUERY_NAMES
        .iter()
        .any(|secret| name.eq_ignore_ascii_case(secret))
}

/// A URL for a message: [`redact_url`]'s answer, or the URL as it is when it holds nothing to
/// hide.
pub fn url_for_display(url: &str) -> String {
    redact_url(url).unwrap_or_else(|| url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2".to_string());
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert!(!format!("{:#?}", Some(s)).contains("hunter2"));
    }

    #[test]
    fn comparison_is_exact() {
        let s = Secret::new(b"correct horse".to_vec());
        assert!(s.matches(b"correct horse"));
        assert!(!s.matches(b"correct hors"));
        assert!(!s.matches(b"correct horse "));
        assert!(!s.matches(b""));
    }

    #[test]
    fn trailing_newline_is_not_part_of_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\r\n").unwrap();
        assert!(read_secret_file(&path).unwrap().matches(b"s3cret"));
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            read_secret_file(&path),
            Err(SecretFileError::Empty { .. })
        ));
    }

    #[test]
    fn a_urls_password_and_credential_parameters_are_redacted() {
        let cases = [
            (
                "postgres://brandgate:hunter2@db.internal:5432/bg?sslmode=verify-full",
                Some("postgres://brandgate:[redacted]@db.internal:5432/bg?sslmode=verify-full"),
            ),
            (
                "https://hooks.example/in?Token=abc&team=7#frag",
                Some("https://hooks.example/in?Token=[redacted]&team=7#frag"),
            ),
            (
                "https://user:p%40ss@x.example",
                Some("https://user:[redacted]@x.example"),
            ),
            (
                "postgres://u:pa/ss?x@db:5432/bg",
                Some("postgres://u:[redacted]@db:5432/bg"),
            ),
            ("postgres://brandgate@db.internal/bg", None),
            ("sqlite:///var/lib/x.db", None),
            ("https://idp.example/realms/a?kc_idp_hint=x", None),
            ("/etc/brandgate/key.pem", None),
            ("%d/apns.p8", None),
        ];
        for (text, expected) in cases {
            assert_eq!(redact_url(text).as_deref(), expected, "{text}");
        }
    }
}
