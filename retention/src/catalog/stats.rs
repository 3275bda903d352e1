//! What a snapshot holds, summed per table and per partition (`sluice archive stats|ls`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::Snapshot;
use super::import::hour_of_path;
use crate::tables::Table;

/// Files, rows and bytes of one table or partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Files.
    pub files: u64,
    /// Rows.
    pub rows: u64,
    /// Bytes.
    pub bytes: u64,
    /// Earliest row time (nanoseconds), if any rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_time: Option<i64>,
    /// Latest row time (nanoseconds), if any rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_time: Option<i64>,
}

impl Totals {
    fn add(&mut self, rows: u64, bytes: u64, min_time: i64, max_time: i64) {
        self.files += 1;
        self.rows += rows;
        self.bytes += bytes;
        self.min_time = Some(self.min_time.map_or(min_time, |time| time.min(min_time)));
        self.max_time = Some(self.max_time.map_or(max_time, |time| time.max(max_time)));
    }
}

/// One table's totals.
#[derive(Debug, Clone, Serialize)]
pub struct TableStats {
    /// The table.
    pub table: String,
    /// Hour partitions holding files.
    pub partitions: u64,
    /// Its totals.
    #[serde(flatten)]
    pub totals: Totals,
}

/// The whole archive.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveStats {
    /// Catalog version.
    pub version: u64,
    /// Epoch of the writer of that version.
    pub epoch: u64,
    /// Per table, every table listed.
    pub tables: Vec<TableStats>,
    /// Files removed and waiting for the collector.
    pub garbage_files: u64,
    /// Their bytes.
    pub garbage_bytes: u64,
}

/// One partition (table and hour) and its totals.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStats {
    /// The table.
    pub table: String,
    /// The hour, `YYYY-MM-DDTHH`.
    pub partition: String,
    /// Its totals.
    #[serde(flatten)]
    pub totals: Totals,
}

impl Snapshot {
    /// Totals per table.
    pub fn stats(&self) -> ArchiveStats {
        let tables = Table::ALL
            .iter()
            .map(|table| {
                let mut totals = Totals::default();
                let mut partitions = std::collections::BTreeSet::new();
                for file in self.table_files(*table) {
                    totals.add(file.rows, file.bytes, file.min_time, file.max_time);
                    partitions.insert(partition_of(&file.path));
                }
                TableStats {
                    table: table.name().to_owned(),
                    partitions: partitions.len() as u64,
                    totals,
                }
            })
            .collect();
        ArchiveStats {
            version: self.version,
            epoch: self.epoch,
            tables,
            garbage_files: self.garbage.len() as u64,
            garbage_bytes: self.garbage.values().map(|garbage| garbage.bytes).sum(),
        }
    }

    /// Totals per partition, of `table` or of every table, oldest first.
    pub fn partitions(&self, table: Option<&str>) -> Vec<PartitionStats> {
        let mut partitions: BTreeMap<(String, String), Totals> = BTreeMap::new();
        for file in self.files.values() {
            if table.is_some_and(|table| table != file.table) {
                continue;
            }
            partitions
                .entry((file.table.clone(), partition_of(&file.path)))
                .or_default()
                .add(file.rows, file.bytes, file.min_time, file.max_time);
        }
        partitions
            .into_iter()
            .map(|((table, partition), totals)| PartitionStats {
                table,
                partition,
                totals,
            })
            .collect()
    }
}

/// The hour partition of a data file's path, or `-` when it has none.
fn partition_of(path: &str) -> String {
    hour_of_path(path).map_or_else(|| "-".to_owned(), |hour| hour.partition_name())
}
