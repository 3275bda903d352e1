//! Date histograms of matching documents: counts per fixed interval of the `timestamp` fast
//! field, buckets aligned to multiples of the interval since the epoch (Elasticsearch's
//! `fixed_interval`). Empty buckets are left out.

use std::collections::BTreeMap;

use serde::Serialize;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::{DocId, Score, SegmentOrdinal, SegmentReader};

/// Most buckets one answer may hold; a finer interval over a wider range is refused.
pub const MAX_BUCKETS: usize = 10_000;

/// One bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Start of the bucket, ns since the epoch (a multiple of the interval).
    pub start_ns: i64,
    /// Matching documents in `[start_ns, start_ns + interval)`.
    pub count: u64,
}

/// Bucket counts by bucket start.
pub type Counts = BTreeMap<i64, u64>;

/// Collects a histogram of `timestamp` with buckets `interval_ns` wide.
#[derive(Debug, Clone, Copy)]
pub struct Histogram {
    /// Bucket width in ns (positive).
    pub interval_ns: i64,
}

/// The per-segment half of [`Histogram`].
pub struct SegmentHistogram {
    column: Column<i64>,
    interval_ns: i64,
    counts: Counts,
    // Documents arrive roughly in time order: count runs of one bucket before touching the map.
    run_bucket: i64,
    run_count: u64,
}

impl Collector for Histogram {
    type Fruit = Counts;
    type Child = SegmentHistogram;

    fn for_segment(
        &self,
        _segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<SegmentHistogram> {
        Ok(SegmentHistogram {
            column: reader.fast_fields().i64("timestamp")?,
            interval_ns: self.interval_ns,
            counts: Counts::new(),
            run_bucket: i64::MIN,
            run_count: 0,
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Counts>) -> tantivy::Result<Counts> {
        let mut merged = Counts::new();
        for fruit in fruits {
            merge_into(&mut merged, fruit);
        }
        Ok(merged)
    }
}

impl SegmentCollector for SegmentHistogram {
    type Fruit = Counts;

    fn collect(&mut self, doc: DocId, _score: Score) {
        let Some(timestamp) = self.column.first(doc) else {
            return;
        };
        let bucket = timestamp.div_euclid(self.interval_ns) * self.interval_ns;
        if bucket != self.run_bucket {
            if self.run_count > 0 {
                *self.counts.entry(self.run_bucket).or_default() += self.run_count;
            }
            self.run_bucket = bucket;
            self.run_count = 0;
        }
        self.run_count += 1;
    }

    fn harvest(mut self) -> Counts {
        if self.run_count > 0 {
            *self.counts.entry(self.run_bucket).or_default() += self.run_count;
        }
        self.counts
    }
}

/// Adds `from`'s counts to `into`.
pub fn merge_into(into: &mut Counts, from: Counts) {
    for (start, count) in from {
        *into.entry(start).or_default() += count;
    }
}

/// The buckets of `counts` in time order.
pub fn buckets(counts: &Counts) -> Vec<Bucket> {
    counts
        .iter()
        .map(|(&start_ns, &count)| Bucket { start_ns, count })
        .collect()
}
