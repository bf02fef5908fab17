//! Every command in README.md's `sh` blocks is exercised, so the README cannot drift
//! from the binary:
//!
//! - `egress-proxy …` and `cargo run … -p egress-proxy -- …` commands parse with the
//!   real command line; `policy` and `ca` commands run (from the repository root, or in
//!   a scratch directory for `ca`) and print what the README's `# …` lines after them
//!   show; `run` is started by the quick-start test below.
//! - The quick start runs as written: the proxy on `examples/routes.yaml`, then each
//!   `curl` line against it, comparing what curl prints with the README. The one
//!   request that needs the internet (`https://pypi.org/simple/`) is answered by a
//!   local upstream, which the proxy is pointed at with `--connect-to`.
//! - `cargo test --locked --workspace` is what `.ci/run` runs; the `cargo bench`
//!   target exists; the scripts exist and pass `bash -n`.
//!
//! In the README's `# …` output lines, `…` or `...` marks elided output, and text after
//! two spaces and a `(` is a remark, not output.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::Path;
use std::process::Command;

use egress_proxy::cli::Cli;
use egress_proxy_tests::process::RunningProxy;
use egress_proxy_tests::upstream::{Upstream, UpstreamOptions};
use egress_proxy_tests::{proxy_bin, repo_root};

/// One command of an `sh` block, with the output lines shown after it.
#[derive(Debug, Clone)]
struct Shown {
    words: Vec<String>,
    expected: Vec<String>,
    text: String,
}

fn readme() -> String {
    std::fs::read_to_string(repo_root().join("README.md")).unwrap()
}

/// The commands of every `sh` block, continuation lines joined, trailing remarks cut.
fn shown_commands() -> Vec<Shown> {
    let mut commands: Vec<Shown> = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in readme().lines() {
        if line.starts_with("```") {
            in_block = line == "```sh";
            continue;
        }
        let line = line.trim();
        if !in_block || line.is_empty() {
            continue;
        }
        if let Some(output) = line.strip_prefix('#') {
            let output = output.trim();
            let output = output.split("  (").next().unwrap_or_default().trim();
            if !output.is_empty() && !output.contains('…') && !output.contains("...") {
                commands
                    .last_mut()
                    .unwrap()
                    .expected
                    .push(output.to_owned());
            }
            continue;
        }
        if let Some(start) = line.strip_suffix('\\') {
            pending.push_str(start);
            continue;
        }
        pending.push_str(line);
        let text = std::mem::take(&mut pending);
        let text = text.split("  #").next().unwrap().trim().to_owned();
        commands.push(Shown {
            words: shell_words(&text),
            expected: Vec::new(),
            text,
        });
    }
    commands
}

/// Split like a POSIX shell for the quoting the README uses ('…' and "…").
fn shell_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The proxy's arguments if `shown` runs egress-proxy (`VAR=x egress-proxy …` or
/// `cargo run … -p egress-proxy -- …`), with a synopsis' `[optional]` parts dropped.
fn proxy_args(shown: &Shown) -> Option<Vec<String>> {
    let words: Vec<&str> = shown
        .words
        .iter()
        .map(String::as_str)
        .skip_while(|w| w.contains('=') && !w.starts_with('-'))
        .collect();
    let args: Vec<&str> = match words.as_slice() {
        ["egress-proxy", rest @ ..] => rest.to_vec(),
        ["cargo", "run", rest @ ..] => {
            let split = rest.iter().position(|w| *w == "--")?;
            assert!(
                rest[..split]
                    .windows(2)
                    .any(|w| w == ["-p", "egress-proxy"]),
                "{}",
                shown.text
            );
            rest[split + 1..].to_vec()
        }
        _ => return None,
    };
    let mut kept = Vec::new();
    let mut optional = false;
    for arg in args {
        if arg.starts_with('[') {
            optional = true;
        }
        if !optional {
            kept.push(arg.to_owned());
        }
        if arg.ends_with(']') {
            optional = false;
        }
    }
    Some(kept)
}

fn assert_shows(shown: &Shown, output: &str) {
    for line in &shown.expected {
        assert!(
            output.contains(line.as_str()),
            "`{}` did not print `{line}`:\n{output}",
            shown.text
        );
    }
}

fn run_proxy(args: &[String], dir: &Path) -> String {
    let out = Command::new(proxy_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("GH_PAT")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "egress-proxy {args:?}: {text}");
    text
}

#[test]
fn every_egress_proxy_command_parses_and_policy_and_ca_commands_print_what_is_shown() {
    let scratch = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for shown in shown_commands() {
        let Some(args) = proxy_args(&shown) else {
            continue;
        };
        // Placeholders (`<the .wasm>`) parse as the file they stand for.
        let args: Vec<String> = args
            .into_iter()
            .filter(|a| !a.ends_with('>'))
            .map(|a| {
                if a.starts_with('<') {
                    "policy.wasm".into()
                } else {
                    a
                }
            })
            .collect();
        let argv = std::iter::once("egress-proxy".to_owned()).chain(args.iter().cloned());
        if let Err(err) = <Cli as clap::Parser>::try_parse_from(argv) {
            panic!("`{}` does not parse: {err}", shown.text);
        }
        checked += 1;
        let runnable = !shown.text.contains('<');
        match args.first().map(String::as_str) {
            Some("policy") if runnable => {
                assert_shows(&shown, &run_proxy(&args, &repo_root()));
            }
            Some("ca") => assert_shows(&shown, &run_proxy(&args, scratch.path())),
            _ => {}
        }
    }
    assert!(checked >= 8, "only {checked} egress-proxy commands found");
}

#[test]
fn cargo_and_script_commands_are_what_ci_runs_or_exist() {
    let ci = std::fs::read_to_string(repo_root().join(".ci/run")).unwrap();
    let mut seen = 0;
    for shown in shown_commands() {
        let words: Vec<&str> = shown.words.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["cargo", "test", ..] => {
                assert!(
                    ci.contains(&shown.text),
                    "`{}` is not in .ci/run",
                    shown.text
                );
                seen += 1;
            }
            ["cargo", "bench", "-p", package, "--bench", bench] => {
                let dir = if *package == "egress-proxy" {
                    "host"
                } else {
                    "tests"
                };
                let manifest =
                    std::fs::read_to_string(repo_root().join(dir).join("Cargo.toml")).unwrap();
                assert!(
                    manifest.contains(&format!("name = \"{bench}\"")),
                    "no bench `{bench}` in {dir}/Cargo.toml"
                );
                seen += 1;
            }
            [script, ..] if script.starts_with("scripts/") => {
                let status = Command::new("bash")
                    .args(["-n", script])
                    .current_dir(repo_root())
                    .status()
                    .unwrap();
                assert!(status.success(), "`bash -n {script}` failed");
                seen += 1;
            }
            _ => {}
        }
    }
    assert!(seen >= 3, "only {seen} cargo/script commands found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_runs_as_written() {
    let commands = shown_commands();
    // The first `run` in the README is the quick start's.
    let start = commands
        .iter()
        .find_map(|c| proxy_args(c).filter(|a| a.first().is_some_and(|w| w == "run")))
        .expect("the quick start starts the proxy");
    assert_eq!(start[..2], ["run", "--routes"], "{start:?}");
    let routes = repo_root().join(&start[2]);
    let curls: Vec<&Shown> = commands
        .iter()
        .filter(|c| c.words.first().is_some_and(|w| w == "curl"))
        .collect();
    assert!(curls.len() >= 3, "{curls:?}");

    // The one allowed request needs the internet: a local stand-in answers it.
    let upstream = Upstream::start(UpstreamOptions {
        extra_names: vec!["pypi.org".to_owned()],
        ..UpstreamOptions::default()
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let upstream_ca = upstream.ca().write_pem(home.path());
    let connect_to = format!("pypi.org:443:{}", upstream.addr());
    // `run` puts its CA where the README's `ca=` line says, under $HOME.
    let ca_line = commands
        .iter()
        .find(|c| c.text.starts_with("ca="))
        .expect("the quick start names the CA file");
    let ca_path = ca_line.text["ca=".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .replacen('~', home.path().to_str().unwrap(), 1);
    let state = Path::new(&ca_path).parent().unwrap().parent().unwrap();
    let proxy = RunningProxy::start(
        &routes,
        state,
        &[
            "--upstream-ca",
            upstream_ca.to_str().unwrap(),
            "--connect-to",
            &connect_to,
        ],
        &[],
    );
    assert!(Path::new(&ca_path).exists(), "no CA at {ca_path}");

    for shown in curls {
        let args: Vec<String> = shown
            .words
            .iter()
            .skip(1)
            .map(|w| {
                w.replace("http://127.0.0.1:8080", &format!("http://{}", proxy.listen))
                    .replace("$ca", &ca_path)
            })
            .collect();
        let out = Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "20"])
            .args(&args)
            .output()
            .expect("curl is installed (.ci/run installs it)");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !shown.expected.is_empty(),
            "`{}` shows no output",
            shown.text
        );
        assert_shows(shown, &printed);
    }
    assert_eq!(upstream.seen()[0].path, "/simple/");
}

#[test]
fn every_flag_and_environment_variable_is_documented() {
    let readme = readme();
    let mut missing = Vec::new();
    for command in [
        "run",
        "policy check",
        "policy eval",
        "policy test",
        "policy replay",
        "policy compile",
        "ca create",
        "ca init",
        "ca print",
        "ca env",
    ] {
        let out = Command::new(proxy_bin())
            .args(command.split(' '))
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{command} --help");
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        for word in help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
            let flag = word.starts_with("--") && word.len() > 2 && word != "--help";
            let variable = word.starts_with("EGRESS_PROXY_");
            let entry = format!("{command}: {word}");
            if (flag || variable) && !mentions(&readme, word) && !missing.contains(&entry) {
                missing.push(entry);
            }
        }
    }
    assert!(missing.is_empty(), "not in the README: {missing:?}");
}

/// Whether `text` has `word` as a whole word (not a prefix of a longer flag or name).
fn mentions(text: &str, word: &str) -> bool {
    let part_of_word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(part_of_word) && !after.is_some_and(part_of_word)
    })
}
