//! Compaction: merges the small files of each table and hour into large files sorted for
//! compression and pruning, in the background of the archive's writer.
//!
//! A group (one table's files in one hour partition) is compacted once it holds at least two
//! files under half the target size and its hour is over (or it holds many: an hour still
//! being written is compacted too, so a busy hour does not pile up hundreds of files). Its
//! files are read, sorted (`source_id`, then time; `pattern_counts` by pattern, then time),
//! and written as one file per `retention.compaction.target_bytes` of input, with page
//! statistics and bloom filters on `source_id` and `instance_id`. One catalog change
//! removes the inputs and adds the outputs: a crash at any point leaves the old files or the
//! new ones in the catalog, never both, never neither; the outputs of a compaction that did
//! not commit are orphans the collector deletes, and the inputs stay readable (garbage)
//! until no query can still be reading them.
//!
//! The merge runs on a blocking thread and then rests so that it uses no more than
//! `retention.compaction.cpu_share` of one core; ingestion never waits for it (the flush path
//! takes the catalog only to commit).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::{
    SortColumn, concat_batches, lexsort_to_indices, take_record_batch,
};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use sluice_common::SluiceError;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::catalog::import::hour_of_path;
use crate::catalog::lease::Lease;
use crate::catalog::objects;
use crate::catalog::{Catalog, Change, CommitError, DataFile, Snapshot, Writer};
use crate::metrics::RetentionMetrics;
use crate::tables::Table;

/// How compaction runs.
#[derive(Debug, Clone, Copy)]
pub struct CompactionSettings {
    /// Output files hold about this many bytes of input each.
    pub target_bytes: u64,
    /// Share of one core the merge may use, in (0, 1].
    pub cpu_share: f64,
    /// Time between looks for work.
    pub interval: Duration,
    /// An hour still being written is compacted once it holds this many small files.
    pub max_open_files: usize,
    /// Zstd level of the outputs.
    pub zstd_level: i32,
}

/// One group to merge.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The table.
    pub table: Table,
    /// The partition directory (`logs/date=…/hour=…`).
    pub directory: String,
    /// The files to merge, at most the target size of them.
    pub inputs: Vec<DataFile>,
}

/// The directory of a data file.
fn directory_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(directory, _)| directory)
}

/// The groups of `snapshot` worth merging at `now_nanos`, oldest first.
pub fn plan(snapshot: &Snapshot, settings: &CompactionSettings, now_nanos: i64) -> Vec<Plan> {
    let mut groups: BTreeMap<(String, String), Vec<&DataFile>> = BTreeMap::new();
    for file in snapshot.files.values() {
        if file.bytes >= settings.target_bytes / 2 {
            continue;
        }
        groups
            .entry((directory_of(&file.path).to_owned(), file.table.clone()))
            .or_default()
            .push(file);
    }
    let mut plans = Vec::new();
    for ((directory, table_name), mut files) in groups {
        let Some(table) = Table::ALL
            .into_iter()
            .find(|table| table.name() == table_name)
        else {
            continue;
        };
        let over = hour_of_path(&files[0].path).is_none_or(|hour| hour.end_nanos() <= now_nanos);
        if files.len() < 2 || (!over && files.len() < settings.max_open_files) {
            continue;
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        // Several plans per group when its small files add up to more than the target.
        let mut inputs = Vec::new();
        let mut bytes = 0;
        for file in files {
            if !inputs.is_empty() && bytes + file.bytes > settings.target_bytes {
                if inputs.len() >= 2 {
                    plans.push(Plan {
                        table,
                        directory: directory.clone(),
                        inputs: std::mem::take(&mut inputs),
                    });
                }
                inputs.clear();
                bytes = 0;
            }
            bytes += file.bytes;
            inputs.push(file.clone());
        }
        if inputs.len() >= 2 {
            plans.push(Plan {
                table,
                directory,
                inputs,
            });
        }
    }
    plans
}

/// The sort order of a table's compacted files.
fn sort_columns(table: Table) -> &'static [&'static str] {
    match table {
        Table::PatternCounts => &["pattern_id", "first_seen"],
        _ => &["source_id", "timestamp"],
    }
}

/// How compacted files are written.
///
/// Chosen by measurement (`examples/encodings.rs` on an archive of the bench corpus, 380,043
/// lines: `logs` with all its columns): sorted by source and time, zstd 15 with 8 MiB pages
/// and delta-coded times, 3.91 MB; 32 MiB pages for the message text (about one page per row
/// group: its zstd frame sees more of the repeats) 3.87 MB at the same cost; zstd 12 4.22 MB;
/// zstd 16 on the messages 3.80 MB at 1.8 times the time; the defaults (dictionary times,
/// 1 MiB pages) 4.71 MB; sorting by pattern first 4.60 MB (the pattern ids shrink, the times
/// grow more). Nanosecond times are a quarter of the file, the messages well over half.
/// Row groups of 256 Ki rows let a scan of one file run in parallel.
pub(crate) fn writer_properties(
    table: Table,
    zstd_level: i32,
) -> Result<WriterProperties, SluiceError> {
    let level = ZstdLevel::try_new(zstd_level)
        .map_err(|error| SluiceError::invalid(format!("invalid zstd level: {error}")))?;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(256 * 1024))
        .set_data_page_size_limit(8 * 1024 * 1024)
        .set_dictionary_page_size_limit(8 * 1024 * 1024);
    let deltas: &[&str] = match table {
        Table::PatternCounts => &["first_seen", "last_seen"],
        Table::Timers => &["timestamp", "start", "stop", "sequence"],
        _ => &["timestamp", "sequence"],
    };
    for column in ["message", "body"] {
        builder = builder
            .set_column_data_page_size_limit(ColumnPath::from(column), 32 << 20)
            .set_column_dictionary_page_size_limit(ColumnPath::from(column), 32 << 20);
    }
    for column in deltas {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(*column), false)
            .set_column_encoding(ColumnPath::from(*column), Encoding::DELTA_BINARY_PACKED);
    }
    if table != Table::PatternCounts {
        for column in ["source_id", "instance_id"] {
            builder = builder.set_column_bloom_filter_enabled(ColumnPath::from(column), true);
        }
    }
    Ok(builder.build())
}

/// Reads, sorts and encodes `inputs` (their bytes, in order) into one file.
fn merge(
    table: Table,
    inputs: Vec<Bytes>,
    zstd_level: i32,
) -> Result<(Bytes, u64, (i64, i64)), SluiceError> {
    let schema = table.schema();
    let mut batches = Vec::new();
    for bytes in inputs {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|builder| builder.with_batch_size(64 * 1024).build())
            .map_err(|error| {
                SluiceError::internal(format!("failed to read a file to compact: {error}"))
            })?;
        for batch in reader {
            let batch = batch.map_err(|error| {
                SluiceError::internal(format!("failed to read a file to compact: {error}"))
            })?;
            // Files written before a column was added hold fewer: line them up by name.
            batches.push(align(&batch, &schema)?);
        }
    }
    let merged = concat_batches(&schema, &batches)
        .map_err(|error| SluiceError::internal(format!("failed to merge batches: {error}")))?;
    drop(batches);
    let columns: Vec<SortColumn> = sort_columns(table)
        .iter()
        .filter_map(|name| merged.column_by_name(name))
        .map(|values| SortColumn {
            values: Arc::clone(values),
            options: None,
        })
        .collect();
    let sorted = if columns.is_empty() || merged.num_rows() == 0 {
        merged
    } else {
        let indices = lexsort_to_indices(&columns, None)
            .map_err(|error| SluiceError::internal(format!("failed to sort: {error}")))?;
        take_record_batch(&merged, &indices)
            .map_err(|error| SluiceError::internal(format!("failed to sort: {error}")))?
    };
    let rows = sorted.num_rows() as u64;
    let times = crate::pipeline::time_range(table, &sorted).unwrap_or((i64::MIN, i64::MAX));
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new(
        &mut buffer,
        Arc::clone(&schema),
        Some(writer_properties(table, zstd_level)?),
    )
    .map_err(|error| SluiceError::internal(format!("failed to start a parquet file: {error}")))?;
    writer
        .write(&sorted)
        .map_err(|error| SluiceError::internal(format!("failed to encode parquet: {error}")))?;
    writer.close().map_err(|error| {
        SluiceError::internal(format!("failed to finish a parquet file: {error}"))
    })?;
    Ok((Bytes::from(buffer), rows, times))
}

/// `batch` with the columns of `schema`, absent ones as nulls.
fn align(
    batch: &RecordBatch,
    schema: &datafusion::arrow::datatypes::SchemaRef,
) -> Result<RecordBatch, SluiceError> {
    if batch.schema() == *schema {
        return Ok(batch.clone());
    }
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) => Arc::clone(column),
            None => datafusion::arrow::array::new_null_array(field.data_type(), batch.num_rows()),
        })
        .collect();
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|error| {
        SluiceError::internal(format!("a file to compact does not fit its table: {error}"))
    })
}

/// What one compaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Groups merged.
    pub groups: u64,
    /// Files merged.
    pub files_in: u64,
    /// Files written.
    pub files_out: u64,
    /// Bytes merged.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
}

/// Merges `plan`'s files and commits the result; `Ok(None)` when the inputs changed
/// meanwhile (expired, say) and the merge was dropped.
pub async fn compact(
    catalog: &Mutex<Catalog>,
    store: &Arc<dyn ObjectStore>,
    writer: &Writer,
    plan: &Plan,
    settings: &CompactionSettings,
) -> Result<Option<Compacted>, CommitError> {
    let mut inputs = Vec::with_capacity(plan.inputs.len());
    for file in &plan.inputs {
        let path = ObjectPath::from(file.path.as_str());
        let bytes = store
            .get(&path)
            .await
            .map_err(|error| SluiceError::unavailable(format!("failed to read {path}: {error}")))?
            .bytes()
            .await
            .map_err(|error| SluiceError::unavailable(format!("failed to read {path}: {error}")))?;
        inputs.push(bytes);
    }
    let table = plan.table;
    let zstd_level = settings.zstd_level;
    let started = Instant::now();
    let (bytes, rows, (min_time, max_time)) =
        tokio::task::spawn_blocking(move || merge(table, inputs, zstd_level))
            .await
            .map_err(|error| SluiceError::internal(format!("compaction task failed: {error}")))??;
    let expected: u64 = plan.inputs.iter().map(|file| file.rows).sum();
    if rows != expected {
        return Err(SluiceError::internal(format!(
            "compacting {} read {rows} rows where the catalog holds {expected}; nothing was changed",
            plan.directory
        ))
        .into());
    }
    sluice_common::failpoint::hit("compaction-merged");
    // Rest so the merge uses no more than its share of a core.
    let busy = started.elapsed();
    let share = settings.cpu_share.clamp(0.01, 1.0);
    tokio::time::sleep(busy.mul_f64((1.0 - share) / share)).await;

    // Uploaded before the catalog is taken, so flushes never wait on it; until the commit it
    // is an orphan, younger than the collector's grace period.
    let path = ObjectPath::from(format!(
        "{}/c{}-{}.parquet",
        plan.directory,
        sluice_common::time::now_nanos(),
        writer.epoch
    ));
    let bytes_out = bytes.len() as u64;
    let failed = |error: object_store::Error| {
        SluiceError::unavailable(format!("failed to write {path}: {error}"))
    };
    if bytes.len() > 16 * 1024 * 1024 {
        let upload = store.put_multipart(&path).await.map_err(failed)?;
        let mut upload = WriteMultipart::new(upload);
        upload.put(bytes);
        upload.finish().await.map_err(failed)?;
    } else {
        store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(failed)?;
    }
    sluice_common::failpoint::hit("compaction-uploaded");
    let mut catalog = catalog.lock().await;
    let snapshot = catalog.snapshot();
    if plan
        .inputs
        .iter()
        .any(|file| !snapshot.files.contains_key(&file.path))
    {
        // Expired or merged meanwhile: the new file is an orphan the collector deletes.
        return Ok(None);
    }
    let change = Change {
        kind: "compact".to_owned(),
        remove: plan.inputs.iter().map(|file| file.path.clone()).collect(),
        add: vec![DataFile {
            path: path.to_string(),
            table: table.name().to_owned(),
            rows,
            bytes: bytes_out,
            min_time,
            max_time,
        }],
        ..Change::default()
    };
    catalog.commit(writer, change).await?;
    sluice_common::failpoint::hit("compaction-committed");
    Ok(Some(Compacted {
        groups: 1,
        files_in: plan.inputs.len() as u64,
        files_out: 1,
        bytes_in: plan.inputs.iter().map(|file| file.bytes).sum(),
        bytes_out,
    }))
}

const REQUEST: &str = "_sluice/catalog/requests/compact.json";
const PROGRESS: &str = "_sluice/catalog/compaction.json";

/// A request to compact everything now (`sluice archive compact --now`), left in the store
/// for whichever process writes the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Unique per request.
    pub id: String,
}

/// What the latest compaction round did, as it goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The request the round answers (empty for a scheduled round).
    pub request: String,
    /// `running` or `done`.
    pub state: String,
    /// Groups the round merges.
    pub groups_total: u64,
    /// Groups merged (or given up) so far.
    pub groups_done: u64,
    /// Files merged so far.
    pub files_in: u64,
    /// Files written so far.
    pub files_out: u64,
    /// Bytes merged so far.
    pub bytes_in: u64,
    /// Bytes written so far.
    pub bytes_out: u64,
    /// When this was written, milliseconds since the epoch.
    pub updated_at_ms: i64,
}

/// Asks the archive's writer to compact everything it can now; returns the request's id.
pub async fn request(store: &Arc<dyn ObjectStore>) -> Result<Request, SluiceError> {
    let request = Request {
        id: objects::request_id(),
    };
    objects::write(store, REQUEST, &request).await?;
    Ok(request)
}

/// The latest round's progress, if any round ran.
pub async fn progress(store: &Arc<dyn ObjectStore>) -> Result<Option<Progress>, SluiceError> {
    objects::read(store, PROGRESS).await
}

/// Compacts what is due every `settings.interval`, and everything at once when asked
/// ([`request`]), until `stop` fires, the lease is lost or another writer fences this one.
pub async fn run(
    catalog: Arc<Mutex<Catalog>>,
    writer: Writer,
    lease: Arc<Lease>,
    settings: CompactionSettings,
    metrics: RetentionMetrics,
    mut stop: sluice_common::shutdown::Shutdown,
) {
    let store = Arc::clone(catalog.lock().await.store());
    // The request answered last (by this process or the writer before it).
    let mut answered = progress(&store)
        .await
        .ok()
        .flatten()
        .filter(|progress| progress.state == "done")
        .map(|progress| progress.request)
        .unwrap_or_default();
    let mut next_round = Instant::now();
    loop {
        // Look for a request every second while waiting for the next scheduled round.
        let asked = match objects::read::<Request>(&store, REQUEST).await {
            Ok(Some(request)) if request.id != answered => Some(request.id),
            Ok(_) => None,
            Err(error) => {
                warn!(error = %error, "failed to read the compaction requests");
                None
            }
        };
        if asked.is_none() && Instant::now() < next_round {
            tokio::select! {
                () = stop.wait() => return,
                () = tokio::time::sleep(Duration::from_secs(1).min(settings.interval)) => continue,
            }
        }
        let snapshot = catalog.lock().await.snapshot();
        // Asked, every hour counts as over.
        let now = if asked.is_some() {
            i64::MAX
        } else {
            sluice_common::time::now_nanos()
        };
        let plans = plan(&snapshot, &settings, now);
        let mut progress = Progress {
            request: asked.clone().unwrap_or_default(),
            state: "running".to_owned(),
            groups_total: plans.len() as u64,
            ..Progress::default()
        };
        let report = |progress: &Progress| {
            let store = Arc::clone(&store);
            let mut progress = progress.clone();
            progress.updated_at_ms = crate::catalog::now_ms();
            async move {
                if let Err(error) = objects::write(&store, PROGRESS, &progress).await {
                    warn!(error = %error, "failed to record compaction progress");
                }
            }
        };
        if !plans.is_empty() || asked.is_some() {
            report(&progress).await;
        }
        metrics.compaction_pending.set(plans.len() as i64);
        for (index, plan) in plans.iter().enumerate() {
            if stop.is_requested() || !lease.is_held() {
                return;
            }
            match compact(&catalog, &store, &writer, plan, &settings).await {
                Ok(Some(compacted)) => {
                    progress.files_in += compacted.files_in;
                    progress.files_out += compacted.files_out;
                    progress.bytes_in += compacted.bytes_in;
                    progress.bytes_out += compacted.bytes_out;
                    metrics.compaction_files_in.inc_by(compacted.files_in);
                    metrics.compaction_files_out.inc_by(compacted.files_out);
                    metrics.compaction_bytes_in.inc_by(compacted.bytes_in);
                    metrics.compaction_bytes_out.inc_by(compacted.bytes_out);
                }
                Ok(None) => {}
                Err(CommitError::Fenced(_)) => return,
                Err(CommitError::Store(error)) => {
                    metrics.compaction_failures.inc();
                    warn!(directory = %plan.directory, error = %error, "compaction failed; retried at the next round");
                }
            }
            progress.groups_done = index as u64 + 1;
            metrics
                .compaction_pending
                .set((plans.len() - index - 1) as i64);
            report(&progress).await;
        }
        progress.state = "done".to_owned();
        if !plans.is_empty() || asked.is_some() {
            report(&progress).await;
        }
        if progress.groups_done > 0 {
            info!(
                groups = progress.groups_done,
                files_in = progress.files_in,
                files_out = progress.files_out,
                bytes_in = progress.bytes_in,
                bytes_out = progress.bytes_out,
                "compacted"
            );
        }
        if let Some(id) = asked {
            answered = id;
        } else {
            next_round = Instant::now() + settings.interval;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use datafusion::prelude::SessionContext;
    use object_store::ObjectStoreExt;
    use sluice_common::time::Hour;
    use sluice_proto::v2::{Envelope, Log, envelope};

    use super::*;
    use crate::catalog::sql::register_tables;
    use crate::config::ArchiveLocation;
    use crate::store::Archive;
    use crate::tables::{TableBuffer, push_envelope};

    fn settings() -> CompactionSettings {
        CompactionSettings {
            target_bytes: 64 * 1024 * 1024,
            cpu_share: 1.0,
            interval: Duration::from_secs(1),
            max_open_files: 64,
            zstd_level: 3,
        }
    }

    /// Every row of `query`, as text, in order.
    async fn rows(archive: &Archive, query: &str) -> String {
        let context = SessionContext::new();
        register_tables(&context, archive, None)
            .await
            .expect("tables");
        let batches = context
            .sql(query)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("rows");
        datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .expect("format")
            .to_string()
    }

    #[tokio::test]
    async fn an_hours_files_become_one_sorted_file_with_every_row_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive =
            Archive::open(&ArchiveLocation::Local(dir.path().to_path_buf())).expect("open");
        let store = Arc::clone(&archive.store);
        let writer = Writer::this_process(1);
        let mut catalog = Catalog::load(Arc::clone(&store)).await.expect("catalog");
        let hour = Hour(490_000);
        let mut add = Vec::new();
        for file in 0..12_i64 {
            let mut buffers = BTreeMap::from([(Table::Logs, TableBuffer::new(Table::Logs))]);
            for line in 0..400_i64 {
                let envelope = Envelope {
                    timestamp: hour.start_nanos() + file * 1_000_000 + line,
                    source_id: ["c", "a", "b"][(line % 3) as usize].into(),
                    instance_id: (line % 5).to_string(),
                    message: Some(envelope::Message::Log(Log {
                        payload: format!("file {file} line {line}").into_bytes(),
                        r#type: 0,
                    })),
                    ..Default::default()
                };
                push_envelope(&envelope, "agent", file as u64, Some("00ab"), &mut buffers)
                    .expect("push");
            }
            let batch = buffers
                .get_mut(&Table::Logs)
                .expect("logs")
                .finish()
                .expect("batch");
            let times = crate::pipeline::time_range(Table::Logs, &batch).expect("times");
            let bytes = crate::pipeline::encode_parquet(&batch, 3, "{}", 1).expect("parquet");
            let path = crate::archive::data_file_path(Table::Logs, hour, 1, 1, 0, file as u64);
            add.push(DataFile {
                path: path.to_string(),
                table: "logs".to_owned(),
                rows: 400,
                bytes: bytes.len() as u64,
                min_time: times.0,
                max_time: times.1,
            });
            store
                .put(&path, PutPayload::from(bytes))
                .await
                .expect("put");
        }
        catalog
            .commit(
                &writer,
                Change {
                    kind: "flush".to_owned(),
                    add,
                    ..Change::default()
                },
            )
            .await
            .expect("commit");
        let everything = "SELECT * FROM logs ORDER BY agent_id, sequence, message";
        let before = rows(&archive, everything).await;

        let plans = plan(
            &catalog.snapshot(),
            &settings(),
            sluice_common::time::now_nanos(),
        );
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].inputs.len(), 12);
        // An hour still being written waits until it holds many files.
        assert!(plan(&catalog.snapshot(), &settings(), hour.start_nanos()).is_empty());

        let catalog = Mutex::new(catalog);
        let done = compact(&catalog, &store, &writer, &plans[0], &settings())
            .await
            .expect("compact")
            .expect("committed");
        assert_eq!((done.files_in, done.files_out), (12, 1));
        let snapshot = catalog.lock().await.snapshot();
        assert_eq!(snapshot.files.len(), 1);
        assert_eq!(snapshot.garbage.len(), 12);
        let merged = snapshot.files.values().next().expect("merged");
        assert_eq!(merged.rows, 4_800);

        assert_eq!(rows(&archive, everything).await, before);
        assert!(plan(&snapshot, &settings(), sluice_common::time::now_nanos()).is_empty());

        // Sorted by source, then time, with bloom filters on the source and instance ids.
        let bytes = store
            .get(&ObjectPath::from(merged.path.as_str()))
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).expect("reader");
        let metadata = builder.metadata().clone();
        let columns = metadata.row_group(0).columns();
        for name in ["source_id", "instance_id"] {
            let column = columns
                .iter()
                .find(|column| column.column_path().string() == name)
                .expect("column");
            assert!(
                column.bloom_filter_offset().is_some(),
                "{name} has no bloom filter"
            );
        }
        let batch = builder
            .build()
            .expect("rows")
            .next()
            .expect("batch")
            .expect("batch");
        let sources = batch
            .column_by_name("source_id")
            .expect("source_id")
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .expect("text")
            .iter()
            .map(|value| value.unwrap_or_default().to_owned())
            .collect::<Vec<_>>();
        let mut sorted = sources.clone();
        sorted.sort();
        assert_eq!(sources, sorted);
    }
}
