//! The deployment kit against the binary: the commands that `Dockerfile.egress-proxy`,
//! `deploy/compose.yaml` and `deploy/kubernetes/` give the proxy start it (with their
//! container paths mapped into a temporary directory holding what each mounts there),
//! the `EGRESS_PROXY_*` variables they name exist, the Dockerfile copies files that
//! exist, and the agent gets what `egress-proxy ca env` prints and never the CA key or
//! the tokens. Linting and schema validation need tools from PyPI and are in
//! `scripts/ci-deploy.sh`; no container engine or cluster is needed for either. Building
//! and running the image itself is `scripts/ci-container.sh` (a Docker engine, root).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod files;
mod forced;
mod kubernetes;
mod sandbox;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::Command;

use egress_proxy_tests::{proxy_bin, repo_root};

use files::{
    array, bases, declared_secrets, deploy_dir, dockerfile, exec_form, flag_value, ignores,
    mount_of, object, port, read, runtime_stage, str_at, strings, yaml,
};
use sandbox::Sandbox;

const DOCKERFILE: &str = "Dockerfile.egress-proxy";
const CI_CONTAINER: &str = "scripts/ci-container.sh";
const COMPOSE: &str = "deploy/compose.yaml";
const KUBERNETES: &str = "deploy/kubernetes";
const ROUTES: &str = "deploy/policy/routes.yaml";

// ---------------------------------------------------------------------------------
// Dockerfile.egress-proxy

#[test]
fn the_image_runs_the_proxy_with_its_default_command() {
    let instructions = dockerfile();
    let runtime = runtime_stage(&instructions);
    let command = [
        exec_form(&runtime, "ENTRYPOINT"),
        exec_form(&runtime, "CMD"),
    ]
    .concat();
    let (binary, args) = command.split_first().expect("an ENTRYPOINT");
    assert_eq!(binary, "/usr/local/bin/egress-proxy");
    assert!(
        runtime.iter().any(|i| i.keyword == "COPY"
            && i.args.starts_with("--from=")
            && i.args.ends_with(" /usr/local/bin/egress-proxy")),
        "the runtime stage must copy the binary to {binary}"
    );
    let routes = read(ROUTES);
    let mut sandbox = Sandbox::new();
    sandbox.text(&flag_value(args, "--routes"), &routes);
    sandbox.ca(
        &flag_value(args, "--ca-cert"),
        &flag_value(args, "--ca-key"),
    );
    sandbox.start(args, &[]);
}

#[test]
fn the_builder_uses_the_pinned_toolchain_on_the_runtime_s_debian() {
    let channel = read("rust-toolchain.toml")
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("channel = ")
                .map(|v| v.trim_matches('"').to_owned())
        })
        .expect("a channel in rust-toolchain.toml");
    let stages: Vec<(String, String)> = bases(&dockerfile())
        .into_iter()
        .map(|b| (b.stage, b.default))
        .collect();
    assert_eq!(stages.len(), 2, "a builder and a runtime stage: {stages:?}");
    assert_eq!(
        stages[0],
        ("builder".to_owned(), format!("rust:{channel}-bookworm"))
    );
    // bookworm is Debian 12: the binary must not need a newer glibc than the runtime has.
    assert_eq!(stages[1].0, "runtime");
    assert!(
        stages[1].1.starts_with("gcr.io/distroless/cc-debian12:"),
        "{}",
        stages[1].1
    );
}

#[test]
fn ci_builds_the_dockerfile_with_stand_in_bases_and_no_frontend_image() {
    // A `# syntax=` directive makes BuildKit pull a frontend image before anything
    // else, which fails where no registry is reachable (CI).
    for line in read(DOCKERFILE).lines() {
        let directive = line
            .strip_prefix('#')
            .and_then(|comment| comment.split_once('='))
            .map(|(key, _)| key.trim().to_ascii_lowercase());
        assert_ne!(
            directive.as_deref(),
            Some("syntax"),
            "{DOCKERFILE} must not name a frontend image: {line}"
        );
    }
    // scripts/ci-container.sh replaces every base image through its build argument.
    let script = read(CI_CONTAINER);
    for base in bases(&dockerfile()) {
        let passed = format!("--build-arg \"{}=", base.arg);
        assert!(
            script.contains(&passed),
            "{CI_CONTAINER} must pass {passed}… (the {} stage's base)",
            base.stage
        );
    }
    assert!(
        script.contains("-f Dockerfile.egress-proxy"),
        "{CI_CONTAINER} must build {DOCKERFILE}"
    );
    assert!(
        read(".ci/run").contains("bash scripts/ci-container.sh"),
        ".ci/run must run {CI_CONTAINER}"
    );
}

#[test]
fn the_dockerfile_copies_files_that_exist_and_every_workspace_member() {
    let root = repo_root();
    let ignored: Vec<String> = read(&format!("{DOCKERFILE}.dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let mut copied = Vec::new();
    for copy in dockerfile()
        .iter()
        .filter(|i| matches!(&*i.keyword, "COPY" | "ADD"))
    {
        let words: Vec<&str> = copy.args.split_whitespace().collect();
        if words.iter().any(|w| w.starts_with("--from=")) {
            continue;
        }
        let paths: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
        let (_, sources) = paths.split_last().expect("COPY has a destination");
        for source in sources {
            let source = source.trim_end_matches('/');
            assert!(
                root.join(source).exists(),
                "COPY source `{source}` does not exist"
            );
            assert!(
                !ignored.iter().any(|pattern| ignores(pattern, source)),
                "COPY source `{source}` is excluded from the build context by the .dockerignore"
            );
            copied.push(source.to_owned());
        }
    }
    let mut needed = vec!["Cargo.toml", "Cargo.lock", "rust-toolchain.toml"];
    let manifest = read("Cargo.toml");
    let members = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = "))
        .expect("workspace members");
    needed.extend(
        members
            .trim_matches(['[', ']'])
            .split(',')
            .map(|m| m.trim().trim_matches('"')),
    );
    for path in needed {
        assert!(
            copied.iter().any(|c| c == path),
            "the Dockerfile must COPY `{path}` (whole: cargo loads every workspace member); copied: {copied:?}"
        );
    }
}

// ---------------------------------------------------------------------------------
// deploy/compose.yaml

#[test]
fn compose_runs_the_proxy_with_its_command_mounts_and_environment() {
    let compose = yaml(COMPOSE);
    let proxy = &compose["services"]["egress-proxy"];
    assert!(
        proxy.get("entrypoint").is_none(),
        "the image's ENTRYPOINT is the binary"
    );
    let args = strings(&proxy["command"]);
    let env: Vec<(String, String)> = object(&proxy["environment"])
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("a string value").to_owned()))
        .collect();
    let mut sandbox = Sandbox::new();
    for volume in array(&proxy["volumes"]) {
        let target = volume["target"].as_str().expect("a long-syntax volume");
        match volume["type"].as_str() {
            Some("bind") => sandbox.copy_dir(&deploy_dir().join(str_at(volume, "source")), target),
            Some("volume") => sandbox.dir(target),
            other => panic!("unexpected volume type {other:?}"),
        }
    }
    for secret in array(&proxy["secrets"]) {
        sandbox.text(str_at(secret, "target"), "test-token");
    }
    sandbox.start(&args, &env);

    // The one-shot publishes the CA the proxy created in its state directory.
    let state_dir = flag_value(&args, "--state-dir");
    assert!(
        sandbox.path(&state_dir).join("ca/ca.crt").exists(),
        "no CA in {state_dir}"
    );
    let helper = &compose["services"]["proxy-ready"];
    let state_volume = mount_of(proxy, &state_dir);
    let helper_mount = array(&helper["volumes"])
        .iter()
        .find(|v| v["source"] == state_volume)
        .expect("proxy-ready mounts the proxy's state volume");
    assert_eq!(helper_mount["read_only"], true);
    let script = strings(&helper["command"]).join("\n");
    let admin_port = port(&flag_value(&args, "--admin-listen"));
    for needed in [
        format!("{}/ca/ca.crt", str_at(helper_mount, "target")),
        format!("http://egress-proxy:{admin_port}/readyz"),
    ] {
        assert!(
            script.contains(&needed),
            "proxy-ready must use {needed}:\n{script}"
        );
    }
}

#[test]
fn compose_gives_the_agent_the_ca_and_proxy_but_not_the_key_or_tokens() {
    let compose = yaml(COMPOSE);
    let services = &compose["services"];
    let agent = &services["agent"];
    let listen = flag_value(&strings(&services["egress-proxy"]["command"]), "--listen");
    let ca_mount = array(&agent["volumes"])
        .iter()
        .find(|v| v["source"] == "agent-ca")
        .expect("the agent mounts agent-ca");
    assert_eq!(ca_mount["read_only"], true);
    let env: BTreeMap<String, String> = object(&agent["environment"])
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("a string").to_owned()))
        .collect();
    check_agent_env(
        &env,
        &format!("{}/ca.crt", str_at(ca_mount, "target")),
        &format!("http://egress-proxy:{}", port(&listen)),
    );
    assert!(
        agent.get("secrets").is_none(),
        "the agent must get no secrets"
    );
    // proxy-ready writes ca.crt alone into agent-ca; the proxy's state (ca.key) is not
    // mounted into the agent.
    let proxy_args = strings(&services["egress-proxy"]["command"]);
    let state_volume = mount_of(
        &services["egress-proxy"],
        &flag_value(&proxy_args, "--state-dir"),
    );
    assert!(
        array(&agent["volumes"])
            .iter()
            .all(|v| v["source"] != state_volume)
    );
}

#[test]
fn compose_leaves_the_proxy_as_the_agent_s_only_way_out() {
    let compose = yaml(COMPOSE);
    let networks = object(&compose["networks"]);
    let internal = |name: &str| networks[name]["internal"] == true;
    let on = |service: &str| strings(&compose["services"][service]["networks"]);
    for service in ["agent", "proxy-ready"] {
        assert!(
            on(service).iter().all(|n| internal(n)),
            "{service} must be on internal networks only"
        );
    }
    let proxy = on("egress-proxy");
    assert!(proxy.iter().any(|n| internal(n)) && proxy.iter().any(|n| !internal(n)));
    assert!(
        on("agent").iter().all(|n| proxy.contains(n)),
        "the agent must share a network with the proxy"
    );
}

// ---------------------------------------------------------------------------------
// All of them

#[test]
fn every_egress_proxy_variable_named_is_one_the_binary_reads() {
    let help = Command::new(proxy_bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let known: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|s| s.split('=').next().unwrap().to_owned())
        .collect();
    assert!(known.contains("EGRESS_PROXY_ROUTES"), "{help}");
    let mut files = vec![
        DOCKERFILE.to_owned(),
        COMPOSE.to_owned(),
        "deploy/README.md".to_owned(),
    ];
    for dir in [KUBERNETES.to_owned(), format!("{KUBERNETES}/iptables")] {
        for entry in fs::read_dir(repo_root().join(&dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".yaml") {
                files.push(format!("{dir}/{name}"));
            }
        }
    }
    let mut named = 0;
    for file in files {
        let text = read(&file);
        for (at, _) in text.match_indices("EGRESS_PROXY_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if name == "EGRESS_PROXY_" {
                continue; // `EGRESS_PROXY_*`: all of them
            }
            assert!(
                known.contains(&name),
                "{file} names {name}, which `run` does not read"
            );
            named += 1;
        }
    }
    assert!(named > 0, "the check must see the variables the kit names");
}

/// The agent's environment holds exactly what `ca env` prints for this certificate
/// path and proxy URL, plus NO_PROXY for loopback, and none of the declared secrets.
pub fn check_agent_env(env: &BTreeMap<String, String>, cert_path: &str, proxy_url: &str) {
    let out = Command::new(proxy_bin())
        .args([
            "ca",
            "env",
            "--cert-path",
            cert_path,
            "--proxy-url",
            proxy_url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<(String, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .map(|l| {
            let (name, value) = l.split_once('=').unwrap();
            (name.to_owned(), value.trim_matches('\'').to_owned())
        })
        .collect();
    assert!(printed.len() >= 8, "ca env printed {printed:?}");
    for (name, value) in &printed {
        assert_eq!(env.get(name), Some(value), "the agent's {name}");
    }
    for name in ["NO_PROXY", "no_proxy"] {
        assert!(env[name].split(',').any(|h| h == "127.0.0.1"), "{name}");
    }
    for secret in declared_secrets() {
        assert!(
            !env.contains_key(&secret),
            "the agent must not hold {secret}"
        );
    }
}
