//! Compiling a policy module in a child process, so that Cranelift's working set
//! (tens to hundreds of MB for a large module) is the child's and goes away with it;
//! the proxy maps only the artifact the child wrote.
//!
//! The child is this binary, `egress-proxy policy compile`, with an empty environment
//! (it needs no secret, and `EGRESS_PROXY_*` settings must not reach it), run in a
//! private directory (mode 0700, in `$TMPDIR`) created for this one compile: the
//! module is copied in (what is hashed is what is compiled), the artifact written next
//! to it, the child's stderr kept for the error message. A child that fails, is
//! killed or outlives its timeout (then killed) is an error naming what happened.

use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Default bound on one child compile (the 18 MB Python example compiles in ~7 s on
/// a 2-core machine).
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(120);

/// How often a running child is checked on.
const POLL: Duration = Duration::from_millis(10);

/// The most of a child's stderr kept for an error message.
const MAX_MESSAGE: u64 = 8 << 10;

/// Where a policy module given as a `.wasm` file is compiled.
#[derive(Debug, Clone, Default)]
pub enum Compiler {
    /// By Cranelift in this process (the `policy` subcommands, which exit soon after).
    #[default]
    InProcess,
    /// By a child process running `policy compile` (`run`: the proxy stays small).
    Child(ChildCompiler),
}

/// How to run the child compiler.
#[derive(Debug, Clone)]
pub struct ChildCompiler {
    /// The egress-proxy binary the child runs.
    pub program: PathBuf,
    /// Bound on one compile; the child is killed after it.
    pub timeout: Duration,
}

impl ChildCompiler {
    /// The running binary (`/proc/self/exe`, which stays this binary even if its file
    /// is replaced by an upgrade), bounded by `timeout`.
    pub fn this_binary(timeout: Duration) -> Self {
        Self {
            program: PathBuf::from("/proc/self/exe"),
            timeout,
        }
    }
}

/// An artifact a child compiled, in the private directory made for it; the directory
/// is removed when this is dropped (a module loaded from it keeps its mapping).
#[derive(Debug)]
pub(crate) struct Staged {
    _dir: tempfile::TempDir,
    artifact: PathBuf,
    /// Hex sha256 of the module the child compiled (the private copy).
    pub(crate) sha256: String,
}

impl Staged {
    /// A private copy of an artifact the operator named (`--policy policy.cwasm`):
    /// wasmtime maps the copy, so the operator's file can be replaced or rewritten
    /// without changing (or truncating) code in use, and only the pages the policy
    /// runs are resident.
    pub(super) fn copy_of(path: &Path) -> Result<Self, ChildError> {
        let dir = private_dir()?;
        let artifact = dir.path().join("module.cwasm");
        std::fs::copy(path, &artifact).map_err(ChildError::Read)?;
        let sha256 = super::sha256_file(&artifact).map_err(ChildError::Read)?;
        Ok(Self {
            _dir: dir,
            artifact,
            sha256,
        })
    }

    pub(super) fn artifact(&self) -> &Path {
        &self.artifact
    }
}

/// A new directory only this user can use (0700), removed when dropped.
fn private_dir() -> Result<tempfile::TempDir, ChildError> {
    tempfile::Builder::new()
        .prefix("egress-proxy-policy-")
        .tempdir()
        .map_err(ChildError::NoPrivateDir)
}

/// Why a child compile did not produce an artifact.
#[derive(Debug)]
pub(super) enum ChildError {
    /// No private directory could be made (no writable `$TMPDIR`).
    NoPrivateDir(std::io::Error),
    /// The module file could not be read (copied).
    Read(std::io::Error),
    /// The child could not start, failed, was killed or timed out.
    Failed(String),
}

impl ChildCompiler {
    /// Compile `module` (a component file) in a child; the artifact is staged in a
    /// private directory.
    pub(super) fn compile(&self, module: &Path) -> Result<Staged, ChildError> {
        let dir = private_dir()?;
        // The child sees the module under its own file name (in `src/`), so that its
        // messages name the file the operator knows, not the private copy's path.
        let name = module
            .file_name()
            .map_or_else(|| PathBuf::from("module.wasm"), PathBuf::from);
        let src = dir.path().join("src");
        std::fs::create_dir(&src).map_err(ChildError::NoPrivateDir)?;
        std::fs::copy(module, src.join(&name)).map_err(ChildError::Read)?;
        let sha256 = super::sha256_file(&src.join(&name)).map_err(ChildError::Read)?;
        let artifact = dir.path().join("module.cwasm");
        let log_path = dir.path().join("compile.log");
        let log = File::create(&log_path).map_err(ChildError::NoPrivateDir)?;
        let started = Instant::now();
        let mut child = Command::new(&self.program)
            .args(["policy", "compile"])
            .arg(&name)
            .arg("--output")
            .arg(&artifact)
            .current_dir(&src)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                ChildError::Failed(format!(
                    "cannot start the compiler process ({} policy compile): {e}",
                    self.program.display()
                ))
            })?;
        let status = wait(&mut child, self.timeout).map_err(ChildError::Failed)?;
        if !status.success() {
            return Err(ChildError::Failed(failure(status, &log_path)));
        }
        tracing::debug!(
            module = %module.display(),
            took_ms = started.elapsed().as_millis() as u64,
            "policy module compiled in a child process"
        );
        Ok(Staged {
            _dir: dir,
            artifact,
            sha256,
        })
    }
}

/// Wait for the child, killing it at the timeout.
fn wait(child: &mut Child, timeout: Duration) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(format!("cannot wait for the compiler process: {e}")),
        }
        if Instant::now() >= deadline {
            // Killing a child that just exited fails harmlessly; wait reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the compiler process did not finish within {} and was killed \
                 (raise --policy-compile-timeout for a very large module)",
                humantime::format_duration(timeout)
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// What a failed child said (its `error: …` line), or how it ended.
fn failure(status: ExitStatus, log: &Path) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    let mut said = String::new();
    if let Ok(file) = File::open(log) {
        let _ = file.take(MAX_MESSAGE).read_to_string(&mut said);
    }
    let said = said.trim();
    let said = said.strip_prefix("error: ").unwrap_or(said);
    match (status.code(), status.signal()) {
        (Some(_), _) if !said.is_empty() => said.to_owned(),
        (Some(code), _) => format!("the compiler process exited with status {code}"),
        (None, Some(signal)) => {
            format!(
                "the compiler process was killed by signal {signal}{}",
                suffix(said)
            )
        }
        (None, None) => format!("the compiler process failed ({status}){}", suffix(said)),
    }
}

fn suffix(said: &str) -> String {
    if said.is_empty() {
        String::new()
    } else {
        format!(": {said}")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A stand-in compiler: a shell script, so that a child that hangs or crashes can
    /// be had on demand.
    fn script(dir: &Path, body: &str) -> ChildCompiler {
        let path = dir.join("compiler.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        ChildCompiler {
            program: path,
            timeout: Duration::from_millis(500),
        }
    }

    fn module(dir: &Path) -> PathBuf {
        let path = dir.join("policy.wasm");
        std::fs::write(&path, b"\0asm not really").unwrap();
        path
    }

    fn failed(result: Result<Staged, ChildError>) -> String {
        match result {
            Err(ChildError::Failed(message)) => message,
            other => panic!("expected a failed child, got {other:?}"),
        }
    }

    #[test]
    fn a_child_that_hangs_is_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let compiler = script(dir.path(), "exec sleep 30");
        let started = Instant::now();
        let message = failed(compiler.compile(&module(dir.path())));
        assert!(started.elapsed() < Duration::from_secs(5), "{message}");
        assert!(message.contains("did not finish within 500ms"), "{message}");
    }

    #[test]
    fn a_child_that_crashes_is_an_error_naming_the_signal() {
        let dir = tempfile::tempdir().unwrap();
        let compiler = script(dir.path(), "echo 'about to crash' >&2; kill -SEGV $$");
        let message = failed(compiler.compile(&module(dir.path())));
        assert!(message.contains("killed by signal 11"), "{message}");
        assert!(message.contains("about to crash"), "{message}");
    }

    #[test]
    fn a_failing_child_reports_its_message_and_the_child_sees_no_environment() {
        let dir = tempfile::tempdir().unwrap();
        // The script fails with what it was given: its arguments, and whether a
        // variable of the parent reached it.
        let compiler = script(
            dir.path(),
            "echo \"error: args=$* home=${HOME:-unset} cwd=$(basename $(pwd))\" >&2; exit 1",
        );
        let message = failed(compiler.compile(&module(dir.path())));
        assert!(
            message.starts_with("args=policy compile policy.wasm --output "),
            "{message}"
        );
        assert!(message.contains("home=unset"), "{message}");
        assert!(message.contains("cwd=src"), "{message}");
    }

    #[test]
    fn a_missing_module_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let compiler = script(dir.path(), "exit 0");
        assert!(matches!(
            compiler.compile(&dir.path().join("absent.wasm")),
            Err(ChildError::Read(_))
        ));
    }
}
