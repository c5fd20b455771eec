//! The canary gates as Argo Rollouts reads them: the `AnalysisTemplate` in
//! deploy/prometheus/canary-gates, each metric's PromQL query and its
//! `successCondition`. The test evaluates the same text Argo Rollouts would,
//! with the template's `{{args.*}}` filled in as the Rollout fills them.

use std::path::PathBuf;

use serde_json::Value;

/// The one file of gate queries (the canary overlay applies it).
pub(crate) fn gates_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/prometheus/canary-gates/analysis-template.yaml")
}

/// One gate: a named PromQL query and the condition its first sample must meet.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    /// The metric's name in the template (`success-rate`, `p99-latency`).
    pub(crate) name: String,
    /// The query with `{{args.NAME}}` still in it.
    pub(crate) query: String,
    /// The parsed `successCondition`.
    pub(crate) condition: Condition,
}

/// `result[0] >= 0.99` and the like: the only form the gates use, so the
/// test can evaluate it exactly (Argo Rollouts' expression language is
/// richer; a gate written otherwise fails [`Condition::parse`] here).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Condition {
    at_least: bool,
    threshold: f64,
}

impl Condition {
    /// Parses `result[0] >= NUMBER` or `result[0] <= NUMBER`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .trim()
            .strip_prefix("result[0]")
            .ok_or_else(|| format!("{text:?}: expected `result[0] >= N` or `result[0] <= N`"))?
            .trim_start();
        let (at_least, number) = if let Some(number) = rest.strip_prefix(">=") {
            (true, number)
        } else if let Some(number) = rest.strip_prefix("<=") {
            (false, number)
        } else {
            return Err(format!("{text:?}: only >= and <= are understood"));
        };
        let threshold = number
            .trim()
            .parse()
            .map_err(|error| format!("{text:?}: threshold: {error}"))?;
        Ok(Condition {
            at_least,
            threshold,
        })
    }

    /// Whether a measured value passes, as Argo Rollouts compares floats
    /// (NaN, what a ratio of no calls gives, passes nothing).
    pub(crate) fn passes(&self, value: f64) -> bool {
        if self.at_least {
            value >= self.threshold
        } else {
            value <= self.threshold
        }
    }
}

impl Gate {
    /// The query with every `{{args.NAME}}` replaced; panics on an argument
    /// `args` does not give, so a new one in the template cannot go untested.
    pub(crate) fn query_with(&self, args: &[(&str, &str)]) -> String {
        let mut query = self.query.clone();
        for (name, value) in args {
            query = query.replace(&format!("{{{{args.{name}}}}}"), value);
        }
        assert!(
            !query.contains("{{"),
            "gate {}: an argument the test does not fill: {query}",
            self.name
        );
        query
    }
}

/// Every Prometheus metric of the template, in order.
pub(crate) fn load() -> Vec<Gate> {
    let path = gates_file();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let template: Value =
        serde_norway::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    assert_eq!(template["kind"], "AnalysisTemplate", "{}", path.display());
    let metrics = template["spec"]["metrics"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no spec.metrics", path.display()));
    metrics
        .iter()
        .map(|metric| {
            let name = metric["name"].as_str().unwrap_or_default().to_string();
            let query = metric["provider"]["prometheus"]["query"]
                .as_str()
                .unwrap_or_else(|| panic!("gate {name}: not a Prometheus query"))
                .to_string();
            let condition = metric["successCondition"]
                .as_str()
                .ok_or_else(|| format!("gate {name}: no successCondition"))
                .and_then(Condition::parse)
                .unwrap_or_else(|error| panic!("{error}"));
            Gate {
                name,
                query,
                condition,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse_and_compare_like_argo() {
        let at_least = Condition::parse("result[0] >= 0.99").unwrap();
        assert!(at_least.passes(0.995) && at_least.passes(0.99));
        assert!(!at_least.passes(0.98) && !at_least.passes(f64::NAN));
        let at_most = Condition::parse(" result[0] <= 0.5 ").unwrap();
        assert!(at_most.passes(0.2) && !at_most.passes(0.7) && !at_most.passes(f64::NAN));
        assert!(Condition::parse("result[0] > 1").is_err());
        assert!(Condition::parse("len(result) > 0").is_err());
    }
}
