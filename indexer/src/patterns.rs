//! Patterns in the index: the templates the doppler described, and the matching lines of a
//! query counted by pattern.
//!
//! Every indexed log line carries the `pattern_id` its doppler gave it (a fast field). The
//! templates arrive in the bus records beside the lines ([`sluice_proto::v1::PatternTemplate`])
//! and are kept in `<dir>/patterns.json` ([`Templates`]), written before the checkpoint of
//! each commit that changed them; once there are more than [`SAVE_AT_ONCE_BELOW`], at most
//! every [`SAVE_EVERY`] (and at shutdown): a template lost to a crash in between is described
//! again by its doppler within the hour. At most [`MAX_TEMPLATES`] are
//! kept; past it the older half (by first line) goes, to be described again if it returns.
//!
//! [`Searcher::patterns`] counts the lines a query matches in a time range by `pattern_id`
//! (a collector over the fast field's ordinals, per step too), keeps the newest line of each
//! as its example, and answers with the templates of the ids it found and of the patterns
//! they were merged into (a pattern that generalised lists the ids it had before). Merging
//! those, and the answers of several indexers, is the query side's work.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sluice_common::SluiceError;
use sluice_common::time::Hour;
use sluice_proto::v1::PatternTemplate;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Column, StrColumn};
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery};
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, SegmentReader, Term};

use crate::search::{SearchHit, Searcher};

/// Templates kept at most.
pub const MAX_TEMPLATES: usize = 200_000;

/// Below this many templates, changed ones are written out at every commit.
pub const SAVE_AT_ONCE_BELOW: usize = 10_000;

/// How often changed templates are written out at most past [`SAVE_AT_ONCE_BELOW`]: a source
/// of ever-new shapes makes a large file, which must not be rewritten at every commit.
pub const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Most distinct patterns one answer may hold.
pub const MAX_PATTERNS: usize = 10_000;

/// Most steps one pattern's counts may have.
pub const MAX_STEPS: usize = 2_000;

/// What the index knows of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// The pattern's id.
    pub id: u64,
    /// Its source.
    pub source_id: String,
    /// Constant tokens, a placeholder of the value's kind (`<num>`, `<ip>`, `<*>`) where a value goes.
    pub template: String,
    /// Ids it answered to before it generalised.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<u64>,
    /// Timestamp (ns) of the first line mined into it.
    pub first_seen: i64,
}

impl From<&PatternTemplate> for Template {
    fn from(template: &PatternTemplate) -> Template {
        Template {
            id: template.id,
            source_id: template.source_id.clone(),
            template: template.template.clone(),
            merged: template.merged.clone(),
            first_seen: template.first_seen,
        }
    }
}

/// The templates the index has seen, by id (the indexing thread's copy).
#[derive(Debug, Default)]
pub struct Templates {
    by_id: HashMap<u64, Template>,
    dirty: bool,
    saved_at: Option<Instant>,
}

impl Templates {
    /// The templates saved at `path` (none when there is no file yet).
    pub fn load(path: &Path) -> Result<Templates, SluiceError> {
        Ok(Templates {
            by_id: read_templates(path)?,
            dirty: false,
            saved_at: None,
        })
    }

    /// Takes what a batch described: new ids, and templates that changed.
    pub fn learn(&mut self, templates: &[PatternTemplate]) {
        for template in templates {
            let entry = self.by_id.entry(template.id);
            match entry {
                std::collections::hash_map::Entry::Occupied(mut known) => {
                    let known = known.get_mut();
                    if known.template != template.template
                        || known.merged.len() != template.merged.len()
                    {
                        let first_seen = known.first_seen.min(template.first_seen);
                        *known = Template::from(template);
                        known.first_seen = first_seen;
                        self.dirty = true;
                    }
                }
                std::collections::hash_map::Entry::Vacant(vacant) => {
                    vacant.insert(Template::from(template));
                    self.dirty = true;
                }
            }
        }
        if self.by_id.len() > MAX_TEMPLATES {
            let mut first_seen: Vec<i64> = self
                .by_id
                .values()
                .map(|template| template.first_seen)
                .collect();
            let middle = first_seen.len() / 2;
            let (_, median, _) = first_seen.select_nth_unstable(middle);
            let median = *median;
            self.by_id
                .retain(|_, template| template.first_seen >= median);
        }
    }

    /// Templates held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Writes the templates to `path` (atomically) if they changed since the last save: at
    /// once while there are few, or `now`; else when the last save was [`SAVE_EVERY`] ago.
    pub fn save(&mut self, path: &Path, now: bool) -> Result<(), SluiceError> {
        let wait = !now
            && self.by_id.len() >= SAVE_AT_ONCE_BELOW
            && self
                .saved_at
                .is_some_and(|saved| saved.elapsed() < SAVE_EVERY);
        if !self.dirty || wait {
            return Ok(());
        }
        self.saved_at = Some(Instant::now());
        let mut sorted: Vec<&Template> = self.by_id.values().collect();
        sorted.sort_by_key(|template| template.id);
        let bytes = serde_json::to_vec(&sorted)
            .map_err(|error| SluiceError::internal(format!("encoding templates: {error}")))?;
        crate::pipeline::write_atomically(path, &bytes)?;
        self.dirty = false;
        Ok(())
    }
}

fn read_templates(path: &Path) -> Result<HashMap<u64, Template>, SluiceError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let list: Vec<Template> = serde_json::from_slice(&bytes).map_err(|error| {
                SluiceError::internal(format!("failed to read {}: {error}", path.display()))
            })?;
            Ok(list
                .into_iter()
                .map(|template| (template.id, template))
                .collect())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(error) => Err(SluiceError::internal(format!(
            "failed to read {}: {error}",
            path.display()
        ))),
    }
}

/// The templates of `patterns.json` as last read, with the file's modification time and size.
type Loaded = ((SystemTime, u64), std::sync::Arc<HashMap<u64, Template>>);

/// The searcher's view of `patterns.json`, read again when the file changes.
#[derive(Debug, Default)]
pub(crate) struct TemplateCache {
    loaded: Mutex<Option<Loaded>>,
}

impl TemplateCache {
    fn get(&self, path: &Path) -> Result<std::sync::Arc<HashMap<u64, Template>>, SluiceError> {
        // The file is replaced whole (renamed into place): a new one has a new time or size.
        let modified = std::fs::metadata(path)
            .and_then(|metadata| Ok((metadata.modified()?, metadata.len())))
            .unwrap_or((SystemTime::UNIX_EPOCH, 0));
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((when, templates)) = loaded.as_ref()
            && *when == modified
        {
            return Ok(std::sync::Arc::clone(templates));
        }
        let templates = std::sync::Arc::new(read_templates(path)?);
        *loaded = Some((modified, std::sync::Arc::clone(&templates)));
        Ok(templates)
    }
}

/// What to count.
#[derive(Debug, Clone)]
pub struct PatternsRequest {
    /// A query of the search language.
    pub query: String,
    /// Inclusive start, ns.
    pub start_ns: Option<i64>,
    /// Exclusive end, ns.
    pub end_ns: Option<i64>,
    /// Also count per step of this many ns (aligned to multiples of it since the epoch).
    pub step_ns: Option<i64>,
    /// The records the reader may see (`None`: every tenant's).
    pub scope: Option<sluice_common::tenancy::Scope>,
}

/// One pattern's lines in the range.
#[derive(Debug, Clone, Serialize)]
pub struct PatternCount {
    /// The id the lines carry.
    pub id: u64,
    /// How many lines match.
    pub count: u64,
    /// Timestamp (ns) of the oldest matching line.
    pub first_ns: i64,
    /// Counts per step start, when a step was asked for.
    pub steps: BTreeMap<i64, u64>,
    /// The newest matching line.
    pub example: Option<SearchHit>,
}

/// The answer.
#[derive(Debug, Clone, Serialize)]
pub struct PatternsResponse {
    /// Matching lines in all.
    pub total: u64,
    /// Matching lines without a pattern id (events, and lines indexed before patterns were).
    pub unpatterned: u64,
    /// By id, largest first.
    pub patterns: Vec<PatternCount>,
    /// Templates of those ids, and of the patterns they were merged into.
    pub templates: Vec<Template>,
    /// Partitions searched.
    pub partitions_searched: usize,
    /// Milliseconds spent.
    pub took_ms: u64,
}

#[derive(Debug, Clone, Default)]
struct Group {
    count: u64,
    first_ns: i64,
    newest: Option<(i64, DocAddress)>,
    steps: BTreeMap<i64, u64>,
}

impl Group {
    fn absorb(&mut self, other: Group) {
        if self.count == 0 {
            *self = other;
            return;
        }
        self.count += other.count;
        self.first_ns = self.first_ns.min(other.first_ns);
        if other.newest.map(|(ts, _)| ts) > self.newest.map(|(ts, _)| ts) {
            self.newest = other.newest;
        }
        for (step, count) in other.steps {
            *self.steps.entry(step).or_default() += count;
        }
    }
}

/// Per partition: pattern id (hex, as stored) → its group; `""` for lines without one.
type Groups = HashMap<String, Group>;

struct ByPattern {
    step_ns: Option<i64>,
}

struct SegmentByPattern {
    segment: SegmentOrdinal,
    ids: Option<StrColumn>,
    timestamps: Column<i64>,
    step_ns: Option<i64>,
    by_ord: HashMap<u64, Group>,
    unpatterned: Group,
}

impl Collector for ByPattern {
    type Fruit = Groups;
    type Child = SegmentByPattern;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<SegmentByPattern> {
        Ok(SegmentByPattern {
            segment,
            ids: reader.fast_fields().str("pattern_id")?,
            timestamps: reader.fast_fields().i64("timestamp")?,
            step_ns: self.step_ns,
            by_ord: HashMap::new(),
            unpatterned: Group::default(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Groups>) -> tantivy::Result<Groups> {
        let mut merged = Groups::new();
        for fruit in fruits {
            for (id, group) in fruit {
                merged.entry(id).or_default().absorb(group);
            }
        }
        Ok(merged)
    }
}

impl SegmentCollector for SegmentByPattern {
    type Fruit = Groups;

    fn collect(&mut self, doc: DocId, _score: Score) {
        let timestamp = self.timestamps.first(doc).unwrap_or_default();
        let ord = self.ids.as_ref().and_then(|ids| ids.ords().first(doc));
        let group = match ord {
            Some(ord) => self.by_ord.entry(ord).or_default(),
            None => &mut self.unpatterned,
        };
        if group.count == 0 || timestamp < group.first_ns {
            group.first_ns = timestamp;
        }
        group.count += 1;
        if group.newest.is_none_or(|(newest, _)| timestamp >= newest) {
            group.newest = Some((timestamp, DocAddress::new(self.segment, doc)));
        }
        if let Some(step) = self.step_ns {
            *group
                .steps
                .entry(timestamp.div_euclid(step) * step)
                .or_default() += 1;
        }
    }

    fn harvest(self) -> Groups {
        let mut groups = Groups::with_capacity(self.by_ord.len() + 1);
        let mut text = String::new();
        if let Some(ids) = &self.ids {
            for (ord, group) in self.by_ord {
                text.clear();
                if ids.ord_to_str(ord, &mut text).unwrap_or(false) {
                    groups.entry(text.clone()).or_default().absorb(group);
                }
            }
        }
        if self.unpatterned.count > 0 {
            groups.insert(String::new(), self.unpatterned);
        }
        groups
    }
}

impl Searcher {
    /// Counts the lines `request.query` matches in its range by pattern. Blocking.
    pub fn patterns(&self, request: &PatternsRequest) -> Result<PatternsResponse, SluiceError> {
        let started = Instant::now();
        let start = request.start_ns.unwrap_or(i64::MIN);
        let end = request.end_ns.unwrap_or(i64::MAX);
        if start >= end {
            return Err(SluiceError::invalid("start must be before end"));
        }
        if let Some(step) = request.step_ns {
            if step <= 0 {
                return Err(SluiceError::invalid("step must be positive"));
            }
            let steps = (i128::from(end) - i128::from(start)) / i128::from(step);
            if request.start_ns.is_some() && request.end_ns.is_some() && steps > MAX_STEPS as i128 {
                return Err(SluiceError::invalid(format!(
                    "the range holds more than {MAX_STEPS} steps; use a longer step"
                )));
            }
        }
        let query = self.parse(&request.query)?;
        let fields = self.store().fields().clone();
        let hours: Vec<Hour> = self
            .hours()?
            .into_iter()
            .filter(|hour| hour.end_nanos() > start && hour.start_nanos() < end)
            .collect();
        let collector = ByPattern {
            step_ns: request.step_ns,
        };
        // id → (group, the partition of its newest line)
        let mut all: HashMap<String, (Group, Hour)> = HashMap::new();
        for hour in &hours {
            let searcher = self.fresh_searcher(*hour)?;
            let query =
                crate::scope::scoped(query.box_clone(), request.scope.as_ref(), searcher.schema())?;
            let bounded: Box<dyn Query> = if start > hour.start_nanos() || end < hour.end_nanos() {
                Box::new(BooleanQuery::new(vec![
                    (Occur::Must, query),
                    (
                        Occur::Must,
                        Box::new(RangeQuery::new(
                            Bound::Included(Term::from_field_i64(fields.timestamp, start)),
                            Bound::Excluded(Term::from_field_i64(fields.timestamp, end)),
                        )),
                    ),
                ]))
            } else {
                query
            };
            let groups = searcher.search(&bounded, &collector).map_err(|error| {
                SluiceError::internal(format!(
                    "pattern count failed on {}: {error}",
                    hour.partition_name()
                ))
            })?;
            for (id, group) in groups {
                let slot = all.entry(id).or_insert_with(|| (Group::default(), *hour));
                let newer = group.newest.map(|(ts, _)| ts) > slot.0.newest.map(|(ts, _)| ts);
                slot.0.absorb(group);
                if newer {
                    slot.1 = *hour;
                }
            }
            if all.len() > MAX_PATTERNS {
                return Err(SluiceError::invalid(format!(
                    "the query matches lines of more than {MAX_PATTERNS} patterns; narrow it"
                )));
            }
        }
        let total = all.values().map(|(group, _)| group.count).sum();
        let unpatterned = all.remove("").map_or(0, |(group, _)| group.count);
        let mut patterns = Vec::with_capacity(all.len());
        for (id, (group, hour)) in all {
            let Ok(id) = u64::from_str_radix(&id, 16) else {
                continue;
            };
            let example = match group.newest {
                Some((_, address)) => {
                    let searcher = self.fresh_searcher(hour)?;
                    Some(self.hit_at(&searcher, address)?)
                }
                None => None,
            };
            patterns.push(PatternCount {
                id,
                count: group.count,
                first_ns: group.first_ns,
                steps: group.steps,
                example,
            });
        }
        patterns.sort_by(|a, b| b.count.cmp(&a.count).then(a.id.cmp(&b.id)));
        let known = self.templates()?;
        let wanted: std::collections::HashSet<u64> =
            patterns.iter().map(|pattern| pattern.id).collect();
        let mut templates: Vec<Template> = known
            .values()
            .filter(|template| {
                wanted.contains(&template.id)
                    || template.merged.iter().any(|id| wanted.contains(id))
            })
            .cloned()
            .collect();
        templates.sort_by_key(|template| template.id);
        Ok(PatternsResponse {
            total,
            unpatterned,
            patterns,
            templates,
            partitions_searched: hours.len(),
            took_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Every template the index holds.
    pub fn templates(&self) -> Result<std::sync::Arc<HashMap<u64, Template>>, SluiceError> {
        self.template_cache().get(&templates_path(self.dir()))
    }
}

/// Where the templates of the index in `dir` are kept.
pub fn templates_path(dir: &Path) -> PathBuf {
    dir.join("patterns.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Origin;
    use crate::store::IndexStore;
    use sluice_proto::v2::{Envelope, Log, envelope};

    const MINUTE: i64 = 60_000_000_000;

    /// Lines of three patterns over two hours; the first pattern generalised into the second.
    fn index(dir: &Path) {
        let store = IndexStore::new(dir);
        let hour = 1_800_000 * 60 * MINUTE;
        let lines = [
            (hour - MINUTE, 1_u64, "old shape"),
            (hour + MINUTE, 2, "new shape a"),
            (hour + 2 * MINUTE, 2, "new shape b"),
            (hour + 3 * MINUTE, 3, "other"),
        ];
        for (timestamp, id, text) in lines {
            let index = store
                .open_or_create(Hour::of_nanos(timestamp))
                .expect("partition");
            let mut writer: tantivy::IndexWriter = index
                .writer_with_num_threads(1, 15_000_000)
                .expect("writer");
            let envelope = Envelope {
                timestamp,
                source_id: "app".into(),
                message: Some(envelope::Message::Log(Log {
                    payload: text.as_bytes().to_vec(),
                    r#type: 0,
                })),
                ..Default::default()
            };
            let origin = Origin {
                agent_id: "agent",
                sequence: 1,
                partition: 0,
                offset: 0,
                index: 0,
                batch_envelopes: 1,
                pattern_id: Some(id),
            };
            writer
                .add_document(store.fields().document(&envelope, origin).expect("log"))
                .expect("add");
            writer.commit().expect("commit");
        }
        let mut templates = Templates::default();
        templates.learn(&[
            PatternTemplate {
                id: 2,
                source_id: "app".into(),
                template: "new shape <*>".into(),
                merged: vec![1],
                first_seen: hour - MINUTE,
            },
            PatternTemplate {
                id: 3,
                source_id: "app".into(),
                template: "other".into(),
                merged: Vec::new(),
                first_seen: hour,
            },
        ]);
        templates.save(&templates_path(dir), true).expect("save");
    }

    #[test]
    fn matches_are_counted_by_pattern_with_steps_examples_and_templates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let searcher = Searcher::new(dir.path());
        // Asked before anything is indexed: nothing, and no stale view afterwards.
        let empty = searcher
            .patterns(&PatternsRequest {
                scope: None,
                query: "*".into(),
                start_ns: None,
                end_ns: None,
                step_ns: None,
            })
            .expect("patterns");
        assert_eq!(empty.total, 0);
        index(dir.path());
        let answer = searcher
            .patterns(&PatternsRequest {
                scope: None,
                query: "*".into(),
                start_ns: None,
                end_ns: None,
                step_ns: Some(MINUTE),
            })
            .expect("patterns");
        assert_eq!(answer.total, 4);
        let counts: Vec<(u64, u64)> = answer
            .patterns
            .iter()
            .map(|pattern| (pattern.id, pattern.count))
            .collect();
        assert_eq!(counts, vec![(2, 2), (1, 1), (3, 1)]);
        let newest = answer.patterns[0].example.as_ref().expect("example");
        assert_eq!(newest.message, "new shape b");
        assert_eq!(newest.pattern_id, sluice_patterns::format_id(2));
        assert_eq!(answer.patterns[0].steps.len(), 2);
        // The template of 2 answers for 1 too (it lists 1 as merged).
        let ids: Vec<u64> = answer
            .templates
            .iter()
            .map(|template| template.id)
            .collect();
        assert_eq!(ids, vec![2, 3]);
        let only = searcher
            .patterns(&PatternsRequest {
                scope: None,
                query: format!("pattern_id:{}", sluice_patterns::format_id(3)),
                start_ns: None,
                end_ns: None,
                step_ns: None,
            })
            .expect("patterns");
        assert_eq!(only.total, 1);
    }
}
