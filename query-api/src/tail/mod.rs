//! Live tail: a subscription to a doppler's `loggregator.v2.Egress`, over mutual TLS, and
//! what a tail selects (`filter.rs`).

mod filter;

pub use filter::TailFilter;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use sluice_common::SluiceError;
use sluice_common::envelope::{decode_payload, kind_name, merged_tags};
use sluice_common::tls::TlsMaterial;
use sluice_proto::v2::egress_client::EgressClient;
use sluice_proto::v2::{EgressBatchRequest, Envelope, Selector, envelope, log};
use tonic::transport::Channel;

/// Where live envelopes come from.
#[derive(Clone)]
pub struct TailSource {
    client: EgressClient<Channel>,
}

impl TailSource {
    /// A source reading the doppler at `address` (`host:port`); connects lazily.
    pub fn new(address: &str, tls: &TlsMaterial) -> Result<TailSource, SluiceError> {
        let channel = tls
            .endpoint(address, "query_api.doppler", Duration::from_secs(5))?
            .connect_lazy();
        Ok(TailSource {
            client: EgressClient::new(channel).max_decoding_message_size(64 * 1024 * 1024),
        })
    }

    /// Subscribes to envelopes from `source_ids` (every source when empty). Each subscription
    /// has its own shard, so it sees every matching envelope.
    pub async fn subscribe(
        &self,
        source_ids: &[String],
    ) -> Result<impl Stream<Item = Result<Envelope, tonic::Status>> + use<>, SluiceError> {
        let selectors = if source_ids.is_empty() {
            vec![Selector::default()]
        } else {
            source_ids
                .iter()
                .map(|source_id| Selector {
                    source_id: source_id.clone(),
                    message: None,
                })
                .collect()
        };
        let shard_id = format!(
            "sluice-tail-{:016x}",
            RandomState::new().hash_one(sluice_common::time::now_nanos())
        );
        let request = EgressBatchRequest {
            shard_id,
            selectors,
            use_preferred_tags: true,
            deterministic_name: String::new(),
        };
        let mut client = self.client.clone();
        let response = client.batched_receiver(request).await.map_err(|status| {
            SluiceError::unavailable(format!(
                "failed to subscribe to the doppler: {}",
                status.message()
            ))
        })?;
        Ok(response.into_inner().flat_map(|batch| {
            let envelopes: Vec<Result<Envelope, tonic::Status>> = match batch {
                Ok(batch) => batch.batch.into_iter().map(Ok).collect(),
                Err(status) => vec![Err(status)],
            };
            futures::stream::iter(envelopes)
        }))
    }
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
