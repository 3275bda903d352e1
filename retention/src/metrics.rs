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
    /// The catalog's latest version.
    pub catalog_version: Gauge,
    /// Live files in the catalog.
    pub catalog_files: Gauge,
    /// The lease epoch this process holds (0 while a standby).
    pub lease_epoch: Gauge,
    /// Times this process lost the lease to another and stopped writing.
    pub fenced: Counter,
    /// Files compaction replaced or expiry removed, deleted after the grace period.
    pub garbage_files_deleted: Counter,
    /// Groups (table and hour) compaction has yet to merge in its current round.
    pub compaction_pending: Gauge,
    /// Files compaction merged.
    pub compaction_files_in: Counter,
    /// Files compaction wrote.
    pub compaction_files_out: Counter,
    /// Bytes compaction merged.
    pub compaction_bytes_in: Counter,
    /// Bytes compaction wrote.
    pub compaction_bytes_out: Counter,
    /// Compactions that failed (retried at the next round).
    pub compaction_failures: Counter,
    /// Rows expiry removed.
    pub expired_rows: Counter,
    /// Files expiry removed or rewrote.
    pub expired_files: Counter,
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
                "Files in the archive that the catalog does not hold (a flush that crashed or was fenced before committing), deleted after retention.gc_grace",
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
            catalog_version: telemetry.register("sluice_retention_catalog_version", "The archive catalog's latest version", Gauge::default()),
            catalog_files: telemetry.register("sluice_retention_catalog_files", "Live files in the archive catalog", Gauge::default()),
            lease_epoch: telemetry.register(
                "sluice_retention_lease_epoch",
                "The archive lease epoch this process holds; 0 while it waits as a standby",
                Gauge::default(),
            ),
            fenced: telemetry.register(
                "sluice_retention_fenced",
                "Times this process found another holding the archive's lease and stopped writing",
                Counter::default(),
            ),
            garbage_files_deleted: telemetry.register(
                "sluice_retention_garbage_files_deleted",
                "Files compaction replaced or expiry removed, deleted from the store after retention.gc_grace",
                Counter::default(),
            ),
            compaction_pending: telemetry.register(
                "sluice_retention_compaction_pending",
                "Groups (a table's files in one hour) the current compaction round has yet to merge",
                Gauge::default(),
            ),
            compaction_files_in: telemetry.register("sluice_retention_compaction_files_in", "Files compaction merged", Counter::default()),
            compaction_files_out: telemetry.register("sluice_retention_compaction_files_out", "Files compaction wrote", Counter::default()),
            compaction_bytes_in: telemetry.register("sluice_retention_compaction_bytes_in", "Bytes of the files compaction merged", Counter::default()),
            compaction_bytes_out: telemetry.register("sluice_retention_compaction_bytes_out", "Bytes of the files compaction wrote", Counter::default()),
            compaction_failures: telemetry.register(
                "sluice_retention_compaction_failures",
                "Compactions that failed; the group is tried again at the next round",
                Counter::default(),
            ),
            expired_rows: telemetry.register(
                "sluice_retention_expired_rows",
                "Rows that left the archive past their [[retention.expiry]] policy",
                Counter::default(),
            ),
            expired_files: telemetry.register(
                "sluice_retention_expired_files",
                "Files expiry removed whole or rewrote without their expired rows",
                Counter::default(),
            ),
        }
    }

    /// Counts rows written to `table`.
    pub fn rows(&self, table: &str, count: u64) {
        self.rows_written
            .get_or_create(&vec![("table".to_owned(), table.to_owned())])
            .inc_by(count);
    }
}
