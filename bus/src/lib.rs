//! The broker seam between dopplers and the consumers (indexer, retention).
//!
//! Two implementations honour one contract: the embedded write-ahead log ([`wal::WalBus`]) that
//! `sluice up` uses, and Kafka ([`kafka::KafkaBus`]) for roles in separate processes. The contract:
//!
//! - [`Bus::append`] returns only once the record will survive a crash of the process: a
//!   doppler acknowledges a batch to its agent only after this.
//! - Delivery is at least once. A consumer owns its position: it stores the [`Positions`] it
//!   has consumed up to *with its output* (a Tantivy commit payload, an archive checkpoint),
//!   and on start it [`Consumer::seek`]s there. That is what makes its output exactly once.
//! - [`Consumer::checkpoint`] tells the bus that everything before a position is durable
//!   downstream, so the bus may forget it. It is never the source of truth for resuming.
//!
//! - A [`Reader`] belongs to no group: it reads from any position, holds nothing back and
//!   commits nothing. Live tails read the bus this way; when the bus forgot records before a
//!   reader reached them, the reader says so ([`ReadEvent::Gap`]) instead of skipping silently.
//!
//! Each record is one `sluice.v1.AgentBatch` protobuf (see `proto/sluice/v1/doppler.proto`).

pub mod config;
pub mod dedup;
pub mod kafka;
pub mod metrics;
pub mod wal;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_common::{ErrorKind, SluiceError};

/// A partition of the bus. The WAL has one (partition 0).
pub type Partition = u32;

/// For each partition, the offset of the next record to read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Positions(pub BTreeMap<Partition, u64>);

impl Positions {
    /// The next offset to read in `partition` (0 when never read).
    pub fn next_offset(&self, partition: Partition) -> u64 {
        self.0.get(&partition).copied().unwrap_or(0)
    }

    /// Records that `record` has been consumed.
    pub fn advance_past(&mut self, record: &BusRecord) {
        let next = self.0.entry(record.partition).or_insert(0);
        *next = (*next).max(record.offset + 1);
    }

    /// Whether `record` lies before these positions, i.e. was already consumed.
    pub fn contains(&self, record: &BusRecord) -> bool {
        record.offset < self.next_offset(record.partition)
    }

    /// The JSON form stored in commit payloads and checkpoints.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a map of integers always serialises")
    }

    /// Parses [`Positions::to_json`].
    pub fn from_json(text: &str) -> Result<Positions, SluiceError> {
        serde_json::from_str(text).map_err(|error| {
            SluiceError::internal(format!("invalid bus positions {text:?}: {error}"))
        })
    }

    /// For each partition, the smaller of the two positions (a partition missing in either
    /// counts as offset 0).
    pub fn min(&self, other: &Positions) -> Positions {
        let mut merged = BTreeMap::new();
        for partition in self.0.keys().chain(other.0.keys()) {
            merged.insert(
                *partition,
                self.next_offset(*partition)
                    .min(other.next_offset(*partition)),
            );
        }
        Positions(merged)
    }
}

/// One record read from the bus.
#[derive(Debug, Clone)]
pub struct BusRecord {
    /// Partition it was read from.
    pub partition: Partition,
    /// Offset within the partition.
    pub offset: u64,
    /// The encoded `AgentBatch`.
    pub payload: Bytes,
}

/// What a consumer reads: records, and instructions that come from changes of ownership.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// A record to process.
    Record(BusRecord),
    /// Partition ownership moved (group rebalancing): the consumer must drop whatever it
    /// holds of `partition` at offsets `to` and later, durable or not, because another member
    /// of the group holds (or will read) those records. Records of the partition that arrive
    /// after this event start at `to` or later.
    Rewind {
        /// The partition.
        partition: Partition,
        /// The first offset to drop.
        to: u64,
    },
}

/// What a [`Reader`] returns.
#[derive(Debug, Clone)]
pub enum ReadEvent {
    /// The next record of its partition.
    Record(BusRecord),
    /// Records `from..to` of `partition` were forgotten by the bus (released by every
    /// consumer group, or deleted by the broker's retention) before the reader reached them;
    /// the next record of the partition is at `to`.
    Gap {
        /// The partition.
        partition: Partition,
        /// The first offset missed.
        from: u64,
        /// The first offset read again.
        to: u64,
    },
}

/// Errors of the bus.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The underlying storage failed; the operation may be retried.
    #[error("bus storage failed: {0}")]
    Storage(String),
    /// The bus is shutting down or was never opened correctly.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// A caller error, such as an unknown consumer group.
    #[error("invalid bus request: {0}")]
    Invalid(String),
    /// The bus has no room now (its disk budget is used up or its disk is full); retrying
    /// once consumers catch up, or space is freed, succeeds.
    #[error("bus full: {0}")]
    Full(String),
    /// The record is larger than the bus takes; sending it again cannot succeed.
    #[error("record too large for the bus: {0}")]
    TooLarge(String),
}

impl BusError {
    /// The error's kind in Sluice's taxonomy.
    pub fn kind(&self) -> ErrorKind {
        match self {
            BusError::Storage(_) | BusError::Unavailable(_) => ErrorKind::Unavailable,
            BusError::Invalid(_) => ErrorKind::InvalidArgument,
            BusError::TooLarge(_) => ErrorKind::TooLarge,
            BusError::Full(_) => ErrorKind::ResourceExhausted,
        }
    }
}

impl From<BusError> for SluiceError {
    fn from(error: BusError) -> SluiceError {
        SluiceError::new(error.kind(), error.to_string())
    }
}

/// How a consumer takes part in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Members share the partitions and hand them over as members come and go (Kafka's group
    /// protocol): several indexers.
    Shared,
    /// The only consumer of its group reads every partition, with no group membership to
    /// coordinate: a restart after a crash resumes at once. `sluice up`, and retention.
    Sole,
}

/// A durable, partitioned log of batches.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Appends one record. `key` chooses the partition where there are several (records with
    /// one key keep their order). Returns once the record survives a process crash.
    async fn append(&self, key: &str, payload: Bytes) -> Result<(), BusError>;

    /// Opens a consumer for `group`. Each group sees every record. With [`Sharing::Shared`]
    /// the members of one group share the partitions, and `member` names this member durably
    /// (it survives restarts with the member's data): the bus uses it to tell a member's own
    /// earlier work from another's. With [`Sharing::Sole`] the consumer reads every partition
    /// and is the group's only member.
    async fn subscribe(
        &self,
        group: &str,
        member: &str,
        sharing: Sharing,
    ) -> Result<Box<dyn Consumer>, BusError>;

    /// A short name for logs and metrics: `wal` or `kafka`.
    fn kind(&self) -> &'static str;

    /// Opens a reader outside every consumer group, reading each partition from its offset in
    /// `from` (a partition `from` does not name, from its beginning). It holds nothing back:
    /// what the groups release goes, and the reader is told ([`ReadEvent::Gap`]).
    async fn reader(&self, from: &Positions) -> Result<Box<dyn Reader>, BusError> {
        let _ = from;
        Err(BusError::Unavailable(format!(
            "the {} bus has no readers",
            self.kind()
        )))
    }

    /// For every partition, the offset the next appended record will get.
    async fn end_positions(&self) -> Result<Positions, BusError> {
        Err(BusError::Unavailable(format!(
            "the {} bus does not report its end",
            self.kind()
        )))
    }

    /// The positions `group` has checkpointed (everything before them is durable in that
    /// group's data); partitions it never checkpointed are left out.
    async fn group_positions(&self, group: &str) -> Result<Positions, BusError> {
        let _ = group;
        Err(BusError::Unavailable(format!(
            "the {} bus does not report group positions",
            self.kind()
        )))
    }
}

/// Reads the bus for a live tail (see [`Bus::reader`]).
#[async_trait]
pub trait Reader: Send {
    /// Returns up to `max_records` events in order, waiting up to `max_wait` for the first;
    /// an empty answer means nothing arrived in time. Cancel-safe like [`Consumer::poll`].
    async fn poll(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<ReadEvent>, BusError>;
}

/// Reads a bus on behalf of one consumer group.
#[async_trait]
pub trait Consumer: Send {
    /// Tells the consumer the positions held by the member's durable data. Reading continues
    /// from there (partitions not named start at the group's committed offset, else at their
    /// beginning); with several members, the bus decides which partitions this one reads.
    async fn seek(&mut self, positions: &Positions) -> Result<(), BusError>;

    /// Returns up to `max_records` events in order, waiting up to `max_wait` for the first; an
    /// empty answer means nothing arrived in time.
    ///
    /// Cancel-safe: a poll dropped before it returns (another `select!` branch won) loses
    /// nothing; whatever it had already taken comes from the next poll.
    async fn poll(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<BusEvent>, BusError>;

    /// Everything before `positions` is durable downstream; the bus may release it (and
    /// Kafka commits it as the group's offset for the partitions this member owns).
    async fn checkpoint(&mut self, positions: &Positions) -> Result<(), BusError>;

    /// Leaves the consumer group, so the member's partitions move to the others at once
    /// instead of after the group notices it is gone. Bounded in time.
    async fn close(self: Box<Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: Partition, offset: u64) -> BusRecord {
        BusRecord {
            partition,
            offset,
            payload: Bytes::new(),
        }
    }

    #[test]
    fn positions_advance_and_round_trip_through_json() {
        let mut positions = Positions::default();
        assert!(!positions.contains(&record(0, 0)));
        positions.advance_past(&record(0, 4));
        positions.advance_past(&record(0, 2));
        positions.advance_past(&record(3, 9));
        assert_eq!(positions.next_offset(0), 5);
        assert!(positions.contains(&record(0, 4)));
        assert!(!positions.contains(&record(0, 5)));
        assert!(!positions.contains(&record(1, 0)));
        let parsed = Positions::from_json(&positions.to_json()).expect("round trip");
        assert_eq!(parsed, positions);
        let other = Positions([(0, 3), (1, 7)].into_iter().collect());
        assert_eq!(
            positions.min(&other),
            Positions([(0, 3), (1, 0), (3, 0)].into_iter().collect())
        );
    }
}
