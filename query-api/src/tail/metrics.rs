//! Metrics of live tails (see `docs/telemetry.md`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sluice_common::telemetry::Telemetry;

/// Labels of a per-tail series: `tail` (the id the tail's first event carries).
type TailLabels = Vec<(String, String)>;

/// Tail counters, in all and per open tail.
#[derive(Clone)]
pub struct TailMetrics {
    /// Tails open now.
    pub active: Gauge,
    /// Envelopes sent to tails.
    pub envelopes: Counter,
    /// Envelopes the bus forgot before a tail read them and the index gave back.
    pub healed: Counter,
    /// Envelopes lost to a tail (see `Dropped::envelopes`), in all.
    pub dropped: Counter,
    /// Records lost to a tail whose contents are unknown, in all.
    pub unknown_records: Counter,
    /// The same two per open tail; a tail's series go when it ends.
    dropped_per_tail: Family<TailLabels, Counter>,
    unknown_records_per_tail: Family<TailLabels, Counter>,
    /// Tails refused, by `limit` (total, client).
    refused: Family<TailLabels, Counter>,
    /// Times a tail fell behind the live hub's ring and went back to a reader of its own.
    pub hub_lagged: Counter,
}

impl TailMetrics {
    /// Registers the tail metrics.
    pub fn register(telemetry: &Telemetry) -> TailMetrics {
        TailMetrics {
            active: telemetry.register("sluice_tail_active", "Live tails open", Gauge::default()),
            envelopes: telemetry.register(
                "sluice_tail_envelopes",
                "Envelopes sent to live tails",
                Counter::default(),
            ),
            healed: telemetry.register(
                "sluice_tail_healed_envelopes",
                "Envelopes a tail missed on the bus (released before it read them) and got back from the index",
                Counter::default(),
            ),
            dropped: telemetry.register(
                "sluice_tail_dropped_envelopes",
                "Envelopes a tail missed on the bus that the index does not hold (metrics); each reported to its tail as a dropped event",
                Counter::default(),
            ),
            unknown_records: telemetry.register(
                "sluice_tail_dropped_unknown_records",
                "Bus records a tail missed that the index holds nothing of, so their contents are unknown",
                Counter::default(),
            ),
            dropped_per_tail: telemetry.register(
                "sluice_tail_subscriber_dropped_envelopes",
                "sluice_tail_dropped_envelopes of each open tail, by the id its opened event gave",
                Family::default(),
            ),
            unknown_records_per_tail: telemetry.register(
                "sluice_tail_subscriber_dropped_unknown_records",
                "sluice_tail_dropped_unknown_records of each open tail",
                Family::default(),
            ),
            refused: telemetry.register(
                "sluice_tail_refused",
                "Tails refused because a limit was reached, by limit (total, client)",
                Family::default(),
            ),
            hub_lagged: telemetry.register(
                "sluice_tail_hub_lagged",
                "Times a tail fell behind the shared live reader's ring and read the bus on its own until it caught up (nothing is lost)",
                Counter::default(),
            ),
        }
    }

    fn labels(tail_id: &str) -> TailLabels {
        vec![("tail".to_owned(), tail_id.to_owned())]
    }

    /// The per-tail dropped-envelopes counter of `tail_id`.
    pub fn dropped_for(&self, tail_id: &str) -> Counter {
        self.dropped_per_tail
            .get_or_create(&Self::labels(tail_id))
            .clone()
    }

    /// The per-tail unknown-records counter of `tail_id`.
    pub fn unknown_records_for(&self, tail_id: &str) -> Counter {
        self.unknown_records_per_tail
            .get_or_create(&Self::labels(tail_id))
            .clone()
    }

    /// Removes the series of a tail that ended.
    pub fn forget(&self, tail_id: &str) {
        self.dropped_per_tail.remove(&Self::labels(tail_id));
        self.unknown_records_per_tail.remove(&Self::labels(tail_id));
    }

    /// Counts a tail refused by `limit`.
    pub fn refused(&self, limit: &str) {
        self.refused
            .get_or_create(&vec![("limit".to_owned(), limit.to_owned())])
            .inc();
    }
}
