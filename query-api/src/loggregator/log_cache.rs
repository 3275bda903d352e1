//! `GET /api/v1/read/{source_id}`: Log Cache's read, what `cf logs --recent` and Log Cache
//! clients call. Logs and events come from the index, metrics from the archive (SQL), merged
//! by timestamp.
//!
//! Parameters as Log Cache takes them: `start_time` and `end_time` in nanoseconds since the
//! epoch (`[start_time, end_time)`; default from 0 to now), `envelope_types` (repeatable:
//! `LOG`, `COUNTER`, `GAUGE`, `TIMER`, `EVENT`, `ANY`; default any), `limit` (1 to 1000,
//! default 100) and `descending` (newest first). The answer is
//! `{"envelopes": {"batch": [...]}}` in the protobuf JSON mapping.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sluice_common::SluiceError;
use sluice_proto::v2::{Counter, Envelope, Gauge, GaugeValue, Timer, envelope};

use crate::AppState;

/// The largest `limit` (Log Cache's own).
pub const MAX_LIMIT: usize = 1000;

/// A parsed request.
#[derive(Debug)]
pub struct LogCacheRead {
    /// The source.
    pub source_id: String,
    /// `[start, end)` in ns.
    pub range: (i64, i64),
    /// Kinds wanted (lower case, as `kind_name` gives them).
    pub kinds: Vec<&'static str>,
    /// At most this many.
    pub limit: usize,
    /// Newest first.
    pub descending: bool,
    /// The records the caller may see (`None`: every tenant's); a source outside it reads as
    /// one with no envelopes, as Log Cache answers for a source it does not know.
    pub scope: Option<sluice_common::tenancy::Scope>,
}

const KINDS: [(&str, &str); 5] = [
    ("LOG", "log"),
    ("COUNTER", "counter"),
    ("GAUGE", "gauge"),
    ("TIMER", "timer"),
    ("EVENT", "event"),
];

impl LogCacheRead {
    /// Parses the query pairs of a read of `source_id`.
    pub fn from_pairs(
        source_id: String,
        pairs: &[(String, String)],
    ) -> Result<LogCacheRead, SluiceError> {
        let mut read = LogCacheRead {
            source_id,
            range: (0, sluice_common::time::now_nanos()),
            kinds: Vec::new(),
            limit: 100,
            descending: false,
            scope: None,
        };
        let number = |key: &str, value: &str| {
            value.parse::<i64>().map_err(|_| {
                SluiceError::invalid(format!("{key}={value:?}: give nanoseconds since the epoch"))
            })
        };
        for (key, value) in pairs {
            match key.as_str() {
                "start_time" => read.range.0 = number(key, value)?,
                "end_time" => read.range.1 = number(key, value)?,
                "limit" => {
                    read.limit = value
                        .parse()
                        .ok()
                        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                        .ok_or_else(|| {
                            SluiceError::invalid(format!("limit={value:?}: give 1 to {MAX_LIMIT}"))
                        })?;
                }
                "descending" => {
                    read.descending = match value.as_str() {
                        "" | "true" | "1" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(SluiceError::invalid(format!(
                                "descending={value:?}: give true or false"
                            )));
                        }
                    };
                }
                "envelope_types" => {
                    for name in value.split(',') {
                        let name = name.trim().to_ascii_uppercase();
                        if name == "ANY" {
                            read.kinds.extend(KINDS.iter().map(|(_, kind)| *kind));
                            continue;
                        }
                        let kind = KINDS
                            .iter()
                            .find(|(known, _)| *known == name)
                            .map(|(_, kind)| *kind)
                            .ok_or_else(|| {
                                SluiceError::invalid(format!(
                                    "envelope_types={name:?}: give LOG, COUNTER, GAUGE, TIMER, EVENT or ANY"
                                ))
                            })?;
                        read.kinds.push(kind);
                    }
                }
                "name_filter" => {
                    return Err(SluiceError::invalid(
                        "name_filter is not supported; select by envelope_types",
                    ));
                }
                _ => {
                    return Err(SluiceError::invalid(format!(
                        "unknown parameter {key:?}: give start_time, end_time, envelope_types, limit, descending"
                    )));
                }
            }
        }
        if read.kinds.is_empty() {
            read.kinds.extend(KINDS.iter().map(|(_, kind)| *kind));
        }
        read.kinds.sort_unstable();
        read.kinds.dedup();
        if read.range.0 >= read.range.1 {
            return Err(SluiceError::invalid("start_time must be before end_time"));
        }
        Ok(read)
    }
}

/// Answers `read`.
pub async fn read(state: &AppState, read: LogCacheRead) -> Result<Value, SluiceError> {
    let mut found: Vec<Envelope> = Vec::new();
    let log_types: Vec<&str> = read
        .kinds
        .iter()
        .flat_map(|kind| match *kind {
            "log" => vec!["OUT", "ERR"],
            "event" => vec!["EVENT"],
            _ => vec![],
        })
        .collect();
    if !log_types.is_empty() {
        let searcher = std::sync::Arc::clone(&state.query_language);
        let source_id = read.source_id.clone();
        let (range, limit, descending) = (read.range, read.limit, read.descending);
        let scope = read.scope.clone();
        let entries = tokio::task::spawn_blocking(move || {
            searcher.read_source(
                &source_id,
                range,
                &log_types,
                limit,
                descending,
                scope.as_ref(),
            )
        })
        .await
        .map_err(|error| SluiceError::internal(format!("index read failed: {error}")))??;
        found.extend(entries.into_iter().map(|entry| entry.envelope));
    }
    for kind in &read.kinds {
        let table = match *kind {
            "counter" => "counters",
            "gauge" => "gauges",
            "timer" => "timers",
            _ => continue,
        };
        found.extend(archived(state, table, &read).await?);
    }
    found.sort_by_key(|envelope| envelope.timestamp);
    if read.descending {
        found.reverse();
    }
    found.truncate(read.limit);
    Ok(json!({ "envelopes": super::json::batch_json(&found) }))
}

/// Metrics of one table of the archive for `read`, as envelopes (a gauge's rows, one per
/// metric, become one envelope again).
async fn archived(
    state: &AppState,
    table: &str,
    read: &LogCacheRead,
) -> Result<Vec<Envelope>, SluiceError> {
    let columns = match table {
        "counters" => "name, delta, total",
        "gauges" => "name, value, unit",
        _ => "name, CAST(start AS BIGINT) AS start_ns, CAST(stop AS BIGINT) AS stop_ns",
    };
    let order = if read.descending { "DESC" } else { "ASC" };
    // Gauges come as a row per metric: a limit on rows is not one on envelopes, so take
    // enough rows for `limit` envelopes of up to 64 metrics each.
    let rows = if table == "gauges" {
        read.limit * 64
    } else {
        read.limit
    };
    let source = read.source_id.replace('\'', "''");
    let query = format!(
        "SELECT CAST(timestamp AS BIGINT) AS ts, instance_id, agent_id, sequence, tags, {columns} \
         FROM {table} WHERE source_id = '{source}' \
         AND timestamp >= to_timestamp_nanos({}) AND timestamp < to_timestamp_nanos({}) \
         ORDER BY timestamp {order} LIMIT {rows}",
        read.range.0, read.range.1
    );
    let limits = crate::sql::SqlLimits {
        max_bytes: state.config.max_sql_bytes.max(query.len()),
        max_rows: rows,
    };
    let response =
        crate::sql::run_query(&state.archive, &query, limits, read.scope.as_ref()).await?;
    let text = |row: &serde_json::Map<String, Value>, key: &str| {
        row.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let integer = |row: &serde_json::Map<String, Value>, key: &str| {
        row.get(key).and_then(Value::as_i64).unwrap_or_default()
    };
    let mut envelopes = Vec::new();
    let mut gauges: BTreeMap<(i64, String, String, i64), Envelope> = BTreeMap::new();
    for row in &response.rows {
        let mut envelope = Envelope {
            timestamp: integer(row, "ts"),
            source_id: read.source_id.clone(),
            instance_id: text(row, "instance_id"),
            tags: tags_of(row.get("tags")),
            ..Default::default()
        };
        match table {
            "counters" => {
                envelope.message = Some(envelope::Message::Counter(Counter {
                    name: text(row, "name"),
                    delta: row.get("delta").and_then(Value::as_u64).unwrap_or_default(),
                    total: row.get("total").and_then(Value::as_u64).unwrap_or_default(),
                }));
                envelopes.push(envelope);
            }
            "gauges" => {
                let key = (
                    envelope.timestamp,
                    envelope.instance_id.clone(),
                    text(row, "agent_id"),
                    integer(row, "sequence"),
                );
                let gauge = gauges.entry(key).or_insert_with(|| Envelope {
                    message: Some(envelope::Message::Gauge(Gauge::default())),
                    ..envelope
                });
                if let Some(envelope::Message::Gauge(gauge)) = &mut gauge.message {
                    gauge.metrics.insert(
                        text(row, "name"),
                        GaugeValue {
                            unit: text(row, "unit"),
                            value: row.get("value").and_then(Value::as_f64).unwrap_or(f64::NAN),
                        },
                    );
                }
            }
            _ => {
                envelope.message = Some(envelope::Message::Timer(Timer {
                    name: text(row, "name"),
                    start: integer(row, "start_ns"),
                    stop: integer(row, "stop_ns"),
                }));
                envelopes.push(envelope);
            }
        }
    }
    envelopes.extend(gauges.into_values());
    Ok(envelopes)
}

/// The archive's tags column as SQL answers it (an object, or a list of key/value pairs).
fn tags_of(value: Option<&Value>) -> std::collections::HashMap<String, String> {
    let mut tags = std::collections::HashMap::new();
    match value {
        Some(Value::Object(object)) => {
            for (key, value) in object {
                if let Some(value) = value.as_str() {
                    tags.insert(key.clone(), value.to_owned());
                }
            }
        }
        Some(Value::Array(entries)) => {
            for entry in entries {
                if let (Some(key), Some(value)) = (
                    entry.get("key").and_then(Value::as_str),
                    entry.get("value").and_then(Value::as_str),
                ) {
                    tags.insert(key.to_owned(), value.to_owned());
                }
            }
        }
        _ => {}
    }
    tags
}
