//! Metrics of the indexer (see `docs/telemetry.md`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sluice_common::telemetry::Telemetry;

/// The indexer's counters, cheap to clone.
#[derive(Clone)]
pub struct IndexerMetrics {
    /// Documents added to an index.
    pub documents_indexed: Counter,
    /// Envelopes skipped because their hour's index already held them (replay after a crash).
    pub documents_already_indexed: Counter,
    /// Metric envelopes, which go to the archive only.
    pub envelopes_not_indexed: Counter,
    /// Bus records that could not be decoded; counted and skipped.
    pub records_undecodable: Counter,
    /// Commits of hour indexes.
    pub commits: Counter,
    /// Bus records delivered again that this indexer had already consumed; skipped.
    pub records_redelivered: Counter,
    /// Batches that reached the bus twice (an agent's retry); the second copy is dropped.
    pub batches_duplicate: Counter,
    /// Rewinds: another member of the group took over a partition this indexer held data of.
    pub rewinds: Counter,
    /// Documents dropped by rewinds (their new owner indexes them).
    pub documents_rewound: Counter,
    /// Bytes of all index partitions on disk.
    pub index_bytes: Gauge,
    /// Hour partitions on disk.
    pub partitions: Gauge,
    /// Hour writers open now (at most `indexer.max_open_writers`, but for a moment while one
    /// record spans more hours than that).
    pub open_writers: Gauge,
    /// Writers committed and closed early to make room for another hour's.
    pub writers_evicted: Counter,
    /// Restarts of the indexer after a failure (a full disk, say): it resumes from its last
    /// commit, re-reading what it had not committed from the bus.
    pub restarts: Counter,
    /// Hours deleted, by reason (`age`: past `indexer.max_age`; `disk`: past
    /// `indexer.max_disk_bytes`).
    pub hours_deleted: Family<Vec<(String, String)>, Counter>,
    /// Documents in the hours deleted, by reason.
    pub documents_deleted: Family<Vec<(String, String)>, Counter>,
}

impl IndexerMetrics {
    /// Registers the indexer metrics.
    pub fn register(telemetry: &Telemetry) -> IndexerMetrics {
        IndexerMetrics {
            open_writers: telemetry.register(
                "sluice_indexer_open_writers",
                "Hour index writers open now",
                Gauge::default(),
            ),
            restarts: telemetry.register(
                "sluice_indexer_restarts",
                "Restarts after a failure; the indexer resumes from its last commit",
                Counter::default(),
            ),
            hours_deleted: telemetry.register(
                "sluice_indexer_hours_deleted",
                "Index hours deleted, by reason: age (past indexer.max_age) or disk (past indexer.max_disk_bytes, oldest first)",
                Family::default(),
            ),
            documents_deleted: telemetry.register(
                "sluice_indexer_documents_deleted",
                "Documents in the index hours deleted, by reason",
                Family::default(),
            ),
            writers_evicted: telemetry.register(
                "sluice_indexer_writers_evicted",
                "Hour writers committed and closed early to make room for another hour's",
                Counter::default(),
            ),
            documents_indexed: telemetry.register(
                "sluice_indexer_documents_indexed",
                "Documents added to the index",
                Counter::default(),
            ),
            documents_already_indexed: telemetry.register(
                "sluice_indexer_documents_already_indexed",
                "Envelopes skipped on replay because their hour already held them",
                Counter::default(),
            ),
            envelopes_not_indexed: telemetry.register(
                "sluice_indexer_metric_envelopes_skipped",
                "Counter, gauge and timer envelopes, which only the archive keeps",
                Counter::default(),
            ),
            records_undecodable: telemetry.register(
                "sluice_indexer_records_undecodable",
                "Bus records that could not be decoded and were skipped",
                Counter::default(),
            ),
            commits: telemetry.register("sluice_indexer_commits", "Commits of hour indexes", Counter::default()),
            records_redelivered: telemetry.register(
                "sluice_indexer_records_redelivered",
                "Bus records delivered again after a rebalance that were already consumed; skipped",
                Counter::default(),
            ),
            batches_duplicate: telemetry.register(
                "sluice_indexer_batches_duplicate",
                "Batches seen a second time by (agent_id, sequence), after an agent retried on another doppler; dropped",
                Counter::default(),
            ),
            rewinds: telemetry.register(
                "sluice_indexer_rewinds",
                "Partitions whose data was dropped from an offset because another indexer took them over",
                Counter::default(),
            ),
            documents_rewound: telemetry.register(
                "sluice_indexer_documents_rewound",
                "Documents dropped by rewinds; the partition's new owner indexes them",
                Counter::default(),
            ),
            index_bytes: telemetry.register("sluice_indexer_index_bytes", "Bytes of all index partitions on disk", Gauge::default()),
            partitions: telemetry.register("sluice_indexer_partitions", "Hour partitions on disk", Gauge::default()),
        }
    }
}
