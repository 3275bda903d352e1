//! The loss audit: for a time range (and optionally some sources), what every agent's batches
//! became, and every refusal or drop the pipeline counted, by stage and reason.
//!
//! Every batch carries its agent's id and a sequence number that rises by one per batch, so a
//! batch that never reached the archive leaves a gap in the sequence numbers found there. For
//! each agent the audit reports the sequence range seen in the range's rows, the batches
//! found, and the batches missing inside that range (what is missing before the first or
//! after the last it cannot tell). Per source and agent it reports the rows archived, per
//! table, and the documents the index holds for the logs and events among them.
//!
//! Gaps are *explained* when this process counted batches given up (the agent's
//! `sluice_agent_batches_failed_total`: their clients were told); `unexplained_gaps` is what
//! is missing beyond that. A batch that missed the range's edge by timestamp is not a gap.
//! Within about a flush interval of the newest data the archive may not hold it yet.

use std::collections::BTreeMap;

use serde::Serialize;
use sluice_common::SluiceError;
use sluice_common::time::format_rfc3339_nanos;
use sluice_indexer::SearchRequest;

use crate::AppState;

/// The tables an envelope can land in, and whether the index holds them too.
const TABLES: [(&str, bool); 5] = [
    ("logs", true),
    ("events", true),
    ("counters", false),
    ("gauges", false),
    ("timers", false),
];

/// What is asked.
#[derive(Debug, Clone)]
pub struct AuditRequest {
    /// Only these sources (all when empty).
    pub source_ids: Vec<String>,
    /// Range start, inclusive (ns since the epoch).
    pub start_ns: i64,
    /// Range end, exclusive.
    pub end_ns: i64,
}

/// One source's rows from one agent.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SourceAgent {
    /// The batches' agent (bound to its certificate by the doppler).
    pub agent_id: String,
    /// Rows archived, per table.
    pub archived: BTreeMap<String, u64>,
    /// Rows archived in the tables the index holds too (logs, events).
    pub indexable: u64,
    /// Documents the index holds.
    pub indexed: u64,
}

/// One source.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SourceAudit {
    /// The source.
    pub source_id: String,
    /// Its rows by agent.
    pub agents: Vec<SourceAgent>,
}

/// One agent's batches.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct AgentAudit {
    /// The agent.
    pub agent_id: String,
    /// Lowest sequence number among the range's rows.
    pub first_sequence: u64,
    /// Highest.
    pub last_sequence: u64,
    /// Distinct batches found.
    pub batches_found: u64,
    /// Sequence numbers between the first and the last that no row carries.
    pub batches_missing: u64,
}

/// A counted refusal or drop.
#[derive(Debug, Serialize, PartialEq)]
pub struct Counted {
    /// Where: `agent`, `doppler`, `bus`, `indexer`, `retention`, `egress`, `tail`.
    pub stage: &'static str,
    /// The metric.
    pub metric: String,
    /// Its labels (the reason among them).
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// The answer.
#[derive(Debug, Serialize)]
pub struct AuditResponse {
    /// Range start, RFC 3339.
    pub start: String,
    /// Range end.
    pub end: String,
    /// Per source, per agent.
    pub sources: Vec<SourceAudit>,
    /// Per agent, over every source.
    pub agents: Vec<AgentAudit>,
    /// Every refusal and drop this process counted, by stage (non-zero ones).
    pub refused_or_dropped: Vec<Counted>,
    /// Batches missing, summed over the agents.
    pub batches_missing: u64,
    /// Batches this process's agent gave up on (their clients were told).
    pub batches_given_up: u64,
    /// Missing batches beyond those given up on.
    pub unexplained_gaps: u64,
}

/// The counters that record a refusal or a drop, and the stage each belongs to.
const COUNTED: [(&str, &str); 19] = [
    ("agent", "sluice_agent_envelopes_rejected_total"),
    ("agent", "sluice_agent_source_records_rejected_total"),
    ("agent", "sluice_agent_requests_refused_total"),
    ("agent", "sluice_agent_batches_failed_total"),
    ("agent", "sluice_agent_envelopes_failed_total"),
    ("agent", "sluice_agent_timestamps_replaced_total"),
    ("doppler", "sluice_doppler_batches_rejected_total"),
    ("doppler", "sluice_doppler_batches_shed_total"),
    ("doppler", "sluice_doppler_bus_append_failures_total"),
    ("bus", "sluice_bus_wal_refused_records_total"),
    ("bus", "sluice_bus_append_failures_total"),
    ("indexer", "sluice_indexer_records_undecodable_total"),
    ("indexer", "sluice_indexer_batches_duplicate_total"),
    ("retention", "sluice_retention_records_undecodable_total"),
    ("retention", "sluice_retention_batches_duplicate_total"),
    ("retention", "sluice_retention_rewinds_refused_total"),
    ("egress", "sluice_doppler_egress_envelopes_dropped_total"),
    ("tail", "sluice_tail_dropped_envelopes_total"),
    ("tail", "sluice_tail_dropped_unknown_records_total"),
];

/// `'text'` as a SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The rows of every table in range, as `(kind, source_id, agent_id, sequence)`.
fn rows_in_range(request: &AuditRequest, with_sources: bool) -> String {
    let start = literal(&format_rfc3339_nanos(request.start_ns));
    let end = literal(&format_rfc3339_nanos(request.end_ns));
    let sources = if with_sources && !request.source_ids.is_empty() {
        let list: Vec<String> = request.source_ids.iter().map(|id| literal(id)).collect();
        format!(" AND source_id IN ({})", list.join(", "))
    } else {
        String::new()
    };
    TABLES
        .iter()
        .map(|(table, _)| {
            format!(
                "SELECT '{table}' AS kind, source_id, agent_id, sequence FROM {table} \
                 WHERE timestamp >= {start} AND timestamp < {end}{sources}"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

fn number(row: &serde_json::Map<String, serde_json::Value>, column: &str) -> u64 {
    row.get(column)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

fn text(row: &serde_json::Map<String, serde_json::Value>, column: &str) -> String {
    row.get(column)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Sequence gaps inside `[first, last]` given `found` distinct numbers.
pub fn missing_between(first: u64, last: u64, found: u64) -> u64 {
    (last.saturating_sub(first) + 1).saturating_sub(found)
}

/// Answers `request` from the archive, the index and this process's counters.
pub async fn audit(state: &AppState, request: AuditRequest) -> Result<AuditResponse, SluiceError> {
    if request.end_ns <= request.start_ns {
        return Err(SluiceError::invalid("end: must be after start"));
    }
    let limits = crate::sql::SqlLimits {
        max_bytes: state.config.max_sql_bytes,
        max_rows: 100_000,
    };
    let per_source = format!(
        "SELECT source_id, agent_id, kind, count(*) AS n FROM ({}) GROUP BY source_id, agent_id, kind",
        rows_in_range(&request, true)
    );
    let per_agent = format!(
        "SELECT agent_id, min(sequence) AS first, max(sequence) AS last, \
         count(DISTINCT sequence) AS found FROM ({}) GROUP BY agent_id ORDER BY agent_id",
        rows_in_range(&request, false)
    );
    let archive = state.archive.clone();
    let (by_source, by_agent) = tokio::spawn(async move {
        let by_source = crate::sql::run_query(&archive, &per_source, limits, None).await?;
        let by_agent = crate::sql::run_query(&archive, &per_agent, limits, None).await?;
        Ok::<_, SluiceError>((by_source, by_agent))
    })
    .await
    .map_err(|error| SluiceError::internal(format!("audit task failed: {error}")))??;

    let mut grouped: BTreeMap<String, BTreeMap<String, SourceAgent>> = BTreeMap::new();
    for row in &by_source.rows {
        let agent_id = text(row, "agent_id");
        let entry = grouped
            .entry(text(row, "source_id"))
            .or_default()
            .entry(agent_id.clone())
            .or_insert_with(|| SourceAgent {
                agent_id,
                archived: BTreeMap::new(),
                indexable: 0,
                indexed: 0,
            });
        let kind = text(row, "kind");
        let count = number(row, "n");
        if TABLES
            .iter()
            .any(|(table, indexed)| *indexed && *table == kind)
        {
            entry.indexable += count;
        }
        entry.archived.insert(kind, count);
    }
    let mut sources = Vec::new();
    for (source_id, agents) in grouped {
        let mut list = Vec::new();
        for (_, mut agent) in agents {
            if agent.indexable > 0 {
                agent.indexed = indexed(state, &request, &source_id, &agent.agent_id).await?;
            }
            list.push(agent);
        }
        sources.push(SourceAudit {
            source_id,
            agents: list,
        });
    }
    // Only the agents that sent the sources asked for (their batches of other sources count
    // towards their sequence all the same).
    let senders: std::collections::BTreeSet<&str> = sources
        .iter()
        .flat_map(|source| source.agents.iter().map(|agent| agent.agent_id.as_str()))
        .collect();
    let agents: Vec<AgentAudit> = by_agent
        .rows
        .iter()
        .filter(|row| senders.contains(text(row, "agent_id").as_str()))
        .map(|row| {
            let (first, last, found) = (
                number(row, "first"),
                number(row, "last"),
                number(row, "found"),
            );
            AgentAudit {
                agent_id: text(row, "agent_id"),
                first_sequence: first,
                last_sequence: last,
                batches_found: found,
                batches_missing: missing_between(first, last, found),
            }
        })
        .collect();
    let refused_or_dropped = counted(&state.telemetry.encode());
    let batches_missing = agents.iter().map(|agent| agent.batches_missing).sum();
    let batches_given_up = refused_or_dropped
        .iter()
        .filter(|counted| counted.metric == "sluice_agent_batches_failed_total")
        .map(|counted| counted.value as u64)
        .sum();
    Ok(AuditResponse {
        start: format_rfc3339_nanos(request.start_ns),
        end: format_rfc3339_nanos(request.end_ns),
        sources,
        agents,
        refused_or_dropped,
        batches_missing,
        batches_given_up,
        unexplained_gaps: u64::saturating_sub(batches_missing, batches_given_up),
    })
}

/// Documents of `source_id` from `agent_id` the index holds in range.
async fn indexed(
    state: &AppState,
    request: &AuditRequest,
    source_id: &str,
    agent_id: &str,
) -> Result<u64, SluiceError> {
    let quote = |value: &str| format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""));
    let answer = state
        .search
        .search(SearchRequest {
            query: format!(
                "source_id:{} AND agent_id:{}",
                quote(source_id),
                quote(agent_id)
            ),
            start_ns: Some(request.start_ns),
            end_ns: Some(request.end_ns),
            limit: 1,
            scope: None,
            histogram_interval_ns: None,
        })
        .await?;
    Ok(answer.total)
}

/// The non-zero refusal and drop counters in Prometheus `text`.
pub fn counted(text: &str) -> Vec<Counted> {
    let mut found = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if value == 0.0 {
            continue;
        }
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let Some((stage, _)) = COUNTED.iter().find(|(_, metric)| *metric == name) else {
            continue;
        };
        let labels = labels
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.trim_matches('"').to_owned()))
            .collect();
        found.push(Counted {
            stage,
            metric: name.to_owned(),
            labels,
            value,
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_counted_inside_the_sequence_range_only() {
        assert_eq!(missing_between(1, 10, 10), 0);
        assert_eq!(missing_between(1, 10, 7), 3);
        assert_eq!(missing_between(5, 5, 1), 0);
        assert_eq!(missing_between(0, 0, 0), 1);
    }

    #[test]
    fn refusal_counters_are_read_with_their_stage_and_labels() {
        let text = "# HELP x\n\
            sluice_agent_batches_failed_total{reason=\"too_large\"} 2\n\
            sluice_doppler_batches_shed_total 0\n\
            sluice_bus_wal_refused_records_total{reason=\"budget\"} 5\n\
            sluice_agent_envelopes_received_total 100\n";
        let counted = counted(text);
        assert_eq!(counted.len(), 2);
        assert_eq!(counted[0].stage, "agent");
        assert_eq!(counted[0].labels["reason"], "too_large");
        assert_eq!(counted[1].stage, "bus");
        assert_eq!(counted[1].value, 5.0);
    }

    #[test]
    fn source_ids_are_quoted_as_sql_literals() {
        let request = AuditRequest {
            source_ids: vec!["it's".to_owned()],
            start_ns: 0,
            end_ns: 1,
        };
        let sql = rows_in_range(&request, true);
        assert!(sql.contains("source_id IN ('it''s')"), "{sql}");
    }
}
