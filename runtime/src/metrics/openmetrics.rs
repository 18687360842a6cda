//! The OpenMetrics text format (`/metrics` when a scraper's `Accept` asks for
//! `application/openmetrics-text`), from the Prometheus text the registry encodes: a counter
//! family is named without its `_total` suffix in its `HELP` and `TYPE` lines (its samples
//! keep it), and the exposition ends with `# EOF`. Gauges and histograms read the same in
//! both formats.

use std::collections::HashSet;

/// The media type of the answer.
pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `text` (Prometheus text format) in the OpenMetrics text format.
pub fn from_prometheus_text(text: &str) -> String {
    let counters: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, kind)| *kind == "counter")
        .map(|(name, _)| name)
        .collect();
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.lines() {
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = match name.strip_suffix("_total") {
                    Some(base) if counters.contains(name) => base,
                    _ => name,
                };
                out.push_str(prefix);
                out.push_str(name);
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_lose_their_suffix_in_metadata_only_and_the_end_is_marked() {
        let text = "# HELP a_total Things\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\
                    # HELP g Level\n# TYPE g gauge\ng 2\n";
        assert_eq!(
            from_prometheus_text(text),
            "# HELP a Things\n# TYPE a counter\na_total{x=\"1\"} 3\n\
             # HELP g Level\n# TYPE g gauge\ng 2\n# EOF\n"
        );
    }
}
