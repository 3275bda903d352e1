//! Opening the archive's object store: a local directory or an S3 bucket under a prefix.

use std::sync::Arc;

use crate::catalog::{Catalog, Snapshot};
use crate::config::ArchiveLocation;
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
    /// URL of the archive root (`file:///…` or `s3://bucket/prefix`), for logs.
    base_url: String,
    /// The catalog as last read, refreshed by [`Archive::snapshot`].
    catalog: Arc<tokio::sync::Mutex<Option<Catalog>>>,
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
                    catalog: Arc::default(),
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
                Url::parse(&format!("s3://{bucket}")).map_err(|error| {
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
                    catalog: Arc::default(),
                })
            }
        }
    }

    /// The archive root, for logs.
    pub fn describe(&self) -> &str {
        &self.base_url
    }

    /// The catalog's latest version: read in full the first time, then only what was
    /// committed since.
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, SluiceError> {
        let mut catalog = self.catalog.lock().await;
        match catalog.as_mut() {
            Some(catalog) => {
                catalog.refresh().await?;
                Ok(catalog.snapshot())
            }
            None => {
                let loaded = Catalog::load(Arc::clone(&self.store)).await?;
                let snapshot = loaded.snapshot();
                *catalog = Some(loaded);
                Ok(snapshot)
            }
        }
    }
}
