//! The doppler's section of the configuration file, `[doppler]`, and its validation. Its
//! receive limit must fit between the agent's batch size and the bus's record size; that is
//! checked where the file is composed, in the `sluice` binary.

use std::net::SocketAddr;
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
}

fn default_max_pending_bytes() -> usize {
    256 * 1024 * 1024
}
fn default_pending_wait() -> String {
    "5s".to_owned()
}

fn default_doppler_max_message_bytes() -> usize {
    16 * 1024 * 1024
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
}
impl RawDopplerConfig {
    /// Checks every field.
    pub fn validate(self) -> Result<DopplerConfig, SluiceError> {
        positive(
            "doppler.subscriber_buffer_batches",
            self.subscriber_buffer_batches,
        )?;
        Ok(DopplerConfig {
            listen: self.listen,
            subscriber_buffer_batches: self.subscriber_buffer_batches,
            max_message_bytes: self.max_message_bytes,
            max_pending_bytes: self.max_pending_bytes,
            pending_wait: parse_duration("doppler.pending_wait", &self.pending_wait)?,
        })
    }
}

sluice_common::default_from_empty_table!(RawDopplerConfig);
