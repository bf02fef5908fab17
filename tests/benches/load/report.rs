//! The results as markdown: one table of figures (medians over the repeats, proxy and
//! transparent figures with their ratio to direct, transparent throughput also against
//! the explicit proxy), one of the targets (explicit mode).

use crate::drive::{Load, Run};
use crate::host::Memory;

/// Keep-alive with many connections: proxy throughput at least this × direct.
const KEEP_ALIVE_RATIO_TARGET: f64 = 0.8;
/// A new connection per request: proxy throughput at least this × direct.
const NEW_CONNECTION_RATIO_TARGET: f64 = 0.9;
/// Proxy CPU per keep-alive request, µs, at most.
const CPU_PER_REQUEST_TARGET_US: f64 = 35.0;
/// Proxy peak RSS, MB (10⁶ bytes), at most.
const PEAK_RSS_TARGET_MB: f64 = 20.0;

/// One load, run directly, through the explicit proxy and through its transparent
/// listener.
#[derive(Debug)]
pub struct Scenario {
    pub load: Load,
    pub direct: Vec<Run>,
    pub proxy: Vec<Run>,
    /// The same load through the transparent listener (same proxy process).
    pub transparent: Vec<Run>,
    /// The proxy's memory once it listened and at the end of the scenario (a fresh
    /// process per scenario).
    pub memory: [Memory; 2],
    /// Warnings and errors the proxy logged.
    pub proxy_warnings: usize,
}

impl Scenario {
    fn name(&self) -> String {
        match self.load {
            Load::KeepAlive { connections } => format!("keep-alive, {connections} conn"),
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

    fn throughput_ratio(&self) -> f64 {
        median(&self.proxy, Run::rate) / median(&self.direct, Run::rate)
    }

    /// Proxy CPU per unit over every window of `runs`, µs.
    fn cpu_per_unit_us(runs: &[Run], ticks_per_second: u64) -> f64 {
        let ticks: u64 = runs.iter().filter_map(|run| run.proxy_ticks).sum();
        let units: u64 = runs.iter().map(|run| run.units).sum();
        ticks as f64 * 1e6 / ticks_per_second as f64 / units.max(1) as f64
    }

    fn peak_rss_mb(&self) -> f64 {
        megabytes(self.memory[1].peak_kib)
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
         repeats; CPU figures: totals over all windows. Core busy and other load (every \
         other process on the machine) are shares of one CPU. Proxy RSS: peak (VmHWM) over \
         the scenario; in brackets the peak once it listened (policy compiled), and the \
         RSS at the end."
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
    let direct_rate = median(&scenario.direct, Run::rate);
    let direct_p50 = median(&scenario.direct, |r| f64::from(r.latency_us(0.5)));
    let direct_p99 = median(&scenario.direct, |r| f64::from(r.latency_us(0.99)));
    println!(
        "| {} | direct | {} {unit}/s | {} | {} | – | – | {} | {} | – | {} |",
        scenario.name(),
        thousands(direct_rate),
        micros(direct_p50),
        micros(direct_p99),
        busy(&scenario.direct, |r| r.bench_ticks, ticks_per_second),
        busy(&scenario.direct, |r| r.other_ticks, ticks_per_second),
        errors(&scenario.direct),
    );
    let explicit_rate = median(&scenario.proxy, Run::rate);
    for (via, runs) in [
        ("proxy", &scenario.proxy),
        ("transparent", &scenario.transparent),
    ] {
        if runs.is_empty() {
            continue;
        }
        let rate = median(runs, Run::rate);
        let p50 = median(runs, |r| f64::from(r.latency_us(0.5)));
        let p99 = median(runs, |r| f64::from(r.latency_us(0.99)));
        // The transparent row also gives its throughput against explicit mode.
        let vs_explicit = if via == "transparent" {
            format!("; {:.2}× proxy", rate / explicit_rate)
        } else {
            String::new()
        };
        println!(
            "| | {via} | {} {unit}/s ({:.2}×{vs_explicit}) | {} ({:.2}×) | {} ({:.2}×) | {:.2} µs/{unit} | {} | {} | {} | {:.1} MB ({:.1}; {:.1}) | {} |",
            thousands(rate),
            rate / direct_rate,
            micros(p50),
            p50 / direct_p50,
            micros(p99),
            p99 / direct_p99,
            Scenario::cpu_per_unit_us(runs, ticks_per_second),
            busy(runs, |r| r.proxy_ticks.unwrap_or(0), ticks_per_second),
            busy(runs, |r| r.bench_ticks, ticks_per_second),
            busy(runs, |r| r.other_ticks, ticks_per_second),
            scenario.peak_rss_mb(),
            megabytes(scenario.memory[0].peak_kib),
            megabytes(scenario.memory[1].current_kib),
            errors(runs),
        );
    }
}

fn print_targets(scenarios: &[Scenario], ticks_per_second: u64) {
    println!("| target | measured | met |");
    println!("|---|--:|:-:|");
    let find = |wanted: fn(&Load) -> bool| scenarios.iter().find(|s| wanted(&s.load));
    let many = |load: &Load| matches!(load, Load::KeepAlive { connections } if *connections > 1);
    let fresh = |load: &Load| matches!(load, Load::NewConnection { .. });
    let keep_alive = |load: &Load| matches!(load, Load::KeepAlive { .. });
    if let Some(s) = find(many) {
        let ratio = s.throughput_ratio();
        target(
            &format!("{}: proxy ≥ {KEEP_ALIVE_RATIO_TARGET}× direct", s.name()),
            &format!("{ratio:.2}×"),
            ratio >= KEEP_ALIVE_RATIO_TARGET,
        );
    }
    if let Some(s) = find(fresh) {
        let ratio = s.throughput_ratio();
        target(
            &format!(
                "{}: proxy ≥ {NEW_CONNECTION_RATIO_TARGET}× direct",
                s.name()
            ),
            &format!("{ratio:.2}×"),
            ratio >= NEW_CONNECTION_RATIO_TARGET,
        );
    }
    for s in scenarios.iter().filter(|s| keep_alive(&s.load)) {
        let cpu = Scenario::cpu_per_unit_us(&s.proxy, ticks_per_second);
        // What one fully busy proxy core would serve, against what direct reached.
        let capacity = 1e6 / cpu;
        target(
            &format!(
                "{}: proxy CPU ≤ {CPU_PER_REQUEST_TARGET_US} µs/req",
                s.name()
            ),
            &format!(
                "{cpu:.1} µs (one core: {} req/s, {:.2}× direct)",
                thousands(capacity),
                capacity / median(&s.direct, Run::rate)
            ),
            cpu <= CPU_PER_REQUEST_TARGET_US,
        );
    }
    let peak = scenarios
        .iter()
        .map(Scenario::peak_rss_mb)
        .fold(0.0, f64::max);
    target(
        &format!("proxy peak RSS ≤ {PEAK_RSS_TARGET_MB} MB (any scenario)"),
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
