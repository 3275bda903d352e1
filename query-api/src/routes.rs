//! The HTTP routes and their handlers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use sluice_common::SluiceError;
use sluice_common::time::parse_time_nanos;
use sluice_indexer::SearchRequest;

use crate::AppState;
use crate::auth::Reader;

/// The API's router over `state`.
pub fn router(state: AppState) -> Router {
    // The body may hold the longest SQL text allowed as JSON with every character escaped
    // (`\u0000`, six bytes), so a text over the limit is refused by the SQL handler, which
    // names the limit, rather than by the body reader.
    let sql_body_limit = state
        .config
        .max_sql_bytes
        .saturating_mul(6)
        .saturating_add(1024);
    Router::new()
        .route("/api/v1/search", get(search))
        .route("/api/v1/tail", get(tail))
        .route("/api/v1/patterns", get(patterns))
        .route("/v2/read", get(crate::loggregator::v2_read))
        .route(
            "/api/v1/read/{source_id}",
            get(crate::loggregator::log_cache_read),
        )
        .route(
            "/api/v1/sql",
            post(sql).layer(DefaultBodyLimit::max(sql_body_limit)),
        )
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/archive/stats", get(crate::archive::stats))
        .route(
            "/api/v1/archive/partitions",
            get(crate::archive::partitions),
        )
        .route("/api/v1/archive/files", get(crate::archive::files))
        .route(
            "/api/v1/archive/compact",
            get(crate::archive::compaction).post(crate::archive::compact),
        )
        .route(
            "/api/v1/archive/expire",
            get(crate::archive::expiry).post(crate::archive::expire),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.gate.clone(),
            crate::auth::authorize,
        ))
        .with_state(state)
}

/// An error answered as JSON with the status its kind maps to.
pub(crate) struct ApiError(pub(crate) SluiceError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.kind().http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            axum::Json(serde_json::json!({ "error": self.0.message() })),
        )
            .into_response()
    }
}

pub(crate) fn respond<T: serde::Serialize>(
    state: &AppState,
    endpoint: &'static str,
    result: Result<T, SluiceError>,
) -> Response {
    match result {
        Ok(body) => {
            state.metrics.request(endpoint, 200);
            axum::Json(body).into_response()
        }
        Err(error) => {
            state.metrics.request(endpoint, error.kind().http_status());
            ApiError(error).into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
struct SearchParams {
    query: Option<String>,
    q: Option<String>,
    start: Option<String>,
    end: Option<String>,
    limit: Option<usize>,
    histogram: Option<String>,
}

fn parse_time_param(name: &str, value: Option<&String>) -> Result<Option<i64>, SluiceError> {
    value
        .map(|text| {
            parse_time_nanos(text).ok_or_else(|| {
                SluiceError::invalid(format!("{name}: invalid time {text:?}; use RFC 3339 or seconds, ms or ns since the epoch"))
            })
        })
        .transpose()
}

/// `histogram=<interval>`: `1h`, `5m`, `30s`, `100ms`; at least 1 ms.
fn parse_histogram_interval(text: &str) -> Result<i64, SluiceError> {
    let interval = sluice_common::config::parse_duration("histogram", text)?;
    if interval < std::time::Duration::from_millis(1) {
        return Err(SluiceError::invalid(format!(
            "histogram: interval {text:?} is below 1ms"
        )));
    }
    i64::try_from(interval.as_nanos())
        .map_err(|_| SluiceError::invalid(format!("histogram: interval {text:?} is too long")))
}

async fn search(
    State(state): State<AppState>,
    reader: Reader,
    Query(params): Query<SearchParams>,
) -> Response {
    let result = async {
        let limit = params.limit.unwrap_or(100);
        if limit == 0 || limit > state.config.max_search_limit {
            return Err(SluiceError::invalid(format!(
                "limit: must be between 1 and {}",
                state.config.max_search_limit
            )));
        }
        let request = SearchRequest {
            query: params.query.or(params.q).unwrap_or_default(),
            start_ns: parse_time_param("start", params.start.as_ref())?,
            end_ns: parse_time_param("end", params.end.as_ref())?,
            limit,
            histogram_interval_ns: params
                .histogram
                .as_deref()
                .map(parse_histogram_interval)
                .transpose()?,
            scope: reader.scope,
        };
        let mut answer = state.search.search(request.clone()).await?;
        // Hours of the range the index does not hold are answered from the archive.
        if let crate::search::SearchBackend::Local(searcher) = &state.search {
            let searcher = std::sync::Arc::clone(searcher);
            let index_hours = tokio::task::spawn_blocking(move || searcher.hours())
                .await
                .map_err(|error| SluiceError::internal(format!("search task failed: {error}")))??;
            crate::cold::add_archive_hours(&state, &request, index_hours, &mut answer).await?;
        }
        Ok(answer)
    }
    .await;
    respond(&state, "search", result)
}

#[derive(Debug, Deserialize)]
struct PatternsParams {
    query: Option<String>,
    q: Option<String>,
    start: Option<String>,
    end: Option<String>,
    since: Option<String>,
    step: Option<String>,
    compare: Option<String>,
    factor: Option<f64>,
    limit: Option<usize>,
}

/// Steps a range is cut into when `step` is not given.
const DEFAULT_STEPS: i64 = 60;

async fn patterns(
    State(state): State<AppState>,
    reader: Reader,
    Query(params): Query<PatternsParams>,
) -> Response {
    let result = async {
        let now = sluice_common::time::now_nanos();
        let end = parse_time_param("end", params.end.as_ref())?.unwrap_or(now);
        let start = match (&params.start, &params.since) {
            (Some(_), Some(_)) => {
                return Err(SluiceError::invalid("give start= or since=, not both"));
            }
            (Some(_), None) => parse_time_param("start", params.start.as_ref())?.unwrap_or(0),
            (None, Some(since)) => end.saturating_sub(duration_nanos("since", since)?),
            (None, None) => end.saturating_sub(3_600_000_000_000),
        };
        let step_ns = match &params.step {
            Some(step) => duration_nanos("step", step)?,
            None => {
                let raw = (end.saturating_sub(start) / DEFAULT_STEPS).max(1_000_000_000);
                // Whole seconds, so steps line up across queries.
                (raw + 999_999_999) / 1_000_000_000 * 1_000_000_000
            }
        };
        let query = crate::patterns::PatternsQuery {
            query: params.query.or(params.q).unwrap_or_default(),
            start_ns: start,
            end_ns: end,
            step_ns,
            compare_ns: params
                .compare
                .as_deref()
                .map(|compare| duration_nanos("compare", compare))
                .transpose()?,
            factor: params.factor.unwrap_or(2.0),
            limit: params.limit.unwrap_or(100),
            scope: reader.scope,
        };
        crate::patterns::answer(&state.search, query).await
    }
    .await;
    respond(&state, "patterns", result)
}

/// A positive duration parameter (`15m`, `1h`, `30s`) in ns.
fn duration_nanos(name: &str, text: &str) -> Result<i64, SluiceError> {
    let duration = sluice_common::config::parse_duration(name, text)?;
    if duration.is_zero() {
        return Err(SluiceError::invalid(format!(
            "{name}: must be longer than 0"
        )));
    }
    i64::try_from(duration.as_nanos())
        .map_err(|_| SluiceError::invalid(format!("{name}: {text:?} is too long")))
}

async fn tail(
    State(state): State<AppState>,
    reader: Reader,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let result = async {
        // Selectors repeat (`source_id`, `type`), which the typed extractor does not allow:
        // read pairs directly.
        let mut pairs: Vec<(String, String)> = query_pairs(raw.as_deref());
        let take = |pairs: &mut Vec<(String, String)>, name: &str| {
            let value = pairs
                .iter()
                .rev()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone());
            pairs.retain(|(key, _)| key != name);
            value
        };
        let since = take(&mut pairs, "since");
        let last = take(&mut pairs, "tail");
        let cursor = take(&mut pairs, "cursor").or_else(|| {
            headers
                .get("last-event-id")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        });
        let start = tail_start(since.as_deref(), last.as_deref(), cursor.as_deref())?;
        let filter =
            crate::tail::TailFilter::from_pairs(pairs, &state.query_language)?.within(reader.scope);
        state.tails.open(client.ip(), filter, start).await
    }
    .await;
    let stream = match result {
        Ok(stream) => stream,
        Err(error) => {
            state.metrics.request("tail", error.kind().http_status());
            return ApiError(error).into_response();
        }
    };
    state.metrics.request("tail", 200);
    let events = stream.map(|event| -> Result<Event, Infallible> { Ok(sse_event(&event)) });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Where a tail starts: `cursor` (or `Last-Event-ID`) resumes and wins; else `since=` (a
/// duration back from now, `10m`, or a time) or `tail=N`; else live.
fn tail_start(
    since: Option<&str>,
    last: Option<&str>,
    cursor: Option<&str>,
) -> Result<crate::tail::Start, SluiceError> {
    use crate::tail::{Cursor, Start};
    if let Some(cursor) = cursor.filter(|cursor| !cursor.trim().is_empty()) {
        return Ok(Start::Resume(Cursor::parse(cursor)?));
    }
    match (since, last) {
        (Some(_), Some(_)) => Err(SluiceError::invalid("give since= or tail=, not both")),
        (Some(since), None) => {
            let start = match sluice_common::config::parse_duration("since", since) {
                Ok(back) => sluice_common::time::now_nanos()
                    .saturating_sub(i64::try_from(back.as_nanos()).unwrap_or(i64::MAX)),
                Err(_) => parse_time_nanos(since).ok_or_else(|| {
                    SluiceError::invalid(format!(
                        "since={since:?}: give a duration back from now (10m, 2h) or a time (RFC 3339, or seconds, ms or ns since the epoch)"
                    ))
                })?,
            };
            Ok(Start::Since(start))
        }
        (None, Some(last)) => last
            .parse::<usize>()
            .map(Start::Last)
            .map_err(|_| SluiceError::invalid(format!("tail={last:?}: give a number of lines"))),
        (None, None) => Ok(Start::Live),
    }
}

/// The SSE form of a tail event: every event carries the cursor to resume after it as its
/// `id:`; envelopes are the default event type, the rest are named.
fn sse_event(event: &crate::tail::TailEvent) -> Event {
    use crate::tail::TailEvent;
    use serde_json::json;
    match event {
        TailEvent::Opened { tail_id, cursor } => Event::default()
            .event("open")
            .id(cursor.to_string())
            .data(json!({"tail_id": tail_id, "cursor": cursor.to_string()}).to_string()),
        TailEvent::Envelope { delivered, cursor } => Event::default()
            .id(cursor.to_string())
            .data(crate::tail::delivered_json(delivered).to_string()),
        TailEvent::HistoryCut {
            matched,
            sent,
            cursor,
        } => Event::default()
            .event("truncated")
            .id(cursor.to_string())
            .data(
                json!({
                    "matched": matched,
                    "sent": sent,
                    "reason": "more history matched than query_api.tail.max_history; the newest were sent",
                })
                .to_string(),
            ),
        TailEvent::Dropped { dropped, cursor } => {
            let (start, end) = dropped
                .time_range
                .map(|(start, end)| {
                    (
                        json!(sluice_common::time::format_rfc3339_nanos(start)),
                        json!(sluice_common::time::format_rfc3339_nanos(end)),
                    )
                })
                .unwrap_or((serde_json::Value::Null, serde_json::Value::Null));
            Event::default()
                .event("dropped")
                .id(cursor.to_string())
                .data(
                    json!({
                        "count": dropped.envelopes,
                        "unknown_records": dropped.unknown_records,
                        "healed": dropped.healed,
                        "partition": dropped.partition,
                        "from_offset": dropped.from,
                        "to_offset": dropped.to,
                        "start": start,
                        "end": end,
                        "reason": "the bus released these records before this tail read them, and the index does not hold all of them (metrics are not indexed)",
                    })
                    .to_string(),
                )
        }
        TailEvent::Heartbeat { cursor } => Event::default()
            .event("heartbeat")
            .id(cursor.to_string())
            .data(
                json!({
                    "cursor": cursor.to_string(),
                    "time": sluice_common::time::format_rfc3339_nanos(sluice_common::time::now_nanos()),
                })
                .to_string(),
            ),
        TailEvent::Closed { reason, cursor } => Event::default()
            .event("close")
            .id(cursor.to_string())
            .data(json!({"reason": reason, "cursor": cursor.to_string()}).to_string()),
    }
}

/// The decoded pairs of a request's query (none when it has no query).
pub(crate) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|query| url_pairs(query).collect())
        .unwrap_or_default()
}

/// Decodes `application/x-www-form-urlencoded` pairs.
pub(crate) fn url_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'+' {
            decoded.push(b' ');
            index += 1;
            continue;
        }
        if byte == b'%'
            && let Some(hex) = bytes.get(index + 1..index + 3)
            && hex.iter().all(u8::is_ascii_hexdigit)
            && let Some(value) = std::str::from_utf8(hex)
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            decoded.push(value);
            index += 3;
            continue;
        }
        decoded.push(byte);
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[derive(Debug, Deserialize)]
struct SqlBody {
    query: String,
}

/// `POST /api/v1/sql[?format=json|ndjson|csv|arrow]`: the answer streams in the format the
/// parameter or the `Accept` header asks for (see `crate::sql::format`).
async fn sql(
    State(state): State<AppState>,
    reader: Reader,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    let query = if is_json {
        match serde_json::from_slice::<SqlBody>(&body) {
            Ok(parsed) => Ok(parsed.query),
            Err(error) => Err(SluiceError::invalid(format!(
                "invalid json body: {error}; expected {{\"query\": \"SELECT …\"}}"
            ))),
        }
    } else {
        String::from_utf8(body.to_vec())
            .map_err(|_| SluiceError::invalid("the query is not valid UTF-8"))
    };
    let pairs = query_pairs(raw.as_deref());
    let parameter = pairs
        .iter()
        .rev()
        .find(|(key, _)| key == "format")
        .map(|(_, value)| value.as_str());
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let started = match (query, crate::sql::format::Format::choose(parameter, accept)) {
        (Ok(query), Ok(format)) => {
            state
                .sql
                .start(&state.archive, query, format, reader.scope)
                .await
        }
        (Err(error), _) | (_, Err(error)) => Err(error),
    };
    match started {
        Ok(answer) => {
            state.metrics.request("sql", 200);
            let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(
                answer.body,
            ));
            (
                [
                    (header::CONTENT_TYPE, answer.format.media_type().to_owned()),
                    (
                        header::HeaderName::from_static("x-sluice-row-limit"),
                        answer.max_rows.to_string(),
                    ),
                ],
                body,
            )
                .into_response()
        }
        Err(error) => respond::<()>(&state, "sql", Err(error)),
    }
}

/// `GET /api/v1/audit?source_id=…&start=…&end=…`: `source_id` may repeat; the range defaults
/// to the last hour.
async fn audit(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let pairs: Vec<(String, String)> = query_pairs(raw.as_deref());
    let value = |name: &str| {
        pairs
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let result = async {
        if let Some((key, _)) = pairs
            .iter()
            .find(|(key, _)| !matches!(key.as_str(), "source_id" | "start" | "end"))
        {
            return Err(SluiceError::invalid(format!(
                "{key}: unknown parameter; expected source_id, start, end"
            )));
        }
        let end_ns = parse_time_param("end", value("end").as_ref())?
            .unwrap_or_else(sluice_common::time::now_nanos);
        let start_ns = parse_time_param("start", value("start").as_ref())?
            .unwrap_or(end_ns.saturating_sub(sluice_common::time::NANOS_PER_HOUR));
        let request = crate::audit::AuditRequest {
            source_ids: pairs
                .iter()
                .filter(|(key, _)| key == "source_id")
                .map(|(_, value)| value.clone())
                .collect(),
            start_ns,
            end_ns,
        };
        crate::audit::audit(&state, request).await
    }
    .await;
    respond(&state, "audit", result)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.telemetry.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_decode_percent_and_plus() {
        let pairs: Vec<(String, String)> =
            url_pairs("source_id=a%2Fb&source_id=c+d&x=%zz&y=%4").collect();
        assert_eq!(
            pairs,
            vec![
                ("source_id".to_owned(), "a/b".to_owned()),
                ("source_id".to_owned(), "c d".to_owned()),
                ("x".to_owned(), "%zz".to_owned()),
                ("y".to_owned(), "%4".to_owned()),
            ]
        );
    }
}
