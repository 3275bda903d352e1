//! The archive's layout in object storage.
//!
//! ```text
//! <table>/date=YYYY-MM-DD/hour=HH/<version:010>-<epoch>-<partition>-<first offset:020>.parquet
//! _sluice/catalog/…   the catalog (see crate::catalog)
//! ```
//!
//! A flush names its files after the catalog version that follows the one it saw when it
//! began (no earlier flush of its writer used it), the lease epoch of its writer and the
//! first bus record it holds: a retry of the same flush writes the same names (so it
//! overwrites rather than duplicates), and a writer fenced by a newer one can never
//! overwrite a file the newer one committed. Compaction's outputs are named
//! `c<nanoseconds>-<epoch>.parquet`.

use object_store::path::Path as ObjectPath;
use sluice_common::time::Hour;

use crate::tables::Table;

/// The path of a data file.
pub fn data_file_path(
    table: Table,
    hour: Hour,
    version: u64,
    epoch: u64,
    partition: u32,
    first_offset: u64,
) -> ObjectPath {
    ObjectPath::from(format!(
        "{}/date={}/hour={}/{version:010}-{epoch}-{partition}-{first_offset:020}.parquet",
        table.name(),
        hour.date_string(),
        hour.hour_string()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_file_names_carry_their_version_epoch_and_hive_partitions() {
        let hour = Hour::parse_partition_name("2026-11-26T07").expect("hour");
        let path = data_file_path(Table::Logs, hour, 42, 3, 0, 17);
        assert_eq!(
            path.as_ref(),
            "logs/date=2026-11-26/hour=07/0000000042-3-0-00000000000000000017.parquet"
        );
    }
}
