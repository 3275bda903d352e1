//! The archive's layout in object storage, its commit log and checkpoint, and recovery.
//!
//! ```text
//! <table>/date=YYYY-MM-DD/hour=HH/<commit:010>-<partition>-<first offset:020>.parquet
//! _sluice/retention/commits/<commit:010>.json   what commit N wrote, and the positions after it
//! _sluice/retention/checkpoint.json             the last commit and its positions
//! ```

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sluice_bus::Positions;
use sluice_common::SluiceError;
use sluice_common::time::Hour;

use crate::tables::Table;

const CHECKPOINT: &str = "_sluice/retention/checkpoint.json";

/// What a commit wrote.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Commit {
    /// Commit number, from 1.
    pub commit: u64,
    /// Bus positions after the records this commit holds.
    pub positions: Positions,
    /// Files written, relative to the archive root.
    pub files: Vec<String>,
    /// Rows written.
    pub rows: u64,
}

/// The path of a data file.
pub fn data_file_path(
    table: Table,
    hour: Hour,
    commit: u64,
    partition: u32,
    first_offset: u64,
) -> ObjectPath {
    ObjectPath::from(format!(
        "{}/date={}/hour={}/{commit:010}-{partition}-{first_offset:020}.parquet",
        table.name(),
        hour.date_string(),
        hour.hour_string()
    ))
}

/// The commit number in a data file's name, if it is one of ours.
pub fn commit_of_file(path: &ObjectPath) -> Option<u64> {
    let name = path.filename()?;
    let stem = name.strip_suffix(".parquet")?;
    stem.split('-').next()?.parse().ok()
}

/// Reads the checkpoint; none yet means an empty archive.
pub async fn read_checkpoint(store: &Arc<dyn ObjectStore>) -> Result<Commit, SluiceError> {
    match store.get(&ObjectPath::from(CHECKPOINT)).await {
        Ok(result) => {
            let bytes = result.bytes().await.map_err(|error| {
                SluiceError::unavailable(format!("failed to read the archive checkpoint: {error}"))
            })?;
            serde_json::from_slice(&bytes).map_err(|error| {
                SluiceError::internal(format!("invalid archive checkpoint {CHECKPOINT}: {error}"))
            })
        }
        Err(object_store::Error::NotFound { .. }) => Ok(Commit::default()),
        Err(error) => Err(SluiceError::unavailable(format!(
            "failed to read the archive checkpoint: {error}"
        ))),
    }
}

/// Records `commit`: its commit record first, then the checkpoint that makes it current.
pub async fn write_commit(
    store: &Arc<dyn ObjectStore>,
    commit: &Commit,
) -> Result<(), SluiceError> {
    let text = serde_json::to_vec_pretty(commit)
        .map_err(|error| SluiceError::internal(error.to_string()))?;
    let record = ObjectPath::from(format!(
        "_sluice/retention/commits/{:010}.json",
        commit.commit
    ));
    store
        .put(&record, PutPayload::from(text.clone()))
        .await
        .map_err(|error| SluiceError::unavailable(format!("failed to write {record}: {error}")))?;
    store
        .put(&ObjectPath::from(CHECKPOINT), PutPayload::from(text))
        .await
        .map_err(|error| {
            SluiceError::unavailable(format!("failed to write {CHECKPOINT}: {error}"))
        })?;
    Ok(())
}

/// Every data file of every table.
async fn list_data_files(
    store: &Arc<dyn ObjectStore>,
) -> Result<Vec<object_store::ObjectMeta>, SluiceError> {
    let mut files = Vec::new();
    for table in Table::ALL {
        let prefix = ObjectPath::from(table.name());
        let objects: Vec<object_store::ObjectMeta> = store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|error| {
                SluiceError::unavailable(format!("failed to list {prefix}: {error}"))
            })?;
        files.extend(objects);
    }
    Ok(files)
}

/// Deletes data files written by commits after `last_commit` (a flush that crashed before it
/// committed); returns how many went.
pub async fn remove_uncommitted(
    store: &Arc<dyn ObjectStore>,
    last_commit: u64,
) -> Result<u64, SluiceError> {
    let mut removed = 0;
    for object in list_data_files(store).await? {
        if commit_of_file(&object.location).is_some_and(|commit| commit > last_commit) {
            store.delete(&object.location).await.map_err(|error| {
                SluiceError::unavailable(format!("failed to delete {}: {error}", object.location))
            })?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Bytes of every data file.
pub async fn archive_bytes(store: &Arc<dyn ObjectStore>) -> Result<u64, SluiceError> {
    Ok(list_data_files(store)
        .await?
        .iter()
        .map(|object| object.size)
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_file_names_carry_their_commit_and_hive_partitions() {
        let hour = Hour::parse_partition_name("2026-11-26T07").expect("hour");
        let path = data_file_path(Table::Logs, hour, 42, 0, 17);
        assert_eq!(
            path.as_ref(),
            "logs/date=2026-11-26/hour=07/0000000042-0-00000000000000000017.parquet"
        );
        assert_eq!(commit_of_file(&path), Some(42));
        assert_eq!(commit_of_file(&ObjectPath::from("logs/README.md")), None);
    }

    #[tokio::test]
    async fn files_of_an_uncommitted_flush_are_removed_and_committed_ones_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn ObjectStore> = Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("store"),
        );
        let hour = Hour(500_000);
        for commit in [1, 2, 3] {
            store
                .put(
                    &data_file_path(Table::Logs, hour, commit, 0, commit),
                    PutPayload::from_static(b"x"),
                )
                .await
                .expect("put");
        }
        let checkpoint = Commit {
            commit: 2,
            ..Default::default()
        };
        write_commit(&store, &checkpoint).await.expect("commit");
        let read = read_checkpoint(&store).await.expect("read");
        assert_eq!(read.commit, 2);
        assert_eq!(
            remove_uncommitted(&store, read.commit)
                .await
                .expect("remove"),
            1
        );
        assert_eq!(archive_bytes(&store).await.expect("size"), 2);
    }
}
