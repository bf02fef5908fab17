//! The command line. `main.rs` parses [`Cli`] and calls [`run`]; every flag can also
//! be set through the `EGRESS_PROXY_*` environment variable named in its help.

mod ca;
mod coverage;
mod forced;
mod policy;
mod replay;
mod run;
mod safe;

pub use ca::CaCommand;
pub use forced::{Bound, ForcedArgs};
pub use run::{DEFAULT_LISTEN, RunArgs};
pub use safe::SafeArgs;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::policy::{
    DEFAULT_INSTANCE_SLOTS, DEFAULT_MAX_IDLE, DEFAULT_MEMORY_LIMIT, RuntimeConfig,
};
use crate::telemetry::{self, LogFormat};

/// An egress proxy for sandboxed AI agents whose policy is a WebAssembly component.
#[derive(Debug, Parser)]
#[command(name = "egress-proxy", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "EGRESS_PROXY_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: LogFormat,
    /// Log filter, in `tracing` directive syntax (e.g. `info`, `egress_proxy=debug`).
    /// Default: `info` for `run` (the access log is at info), `warn` otherwise.
    #[arg(long, global = true, env = "EGRESS_PROXY_LOG")]
    pub log: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy: intercept, decide, forward. Stops on SIGTERM/SIGINT after
    /// draining in-flight requests.
    Run(Box<RunArgs>),
    /// Check, evaluate and test policies without running the proxy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Create the proxy's CA and print what an agent needs to trust it.
    #[command(subcommand)]
    Ca(CaCommand),
}

/// `egress-proxy policy …`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Load the module, configure it with the routes, and print a summary.
    /// Exit 0 if both are usable, 1 with the reason otherwise.
    Check {
        /// Module and routes.
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Decide one request and print the verdict as a JSON object.
    Eval {
        /// Module and routes.
        #[command(flatten)]
        policy: PolicyArgs,
        /// A request header, `Name: value` (repeatable).
        #[arg(
            short = 'H',
            long = "header",
            env = "EGRESS_PROXY_EVAL_HEADERS",
            value_delimiter = '\n'
        )]
        headers: Vec<String>,
        /// The client address the policy sees (`ip:port`).
        #[arg(long, env = "EGRESS_PROXY_EVAL_CLIENT", default_value_t = crate::cases::LOCAL_CLIENT)]
        client: std::net::SocketAddr,
        /// The request body, as text (for a policy that reads bodies).
        #[arg(long, conflicts_with = "data_file")]
        data: Option<String>,
        /// The request body, from a file (sent as is: give `-H 'content-encoding: gzip'`
        /// for a gzip file).
        #[arg(long)]
        data_file: Option<PathBuf>,
        /// Request method (`CONNECT` decides a tunnel).
        method: String,
        /// Absolute URL, or `host:port` for `CONNECT`.
        url: String,
    },
    /// Compile a policy component to native code for this binary and this machine's
    /// CPU (a `.cwasm` artifact), e.g. in a container build; `run --policy` and the
    /// other `policy` commands load the artifact without compiling. Exit 1 with the
    /// reason if the module is not a policy component.
    Compile {
        /// The policy component (`.wasm`).
        module: PathBuf,
        /// Where to write the artifact (replaced atomically). Default: MODULE with
        /// the extension `.cwasm`.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// Run case files of requests and expected verdicts. Prints a line per case and
    /// `N passed, N failed`; exit 1 if any case failed or a file is invalid.
    Test {
        /// Module and routes.
        #[command(flatten)]
        policy: PolicyArgs,
        /// After the cases, list the rules (and, for the built-in policy, the
        /// allowlist entries, listed ports and git/GraphQL/MCP rules) no case reached.
        #[arg(long)]
        coverage: bool,
        /// Fail (exit 1) when coverage is below this percentage (0–100); implies
        /// `--coverage`.
        #[arg(long, value_name = "PCT", value_parser = coverage::parse_percent)]
        min_coverage: Option<f64>,
        /// Output: `text` (a line per case) or `json` (one JSON document).
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
        /// Case files (YAML or JSON).
        #[arg(required = true)]
        cases: Vec<PathBuf>,
    },
    /// Re-decide the requests recorded in JSON access logs (`run --log-format json`)
    /// and report every line the policy decides differently; exit 1 on any
    /// difference.
    Replay {
        /// Module and routes.
        #[command(flatten)]
        policy: PolicyArgs,
        /// Also write the recorded traffic as a `policy test` case file (one case per
        /// distinct request, expecting the recorded decision).
        #[arg(long, value_name = "FILE")]
        write_cases: Option<PathBuf>,
        /// Access log files (JSON lines; other lines are skipped).
        #[arg(required = true)]
        logs: Vec<PathBuf>,
    },
}

/// How `policy test` prints its results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A line per case, a summary line.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

/// Which policy module and routes to use, and the runtime's limits.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Routes file (YAML or JSON).
    #[arg(long, env = "EGRESS_PROXY_ROUTES")]
    pub routes: PathBuf,
    /// Policy component (`.wasm`); default: the routes policy built into the binary.
    #[arg(long, env = "EGRESS_PROXY_POLICY")]
    pub policy: Option<PathBuf>,
    /// Runtime limits.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Limits on the policy runtime.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Bound on one decide() call (e.g. `100ms`); a call over it is denied.
    /// Default: `policy::DEFAULT_DECIDE_TIMEOUT`.
    #[arg(long, env = "EGRESS_PROXY_POLICY_TIMEOUT", value_parser = humantime::parse_duration,
          default_value = "100ms")]
    pub policy_timeout: Duration,
    /// Bound on one decide-body() call (e.g. `250ms`); a call over it is denied.
    #[arg(long, env = "EGRESS_PROXY_POLICY_BODY_TIMEOUT", value_parser = humantime::parse_duration,
          default_value = "250ms")]
    pub policy_body_timeout: Duration,
    /// Most bytes of a request body held for one body decision, however many the
    /// policy asks for (e.g. `1MiB` written as bytes: 1048576). A body the policy needs
    /// whole that is longer is refused with 413.
    #[arg(long, env = "EGRESS_PROXY_MAX_INSPECT_BODY", default_value_t = crate::inspect::DEFAULT_MAX_INSPECT_BODY)]
    pub max_inspect_body: u64,
    /// Bound on one configure() call (e.g. `10s`).
    #[arg(long, env = "EGRESS_PROXY_POLICY_CONFIGURE_TIMEOUT", value_parser = humantime::parse_duration,
          default_value = "10s")]
    pub policy_configure_timeout: Duration,
    /// Linear memory limit per policy instance, in MiB.
    #[arg(long, env = "EGRESS_PROXY_POLICY_MEMORY_MIB", default_value_t = (DEFAULT_MEMORY_LIMIT >> 20) as u64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub policy_memory_mib: u64,
    /// Policy instance slots reserved in the pooling allocator (all generations).
    #[arg(long, env = "EGRESS_PROXY_POLICY_INSTANCE_SLOTS", default_value_t = DEFAULT_INSTANCE_SLOTS,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub policy_instance_slots: u32,
    /// Idle configured instances kept per generation for reuse.
    #[arg(long, env = "EGRESS_PROXY_POLICY_IDLE_INSTANCES", default_value_t = DEFAULT_MAX_IDLE)]
    pub policy_idle_instances: usize,
}

impl LimitArgs {
    /// The runtime configuration these flags describe.
    pub fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            decide_timeout: self.policy_timeout,
            decide_body_timeout: self.policy_body_timeout,
            configure_timeout: self.policy_configure_timeout,
            // At most 4096 MiB (the parser's range), so this fits in usize on 64-bit.
            memory_limit: usize::try_from(self.policy_memory_mib << 20).unwrap_or(usize::MAX),
            instance_slots: self.policy_instance_slots,
            max_idle_instances: self.policy_idle_instances.max(1),
            ..RuntimeConfig::default()
        }
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let default_filter = match cli.command {
        Command::Run(_) => "info",
        _ => "warn",
    };
    telemetry::init(cli.log_format, cli.log.as_deref().unwrap_or(default_filter));
    let result = match cli.command {
        Command::Run(args) => run::run(&args),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Ca(cmd) => ca::run(cmd),
    };
    // Access lines still buffered (a request finished as the proxy stopped or failed).
    crate::proxy::flush_access_lines();
    match result {
        Ok(code) => code,
        // The reader went away (`egress-proxy policy test | head -1`): stop quietly,
        // with the status a shell reports for a process ended by SIGPIPE.
        Err(err) if is_broken_pipe(&err) => ExitCode::from(141),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(args: &[&str]) -> RuntimeConfig {
        let argv = [
            &["egress-proxy", "policy", "check", "--routes", "r.yaml"],
            args,
        ]
        .concat();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Policy(PolicyCommand::Check { policy }) => policy.limits.runtime_config(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flag_defaults_are_the_runtime_defaults() {
        let from_flags = limits(&[]);
        let defaults = RuntimeConfig::default();
        assert_eq!(from_flags.decide_timeout, defaults.decide_timeout);
        assert_eq!(from_flags.decide_body_timeout, defaults.decide_body_timeout);
        assert_eq!(from_flags.configure_timeout, defaults.configure_timeout);
        assert_eq!(from_flags.memory_limit, defaults.memory_limit);
        assert_eq!(from_flags.instance_slots, defaults.instance_slots);
        assert_eq!(from_flags.max_idle_instances, defaults.max_idle_instances);
    }

    #[test]
    fn limits_parse_units() {
        let config = limits(&["--policy-timeout", "250ms", "--policy-memory-mib", "16"]);
        assert_eq!(config.decide_timeout, Duration::from_millis(250));
        assert_eq!(config.memory_limit, 16 << 20);
        let parses = |extra: &[&str]| {
            let argv = [&["egress-proxy", "policy", "check", "--routes", "r"], extra].concat();
            Cli::try_parse_from(argv).is_ok()
        };
        assert!(!parses(&["--policy-timeout", "soon"]));
        assert!(!parses(&["--policy-memory-mib", "0"]));
    }
}
