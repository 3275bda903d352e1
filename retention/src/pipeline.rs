//! The retention pipeline: consume → buffer rows per table and hour → encode zstd Parquet →
//! upload → commit → checkpoint the bus.
//!
//! Encoding runs on a blocking thread. A failed upload is retried (same commit number, same
//! file names, so a retry overwrites rather than duplicates) until it succeeds; meanwhile
//! retention stops consuming, so the bus holds the records back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::RetentionConfig;
use bytes::Bytes;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::WriterProperties;
use object_store::WriteMultipart;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use prost::Message;
use sluice_bus::dedup::Deduplicator;
use sluice_bus::{Bus, BusEvent, BusRecord, Consumer, Positions, Sharing};
use sluice_common::SluiceError;
use sluice_common::shutdown::Shutdown;
use sluice_common::telemetry::Telemetry;
use sluice_common::time::Hour;
use sluice_proto::v1::AgentBatch;
use tracing::{error, info, warn};

use crate::archive::{self, Commit};
use crate::metrics::RetentionMetrics;
use crate::patterns::PatternCounter;
use crate::store::Archive;
use crate::tables::{BufferSet, Table, TableBuffer, push_envelope};

/// The bus consumer group of retention.
pub const CONSUMER_GROUP: &str = "retention";

struct Buffers {
    tables: BTreeMap<(Table, Hour), TableBuffer>,
    rows: usize,
    /// The first record buffered since the last commit: names the files.
    first_record: Option<(u32, u64)>,
    first_buffered_at: Option<Instant>,
    /// Positions after the last record buffered.
    positions: Positions,
    /// Recent batches, to drop a second copy of one.
    dedup: Deduplicator,
    /// Lines per pattern and hour, for `pattern_counts`.
    patterns: PatternCounter,
}

/// The buffers of one hour, for [`push_envelope`].
struct HourBuffers<'a> {
    tables: &'a mut BTreeMap<(Table, Hour), TableBuffer>,
    hour: Hour,
}

impl BufferSet for HourBuffers<'_> {
    fn buffer(&mut self, table: Table) -> &mut TableBuffer {
        self.tables
            .entry((table, self.hour))
            .or_insert_with(|| TableBuffer::new(table))
    }
}

/// A commit ready to upload: encoded files and the commit record.
struct PreparedCommit {
    files: Vec<(ObjectPath, Bytes, Table, u64)>,
    commit: Commit,
}

/// Runs retention until `shutdown` fires, then flushes what it holds.
pub async fn run(
    config: RetentionConfig,
    bus: Arc<dyn Bus>,
    telemetry: Telemetry,
    mut shutdown: Shutdown,
) -> Result<(), SluiceError> {
    let metrics = RetentionMetrics::register(&telemetry);
    let archive = Archive::open(&config.archive)?;
    let store = Arc::clone(&archive.store);
    let checkpoint = archive::read_checkpoint(&store).await?;
    let removed = archive::remove_uncommitted(&store, checkpoint.commit).await?;
    metrics.orphan_files_removed.inc_by(removed);
    if removed > 0 {
        warn!(
            removed,
            commit = checkpoint.commit,
            "removed files of a flush that did not commit"
        );
    }
    metrics
        .archive_bytes
        .set(i64::try_from(archive::archive_bytes(&store).await?).unwrap_or(i64::MAX));
    // One retention process per consumer group: the archive cannot take rows back, so a second
    // member sharing the partitions could duplicate rows after a takeover (it is refused and
    // counted instead, see `sluice_retention_rewinds_refused`).
    let mut consumer = bus
        .subscribe(CONSUMER_GROUP, CONSUMER_GROUP, Sharing::Sole)
        .await?;
    consumer.seek(&checkpoint.positions).await?;
    info!(archive = %archive.describe(), commit = checkpoint.commit, resume = %checkpoint.positions.to_json(), "retention starting");

    let mut last_commit = checkpoint.commit;
    let mut committed_positions = checkpoint.positions.clone();
    let mut buffers = Buffers {
        tables: BTreeMap::new(),
        rows: 0,
        first_record: None,
        first_buffered_at: None,
        positions: checkpoint.positions,
        dedup: Deduplicator::new(100_000),
        patterns: PatternCounter::default(),
    };
    loop {
        let due = buffers
            .first_buffered_at
            .is_some_and(|since| since.elapsed() >= config.flush_interval)
            || buffers.rows >= config.flush_rows;
        if due {
            let prepared = prepare(&mut buffers, last_commit + 1, config.zstd_level).await?;
            publish(&store, &prepared, &metrics, &mut shutdown).await?;
            last_commit = prepared.commit.commit;
            committed_positions = prepared.commit.positions.clone();
            checkpoint_bus(consumer.as_mut(), &committed_positions).await;
            continue;
        }
        let wait = buffers
            .first_buffered_at
            .map(|since| config.flush_interval.saturating_sub(since.elapsed()))
            .unwrap_or(Duration::from_millis(500))
            .clamp(Duration::from_millis(10), Duration::from_millis(500));
        tokio::select! {
            () = shutdown.wait() => break,
            polled = consumer.poll(1_000, wait) => match polled {
                Ok(events) => {
                    for event in &events {
                        match event {
                            BusEvent::Record(record) => buffer_record(&mut buffers, record, &metrics)?,
                            BusEvent::Rewind { partition, to } => {
                                if buffers.positions.next_offset(*partition) > *to {
                                    metrics.rewinds_refused.inc();
                                    error!(partition, to, "another retention process took over a partition this one archived past the takeover offset; rows may be archived twice (run one retention process per consumer group)");
                                }
                            }
                        }
                    }
                    metrics.buffered_rows.set(buffers.rows as i64);
                }
                Err(error) => {
                    warn!(error = %error, "failed to read the bus, retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    if buffers.positions != committed_positions {
        let prepared = prepare(&mut buffers, last_commit + 1, config.zstd_level).await?;
        // A final flush gets a fresh signal so it is not cut short by the one that fired.
        let (_trigger, mut patient) = sluice_common::shutdown::ShutdownTrigger::new();
        let outcome = tokio::time::timeout(
            Duration::from_secs(30),
            publish(&store, &prepared, &metrics, &mut patient),
        )
        .await;
        match outcome {
            Ok(Ok(())) => checkpoint_bus(consumer.as_mut(), &prepared.commit.positions).await,
            Ok(Err(error)) => return Err(error),
            Err(_) => warn!("final flush did not finish in 30 s; the bus still holds its records"),
        }
    }
    consumer.close().await;
    Ok(())
}

async fn checkpoint_bus(consumer: &mut dyn Consumer, positions: &Positions) {
    if let Err(error) = consumer.checkpoint(positions).await {
        warn!(error = %error, "failed to checkpoint the bus; records are kept longer");
    }
}

fn buffer_record(
    buffers: &mut Buffers,
    record: &BusRecord,
    metrics: &RetentionMetrics,
) -> Result<(), SluiceError> {
    if buffers.positions.contains(record) {
        // Delivered again after a rebalance: already buffered or archived.
        metrics.records_redelivered.inc();
        return Ok(());
    }
    match AgentBatch::decode(record.payload.as_ref()) {
        Ok(batch)
            if !buffers
                .dedup
                .first_time(&batch.agent_id, batch.sequence, record) =>
        {
            metrics.batches_duplicate.inc();
        }
        Ok(batch) => {
            if let Some(patterns) = &batch.patterns {
                buffers.patterns.learn(&patterns.templates);
            }
            for (index, envelope) in batch.envelopes.iter().enumerate() {
                let hour = Hour::of_nanos(envelope.timestamp);
                let mut target = HourBuffers {
                    tables: &mut buffers.tables,
                    hour,
                };
                let pattern = batch.pattern_of(index);
                let pattern_text = pattern.map(sluice_patterns::format_id);
                push_envelope(
                    envelope,
                    &batch.agent_id,
                    batch.sequence,
                    pattern_text.as_deref(),
                    &mut target,
                )
                .map_err(|error| {
                    SluiceError::internal(format!("failed to buffer an envelope: {error}"))
                })?;
                if let Some(id) = pattern {
                    buffers
                        .patterns
                        .count(id, &envelope.source_id, envelope.timestamp);
                }
            }
        }
        Err(error) => {
            metrics.records_undecodable.inc();
            warn!(partition = record.partition, offset = record.offset, error = %error, "skipping undecodable bus record");
        }
    }
    buffers.rows = buffers.tables.values().map(TableBuffer::rows).sum();
    buffers
        .first_record
        .get_or_insert((record.partition, record.offset));
    buffers.first_buffered_at.get_or_insert_with(Instant::now);
    buffers.positions.advance_past(record);
    Ok(())
}

/// Encodes every buffered table and hour into a Parquet file of commit `commit`.
async fn prepare(
    buffers: &mut Buffers,
    commit: u64,
    zstd_level: i32,
) -> Result<PreparedCommit, SluiceError> {
    let (partition, first_offset) = buffers.first_record.take().unwrap_or((0, 0));
    buffers.first_buffered_at = None;
    buffers.rows = 0;
    let positions = buffers.positions.clone();
    buffers
        .patterns
        .drain_into(&mut buffers.tables)
        .map_err(|error| SluiceError::internal(format!("failed to count patterns: {error}")))?;
    let mut batches: Vec<(Table, Hour, RecordBatch)> = Vec::new();
    for ((table, hour), mut buffer) in std::mem::take(&mut buffers.tables) {
        if buffer.rows() == 0 {
            continue;
        }
        let batch = buffer.finish().map_err(|error| {
            SluiceError::internal(format!("failed to build a {} batch: {error}", table.name()))
        })?;
        batches.push((table, hour, batch));
    }
    let positions_json = positions.to_json();
    let encoded = tokio::task::spawn_blocking(
        move || -> Result<Vec<(ObjectPath, Bytes, Table, u64)>, SluiceError> {
            batches
                .into_iter()
                .map(|(table, hour, batch)| {
                    let rows = batch.num_rows() as u64;
                    let bytes = encode_parquet(&batch, zstd_level, &positions_json, commit)?;
                    Ok((
                        archive::data_file_path(table, hour, commit, partition, first_offset),
                        bytes,
                        table,
                        rows,
                    ))
                })
                .collect()
        },
    )
    .await
    .map_err(|error| SluiceError::internal(format!("parquet encoding task failed: {error}")))??;
    let commit_record = Commit {
        commit,
        positions,
        files: encoded.iter().map(|(path, ..)| path.to_string()).collect(),
        rows: encoded.iter().map(|(.., rows)| rows).sum(),
    };
    Ok(PreparedCommit {
        files: encoded,
        commit: commit_record,
    })
}

/// Encodes `batch` as zstd Parquet, with the bus positions and commit number in the file's
/// key-value metadata.
pub fn encode_parquet(
    batch: &RecordBatch,
    zstd_level: i32,
    positions_json: &str,
    commit: u64,
) -> Result<Bytes, SluiceError> {
    let level = ZstdLevel::try_new(zstd_level)
        .map_err(|error| SluiceError::invalid(format!("invalid zstd level: {error}")))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_key_value_metadata(Some(vec![
            KeyValue::new("sluice.bus_positions".to_owned(), positions_json.to_owned()),
            KeyValue::new("sluice.commit".to_owned(), commit.to_string()),
        ]))
        .build();
    let mut buffer = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut buffer, batch.schema(), Some(properties)).map_err(|error| {
            SluiceError::internal(format!("failed to start a parquet file: {error}"))
        })?;
    writer
        .write(batch)
        .map_err(|error| SluiceError::internal(format!("failed to encode parquet: {error}")))?;
    writer.close().map_err(|error| {
        SluiceError::internal(format!("failed to finish a parquet file: {error}"))
    })?;
    Ok(Bytes::from(buffer))
}

/// Uploads the files, then the commit record and checkpoint; retries until it succeeds or
/// shutdown is requested.
async fn publish(
    store: &Arc<dyn ObjectStore>,
    prepared: &PreparedCommit,
    metrics: &RetentionMetrics,
    shutdown: &mut Shutdown,
) -> Result<(), SluiceError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match try_publish(store, prepared).await {
            Ok(()) => break,
            Err(error) => {
                metrics.flush_failures.inc();
                warn!(commit = prepared.commit.commit, error = %error, "failed to write to the archive, retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.wait() => return Err(error),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    let mut bytes = 0;
    for (_, data, table, rows) in &prepared.files {
        metrics.rows(table.name(), *rows);
        bytes += data.len() as u64;
    }
    metrics.files_written.inc_by(prepared.files.len() as u64);
    metrics.bytes_written.inc_by(bytes);
    metrics
        .archive_bytes
        .inc_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    metrics.commits.inc();
    metrics.buffered_rows.set(0);
    Ok(())
}

/// Files larger than this go up as multipart uploads.
const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;

async fn try_publish(
    store: &Arc<dyn ObjectStore>,
    prepared: &PreparedCommit,
) -> Result<(), SluiceError> {
    for (path, data, ..) in &prepared.files {
        let failed = |error: object_store::Error| {
            SluiceError::unavailable(format!("failed to write {path}: {error}"))
        };
        if data.len() > MULTIPART_THRESHOLD {
            let upload = store.put_multipart(path).await.map_err(failed)?;
            let mut writer = WriteMultipart::new(upload);
            writer.put(data.clone());
            writer.finish().await.map_err(failed)?;
        } else {
            store
                .put(path, PutPayload::from(data.clone()))
                .await
                .map_err(failed)?;
        }
    }
    archive::write_commit(store, &prepared.commit).await
}
