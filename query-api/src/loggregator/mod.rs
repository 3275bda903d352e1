//! Loggregator's egress shapes over Sluice's tail and stores, for the clients Cloud Foundry
//! users already have: the RLP Gateway's `GET /v2/read` (`read.rs`) and Log Cache's
//! `GET /api/v1/read/{source_id}` (`log_cache.rs`), both in the protobuf JSON mapping
//! (`json.rs`). The doppler's own `loggregator.v2.Egress` gRPC service is unchanged.

pub mod json;
pub mod log_cache;
pub mod read;

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::auth::Reader;
use crate::routes::ApiError;

/// `GET /v2/read`.
pub async fn v2_read(
    State(state): State<AppState>,
    reader: Reader,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let pairs: Vec<(String, String)> = crate::routes::query_pairs(raw.as_deref());
    let opened = async {
        let mut selection =
            read::ReadSelection::from_pairs(pairs, &state.query_language)?.within(reader.scope);
        selection.cursor = headers
            .get("last-event-id")
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.trim().is_empty())
            .map(str::to_owned);
        let narrowing = selection.narrowing();
        let stream = state
            .shards
            .stream(&state.tails, client.ip(), selection)
            .await?;
        Ok::<_, sluice_common::SluiceError>((stream, narrowing))
    }
    .await;
    let (stream, narrowing) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            state.metrics.request("v2_read", error.kind().http_status());
            return ApiError(error).into_response();
        }
    };
    state.metrics.request("v2_read", 200);
    let heartbeat = state.tails.limits().heartbeat;
    let events = futures::stream::unfold(
        (stream, narrowing, false),
        move |(stream, narrowing, ended)| async move {
            if ended {
                return None;
            }
            // A reader of a shared stream waits its turn; it still hears a heartbeat.
            let next = tokio::time::timeout(heartbeat, read::next(&stream, &narrowing)).await;
            let (event, ended) = match next {
                Err(_) | Ok(Some(read::ReadEvent::Heartbeat)) => (
                    Event::default()
                        .event("heartbeat")
                        .data((sluice_common::time::now_nanos() / 1_000_000_000).to_string()),
                    false,
                ),
                Ok(Some(read::ReadEvent::Batch(batch, cursor))) => (
                    Event::default().id(cursor).data(read::batch_data(&batch)),
                    false,
                ),
                Ok(Some(read::ReadEvent::Dropped(value, cursor))) => (
                    Event::default()
                        .event("dropped")
                        .id(cursor)
                        .data(value.to_string()),
                    false,
                ),
                Ok(Some(read::ReadEvent::Closing(reason))) => (
                    Event::default()
                        .event("closing")
                        .data(format!("closing: {reason}")),
                    true,
                ),
                Ok(None) => (
                    Event::default()
                        .event("closing")
                        .data("closing: the stream ended"),
                    true,
                ),
            };
            Some((Ok::<_, Infallible>(event), (stream, narrowing, ended)))
        },
    );
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}

/// `GET /api/v1/read/{source_id}`.
pub async fn log_cache_read(
    State(state): State<AppState>,
    reader: Reader,
    Path(source_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let pairs: Vec<(String, String)> = crate::routes::query_pairs(raw.as_deref());
    let result = async {
        let mut request = log_cache::LogCacheRead::from_pairs(source_id, &pairs)?;
        request.scope = reader.scope;
        log_cache::read(&state, request).await
    }
    .await;
    crate::routes::respond(&state, "log_cache_read", result)
}
