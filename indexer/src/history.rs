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
use sluice_common::tenancy::Scope;
use sluice_common::time::Hour;
use sluice_proto::v2::{Envelope, Event, Log, envelope, log};
use tantivy::collector::{Count, DocSetCollector, TopDocs};
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::{DocAddress, Order, TantivyDocument, Term};

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

/// Which envelopes a history keeps when more match than its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryOrder {
    /// The newest by timestamp (`tail=N`, `since=`): what a reader starting now wants.
    NewestByTime,
    /// The first in bus order, whole records only, so that the next page starts at
    /// [`History::next`] without skipping or repeating (resuming and healing a range). Takes
    /// one partition.
    OldestByPosition,
}

/// What to fetch.
pub struct HistoryRequest<'a> {
    /// The documents to select (a tail's selectors and text filter, as an index query).
    pub query: &'a dyn Query,
    /// The records the reader may see (`None`: every tenant's); applied to each hour with
    /// that hour's schema.
    pub scope: Option<&'a Scope>,
    /// Only envelopes stamped at or after this time (ns), when set.
    pub start_ns: Option<i64>,
    /// The bus ranges, per partition; partitions not named are not searched.
    pub ranges: BTreeMap<Partition, PartitionRange>,
    /// At most this many envelopes (see [`HistoryOrder`] for which).
    pub limit: usize,
    /// Which to keep when more match than the limit.
    pub order: HistoryOrder,
}

/// One indexed envelope and its identity.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    /// Where it is on the bus.
    pub position: BusPosition,
    /// The agent that sent its batch.
    pub agent_id: String,
    /// The batch's sequence number at that agent.
    pub sequence: u64,
    /// The envelope, as far as the index keeps it.
    pub envelope: Envelope,
}

/// What was found.
#[derive(Debug, Default)]
pub struct History {
    /// Matching envelopes in bus order (partition, offset, index).
    pub entries: Vec<HistoryEntry>,
    /// How many matched in all (more than `entries` holds when the limit cut them).
    pub matched: u64,
    /// With [`HistoryOrder::OldestByPosition`], where the rest of the range starts when the
    /// limit cut it; `None` when the range is complete.
    pub next: Option<BusPosition>,
}

/// What the index holds of one bus record (see [`Searcher::census`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordCensus {
    /// Documents indexed from the record (its logs and events).
    pub indexed: u64,
    /// Envelopes the record held in all.
    pub envelopes: u64,
    /// The oldest and newest timestamp (ns) of its indexed envelopes.
    pub time_range: (i64, i64),
}

impl Searcher {
    /// Fetches the indexed envelopes `request` selects. Blocking: call it from a blocking
    /// thread.
    pub fn history(&self, request: &HistoryRequest<'_>) -> Result<History, SluiceError> {
        if request.order == HistoryOrder::OldestByPosition && request.ranges.len() > 1 {
            return Err(SluiceError::internal(
                "a history in bus order takes one partition at a time",
            ));
        }
        let Some(ranges) = self.range_query(&request.ranges) else {
            return Ok(History::default());
        };
        if request.limit == 0 {
            return Ok(History::default());
        }
        let fields = self.store().fields().clone();
        let mut conditions: Vec<(Occur, Box<dyn Query>)> = vec![
            (Occur::Must, request.query.box_clone()),
            (Occur::Must, ranges),
        ];
        if let Some(start) = request.start_ns {
            conditions.push((
                Occur::Must,
                Box::new(RangeQuery::new(
                    Bound::Included(Term::from_field_i64(fields.timestamp, start)),
                    Bound::Unbounded,
                )),
            ));
        }
        let query = BooleanQuery::new(conditions);
        let mut hours = self.hours()?;
        if let Some(start) = request.start_ns {
            hours.retain(|hour| hour.end_nanos() > start);
        }
        match request.order {
            HistoryOrder::NewestByTime => self.newest(&query, request.scope, &hours, request.limit),
            HistoryOrder::OldestByPosition => self.oldest(request, &query, &hours),
        }
    }

    /// The documents of `ranges`, or `None` when the ranges are all empty.
    fn range_query(&self, ranges: &BTreeMap<Partition, PartitionRange>) -> Option<Box<dyn Query>> {
        let fields = self.store().fields();
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (partition, range) in ranges {
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
        if clauses.is_empty() {
            return None;
        }
        Some(Box::new(BooleanQuery::new(clauses)))
    }

    /// Newest hours first, newest documents first, until the limit is reached; every hour is
    /// counted.
    fn newest(
        &self,
        query: &dyn Query,
        scope: Option<&Scope>,
        hours: &[Hour],
        limit: usize,
    ) -> Result<History, SluiceError> {
        let mut history = History::default();
        for hour in hours.iter().rev() {
            let searcher = self.fresh_searcher(*hour)?;
            let query = crate::scope::scoped(query.box_clone(), scope, searcher.schema())?;
            let wanted = limit.saturating_sub(history.entries.len()).max(1);
            let (count, top) = searcher
                .search(
                    query.as_ref(),
                    &(
                        Count,
                        TopDocs::with_limit(wanted)
                            .order_by_fast_field::<i64>("timestamp", Order::Desc),
                    ),
                )
                .map_err(|error| history_failed(*hour, &error))?;
            history.matched += count as u64;
            for (_, address) in top {
                if history.entries.len() >= limit {
                    break;
                }
                history.entries.push(self.entry(&searcher, address)?);
            }
        }
        history.entries.sort_by_key(|entry| entry.position);
        Ok(history)
    }

    /// The first `request.limit` documents of one partition's range by bus position, whole
    /// records only (unless one record alone holds more, which then comes whole).
    fn oldest(
        &self,
        request: &HistoryRequest<'_>,
        query: &dyn Query,
        hours: &[Hour],
    ) -> Result<History, SluiceError> {
        // Each hour's first `limit` by offset hold, between them, every document below the
        // `limit`-th smallest offset overall.
        let mut candidates: Vec<(u64, Hour, DocAddress)> = Vec::new();
        let mut matched = 0_u64;
        // A document address holds only in the searcher that found it: the entries are read
        // with the same ones (a fresh searcher after a commit or merge has other segments).
        let mut searchers: BTreeMap<Hour, tantivy::Searcher> = BTreeMap::new();
        for hour in hours {
            let searcher = searchers
                .entry(*hour)
                .or_insert(self.fresh_searcher(*hour)?);
            let query = crate::scope::scoped(query.box_clone(), request.scope, searcher.schema())?;
            let (count, top) = searcher
                .search(
                    query.as_ref(),
                    &(
                        Count,
                        TopDocs::with_limit(request.limit)
                            .order_by_fast_field::<u64>("bus_offset", Order::Asc),
                    ),
                )
                .map_err(|error| history_failed(*hour, &error))?;
            matched += count as u64;
            candidates.extend(
                top.into_iter()
                    .map(|(offset, address)| (offset.unwrap_or_default(), *hour, address)),
            );
        }
        candidates.sort_by_key(|(offset, _, _)| *offset);
        let mut next = None;
        if matched > request.limit as u64 {
            let cut = candidates[request.limit - 1].0;
            let first = candidates[0].0;
            if cut > first {
                candidates.retain(|(offset, _, _)| *offset < cut);
                next = Some(BusPosition {
                    partition: self.only_partition(request),
                    offset: cut,
                    index: 0,
                });
            } else {
                // One record holds more matches than a page: that record alone, whole.
                let partition = self.only_partition(request);
                let range = request.ranges.get(&partition).copied();
                let from_index = range
                    .filter(|range| range.from.offset == cut)
                    .map_or(0, |range| range.from.index);
                let single = HistoryRequest {
                    query: request.query,
                    scope: request.scope,
                    start_ns: request.start_ns,
                    ranges: [(
                        partition,
                        PartitionRange {
                            from: BusPosition {
                                partition,
                                offset: cut,
                                index: from_index,
                            },
                            to: cut + 1,
                        },
                    )]
                    .into_iter()
                    .collect(),
                    limit: usize::try_from(matched).unwrap_or(usize::MAX),
                    order: HistoryOrder::NewestByTime,
                };
                let mut whole = self.history(&single)?;
                whole.matched = matched;
                whole.next =
                    (range.is_some_and(|range| cut + 1 < range.to)).then_some(BusPosition {
                        partition,
                        offset: cut + 1,
                        index: 0,
                    });
                return Ok(whole);
            }
        }
        let mut history = History {
            entries: Vec::with_capacity(candidates.len()),
            matched,
            next,
        };
        for (_, hour, address) in candidates {
            let Some(searcher) = searchers.get(&hour) else {
                continue;
            };
            history.entries.push(self.entry(searcher, address)?);
        }
        history.entries.sort_by_key(|entry| entry.position);
        Ok(history)
    }

    /// The indexed envelopes of one source stamped in `[start_ns, end_ns)`, oldest first (or
    /// newest first when `descending`), at most `limit`: what a Log Cache read of logs and
    /// events answers. `log_types` names which kinds: `OUT`, `ERR`, `EVENT`. Blocking.
    pub fn read_source(
        &self,
        source_id: &str,
        (start_ns, end_ns): (i64, i64),
        log_types: &[&str],
        limit: usize,
        descending: bool,
        scope: Option<&Scope>,
    ) -> Result<Vec<HistoryEntry>, SluiceError> {
        if limit == 0 || log_types.is_empty() || start_ns >= end_ns {
            return Ok(Vec::new());
        }
        let fields = self.store().fields().clone();
        let query: Box<dyn Query> = Box::new(BooleanQuery::new(vec![
            (
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(fields.source_id, source_id),
                    IndexRecordOption::Basic,
                )) as Box<dyn Query>,
            ),
            (
                Occur::Must,
                Box::new(RangeQuery::new(
                    Bound::Included(Term::from_field_i64(fields.timestamp, start_ns)),
                    Bound::Excluded(Term::from_field_i64(fields.timestamp, end_ns)),
                )),
            ),
            (
                Occur::Must,
                Box::new(BooleanQuery::new(
                    log_types
                        .iter()
                        .map(|log_type| {
                            (
                                Occur::Should,
                                Box::new(TermQuery::new(
                                    Term::from_field_text(fields.log_type, log_type),
                                    IndexRecordOption::Basic,
                                )) as Box<dyn Query>,
                            )
                        })
                        .collect(),
                )),
            ),
        ]));
        let order = if descending { Order::Desc } else { Order::Asc };
        let mut found: Vec<(i64, HistoryEntry)> = Vec::new();
        for hour in self.hours()? {
            if hour.end_nanos() <= start_ns || hour.start_nanos() >= end_ns {
                continue;
            }
            let searcher = self.fresh_searcher(hour)?;
            let query = crate::scope::scoped(query.box_clone(), scope, searcher.schema())?;
            let top = searcher
                .search(
                    query.as_ref(),
                    &TopDocs::with_limit(limit).order_by_fast_field::<i64>("timestamp", order),
                )
                .map_err(|error| history_failed(hour, &error))?;
            for (timestamp, address) in top {
                found.push((
                    timestamp.unwrap_or_default(),
                    self.entry(&searcher, address)?,
                ));
            }
        }
        found.sort_by_key(|(timestamp, entry)| (*timestamp, entry.position));
        if descending {
            found.reverse();
        }
        found.truncate(limit);
        Ok(found.into_iter().map(|(_, entry)| entry).collect())
    }

    fn only_partition(&self, request: &HistoryRequest<'_>) -> Partition {
        request.ranges.keys().next().copied().unwrap_or_default()
    }

    /// For each record of `partition` in `from..to` that the index holds anything of, how
    /// many envelopes it held and how many were indexed. Records it holds nothing of (all
    /// metrics, or never indexed) are absent. Blocking.
    pub fn census(
        &self,
        partition: Partition,
        from: u64,
        to: u64,
    ) -> Result<BTreeMap<u64, RecordCensus>, SluiceError> {
        let range = PartitionRange {
            from: BusPosition {
                partition,
                offset: from,
                index: 0,
            },
            to,
        };
        let mut census: BTreeMap<u64, RecordCensus> = BTreeMap::new();
        let Some(query) = self.range_query(&[(partition, range)].into_iter().collect()) else {
            return Ok(census);
        };
        for hour in self.hours()? {
            let searcher = self.fresh_searcher(hour)?;
            let addresses = searcher
                .search(query.as_ref(), &DocSetCollector)
                .map_err(|error| history_failed(hour, &error))?;
            for address in addresses {
                let column = |name: &str| fast_u64(&searcher, address, name);
                let segment = searcher.segment_reader(address.segment_ord);
                let Some(offset) = column("bus_offset") else {
                    continue;
                };
                let timestamp = segment
                    .fast_fields()
                    .i64("timestamp")
                    .ok()
                    .and_then(|column| column.first(address.doc_id))
                    .unwrap_or_default();
                let record = census.entry(offset).or_insert(RecordCensus {
                    indexed: 0,
                    envelopes: 0,
                    time_range: (timestamp, timestamp),
                });
                record.indexed += 1;
                record.time_range = (
                    record.time_range.0.min(timestamp),
                    record.time_range.1.max(timestamp),
                );
                record.envelopes = record
                    .envelopes
                    .max(column("bus_batch_envelopes").unwrap_or_default());
            }
        }
        Ok(census)
    }

    fn entry(
        &self,
        searcher: &tantivy::Searcher,
        address: DocAddress,
    ) -> Result<HistoryEntry, SluiceError> {
        let column = |name: &str| fast_u64(searcher, address, name);
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
        let fields = self.store().fields();
        Ok(HistoryEntry {
            position,
            agent_id: document
                .get_first(fields.agent_id)
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default(),
            sequence: document
                .get_first(fields.sequence)
                .and_then(|value| value.as_u64())
                .unwrap_or_default(),
            envelope: self.envelope_of(&document),
        })
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

/// The u64 fast field `name` of the document at `address`.
fn fast_u64(searcher: &tantivy::Searcher, address: DocAddress, name: &str) -> Option<u64> {
    searcher
        .segment_reader(address.segment_ord)
        .fast_fields()
        .u64(name)
        .ok()
        .and_then(|column| column.first(address.doc_id))
}

fn history_failed(hour: Hour, error: &tantivy::TantivyError) -> SluiceError {
    SluiceError::internal(format!(
        "history search failed on {}: {error}",
        hour.partition_name()
    ))
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
                batch_envelopes: 3,
                pattern_id: None,
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
                scope: None,
                query: &AllQuery,
                start_ns: None,
                ranges: range(1, 1, 3),
                limit: 100,
                order: HistoryOrder::NewestByTime,
            })
            .expect("history");
        // From record 1's second envelope up to (not including) record 3, across two hours.
        assert_eq!(history.matched, 5);
        let expected: Vec<(BusPosition, Envelope)> = all[4..9].to_vec();
        let got: Vec<(BusPosition, Envelope)> = history
            .entries
            .iter()
            .map(|entry| (entry.position, entry.envelope.clone()))
            .collect();
        assert_eq!(got, expected, "the envelopes come back as they went in");
        assert!(
            history
                .entries
                .iter()
                .all(|entry| entry.agent_id == "agent" && entry.sequence == entry.position.offset),
            "each carries its batch's identity"
        );

        // The newest by timestamp when the limit cuts, still in bus order; a start time and
        // a query narrow it.
        let limited = searcher
            .history(&HistoryRequest {
                scope: None,
                query: &AllQuery,
                start_ns: None,
                ranges: range(0, 0, 4),
                limit: 4,
                order: HistoryOrder::NewestByTime,
            })
            .expect("history");
        assert_eq!(limited.matched, 12);
        let positions: Vec<(u64, u32)> = limited
            .entries
            .iter()
            .map(|entry| (entry.position.offset, entry.position.index))
            .collect();
        assert_eq!(positions, vec![(2, 2), (3, 0), (3, 1), (3, 2)]);
        let query = searcher.parse("source_id:a").expect("query");
        let narrowed = searcher
            .history(&HistoryRequest {
                scope: None,
                query: query.as_ref(),
                start_ns: Some(all[3].1.timestamp),
                ranges: range(0, 0, 4),
                limit: 100,
                order: HistoryOrder::NewestByTime,
            })
            .expect("history");
        let positions: Vec<u64> = narrowed
            .entries
            .iter()
            .map(|entry| entry.position.offset)
            .collect();
        assert_eq!(positions, vec![1, 2, 3]);
    }

    #[test]
    fn pages_in_bus_order_cover_a_range_once_each_in_whole_records() {
        let dir = tempfile::tempdir().expect("temp dir");
        let all = indexed(dir.path());
        let searcher = Searcher::new(dir.path());
        // Pages of 4 from record 0's second envelope: a page never ends inside a record (4
        // would cut record 1), and one record larger than the page comes whole.
        for limit in [1_usize, 2, 4, 5, 100] {
            let mut from = BusPosition {
                partition: 0,
                offset: 0,
                index: 1,
            };
            let mut seen = Vec::new();
            loop {
                let page = searcher
                    .history(&HistoryRequest {
                        scope: None,
                        query: &AllQuery,
                        start_ns: None,
                        ranges: range(from.offset, from.index, 4),
                        limit,
                        order: HistoryOrder::OldestByPosition,
                    })
                    .expect("page");
                let mut records: Vec<u64> = page
                    .entries
                    .iter()
                    .map(|entry| entry.position.offset)
                    .collect();
                records.dedup();
                for record in &records {
                    let wanted = if *record == from.offset {
                        3 - from.index
                    } else {
                        3
                    };
                    let got = page
                        .entries
                        .iter()
                        .filter(|entry| entry.position.offset == *record)
                        .count();
                    assert_eq!(got as u32, wanted, "limit {limit}: record {record} whole");
                }
                seen.extend(page.entries.into_iter().map(|entry| entry.position));
                match page.next {
                    Some(next) => from = next,
                    None => break,
                }
            }
            let expected: Vec<BusPosition> =
                all[1..].iter().map(|(position, _)| *position).collect();
            assert_eq!(
                seen, expected,
                "limit {limit}: every envelope once, in order"
            );
        }
    }

    #[test]
    fn the_census_tells_how_much_of_each_record_the_index_holds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let all = indexed(dir.path());
        let searcher = Searcher::new(dir.path());
        let census = searcher.census(0, 1, 3).expect("census");
        let expected: BTreeMap<u64, RecordCensus> = [1_usize, 2]
            .into_iter()
            .map(|offset| {
                let stamped = |index: usize| all[offset * 3 + index].1.timestamp;
                (
                    offset as u64,
                    RecordCensus {
                        indexed: 3,
                        envelopes: 3,
                        time_range: (stamped(0), stamped(2)),
                    },
                )
            })
            .collect();
        assert_eq!(census, expected);
        assert!(searcher.census(1, 0, 4).expect("census").is_empty());
    }
}

#[cfg(test)]
mod concurrent {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::schema::Origin;
    use crate::store::IndexStore;
    use tantivy::query::AllQuery;

    /// A page in bus order used to find documents with one searcher and read them with a
    /// fresh one: after a commit or a merge in between, the addresses pointed into other
    /// segments (a panic in Tantivy's `segment_reader`, seen in the slow-reader tail test).
    #[test]
    fn pages_read_while_the_index_commits_and_merges_are_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = IndexStore::new(dir.path());
        let timestamp = 5 * 3_600_000_000_000_i64;
        let index = store
            .open_or_create(Hour::of_nanos(timestamp))
            .expect("partition");
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = Arc::clone(&stop);
            let fields = store.fields().clone();
            std::thread::spawn(move || {
                let mut writer: tantivy::IndexWriter = index
                    .writer_with_num_threads(1, 15_000_000)
                    .expect("writer");
                let mut offset = 0_u64;
                while !stop.load(Ordering::Acquire) && offset < 2_000 {
                    let envelope = Envelope {
                        timestamp: timestamp + i64::try_from(offset).unwrap_or(0),
                        source_id: "a".into(),
                        message: Some(envelope::Message::Log(Log {
                            payload: format!("line {offset}").into_bytes(),
                            r#type: 0,
                        })),
                        ..Default::default()
                    };
                    let origin = Origin {
                        agent_id: "agent",
                        sequence: offset,
                        partition: 0,
                        offset,
                        index: 0,
                        batch_envelopes: 1,
                        pattern_id: None,
                    };
                    writer
                        .add_document(fields.document(&envelope, origin).expect("indexed"))
                        .expect("add");
                    writer.commit().expect("commit");
                    if offset % 8 == 7 {
                        let segments = index.searchable_segment_ids().expect("segments");
                        if segments.len() > 1 {
                            let _ = writer.merge(&segments).wait();
                        }
                    }
                    offset += 1;
                }
            })
        };
        let searcher = Searcher::new(dir.path());
        for _ in 0..2_000 {
            let page = searcher
                .history(&HistoryRequest {
                    scope: None,
                    query: &AllQuery,
                    start_ns: None,
                    ranges: [(
                        0,
                        PartitionRange {
                            from: BusPosition {
                                partition: 0,
                                offset: 0,
                                index: 0,
                            },
                            to: u64::MAX,
                        },
                    )]
                    .into_iter()
                    .collect(),
                    limit: 50,
                    order: HistoryOrder::OldestByPosition,
                })
                .expect("page");
            for (expected, entry) in page.entries.iter().enumerate() {
                assert_eq!(
                    entry.position.offset, expected as u64,
                    "the page from 0, in order"
                );
                let Some(envelope::Message::Log(log)) = &entry.envelope.message else {
                    panic!("{entry:?}");
                };
                assert_eq!(log.payload, format!("line {expected}").into_bytes());
            }
        }
        stop.store(true, Ordering::Release);
        writer.join().expect("writer");
    }
}
