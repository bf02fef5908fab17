//! Builds the default policy (`policy-guest`) for wasm32-wasip2, precompiles it to
//! native code, and puts both in OUT_DIR, where `policy::module` and
//! `policy::artifact` embed them with `include_bytes!`: the component
//! (`policy_guest.wasm`, the fallback), its artifact (`policy_guest.cwasm`, what the
//! proxy loads without compiling) and the component's sha256
//! (`EGRESS_PROXY_BUILTIN_SHA256`).
//!
//! The artifact is compiled by this package's wasmtime build-dependency (the same
//! pinned version as the runtime's) with the runtime's own settings
//! (`src/policy/compiler_config.rs`, `include!`d below), for an explicit target:
//! baseline CPU features, not the build machine's, so an image built on one machine
//! loads its artifact on any other of the same architecture. If wasmtime cannot
//! compile for the target (a cross build to an architecture the build-time Cranelift
//! lacks), the artifact is left empty and the proxy compiles the built-in policy at
//! start-up, as it does for any other mismatch.
//!
//! The guest is built by a nested `cargo build` into its own target directory
//! (`<target>/egress-guest`, shared by every profile so it is built once), with the
//! outer build's compiler wrappers and flags removed (clippy must not lint it as part
//! of the host, and host RUSTFLAGS do not apply to wasm).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The runtime's compiler settings, shared with `src/policy/engine.rs`.
mod compiler_config {
    include!("src/policy/compiler_config.rs");
}

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
    println!("cargo:rerun-if-changed=src/policy/compiler_config.rs");

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
    let wasm = out_dir.join("policy_guest.wasm");
    copy(&built, &wasm)?;
    let bytes = std::fs::read(&wasm).map_err(|e| format!("cannot read {}: {e}", wasm.display()))?;
    println!(
        "cargo:rustc-env=EGRESS_PROXY_BUILTIN_SHA256={}",
        sha256_hex(&bytes)
    );
    precompile(&bytes, &out_dir.join("policy_guest.cwasm"))
}

/// Compile the component for the target with the runtime's settings and write the
/// artifact; an empty file when wasmtime cannot compile for this target.
fn precompile(wasm: &[u8], artifact: &Path) -> Result<(), String> {
    let target = var("TARGET")?;
    let mut config = compiler_config::compiler_config();
    // An explicit target turns off detection of the build machine's CPU features:
    // the code uses the architecture's baseline only, and wasmtime accepts an
    // artifact whose features are a subset of the host's.
    config
        .target(&target)
        .map_err(|e| format!("wasmtime does not know the target {target}: {e}"))?;
    let engine = match wasmtime::Engine::new(&config) {
        Ok(engine) => engine,
        Err(e) => {
            println!(
                "cargo:warning=cannot precompile the built-in policy for {target} ({e}); \
                 the proxy will compile it at start-up"
            );
            return write(artifact, &[]);
        }
    };
    let started = Instant::now();
    let code = engine
        .precompile_component(wasm)
        .map_err(|e| format!("precompiling the built-in policy failed: {e:#}"))?;
    eprintln!(
        "precompiled the built-in policy for {target}: {} bytes of wasm, {} of artifact, {} ms",
        wasm.len(),
        code.len(),
        started.elapsed().as_millis()
    );
    write(artifact, &code)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    let mut hex = String::with_capacity(64);
    for byte in sha2::Sha256::digest(bytes) {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
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
