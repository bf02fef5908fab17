//! The peer under load: `bench/hudsucker` (a plain hudsucker MITM proxy with the
//! benchmark's policy), one worker thread, pinned like the proxy.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use egress_proxy_tests::proxy::{TOKEN_NAME, TOKEN_VALUE};

use crate::host::{self, Pinning};

/// Where `scripts/bench-load.sh` builds the peer (or `LOAD_HUDSUCKER_BIN`).
const BIN_VAR: &str = "LOAD_HUDSUCKER_BIN";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The peer's binary: `LOAD_HUDSUCKER_BIN`, else `target/hudsucker-peer/release/hudsucker-peer`.
pub fn binary() -> PathBuf {
    let bin = std::env::var_os(BIN_VAR).map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/hudsucker-peer/release/hudsucker-peer")
        },
        PathBuf::from,
    );
    assert!(
        bin.exists(),
        "no hudsucker peer at {}: build it with `cargo build --release --locked --manifest-path bench/hudsucker/Cargo.toml --target-dir target/hudsucker-peer` (scripts/bench-load.sh does), set {BIN_VAR}, or leave `hudsucker` out of LOAD_VIAS",
        bin.display()
    );
    bin
}

/// A running peer; killed when stopped or dropped.
#[derive(Debug)]
pub struct PeerProcess {
    child: Child,
    pid: String,
    addr: SocketAddr,
    ca_pem: Vec<u8>,
}

impl PeerProcess {
    /// Starts the peer, its CA written into `dir`, trusting `upstream_ca`.
    pub fn start(bin: &Path, pinning: &Pinning, dir: &Path, upstream_ca: &Path) -> Self {
        let mut child = pinning
            .command(bin)
            .args(["--listen", "127.0.0.1:0", "--worker-threads", "1"])
            .args(["--inject-host", "localhost", "--token-env", TOKEN_NAME])
            .arg("--ca-dir")
            .arg(dir)
            .arg("--upstream-ca")
            .arg(upstream_ca)
            .env(TOKEN_NAME, TOKEN_VALUE)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the hudsucker peer");
        let pid = child.id().to_string();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening ") {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("listen address"));
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = rx
            .recv_timeout(deadline - Instant::now())
            .expect("the hudsucker peer did not say where it listens");
        let ca_pem = std::fs::read(dir.join("ca.crt")).expect("the peer's CA");
        Self {
            child,
            pid,
            addr,
            ca_pem,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    pub fn cpu_ticks(&self) -> u64 {
        host::cpu_ticks(&self.pid)
    }

    pub fn memory(&self) -> host::Memory {
        host::memory(&self.pid)
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid]).status();
        let _ = self.child.wait();
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
