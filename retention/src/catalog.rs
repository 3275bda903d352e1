//! Registers the archive's tables with a DataFusion session.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::prelude::SessionContext;
use sluice_common::SluiceError;

use crate::tables::Table;

/// Registers every table of the archive in `archive_dir` with `context`, with the hive
/// partition columns `date` and `hour` (both text).
pub fn register_tables(context: &SessionContext, archive_dir: &Path) -> Result<(), SluiceError> {
    std::fs::create_dir_all(archive_dir)
        .map_err(|error| SluiceError::internal(format!("failed to create {}: {error}", archive_dir.display())))?;
    let root = archive_dir
        .canonicalize()
        .map_err(|error| SluiceError::internal(format!("failed to resolve {}: {error}", archive_dir.display())))?;
    for table in Table::ALL {
        let dir = root.join(table.name());
        std::fs::create_dir_all(&dir)
            .map_err(|error| SluiceError::internal(format!("failed to create {}: {error}", dir.display())))?;
        let url = ListingTableUrl::parse(format!("file://{}/", dir.display()))
            .map_err(|error| SluiceError::internal(format!("invalid table location {}: {error}", dir.display())))?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![("date".to_owned(), DataType::Utf8), ("hour".to_owned(), DataType::Utf8)]);
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(table.schema());
        let listing = ListingTable::try_new(config)
            .map_err(|error| SluiceError::internal(format!("failed to define table {}: {error}", table.name())))?;
        context
            .register_table(table.name(), Arc::new(listing))
            .map_err(|error| SluiceError::internal(format!("failed to register table {}: {error}", table.name())))?;
    }
    Ok(())
}

/// Paths of a data file relative to `archive_dir`, for tests and tools.
pub fn table_dir(archive_dir: &Path, table: Table) -> std::path::PathBuf {
    archive_dir.join(table.name())
}
