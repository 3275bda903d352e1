//! The retention pipeline: hold the archive's lease → consume → buffer rows per table and
//! hour → encode zstd Parquet → upload → commit to the catalog → checkpoint the bus.
//!
//! Encoding runs on a blocking thread. A failed upload or commit is retried (same version,
//! same file names, so a retry overwrites rather than duplicates) until it succeeds;
//! meanwhile retention stops consuming, so the bus holds the records back. The bus
//! positions live in the catalog with the files they produced, so a restart (or a standby
//! taking over) resumes exactly after the last commit. A process that loses the lease stops
//! writing, drops what it buffered (the bus still holds it) and waits as a standby again.

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
use sluice_common::shutdown::{Shutdown, ShutdownTrigger};
use sluice_common::telemetry::Telemetry;
use sluice_common::time::Hour;
use sluice_proto::v1::AgentBatch;
use tokio::sync::Mutex;
use tracing::{error, info, warn};

use crate::archive;
use crate::catalog::lease::Lease;
use crate::catalog::{Catalog, Change, CommitError, DataFile, Writer, import};
use crate::collector;
use crate::compaction;
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

/// A flush ready to upload: encoded files and the catalog change that commits them.
struct PreparedCommit {
    files: Vec<(ObjectPath, Bytes, Table, u64)>,
    change: Change,
}

/// Why an active stint ended.
enum Stop {
    /// Shutdown was requested (and what was buffered is committed).
    Shutdown,
    /// Another process holds the lease now.
    Fenced(String),
}

impl From<CommitError> for ActiveError {
    fn from(error: CommitError) -> ActiveError {
        match error {
            CommitError::Fenced(reason) => ActiveError::Fenced(reason),
            CommitError::Store(error) => ActiveError::Failed(error),
        }
    }
}

impl From<sluice_bus::BusError> for ActiveError {
    fn from(error: sluice_bus::BusError) -> ActiveError {
        ActiveError::Failed(error.into())
    }
}

impl From<SluiceError> for ActiveError {
    fn from(error: SluiceError) -> ActiveError {
        ActiveError::Failed(error)
    }
}

/// How an active stint failed.
enum ActiveError {
    Fenced(String),
    Failed(SluiceError),
}

/// Runs retention until `shutdown` fires, then flushes what it holds: as the archive's
/// writer while this process holds its lease, as a standby while another does.
pub async fn run(
    config: RetentionConfig,
    bus: Arc<dyn Bus>,
    telemetry: Telemetry,
    mut shutdown: Shutdown,
) -> Result<(), SluiceError> {
    let metrics = RetentionMetrics::register(&telemetry);
    let archive = Archive::open(&config.archive)?;
    let holder = Writer::this_process(0).id;
    loop {
        let Some(lease) = Lease::acquire(
            Arc::clone(&archive.store),
            &holder,
            config.lease_ttl,
            &mut shutdown,
        )
        .await?
        else {
            return Ok(());
        };
        metrics
            .lease_epoch
            .set(i64::try_from(lease.epoch()).unwrap_or(i64::MAX));
        let lease = Arc::new(lease);
        let (stop_renewing, renewing) = ShutdownTrigger::new();
        let renewal = lease.keep_renewed(renewing);
        let writer = Writer {
            id: holder.clone(),
            epoch: lease.epoch(),
        };
        let outcome = run_active(
            &config,
            &bus,
            &archive,
            &metrics,
            &lease,
            &writer,
            &mut shutdown,
        )
        .await;
        stop_renewing.fire();
        let _ = renewal.await;
        metrics.lease_epoch.set(0);
        match outcome {
            Ok(Stop::Shutdown) => {
                lease.release().await;
                return Ok(());
            }
            Ok(Stop::Fenced(reason)) | Err(ActiveError::Fenced(reason)) => {
                metrics.fenced.inc();
                error!(reason = %reason, "another retention process writes the archive now; this one stops writing and waits as a standby");
            }
            Err(ActiveError::Failed(error)) => {
                // Hand over at once rather than leave a standby waiting out the lease.
                lease.release().await;
                return Err(error);
            }
        }
    }
}

/// Opens the catalog as its writer (importing an archive of the old layout the first time)
/// and records the takeover, after which no older writer can commit.
async fn take_over(
    archive: &Archive,
    writer: &Writer,
    metrics: &RetentionMetrics,
) -> Result<Catalog, ActiveError> {
    let store = &archive.store;
    let mut catalog = Catalog::load(Arc::clone(store)).await?;
    if catalog.snapshot().version == 0
        && let Some(change) = import::old_layout(store).await?
    {
        let files = change.add.len();
        catalog.commit(writer, change).await?;
        info!(files, "imported an archive written before the catalog");
    }
    let snapshot = catalog
        .commit(
            writer,
            Change {
                kind: "takeover".to_owned(),
                ..Change::default()
            },
        )
        .await?;
    metrics
        .catalog_version
        .set(i64::try_from(snapshot.version).unwrap_or(i64::MAX));
    metrics
        .catalog_files
        .set(i64::try_from(snapshot.files.len()).unwrap_or(i64::MAX));
    metrics
        .archive_bytes
        .set(i64::try_from(snapshot.bytes()).unwrap_or(i64::MAX));
    Ok(catalog)
}

async fn run_active(
    config: &RetentionConfig,
    bus: &Arc<dyn Bus>,
    archive: &Archive,
    metrics: &RetentionMetrics,
    lease: &Arc<Lease>,
    writer: &Writer,
    shutdown: &mut Shutdown,
) -> Result<Stop, ActiveError> {
    let store = Arc::clone(&archive.store);
    let catalog = Arc::new(Mutex::new(take_over(archive, writer, metrics).await?));
    let (stop_compacting, compacting) = ShutdownTrigger::new();
    let compactor = config.compaction.map(|settings| {
        tokio::spawn(compaction::run(
            Arc::clone(&catalog),
            writer.clone(),
            Arc::clone(lease),
            settings,
            metrics.clone(),
            compacting,
        ))
    });
    let expirer = tokio::spawn(crate::expiry::run(
        Arc::clone(&catalog),
        writer.clone(),
        Arc::clone(lease),
        config.expiry.clone(),
        config.expiry_interval,
        // A rewritten file keeps the layout compaction gives it, and so its level.
        config
            .compaction
            .as_ref()
            .map_or(config.zstd_level, |compaction| compaction.zstd_level),
        metrics.clone(),
        stop_compacting.subscribe(),
    ));
    let outcome = write(
        config, bus, archive, metrics, lease, writer, shutdown, &store, &catalog,
    )
    .await;
    stop_compacting.fire();
    if let Some(compactor) = compactor {
        let _ = compactor.await;
    }
    let _ = expirer.await;
    outcome
}

/// The writer's loop: consume, flush, commit, collect.
#[allow(clippy::too_many_arguments)]
async fn write(
    config: &RetentionConfig,
    bus: &Arc<dyn Bus>,
    archive: &Archive,
    metrics: &RetentionMetrics,
    lease: &Lease,
    writer: &Writer,
    shutdown: &mut Shutdown,
    store: &Arc<dyn ObjectStore>,
    catalog: &Mutex<Catalog>,
) -> Result<Stop, ActiveError> {
    let resume = catalog.lock().await.snapshot().positions.clone();
    // One retention process per consumer group: the archive cannot take rows back, so a second
    // member sharing the partitions could duplicate rows after a takeover (it is refused and
    // counted instead, see `sluice_retention_rewinds_refused`).
    let mut consumer = bus
        .subscribe(CONSUMER_GROUP, CONSUMER_GROUP, Sharing::Sole)
        .await?;
    consumer.seek(&resume).await?;
    let version = catalog.lock().await.snapshot().version;
    info!(archive = %archive.describe(), version, epoch = writer.epoch, resume = %resume.to_json(), "retention writing the archive");

    let mut committed_positions = resume.clone();
    let mut buffers = Buffers {
        tables: BTreeMap::new(),
        rows: 0,
        first_record: None,
        first_buffered_at: None,
        positions: resume,
        dedup: Deduplicator::new(100_000),
        patterns: PatternCounter::default(),
    };
    let mut next_collection = Instant::now();
    let stop = loop {
        if !lease.is_held() {
            consumer.close().await;
            return Ok(Stop::Fenced("the lease was lost".to_owned()));
        }
        if next_collection <= Instant::now() && buffers.rows == 0 {
            collector::collect(&mut *catalog.lock().await, writer, config.gc_grace, metrics)
                .await?;
            next_collection = Instant::now() + config.gc_interval;
        }
        let due = buffers
            .first_buffered_at
            .is_some_and(|since| since.elapsed() >= config.flush_interval)
            || buffers.rows >= config.flush_rows;
        if due {
            let version = catalog.lock().await.snapshot().version + 1;
            let prepared = prepare(&mut buffers, version, writer.epoch, config.zstd_level).await?;
            publish(store, catalog, writer, lease, &prepared, metrics, shutdown).await?;
            committed_positions = buffers.positions.clone();
            checkpoint_bus(consumer.as_mut(), &committed_positions).await;
            continue;
        }
        let wait = buffers
            .first_buffered_at
            .map(|since| config.flush_interval.saturating_sub(since.elapsed()))
            .unwrap_or(Duration::from_millis(500))
            .clamp(Duration::from_millis(10), Duration::from_millis(500));
        tokio::select! {
            () = shutdown.wait() => break Stop::Shutdown,
            polled = consumer.poll(1_000, wait) => match polled {
                Ok(events) => {
                    for event in &events {
                        match event {
                            BusEvent::Record(record) => buffer_record(&mut buffers, record, metrics)?,
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
    };
    if buffers.positions != committed_positions {
        let version = catalog.lock().await.snapshot().version + 1;
        let prepared = prepare(&mut buffers, version, writer.epoch, config.zstd_level).await?;
        // A final flush gets a fresh signal so it is not cut short by the one that fired.
        let (_trigger, mut patient) = ShutdownTrigger::new();
        let outcome = tokio::time::timeout(
            Duration::from_secs(30),
            publish(
                store,
                catalog,
                writer,
                lease,
                &prepared,
                metrics,
                &mut patient,
            ),
        )
        .await;
        match outcome {
            Ok(Ok(())) => checkpoint_bus(consumer.as_mut(), &buffers.positions).await,
            Ok(Err(error)) => {
                consumer.close().await;
                return Err(error);
            }
            Err(_) => warn!("final flush did not finish in 30 s; the bus still holds its records"),
        }
    }
    consumer.close().await;
    Ok(stop)
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

/// One encoded file: path, bytes, table, rows and time range.
type EncodedFile = (ObjectPath, Bytes, Table, u64, (i64, i64));

/// Encodes every buffered table and hour into a Parquet file of catalog version `version`.
async fn prepare(
    buffers: &mut Buffers,
    version: u64,
    epoch: u64,
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
    let encoded = tokio::task::spawn_blocking(move || -> Result<Vec<EncodedFile>, SluiceError> {
        batches
            .into_iter()
            .map(|(table, hour, batch)| {
                let rows = batch.num_rows() as u64;
                let times =
                    time_range(table, &batch).unwrap_or((hour.start_nanos(), hour.end_nanos() - 1));
                let bytes = encode_parquet(&batch, zstd_level, &positions_json, version)?;
                Ok((
                    archive::data_file_path(table, hour, version, epoch, partition, first_offset),
                    bytes,
                    table,
                    rows,
                    times,
                ))
            })
            .collect()
    })
    .await
    .map_err(|error| SluiceError::internal(format!("parquet encoding task failed: {error}")))??;
    let change = Change {
        kind: "flush".to_owned(),
        add: encoded
            .iter()
            .map(
                |(path, bytes, table, rows, (min_time, max_time))| DataFile {
                    path: path.to_string(),
                    table: table.name().to_owned(),
                    rows: *rows,
                    bytes: bytes.len() as u64,
                    min_time: *min_time,
                    max_time: *max_time,
                },
            )
            .collect(),
        positions: Some(positions),
        ..Change::default()
    };
    Ok(PreparedCommit {
        files: encoded
            .into_iter()
            .map(|(path, bytes, table, rows, _)| (path, bytes, table, rows))
            .collect(),
        change,
    })
}

/// The earliest and latest time in `batch` (`timestamp`; for `pattern_counts`, `first_seen`
/// and `last_seen`).
pub(crate) fn time_range(table: Table, batch: &RecordBatch) -> Option<(i64, i64)> {
    use datafusion::arrow::array::TimestampNanosecondArray;
    use datafusion::arrow::compute::{max, min};
    let column = |name: &str| {
        batch
            .column_by_name(name)?
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .cloned()
    };
    let (first, last) = if table == Table::PatternCounts {
        (column("first_seen")?, column("last_seen")?)
    } else {
        let times = column("timestamp")?;
        (times.clone(), times)
    };
    Some((min(&first)?, max(&last)?))
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

/// Uploads the files, then commits them to the catalog; retries until it succeeds, the lease
/// is lost, or shutdown is requested.
async fn publish(
    store: &Arc<dyn ObjectStore>,
    catalog: &Mutex<Catalog>,
    writer: &Writer,
    lease: &Lease,
    prepared: &PreparedCommit,
    metrics: &RetentionMetrics,
    shutdown: &mut Shutdown,
) -> Result<(), ActiveError> {
    let mut backoff = Duration::from_millis(200);
    let snapshot = loop {
        if !lease.is_held() {
            return Err(ActiveError::Fenced("the lease was lost".to_owned()));
        }
        let attempt = match upload(store, prepared).await {
            Ok(()) => catalog
                .lock()
                .await
                .commit(writer, prepared.change.clone())
                .await
                .map_err(ActiveError::from),
            Err(error) => Err(ActiveError::Failed(error)),
        };
        match attempt {
            Ok(snapshot) => break snapshot,
            Err(ActiveError::Fenced(reason)) => return Err(ActiveError::Fenced(reason)),
            Err(ActiveError::Failed(error)) => {
                metrics.flush_failures.inc();
                warn!(version = prepared.change.version, error = %error, "failed to write to the archive, retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.wait() => return Err(ActiveError::Failed(error)),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let mut bytes = 0;
    for (_, data, table, rows) in &prepared.files {
        metrics.rows(table.name(), *rows);
        bytes += data.len() as u64;
    }
    metrics.files_written.inc_by(prepared.files.len() as u64);
    metrics.bytes_written.inc_by(bytes);
    metrics
        .archive_bytes
        .set(i64::try_from(snapshot.bytes()).unwrap_or(i64::MAX));
    metrics
        .catalog_version
        .set(i64::try_from(snapshot.version).unwrap_or(i64::MAX));
    metrics
        .catalog_files
        .set(i64::try_from(snapshot.files.len()).unwrap_or(i64::MAX));
    metrics.commits.inc();
    metrics.buffered_rows.set(0);
    Ok(())
}

/// Files larger than this go up as multipart uploads.
const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;

async fn upload(
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
    Ok(())
}
