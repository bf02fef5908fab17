//! Hot reload with real files: in-place writes, rename-into-place and a Kubernetes
//! ConfigMap update (done exactly as the kubelet does it) each reload once; bad
//! routes and bad modules keep the previous generation serving; SIGHUP reloads a real
//! `egress-proxy run` process.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use egress_proxy::policy::{Decision, Head};
use egress_proxy::reload::{self, Outcome, ReloadStatus, Reloader, Sources};
use egress_proxy_tests::process::RunningProxy;
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
    matches!(
        generation.decide(&get(host)),
        Head::Decided(Decision::Allow { .. })
    )
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
    let mut proxy = RunningProxy::start(&routes_path, &dir.path().join("state"), &[], &[]);
    proxy.signal("-HUP");
    let reloaded = proxy.wait_for("policy reloaded");
    assert_eq!(reloaded["generation"], 2);
    assert_eq!(reloaded["module_changed"], false);
    assert!(proxy.stop(), "SIGTERM exits 0");
    assert!(proxy.log_text().contains("\"message\":\"stopped\""));
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
    let proxy = RunningProxy::start(
        &routes_path,
        &dir.path().join("state"),
        &[
            "--upstream-ca",
            upstream_ca.to_str().unwrap(),
            "--secrets-dir",
            secrets.to_str().unwrap(),
        ],
        &[],
    );
    let client = proxy.client();
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_open_across_a_reload_completes() {
    use egress_proxy_tests::proxy::{standard_proxy, standard_routes};
    use egress_proxy_tests::upstream::{Upstream, UpstreamOptions};
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let client = proxy.client(true);
    let mut stream = client
        .get(upstream.url("/sse?events=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        &stream.chunk().await.unwrap().unwrap()[..],
        b"data: event 0\n\n"
    );
    // The new generation no longer routes /sse.
    proxy.reload(&standard_routes(upstream.port()).replace("/sse, ", ""));
    let denied = client
        .get(upstream.url("/sse?events=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403, "new requests see the new generation");
    upstream.release_sse(1);
    let mut rest = Vec::new();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(
        rest, b"data: event 1\n\n",
        "the open stream finished on its generation"
    );
}

/// Parse an RFC 3339 timestamp as logged by tracing-subscriber's JSON format
/// (`2026-11-30T12:00:00.123456Z`) into seconds since midnight (the test runs well
/// within a day; a midnight crossing is handled by the caller's tolerance failing
/// loudly rather than silently).
fn seconds_of_day(timestamp: &str) -> f64 {
    let time = timestamp.split('T').nth(1).unwrap().trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request_and_decides_with_a_live_generation() {
    use egress_proxy_tests::proxy::{TOKEN_NAME, TOKEN_VALUE, standard_routes};
    use egress_proxy_tests::upstream::{Upstream, UpstreamOptions};
    const RELOADS: usize = 20;
    const BAD_EVERY: usize = 4; // 5 of the 20 are bad
    const REQUESTS: usize = 10_000;
    const CONCURRENCY: usize = 16;

    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions {
        record_requests: false,
        ..UpstreamOptions::default()
    })
    .await;
    let upstream_ca = upstream.ca().write_pem(dir.path());
    let routes_path = dir.path().join("routes.yaml");
    let good = standard_routes(upstream.port());
    std::fs::write(&routes_path, &good).unwrap();
    let mut proxy = RunningProxy::start(
        &routes_path,
        &dir.path().join("state"),
        &["--upstream-ca", upstream_ca.to_str().unwrap()],
        &[(TOKEN_NAME, TOKEN_VALUE)],
    );
    let client = proxy.client_builder().http1_only().build().unwrap();
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(REQUESTS));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let client = client.clone();
        let url = upstream.url("/echo/load");
        let remaining = remaining.clone();
        workers.spawn(async move {
            let mut failures = Vec::new();
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                match client.get(&url).send().await {
                    Ok(response) if response.status() == 200 => {
                        response.bytes().await.unwrap();
                    }
                    Ok(response) => failures.push(format!("status {}", response.status())),
                    Err(err) => failures.push(format!("{err:?}")),
                }
            }
            failures
        });
    }
    // Reload while the load runs: every good version differs (a comment), every
    // BAD_EVERY-th write is invalid.
    let writer = {
        let routes_path = routes_path.clone();
        let good = good.clone();
        tokio::spawn(async move {
            for i in 0..RELOADS {
                tokio::time::sleep(Duration::from_millis(120)).await;
                let content = if i % BAD_EVERY == BAD_EVERY - 1 {
                    format!("routes: [ {{host: # broken {i}\n")
                } else {
                    format!("# version {i}\n{good}")
                };
                let tmp = routes_path.with_extension(format!("tmp{i}"));
                std::fs::write(&tmp, content).unwrap();
                std::fs::rename(&tmp, &routes_path).unwrap();
            }
        })
    };
    let mut failures = Vec::new();
    while let Some(result) = workers.join_next().await {
        failures.extend(result.unwrap());
    }
    writer.await.unwrap();
    // Let the last reload land, then stop the proxy and collect its log.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(proxy.stop(), "SIGTERM exits 0");
    let events = proxy.events();
    let denied: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| {
            e["target"] == "egress_proxy::access"
                && e["decision"] != "allow"
                && e["decision"] != "inject"
        })
        .collect();
    let warnings: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["level"] == "WARN" || e["level"] == "ERROR")
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}\nrefused in the access log: {denied:?}\nwarnings: {warnings:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    let mut published = std::collections::BTreeMap::new();
    published.insert(1u64, 0.0f64);
    let mut failed_reloads = 0;
    for event in &events {
        if event["message"] == "policy reloaded" {
            published.insert(
                event["generation"].as_u64().unwrap(),
                seconds_of_day(event["timestamp"].as_str().unwrap()),
            );
        }
        if event["message"] == "policy reload failed; the previous generation keeps serving" {
            failed_reloads += 1;
        }
    }
    let good_writes = RELOADS - RELOADS / BAD_EVERY;
    assert!(
        published.len() > good_writes / 2,
        "reloads happened during the load: {published:?}"
    );
    assert!(failed_reloads >= 1, "bad writes were refused");
    let access: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["target"] == "egress_proxy::access" && e["method"] == "GET")
        .collect();
    assert_eq!(access.len(), REQUESTS, "one access line per request");
    for line in access {
        let generation = line["generation"].as_u64().unwrap();
        let end = seconds_of_day(line["timestamp"].as_str().unwrap());
        // When the request reached the pipeline, before the policy was asked.
        let start = seconds_of_day(line["start"].as_str().unwrap());
        assert!(published.contains_key(&generation), "{line}");
        // The generation after the one used must not have been serving already when
        // the request started. Exact: a reload is logged after it is published, so
        // its logged time is never earlier than the swap.
        if let Some(next) = published.get(&(generation + 1)) {
            assert!(
                start <= *next,
                "request started at {start} after generation {} was published at {next}: {line}",
                generation + 1
            );
        }
        // And the one used was published before the request ended (the reload's log
        // line may trail the swap, and a fast request may be logged first: 50 ms).
        assert!(published[&generation] <= end + 0.05, "{line}");
    }
    eprintln!(
        "reload under load: {REQUESTS} requests, {} generations, {failed_reloads} failed reloads, 0 failures",
        published.len()
    );
}
