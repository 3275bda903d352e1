//! One question over hot and cold: a search whose range reaches hours the index does not
//! hold (expired from it, or never indexed) answers them from the archive, so a search never
//! silently returns less because the index let an hour go.
//!
//! The query is translated to an SQL predicate with the meaning it has in the index (the
//! tail filter's matcher: message words and phrases between the tokenizer's word boundaries,
//! case-blind; fields and tags as whole values; Tantivy's boolean rules), run over the
//! archive's `logs` table for exactly those hours, and merged newest first under the one
//! limit, its count added to the total. The answer names the hours each side answered
//! (`sources.index`, `sources.archive`); a query that cannot be translated leaves the archive
//! hours unsearched and says why (`sources.archive_error`), never quietly. Events (in the
//! archive's `events` table) are answered by the index only.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;
use sluice_common::SluiceError;
use sluice_common::time::{Hour, format_rfc3339_nanos};
use sluice_indexer::{SearchHit, SearchRequest};
use sluice_retention::catalog::import::hour_of_path;
use sluice_retention::tables::Table;

use crate::AppState;
use crate::search::SearchAnswer;

/// Which hours each side answered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sources {
    /// Hours the index answered, `YYYY-MM-DDTHH`.
    pub index: Vec<String>,
    /// Hours the archive answered (the index does not hold them).
    pub archive: Vec<String>,
    /// Why the archive's hours were not searched, when they were not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_error: Option<String>,
}

fn in_range(hour: Hour, request: &SearchRequest) -> bool {
    hour.end_nanos() > request.start_ns.unwrap_or(i64::MIN)
        && hour.start_nanos() < request.end_ns.unwrap_or(i64::MAX)
}

/// Adds to `answer` (the index's, from this process's index directory) the hours of the range
/// only the archive holds.
pub async fn add_archive_hours(
    state: &AppState,
    request: &SearchRequest,
    index_hours: Vec<Hour>,
    answer: &mut SearchAnswer,
) -> Result<(), SluiceError> {
    let index_hours: BTreeSet<Hour> = index_hours
        .into_iter()
        .filter(|hour| in_range(*hour, request))
        .collect();
    let snapshot = state.archive.snapshot().await?;
    let cold: BTreeSet<Hour> = snapshot
        .table_files(Table::Logs)
        .filter_map(|file| hour_of_path(&file.path))
        .filter(|hour| in_range(*hour, request) && !index_hours.contains(hour))
        .collect();
    let mut sources = Sources {
        index: index_hours
            .iter()
            .map(|hour| hour.partition_name())
            .collect(),
        archive: Vec::new(),
        archive_error: None,
    };
    if cold.is_empty() {
        answer.sources = Some(sources);
        return Ok(());
    }
    let predicate = match crate::tail::filter::sql_predicate(&request.query, &state.query_language)
    {
        Ok(predicate) => predicate,
        Err(error) => {
            sources.archive_error = Some(format!(
                "the archive's hours {} were not searched: {}",
                cold.iter()
                    .map(|hour| hour.partition_name())
                    .collect::<Vec<_>>()
                    .join(", "),
                error.message()
            ));
            answer.partial = true;
            answer.sources = Some(sources);
            return Ok(());
        }
    };
    // The range, within the cold hours (whose bounds let the scan skip every other file).
    let (first, last) = match (cold.first(), cold.last()) {
        (Some(first), Some(last)) => (*first, *last),
        _ => return Ok(()),
    };
    let start = request
        .start_ns
        .unwrap_or(i64::MIN)
        .max(first.start_nanos());
    let end = request.end_ns.unwrap_or(i64::MAX).min(last.end_nanos());
    let hours: Vec<String> = cold
        .iter()
        .map(|hour| {
            format!(
                "(timestamp >= to_timestamp_nanos({}) AND timestamp < to_timestamp_nanos({}))",
                hour.start_nanos(),
                hour.end_nanos()
            )
        })
        .collect();
    let selection = format!(
        "FROM logs WHERE timestamp >= to_timestamp_nanos({start}) AND timestamp < to_timestamp_nanos({end}) \
         AND ({}) AND ({predicate})",
        hours.join(" OR ")
    );
    let limits = crate::sql::SqlLimits {
        max_bytes: usize::MAX,
        max_rows: request.limit,
    };
    let counted = crate::sql::run_query(
        &state.archive,
        &format!("SELECT count(*) AS n {selection}"),
        limits,
        request.scope.as_ref(),
    )
    .await?;
    let total = counted
        .rows
        .first()
        .and_then(|row| row.get("n"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let found = crate::sql::run_query(
        &state.archive,
        &format!(
            "SELECT CAST(timestamp AS BIGINT) AS ns, source_id, instance_id, log_type, message, \
             invalid_utf8, tags, pattern_id {selection} ORDER BY timestamp DESC LIMIT {}",
            request.limit
        ),
        limits,
        request.scope.as_ref(),
    )
    .await?;
    if let Some(interval) = request
        .histogram_interval_ns
        .filter(|interval| *interval > 0)
    {
        // Buckets aligned as the index aligns them (floor of the time by the interval).
        let counted = crate::sql::run_query(
            &state.archive,
            &format!(
                "SELECT CAST(floor(CAST(timestamp AS BIGINT) / {interval}.0) AS BIGINT) * {interval} AS bucket, \
                 count(*) AS n {selection} GROUP BY 1"
            ),
            crate::sql::SqlLimits {
                max_bytes: usize::MAX,
                max_rows: sluice_indexer::histogram::MAX_BUCKETS,
            },
            request.scope.as_ref(),
        )
        .await?;
        let mut counts: sluice_indexer::histogram::Counts = answer
            .histogram
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|bucket| (bucket.start_ns, bucket.count))
            .collect();
        let from_archive: sluice_indexer::histogram::Counts = counted
            .rows
            .iter()
            .filter_map(|row| {
                Some((
                    row.get("bucket").and_then(Value::as_i64)?,
                    row.get("n").and_then(Value::as_u64)?,
                ))
            })
            .collect();
        sluice_indexer::histogram::merge_into(&mut counts, from_archive);
        answer.histogram = Some(sluice_indexer::histogram::buckets(&counts));
    }
    answer.total += total;
    answer.partitions_searched += cold.len();
    answer.hits.extend(found.rows.iter().map(hit_of_row));
    answer
        .hits
        .sort_by_key(|hit| std::cmp::Reverse(hit.timestamp));
    answer.hits.truncate(request.limit);
    sources.archive = cold.iter().map(|hour| hour.partition_name()).collect();
    answer.sources = Some(sources);
    Ok(())
}

/// A search hit from a row of the archive.
fn hit_of_row(row: &serde_json::Map<String, Value>) -> SearchHit {
    let text = |name: &str| {
        row.get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let timestamp = row.get("ns").and_then(Value::as_i64).unwrap_or(0);
    let mut tags = BTreeMap::new();
    match row.get("tags") {
        Some(Value::Object(map)) => {
            for (key, value) in map {
                tags.insert(key.clone(), value.as_str().unwrap_or_default().to_owned());
            }
        }
        Some(Value::Array(entries)) => {
            for entry in entries {
                if let (Some(key), Some(value)) = (
                    entry.get("keys").and_then(Value::as_str),
                    entry.get("values").and_then(Value::as_str),
                ) {
                    tags.insert(key.to_owned(), value.to_owned());
                }
            }
        }
        _ => {}
    }
    SearchHit {
        timestamp,
        time: format_rfc3339_nanos(timestamp),
        source_id: text("source_id"),
        instance_id: text("instance_id"),
        log_type: text("log_type"),
        message: text("message"),
        invalid_utf8: row
            .get("invalid_utf8")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        tags,
        pattern_id: text("pattern_id"),
    }
}
