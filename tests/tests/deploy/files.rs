//! Reading the kit's files: the Dockerfile's instructions, YAML as JSON, and the
//! pieces of manifests and arguments the tests look at.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use egress_proxy::routes::RoutesDocument;
use egress_proxy_tests::{proxy_bin, repo_root};
use serde_json::Value;

use crate::{DOCKERFILE, KUBERNETES, ROUTES};

/// One Dockerfile instruction, continuation lines joined, comments dropped.
pub struct Instruction {
    pub keyword: String,
    pub args: String,
}

pub fn dockerfile() -> Vec<Instruction> {
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in read(DOCKERFILE).lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(line);
                let (keyword, args) = pending.split_once(char::is_whitespace).unwrap();
                instructions.push(Instruction {
                    keyword: keyword.to_ascii_uppercase(),
                    args: args.split_whitespace().collect::<Vec<_>>().join(" "),
                });
                pending.clear();
            }
        }
    }
    instructions
}

/// A stage's base image, given as `FROM ${ARG} AS stage` with a global `ARG ARG=default`,
/// so that a build can replace it (`--build-arg`) without editing the file.
pub struct Base {
    pub arg: String,
    pub default: String,
    pub stage: String,
}

pub fn bases(instructions: &[Instruction]) -> Vec<Base> {
    let first_from = instructions
        .iter()
        .position(|i| i.keyword == "FROM")
        .expect("a FROM");
    let globals: Vec<(&str, &str)> = instructions[..first_from]
        .iter()
        .filter(|i| i.keyword == "ARG")
        .map(|i| {
            i.args
                .split_once('=')
                .unwrap_or_else(|| panic!("ARG {} before the first FROM needs a default", i.args))
        })
        .collect();
    instructions
        .iter()
        .filter(|i| i.keyword == "FROM")
        .map(|i| {
            let (image, stage) = i
                .args
                .split_once(" AS ")
                .unwrap_or_else(|| panic!("FROM {}: name the stage (`AS name`)", i.args));
            let arg = image
                .strip_prefix("${")
                .and_then(|rest| rest.strip_suffix('}'))
                .unwrap_or_else(|| {
                    panic!("FROM {image}: the base image must be a build argument, `${{NAME}}`")
                });
            let default = globals
                .iter()
                .find(|(name, _)| *name == arg)
                .unwrap_or_else(|| panic!("FROM {image}: no `ARG {arg}=…` before the first FROM"))
                .1;
            Base {
                arg: arg.to_owned(),
                default: default.to_owned(),
                stage: stage.to_owned(),
            }
        })
        .collect()
}

/// The instructions of the last stage.
pub fn runtime_stage(instructions: &[Instruction]) -> Vec<&Instruction> {
    let from = instructions
        .iter()
        .rposition(|i| i.keyword == "FROM")
        .expect("a FROM");
    instructions[from..].iter().collect()
}

/// The JSON (exec) form of the stage's one `keyword` instruction.
pub fn exec_form(stage: &[&Instruction], keyword: &str) -> Vec<String> {
    let found: Vec<_> = stage.iter().filter(|i| i.keyword == keyword).collect();
    assert_eq!(found.len(), 1, "one {keyword} in the runtime stage");
    serde_json::from_str(&found[0].args).unwrap_or_else(|e| {
        panic!("{keyword} must be in JSON exec form (no shell in the image): {e}")
    })
}

/// Whether a .dockerignore pattern (as this repository writes them: a path, or
/// `**/name`) excludes `path`.
pub fn ignores(pattern: &str, path: &str) -> bool {
    match pattern.strip_prefix("**/") {
        Some(name) => path.split('/').any(|part| part == name),
        None => path == pattern || path.starts_with(&format!("{pattern}/")),
    }
}

/// A YAML file of the repository as JSON. The routes reader is a YAML-to-JSON
/// converter that does not interpret the document, so it reads manifests as well.
pub fn yaml(relative: &str) -> Value {
    yaml_at(&repo_root().join(relative))
}

pub fn yaml_at(path: &Path) -> Value {
    let document = RoutesDocument::from_bytes(&fs::read(path).unwrap(), path)
        .unwrap_or_else(|e| panic!("not YAML (read with the routes reader): {e}"));
    serde_json::from_str(&document.json).unwrap()
}

pub fn read(relative: &str) -> String {
    fs::read_to_string(repo_root().join(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

pub fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

pub fn pod_spec() -> Value {
    let deployment = yaml(&format!("{KUBERNETES}/deployment.yaml"));
    deployment["spec"]["template"]["spec"].clone()
}

pub fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    array(list)
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

pub fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    array(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The named volume a compose service mounts at `target`.
pub fn mount_of(service: &Value, target: &str) -> Value {
    array(&service["volumes"])
        .iter()
        .find(|v| v["target"] == target)
        .unwrap_or_else(|| panic!("nothing is mounted at {target}"))["source"]
        .clone()
}

/// The value of `--flag VALUE` or `--flag=VALUE`.
pub fn flag_value(args: &[String], flag: &str) -> String {
    args.iter()
        .enumerate()
        .find_map(|(i, arg)| match arg.strip_prefix(flag) {
            Some("") => args.get(i + 1).cloned(),
            Some(rest) => rest.strip_prefix('=').map(str::to_owned),
            None => None,
        })
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"))
}

/// The port of a socket address, which must be one.
pub fn port(address: &str) -> u16 {
    address
        .parse::<std::net::SocketAddr>()
        .unwrap_or_else(|e| panic!("{address}: {e}"))
        .port()
}

pub fn array(value: &Value) -> &Vec<Value> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected a list, got {value}"))
}

pub fn object(value: &Value) -> &serde_json::Map<String, Value> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("expected a mapping, got {value}"))
}

pub fn strings(value: &Value) -> Vec<String> {
    array(value)
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("expected a string, got {v}"))
                .to_owned()
        })
        .collect()
}

pub fn str_at<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("expected a string at `{key}` of {value}"))
}

/// Secret names the deployment routes declare, as `policy check` lists them.
pub fn declared_secrets() -> Vec<String> {
    let out = Command::new(proxy_bin())
        .args(["policy", "check", "--routes"])
        .arg(repo_root().join(ROUTES))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("secrets:"))
        .expect("a secrets line");
    let names: Vec<String> = line
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    assert!(!names.is_empty(), "the deployment routes inject a token");
    names
}
