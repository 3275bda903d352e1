//! Metrics of retention (see `docs/telemetry.md`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sluice_common::telemetry::Telemetry;

/// Label set with one `table` label (the five archive tables).
pub type TableLabels = Vec<(String, String)>;

/// Retention's counters, cheap to clone.
#[derive(Clone)]
pub struct RetentionMetrics {
    /// Rows written, by table.
    pub rows_written: Family<TableLabels, Counter>,
    /// Parquet files written.
    pub files_written: Counter,
    /// Parquet bytes written.
    pub bytes_written: Counter,
    /// Commits (flushes) completed.
    pub commits: Counter,
    /// Flushes that failed and were retried.
    pub flush_failures: Counter,
    /// Files of crashed flushes removed at start.
    pub orphan_files_removed: Counter,
    /// Bus records that could not be decoded; counted and skipped.
    pub records_undecodable: Counter,
    /// Bus records delivered again after a rebalance, already buffered or archived; skipped.
    pub records_redelivered: Counter,
    /// Batches that reached the bus twice (an agent's retry); the second copy is dropped.
    pub batches_duplicate: Counter,
    /// Takeovers by another retention member that would need archived rows removed; refused.
    pub rewinds_refused: Counter,
    /// Bytes of the archive in object storage.
    pub archive_bytes: Gauge,
    /// Rows buffered, waiting for the next flush.
    pub buffered_rows: Gauge,
}

impl RetentionMetrics {
    /// Registers retention's metrics.
    pub fn register(telemetry: &Telemetry) -> RetentionMetrics {
        RetentionMetrics {
            rows_written: telemetry.register("sluice_retention_rows_written", "Rows written to the archive, by table", Family::default()),
            files_written: telemetry.register("sluice_retention_files_written", "Parquet files written", Counter::default()),
            bytes_written: telemetry.register("sluice_retention_parquet_bytes_written", "Parquet bytes written", Counter::default()),
            commits: telemetry.register("sluice_retention_commits", "Archive commits completed", Counter::default()),
            flush_failures: telemetry.register(
                "sluice_retention_flush_failures",
                "Flushes that failed and were retried",
                Counter::default(),
            ),
            orphan_files_removed: telemetry.register(
                "sluice_retention_orphan_files_removed",
                "Files of flushes that crashed before committing, removed at start",
                Counter::default(),
            ),
            records_undecodable: telemetry.register(
                "sluice_retention_records_undecodable",
                "Bus records that could not be decoded and were skipped",
                Counter::default(),
            ),
            records_redelivered: telemetry.register(
                "sluice_retention_records_redelivered",
                "Bus records delivered again after a rebalance that were already buffered or archived; skipped",
                Counter::default(),
            ),
            batches_duplicate: telemetry.register(
                "sluice_retention_batches_duplicate",
                "Batches seen a second time by (agent_id, sequence), after an agent retried on another doppler; dropped",
                Counter::default(),
            ),
            rewinds_refused: telemetry.register(
                "sluice_retention_rewinds_refused",
                "Partition takeovers by another retention process that would need archived rows removed (run one retention process per group)",
                Counter::default(),
            ),
            archive_bytes: telemetry.register("sluice_retention_archive_bytes", "Bytes of the archive in object storage", Gauge::default()),
            buffered_rows: telemetry.register("sluice_retention_buffered_rows", "Rows waiting for the next flush", Gauge::default()),
        }
    }

    /// Counts rows written to `table`.
    pub fn rows(&self, table: &str, count: u64) {
        self.rows_written
            .get_or_create(&vec![("table".to_owned(), table.to_owned())])
            .inc_by(count);
    }
}
