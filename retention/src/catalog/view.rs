//! An object store that lists exactly the files it is given (a snapshot's, pruned for one
//! scan) and reads them from the archive: what DataFusion lists through it is what the
//! catalog holds, whatever else lies in the bucket. It is read-only.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

use super::DataFile;

/// A read-only store over `inner` whose listings hold exactly `files`.
pub struct View {
    inner: Arc<dyn ObjectStore>,
    /// Sorted by path.
    files: Vec<ObjectMeta>,
}

impl fmt::Debug for View {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "catalog view of {} files", self.files.len())
    }
}

impl fmt::Display for View {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, formatter)
    }
}

impl View {
    /// A view of `files` in `inner`, listed as written at `at_ms`.
    pub fn new<'a>(
        inner: Arc<dyn ObjectStore>,
        files: impl IntoIterator<Item = &'a DataFile>,
        at_ms: i64,
    ) -> View {
        let last_modified: DateTime<Utc> =
            DateTime::from_timestamp_millis(at_ms).unwrap_or_default();
        let mut files: Vec<ObjectMeta> = files
            .into_iter()
            .map(|file| ObjectMeta {
                location: ObjectPath::from(file.path.as_str()),
                last_modified,
                size: file.bytes,
                e_tag: None,
                version: None,
            })
            .collect();
        files.sort_by(|a, b| a.location.cmp(&b.location));
        View { inner, files }
    }

    /// The files under `prefix` (every file when none).
    fn under(&self, prefix: Option<&ObjectPath>) -> Vec<ObjectMeta> {
        self.files
            .iter()
            .filter(|file| prefix.is_none_or(|prefix| file.location.prefix_matches(prefix)))
            .cloned()
            .collect()
    }
}

fn read_only() -> object_store::Error {
    object_store::Error::NotSupported {
        source: "the catalog view is read-only".into(),
    }
}

#[async_trait::async_trait]
impl ObjectStore for View {
    async fn put_opts(
        &self,
        _location: &ObjectPath,
        _payload: PutPayload,
        _opts: PutOptions,
    ) -> Result<PutResult> {
        Err(read_only())
    }

    async fn put_multipart_opts(
        &self,
        _location: &ObjectPath,
        _opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        Err(read_only())
    }

    async fn get_opts(&self, location: &ObjectPath, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &ObjectPath, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<ObjectPath>>,
    ) -> BoxStream<'static, Result<ObjectPath>> {
        locations.map(|_| Err(read_only())).boxed()
    }

    fn list(&self, prefix: Option<&ObjectPath>) -> BoxStream<'static, Result<ObjectMeta>> {
        futures::stream::iter(self.under(prefix).into_iter().map(Ok)).boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&ObjectPath>,
        offset: &ObjectPath,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let offset = offset.clone();
        let files: Vec<ObjectMeta> = self
            .under(prefix)
            .into_iter()
            .filter(|file| file.location > offset)
            .collect();
        futures::stream::iter(files.into_iter().map(Ok)).boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjectPath>) -> Result<ListResult> {
        let depth = prefix.map_or(0, |prefix| prefix.parts().count());
        let mut common_prefixes = BTreeSet::new();
        let mut objects = Vec::new();
        for file in self.under(prefix) {
            let parts: Vec<_> = file.location.parts().collect();
            if parts.len() == depth + 1 {
                objects.push(file);
            } else if parts.len() > depth + 1 {
                common_prefixes.insert(ObjectPath::from_iter(parts.into_iter().take(depth + 1)));
            }
        }
        Ok(ListResult {
            common_prefixes: common_prefixes.into_iter().collect(),
            objects,
        })
    }

    async fn copy_opts(
        &self,
        _from: &ObjectPath,
        _to: &ObjectPath,
        _options: CopyOptions,
    ) -> Result<()> {
        Err(read_only())
    }

    async fn rename_opts(
        &self,
        _from: &ObjectPath,
        _to: &ObjectPath,
        _options: RenameOptions,
    ) -> Result<()> {
        Err(read_only())
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    #[tokio::test]
    async fn lists_only_its_files_by_prefix_and_by_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner: Arc<dyn ObjectStore> = Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("store"),
        );
        let file = |path: &str| DataFile {
            path: path.to_owned(),
            table: "logs".to_owned(),
            rows: 1,
            bytes: 3,
            min_time: 0,
            max_time: 0,
        };
        let files = [
            file("logs/date=2026-01-01/hour=00/1.parquet"),
            file("logs/date=2026-01-01/hour=01/2.parquet"),
            file("logs/date=2026-01-02/hour=00/3.parquet"),
            file("gauges/date=2026-01-01/hour=00/4.parquet"),
        ];
        let view = View::new(inner, &files, 0);
        let logs: Vec<ObjectMeta> = view
            .list(Some(&ObjectPath::from("logs")))
            .try_collect()
            .await
            .expect("list");
        assert_eq!(logs.len(), 3);
        let days = view
            .list_with_delimiter(Some(&ObjectPath::from("logs")))
            .await
            .expect("list");
        assert_eq!(
            days.common_prefixes,
            [
                ObjectPath::from("logs/date=2026-01-01"),
                ObjectPath::from("logs/date=2026-01-02")
            ]
        );
        let hour = view
            .list_with_delimiter(Some(&ObjectPath::from("logs/date=2026-01-01/hour=01")))
            .await
            .expect("list");
        assert_eq!(hour.objects.len(), 1);
        assert!(hour.common_prefixes.is_empty());
    }
}
