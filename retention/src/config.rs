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
    /// How long the archive's lease lasts without renewal: a standby retention process
    /// takes over within about this long after the active one dies.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: String,
    /// How often the collector looks for files to delete.
    #[serde(default = "default_gc_interval")]
    pub gc_interval: String,
    /// Files the catalog no longer holds (replaced, expired, or never committed) are deleted
    /// this long after they left it (or were written), never sooner: longer than any query
    /// runs, so none reads a file that is gone.
    #[serde(default = "default_gc_grace")]
    pub gc_grace: String,
    /// Connection settings when `archive` is an `s3://bucket/prefix` URL.
    #[serde(default)]
    pub s3: RawS3Config,
    /// `[retention.compaction]`.
    #[serde(default)]
    pub compaction: RawCompactionConfig,
    /// `[[retention.expiry]]`: how long rows stay, per table and source; the first rule that
    /// matches a row decides, and a row no rule matches stays.
    #[serde(default)]
    pub expiry: Vec<RawExpiryRule>,
    /// How often expiry runs.
    #[serde(default = "default_expiry_interval")]
    pub expiry_interval: String,
}

/// One `[[retention.expiry]]` rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpiryRule {
    /// A table (`logs`, `counters`, `gauges`, `timers`, `events`, `pattern_counts`) or `*`.
    #[serde(default = "default_any")]
    pub table: String,
    /// A `source_id` pattern (`*` any run of characters, `?` one); every source when unset.
    pub source_id: Option<String>,
    /// Rows older than this go (`90d`, `12h`).
    pub max_age: String,
}

fn default_any() -> String {
    "*".to_owned()
}
fn default_expiry_interval() -> String {
    "1h".to_owned()
}

/// `[retention.compaction]`: merging small files into large sorted ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompactionConfig {
    /// Off leaves every flush's files as they are.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Output files hold about this many bytes of input each (an hour's files are merged
    /// into one file per this much).
    #[serde(default = "default_compaction_target_bytes")]
    pub target_bytes: u64,
    /// Share of one core the merging may use, above 0 and at most 1.
    #[serde(default = "default_compaction_cpu_share")]
    pub cpu_share: f64,
    /// Time between looks for files to merge.
    #[serde(default = "default_compaction_interval")]
    pub interval: String,
    /// An hour still being written is merged once it holds this many small files.
    #[serde(default = "default_compaction_max_open_files")]
    pub max_open_files: usize,
    /// Zstd level of compacted files (flushes use `retention.zstd_level`, kept low so they
    /// keep up; compaction runs in the background and can afford more).
    #[serde(default = "default_compaction_zstd_level")]
    pub zstd_level: i32,
}

fn default_compaction_zstd_level() -> i32 {
    15
}

fn default_true() -> bool {
    true
}
fn default_compaction_target_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_compaction_cpu_share() -> f64 {
    0.5
}
fn default_compaction_interval() -> String {
    "1m".to_owned()
}
fn default_compaction_max_open_files() -> usize {
    64
}

fn default_lease_ttl() -> String {
    "10s".to_owned()
}
fn default_gc_interval() -> String {
    "1m".to_owned()
}
fn default_gc_grace() -> String {
    "15m".to_owned()
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
    /// Lease time.
    pub lease_ttl: Duration,
    /// Collector interval.
    pub gc_interval: Duration,
    /// Collector grace period.
    pub gc_grace: Duration,
    /// Compaction, when on.
    pub compaction: Option<crate::compaction::CompactionSettings>,
    /// Expiry rules.
    pub expiry: crate::expiry::Policy,
    /// Expiry interval.
    pub expiry_interval: Duration,
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
        let lease_ttl = parse_duration("retention.lease_ttl", &self.lease_ttl)?;
        let gc_interval = parse_duration("retention.gc_interval", &self.gc_interval)?;
        for (field, value) in [
            ("retention.lease_ttl", lease_ttl),
            ("retention.gc_interval", gc_interval),
        ] {
            if value < Duration::from_secs(1) {
                return Err(SluiceError::invalid(format!(
                    "{field}: must be at least 1s"
                )));
            }
        }
        let compaction = self.compaction;
        if !(compaction.cpu_share > 0.0 && compaction.cpu_share <= 1.0) {
            return Err(SluiceError::invalid(
                "retention.compaction.cpu_share: must be above 0 and at most 1",
            ));
        }
        if compaction.target_bytes < 1024 * 1024 {
            return Err(SluiceError::invalid(
                "retention.compaction.target_bytes: must be at least 1048576 (1 MiB)",
            ));
        }
        if compaction.max_open_files < 2 {
            return Err(SluiceError::invalid(
                "retention.compaction.max_open_files: must be at least 2",
            ));
        }
        if !(1..=22).contains(&compaction.zstd_level) {
            return Err(SluiceError::invalid(
                "retention.compaction.zstd_level: must be between 1 and 22",
            ));
        }
        let compaction_interval =
            parse_duration("retention.compaction.interval", &compaction.interval)?;
        let compaction = compaction
            .enabled
            .then_some(crate::compaction::CompactionSettings {
                target_bytes: compaction.target_bytes,
                cpu_share: compaction.cpu_share,
                interval: compaction_interval.max(Duration::from_millis(100)),
                max_open_files: compaction.max_open_files,
                zstd_level: compaction.zstd_level,
            });
        let mut rules = Vec::new();
        for (index, rule) in self.expiry.into_iter().enumerate() {
            let field = format!("retention.expiry[{index}]");
            let table = match rule.table.as_str() {
                "*" => None,
                name => Some(
                    crate::tables::Table::ALL
                        .into_iter()
                        .find(|table| table.name() == name)
                        .ok_or_else(|| {
                            SluiceError::invalid(format!(
                                "{field}.table: unknown table {name:?}; expected logs, counters, gauges, timers, events, pattern_counts or *"
                            ))
                        })?,
                ),
            };
            let max_age = parse_duration(&format!("{field}.max_age"), &rule.max_age)?;
            if max_age < Duration::from_secs(60) {
                return Err(SluiceError::invalid(format!(
                    "{field}.max_age: must be at least 1m"
                )));
            }
            rules.push(crate::expiry::Rule {
                table,
                source_id: rule.source_id.filter(|pattern| pattern != "*"),
                max_age,
            });
        }
        let expiry_interval = parse_duration("retention.expiry_interval", &self.expiry_interval)?;
        if expiry_interval < Duration::from_secs(1) {
            return Err(SluiceError::invalid(
                "retention.expiry_interval: must be at least 1s",
            ));
        }
        Ok(RetentionConfig {
            archive,
            flush_interval: parse_duration("retention.flush_interval", &self.flush_interval)?,
            flush_rows: self.flush_rows,
            zstd_level: self.zstd_level,
            lease_ttl,
            gc_interval,
            gc_grace: parse_duration("retention.gc_grace", &self.gc_grace)?,
            compaction,
            expiry: crate::expiry::Policy { rules },
            expiry_interval,
        })
    }
}

sluice_common::default_from_empty_table!(RawRetentionConfig, RawCompactionConfig);

#[cfg(test)]
mod tests {
    use super::*;

    fn validated(text: &str) -> RetentionConfig {
        let raw: RawRetentionConfig = toml::from_str(text).expect("config");
        raw.validate(Path::new("/tmp/sluice")).expect("valid")
    }

    #[test]
    fn compacted_files_use_the_compaction_level_and_flushes_their_own() {
        let config = validated("");
        assert_eq!(config.zstd_level, 3);
        assert_eq!(config.compaction.expect("on by default").zstd_level, 15);
        let config = validated("zstd_level = 5\n[compaction]\nzstd_level = 12\n");
        assert_eq!(config.zstd_level, 5);
        assert_eq!(config.compaction.expect("on").zstd_level, 12);
    }
}
