//! Metrics of the bus (see `docs/telemetry.md`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    /// Records appended but not yet checkpointed, per consumer group.
    pub consumer_lag_records: Family<GroupLabels, Gauge>,
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
            consumer_lag_records: telemetry.register(
                "sluice_bus_consumer_lag_records",
                "Records appended but not yet checkpointed by a consumer group",
                Family::default(),
            ),
        }
    }

    /// The lag gauge of `group`.
    pub fn lag(&self, group: &str) -> Gauge {
        self.consumer_lag_records
            .get_or_create(&vec![("group".to_owned(), group.to_owned())])
            .clone()
    }
}
