use sluice_proto::opentelemetry::proto::collector::logs::v1::ExportLogsServiceRequest;
use sluice_proto::opentelemetry::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use sluice_proto::opentelemetry::proto::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use sluice_proto::opentelemetry::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use sluice_proto::opentelemetry::proto::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use sluice_proto::opentelemetry::proto::resource::v1::Resource;
use sluice_proto::v2::envelope;

use super::mapping::{Mapping, logs, metrics};

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    }
}

fn mapping() -> Mapping {
    Mapping {
        source_id_attribute: "service.name".into(),
        quantiles: vec![0.5, 0.99],
    }
}

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![
            text("service.name", "checkout"),
            text("service.instance.id", "i-3"),
        ],
        dropped_attributes_count: 0,
    })
}

#[test]
fn log_records_map_with_severity_attributes_and_trace() {
    let record = LogRecord {
        time_unix_nano: 1_795_766_400_000_000_000,
        severity_number: 17,
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue("payment failed".into())),
        }),
        attributes: vec![
            text("order", "17"),
            KeyValue {
                key: "http".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::KvlistValue(KeyValueList {
                        values: vec![text("method", "POST")],
                    })),
                }),
            },
        ],
        trace_id: vec![0xab; 16],
        span_id: vec![0x01; 8],
        ..Default::default()
    };
    let structured = LogRecord {
        observed_time_unix_nano: 5,
        severity_text: "notice".into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::KvlistValue(KeyValueList {
                values: vec![text("k", "v")],
            })),
        }),
        ..Default::default()
    };
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "app.payments".into(),
                    ..Default::default()
                }),
                log_records: vec![record, structured],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    let mapped = logs(&request, &mapping(), 99);
    assert!(mapped.refused.is_empty());
    let first = &mapped.envelopes[0];
    assert_eq!(first.source_id, "checkout");
    assert_eq!(first.instance_id, "i-3");
    assert_eq!(first.timestamp, 1_795_766_400_000_000_000);
    let tag = |name: &str| first.tags.get(name).map(String::as_str);
    assert_eq!(tag("severity"), Some("ERROR"));
    assert_eq!(tag("order"), Some("17"));
    assert_eq!(tag("http.method"), Some("POST"));
    assert_eq!(tag("otel.scope.name"), Some("app.payments"));
    assert_eq!(tag("trace_id"), Some("abababababababababababababababab"));
    match &first.message {
        Some(envelope::Message::Log(log)) => {
            assert_eq!(log.payload, b"payment failed");
            assert_eq!(log.r#type, 1, "ERROR is ERR");
        }
        other => panic!("{other:?}"),
    }
    let second = &mapped.envelopes[1];
    assert_eq!(second.timestamp, 5, "the observed time");
    assert_eq!(
        second.tags.get("severity").map(String::as_str),
        Some("notice")
    );
    match &second.message {
        Some(envelope::Message::Log(log)) => assert_eq!(log.payload, br#"{"k":"v"}"#),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sums_gauges_and_histograms_map_onto_counters_and_gauges() {
    let point = |value: f64| NumberDataPoint {
        attributes: vec![text("route", "/pay")],
        time_unix_nano: 7,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                scope: None,
                metrics: vec![
                    Metric {
                        name: "requests".into(),
                        data: Some(metric::Data::Sum(Sum {
                            data_points: vec![point(12.0), point(-1.0)],
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "latency".into(),
                        unit: "ms".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points: vec![HistogramDataPoint {
                                count: 10,
                                sum: Some(420.0),
                                bucket_counts: vec![5, 4, 1],
                                explicit_bounds: vec![10.0, 100.0],
                                min: Some(2.0),
                                max: Some(300.0),
                                ..Default::default()
                            }],
                            aggregation_temporality: 2,
                        })),
                        ..Default::default()
                    },
                ],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    let mapped = metrics(&request, &mapping(), 99);
    assert_eq!(mapped.refused.len(), 1, "the negative monotonic sum");
    assert_eq!(mapped.envelopes.len(), 2);
    match &mapped.envelopes[0].message {
        Some(envelope::Message::Counter(counter)) => {
            assert_eq!(
                (counter.name.as_str(), counter.total, counter.delta),
                ("requests", 12, 0)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        mapped.envelopes[0].tags.get("route").map(String::as_str),
        Some("/pay")
    );
    assert_eq!(mapped.envelopes[0].timestamp, 7);
    match &mapped.envelopes[1].message {
        Some(envelope::Message::Gauge(gauge)) => {
            let value = |name: &str| gauge.metrics.get(name).map(|value| value.value);
            assert_eq!(value("latency.count"), Some(10.0));
            assert_eq!(value("latency.sum"), Some(420.0));
            assert_eq!(value("latency.max"), Some(300.0));
            // The median is the 5th of 10: the top of the first bucket (2 to 10).
            assert_eq!(value("latency.p50"), Some(10.0));
            // The 99th percentile sits in the last bucket (100 to max 300): 100 + 0.9 * 200.
            let p99 = value("latency.p99").expect("p99");
            assert!((p99 - 280.0).abs() < 1e-9, "{p99}");
            assert_eq!(gauge.metrics["latency.count"].unit, "ms");
        }
        other => panic!("{other:?}"),
    }
}
