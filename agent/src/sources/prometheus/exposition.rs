//! The Prometheus text exposition format (version 0.0.4) and its mapping onto envelopes.
//!
//! | Prometheus | envelope |
//! |---|---|
//! | a `counter` family's sample (`name` or `name_total`) | counter: `name` as exposed, `total` the value rounded down (negative or not finite: refused) |
//! | a `gauge` or untyped sample | gauge: `metrics[name] = value`, no unit |
//! | a `histogram` or `summary` family's samples (`_bucket` with `le`, `_sum`, `_count`, quantiles) | gauges, one per sample, under the sample's own name |
//! | labels | tags (`le` and `quantile` among them) |
//! | the sample's timestamp (ms) | `timestamp` (else the scrape time) |
//! | the target's `source_id` | `source_id`; the target's `host:port` is tag `instance` unless a label sets it |
//!
//! `_created` samples of typed families are left out. A line that cannot be read is refused
//! alone (counted) and the rest of the page is kept.

use std::collections::HashMap;

use sluice_proto::v2::{Counter, Envelope, Gauge, GaugeValue, envelope};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name as exposed.
    pub name: String,
    /// Labels in order.
    pub labels: Vec<(String, String)>,
    /// Value (may be NaN or infinite).
    pub value: f64,
    /// Milliseconds since the epoch, if the line gives one.
    pub timestamp_ms: Option<i64>,
}

/// A page: its samples, the families' types, and the lines refused.
#[derive(Debug, Default)]
pub struct Page {
    /// Samples in order.
    pub samples: Vec<Sample>,
    /// `# TYPE` of each family.
    pub types: HashMap<String, String>,
    /// Lines that could not be read: `(line number, reason)`.
    pub refused: Vec<(usize, String)>,
}

/// Parses a whole page.
pub fn parse(text: &str) -> Page {
    let mut page = Page::default();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_ascii_whitespace();
            if words.next() == Some("TYPE")
                && let (Some(name), Some(kind)) = (words.next(), words.next())
            {
                page.types.insert(name.to_owned(), kind.to_owned());
            }
            continue;
        }
        match parse_sample(line) {
            Ok(sample) => page.samples.push(sample),
            Err(reason) => page.refused.push((index + 1, reason)),
        }
    }
    page
}

fn is_name_char(character: char, first: bool) -> bool {
    character.is_ascii_alphabetic()
        || character == '_'
        || character == ':'
        || (!first && character.is_ascii_digit())
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .char_indices()
        .find(|&(index, character)| !is_name_char(character, index == 0))
        .map_or(line.len(), |(index, _)| index);
    if name_end == 0 {
        return Err("no metric name".to_owned());
    }
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut cursor = inner;
        loop {
            cursor = cursor.trim_start_matches([' ', ',']);
            if let Some(after) = cursor.strip_prefix('}') {
                rest = after;
                break;
            }
            let equals = cursor.find('=').ok_or("label without '='")?;
            let label = cursor[..equals].trim();
            if label.is_empty()
                || !label
                    .chars()
                    .enumerate()
                    .all(|(i, c)| is_name_char(c, i == 0) && c != ':')
            {
                return Err(format!("bad label name {label:?}"));
            }
            let mut value = String::new();
            let mut characters = cursor[equals + 1..]
                .strip_prefix('"')
                .ok_or("label value not in quotes")?
                .char_indices();
            let consumed = loop {
                match characters.next() {
                    Some((_, '\\')) => match characters.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, other)) => value.push(other),
                        None => return Err("unterminated label value".to_owned()),
                    },
                    Some((index, '"')) => break index + 1,
                    Some((_, other)) => value.push(other),
                    None => return Err("unterminated label value".to_owned()),
                }
            };
            labels.push((label.to_owned(), value));
            cursor = &cursor[equals + 2 + consumed..];
        }
    }
    let mut fields = rest.split_ascii_whitespace();
    let value_text = fields.next().ok_or("no value")?;
    let value = match value_text {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        other => other
            .parse::<f64>()
            .map_err(|_| format!("value {other:?} is not a number"))?,
    };
    let timestamp_ms = match fields.next() {
        None => None,
        Some(stamp) => Some(
            stamp
                .parse::<i64>()
                .map_err(|_| format!("timestamp {stamp:?} is not an integer"))?,
        ),
    };
    if fields.next().is_some() {
        return Err("trailing text after the timestamp".to_owned());
    }
    Ok(Sample {
        name,
        labels,
        value,
        timestamp_ms,
    })
}

/// The `# TYPE` of the family a sample belongs to (a counter's family may be declared with
/// or without `_total`, as client libraries differ).
fn kind_of<'a>(name: &str, types: &'a HashMap<String, String>) -> Option<&'a str> {
    if let Some(kind) = types.get(name) {
        return Some(kind);
    }
    ["_total", "_bucket", "_sum", "_count", "_created"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find_map(|family| {
            types
                .get(family)
                .or_else(|| types.get(&format!("{family}_total")))
        })
        .map(String::as_str)
}

/// Envelopes of a page scraped from `instance` at `now`; samples that cannot be one (a counter
/// that is negative or not finite) are returned as refusals.
pub fn envelopes(
    page: &Page,
    source_id: &str,
    instance: &str,
    now: i64,
) -> (Vec<Envelope>, Vec<String>) {
    let mut out = Vec::with_capacity(page.samples.len());
    let mut refused = Vec::new();
    for sample in &page.samples {
        let kind = kind_of(&sample.name, &page.types).unwrap_or("untyped");
        // `_created` series say when a counter or histogram started, not a measurement.
        if sample.name.ends_with("_created") && kind != "untyped" {
            continue;
        }
        let mut tags: HashMap<String, String> = sample.labels.iter().cloned().collect();
        tags.entry("instance".to_owned())
            .or_insert_with(|| instance.to_owned());
        let timestamp = sample
            .timestamp_ms
            .and_then(|ms| ms.checked_mul(1_000_000))
            .unwrap_or(now);
        let message = if kind == "counter" {
            if !sample.value.is_finite() || sample.value < 0.0 {
                refused.push(format!(
                    "counter {} has value {}, not a finite non-negative number",
                    sample.name, sample.value
                ));
                continue;
            }
            envelope::Message::Counter(Counter {
                name: sample.name.clone(),
                delta: 0,
                total: sample.value as u64,
            })
        } else {
            envelope::Message::Gauge(Gauge {
                metrics: HashMap::from([(
                    sample.name.clone(),
                    GaugeValue {
                        unit: String::new(),
                        value: sample.value,
                    },
                )]),
            })
        };
        out.push(Envelope {
            timestamp,
            source_id: source_id.to_owned(),
            tags,
            message: Some(message),
            ..Default::default()
        });
    }
    (out, refused)
}
