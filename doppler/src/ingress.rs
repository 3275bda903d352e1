//! `sluice.v1.DopplerIngress`: agents push numbered batches; each is appended to the bus and
//! acknowledged only once durable.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use sluice_bus::Bus;
use sluice_proto::v1::doppler_ingress_server::DopplerIngress;
use sluice_proto::v1::{AgentBatch, AgentBatchAck};
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::egress::Hub;
use crate::metrics::DopplerMetrics;

/// The agent-facing service of a doppler.
pub struct DopplerIngressService {
    bus: Arc<dyn Bus>,
    hub: Arc<Hub>,
    metrics: DopplerMetrics,
}

impl DopplerIngressService {
    /// A service appending to `bus` and publishing to `hub`.
    pub fn new(bus: Arc<dyn Bus>, hub: Arc<Hub>, metrics: DopplerMetrics) -> DopplerIngressService {
        DopplerIngressService { bus, hub, metrics }
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
        if let Err(error) = self.bus.append(key, payload).await {
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
