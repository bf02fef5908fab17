//! A bare git repository ready to be served over git's "dumb HTTP" protocol.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The content of `README.md` in the repository [`git_bare_repo`] makes.
pub const README: &str = "hello from the test upstream\n";

/// Creates `dir/repo.git`: a bare repository with one commit on `main` holding
/// `README.md` (content [`README`]), with `git update-server-info` run so its
/// static files (`info/refs`, `HEAD`, `objects/...`) are all a dumb-HTTP client needs.
/// Returns the bare repository's path.
///
/// Runs the real `git` binary isolated from the user's and system configuration;
/// panics if git is missing or a step fails.
pub fn git_bare_repo(dir: &Path) -> PathBuf {
    let scratch = tempfile::tempdir().expect("scratch directory for git");
    let home = scratch.path().join("home");
    std::fs::create_dir(&home).expect("create scratch HOME");
    let work = scratch.path().join("work");

    git(
        &home,
        scratch.path(),
        &["init", "--quiet", "--initial-branch=main", "work"],
    );
    std::fs::write(work.join("README.md"), README).expect("write README.md");
    git(&home, &work, &["add", "README.md"]);
    git(&home, &work, &["commit", "--quiet", "-m", "Initial commit"]);

    let bare = dir.join("repo.git");
    git(
        &home,
        dir,
        &[
            OsStr::new("clone"),
            OsStr::new("--quiet"),
            OsStr::new("--bare"),
            work.as_os_str(),
            bare.as_os_str(),
        ],
    );
    git(&home, &bare, &["update-server-info"]);
    bare
}

/// Runs `git args...` in `cwd` with `home` as `HOME` and fixed identities.
fn git<S: AsRef<OsStr>>(home: &Path, cwd: &Path, args: &[S]) {
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    let output = Command::new("git")
        .args(args)
        .current_dir(cwd)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .env("GIT_AUTHOR_NAME", "Test Upstream")
        .env("GIT_AUTHOR_EMAIL", "upstream@example.invalid")
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_NAME", "Test Upstream")
        .env("GIT_COMMITTER_EMAIL", "upstream@example.invalid")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_CONFIG_GLOBAL")
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("git_bare_repo needs the `git` binary on PATH, and it was not found: {e}")
        }
        Err(e) => panic!("could not run `git {}`: {e}", shown.join(" ")),
    };
    assert!(
        output.status.success(),
        "`git {}` failed ({}): {}",
        shown.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
