//! The `egress-proxy run` binary as a child process: started on `127.0.0.1:0` for both
//! listeners with JSON logs, its stderr collected line by line, killed when dropped.
//! [`RunningProxy::usage`] reads what it costs from `/proc`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use serde_json::Value;

/// How long start-up may take (a cold policy compile in a debug build included).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `egress-proxy run`.
#[derive(Debug)]
pub struct RunningProxy {
    child: Child,
    lines: Receiver<String>,
    /// Every stderr line read so far.
    pub log: Vec<String>,
    /// The proxy listener, `127.0.0.1:PORT`.
    pub listen: String,
    /// The admin listener, `127.0.0.1:PORT`.
    pub admin: String,
    /// The transparent listener (`--transparent-listen`), `-` when off.
    pub transparent: String,
    /// The DNS listener (`--dns-listen`), `-` when off.
    pub dns: String,
    state: PathBuf,
}

impl RunningProxy {
    /// `egress-proxy run --routes ROUTES --state-dir STATE` on ephemeral ports,
    /// allowed to reach `127.0.0.1` (the test upstreams), JSON logs, plus `extra`
    /// arguments and `envs`; returns once it logged that it is listening. The binary
    /// is this build's ([`crate::proxy_bin`]), or `$EGRESS_PROXY_BIN` if set (to
    /// measure another build with the same test).
    pub fn start(routes: &Path, state: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        let bin = std::env::var_os("EGRESS_PROXY_BIN").map_or_else(crate::proxy_bin, PathBuf::from);
        let mut command = Command::new(bin);
        command
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args([
                "--allow-upstream-cidr",
                "127.0.0.1/32",
                "--log-format",
                "json",
            ])
            .arg("--routes")
            .arg(routes)
            .arg("--state-dir")
            .arg(state)
            .args(extra)
            .stderr(Stdio::piped());
        for (name, value) in envs {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn egress-proxy run");
        let stderr = child.stderr.take().expect("stderr piped");
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut proxy = Self {
            child,
            lines,
            log: Vec::new(),
            listen: String::new(),
            admin: String::new(),
            transparent: String::new(),
            dns: String::new(),
            state: state.to_owned(),
        };
        let listening = proxy.wait_for("egress-proxy listening");
        proxy.listen = listening["listen"].as_str().expect("listen").to_owned();
        proxy.admin = listening["admin"].as_str().expect("admin").to_owned();
        proxy.transparent = listening["transparent"].as_str().unwrap_or("-").to_owned();
        proxy.dns = listening["dns"].as_str().unwrap_or("-").to_owned();
        proxy
    }

    /// Wait for a log line whose message is `message`; returns it as JSON.
    pub fn wait_for(&mut self, message: &str) -> Value {
        loop {
            let line = self
                .lines
                .recv_timeout(START_TIMEOUT)
                .unwrap_or_else(|_| panic!("no `{message}` in the log:\n{}", self.log.join("\n")));
            self.log.push(line.clone());
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && event["message"] == message
            {
                return event;
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send `signal` (`-HUP`, `-TERM`, ...) with `kill`.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal} failed");
    }

    /// What the process has used so far, from `/proc/PID` (Linux only).
    pub fn usage(&self) -> Usage {
        Usage::of(self.child.id())
    }

    /// The CA the proxy created in its state directory.
    pub fn ca_path(&self) -> PathBuf {
        self.state.join("ca/ca.crt")
    }

    /// A reqwest client builder using this proxy for every URL and trusting its CA
    /// only.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let pem = std::fs::read(self.ca_path()).expect("read the proxy's CA");
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"))
            .proxy(reqwest::Proxy::all(format!("http://{}", self.listen)).expect("proxy URL"))
    }

    /// [`Self::client_builder`], built.
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().expect("client")
    }

    /// Every log line read so far that is JSON.
    pub fn events(&mut self) -> Vec<Value> {
        self.log.extend(self.lines.try_iter());
        self.log
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// `SIGTERM`, wait for the exit, collect the rest of the log; returns whether it
    /// exited 0.
    pub fn stop(&mut self) -> bool {
        self.signal("-TERM");
        let status = self.child.wait().expect("wait for egress-proxy");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.log.push(line);
        }
        status.success()
    }

    /// The whole log read so far, as one text.
    pub fn log_text(&mut self) -> String {
        self.log.extend(self.lines.try_iter());
        self.log.join("\n")
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a process has used so far, read from `/proc/PID`. Compare two with
/// [`Usage::wake_ups_since`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Per thread (by id): its name and its context switches so far, voluntary and
    /// involuntary (`/proc/PID/task/TID/status`). A thread that is not running only
    /// gets one by being woken up.
    pub threads: BTreeMap<u32, (String, u64)>,
    /// User + system CPU time of all threads, dead ones included, in clock ticks
    /// (`utime` + `stime` in `/proc/PID/stat`; 10 ms each on Linux).
    pub cpu_ticks: u64,
    /// Resident memory in KiB (`VmRSS`).
    pub rss_kib: u64,
}

impl Usage {
    /// Read `/proc/PID`. Panics if the process is gone.
    pub fn of(pid: u32) -> Self {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let mut threads = BTreeMap::new();
        for task in std::fs::read_dir(proc.join("task")).expect("read /proc/PID/task") {
            let task = task.expect("a /proc/PID/task entry").path();
            // A thread may exit between the listing and the read: skip it.
            let (Ok(status), Ok(name)) = (
                std::fs::read_to_string(task.join("status")),
                std::fs::read_to_string(task.join("comm")),
            ) else {
                continue;
            };
            let Some(tid) = task.file_name().and_then(|n| n.to_str()?.parse().ok()) else {
                continue;
            };
            let switches = status_field(&status, "voluntary_ctxt_switches:")
                + status_field(&status, "nonvoluntary_ctxt_switches:");
            threads.insert(tid, (name.trim().to_owned(), switches));
        }
        let stat = std::fs::read_to_string(proc.join("stat")).expect("read /proc/PID/stat");
        // The name (field 2) may hold spaces: fields are counted after its `)`.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("`)` in /proc/PID/stat")
            .1
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15, i.e. 12 and 13 after the name.
        let tick = |i: usize| -> u64 { fields[i].parse().expect("a number in /proc/PID/stat") };
        let status = std::fs::read_to_string(proc.join("status")).expect("read /proc/PID/status");
        Self {
            threads,
            cpu_ticks: tick(11) + tick(12),
            rss_kib: status_field(&status, "VmRSS:"),
        }
    }

    /// Context switches since `earlier`, over every thread: the growth of those
    /// present both times, all of those started since, and one for each that ended
    /// (a thread that started and ended in between is not seen; its CPU time is, in
    /// [`Self::cpu_ticks`]).
    pub fn wake_ups_since(&self, earlier: &Self) -> u64 {
        let grown: u64 = self
            .threads
            .iter()
            .map(|(tid, (_, now))| {
                earlier
                    .threads
                    .get(tid)
                    .map_or(*now, |(_, then)| now.saturating_sub(*then))
            })
            .sum();
        let ended = earlier
            .threads
            .keys()
            .filter(|tid| !self.threads.contains_key(tid))
            .count();
        grown + ended as u64
    }

    /// Per thread name, the context switches since `earlier` (for failure messages).
    pub fn wake_ups_by_thread(&self, earlier: &Self) -> Vec<(String, u64)> {
        self.threads
            .iter()
            .map(|(tid, (name, now))| {
                let then = earlier.threads.get(tid).map_or(0, |(_, then)| *then);
                (name.clone(), now.saturating_sub(then))
            })
            .collect()
    }
}

/// The number after `name` in a `/proc` status file (0 if absent).
fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
