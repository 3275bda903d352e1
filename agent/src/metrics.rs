//! Metrics of the agent (see `docs/telemetry.md`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sluice_common::telemetry::Telemetry;

/// Label set with one `reason` label from a fixed set.
pub type ReasonLabels = Vec<(String, String)>;

/// The agent's counters, cheap to clone.
#[derive(Clone)]
pub struct AgentMetrics {
    /// Envelopes accepted from sources.
    pub envelopes_received: Counter,
    /// Envelopes refused at ingress, by reason (`too_large`, `invalid`).
    pub envelopes_rejected: Family<ReasonLabels, Counter>,
    /// Batches a doppler acknowledged.
    pub batches_acknowledged: Counter,
    /// Envelopes in acknowledged batches.
    pub envelopes_forwarded: Counter,
    /// Attempts to send a batch that failed and were retried.
    pub send_retries: Counter,
    /// Batches given up on (a doppler refused them as invalid); their clients got the error.
    pub batches_failed: Counter,
    /// Envelopes accepted and not yet acknowledged by a doppler.
    pub pending_envelopes: Gauge,
}

impl AgentMetrics {
    /// Registers the agent metrics.
    pub fn register(telemetry: &Telemetry) -> AgentMetrics {
        AgentMetrics {
            envelopes_received: telemetry.register(
                "sluice_agent_envelopes_received",
                "Envelopes accepted from sources",
                Counter::default(),
            ),
            envelopes_rejected: telemetry.register(
                "sluice_agent_envelopes_rejected",
                "Envelopes refused at ingress, by reason",
                Family::default(),
            ),
            batches_acknowledged: telemetry.register(
                "sluice_agent_batches_acknowledged",
                "Batches a doppler appended to the bus",
                Counter::default(),
            ),
            envelopes_forwarded: telemetry.register(
                "sluice_agent_envelopes_forwarded",
                "Envelopes in batches a doppler appended to the bus",
                Counter::default(),
            ),
            send_retries: telemetry.register(
                "sluice_agent_batch_send_retries",
                "Failed attempts to send a batch, each retried",
                Counter::default(),
            ),
            batches_failed: telemetry.register(
                "sluice_agent_batches_failed",
                "Batches a doppler refused as invalid; their clients received the error",
                Counter::default(),
            ),
            pending_envelopes: telemetry.register(
                "sluice_agent_pending_envelopes",
                "Envelopes accepted and not yet acknowledged by a doppler",
                Gauge::default(),
            ),
        }
    }

    /// Counts `count` envelopes rejected for `reason`.
    pub fn rejected(&self, reason: &'static str, count: u64) {
        self.envelopes_rejected
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc_by(count);
    }
}
