//! Peak memory of the body phase under many concurrent uploads: 256 clients each POST
//! 1 MiB to a host whose policy needs the whole body (the `body` fixture, a 0.2.0
//! component), through an `egress-proxy run` process, once per `--inspect-memory`
//! budget. Reports the proxy's resident memory before, its peak (VmHWM) after, how
//! many uploads were decided and how many were told to retry (503), and whether the
//! peak stayed within the budget plus a fixed margin.
//!
//! Run: `cargo build --release -p egress-proxy && cargo bench -p egress-proxy-tests --bench inspect_memory`

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

use std::time::Duration;

use egress_proxy_tests::process::RunningProxy;
use egress_proxy_tests::upstream::{Upstream, UpstreamOptions};

/// Concurrent uploads.
const CLIENTS: usize = 256;
/// Bytes per upload.
const UPLOAD: usize = 1 << 20;
/// What the peak may exceed the budget by: TLS and HTTP buffers of 256 connections,
/// the policy instances, the allocator's slack.
const MARGIN_MIB: u64 = 48;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| --inspect-memory | RSS at start | peak RSS | peak − start | decided (200) | retry (503) | other | within budget + {MARGIN_MIB} MiB |"
    );
    println!("|--:|--:|--:|--:|--:|--:|--:|:-:|");
    for budget_mib in [64u64, 16] {
        runtime.block_on(run(budget_mib));
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

async fn run(budget_mib: u64) {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions {
        record_requests: false,
        extra_names: vec!["body.test".to_owned()],
        ..UpstreamOptions::default()
    })
    .await;
    let ca = upstream.ca().write_pem(dir.path());
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, "{}").unwrap();
    let connect_to = format!("body.test:443:{}", upstream.addr());
    let budget = (budget_mib << 20).to_string();
    let proxy = RunningProxy::start(
        &routes,
        &dir.path().join("state"),
        &[
            "--policy",
            egress_proxy_tests::BODY_WASM,
            "--connect-to",
            &connect_to,
            "--upstream-ca",
            ca.to_str().unwrap(),
            "--inspect-memory",
            &budget,
            "--max-connections",
            "4096",
            // No access log for 256 uploads; the start-up line the harness waits for stays.
            "--log",
            "warn,egress_proxy::cli=info",
        ],
        &[],
    );
    let pid = proxy.pid();
    let start_kib = status_kib(pid, "VmRSS:");
    let client = proxy
        .client_builder()
        .http1_only()
        .pool_max_idle_per_host(CLIENTS)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let body = bytes::Bytes::from(vec![0x80u8; UPLOAD]);
    let mut uploads = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let client = client.clone();
        let body = body.clone();
        uploads.spawn(async move {
            match client
                .post("https://body.test/echo")
                .body(body)
                .send()
                .await
            {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let _ = response.bytes().await;
                    status
                }
                Err(_) => 0,
            }
        });
    }
    let (mut ok, mut busy, mut other) = (0, 0, 0);
    while let Some(status) = uploads.join_next().await {
        match status.unwrap() {
            200 => ok += 1,
            503 => busy += 1,
            _ => other += 1,
        }
    }
    let peak_kib = status_kib(pid, "VmHWM:");
    let grown_mib = peak_kib.saturating_sub(start_kib) / 1024;
    let within = grown_mib <= budget_mib + MARGIN_MIB;
    println!(
        "| {budget_mib} MiB | {:.1} MiB | {:.1} MiB | {grown_mib} MiB | {ok} | {busy} | {other} | {} |",
        start_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        if within { "yes" } else { "**no**" }
    );
    drop(proxy);
    upstream.shutdown().await;
}
