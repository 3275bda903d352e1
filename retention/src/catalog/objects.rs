//! Small JSON objects beside the catalog: requests to the writer
//! (`_sluice/catalog/requests/…`) and the reports it leaves (`compaction.json`,
//! `expiry.json`). Unlike the catalog's own objects, a report that does not parse is treated
//! as absent: it is advisory, and the next one replaces it.

use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_common::SluiceError;

/// The object at `path`, if it exists and parses.
pub async fn read<T: DeserializeOwned>(
    store: &Arc<dyn ObjectStore>,
    path: &str,
) -> Result<Option<T>, SluiceError> {
    let path = ObjectPath::from(path);
    match store.get(&path).await {
        Ok(result) => {
            let bytes = result.bytes().await.map_err(|error| {
                SluiceError::unavailable(format!("failed to read {path}: {error}"))
            })?;
            Ok(serde_json::from_slice(&bytes).ok())
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(error) => Err(SluiceError::unavailable(format!(
            "failed to read {path}: {error}"
        ))),
    }
}

/// Writes `value` at `path`, replacing what was there.
pub async fn write<T: Serialize>(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    value: &T,
) -> Result<(), SluiceError> {
    let body =
        serde_json::to_vec(value).map_err(|error| SluiceError::internal(error.to_string()))?;
    let path = ObjectPath::from(path);
    store
        .put(&path, PutPayload::from(body))
        .await
        .map(|_| ())
        .map_err(|error| SluiceError::unavailable(format!("failed to write {path}: {error}")))
}

/// Every object under `prefix`.
pub async fn list(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
) -> Result<Vec<object_store::ObjectMeta>, SluiceError> {
    use futures::TryStreamExt;
    let prefix = ObjectPath::from(prefix);
    store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|error| SluiceError::unavailable(format!("failed to list {prefix}: {error}")))
}

/// A fresh request id.
pub fn request_id() -> String {
    format!("{:x}", sluice_common::time::now_nanos())
}
