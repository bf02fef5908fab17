//! `rate_limit: {requests: N, per: 1m, burst: M, per_client: false}`: a token bucket
//! per route (or per route and client address) in the host's shared state, so every
//! instance of every generation counts against the same budget and a reload does not
//! reset it. A request spends a token only when it would otherwise be allowed; a
//! CONNECT (the tunnel itself) spends none: the requests inside it do.

use serde_json::Value;

use crate::config::{ConfigError, expect_object, kind, reject_unknown_keys};
use crate::request::{Request, State};
use crate::verdict::Verdict;

/// Status when a route's rate limit is spent.
const TOO_MANY_REQUESTS: u16 = 429;

const KEYS: &[&str] = &["requests", "per", "burst", "per_client"];

/// A route's rate limit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RateLimit {
    /// Requests per `per`, as written.
    requests: u32,
    /// The period, as written (`1m`), for deny reasons.
    per_written: String,
    /// The bucket's capacity: how many requests may come at once.
    burst: u32,
    /// Tokens added per second: `requests / per`.
    refill_per_second: f64,
    /// One bucket per client address instead of one per route.
    per_client: bool,
}

impl RateLimit {
    pub(crate) fn parse(at: &str, value: &Value) -> Result<Self, ConfigError> {
        let limit = expect_object(at, value, "`{requests: N, per: 1m}`")?;
        reject_unknown_keys(limit, KEYS, at)?;
        let requests =
            positive(&format!("{at}.requests"), limit.get("requests"), true)?.unwrap_or_default();
        let per_at = format!("{at}.per");
        let per = limit
            .get("per")
            .ok_or_else(|| ConfigError::new(at, "missing `per` (a period such as `1m`)"))?;
        let (per_written, per_ms) = parse_period(&per_at, per)?;
        let burst =
            positive(&format!("{at}.burst"), limit.get("burst"), false)?.unwrap_or(requests);
        let per_client = match limit.get("per_client") {
            None => false,
            Some(value) => value.as_bool().ok_or_else(|| {
                ConfigError::new(
                    format!("{at}.per_client"),
                    format!("expected `true` or `false`, found {}", kind(value)),
                )
            })?,
        };
        Ok(Self {
            requests,
            per_written,
            burst,
            refill_per_second: f64::from(requests) * 1000.0 / per_ms as f64,
            per_client,
        })
    }

    /// Spend one token for `request` on route `rule`: `None` if taken, else a 429 with
    /// `retry-after`.
    pub(crate) fn check(
        &self,
        rule: &str,
        request: &Request,
        state: &dyn State,
    ) -> Option<Verdict> {
        let key = if self.per_client {
            format!("rate:{rule}:{}", request.client.ip())
        } else {
            format!("rate:{rule}")
        };
        let wait_ms = state
            .take(&key, 1, self.burst, self.refill_per_second)
            .err()?;
        let whom = if self.per_client {
            format!(" for client {}", request.client.ip())
        } else {
            String::new()
        };
        let mut reason = format!(
            "rate limit of `{rule}` reached: {} requests per {} (burst {}){whom}",
            self.requests, self.per_written, self.burst
        );
        let mut headers = Vec::new();
        if wait_ms == u64::MAX {
            reason.push_str("; the limit cannot be checked, so the request is refused");
        } else {
            let seconds = wait_ms.div_ceil(1000).max(1);
            reason.push_str(&format!("; retry in {seconds} s"));
            headers.push(("retry-after".to_owned(), seconds.to_string()));
        }
        Some(Verdict::Deny {
            status: TOO_MANY_REQUESTS,
            reason,
            rule: Some(rule.to_owned()),
            headers,
        })
    }
}

/// A whole number ≥ 1 that fits in 32 bits; `required` makes a missing one an error.
fn positive(at: &str, value: Option<&Value>, required: bool) -> Result<Option<u32>, ConfigError> {
    let Some(value) = value else {
        return if required {
            Err(ConfigError::new(
                at,
                "missing; give a whole number of at least 1",
            ))
        } else {
            Ok(None)
        };
    };
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n >= 1)
        .map(Some)
        .ok_or_else(|| {
            ConfigError::new(
                at,
                format!(
                    "expected a whole number from 1 to {}, found {value}",
                    u32::MAX
                ),
            )
        })
}

/// `500ms`, `30s`, `1m`, `1h` or `1d` → (as written, milliseconds).
fn parse_period(at: &str, value: &Value) -> Result<(String, u64), ConfigError> {
    let error = || {
        ConfigError::new(
            at,
            format!(
                "expected a period such as `1s`, `30s`, `1m`, `1h` or `1d`, found {}",
                match value {
                    Value::String(text) => format!("`{text}`"),
                    other => kind(other).to_owned(),
                }
            ),
        )
    };
    let text = value.as_str().ok_or_else(error)?;
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| error())?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(error()),
    };
    let ms = number
        .checked_mul(unit_ms)
        .filter(|&ms| ms > 0)
        .ok_or_else(error)?;
    Ok((text.to_owned(), ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{MemoryState, NoState, Scheme};

    fn limit(json: &str) -> Result<RateLimit, ConfigError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| ConfigError::new("json", e.to_string()))?;
        RateLimit::parse("routes[0].rate_limit", &value)
    }

    fn request(client: &str) -> Request {
        Request {
            scheme: Scheme::Https,
            method: "GET".into(),
            host: "api.example.com".to_owned(),
            port: 443,
            path: "/".to_owned(),
            client: client.parse().unwrap(),
        }
    }

    #[test]
    fn periods_and_defaults() {
        let parsed = limit(r#"{"requests": 60, "per": "1m"}"#).unwrap();
        assert_eq!(parsed.burst, 60);
        assert!((parsed.refill_per_second - 1.0).abs() < 1e-9);
        assert!(!parsed.per_client);
        let parsed =
            limit(r#"{"requests": 5, "per": "500ms", "burst": 2, "per_client": true}"#).unwrap();
        assert_eq!(parsed.burst, 2);
        assert!((parsed.refill_per_second - 10.0).abs() < 1e-9);
        assert!(limit(r#"{"requests": 1, "per": "1d"}"#).is_ok());
    }

    #[test]
    fn bad_limits_name_the_field() {
        for (json, at, needle) in [
            (r#"{"per": "1m"}"#, "rate_limit.requests", "missing"),
            (
                r#"{"requests": 0, "per": "1m"}"#,
                "rate_limit.requests",
                "from 1 to",
            ),
            (
                r#"{"requests": 1.5, "per": "1m"}"#,
                "rate_limit.requests",
                "whole number",
            ),
            (r#"{"requests": 5}"#, "rate_limit", "missing `per`"),
            (
                r#"{"requests": 5, "per": "1 m"}"#,
                "rate_limit.per",
                "`1 m`",
            ),
            (
                r#"{"requests": 5, "per": "0s"}"#,
                "rate_limit.per",
                "period",
            ),
            (r#"{"requests": 5, "per": "m"}"#, "rate_limit.per", "period"),
            (
                r#"{"requests": 5, "per": 60}"#,
                "rate_limit.per",
                "a number",
            ),
            (
                r#"{"requests": 5, "per": "1w"}"#,
                "rate_limit.per",
                "period",
            ),
            (
                r#"{"requests": 5, "per": "1m", "burst": 0}"#,
                "rate_limit.burst",
                "from 1 to",
            ),
            (
                r#"{"requests": 5, "per": "1m", "per_client": "yes"}"#,
                "rate_limit.per_client",
                "`true` or `false`",
            ),
            (
                r#"{"requests": 5, "per": "1m", "window": 3}"#,
                "rate_limit",
                "unknown key `window`",
            ),
            (r#"[5, "1m"]"#, "rate_limit", "expected"),
        ] {
            let error = limit(json).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("routes[0].{at}:")),
                "{json}: {error}"
            );
            assert!(error.contains(needle), "{json}: {error}");
        }
    }

    #[test]
    fn exactly_the_burst_passes_then_429_with_retry_after() {
        let limit = limit(r#"{"requests": 3, "per": "1m"}"#).unwrap();
        let state = MemoryState::default();
        let passed = (0..10)
            .filter(|_| {
                limit
                    .check("api.example.com", &request("10.0.0.1:1"), &state)
                    .is_none()
            })
            .count();
        assert_eq!(passed, 3);
        let Some(Verdict::Deny {
            status,
            reason,
            headers,
            rule,
        }) = limit.check("api.example.com", &request("10.0.0.1:1"), &state)
        else {
            panic!("expected a deny")
        };
        assert_eq!(status, 429);
        assert_eq!(rule.as_deref(), Some("api.example.com"));
        assert_eq!(headers, vec![("retry-after".to_owned(), "20".to_owned())]);
        assert!(reason.contains("3 requests per 1m"), "{reason}");
        assert!(reason.contains("retry in 20 s"), "{reason}");
    }

    #[test]
    fn per_client_buckets_are_separate() {
        let limit = limit(r#"{"requests": 1, "per": "1h", "per_client": true}"#).unwrap();
        let state = MemoryState::default();
        assert!(limit.check("r", &request("10.0.0.1:1"), &state).is_none());
        assert!(limit.check("r", &request("10.0.0.1:2"), &state).is_some());
        assert!(limit.check("r", &request("10.0.0.2:1"), &state).is_none());
        assert!(
            limit
                .check("r", &request("[2001:db8::1]:1"), &state)
                .is_none()
        );
    }

    #[test]
    fn without_state_the_limit_fails_closed() {
        let limit = limit(r#"{"requests": 100, "per": "1s"}"#).unwrap();
        let Some(Verdict::Deny {
            status,
            headers,
            reason,
            ..
        }) = limit.check("r", &request("10.0.0.1:1"), &NoState)
        else {
            panic!("expected a deny")
        };
        assert_eq!(status, 429);
        assert!(headers.is_empty());
        assert!(reason.contains("cannot be checked"), "{reason}");
    }
}
