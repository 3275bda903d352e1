//! Loggregator v2 envelopes in the protobuf JSON mapping, as the RLP Gateway and Log Cache
//! write them (`protojson` with unpopulated fields emitted): lowerCamelCase field names, 64-bit
//! integers as decimal strings, bytes as standard base64, enums by name, non-finite doubles as
//! `"NaN"`, `"Infinity"`, `"-Infinity"`.

use base64::Engine;
use serde_json::{Map, Value, json};
use sluice_proto::v2::{Envelope, envelope, log, value};

/// `{"batch": [...]}`.
pub fn batch_json<'a>(envelopes: impl IntoIterator<Item = &'a Envelope>) -> Value {
    json!({ "batch": envelopes.into_iter().map(envelope_json).collect::<Vec<_>>() })
}

/// One envelope.
pub fn envelope_json(envelope: &Envelope) -> Value {
    let mut object = Map::new();
    object.insert(
        "timestamp".to_owned(),
        json!(envelope.timestamp.to_string()),
    );
    object.insert("sourceId".to_owned(), json!(envelope.source_id));
    object.insert("instanceId".to_owned(), json!(envelope.instance_id));
    let deprecated: Map<String, Value> = envelope
        .deprecated_tags
        .iter()
        .map(|(name, tag)| {
            let data = match &tag.data {
                Some(value::Data::Text(text)) => json!({ "text": text }),
                Some(value::Data::Integer(integer)) => json!({ "integer": integer.to_string() }),
                Some(value::Data::Decimal(decimal)) => json!({ "decimal": double(*decimal) }),
                None => json!({}),
            };
            (name.clone(), data)
        })
        .collect();
    object.insert("deprecatedTags".to_owned(), Value::Object(deprecated));
    let tags: Map<String, Value> = envelope
        .tags
        .iter()
        .map(|(name, value)| (name.clone(), json!(value)))
        .collect();
    object.insert("tags".to_owned(), Value::Object(tags));
    match &envelope.message {
        Some(envelope::Message::Log(entry)) => {
            let kind = if entry.r#type == log::Type::Err as i32 {
                "ERR"
            } else {
                "OUT"
            };
            object.insert(
                "log".to_owned(),
                json!({
                    "payload": base64::engine::general_purpose::STANDARD.encode(&entry.payload),
                    "type": kind,
                }),
            );
        }
        Some(envelope::Message::Counter(counter)) => {
            object.insert(
                "counter".to_owned(),
                json!({
                    "name": counter.name,
                    "delta": counter.delta.to_string(),
                    "total": counter.total.to_string(),
                }),
            );
        }
        Some(envelope::Message::Gauge(gauge)) => {
            let metrics: Map<String, Value> = gauge
                .metrics
                .iter()
                .map(|(name, metric)| {
                    (
                        name.clone(),
                        json!({ "unit": metric.unit, "value": double(metric.value) }),
                    )
                })
                .collect();
            object.insert("gauge".to_owned(), json!({ "metrics": metrics }));
        }
        Some(envelope::Message::Timer(timer)) => {
            object.insert(
                "timer".to_owned(),
                json!({
                    "name": timer.name,
                    "start": timer.start.to_string(),
                    "stop": timer.stop.to_string(),
                }),
            );
        }
        Some(envelope::Message::Event(event)) => {
            object.insert(
                "event".to_owned(),
                json!({ "title": event.title, "body": event.body }),
            );
        }
        None => {}
    }
    Value::Object(object)
}

/// A double as protobuf JSON writes it.
fn double(value: f64) -> Value {
    if value.is_nan() {
        json!("NaN")
    } else if value == f64::INFINITY {
        json!("Infinity")
    } else if value == f64::NEG_INFINITY {
        json!("-Infinity")
    } else {
        json!(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::v2::{Counter, Gauge, GaugeValue, Log};

    #[test]
    fn envelopes_follow_the_protobuf_json_mapping() {
        let log = Envelope {
            timestamp: 1_700_000_000_123_456_789,
            source_id: "app".into(),
            instance_id: "1".into(),
            tags: [("job".to_owned(), "web".to_owned())].into_iter().collect(),
            message: Some(envelope::Message::Log(Log {
                payload: b"hi\xff".to_vec(),
                r#type: log::Type::Err as i32,
            })),
            ..Default::default()
        };
        assert_eq!(
            envelope_json(&log),
            json!({
                "timestamp": "1700000000123456789",
                "sourceId": "app",
                "instanceId": "1",
                "deprecatedTags": {},
                "tags": {"job": "web"},
                "log": {"payload": "aGn/", "type": "ERR"},
            })
        );
        let counter = Envelope {
            message: Some(envelope::Message::Counter(Counter {
                name: "requests".into(),
                delta: 1,
                total: u64::MAX,
            })),
            ..Default::default()
        };
        assert_eq!(
            envelope_json(&counter)["counter"],
            json!({"name": "requests", "delta": "1", "total": "18446744073709551615"})
        );
        let gauge = Envelope {
            message: Some(envelope::Message::Gauge(Gauge {
                metrics: [
                    (
                        "cpu".to_owned(),
                        GaugeValue {
                            unit: "percent".into(),
                            value: 0.5,
                        },
                    ),
                    (
                        "bad".to_owned(),
                        GaugeValue {
                            unit: String::new(),
                            value: f64::NAN,
                        },
                    ),
                ]
                .into_iter()
                .collect(),
            })),
            ..Default::default()
        };
        assert_eq!(
            envelope_json(&gauge)["gauge"],
            json!({"metrics": {"cpu": {"unit": "percent", "value": 0.5}, "bad": {"unit": "", "value": "NaN"}}})
        );
    }
}
