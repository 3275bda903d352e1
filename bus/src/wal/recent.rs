//! The records the writer appended last, kept in memory for the readers at the head of the
//! log.
//!
//! Every consumer that keeps up (the indexer, retention, the query API's live tail) reads
//! the records it was just woken for. Read from the segment file, each reader pays a system
//! call and a fresh allocation per record, and the three copies of one batch fill memory with
//! freshly zeroed pages. Served from here, a record is the producer's own buffer, shared by
//! reference: no copy, no read, no new memory. A reader that falls further behind than the
//! cache holds reads the segment files as before; the cursor is told where the cache left
//! it, so it does not scan the segment from its start.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;

/// One appended record and where it lies on disk.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its offset.
    pub offset: u64,
    /// The first offset of the segment it was written to.
    pub segment_first: u64,
    /// Where the record ends in that segment (the next record's position).
    pub end: u64,
    /// The payload, shared with the producer.
    pub payload: Bytes,
}

/// The last records appended, up to a byte budget.
pub struct Recent {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Contiguous offsets, oldest first.
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl Recent {
    /// A cache holding up to `capacity` payload bytes (0 turns it off).
    pub fn new(capacity: usize) -> Recent {
        Recent {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds records just written, evicting the oldest past the budget. Offsets must follow
    /// on from the last record added; a break in them starts the cache afresh.
    pub fn push(&self, entries: Vec<Entry>) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        for entry in entries {
            if inner
                .entries
                .back()
                .is_some_and(|last| last.offset + 1 != entry.offset)
            {
                inner.entries.clear();
                inner.bytes = 0;
            }
            inner.bytes += entry.payload.len();
            inner.entries.push_back(entry);
        }
        while inner.bytes > self.capacity {
            let Some(oldest) = inner.entries.pop_front() else {
                break;
            };
            inner.bytes -= oldest.payload.len();
        }
    }

    /// The records from `from` up to (not including) `below`, at most `max_records` and
    /// stopping once past `max_bytes`, if the cache still holds `from`; `None` sends the
    /// reader to disk.
    pub fn read(
        &self,
        from: u64,
        below: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Option<Vec<Entry>> {
        if from >= below || max_records == 0 {
            return None;
        }
        let inner = self.lock();
        let first = inner.entries.front()?.offset;
        if from < first {
            return None;
        }
        let start = usize::try_from(from - first).ok()?;
        if start >= inner.entries.len() {
            return None;
        }
        let mut taken = Vec::new();
        let mut bytes = 0;
        for entry in inner.entries.range(start..) {
            if entry.offset >= below || taken.len() >= max_records || bytes >= max_bytes {
                break;
            }
            bytes += entry.payload.len();
            taken.push(entry.clone());
        }
        Some(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64, length: usize) -> Entry {
        Entry {
            offset,
            segment_first: 0,
            end: offset * 100,
            payload: Bytes::from(vec![0_u8; length]),
        }
    }

    fn offsets(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|entry| entry.offset).collect()
    }

    #[test]
    fn reads_what_it_holds_below_the_visible_end_and_sends_older_reads_to_disk() {
        let recent = Recent::new(300);
        recent.push((0..5).map(|offset| entry(offset, 100)).collect());
        // Holds 2, 3, 4 (300 bytes); 0 and 1 were evicted.
        assert!(recent.read(1, 5, 10, 1 << 20).is_none());
        assert_eq!(
            offsets(&recent.read(2, 5, 10, 1 << 20).expect("held")),
            [2, 3, 4]
        );
        // Only what readers may see.
        assert_eq!(
            offsets(&recent.read(2, 4, 10, 1 << 20).expect("held")),
            [2, 3]
        );
        assert!(recent.read(4, 4, 10, 1 << 20).is_none());
        // Past the last record: nothing held yet.
        assert!(recent.read(5, 9, 10, 1 << 20).is_none());
        // Record and byte limits.
        assert_eq!(offsets(&recent.read(2, 5, 1, 1 << 20).expect("held")), [2]);
        assert_eq!(offsets(&recent.read(2, 5, 10, 150).expect("held")), [2, 3]);
    }

    #[test]
    fn a_break_in_the_offsets_starts_afresh_and_zero_capacity_holds_nothing() {
        let recent = Recent::new(1_000);
        recent.push(vec![entry(0, 10), entry(1, 10)]);
        recent.push(vec![entry(7, 10)]);
        assert!(recent.read(0, 8, 10, 1 << 20).is_none());
        assert_eq!(offsets(&recent.read(7, 8, 10, 1 << 20).expect("held")), [7]);

        let off = Recent::new(0);
        off.push(vec![entry(0, 10)]);
        assert!(off.read(0, 1, 10, 1 << 20).is_none());
    }
}
