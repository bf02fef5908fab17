//! The `egress-proxy run` binary as a child process: started on `127.0.0.1:0` for both
//! listeners with JSON logs, its stderr collected line by line, killed when dropped.

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
    state: PathBuf,
}

impl RunningProxy {
    /// `egress-proxy run --routes ROUTES --state-dir STATE` on ephemeral ports,
    /// allowed to reach `127.0.0.1` (the test upstreams), JSON logs, plus `extra`
    /// arguments and `envs`; returns once it logged that it is listening.
    pub fn start(routes: &Path, state: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(crate::proxy_bin());
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
            state: state.to_owned(),
        };
        let listening = proxy.wait_for("egress-proxy listening");
        proxy.listen = listening["listen"].as_str().expect("listen").to_owned();
        proxy.admin = listening["admin"].as_str().expect("admin").to_owned();
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
