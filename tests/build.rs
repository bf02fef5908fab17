//! Builds the guest fixtures in `fixtures/` (their own workspace) for wasm32-wasip2 and
//! tells the tests where they are:
//!
//! - `FIXTURE_MISBEHAVE_WASM`: `fixtures/misbehave`, a policy built against the 0.1.0
//!   contract that misbehaves on request;
//! - `FIXTURE_BODY_WASM`: `fixtures/body`, a 0.2.0 policy that reads bodies, keeps
//!   rate-limit state and annotates;
//! - `FIXTURE_WRONG_VERSION_WASM`: `fixtures/wrong-version`, built against
//!   `egress:policy@0.3.0`.
//!
//! Use them as `env!("FIXTURE_MISBEHAVE_WASM")`. The nested cargo gets a clean
//! environment (none of this build's flags, target or wrappers) and a target directory
//! shared by every profile and tool (`target/egress-fixtures`), so `cargo build`,
//! `cargo test` and `cargo clippy` compile the fixtures once between them.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target the fixtures are built for.
const WASM_TARGET: &str = "wasm32-wasip2";

/// Each fixture: the file cargo produces (crate name with `_`) and the variable naming
/// its copy in `OUT_DIR`.
const FIXTURES: &[(&str, &str)] = &[
    ("misbehave.wasm", "FIXTURE_MISBEHAVE_WASM"),
    ("body.wasm", "FIXTURE_BODY_WASM"),
    ("wrong_version.wasm", "FIXTURE_WRONG_VERSION_WASM"),
];

/// Inputs of the fixture build, relative to this package; a change to any reruns it.
const INPUTS: &[&str] = &[
    "build.rs",
    "fixtures/Cargo.toml",
    "fixtures/Cargo.lock",
    "fixtures/.cargo/config.toml",
    "fixtures/misbehave/Cargo.toml",
    "fixtures/misbehave/src",
    "fixtures/body/Cargo.toml",
    "fixtures/body/src",
    "fixtures/wrong-version/Cargo.toml",
    "fixtures/wrong-version/src",
    "fixtures/wit-v0.3",
    "../wit",
];

/// Variables this build script was given that describe *this* build; passed on, they
/// would make the nested cargo build the fixtures with the wrong flags, target, wrapper
/// or directory.
const LEAKY_VARS: &[&str] = &[
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_PRIMARY_PACKAGE",
    "OUT_DIR",
    "TARGET",
    "HOST",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
    "NUM_JOBS",
    "RUSTC",
    "RUSTDOC",
    "RUSTC_LINKER",
];

/// Prefixes of further such variables (`CARGO_MANIFEST_DIR`, `CARGO_MANIFEST_PATH`, ...).
const LEAKY_PREFIXES: &[&str] = &[
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_PKG_",
    "CARGO_MANIFEST_",
];

fn main() {
    if let Err(message) = build_fixtures() {
        panic!("{message}");
    }
}

fn build_fixtures() -> Result<(), String> {
    let manifest_dir = PathBuf::from(var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(var("OUT_DIR")?);
    let cargo = var("CARGO")?;
    for input in INPUTS {
        println!("cargo:rerun-if-changed={input}");
    }

    let fixtures = manifest_dir.join("fixtures");
    // OUT_DIR is <target>/[<triple>/]<profile>/build/<package>-<hash>/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .ok_or_else(|| {
            format!(
                "OUT_DIR {} is not inside a target directory",
                out_dir.display()
            )
        })?
        .join("egress-fixtures");

    let mut command = Command::new(&cargo);
    command
        .args(["build", "--release", "--locked", "--target", WASM_TARGET])
        .arg("--manifest-path")
        .arg(fixtures.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // Cargo reads `.cargo/config.toml` from the working directory upwards.
        .current_dir(&fixtures);
    for (name, _) in env::vars_os() {
        if is_leaky(&name) {
            command.env_remove(&name);
        }
    }

    let output = command
        .output()
        .map_err(|err| format!("cannot run {cargo} to build the test fixtures: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the test fixtures in {} failed ({}):\n{}\n\
             hint: is the {WASM_TARGET} target installed? run `rustup target add {WASM_TARGET}`",
            fixtures.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr),
        ));
    }

    let built = target_dir.join(WASM_TARGET).join("release");
    for (file, var_name) in FIXTURES {
        let copy = out_dir.join(file);
        copy_fresh(&built.join(file), &copy)?;
        println!("cargo:rustc-env={var_name}={}", copy.display());
    }
    Ok(())
}

fn var(name: &str) -> Result<String, String> {
    env::var(name).map_err(|err| format!("build script variable {name}: {err}"))
}

fn is_leaky(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    LEAKY_VARS.contains(&name) || LEAKY_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// Copies `from` to `to` by writing a temporary file and renaming it over `to`, so a
/// test binary never sees a half-written component.
fn copy_fresh(from: &Path, to: &Path) -> Result<(), String> {
    let partial = to.with_extension("wasm.partial");
    fs::copy(from, &partial)
        .and_then(|_| fs::rename(&partial, to))
        .map_err(|err| format!("cannot copy {} to {}: {err}", from.display(), to.display()))
}
