//! History for live tails: the indexed envelopes of a bus range, by their bus identity.
//!
//! A tail delivers envelopes in bus order, and its cursor is a bus position. What the bus has
//! already forgotten, or what lies before the positions a tail reads the bus from, comes from
//! here: documents selected by a query, a start time and a range of bus positions per
//! partition, rebuilt as envelopes (a log's payload is its indexed text; an event's title and
//! body are split again at the first `": "`) and returned in bus order.

use std::collections::BTreeMap;
use std::ops::Bound;

use sluice_bus::Partition;
use sluice_common::SluiceError;
use sluice_proto::v2::{Envelope, Event, Log, envelope, log};
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::{Order, TantivyDocument, Term};

use crate::search::Searcher;

/// An envelope's place on the bus: partition, record offset, position in the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BusPosition {
    /// The partition.
    pub partition: Partition,
    /// The record's offset.
    pub offset: u64,
    /// The envelope's position in the record's batch.
    pub index: u32,
}

/// The range of one partition a history covers: from `from` (inclusive) to the record
/// offset `to` (exclusive).
#[derive(Debug, Clone, Copy)]
pub struct PartitionRange {
    /// First position wanted.
    pub from: BusPosition,
    /// First record offset not wanted.
    pub to: u64,
}

/// What to fetch.
pub struct HistoryRequest<'a> {
    /// The documents to select (a tail's selectors and text filter, as an index query).
    pub query: &'a dyn Query,
    /// Only envelopes stamped at or after this time (ns), when set.
    pub start_ns: Option<i64>,
    /// The bus ranges, per partition; partitions not named are not searched.
    pub ranges: BTreeMap<Partition, PartitionRange>,
    /// At most this many envelopes: the newest by timestamp when more match.
    pub limit: usize,
}

/// What was found.
#[derive(Debug, Default)]
pub struct History {
    /// Matching envelopes in bus order (partition, offset, index).
    pub envelopes: Vec<(BusPosition, Envelope)>,
    /// How many matched in all (more than `envelopes` holds when the limit cut them).
    pub matched: u64,
}

impl Searcher {
    /// Fetches the indexed envelopes `request` selects. Blocking: call it from a blocking
    /// thread.
    pub fn history(&self, request: &HistoryRequest<'_>) -> Result<History, SluiceError> {
        let fields = self.store().fields().clone();
        let start = request.start_ns.unwrap_or(i64::MIN);
        let mut hours = self.store().list()?;
        hours.retain(|hour| hour.end_nanos() > start);
        hours.reverse();
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (partition, range) in &request.ranges {
            if range.from.offset >= range.to {
                continue;
            }
            let partition_term = || -> Box<dyn Query> {
                Box::new(TermQuery::new(
                    Term::from_field_u64(fields.bus_partition, u64::from(*partition)),
                    IndexRecordOption::Basic,
                ))
            };
            let offsets = |from: u64, to: Bound<u64>| -> Box<dyn Query> {
                Box::new(RangeQuery::new(
                    Bound::Included(Term::from_field_u64(fields.bus_offset, from)),
                    to.map(|to| Term::from_field_u64(fields.bus_offset, to)),
                ))
            };
            // The first record from its position in the batch on; the rest whole.
            let first = BooleanQuery::new(vec![
                (Occur::Must, partition_term()),
                (
                    Occur::Must,
                    offsets(range.from.offset, Bound::Included(range.from.offset)),
                ),
                (
                    Occur::Must,
                    Box::new(RangeQuery::new(
                        Bound::Included(Term::from_field_u64(
                            fields.bus_index,
                            u64::from(range.from.index),
                        )),
                        Bound::Unbounded,
                    )),
                ),
            ]);
            clauses.push((Occur::Should, Box::new(first)));
            if range.from.offset + 1 < range.to {
                let rest = BooleanQuery::new(vec![
                    (Occur::Must, partition_term()),
                    (
                        Occur::Must,
                        offsets(range.from.offset + 1, Bound::Excluded(range.to)),
                    ),
                ]);
                clauses.push((Occur::Should, Box::new(rest)));
            }
        }
        if clauses.is_empty() || request.limit == 0 {
            return Ok(History::default());
        }
        let mut conditions: Vec<(Occur, Box<dyn Query>)> = vec![
            (Occur::Must, request.query.box_clone()),
            (Occur::Must, Box::new(BooleanQuery::new(clauses))),
        ];
        if request.start_ns.is_some() {
            conditions.push((
                Occur::Must,
                Box::new(RangeQuery::new(
                    Bound::Included(Term::from_field_i64(fields.timestamp, start)),
                    Bound::Unbounded,
                )),
            ));
        }
        let query = BooleanQuery::new(conditions);
        let mut history = History::default();
        // Newest hours first, newest documents first, until the limit is reached; every
        // hour is counted.
        for hour in &hours {
            let searcher = self.fresh_searcher(*hour)?;
            let wanted = request.limit.saturating_sub(history.envelopes.len()).max(1);
            let (count, top) = searcher
                .search(
                    &query,
                    &(
                        Count,
                        TopDocs::with_limit(wanted)
                            .order_by_fast_field::<i64>("timestamp", Order::Desc),
                    ),
                )
                .map_err(|error| {
                    SluiceError::internal(format!(
                        "history search failed on {}: {error}",
                        hour.partition_name()
                    ))
                })?;
            history.matched += count as u64;
            for (_, address) in top {
                if history.envelopes.len() >= request.limit {
                    break;
                }
                let segment = searcher.segment_reader(address.segment_ord);
                let column = |name: &str| {
                    segment
                        .fast_fields()
                        .u64(name)
                        .ok()
                        .and_then(|column| column.first(address.doc_id))
                };
                let position = BusPosition {
                    partition: column("bus_partition")
                        .and_then(|partition| u32::try_from(partition).ok())
                        .unwrap_or_default(),
                    offset: column("bus_offset").unwrap_or_default(),
                    index: column("bus_index")
                        .and_then(|index| u32::try_from(index).ok())
                        .unwrap_or_default(),
                };
                let document: TantivyDocument = searcher.doc(address).map_err(|error| {
                    SluiceError::internal(format!("failed to load a document: {error}"))
                })?;
                history
                    .envelopes
                    .push((position, self.envelope_of(&document)));
            }
        }
        history.envelopes.sort_by_key(|(position, _)| *position);
        Ok(history)
    }

    /// The envelope a document was made from, as far as the index keeps it.
    fn envelope_of(&self, document: &TantivyDocument) -> Envelope {
        let fields = self.store().fields();
        let text = |field| {
            document
                .get_first(field)
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let tags = crate::search::stored_tags(document, fields.tags)
            .into_iter()
            .collect();
        let message = text(fields.message);
        let message = match text(fields.log_type).as_str() {
            "EVENT" => {
                let (title, body) = message.split_once(": ").unwrap_or((&message, ""));
                envelope::Message::Event(Event {
                    title: title.to_owned(),
                    body: body.to_owned(),
                })
            }
            log_type => envelope::Message::Log(Log {
                payload: message.into_bytes(),
                r#type: if log_type == "ERR" {
                    log::Type::Err as i32
                } else {
                    log::Type::Out as i32
                },
            }),
        };
        Envelope {
            timestamp: document
                .get_first(fields.timestamp)
                .and_then(|value| value.as_i64())
                .unwrap_or_default(),
            source_id: text(fields.source_id),
            instance_id: text(fields.instance_id),
            tags,
            message: Some(message),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Origin;
    use crate::store::IndexStore;
    use sluice_common::time::Hour;
    use tantivy::query::AllQuery;

    const HOUR: i64 = 3_600_000_000_000;

    fn log(timestamp: i64, source_id: &str, text: &str) -> Envelope {
        Envelope {
            timestamp,
            source_id: source_id.into(),
            instance_id: "0".into(),
            tags: [("job".to_owned(), "web".to_owned())].into_iter().collect(),
            message: Some(envelope::Message::Log(Log {
                payload: text.as_bytes().to_vec(),
                r#type: log::Type::Err as i32,
            })),
            ..Default::default()
        }
    }

    /// Records 0..4 of partition 0, three envelopes each (the last of record 2 an event), two
    /// hours apart so that two hour indexes hold them.
    fn indexed(dir: &std::path::Path) -> Vec<(BusPosition, Envelope)> {
        let store = IndexStore::new(dir);
        let mut all = Vec::new();
        for offset in 0..4_u64 {
            for index in 0..3_u32 {
                let timestamp =
                    10 * HOUR + i64::try_from(offset).expect("small") * 2 * HOUR + i64::from(index);
                let envelope = if (offset, index) == (2, 2) {
                    Envelope {
                        timestamp,
                        source_id: "b".into(),
                        message: Some(envelope::Message::Event(Event {
                            title: "deployed v2".into(),
                            body: "by ci".into(),
                        })),
                        ..Default::default()
                    }
                } else {
                    log(
                        timestamp,
                        if index == 0 { "a" } else { "b" },
                        &format!("line {offset} {index}"),
                    )
                };
                all.push((
                    BusPosition {
                        partition: 0,
                        offset,
                        index,
                    },
                    envelope,
                ));
            }
        }
        for (position, envelope) in &all {
            let index = store
                .open_or_create(Hour::of_nanos(envelope.timestamp))
                .expect("partition");
            let mut writer: tantivy::IndexWriter = index
                .writer_with_num_threads(1, 15_000_000)
                .expect("writer");
            let origin = Origin {
                agent_id: "agent",
                sequence: position.offset,
                partition: position.partition,
                offset: position.offset,
                index: position.index,
            };
            writer
                .add_document(store.fields().document(envelope, origin).expect("indexed"))
                .expect("add");
            writer.commit().expect("commit");
        }
        all
    }

    fn range(offset: u64, index: u32, to: u64) -> BTreeMap<Partition, PartitionRange> {
        [(
            0,
            PartitionRange {
                from: BusPosition {
                    partition: 0,
                    offset,
                    index,
                },
                to,
            },
        )]
        .into_iter()
        .collect()
    }

    #[test]
    fn history_is_the_indexed_range_in_bus_order_from_a_position_inside_a_record() {
        let dir = tempfile::tempdir().expect("temp dir");
        let all = indexed(dir.path());
        let searcher = Searcher::new(dir.path());
        let history = searcher
            .history(&HistoryRequest {
                query: &AllQuery,
                start_ns: None,
                ranges: range(1, 1, 3),
                limit: 100,
            })
            .expect("history");
        // From record 1's second envelope up to (not including) record 3, across two hours.
        assert_eq!(history.matched, 5);
        let expected: Vec<(BusPosition, Envelope)> = all[4..9].to_vec();
        assert_eq!(
            history.envelopes, expected,
            "the envelopes come back as they went in"
        );

        // The newest by timestamp when the limit cuts, still in bus order; a start time and
        // a query narrow it.
        let limited = searcher
            .history(&HistoryRequest {
                query: &AllQuery,
                start_ns: None,
                ranges: range(0, 0, 4),
                limit: 4,
            })
            .expect("history");
        assert_eq!(limited.matched, 12);
        let positions: Vec<(u64, u32)> = limited
            .envelopes
            .iter()
            .map(|(position, _)| (position.offset, position.index))
            .collect();
        assert_eq!(positions, vec![(2, 2), (3, 0), (3, 1), (3, 2)]);
        let query = searcher.parse("source_id:a").expect("query");
        let narrowed = searcher
            .history(&HistoryRequest {
                query: query.as_ref(),
                start_ns: Some(all[3].1.timestamp),
                ranges: range(0, 0, 4),
                limit: 100,
            })
            .expect("history");
        let positions: Vec<u64> = narrowed
            .envelopes
            .iter()
            .map(|(position, _)| position.offset)
            .collect();
        assert_eq!(positions, vec![1, 2, 3]);
    }
}
