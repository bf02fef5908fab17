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
    bare_with_one_commit(dir, "repo.git", "sha1", &["update-server-info"])
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

/// Creates `dir/<name>`: a bare repository (SHA-256 object ids if `sha256`) with one
/// commit on `main` holding `README.md` (content [`README`]) that accepts pushes over
/// git's smart HTTP protocol (`http.receivepack`), for [`http_backend`]. Returns its
/// path.
pub fn git_smart_repo(dir: &Path, name: &str, sha256: bool) -> PathBuf {
    let format = if sha256 { "sha256" } else { "sha1" };
    bare_with_one_commit(dir, name, format, &["config", "http.receivepack", "true"])
}

/// `dir/name`: a bare clone of a one-commit repository (`README.md` on `main`, object
/// format `format`), made with the real `git` isolated from the user's and system
/// configuration, then `git finish…` run in it. Panics if a step fails.
fn bare_with_one_commit(dir: &Path, name: &str, format: &str, finish: &[&str]) -> PathBuf {
    let scratch = tempfile::tempdir().expect("scratch directory for git");
    let home = scratch.path().join("home");
    std::fs::create_dir(&home).expect("create scratch HOME");
    let work = scratch.path().join("work");
    git(
        &home,
        scratch.path(),
        &[
            "init",
            "--quiet",
            "--initial-branch=main",
            &format!("--object-format={format}"),
            "work",
        ],
    );
    std::fs::write(work.join("README.md"), README).expect("write README.md");
    git(&home, &work, &["add", "README.md"]);
    git(&home, &work, &["commit", "--quiet", "-m", "Initial commit"]);
    let bare = dir.join(name);
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
    git(&home, &bare, finish);
    bare
}

/// Answers one smart-HTTP request (`path_info` below `root`) by running git's own
/// CGI, `git http-backend`, with `body` on its standard input. Blocking: call it off
/// the async runtime.
pub(super) fn http_backend(
    root: &Path,
    path_info: &str,
    query: &str,
    method: &str,
    headers: &http::HeaderMap,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::Write as _;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let home = tempfile::tempdir().expect("scratch HOME for git http-backend");
    let mut child = Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path_info)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", method)
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("git http-backend runs");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let body = body.to_vec();
    // Written from a thread: http-backend may answer before it has read everything.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let output = child.wait_with_output().expect("git http-backend finishes");
    let _ = writer.join();
    let out = output.stdout;
    let (head, rest) = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => (&out[..end], &out[end + 4..]),
        None => match out.windows(2).position(|w| w == b"\n\n") {
            Some(end) => (&out[..end], &out[end + 2..]),
            None => (&out[..], &[][..]),
        },
    };
    let mut status = 200;
    let mut fields = Vec::new();
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim().to_owned();
        if name.eq_ignore_ascii_case("status") {
            status = value
                .split(' ')
                .next()
                .and_then(|code| code.parse().ok())
                .unwrap_or(500);
        } else {
            fields.push((name.to_owned(), value));
        }
    }
    (status, fields, rest.to_vec())
}
