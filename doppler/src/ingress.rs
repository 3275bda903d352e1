//! `sluice.v1.DopplerIngress`: agents push numbered batches; each is appended to the bus and
//! acknowledged only once durable.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use sluice_bus::Bus;
use sluice_proto::v1::doppler_ingress_server::DopplerIngress;
use sluice_proto::v1::{AgentBatch, AgentBatchAck};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::egress::Hub;
use crate::metrics::DopplerMetrics;

/// The agent-facing service of a doppler.
pub struct DopplerIngressService {
    bus: Arc<dyn Bus>,
    hub: Arc<Hub>,
    metrics: DopplerMetrics,
    /// Room for batches waiting for the bus, in KiB.
    pending: Arc<Semaphore>,
    pending_kib: u32,
    pending_wait: Duration,
}

impl DopplerIngressService {
    /// A service appending to `bus` and publishing to `hub`, with at most `max_pending_bytes`
    /// of batches waiting for the bus and `pending_wait` to wait for room.
    pub fn new(
        bus: Arc<dyn Bus>,
        hub: Arc<Hub>,
        metrics: DopplerMetrics,
        max_pending_bytes: usize,
        pending_wait: Duration,
    ) -> DopplerIngressService {
        let pending_kib =
            u32::try_from(max_pending_bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        DopplerIngressService {
            bus,
            hub,
            metrics,
            pending: Arc::new(Semaphore::new(pending_kib as usize)),
            pending_kib,
            pending_wait,
        }
    }
}

/// Checks what the agent should already have checked: an agent that is not ours may be wrong.
fn validate(batch: &AgentBatch) -> Result<(), Status> {
    if batch.agent_id.is_empty() {
        return Err(Status::invalid_argument("batch has no agent_id"));
    }
    if batch.sequence == 0 {
        return Err(Status::invalid_argument(
            "batch sequence numbers start at 1",
        ));
    }
    if batch.envelopes.is_empty() {
        return Err(Status::invalid_argument("batch holds no envelopes"));
    }
    if let Some(index) = batch
        .envelopes
        .iter()
        .position(|envelope| envelope.message.is_none())
    {
        return Err(Status::invalid_argument(format!(
            "envelope {index} carries no message"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl DopplerIngress for DopplerIngressService {
    async fn push(&self, request: Request<AgentBatch>) -> Result<Response<AgentBatchAck>, Status> {
        let batch = request.into_inner();
        if let Err(status) = validate(&batch) {
            self.metrics.batches_rejected.inc();
            return Err(status);
        }
        let key = batch
            .envelopes
            .first()
            .map(|envelope| envelope.source_id.as_str())
            .unwrap_or_default();
        let payload = Bytes::from(batch.encode_to_vec());
        // Bounded memory while the bus is slow or away: a batch waits for room, then is refused
        // for its agent to retry (here or on another doppler) instead of piling up.
        let kib = u32::try_from(payload.len().div_ceil(1024).max(1))
            .unwrap_or(u32::MAX)
            .min(self.pending_kib);
        let Ok(Ok(_room)) = tokio::time::timeout(
            self.pending_wait,
            Arc::clone(&self.pending).acquire_many_owned(kib),
        )
        .await
        else {
            self.metrics.batches_shed.inc();
            return Err(Status::resource_exhausted(format!(
                "doppler has {} KiB of batches waiting for the bus; retry later or on another doppler",
                self.pending_kib
            )));
        };
        self.metrics.pending_bytes.inc_by(payload.len() as i64);
        let appended = self.bus.append(key, payload.clone()).await;
        self.metrics.pending_bytes.dec_by(payload.len() as i64);
        if let Err(error) = appended {
            self.metrics.append_failures.inc();
            warn!(agent_id = %batch.agent_id, sequence = batch.sequence, error = %error, "failed to append batch to the bus");
            return Err(Status::unavailable(error.to_string()));
        }
        self.metrics.batches_appended.inc();
        self.metrics
            .envelopes_appended
            .inc_by(batch.envelopes.len() as u64);
        let sequence = batch.sequence;
        self.hub.publish(&batch.envelopes);
        Ok(Response::new(AgentBatchAck { sequence }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_bus::{BusError, Consumer};
    use sluice_common::telemetry::Telemetry;
    use sluice_proto::v2::{Envelope, Log, envelope};

    /// A bus whose appends wait until released: a broker that is away.
    struct StalledBus(tokio::sync::Notify);

    #[async_trait::async_trait]
    impl Bus for StalledBus {
        async fn append(&self, _key: &str, _payload: Bytes) -> Result<(), BusError> {
            self.0.notified().await;
            Ok(())
        }
        async fn subscribe(
            &self,
            _group: &str,
            _member: &str,
            _sharing: sluice_bus::Sharing,
        ) -> Result<Box<dyn Consumer>, BusError> {
            Err(BusError::Invalid("not in this test".into()))
        }
        fn kind(&self) -> &'static str {
            "stalled"
        }
    }

    fn batch(sequence: u64) -> AgentBatch {
        AgentBatch {
            agent_id: "agent".into(),
            sequence,
            envelopes: vec![Envelope {
                message: Some(envelope::Message::Log(Log {
                    payload: vec![b'x'; 1_500],
                    r#type: 0,
                })),
                ..Default::default()
            }],
        }
    }

    /// While the bus is away, batches wait within `max_pending_bytes`; past it one is refused
    /// with RESOURCE_EXHAUSTED (which agents retry) and counted, and memory stays bounded.
    #[tokio::test]
    async fn batches_past_the_pending_limit_are_refused_and_counted_while_the_bus_is_away() {
        let telemetry = Telemetry::new();
        let metrics = DopplerMetrics::register(&telemetry);
        let bus = Arc::new(StalledBus(tokio::sync::Notify::new()));
        let hub = Arc::new(Hub::new(4, metrics.clone()));
        let service = Arc::new(DopplerIngressService::new(
            Arc::clone(&bus) as Arc<dyn Bus>,
            hub,
            metrics,
            4 * 1024,
            Duration::from_millis(100),
        ));
        // Two batches of 2 KiB fill the 4 KiB of room and wait for the bus.
        let waiting: Vec<_> = (1..=2)
            .map(|sequence| {
                let service = Arc::clone(&service);
                tokio::spawn(async move { service.push(Request::new(batch(sequence))).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = service
            .push(Request::new(batch(3)))
            .await
            .expect_err("no room");
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        let text = telemetry.encode();
        assert!(
            text.contains("sluice_doppler_batches_shed_total 1"),
            "{text}"
        );
        let waiting_bytes = 2 * batch(1).encoded_len();
        assert!(
            text.contains(&format!("sluice_doppler_pending_bytes {waiting_bytes}\n")),
            "{text}"
        );
        // The bus comes back: the waiting batches are acknowledged.
        bus.0.notify_waiters();
        for handle in waiting {
            handle.await.expect("join").expect("acknowledged");
        }
    }
}
