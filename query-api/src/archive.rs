//! `GET /api/v1/archive/stats` and `GET /api/v1/archive/partitions?table=…`: what the
//! archive's catalog holds (tables, partitions, files, rows, bytes), as of its latest version.

use axum::extract::{Query, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sluice_retention::catalog::stats::PartitionStats;

use crate::AppState;
use crate::routes::respond;

/// `GET /api/v1/archive/stats`.
pub async fn stats(State(state): State<AppState>) -> Response {
    let result = state
        .archive
        .snapshot()
        .await
        .map(|snapshot| snapshot.stats());
    respond(&state, "archive", result)
}

/// Parameters of `GET /api/v1/archive/partitions`.
#[derive(Debug, Deserialize)]
pub struct PartitionParams {
    /// One table only.
    table: Option<String>,
}

/// Refuses a `table=` that names no table of the archive.
fn known_table(table: Option<&str>) -> Result<(), sluice_common::SluiceError> {
    match table {
        Some(table)
            if !sluice_retention::tables::Table::ALL
                .iter()
                .any(|known| known.name() == table) =>
        {
            Err(sluice_common::SluiceError::invalid(format!(
                "unknown table {table:?}; the archive's tables are logs, counters, gauges, timers, events and pattern_counts"
            )))
        }
        _ => Ok(()),
    }
}

/// The answer of `GET /api/v1/archive/partitions`.
#[derive(Debug, Serialize)]
struct Partitions {
    version: u64,
    partitions: Vec<PartitionStats>,
}

/// `GET /api/v1/archive/partitions`.
pub async fn partitions(
    State(state): State<AppState>,
    Query(params): Query<PartitionParams>,
) -> Response {
    let result = state.archive.snapshot().await.and_then(|snapshot| {
        known_table(params.table.as_deref())?;
        Ok(Partitions {
            version: snapshot.version,
            partitions: snapshot.partitions(params.table.as_deref()),
        })
    });
    respond(&state, "archive", result)
}

/// `POST /api/v1/archive/compact`: asks the archive's writer to compact everything it can
/// now; answers the request's id, which `GET` reports progress under.
pub async fn compact(State(state): State<AppState>) -> Response {
    let result = sluice_retention::compaction::request(&state.archive.store).await;
    respond(&state, "archive", result)
}

/// The answer of `GET /api/v1/archive/compact`.
#[derive(Debug, Serialize)]
struct CompactionState {
    /// The latest round, if any ran.
    progress: Option<sluice_retention::compaction::Progress>,
}

/// `GET /api/v1/archive/compact`: the latest compaction round's progress.
pub async fn compaction(State(state): State<AppState>) -> Response {
    let result = sluice_retention::compaction::progress(&state.archive.store)
        .await
        .map(|progress| CompactionState { progress });
    respond(&state, "archive", result)
}

/// The answer of `GET /api/v1/archive/files`.
#[derive(Debug, Serialize)]
struct Files {
    version: u64,
    files: Vec<sluice_retention::catalog::DataFile>,
}

/// `GET /api/v1/archive/files?table=…`: every live file (path relative to the archive root,
/// rows, bytes, time range), as the catalog holds them; what another reader of the archive
/// (DuckDB, Spark) should read, rather than a listing of the bucket.
pub async fn files(
    State(state): State<AppState>,
    Query(params): Query<PartitionParams>,
) -> Response {
    let result = state.archive.snapshot().await.and_then(|snapshot| {
        known_table(params.table.as_deref())?;
        Ok(Files {
            version: snapshot.version,
            files: snapshot
                .files
                .values()
                .filter(|file| {
                    params
                        .table
                        .as_ref()
                        .is_none_or(|table| *table == file.table)
                })
                .cloned()
                .collect(),
        })
    });
    respond(&state, "archive", result)
}

/// Parameters of `POST /api/v1/archive/expire`.
#[derive(Debug, Deserialize)]
pub struct ExpireParams {
    /// Plan and report only.
    #[serde(default)]
    dry_run: bool,
}

/// `POST /api/v1/archive/expire[?dry_run=true]`: asks the archive's writer to apply the
/// `[[retention.expiry]]` policies now (or, dry, to report what they would remove); answers
/// the request's id, which `GET` reports under.
pub async fn expire(State(state): State<AppState>, Query(params): Query<ExpireParams>) -> Response {
    let result = sluice_retention::expiry::request(&state.archive.store, params.dry_run).await;
    respond(&state, "archive", result)
}

/// The answer of `GET /api/v1/archive/expire`.
#[derive(Debug, Serialize)]
struct ExpiryState {
    /// The latest pass, if any ran.
    report: Option<sluice_retention::expiry::Report>,
}

/// `GET /api/v1/archive/expire`: what the latest expiry pass removed (or would have).
pub async fn expiry(State(state): State<AppState>) -> Response {
    let result = sluice_retention::expiry::report(&state.archive.store)
        .await
        .map(|report| ExpiryState { report });
    respond(&state, "archive", result)
}
