//! Logging: `tracing` to stderr, as text or JSON lines.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Install the global subscriber. `filter` uses `tracing` directive syntax
/// (e.g. `info`, `egress_proxy=debug`). Calling it twice is harmless.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal, never in files or log collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        // If stderr goes away (a log collector restarts), writes fail; the default
        // would report that with eprintln!, which panics on the same broken stderr
        // and would take the proxy down. Dropping log lines is the lesser harm.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if installed.is_ok() {
        // Access lines are written in the same shape without the generic field
        // machinery (the per-request cost; see proxy::access).
        crate::proxy::write_access_lines_directly(format);
    }
}
