//! Retention's section of the configuration file, `[retention]` with `[retention.s3]`, and
//! its validation: where the archive lives and how it is written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sluice_common::SluiceError;
use sluice_common::config::{parse_duration, positive};

/// `[retention]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetentionConfig {
    /// Archive location: a local directory (path or `file://` URL); default `<data_dir>/archive`.
    pub archive: Option<String>,
    /// Buffered rows are written out at least this often.
    #[serde(default = "default_flush_interval_retention")]
    pub flush_interval: String,
    /// Buffered rows are written out once this many are waiting.
    #[serde(default = "default_flush_rows")]
    pub flush_rows: usize,
    /// Zstd level of Parquet pages.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Connection settings when `archive` is an `s3://bucket/prefix` URL.
    #[serde(default)]
    pub s3: RawS3Config,
}

/// `[retention.s3]`: an S3-compatible store. Unset keys fall back to the standard AWS
/// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
/// `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawS3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000`; unset means AWS.
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Allow a plain-HTTP endpoint (off unless set: credentials would travel in clear).
    #[serde(default)]
    pub allow_http: bool,
    /// Address buckets as `bucket.host` instead of the default path style `host/bucket`.
    #[serde(default)]
    pub virtual_hosted_style: bool,
}

impl std::fmt::Debug for RawS3Config {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RawS3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish()
    }
}

fn default_flush_interval_retention() -> String {
    "5s".to_owned()
}
fn default_flush_rows() -> usize {
    200_000
}
fn default_zstd_level() -> i32 {
    3
}

/// Where the archive lives.
#[derive(Debug, Clone)]
pub enum ArchiveLocation {
    /// A local directory.
    Local(PathBuf),
    /// An S3 bucket, under a prefix.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix without leading or trailing `/` (may be empty).
        prefix: String,
        /// Connection settings.
        settings: RawS3Config,
    },
}

/// Validated `[retention]`.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Archive location.
    pub archive: ArchiveLocation,
    /// Flush interval.
    pub flush_interval: Duration,
    /// Rows that trigger a flush.
    pub flush_rows: usize,
    /// Zstd level.
    pub zstd_level: i32,
}

/// Parses `retention.archive`: a path, a `file://` URL or an `s3://bucket/prefix` URL.
fn parse_archive_location(location: &str, s3: RawS3Config) -> Result<ArchiveLocation, SluiceError> {
    if let Some(path) = location.strip_prefix("file://") {
        return Ok(ArchiveLocation::Local(PathBuf::from(path)));
    }
    if let Some(rest) = location.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(SluiceError::invalid(format!(
                "retention.archive: no bucket in {location:?}"
            )));
        }
        return Ok(ArchiveLocation::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            settings: s3,
        });
    }
    if location.contains("://") {
        return Err(SluiceError::invalid(format!(
            "retention.archive: unsupported location {location:?}; use a directory, a file:// URL or an s3://bucket/prefix URL"
        )));
    }
    Ok(ArchiveLocation::Local(PathBuf::from(location)))
}
impl RawRetentionConfig {
    /// Checks every field; the archive defaults to `<data_dir>/archive`.
    pub fn validate(self, data_dir: &Path) -> Result<RetentionConfig, SluiceError> {
        positive("retention.flush_rows", self.flush_rows)?;
        if !(1..=22).contains(&self.zstd_level) {
            return Err(SluiceError::invalid(
                "retention.zstd_level: must be between 1 and 22",
            ));
        }
        let archive = match self.archive {
            None => ArchiveLocation::Local(data_dir.join("archive")),
            Some(location) => parse_archive_location(&location, self.s3)?,
        };
        Ok(RetentionConfig {
            archive,
            flush_interval: parse_duration("retention.flush_interval", &self.flush_interval)?,
            flush_rows: self.flush_rows,
            zstd_level: self.zstd_level,
        })
    }
}

sluice_common::default_from_empty_table!(RawRetentionConfig);
