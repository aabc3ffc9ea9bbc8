//! Runs the real `brandgate serve` binary for a test: its own config and state directory, a
//! `NOTIFY_SOCKET` the test reads (READY=1 tells when it listens, and on which ports, through
//! its STATUS line), its log captured, and signals sent as systemd would.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;

/// Longest wait for the daemon to become ready (a debug build starting on a loaded machine).
const READY_LIMIT: Duration = Duration::from_secs(60);

/// The binary under test: this build's, or the one `TESTS_BRANDGATE_BINARY` names (the
/// packages' release binary, whose SAML libraries are built in: `.ci/run` runs the SAML tests
/// against it). Not `BRANDGATE_…`: the daemon reads those as configuration.
pub fn binary() -> PathBuf {
    std::env::var_os("TESTS_BRANDGATE_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_brandgate")))
}

pub struct Daemon {
    child: Child,
    pub public: SocketAddr,
    pub ops: SocketAddr,
    pub config_path: PathBuf,
    notify: UnixDatagram,
    /// Every notification received so far, in order, with when the test received it.
    notifications: Vec<String>,
    received_at: Vec<Instant>,
    log: Arc<Mutex<String>>,
    /// Set when the log pipe closed (the process is gone and every line was read).
    log_closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Daemon {
    pub async fn start(dir: &Path, config: &str) -> Daemon {
        Self::start_with_env(dir, config, &[]).await
    }

    pub async fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Daemon {
        let config_path = dir.join("brandgate.toml");
        std::fs::write(&config_path, config).unwrap();
        Self::start_with_config_file(dir, &config_path, env).await
    }

    /// Starts on a config file that is already there (such as the shipped one); `dir` holds
    /// the notification socket.
    pub async fn start_with_config_file(
        dir: &Path,
        config_path: &Path,
        env: &[(&str, &str)],
    ) -> Daemon {
        Self::start_under(dir, config_path, env, &[]).await
    }

    /// Starts as [`Daemon::start_with_env`] does, run by `wrapper` (a profiler such as
    /// `valgrind --tool=callgrind`, which runs the binary in its own process).
    pub async fn start_wrapped(
        dir: &Path,
        config: &str,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Daemon {
        let config_path = dir.join("brandgate.toml");
        std::fs::write(&config_path, config).unwrap();
        Self::start_under(dir, &config_path, env, wrapper).await
    }

    async fn start_under(
        dir: &Path,
        config_path: &Path,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Daemon {
        let config_path = config_path.to_path_buf();
        let socket_path = dir.join(format!("notify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket_path);
        let notify = UnixDatagram::bind(&socket_path).unwrap();
        let mut command = match wrapper.split_first() {
            None => Command::new(binary()),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary());
                c
            }
        };
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("NOTIFY_SOCKET", &socket_path)
            .env_remove("JOURNAL_STREAM")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start brandgate");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let log_closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let closed = log_closed.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("[brandgate] {line}");
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
            closed.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut daemon = Daemon {
            child,
            public: "0.0.0.0:0".parse().unwrap(),
            ops: "0.0.0.0:0".parse().unwrap(),
            config_path,
            notify,
            notifications: Vec::new(),
            received_at: Vec::new(),
            log,
            log_closed,
        };
        let ready = daemon.wait_notification("READY=1").await;
        let (public, ops) =
            parse_status(&ready).unwrap_or_else(|| panic!("no addresses in {ready:?}"));
        daemon.public = public;
        daemon.ops = ops;
        daemon
    }

    /// Waits for the next notification containing `needle` (after the ones already seen).
    pub async fn wait_notification(&mut self, needle: &str) -> String {
        self.wait_notification_timed(needle).await.1
    }

    /// [`Daemon::wait_notification`], also returning when the datagram was received (read as
    /// soon as it arrives while a wait is running; for checking the watchdog's rhythm).
    pub async fn wait_notification_timed(&mut self, needle: &str) -> (Instant, String) {
        let deadline = Instant::now() + READY_LIMIT;
        let mut buf = vec![0u8; 4096];
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "brandgate exited ({status}) waiting for {needle}; log:\n{}",
                    self.logs()
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no {needle} from brandgate within {READY_LIMIT:?}; log:\n{}",
                    self.logs()
                );
            }
            // Short slices so an early exit is noticed; the datagram itself ends the wait.
            let slice = left.min(Duration::from_millis(200));
            if let Ok(Ok(n)) = tokio::time::timeout(slice, self.notify.recv(&mut buf)).await {
                let at = Instant::now();
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.notifications.push(msg.clone());
                self.received_at.push(at);
                if msg.contains(needle) {
                    return (at, msg);
                }
            }
        }
    }

    pub fn notifications(&self) -> &[String] {
        &self.notifications
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Sends SIGHUP and waits for the reload to finish (RELOADING=1, then READY=1).
    pub async fn reload(&mut self) {
        self.signal(libc::SIGHUP);
        self.wait_notification("RELOADING=1").await;
        self.wait_notification("READY=1").await;
    }

    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(&self.config_path, config).unwrap();
    }

    /// Everything logged so far. The log is read by a thread, so a line written just now may
    /// not be here yet: to check that a line exists, use [`Daemon::wait_log`].
    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Stops the daemon (SIGTERM), waits for it to exit and for its last log line to be read,
    /// and returns the whole log: for checking what it never logged.
    pub async fn stop(&mut self) -> String {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "{}", describe(status));
        for _ in 0..1000 {
            if self.log_closed.load(std::sync::atomic::Ordering::SeqCst) {
                return self.logs();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the log pipe never closed");
    }

    /// Waits (bounded) until the log contains `needle`; returns the whole log.
    pub async fn wait_log(&self, needle: &str) -> String {
        for _ in 0..1000 {
            let logs = self.logs();
            if logs.contains(needle) {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the log never said {needle:?}:\n{}", self.logs());
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "brandgate did not exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until `n` pushes are being delivered, read from `/metrics`.
    pub async fn wait_in_flight(&self, n: usize) {
        let needle = format!("brandgate_push_in_flight {n}");
        let client = super::client::Client::http1("");
        for _ in 0..800 {
            if client
                .get(&self.ops_url("/metrics"))
                .await
                .body
                .contains(&needle)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("never saw {needle}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.public.port())
    }

    pub fn ops_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ops.port())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `STATUS=listening on https://A (ops http://B)`.
fn parse_status(msg: &str) -> Option<(SocketAddr, SocketAddr)> {
    let status = msg.lines().find_map(|l| l.strip_prefix("STATUS="))?;
    let public = status.split("https://").nth(1)?.split_whitespace().next()?;
    let ops = status.split("http://").nth(1)?.trim_end_matches(')');
    Some((public.parse().ok()?, ops.parse().ok()?))
}

/// Runs a brandgate command to completion (bounded) and returns its exit code, stdout, stderr.
pub async fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(binary());
    command.args(args).kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("brandgate command did not finish within 60s")
        .expect("run brandgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a brandgate command to completion (bounded) with `stdin` on its standard input, and
/// returns its exit code, stdout, stderr.
pub async fn run_with_stdin(args: &[&str], stdin: &str) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run brandgate");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("brandgate command did not finish within 60s")
        .expect("run brandgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The exit status's code, or the signal that ended it.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown".into(),
    }
}
