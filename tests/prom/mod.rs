//! A strict reader of the Prometheus text exposition format (0.0.4), and
//! of the metric names the catalogue (docs/METRICS.md), the dashboard and
//! the alert rules use.

use std::collections::{BTreeMap, BTreeSet, HashSet};

/// The families of an exposition, name to type, after checking every line:
/// `# HELP` and `# TYPE` at most once per family and before its samples,
/// valid names and label sets, numeric values, no series twice.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = HashSet::new();
    let mut sampled: HashSet<String> = HashSet::new();
    let mut series = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (word, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !valid_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            match word {
                "HELP" if !helped.insert(name.to_owned()) => {
                    return Err(at("a second HELP".into()));
                }
                "TYPE" => {
                    let kind = parts.next().unwrap_or("");
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind:?}")));
                    }
                    if sampled.contains(name) {
                        return Err(at("TYPE after samples".into()));
                    }
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(at("a second TYPE".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, labels, value) = sample(line).map_err(at)?;
        let family = family_of(&name, &types);
        if !types.contains_key(&family) {
            return Err(at(format!("no TYPE for {family}")));
        }
        sampled.insert(family);
        match value {
            "+Inf" | "-Inf" | "NaN" => {}
            v => {
                v.parse::<f64>()
                    .map_err(|e| at(format!("value {v:?}: {e}")))?;
            }
        }
        if !series.insert((name.clone(), labels)) {
            return Err(at("a series twice".into()));
        }
    }
    Ok(types)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The family a sample belongs to: histograms' and summaries' `_bucket`,
/// `_sum` and `_count` series belong to their base name.
fn family_of(name: &str, types: &BTreeMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            ) {
                return base.to_owned();
            }
        }
    }
    name.to_owned()
}

/// Sorted (name, value) pairs of a sample.
type Labels = Vec<(String, String)>;

/// `name{a="x",b="y"} value [timestamp]`: the name, the sorted labels and
/// the value.
fn sample(line: &str) -> Result<(String, Labels, &str), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let end;
        loop {
            // label name
            let start = match chars.peek() {
                Some((i, '}')) => {
                    end = *i;
                    break;
                }
                Some((i, _)) => *i,
                None => return Err("unterminated labels".into()),
            };
            let mut eq = None;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    eq = Some(i);
                    break;
                }
            }
            let eq = eq.ok_or("label without =")?;
            let label = &inner[start..eq];
            if !valid_name(label) || label.contains(':') {
                return Err(format!("bad label name {label:?}"));
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted".into());
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => return Err("bad escape in a label value".into()),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            }
            labels.push((label.to_owned(), value));
            match chars.next() {
                Some((_, ',')) => {}
                Some((i, '}')) => {
                    end = i;
                    break;
                }
                _ => return Err("expected , or } after a label".into()),
            }
        }
        rest = &inner[end + 1..];
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() || !rest.starts_with(' ') {
        return Err("trailing text".into());
    }
    let mut names = HashSet::new();
    if !labels.iter().all(|(k, _)| names.insert(k.clone())) {
        return Err("a label twice".into());
    }
    labels.sort();
    Ok((name.to_owned(), labels, value))
}

/// The catalogue's metrics (docs/METRICS.md), name to type.
pub fn catalogue(markdown: &str) -> BTreeMap<String, String> {
    markdown
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_owned(), (*cells.get(2)?).to_owned()))
        })
        .collect()
}

/// Metric names mentioned in `text` (PromQL in a dashboard or rule file),
/// with histogram series suffixes taken off where the catalogue names a
/// histogram.
pub fn mentioned(text: &str, catalogue: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["edgelink_", "process_"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(prefix) {
            let start = from + i;
            let boundary = start == 0
                || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            let end = text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(text.len(), |e| start + e);
            if boundary {
                let name = &text[start..end];
                out.insert(family_of(name, catalogue));
            }
            from = end;
        }
    }
    out
}

#[test]
fn the_reader_refuses_what_prometheus_would() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 3\na_total 4 1700000000\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n";
    let families = parse(ok).unwrap();
    assert_eq!(families.len(), 2);
    for bad in [
        "a 1\n",                                     // no TYPE
        "# TYPE a counter\na 1\na 2\n",              // a series twice
        "# TYPE a counter\na{x=1} 1\n",              // unquoted value
        "# TYPE a counter\na one\n",                 // not a number
        "# TYPE a counter\na 1\n# TYPE a counter\n", // TYPE twice / after samples
        "# TYPE 1a counter\n",                       // bad name
        "# TYPE a counter\na{x=\"1\",x=\"2\"} 1\n",  // a label twice
        "# TYPE a counter\na{x=\"1\"}1\n",           // no space before the value
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
}
