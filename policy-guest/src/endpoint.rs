//! The endpoint a protocol rule (`graphql`, `mcp`) owns on its route: one path,
//! matched the way a lenient server routes it (ASCII case ignored, a trailing `/`
//! ignored, in either reading of encoded separators), so that a spelling the server
//! would accept cannot slip past the rule.

use serde_json::Value;

use crate::config::{ConfigError, expect_str};
use crate::path::{NormalPath, PathError};
use crate::verdict::Verdict;

/// An endpoint path, normalised, without its trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// As written, for deny reasons.
    pub(crate) written: String,
    normal: String,
}

/// Status for a path the policy cannot read.
const BAD_REQUEST: u16 = 400;

impl Endpoint {
    /// `value` (a path such as `/graphql`), or `default` when it is absent.
    pub(crate) fn parse(
        at: &str,
        value: Option<&Value>,
        default: &str,
    ) -> Result<Self, ConfigError> {
        let written = match value {
            Some(value) => expect_str(at, value)?,
            None => default,
        };
        if written.contains(['?', '#']) {
            return Err(ConfigError::new(
                at,
                format!("`{written}` contains `?` or `#`; give the endpoint's path only"),
            ));
        }
        let normal = NormalPath::parse(written).map_err(|error| {
            let why = match error {
                PathError::NotAbsolute => "must start with `/`",
                PathError::Malformed(why) => why,
                PathError::Ambiguous => "mixes dot-segments with encoded separators",
            };
            ConfigError::new(at, format!("`{written}`: {why}"))
        })?;
        Ok(Self {
            written: written.to_owned(),
            normal: trim(normal.as_str()).to_ascii_lowercase(),
        })
    }

    /// Whether the request's path names this endpoint: `Ok(true)` if it does in any
    /// reading, `Err` (a 400 for `rule`) if the path cannot be read at all.
    pub(crate) fn names(&self, path_and_query: &str, rule: &str) -> Result<bool, Verdict> {
        match NormalPath::parse(path_and_query) {
            Ok(path) => Ok(path
                .readings()
                .into_iter()
                .any(|reading| trim(reading).eq_ignore_ascii_case(&self.normal))),
            Err(PathError::NotAbsolute) => Ok(false),
            Err(PathError::Malformed(why)) => Err(Verdict::deny(
                BAD_REQUEST,
                format!(
                    "malformed path: {why}; `{rule}` decides {} by its content",
                    self.written
                ),
                Some(rule),
            )),
            Err(PathError::Ambiguous) => Err(Verdict::deny(
                BAD_REQUEST,
                format!(
                    "ambiguous path: it mixes dot-segments with encoded separators, so it \
                     cannot be told whether it names {}, which `{rule}` decides by content",
                    self.written
                ),
                Some(rule),
            )),
        }
    }
}

fn trim(path: &str) -> &str {
    path.strip_suffix('/').unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_spellings_of_the_endpoint_name_it() {
        let endpoint = Endpoint::parse("at", None, "/graphql").unwrap();
        for path in [
            "/graphql",
            "/graphql/",
            "/GraphQL",
            "/graphql?query=x",
            "/%67raphql",
            "/a/../graphql",
            "/./graphql",
        ] {
            assert_eq!(endpoint.names(path, "r"), Ok(true), "{path}");
        }
        for path in ["/graphql2", "/graphql/x", "/api/graphql", "", "*"] {
            assert_eq!(endpoint.names(path, "r"), Ok(false), "{path}");
        }
        assert!(endpoint.names("/a/..%2Fgraphql", "r").is_err());
        assert!(endpoint.names("/graph%zzql", "r").is_err());
    }

    #[test]
    fn endpoint_paths_are_checked() {
        let parse =
            |text: &str| Endpoint::parse("routes[0].mcp.path", Some(&Value::from(text)), "/mcp");
        assert_eq!(parse("/").unwrap().normal, "");
        assert!(
            parse("mcp")
                .unwrap_err()
                .to_string()
                .contains("must start with `/`")
        );
        assert!(parse("/mcp?x").is_err());
        assert!(Endpoint::parse("at", Some(&Value::from(3)), "/mcp").is_err());
    }
}
