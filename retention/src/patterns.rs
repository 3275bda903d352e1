//! The `pattern_counts` table: the lines of each pattern counted per hour as they are
//! archived, with the template the doppler described (the `patterns` view sums them up).
//!
//! A flush writes one row per pattern and hour it saw, in the same commit as the lines, so
//! the counts are exactly once like the lines. Templates come with the bus records (once
//! per doppler start and hour, and when they change); a flush that saw the lines of a
//! pattern but not its description writes a null template, which the view fills from the
//! pattern's other rows. When a pattern generalises, the next flush writes a row of no lines
//! for each id it took in, naming the pattern it became (`merged_into`).

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
    source_id: String,
    template: Option<String>,
    merged_into: Option<u64>,
    first_seen: i64,
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
    /// Ids whose pattern generalised since the last flush: a row (of no lines) says what they
    /// became, so `merged_into` is there even when no new line of them comes.
    relinked: Vec<u64>,
}

impl PatternCounter {
    /// Takes what a batch described.
    pub fn learn(&mut self, templates: &[PatternTemplate]) {
        if self.known.len() > MAX_TEMPLATES {
            self.known.clear();
        }
        for template in templates {
            let known = self.known.entry(template.id).or_default();
            known.template = Some(template.template.clone());
            known.source_id.clone_from(&template.source_id);
            known.first_seen = template.first_seen;
            for &old in &template.merged {
                if old == template.id {
                    continue;
                }
                let known = self.known.entry(old).or_default();
                if known.merged_into != Some(template.id) {
                    known.merged_into = Some(template.id);
                    known.source_id.clone_from(&template.source_id);
                    known.first_seen = template.first_seen;
                    self.relinked.push(old);
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
        let counted: std::collections::HashSet<u64> = self.rows.keys().map(|(_, id)| *id).collect();
        for old in std::mem::take(&mut self.relinked) {
            if counted.contains(&old) {
                continue;
            }
            let Some(known) = self.known.get(&old) else {
                continue;
            };
            self.rows.insert(
                (Hour::of_nanos(known.first_seen), old),
                Row {
                    source_id: known.source_id.clone(),
                    first: known.first_seen,
                    last: known.first_seen,
                    count: 0,
                },
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Array;

    #[test]
    fn an_id_that_was_merged_gets_a_row_naming_what_it_became() {
        let mut counter = PatternCounter::default();
        let hour = 1_800_000 * 3_600_000_000_000_i64;
        counter.count(1, "app", hour + 5);
        let mut tables = BTreeMap::new();
        counter.drain_into(&mut tables).expect("drain");
        counter.learn(&[PatternTemplate {
            id: 2,
            source_id: "app".into(),
            template: "a <*>".into(),
            merged: vec![1],
            first_seen: hour + 5,
        }]);
        counter.count(2, "app", hour + 9);
        let mut tables = BTreeMap::new();
        counter.drain_into(&mut tables).expect("drain");
        let batch = tables
            .get_mut(&(Table::PatternCounts, Hour::of_nanos(hour)))
            .expect("rows")
            .finish()
            .expect("batch");
        assert_eq!(batch.num_rows(), 2);
        let merged = batch
            .column_by_name("merged_into")
            .and_then(|column| {
                column
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::StringArray>()
                    .map(|array| {
                        (0..2)
                            .filter(|&row| !array.is_null(row))
                            .map(|row| array.value(row).to_owned())
                            .collect::<Vec<_>>()
                    })
            })
            .expect("column");
        assert_eq!(merged, vec![sluice_patterns::format_id(2)]);
    }
}
