//! `policy test --coverage`: which of the policy's rules the cases reached.
//!
//! Rules are the ids the policy's configure summary lists; a case reaches a rule when
//! its verdict names it (allow, inject or deny alike). For the built-in policy the
//! routes are also read natively ([`policy_guest::Routes::coverage_items`]) so that the
//! items inside a route count too: each `path_allowlist` entry, each listed port, and
//! the `git` (fetch, push), `graphql` and `mcp` rules. The percentage is reached items
//! (rules and route items together) over all of them; a policy with none is 100%.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::policy::{Request, Scheme, Summary, Verdict};

/// `--min-coverage`: a percentage from 0 to 100.
pub(super) fn parse_percent(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{text}` is not a number; give a percentage such as 80"))?;
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("`{text}` is not between 0 and 100"))
    }
}

/// What the cases reached so far.
pub(super) struct Coverage {
    rules: Vec<String>,
    reached_rules: BTreeSet<String>,
    /// The built-in policy's routes, read natively; `None` for a module from a file.
    builtin: Option<policy_guest::Routes>,
    items: Vec<policy_guest::CoverageItem>,
    reached_items: BTreeSet<policy_guest::CoverageItem>,
}

impl Coverage {
    /// Start from the summary; `builtin_routes` is the routes JSON when the policy is
    /// the built-in one.
    pub(super) fn new(summary: &Summary, builtin_routes: Option<&str>) -> Self {
        // The built-in policy accepted this document already, so it parses here too.
        let builtin = builtin_routes.and_then(|json| policy_guest::Routes::parse(json).ok());
        let items = builtin
            .as_ref()
            .map(policy_guest::Routes::coverage_items)
            .unwrap_or_default();
        Self {
            rules: summary.rule_ids.clone(),
            reached_rules: BTreeSet::new(),
            builtin,
            items,
            reached_items: BTreeSet::new(),
        }
    }

    /// Record one case: its request (if the proxy would ask the policy at all) and
    /// the verdict it got.
    pub(super) fn record(&mut self, request: Option<&Request>, verdict: &Verdict) {
        if let Some(rule) = verdict.rule() {
            self.reached_rules.insert(rule.to_owned());
        }
        if let (Some(routes), Some(request)) = (&self.builtin, request) {
            let native = policy_guest::Request {
                scheme: match request.scheme {
                    Scheme::Http => policy_guest::Scheme::Http,
                    Scheme::Https => policy_guest::Scheme::Https,
                },
                method: request.method.clone().into(),
                host: request.host.clone(),
                port: request.port,
                path: request.path.clone(),
                client: request.client,
            };
            self.reached_items.extend(routes.coverage_reached(&native));
        }
    }

    fn unreached_rules(&self) -> Vec<&str> {
        self.rules
            .iter()
            .filter(|rule| !self.reached_rules.contains(*rule))
            .map(String::as_str)
            .collect()
    }

    fn unreached_items(&self) -> Vec<&policy_guest::CoverageItem> {
        self.items
            .iter()
            .filter(|item| !self.reached_items.contains(*item))
            .collect()
    }

    fn counts(&self) -> (usize, usize, usize, usize) {
        let rules = self.rules.len();
        let items = self.items.len();
        (
            rules - self.unreached_rules().len(),
            rules,
            items - self.unreached_items().len(),
            items,
        )
    }

    /// Reached over all, in percent.
    pub(super) fn percent(&self) -> f64 {
        let (rules_hit, rules, items_hit, items) = self.counts();
        let total = rules + items;
        if total == 0 {
            return 100.0;
        }
        #[expect(
            clippy::cast_precision_loss,
            reason = "counts of rules are far below 2^52"
        )]
        let percent = (rules_hit + items_hit) as f64 * 100.0 / total as f64;
        percent
    }

    /// The text report: a summary line, then a line per thing no case reached.
    pub(super) fn lines(&self) -> Vec<String> {
        let (rules_hit, rules, items_hit, items) = self.counts();
        let mut lines = vec![if self.builtin.is_some() {
            format!(
                "coverage: {:.1}% ({rules_hit} of {rules} rules, {items_hit} of {items} route items)",
                self.percent()
            )
        } else {
            format!(
                "coverage: {:.1}% ({rules_hit} of {rules} rules)",
                self.percent()
            )
        }];
        for rule in self.unreached_rules() {
            lines.push(format!("not exercised: rule {rule}"));
        }
        for item in self.unreached_items() {
            lines.push(format!("not exercised: {item}"));
        }
        lines
    }

    /// The JSON report.
    pub(super) fn json(&self) -> Value {
        let (rules_hit, rules, items_hit, items) = self.counts();
        let unreached: Vec<Value> = self
            .unreached_items()
            .iter()
            .map(|item| json!({ "rule": item.rule, "kind": item.kind, "value": item.value }))
            .collect();
        json!({
            "percent": self.percent(),
            "rules": {
                "total": rules,
                "exercised": rules_hit,
                "not_exercised": self.unreached_rules(),
            },
            "route_items": {
                "total": items,
                "exercised": items_hit,
                "not_exercised": unreached,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_checked() {
        assert_eq!(parse_percent("80").unwrap(), 80.0);
        assert_eq!(parse_percent("92.5%").unwrap(), 92.5);
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("-1").is_err());
        assert!(parse_percent("most").is_err());
    }
}
