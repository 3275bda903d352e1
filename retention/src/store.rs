//! Opening the archive's object store: a local directory or an S3 bucket under a prefix.

use std::sync::Arc;

use crate::config::ArchiveLocation;
use datafusion::prelude::SessionContext;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use sluice_common::SluiceError;
use url::Url;

use crate::tables::Table;

/// An opened archive.
#[derive(Clone)]
pub struct Archive {
    /// The store rooted at the archive: paths look like `logs/date=…/hour=…/….parquet`.
    pub store: Arc<dyn ObjectStore>,
    /// URL of the archive root as DataFusion lists it (`file:///…` or `s3://bucket/prefix`).
    base_url: String,
    /// For S3: the bucket URL and the bucket-level store DataFusion must be given.
    bucket_store: Option<(Url, Arc<dyn ObjectStore>)>,
}

impl Archive {
    /// Opens `location`, creating a local directory if needed. Nothing is contacted yet.
    pub fn open(location: &ArchiveLocation) -> Result<Archive, SluiceError> {
        match location {
            ArchiveLocation::Local(dir) => {
                for table in Table::ALL {
                    let table_dir = dir.join(table.name());
                    std::fs::create_dir_all(&table_dir).map_err(|error| {
                        SluiceError::internal(format!(
                            "failed to create {}: {error}",
                            table_dir.display()
                        ))
                    })?;
                }
                let root = dir.canonicalize().map_err(|error| {
                    SluiceError::internal(format!("failed to resolve {}: {error}", dir.display()))
                })?;
                let store = LocalFileSystem::new_with_prefix(&root).map_err(|error| {
                    SluiceError::internal(format!(
                        "failed to open archive directory {}: {error}",
                        root.display()
                    ))
                })?;
                Ok(Archive {
                    store: Arc::new(store),
                    base_url: format!("file://{}", root.display()),
                    bucket_store: None,
                })
            }
            ArchiveLocation::S3 {
                bucket,
                prefix,
                settings,
            } => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_virtual_hosted_style_request(settings.virtual_hosted_style);
                if let Some(endpoint) = &settings.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(region) = &settings.region {
                    builder = builder.with_region(region);
                }
                if let Some(key) = &settings.access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = &settings.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                if settings.allow_http {
                    builder = builder.with_allow_http(true);
                }
                let bucket_level: Arc<dyn ObjectStore> =
                    Arc::new(builder.build().map_err(|error| {
                        SluiceError::invalid(format!(
                            "retention.s3: invalid settings for bucket {bucket}: {error}"
                        ))
                    })?);
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::clone(&bucket_level)
                } else {
                    Arc::new(PrefixStore::new(Arc::clone(&bucket_level), prefix.as_str()))
                };
                let bucket_url = Url::parse(&format!("s3://{bucket}")).map_err(|error| {
                    SluiceError::invalid(format!(
                        "retention.archive: invalid bucket name {bucket:?}: {error}"
                    ))
                })?;
                let base_url = if prefix.is_empty() {
                    format!("s3://{bucket}")
                } else {
                    format!("s3://{bucket}/{prefix}")
                };
                Ok(Archive {
                    store,
                    base_url,
                    bucket_store: Some((bucket_url, bucket_level)),
                })
            }
        }
    }

    /// Where `table`'s files are listed from, with a trailing `/`.
    pub fn table_url(&self, table: Table) -> String {
        format!("{}/{}/", self.base_url, table.name())
    }

    /// The archive root, for logs.
    pub fn describe(&self) -> &str {
        &self.base_url
    }

    /// Makes the archive's store known to `context` (S3 needs it; local files are built in).
    pub fn register_store(&self, context: &SessionContext) {
        if let Some((url, store)) = &self.bucket_store {
            context.register_object_store(url, Arc::clone(store));
        }
    }
}
