//! A tail's cursor: for every bus partition, the position of the next envelope to deliver.
//!
//! Its text is what the SSE `id:` of every event carries and what `Last-Event-ID` or
//! `cursor=` gives back: `PARTITION:OFFSET:INDEX` per partition, comma-separated, in partition
//! order (`0:1234:5,1:77:0`), where `OFFSET` is a bus record's offset and `INDEX` an
//! envelope's position in that record's batch. A partition the cursor does not name is read
//! from its beginning, so a partition added after the cursor was issued is not skipped.

use std::collections::BTreeMap;
use std::fmt;

use sluice_bus::{Partition, Positions};
use sluice_common::SluiceError;
use sluice_indexer::history::BusPosition;

/// Longest cursor text taken (64 partitions of long offsets fit many times over).
pub const MAX_CURSOR_BYTES: usize = 4096;

/// Where a tail goes on, per partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(BTreeMap<Partition, BusPosition>);

impl Cursor {
    /// The cursor at `positions` (every partition at the start of a record).
    pub fn at(positions: &Positions) -> Cursor {
        Cursor(
            positions
                .0
                .iter()
                .map(|(partition, offset)| {
                    (
                        *partition,
                        BusPosition {
                            partition: *partition,
                            offset: *offset,
                            index: 0,
                        },
                    )
                })
                .collect(),
        )
    }

    /// The next position of `partition` (its beginning when the cursor does not name it).
    pub fn get(&self, partition: Partition) -> BusPosition {
        self.0.get(&partition).copied().unwrap_or(BusPosition {
            partition,
            offset: 0,
            index: 0,
        })
    }

    /// Moves `partition` to `position` (the next envelope to deliver there).
    pub fn set(&mut self, position: BusPosition) {
        self.0.insert(position.partition, position);
    }

    /// Moves past `position`, the envelope just delivered.
    pub fn advance_past(&mut self, position: BusPosition) {
        self.set(BusPosition {
            index: position.index.saturating_add(1),
            ..position
        });
    }

    /// Whether the envelope at `position` is at or after the cursor (still to deliver).
    pub fn is_ahead(&self, position: BusPosition) -> bool {
        let next = self.get(position.partition);
        (position.offset, position.index) >= (next.offset, next.index)
    }

    /// The partitions it names.
    pub fn partitions(&self) -> impl Iterator<Item = Partition> + '_ {
        self.0.keys().copied()
    }

    /// Parses the text form; refuses anything else with the reason.
    pub fn parse(text: &str) -> Result<Cursor, SluiceError> {
        let invalid = |why: &str| {
            SluiceError::invalid(format!(
                "cursor {text:?}: {why}; a cursor is PARTITION:OFFSET:INDEX per partition, comma-separated, as the tail's event ids give it"
            ))
        };
        if text.len() > MAX_CURSOR_BYTES {
            return Err(SluiceError::invalid(format!(
                "cursor: {} bytes; at most {MAX_CURSOR_BYTES}",
                text.len()
            )));
        }
        let mut cursor = Cursor::default();
        for part in text.trim().split(',').filter(|part| !part.is_empty()) {
            let mut numbers = part.split(':');
            let (Some(partition), Some(offset), Some(index), None) = (
                numbers.next(),
                numbers.next(),
                numbers.next(),
                numbers.next(),
            ) else {
                return Err(invalid(&format!("{part:?} is not three numbers")));
            };
            let partition: Partition = partition
                .parse()
                .map_err(|_| invalid(&format!("{partition:?} is not a partition")))?;
            let offset: u64 = offset
                .parse()
                .map_err(|_| invalid(&format!("{offset:?} is not an offset")))?;
            let index: u32 = index
                .parse()
                .map_err(|_| invalid(&format!("{index:?} is not an index")))?;
            if cursor.0.contains_key(&partition) {
                return Err(invalid(&format!("partition {partition} appears twice")));
            }
            cursor.set(BusPosition {
                partition,
                offset,
                index,
            });
        }
        if cursor.0.is_empty() {
            return Err(invalid("it names no partition"));
        }
        Ok(cursor)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (number, position) in self.0.values().enumerate() {
            if number > 0 {
                formatter.write_str(",")?;
            }
            write!(
                formatter,
                "{}:{}:{}",
                position.partition, position.offset, position.index
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_orders_positions() {
        let mut cursor = Cursor::parse("1:77:0,0:1234:5").expect("cursor");
        assert_eq!(cursor.to_string(), "0:1234:5,1:77:0");
        let at = |partition, offset, index| BusPosition {
            partition,
            offset,
            index,
        };
        assert!(!cursor.is_ahead(at(0, 1234, 4)));
        assert!(cursor.is_ahead(at(0, 1234, 5)));
        assert!(cursor.is_ahead(at(0, 1235, 0)));
        assert!(
            cursor.is_ahead(at(2, 0, 0)),
            "an unnamed partition from its start"
        );
        cursor.advance_past(at(0, 1234, 5));
        assert_eq!(cursor.to_string(), "0:1234:6,1:77:0");
    }

    #[test]
    fn bad_cursors_are_refused_with_the_reason() {
        for text in [
            "",
            "0:1",
            "0:1:2:3",
            "a:1:2",
            "0:-1:0",
            "0:1:2,0:3:4",
            "0:1:99999999999",
        ] {
            let error = Cursor::parse(text).expect_err(text);
            assert!(
                error.message().contains("cursor"),
                "{text}: {}",
                error.message()
            );
        }
        let long = "0:1:2,".repeat(1000);
        assert!(Cursor::parse(&long).is_err());
    }
}
