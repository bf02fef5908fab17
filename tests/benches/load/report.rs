//! The results as markdown: one table of figures (medians over the repeats; every
//! proxied path with its ratio to direct, and its CPU per request against the
//! hudsucker peer's), one of the targets.

use crate::Via;
use crate::drive::{Load, Run};
use crate::host::Memory;

/// Keep-alive with many connections: proxy throughput at least this × direct.
const KEEP_ALIVE_RATIO_TARGET: f64 = 0.8;
/// A new connection per request: proxy throughput at least this × direct (the
/// upstream connection is pooled).
const NEW_CONNECTION_RATIO_TARGET: f64 = 1.8;
/// Keep-alive proxy CPU per request at most this × the peer's, access log on / off.
const CPU_VS_PEER_LOGGED_TARGET: f64 = 0.9;
const CPU_VS_PEER_QUIET_TARGET: f64 = 0.75;
/// SSE: time to the first event at most this (µs), events/s at least this × direct.
const SSE_FIRST_EVENT_TARGET_US: f64 = 300.0;
const SSE_RATE_TARGET: f64 = 0.7;
/// egress-proxy's peak RSS, MB (10⁶ bytes), at most.
const PEAK_RSS_TARGET_MB: f64 = 20.0;

/// One path's runs in a scenario, and (not for direct) its process's memory once it
/// listened and at the end of the scenario (a fresh process per scenario).
#[derive(Debug)]
pub struct PathRuns {
    pub via: Via,
    pub runs: Vec<Run>,
    pub memory: Option<[Memory; 2]>,
}

impl PathRuns {
    pub fn new(via: Via) -> Self {
        Self {
            via,
            runs: Vec::new(),
            memory: None,
        }
    }

    fn rate(&self) -> f64 {
        median(&self.runs, Run::rate)
    }

    fn p50(&self) -> f64 {
        median(&self.runs, |r| f64::from(r.latency_us(0.5)))
    }

    /// Proxy CPU per unit over every window, µs.
    fn cpu_per_unit_us(&self, ticks_per_second: u64) -> f64 {
        let ticks: u64 = self.runs.iter().filter_map(|run| run.proxy_ticks).sum();
        let units: u64 = self.runs.iter().map(|run| run.units).sum();
        ticks as f64 * 1e6 / ticks_per_second as f64 / units.max(1) as f64
    }

    fn peak_rss_mb(&self) -> f64 {
        self.memory.map_or(f64::NAN, |m| megabytes(m[1].peak_kib))
    }
}

/// One load over every path.
#[derive(Debug)]
pub struct Scenario {
    pub load: Load,
    pub paths: Vec<PathRuns>,
    /// Warnings and errors egress-proxy logged.
    pub proxy_warnings: usize,
}

impl Scenario {
    fn name(&self) -> String {
        match self.load {
            Load::KeepAlive { connections } => format!("keep-alive, {connections} conn"),
            Load::PlainKeepAlive { connections } => {
                format!("plain HTTP keep-alive, {connections} conn")
            }
            Load::NewConnection { concurrency } => {
                format!("new connection per request, c={concurrency}")
            }
            Load::Sse { events } => format!("SSE, {events} events/stream"),
            Load::InspectedPost { connections, bytes } => format!(
                "POST {} KiB JSON, body inspected, {connections} conn",
                bytes / 1024
            ),
        }
    }

    fn unit(&self) -> &'static str {
        match self.load {
            Load::Sse { .. } => "event",
            _ => "req",
        }
    }

    fn path(&self, via: Via) -> Option<&PathRuns> {
        self.paths
            .iter()
            .find(|p| p.via == via && !p.runs.is_empty())
    }
}

/// Prints both tables to stdout.
pub fn print(scenarios: &[Scenario], ticks_per_second: u64, notes: &[String]) {
    println!();
    for note in notes {
        println!("- {note}");
    }
    println!();
    println!(
        "| scenario | via | throughput | p50 | p99 | proxy CPU | proxy core busy | bench core busy | other load | proxy peak RSS | errors |"
    );
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for scenario in scenarios {
        print_rows(scenario, ticks_per_second);
    }
    println!();
    println!(
        "p50/p99: request latency; for SSE, time to the first event. Medians over the \
         repeats, ratios to direct in brackets; proxy CPU: totals over all windows, in \
         brackets against the hudsucker peer's. Core busy and other load (every other \
         process on the machine) are shares of one CPU. Peak RSS: VmHWM over the \
         scenario; in brackets the peak once it listened (policy compiled), and the RSS \
         at the end. proxy = egress-proxy, access log off; proxy-log = access log on."
    );
    println!();
    print_targets(scenarios, ticks_per_second);
    let warnings: usize = scenarios.iter().map(|s| s.proxy_warnings).sum();
    if warnings > 0 {
        println!("\nThe proxy logged {warnings} warnings or errors (the first are above).");
    }
}

fn print_rows(scenario: &Scenario, ticks_per_second: u64) {
    let unit = scenario.unit();
    let Some(direct) = scenario.path(Via::Direct) else {
        return;
    };
    let direct_rate = direct.rate();
    let direct_p50 = direct.p50();
    let direct_p99 = median(&direct.runs, |r| f64::from(r.latency_us(0.99)));
    println!(
        "| {} | direct | {} {unit}/s | {} | {} | – | – | {} | {} | – | {} |",
        scenario.name(),
        thousands(direct_rate),
        micros(direct_p50),
        micros(direct_p99),
        busy(&direct.runs, |r| r.bench_ticks, ticks_per_second),
        busy(&direct.runs, |r| r.other_ticks, ticks_per_second),
        errors(&direct.runs),
    );
    let peer_cpu = scenario
        .path(Via::Hudsucker)
        .map(|p| p.cpu_per_unit_us(ticks_per_second));
    for path in scenario.paths.iter().filter(|p| p.via != Via::Direct) {
        if path.runs.is_empty() {
            continue;
        }
        let runs = &path.runs;
        let rate = path.rate();
        let p50 = path.p50();
        let p99 = median(runs, |r| f64::from(r.latency_us(0.99)));
        let cpu = path.cpu_per_unit_us(ticks_per_second);
        let vs_peer = match peer_cpu {
            Some(peer) if path.via != Via::Hudsucker => format!(" ({:.2}×)", cpu / peer),
            _ => String::new(),
        };
        let memory = path.memory.map_or_else(
            || "–".to_owned(),
            |m| {
                format!(
                    "{:.1} MB ({:.1}; {:.1})",
                    megabytes(m[1].peak_kib),
                    megabytes(m[0].peak_kib),
                    megabytes(m[1].current_kib)
                )
            },
        );
        println!(
            "| | {} | {} {unit}/s ({:.2}×) | {} ({:.2}×) | {} ({:.2}×) | {cpu:.2} µs/{unit}{vs_peer} | {} | {} | {} | {memory} | {} |",
            path.via.id(),
            thousands(rate),
            rate / direct_rate,
            micros(p50),
            p50 / direct_p50,
            micros(p99),
            p99 / direct_p99,
            busy(runs, |r| r.proxy_ticks.unwrap_or(0), ticks_per_second),
            busy(runs, |r| r.bench_ticks, ticks_per_second),
            busy(runs, |r| r.other_ticks, ticks_per_second),
            errors(runs),
        );
    }
}

fn print_targets(scenarios: &[Scenario], ticks_per_second: u64) {
    println!("| target | measured | met |");
    println!("|---|--:|:-:|");
    for s in scenarios {
        let (Some(direct), proxy) = (s.path(Via::Direct), s.path(Via::Proxy)) else {
            continue;
        };
        let peer = s.path(Via::Hudsucker);
        let keep_alive = matches!(s.load, Load::KeepAlive { .. } | Load::PlainKeepAlive { .. });
        if keep_alive && let Some(peer) = peer {
            let peer_cpu = peer.cpu_per_unit_us(ticks_per_second);
            for (via, limit) in [
                (Via::Logged, CPU_VS_PEER_LOGGED_TARGET),
                (Via::Proxy, CPU_VS_PEER_QUIET_TARGET),
            ] {
                if let Some(path) = s.path(via) {
                    let cpu = path.cpu_per_unit_us(ticks_per_second);
                    let ratio = cpu / peer_cpu;
                    target(
                        &format!("{}: {} CPU/req ≤ {limit}× hudsucker's", s.name(), via.id()),
                        &format!("{ratio:.2}× ({cpu:.1} vs {peer_cpu:.1} µs)"),
                        ratio <= limit,
                    );
                }
            }
        }
        let Some(proxy) = proxy else { continue };
        let ratio = proxy.rate() / direct.rate();
        match s.load {
            Load::KeepAlive { connections: 1 } => {
                if let Some(peer) = peer {
                    target(
                        &format!("{}: proxy p50 ≤ hudsucker's", s.name()),
                        &format!("{} vs {}", micros(proxy.p50()), micros(peer.p50())),
                        proxy.p50() <= peer.p50(),
                    );
                }
            }
            Load::KeepAlive { .. } => target(
                &format!("{}: proxy ≥ {KEEP_ALIVE_RATIO_TARGET}× direct", s.name()),
                &format!("{ratio:.2}×"),
                ratio >= KEEP_ALIVE_RATIO_TARGET,
            ),
            Load::NewConnection { .. } => target(
                &format!(
                    "{}: proxy ≥ {NEW_CONNECTION_RATIO_TARGET}× direct",
                    s.name()
                ),
                &format!("{ratio:.2}×"),
                ratio >= NEW_CONNECTION_RATIO_TARGET,
            ),
            Load::Sse { .. } => {
                target(
                    &format!(
                        "{}: proxy first event ≤ {SSE_FIRST_EVENT_TARGET_US} µs",
                        s.name()
                    ),
                    &micros(proxy.p50()),
                    proxy.p50() <= SSE_FIRST_EVENT_TARGET_US,
                );
                target(
                    &format!("{}: proxy events/s ≥ {SSE_RATE_TARGET}× direct", s.name()),
                    &format!("{ratio:.2}×"),
                    ratio >= SSE_RATE_TARGET,
                );
            }
            Load::PlainKeepAlive { .. } | Load::InspectedPost { .. } => {}
        }
    }
    let peak = scenarios
        .iter()
        .flat_map(|s| &s.paths)
        .filter(|p| matches!(p.via, Via::Proxy | Via::Logged | Via::Transparent))
        .map(PathRuns::peak_rss_mb)
        .filter(|mb| !mb.is_nan())
        .fold(0.0, f64::max);
    target(
        &format!("egress-proxy peak RSS ≤ {PEAK_RSS_TARGET_MB} MB (any scenario)"),
        &format!("{peak:.1} MB"),
        peak <= PEAK_RSS_TARGET_MB,
    );
}

fn target(what: &str, measured: &str, met: bool) {
    println!(
        "| {what} | {measured} | {} |",
        if met { "yes" } else { "**no**" }
    );
}

/// The median of `figure` over `runs`.
fn median(runs: &[Run], figure: impl Fn(&Run) -> f64) -> f64 {
    let mut values: Vec<f64> = runs.iter().map(figure).collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Share of one core `ticks` used over all `runs`' windows.
fn busy(runs: &[Run], ticks: impl Fn(&Run) -> u64, ticks_per_second: u64) -> String {
    let used: u64 = runs.iter().map(ticks).sum();
    let seconds: f64 = runs.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    format!(
        "{:.0} %",
        used as f64 / ticks_per_second as f64 / seconds * 100.0
    )
}

/// KiB → MB (10⁶ bytes).
fn megabytes(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn errors(runs: &[Run]) -> u64 {
    runs.iter().map(|r| r.errors).sum()
}

fn micros(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// `12345.6` → `12,346`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}
