//! Builds the default policy (`policy-guest`) for wasm32-wasip2 and puts the
//! component in OUT_DIR, where `policy::module` embeds it with `include_bytes!`.
//!
//! The guest is built by a nested `cargo build` into its own target directory
//! (`<target>/egress-guest`, shared by every profile so it is built once), with the
//! outer build's compiler wrappers and flags removed (clippy must not lint it as part
//! of the host, and host RUSTFLAGS do not apply to wasm).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "wasm32-wasip2";

fn main() {
    if let Err(message) = run() {
        // A build script reports failure by exiting non-zero; cargo prints stderr.
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or("host/ has no parent directory")?
        .to_path_buf();
    let out_dir = PathBuf::from(var("OUT_DIR")?);
    // OUT_DIR is <target>/[<triple>/]<profile>/build/<pkg>-<hash>/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .ok_or("unexpected OUT_DIR layout")?
        .join("egress-guest");

    for path in [
        "policy-guest/src",
        "policy-guest/Cargo.toml",
        "wit",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args(["build", "--locked", "--release", "-p", "policy-guest"])
        .args(["--target", GUEST_TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    scrub_env(&mut cmd);
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run cargo to build the default policy: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the default policy (policy-guest) for {GUEST_TARGET} failed.\n\
             Is the target installed? Run `rustup target add {GUEST_TARGET}`.\n\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }

    let built = target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join("policy_guest.wasm");
    copy(&built, &out_dir.join("policy_guest.wasm"))
}

/// Remove what would make the nested build inherit the outer one's configuration.
fn scrub_env(cmd: &mut Command) {
    const REMOVE: &[&str] = &[
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
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
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ];
    for key in REMOVE {
        cmd.env_remove(key);
    }
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_FEATURE_")
            || key.starts_with("CARGO_PKG_")
            || key.starts_with("DEP_")
        {
            cmd.env_remove(key);
        }
    }
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))
}

fn var(name: &str) -> Result<String, String> {
    env::var(name).map_err(|_| format!("cargo did not set {name}"))
}
