//! The archive's tables as DataFusion sees them: each from one catalog snapshot (files not
//! in it are never read), its files pruned by the time range a query's filters allow before
//! any is opened, then scanned as hive-partitioned Parquet (`date=YYYY-MM-DD/hour=HH`, both
//! text) with row-group statistics. And the `patterns` view over `pattern_counts`: one row
//! per pattern (`id`, `source_id`, `template`, `merged_into`, `first_seen`, `last_seen`,
//! `count`), so SQL can join `logs.pattern_id = patterns.id`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::provider_as_source;
use datafusion::error::{DataFusionError, Result as DataFusionResult};
use datafusion::logical_expr::expr::Like;
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, LogicalPlanBuilder, Operator, TableProviderFilterPushDown,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::prelude::SessionContext;
use datafusion::prelude::{col, lit};
use object_store::ObjectStore;
use sluice_common::SluiceError;
use sluice_common::tenancy::{self, Scope};
use url::Url;

use super::view::View;
use super::{DataFile, Snapshot};
use crate::store::Archive;
use crate::tables::Table;

/// The `patterns` view: `pattern_counts` summed up per pattern. The template is the one of the
/// row that saw the latest line (a template only widens as the pattern sees more kinds of
/// value, `<num>` to `<*>`); a flush that did not see a pattern described wrote a null
/// template, which the other rows fill.
pub const PATTERNS_VIEW: &str = "CREATE VIEW patterns AS SELECT pattern_id AS id, \
    max(source_id) AS source_id, \
    last_value(template ORDER BY last_seen) FILTER (WHERE template IS NOT NULL) AS template, \
    max(merged_into) AS merged_into, \
    min(first_seen) AS first_seen, max(last_seen) AS last_seen, sum(count) AS count \
    FROM pattern_counts GROUP BY pattern_id";

/// Registers every table of `archive` with `context`, from the archive's latest catalog
/// snapshot, and the `patterns` view. The same SQL works on a local directory and on S3.
/// Returns the snapshot the tables show.
///
/// With a `scope`, each name is a view of the table's rows of the scope's tenant and sources
/// only: the filter sits in the view's plan, below anything SQL can express, and the table
/// itself is registered under no name, so no query can reach past the view. `pattern_counts`
/// (and `patterns`) count lines per pattern and source, not per tenant, so a scoped reader has
/// neither (its patterns come from the index, which keeps tenants apart).
pub async fn register_tables(
    context: &SessionContext,
    archive: &Archive,
    scope: Option<&Scope>,
) -> Result<Arc<Snapshot>, SluiceError> {
    let snapshot = archive.snapshot().await?;
    for table in Table::ALL {
        if scope.is_some() && table == Table::PatternCounts {
            continue;
        }
        let failed = |error: DataFusionError| {
            SluiceError::internal(format!("failed to define table {}: {error}", table.name()))
        };
        let provider: Arc<dyn TableProvider> = Arc::new(
            CatalogTable::new(table, &snapshot, Arc::clone(&archive.store)).map_err(failed)?,
        );
        let provider = match scope {
            None => provider,
            Some(scope) => Arc::new(scoped_view(context, table, provider, scope).map_err(failed)?),
        };
        context
            .register_table(table.name(), provider)
            .map_err(|error| {
                SluiceError::internal(format!(
                    "failed to register table {}: {error}",
                    table.name()
                ))
            })?;
    }
    if scope.is_none() {
        context.sql(PATTERNS_VIEW).await.map_err(|error| {
            SluiceError::internal(format!("failed to define patterns: {error}"))
        })?;
    }
    Ok(snapshot)
}

/// `table`'s rows that `scope` admits, as a view: the tenant (from the reserved tag; rows
/// without it are the default tenant's) and, when the scope names sources, a `LIKE` per
/// pattern.
fn scoped_view(
    context: &SessionContext,
    table: Table,
    provider: Arc<dyn TableProvider>,
    scope: &Scope,
) -> DataFusionResult<ViewTable> {
    if !tenancy::valid_name(&scope.tenant) {
        return Err(DataFusionError::Plan(format!(
            "tenant {:?} is not a valid tenant name",
            scope.tenant
        )));
    }
    let scan = LogicalPlanBuilder::scan(table.name(), provider_as_source(provider), None)?;
    let tenant = if scope.tenant == tenancy::DEFAULT_TENANT {
        format!("tags['{}'] IS NULL", tenancy::TENANT_TAG)
    } else {
        format!("tags['{}'] = '{}'", tenancy::TENANT_TAG, scope.tenant)
    };
    let mut predicate = context
        .state()
        .create_logical_expr(&tenant, scan.schema())?;
    let sources = scope
        .sources
        .iter()
        .map(|pattern| {
            Expr::Like(Like::new(
                false,
                Box::new(col("source_id")),
                Box::new(lit(like_pattern(pattern))),
                Some('\\'),
                false,
            ))
        })
        .reduce(Expr::or);
    if let Some(sources) = sources {
        predicate = predicate.and(sources);
    }
    Ok(ViewTable::new(scan.filter(predicate)?.build()?, None))
}

/// A source id glob (`*`, `?`) as a `LIKE` pattern with `\` as its escape.
fn like_pattern(glob: &str) -> String {
    let mut like = String::with_capacity(glob.len() + 4);
    for character in glob.chars() {
        match character {
            '*' => like.push('%'),
            '?' => like.push('_'),
            '%' | '_' | '\\' => {
                like.push('\\');
                like.push(character);
            }
            character => like.push(character),
        }
    }
    like
}

/// Scans so far: names each scan's view of the archive uniquely.
static SCANS: AtomicU64 = AtomicU64::new(0);

/// One table of one snapshot.
#[derive(Debug)]
struct CatalogTable {
    table: Table,
    files: Vec<DataFile>,
    at_ms: i64,
    store: Arc<dyn ObjectStore>,
    /// The file schema with the partition columns.
    schema: SchemaRef,
}

/// A listing table of `table` at `url` (the view's root).
fn listing(table: Table, root: &str) -> DataFusionResult<ListingTable> {
    let url = ListingTableUrl::parse(format!("{root}/{}/", table.name()))?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![
            ("date".to_owned(), DataType::Utf8),
            ("hour".to_owned(), DataType::Utf8),
        ]);
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(table.schema());
    ListingTable::try_new(config)
}

impl CatalogTable {
    fn new(
        table: Table,
        snapshot: &Snapshot,
        store: Arc<dyn ObjectStore>,
    ) -> DataFusionResult<CatalogTable> {
        let schema = listing(table, "sluice-catalog://schema")?.schema();
        Ok(CatalogTable {
            table,
            files: snapshot.table_files(table).cloned().collect(),
            at_ms: snapshot.at_ms,
            store,
            schema,
        })
    }
}

#[async_trait]
impl TableProvider for CatalogTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DataFusionResult<Vec<TableProviderFilterPushDown>> {
        // Every filter prunes files and row groups, and is applied again above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        let (low, high) = if self.table == Table::PatternCounts {
            (i64::MIN, i64::MAX)
        } else {
            time_bounds(filters, "timestamp")
        };
        let files: Vec<&DataFile> = self
            .files
            .iter()
            .filter(|file| file.max_time >= low && file.min_time <= high)
            .collect();
        if files.is_empty() {
            let schema = match projection {
                Some(columns) => Arc::new(self.schema.project(columns)?),
                None => Arc::clone(&self.schema),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let root = format!(
            "sluice-catalog://scan-{}",
            SCANS.fetch_add(1, Ordering::Relaxed)
        );
        let url = Url::parse(&root)
            .map_err(|error| DataFusionError::Internal(format!("invalid view url: {error}")))?;
        let view = View::new(Arc::clone(&self.store), files, self.at_ms);
        state
            .runtime_env()
            .register_object_store(&url, Arc::new(view));
        listing(self.table, &root)?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// The narrowest `[low, high]` (nanoseconds, inclusive) of `column` that `filters` (all of
/// which hold) allow: comparisons of the column with timestamp literals, `BETWEEN`, joined
/// by `AND`. Anything else allows everything.
pub fn time_bounds(filters: &[Expr], column: &str) -> (i64, i64) {
    let mut bounds = (i64::MIN, i64::MAX);
    for filter in filters {
        narrow(filter, column, &mut bounds);
    }
    bounds
}

fn narrow(expr: &Expr, column: &str, bounds: &mut (i64, i64)) {
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            narrow(left, column, bounds);
            narrow(right, column, bounds);
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let compared = if is_column(left, column) {
                literal_nanos(right).map(|value| (*op, value))
            } else if is_column(right, column) {
                literal_nanos(left).and_then(|value| op.swap().map(|op| (op, value)))
            } else {
                None
            };
            let Some((op, value)) = compared else {
                return;
            };
            let (low, high) = bounds;
            match op {
                Operator::Gt => *low = (*low).max(value.saturating_add(1)),
                Operator::GtEq => *low = (*low).max(value),
                Operator::Lt => *high = (*high).min(value.saturating_sub(1)),
                Operator::LtEq => *high = (*high).min(value),
                Operator::Eq => {
                    *low = (*low).max(value);
                    *high = (*high).min(value);
                }
                _ => {}
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_column(expr, column) => {
            if let Some(value) = literal_nanos(low) {
                bounds.0 = bounds.0.max(value);
            }
            if let Some(value) = literal_nanos(high) {
                bounds.1 = bounds.1.min(value);
            }
        }
        _ => {}
    }
}

fn is_column(expr: &Expr, column: &str) -> bool {
    matches!(expr, Expr::Column(found) if found.name == column)
}

/// A timestamp literal in nanoseconds (rounded outwards never matters: bounds only prune).
fn literal_nanos(expr: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    match value {
        ScalarValue::TimestampNanosecond(Some(value), _) => Some(*value),
        ScalarValue::TimestampMicrosecond(Some(value), _) => value.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(value), _) => value.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(value), _) => value.checked_mul(1_000_000_000),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use datafusion::arrow::array::{
        Array, RecordBatch, StringArray, TimestampNanosecondArray, UInt64Array,
    };
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{SessionContext, col, lit};
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStoreExt, PutPayload};
    use sluice_common::time::Hour;
    use sluice_proto::v2::{Envelope, Log, envelope};

    use super::*;
    use crate::catalog::{Catalog, Change, Writer};
    use crate::config::ArchiveLocation;
    use crate::tables::{TableBuffer, push_envelope};

    fn at(nanos: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(
            Some(nanos),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn time_bounds_come_from_comparisons_between_and_conjunctions() {
        let bounds = |filters: Vec<Expr>| time_bounds(&filters, "timestamp");
        assert_eq!(bounds(vec![]), (i64::MIN, i64::MAX));
        assert_eq!(bounds(vec![col("timestamp").gt(at(10))]), (11, i64::MAX));
        assert_eq!(bounds(vec![at(10).gt_eq(col("timestamp"))]), (i64::MIN, 10));
        assert_eq!(
            bounds(vec![
                col("timestamp")
                    .gt_eq(at(5))
                    .and(col("timestamp").lt(at(9)))
            ]),
            (5, 8)
        );
        assert_eq!(
            bounds(vec![
                col("timestamp").between(at(3), at(7)),
                col("timestamp").lt_eq(at(6))
            ]),
            (3, 6)
        );
        assert_eq!(
            bounds(vec![
                lit(ScalarValue::TimestampSecond(Some(2), None)).lt(col("timestamp"))
            ]),
            (2_000_000_001, i64::MAX)
        );
        // Disjunctions, other columns and other kinds of literal allow everything.
        assert_eq!(
            bounds(vec![
                col("timestamp").gt(at(10)).or(col("timestamp").lt(at(2)))
            ]),
            (i64::MIN, i64::MAX)
        );
        assert_eq!(bounds(vec![col("other").gt(at(10))]), (i64::MIN, i64::MAX));
        assert_eq!(
            bounds(vec![col("timestamp").gt(lit(3_i64))]),
            (i64::MIN, i64::MAX)
        );
    }

    /// A Parquet file of the log envelopes `envelopes`.
    fn logs_parquet(envelopes: impl IntoIterator<Item = Envelope>) -> (bytes::Bytes, u64) {
        let mut buffers = BTreeMap::from([(Table::Logs, TableBuffer::new(Table::Logs))]);
        for envelope in envelopes {
            push_envelope(&envelope, "agent", 1, None, &mut buffers).expect("push");
        }
        let batch = buffers
            .get_mut(&Table::Logs)
            .expect("logs")
            .finish()
            .expect("batch");
        let bytes = crate::pipeline::encode_parquet(&batch, 3, "{}", 1).expect("parquet");
        let size = bytes.len() as u64;
        (bytes, size)
    }

    fn log_line(source_id: &str, text: String, timestamp: i64) -> Envelope {
        Envelope {
            timestamp,
            source_id: source_id.into(),
            message: Some(envelope::Message::Log(Log {
                payload: text.into_bytes(),
                r#type: 0,
            })),
            ..Default::default()
        }
    }

    /// A Parquet file of `lines` log lines at `timestamp`.
    fn logs_file(lines: usize, timestamp: i64) -> (bytes::Bytes, u64) {
        logs_parquet((0..lines).map(|index| log_line("app", format!("line {index}"), timestamp)))
    }

    /// A Parquet file of one log line per `(tenant, source)` at `timestamp`.
    fn tenants_file(lines: &[(&str, &str)], timestamp: i64) -> (bytes::Bytes, u64) {
        logs_parquet(lines.iter().map(|(tenant, source)| {
            let mut envelope = log_line(source, format!("{tenant} {source}"), timestamp);
            tenancy::stamp(&mut envelope, tenant);
            envelope
        }))
    }

    /// A scoped reader's tables are views of its tenant's rows (and sources'): no SQL over
    /// them reaches another tenant's, and the tables themselves have no name to reach them by.
    #[tokio::test]
    async fn a_scoped_reader_sees_its_tenants_rows_only_whatever_the_sql() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive =
            Archive::open(&ArchiveLocation::Local(dir.path().to_path_buf())).expect("open");
        let store = Arc::clone(&archive.store);
        let mut catalog = Catalog::load(Arc::clone(&store)).await.expect("catalog");
        let hour = Hour(490_000);
        let lines = [
            ("default", "web-1"),
            ("acme", "web-1"),
            ("acme", "web-2"),
            ("acme", "db_1"),
            ("other", "web-1"),
            ("other", "web-9"),
        ];
        let (bytes, size) = tenants_file(&lines, hour.start_nanos() + 5);
        let path = format!(
            "logs/date={}/hour={}/mixed.parquet",
            hour.date_string(),
            hour.hour_string()
        );
        store
            .put(&ObjectPath::from(path.as_str()), PutPayload::from(bytes))
            .await
            .expect("put");
        let add = vec![DataFile {
            path,
            table: "logs".to_owned(),
            rows: lines.len() as u64,
            bytes: size,
            min_time: hour.start_nanos() + 5,
            max_time: hour.start_nanos() + 5,
        }];
        catalog
            .commit(
                &Writer::this_process(1),
                Change {
                    kind: "flush".to_owned(),
                    add,
                    ..Change::default()
                },
            )
            .await
            .expect("commit");
        let answer = |scope: Option<Scope>, query: &'static str| {
            let archive = archive.clone();
            async move {
                let context = SessionContext::new();
                register_tables(&context, &archive, scope.as_ref())
                    .await
                    .expect("tables");
                let frame = context.sql(query).await?;
                let batches = frame.collect().await?;
                Ok::<_, DataFusionError>(
                    datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                        .expect("format")
                        .to_string(),
                )
            }
        };
        let acme = Some(Scope::tenant("acme"));
        let everything = "SELECT count(*) AS n FROM logs";
        assert!(answer(None, everything).await.unwrap().contains("| 6 "));
        assert!(
            answer(acme.clone(), everything)
                .await
                .unwrap()
                .contains("| 3 ")
        );
        assert!(
            answer(Some(Scope::tenant("default")), everything)
                .await
                .unwrap()
                .contains("| 1 ")
        );
        let web = Some(Scope {
            tenant: "acme".into(),
            sources: vec!["web-*".into(), "db_?".into()],
        });
        assert!(answer(web, everything).await.unwrap().contains("| 3 "));
        let narrow = Some(Scope {
            tenant: "acme".into(),
            sources: vec!["db\\_?".into(), "web-2".into()],
        });
        assert!(answer(narrow, everything).await.unwrap().contains("| 1 "));
        // Tricks: the other tenant's tag asked for, unions, subqueries, joins: never a row of
        // theirs (their messages start with their name).
        for query in [
            "SELECT message FROM logs WHERE tags['sluice.tenant'] = 'other'",
            "SELECT message FROM logs WHERE true OR tags['sluice.tenant'] = 'other'",
            "SELECT message FROM logs UNION ALL SELECT message FROM (SELECT * FROM logs) AS t",
            "SELECT a.message FROM logs a JOIN logs b ON a.source_id = b.source_id",
            "SELECT message FROM logs WHERE source_id IN (SELECT source_id FROM logs) -- ' OR 1=1",
        ] {
            let rows = answer(acme.clone(), query).await.unwrap();
            assert!(
                !rows.contains("other") && !rows.contains("default"),
                "{query}: {rows}"
            );
        }
        // Neither the per-pattern counts (they have no tenant) nor anything outside the
        // registered names is there for a scoped reader.
        for query in [
            "SELECT * FROM pattern_counts",
            "SELECT * FROM patterns",
            "SELECT * FROM information_schema.tables",
            "SELECT * FROM datafusion.public.pattern_counts",
        ] {
            assert!(answer(acme.clone(), query).await.is_err(), "{query}");
        }
    }

    async fn count(archive: &Archive, query: &str) -> (u64, String) {
        let context = SessionContext::new();
        register_tables(&context, archive, None)
            .await
            .expect("tables");
        let rows = context
            .sql(query)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("rows");
        let number = rows[0]
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .map_or(0, |numbers| numbers.value(0) as u64);
        let explained = context
            .sql(&format!("EXPLAIN {query}"))
            .await
            .expect("plan")
            .collect()
            .await
            .expect("explain");
        let plan = datafusion::arrow::util::pretty::pretty_format_batches(&explained)
            .expect("format")
            .to_string();
        (number, plan)
    }

    /// Only committed files are read, however many others lie in the table's directory, and
    /// a range on `timestamp` reads only the files whose times overlap it.
    #[tokio::test]
    async fn queries_read_only_committed_files_and_only_those_the_time_range_reaches() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive =
            Archive::open(&ArchiveLocation::Local(dir.path().to_path_buf())).expect("open");
        let store = Arc::clone(&archive.store);
        let writer = Writer::this_process(1);
        let mut catalog = Catalog::load(Arc::clone(&store)).await.expect("catalog");
        let early = Hour(490_000);
        let late = Hour(490_005);
        let mut add = Vec::new();
        for (hour, lines, name) in [(early, 30, "early"), (late, 12, "late")] {
            let (bytes, size) = logs_file(lines, hour.start_nanos() + 5);
            let path = format!(
                "logs/date={}/hour={}/{name}.parquet",
                hour.date_string(),
                hour.hour_string()
            );
            store
                .put(&ObjectPath::from(path.as_str()), PutPayload::from(bytes))
                .await
                .expect("put");
            add.push(DataFile {
                path,
                table: "logs".to_owned(),
                rows: lines as u64,
                bytes: size,
                min_time: hour.start_nanos() + 5,
                max_time: hour.start_nanos() + 5,
            });
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
        // A flush that never committed: its file is in the directory, not in the catalog.
        let (bytes, _) = logs_file(1_000, late.start_nanos() + 9);
        store
            .put(
                &ObjectPath::from(format!(
                    "logs/date={}/hour={}/uncommitted.parquet",
                    late.date_string(),
                    late.hour_string()
                )),
                PutPayload::from(bytes),
            )
            .await
            .expect("put");

        let (all, plan) = count(&archive, "SELECT count(*) FROM logs").await;
        assert_eq!(all, 42);
        assert!(!plan.contains("uncommitted"), "{plan}");
        let since = late.start_nanos();
        let (recent, plan) = count(
            &archive,
            &format!("SELECT count(*) FROM logs WHERE timestamp >= to_timestamp_nanos({since})"),
        )
        .await;
        assert_eq!(recent, 12);
        assert!(
            plan.contains("late.parquet") && !plan.contains("early.parquet"),
            "{plan}"
        );
        let (none, _) = count(
            &archive,
            &format!(
                "SELECT count(*) FROM logs WHERE timestamp > to_timestamp_nanos({})",
                late.end_nanos()
            ),
        )
        .await;
        assert_eq!(none, 0);
    }

    #[tokio::test]
    async fn the_patterns_view_takes_the_latest_template_and_sums_the_counts() {
        let schema = Table::PatternCounts.schema();
        let templates = StringArray::from(vec![Some("a <num>"), Some("a <*>"), None]);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["0a", "0a", "0a"])),
                Arc::new(StringArray::from(vec!["web", "web", "web"])),
                Arc::new(templates),
                Arc::new(StringArray::from(vec![None::<&str>, None, None])),
                Arc::new(TimestampNanosecondArray::from(vec![1, 2, 5]).with_timezone("UTC")),
                Arc::new(TimestampNanosecondArray::from(vec![1, 4, 9]).with_timezone("UTC")),
                Arc::new(UInt64Array::from(vec![3, 4, 5])),
            ],
        )
        .expect("batch");
        let context = SessionContext::new();
        let table = MemTable::try_new(schema, vec![vec![batch]]).expect("table");
        context
            .register_table("pattern_counts", Arc::new(table))
            .expect("registered");
        context.sql(PATTERNS_VIEW).await.expect("view");
        let rows = context
            .sql("SELECT template, count, first_seen, last_seen FROM patterns")
            .await
            .expect("query")
            .collect()
            .await
            .expect("rows");
        let row = &rows[0];
        assert_eq!(row.num_rows(), 1);
        let template = row
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("text");
        assert_eq!(template.value(0), "a <*>");
        let count = row
            .column(1)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .expect("count");
        assert_eq!(count.value(0), 12);
    }
}
