//! The proxy under load: an `egress-proxy run` child process with one worker thread,
//! on its own CPU when [`Pinning`] allows, logging only warnings (plus the line that
//! says where it listens) — or, `logged`, its access log too.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use egress_proxy_tests::proxy::{TOKEN_NAME, TOKEN_VALUE};

use crate::host::{self, Pinning};

/// Log filter: warnings, and the start-up line with the listen address.
const LOG_FILTER: &str = "warn,egress_proxy::cli::run=info";
/// The same with the access log: one JSON line per request.
const LOGGED_FILTER: &str = "warn,egress_proxy::cli::run=info,egress_proxy::access=info";
/// How long start-up (policy compilation included) may take.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long SIGTERM may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Log lines echoed to stderr; the rest are only counted.
const ECHOED_LINES: usize = 20;

/// A running proxy; killed if dropped without [`ProxyProcess::stop`].
#[derive(Debug)]
pub struct ProxyProcess {
    child: Child,
    pid: String,
    addr: SocketAddr,
    ca_pem: Vec<u8>,
    log: Option<JoinHandle<usize>>,
}

impl ProxyProcess {
    /// Starts `bin` with `routes`, `upstream_ca` and `extra` arguments, keeping its
    /// state in `dir`, with the access log if `logged`; returns once it listens.
    pub fn start(
        bin: &Path,
        pinning: &Pinning,
        dir: &Path,
        routes: &Path,
        upstream_ca: &Path,
        logged: bool,
        extra: &[String],
    ) -> Self {
        let filter = if logged { LOGGED_FILTER } else { LOG_FILTER };
        let state = dir.join("state");
        let mut child = pinning
            .command(bin)
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--allow-upstream-cidr",
                "127.0.0.1/32",
                "--admin-listen",
                "127.0.0.1:0",
                "--worker-threads",
                "1",
            ])
            .args(["--log", filter, "--log-format", "json"])
            .args(["--drain-timeout", "1s"])
            .arg("--routes")
            .arg(routes)
            .arg("--state-dir")
            .arg(&state)
            .arg("--upstream-ca")
            .arg(upstream_ca)
            .args(extra)
            .env(TOKEN_NAME, TOKEN_VALUE)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start egress-proxy");
        // `taskset` execs the proxy, so the child's PID is the proxy's.
        let pid = child.id().to_string();
        let (listen_tx, listen_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let log = std::thread::spawn(move || drain_log(BufReader::new(stderr), &listen_tx));
        let addr = match listen_rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("egress-proxy did not report its listen address (see its log above)");
            }
        };
        let ca_pem = std::fs::read(state.join("ca/ca.crt")).expect("the proxy's CA");
        Self {
            child,
            pid,
            addr,
            ca_pem,
            log: Some(log),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The CA certificate (PEM) clients must trust.
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// CPU time used so far, in ticks.
    pub fn cpu_ticks(&self) -> u64 {
        host::cpu_ticks(&self.pid)
    }

    /// Resident set sizes now.
    pub fn memory(&self) -> host::Memory {
        host::memory(&self.pid)
    }

    /// SIGTERM, then waits for the exit; returns how many warnings and errors it
    /// logged.
    pub fn stop(mut self) -> usize {
        let _ = Command::new("kill").args(["-TERM", &self.pid]).status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                eprintln!("egress-proxy ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.log
            .take()
            .map_or(0, |log| log.join().expect("log reader"))
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if self.log.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads the proxy's log until it ends: sends the listen address, echoes the first
/// lines above info (and any line that is not JSON) to stderr and counts them all.
/// Access lines are only skipped: reading them must cost this process little, it
/// shares its CPU with the load.
fn drain_log(log: impl BufRead, listen: &mpsc::Sender<SocketAddr>) -> usize {
    let mut others = 0;
    for line in log.lines() {
        let Ok(line) = line else { break };
        if line.contains(r#""level":"INFO""#) && line.contains(r#""target":"egress_proxy::access""#)
        {
            continue;
        }
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if event["message"] == "egress-proxy listening" {
            let addr = event["listen"].as_str().and_then(|a| a.parse().ok());
            let _ = listen.send(addr.expect("listen address in the start-up line"));
        } else if event["level"] != "INFO" {
            others += 1;
            if others <= ECHOED_LINES {
                eprintln!("proxy: {line}");
            }
        }
    }
    others
}

/// Writes the routes document into `dir`: `localhost` on `ports` (the HTTPS and the
/// plain upstream), the credential injected over both, a path allowlist.
pub fn write_routes(dir: &Path, ports: &[u16]) -> PathBuf {
    let path = dir.join("routes.yaml");
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let routes = format!(
        "routes:
  - host: localhost
    ports: [{}]
    path_allowlist: [/echo/, /sse, /bytes]
    inject_over_http: true
    auth:
      scheme: Bearer
      token_ref: {TOKEN_NAME}
",
        ports.join(", ")
    );
    std::fs::write(&path, routes).expect("write routes");
    path
}
