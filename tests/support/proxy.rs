//! A real HTTP proxy for the egress tests: Debian's tinyproxy (tinyproxy-bin), started on a
//! loopback port with its own configuration and log, optionally asking for credentials or
//! tunnelling only to some ports, and stopped or started again on the same port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Proxy {
    pub addr: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

/// How the proxy behaves.
#[derive(Default, Clone)]
pub struct ProxyRules {
    /// `(user, password)` it asks for (HTTP Basic; 407 without them).
    pub credentials: Option<(String, String)>,
    /// Ports it tunnels to (others get 403); all when empty.
    pub connect_ports: Vec<u16>,
}

impl Proxy {
    /// Starts tinyproxy in `dir` (its configuration and log go there).
    pub async fn start(dir: &Path, rules: ProxyRules) -> Proxy {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = dir.join(format!("proxy-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{log}\"\nLogLevel Connect\n\
             MaxClients 100\nAllow 127.0.0.1\nDisableViaHeader Yes\n",
            log = dir.join("proxy.log").display()
        );
        if let Some((user, password)) = &rules.credentials {
            conf.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        for p in &rules.connect_ports {
            conf.push_str(&format!("ConnectPort {p}\n"));
        }
        std::fs::write(dir.join("tinyproxy.conf"), conf).unwrap();
        let mut proxy = Proxy {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            child: None,
        };
        proxy.run().await;
        proxy
    }

    /// `http://127.0.0.1:<port>`, for the config.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn run(&mut self) {
        let child = Command::new("tinyproxy")
            .args(["-d", "-c"])
            .arg(self.dir.join("tinyproxy.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run tinyproxy (tests/run.sh installs tinyproxy-bin)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "tinyproxy never listened on {}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the proxy (as a crash would) and waits until its port is closed.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.run().await;
    }

    /// Stops the proxy (SIGTERM: it writes out its log) and returns the destinations it was
    /// asked to tunnel to (`host:port` of each `CONNECT`), in order.
    pub async fn stop_and_tunnels(&mut self) -> Vec<String> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "tinyproxy did not stop on SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let log = std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| l.split("Request (file descriptor ").nth(1))
            .filter_map(|rest| rest.split("): CONNECT ").nth(1))
            .filter_map(|target| target.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }

    /// Stops the proxy and asserts that something went through it, and only to `authority`
    /// (`host:port`, see [`authority`]).
    pub async fn stop_expecting_tunnels_only_to(&mut self, authority: &str) {
        let tunnels = self.stop_and_tunnels().await;
        assert!(!tunnels.is_empty(), "nothing went through the proxy");
        assert!(
            tunnels.iter().all(|t| t == authority),
            "{tunnels:?} (expected only {authority})"
        );
    }
}

/// The `host:port` of an https URL: what a `CONNECT` to it names.
pub fn authority(url: &str) -> String {
    let rest = url.strip_prefix("https://").expect("an https URL");
    rest.split('/').next().unwrap_or(rest).to_string()
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
