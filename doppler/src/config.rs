//! The doppler's section of the configuration file, `[doppler]`, and its validation. Its
//! receive limit must fit between the agent's batch size and the bus's record size; that is
//! checked where the file is composed, in the `sluice` binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sluice_common::SluiceError;
use sluice_common::config::{parse_duration, positive};

/// `[doppler]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDopplerConfig {
    /// Address agents connect to (gRPC, mTLS); also serves `loggregator.v2.Egress`.
    #[serde(default = "default_doppler_listen")]
    pub listen: SocketAddr,
    /// Batches buffered per live subscriber; past this the subscriber's batches are dropped
    /// and counted, so a slow reader never slows ingestion.
    #[serde(default = "default_subscriber_buffer")]
    pub subscriber_buffer_batches: usize,
    /// Largest accepted gRPC message from an agent (one encoded batch, which becomes one bus
    /// record), in bytes. Must be at least `agent.flush_bytes` plus a batch's framing
    /// (1 KiB) and at most `bus.max_record_bytes`.
    #[serde(default = "default_doppler_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Bytes of batches waiting for the bus at once. While the bus is slow or away, a batch
    /// past this waits up to `pending_wait`, then is refused with `RESOURCE_EXHAUSTED` (and
    /// counted); its agent keeps it and retries, pushing back on its own clients.
    #[serde(default = "default_max_pending_bytes")]
    pub max_pending_bytes: usize,
    /// How long a batch may wait for room under `max_pending_bytes`.
    #[serde(default = "default_pending_wait")]
    pub pending_wait: String,
    /// Most envelopes in one batch (a larger one is refused as invalid, counted). At least
    /// `agent.flush_envelopes`; bounds what the batch's patterns add to its bus record.
    #[serde(default = "default_max_batch_envelopes")]
    pub max_batch_envelopes: usize,
    /// `[doppler.patterns]`: mining each log line's pattern at ingest.
    #[serde(default)]
    pub patterns: RawPatternsConfig,
}

/// `[doppler.patterns]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPatternsConfig {
    /// Mine a pattern id for every log line (stored beside it in the index and the archive).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Distinct masked lines kept per source; past it the least recently seen quarter is
    /// evicted (counted in `sluice_doppler_pattern_evictions`).
    #[serde(default = "default_max_leaves_per_source")]
    pub max_leaves_per_source: usize,
    /// Distinct masked lines kept over every source; past it the sources used least recently
    /// are forgotten (their lines counted as evicted). Split among the doppler's 16 shards.
    #[serde(default = "default_max_leaves")]
    pub max_leaves: usize,
    /// How often what the miners learned is saved (to `<data_dir>/doppler/patterns.json`).
    #[serde(default = "default_snapshot_interval")]
    pub snapshot_interval: String,
    /// Bytes of pattern templates one batch's record may carry; the rest wait for a later
    /// batch of their pattern.
    #[serde(default = "default_max_template_bytes_per_batch")]
    pub max_template_bytes_per_batch: usize,
}

fn default_true() -> bool {
    true
}
fn default_max_leaves_per_source() -> usize {
    10_000
}
fn default_max_leaves() -> usize {
    500_000
}
fn default_snapshot_interval() -> String {
    "5s".to_owned()
}
fn default_max_template_bytes_per_batch() -> usize {
    64 * 1024
}
fn default_max_batch_envelopes() -> usize {
    10_000
}

fn default_max_pending_bytes() -> usize {
    256 * 1024 * 1024
}
fn default_pending_wait() -> String {
    "5s".to_owned()
}

fn default_doppler_max_message_bytes() -> usize {
    15 * 1024 * 1024
}

fn default_doppler_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8082))
}
fn default_subscriber_buffer() -> usize {
    1024
}

/// Validated `[doppler]`.
#[derive(Debug, Clone)]
pub struct DopplerConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Batches buffered per subscriber.
    pub subscriber_buffer_batches: usize,
    /// Largest gRPC message in bytes.
    pub max_message_bytes: usize,
    /// Bytes of batches waiting for the bus at once.
    pub max_pending_bytes: usize,
    /// Longest wait for room under `max_pending_bytes`.
    pub pending_wait: Duration,
    /// Most envelopes in one batch.
    pub max_batch_envelopes: usize,
    /// Pattern mining.
    pub patterns: PatternsConfig,
}

/// Validated `[doppler.patterns]`.
#[derive(Debug, Clone)]
pub struct PatternsConfig {
    /// Mining on.
    pub enabled: bool,
    /// Masked lines kept per source.
    pub max_leaves_per_source: usize,
    /// Masked lines kept over every source.
    pub max_leaves: usize,
    /// How often the miners are saved.
    pub snapshot_interval: Duration,
    /// Template bytes per batch.
    pub max_template_bytes_per_batch: usize,
    /// Where `patterns.json` lives.
    pub state_dir: PathBuf,
}
impl RawDopplerConfig {
    /// Checks every field; the doppler keeps its state under `data_dir`.
    pub fn validate(self, data_dir: &Path) -> Result<DopplerConfig, SluiceError> {
        positive(
            "doppler.subscriber_buffer_batches",
            self.subscriber_buffer_batches,
        )?;
        positive("doppler.max_batch_envelopes", self.max_batch_envelopes)?;
        positive(
            "doppler.patterns.max_leaves_per_source",
            self.patterns.max_leaves_per_source,
        )?;
        if self.patterns.max_leaves < self.patterns.max_leaves_per_source {
            return Err(SluiceError::invalid(format!(
                "doppler.patterns.max_leaves ({}) is below doppler.patterns.max_leaves_per_source ({}): one source could never reach its own cap",
                self.patterns.max_leaves, self.patterns.max_leaves_per_source
            )));
        }
        let patterns = PatternsConfig {
            enabled: self.patterns.enabled,
            max_leaves_per_source: self.patterns.max_leaves_per_source,
            max_leaves: self.patterns.max_leaves,
            snapshot_interval: parse_duration(
                "doppler.patterns.snapshot_interval",
                &self.patterns.snapshot_interval,
            )?,
            max_template_bytes_per_batch: self.patterns.max_template_bytes_per_batch,
            state_dir: data_dir.join("doppler"),
        };
        Ok(DopplerConfig {
            listen: self.listen,
            subscriber_buffer_batches: self.subscriber_buffer_batches,
            max_message_bytes: self.max_message_bytes,
            max_pending_bytes: self.max_pending_bytes,
            pending_wait: parse_duration("doppler.pending_wait", &self.pending_wait)?,
            max_batch_envelopes: self.max_batch_envelopes,
            patterns,
        })
    }
}

sluice_common::default_from_empty_table!(RawDopplerConfig, RawPatternsConfig);
