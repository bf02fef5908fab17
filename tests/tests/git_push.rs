//! The `git:` route key with the real `git` client, through the proxy, against a
//! repository the test upstream serves with git's own `git http-backend`: clone and
//! fetch work, a push to an allowed branch lands, and refused pushes show the
//! policy's reason in git's own output (`! [remote rejected] …`) and leave the
//! repository as it was. SHA-1 and SHA-256 repositories.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use egress_proxy_tests::proxy::{ProxyOptions, TOKEN_NAME, TOKEN_VALUE, TestProxy};
use egress_proxy_tests::upstream::{GIT_README, Upstream, UpstreamOptions, git_smart_repo};

/// One served repository, the proxy in front of it, and a clone through the proxy.
struct Setup {
    dir: tempfile::TempDir,
    bare: PathBuf,
    upstream: Upstream,
    proxy: TestProxy,
}

impl Setup {
    async fn new(sha256: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let served = dir.path().join("served");
        std::fs::create_dir(&served).unwrap();
        let bare = git_smart_repo(&served, "repo.git", sha256);
        let upstream = Upstream::start(UpstreamOptions {
            files_root: Some(served),
            ..UpstreamOptions::default()
        })
        .await;
        let ca = upstream.ca().write_pem(dir.path());
        let routes = format!(
            "routes:
  - host: localhost
    ports: [{port}]
    auth: {{scheme: Bearer, token_ref: {TOKEN_NAME}}}
    git:
      push: [refs/heads/agent/*]
      repos: [/smart/*]
",
            port = upstream.port()
        );
        let proxy =
            TestProxy::start(ProxyOptions::new(&routes, &ca).secret(TOKEN_NAME, TOKEN_VALUE)).await;
        Self {
            dir,
            bare,
            upstream,
            proxy,
        }
    }

    fn url(&self, repo: &str) -> String {
        self.upstream.url(&format!("/smart/{repo}"))
    }

    fn clone_dir(&self) -> PathBuf {
        self.dir.path().join("clone")
    }

    /// `git args…` in `cwd`, through the proxy.
    async fn git(&self, cwd: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new("git");
        for var in [
            "NO_PROXY",
            "no_proxy",
            "ALL_PROXY",
            "all_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_INDEX_FILE",
            "GIT_CONFIG_GLOBAL",
        ] {
            cmd.env_remove(var);
        }
        cmd.args(args)
            .current_dir(cwd)
            .env("HTTPS_PROXY", self.proxy.url())
            .env("https_proxy", self.proxy.url())
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_SSL_CAINFO", self.proxy.ca_path())
            .env("GIT_AUTHOR_NAME", "Agent")
            .env("GIT_AUTHOR_EMAIL", "agent@example.invalid")
            .env("GIT_COMMITTER_NAME", "Agent")
            .env("GIT_COMMITTER_EMAIL", "agent@example.invalid");
        tokio::task::spawn_blocking(move || cmd.output().expect("git runs"))
            .await
            .unwrap()
    }

    async fn ok(&self, cwd: &Path, args: &[&str]) -> String {
        let output = self.git(cwd, args).await;
        assert!(
            output.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// `git args…` must fail; its standard error.
    async fn fails(&self, cwd: &Path, args: &[&str]) -> String {
        let output = self.git(cwd, args).await;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!output.status.success(), "git {args:?} succeeded: {stderr}");
        stderr
    }

    /// Clones the repository and makes one new commit in the clone.
    async fn clone_and_commit(&self) -> PathBuf {
        let clone = self.clone_dir();
        let url = self.url("repo.git");
        self.ok(
            self.dir.path(),
            &["clone", "--quiet", &url, clone.to_str().unwrap()],
        )
        .await;
        assert_eq!(
            std::fs::read_to_string(clone.join("README.md")).unwrap(),
            GIT_README
        );
        std::fs::write(clone.join("work.txt"), "agent work\n").unwrap();
        self.ok(&clone, &["add", "work.txt"]).await;
        self.ok(&clone, &["commit", "--quiet", "-m", "Agent work"])
            .await;
        clone
    }

    /// Every ref of the served repository with its id.
    fn served_refs(&self) -> String {
        let output = Command::new("git")
            .args(["for-each-ref", "--format=%(objectname) %(refname)"])
            .env("GIT_DIR", &self.bare)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    }
}

async fn push_rules_hold(sha256: bool) {
    let setup = Setup::new(sha256).await;
    let clone = setup.clone_and_commit().await;
    let head = setup.ok(&clone, &["rev-parse", "HEAD"]).await;
    assert_eq!(head.len(), if sha256 { 64 } else { 40 });

    // An allowed branch: the push lands.
    setup
        .ok(
            &clone,
            &["push", "--quiet", "origin", "HEAD:refs/heads/agent/x"],
        )
        .await;
    let before = setup.served_refs();
    assert!(
        before.contains(&format!("{head} refs/heads/agent/x")),
        "{before}"
    );

    // main: refused, with the reason in git's own report.
    let stderr = setup.fails(&clone, &["push", "origin", "HEAD:main"]).await;
    assert!(
        stderr.contains("[remote rejected]") && stderr.contains("push to refs/heads/main refused"),
        "{stderr}"
    );
    // A delete of the allowed branch: refused (`delete` is false).
    let stderr = setup
        .fails(&clone, &["push", "origin", ":refs/heads/agent/x"])
        .await;
    assert!(
        stderr.contains("[remote rejected]") && stderr.contains("deleting refs/heads/agent/x"),
        "{stderr}"
    );
    // Two refs, one forbidden: neither is applied.
    let stderr = setup
        .fails(
            &clone,
            &[
                "push",
                "origin",
                "HEAD:refs/heads/agent/y",
                "HEAD:refs/heads/main",
            ],
        )
        .await;
    assert!(
        stderr.contains("agent/y (") && stderr.contains("refs/heads/main refused"),
        "{stderr}"
    );
    assert_eq!(setup.served_refs(), before, "refused pushes change nothing");

    // Fetch still works.
    setup.ok(&clone, &["fetch", "--quiet", "origin"]).await;
    let fetched = setup
        .ok(&clone, &["rev-parse", "refs/remotes/origin/agent/x"])
        .await;
    assert_eq!(fetched, head);
}

#[tokio::test(flavor = "multi_thread")]
async fn sha1_push_rules_hold_with_real_git() {
    push_rules_hold(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sha256_push_rules_hold_with_real_git() {
    push_rules_hold(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_outside_repos_is_refused_with_the_reason() {
    let setup = Setup::new(false).await;
    let clone = setup.clone_and_commit().await;
    let other = setup.url("elsewhere/repo.git");
    let stderr = setup
        .fails(&clone, &["push", &other, "HEAD:refs/heads/agent/x"])
        .await;
    assert!(
        stderr.contains("remote:") && stderr.contains("is not in `git.repos`"),
        "{stderr}"
    );
    let stderr = setup.fails(setup.dir.path(), &["ls-remote", &other]).await;
    assert!(stderr.contains("is not in `git.repos`"), "{stderr}");
}
