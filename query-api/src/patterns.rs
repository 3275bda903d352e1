//! `GET /api/v1/patterns`: the patterns of the lines a query matches in a range, largest
//! first, or, with `compare=`, what changed against a baseline window, most surprising first.
//!
//! Every indexer counts its matches by `pattern_id`; the answers are merged here. A pattern
//! that generalised (its template changed, and with it its id) lists the ids it had before,
//! and the lines stored under those count for it: ids are resolved to the newest pattern
//! that took them in, across every indexer's templates, before counts are compared.
//!
//! With `compare=<duration>` the baseline is the window of that length just before `start`.
//! Counts are compared as rates (per second of each window). A pattern without lines in the
//! baseline is **new**; one whose rate rose or fell by more than `factor` (default 2) is
//! **rose** or **fell**. Surprise is the Poisson log-likelihood of the count against the
//! count the baseline rate predicts (`count·ln(count/expected) − (count − expected)`), the
//! expected count floored at half a line so a new pattern's surprise grows with its count.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use sluice_common::SluiceError;
use sluice_indexer::SearchHit;
use sluice_indexer::patterns::{PatternsRequest, PatternsResponse, Template};
use sluice_indexer::service::patterns_from_wire;
use sluice_proto::v1 as wire;

use crate::search::{IndexersReport, SearchBackend, ask_indexers};

/// Most patterns one answer lists.
pub const MAX_LIMIT: usize = 10_000;

/// What `/api/v1/patterns` was asked.
#[derive(Debug, Clone)]
pub struct PatternsQuery {
    /// The search query whose lines are counted.
    pub query: String,
    /// Inclusive start, ns.
    pub start_ns: i64,
    /// Exclusive end, ns.
    pub end_ns: i64,
    /// Step of the per-pattern counts, ns.
    pub step_ns: i64,
    /// Length of the baseline window before `start_ns`, ns.
    pub compare_ns: Option<i64>,
    /// The factor a rate must change by to be marked.
    pub factor: f64,
    /// Patterns listed at most.
    pub limit: usize,
    /// The records the caller may see (`None`: every tenant's).
    pub scope: Option<sluice_common::tenancy::Scope>,
}

/// One step's count.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Step {
    /// Start, ns.
    pub start_ns: i64,
    /// Lines.
    pub count: u64,
}

/// One pattern in the answer.
#[derive(Debug, Clone, Serialize)]
pub struct PatternRow {
    /// Its id (16 hex digits).
    pub pattern_id: String,
    /// Its source.
    pub source_id: String,
    /// Its template (a placeholder such as `<num>` where a value goes); null when no indexer
    /// knows it.
    pub template: Option<String>,
    /// Matching lines in the range.
    pub count: u64,
    /// `count` over all matching lines with a pattern.
    pub share: f64,
    /// When its first line was mined (RFC 3339), if known.
    pub first_seen: Option<String>,
    /// Oldest matching line in the range (RFC 3339).
    pub first_in_range: String,
    /// Counts per step, every step of the range (zeros included), oldest first.
    pub steps: Vec<Step>,
    /// The newest matching line.
    pub example: Option<SearchHit>,
    /// Ids it had before it generalised whose lines are counted here.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Lines in the baseline window (with `compare`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_count: Option<u64>,
    /// Rate in the range over rate in the baseline (with `compare`; null when new).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// `new`, `rose`, `fell` or `steady` (with `compare`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<&'static str>,
    /// How surprising the change is (with `compare`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub surprise: Option<f64>,
}

/// The baseline window of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    /// Start (RFC 3339).
    pub start: String,
    /// End (RFC 3339).
    pub end: String,
    /// Matching lines in it.
    pub total: u64,
}

/// The answer of `/api/v1/patterns`.
#[derive(Debug, Clone, Serialize)]
pub struct PatternsAnswer {
    /// Start of the range (RFC 3339).
    pub start: String,
    /// End of the range (RFC 3339).
    pub end: String,
    /// Step, ns.
    pub step_ns: i64,
    /// Matching lines in the range.
    pub total: u64,
    /// Of them, lines without a pattern (events, lines indexed before patterns were).
    pub unpatterned: u64,
    /// Distinct patterns among the matching lines (`patterns` may list fewer: `limit`).
    pub pattern_count: usize,
    /// Largest first, or most surprising first with `compare`.
    pub patterns: Vec<PatternRow>,
    /// The baseline, with `compare`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
    /// Whether an indexer did not answer, so counts may be low.
    pub partial: bool,
    /// Per-indexer outcome, when fanned out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indexers: Option<IndexersReport>,
    /// Milliseconds spent.
    pub took_ms: u64,
}

impl SearchBackend {
    /// Counts by pattern over every indexer (the counts of one window, merged).
    pub async fn patterns(
        &self,
        request: PatternsRequest,
    ) -> Result<(PatternsResponse, Option<IndexersReport>), SluiceError> {
        match self {
            SearchBackend::Local(searcher) => {
                let searcher = Arc::clone(searcher);
                let response = tokio::task::spawn_blocking(move || searcher.patterns(&request))
                    .await
                    .map_err(|error| {
                        SluiceError::internal(format!("pattern task failed: {error}"))
                    })??;
                Ok((response, None))
            }
            SearchBackend::Remote { indexers, timeout } => {
                let wire_request = wire::PatternsRequest {
                    query: request.query.clone(),
                    start_ns: request.start_ns,
                    end_ns: request.end_ns,
                    step_ns: request.step_ns,
                    scope: sluice_indexer::service::scope_to_wire(request.scope.as_ref()),
                };
                let (answers, unavailable) =
                    ask_indexers(indexers, *timeout, "pattern count", |mut client| {
                        let wire_request = wire_request.clone();
                        async move { client.patterns(wire_request).await }
                    })
                    .await?;
                let mut merged = PatternsResponse {
                    total: 0,
                    unpatterned: 0,
                    patterns: Vec::new(),
                    templates: Vec::new(),
                    partitions_searched: 0,
                    took_ms: 0,
                };
                for answer in answers {
                    let answer = patterns_from_wire(answer);
                    merged.total += answer.total;
                    merged.unpatterned += answer.unpatterned;
                    merged.partitions_searched += answer.partitions_searched;
                    merged.patterns.extend(answer.patterns);
                    merged.templates.extend(answer.templates);
                }
                let report = IndexersReport {
                    queried: indexers.len(),
                    responded: indexers.len() - unavailable.len(),
                    unavailable,
                };
                Ok((merged, Some(report)))
            }
        }
    }
}

/// A pattern's merged counts.
#[derive(Debug, Default)]
struct Merged {
    count: u64,
    first_ns: i64,
    steps: BTreeMap<i64, u64>,
    example: Option<SearchHit>,
    aliases: Vec<u64>,
}

/// Resolves ids to the pattern that took them in, and sums the counts by that pattern.
struct Resolver {
    templates: HashMap<u64, Template>,
    became: HashMap<u64, u64>,
}

impl Resolver {
    fn new(templates: Vec<Template>) -> Resolver {
        let mut by_id: HashMap<u64, Template> = HashMap::new();
        for template in templates {
            // Indexers may know different versions: keep the one that lists the most, and of
            // two that list as many the wider one (a place whose kind widened shows `<*>`), so
            // the answer does not depend on which indexer answered first.
            let wider = |template: &Template| {
                (
                    template.merged.len(),
                    template.template.matches("<*>").count(),
                    std::cmp::Reverse(template.template.clone()),
                )
            };
            match by_id.get(&template.id) {
                Some(known) if wider(known) >= wider(&template) => {}
                _ => {
                    by_id.insert(template.id, template);
                }
            }
        }
        let mut became = HashMap::new();
        for template in by_id.values() {
            for &old in &template.merged {
                if old != template.id {
                    became.insert(old, template.id);
                }
            }
        }
        Resolver {
            templates: by_id,
            became,
        }
    }

    /// The newest pattern `id` became (a chain of generalisations, cut at 64 links).
    fn resolve(&self, mut id: u64) -> u64 {
        for _ in 0..64 {
            match self.became.get(&id) {
                Some(&next) if next != id => id = next,
                _ => break,
            }
        }
        id
    }

    fn merge(&self, response: PatternsResponse) -> HashMap<u64, Merged> {
        let mut merged: HashMap<u64, Merged> = HashMap::new();
        for pattern in response.patterns {
            let id = self.resolve(pattern.id);
            let entry = merged.entry(id).or_default();
            if entry.count == 0 || pattern.first_ns < entry.first_ns {
                entry.first_ns = pattern.first_ns;
            }
            entry.count += pattern.count;
            for (step, count) in pattern.steps {
                *entry.steps.entry(step).or_default() += count;
            }
            let newer = match (&entry.example, &pattern.example) {
                (Some(known), Some(new)) => new.timestamp > known.timestamp,
                (None, Some(_)) => true,
                _ => false,
            };
            if newer {
                entry.example = pattern.example;
            }
            if pattern.id != id && !entry.aliases.contains(&pattern.id) {
                entry.aliases.push(pattern.id);
            }
        }
        merged
    }
}

/// Answers `query`.
pub async fn answer(
    backend: &SearchBackend,
    query: PatternsQuery,
) -> Result<PatternsAnswer, SluiceError> {
    let started = Instant::now();
    if query.start_ns >= query.end_ns {
        return Err(SluiceError::invalid("start must be before end"));
    }
    if query.limit == 0 || query.limit > MAX_LIMIT {
        return Err(SluiceError::invalid(format!(
            "limit: must be between 1 and {MAX_LIMIT}"
        )));
    }
    if !(query.factor > 1.0 && query.factor.is_finite()) {
        return Err(SluiceError::invalid("factor: must be a number above 1"));
    }
    let current = backend.patterns(PatternsRequest {
        query: query.query.clone(),
        start_ns: Some(query.start_ns),
        end_ns: Some(query.end_ns),
        step_ns: Some(query.step_ns),
        scope: query.scope.clone(),
    });
    let baseline_range = query
        .compare_ns
        .map(|length| (query.start_ns.saturating_sub(length), query.start_ns));
    let (current, indexers) = current.await?;
    let baseline = match baseline_range {
        Some((start, end)) => Some(
            backend
                .patterns(PatternsRequest {
                    query: query.query.clone(),
                    start_ns: Some(start),
                    end_ns: Some(end),
                    step_ns: None,
                    scope: query.scope.clone(),
                })
                .await?,
        ),
        None => None,
    };
    let mut templates = current.templates.clone();
    if let Some((baseline, _)) = &baseline {
        templates.extend(baseline.templates.iter().cloned());
    }
    let resolver = Resolver::new(templates);
    let total = current.total;
    let unpatterned = current.unpatterned;
    let merged = resolver.merge(current);
    let baseline_merged = baseline
        .as_ref()
        .map(|(response, _)| resolver.merge(response.clone()));
    let patterned: u64 = merged.values().map(|pattern| pattern.count).sum();
    let window_s = (query.end_ns - query.start_ns) as f64 / 1e9;
    let first_step = query.start_ns.div_euclid(query.step_ns) * query.step_ns;
    let mut rows: Vec<PatternRow> = merged
        .into_iter()
        .map(|(id, pattern)| {
            let template = resolver.templates.get(&id);
            let mut steps = Vec::new();
            let mut step = first_step;
            while step < query.end_ns {
                steps.push(Step {
                    start_ns: step,
                    count: pattern.steps.get(&step).copied().unwrap_or(0),
                });
                step = step.saturating_add(query.step_ns);
            }
            let mut row = PatternRow {
                pattern_id: sluice_patterns::format_id(id),
                source_id: template
                    .map(|template| template.source_id.clone())
                    .or_else(|| pattern.example.as_ref().map(|hit| hit.source_id.clone()))
                    .unwrap_or_default(),
                template: template.map(|template| template.template.clone()),
                count: pattern.count,
                share: pattern.count as f64 / patterned.max(1) as f64,
                first_seen: template
                    .map(|template| sluice_common::time::format_rfc3339_nanos(template.first_seen)),
                first_in_range: sluice_common::time::format_rfc3339_nanos(pattern.first_ns),
                steps,
                example: pattern.example,
                aliases: pattern
                    .aliases
                    .iter()
                    .map(|&alias| sluice_patterns::format_id(alias))
                    .collect(),
                baseline_count: None,
                ratio: None,
                change: None,
                surprise: None,
            };
            if let (Some(baseline), Some(length)) = (&baseline_merged, query.compare_ns) {
                let before = baseline.get(&id).map_or(0, |pattern| pattern.count);
                let baseline_s = length as f64 / 1e9;
                let expected = (before as f64 * window_s / baseline_s).max(0.5);
                let observed = pattern.count as f64;
                row.baseline_count = Some(before);
                row.surprise = Some(poisson_surprise(observed, expected));
                if before == 0 {
                    row.change = Some("new");
                } else {
                    let ratio = (observed / window_s) / (before as f64 / baseline_s);
                    row.ratio = Some(ratio);
                    row.change = Some(if ratio >= query.factor {
                        "rose"
                    } else if ratio <= 1.0 / query.factor {
                        "fell"
                    } else {
                        "steady"
                    });
                }
            }
            row
        })
        .collect();
    // Patterns that vanished: in the baseline, not in the range.
    if let (Some(baseline), Some(length)) = (&baseline_merged, query.compare_ns) {
        let present: std::collections::HashSet<String> =
            rows.iter().map(|row| row.pattern_id.clone()).collect();
        for (id, pattern) in baseline {
            let pattern_id = sluice_patterns::format_id(*id);
            if present.contains(&pattern_id) {
                continue;
            }
            let template = resolver.templates.get(id);
            let expected = (pattern.count as f64 * window_s / (length as f64 / 1e9)).max(0.5);
            rows.push(PatternRow {
                pattern_id,
                source_id: template
                    .map(|template| template.source_id.clone())
                    .unwrap_or_default(),
                template: template.map(|template| template.template.clone()),
                count: 0,
                share: 0.0,
                first_seen: template
                    .map(|template| sluice_common::time::format_rfc3339_nanos(template.first_seen)),
                first_in_range: String::new(),
                steps: Vec::new(),
                example: pattern.example.clone(),
                aliases: Vec::new(),
                baseline_count: Some(pattern.count),
                ratio: Some(0.0),
                change: Some("fell"),
                surprise: Some(poisson_surprise(0.0, expected)),
            });
        }
    }
    if query.compare_ns.is_some() {
        rows.sort_by(|a, b| {
            b.surprise
                .unwrap_or(0.0)
                .total_cmp(&a.surprise.unwrap_or(0.0))
                .then(b.count.cmp(&a.count))
                .then(a.pattern_id.cmp(&b.pattern_id))
        });
    } else {
        rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.pattern_id.cmp(&b.pattern_id)));
    }
    let pattern_count = rows.len();
    rows.truncate(query.limit);
    let partial = indexers
        .as_ref()
        .is_some_and(|report| !report.unavailable.is_empty())
        || baseline
            .as_ref()
            .and_then(|(_, report)| report.as_ref())
            .is_some_and(|report| !report.unavailable.is_empty());
    Ok(PatternsAnswer {
        start: sluice_common::time::format_rfc3339_nanos(query.start_ns),
        end: sluice_common::time::format_rfc3339_nanos(query.end_ns),
        step_ns: query.step_ns,
        total,
        unpatterned,
        pattern_count,
        patterns: rows,
        baseline: baseline_range
            .zip(baseline.as_ref())
            .map(|((start, end), (response, _))| Baseline {
                start: sluice_common::time::format_rfc3339_nanos(start),
                end: sluice_common::time::format_rfc3339_nanos(end),
                total: response.total,
            }),
        partial,
        indexers,
        took_ms: started.elapsed().as_millis() as u64,
    })
}

/// `observed·ln(observed/expected) − (observed − expected)`: how unlikely `observed` lines
/// are when `expected` were due (0 when they match; large for big rises and big falls).
fn poisson_surprise(observed: f64, expected: f64) -> f64 {
    if observed <= 0.0 {
        return expected;
    }
    observed * (observed / expected).ln() - (observed - expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(id: u64, merged: &[u64]) -> Template {
        Template {
            id,
            source_id: "app".to_owned(),
            template: format!("t{id}"),
            merged: merged.to_vec(),
            first_seen: 0,
        }
    }

    #[test]
    fn ids_resolve_through_generalisations_and_cycles_end() {
        let resolver = Resolver::new(vec![template(2, &[1]), template(3, &[2, 1])]);
        assert_eq!(resolver.resolve(1), 3);
        assert_eq!(resolver.resolve(2), 3);
        assert_eq!(resolver.resolve(9), 9);
        let cycle = Resolver::new(vec![template(1, &[2]), template(2, &[1])]);
        let end = cycle.resolve(1);
        assert!(end == 1 || end == 2);
    }

    /// Two dopplers mining one source's batches between them (as an agent spreads them) give
    /// each shape's lines ids that resolve, across both dopplers' templates, to one pattern.
    #[test]
    fn the_ids_of_two_dopplers_resolve_to_one_pattern_per_shape() {
        const NAMES: [&str; 12] = [
            "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
            "mallory", "oscar",
        ];
        let mut dopplers = [
            sluice_patterns::Miner::default(),
            sluice_patterns::Miner::default(),
        ];
        // (true shape, id given) of every line.
        let mut lines: Vec<(usize, u64)> = Vec::new();
        for round in 0..600_usize {
            let name = NAMES[round % NAMES.len()];
            let texts = [
                format!(
                    "Invalid user {name} from 10.0.{}.{}",
                    round % 7,
                    round % 200
                ),
                format!("session opened for user {name} by (uid={})", round % 1000),
                format!("request {round} served in {} ms", round % 90),
                "cupsd startup succeeded".to_owned(),
                "cupsd shutdown succeeded".to_owned(),
            ];
            // Batches of ten lines, alternating between the dopplers.
            let doppler = &mut dopplers[(round / 10) % 2];
            for (shape, text) in texts.iter().enumerate() {
                let id = doppler.mine("auth", text, i64::try_from(round).unwrap_or(0));
                lines.push((shape, id));
            }
        }
        let templates: Vec<Template> = dopplers
            .iter()
            .flat_map(|doppler| doppler.source("auth").map(|source| source.patterns()))
            .flatten()
            .map(|info| Template {
                id: info.id,
                source_id: "auth".to_owned(),
                template: info.template,
                merged: info.merged,
                first_seen: info.first_seen,
            })
            .collect();
        let resolver = Resolver::new(templates);
        let mut by_shape: BTreeMap<usize, std::collections::BTreeSet<u64>> = BTreeMap::new();
        for (shape, id) in lines {
            by_shape
                .entry(shape)
                .or_default()
                .insert(resolver.resolve(id));
        }
        for (shape, ids) in &by_shape {
            assert_eq!(ids.len(), 1, "shape {shape} resolved to {ids:x?}");
        }
        let distinct: std::collections::BTreeSet<u64> =
            by_shape.values().flatten().copied().collect();
        assert_eq!(distinct.len(), 5, "five shapes, five patterns");
    }

    #[test]
    fn surprise_grows_with_the_change() {
        assert!(poisson_surprise(10.0, 10.0).abs() < 1e-9);
        assert!(poisson_surprise(500.0, 10.0) > poisson_surprise(50.0, 10.0));
        assert!(poisson_surprise(50.0, 0.5) > poisson_surprise(5.0, 0.5));
        assert!(poisson_surprise(0.0, 100.0) > poisson_surprise(50.0, 100.0));
    }
}
