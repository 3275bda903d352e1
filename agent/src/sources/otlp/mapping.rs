//! OTLP logs and metrics onto envelopes.
//!
//! | OTLP | envelope |
//! |---|---|
//! | resource attribute `service.name` (or the configured `source_id_attribute`) | `source_id` (`otlp` without one) |
//! | resource attribute `service.instance.id` | `instance_id` |
//! | resource, scope (`otel.scope.name`) and record/point attributes (record wins; nested maps flattened with `.`, arrays as JSON) | tags |
//! | log `time_unix_nano`, else `observed_time_unix_nano` | `timestamp` (arrival time when both are 0) |
//! | log body (strings as they are, other values as JSON) | log payload |
//! | `severity_text`, else the name of `severity_number` | tag `severity`; `severity_number` ≥ 17 (ERROR, FATAL) → log type `ERR` |
//! | `trace_id`, `span_id` | tags `trace_id`, `span_id` (hex) |
//! | monotonic sum | counter: cumulative → `total`, delta → `delta` |
//! | gauge, non-monotonic sum | gauge `name` with the metric's unit |
//! | histogram, exponential histogram | gauges `name.count`, `name.sum`, `name.min`, `name.max`, and for explicit buckets `name.p50`, `name.p90`, `name.p99` (the configured quantiles, estimated by linear interpolation inside the bucket) |
//! | summary | gauges `name.count`, `name.sum`, `name.p<q>` per quantile it carries |
//!
//! A record or point that cannot be an envelope (a monotonic sum below zero or not finite, a
//! timestamp past the year 2262) is refused alone and counted in the export's partial success.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use sluice_proto::opentelemetry::proto::collector::logs::v1::ExportLogsServiceRequest;
use sluice_proto::opentelemetry::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use sluice_proto::opentelemetry::proto::common::v1::{AnyValue, KeyValue, any_value};
use sluice_proto::opentelemetry::proto::metrics::v1::{
    AggregationTemporality, HistogramDataPoint, NumberDataPoint, metric, number_data_point,
};
use sluice_proto::v2::{Counter, Envelope, Gauge, GaugeValue, Log, envelope};

/// How OTLP maps onto envelopes.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Resource attribute naming the source_id.
    pub source_id_attribute: String,
    /// Quantiles estimated from explicit-bucket histograms.
    pub quantiles: Vec<f64>,
}

/// The envelopes of one export and the reasons of what was refused.
#[derive(Debug, Default)]
pub struct Mapped {
    /// Envelopes, in order.
    pub envelopes: Vec<Envelope>,
    /// One `(metric reason, message)` per refused record or point.
    pub refused: Vec<(&'static str, String)>,
}

fn json_of(value: &AnyValue) -> Value {
    match &value.value {
        None => Value::Null,
        Some(any_value::Value::StringValue(text)) => Value::String(text.clone()),
        Some(any_value::Value::BoolValue(flag)) => Value::Bool(*flag),
        Some(any_value::Value::IntValue(number)) => json!(number),
        Some(any_value::Value::DoubleValue(number)) => json!(number),
        Some(any_value::Value::BytesValue(bytes)) => Value::String(hex(bytes)),
        Some(any_value::Value::ArrayValue(array)) => {
            Value::Array(array.values.iter().map(json_of).collect())
        }
        Some(any_value::Value::KvlistValue(list)) => Value::Object(
            list.values
                .iter()
                .map(|pair| {
                    (
                        pair.key.clone(),
                        pair.value.as_ref().map_or(Value::Null, json_of),
                    )
                })
                .collect::<Map<String, Value>>(),
        ),
    }
}

/// A value as text: strings as they are, the rest as JSON.
fn text_of(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        _ => json_of(value).to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn flatten(prefix: &str, attributes: &[KeyValue], tags: &mut HashMap<String, String>) {
    for pair in attributes {
        let name = if prefix.is_empty() {
            pair.key.clone()
        } else {
            format!("{prefix}.{}", pair.key)
        };
        match pair.value.as_ref().and_then(|value| value.value.as_ref()) {
            None => {}
            Some(any_value::Value::KvlistValue(list)) => flatten(&name, &list.values, tags),
            Some(_) => {
                if let Some(value) = &pair.value {
                    tags.insert(name, text_of(value));
                }
            }
        }
    }
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|pair| pair.key == key)
        .and_then(|pair| pair.value.as_ref())
        .map(text_of)
        .filter(|text| !text.is_empty())
}

fn nanos(value: u64) -> Option<i64> {
    i64::try_from(value).ok()
}

/// The common part of every envelope of one resource and scope.
struct Origin {
    source_id: String,
    instance_id: String,
    tags: HashMap<String, String>,
}

fn origin(mapping: &Mapping, resource: Option<&[KeyValue]>, scope_name: Option<&str>) -> Origin {
    let attributes = resource.unwrap_or_default();
    let mut tags = HashMap::new();
    flatten("", attributes, &mut tags);
    if let Some(name) = scope_name.filter(|name| !name.is_empty()) {
        tags.insert("otel.scope.name".to_owned(), name.to_owned());
    }
    Origin {
        source_id: string_attribute(attributes, &mapping.source_id_attribute)
            .unwrap_or_else(|| "otlp".to_owned()),
        instance_id: string_attribute(attributes, "service.instance.id").unwrap_or_default(),
        tags,
    }
}

const SEVERITY_NAMES: [&str; 6] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"];

/// Maps an OTLP logs export.
pub fn logs(request: &ExportLogsServiceRequest, mapping: &Mapping, now: i64) -> Mapped {
    let mut mapped = Mapped::default();
    for resource_logs in &request.resource_logs {
        let resource = resource_logs
            .resource
            .as_ref()
            .map(|resource| resource.attributes.as_slice());
        for scope_logs in &resource_logs.scope_logs {
            let scope = scope_logs.scope.as_ref().map(|scope| scope.name.as_str());
            let origin = origin(mapping, resource, scope);
            for record in &scope_logs.log_records {
                let stamp = if record.time_unix_nano > 0 {
                    record.time_unix_nano
                } else {
                    record.observed_time_unix_nano
                };
                let Some(timestamp) = nanos(stamp) else {
                    mapped.refused.push((
                        "bad_timestamp",
                        format!("log record time {stamp} is past what Sluice stores"),
                    ));
                    continue;
                };
                let mut tags = origin.tags.clone();
                flatten("", &record.attributes, &mut tags);
                let number = record.severity_number;
                let severity = if record.severity_text.is_empty() {
                    usize::try_from(number - 1)
                        .ok()
                        .and_then(|index| SEVERITY_NAMES.get(index / 4))
                        .map(|name| (*name).to_owned())
                } else {
                    Some(record.severity_text.clone())
                };
                if let Some(severity) = severity {
                    tags.insert("severity".to_owned(), severity);
                }
                if !record.trace_id.is_empty() {
                    tags.insert("trace_id".to_owned(), hex(&record.trace_id));
                }
                if !record.span_id.is_empty() {
                    tags.insert("span_id".to_owned(), hex(&record.span_id));
                }
                if !record.event_name.is_empty() {
                    tags.insert("event_name".to_owned(), record.event_name.clone());
                }
                let payload = record.body.as_ref().map(text_of).unwrap_or_default();
                mapped.envelopes.push(Envelope {
                    timestamp: if timestamp > 0 { timestamp } else { now },
                    source_id: origin.source_id.clone(),
                    instance_id: origin.instance_id.clone(),
                    tags,
                    message: Some(envelope::Message::Log(Log {
                        payload: payload.into_bytes(),
                        r#type: if number >= 17 { 1 } else { 0 },
                    })),
                    ..Default::default()
                });
            }
        }
    }
    mapped
}

fn number_value(point: &NumberDataPoint) -> Option<f64> {
    match point.value? {
        number_data_point::Value::AsDouble(value) => Some(value),
        number_data_point::Value::AsInt(value) => Some(value as f64),
    }
}

/// `p50` for 0.5, `p99.9` for 0.999.
fn quantile_name(quantile: f64) -> String {
    let percent = format!("{:.3}", quantile * 100.0);
    let trimmed = percent.trim_end_matches('0').trim_end_matches('.');
    format!("p{trimmed}")
}

/// Estimates quantile `q` of an explicit-bucket histogram by linear interpolation inside the
/// bucket it falls in (the first bucket from `min` or 0, the last up to `max` or its bound).
fn estimate(point: &HistogramDataPoint, q: f64) -> Option<f64> {
    let total: u64 = point.bucket_counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0_u64;
    for (index, count) in point.bucket_counts.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        if (seen + count) as f64 >= rank {
            let lower = match index {
                0 => point
                    .min
                    .unwrap_or(0.0_f64.min(*point.explicit_bounds.first()?)),
                _ => *point.explicit_bounds.get(index - 1)?,
            };
            let upper = match point.explicit_bounds.get(index) {
                Some(bound) => *bound,
                None => point.max.unwrap_or(lower),
            };
            let within = (rank - seen as f64) / *count as f64;
            return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
        }
        seen += count;
    }
    None
}

/// Maps an OTLP metrics export.
pub fn metrics(request: &ExportMetricsServiceRequest, mapping: &Mapping, now: i64) -> Mapped {
    let mut mapped = Mapped::default();
    for resource_metrics in &request.resource_metrics {
        let resource = resource_metrics
            .resource
            .as_ref()
            .map(|resource| resource.attributes.as_slice());
        for scope_metrics in &resource_metrics.scope_metrics {
            let scope = scope_metrics
                .scope
                .as_ref()
                .map(|scope| scope.name.as_str());
            let origin = origin(mapping, resource, scope);
            for metric in &scope_metrics.metrics {
                let name = &metric.name;
                let unit = &metric.unit;
                let emit = |attributes: &[KeyValue], time: u64, message: envelope::Message| {
                    let mut tags = origin.tags.clone();
                    flatten("", attributes, &mut tags);
                    let timestamp = nanos(time).filter(|time| *time > 0).unwrap_or(now);
                    Envelope {
                        timestamp,
                        source_id: origin.source_id.clone(),
                        instance_id: origin.instance_id.clone(),
                        tags,
                        message: Some(message),
                        ..Default::default()
                    }
                };
                let gauges = |values: Vec<(String, f64)>| {
                    envelope::Message::Gauge(Gauge {
                        metrics: values
                            .into_iter()
                            .map(|(name, value)| {
                                (
                                    name,
                                    GaugeValue {
                                        unit: unit.clone(),
                                        value,
                                    },
                                )
                            })
                            .collect(),
                    })
                };
                match &metric.data {
                    None => {}
                    Some(metric::Data::Gauge(gauge)) => {
                        for point in &gauge.data_points {
                            if let Some(value) = number_value(point) {
                                let envelope = emit(
                                    &point.attributes,
                                    point.time_unix_nano,
                                    gauges(vec![(name.clone(), value)]),
                                );
                                mapped.envelopes.push(envelope);
                            }
                        }
                    }
                    Some(metric::Data::Sum(sum)) => {
                        let delta =
                            sum.aggregation_temporality == AggregationTemporality::Delta as i32;
                        for point in &sum.data_points {
                            let Some(value) = number_value(point) else {
                                continue;
                            };
                            let message = if sum.is_monotonic {
                                if !value.is_finite() || value < 0.0 {
                                    mapped.refused.push((
                                        "bad_value",
                                        format!("monotonic sum {name} has value {value}"),
                                    ));
                                    continue;
                                }
                                let value = value as u64;
                                envelope::Message::Counter(Counter {
                                    name: name.clone(),
                                    delta: if delta { value } else { 0 },
                                    total: if delta { 0 } else { value },
                                })
                            } else {
                                gauges(vec![(name.clone(), value)])
                            };
                            let envelope = emit(&point.attributes, point.time_unix_nano, message);
                            mapped.envelopes.push(envelope);
                        }
                    }
                    Some(metric::Data::Histogram(histogram)) => {
                        for point in &histogram.data_points {
                            let mut values = vec![(format!("{name}.count"), point.count as f64)];
                            values.extend(point.sum.map(|sum| (format!("{name}.sum"), sum)));
                            values.extend(point.min.map(|min| (format!("{name}.min"), min)));
                            values.extend(point.max.map(|max| (format!("{name}.max"), max)));
                            for quantile in &mapping.quantiles {
                                if let Some(value) = estimate(point, *quantile) {
                                    values.push((
                                        format!("{name}.{}", quantile_name(*quantile)),
                                        value,
                                    ));
                                }
                            }
                            let envelope =
                                emit(&point.attributes, point.time_unix_nano, gauges(values));
                            mapped.envelopes.push(envelope);
                        }
                    }
                    Some(metric::Data::ExponentialHistogram(histogram)) => {
                        for point in &histogram.data_points {
                            let mut values = vec![(format!("{name}.count"), point.count as f64)];
                            values.extend(point.sum.map(|sum| (format!("{name}.sum"), sum)));
                            values.extend(point.min.map(|min| (format!("{name}.min"), min)));
                            values.extend(point.max.map(|max| (format!("{name}.max"), max)));
                            let envelope =
                                emit(&point.attributes, point.time_unix_nano, gauges(values));
                            mapped.envelopes.push(envelope);
                        }
                    }
                    Some(metric::Data::Summary(summary)) => {
                        for point in &summary.data_points {
                            let mut values = vec![
                                (format!("{name}.count"), point.count as f64),
                                (format!("{name}.sum"), point.sum),
                            ];
                            for quantile in &point.quantile_values {
                                values.push((
                                    format!("{name}.{}", quantile_name(quantile.quantile)),
                                    quantile.value,
                                ));
                            }
                            let envelope =
                                emit(&point.attributes, point.time_unix_nano, gauges(values));
                            mapped.envelopes.push(envelope);
                        }
                    }
                }
            }
        }
    }
    mapped
}
