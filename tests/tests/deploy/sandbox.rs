//! Running the proxy as a container would: container paths mapped into a temporary
//! directory that holds what the container would have mounted there.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use egress_proxy_tests::proxy_bin;
use serde_json::Value;

use crate::KUBERNETES;
use crate::files::{array, declared_secrets, object, port, str_at, volume, yaml};

/// How long the proxy may take to start (a cold policy compile in a debug build).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// What `run` logs once both listeners are bound and the policy is loaded.
const LISTENING: &str = "egress-proxy listening";

/// A temporary directory standing in for a container's file system: container paths
/// (`/etc/egress-proxy/...`) map to the same paths under it.
pub struct Sandbox {
    root: tempfile::TempDir,
    /// A CA made by `egress-proxy ca init`, for the Secrets and files that need one.
    ca: PathBuf,
}

impl Sandbox {
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let ca = root.path().join("generated-ca");
        let out = Command::new(proxy_bin())
            .args(["ca", "init", "--out"])
            .arg(&ca)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { root, ca }
    }

    /// Where container path `path` is in the sandbox.
    pub fn path(&self, path: &str) -> PathBuf {
        let relative = path
            .strip_prefix('/')
            .unwrap_or_else(|| panic!("{path} is not absolute"));
        self.root.path().join("fs").join(relative)
    }

    pub fn dir(&mut self, path: &str) {
        fs::create_dir_all(self.path(path)).unwrap();
    }

    pub fn text(&mut self, path: &str, text: &str) {
        let at = self.path(path);
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        fs::write(&at, text).unwrap();
        fs::set_permissions(&at, fs::Permissions::from_mode(0o600)).unwrap();
    }

    pub fn copy_dir(&mut self, from: &Path, to: &str) {
        self.dir(to);
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let target = format!("{to}/{name}");
            if entry.file_type().unwrap().is_dir() {
                self.copy_dir(&entry.path(), &target);
            } else {
                self.text(&target, &fs::read_to_string(entry.path()).unwrap());
            }
        }
    }

    /// The generated CA at the paths the proxy is told to read it from.
    pub fn ca(&mut self, cert: &str, key: &str) {
        for (path, file) in [(cert, "ca.crt"), (key, "ca.key")] {
            self.text(path, &fs::read_to_string(self.ca.join(file)).unwrap());
        }
    }

    /// What the kubelet would mount at `mount` of a container of `pod`: the routes
    /// ConfigMap of configmap.yaml, the CA Secret (the generated CA), the tokens
    /// Secret (a test token for each declared secret), an emptyDir.
    pub fn kubernetes_volume(&mut self, pod: &Value, mount: &Value) {
        let at = str_at(mount, "mountPath");
        let volume = volume(pod, str_at(mount, "name"));
        let data: BTreeMap<String, String> = if let Some(map) = volume.get("configMap") {
            let configmap = yaml(&format!("{KUBERNETES}/configmap.yaml"));
            assert_eq!(configmap["metadata"]["name"], map["name"]);
            object(&configmap["data"])
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect()
        } else if let Some(secret) = volume.get("secret") {
            match str_at(secret, "secretName") {
                "egress-proxy-ca" => ["ca.crt", "ca.key"]
                    .into_iter()
                    .map(|k| (k.to_owned(), fs::read_to_string(self.ca.join(k)).unwrap()))
                    .collect(),
                "egress-proxy-tokens" => declared_secrets()
                    .into_iter()
                    .map(|name| (name, "test-token".to_owned()))
                    .collect(),
                other => panic!("no test content for Secret {other}"),
            }
        } else {
            assert!(
                volume.get("emptyDir").is_some(),
                "unexpected volume {volume}"
            );
            BTreeMap::new()
        };
        self.dir(at);
        let items = volume
            .as_object()
            .unwrap()
            .values()
            .find_map(|source| source.get("items"));
        match items {
            Some(items) => {
                for item in array(items) {
                    let content = &data[str_at(item, "key")];
                    self.text(&format!("{at}/{}", str_at(item, "path")), content);
                }
            }
            None => {
                for (key, content) in &data {
                    self.text(&format!("{at}/{key}"), content);
                }
            }
        }
    }

    /// Run the proxy with `args` and `env` as a container would, with the container
    /// paths mapped into the sandbox and both listeners moved to `127.0.0.1:0`; wait
    /// until it listens, then stop it. Panics with its log if it exits first.
    pub fn start(&self, args: &[String], env: &[(String, String)]) {
        let mut command = Command::new(proxy_bin());
        command
            .args(self.map_args(args))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("HOME", self.root.path().join("home"))
            .env_remove("XDG_STATE_HOME");
        for (name, _) in std::env::vars() {
            if name.starts_with("EGRESS_PROXY_") {
                command.env_remove(name);
            }
        }
        for (name, value) in env {
            command.env(name, self.map_value(value));
        }
        let mut child = command.spawn().unwrap();
        let (lines, log) = channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut seen = Vec::new();
        let outcome = loop {
            match log.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(LISTENING) => break Ok(()),
                Ok(line) => seen.push(line),
                Err(RecvTimeoutError::Timeout) => break Err("did not start in time".to_owned()),
                Err(RecvTimeoutError::Disconnected) => {
                    break Err(format!("exited: {}", child.wait().unwrap()));
                }
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        if let Err(why) = outcome {
            panic!("egress-proxy {args:?} {why}; its log:\n{}", seen.join("\n"));
        }
    }

    /// `args` with every absolute path mapped into the sandbox and the listen
    /// addresses (`--listen`, `--admin-listen`, either form) replaced by
    /// `127.0.0.1:0`, after checking that they are socket addresses.
    fn map_args(&self, args: &[String]) -> Vec<String> {
        const LISTENERS: [&str; 4] = [
            "--listen",
            "--admin-listen",
            "--transparent-listen",
            "--dns-listen",
        ];
        let mut mapped = Vec::new();
        let mut listener_value = false;
        for arg in args {
            if std::mem::take(&mut listener_value) {
                let _ = port(arg);
                mapped.push("127.0.0.1:0".to_owned());
                continue;
            }
            match arg.split_once('=') {
                Some((flag, value)) if LISTENERS.contains(&flag) => {
                    let _ = port(value);
                    mapped.push(format!("{flag}=127.0.0.1:0"));
                }
                Some((flag, value)) if flag.starts_with("--") => {
                    mapped.push(format!("{flag}={}", self.map_value(value)));
                }
                _ => {
                    listener_value = LISTENERS.contains(&arg.as_str());
                    mapped.push(self.map_value(arg));
                }
            }
        }
        mapped
    }

    fn map_value(&self, value: &str) -> String {
        if value.starts_with('/') {
            self.path(value).display().to_string()
        } else {
            value.to_owned()
        }
    }
}
