//! The collector: deletes what the catalog no longer holds, once no query can read it.
//!
//! Two kinds of file go, each only after `retention.gc_grace`, so a query that started
//! before a file left the catalog (it reads the snapshot it started with) never finds it
//! gone:
//!
//! - **garbage**: files compaction replaced or expiry removed; the catalog records when each
//!   left, and a `collect` change records that it was deleted;
//! - **orphans**: files in a table's directory that the catalog never held (a flush that
//!   crashed, or was fenced, before it committed), judged by the store's modification time.
//!
//! It runs in the writer between flushes, so no upload of its own is in flight while it
//! lists.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use tracing::{info, warn};

use crate::catalog::{Catalog, Change, CommitError, Writer, now_ms};
use crate::metrics::RetentionMetrics;
use crate::tables::Table;

/// What one collection deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Files replaced or expired.
    pub garbage: u64,
    /// Files never committed.
    pub orphans: u64,
}

/// Deletes garbage and orphans older than `grace`.
pub async fn collect(
    catalog: &mut Catalog,
    writer: &Writer,
    grace: Duration,
    metrics: &RetentionMetrics,
) -> Result<Collected, CommitError> {
    let store = Arc::clone(catalog.store());
    let snapshot = catalog.snapshot();
    let now = now_ms();
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let mut collected = Collected::default();

    let due: Vec<String> = snapshot
        .garbage
        .iter()
        .filter(|(_, garbage)| garbage.removed_at_ms.saturating_add(grace_ms) <= now)
        .map(|(path, _)| path.clone())
        .collect();
    let mut deleted = Vec::new();
    for path in due {
        match store.delete(&ObjectPath::from(path.as_str())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted.push(path),
            Err(error) => {
                warn!(path, error = %error, "failed to delete a replaced file; the next collection retries")
            }
        }
    }
    if !deleted.is_empty() {
        collected.garbage = deleted.len() as u64;
        catalog
            .commit(
                writer,
                Change {
                    kind: "collect".to_owned(),
                    collected: deleted,
                    ..Change::default()
                },
            )
            .await?;
        metrics.garbage_files_deleted.inc_by(collected.garbage);
    }

    let snapshot = catalog.snapshot();
    let cutoff =
        chrono::DateTime::from_timestamp_millis(now.saturating_sub(grace_ms)).unwrap_or_default();
    for table in Table::ALL {
        let objects = crate::catalog::objects::list(&store, table.name()).await?;
        for object in objects {
            let path = object.location.as_ref();
            if snapshot.files.contains_key(path)
                || snapshot.garbage.contains_key(path)
                || object.last_modified > cutoff
            {
                continue;
            }
            match store.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => collected.orphans += 1,
                Err(error) => {
                    warn!(path, error = %error, "failed to delete a file the catalog does not hold")
                }
            }
        }
    }
    metrics.orphan_files_removed.inc_by(collected.orphans);
    if collected != Collected::default() {
        info!(
            garbage = collected.garbage,
            orphans = collected.orphans,
            "collected files the catalog no longer holds"
        );
    }
    Ok(collected)
}
