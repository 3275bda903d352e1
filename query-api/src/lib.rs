//! The HTTP query API: search, live tail, patterns, SQL, health and metrics.
//!
//! | route | what |
//! |---|---|
//! | `GET /api/v1/search?query=&start=&end=&limit=` | full-text search, newest first, exact total (over every indexer; `partial` says when one did not answer) |
//! | `GET /api/v1/tail?source_id=…&instance_id=…&type=…&log_type=…&tag.NAME=…&query=…&since=…&tail=N&cursor=…` | history, then live envelopes, as server-sent events selected on the server, each with a resumable cursor (`Last-Event-ID`) |
//! | `GET /api/v1/patterns?query=&start=&end=&since=&step=&compare=&factor=&limit=` | the patterns of the matching lines with counts per step, an example and first-seen time, largest first; with `compare=<duration>` against the window before, new, risen and fallen ones marked, most surprising first |
//! | `GET /v2/read?source_id=…&log&counter&gauge&timer&event&shard_id=…` | the Loggregator RLP Gateway's stream: SSE of JSON `EnvelopeBatch`es (protobuf JSON mapping), shared among readers of one `shard_id` |
//! | `GET /api/v1/read/{source_id}?start_time=&end_time=&envelope_types=&limit=&descending=` | Log Cache's read: logs and events from the index, metrics from the archive |
//! | `POST /api/v1/sql` | read-only DataFusion SQL over the archive (`{"query": "…"}` or plain text) |
//! | `GET /api/v1/archive/stats` | the archive's catalog: per table, partitions, files, rows, bytes and time range; files awaiting the collector |
//! | `GET /api/v1/archive/partitions?table=` | the same per hour partition |
//! | `GET /api/v1/archive/files?table=` | every live file: what another reader of the archive should read |
//! | `POST /api/v1/archive/expire?dry_run=`, `GET /api/v1/archive/expire` | ask the writer to apply the expiry policies now (or report what they would remove); the latest pass's report |
//! | `POST /api/v1/archive/compact`, `GET /api/v1/archive/compact` | ask the archive's writer to compact everything now; the latest round's progress |
//! | `GET /healthz` | liveness |
//! | `GET /metrics` | Prometheus text of every component in this process |
//!
//! Errors are JSON `{"error": "…"}` with a status from the error taxonomy: bad input is 4xx.
//!
//! With `[query_api.auth] enabled = true`, every route but `/healthz` needs
//! `Authorization: Bearer <token>` (`sluice tokens create`); see [`auth`].

pub mod archive;
pub mod audit;
pub mod auth;
pub mod cold;
pub mod config;
pub mod loggregator;
pub mod metrics;
pub mod patterns;
mod routes;
pub mod search;
pub mod sql;
pub mod tail;

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::QueryApiConfig;
use sluice_bus::Bus;
use sluice_common::SluiceError;
use sluice_common::shutdown::Shutdown;
use sluice_common::telemetry::Telemetry;
use sluice_common::tls::TlsMaterial;
use sluice_indexer::Searcher;
use sluice_retention::config::ArchiveLocation;
use sluice_retention::store::Archive;

pub use routes::router;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Runs searches, locally or over the indexers.
    pub search: search::SearchBackend,
    /// The archive SQL reads.
    pub archive: Archive,
    /// Runs SQL within its limits.
    pub sql: sql::engine::SqlEngine,
    /// The process's metric registry, served at `/metrics`.
    pub telemetry: Telemetry,
    /// Live tails.
    pub tails: tail::Tails,
    /// `/v2/read` streams shared by `shard_id`.
    pub shards: loggregator::read::Shards,
    /// The search language's parser and schema, for tail filters.
    pub query_language: Arc<Searcher>,
    /// Limits.
    pub config: QueryApiConfig,
    /// This component's counters.
    pub metrics: metrics::QueryMetrics,
    /// Checks every request's token, when tokens are required.
    pub gate: Option<auth::Gate>,
}

/// The bus live tails read, or why this process cannot read it.
pub enum TailBus {
    /// The bus.
    Bus(Arc<dyn Bus>),
    /// Tails are refused (503) with this reason.
    Unreachable(String),
}

/// Serves the API on `config.listen` until `shutdown` fires.
pub async fn run(
    config: QueryApiConfig,
    index_dir: PathBuf,
    archive: ArchiveLocation,
    tail_bus: TailBus,
    tls: TlsMaterial,
    telemetry: Telemetry,
    mut shutdown: Shutdown,
) -> Result<(), SluiceError> {
    let searcher = Arc::new(Searcher::new(&index_dir));
    let gate = match &config.tokens_file {
        Some(path) => {
            let authenticator =
                sluice_auth::Authenticator::open(sluice_auth::TokenFile::at(path.clone()))?;
            authenticator.spawn_reloader();
            tracing::info!(tokens_file = %path.display(), "query api requires tokens");
            Some(auth::Gate::new(
                authenticator,
                config.request_rate,
                &telemetry,
            ))
        }
        None => None,
    };
    let state = AppState {
        gate,
        search: search::SearchBackend::new(
            &config.indexers,
            config.indexer_timeout,
            &tls,
            Arc::clone(&searcher),
        )?,
        tails: {
            let (bus, reason) = match tail_bus {
                TailBus::Bus(bus) => (Some(bus), String::new()),
                TailBus::Unreachable(reason) => (None, reason),
            };
            tail::Tails::new(
                bus,
                reason,
                Arc::clone(&searcher),
                config.indexers.is_empty(),
                config.tail.clone(),
                tail::metrics::TailMetrics::register(&telemetry),
                shutdown.clone(),
            )
        },
        shards: loggregator::read::Shards::default(),
        query_language: searcher,
        archive: Archive::open(&archive)?,
        sql: sql::engine::SqlEngine::new(config.sql, &telemetry)?,
        metrics: metrics::QueryMetrics::register(&telemetry),
        telemetry,
        config: config.clone(),
    };
    let listener = sluice_common::listen(config.listen, "query api").await?;
    sluice_common::serve_http(
        listener,
        config.tls.then_some(&tls),
        router(state),
        async move { shutdown.wait().await },
    )
    .await
    .map_err(|error| SluiceError::internal(format!("query api failed: {error}")))
}

/// Serves `/metrics` and `/healthz` of `telemetry` on `listen` until `shutdown` fires: the
/// monitoring endpoint of a role that runs as its own process.
pub async fn serve_telemetry(
    listen: std::net::SocketAddr,
    telemetry: Telemetry,
    mut shutdown: Shutdown,
) -> Result<(), SluiceError> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let telemetry = telemetry.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        telemetry.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    let listener = sluice_common::listen(listen, "metrics endpoint").await?;
    axum::serve(sluice_common::http_nodelay(listener), app)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
        .map_err(|error| SluiceError::internal(format!("metrics endpoint failed: {error}")))
}
