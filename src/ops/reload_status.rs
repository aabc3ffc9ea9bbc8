//! A reload's outcome where `systemctl reload` can wait for it. SIGHUP cannot answer, so the
//! daemon writes `reload-status` into its runtime directory (`$RUNTIME_DIRECTORY`, from the
//! unit's `RuntimeDirectory=`) at start and after every reload; `brandgate reload` (the unit's
//! `ExecReload=`) notes the generation and the time, sends SIGHUP, and waits for a reload that
//! began after its signal (another reload already under way, or two signals merged, cannot
//! answer for it): it exits 0 when the new configuration was applied and fails, printing every
//! problem, when it was refused, so `systemctl reload` reports a refused reload instead of
//! success. Times are the system's monotonic clock, the same in every process.
//!
//! The file holds what the log already says (keys and problems, never a secret value), is
//! written whole (a temporary file renamed over it), and readable only by the service's user.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file's name in the runtime directory.
pub const FILE_NAME: &str = "reload-status";

/// What the last configuration event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The daemon started with its configuration.
    Started,
    /// A reload applied a new configuration.
    Applied,
    /// A reload was refused; the running configuration stays.
    Refused,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Started => "started",
            Outcome::Applied => "applied",
            Outcome::Refused => "refused",
        }
    }

    fn parse(text: &str) -> Option<Outcome> {
        match text {
            "started" => Some(Outcome::Started),
            "applied" => Some(Outcome::Applied),
            "refused" => Some(Outcome::Refused),
            _ => None,
        }
    }
}

/// One configuration event: its number since start, when it began (the monotonic clock, in
/// milliseconds), what became of it, and why (refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadStatus {
    pub generation: u64,
    pub began: u64,
    pub outcome: Outcome,
    pub problems: Vec<String>,
}

/// The system's monotonic clock in milliseconds (CLOCK_MONOTONIC: one clock for every
/// process on the machine, unlike `Instant`, which cannot be written down).
pub fn monotonic_millis() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1000 + (now.tv_nsec as u64) / 1_000_000
}

impl ReloadStatus {
    fn render(&self) -> String {
        let mut text = format!(
            "generation {}\nbegan {}\noutcome {}\n",
            self.generation,
            self.began,
            self.outcome.as_str()
        );
        for p in &self.problems {
            // One problem per line, whatever it holds.
            text.push_str("problem ");
            text.push_str(&p.replace(['\n', '\r'], " "));
            text.push('\n');
        }
        text
    }

    fn parse(text: &str) -> Option<ReloadStatus> {
        let mut lines = text.lines();
        let generation = lines.next()?.strip_prefix("generation ")?.parse().ok()?;
        let began = lines.next()?.strip_prefix("began ")?.parse().ok()?;
        let outcome = Outcome::parse(lines.next()?.strip_prefix("outcome ")?)?;
        let problems = lines
            .map(|l| l.strip_prefix("problem ").map(str::to_string))
            .collect::<Option<Vec<_>>>()?;
        Some(ReloadStatus {
            generation,
            began,
            outcome,
            problems,
        })
    }
}

/// The runtime directory systemd made for the service (the first, if the unit names several).
pub fn runtime_dir() -> Option<PathBuf> {
    let dirs = std::env::var_os("RUNTIME_DIRECTORY")?;
    let first = dirs.to_str()?.split(':').next()?.to_string();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

/// Writes the status file.
#[derive(Debug)]
pub struct StatusFile {
    path: PathBuf,
}

impl StatusFile {
    pub fn in_dir(dir: &Path) -> StatusFile {
        StatusFile {
            path: dir.join(FILE_NAME),
        }
    }

    /// Writes `status` whole. A failure is logged: the reload itself is not undone by it.
    pub fn write(&self, status: &ReloadStatus) {
        let tmp = self.path.with_extension("tmp");
        use std::os::unix::fs::OpenOptionsExt;
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(status.render().as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the reload status file");
        }
    }
}

/// Why `brandgate reload` could not tell the outcome.
#[derive(Debug, thiserror::Error)]
pub enum ReloadRequestError {
    #[error(
        "no runtime directory: run under systemd (the unit's RuntimeDirectory=brandgate sets \
         $RUNTIME_DIRECTORY) or give --runtime-dir"
    )]
    NoRuntimeDirectory,
    #[error(
        "{}: {source}; is brandgate running with this runtime directory?",
        path.display()
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} does not hold a reload status", path.display())]
    Malformed { path: PathBuf },
    #[error("cannot signal process {pid}: {source}")]
    Signal { pid: i32, source: std::io::Error },
    #[error("no outcome within {0:?}: the daemon did not finish the reload (see its log)")]
    TimedOut(Duration),
}

fn read(path: &Path) -> Result<ReloadStatus, ReloadRequestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReloadRequestError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    ReloadStatus::parse(&text).ok_or_else(|| ReloadRequestError::Malformed {
        path: path.to_path_buf(),
    })
}

/// Sends SIGHUP to `pid` and waits, up to `timeout`, for the reload's outcome in `dir`.
pub async fn request_reload(
    pid: i32,
    dir: &Path,
    timeout: Duration,
) -> Result<ReloadStatus, ReloadRequestError> {
    let path = dir.join(FILE_NAME);
    let before = read(&path)?.generation;
    let sent = monotonic_millis();
    // SAFETY: kill(2) with a plain signal number touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(ReloadRequestError::Signal {
            pid,
            source: std::io::Error::last_os_error(),
        });
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // A read that fails midway (never: the file is renamed into place) is tried again.
        if let Ok(status) = read(&path)
            && status.generation > before
            && status.began >= sent
        {
            return Ok(status);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ReloadRequestError::TimedOut(timeout));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reads_back_as_written_one_problem_per_line() {
        let status = ReloadStatus {
            generation: 7,
            began: 123_456,
            outcome: Outcome::Refused,
            problems: vec![
                "push.apps[0].apns.token_key_file: cannot read /x/missing.p8".into(),
                "two\nlines".into(),
            ],
        };
        let back = ReloadStatus::parse(&status.render()).unwrap();
        assert_eq!(back.generation, 7);
        assert_eq!(back.began, 123_456);
        assert_eq!(back.outcome, Outcome::Refused);
        assert_eq!(back.problems[0], status.problems[0]);
        assert_eq!(back.problems[1], "two lines");
        assert_eq!(
            ReloadStatus::parse("generation x\nbegan 1\noutcome applied\n"),
            None
        );
        assert_eq!(
            ReloadStatus::parse("generation 1\nbegan 1\noutcome maybe\n"),
            None
        );
        assert_eq!(ReloadStatus::parse("generation 1\noutcome applied\n"), None);
    }
}
