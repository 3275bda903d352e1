//! Metrics of the agent (see `docs/telemetry.md`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sluice_common::telemetry::Telemetry;

/// Label set: a `reason` (and for sources a `source`) from fixed sets.
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
    /// Batches given up on, by reason (`too_large`, `invalid`, `denied`, `repeated_failure`);
    /// their clients got the error.
    pub batches_failed: Family<ReasonLabels, Counter>,
    /// Envelopes in batches given up on, by reason.
    pub envelopes_failed: Family<ReasonLabels, Counter>,
    /// Envelopes accepted and not yet acknowledged by a doppler.
    pub pending_envelopes: Gauge,
    /// Encoded bytes of those envelopes.
    pub pending_bytes: Gauge,
    /// Envelopes whose timestamp fell outside the accepted window and were stored at their
    /// arrival time, by reason (`too_old`, `too_far_ahead`).
    pub timestamps_replaced: Family<ReasonLabels, Counter>,
    /// Records (a syslog message, a `_bulk` document) turned into envelopes, by source.
    pub source_records: Family<ReasonLabels, Counter>,
    /// Records refused, by source and reason; the rest of their request is kept.
    pub source_rejected: Family<ReasonLabels, Counter>,
    /// Requests refused whole before their body was read, by source and reason.
    pub requests_refused: Family<ReasonLabels, Counter>,
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
                "Batches given up on, by reason; their clients received the error",
                Family::default(),
            ),
            envelopes_failed: telemetry.register(
                "sluice_agent_envelopes_failed",
                "Envelopes in batches given up on, by reason",
                Family::default(),
            ),
            pending_envelopes: telemetry.register(
                "sluice_agent_pending_envelopes",
                "Envelopes accepted and not yet acknowledged by a doppler",
                Gauge::default(),
            ),
            pending_bytes: telemetry.register(
                "sluice_agent_pending_bytes",
                "Encoded bytes of envelopes accepted and not yet acknowledged by a doppler",
                Gauge::default(),
            ),
            timestamps_replaced: telemetry.register(
                "sluice_agent_timestamps_replaced",
                "Envelopes stored at their arrival time because their own timestamp was outside the accepted window, by reason",
                Family::default(),
            ),
            source_records: telemetry.register(
                "sluice_agent_source_records",
                "Records a source turned into envelopes, by source",
                Family::default(),
            ),
            source_rejected: telemetry.register(
                "sluice_agent_source_records_rejected",
                "Records a source refused, by source and reason (the rest of the request is kept)",
                Family::default(),
            ),
            requests_refused: telemetry.register(
                "sluice_agent_requests_refused",
                "Requests refused whole before their body was read, by source and reason",
                Family::default(),
            ),
        }
    }

    /// Counts `count` records that `source` turned into envelopes.
    pub fn source_accepted(&self, source: &'static str, count: u64) {
        self.source_records
            .get_or_create(&vec![("source".to_owned(), source.to_owned())])
            .inc_by(count);
    }

    /// Counts a request `source` refused whole, before reading it, for `reason`.
    pub fn request_refused(&self, source: &'static str, reason: &'static str) {
        self.requests_refused
            .get_or_create(&vec![
                ("source".to_owned(), source.to_owned()),
                ("reason".to_owned(), reason.to_owned()),
            ])
            .inc();
    }

    /// Counts one record `source` refused for `reason`.
    pub fn source_refused(&self, source: &'static str, reason: &'static str) {
        self.source_refused_many(source, reason, 1);
    }

    /// Counts `count` records `source` refused (or lost) for `reason`.
    pub fn source_refused_many(&self, source: &'static str, reason: &'static str, count: u64) {
        self.source_rejected
            .get_or_create(&vec![
                ("source".to_owned(), source.to_owned()),
                ("reason".to_owned(), reason.to_owned()),
            ])
            .inc_by(count);
    }

    /// Counts a batch of `envelopes` given up on for `reason`.
    pub fn batch_given_up(&self, reason: &'static str, envelopes: u64) {
        let labels = vec![("reason".to_owned(), reason.to_owned())];
        self.batches_failed.get_or_create(&labels).inc();
        self.envelopes_failed
            .get_or_create(&labels)
            .inc_by(envelopes);
    }

    /// Counts `count` envelopes whose timestamp the window replaced, for `reason`.
    pub fn count_timestamps_replaced(&self, reason: &'static str, count: u64) {
        self.timestamps_replaced
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc_by(count);
    }

    /// Counts `count` envelopes rejected for `reason`.
    pub fn rejected(&self, reason: &'static str, count: u64) {
        self.envelopes_rejected
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc_by(count);
    }
}
