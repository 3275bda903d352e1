//! The indexer's section of the configuration file, `[indexer]`, and its validation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sluice_common::SluiceError;
use sluice_common::config::{parse_duration, positive};

/// `[indexer]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIndexerConfig {
    /// Index directory (one Tantivy index per UTC hour inside); default `<data_dir>/index`.
    pub dir: Option<PathBuf>,
    /// How often new documents are committed and become searchable.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: String,
    /// Memory budget of each hour's index writer, in bytes.
    #[serde(default = "default_writer_memory")]
    pub writer_memory_bytes: usize,
    /// An hour's writer is closed after this long without new documents.
    #[serde(default = "default_idle_writer")]
    pub close_idle_writer_after: String,
    /// Hour writers open at once (each has a thread and up to `writer_memory_bytes`). A
    /// document for another hour first commits and closes the writer written least recently.
    #[serde(default = "default_max_open_writers")]
    pub max_open_writers: usize,
    /// Where the indexer serves `sluice.v1.IndexSearch` (gRPC, mutual TLS) to query APIs in
    /// other processes; unset means no search service (`sluice up` searches in process).
    pub listen: Option<SocketAddr>,
    /// Hours whose every document is older than this are deleted (`7d`); unset keeps them.
    /// The archive keeps rows by its own policies (`[[retention.expiry]]`).
    pub max_age: Option<String>,
    /// Past this many bytes on disk the oldest hours are deleted (never the newest), each
    /// counted and logged; unset means no limit.
    pub max_disk_bytes: Option<u64>,
}

fn default_commit_interval() -> String {
    "1s".to_owned()
}
fn default_writer_memory() -> usize {
    64 * 1024 * 1024
}
fn default_max_open_writers() -> usize {
    4
}
fn default_idle_writer() -> String {
    "5m".to_owned()
}

/// Validated `[indexer]`.
#[derive(Debug, Clone)]
pub struct IndexerConfig {
    /// Index root directory.
    pub dir: PathBuf,
    /// Commit interval.
    pub commit_interval: Duration,
    /// Writer memory budget per hour index.
    pub writer_memory_bytes: usize,
    /// Idle time after which an hour's writer is closed.
    pub close_idle_writer_after: Duration,
    /// Hour writers open at once.
    pub max_open_writers: usize,
    /// Search service address, if served.
    pub listen: Option<SocketAddr>,
    /// Age past which an hour is deleted.
    pub max_age: Option<Duration>,
    /// Disk high-water mark.
    pub max_disk_bytes: Option<u64>,
}
impl RawIndexerConfig {
    /// Checks every field; the index defaults to `<data_dir>/index`.
    pub fn validate(self, data_dir: &Path) -> Result<IndexerConfig, SluiceError> {
        positive("indexer.max_open_writers", self.max_open_writers)?;
        if self.writer_memory_bytes < 15_000_000 {
            return Err(SluiceError::invalid(
                "indexer.writer_memory_bytes: Tantivy needs at least 15000000 bytes",
            ));
        }
        let max_age = self
            .max_age
            .as_deref()
            .map(|text| parse_duration("indexer.max_age", text))
            .transpose()?;
        if max_age.is_some_and(|age| age < Duration::from_secs(3600)) {
            return Err(SluiceError::invalid(
                "indexer.max_age: must be at least 1h (the index is kept by the hour)",
            ));
        }
        if self
            .max_disk_bytes
            .is_some_and(|bytes| bytes < 64 * 1024 * 1024)
        {
            return Err(SluiceError::invalid(
                "indexer.max_disk_bytes: must be at least 67108864 (64 MiB)",
            ));
        }
        Ok(IndexerConfig {
            dir: self.dir.unwrap_or_else(|| data_dir.join("index")),
            commit_interval: parse_duration("indexer.commit_interval", &self.commit_interval)?,
            writer_memory_bytes: self.writer_memory_bytes,
            close_idle_writer_after: parse_duration(
                "indexer.close_idle_writer_after",
                &self.close_idle_writer_after,
            )?,
            max_open_writers: self.max_open_writers,
            listen: self.listen,
            max_age,
            max_disk_bytes: self.max_disk_bytes,
        })
    }
}

sluice_common::default_from_empty_table!(RawIndexerConfig);
