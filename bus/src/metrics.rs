//! Metrics of the bus (see `docs/telemetry.md`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use sluice_common::telemetry::Telemetry;

/// Label set naming a consumer group (a small fixed set: `indexer`, `retention`).
pub type GroupLabels = Vec<(String, String)>;

/// Counters and gauges of one bus.
#[derive(Clone)]
pub struct BusMetrics {
    /// Records appended.
    pub records_appended: Counter,
    /// Payload bytes appended.
    pub bytes_appended: Counter,
    /// Append failures.
    pub append_failures: Counter,
    /// Bytes the WAL occupies on disk.
    pub wal_disk_bytes: Gauge,
    /// The WAL's disk budget.
    pub wal_budget_bytes: Gauge,
    /// Appends the WAL refused, by reason (`budget`, `disk_full`, `too_large`, `io`).
    pub wal_refused_records: Family<GroupLabels, Counter>,
    /// Bytes of torn or corrupt WAL tails cut off when the WAL opened.
    pub wal_recovered_cut_bytes: Counter,
    /// Records appended but not yet checkpointed, per consumer group.
    pub consumer_lag_records: Family<GroupLabels, Gauge>,
    /// Time of each WAL write of a group of records with its sync, seconds: what every
    /// append (and so every live line) waits on the disk.
    pub wal_write_seconds: Histogram,
    /// Records read from the WAL, by where they came from (`memory`: the cache of the latest
    /// records; `disk`: the segment files).
    pub wal_records_read: Family<GroupLabels, Counter>,
}

impl BusMetrics {
    /// Registers the bus metrics.
    pub fn register(telemetry: &Telemetry) -> BusMetrics {
        BusMetrics {
            records_appended: telemetry.register(
                "sluice_bus_records_appended",
                "Records appended to the bus",
                Counter::default(),
            ),
            bytes_appended: telemetry.register(
                "sluice_bus_payload_bytes_appended",
                "Payload bytes appended to the bus",
                Counter::default(),
            ),
            append_failures: telemetry.register(
                "sluice_bus_append_failures",
                "Appends that failed and were not acknowledged",
                Counter::default(),
            ),
            wal_disk_bytes: telemetry.register(
                "sluice_bus_wal_disk_bytes",
                "Bytes the WAL occupies on disk",
                Gauge::default(),
            ),
            wal_budget_bytes: telemetry.register(
                "sluice_bus_wal_budget_bytes",
                "The WAL's disk budget (bus.wal.max_disk_bytes)",
                Gauge::default(),
            ),
            wal_refused_records: telemetry.register(
                "sluice_bus_wal_refused_records",
                "Appends the WAL refused, by reason; the doppler answered RESOURCE_EXHAUSTED (budget, disk_full) or INVALID_ARGUMENT (too_large)",
                Family::default(),
            ),
            wal_recovered_cut_bytes: telemetry.register(
                "sluice_bus_wal_recovered_cut_bytes",
                "Bytes of torn or corrupt WAL tails cut off at open (a crash mid-write)",
                Counter::default(),
            ),
            consumer_lag_records: telemetry.register(
                "sluice_bus_consumer_lag_records",
                "Records appended but not yet checkpointed by a consumer group",
                Family::default(),
            ),
            wal_write_seconds: telemetry.register(
                "sluice_bus_wal_write_seconds",
                "Time to write a group of records to the WAL, with its fdatasync in fsync durability (every append waits on it)",
                // 100 µs to 6.5 s.
                Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            ),
            wal_records_read: telemetry.register(
                "sluice_bus_wal_records_read",
                "Records readers took from the WAL, by where they came from: memory (the cache of the latest records, bus.wal.read_cache_bytes) or disk",
                Family::default(),
            ),
        }
    }

    /// Counts one append the WAL refused for `reason`.
    pub fn wal_refused(&self, reason: &'static str) {
        self.wal_refused_records
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }

    /// Counts `records` read from `from` (`memory` or `disk`).
    pub fn wal_read(&self, from: &'static str, records: usize) {
        self.wal_records_read
            .get_or_create(&vec![("from".to_owned(), from.to_owned())])
            .inc_by(records as u64);
    }

    /// The lag gauge of `group`.
    pub fn lag(&self, group: &str) -> Gauge {
        self.consumer_lag_records
            .get_or_create(&vec![("group".to_owned(), group.to_owned())])
            .clone()
    }
}
