//! Expiry: rows older than their table's (and source's) policy leave the archive.
//!
//! Policies are rules `[[retention.expiry]]` of a table (or every table), a `source_id`
//! pattern (`*` and `?`; every source when absent) and a `max_age`; a row takes the first
//! rule that matches its table and source, and a row no rule matches is kept. As Quickwit's
//! janitor does, it goes in two phases: the planner records in the catalog what is expired
//! (a file wholly past its policy leaves the table; a file only partly past it is rewritten
//! without those rows, in the same change), and the collector deletes the files once no
//! query can still be reading them. A dry run plans and reports, and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use datafusion::arrow::array::{Array, BooleanArray, StringArray, TimestampNanosecondArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sluice_common::SluiceError;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::catalog::lease::Lease;
use crate::catalog::objects;
use crate::catalog::{Catalog, Change, CommitError, DataFile, Snapshot, Writer};
use crate::metrics::RetentionMetrics;
use crate::tables::Table;

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The table it applies to; `None`: every table.
    pub table: Option<Table>,
    /// The `source_id` pattern it applies to; `None`: every source.
    pub source_id: Option<String>,
    /// Rows older than this go.
    pub max_age: Duration,
}

/// Every rule, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The rules; the first that matches a row decides.
    pub rules: Vec<Rule>,
}

pub use sluice_common::glob::matches;

impl Policy {
    fn rules_for(&self, table: Table) -> impl Iterator<Item = &Rule> {
        self.rules
            .iter()
            .filter(move |rule| rule.table.is_none_or(|only| only == table))
    }

    /// The age past which a row of `table` from `source_id` goes, if any.
    pub fn max_age(&self, table: Table, source_id: &str) -> Option<Duration> {
        self.rules_for(table)
            .find(|rule| {
                rule.source_id
                    .as_deref()
                    .is_none_or(|pattern| matches(pattern, source_id))
            })
            .map(|rule| rule.max_age)
    }
}

/// What one expiry pass found (and, unless a dry run, did).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The request answered (empty for a scheduled pass).
    pub request: String,
    /// Whether it only planned.
    pub dry_run: bool,
    /// `running` or `done`.
    pub state: String,
    /// Files that leave whole.
    pub files_removed: u64,
    /// Files rewritten without their expired rows.
    pub files_rewritten: u64,
    /// Rows that go.
    pub rows_expired: u64,
    /// Bytes of the files that leave or are rewritten.
    pub bytes_released: u64,
    /// The paths that leave whole, then those rewritten (at most 1,000 of each).
    pub removed: Vec<String>,
    /// See `removed`.
    pub rewritten: Vec<String>,
    /// When this was written, milliseconds since the epoch.
    pub updated_at_ms: i64,
}

fn nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

/// The rows of `bytes` (a `table` file) to keep at `now_nanos`; `None` when all stay.
fn kept_rows(
    table: Table,
    policy: &Policy,
    bytes: Bytes,
    now_nanos: i64,
) -> Result<Option<(Vec<datafusion::arrow::record_batch::RecordBatch>, u64)>, SluiceError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|builder| builder.with_batch_size(64 * 1024).build())
        .map_err(|error| {
            SluiceError::internal(format!("failed to read a file to expire: {error}"))
        })?;
    let time_column = if table == Table::PatternCounts {
        "last_seen"
    } else {
        "timestamp"
    };
    let mut kept = Vec::new();
    let mut dropped = 0_u64;
    for batch in reader {
        let batch = batch.map_err(|error| {
            SluiceError::internal(format!("failed to read a file to expire: {error}"))
        })?;
        let sources = batch
            .column_by_name("source_id")
            .and_then(|column| column.as_any().downcast_ref::<StringArray>().cloned());
        let times = batch.column_by_name(time_column).and_then(|column| {
            column
                .as_any()
                .downcast_ref::<TimestampNanosecondArray>()
                .cloned()
        });
        let (Some(sources), Some(times)) = (sources, times) else {
            return Ok(None);
        };
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|row| {
                let age = now_nanos.saturating_sub(times.value(row));
                let expired = policy
                    .max_age(table, sources.value(row))
                    .is_some_and(|max_age| age > nanos(max_age));
                Some(!expired)
            })
            .collect();
        dropped += keep.false_count() as u64;
        kept.push(
            filter_record_batch(&batch, &keep)
                .map_err(|error| SluiceError::internal(format!("failed to filter: {error}")))?,
        );
    }
    Ok((dropped > 0).then_some((kept, dropped)))
}

/// What to do with one file.
enum Fate {
    Remove(u64),
    Rewrite {
        batches: Vec<datafusion::arrow::record_batch::RecordBatch>,
        dropped: u64,
    },
}

/// Decides `file`'s fate at `now_nanos`, reading it only when its rows may differ.
async fn fate(
    store: &Arc<dyn ObjectStore>,
    policy: &Policy,
    file: &DataFile,
    now_nanos: i64,
) -> Result<Option<Fate>, SluiceError> {
    let Some(table) = Table::ALL
        .into_iter()
        .find(|table| table.name() == file.table)
    else {
        return Ok(None);
    };
    let ages: Vec<Duration> = policy.rules_for(table).map(|rule| rule.max_age).collect();
    let Some(shortest) = ages.iter().min() else {
        return Ok(None);
    };
    if now_nanos.saturating_sub(file.min_time) <= nanos(*shortest) {
        // Even its oldest row is within every policy.
        return Ok(None);
    }
    let catch_all = policy.rules_for(table).any(|rule| rule.source_id.is_none());
    let longest = ages.iter().max().copied().unwrap_or_default();
    if catch_all && now_nanos.saturating_sub(file.max_time) > nanos(longest) {
        // Even its newest row is past every policy, and every source has one.
        return Ok(Some(Fate::Remove(file.rows)));
    }
    let path = ObjectPath::from(file.path.as_str());
    let bytes = store
        .get(&path)
        .await
        .map_err(|error| SluiceError::unavailable(format!("failed to read {path}: {error}")))?
        .bytes()
        .await
        .map_err(|error| SluiceError::unavailable(format!("failed to read {path}: {error}")))?;
    let policy = policy.clone();
    let decided = tokio::task::spawn_blocking(move || kept_rows(table, &policy, bytes, now_nanos))
        .await
        .map_err(|error| SluiceError::internal(format!("expiry task failed: {error}")))??;
    Ok(decided.map(|(batches, dropped)| {
        if dropped >= file.rows {
            Fate::Remove(file.rows)
        } else {
            Fate::Rewrite { batches, dropped }
        }
    }))
}

/// Plans expiry of `snapshot` at `now_nanos` and, unless `dry_run`, commits it: files wholly
/// expired leave, files partly expired are rewritten, all in one catalog change.
pub async fn expire(
    catalog: &Mutex<Catalog>,
    writer: &Writer,
    policy: &Policy,
    zstd_level: i32,
    now_nanos: i64,
    dry_run: bool,
) -> Result<Report, CommitError> {
    let (snapshot, store): (Arc<Snapshot>, Arc<dyn ObjectStore>) = {
        let catalog = catalog.lock().await;
        (catalog.snapshot(), Arc::clone(catalog.store()))
    };
    let mut report = Report {
        dry_run,
        ..Report::default()
    };
    let mut change = Change {
        kind: "expire".to_owned(),
        ..Change::default()
    };
    for file in snapshot.files.values() {
        let Some(fate) = fate(&store, policy, file, now_nanos).await? else {
            continue;
        };
        report.bytes_released += file.bytes;
        match fate {
            Fate::Remove(rows) => {
                report.files_removed += 1;
                report.rows_expired += rows;
                if report.removed.len() < 1_000 {
                    report.removed.push(file.path.clone());
                }
                change.remove.push(file.path.clone());
            }
            Fate::Rewrite { batches, dropped } => {
                report.files_rewritten += 1;
                report.rows_expired += dropped;
                if report.rewritten.len() < 1_000 {
                    report.rewritten.push(file.path.clone());
                }
                if dry_run {
                    continue;
                }
                let Some(table) = Table::ALL
                    .into_iter()
                    .find(|table| table.name() == file.table)
                else {
                    continue;
                };
                let rewritten =
                    rewrite(&store, table, file, batches, zstd_level, writer.epoch).await?;
                change.remove.push(file.path.clone());
                change.add.push(rewritten);
            }
        }
    }
    if !dry_run && !change.remove.is_empty() {
        let mut catalog = catalog.lock().await;
        let current = catalog.snapshot();
        if change
            .remove
            .iter()
            .any(|path| !current.files.contains_key(path))
        {
            // Compacted meanwhile: the next pass plans again (what this one wrote is an
            // orphan the collector deletes).
            return Ok(Report::default());
        }
        catalog.commit(writer, change).await?;
    }
    Ok(report)
}

/// Writes `file`'s kept rows as a new file beside it.
async fn rewrite(
    store: &Arc<dyn ObjectStore>,
    table: Table,
    file: &DataFile,
    batches: Vec<datafusion::arrow::record_batch::RecordBatch>,
    zstd_level: i32,
    epoch: u64,
) -> Result<DataFile, SluiceError> {
    let schema = table.schema();
    let encoded =
        tokio::task::spawn_blocking(move || -> Result<(Bytes, u64, (i64, i64)), SluiceError> {
            let merged =
                datafusion::arrow::compute::concat_batches(&schema, &batches).map_err(|error| {
                    SluiceError::internal(format!("failed to merge batches: {error}"))
                })?;
            let rows = merged.num_rows() as u64;
            let times = crate::pipeline::time_range(table, &merged).unwrap_or((i64::MIN, i64::MAX));
            let properties = crate::compaction::writer_properties(table, zstd_level)?;
            let mut buffer = Vec::new();
            let mut writer =
                ArrowWriter::try_new(&mut buffer, schema, Some(properties)).map_err(|error| {
                    SluiceError::internal(format!("failed to start a parquet file: {error}"))
                })?;
            writer.write(&merged).map_err(|error| {
                SluiceError::internal(format!("failed to encode parquet: {error}"))
            })?;
            writer.close().map_err(|error| {
                SluiceError::internal(format!("failed to finish a parquet file: {error}"))
            })?;
            Ok((Bytes::from(buffer), rows, times))
        })
        .await
        .map_err(|error| SluiceError::internal(format!("expiry task failed: {error}")))??;
    let (bytes, rows, (min_time, max_time)) = encoded;
    let directory = file
        .path
        .rsplit_once('/')
        .map_or("", |(directory, _)| directory);
    let path = ObjectPath::from(format!(
        "{directory}/e{}-{epoch}.parquet",
        sluice_common::time::now_nanos()
    ));
    let size = bytes.len() as u64;
    store
        .put(&path, PutPayload::from(bytes))
        .await
        .map_err(|error| SluiceError::unavailable(format!("failed to write {path}: {error}")))?;
    Ok(DataFile {
        path: path.to_string(),
        table: table.name().to_owned(),
        rows,
        bytes: size,
        min_time,
        max_time,
    })
}

const REQUEST: &str = "_sluice/catalog/requests/expire.json";
const REPORT: &str = "_sluice/catalog/expiry.json";

/// A request to run expiry now (`sluice archive expire [--dry-run]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Unique per request.
    pub id: String,
    /// Plan and report only.
    pub dry_run: bool,
}

/// Asks the archive's writer to run expiry now.
pub async fn request(store: &Arc<dyn ObjectStore>, dry_run: bool) -> Result<Request, SluiceError> {
    let request = Request {
        id: objects::request_id(),
        dry_run,
    };
    objects::write(store, REQUEST, &request).await?;
    Ok(request)
}

/// The latest pass's report, if any ran.
pub async fn report(store: &Arc<dyn ObjectStore>) -> Result<Option<Report>, SluiceError> {
    objects::read(store, REPORT).await
}

/// Runs expiry every `interval`, and at once when asked, until `stop` fires or the lease is
/// lost.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    catalog: Arc<Mutex<Catalog>>,
    writer: Writer,
    lease: Arc<Lease>,
    policy: Policy,
    interval: Duration,
    zstd_level: i32,
    metrics: RetentionMetrics,
    mut stop: sluice_common::shutdown::Shutdown,
) {
    let store = Arc::clone(catalog.lock().await.store());
    let mut answered = report(&store)
        .await
        .ok()
        .flatten()
        .filter(|report| report.state == "done")
        .map(|report| report.request)
        .unwrap_or_default();
    let mut next_pass = tokio::time::Instant::now();
    loop {
        if stop.is_requested() || !lease.is_held() {
            return;
        }
        let asked = match objects::read::<Request>(&store, REQUEST).await {
            Ok(Some(request)) if request.id != answered => Some(request),
            Ok(_) => None,
            Err(error) => {
                warn!(error = %error, "failed to read the expiry requests");
                None
            }
        };
        let scheduled = !policy.rules.is_empty() && tokio::time::Instant::now() >= next_pass;
        if asked.is_none() && !scheduled {
            tokio::select! {
                () = stop.wait() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        }
        let dry_run = asked.as_ref().is_some_and(|request| request.dry_run);
        let outcome = expire(
            &catalog,
            &writer,
            &policy,
            zstd_level,
            sluice_common::time::now_nanos(),
            dry_run,
        )
        .await;
        match outcome {
            Ok(mut done) => {
                if !dry_run {
                    metrics.expired_rows.inc_by(done.rows_expired);
                    metrics
                        .expired_files
                        .inc_by(done.files_removed + done.files_rewritten);
                }
                if done.rows_expired > 0 {
                    info!(
                        dry_run,
                        files_removed = done.files_removed,
                        files_rewritten = done.files_rewritten,
                        rows = done.rows_expired,
                        "expired rows past their policy"
                    );
                }
                done.request = asked
                    .as_ref()
                    .map(|request| request.id.clone())
                    .unwrap_or_default();
                done.state = "done".to_owned();
                done.updated_at_ms = crate::catalog::now_ms();
                if let Err(error) = objects::write(&store, REPORT, &done).await {
                    warn!(error = %error, "failed to record the expiry report");
                }
            }
            Err(CommitError::Fenced(_)) => return,
            Err(CommitError::Store(error)) => {
                warn!(error = %error, "expiry failed; retried at the next pass");
            }
        }
        match asked {
            Some(request) => answered = request.id,
            None => next_pass = tokio::time::Instant::now() + interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_takes_the_first_rule_that_matches_its_table_and_source() {
        let day = Duration::from_secs(86_400);
        let policy = Policy {
            rules: vec![
                Rule {
                    table: Some(Table::Logs),
                    source_id: Some("audit-*".to_owned()),
                    max_age: day * 400,
                },
                Rule {
                    table: Some(Table::Logs),
                    source_id: None,
                    max_age: day * 90,
                },
                Rule {
                    table: Some(Table::Gauges),
                    source_id: None,
                    max_age: day * 30,
                },
            ],
        };
        assert_eq!(policy.max_age(Table::Logs, "audit-eu"), Some(day * 400));
        assert_eq!(policy.max_age(Table::Logs, "web"), Some(day * 90));
        assert_eq!(policy.max_age(Table::Gauges, "host"), Some(day * 30));
        assert_eq!(policy.max_age(Table::Events, "web"), None);
    }
}
