//! The two text formats of `/metrics`. The exposition is written in the OpenMetrics text
//! format (`prometheus-client`'s), served as is when a scraper's `Accept` asks for
//! `application/openmetrics-text` (Prometheus does, first); for everyone else it is turned
//! into the Prometheus text format 0.0.4: a counter family is named with its `_total`
//! suffix in its `HELP` and `TYPE` lines (its samples have it in both formats), and the
//! `# EOF` and `# UNIT` lines go. Gauges and histograms read the same in both.

use std::collections::HashSet;

/// The media type of the OpenMetrics answer.
pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The media type of the Prometheus text answer.
pub const PROMETHEUS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `text` (OpenMetrics) in the Prometheus text format.
pub fn to_prometheus_text(text: &str) -> String {
    let counters: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, kind)| *kind == "counter")
        .map(|(name, _)| name)
        .collect();
    let mut out = String::with_capacity(text.len() + 16 * counters.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gain_their_suffix_in_metadata_and_the_end_marker_goes() {
        let text = "# HELP a Things.\n# TYPE a counter\na_total{x=\"1\"} 3\n\
                    # HELP g Level.\n# TYPE g gauge\ng 2\n# EOF\n";
        assert_eq!(
            to_prometheus_text(text),
            "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\
             # HELP g Level.\n# TYPE g gauge\ng 2\n"
        );
    }
}
