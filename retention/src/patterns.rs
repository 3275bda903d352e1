//! The `pattern_counts` table: the lines of each pattern counted per hour as they are
//! archived, with the template the doppler described (the `patterns` view sums them up).
//!
//! A flush writes one row per pattern and hour it saw, in the same commit as the lines, so
//! the counts are exactly once like the lines. Templates come with the bus records (once
//! per doppler start and hour, and when they change); a flush that saw the lines of a
//! pattern but not its description writes a null template, which the view fills from the
//! pattern's other rows.

use std::collections::{BTreeMap, HashMap};

use datafusion::arrow::error::ArrowError;
use sluice_common::time::Hour;
use sluice_proto::v1::PatternTemplate;

use crate::tables::{Cell, Table, TableBuffer};

/// Templates remembered at most; past it they are forgotten (they are described again
/// within the hour).
const MAX_TEMPLATES: usize = 200_000;

#[derive(Debug, Default)]
struct Known {
    template: Option<String>,
    merged_into: Option<u64>,
}

#[derive(Debug)]
struct Row {
    source_id: String,
    first: i64,
    last: i64,
    count: u64,
}

/// Counts per pattern and hour since the last flush, and the templates seen.
#[derive(Debug, Default)]
pub struct PatternCounter {
    known: HashMap<u64, Known>,
    rows: BTreeMap<(Hour, u64), Row>,
}

impl PatternCounter {
    /// Takes what a batch described.
    pub fn learn(&mut self, templates: &[PatternTemplate]) {
        if self.known.len() > MAX_TEMPLATES {
            self.known.clear();
        }
        for template in templates {
            self.known.entry(template.id).or_default().template =
                Some(template.template.clone());
            for &old in &template.merged {
                if old != template.id {
                    self.known.entry(old).or_default().merged_into = Some(template.id);
                }
            }
        }
    }

    /// Counts one line of pattern `id`.
    pub fn count(&mut self, id: u64, source_id: &str, timestamp: i64) {
        let hour = Hour::of_nanos(timestamp);
        match self.rows.get_mut(&(hour, id)) {
            Some(row) => {
                row.count += 1;
                row.first = row.first.min(timestamp);
                row.last = row.last.max(timestamp);
            }
            None => {
                self.rows.insert(
                    (hour, id),
                    Row {
                        source_id: source_id.to_owned(),
                        first: timestamp,
                        last: timestamp,
                        count: 1,
                    },
                );
            }
        }
    }

    /// Moves the counts into `tables` (one `pattern_counts` buffer per hour).
    pub fn drain_into(
        &mut self,
        tables: &mut BTreeMap<(Table, Hour), TableBuffer>,
    ) -> Result<(), ArrowError> {
        for ((hour, id), row) in std::mem::take(&mut self.rows) {
            let known = self.known.get(&id);
            let merged_into = known
                .and_then(|known| known.merged_into)
                .map(sluice_patterns::format_id);
            tables
                .entry((Table::PatternCounts, hour))
                .or_insert_with(|| TableBuffer::new(Table::PatternCounts))
                .push(&[
                    Cell::Text(&sluice_patterns::format_id(id)),
                    Cell::Text(&row.source_id),
                    Cell::MaybeText(known.and_then(|known| known.template.as_deref())),
                    Cell::MaybeText(merged_into.as_deref()),
                    Cell::Timestamp(row.first),
                    Cell::Timestamp(row.last),
                    Cell::Unsigned(row.count),
                ])?;
        }
        Ok(())
    }
}
