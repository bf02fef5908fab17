//! Hot reload with real files: in-place writes, rename-into-place and a Kubernetes
//! ConfigMap update (done exactly as the kubelet does it) each reload once; bad
//! routes and bad modules keep the previous generation serving; SIGHUP reloads a real
//! `egress-proxy run` process.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use egress_proxy::policy::Decision;
use egress_proxy::reload::{self, Outcome, ReloadStatus, Reloader, Sources};
use egress_proxy_tests::{MapSecrets, WRONG_VERSION_WASM, get, test_runtime};
use tokio_util::sync::CancellationToken;

fn routes(host: &str) -> String {
    format!("routes:\n  - host: {host}\n")
}

/// A reloader on `sources`, watching and running until the token is cancelled.
struct Running {
    status: Arc<ReloadStatus>,
    policy: tokio::sync::watch::Receiver<Arc<egress_proxy::policy::Generation>>,
    stop: CancellationToken,
    _watcher: Box<dyn std::any::Any + Send>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn start(sources: Sources) -> Running {
    let (reloader, policy) =
        Reloader::start(test_runtime(), sources, Arc::new(MapSecrets::default())).unwrap();
    let status = reloader.status().clone();
    let (triggers, receiver) = tokio::sync::mpsc::unbounded_channel();
    let watcher = reload::watch_sources(reloader.sources(), triggers).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(reloader.run(receiver, stop.clone()));
    Running {
        status,
        policy,
        stop,
        _watcher: Box::new(watcher),
    }
}

fn allows(running: &Running, host: &str) -> bool {
    let generation = running.policy.borrow().clone();
    matches!(generation.decide(&get(host)), Decision::Allow { .. })
}

/// Wait until `count` reloads have been attempted (succeeded + failed); returns how
/// long it took. Then wait a little more and check no further reload happened.
async fn expect_reloads(status: &ReloadStatus, count: u64) -> Duration {
    let start = Instant::now();
    let attempts =
        || status.succeeded.load(Ordering::Relaxed) + status.failed.load(Ordering::Relaxed);
    while attempts() < count {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no reload after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = start.elapsed();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(attempts(), count, "one change, one reload");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_write_reloads_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, routes("a.example")).unwrap();
    let running = start(Sources {
        routes: path.clone(),
        policy: None,
    });
    assert!(allows(&running, "a.example") && !allows(&running, "b.example"));
    std::fs::write(&path, routes("b.example")).unwrap();
    let latency = expect_reloads(&running.status, 1).await;
    eprintln!("reload latency (write to new generation serving): {latency:?}");
    assert!(allows(&running, "b.example") && !allows(&running, "a.example"));
    assert_eq!(running.status.generation.load(Ordering::Relaxed), 2);
    // Rewriting the same bytes is not a change.
    std::fs::write(&path, routes("b.example")).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(running.status.generation.load(Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_into_place_reloads_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, routes("a.example")).unwrap();
    let running = start(Sources {
        routes: path.clone(),
        policy: None,
    });
    let tmp = dir.path().join(".routes.yaml.swp");
    std::fs::write(&tmp, routes("c.example")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    expect_reloads(&running.status, 1).await;
    assert!(allows(&running, "c.example"));
}

/// The kubelet's atomic writer: data in a timestamped directory, `..data` a symlink
/// to it, the visible file a symlink through `..data`; an update writes a new
/// directory, points `..data_tmp` at it and renames that over `..data`.
fn configmap_version(dir: &Path, version: &str, content: &str) -> PathBuf {
    let data = dir.join(version);
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("routes.yaml"), content).unwrap();
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_reloads_once() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path();
    configmap_version(
        mount,
        "..2026_11_30_10_00_00.000000001",
        &routes("a.example"),
    );
    std::os::unix::fs::symlink("..2026_11_30_10_00_00.000000001", mount.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/routes.yaml", mount.join("routes.yaml")).unwrap();
    let running = start(Sources {
        routes: mount.join("routes.yaml"),
        policy: None,
    });
    assert!(allows(&running, "a.example"));
    configmap_version(
        mount,
        "..2026_11_30_10_05_00.000000002",
        &routes("d.example"),
    );
    std::os::unix::fs::symlink("..2026_11_30_10_05_00.000000002", mount.join("..data_tmp"))
        .unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join("..2026_11_30_10_00_00.000000001")).unwrap();
    expect_reloads(&running.status, 1).await;
    assert!(allows(&running, "d.example") && !allows(&running, "a.example"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_routes_and_a_bad_module_keep_the_old_generation() {
    let dir = tempfile::tempdir().unwrap();
    let routes_path = dir.path().join("routes.yaml");
    std::fs::write(&routes_path, routes("a.example")).unwrap();
    let running = start(Sources {
        routes: routes_path.clone(),
        policy: None,
    });
    std::fs::write(&routes_path, "routes: [ {host: ").unwrap();
    expect_reloads(&running.status, 1).await;
    assert_eq!(running.status.failed.load(Ordering::Relaxed), 1);
    assert!(
        running
            .status
            .last_error()
            .unwrap()
            .contains("not valid YAML")
    );
    assert!(
        allows(&running, "a.example"),
        "the old generation still serves"
    );
    std::fs::write(&routes_path, "routes:\n  - host: a.example\n    bogus: 1\n").unwrap();
    expect_reloads(&running.status, 2).await;
    assert!(allows(&running, "a.example"));
    assert_eq!(running.status.generation.load(Ordering::Relaxed), 1);

    // Start-up with a missing file is an error naming it.
    let err = Reloader::start(
        test_runtime(),
        Sources {
            routes: dir.path().join("missing.yaml"),
            policy: None,
        },
        Arc::new(MapSecrets::default()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("missing.yaml"), "{err}");

    // A module file built against another WIT version, and one that vanished.
    let module = dir.path().join("policy.wasm");
    std::fs::write(dir.path().join("good.yaml"), routes("a.example")).unwrap();
    std::fs::copy(egress_proxy_tests::MISBEHAVE_WASM, &module).unwrap();
    let (mut reloader, policy) = Reloader::start(
        test_runtime(),
        Sources {
            routes: dir.path().join("good.yaml"),
            policy: Some(module.clone()),
        },
        Arc::new(MapSecrets::default()),
    )
    .unwrap();
    let before = policy.borrow().module().sha256().to_owned();
    std::fs::copy(WRONG_VERSION_WASM, &module).unwrap();
    let err = reloader.reload(false).await.unwrap_err();
    assert!(err.to_string().contains("egress:policy@0.2.0"), "{err}");
    std::fs::remove_file(&module).unwrap();
    let err = reloader.reload(true).await.unwrap_err();
    assert!(
        err.to_string().contains("cannot read policy module"),
        "{err}"
    );
    assert_eq!(policy.borrow().module().sha256(), before);
    assert_eq!(reloader.status().failed.load(Ordering::Relaxed), 2);
    std::fs::copy(egress_proxy_tests::MISBEHAVE_WASM, &module).unwrap();
    assert_eq!(reloader.reload(false).await.unwrap(), Outcome::Unchanged);
    assert_eq!(reloader.reload(true).await.unwrap(), Outcome::Reloaded(2));
    assert!(reloader.status().last_error().is_none());
}

#[test]
fn sighup_reloads_a_running_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let routes_path = dir.path().join("routes.yaml");
    std::fs::write(&routes_path, routes("a.example")).unwrap();
    let mut child = Command::new(egress_proxy_tests::proxy_bin())
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--routes")
        .arg(&routes_path)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut wait_for = |message: &str| -> serde_json::Value {
        for line in lines.by_ref() {
            let event: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            if event["message"] == message {
                return event;
            }
        }
        panic!("the proxy exited before logging `{message}`");
    };
    wait_for("egress-proxy listening");
    let kill = |signal: &str| {
        assert!(
            Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    kill("-HUP");
    let reloaded = wait_for("policy reloaded");
    assert_eq!(reloaded["generation"], 2);
    assert_eq!(reloaded["module_changed"], false);
    kill("-TERM");
    wait_for("stopped");
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_file_is_injected_without_a_restart() {
    use egress_proxy_tests::proxy::{TOKEN_NAME, standard_routes};
    use egress_proxy_tests::upstream::{Upstream, UpstreamOptions};
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let upstream_ca = upstream.ca().write_pem(dir.path());
    let routes_path = dir.path().join("routes.yaml");
    std::fs::write(&routes_path, standard_routes(upstream.port())).unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join(TOKEN_NAME), "first-token\n").unwrap();
    let state = dir.path().join("state");
    let mut child = Command::new(egress_proxy_tests::proxy_bin())
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--routes")
        .arg(&routes_path)
        .arg("--state-dir")
        .arg(&state)
        .arg("--upstream-ca")
        .arg(&upstream_ca)
        .arg("--secrets-dir")
        .arg(&secrets)
        .env_remove(TOKEN_NAME)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Keep draining the log (a closed pipe would fail the proxy's writes).
    let stderr = child.stderr.take().unwrap();
    let (listen_tx, listen_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line.unwrap()) else {
                continue;
            };
            if event["message"] == "egress-proxy listening" {
                let _ = listen_tx.send(event["listen"].as_str().unwrap().to_owned());
            }
        }
    });
    let child = KillOnDrop(child);
    let listen = listen_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("proxy listening");
    let pem = std::fs::read(state.join("ca/ca.crt")).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .proxy(reqwest::Proxy::all(format!("http://{listen}")).unwrap())
        .build()
        .unwrap();
    let fetch = || async {
        let response = client.get(upstream.url("/echo/s")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    };
    fetch().await;
    std::fs::write(secrets.join(TOKEN_NAME), "second-token").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fetch().await;
    let auth: Vec<String> = upstream
        .seen()
        .iter()
        .map(|s| s.header("authorization").unwrap_or("").to_owned())
        .collect();
    assert_eq!(auth, ["Bearer first-token", "Bearer second-token"]);
    drop(child);
}

/// Kills the child process when dropped, so a failing test leaves nothing running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
