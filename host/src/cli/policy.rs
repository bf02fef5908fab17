//! `egress-proxy policy check | eval | test` (`replay` is in [`super::replay`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::coverage::Coverage;
use super::{OutputFormat, PolicyArgs, PolicyCommand};
use crate::cases::{CaseFile, evaluate, request_for};
use crate::policy::{Clock, Generation, ManualClock, Runtime, Verdict, precompile, sha256_hex};
use crate::routes::RoutesDocument;
use crate::secrets::{EnvSecrets, SecretSource};

pub(super) fn run(cmd: PolicyCommand) -> Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { policy } => check(&policy),
        PolicyCommand::Eval {
            policy,
            headers,
            client,
            data,
            data_file,
            method,
            url,
        } => {
            let body = match (data, data_file) {
                (Some(text), _) => text.into_bytes(),
                (None, Some(path)) => std::fs::read(&path)
                    .with_context(|| format!("cannot read --data-file {}", path.display()))?,
                (None, None) => Vec::new(),
            };
            eval(&policy, &headers, client, &body, &method, &url)
        }
        PolicyCommand::Test {
            policy,
            coverage,
            min_coverage,
            format,
            cases,
        } => test(
            &policy,
            &cases,
            &TestOptions {
                coverage: coverage || min_coverage.is_some(),
                min_coverage,
                format,
            },
        ),
        PolicyCommand::Replay {
            policy,
            write_cases,
            logs,
        } => super::replay::replay(&policy, &logs, write_cases.as_deref()),
        PolicyCommand::Compile { module, output } => compile(&module, output),
    }
}

/// `policy compile`: the artifact is written next to its destination and renamed
/// into place, so a proxy never sees half of it.
fn compile(module: &Path, output: Option<PathBuf>) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let bytes =
        std::fs::read(module).with_context(|| format!("cannot read {}", module.display()))?;
    if bytes.starts_with(b"\x7fELF") {
        bail!(
            "{} is already a precompiled artifact; give the policy component (.wasm)",
            module.display()
        );
    }
    let (artifact, contract) = precompile(&bytes, &module.display().to_string())?;
    let output = output.unwrap_or_else(|| module.with_extension("cwasm"));
    let file_name = output
        .file_name()
        .with_context(|| format!("--output {} names no file", output.display()))?;
    let mut partial = file_name.to_owned();
    partial.push(format!(".partial-{}", std::process::id()));
    let partial = output.with_file_name(partial);
    std::fs::write(&partial, &artifact)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    if let Err(err) = std::fs::rename(&partial, &output) {
        let _ = std::fs::remove_file(&partial);
        return Err(err).with_context(|| format!("cannot write {}", output.display()));
    }
    writeln!(
        std::io::stdout(),
        "compiled {} (sha256 {}, egress:policy@{contract}) to {} ({} bytes) in {} ms",
        module.display(),
        sha256_hex(&bytes),
        output.display(),
        artifact.len(),
        started.elapsed().as_millis()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// A loaded policy: what every subcommand starts from.
pub(super) struct Loaded {
    pub(super) generation: Generation,
    pub(super) routes: RoutesDocument,
    pub(super) runtime: Runtime,
}

/// Load the module and routes. The policy state runs on a frozen clock (returned), so
/// that case files decide the same way every time.
pub(super) fn load(args: &PolicyArgs) -> Result<(Loaded, Arc<ManualClock>)> {
    let routes = RoutesDocument::load(&args.routes)?;
    let clock = Arc::new(ManualClock::default());
    let mut config = args.limits.runtime_config();
    config.clock = Clock::Manual(clock.clone());
    let runtime = Runtime::new(config)?;
    let module = match &args.policy {
        Some(path) => runtime.load_file(path)?,
        None => runtime.load_builtin()?,
    };
    let generation = module
        .configure(&routes.json, Arc::new(EnvSecrets))
        .with_context(|| format!("{} with {}", module.origin(), routes.path.display()))?;
    Ok((
        Loaded {
            generation,
            routes,
            runtime,
        },
        clock,
    ))
}

fn check(args: &PolicyArgs) -> Result<ExitCode> {
    let (loaded, _) = load(args)?;
    let module = loaded.generation.module();
    let summary = loaded.generation.summary();
    writeln!(
        std::io::stdout(),
        "policy:  {} (sha256 {}, egress:policy@{})",
        module.origin(),
        module.sha256(),
        module.contract()
    )?;
    writeln!(
        std::io::stdout(),
        "routes:  {} (sha256 {})",
        loaded.routes.path.display(),
        loaded.routes.sha256
    )?;
    writeln!(std::io::stdout(), "compiled: {}", module.code().describe())?;
    writeln!(std::io::stdout(), "rules:   {}", summary.rules)?;
    if !summary.rule_ids.is_empty() {
        writeln!(
            std::io::stdout(),
            "rule ids: {}",
            summary.rule_ids.join(", ")
        )?;
    }
    let secrets: Vec<&str> = summary.secrets.iter().map(String::as_str).collect();
    writeln!(
        std::io::stdout(),
        "secrets: {}",
        if secrets.is_empty() {
            "(none)".to_owned()
        } else {
            secrets.join(", ")
        }
    )?;
    writeln!(std::io::stdout(), "ok")?;
    Ok(ExitCode::SUCCESS)
}

fn eval(
    args: &PolicyArgs,
    headers: &[String],
    client: std::net::SocketAddr,
    body: &[u8],
    method: &str,
    url: &str,
) -> Result<ExitCode> {
    let headers = headers
        .iter()
        .filter(|h| !h.trim().is_empty())
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>>>()?;
    let request = request_for(method, url, headers, client)?;
    let (loaded, _) = load(args)?;
    let verdict = evaluate(
        &loaded.generation,
        &request,
        body,
        args.limits.max_inspect_body,
    );
    writeln!(std::io::stdout(), "{}", verdict_json(&verdict, &EnvSecrets))?;
    Ok(ExitCode::SUCCESS)
}

fn parse_header(text: &str) -> Result<(String, String)> {
    let Some((name, value)) = text.split_once(':') else {
        bail!("header `{text}` must be `Name: value`");
    };
    let name = name.trim();
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        bail!("`{name}` is not a valid header name");
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// The verdict as JSON: secret *names* and templates, never values. For an inject,
/// `missing_secrets` lists declared secrets that are unset here (the proxy would deny
/// with "credential unavailable").
pub fn verdict_json(verdict: &Verdict, secrets: &dyn SecretSource) -> Value {
    let mut json = match verdict {
        Verdict::Allow { rule, .. } => json!({ "verdict": "allow", "rule": rule }),
        Verdict::Deny(d) => {
            let headers: serde_json::Map<String, Value> = d
                .headers
                .iter()
                .map(|(name, value)| {
                    let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    (name.to_string(), Value::String(text))
                })
                .collect();
            json!({
                "verdict": "deny",
                "status": d.status,
                "reason": d.reason,
                "rule": d.rule,
                "source": d.kind.as_str(),
                "response_headers": headers,
            })
        }
        Verdict::Inject { headers, rule, .. } => {
            let mut missing: Vec<&str> = headers
                .iter()
                .flat_map(|h| h.value.secrets())
                .filter(|name| secrets.get(name).is_none_or(|v| v.is_empty()))
                .collect();
            missing.sort_unstable();
            missing.dedup();
            let headers: Vec<Value> = headers
                .iter()
                .map(|h| {
                    json!({
                        "name": h.name.as_str(),
                        "value": h.value.to_string(),
                        "secrets": h.value.secrets().collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({
                "verdict": "inject",
                "rule": rule,
                "headers": headers,
                "missing_secrets": missing,
            })
        }
    };
    let annotations: serde_json::Map<String, Value> = verdict
        .annotations()
        .iter()
        .map(|a| (a.key.clone(), Value::String(a.value.clone())))
        .collect();
    json["annotations"] = Value::Object(annotations);
    json
}

/// How `policy test` reports.
struct TestOptions {
    coverage: bool,
    min_coverage: Option<f64>,
    format: OutputFormat,
}

fn test(
    args: &PolicyArgs,
    paths: &[std::path::PathBuf],
    options: &TestOptions,
) -> Result<ExitCode> {
    // Parse every file first: a broken file is an error, not a pile of failures.
    let files = paths
        .iter()
        .map(|p| CaseFile::load(p).map(|f| (p, f)))
        .collect::<Result<Vec<_>, _>>()?;
    let (loaded, clock) = load(args)?;
    let max_body = args.limits.max_inspect_body;
    let builtin = args.policy.is_none().then_some(loaded.routes.json.as_str());
    let mut coverage = Coverage::new(loaded.generation.summary(), builtin);
    let text = options.format == OutputFormat::Text;
    let mut out = std::io::stdout().lock();
    let mut results = Vec::new();
    let (mut passed, mut failed) = (0usize, 0usize);
    for (path, file) in &files {
        // Each file starts with empty rate-limit state.
        loaded.runtime.state().clear();
        for case in &file.cases {
            if let Some(after) = case.after {
                clock.advance(after);
            }
            let verdict = case.verdict(&loaded.generation, max_body);
            coverage.record(case.request().ok().as_ref(), &verdict);
            let outcome = case.expect.compare(&verdict);
            match &outcome {
                Ok(()) => {
                    passed += 1;
                    if text {
                        writeln!(out, "PASS {}: {}", path.display(), case.name)?;
                    }
                }
                Err(diff) => {
                    failed += 1;
                    if text {
                        writeln!(out, "FAIL {}: {}: {diff}", path.display(), case.name)?;
                    }
                }
            }
            if !text {
                results.push(json!({
                    "file": path.display().to_string(),
                    "name": case.name,
                    "passed": outcome.is_ok(),
                    "difference": outcome.err(),
                    "verdict": verdict_json(&verdict, &EnvSecrets),
                }));
            }
        }
    }
    let percent = coverage.percent();
    let below = options.min_coverage.filter(|min| percent < *min);
    if text {
        writeln!(out, "{passed} passed, {failed} failed")?;
        if options.coverage {
            for line in coverage.lines() {
                writeln!(out, "{line}")?;
            }
        }
        if let Some(min) = below {
            writeln!(out, "coverage {percent:.1}% is below --min-coverage {min}")?;
        }
    } else {
        let mut doc = json!({ "cases": results, "passed": passed, "failed": failed });
        if options.coverage {
            let mut report = coverage.json();
            report["min"] = json!(options.min_coverage);
            report["met"] = json!(below.is_none());
            doc["coverage"] = report;
        }
        writeln!(out, "{doc:#}")?;
    }
    Ok(if failed == 0 && below.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Re-exported for tests of the JSON shape.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Denial, DenyKind};

    #[test]
    fn deny_json_shape() {
        let v = Verdict::Deny(Denial::host(DenyKind::Policy, "nope", Some("r".into())));
        let j = verdict_json(&v, &EnvSecrets);
        assert_eq!(j["verdict"], "deny");
        assert_eq!(j["status"], 403);
        assert_eq!(j["reason"], "nope");
    }

    #[test]
    fn header_parsing() {
        assert_eq!(
            parse_header("Accept:  text/html ").unwrap(),
            ("Accept".into(), "text/html".into())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: x").is_err());
    }
}
