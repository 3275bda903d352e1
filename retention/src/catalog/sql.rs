//! Registers the archive's tables with a DataFusion session, and the `patterns` view over
//! `pattern_counts`: one row per pattern (`id`, `source_id`, `template`, `merged_into`,
//! `first_seen`, `last_seen`, `count`), so SQL can join `logs.pattern_id = patterns.id`.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use sluice_common::SluiceError;

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

/// Registers every table of `archive` with `context`, with the hive partition columns `date`
/// and `hour` (both text), and the `patterns` view. The same SQL works on a local directory
/// and on S3.
pub async fn register_tables(
    context: &SessionContext,
    archive: &Archive,
) -> Result<(), SluiceError> {
    archive.register_store(context);
    for table in Table::ALL {
        let location = archive.table_url(table);
        let url = ListingTableUrl::parse(&location).map_err(|error| {
            SluiceError::internal(format!("invalid table location {location}: {error}"))
        })?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![
                ("date".to_owned(), DataType::Utf8),
                ("hour".to_owned(), DataType::Utf8),
            ]);
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(table.schema());
        let listing = ListingTable::try_new(config).map_err(|error| {
            SluiceError::internal(format!("failed to define table {}: {error}", table.name()))
        })?;
        context
            .register_table(table.name(), Arc::new(listing))
            .map_err(|error| {
                SluiceError::internal(format!(
                    "failed to register table {}: {error}",
                    table.name()
                ))
            })?;
    }
    context
        .sql(PATTERNS_VIEW)
        .await
        .map_err(|error| SluiceError::internal(format!("failed to define patterns: {error}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        Array, RecordBatch, StringArray, TimestampNanosecondArray, UInt64Array,
    };
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    use super::PATTERNS_VIEW;
    use crate::tables::Table;

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
