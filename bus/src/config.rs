//! The bus's section of the configuration file, `[bus]` with `[bus.wal]` and `[bus.kafka]`,
//! and its validation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sluice_common::SluiceError;
use sluice_common::config::{parse_duration, positive};

/// `[bus]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBusConfig {
    /// `wal`, the embedded durable write-ahead log (one process only), or `kafka`.
    #[serde(default = "default_bus_kind")]
    pub kind: String,
    /// WAL directory; default `<data_dir>/wal`.
    pub wal_dir: Option<PathBuf>,
    /// `[bus.wal]`: how the embedded WAL keeps its records.
    #[serde(default)]
    pub wal: RawWalConfig,
    /// Largest record (one encoded agent batch) the bus takes, in bytes. On Kafka this is the
    /// producer's `message.max.bytes` and the `max.message.bytes` of a topic Sluice creates;
    /// the brokers' own limit must be at least as large.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Kafka settings, for `kind = "kafka"`.
    #[serde(default)]
    pub kafka: RawKafkaConfig,
}

/// `[bus.wal]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWalConfig {
    /// Bytes the WAL may hold on disk (records some consumer has not checkpointed). Past it,
    /// and when the disk is full, the doppler refuses batches with `RESOURCE_EXHAUSTED`;
    /// agents hold theirs and retry.
    #[serde(default = "default_wal_max_disk_bytes")]
    pub max_disk_bytes: u64,
    /// A new segment file starts once the current one holds this many bytes; released
    /// records leave the disk a whole segment at a time.
    #[serde(default = "default_wal_segment_bytes")]
    pub segment_bytes: u64,
    /// `fsync`: a batch is acknowledged once written and synced to disk (per group of
    /// batches), surviving a power loss. `flush`: once written to the operating system,
    /// surviving a crash of the process, synced every `sync_interval`.
    #[serde(default = "default_wal_durability")]
    pub durability: String,
    /// With `durability = "flush"`, time between syncs.
    #[serde(default = "default_wal_sync_interval")]
    pub sync_interval: String,
    /// Payload bytes of the latest records kept in memory, so the consumers that keep up
    /// (indexer, retention, live tail) share the producer's buffers instead of each reading
    /// the segment files. 0 turns the cache off.
    #[serde(default = "default_wal_read_cache_bytes")]
    pub read_cache_bytes: usize,
}

fn default_wal_max_disk_bytes() -> u64 {
    8 * 1024 * 1024 * 1024
}
fn default_wal_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_wal_read_cache_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_wal_durability() -> String {
    "fsync".to_owned()
}
fn default_wal_sync_interval() -> String {
    "200ms".to_owned()
}

/// When a WAL append counts as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalDurability {
    /// Synced to disk before the acknowledgement.
    Fsync,
    /// Written to the operating system before the acknowledgement, synced every interval.
    Flush(Duration),
}

fn default_max_record_bytes() -> usize {
    16 * 1024 * 1024
}

fn default_bus_kind() -> String {
    "wal".to_owned()
}

/// `[bus.kafka]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port…]`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Topic holding the batches; created with `partitions` partitions if missing.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Partitions of a topic Sluice creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of a topic Sluice creates.
    #[serde(default = "default_replication")]
    pub replication: i32,
    /// Consumer group names are `<group_prefix>-indexer` and `<group_prefix>-retention`.
    #[serde(default = "default_group_prefix")]
    pub group_prefix: String,
    /// Extra librdkafka client settings for producers and consumers alike
    /// (e.g. `"security.protocol" = "sasl_plaintext"`).
    #[serde(default)]
    pub client: std::collections::BTreeMap<String, String>,
}

fn default_brokers() -> String {
    "127.0.0.1:9092".to_owned()
}
fn default_topic() -> String {
    "sluice-envelopes".to_owned()
}
fn default_partitions() -> i32 {
    4
}
fn default_replication() -> i32 {
    1
}
fn default_group_prefix() -> String {
    "sluice".to_owned()
}

/// Validated `[bus]`.
#[derive(Debug, Clone)]
pub enum BusConfig {
    /// The embedded write-ahead log in this directory.
    Wal {
        /// WAL directory.
        dir: PathBuf,
        /// Largest record.
        max_record_bytes: usize,
        /// Disk budget.
        max_disk_bytes: u64,
        /// Segment size.
        segment_bytes: u64,
        /// When an append counts as stored.
        durability: WalDurability,
        /// Bytes of the in-memory cache of the latest records.
        read_cache_bytes: usize,
    },
    /// A Kafka topic.
    Kafka {
        /// Connection and topic settings.
        settings: RawKafkaConfig,
        /// Largest record.
        max_record_bytes: usize,
    },
}

impl BusConfig {
    /// Largest record the bus takes.
    pub fn max_record_bytes(&self) -> usize {
        match self {
            BusConfig::Wal {
                max_record_bytes, ..
            }
            | BusConfig::Kafka {
                max_record_bytes, ..
            } => *max_record_bytes,
        }
    }
}
impl RawBusConfig {
    /// Checks every field; the WAL defaults to `<data_dir>/wal`.
    pub fn validate(self, data_dir: &Path) -> Result<BusConfig, SluiceError> {
        let max_record_bytes = self.max_record_bytes;
        positive("bus.max_record_bytes", max_record_bytes)?;
        match self.kind.as_str() {
            "wal" => {
                let wal = self.wal;
                let durability = match wal.durability.as_str() {
                    "fsync" => WalDurability::Fsync,
                    "flush" => WalDurability::Flush(parse_duration(
                        "bus.wal.sync_interval",
                        &wal.sync_interval,
                    )?),
                    other => {
                        return Err(SluiceError::invalid(format!(
                            "bus.wal.durability: unknown setting {other:?}; expected \"fsync\" or \"flush\""
                        )));
                    }
                };
                if wal.segment_bytes < max_record_bytes as u64 {
                    return Err(SluiceError::invalid(format!(
                        "bus.wal.segment_bytes ({}) must be at least bus.max_record_bytes ({max_record_bytes})",
                        wal.segment_bytes
                    )));
                }
                if wal.max_disk_bytes < 2 * wal.segment_bytes {
                    return Err(SluiceError::invalid(format!(
                        "bus.wal.max_disk_bytes ({}) must be at least twice bus.wal.segment_bytes ({})",
                        wal.max_disk_bytes, wal.segment_bytes
                    )));
                }
                Ok(BusConfig::Wal {
                    dir: self.wal_dir.unwrap_or_else(|| data_dir.join("wal")),
                    max_record_bytes,
                    max_disk_bytes: wal.max_disk_bytes,
                    segment_bytes: wal.segment_bytes,
                    durability,
                    read_cache_bytes: wal.read_cache_bytes,
                })
            }
            "kafka" => {
                let kafka = self.kafka;
                if kafka.brokers.trim().is_empty() || kafka.topic.trim().is_empty() {
                    return Err(SluiceError::invalid(
                        "bus.kafka: brokers and topic must not be empty",
                    ));
                }
                if kafka.partitions < 1 || kafka.replication < 1 {
                    return Err(SluiceError::invalid(
                        "bus.kafka: partitions and replication must be at least 1",
                    ));
                }
                if kafka.client.contains_key("message.max.bytes") {
                    return Err(SluiceError::invalid(
                        "bus.kafka.client.\"message.max.bytes\": set bus.max_record_bytes instead, so the limits along the path stay consistent",
                    ));
                }
                Ok(BusConfig::Kafka {
                    settings: kafka,
                    max_record_bytes,
                })
            }
            other => Err(SluiceError::invalid(format!(
                "bus.kind: unknown bus {other:?}; expected \"wal\" or \"kafka\""
            ))),
        }
    }
}

sluice_common::default_from_empty_table!(RawBusConfig, RawWalConfig, RawKafkaConfig);
