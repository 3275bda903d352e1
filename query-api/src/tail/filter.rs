//! What a tail selects: `source_id` (repeatable), `instance_id` (repeatable), `type` (log,
//! counter, gauge, timer, event; repeatable), `log_type` (OUT or ERR), `tag.NAME=VALUE`
//! (each must hold) and `query`, a text filter in the search language.
//!
//! The text filter is parsed by the search's own parser (so a query means the same in
//! `/api/v1/search` and in a tail) and evaluated on each envelope the way the index would
//! match its document: message words through the same tokenizer, `source_id`, `instance_id`
//! and `log_type` as whole values, `tags.NAME` as whole values, and `AND`, `OR`,
//! `NOT` and phrases with Tantivy's semantics (including its quirk that a clause of `NOT`s
//! alone inside another, as in `a AND NOT b`, matches nothing: write `a NOT b`). Query constructs a single envelope cannot be
//! matched against the way the index would (ranges, boosts, `field:*`, phrase slop) are
//! refused with the construct named.

use std::collections::BTreeMap;

use sluice_common::SluiceError;
use sluice_common::envelope::{decode_payload, merged_tags};
use sluice_common::tenancy::{self, Scope};
use sluice_indexer::search::Searcher;
use sluice_proto::v2::{Envelope, envelope, log};
use tantivy::Term;
use tantivy::query::{AllQuery, BooleanQuery, EmptyQuery, Occur, PhraseQuery, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema};
use tantivy::tokenizer::{TextAnalyzer, TokenizerManager};

/// Envelope kinds a tail may select.
const KINDS: [&str; 5] = ["log", "counter", "gauge", "timer", "event"];

/// A tail's selection, checked when the tail starts.
pub struct TailFilter {
    /// Sources selected; every source when empty.
    pub source_ids: Vec<String>,
    instance_ids: Vec<String>,
    kinds: Vec<&'static str>,
    log_type: Option<&'static str>,
    tags: Vec<(String, String)>,
    text: Option<Matcher>,
    /// The text filter as the index runs it (history comes from the index).
    text_query: Option<Box<dyn Query>>,
    tokenizer: TextAnalyzer,
    /// The records the caller may see, whatever it selects (`None`: every tenant's).
    scope: Option<Scope>,
}

impl TailFilter {
    /// The filter of a tail request's query pairs. Unknown parameters are refused, so a
    /// misspelt selector does not quietly select everything.
    pub fn from_pairs(
        pairs: impl IntoIterator<Item = (String, String)>,
        searcher: &Searcher,
    ) -> Result<TailFilter, SluiceError> {
        let mut filter = TailFilter {
            source_ids: Vec::new(),
            instance_ids: Vec::new(),
            kinds: Vec::new(),
            log_type: None,
            tags: Vec::new(),
            text: None,
            text_query: None,
            scope: None,
            tokenizer: TokenizerManager::default()
                .get("default")
                .ok_or_else(|| SluiceError::internal("the default tokenizer is missing"))?,
        };
        for (key, value) in pairs {
            match key.as_str() {
                "source_id" => filter.source_ids.push(value),
                "instance_id" => filter.instance_ids.push(value),
                "type" => {
                    let kind = KINDS
                        .iter()
                        .find(|kind| kind.eq_ignore_ascii_case(&value))
                        .ok_or_else(|| {
                            SluiceError::invalid(format!(
                                "type={value:?}: give one of {}",
                                KINDS.join(", ")
                            ))
                        })?;
                    filter.kinds.push(kind);
                }
                "log_type" => {
                    filter.log_type = Some(match value.to_ascii_uppercase().as_str() {
                        "OUT" => "OUT",
                        "ERR" => "ERR",
                        _ => {
                            return Err(SluiceError::invalid(format!(
                                "log_type={value:?}: give OUT or ERR"
                            )));
                        }
                    });
                }
                "query" if !value.trim().is_empty() => {
                    if value.contains("\"~") {
                        return Err(SluiceError::invalid(
                            "query: phrase slop (\"…\"~N) is not supported in a tail filter",
                        ));
                    }
                    let query = searcher.parse(&value)?;
                    filter.text = Some(Matcher::of(query.as_ref(), searcher.schema())?);
                    filter.text_query = Some(query);
                }
                "query" => {}
                _ => match key.strip_prefix("tag.") {
                    Some(name) if !name.is_empty() => filter.tags.push((name.to_owned(), value)),
                    _ => {
                        return Err(SluiceError::invalid(format!(
                            "unknown tail parameter {key:?}: give source_id, instance_id, type, log_type, tag.NAME, query, since, tail or cursor"
                        )));
                    }
                },
            }
        }
        Ok(filter)
    }

    /// The same filter, within `scope`: live envelopes outside it are never selected, and
    /// history adds it to the index query (`sluice_indexer::scope`).
    pub fn within(mut self, scope: Option<Scope>) -> TailFilter {
        self.scope = scope;
        self
    }

    /// The records the caller may see.
    pub fn scope(&self) -> Option<&Scope> {
        self.scope.as_ref()
    }

    /// Whether envelopes the index does not hold (counters, gauges, timers) may match: when
    /// not, such envelopes in records a tail missed cannot be its loss.
    pub fn may_select_unindexed(&self) -> bool {
        self.log_type.is_none()
            && (self.kinds.is_empty()
                || self
                    .kinds
                    .iter()
                    .any(|kind| !matches!(*kind, "log" | "event")))
    }

    /// The same selection as an index query: what [`TailFilter::matches`] selects among the
    /// envelopes the index holds (logs and events).
    pub fn index_query(&self, schema: &Schema) -> Result<Box<dyn Query>, SluiceError> {
        let field = |name: &str| {
            schema
                .get_field(name)
                .map_err(|_| SluiceError::internal(format!("the index has no field {name}")))
        };
        let term = |field: Field, value: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, value),
                IndexRecordOption::Basic,
            ))
        };
        let any_of = |field: Field, values: &[&str]| -> Box<dyn Query> {
            Box::new(BooleanQuery::new(
                values
                    .iter()
                    .map(|value| (Occur::Should, term(field, value)))
                    .collect(),
            ))
        };
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, Box::new(AllQuery))];
        if !self.source_ids.is_empty() {
            let values: Vec<&str> = self.source_ids.iter().map(String::as_str).collect();
            clauses.push((Occur::Must, any_of(field("source_id")?, &values)));
        }
        if !self.instance_ids.is_empty() {
            let values: Vec<&str> = self.instance_ids.iter().map(String::as_str).collect();
            clauses.push((Occur::Must, any_of(field("instance_id")?, &values)));
        }
        // The index holds logs (OUT, ERR) and events (EVENT) only.
        let mut log_types: Vec<&str> = Vec::new();
        if self.kinds.is_empty() || self.kinds.contains(&"log") {
            log_types.extend(["OUT", "ERR"]);
        }
        if self.kinds.is_empty() || self.kinds.contains(&"event") {
            log_types.push("EVENT");
        }
        if let Some(wanted) = self.log_type {
            log_types.retain(|log_type| *log_type == wanted);
        }
        if log_types.is_empty() {
            return Ok(Box::new(EmptyQuery));
        }
        clauses.push((Occur::Must, any_of(field("log_type")?, &log_types)));
        let tags = field("tags")?;
        for (name, value) in &self.tags {
            let path = name.replace('\\', "\\\\").replace('.', "\\.");
            let mut tag = Term::from_field_json_path(tags, &path, false);
            tag.append_type_and_str(value);
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(tag, IndexRecordOption::Basic)),
            ));
        }
        if let Some(text) = &self.text_query {
            clauses.push((Occur::Must, text.box_clone()));
        }
        Ok(Box::new(BooleanQuery::new(clauses)))
    }

    /// Whether `envelope` is selected.
    pub fn matches(&self, envelope: &Envelope) -> bool {
        if !tenancy::visible(self.scope.as_ref(), envelope) {
            return false;
        }
        if !self.source_ids.is_empty() && !self.source_ids.contains(&envelope.source_id) {
            return false;
        }
        if !self.instance_ids.is_empty() && !self.instance_ids.contains(&envelope.instance_id) {
            return false;
        }
        let kind = sluice_common::envelope::kind_name(envelope);
        if !self.kinds.is_empty() && !self.kinds.contains(&kind) {
            return false;
        }
        let log_type = match &envelope.message {
            Some(envelope::Message::Log(entry)) if entry.r#type == log::Type::Err as i32 => "ERR",
            Some(envelope::Message::Log(_)) => "OUT",
            Some(envelope::Message::Event(_)) => "EVENT",
            _ => "",
        };
        if self.log_type.is_some_and(|wanted| wanted != log_type) {
            return false;
        }
        if self.tags.is_empty() && self.text.is_none() {
            return true;
        }
        let tags = merged_tags(envelope);
        if !self
            .tags
            .iter()
            .all(|(name, value)| tags.get(name) == Some(value))
        {
            return false;
        }
        let Some(text) = &self.text else {
            return true;
        };
        // Only what the index holds can match a text filter: logs and events.
        let message = match &envelope.message {
            Some(envelope::Message::Log(entry)) => decode_payload(&entry.payload).0.into_owned(),
            Some(envelope::Message::Event(event)) => format!("{}: {}", event.title, event.body),
            _ => return false,
        };
        let document = Document {
            envelope,
            log_type,
            tags: &tags,
            words: self.words(&message),
        };
        text.matches(&document)
    }

    /// The message's tokens, in order, as the index's `default` tokenizer makes them.
    fn words(&self, message: &str) -> Vec<String> {
        let mut tokenizer = self.tokenizer.clone();
        let mut stream = tokenizer.token_stream(message);
        let mut words = Vec::new();
        while let Some(token) = stream.next() {
            words.push(token.text.clone());
        }
        words
    }
}

/// An envelope seen as the index's document.
struct Document<'a> {
    envelope: &'a Envelope,
    log_type: &'static str,
    tags: &'a BTreeMap<String, String>,
    words: Vec<String>,
}

/// A field of the index, as the matcher reads it from an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Message,
    SourceId,
    InstanceId,
    LogType,
    Tags,
}

/// A parsed text filter, evaluated on one envelope.
#[derive(Debug)]
enum Matcher {
    All,
    Nothing,
    /// A message word, a whole field value, or a tag (`name`, value).
    Term(Target, Option<String>, String),
    /// Consecutive message words.
    Phrase(Vec<String>),
    Boolean(Vec<(Occur, Matcher)>),
}

impl Matcher {
    fn of(query: &dyn Query, schema: &Schema) -> Result<Matcher, SluiceError> {
        if query.is::<AllQuery>() {
            return Ok(Matcher::All);
        }
        if query.is::<EmptyQuery>() {
            return Ok(Matcher::Nothing);
        }
        if let Some(term) = query.downcast_ref::<TermQuery>() {
            return Matcher::term(term.term(), schema);
        }
        if let Some(phrase) = query.downcast_ref::<PhraseQuery>() {
            if target(phrase.field(), schema)? != Target::Message {
                return Err(unsupported("a phrase on a field other than the message"));
            }
            let words = phrase
                .phrase_terms()
                .iter()
                .map(|term| term.value().as_str().map(str::to_owned).unwrap_or_default())
                .collect();
            return Ok(Matcher::Phrase(words));
        }
        if let Some(boolean) = query.downcast_ref::<BooleanQuery>() {
            let clauses = boolean
                .clauses()
                .iter()
                .map(|(occur, clause)| Ok((*occur, Matcher::of(clause.as_ref(), schema)?)))
                .collect::<Result<Vec<_>, SluiceError>>()?;
            return Ok(Matcher::Boolean(clauses));
        }
        Err(unsupported(
            "this construct (a range, a boost, field:* or a set)",
        ))
    }

    fn term(term: &Term, schema: &Schema) -> Result<Matcher, SluiceError> {
        let target = target(term.field(), schema)?;
        if target == Target::Tags {
            let name = term
                .get_json_path()
                .ok_or_else(|| unsupported("a tag term without a name"))?
                .replace('\u{1}', ".");
            // A JSON term's value bytes are the path, its end byte (0), the value's type code
            // and the value.
            let bytes = term.serialized_value_bytes();
            let value = match (
                term.value().json_path_type(),
                bytes.iter().position(|&byte| byte == 0),
            ) {
                (Some(tantivy::schema::Type::Str), Some(end)) => bytes
                    .get(end + 2..)
                    .and_then(|value| std::str::from_utf8(value).ok())
                    .map(str::to_owned),
                _ => None,
            }
            .ok_or_else(|| unsupported("a tag value that is not text"))?;
            return Ok(Matcher::Term(target, Some(name), value));
        }
        let value = term
            .value()
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| unsupported("a term that is not text"))?;
        Ok(Matcher::Term(target, None, value))
    }

    fn matches(&self, document: &Document<'_>) -> bool {
        match self {
            Matcher::All => true,
            Matcher::Nothing => false,
            Matcher::Term(target, name, value) => {
                let envelope = document.envelope;
                match target {
                    Target::Message => document.words.iter().any(|word| word == value),
                    Target::SourceId => &envelope.source_id == value,
                    Target::InstanceId => &envelope.instance_id == value,
                    Target::LogType => document.log_type == value,
                    Target::Tags => name
                        .as_ref()
                        .and_then(|name| document.tags.get(name))
                        .is_some_and(|tag| tag == value),
                }
            }
            Matcher::Phrase(words) => {
                !words.is_empty()
                    && document
                        .words
                        .windows(words.len())
                        .any(|window| window == words.as_slice())
            }
            // Tantivy's rules: every MUST holds and no MUST_NOT does; without a MUST, one
            // SHOULD must hold (a query of MUST_NOTs alone matches nothing).
            Matcher::Boolean(clauses) => {
                let mut has_must = false;
                let mut has_should = false;
                let mut any_should = false;
                for (occur, clause) in clauses {
                    match occur {
                        Occur::Must => {
                            has_must = true;
                            if !clause.matches(document) {
                                return false;
                            }
                        }
                        Occur::MustNot => {
                            if clause.matches(document) {
                                return false;
                            }
                        }
                        Occur::Should => {
                            has_should = true;
                            any_should = any_should || clause.matches(document);
                        }
                    }
                }
                has_must || (has_should && any_should)
            }
        }
    }
}

/// `text` as an SQL string literal.
fn sql_text(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// What separates words for Tantivy's default tokenizer: anything not a letter or digit.
const NOT_WORD: &str = r"[^\p{Alphabetic}\p{N}]";

impl Matcher {
    /// The same selection as an SQL predicate over the archive's `logs` table: message words
    /// and phrases as case-blind matches between word boundaries of the tokenizer, fields and
    /// tags as whole values, and Tantivy's boolean rules.
    fn sql(&self) -> String {
        match self {
            Matcher::All => "TRUE".to_owned(),
            Matcher::Nothing => "FALSE".to_owned(),
            Matcher::Term(target, name, value) => match target {
                Target::Message => format!(
                    "regexp_like(message, {})",
                    sql_text(&format!(
                        "(?i)(^|{NOT_WORD}){}($|{NOT_WORD})",
                        regex::escape(value)
                    ))
                ),
                Target::SourceId => format!("source_id = {}", sql_text(value)),
                Target::InstanceId => format!("instance_id = {}", sql_text(value)),
                Target::LogType => format!("log_type = {}", sql_text(value)),
                Target::Tags => format!(
                    "tags[{}] = {}",
                    sql_text(name.as_deref().unwrap_or_default()),
                    sql_text(value)
                ),
            },
            Matcher::Phrase(words) if words.is_empty() => "FALSE".to_owned(),
            Matcher::Phrase(words) => {
                let joined: Vec<String> = words.iter().map(|word| regex::escape(word)).collect();
                format!(
                    "regexp_like(message, {})",
                    sql_text(&format!(
                        "(?i)(^|{NOT_WORD}){}($|{NOT_WORD})",
                        joined.join(&format!("{NOT_WORD}+"))
                    ))
                )
            }
            Matcher::Boolean(clauses) => {
                let of = |wanted: Occur| -> Vec<String> {
                    clauses
                        .iter()
                        .filter(|(occur, _)| *occur == wanted)
                        .map(|(_, clause)| format!("({})", clause.sql()))
                        .collect()
                };
                let (musts, shoulds) = (of(Occur::Must), of(Occur::Should));
                let nots: Vec<String> = of(Occur::MustNot)
                    .into_iter()
                    .map(|clause| format!("NOT coalesce({clause}, FALSE)"))
                    .collect();
                let mut all = if !musts.is_empty() {
                    musts
                } else if !shoulds.is_empty() {
                    vec![format!("({})", shoulds.join(" OR "))]
                } else {
                    return "FALSE".to_owned();
                };
                all.extend(nots);
                all.join(" AND ")
            }
        }
    }
}

/// `query` (the search language) as an SQL predicate over the archive's `logs` table, with the
/// meaning it has in the index; constructs a tail filter refuses are refused the same way.
pub fn sql_predicate(query: &str, searcher: &Searcher) -> Result<String, SluiceError> {
    if query.trim().is_empty() {
        return Ok("TRUE".to_owned());
    }
    let parsed = searcher.parse(query)?;
    Ok(Matcher::of(parsed.as_ref(), searcher.schema())?.sql())
}

fn target(field: Field, schema: &Schema) -> Result<Target, SluiceError> {
    Ok(match schema.get_field_name(field) {
        "message" => Target::Message,
        "source_id" => Target::SourceId,
        "instance_id" => Target::InstanceId,
        "log_type" => Target::LogType,
        "tags" => Target::Tags,
        other => {
            return Err(unsupported(&format!(
                "the field {other:?} (search it with /api/v1/search)"
            )));
        }
    })
}

fn unsupported(what: &str) -> SluiceError {
    SluiceError::invalid(format!("query: {what} is not supported in a tail filter"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_indexer::schema::Origin;
    use sluice_indexer::store::IndexStore;
    use sluice_proto::v2::{Counter, Event, Log};
    use tantivy::collector::DocSetCollector;

    fn envelopes() -> Vec<Envelope> {
        let log = |source: &str, instance: &str, err: bool, job: &str, text: &str| Envelope {
            timestamp: 1_700_000_000_000_000_000,
            source_id: source.into(),
            instance_id: instance.into(),
            tags: [
                ("job".to_owned(), job.to_owned()),
                ("k8s.ns".to_owned(), "prod".to_owned()),
            ]
            .into_iter()
            .collect(),
            message: Some(envelope::Message::Log(Log {
                payload: text.as_bytes().to_vec(),
                r#type: if err { log::Type::Err } else { log::Type::Out } as i32,
            })),
            ..Default::default()
        };
        vec![
            log("web", "0", false, "web", "GET /health 200"),
            log("web", "1", true, "web", "connection refused to db"),
            log("api", "0", true, "worker", "timeout talking to db"),
            log("api", "1", false, "worker", "GET /orders 200 in 12 ms"),
            Envelope {
                timestamp: 1_700_000_000_000_000_000,
                source_id: "web".into(),
                message: Some(envelope::Message::Event(Event {
                    title: "deployed".into(),
                    body: "version 42".into(),
                })),
                ..Default::default()
            },
            Envelope {
                timestamp: 1_700_000_000_000_000_000,
                source_id: "web".into(),
                message: Some(envelope::Message::Counter(Counter {
                    name: "requests".into(),
                    delta: 1,
                    total: 9,
                })),
                ..Default::default()
            },
        ]
    }

    /// History comes from the index and live envelopes from the bus: for a tail not to
    /// change its selection at the seam, the index query of every selector selects exactly
    /// the indexed envelopes the live matcher selects.
    #[test]
    fn the_index_query_selects_what_the_live_matcher_selects() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = IndexStore::new(dir.path());
        let all = envelopes();
        let hour = sluice_common::time::Hour::of_nanos(all[0].timestamp);
        let index = store.open_or_create(hour).expect("index");
        let mut writer: tantivy::IndexWriter = index
            .writer_with_num_threads(1, 15_000_000)
            .expect("writer");
        let mut indexed = Vec::new();
        for (position, envelope) in all.iter().enumerate() {
            let origin = Origin {
                agent_id: "agent",
                sequence: 1,
                partition: 0,
                offset: position as u64,
                index: 0,
                batch_envelopes: 1,
                pattern_id: None,
            };
            if let Some(document) = store.fields().document(envelope, origin) {
                writer.add_document(document).expect("add");
                indexed.push(position);
            }
        }
        writer.commit().expect("commit");
        let searcher = Searcher::new(dir.path());
        let reader = index.reader().expect("reader");
        let selections: &[&[(&str, &str)]] = &[
            &[],
            &[("source_id", "web")],
            &[("source_id", "web"), ("source_id", "api")],
            &[("instance_id", "1")],
            &[("type", "log")],
            &[("type", "event")],
            &[("type", "counter")],
            &[("type", "counter"), ("type", "event")],
            &[("log_type", "ERR")],
            &[("log_type", "OUT"), ("source_id", "api")],
            &[("tag.job", "worker")],
            &[("tag.k8s.ns", "prod"), ("log_type", "ERR")],
            &[("query", "db")],
            &[("query", "\"connection refused\"")],
            &[("query", "GET NOT orders")],
            &[("query", "deployed OR timeout")],
            &[("query", "source_id:api AND 200")],
        ];
        for selection in selections {
            let pairs = selection
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()));
            let filter = TailFilter::from_pairs(pairs, &searcher).expect("filter");
            let live: Vec<u64> = indexed
                .iter()
                .filter(|position| filter.matches(&all[**position]))
                .map(|position| *position as u64)
                .collect();
            let query = filter.index_query(searcher.schema()).expect("index query");
            let tantivy_searcher = reader.searcher();
            let addresses = tantivy_searcher
                .search(query.as_ref(), &DocSetCollector)
                .expect("search");
            let mut found: Vec<u64> = addresses
                .into_iter()
                .map(|address| {
                    tantivy_searcher
                        .segment_reader(address.segment_ord)
                        .fast_fields()
                        .u64("bus_offset")
                        .expect("column")
                        .first(address.doc_id)
                        .expect("offset")
                })
                .collect();
            found.sort_unstable();
            assert_eq!(found, live, "selection {selection:?}");
        }
    }
}
