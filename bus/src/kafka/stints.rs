//! The stint log, `<topic>-stints`: which member of a consumer group read which partition from
//! where (see the module above for why it is needed), kept bounded.
//!
//! What a member needs from the log is small: for each partition, its own latest stint and the
//! first stint of another member after it (or, when it has none, the partition's first stint).
//! [`StintState`] is that, folded from the log in order. The log holds two kinds of record:
//!
//! - a stint, under a key of its own (`stint/<group>/<partition>/<member>/<unique>`), so log
//!   compaction never drops one that is still needed;
//! - a snapshot (key `snapshot/<group>`): the group's state folded from the log up to an
//!   offset, `covers`.
//!
//! A reader folds the newest snapshot it finds with the stints after `covers`. A member that
//! has folded [`SNAPSHOT_AFTER`] stints or more on a read writes a snapshot, then moves the
//! group's read pointer (the committed offset of `<group>-stint-reader` on the log) to just
//! after `covers`, then writes tombstones for the stints the snapshot covers. So a read costs
//! at most the records since the last snapshot, however many rebalances came before, and a
//! compacted log (`cleanup.policy=compact`, how Sluice creates it) keeps only each group's
//! newest snapshot and the stints after it. The order makes every step safe to interrupt: a
//! snapshot is a function of the log before it, so two members writing one at once both write
//! the truth; the pointer only moves to a snapshot already written; a stint is tombstoned only
//! once a snapshot covering it is.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{client_config, storage};
use crate::BusError;
use crate::config::RawKafkaConfig;

/// A read that folds this many stints or more writes a snapshot.
pub const SNAPSHOT_AFTER: usize = 64;

/// A member's record of taking over a partition: it reads `partition` from `start` on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stint {
    /// The consumer group.
    pub group: String,
    /// The partition of the data topic.
    pub partition: i32,
    /// The member.
    pub member: String,
    /// The first offset it reads.
    pub start: u64,
}

/// A member's place in one partition's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStints {
    /// Start of its latest stint.
    pub latest: u64,
    /// Start of the first stint of another member after that one.
    pub taken_over_at: Option<u64>,
}

/// One partition's history, as much of it as anyone needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStints {
    /// Start of the partition's first stint.
    pub first: Option<u64>,
    /// Each member that has had a stint.
    pub members: BTreeMap<String, MemberStints>,
}

/// A group's stints folded in log order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StintState {
    /// By partition.
    pub partitions: BTreeMap<i32, PartitionStints>,
}

impl StintState {
    /// Folds in the next stint of the log.
    pub fn apply(&mut self, stint: &Stint) {
        let partition = self.partitions.entry(stint.partition).or_default();
        partition.first.get_or_insert(stint.start);
        for (member, history) in partition.members.iter_mut() {
            if *member != stint.member && history.taken_over_at.is_none() {
                history.taken_over_at = Some(stint.start);
            }
        }
        partition.members.insert(
            stint.member.clone(),
            MemberStints {
                latest: stint.start,
                taken_over_at: None,
            },
        );
    }

    /// For `member` on `partition`: the start of its latest stint, and the start of the first
    /// stint of another member after it (the partition's first stint when it has none).
    pub fn view(&self, partition: i32, member: &str) -> (Option<u64>, Option<u64>) {
        let Some(history) = self.partitions.get(&partition) else {
            return (None, None);
        };
        match history.members.get(member) {
            Some(own) => (Some(own.latest), own.taken_over_at),
            None => (None, history.first),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Snapshot {
    group: String,
    /// The last log offset folded in.
    covers: i64,
    state: StintState,
}

/// A record of the log.
#[derive(Debug)]
enum Record {
    Snapshot(Snapshot),
    Stint(Stint),
}

impl Record {
    /// A snapshot has fields no stint has, so it is tried first. (Not a serde `untagged`
    /// enum: that cannot read the integer keys of a snapshot's maps.)
    fn parse(payload: &[u8]) -> Option<Record> {
        serde_json::from_slice(payload)
            .map(Record::Snapshot)
            .or_else(|_| serde_json::from_slice(payload).map(Record::Stint))
            .ok()
    }
}

/// What a read of the log found.
#[derive(Debug)]
pub struct Read {
    /// The group's state.
    pub state: StintState,
    /// Records read.
    pub records_read: usize,
    /// Whether this read wrote a snapshot.
    pub snapshotted: bool,
}

/// One group's view of the stint log.
pub struct StintLog<'a> {
    /// The log's topic.
    pub topic: &'a str,
    /// The group.
    pub group: &'a str,
    /// Connection settings.
    pub settings: &'a RawKafkaConfig,
    /// Writes stints, snapshots and tombstones.
    pub producer: &'a BaseProducer,
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

impl StintLog<'_> {
    /// Records stints, and returns once the broker has them.
    pub fn write(&self, stints: &[Stint]) -> Result<(), BusError> {
        for stint in stints {
            let payload =
                serde_json::to_vec(stint).map_err(|error| BusError::Storage(format!("{error}")))?;
            let key = format!(
                "stint/{}/{}/{}/{}-{}",
                stint.group,
                stint.partition,
                stint.member,
                sluice_common::time::now_nanos(),
                UNIQUE.fetch_add(1, Ordering::Relaxed)
            );
            self.send(&key, Some(&payload))?;
        }
        self.flush()
    }

    fn send(&self, key: &str, payload: Option<&[u8]>) -> Result<(), BusError> {
        let mut record = BaseRecord::<str, [u8]>::to(self.topic).key(key);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        self.producer.send(record).map_err(|(error, _)| {
            BusError::Storage(format!("failed to write the stint log: {error}"))
        })
    }

    fn flush(&self) -> Result<(), BusError> {
        self.producer
            .flush(Duration::from_secs(10))
            .map_err(storage("failed to write the stint log"))
    }

    /// Reads the group's state: the newest snapshot after the group's read pointer, folded
    /// with the stints after it. Writes a snapshot when the read folded many stints.
    pub fn read(&self) -> Result<Read, BusError> {
        let reader: BaseConsumer = client_config(self.settings)
            .set("group.id", format!("{}-stint-reader", self.group))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(storage("failed to create the stint log reader"))?;
        let result = self.read_with(&reader);
        // Closing can block; the reader is small, so close it off this thread.
        let _ = std::thread::Builder::new()
            .name("sluice-kafka-close".to_owned())
            .spawn(move || drop(reader));
        result
    }

    fn read_with(&self, reader: &BaseConsumer) -> Result<Read, BusError> {
        let (low, high) = reader
            .fetch_watermarks(self.topic, 0, Duration::from_secs(10))
            .map_err(storage("failed to read the stint log watermarks"))?;
        let mut pointer = TopicPartitionList::new();
        pointer.add_partition(self.topic, 0);
        let committed = reader
            .committed_offsets(pointer, Duration::from_secs(10))
            .map_err(storage("failed to read the stint log's read pointer"))?;
        let start = match committed
            .find_partition(self.topic, 0)
            .map(|element| element.offset())
        {
            Some(Offset::Offset(offset)) => offset.clamp(low, high),
            _ => low,
        };
        let mut snapshot: Option<Snapshot> = None;
        let mut stints: Vec<(i64, String, Stint)> = Vec::new();
        let mut records_read = 0;
        if start < high {
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(self.topic, 0, Offset::Offset(start))
                .map_err(storage("failed to build the stint log assignment"))?;
            reader
                .assign(&list)
                .map_err(storage("failed to assign the stint log"))?;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut next = start;
            while next < high {
                if std::time::Instant::now() > deadline {
                    return Err(BusError::Unavailable(format!(
                        "timed out reading the stint log at offset {next} of {high}"
                    )));
                }
                match reader.poll(Duration::from_millis(500)) {
                    Some(Ok(message)) => {
                        next = message.offset() + 1;
                        records_read += 1;
                        // Tombstones have no payload; other groups' records are not ours.
                        match message.payload().and_then(Record::parse) {
                            Some(Record::Snapshot(found))
                                if found.group == self.group
                                    && snapshot
                                        .as_ref()
                                        .is_none_or(|newest| found.covers > newest.covers) =>
                            {
                                snapshot = Some(found);
                            }
                            Some(Record::Stint(stint)) if stint.group == self.group => {
                                let key = message
                                    .key()
                                    .map(|key| String::from_utf8_lossy(key).into_owned())
                                    .unwrap_or_default();
                                stints.push((message.offset(), key, stint));
                            }
                            _ => {}
                        }
                    }
                    Some(Err(error)) => {
                        return Err(BusError::Unavailable(format!(
                            "failed to read the stint log: {error}"
                        )));
                    }
                    None => {}
                }
            }
        }
        let covered = snapshot.as_ref().map_or(-1, |snapshot| snapshot.covers);
        let mut state = snapshot.map(|snapshot| snapshot.state).unwrap_or_default();
        let folded: Vec<(i64, String)> = stints
            .into_iter()
            .filter(|(offset, _, _)| *offset > covered)
            .map(|(offset, key, stint)| {
                state.apply(&stint);
                (offset, key)
            })
            .collect();
        let mut snapshotted = false;
        if folded.len() >= SNAPSHOT_AFTER {
            // Not being able to snapshot costs only a longer read next time.
            match self.snapshot(reader, &state, high - 1, &folded) {
                Ok(()) => snapshotted = true,
                Err(error) => {
                    warn!(group = %self.group, %error, "failed to snapshot the stint log")
                }
            }
        }
        debug!(group = %self.group, from = start, to = high, records_read, folded = folded.len(), snapshotted, "read the stint log");
        Ok(Read {
            state,
            records_read,
            snapshotted,
        })
    }

    fn snapshot(
        &self,
        reader: &BaseConsumer,
        state: &StintState,
        covers: i64,
        folded: &[(i64, String)],
    ) -> Result<(), BusError> {
        let snapshot = Snapshot {
            group: self.group.to_owned(),
            covers,
            state: state.clone(),
        };
        let payload =
            serde_json::to_vec(&snapshot).map_err(|error| BusError::Storage(format!("{error}")))?;
        self.send(&format!("snapshot/{}", self.group), Some(&payload))?;
        self.flush()?;
        let mut pointer = TopicPartitionList::new();
        pointer
            .add_partition_offset(self.topic, 0, Offset::Offset(covers + 1))
            .map_err(storage("failed to build the stint log's read pointer"))?;
        reader
            .commit(&pointer, CommitMode::Sync)
            .map_err(storage("failed to move the stint log's read pointer"))?;
        for (_, key) in folded {
            if key.starts_with("stint/") {
                self.send(key, None)?;
            }
        }
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fold the log was read with before snapshots: the whole log, in order.
    fn view_by_scan(log: &[Stint], partition: i32, member: &str) -> (Option<u64>, Option<u64>) {
        let mut taken_over_at = None;
        let mut my_start = None;
        for stint in log.iter().filter(|stint| stint.partition == partition) {
            if stint.member == member {
                taken_over_at = None;
                my_start = Some(stint.start);
            } else if taken_over_at.is_none() {
                taken_over_at = Some(stint.start);
            }
        }
        (my_start, taken_over_at)
    }

    /// Folding, with a snapshot taken (and serialized) anywhere along the way, answers as the
    /// scan of the whole log does, for every member and partition, on random histories.
    #[test]
    fn folded_state_answers_as_the_whole_log_does_with_snapshots_anywhere() {
        let mut seed: u64 = 0x5eed;
        let mut random = |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for _ in 0..300 {
            let length = random(40) as usize;
            let log: Vec<Stint> = (0..length)
                .map(|_| Stint {
                    group: "g".to_owned(),
                    partition: random(3) as i32,
                    member: format!("m{}", random(4)),
                    start: random(1_000),
                })
                .collect();
            let cut = random(length as u64 + 1) as usize;
            let mut state = StintState::default();
            for stint in &log[..cut] {
                state.apply(stint);
            }
            let text = serde_json::to_vec(&state).expect("a state serialises");
            let mut state: StintState =
                serde_json::from_slice(&text).expect("a serialised state parses");
            for stint in &log[cut..] {
                state.apply(stint);
            }
            for partition in 0..3 {
                for member in ["m0", "m1", "m2", "m3", "m4"] {
                    assert_eq!(
                        state.view(partition, member),
                        view_by_scan(&log, partition, member),
                        "{log:?} cut at {cut}, partition {partition}, {member}"
                    );
                }
            }
        }
    }

    #[test]
    fn records_of_both_kinds_and_of_the_old_format_parse() {
        let stint = br#"{"group":"g","partition":1,"member":"a","start":5}"#;
        assert!(matches!(Record::parse(stint), Some(Record::Stint(_))));
        let mut state = StintState::default();
        state.apply(&serde_json::from_slice(stint).expect("a stint parses"));
        let snapshot = serde_json::to_vec(&Snapshot {
            group: "g".to_owned(),
            covers: 9,
            state: state.clone(),
        })
        .expect("a snapshot serialises");
        match Record::parse(&snapshot) {
            Some(Record::Snapshot(parsed)) => assert_eq!(parsed.state, state),
            other => panic!("{other:?}"),
        }
    }
}
