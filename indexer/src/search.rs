//! Search over the hour partitions: one parsed query, run on every partition that overlaps
//! the time range, newest partition first; hits newest first, an exact total count.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use sluice_common::tenancy::Scope;
use sluice_common::time::Hour;
use sluice_common::{ErrorKind, SluiceError};
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, RangeQuery};
use tantivy::schema::Value;
use tantivy::tokenizer::TokenizerManager;
use tantivy::{DocAddress, IndexReader, Order, ReloadPolicy, TantivyDocument, Term};

use crate::histogram::{self, Bucket, Counts, Histogram, MAX_BUCKETS};
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
    /// Also count the matches per bucket of this many ns (a date histogram).
    pub histogram_interval_ns: Option<i64>,
    /// The records the reader may see (`None`: every tenant's).
    pub scope: Option<Scope>,
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
    /// The line's pattern (16 hex digits; empty for events and lines indexed without one).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pattern_id: String,
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
    /// Matches per bucket, oldest first, when a histogram was asked for (empty buckets left
    /// out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub histogram: Option<Vec<Bucket>>,
}

/// Deepest nesting a search query may have: open parentheses plus NOTs in a row, each of which
/// is a level of recursion in Tantivy's query parser (and of stack on the thread parsing).
pub const MAX_QUERY_NESTING: usize = 64;

/// The deepest nesting in `query`: at each point, the parentheses open plus the NOTs in a row
/// before the next term; quoted phrases do not count.
fn query_nesting(query: &str) -> usize {
    let (mut depth, mut nots, mut deepest) = (0_usize, 0_usize, 0_usize);
    let mut in_quotes = false;
    let mut escaped = false;
    let mut word = String::new();
    let end_word = |word: &mut String, nots: &mut usize| {
        if word == "NOT" {
            *nots += 1;
        } else if !word.is_empty() {
            *nots = 0;
        }
        word.clear();
    };
    for character in query.chars() {
        if in_quotes {
            match character {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_quotes = false,
                _ => {}
            }
            continue;
        }
        match character {
            '"' => {
                end_word(&mut word, &mut nots);
                nots = 0;
                in_quotes = true;
            }
            '(' => {
                end_word(&mut word, &mut nots);
                depth += 1;
            }
            ')' => {
                end_word(&mut word, &mut nots);
                depth = depth.saturating_sub(1);
            }
            character if character.is_whitespace() => end_word(&mut word, &mut nots),
            character => word.push(character),
        }
        deepest = deepest.max(depth + nots);
    }
    end_word(&mut word, &mut nots);
    deepest.max(depth + nots)
}

/// Searches the partitions of one index directory; opened partitions are cached.
pub struct Searcher {
    dir: std::path::PathBuf,
    store: IndexStore,
    parser: QueryParser,
    readers: Mutex<HashMap<Hour, IndexReader>>,
    templates: crate::patterns::TemplateCache,
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
            dir: dir.to_path_buf(),
            store,
            parser,
            readers: Mutex::new(HashMap::new()),
            templates: crate::patterns::TemplateCache::default(),
        }
    }

    /// The index schema queries are parsed against.
    pub fn schema(&self) -> &tantivy::schema::Schema {
        &self.store.fields().schema
    }

    /// Parses a query of the search language (Tantivy's syntax over the index fields).
    pub fn parse(&self, query: &str) -> Result<Box<dyn Query>, SluiceError> {
        let trimmed = query.trim();
        if trimmed.is_empty() || trimmed == "*" {
            return Ok(Box::new(AllQuery));
        }
        // Tantivy marks the ends of JSON path segments with control bytes (0 and 1); one in a
        // field path such as `tags.\0` trips an assertion in its query parser (found by
        // fuzzing). No query needs a control character besides whitespace, so none is taken.
        if let Some((offset, character)) = trimmed
            .char_indices()
            .find(|(_, character)| character.is_control() && !character.is_whitespace())
        {
            return Err(SluiceError::invalid(format!(
                "invalid query: control character U+{:04X} at byte {offset}",
                u32::from(character)
            )));
        }
        let nesting = query_nesting(trimmed);
        if nesting > MAX_QUERY_NESTING {
            return Err(SluiceError::invalid(format!(
                "invalid query: nested {nesting} deep (parentheses and NOTs); at most {MAX_QUERY_NESTING}"
            )));
        }
        self.parser
            .parse_query(trimmed)
            .map_err(|error| SluiceError::invalid(format!("invalid query {trimmed:?}: {error}")))
    }

    /// The indexer's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn template_cache(&self) -> &crate::patterns::TemplateCache {
        &self.templates
    }

    /// The partition directories searched.
    pub(crate) fn store(&self) -> &IndexStore {
        &self.store
    }

    /// The hours on disk, oldest first; readers of hours that are gone (expired) are let go,
    /// so their files leave the disk.
    pub fn hours(&self) -> Result<Vec<Hour>, SluiceError> {
        let hours = self.store.list()?;
        self.readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|hour, _| hours.binary_search(hour).is_ok());
        Ok(hours)
    }

    pub(crate) fn reader(&self, hour: Hour) -> Result<IndexReader, SluiceError> {
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

    /// A searcher over `hour`'s latest commit.
    pub(crate) fn fresh_searcher(&self, hour: Hour) -> Result<tantivy::Searcher, SluiceError> {
        let reader = self.reader(hour)?;
        reader.reload().map_err(|error| {
            SluiceError::internal(format!(
                "failed to reload {}: {error}",
                hour.partition_name()
            ))
        })?;
        Ok(reader.searcher())
    }

    /// Runs `request`. Blocking: call it from a blocking thread.
    pub fn search(&self, request: &SearchRequest) -> Result<SearchResponse, SluiceError> {
        let started = Instant::now();
        if let (Some(start), Some(end)) = (request.start_ns, request.end_ns)
            && start >= end
        {
            return Err(SluiceError::invalid("start must be before end"));
        }
        if let Some(interval) = request.histogram_interval_ns
            && interval <= 0
        {
            return Err(SluiceError::invalid("histogram interval must be positive"));
        }
        let query = self.parse(&request.query)?;
        let histogram = request
            .histogram_interval_ns
            .map(|interval_ns| Histogram { interval_ns });
        let mut counts = request.histogram_interval_ns.map(|_| Counts::new());
        let fields = self.store.fields().clone();
        let start = request.start_ns.unwrap_or(i64::MIN);
        let end = request.end_ns.unwrap_or(i64::MAX);
        let mut hours: Vec<Hour> = self
            .hours()?
            .into_iter()
            .filter(|hour| hour.end_nanos() > start && hour.start_nanos() < end)
            .collect();
        hours.reverse();

        let mut total = 0_u64;
        let mut hits = Vec::new();
        for hour in &hours {
            let searcher = self.fresh_searcher(*hour)?;
            let query =
                crate::scope::scoped(query.box_clone(), request.scope.as_ref(), searcher.schema())?;
            // Only partitions that the range cuts need the timestamp condition.
            let bounded: Box<dyn Query> = if start > hour.start_nanos() || end < hour.end_nanos() {
                let range = RangeQuery::new(
                    Bound::Included(Term::from_field_i64(fields.timestamp, start)),
                    Bound::Excluded(Term::from_field_i64(fields.timestamp, end)),
                );
                Box::new(BooleanQuery::new(vec![
                    (Occur::Must, query),
                    (Occur::Must, Box::new(range)),
                ]))
            } else {
                query
            };
            let wanted = request.limit.saturating_sub(hits.len());
            let failed = |error: tantivy::TantivyError| {
                SluiceError::internal(format!(
                    "search failed on {}: {error}",
                    hour.partition_name()
                ))
            };
            let partition_counts = if wanted == 0 {
                let (count, partition_counts) = searcher
                    .search(&bounded, &(Count, histogram))
                    .map_err(failed)?;
                total += count as u64;
                partition_counts
            } else {
                let collector = (
                    Count,
                    TopDocs::with_limit(wanted)
                        .order_by_fast_field::<i64>("timestamp", Order::Desc),
                    histogram,
                );
                let (count, top, partition_counts) =
                    searcher.search(&bounded, &collector).map_err(failed)?;
                total += count as u64;
                for (_, address) in top {
                    hits.push(self.hit_at(&searcher, address)?);
                }
                partition_counts
            };
            if let (Some(counts), Some(partition_counts)) = (&mut counts, partition_counts) {
                histogram::merge_into(counts, partition_counts);
                if counts.len() > MAX_BUCKETS {
                    return Err(SluiceError::invalid(format!(
                        "the histogram would have more than {MAX_BUCKETS} buckets; use a wider \
                         interval or a narrower time range"
                    )));
                }
            }
        }
        Ok(SearchResponse {
            total,
            hits,
            partitions_searched: hours.len(),
            took_ms: started.elapsed().as_millis() as u64,
            histogram: counts.as_ref().map(histogram::buckets),
        })
    }

    /// The hit of the document at `address`.
    pub(crate) fn hit_at(
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
        let tags = stored_tags(&document, fields.tags);
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
            pattern_id: text(fields.pattern_id),
        })
    }
}

/// A document's stored tags.
pub(crate) fn stored_tags(
    document: &TantivyDocument,
    field: tantivy::schema::Field,
) -> BTreeMap<String, String> {
    document
        .get_first(field)
        .and_then(|value| value.as_object())
        .map(|object| {
            object
                .filter_map(|(key, value)| {
                    value.as_str().map(|text| (key.to_owned(), text.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Origin;
    use sluice_proto::v2::{Envelope, Log, envelope};

    const MINUTE: i64 = 60_000_000_000;

    /// Tantivy's query parser recurses once per parenthesis and per NOT: 10,000 of either
    /// overflowed the stack (found by fuzzing), which aborts the whole process, from one
    /// search request. Such queries are refused; ordinary nesting parses as before.
    #[test]
    fn regression_deeply_nested_queries_are_refused_not_a_stack_overflow() {
        let searcher = Searcher::new(Path::new("/nonexistent-sluice-index"));
        let deep_parentheses = format!("{}a{}", "(".repeat(10_000), ")".repeat(10_000));
        let deep_not = format!("{}a", "NOT ".repeat(20_000));
        let deep_field = "message:(".repeat(20_000);
        for query in [&deep_parentheses, &deep_not, &deep_field] {
            let error = searcher.parse(query).expect_err("refused");
            assert!(error.message().contains("nested"), "{error}");
        }
        let fine = format!("{}a OR b{}", "(".repeat(32), ")".repeat(32));
        searcher.parse(&fine).expect("32 deep parses");
        searcher
            .parse("message:\"(((NOT quoted)))\" AND NOT (source_id:web OR -source_id:api)")
            .expect("parentheses in quotes do not count");
        assert_eq!(query_nesting("NOT NOT a AND NOT b"), 2);
        assert_eq!(query_nesting("((a) OR (NOT (b)))"), 4);
    }

    /// A control byte in a JSON field path made Tantivy's query parser panic (fuzzing found
    /// it: `fuzz/regressions/query/`); such queries are refused instead.
    #[test]
    fn regression_control_characters_in_a_query_are_refused_not_a_panic() {
        let searcher = Searcher::new(Path::new("/nonexistent-sluice-index"));
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions/query/json-path-nul.bin");
        let found = String::from_utf8_lossy(&std::fs::read(path).expect("the regression input"))
            .into_owned();
        for query in [
            found.as_str(),
            "tags.\0:1",
            "tags.a\u{1}b:x",
            "message:a\u{7f}",
        ] {
            let error = searcher.parse(query).expect_err("refused");
            assert!(error.message().contains("control character"), "{error}");
        }
        searcher
            .parse("message:\"a\tb\"\n AND source_id:api")
            .expect("whitespace is fine");
    }

    /// Indexes one line per timestamp (message `line <word>`) into their hour partitions.
    fn index(dir: &Path, lines: &[(i64, &str)]) {
        let store = IndexStore::new(dir);
        let mut by_hour: BTreeMap<Hour, Vec<(i64, &str)>> = BTreeMap::new();
        for &(timestamp, word) in lines {
            by_hour
                .entry(Hour::of_nanos(timestamp))
                .or_default()
                .push((timestamp, word));
        }
        for (hour, lines) in by_hour {
            let index = store.open_or_create(hour).expect("partition");
            let mut writer: tantivy::IndexWriter = index
                .writer_with_num_threads(1, 15_000_000)
                .expect("writer");
            for (offset, (timestamp, word)) in lines.into_iter().enumerate() {
                let envelope = Envelope {
                    timestamp,
                    source_id: "app".into(),
                    message: Some(envelope::Message::Log(Log {
                        payload: format!("line {word}").into_bytes(),
                        r#type: 0,
                    })),
                    ..Default::default()
                };
                let origin = Origin {
                    agent_id: "agent",
                    sequence: 1,
                    partition: 0,
                    offset: offset as u64,
                    index: 0,
                    batch_envelopes: 1,
                    pattern_id: None,
                };
                writer
                    .add_document(store.fields().document(&envelope, origin).expect("log"))
                    .expect("add");
            }
            writer.commit().expect("commit");
        }
    }

    fn request(query: &str, interval_ns: Option<i64>) -> SearchRequest {
        SearchRequest {
            scope: None,
            query: query.into(),
            start_ns: None,
            end_ns: None,
            limit: 1,
            histogram_interval_ns: interval_ns,
        }
    }

    #[test]
    fn histogram_counts_matches_per_aligned_bucket_across_partitions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hour = 1_800_000 * 60 * MINUTE; // an hour boundary
        index(
            dir.path(),
            &[
                (hour - MINUTE, "error"),         // previous hour's partition
                (hour + 10_000_000_000, "error"), // 0:10
                (hour + 50_000_000_000, "error"), // 0:50, same minute
                (hour + 30_000_000_000, "ok"),    // does not match
                (hour + 5 * MINUTE, "error"),
            ],
        );
        let searcher = Searcher::new(dir.path());
        let answer = searcher
            .search(&request("error", Some(MINUTE)))
            .expect("search");
        assert_eq!(answer.total, 4);
        assert_eq!(answer.hits.len(), 1);
        let buckets = answer.histogram.expect("histogram asked for");
        assert_eq!(
            buckets,
            vec![
                Bucket {
                    start_ns: hour - MINUTE,
                    count: 1
                },
                Bucket {
                    start_ns: hour,
                    count: 2
                },
                Bucket {
                    start_ns: hour + 5 * MINUTE,
                    count: 1
                },
            ]
        );
        // Without the parameter there is no histogram in the answer.
        let plain = searcher.search(&request("error", None)).expect("search");
        assert!(plain.histogram.is_none());
    }

    #[test]
    fn histogram_refuses_bad_intervals_and_too_many_buckets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = 1_800_000 * 60 * MINUTE;
        let lines: Vec<(i64, &str)> = (0..=MAX_BUCKETS as i64)
            .map(|n| (base + n * 1_000_000, "x"))
            .collect();
        index(dir.path(), &lines);
        let searcher = Searcher::new(dir.path());
        let error = searcher.search(&request("x", Some(0))).expect_err("zero");
        assert_eq!(error.kind(), ErrorKind::InvalidArgument);
        let error = searcher
            .search(&request("x", Some(1_000_000)))
            .expect_err("one bucket per line is more than the cap");
        assert_eq!(error.kind(), ErrorKind::InvalidArgument);
        assert!(error.to_string().contains("buckets"), "{error}");
        let fine = searcher
            .search(&request("x", Some(MINUTE)))
            .expect("a minute holds them all");
        assert_eq!(fine.histogram.map(|buckets| buckets.len()), Some(1));
    }
}
