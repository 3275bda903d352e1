//! The archive's catalog: which files make up each table, as a log of versions kept in the
//! object store beside the data. It is the truth: SQL, compaction, expiry and the collector
//! read it, never a listing of the bucket, so a file that is not in it (a flush that crashed
//! before committing, a file compaction replaced) is never seen by a query.
//!
//! ```text
//! _sluice/catalog/log/<version:020>.json          one change per version
//! _sluice/catalog/checkpoints/<version:020>.json  the whole state at that version
//! _sluice/catalog/_last_checkpoint                the latest checkpoint's version (a hint)
//! ```
//!
//! A version is written only if it does not exist yet (`PutMode::Create`: `If-None-Match: *`
//! on S3, a hard link on a local directory). That is the fence: two writers that both start
//! from version N cannot both write N + 1, and the one that loses learns it at once. Each
//! change carries its writer's epoch (see [`lease`]): once a newer epoch has written, a writer
//! of an older one refuses to go on ([`CommitError::Fenced`]). A retried write that finds its
//! own change already there (the first attempt landed but its answer was lost) is a success.
//!
//! Readers start from the latest checkpoint and replay the changes after it; a long-lived
//! reader ([`Catalog::refresh`]) lists only what came after the version it holds.
//!
//! - [`sql`]: the tables as DataFusion sees them, from one snapshot, pruned by time.
//! - [`view`]: an object store that lists exactly a snapshot's files.
//! - [`import`]: an archive written before the catalog becomes its first version.

pub mod import;
pub mod lease;
pub mod objects;
pub mod sql;
pub mod stats;
pub mod view;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sluice_bus::Positions;
use sluice_common::SluiceError;
use tracing::warn;

use crate::tables::Table;

const LOG_PREFIX: &str = "_sluice/catalog/log";
const CHECKPOINT_PREFIX: &str = "_sluice/catalog/checkpoints";
const LAST_CHECKPOINT: &str = "_sluice/catalog/_last_checkpoint";

/// A checkpoint of the whole state is written every this many versions.
pub const CHECKPOINT_EVERY: u64 = 100;

/// One data file of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// Path relative to the archive root (`logs/date=…/hour=…/….parquet`).
    pub path: String,
    /// The table it belongs to (its SQL name).
    pub table: String,
    /// Rows it holds.
    pub rows: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// The earliest and latest time of its rows, in nanoseconds since the epoch (the
    /// `timestamp` column; for `pattern_counts`, `first_seen` and `last_seen`).
    pub min_time: i64,
    /// See `min_time`.
    pub max_time: i64,
}

/// A file removed from its table (replaced by compaction, or expired), kept until no query
/// that started before its removal can still read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Garbage {
    /// The version that removed it.
    pub version: u64,
    /// When, in milliseconds since the epoch.
    pub removed_at_ms: i64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// The catalog at one version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Its version (0: nothing committed yet).
    pub version: u64,
    /// The epoch of the writer of the latest version.
    pub epoch: u64,
    /// When the latest version was written, in milliseconds since the epoch.
    pub at_ms: i64,
    /// Retention's bus positions after the last flush committed.
    pub positions: Positions,
    /// Every live file, by path.
    pub files: BTreeMap<String, DataFile>,
    /// Files removed and not yet deleted, by path.
    pub garbage: BTreeMap<String, Garbage>,
}

impl Snapshot {
    /// The live files of `table`.
    pub fn table_files(&self, table: Table) -> impl Iterator<Item = &DataFile> {
        self.files
            .values()
            .filter(move |file| file.table == table.name())
    }

    /// Bytes of every live file.
    pub fn bytes(&self) -> u64 {
        self.files.values().map(|file| file.bytes).sum()
    }

    /// Applies `change`, which must be the next version.
    fn apply(&mut self, change: &Change) -> Result<(), SluiceError> {
        if change.version != self.version + 1 {
            return Err(SluiceError::internal(format!(
                "catalog version {} follows version {}: the log has a gap",
                change.version, self.version
            )));
        }
        for path in &change.remove {
            let Some(file) = self.files.remove(path) else {
                return Err(SluiceError::internal(format!(
                    "catalog version {} removes {path}, which is not in the catalog",
                    change.version
                )));
            };
            self.garbage.insert(
                path.clone(),
                Garbage {
                    version: change.version,
                    removed_at_ms: change.at_ms,
                    bytes: file.bytes,
                },
            );
        }
        for file in &change.add {
            if self.files.insert(file.path.clone(), file.clone()).is_some() {
                return Err(SluiceError::internal(format!(
                    "catalog version {} adds {}, which is in the catalog already",
                    change.version, file.path
                )));
            }
        }
        for path in &change.collected {
            self.garbage.remove(path);
        }
        if let Some(positions) = &change.positions {
            self.positions = positions.clone();
        }
        self.version = change.version;
        self.epoch = self.epoch.max(change.epoch);
        self.at_ms = change.at_ms;
        Ok(())
    }
}

/// What one version changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The version this change makes.
    pub version: u64,
    /// Its writer's epoch.
    pub epoch: u64,
    /// Its writer, and a token unique to this change (to recognise a retried write).
    pub writer: String,
    /// Unique per change: tells a retry of this change from another writer's.
    pub token: String,
    /// What kind of change: `flush`, `compact`, `expire`, `collect`, `takeover`, `import`.
    pub kind: String,
    /// When it was written, in milliseconds since the epoch.
    pub at_ms: i64,
    /// Files added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<DataFile>,
    /// Files removed (they become garbage).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// Garbage deleted from the store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collected: Vec<String>,
    /// Retention's bus positions after the rows this change adds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<Positions>,
}

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another writer committed this version, or a newer epoch has written: this writer must
    /// stop writing.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The store failed; the commit may be retried as it is.
    #[error(transparent)]
    Store(#[from] SluiceError),
}

/// A reader (and, with a writer identity, the writer) of one archive's catalog.
pub struct Catalog {
    store: Arc<dyn ObjectStore>,
    state: Arc<Snapshot>,
}

fn log_path(version: u64) -> ObjectPath {
    ObjectPath::from(format!("{LOG_PREFIX}/{version:020}.json"))
}

fn checkpoint_path(version: u64) -> ObjectPath {
    ObjectPath::from(format!("{CHECKPOINT_PREFIX}/{version:020}.json"))
}

/// The version in a log or checkpoint object's name.
fn version_of(path: &ObjectPath) -> Option<u64> {
    path.filename()?.strip_suffix(".json")?.parse().ok()
}

fn unavailable(what: &str, path: &ObjectPath, error: impl std::fmt::Display) -> SluiceError {
    SluiceError::unavailable(format!("failed to {what} {path}: {error}"))
}

async fn read_json<T: serde::de::DeserializeOwned>(
    store: &Arc<dyn ObjectStore>,
    path: &ObjectPath,
) -> Result<Option<T>, SluiceError> {
    match store.get(path).await {
        Ok(result) => {
            let bytes = result
                .bytes()
                .await
                .map_err(|error| unavailable("read", path, error))?;
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| SluiceError::internal(format!("invalid {path}: {error}")))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(error) => Err(unavailable("read", path, error)),
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    sluice_common::time::now_nanos() / 1_000_000
}

/// A token no other change carries: the writer, the time and a counter.
fn token(writer: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{writer}/{}/{}",
        sluice_common::time::now_nanos(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The identity of a catalog writer: a name for logs and its lease epoch.
#[derive(Debug, Clone)]
pub struct Writer {
    /// Who writes (host, process, start time).
    pub id: String,
    /// The epoch of the lease it holds; changes of older epochs come before.
    pub epoch: u64,
}

impl Writer {
    /// This process, with `epoch`.
    pub fn this_process(epoch: u64) -> Writer {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        Writer {
            id: format!(
                "{host}/{}/{}",
                std::process::id(),
                sluice_common::time::now_nanos()
            ),
            epoch,
        }
    }
}

impl Catalog {
    /// Loads the latest version: the newest checkpoint, then every change after it.
    pub async fn load(store: Arc<dyn ObjectStore>) -> Result<Catalog, SluiceError> {
        let checkpoint = latest_checkpoint(&store).await?;
        let mut catalog = Catalog {
            store,
            state: Arc::new(checkpoint),
        };
        catalog.refresh().await?;
        Ok(catalog)
    }

    /// The catalog as of the latest version read.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.state)
    }

    /// The store the catalog and its files live in.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Reads the versions written since the one held; returns whether there were any.
    pub async fn refresh(&mut self) -> Result<bool, SluiceError> {
        let from = self.state.version;
        let prefix = ObjectPath::from(LOG_PREFIX);
        let mut objects: Vec<object_store::ObjectMeta> = self
            .store
            .list_with_offset(Some(&prefix), &log_path(from))
            .try_collect()
            .await
            .map_err(|error| unavailable("list", &prefix, error))?;
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        let mut versions: Vec<u64> = objects
            .iter()
            .filter_map(|object| version_of(&object.location))
            .filter(|version| *version > from)
            .collect();
        versions.dedup();
        if versions.is_empty() {
            return Ok(false);
        }
        if versions[0] != from + 1 {
            // The changes after the version held were folded into a checkpoint and pruned:
            // start again from the newest checkpoint.
            let checkpoint = latest_checkpoint(&self.store).await?;
            if checkpoint.version <= from {
                return Err(SluiceError::internal(format!(
                    "the catalog log jumps from version {from} to {} and no checkpoint covers the gap",
                    versions[0]
                )));
            }
            self.state = Arc::new(checkpoint);
            Box::pin(self.refresh()).await?;
            return Ok(true);
        }
        let mut state = (*self.state).clone();
        for version in versions {
            let path = log_path(version);
            let Some(change) = read_json::<Change>(&self.store, &path).await? else {
                return Err(SluiceError::internal(format!(
                    "catalog version {version} was listed but cannot be read"
                )));
            };
            state.apply(&change)?;
        }
        self.state = Arc::new(state);
        Ok(true)
    }

    /// Writes `change` as the next version on behalf of `writer`, and returns the new
    /// snapshot. Fails with [`CommitError::Fenced`] when another writer got there first or a
    /// newer epoch has written; a store failure may be retried with the same change.
    pub async fn commit(
        &mut self,
        writer: &Writer,
        mut change: Change,
    ) -> Result<Arc<Snapshot>, CommitError> {
        if self.state.epoch > writer.epoch {
            return Err(CommitError::Fenced(format!(
                "the catalog was written by epoch {}, newer than this writer's {}",
                self.state.epoch, writer.epoch
            )));
        }
        change.version = self.state.version + 1;
        change.epoch = writer.epoch;
        change.writer.clone_from(&writer.id);
        if change.token.is_empty() {
            change.token = token(&writer.id);
        }
        if change.at_ms == 0 {
            change.at_ms = now_ms().max(self.state.at_ms);
        }
        let mut next = (*self.state).clone();
        next.apply(&change)?;
        let path = log_path(change.version);
        let body = serde_json::to_vec_pretty(&change)
            .map_err(|error| SluiceError::internal(error.to_string()))?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(body), options)
            .await
        {
            Ok(_) => {}
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {
                let there = read_json::<Change>(&self.store, &path).await?;
                if there
                    .as_ref()
                    .is_some_and(|there| there.token == change.token)
                {
                    // Our own write, landed by an attempt whose answer was lost.
                } else {
                    self.refresh().await?;
                    return Err(CommitError::Fenced(format!(
                        "catalog version {} was written by {} (epoch {}) first",
                        change.version,
                        there.map_or_else(|| "another writer".to_owned(), |there| there.writer),
                        self.state.epoch
                    )));
                }
            }
            Err(error) => return Err(unavailable("write", &path, error).into()),
        }
        self.state = Arc::new(next);
        if self.state.version.is_multiple_of(CHECKPOINT_EVERY)
            && let Err(error) = self.write_checkpoint().await
        {
            // The log still holds every change: readers replay a little more.
            warn!(version = self.state.version, error = %error, "failed to write a catalog checkpoint");
        }
        Ok(self.snapshot())
    }

    /// Writes a checkpoint of the state held, points the hint at it, and prunes what the
    /// checkpoint before it makes redundant.
    async fn write_checkpoint(&self) -> Result<(), SluiceError> {
        let version = self.state.version;
        let path = checkpoint_path(version);
        let body = serde_json::to_vec(&*self.state)
            .map_err(|error| SluiceError::internal(error.to_string()))?;
        self.store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|error| unavailable("write", &path, error))?;
        let hint = ObjectPath::from(LAST_CHECKPOINT);
        self.store
            .put(&hint, PutPayload::from(version.to_string()))
            .await
            .map_err(|error| unavailable("write", &hint, error))?;
        // Keep this checkpoint and the one before it, with the changes after that one, so a
        // reader that read the previous hint still finds everything it needs.
        let keep_from = version.saturating_sub(CHECKPOINT_EVERY);
        for (prefix, path_of) in [
            (CHECKPOINT_PREFIX, checkpoint_path as fn(u64) -> ObjectPath),
            (LOG_PREFIX, log_path),
        ] {
            let prefix = ObjectPath::from(prefix);
            let objects: Vec<object_store::ObjectMeta> = self
                .store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(|error| unavailable("list", &prefix, error))?;
            for object in objects {
                let Some(old) = version_of(&object.location) else {
                    continue;
                };
                // Checkpoints before `keep_from` go; changes up to and including it too.
                let doomed = if prefix.as_ref() == CHECKPOINT_PREFIX {
                    old < keep_from
                } else {
                    old <= keep_from
                };
                if doomed && let Err(error) = self.store.delete(&path_of(old)).await {
                    warn!(path = %object.location, error = %error, "failed to prune the catalog");
                }
            }
        }
        Ok(())
    }
}

/// The newest checkpoint (the hint's, else the highest listed), or the empty state.
async fn latest_checkpoint(store: &Arc<dyn ObjectStore>) -> Result<Snapshot, SluiceError> {
    let hint = ObjectPath::from(LAST_CHECKPOINT);
    let hinted = match store.get(&hint).await {
        Ok(result) => {
            let bytes = result
                .bytes()
                .await
                .map_err(|error| unavailable("read", &hint, error))?;
            std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
        }
        Err(object_store::Error::NotFound { .. }) => None,
        Err(error) => return Err(unavailable("read", &hint, error)),
    };
    if let Some(version) = hinted
        && let Some(snapshot) = read_json::<Snapshot>(store, &checkpoint_path(version)).await?
    {
        return Ok(snapshot);
    }
    let prefix = ObjectPath::from(CHECKPOINT_PREFIX);
    let objects: Vec<object_store::ObjectMeta> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|error| unavailable("list", &prefix, error))?;
    let newest = objects
        .iter()
        .filter_map(|object| version_of(&object.location))
        .max();
    match newest {
        Some(version) => Ok(read_json::<Snapshot>(store, &checkpoint_path(version))
            .await?
            .unwrap_or_default()),
        None => Ok(Snapshot::default()),
    }
}

/// Whether the archive holds a catalog at all (a version or a checkpoint).
pub async fn exists(store: &Arc<dyn ObjectStore>) -> Result<bool, SluiceError> {
    for prefix in [LOG_PREFIX, CHECKPOINT_PREFIX] {
        let prefix = ObjectPath::from(prefix);
        let first: Option<object_store::ObjectMeta> = store
            .list(Some(&prefix))
            .try_next()
            .await
            .map_err(|error| unavailable("list", &prefix, error))?;
        if first.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local_store(dir: &std::path::Path) -> Arc<dyn ObjectStore> {
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).expect("store"))
    }

    fn file(path: &str) -> DataFile {
        DataFile {
            path: path.to_owned(),
            table: "logs".to_owned(),
            rows: 10,
            bytes: 100,
            min_time: 0,
            max_time: 1,
        }
    }

    fn adding(paths: &[&str]) -> Change {
        Change {
            kind: "flush".to_owned(),
            add: paths.iter().map(|path| file(path)).collect(),
            ..Change::default()
        }
    }

    #[tokio::test]
    async fn versions_replay_in_order_and_a_reader_sees_only_what_was_committed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = local_store(dir.path());
        let writer = Writer::this_process(1);
        let mut catalog = Catalog::load(Arc::clone(&store)).await.expect("load");
        catalog
            .commit(&writer, adding(&["logs/a"]))
            .await
            .expect("commit");
        catalog
            .commit(
                &writer,
                Change {
                    kind: "compact".to_owned(),
                    add: vec![file("logs/b")],
                    remove: vec!["logs/a".to_owned()],
                    ..Change::default()
                },
            )
            .await
            .expect("commit");
        let reader = Catalog::load(Arc::clone(&store)).await.expect("load");
        let snapshot = reader.snapshot();
        assert_eq!(snapshot.version, 2);
        assert_eq!(snapshot.files.keys().collect::<Vec<_>>(), ["logs/b"]);
        assert_eq!(snapshot.garbage.keys().collect::<Vec<_>>(), ["logs/a"]);
        // A change that does not apply is refused before anything is written.
        let error = catalog
            .commit(
                &writer,
                Change {
                    remove: vec!["logs/missing".to_owned()],
                    ..Change::default()
                },
            )
            .await
            .expect_err("refused");
        assert!(matches!(error, CommitError::Store(_)), "{error}");
        assert_eq!(
            Catalog::load(store).await.expect("load").snapshot().version,
            2
        );
    }

    #[tokio::test]
    async fn two_writers_from_one_version_cannot_both_commit_and_an_older_epoch_is_fenced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = local_store(dir.path());
        let old = Writer::this_process(1);
        let new = Writer::this_process(2);
        let mut first = Catalog::load(Arc::clone(&store)).await.expect("load");
        let mut second = Catalog::load(Arc::clone(&store)).await.expect("load");
        second
            .commit(&new, adding(&["logs/new"]))
            .await
            .expect("the newer writer commits");
        let error = first
            .commit(&old, adding(&["logs/old"]))
            .await
            .expect_err("fenced");
        assert!(matches!(error, CommitError::Fenced(_)), "{error}");
        // Having seen the newer epoch, the old writer stays fenced.
        let error = first
            .commit(&old, adding(&["logs/old"]))
            .await
            .expect_err("fenced");
        assert!(matches!(error, CommitError::Fenced(_)), "{error}");
        let snapshot = Catalog::load(store).await.expect("load").snapshot();
        assert_eq!(snapshot.files.keys().collect::<Vec<_>>(), ["logs/new"]);
    }

    #[tokio::test]
    async fn a_retried_commit_that_landed_the_first_time_succeeds_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = local_store(dir.path());
        let writer = Writer::this_process(1);
        let mut catalog = Catalog::load(Arc::clone(&store)).await.expect("load");
        let change = Change {
            token: "retried".to_owned(),
            ..adding(&["logs/a"])
        };
        // The first attempt landed, but its writer never heard.
        let mut lost = Catalog::load(Arc::clone(&store)).await.expect("load");
        lost.commit(&writer, change.clone()).await.expect("landed");
        catalog
            .commit(&writer, change)
            .await
            .expect("the retry succeeds");
        assert_eq!(catalog.snapshot().version, 1);
        assert_eq!(
            Catalog::load(store).await.expect("load").snapshot().version,
            1
        );
    }

    #[tokio::test]
    async fn checkpoints_fold_the_log_and_a_reader_behind_the_pruned_log_catches_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = local_store(dir.path());
        let writer = Writer::this_process(1);
        let mut catalog = Catalog::load(Arc::clone(&store)).await.expect("load");
        catalog
            .commit(&writer, adding(&["logs/0"]))
            .await
            .expect("commit");
        let mut behind = Catalog::load(Arc::clone(&store)).await.expect("load");
        for index in 1..(2 * CHECKPOINT_EVERY + 10) {
            catalog
                .commit(&writer, adding(&[&format!("logs/{index}")]))
                .await
                .expect("commit");
        }
        let logs: Vec<object_store::ObjectMeta> = store
            .list(Some(&ObjectPath::from(LOG_PREFIX)))
            .try_collect()
            .await
            .expect("list");
        assert!(
            logs.len() < (CHECKPOINT_EVERY + 20) as usize,
            "{} changes kept",
            logs.len()
        );
        let fresh = Catalog::load(Arc::clone(&store)).await.expect("load");
        assert_eq!(*fresh.snapshot(), *catalog.snapshot());
        assert!(behind.refresh().await.expect("refresh"));
        assert_eq!(*behind.snapshot(), *catalog.snapshot());
        assert_eq!(
            behind.snapshot().files.len() as u64,
            2 * CHECKPOINT_EVERY + 10
        );
    }
}
