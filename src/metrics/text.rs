//! The Prometheus text exposition format, version 0.0.4: a writer, and a
//! parser for what `iostat` needs (samples with labels; comments skipped).
//!
//! ```text
//! # HELP lsvd_io_requests_total Requests answered by the front end, by type.
//! # TYPE lsvd_io_requests_total counter
//! lsvd_io_requests_total{op="read"} 12
//! ```

use std::fmt::Write as _;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Builds an exposition: a family's `# HELP` and `# TYPE` lines, then its
/// samples.
#[derive(Default)]
pub struct Writer {
    out: String,
}

/// `v` as the format writes it: integers without a fraction, `+Inf`,
/// `-Inf`, `NaN`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Escape a label value (backslash, double quote, newline).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Escape a help text (backslash, newline).
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

impl Writer {
    /// Start family `name` of type `kind` (`counter`, `gauge`,
    /// `histogram`).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// One sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name (with a histogram's `_bucket`, `_sum`, `_count`).
    pub name: String,
    /// Labels in order.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// The value of label `k`.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

/// Parse a value: a float, `+Inf`, `-Inf`, `NaN`.
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Parse one sample line (`name{labels} value [timestamp]`).
pub fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=')?;
            let k = &rest[..eq];
            if !valid_name(k) || k.contains(':') {
                return None;
            }
            rest = rest[eq + 1..].strip_prefix('"')?;
            let mut v = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '"' => break i,
                    '\\' => match chars.next()?.1 {
                        'n' => v.push('\n'),
                        '\\' => v.push('\\'),
                        '"' => v.push('"'),
                        _ => return None,
                    },
                    c => v.push(c),
                }
            };
            labels.push((k.to_owned(), v));
            rest = &rest[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return None;
            }
        }
    }
    let mut fields = rest.strip_prefix(' ')?.split(' ');
    let value = parse_value(fields.next()?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Every sample of `text`; `Err` names the first line that is neither a
/// sample, a comment nor empty.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_sample(line).ok_or_else(|| format!("line {}: {line:?}", n + 1))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_text_parses_back() {
        let mut w = Writer::default();
        w.family("a_total", "counter", "Help with \\ and\nnewline.");
        w.sample("a_total", &[], 3.0);
        w.sample("a_total", &[("x", "q\"uo\\te\nd"), ("y", "")], 0.25);
        w.sample("b", &[("le", "+Inf")], f64::INFINITY);
        let t = w.finish();
        assert!(t.starts_with(
            "# HELP a_total Help with \\\\ and\\nnewline.\n# TYPE a_total counter\na_total 3\n"
        ));
        let s = parse(&t).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].label("x"), Some("q\"uo\\te\nd"));
        assert_eq!(s[1].label("y"), Some(""));
        assert_eq!(s[1].value, 0.25);
        assert_eq!(s[2].value, f64::INFINITY);
    }

    #[test]
    fn bad_lines_are_refused() {
        for bad in [
            "1abc 1",
            "a{x=1} 1",
            "a{x=\"1\" 1",
            "a 1 2 3",
            "a one",
            "a{x=\"1\"}1",
            "a",
        ] {
            assert!(parse_sample(bad).is_none(), "{bad}");
        }
        assert_eq!(parse_sample("a{} 1 1700000000").unwrap().value, 1.0);
        assert_eq!(format_value(1e-6), "0.000001");
        assert_eq!(format_value(12.0), "12");
    }
}
