//! Live tail: history from the index, then the bus, with a cursor across both
//! (`engine.rs`); the shared reader of the live edge (`hub.rs`); what a tail selects
//! (`filter.rs`); its cursor (`cursor.rs`); its metrics.

pub mod cursor;
pub mod engine;
pub(crate) mod filter;
pub mod hub;
pub mod metrics;

pub use cursor::Cursor;
pub use engine::{Delivered, Dropped, Start, TailEvent, TailLimits, TailStream, Tails};
pub use filter::TailFilter;

use serde_json::{Value, json};
use sluice_common::envelope::{decode_payload, kind_name, merged_tags};
use sluice_proto::v2::{Envelope, envelope, log};

/// A delivered envelope as JSON for tail clients: the envelope, and its identity (the agent,
/// the batch's sequence there, the envelope's position in the batch) and bus position.
pub fn delivered_json(delivered: &Delivered) -> Value {
    let mut value = envelope_json(&delivered.envelope);
    if let Some(object) = value.as_object_mut() {
        object.insert("agent_id".to_owned(), json!(delivered.agent_id));
        object.insert("sequence".to_owned(), json!(delivered.sequence));
        object.insert("index".to_owned(), json!(delivered.position.index));
        object.insert(
            "bus".to_owned(),
            json!(format!(
                "{}:{}",
                delivered.position.partition, delivered.position.offset
            )),
        );
    }
    value
}

/// An envelope as JSON for tail clients.
pub fn envelope_json(envelope: &Envelope) -> Value {
    let mut value = json!({
        "timestamp": envelope.timestamp,
        "time": sluice_common::time::format_rfc3339_nanos(envelope.timestamp),
        "source_id": envelope.source_id,
        "instance_id": envelope.instance_id,
        "kind": kind_name(envelope),
        "tags": merged_tags(envelope),
    });
    let extra = match &envelope.message {
        Some(envelope::Message::Log(entry)) => {
            let (message, invalid) = decode_payload(&entry.payload);
            let log_type = if entry.r#type == log::Type::Err as i32 {
                "ERR"
            } else {
                "OUT"
            };
            json!({"log_type": log_type, "message": message, "invalid_utf8": invalid})
        }
        Some(envelope::Message::Counter(counter)) => {
            json!({"name": counter.name, "delta": counter.delta, "total": counter.total})
        }
        Some(envelope::Message::Gauge(gauge)) => {
            let metrics: serde_json::Map<String, Value> = gauge
                .metrics
                .iter()
                .map(|(name, metric)| {
                    (
                        name.clone(),
                        json!({"unit": metric.unit, "value": metric.value}),
                    )
                })
                .collect();
            json!({"metrics": metrics})
        }
        Some(envelope::Message::Timer(timer)) => {
            json!({"name": timer.name, "start": timer.start, "stop": timer.stop})
        }
        Some(envelope::Message::Event(event)) => json!({"title": event.title, "body": event.body}),
        None => json!({}),
    };
    if let (Some(target), Some(source)) = (value.as_object_mut(), extra.as_object()) {
        for (key, field) in source {
            target.insert(key.clone(), field.clone());
        }
    }
    value
}
