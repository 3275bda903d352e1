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

/// The `patterns` view: `pattern_counts` summed up per pattern (a flush that did not see a
/// pattern described wrote a null template; `max` takes the one another flush saw).
pub const PATTERNS_VIEW: &str = "CREATE VIEW patterns AS SELECT pattern_id AS id, \
    max(source_id) AS source_id, max(template) AS template, max(merged_into) AS merged_into, \
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
