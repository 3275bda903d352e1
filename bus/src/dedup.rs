//! Dropping batches that reach the bus twice.
//!
//! An agent retries a batch on another doppler when it did not hear back, and the first doppler
//! may have appended it all the same (it crashed after the append, or the answer was lost). Both
//! copies carry the same `(agent_id, sequence)`, and since the doppler keys a record by its
//! first envelope's source_id, both land in the same partition: the member that reads the
//! partition sees both. [`Deduplicator`] remembers the batches it has let through, most recent
//! first, and says when one comes again.
//!
//! The memory is bounded (`capacity` batches, oldest forgotten first) and lives in the
//! consumer's process: a copy arriving after more than `capacity` other batches, or after the
//! consumer restarted between the two copies, is not caught. When a partition is rewound the
//! batches it let through from that offset on are forgotten, so reading them again later is
//! not mistaken for a duplicate.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::{BusRecord, Partition};

/// Remembers recent batches by `(agent_id, sequence)`.
pub struct Deduplicator {
    capacity: usize,
    seen: HashMap<(String, u64), (Partition, u64)>,
    by_position: BTreeMap<(Partition, u64), Vec<(String, u64)>>,
    order: VecDeque<(Partition, u64)>,
}

impl Deduplicator {
    /// Remembers up to `capacity` batches.
    pub fn new(capacity: usize) -> Deduplicator {
        Deduplicator {
            capacity: capacity.max(1),
            seen: HashMap::new(),
            by_position: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether the batch `(agent_id, sequence)` in `record` is new; if so it is remembered.
    /// Batches without an agent id (not sent by an agent) are always new.
    pub fn first_time(&mut self, agent_id: &str, sequence: u64, record: &BusRecord) -> bool {
        if agent_id.is_empty() {
            return true;
        }
        let key = (agent_id.to_owned(), sequence);
        if self.seen.contains_key(&key) {
            return false;
        }
        let position = (record.partition, record.offset);
        self.seen.insert(key.clone(), position);
        self.by_position.entry(position).or_default().push(key);
        self.order.push_back(position);
        while self.seen.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(keys) = self.by_position.remove(&oldest) {
                for key in keys {
                    self.seen.remove(&key);
                }
            }
        }
        true
    }

    /// Forgets the batches let through from `partition` at offset `to` or later.
    pub fn rewind(&mut self, partition: Partition, to: u64) {
        let positions: Vec<(Partition, u64)> = self
            .by_position
            .range((partition, to)..=(partition, u64::MAX))
            .map(|(position, _)| *position)
            .collect();
        for position in positions {
            if let Some(keys) = self.by_position.remove(&position) {
                for key in keys {
                    self.seen.remove(&key);
                }
            }
        }
    }

    /// Batches remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn at(partition: Partition, offset: u64) -> BusRecord {
        BusRecord {
            partition,
            offset,
            payload: Bytes::new(),
        }
    }

    #[test]
    fn a_second_copy_is_caught_and_rewinds_and_capacity_forget() {
        let mut dedup = Deduplicator::new(3);
        assert!(dedup.first_time("agent-a", 1, &at(0, 10)));
        assert!(
            !dedup.first_time("agent-a", 1, &at(0, 11)),
            "the retried copy"
        );
        assert!(
            dedup.first_time("agent-b", 1, &at(0, 12)),
            "another agent's sequence 1"
        );
        assert!(dedup.first_time("", 1, &at(0, 13)));
        assert!(
            dedup.first_time("", 1, &at(0, 14)),
            "no agent id: never a duplicate"
        );

        // A rewind of partition 0 to offset 12 forgets agent-b's batch, not agent-a's.
        dedup.rewind(0, 12);
        assert!(dedup.first_time("agent-b", 1, &at(0, 12)));
        assert!(!dedup.first_time("agent-a", 1, &at(0, 20)));
        assert_eq!(dedup.len(), 2);

        // Over capacity, the oldest batch is forgotten first.
        assert!(dedup.first_time("agent-c", 1, &at(1, 0)));
        assert!(dedup.first_time("agent-c", 2, &at(1, 1)));
        assert_eq!(dedup.len(), 3);
        assert!(
            dedup.first_time("agent-a", 1, &at(0, 30)),
            "forgotten: oldest"
        );
    }
}
