//! Search over the hour partitions: one parsed query, run on every partition that overlaps
//! the time range, newest partition first; hits newest first, an exact total count.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use sluice_common::time::Hour;
use sluice_common::{ErrorKind, SluiceError};
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, RangeQuery};
use tantivy::schema::Value;
use tantivy::tokenizer::TokenizerManager;
use tantivy::{DocAddress, IndexReader, Order, ReloadPolicy, TantivyDocument, Term};

use crate::store::IndexStore;

/// What to search for.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// Tantivy query syntax; empty or `*` matches everything. Terms are ANDed by default.
    pub query: String,
    /// Inclusive start, ns since the epoch.
    pub start_ns: Option<i64>,
    /// Exclusive end, ns since the epoch.
    pub end_ns: Option<i64>,
    /// Most hits to return.
    pub limit: usize,
}

/// One matching document.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SearchHit {
    /// ns since the epoch.
    pub timestamp: i64,
    /// RFC 3339 form of `timestamp`.
    pub time: String,
    /// Envelope source id.
    pub source_id: String,
    /// Envelope instance id.
    pub instance_id: String,
    /// `OUT`, `ERR` or `EVENT`.
    pub log_type: String,
    /// The log line.
    pub message: String,
    /// Whether the payload had invalid UTF-8 (kept lossily decoded).
    pub invalid_utf8: bool,
    /// Envelope tags.
    pub tags: BTreeMap<String, String>,
}

/// The answer to a search.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResponse {
    /// Exact number of matching documents in the range.
    pub total: u64,
    /// Up to `limit` hits, newest first.
    pub hits: Vec<SearchHit>,
    /// Hour partitions searched.
    pub partitions_searched: usize,
    /// Milliseconds spent.
    pub took_ms: u64,
}

/// Searches the partitions of one index directory; opened partitions are cached.
pub struct Searcher {
    store: IndexStore,
    parser: QueryParser,
    readers: Mutex<HashMap<Hour, IndexReader>>,
}

impl Searcher {
    /// A searcher over the indexer directory `dir` (it may be written by another process).
    pub fn new(dir: &Path) -> Searcher {
        let store = IndexStore::new(dir);
        let fields = store.fields().clone();
        let mut parser = QueryParser::new(
            fields.schema.clone(),
            vec![fields.message],
            TokenizerManager::default(),
        );
        parser.set_conjunction_by_default();
        Searcher {
            store,
            parser,
            readers: Mutex::new(HashMap::new()),
        }
    }

    fn parse(&self, query: &str) -> Result<Box<dyn Query>, SluiceError> {
        let trimmed = query.trim();
        if trimmed.is_empty() || trimmed == "*" {
            return Ok(Box::new(AllQuery));
        }
        self.parser
            .parse_query(trimmed)
            .map_err(|error| SluiceError::invalid(format!("invalid query {trimmed:?}: {error}")))
    }

    fn reader(&self, hour: Hour) -> Result<IndexReader, SluiceError> {
        let mut readers = self
            .readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(reader) = readers.get(&hour) {
            return Ok(reader.clone());
        }
        let index = self.store.open(hour)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|error| {
                SluiceError::internal(format!(
                    "failed to open a reader on {}: {error}",
                    hour.partition_name()
                ))
            })?;
        readers.insert(hour, reader);
        readers
            .get(&hour)
            .cloned()
            .ok_or_else(|| SluiceError::internal("reader vanished"))
    }

    /// Runs `request`. Blocking: call it from a blocking thread.
    pub fn search(&self, request: &SearchRequest) -> Result<SearchResponse, SluiceError> {
        let started = Instant::now();
        if let (Some(start), Some(end)) = (request.start_ns, request.end_ns)
            && start >= end
        {
            return Err(SluiceError::invalid("start must be before end"));
        }
        let query = self.parse(&request.query)?;
        let fields = self.store.fields().clone();
        let start = request.start_ns.unwrap_or(i64::MIN);
        let end = request.end_ns.unwrap_or(i64::MAX);
        let mut hours: Vec<Hour> = self
            .store
            .list()?
            .into_iter()
            .filter(|hour| hour.end_nanos() > start && hour.start_nanos() < end)
            .collect();
        hours.reverse();

        let mut total = 0_u64;
        let mut hits = Vec::new();
        for hour in &hours {
            let reader = self.reader(*hour)?;
            reader.reload().map_err(|error| {
                SluiceError::internal(format!(
                    "failed to reload {}: {error}",
                    hour.partition_name()
                ))
            })?;
            let searcher = reader.searcher();
            // Only partitions that the range cuts need the timestamp condition.
            let bounded: Box<dyn Query> = if start > hour.start_nanos() || end < hour.end_nanos() {
                let range = RangeQuery::new(
                    Bound::Included(Term::from_field_i64(fields.timestamp, start)),
                    Bound::Excluded(Term::from_field_i64(fields.timestamp, end)),
                );
                Box::new(BooleanQuery::new(vec![
                    (Occur::Must, query.box_clone()),
                    (Occur::Must, Box::new(range)),
                ]))
            } else {
                query.box_clone()
            };
            let wanted = request.limit.saturating_sub(hits.len());
            if wanted == 0 {
                total += searcher.search(&bounded, &Count).map_err(|error| {
                    SluiceError::internal(format!(
                        "search failed on {}: {error}",
                        hour.partition_name()
                    ))
                })? as u64;
                continue;
            }
            let collector = (
                Count,
                TopDocs::with_limit(wanted).order_by_fast_field::<i64>("timestamp", Order::Desc),
            );
            let (count, top) = searcher.search(&bounded, &collector).map_err(|error| {
                SluiceError::internal(format!(
                    "search failed on {}: {error}",
                    hour.partition_name()
                ))
            })?;
            total += count as u64;
            for (_, address) in top {
                hits.push(self.hit(&searcher, address)?);
            }
        }
        Ok(SearchResponse {
            total,
            hits,
            partitions_searched: hours.len(),
            took_ms: started.elapsed().as_millis() as u64,
        })
    }

    fn hit(
        &self,
        searcher: &tantivy::Searcher,
        address: DocAddress,
    ) -> Result<SearchHit, SluiceError> {
        let fields = self.store.fields();
        let document: TantivyDocument = searcher.doc(address).map_err(|error| {
            SluiceError::new(
                ErrorKind::Internal,
                format!("failed to load a document: {error}"),
            )
        })?;
        let text = |field| {
            document
                .get_first(field)
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let timestamp = document
            .get_first(fields.timestamp)
            .and_then(|value| value.as_i64())
            .unwrap_or_default();
        let tags = document
            .get_first(fields.tags)
            .and_then(|value| value.as_object())
            .map(|object| {
                object
                    .filter_map(|(key, value)| {
                        value.as_str().map(|text| (key.to_owned(), text.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(SearchHit {
            timestamp,
            time: sluice_common::time::format_rfc3339_nanos(timestamp),
            source_id: text(fields.source_id),
            instance_id: text(fields.instance_id),
            log_type: text(fields.log_type),
            message: text(fields.message),
            invalid_utf8: document
                .get_first(fields.invalid_utf8)
                .and_then(|value| value.as_bool())
                .unwrap_or(false),
            tags,
        })
    }
}
