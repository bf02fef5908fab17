//! `LOAD_SHADOW=1` (or `only`, skipping the main scenarios): the shadow policy's
//! overhead. For each scenario, two proxy
//! processes run side by side — one as usual, one with `--shadow-routes` (a copy of
//! the same routes, so the shadow decides every request and agrees) — and the same
//! load goes through each in alternating order for `LOAD_REPEATS` rounds. The table
//! gives the proxy CPU per request of each and their ratio (the target: within
//! 1.15× of no shadow).

use std::path::Path;

use egress_proxy_tests::upstream::Upstream;

use crate::Proxies;
use crate::drive::{self, Load, Run, Sample};
use crate::host::{self, Pinning};
use crate::proxy::ProxyProcess;
use crate::{INSPECTED_HOST, SMALL_RESPONSE, Settings, Via};

/// `1`: run the comparison after the main scenarios; `only`: run only it.
pub const SHADOW_VAR: &str = "LOAD_SHADOW";

/// Whether the comparison was asked for.
pub fn wanted() -> bool {
    std::env::var(SHADOW_VAR).is_ok_and(|v| v == "1" || v == "only")
}

/// Whether only the comparison was asked for.
pub fn only() -> bool {
    std::env::var(SHADOW_VAR).is_ok_and(|v| v == "only")
}

/// One scenario measured without and with a shadow.
pub struct Row {
    load: Load,
    plain: Vec<Run>,
    shadowed: Vec<Run>,
}

/// Run every scenario of `settings` through both proxies.
pub async fn compare(
    settings: &Settings,
    pinning: &Pinning,
    bin: &Path,
    upstream: &Upstream,
    dir: &Path,
    routes: &Path,
    upstream_ca: &Path,
) -> Vec<Row> {
    let shadow_routes = dir.join("shadow-routes.yaml");
    std::fs::copy(routes, &shadow_routes).expect("copy the routes for the shadow");
    let mut rows = Vec::new();
    for load in settings.loads() {
        let extra = match load {
            Load::InspectedPost { .. } => vec![
                "--policy".to_owned(),
                egress_proxy_tests::BODY_WASM.to_owned(),
                "--connect-to".to_owned(),
                format!("{INSPECTED_HOST}:{}:{}", upstream.port(), upstream.addr()),
            ],
            _ => Vec::new(),
        };
        let mut with_shadow = extra.clone();
        with_shadow.push("--shadow-routes".to_owned());
        with_shadow.push(shadow_routes.display().to_string());
        if let Load::InspectedPost { .. } = load {
            // The shadow runs the same module as the live policy.
            with_shadow.push("--shadow-policy".to_owned());
            with_shadow.push(egress_proxy_tests::BODY_WASM.to_owned());
        }
        let plain = Proxies::quiet(ProxyProcess::start(
            bin,
            pinning,
            &dir.join("plain"),
            routes,
            upstream_ca,
            false,
            &extra,
        ));
        let shadowed = Proxies::quiet(ProxyProcess::start(
            bin,
            pinning,
            &dir.join("shadowed"),
            routes,
            upstream_ca,
            false,
            &with_shadow,
        ));
        let url = match load {
            Load::Sse { events } => upstream.url(&format!("/sse?events={events}")),
            Load::InspectedPost { .. } => {
                format!("https://{INSPECTED_HOST}:{}/echo", upstream.port())
            }
            _ => upstream.url(SMALL_RESPONSE),
        };
        let mut row = Row {
            load,
            plain: Vec::new(),
            shadowed: Vec::new(),
        };
        for round in 0..settings.repeats {
            let mut order = [false, true];
            order.rotate_left(round % 2);
            for shadow in order {
                let proxies = if shadow { &shadowed } else { &plain };
                let proxy = proxies.quiet.as_ref().expect("the proxy");
                let client = crate::client(Via::Proxy, load, upstream, proxies);
                let sample = || Sample {
                    at: std::time::Instant::now(),
                    proxy_ticks: Some(proxy.cpu_ticks()),
                    bench_ticks: host::cpu_ticks("self"),
                    system_ticks: host::system_busy_ticks(),
                };
                let run =
                    drive::measure(load, &client, upstream, &url, settings.window, &sample).await;
                eprintln!(
                    "{} {} #{}: {:.0}/s, proxy {} ticks, others {} ticks",
                    load.id(),
                    if shadow { "shadow" } else { "no-shadow" },
                    round + 1,
                    run.rate(),
                    run.proxy_ticks.unwrap_or(0),
                    run.other_ticks
                );
                if shadow {
                    row.shadowed.push(run);
                } else {
                    row.plain.push(run);
                }
            }
        }
        for proxies in [plain, shadowed] {
            if let Some(proxy) = proxies.quiet {
                proxy.stop();
            }
        }
        rows.push(row);
    }
    rows
}

/// Proxy CPU per unit over every window of `runs`, µs.
fn cpu_per_unit_us(runs: &[Run], ticks_per_second: u64) -> f64 {
    let ticks: u64 = runs.iter().filter_map(|run| run.proxy_ticks).sum();
    let units: u64 = runs.iter().map(|run| run.units).sum();
    ticks as f64 * 1e6 / ticks_per_second as f64 / units.max(1) as f64
}

fn rate(runs: &[Run]) -> f64 {
    let units: u64 = runs.iter().map(|run| run.units).sum();
    let seconds: f64 = runs.iter().map(|run| run.elapsed.as_secs_f64()).sum();
    units as f64 / seconds.max(f64::EPSILON)
}

/// The markdown table.
pub fn print(rows: &[Row], ticks_per_second: u64) {
    println!();
    println!("### Shadow policy overhead (`{SHADOW_VAR}=1`)");
    println!();
    println!(
        "| scenario | req/s no shadow | req/s shadow | proxy CPU µs/req no shadow | proxy CPU µs/req shadow | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for row in rows {
        let plain = cpu_per_unit_us(&row.plain, ticks_per_second);
        let shadowed = cpu_per_unit_us(&row.shadowed, ticks_per_second);
        println!(
            "| {} | {:.0} | {:.0} | {plain:.1} | {shadowed:.1} | {:.3}× |",
            row.load.id(),
            rate(&row.plain),
            rate(&row.shadowed),
            shadowed / plain
        );
    }
}
