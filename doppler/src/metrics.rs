//! Metrics of the doppler (see `docs/telemetry.md`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sluice_common::telemetry::Telemetry;

/// The doppler's counters, cheap to clone.
#[derive(Clone)]
pub struct DopplerMetrics {
    /// Batches appended to the bus and acknowledged.
    pub batches_appended: Counter,
    /// Envelopes in those batches.
    pub envelopes_appended: Counter,
    /// Batches refused and never to be retried, by reason (`invalid`, `too_large`).
    pub batches_rejected: Family<Vec<(String, String)>, Counter>,
    /// Batches the bus failed to append (the agent retries them).
    pub append_failures: Counter,
    /// Batches refused because too many bytes were waiting for the bus (the agent retries them).
    pub batches_shed: Counter,
    /// Bytes of batches waiting for the bus now.
    pub pending_bytes: prometheus_client::metrics::gauge::Gauge,
    /// Envelopes delivered to live subscribers.
    pub egress_envelopes_sent: Counter,
    /// Envelopes dropped because a live subscriber's queue was full.
    pub egress_envelopes_dropped: Counter,
    /// Live subscribers connected.
    pub egress_subscribers: Gauge,
}

impl DopplerMetrics {
    /// Counts one batch refused for `reason`.
    pub fn rejected(&self, reason: &'static str) {
        self.batches_rejected
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }

    /// Registers the doppler metrics.
    pub fn register(telemetry: &Telemetry) -> DopplerMetrics {
        DopplerMetrics {
            batches_appended: telemetry.register(
                "sluice_doppler_batches_appended",
                "Batches appended to the bus and acknowledged to agents",
                Counter::default(),
            ),
            envelopes_appended: telemetry.register(
                "sluice_doppler_envelopes_appended",
                "Envelopes appended to the bus",
                Counter::default(),
            ),
            batches_shed: telemetry.register(
                "sluice_doppler_batches_shed",
                "Batches refused with RESOURCE_EXHAUSTED because max_pending_bytes were waiting for the bus; the agent retries them",
                Counter::default(),
            ),
            pending_bytes: telemetry.register(
                "sluice_doppler_pending_bytes",
                "Bytes of batches waiting for the bus",
                prometheus_client::metrics::gauge::Gauge::default(),
            ),
            batches_rejected: telemetry.register(
                "sluice_doppler_batches_rejected",
                "Batches refused as invalid",
                Family::default(),
            ),
            append_failures: telemetry.register(
                "sluice_doppler_bus_append_failures",
                "Batches the bus failed to append; the agent retries them",
                Counter::default(),
            ),
            egress_envelopes_sent: telemetry.register(
                "sluice_doppler_egress_envelopes_sent",
                "Envelopes delivered to live subscribers",
                Counter::default(),
            ),
            egress_envelopes_dropped: telemetry.register(
                "sluice_doppler_egress_envelopes_dropped",
                "Envelopes dropped because a live subscriber was too slow",
                Counter::default(),
            ),
            egress_subscribers: telemetry.register(
                "sluice_doppler_egress_subscribers",
                "Live subscribers connected",
                Gauge::default(),
            ),
        }
    }
}
