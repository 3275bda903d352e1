//! The `_bulk` body: NDJSON action lines, each `index` or `create` followed by its document,
//! and the mapping of a document onto an envelope.
//!
//! | document | envelope |
//! |---|---|
//! | `@timestamp`, else `timestamp`, `time`, `ts` (RFC 3339, zone-less read as UTC; or a number of seconds, milliseconds or nanoseconds since the epoch, told apart by magnitude) | `timestamp` (arrival time when absent) |
//! | `message`, else `msg`, else `log` (non-strings as JSON text) | log payload; with none of them the whole document as JSON |
//! | the configured `source_id_field`, else the index name | `source_id` |
//! | the index name | tag `index` |
//! | `level`, `log.level` or `severity` saying error, fatal, critical, alert or emergency | log type `ERR` (else `OUT`) |
//! | every other field, nested objects flattened with `.`, arrays as JSON text, `null` left out | tags |
//!
//! Errors are per item, as Elasticsearch answers them: a bad document fails alone (status 400,
//! `mapper_parsing_exception`) and the others are kept. Only an action line that cannot be
//! read fails the whole request, since the lines after it cannot be told apart (Elasticsearch
//! does the same).

use std::collections::HashMap;

use serde_json::{Map, Value};
use sluice_proto::v2::{Envelope, Log, envelope};

/// What one action line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `index`: add the document.
    Index,
    /// `create`: add the document.
    Create,
    /// `update` (refused: the log is append-only; its document line is skipped).
    Update,
    /// `delete` (refused: the log is append-only; it has no document line).
    Delete,
}

impl Action {
    /// The action's name in requests and responses.
    pub fn name(self) -> &'static str {
        match self {
            Action::Index => "index",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// One item of the request, in order.
#[derive(Debug)]
pub struct Item {
    /// The action.
    pub action: Action,
    /// The target index (from the action line or the URL).
    pub index: String,
    /// The `_id` the client gave, if any.
    pub id: Option<String>,
    /// The envelope, or why this item is refused.
    pub outcome: Result<Envelope, ItemError>,
}

/// Why one item is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    /// HTTP status of the item.
    pub status: u16,
    /// Elasticsearch's error type.
    pub kind: &'static str,
    /// Human-readable reason.
    pub reason: String,
    /// The `reason` label of the rejection counter.
    pub metric: &'static str,
}

impl ItemError {
    fn document(metric: &'static str, reason: String) -> ItemError {
        ItemError {
            status: 400,
            kind: "mapper_parsing_exception",
            reason,
            metric,
        }
    }
}

/// The whole request is unreadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkError(pub String);

/// How documents become envelopes.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    /// Path of the field naming the source_id.
    pub source_id_field: Option<Vec<String>>,
}

/// Parses a `_bulk` body. `url_index` is the `{index}` of `/{index}/_bulk`; `now` stamps
/// documents without a timestamp.
pub fn parse(
    body: &[u8],
    url_index: Option<&str>,
    mapping: &Mapping,
    now: i64,
) -> Result<Vec<Item>, BulkError> {
    let mut lines = body
        .split(|byte| *byte == b'\n')
        .enumerate()
        .map(|(number, line)| (number + 1, trim_ascii(line)))
        .filter(|(_, line)| !line.is_empty());
    let mut items = Vec::new();
    while let Some((number, line)) = lines.next() {
        let (action, meta) =
            parse_action(line).map_err(|reason| BulkError(format!("line {number}: {reason}")))?;
        let index = match meta.get("_index") {
            Some(Value::String(index)) if !index.is_empty() => index.clone(),
            Some(_) => {
                return Err(BulkError(format!(
                    "line {number}: _index must be a non-empty string"
                )));
            }
            None => match url_index {
                Some(index) => index.to_owned(),
                None => {
                    return Err(BulkError(format!(
                        "line {number}: no _index in the action and none in the URL"
                    )));
                }
            },
        };
        let id = match meta.get("_id") {
            Some(Value::String(id)) => Some(id.clone()),
            Some(Value::Number(number)) => Some(number.to_string()),
            _ => None,
        };
        let outcome = match action {
            Action::Delete => Err(unsupported(action)),
            Action::Update => {
                lines.next();
                Err(unsupported(action))
            }
            Action::Index | Action::Create => match lines.next() {
                None => {
                    return Err(BulkError(format!(
                        "line {number}: the {} action has no document line after it",
                        action.name()
                    )));
                }
                Some((_, document)) => map_document(document, &index, mapping, now),
            },
        };
        items.push(Item {
            action,
            index,
            id,
            outcome,
        });
    }
    Ok(items)
}

fn unsupported(action: Action) -> ItemError {
    ItemError {
        status: 400,
        kind: "illegal_argument_exception",
        reason: format!(
            "the {} action is not supported: Sluice keeps logs append-only (use index or create)",
            action.name()
        ),
        metric: "unsupported_action",
    }
}

fn trim_ascii(line: &[u8]) -> &[u8] {
    let start = line
        .iter()
        .position(|byte| !byte.is_ascii_whitespace())
        .unwrap_or(line.len());
    let end = line
        .iter()
        .rposition(|byte| !byte.is_ascii_whitespace())
        .map_or(start, |last| last + 1);
    &line[start..end.max(start)]
}

/// `{"index": {...}}` and friends: exactly one key naming the action, an object of metadata.
fn parse_action(line: &[u8]) -> Result<(Action, Map<String, Value>), String> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|error| format!("malformed action/metadata line: {error}"))?;
    let Value::Object(object) = value else {
        return Err("malformed action/metadata line: expected a JSON object".to_owned());
    };
    if object.len() != 1 {
        return Err(format!(
            "malformed action/metadata line: expected one action, found {} keys",
            object.len()
        ));
    }
    let Some((name, meta)) = object.into_iter().next() else {
        return Err("malformed action/metadata line: no action".to_owned());
    };
    let action = match name.as_str() {
        "index" => Action::Index,
        "create" => Action::Create,
        "update" => Action::Update,
        "delete" => Action::Delete,
        other => return Err(format!("unknown action [{other}]")),
    };
    match meta {
        Value::Object(meta) => Ok((action, meta)),
        _ => Err(format!(
            "malformed action/metadata line: [{name}] must hold an object"
        )),
    }
}

const TIMESTAMP_FIELDS: [&str; 4] = ["@timestamp", "timestamp", "time", "ts"];
const MESSAGE_FIELDS: [&str; 3] = ["message", "msg", "log"];

/// Maps one document line onto an envelope.
pub fn map_document(
    line: &[u8],
    index: &str,
    mapping: &Mapping,
    now: i64,
) -> Result<Envelope, ItemError> {
    let value: Value = serde_json::from_slice(line).map_err(|error| {
        ItemError::document(
            "malformed_json",
            format!("failed to parse document: {error}"),
        )
    })?;
    let Value::Object(mut document) = value else {
        return Err(ItemError::document(
            "not_an_object",
            "the document is not a JSON object".to_owned(),
        ));
    };
    let source_id = mapping
        .source_id_field
        .as_deref()
        .and_then(|path| lookup(&document, path))
        .and_then(|value| match value {
            Value::String(text) if !text.is_empty() => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| index.to_owned());

    let mut timestamp = now;
    if let Some(field) = TIMESTAMP_FIELDS
        .iter()
        .find(|field| document.contains_key(**field))
    {
        let value = document.remove(*field).unwrap_or(Value::Null);
        timestamp = parse_timestamp(&value).ok_or_else(|| {
            ItemError::document(
                "bad_timestamp",
                format!("failed to parse field [{field}] as a date: {value}"),
            )
        })?;
    }
    let error_level = ["level", "severity"]
        .iter()
        .filter_map(|field| document.get(*field))
        .chain(lookup(&document, &["log".to_owned(), "level".to_owned()]))
        .any(|value| value.as_str().is_some_and(is_error_level));

    let payload = match MESSAGE_FIELDS
        .iter()
        .find(|field| matches!(document.get(**field), Some(value) if !value.is_object()))
    {
        Some(field) => match document.remove(*field) {
            Some(Value::String(text)) => text.into_bytes(),
            Some(other) => other.to_string().into_bytes(),
            None => Vec::new(),
        },
        None => {
            let whole = Value::Object(std::mem::take(&mut document)).to_string();
            whole.into_bytes()
        }
    };
    let mut tags = HashMap::new();
    tags.insert("index".to_owned(), index.to_owned());
    flatten("", &document, &mut tags);

    Ok(Envelope {
        timestamp,
        source_id,
        tags,
        message: Some(envelope::Message::Log(Log {
            payload,
            r#type: if error_level { 1 } else { 0 },
        })),
        ..Default::default()
    })
}

fn lookup<'a>(document: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    // A dotted key (`"service.name": ...`) is the same field as the nested path.
    if let Some(value) = document.get(&path.join(".")) {
        return Some(value);
    }
    let (first, rest) = path.split_first()?;
    let value = document.get(first)?;
    if rest.is_empty() {
        return Some(value);
    }
    match value {
        Value::Object(inner) => lookup(inner, rest),
        _ => None,
    }
}

fn is_error_level(level: &str) -> bool {
    matches!(
        level.to_ascii_lowercase().as_str(),
        "error" | "err" | "fatal" | "critical" | "crit" | "alert" | "emerg" | "emergency" | "panic"
    )
}

/// A date as Elasticsearch clients send it: RFC 3339 (a zone-less one read as UTC) or a
/// number since the epoch (seconds, milliseconds or nanoseconds by magnitude).
fn parse_timestamp(value: &Value) -> Option<i64> {
    match value {
        Value::String(text) => sluice_common::time::parse_time_nanos(text)
            .or_else(|| sluice_common::time::parse_time_nanos(&format!("{}Z", text.trim()))),
        Value::Number(number) => {
            if let Some(whole) = number.as_i64() {
                sluice_common::time::parse_time_nanos(&whole.to_string())
            } else {
                // Fractional: seconds (or milliseconds) with a fraction.
                let float = number.as_f64()?;
                let nanos = if float.abs() < 1e11 {
                    float * 1e9
                } else {
                    float * 1e6
                };
                nanos.is_finite().then_some(nanos as i64)
            }
        }
        _ => None,
    }
}

fn flatten(prefix: &str, object: &Map<String, Value>, tags: &mut HashMap<String, String>) {
    for (key, value) in object {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Null => {}
            Value::Object(inner) => flatten(&name, inner, tags),
            Value::String(text) => {
                tags.insert(name, text.clone());
            }
            other => {
                tags.insert(name, other.to_string());
            }
        }
    }
}
