//! The partition directories: `<dir>/partitions/YYYY-MM-DDTHH`, one Tantivy index each.

use std::path::{Path, PathBuf};

use sluice_common::SluiceError;
use sluice_common::time::Hour;
use tantivy::Index;
use tantivy::directory::MmapDirectory;

use crate::schema::Fields;

/// Where the hour indexes live, and how to open them.
#[derive(Clone)]
pub struct IndexStore {
    root: PathBuf,
    fields: Fields,
}

impl IndexStore {
    /// The store under `dir` (the indexer's configured directory).
    pub fn new(dir: &Path) -> IndexStore {
        IndexStore {
            root: dir.join("partitions"),
            fields: Fields::new(),
        }
    }

    /// The schema's fields.
    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// The directory of `hour`'s index.
    pub fn partition_dir(&self, hour: Hour) -> PathBuf {
        self.root.join(hour.partition_name())
    }

    /// The hours that have an index on disk, oldest first. Unrelated entries are ignored.
    pub fn list(&self) -> Result<Vec<Hour>, SluiceError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(SluiceError::internal(format!(
                    "failed to list {}: {error}",
                    self.root.display()
                )));
            }
        };
        let mut hours: Vec<Hour> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().join("meta.json").exists())
            .filter_map(|entry| Hour::parse_partition_name(&entry.file_name().to_string_lossy()))
            .collect();
        hours.sort();
        Ok(hours)
    }

    /// Opens `hour`'s index, creating it if needed.
    pub fn open_or_create(&self, hour: Hour) -> Result<Index, SluiceError> {
        let dir = self.partition_dir(hour);
        std::fs::create_dir_all(&dir).map_err(|error| {
            SluiceError::internal(format!(
                "failed to create index partition {}: {error}",
                dir.display()
            ))
        })?;
        let directory = MmapDirectory::open(&dir).map_err(|error| {
            SluiceError::internal(format!(
                "failed to open index partition {}: {error}",
                dir.display()
            ))
        })?;
        Index::open_or_create(directory, self.fields.schema.clone()).map_err(|error| {
            SluiceError::internal(format!(
                "failed to open index partition {}: {error}",
                dir.display()
            ))
        })
    }

    /// Opens `hour`'s index if it exists.
    pub fn open(&self, hour: Hour) -> Result<Index, SluiceError> {
        let dir = self.partition_dir(hour);
        Index::open_in_dir(&dir).map_err(|error| {
            SluiceError::internal(format!(
                "failed to open index partition {}: {error}",
                dir.display()
            ))
        })
    }

    /// Bytes of `hour`'s partition on disk.
    pub fn hour_bytes(&self, hour: Hour) -> u64 {
        dir_bytes(&self.partition_dir(hour))
    }

    /// Deletes `hour`'s partition.
    pub fn delete(&self, hour: Hour) -> Result<(), SluiceError> {
        let dir = self.partition_dir(hour);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(SluiceError::internal(format!(
                "failed to delete index partition {}: {error}",
                dir.display()
            ))),
        }
    }

    /// Bytes of every partition on disk.
    pub fn disk_bytes(&self) -> u64 {
        dir_bytes(&self.root)
    }
}

/// Bytes of every file under `path`.
fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => dir_bytes(&entry.path()),
            Ok(metadata) => metadata.len(),
            Err(_) => 0,
        })
        .sum()
}
