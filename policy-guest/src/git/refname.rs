//! Ref names as `git check-ref-format` and `git receive-pack` accept them: under
//! `refs/`, no component starting with `.` or ending with `.lock`, no `..`, no `@{`,
//! no `//`, no control character, space or any of `~ ^ : ? * [ \`, and no trailing
//! `/` or `.`. A push naming any other ref is refused whole.

/// `Ok` if `name` is a ref a push may update; else why not.
pub(crate) fn check(name: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid ref name `{}`: {why}",
            crate::decide::quote(&name.escape_debug().to_string())
        ))
    };
    let Some(rest) = name.strip_prefix("refs/") else {
        return bad("a push updates refs under `refs/`");
    };
    if rest.is_empty() {
        return bad("nothing after `refs/`");
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return bad(&format!("it contains {c:?}"));
    }
    if name.contains("..") {
        return bad("it contains `..`");
    }
    if name.contains("@{") {
        return bad("it contains `@{`");
    }
    if name.ends_with('/') || name.ends_with('.') {
        return bad("it ends with `/` or `.`");
    }
    for component in name.split('/') {
        if component.is_empty() {
            return bad("it contains `//`");
        }
        if component.starts_with('.') {
            return bad("a component starts with `.`");
        }
        if component.ends_with(".lock") {
            return bad("a component ends with `.lock`");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn check_ref_format_rules() {
        for good in [
            "refs/heads/main",
            "refs/heads/agent/x-1",
            "refs/tags/v1.0",
            "refs/heads/ünïcode",
            "refs/heads/a@b",
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for bad in [
            "HEAD",
            "heads/main",
            "refs/",
            "refs/heads/a..b",
            "refs/heads/a b",
            "refs/heads/a\tb",
            "refs/heads/a\u{7f}",
            "refs/heads/a~1",
            "refs/heads/a^",
            "refs/heads/a:b",
            "refs/heads/a?",
            "refs/heads/a*",
            "refs/heads/a[",
            "refs/heads/a\\b",
            "refs/heads/a@{1}",
            "refs/heads/a/",
            "refs/heads/a.",
            "refs/heads/a.lock",
            "refs/heads/a.lock/b",
            "refs//heads/a",
            "refs/heads/.hidden",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
