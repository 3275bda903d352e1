//! Archives written before the catalog kept a commit log and checkpoint under
//! `_sluice/retention/` and listed the bucket. The first start with the catalog turns that
//! into version 1: every data file the old checkpoint had committed (rows read from each
//! file's Parquet footer), and its bus positions. Files above the old checkpoint (a flush
//! that never committed) are left out, so the collector removes them.

use std::sync::Arc;

use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Deserialize;
use sluice_bus::Positions;
use sluice_common::SluiceError;
use sluice_common::time::Hour;

use super::{Change, DataFile};
use crate::tables::Table;

/// Where the old layout kept its checkpoint.
pub const OLD_CHECKPOINT: &str = "_sluice/retention/checkpoint.json";

#[derive(Deserialize)]
struct OldCheckpoint {
    commit: u64,
    positions: Positions,
}

/// The commit number in an old data file's name (`<commit>-<partition>-<offset>.parquet`).
fn commit_of_file(path: &ObjectPath) -> Option<u64> {
    path.filename()?
        .strip_suffix(".parquet")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// The hour in a data file's hive path (`…/date=YYYY-MM-DD/hour=HH/…`).
pub fn hour_of_path(path: &str) -> Option<Hour> {
    let mut date = None;
    let mut hour = None;
    for part in path.split('/') {
        if let Some(value) = part.strip_prefix("date=") {
            date = Some(value);
        } else if let Some(value) = part.strip_prefix("hour=") {
            hour = Some(value);
        }
    }
    Hour::parse_partition_name(&format!("{}T{}", date?, hour?))
}

/// The change that imports an archive of the old layout, if `store` holds one.
pub async fn old_layout(store: &Arc<dyn ObjectStore>) -> Result<Option<Change>, SluiceError> {
    let path = ObjectPath::from(OLD_CHECKPOINT);
    let checkpoint: OldCheckpoint = match store.get(&path).await {
        Ok(result) => {
            let bytes = result.bytes().await.map_err(|error| {
                SluiceError::unavailable(format!("failed to read {path}: {error}"))
            })?;
            serde_json::from_slice(&bytes)
                .map_err(|error| SluiceError::internal(format!("invalid {path}: {error}")))?
        }
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(error) => {
            return Err(SluiceError::unavailable(format!(
                "failed to read {path}: {error}"
            )));
        }
    };
    let mut add = Vec::new();
    for table in Table::ALL {
        let objects = crate::catalog::objects::list(store, table.name()).await?;
        for object in objects {
            let committed =
                commit_of_file(&object.location).is_some_and(|commit| commit <= checkpoint.commit);
            let Some(hour) = hour_of_path(object.location.as_ref()) else {
                continue;
            };
            if !committed {
                continue;
            }
            // Flush files are small, and this runs once: read each whole.
            let failed = |error: object_store::Error| {
                SluiceError::unavailable(format!("failed to read {}: {error}", object.location))
            };
            let bytes = store
                .get(&object.location)
                .await
                .map_err(failed)?
                .bytes()
                .await
                .map_err(failed)?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|error| {
                SluiceError::internal(format!(
                    "failed to read the footer of {}: {error}",
                    object.location
                ))
            })?;
            let rows = builder.metadata().file_metadata().num_rows();
            add.push(DataFile {
                path: object.location.to_string(),
                table: table.name().to_owned(),
                rows: u64::try_from(rows).unwrap_or(0),
                bytes: object.size,
                min_time: hour.start_nanos(),
                max_time: hour.end_nanos() - 1,
            });
        }
    }
    Ok(Some(Change {
        kind: "import".to_owned(),
        add,
        positions: Some(checkpoint.positions),
        ..Change::default()
    }))
}
