//! Registers the archive's tables with a DataFusion session.

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

/// Registers every table of `archive` with `context`, with the hive partition columns `date`
/// and `hour` (both text). The same SQL works on a local directory and on S3.
pub fn register_tables(context: &SessionContext, archive: &Archive) -> Result<(), SluiceError> {
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
    Ok(())
}
