//! The metric names a PromQL expression reads, found by a small lexer: what
//! is left once string literals, label matchers (`{...}`), ranges (`[...]`),
//! label lists (`by (...)`, `on (...)`, ...), numbers, keywords, functions
//! and aggregations are taken away. Enough for the expressions we write
//! (rules, dashboards, canary gates); its tests below say what it covers.

use std::collections::BTreeSet;

/// Words that are never metric names where they stand.
const KEYWORDS: [&str; 12] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "atan2",
];
/// Aggregations, which may take `by (...)` before their parenthesis.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a list of label names, not expressions.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Every metric (or recording rule) name `expr` selects.
pub(crate) fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_to(&chars, i, '}'),
            '[' => i = skip_to(&chars, i, ']'),
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '$' => {
                // A Grafana variable ($__rate_interval, ${job}).
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || "_{}".contains(chars[i])) {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i]))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..]
                    .iter()
                    .position(|c| !c.is_whitespace())
                    .map(|at| chars[i + at]);
                if LABEL_LISTS.contains(&word.as_str()) && next == Some('(') {
                    let open = i + chars[i..].iter().position(|&c| c == '(').unwrap();
                    i = skip_to(&chars, open, ')');
                } else if KEYWORDS.contains(&word.as_str())
                    || AGGREGATIONS.contains(&word.as_str())
                    || next == Some('(')
                    || word.eq_ignore_ascii_case("inf")
                    || word.eq_ignore_ascii_case("nan")
                {
                    // An operator, a function or a number word.
                } else {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Index after the string literal opening at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Index after the `close` that ends the bracket opening at `start`
/// (strings inside skipped).
fn skip_to(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() && chars[i] != close {
        if "\"'`".contains(chars[i]) {
            i = skip_string(chars, i);
        } else {
            i += 1;
        }
    }
    i + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn finds_the_series_and_nothing_else() {
        assert_eq!(
            names(
                r#"histogram_quantile(0.99, sum by (job, le) (rate(grpc_server_duration_seconds_bucket{method=~"user\\.v1\\.UserService/.+", code!="OK"}[5m])))"#
            ),
            ["grpc_server_duration_seconds_bucket"]
        );
        assert_eq!(
            names(
                "1 - (sum(rate(a_total{x=\"}\"}[1m])) or vector(0)) / sum without (instance) (b_total offset 5m)"
            ),
            ["a_total", "b_total"]
        );
        assert_eq!(
            names("x:y:rate5m < on () group_left () (0.9 * up{job=\"a\"}) and bool c == inf"),
            ["c", "up", "x:y:rate5m"]
        );
        assert_eq!(
            names("sum(rate(d_total[$__rate_interval])) # comment e_total"),
            ["d_total"]
        );
    }
}
